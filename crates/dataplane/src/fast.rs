//! The XDP fast path beside the forwarding loop (see [`ipshadow_xdp`]): the core stays the
//! authority. Each turn of the loop, the records of the frames the program forwarded are
//! replayed into the core first (so that the frames the program handed up meet a core that has
//! seen everything before them); after the turn, what the core changed is written into the
//! program's maps: flows' owners from its events, shadowed and routed addresses when its
//! generation moved, the VMs' MACs once learned, and whether the program may forward at all.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use crate::status::FastPathStatus;
use ipshadow_core::flow::{FlowKey, Owner, Phase, Side};
use ipshadow_core::l2::{Out, RouterNode};
use ipshadow_core::shadow::Affinity;
use ipshadow_core::wire::{Fragment, Ipv4Info, L4, PROTO_TCP, TcpFlags, TcpInfo};
use ipshadow_core::{Event, Instant, Replay, VmRef};
use ipshadow_xdp::abi::{self, Config, Direction, Record};
use ipshadow_xdp::{FastPath, FastPathError, FastPathSetup};

/// How long a router in a group may go without a turn of its loop before the program stops
/// forwarding (its frames go up, where a paused loop holds them): the group's stall bound, so
/// that a paused active router's kernel does not go on forwarding beside the new active one.
pub const ACTIVE_LEASE: Duration = Duration::from_millis(250);

/// Flows found in the pinned map at start are counted as restored when they come back within
/// this long.
const RESTORE_WINDOW: Duration = Duration::from_secs(60);

/// Neighbours written to the program's map that are remembered here, so that each frame the
/// loop sends does not cost a map update; forgotten all at once beyond this (then written again).
const NEIGHBOURS_CACHED: usize = 65_536;

/// Entries the kernel's LRU hash keeps free per CPU, out of reach of the others until they run
/// out (`LOCAL_FREE_TARGET` in kernel/bpf/bpf_lru_list.c): it evicts before its nominal size.
const LRU_FREE_PER_CPU: u32 = 128;

/// The fewest spare entries in the flow map: new flows the program may decide between two turns
/// of the loop (a few milliseconds of a flood) without pushing out one the core keeps.
const SPARE_FLOWS_MIN: u32 = 4096;

/// The entries of the program's flow map beside a core table of `max_flows`. More than the
/// table: the flows the program decides between two turns of the loop that the core then
/// refuses (its table full of established flows) or evicts (embryonic, under a SYN flood) are
/// removed from the map only at the next turn; meanwhile they must take spare entries, not push
/// out flows the core keeps (the LRU map evicts the least recently used, established or not,
/// and each flow it loses goes up until healed). Measured in tests/fast_path_flood.rs.
pub fn flow_map_entries(max_flows: u32) -> u32 {
    let per_cpu = LRU_FREE_PER_CPU.saturating_mul(ipshadow_xdp::possible_cpus());
    let spare = (max_flows / 8).max(SPARE_FLOWS_MIN).saturating_add(per_cpu);
    max_flows.saturating_add(spare)
}

/// The program attached to the router's interfaces, and what was last written into its maps.
pub struct FastPathSync {
    fast_path: FastPath,
    interfaces: Vec<String>,
    vm_ifindexes: Vec<u32>,
    /// The VMs' MACs as last written (all zero: not known yet).
    vm_macs: Vec<[u8; 6]>,
    generation: Option<u64>,
    shadows: HashMap<Ipv4Addr, abi::Shadow>,
    routes: HashMap<Ipv4Addr, u32>,
    neighbours: HashMap<Ipv4Addr, [u8; 6]>,
    /// Owner changes from this turn's events, last one wins: `None` removes the flow. A flow
    /// whose owner the core does not know yet is written too (as `OWNER_UNKNOWN`), so that the
    /// program leaves its frames to the core rather than deciding it as a new flow.
    flow_changes: HashMap<FlowKey, Option<Owner>>,
    /// Flows the program itself created this turn, with the side it gave them: the map has
    /// them already.
    decided: HashMap<FlowKey, Side>,
    /// Flows a previous router left in the pinned map whose packets the core has not seen yet.
    /// The program forwards them to their owners as before; the core takes each one, with
    /// that owner, from its first replayed packet (nothing relearned). Flows that ended before
    /// the restart never come back, so none is counted open that is not.
    restorable: std::collections::HashSet<FlowKey>,
    restore_until: Option<Instant>,
    /// `active_until_ns` as last written.
    active_until_ns: u64,
    records_replayed: u64,
    /// The time of the previous replay (the loop's previous turn): no record is dated before it.
    replayed_at: Instant,
    flows_restored: u64,
    /// Flows written again after the map lost them.
    flows_healed: u64,
    map_errors: u64,
}

fn core_key(k: &abi::FlowKey) -> FlowKey {
    FlowKey {
        client_ip: k.client_ip,
        client_port: k.client_port,
        shadow_ip: k.shadow_ip,
        shadow_port: k.shadow_port,
        protocol: k.protocol,
    }
}

fn map_key(k: &FlowKey) -> abi::FlowKey {
    abi::FlowKey {
        client_ip: k.client_ip,
        shadow_ip: k.shadow_ip,
        client_port: k.client_port,
        shadow_port: k.shadow_port,
        protocol: k.protocol,
    }
}

fn side_of(owner: u8) -> Side {
    if owner == abi::OWNER_DESTINATION { Side::Destination } else { Side::Source }
}

fn owner_byte(owner: Owner) -> u8 {
    match owner {
        Owner::Source => abi::OWNER_SOURCE,
        Owner::Destination => abi::OWNER_DESTINATION,
        Owner::Unknown => abi::OWNER_UNKNOWN,
    }
}

/// The packet a record describes, as the core's parser would have given it.
fn packet(r: &Record) -> Ipv4Info {
    let l4 = if r.protocol == PROTO_TCP {
        L4::Tcp(TcpInfo {
            src_port: r.src_port,
            dst_port: r.dst_port,
            seq: r.seq,
            ack: r.ack,
            flags: TcpFlags(r.tcp_flags),
            payload_len: u32::from(r.payload_len),
        })
    } else {
        L4::Udp { src_port: r.src_port, dst_port: r.dst_port }
    };
    Ipv4Info {
        l3_offset: 14,
        vlan: None,
        src: r.src,
        dst: r.dst,
        protocol: r.protocol,
        ident: r.ident,
        fragment: Fragment::Whole,
        l4,
    }
}

/// The IPv4 address a provider-side frame (untagged IPv4, or ARP) is from: the node may learn
/// where it is from the frame.
fn sender(frame: &[u8]) -> Option<Ipv4Addr> {
    let at = match frame.get(12..14)? {
        [8, 0] => 26,
        [8, 6] => 28,
        _ => return None,
    };
    let b = frame.get(at..at + 4)?;
    Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

/// The flow key of an untagged IPv4 TCP or UDP frame that is not a fragment, oriented client ->
/// shadowed address (`inbound`: from the provider side, the client is the source).
fn frame_key(frame: &[u8], inbound: bool) -> Option<FlowKey> {
    if frame.len() < 38 || frame[12..14] != [8, 0] || frame[14] != 0x45 {
        return None;
    }
    let protocol = frame[23];
    let fragment = u16::from_be_bytes([frame[20], frame[21]]) & 0x3fff != 0;
    if fragment || !matches!(protocol, 6 | 17) {
        return None;
    }
    let src = Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]);
    let dst = Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]);
    let sport = u16::from_be_bytes([frame[34], frame[35]]);
    let dport = u16::from_be_bytes([frame[36], frame[37]]);
    Some(if inbound {
        FlowKey { client_ip: src, client_port: sport, shadow_ip: dst, shadow_port: dport, protocol }
    } else {
        FlowKey { client_ip: dst, client_port: dport, shadow_ip: src, shadow_port: sport, protocol }
    })
}

/// The flow key of a recorded packet, oriented client -> shadowed address.
fn record_key(r: &Record) -> FlowKey {
    match r.direction {
        Direction::Inbound { .. } => FlowKey {
            client_ip: r.src,
            client_port: r.src_port,
            shadow_ip: r.dst,
            shadow_port: r.dst_port,
            protocol: r.protocol,
        },
        Direction::Egress { .. } | Direction::Neighbour => FlowKey {
            client_ip: r.dst,
            client_port: r.dst_port,
            shadow_ip: r.src,
            shadow_port: r.src_port,
            protocol: r.protocol,
        },
    }
}

impl FastPathSync {
    /// Loads the program, attaches it to the provider interface and every VM interface (in the
    /// node's port order) in driver mode, and reads the flows a previous router left pinned.
    /// `macs`: the router's own on the provider side and on the VM side (the VMs' gateway);
    /// `max_flows`: the core's flow table (the map has [`flow_map_entries`]).
    pub fn open(
        provider: &str,
        vms: &[&str],
        macs: ([u8; 6], [u8; 6]),
        pin_dir: Option<PathBuf>,
        max_flows: u32,
        now: Instant,
    ) -> Result<Self, FastPathError> {
        let provider_ifindex = ipshadow_xdp::ifindex(provider)?;
        let vm_ifindexes = vms.iter().map(|vm| ipshadow_xdp::ifindex(vm)).collect::<Result<Vec<_>, _>>()?;
        let mut sync = Self::load(provider_ifindex, &vm_ifindexes, macs, pin_dir, max_flows, now)?;
        let mut interfaces = vec![provider.to_owned()];
        interfaces.extend(vms.iter().map(|v| (*v).to_owned()));
        for interface in &interfaces {
            sync.fast_path.attach(interface)?;
        }
        sync.interfaces = interfaces;
        Ok(sync)
    }

    /// [`FastPathSync::open`] without attaching the program anywhere: for tests that run it
    /// with `BPF_PROG_TEST_RUN` ([`FastPath::test_run`]) on interfaces of their own, given by
    /// index (the provider's, then the VMs' in the node's port order); its flows pinned in
    /// `pin_dir` (on a bpffs) if given.
    pub fn open_detached(
        provider_ifindex: u32,
        vm_ifindexes: &[u32],
        macs: ([u8; 6], [u8; 6]),
        pin_dir: Option<PathBuf>,
        max_flows: u32,
        now: Instant,
    ) -> Result<Self, FastPathError> {
        Self::load(provider_ifindex, vm_ifindexes, macs, pin_dir, max_flows, now)
    }

    /// Loads the program and writes the ports, switched off until the first sync.
    fn load(
        provider_ifindex: u32,
        vm_ifindexes: &[u32],
        macs: ([u8; 6], [u8; 6]),
        pin_dir: Option<PathBuf>,
        max_flows: u32,
        now: Instant,
    ) -> Result<Self, FastPathError> {
        let mut fast_path = FastPath::load(&FastPathSetup { pin_dir, max_flows: flow_map_entries(max_flows) })?;
        fast_path.set_provider(provider_ifindex)?;
        let (provider_mac, vm_side_mac) = macs;
        fast_path.set_config(Config { provider_mac, vm_side_mac, ..fast_path.config() })?;
        for (port, &ifindex) in vm_ifindexes.iter().enumerate() {
            fast_path.set_vm_port(port as u32, ifindex, [0; 6])?;
        }
        // A flow whose owner was not known is the core's to learn again.
        let restorable: std::collections::HashSet<FlowKey> = fast_path
            .flows()
            .iter()
            .filter(|(_, f)| f.owner <= abi::OWNER_DESTINATION)
            .map(|(key, _)| core_key(key))
            .collect();
        // Off until the first sync has written the addresses: a frame of a flow the core has not
        // been given yet goes up.
        fast_path.set_config(Config { flags: 0, ..fast_path.config() })?;
        Ok(Self {
            fast_path,
            interfaces: Vec::new(),
            vm_macs: vec![[0; 6]; vm_ifindexes.len()],
            vm_ifindexes: vm_ifindexes.to_vec(),
            generation: None,
            shadows: HashMap::new(),
            routes: HashMap::new(),
            neighbours: HashMap::new(),
            flow_changes: HashMap::new(),
            decided: HashMap::new(),
            restore_until: (!restorable.is_empty()).then(|| now + RESTORE_WINDOW),
            restorable,
            active_until_ns: 0,
            records_replayed: 0,
            replayed_at: now,
            flows_restored: 0,
            flows_healed: 0,
            map_errors: 0,
        })
    }

    /// The fast path itself (tests drive its program with `BPF_PROG_TEST_RUN`).
    pub fn fast_path(&mut self) -> &mut FastPath {
        &mut self.fast_path
    }

    /// The records ring: readable when records wait (the loop's wait includes it).
    pub fn records_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fast_path.records_fd()
    }

    /// Replays into the core every frame the program forwarded since the last call; returns how
    /// many. Each record's time is its age on the kernel's clock, taken from `now`.
    pub fn replay(&mut self, node: &mut RouterNode, now: Instant) -> usize {
        let ktime = ipshadow_xdp::ktime_ns();
        let mut records = Vec::new();
        self.fast_path.drain_records(|r| records.push(r));
        for r in &records {
            let age = Duration::from_nanos(ktime.saturating_sub(r.at_ns));
            // Never before the previous turn, whose frames the core has seen already: its clock
            // must not go back (the kernel's and the loop's clocks differ by a few microseconds,
            // enough to date a record in an earlier millisecond than a frame that came after it).
            let at = Instant::from_micros(now.as_micros().saturating_sub(age.as_micros() as u64))
                .clamp(self.replayed_at.min(now), now);
            let ip = packet(r);
            if !self.restorable.is_empty() && self.restorable.remove(&record_key(r)) {
                self.flows_restored += 1;
            }
            match r.direction {
                Direction::Inbound { owner } => {
                    let side = side_of(owner);
                    let replay = node.replay_inbound(&ip, r.src_mac, side, at);
                    // The program learned the client from the frame itself: its map holds this.
                    if r.src_mac[0] & 1 == 0 {
                        self.remember_neighbour(r.src, r.src_mac);
                    }
                    if r.new_flow {
                        if matches!(replay, Replay::CoreWouldDrop(_)) {
                            // Not tracked by the core (its table is full): not the program's either.
                            self.flow_changes.insert(record_key(r), None);
                        } else {
                            self.decided.insert(record_key(r), side);
                        }
                    }
                    if r.packets > 1 {
                        node.replayed_more(r.dst, Some(side), u64::from(r.packets - 1));
                    }
                }
                Direction::Egress { port } => {
                    node.replay_egress(usize::from(port), &ip, at);
                    if r.packets > 1 {
                        node.replayed_more(r.src, None, u64::from(r.packets - 1));
                    }
                }
                Direction::Neighbour => {
                    // The map has it already.
                    self.remember_neighbour(r.src, r.src_mac);
                    node.learn_neighbour(r.src, r.src_mac, at);
                }
            }
        }
        self.replayed_at = now;
        self.records_replayed += records.len() as u64;
        records.len()
    }

    /// Takes note of a core event that changes a flow's owner or ends it.
    pub fn event(&mut self, event: &Event) {
        match *event {
            Event::FlowStarted { key, owner, .. } => {
                self.flow_changes.insert(key, Some(owner));
            }
            Event::OwnerLearned { key, owner, .. } => {
                self.flow_changes.insert(key, Some(owner.into()));
            }
            Event::HandOff { key, to, .. } => {
                self.flow_changes.insert(key, Some(to.into()));
            }
            Event::FlowEnded { key, .. } | Event::FlowRetired { key, .. } => {
                self.flow_changes.insert(key, None);
            }
            _ => {}
        }
    }

    /// A frame the loop sent to the provider side: its destination is a neighbour the program
    /// may send to as well.
    pub fn sent_to_provider(&mut self, frame: &[u8]) {
        if frame.len() < 34 || frame[12..14] != [8, 0] || frame[0] & 1 == 1 {
            return;
        }
        let dst = Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]);
        let mac: [u8; 6] = frame[0..6].try_into().unwrap_or_default();
        self.write_neighbour(dst, mac);
    }

    /// Writes a neighbour into the program's map, unless it was the last one written there.
    fn write_neighbour(&mut self, ip: Ipv4Addr, mac: [u8; 6]) {
        if self.neighbours.get(&ip) == Some(&mac) {
            return;
        }
        self.remember_neighbour(ip, mac);
        if self.fast_path.set_neighbour(ip, mac).is_err() {
            self.map_errors += 1;
        }
    }

    /// Notes what the program's map holds for a neighbour.
    fn remember_neighbour(&mut self, ip: Ipv4Addr, mac: [u8; 6]) {
        if self.neighbours.len() >= NEIGHBOURS_CACHED {
            self.neighbours.clear();
        }
        self.neighbours.insert(ip, mac);
    }

    /// Hands a frame that came up on the provider side to the node. If the node learned a new
    /// MAC for its sender from it, the program's map gets it too: the program sends to the
    /// clients the core has heard from last, as the core does.
    pub fn from_provider(&mut self, node: &mut RouterNode, frame: &[u8], now: Instant, out: &mut Vec<Out>) {
        let sender = sender(frame).map(|ip| (ip, node.neighbours().get(ip, now)));
        self.restore(node, frame, true, now);
        node.from_provider(frame.to_vec(), now, out);
        self.heal(node, frame, true, now);
        if let Some((ip, before)) = sender
            && let Some(mac) = node.neighbours().get(ip, now)
            && before != Some(mac)
        {
            self.write_neighbour(ip, mac);
        }
    }

    /// Hands a frame that came up from the VM on `port` to the node, which first learns where
    /// its destination is if only the program knows.
    pub fn from_vm(&mut self, node: &mut RouterNode, port: usize, frame: &[u8], now: Instant, out: &mut Vec<Out>) {
        self.lend_neighbour(node, frame, now);
        self.restore(node, frame, false, now);
        node.from_vm(port, frame.to_vec(), now, out);
        self.heal(node, frame, false, now);
    }

    /// A frame that came up of a flow the pinned map held at start with its owner, which the
    /// core does not track yet: the core takes the flow back with that owner before the frame,
    /// as a replayed record would have it, instead of learning the owner again. Such frames
    /// come up before the first sync switches the program on (a restarted router's first
    /// turn), or when the program hands them up for any other reason.
    fn restore(&mut self, node: &mut RouterNode, frame: &[u8], inbound: bool, now: Instant) {
        if self.restorable.is_empty() {
            return;
        }
        let Some(key) = frame_key(frame, inbound) else { return };
        if !self.restorable.contains(&key) || node.core.flow(&key).is_some() {
            return;
        }
        let Some(owner) = self.fast_path.flow(&map_key(&key)).map(|f| f.owner) else { return };
        if owner > abi::OWNER_DESTINATION {
            return;
        }
        // Not shadowed (yet): the frame goes its way as the core decides; the flow stays
        // restorable until its address is.
        if let Ok(true) = node.core.restore_flow(key, side_of(owner), now) {
            self.restorable.remove(&key);
            self.flows_restored += 1;
        }
    }

    /// A frame of a flow the core tracks with a known owner came up: if the program's map has
    /// lost the flow (the LRU map evicted it under a flood of new flows; a write failed), it is
    /// written again, so the flow returns to the fast path instead of staying up here. One map
    /// lookup per such frame, none for frames of addresses whose frames go up anyway. A flow
    /// this turn started is not one the map lost: its `FlowStarted` writes it at the sync.
    fn heal(&mut self, node: &RouterNode, frame: &[u8], inbound: bool, now: Instant) {
        let Some(key) = frame_key(frame, inbound) else { return };
        let Some(shadow) = self.shadows.get(&key.shadow_ip) else { return };
        if shadow.flags & abi::SHADOW_SLOW != 0 || self.flow_changes.contains_key(&key) {
            return;
        }
        let Some(flow) = node.core.flow(&key) else { return };
        if flow.created == now {
            return;
        }
        let Some(side) = flow.owner.side() else { return };
        if flow.phase == Phase::Retired || (side == Side::Source && shadow.flags & abi::SHADOW_SLOW_SOURCE != 0) {
            return;
        }
        let owner = owner_byte(side.into());
        if self.fast_path.flow(&map_key(&key)).is_some_and(|f| f.owner == owner) {
            return;
        }
        let flow = abi::Flow { owner, origin: abi::ORIGIN_CORE, last_seen_ns: ipshadow_xdp::ktime_ns() };
        match self.fast_path.set_flow(&map_key(&key), flow) {
            Ok(()) => self.flows_healed += 1,
            Err(_) => self.map_errors += 1,
        }
    }

    /// A VM's frame that came up to the loop: if it is to a client the node does not know but
    /// the program does, the node learns where the client is first. The program routes a
    /// client's frames to an address a VM holds alone without the node, which hears of the
    /// client once (a `Neighbour` record) and forgets it after its neighbour age; the node alone
    /// would have kept it fresh from those frames. Without this it would drop the frame and ask
    /// (ARP) where the client is. A lookup in the program's map only when the node misses.
    fn lend_neighbour(&self, node: &mut RouterNode, frame: &[u8], now: Instant) {
        if frame.len() < 34 || frame[12..14] != [8, 0] {
            return;
        }
        let dst = Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]);
        if node.neighbours().get(dst, now).is_some() {
            return;
        }
        if let Some(mac) = self.fast_path.neighbour(dst) {
            node.learn_neighbour(dst, mac, now);
        }
    }

    /// Writes what changed into the maps. `may_forward` is the group's word (`None` outside a
    /// group: always).
    pub fn sync(&mut self, node: &mut RouterNode, may_forward: Option<bool>, now: Instant) {
        self.write_flows();
        if self.generation != Some(node.fast_path_generation()) {
            self.generation = Some(node.fast_path_generation());
            self.write_addresses(node);
        }
        self.write_vm_macs(node);
        let mut flags = abi::CFG_ENABLED;
        if node.fast_path_blocked() {
            flags = 0;
        }
        if node.retired_until().is_some_and(|t| now < t) {
            flags |= abi::CFG_ROUTES_SLOW;
        }
        let active_until_ns = match may_forward {
            None => u64::MAX,
            Some(false) => 0,
            // Written again when less than half the lease is left: a few writes a second.
            Some(true) => {
                let ktime = ipshadow_xdp::ktime_ns();
                if self.active_until_ns.saturating_sub(ktime) < ACTIVE_LEASE.as_nanos() as u64 / 2 {
                    ktime + ACTIVE_LEASE.as_nanos() as u64
                } else {
                    self.active_until_ns
                }
            }
        };
        self.active_until_ns = active_until_ns;
        let config = Config { flags, active_until_ns, ..self.fast_path.config() };
        if self.fast_path.set_config(config).is_err() {
            self.map_errors += 1;
        }
        if self.restore_until.is_some_and(|t| now >= t) {
            self.restorable.clear();
            self.restore_until = None;
        }
    }

    /// Stops the program forwarding until the next sync (a stalled turn of a group's member).
    pub fn hold(&mut self) {
        self.active_until_ns = 0;
        let config = Config { active_until_ns: 0, ..self.fast_path.config() };
        if self.fast_path.set_config(config).is_err() {
            self.map_errors += 1;
        }
    }

    fn write_flows(&mut self) {
        let ktime = ipshadow_xdp::ktime_ns();
        for (key, owner) in self.flow_changes.drain() {
            let decided = self.decided.get(&key).copied().map(Owner::from);
            let written = match owner {
                // The program created it with this owner: nothing to write.
                Some(owner) if decided == Some(owner) => Ok(()),
                Some(owner) => self.fast_path.set_flow(
                    &map_key(&key),
                    abi::Flow { owner: owner_byte(owner), origin: abi::ORIGIN_CORE, last_seen_ns: ktime },
                ),
                None => self.fast_path.remove_flow(&map_key(&key)),
            };
            if written.is_err() {
                self.map_errors += 1;
            }
        }
        self.decided.clear();
    }

    fn write_addresses(&mut self, node: &RouterNode) {
        let mut shadows = HashMap::new();
        for s in node.fast_path_shadows() {
            let mut flags = if s.slow { abi::SHADOW_SLOW } else { 0 };
            if s.slow_source {
                flags |= abi::SHADOW_SLOW_SOURCE;
            }
            if s.affinity == Affinity::Client {
                flags |= abi::SHADOW_CLIENT_AFFINITY;
            }
            let value = abi::Shadow {
                salt: s.salt,
                threshold: s.threshold,
                source: s.source.0,
                destination: s.destination.0,
                flags,
            };
            shadows.insert(s.ip, value);
        }
        for (ip, value) in &shadows {
            if self.shadows.get(ip) != Some(value) && self.fast_path.set_shadow(*ip, *value).is_err() {
                self.map_errors += 1;
            }
        }
        for ip in self.shadows.keys() {
            if !shadows.contains_key(ip) && self.fast_path.remove_shadow(*ip).is_err() {
                self.map_errors += 1;
            }
        }
        self.shadows = shadows;
        let routes: HashMap<Ipv4Addr, u32> = node
            .core
            .addresses()
            .filter(|ip| !self.shadows.contains_key(ip))
            .filter_map(|ip| node.core.address_holder(ip).map(|VmRef(port)| (ip, port)))
            .collect();
        for (ip, port) in &routes {
            if self.routes.get(ip) != Some(port) && self.fast_path.set_route(*ip, *port).is_err() {
                self.map_errors += 1;
            }
        }
        for ip in self.routes.keys() {
            if !routes.contains_key(ip) && self.fast_path.remove_route(*ip).is_err() {
                self.map_errors += 1;
            }
        }
        self.routes = routes;
    }

    fn write_vm_macs(&mut self, node: &RouterNode) {
        for (port, (_, mac)) in node.ports().iter().enumerate() {
            let (Some(known), Some(&ifindex)) = (self.vm_macs.get(port), self.vm_ifindexes.get(port)) else { continue };
            if known != mac {
                if self.fast_path.set_vm_port(port as u32, ifindex, *mac).is_err() {
                    self.map_errors += 1;
                }
                self.vm_macs[port] = *mac;
            }
        }
    }

    /// What the fast path did, for the status report.
    pub fn status(&self) -> FastPathStatus {
        let s = self.fast_path.stats();
        let passed = [
            ("disabled", s.pass_disabled),
            ("not_ipv4", s.pass_not_ipv4),
            ("malformed", s.pass_malformed),
            ("fragment", s.pass_fragment),
            ("protocol", s.pass_protocol),
            ("not_for_us", s.pass_not_for_us),
            ("slow", s.pass_slow),
            ("no_route", s.pass_no_route),
            ("flow", s.pass_flow),
            ("next_hop", s.pass_next_hop),
            ("local", s.pass_local),
            ("checksum", s.pass_checksum),
            ("flow_map_full", s.flow_map_full),
        ];
        FastPathStatus {
            interfaces: self.interfaces.clone(),
            frames_forwarded: s.forwarded(),
            frames_passed: s.passed(),
            passed: passed.iter().filter(|(_, n)| *n > 0).map(|(k, n)| ((*k).to_owned(), *n)).collect(),
            flows_decided: s.new_flows,
            records_lost: s.records_lost,
            flow_map_full: s.flow_map_full,
            records_replayed: self.records_replayed,
            flows_restored: self.flows_restored,
            flows_healed: self.flows_healed,
            map_errors: self.map_errors,
        }
    }
}

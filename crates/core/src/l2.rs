//! The Shadow Router at layer 2, sans-IO: the core's decisions plus what a router does with
//! Ethernet frames. It answers ARP for the addresses it routes on the provider side and for the
//! gateway on the VM side, rewrites MAC addresses (both VMs hold X; there is no NAT), learns
//! client MACs from the frames it accepts and asks for the others (ARP), sends the core's own
//! packets (cut-over RSTs), and probes the VMs with ARP for health checks. Frames in; frames out, each for a port. The simulator and the
//! Linux data plane drive the same code.

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;

use etherparse::{ArpHardwareId, ArpOperation, ArpPacket, EtherType, Ethernet2Header};

use crate::events::Event;
use crate::flow::Side;
use crate::neighbours::NeighbourTable;
use crate::router::{
    Deliver, DropReason, EgressVerdict, FastPathShadow, InboundVerdict, Replay, RouterConfig, ShadowRouter, VmRef,
};
use crate::shadow::VmId;
use crate::time::Instant;
use crate::wire::{Ipv4Info, Packet, parse_frame};

/// Where a frame the router sends goes.
#[derive(Debug)]
pub enum Out {
    /// To the provider segment (its destination MAC says which client).
    Provider(Vec<u8>),
    /// To a VM's port (index into the router's VM ports).
    Vm(usize, Vec<u8>),
}

/// Reset client endpoints a router lists (for telling a client that was cut over from one broken
/// by accident): enough for the last migrations' flows between two reports, a few hundred KB.
pub const RESET_CLIENTS_KEPT: usize = 16_384;

/// Frames the router handled, by fate.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortStats {
    /// Frames forwarded from the provider side to a VM (a frame to both VMs counts twice).
    pub to_vms: u64,
    /// Frames forwarded from the VMs to the provider side.
    pub to_provider: u64,
    /// ARP requests answered.
    pub arp_answered: u64,
    /// Frames with no route (unknown destination, or a client MAC not yet learned).
    pub no_route: u64,
    /// ARP requests the router sent on the provider side for a client whose MAC it did not know.
    #[serde(default)]
    pub arp_requests: u64,
    /// Client addresses in the neighbour table.
    #[serde(default)]
    pub neighbours: u64,
    /// Neighbour entries evicted at the table's cap to make room for a new address.
    #[serde(default)]
    pub neighbours_evicted: u64,
    /// Neighbour entries forgotten after their age without a confirmation.
    #[serde(default)]
    pub neighbours_aged: u64,
    /// Frames the core dropped, by reason.
    pub dropped: BTreeMap<String, u64>,
    /// RSTs the router sent itself (at the end of a migration).
    pub resets_sent: u64,
    /// Reset client endpoints no longer listed (more than [`RESET_CLIENTS_KEPT`] since).
    #[serde(default)]
    pub reset_clients_forgotten: u64,
    /// FINs and ACKs the router sent itself to clients closing A's flows in order.
    #[serde(default)]
    pub closes_sent: u64,
    /// ARP frames from a VM that were neither for the gateway nor an answer to a probe.
    pub arp_ignored: u64,
    /// ARP answers to the gateway from a VM port with a MAC other than the VM's (as the frame's
    /// source or the ARP sender): not taken as answers to the router's health probes.
    #[serde(default)]
    pub probe_answers_refused: u64,
    /// DHCP requests from a VM (UDP to port 67): the host's own DHCP server answers them, so
    /// they do not cross to the provider side.
    #[serde(default)]
    pub dhcp_local: u64,
}

/// The router node.
pub struct RouterNode {
    /// The shadowing core.
    pub core: ShadowRouter<Vec<Event>>,
    config: RouterConfig,
    provider_mac: [u8; 6],
    vm_side_mac: [u8; 6],
    gateway: Ipv4Addr,
    /// VM ports: (id, MAC); port `i` is `VmRef(i)` in the core. An all-zero MAC is learned
    /// from the first unicast-sourced frame the VM sends.
    ports: Vec<(VmId, [u8; 6])>,
    /// Shadowed addresses and the ports of their source and destination.
    shadows: BTreeMap<Ipv4Addr, (usize, usize)>,
    /// Where clients are on the provider side: bounded and aged (remote hosts fill it).
    neighbours: NeighbourTable,
    /// Addresses the router asked for (ARP) and when, so that a VM sending to an unknown client
    /// makes one request a second, not one a frame. Bounded by [`MAX_PENDING_ARP`].
    arp_pending: BTreeMap<Ipv4Addr, Instant>,
    /// Replica state sync: frames for the first port are copied to the second while the
    /// address is not shadowed (the replica receives A's inbound traffic from the start).
    pub mirror: Option<(usize, usize)>,
    /// Fault injection for tests and the simulator, never set in service: frames the core
    /// delivers to the first port alone are copied to the second (a flooding switch), so that VM
    /// answers flows it does not own.
    pub flood: Option<(usize, usize)>,
    /// Last ARP answer from each VM port to a health probe.
    pub probe_replies: Vec<Option<Instant>>,
    /// Last answer from a VM port for each shadowed address it was probed for: a destination
    /// answers for the address only once its DHCP client has configured it (dhcpcd first probes
    /// it for seconds, RFC 5227), which is when it can take flows. Kept only for the ports of
    /// addresses shadowed now, so a VM cannot grow it with answers for other addresses.
    pub probe_answers: BTreeMap<(usize, Ipv4Addr), Instant>,
    /// Client TCP endpoints the router reset at the end of a migration, the last
    /// [`RESET_CLIENTS_KEPT`] of them (older ones counted in `reset_clients_forgotten`).
    pub reset_clients: VecDeque<(Ipv4Addr, u16)>,
    /// Counters of this node.
    pub stats: PortStats,
    /// Bumped when the node's share of what a fast path copies changes (ports of shadowed
    /// addresses, a VM's MAC learned).
    generation: u64,
}

impl RouterNode {
    /// A router whose VM side answers ARP for `gateway`, with one port per VM in `ports`.
    pub fn new(
        config: RouterConfig,
        provider_mac: [u8; 6],
        vm_side_mac: [u8; 6],
        gateway: Ipv4Addr,
        ports: Vec<(VmId, [u8; 6])>,
        now: Instant,
    ) -> Self {
        let core = Self::fresh_core(&config, &ports, now);
        let probe_replies = vec![None; ports.len()];
        let neighbours = NeighbourTable::new(config.neighbours.clone());
        Self {
            core,
            config,
            provider_mac,
            vm_side_mac,
            gateway,
            ports,
            shadows: BTreeMap::new(),
            neighbours,
            arp_pending: BTreeMap::new(),
            mirror: None,
            flood: None,
            probe_replies,
            probe_answers: BTreeMap::new(),
            reset_clients: VecDeque::new(),
            stats: PortStats::default(),
            generation: 0,
        }
    }

    fn fresh_core(config: &RouterConfig, ports: &[(VmId, [u8; 6])], now: Instant) -> ShadowRouter<Vec<Event>> {
        let mut core = ShadowRouter::new(config.clone(), Vec::new(), now);
        for (id, _) in ports {
            core.vm_ref(id);
        }
        core
    }

    /// The router process restarts: every flow, learned MAC and counter of the core is lost.
    /// The caller re-installs addresses and shadowing entries from its store.
    pub fn restart(&mut self, now: Instant) {
        let generation = self.core.fast_path_generation();
        self.core = Self::fresh_core(&self.config, &self.ports, now);
        self.core.continue_generation(generation);
        self.generation += 1;
        self.shadows.clear();
        self.neighbours.clear();
        self.arp_pending.clear();
        self.probe_answers.clear();
    }

    /// The port of the VM `id`.
    pub fn port_of(&self, id: &VmId) -> Option<usize> {
        self.ports.iter().position(|(vm, _)| vm == id)
    }

    /// The VM ports: id and MAC (all zeros while not yet learned).
    pub fn ports(&self) -> &[(VmId, [u8; 6])] {
        &self.ports
    }

    /// Records that `ip` is shadowed between the ports of `source` and `destination` (the
    /// entry itself goes to [`RouterNode::core`]).
    pub fn shadow_ports(&mut self, ip: Ipv4Addr, source: usize, destination: usize) {
        self.generation += 1;
        if let Some(before) = self.shadows.insert(ip, (source, destination))
            && before != (source, destination)
        {
            self.probe_answers.remove(&(before.0, ip));
            self.probe_answers.remove(&(before.1, ip));
        }
    }

    /// Forgets the ports of a shadowed address whose migration ended.
    pub fn unshadow(&mut self, ip: Ipv4Addr) {
        self.generation += 1;
        if let Some((source, destination)) = self.shadows.remove(&ip) {
            self.probe_answers.remove(&(source, ip));
            self.probe_answers.remove(&(destination, ip));
        }
    }

    /// A frame from the provider side.
    pub fn from_provider(&mut self, frame: Vec<u8>, now: Instant, out: &mut Vec<Out>) {
        // Parsed once: the core decides on it and the addresses route it.
        let parsed = parse_frame(&frame);
        let verdict = self.core.inbound_parsed(&parsed, now);
        let dst = ipv4_dst(&parsed);
        // Where clients are is learned from the frames the router accepts (forwards to a VM), and
        // from ARP about the addresses it routes: a dropped frame teaches nothing, so a flood of
        // frames the router refuses cannot fill the table (issue 13 item 4).
        let src = match &parsed {
            Ok(Packet::Ipv4(ip)) => Some((ip.src, frame[6..12].try_into().unwrap_or_default())),
            _ => None,
        };
        match verdict {
            InboundVerdict::Arp(arp) => {
                let routed =
                    self.shadows.contains_key(&arp.target_ip) || self.core.address_holder(arp.target_ip).is_some();
                if arp.operation == ARP_REQUEST && routed {
                    self.learn(arp.sender_ip, arp.sender_mac, now);
                    self.stats.arp_answered += 1;
                    out.push(Out::Provider(arp_reply(self.provider_mac, &arp)));
                } else if arp.operation == ARP_REPLY && routed && frame[0..6] == self.provider_mac {
                    // RFC 826: the answer to a request of the router's own (or a gratuitous one
                    // sent to it) for a client.
                    self.arp_pending.remove(&arp.sender_ip);
                    self.learn(arp.sender_ip, arp.sender_mac, now);
                }
            }
            InboundVerdict::NotShadowed => match dst.and_then(|d| self.core.address_holder(d)) {
                Some(VmRef(port)) => {
                    let port = port as usize;
                    if let Some((ip, mac)) = src {
                        self.learn(ip, mac, now);
                    }
                    if let Some((from, to)) = self.mirror
                        && from == port
                    {
                        self.forward_to_vm(to, frame.clone(), out);
                    }
                    self.forward_to_vm(port, frame, out);
                }
                None => self.stats.no_route += 1,
            },
            InboundVerdict::Deliver(deliver) => {
                let Some(&(source, destination)) = dst.and_then(|d| self.shadows.get(&d)) else {
                    self.stats.no_route += 1;
                    return;
                };
                if let Some((ip, mac)) = src {
                    self.learn(ip, mac, now);
                }
                match deliver {
                    Deliver::Source => {
                        if let Some((from, to)) = self.flood
                            && from == source
                        {
                            self.forward_to_vm(to, frame.clone(), out);
                        }
                        self.forward_to_vm(source, frame, out);
                    }
                    Deliver::Destination => self.forward_to_vm(destination, frame, out),
                    Deliver::Both => {
                        self.forward_to_vm(source, frame.clone(), out);
                        self.forward_to_vm(destination, frame, out);
                    }
                }
            }
            InboundVerdict::Drop(reason) => self.count_drop(reason),
        }
    }

    /// The fast path already delivered this provider-side IPv4 packet (sent from the Ethernet
    /// address `src_mac`) to the VM on `delivered`'s side: what [`RouterNode::from_provider`]
    /// does but send. The core replays it ([`ShadowRouter::replay_inbound`]); the client's
    /// address is learned from it unless the core would have dropped it, as an accepted frame
    /// teaches it; it counts as a frame to a VM.
    pub fn replay_inbound(&mut self, ip: &Ipv4Info, src_mac: [u8; 6], delivered: Side, now: Instant) -> Replay {
        let replay = self.core.replay_inbound(ip, delivered, now);
        if !matches!(replay, Replay::CoreWouldDrop(_)) {
            self.learn(ip.src, src_mac, now);
        }
        self.stats.to_vms += 1;
        replay
    }

    /// The fast path already forwarded this IPv4 packet from the VM on `port` to the provider
    /// side: what [`RouterNode::from_vm`] does but send. The core replays it
    /// ([`ShadowRouter::replay_egress`]); it counts as a frame to the provider side.
    pub fn replay_egress(&mut self, port: usize, ip: &Ipv4Info, now: Instant) -> Replay {
        let replay = self.core.replay_egress(VmRef(port as u32), ip, now);
        self.stats.to_provider += 1;
        replay
    }

    /// More datagrams of a flow the fast path forwarded than its record replayed (see
    /// [`ShadowRouter::replayed_more`]): counted as frames to the VMs or to the provider side.
    pub fn replayed_more(&mut self, ip: Ipv4Addr, inbound: Option<Side>, packets: u64) {
        self.core.replayed_more(ip, inbound, packets);
        if inbound.is_some() {
            self.stats.to_vms += packets;
        } else {
            self.stats.to_provider += packets;
        }
    }

    /// Changes whenever anything [`RouterNode::fast_path_shadows`], [`RouterNode::ports`] or
    /// [`RouterNode::retired_until`] return may have changed: the core's
    /// [`ShadowRouter::fast_path_generation`] plus the node's own changes (ports of shadowed
    /// addresses, a VM's MAC learned, a restart).
    pub fn fast_path_generation(&self) -> u64 {
        self.core.fast_path_generation().wrapping_add(self.generation)
    }

    /// The shadowed addresses as a fast path holds them, with the node's ports as the VMs. An
    /// address whose ports the node does not know (see [`RouterNode::shadow_ports`]), or one of
    /// whose VMs' MAC is not known yet, is `slow`: the core's path counts it as it does now.
    pub fn fast_path_shadows(&self) -> impl Iterator<Item = FastPathShadow> + '_ {
        self.core.fast_path_shadows().map(|mut s| {
            let known = |port: usize| self.ports.get(port).is_some_and(|(_, mac)| *mac != [0; 6]);
            match self.shadows.get(&s.ip) {
                Some(&(a, b)) if known(a) && known(b) => {
                    (s.source, s.destination) = (VmRef(a as u32), VmRef(b as u32));
                }
                _ => s.slow = true,
            }
            s
        })
    }

    /// See [`ShadowRouter::retired_until`].
    pub fn retired_until(&self) -> Option<Instant> {
        self.core.retired_until()
    }

    /// Whether a fast path must leave every frame to this node: a test feature that copies
    /// frames (`mirror`, `flood`) is set. ARP, DHCP from the VMs (UDP to port 67, for the host's
    /// server) and anything but TCP and UDP go to the node in any case.
    pub fn fast_path_blocked(&self) -> bool {
        self.mirror.is_some() || self.flood.is_some()
    }

    /// A frame from the VM on `port`.
    pub fn from_vm(&mut self, port: usize, frame: Vec<u8>, now: Instant, out: &mut Vec<Out>) {
        // A port configured without the VM's MAC learns it from what the VM sends (a multicast
        // source is never a VM's address).
        if let Some((_, mac)) = self.ports.get_mut(port)
            && *mac == [0; 6]
            && frame.len() >= 12
            && frame[6] & 1 == 0
        {
            mac.copy_from_slice(&frame[6..12]);
            self.generation += 1;
        }
        // ARP stays on the VM segment: the router answers for the gateway and hears the answers
        // to its probes; nothing of it (malformed ARP included) crosses to the provider side.
        let parsed = parse_frame(&frame);
        let arp = match &parsed {
            Ok(Packet::Arp(arp)) => arp,
            Err(_) if frame.len() >= 14 && frame[12..14] == [8, 6] => {
                self.stats.arp_ignored += 1;
                return;
            }
            // RFC 2131 4.1: clients send to the server port 67. The router's host runs the DHCP
            // server on the VM segments; the kernel hands it the request, the router leaves it.
            Ok(Packet::Ipv4(ip)) if matches!(ip.l4, crate::wire::L4::Udp { dst_port: 67, .. }) => {
                self.stats.dhcp_local += 1;
                return;
            }
            _ => return self.egress(port, frame, &parsed, now, out),
        };
        if arp.operation == ARP_REQUEST && arp.target_ip == self.gateway {
            self.stats.arp_answered += 1;
            out.push(Out::Vm(port, arp_reply(self.vm_side_mac, arp)));
        } else if arp.operation == ARP_REPLY && arp.target_ip == self.gateway {
            // Source guard (Neutron's port security): an answer to a health probe counts only
            // with the VM's own MAC, as the frame's source and the ARP sender. A forged answer
            // for X would otherwise tell the manager B is ready and start the ramp.
            let own = self.ports.get(port).map(|(_, mac)| *mac);
            let Some(last) = self
                .probe_replies
                .get_mut(port)
                .filter(|_| own.is_some_and(|mac| frame.get(6..12) == Some(&mac[..]) && arp.sender_mac == mac))
            else {
                self.stats.probe_answers_refused += 1;
                return;
            };
            *last = Some(now);
            if self.shadows.get(&arp.sender_ip).is_some_and(|&(a, b)| a == port || b == port) {
                self.probe_answers.insert((port, arp.sender_ip), now);
            }
        } else {
            self.stats.arp_ignored += 1;
        }
    }

    /// A VM's frame other than ARP: the core's egress verdict, then towards the client.
    fn egress(
        &mut self,
        port: usize,
        frame: Vec<u8>,
        parsed: &Result<Packet, crate::wire::ParseError>,
        now: Instant,
        out: &mut Vec<Out>,
    ) {
        match self.core.egress_parsed(VmRef(port as u32), parsed, now) {
            EgressVerdict::Forward => {
                let Ok(Packet::Ipv4(ip)) = parsed else {
                    self.stats.no_route += 1;
                    return;
                };
                match self.neighbours.get(ip.dst, now) {
                    Some(mac) => {
                        let mut frame = frame;
                        frame[0..6].copy_from_slice(&mac);
                        frame[6..12].copy_from_slice(&self.provider_mac);
                        self.stats.to_provider += 1;
                        out.push(Out::Provider(frame));
                    }
                    // Dropped like a kernel with no queue for unresolved neighbours: the VM's
                    // stack sends it again, by then the client has answered.
                    None => {
                        self.stats.no_route += 1;
                        self.resolve(ip.dst, ip.src, now, out);
                    }
                }
            }
            EgressVerdict::Drop(reason) => self.count_drop(reason),
        }
    }

    /// Runs the core's timers and sends what the core itself transmits.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Out>) {
        if self.core.poll_at().is_some_and(|t| t <= now) {
            self.core.poll(now);
        }
        self.neighbours.expire(now);
        self.sync_neighbour_stats();
        while let Some(t) = self.core.poll_transmit() {
            let d = &t.datagram;
            let mut frame = Vec::with_capacity(14 + d.len());
            frame.extend_from_slice(&[0; 12]);
            frame.extend_from_slice(&[8, 0]);
            frame.extend_from_slice(d);
            if let Some(vm) = t.vm {
                // To A, in a client's name: as a forwarded frame, from the gateway's MAC.
                self.forward_to_vm(vm.0 as usize, frame, out);
                continue;
            }
            let Some(mac) = self.neighbours.get(t.to, now) else {
                self.stats.no_route += 1;
                continue;
            };
            if t.kind == crate::router::TransmitKind::Reset && d.len() >= 24 && d[9] == 6 {
                let ihl = usize::from(d[0] & 0x0f) * 4;
                if d.len() >= ihl + 4 {
                    if self.reset_clients.len() == RESET_CLIENTS_KEPT {
                        self.reset_clients.pop_front();
                        self.stats.reset_clients_forgotten += 1;
                    }
                    self.reset_clients.push_back((t.to, u16::from_be_bytes([d[ihl + 2], d[ihl + 3]])));
                }
            }
            frame[0..6].copy_from_slice(&mac);
            frame[6..12].copy_from_slice(&self.provider_mac);
            match t.kind {
                crate::router::TransmitKind::Reset => self.stats.resets_sent += 1,
                _ => self.stats.closes_sent += 1,
            }
            out.push(Out::Provider(frame));
        }
    }

    /// The provider-side neighbour table.
    pub fn neighbours(&self) -> &NeighbourTable {
        &self.neighbours
    }

    /// Where a client is, as a fast path learned it from frames it forwarded without the node
    /// (to an address a VM holds alone: such frames are not replayed). Taught when a VM's frame
    /// to a client the node has not heard from comes up to it, so that the node sends it on as
    /// it would have had it seen the client's frames itself.
    pub fn learn_neighbour(&mut self, ip: Ipv4Addr, mac: [u8; 6], now: Instant) {
        self.learn(ip, mac, now);
    }

    /// Records where a client is (an accepted frame or ARP from it).
    fn learn(&mut self, ip: Ipv4Addr, mac: [u8; 6], now: Instant) {
        // A multicast or broadcast source MAC is no host's: never a next hop.
        if mac[0] & 1 == 1 || mac == [0; 6] {
            return;
        }
        // The counters change only with a new entry (an eviction, too, comes with one): the
        // common case, a known sender, costs no update.
        if self.neighbours.confirm(ip, mac, now) {
            self.sync_neighbour_stats();
        }
    }

    /// Asks the provider segment where `ip` is (RFC 826), in the name of `sender`, the address the
    /// VM sent from: at most once a second per address, and for at most [`MAX_PENDING_ARP`]
    /// addresses at a time.
    fn resolve(&mut self, ip: Ipv4Addr, sender: Ipv4Addr, now: Instant, out: &mut Vec<Out>) {
        if self.arp_pending.get(&ip).is_some_and(|&at| now.saturating_duration_since(at) < ARP_RETRY) {
            return;
        }
        if self.arp_pending.len() >= MAX_PENDING_ARP {
            self.arp_pending.retain(|_, at| now.saturating_duration_since(*at) < ARP_RETRY);
            if self.arp_pending.len() >= MAX_PENDING_ARP {
                return;
            }
        }
        self.arp_pending.insert(ip, now);
        self.stats.arp_requests += 1;
        out.push(Out::Provider(arp_frame(ArpOperation::REQUEST, (self.provider_mac, sender), ([0; 6], ip), [0xff; 6])));
    }

    fn sync_neighbour_stats(&mut self) {
        self.stats.neighbours = self.neighbours.len() as u64;
        self.stats.neighbours_evicted = self.neighbours.evicted();
        self.stats.neighbours_aged = self.neighbours.aged();
    }

    /// Announces the router on every segment (a router group's active member, see
    /// [`crate::ha`]): `announcement` on the provider side and on each VM port, each from the
    /// side's MAC; with `gratuitous`, also a gratuitous ARP for each address it serves (at most
    /// [`MAX_GRATUITOUS`]) on the provider side and for the gateway on each VM port, so that
    /// switches learn where the group's MACs are now and neighbours update their caches.
    pub fn announce(&self, announcement: &crate::ha::Announcement, gratuitous: bool, out: &mut Vec<Out>) {
        out.push(Out::Provider(announcement.frame(self.provider_mac)));
        for port in 0..self.ports.len() {
            out.push(Out::Vm(port, announcement.frame(self.vm_side_mac)));
        }
        if !gratuitous {
            return;
        }
        let served = self.core.addresses().chain(self.shadows.keys().copied());
        for ip in served.take(MAX_GRATUITOUS) {
            let frame = arp_frame(ArpOperation::REQUEST, (self.provider_mac, ip), ([0; 6], ip), [0xff; 6]);
            out.push(Out::Provider(frame));
        }
        for port in 0..self.ports.len() {
            let frame =
                arp_frame(ArpOperation::REQUEST, (self.vm_side_mac, self.gateway), ([0; 6], self.gateway), [0xff; 6]);
            out.push(Out::Vm(port, frame));
        }
    }

    /// Sends a health probe (an ARP request for `ip`) to the VM on `port`.
    pub fn probe(&self, port: usize, ip: Ipv4Addr, out: &mut Vec<Out>) {
        let frame = arp_frame(ArpOperation::REQUEST, (self.vm_side_mac, self.gateway), ([0; 6], ip), [0xff; 6]);
        out.push(Out::Vm(port, frame));
    }

    fn forward_to_vm(&mut self, port: usize, mut frame: Vec<u8>, out: &mut Vec<Out>) {
        let Some((_, mac)) = self.ports.get(port).filter(|(_, mac)| *mac != [0; 6]) else {
            self.stats.no_route += 1;
            return;
        };
        frame[0..6].copy_from_slice(mac);
        frame[6..12].copy_from_slice(&self.vm_side_mac);
        self.stats.to_vms += 1;
        out.push(Out::Vm(port, frame));
    }

    fn count_drop(&mut self, reason: DropReason) {
        use crate::events::ConflictKind as K;
        let name = match reason {
            DropReason::Malformed(_) => "malformed",
            DropReason::Spoofed => "spoofed",
            DropReason::Conflict(K::Rst) => "conflict_rst",
            DropReason::Conflict(K::SynAck) => "conflict_syn_ack",
            DropReason::Conflict(K::Data) => "conflict_data",
            DropReason::Conflict(K::DuplicateSequence) => "conflict_duplicate_sequence",
            DropReason::Conflict(K::Collision) => "conflict_collision",
            DropReason::Conflict(K::Other) => "conflict_other",
            DropReason::ReplicaDuplicate => "replica_duplicate",
            DropReason::ResetSuppressed => "reset_suppressed",
            DropReason::TableFull => "table_full",
            DropReason::SourceReleased => "source_released",
            DropReason::FragmentOrphan => "fragment_orphan",
            DropReason::ClosedByRouter => "closed_by_router",
        };
        *self.stats.dropped.entry(name.to_owned()).or_default() += 1;
    }
}

/// The IPv4 destination of a parsed frame.
fn ipv4_dst(parsed: &Result<Packet, crate::wire::ParseError>) -> Option<Ipv4Addr> {
    match parsed {
        Ok(Packet::Ipv4(ip)) => Some(ip.dst),
        _ => None,
    }
}

/// The router's answer, as `mac`, to an ARP request for the address it asks about.
fn arp_reply(mac: [u8; 6], request: &crate::wire::ArpInfo) -> Vec<u8> {
    arp_frame(
        ArpOperation::REPLY,
        (mac, request.target_ip),
        (request.sender_mac, request.sender_ip),
        request.sender_mac,
    )
}

/// Most gratuitous ARP frames a takeover sends on the provider side (one per address served):
/// a transmit ring's worth; neighbours of further addresses learn from the frames forwarded.
pub const MAX_GRATUITOUS: usize = 4096;

/// Addresses the router may be resolving at once: a VM sending to many unknown addresses makes
/// at most this many requests a second.
const MAX_PENDING_ARP: usize = 256;
/// The least time between two requests for one address.
const ARP_RETRY: core::time::Duration = core::time::Duration::from_secs(1);

/// ARP operation code of a request.
const ARP_REQUEST: u16 = 1;
/// ARP operation code of a reply.
const ARP_REPLY: u16 = 2;

/// An Ethernet ARP frame: `operation` from sender `source` (MAC, IP) about target `target`
/// (MAC, IP), sent to the Ethernet address `eth_dst`.
fn arp_frame(
    operation: ArpOperation,
    source: ([u8; 6], Ipv4Addr),
    target: ([u8; 6], Ipv4Addr),
    eth_dst: [u8; 6],
) -> Vec<u8> {
    let eth = Ethernet2Header { source: source.0, destination: eth_dst, ether_type: EtherType::ARP };
    let mut frame = eth.to_bytes().to_vec();
    // Ethernet and IPv4 addresses of the right lengths: `new` cannot refuse them.
    if let Ok(arp) = ArpPacket::new(
        ArpHardwareId::ETHERNET,
        EtherType::IPV4,
        operation,
        &source.0,
        &source.1.octets(),
        &target.0,
        &target.1.octets(),
    ) {
        frame.extend_from_slice(&arp.to_bytes());
    }
    frame
}

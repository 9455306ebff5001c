//! The XDP fast path (issue 16) when its flow map loses flows: one taken out as an LRU eviction
//! would, and a SYN flood from spoofed clients through a small map (STYLE 14: what remote hosts
//! send may not stop a part or grow memory without bound; the test floods it and measures). The
//! figures are printed (`--nocapture`).
//!
//! As in `differential.rs`, a [`Forwarder`] on in-memory ports runs beside the program, which is
//! attached nowhere: each frame is run through the program (`BPF_PROG_TEST_RUN`) as if it
//! arrived on its interface; what it forwards is read from its output (the forwarder's next step
//! replays its record into the core), what it hands up waits on the forwarder's port as the
//! AF_PACKET path would receive it. The steps come every few hundred frames, as the real loop's.
//!
//! Needs root (a network namespace of the test thread's own): CI runs it; elsewhere it says so
//! and stops.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use core::time::Duration;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use common::MemPort;
use common::xdp::{MAC_A, MAC_B, PROVIDER_MAC, VM_SIDE_MAC, addressed, namespace, on_cpu, shadowing_forwarder};
use ipshadow_core::testkit::{X, tcp};
use ipshadow_core::wire::{L4, Packet, parse_frame};
use ipshadow_core::{FlowKey, Instant, Owner, Phase, Side};
use ipshadow_dataplane::Forwarder;
use ipshadow_dataplane::fast::{FastPathSync, flow_map_entries};
use ipshadow_xdp::{XDP_PASS, XDP_REDIRECT, abi};

const SYN: u8 = 0x02;
const SYN_ACK: u8 = 0x12;
const ACK: u8 = 0x10;
const PSH_ACK: u8 = 0x18;
/// The shadowed service's port.
const SERVICE: u16 = 80;

/// Where a frame went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum To {
    A,
    B,
    Provider,
}

impl To {
    fn owner(side: Side) -> Self {
        match side {
            Side::Source => Self::A,
            Side::Destination => Self::B,
        }
    }

    /// The interface a VM's frames arrive on (1: A's, 2: B's).
    fn interface(self) -> usize {
        match self {
            Self::A => 1,
            Self::B => 2,
            Self::Provider => 0,
        }
    }
}

/// Where the program sent a frame it forwarded, from the MACs it wrote.
fn redirected_to(frame: &[u8]) -> To {
    let (dst, src) = (&frame[0..6], &frame[6..12]);
    match (src == VM_SIDE_MAC, dst) {
        (false, _) if src == PROVIDER_MAC => To::Provider,
        (true, d) if d == MAC_A => To::A,
        (true, d) if d == MAC_B => To::B,
        _ => panic!("redirected with MACs {dst:02x?} <- {src:02x?}"),
    }
}

/// What the program did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Forwarded(To),
    /// Handed up: it waits on the forwarder's port.
    Up,
}

/// The flow key of a TCP frame to or from X, oriented client -> X.
fn flow_key(frame: &[u8]) -> Option<FlowKey> {
    let Ok(Packet::Ipv4(ip)) = parse_frame(frame) else { return None };
    let L4::Tcp(t) = ip.l4 else { return None };
    let (client_ip, client_port, shadow_port) =
        if ip.dst == X { (ip.src, t.src_port, t.dst_port) } else { (ip.dst, t.dst_port, t.src_port) };
    Some(FlowKey { client_ip, client_port, shadow_ip: X, shadow_port, protocol: ip.protocol })
}

fn map_key(key: &FlowKey) -> abi::FlowKey {
    abi::FlowKey {
        client_ip: key.client_ip,
        shadow_ip: key.shadow_ip,
        client_port: key.client_port,
        shadow_port: key.shadow_port,
        protocol: key.protocol,
    }
}

fn owner_byte(side: Side) -> u8 {
    match side {
        Side::Source => abi::OWNER_SOURCE,
        Side::Destination => abi::OWNER_DESTINATION,
    }
}

/// A forwarder with X shadowed at a fixed 50 % between the VMs on ports 0 (A) and 1 (B), its
/// core's flow table sized `max_flows` (the program's flow map [`flow_map_entries`] of it, as
/// the router sizes it); every other setting is the default (the core's hash keyed at random).
struct Rig {
    fwd: Forwarder<MemPort>,
    ifs: [u32; 3],
    now: Instant,
    /// Frames the program forwarded, and those it handed up.
    forwarded: u64,
    up: u64,
}

impl Rig {
    fn new(ifs: [u32; 3], max_flows: u32) -> Self {
        let t0 = Instant::from_secs(1);
        let fwd = shadowing_forwarder(ifs, max_flows, None, t0);
        let mut rig = Self { fwd, ifs, now: t0, forwarded: 0, up: 0 };
        // The first turn writes the address into the program's maps.
        rig.step();
        rig
    }

    fn fast(&mut self) -> &mut FastPathSync {
        self.fwd.fast.as_mut().unwrap()
    }

    /// Runs `frame` through the program as if it arrived on `interface` (0: the provider's, 1:
    /// A's, 2: B's), with that interface's MACs.
    fn send(&mut self, interface: usize, frame: Vec<u8>) -> Verdict {
        let (interface, frame) = addressed(interface, frame);
        let ifindex = self.ifs[interface];
        let run = self.fast().fast_path().test_run(&frame, ifindex).unwrap();
        match run.action {
            XDP_REDIRECT => {
                self.forwarded += 1;
                Verdict::Forwarded(redirected_to(&run.frame))
            }
            XDP_PASS => {
                self.up += 1;
                let port = if interface == 0 { &mut self.fwd.provider } else { &mut self.fwd.vms[interface - 1] };
                port.rx.push_back(frame);
                Verdict::Up
            }
            action => panic!("XDP action {action}"),
        }
    }

    /// Turns of the loop, a millisecond apart, until it has taken every frame handed up (a
    /// turn takes a batch from each port): returns what they sent, and where.
    fn step(&mut self) -> Vec<(To, Vec<u8>)> {
        let mut sent = Vec::new();
        loop {
            self.now = self.now + Duration::from_millis(1);
            self.fwd.step(self.now).unwrap();
            sent.extend(self.fwd.provider.tx.drain(..).map(|f| (To::Provider, f)));
            sent.extend(self.fwd.vms[0].tx.drain(..).map(|f| (To::A, f)));
            sent.extend(self.fwd.vms[1].tx.drain(..).map(|f| (To::B, f)));
            if self.fwd.provider.rx.is_empty() && self.fwd.vms.iter().all(|vm| vm.rx.is_empty()) {
                return sent;
            }
        }
    }

    /// The owner byte of a flow in the program's map.
    fn in_map(&mut self, key: &FlowKey) -> Option<u8> {
        self.fast().fast_path().flow(&map_key(key)).map(|f| f.owner)
    }
}

/// An established TCP connection from a client to X.
struct Conn {
    key: FlowKey,
    owner: Side,
    client_seq: u32,
    server_seq: u32,
}

impl Conn {
    fn client(&self) -> (Ipv4Addr, u16) {
        (self.key.client_ip, self.key.client_port)
    }

    /// The client's next data segment.
    fn request(&mut self) -> Vec<u8> {
        let frame = tcp(self.client(), (X, SERVICE), PSH_ACK, self.client_seq, self.server_seq, b"ping");
        self.client_seq += 4;
        frame
    }

    /// The owner's next data segment.
    fn reply(&mut self) -> Vec<u8> {
        let frame = tcp((X, SERVICE), self.client(), PSH_ACK, self.server_seq, self.client_seq, b"pong");
        self.server_seq += 4;
        frame
    }
}

/// Opens `n` connections (in batches of 100 handshakes, a loop's step after each segment of
/// the batch), each handshake's three segments forwarded by the program and replayed into the
/// core: the core tracks each established with the owner the program chose, and the program's
/// map has it with that owner.
fn establish(rig: &mut Rig, n: u16) -> Vec<Conn> {
    let mut conns = Vec::new();
    for (b, batch) in (0..n).collect::<Vec<_>>().chunks(100).enumerate() {
        // Each batch on the next CPU, as an interface's receive queues spread flows.
        on_cpu(b);
        let clients: Vec<(Ipv4Addr, u16)> = batch
            .iter()
            .map(|&i| (Ipv4Addr::new(198, 51, 100 + (i / 250) as u8, 1 + (i % 250) as u8), 40_000 + i))
            .collect();
        let mut owners = Vec::new();
        for &client in &clients {
            owners.push(match rig.send(0, tcp(client, (X, SERVICE), SYN, 1000, 0, &[])) {
                Verdict::Forwarded(To::A) => Side::Source,
                Verdict::Forwarded(To::B) => Side::Destination,
                other => panic!("the SYN of {client:?}: {other:?}"),
            });
        }
        rig.step();
        for (&client, &owner) in clients.iter().zip(&owners) {
            let syn_ack = tcp((X, SERVICE), client, SYN_ACK, 5000, 1001, &[]);
            assert_eq!(
                rig.send(To::owner(owner).interface(), syn_ack),
                Verdict::Forwarded(To::Provider),
                "the SYN-ACK"
            );
        }
        rig.step();
        for (&client, &owner) in clients.iter().zip(&owners) {
            let ack = tcp(client, (X, SERVICE), ACK, 1001, 5001, &[]);
            assert_eq!(rig.send(0, ack), Verdict::Forwarded(To::owner(owner)), "the handshake's ACK");
        }
        rig.step();
        for (&client, &owner) in clients.iter().zip(&owners) {
            let key =
                FlowKey { client_ip: client.0, client_port: client.1, shadow_ip: X, shadow_port: SERVICE, protocol: 6 };
            let flow = rig.fwd.node.core.flow(&key).map(|f| (f.owner, f.phase));
            assert_eq!(flow, Some((Owner::from(owner), Phase::Established)), "the core's flow {key}");
            assert_eq!(rig.in_map(&key), Some(owner_byte(owner)), "the program's flow {key}");
            conns.push(Conn { key, owner, client_seq: 1001, server_seq: 5001 });
        }
    }
    conns
}

/// What became of the established connections' segments.
#[derive(Debug, Default)]
struct Delivery {
    /// Segments sent.
    sent: u64,
    /// Forwarded by the program to the right place.
    fast: u64,
    /// Handed up and sent to the right place by the core.
    core: u64,
    /// Sent anywhere else (to the VM that does not own the flow, or not at all).
    wrong: u64,
}

/// A request from each connection's client and a reply from its owner: each must reach its
/// owner (the provider), forwarded by the program or by the core, and after the loop's step
/// every connection is in the program's map with its owner (written again if it was lost).
fn exchange(rig: &mut Rig, conns: &mut [Conn], delivery: &mut Delivery) {
    let mut up = Vec::new();
    for (i, conn) in conns.iter_mut().enumerate() {
        let owner = To::owner(conn.owner);
        for (interface, frame, to) in [(0, conn.request(), owner), (owner.interface(), conn.reply(), To::Provider)] {
            delivery.sent += 1;
            match rig.send(interface, frame) {
                Verdict::Forwarded(at) if at == to => delivery.fast += 1,
                Verdict::Forwarded(_) => delivery.wrong += 1,
                Verdict::Up => up.push((i, to)),
            }
        }
    }
    let sent = rig.step();
    for (i, to) in up {
        let key = conns[i].key;
        let places = sent.iter().filter(|(_, f)| flow_key(f) == Some(key)).map(|(at, _)| *at);
        // A request and its reply went up together: each goes to its own place once.
        match places.filter(|at| *at == to).count() {
            1 => delivery.core += 1,
            _ => delivery.wrong += 1,
        }
    }
    for (at, frame) in &sent {
        if let Some(conn) = flow_key(frame).and_then(|k| conns.iter().find(|c| c.key == k))
            && *at != To::Provider
            && *at != To::owner(conn.owner)
        {
            delivery.wrong += 1;
        }
    }
    for conn in conns.iter() {
        assert_eq!(rig.in_map(&conn.key), Some(owner_byte(conn.owner)), "{} in the program's map", conn.key);
    }
}

/// Held by each test: they run one at a time, so that the memory measured is one test's.
static ALONE: Mutex<()> = Mutex::new(());

/// The resident set of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A flow lost from the program's map (as an LRU eviction would lose it) comes back: its next
/// segment goes up, the core delivers it to the flow's owner, the loop writes the flow into the
/// map again with that owner, and the program forwards the segment after that itself.
#[test]
fn a_flow_the_map_lost_is_healed_from_the_core() {
    let _alone = ALONE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(ifs) = namespace() else { return };
    let mut rig = Rig::new(ifs, 1 << 16);
    let mut conns = establish(&mut rig, 4);
    for (n, lost) in [(0, true), (1, false)] {
        // From the client (n = 0) and from the owner (n = 1).
        let conn = &mut conns[n];
        let owner = To::owner(conn.owner);
        rig.fast().fast_path().remove_flow(&map_key(&conn.key)).unwrap();
        let healed = rig.fast().status().flows_healed;
        let (interface, frame, to) =
            if lost { (0, conn.request(), owner) } else { (owner.interface(), conn.reply(), To::Provider) };
        assert_eq!(rig.send(interface, frame.clone()), Verdict::Up, "a segment of a flow the map lost");
        let sent = rig.step();
        let delivered: Vec<To> =
            sent.iter().filter(|(_, f)| flow_key(f) == Some(conn.key)).map(|(at, _)| *at).collect();
        assert_eq!(delivered, vec![to], "the core sent the segment to its owner's side");
        assert_eq!(rig.fast().status().flows_healed, healed + 1, "flows_healed");
        assert_eq!(rig.in_map(&conn.key), Some(owner_byte(conn.owner)), "the flow is in the map again");
        let frame = if lost { conn.request() } else { conn.reply() };
        assert_eq!(rig.send(interface, frame), Verdict::Forwarded(to), "the next segment, by the program");
        rig.step();
    }
    // The other connections were never touched and never went up.
    let mut delivery = Delivery::default();
    exchange(&mut rig, &mut conns, &mut delivery);
    assert_eq!((delivery.fast, delivery.core, delivery.wrong), (8, 0, 0), "{delivery:?}");
    let status = rig.fast().status();
    eprintln!(
        "heal: {} frames forwarded by the program, {} handed up, {} flows healed",
        rig.forwarded, rig.up, status.flows_healed
    );
}

/// The core's flow table in these tests (the map a little larger): small, so that the flood overruns both many times.
const MAP_FLOWS: u32 = 4096;
/// The flood's SYNs, each from a random client address and port.
const FLOOD: u32 = 50_000;
/// The loop takes a turn after this many frames (its batch is 256 per port).
const STEP_EVERY: u32 = 256;
/// The established connections exchange a segment each way after this many flood frames.
const EXCHANGE_EVERY: u32 = 1000;
/// Connections established before the flood.
const CONNS: u16 = 32;
/// The connections take turns in groups of this many: each is idle for `CONNS / GROUP`
/// exchanges at a time, long enough for the flood to push it out of the map.
const GROUP: usize = 4;

/// A SYN flood from spoofed clients through a flow map of 4,096 entries: the map and the core's
/// table stay within their sizes, the connections made before the flood reach their owners
/// throughout (forwarded by the program, or by the core and then healed), none reaches the
/// other VM, and the process's memory stays bounded.
#[test]
fn a_syn_flood_overruns_the_flow_map_but_not_its_bounds_or_the_established_flows() {
    let _alone = ALONE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(ifs) = namespace() else { return };
    let started = std::time::Instant::now();
    let mut rig = Rig::new(ifs, MAP_FLOWS);
    let map_size = flow_map_entries(MAP_FLOWS) as usize;
    let mut conns = establish(&mut rig, CONNS);
    let (mut delivery, mut flood_fast, mut flood_core) = (Delivery::default(), 0u64, 0u64);
    let (mut map_max, mut core_max, mut lost) = (0usize, 0usize, 0u64);
    let rss_before = rss_kib();
    let mut rss_half = 0;
    // splitmix64, seeded: the same flood every run.
    let mut seed = 0x5eed_f100d_u64;
    let mut random = move || {
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    for i in 1..=FLOOD {
        let r = random();
        // 100.64.0.0/10 and a port above 1023.
        let client = (Ipv4Addr::from(0x6440_0000 | (r as u32 & 0x003f_ffff)), 1024 + (r >> 32) as u16 % 64_512);
        match rig.send(0, tcp(client, (X, SERVICE), SYN, (r >> 48) as u32, 0, &[])) {
            Verdict::Forwarded(To::A | To::B) => flood_fast += 1,
            Verdict::Forwarded(To::Provider) => panic!("a client's SYN sent back to the provider"),
            // A SYN whose TCP checksum happens to equal its pseudo-header's sum (1 in 65,536).
            Verdict::Up => {}
        }
        if i % STEP_EVERY == 0 {
            let sent = rig.step();
            flood_core += sent.iter().filter(|(to, f)| *to != To::Provider && flow_key(f).is_some()).count() as u64;
            let in_map = rig.fast().fast_path().flows().len();
            map_max = map_max.max(in_map);
            core_max = core_max.max(rig.fwd.node.core.flow_count());
            assert!(in_map <= map_size, "{in_map} flows in a map of {map_size}");
            // After the turn's sync, the map holds only flows the core tracks.
            assert!(
                in_map <= MAP_FLOWS as usize,
                "{in_map} flows in the map after a turn, the core's table {MAP_FLOWS}"
            );
        }
        if i % EXCHANGE_EVERY == 0 {
            let turn = (i / EXCHANGE_EVERY) as usize % (conns.len() / GROUP);
            let group = &mut conns[turn * GROUP..(turn + 1) * GROUP];
            // One of the group lost from the map, as a burst of new flows larger than the map's
            // spare entries between two turns of the loop would push it out: it goes up, and
            // is healed, in the middle of the flood.
            rig.fast().fast_path().remove_flow(&map_key(&group[0].key)).unwrap();
            lost += 1;
            exchange(&mut rig, group, &mut delivery);
        }
        if i == FLOOD / 2 {
            rss_half = rss_kib();
        }
    }
    rig.step();
    exchange(&mut rig, &mut conns, &mut delivery);
    let rss_after = rss_kib();
    let status = rig.fast().status();
    let counters = *rig.fwd.node.core.counters();
    let in_map = rig.fast().fast_path().flows().len();
    eprintln!(
        "flood: {FLOOD} SYNs from spoofed clients: {flood_fast} forwarded by the program, {} handed up \
         ({flood_core} of them delivered by the core)",
        u64::from(FLOOD) - flood_fast,
    );
    eprintln!(
        "flow map of {map_size}: at most {map_max} flows held, {in_map} at the end; core table of {MAP_FLOWS}: at most \
         {core_max} flows, {} at the end; embryonic flows evicted by the core {}, refused (table full) {}",
        rig.fwd.node.core.flow_count(),
        counters.evicted_embryonic,
        counters.table_full
    );
    eprintln!(
        "{CONNS} connections made before: {} segments, {} forwarded by the program, {} by the core, {} wrong; \
         {lost} taken out of the map, {} flows healed; program: {} frames forwarded, {} handed up, map full {}, records lost {}, map errors {}",
        delivery.sent,
        delivery.fast,
        delivery.core,
        delivery.wrong,
        status.flows_healed,
        status.frames_forwarded,
        status.frames_passed,
        status.flow_map_full,
        status.records_lost,
        status.map_errors
    );
    eprintln!(
        "VmRSS: {rss_before} KiB before the flood, {rss_half} KiB half-way, {rss_after} KiB after; {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(delivery.wrong, 0, "segments of established connections sent to the wrong place: {delivery:?}");
    assert_eq!(delivery.fast + delivery.core, delivery.sent, "every segment delivered: {delivery:?}");
    assert!(flood_fast > u64::from(FLOOD) * 9 / 10, "the program forwarded the flood");
    assert!(delivery.core >= lost, "the flows taken out of the map went up: {delivery:?}");
    assert_eq!(status.flows_healed, lost, "flows healed");
    assert!(core_max <= MAP_FLOWS as usize, "the core tracked {core_max} flows in a table of {MAP_FLOWS}");
    assert_eq!((status.records_lost, status.map_errors), (0, 0));
    assert!(rss_after.saturating_sub(rss_before) < 32 * 1024, "VmRSS grew from {rss_before} to {rss_after} KiB");
}

/// A core table full of established connections: the program's map, sized as the table, holds
/// all of them (the kernel's LRU hash keeps free nodes per CPU and evicts before its nominal
/// size), so that none is left to go up and be healed over and over, each heal evicting another.
#[test]
fn a_table_full_of_established_flows_fits_in_the_map() {
    let _alone = ALONE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(ifs) = namespace() else { return };
    let mut rig = Rig::new(ifs, MAP_FLOWS);
    let mut conns = establish(&mut rig, MAP_FLOWS as u16);
    assert_eq!(rig.fwd.node.core.flow_count(), MAP_FLOWS as usize, "the core's table is full");
    let in_map = rig.fast().fast_path().flows().len();
    let mut rounds = Vec::new();
    for round in 0..6 {
        if round == 3 {
            // A flood of SYNs the core refuses (its table is full of established flows): the
            // program decides each, and forgets it at the loop's next turn.
            for i in 1..=5000u32 {
                let client = (Ipv4Addr::from(0x6440_0000 | i), 1024);
                rig.send(0, tcp(client, (X, SERVICE), SYN, i, 0, &[]));
                if i % STEP_EVERY == 0 {
                    rig.step();
                }
            }
            rig.step();
        }
        let mut delivery = Delivery::default();
        let healed = rig.fast().status().flows_healed;
        exchange(&mut rig, &mut conns, &mut delivery);
        assert_eq!(delivery.wrong, 0, "{delivery:?}");
        rounds.push((delivery.core, rig.fast().status().flows_healed - healed));
    }
    let refused = rig.fwd.node.core.counters().table_full;
    eprintln!(
        "{MAP_FLOWS} established flows in the core: {in_map} in the program's map after the handshakes; \
         six rounds of a segment each way, a flood of 5,000 SYNs before the fourth ({refused} refused by \
         the core): (handed up, healed) {rounds:?}"
    );
    assert_eq!(in_map, MAP_FLOWS as usize, "the map holds every flow the core tracks");
    assert!(rounds.iter().all(|&r| r == (0, 0)), "segments handed up, flows healed: {rounds:?}");
}

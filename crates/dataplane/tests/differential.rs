//! The differential test of the XDP fast path (issue 16): the core's property-test frame streams
//! (`crates/core/tests/properties.rs`) run through the core alone and through the XDP program
//! beside a forwarder give the same verdicts and owners.
//!
//! The reference is a [`RouterNode`] fed every frame. The system under test is a [`Forwarder`]
//! on in-memory ports with a [`FastPathSync`] whose program is not attached anywhere: each frame
//! is first run through the program (`BPF_PROG_TEST_RUN`) as if it arrived on its interface; a
//! frame the program forwards is taken from its output (the records ring tells the core, which
//! replays it in the forwarder's next step); a frame it hands up goes to the forwarder's port,
//! as the AF_PACKET path would receive it. After each frame both send the same frames to the
//! same places, and every few frames (and at the end) both cores give every flow the same owner
//! and the program's flow map holds exactly the flows the core would have it hold.
//!
//! Needs root (a network namespace of the test thread's own, with veth interfaces whose indexes
//! the program's device map takes): CI runs it; elsewhere it says so and stops.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use core::time::Duration;
use std::cell::Cell;
use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;

use common::MemPort;
use common::xdp::{GATEWAY, MAC_A, MAC_B, PROVIDER_MAC, VM_SIDE_MAC, addressed, namespace};
use ipshadow_core::l2::{Out, RouterNode};
use ipshadow_core::testkit::{X, icmp_echo, make_fragment, tcp, udp};
use ipshadow_core::wire::{Packet, parse_frame};
use ipshadow_core::{
    Affinity, CongestionControlParameters, Event, FlowKey, Instant, MigrationOptions, Mode, Owner, Phase, Ramp,
    RampStep, RouterConfig, ShadowingEntry, Side, VmId,
};
use ipshadow_dataplane::Forwarder;
use ipshadow_dataplane::fast::FastPathSync;
use ipshadow_xdp::abi;
use ipshadow_xdp::{XDP_PASS, XDP_REDIRECT};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};

const SALT: u64 = 0x5eed_1e55;
/// Owners are compared every this many ops (and at the end of each stream).
const CHECK_EVERY: usize = 8;

/// One step of a stream: the shape of the core's property tests' `Op`.
#[derive(Clone, Debug)]
enum Op {
    Inbound { client: u8, port: u8, flags: u8, seq: u16, data: bool },
    Egress { b: bool, client: u8, port: u8, flags: u8, seq: u16, data: bool },
    Udp { inbound: bool, b: bool, client: u8, port: u8 },
    Ping { client: u8, id: u8 },
    Fragment { inbound: bool, b: bool, client: u8, ident: u8, first: bool },
    Garbage(Vec<u8>),
    Mangled { inbound: bool, at: u8, value: u8 },
    Advance(u16),
    Control(u8),
}

/// The core's property-test generator (`crates/core/tests/properties.rs`), copied.
fn op() -> impl Strategy<Value = Op> {
    let flags = prop::sample::select(vec![0x02u8, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0x01]);
    prop_oneof![
        4 => (any::<u8>(), 0u8..8, flags.clone(), any::<u16>(), any::<bool>())
            .prop_map(|(client, port, flags, seq, data)| Op::Inbound { client: client % 6, port, flags, seq, data }),
        4 => (any::<bool>(), any::<u8>(), 0u8..8, flags, any::<u16>(), any::<bool>())
            .prop_map(|(b, client, port, flags, seq, data)| Op::Egress { b, client: client % 6, port, flags, seq, data }),
        1 => (any::<bool>(), any::<bool>(), any::<u8>(), 0u8..4)
            .prop_map(|(inbound, b, client, port)| Op::Udp { inbound, b, client: client % 6, port }),
        1 => (any::<u8>(), 0u8..4).prop_map(|(client, id)| Op::Ping { client: client % 6, id }),
        1 => (any::<bool>(), any::<bool>(), any::<u8>(), 0u8..4, any::<bool>())
            .prop_map(|(inbound, b, client, ident, first)| Op::Fragment { inbound, b, client: client % 6, ident, first }),
        1 => prop::collection::vec(any::<u8>(), 0..80).prop_map(Op::Garbage),
        1 => (any::<bool>(), 0u8..60, any::<u8>()).prop_map(|(inbound, at, value)| Op::Mangled { inbound, at, value }),
        2 => (0u16..5000).prop_map(Op::Advance),
        1 => (0u8..8).prop_map(Op::Control),
    ]
}

fn client(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, n + 1)
}

/// How a stream's address is shadowed.
#[derive(Clone, Debug)]
struct Setup {
    mode: Mode,
    affinity: Affinity,
    ramp: Ramp,
    /// B's lease is bound before the first frame (a fixed split applies from the start).
    bound: bool,
}

/// Where a frame went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum To {
    A,
    B,
    Provider,
}

/// What a frame (or a turn of the clock, or a control action) made the router send.
#[derive(Clone, PartialEq, Eq)]
struct Sent(Vec<(To, Vec<u8>)>);

impl Sent {
    /// In order on each interface; the order between interfaces means nothing.
    fn new(mut sent: Vec<(To, Vec<u8>)>) -> Self {
        sent.sort_by_key(|(to, _)| *to);
        Self(sent)
    }
}

impl fmt::Debug for Sent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let described: Vec<String> = self
            .0
            .iter()
            .map(|(to, frame)| match parse_frame(frame) {
                Ok(Packet::Ipv4(ip)) => format!("{to:?}: {} -> {} {:?}", ip.src, ip.dst, ip.l4),
                _ => format!("{to:?}: {} bytes", frame.len()),
            })
            .collect();
        f.debug_list().entries(described).finish()
    }
}

fn options(setup: &Setup) -> MigrationOptions {
    MigrationOptions {
        mode: setup.mode,
        affinity: setup.affinity,
        ramp: setup.ramp.clone(),
        salt: SALT,
        ..Default::default()
    }
}

/// A router node with X shadowed between the VMs on ports 0 (A) and 1 (B). Two settings differ
/// from the defaults, for the two places where the program may, by design, forward what the core
/// alone would not: a table large enough that no stream fills it (a flow the core cannot track,
/// `Replay::CoreWouldDrop`), and a sweep that ends every idle flow in the turn its timeout passes
/// (the core ends an idle flow when it next sees it or when its sweep comes by, within
/// `sweep_period`; until then the program forwards the flow's frames to its last owner, and
/// the core adopts them, where the core alone would have decided the flow anew). The kernel's
/// clock does not follow the test's, so the program cannot age flows here.
fn node(setup: &Setup, t0: Instant) -> RouterNode {
    let sweep_period = Duration::from_millis(1);
    let config = RouterConfig { max_flows: 4096, hash_key: Some(1), sweep_period, ..RouterConfig::default() };
    let ports = vec![(VmId::from("vm-a"), MAC_A), (VmId::from("vm-b"), MAC_B)];
    let mut node = RouterNode::new(config, PROVIDER_MAC, VM_SIDE_MAC, GATEWAY, ports, t0);
    let params = CongestionControlParameters::default();
    let entry = ShadowingEntry::new(X, VmId::from("vm-a"), VmId::from("vm-b"), t0, params, options(setup));
    node.core.add_entry(entry, t0).unwrap();
    node.shadow_ports(X, 0, 1);
    if setup.bound {
        node.core.lease_bound(X, t0).unwrap();
    }
    node
}

/// The reference and the system under test, side by side.
struct Pair {
    reference: RouterNode,
    system: Forwarder<MemPort>,
    ifs: [u32; 3],
    now: Instant,
    /// Frames the program forwarded, and those it handed up.
    fast: u64,
    up: u64,
}

impl Pair {
    fn new(setup: &Setup, ifs: [u32; 3]) -> Self {
        let t0 = Instant::from_secs(1);
        let mut fast =
            FastPathSync::open_detached(ifs[0], &ifs[1..], (PROVIDER_MAC, VM_SIDE_MAC), None, 1 << 16, t0).unwrap();
        // Every datagram recorded: the core's clock here is the test's, not the kernel's, so a
        // batch of the kernel's 50 ms would hold back datagrams whose last-seen time matters.
        let config = fast.fast_path().config();
        fast.fast_path().set_config(ipshadow_xdp::abi::Config { udp_batch_ns: 0, ..config }).unwrap();
        let mut system =
            Forwarder::new(MemPort::default(), vec![MemPort::default(), MemPort::default()], node(setup, t0));
        system.fast = Some(fast);
        let mut pair = Self { reference: node(setup, t0), system, ifs, now: t0, fast: 0, up: 0 };
        // The first turn writes the address into the program's maps.
        let (reference, system) = pair.turn(None);
        assert_eq!(system.unwrap(), reference, "the first turn");
        pair
    }

    /// The reference takes the frame (if any), runs its timers and ends its migration if the
    /// core did, as the forwarder does.
    fn reference_turn(&mut self, frame: Option<(usize, Vec<u8>)>) -> Sent {
        let mut out = Vec::new();
        match frame {
            Some((0, frame)) => self.reference.from_provider(frame, self.now, &mut out),
            Some((i, frame)) => self.reference.from_vm(i - 1, frame, self.now, &mut out),
            None => {}
        }
        self.reference.poll(self.now, &mut out);
        for event in std::mem::take(self.reference.core.sink_mut()) {
            if let Event::MigrationEnded { ip, .. } = event {
                self.reference.unshadow(ip);
            }
        }
        Sent::new(
            out.into_iter()
                .map(|o| match o {
                    Out::Provider(f) => (To::Provider, f),
                    Out::Vm(0, f) => (To::A, f),
                    Out::Vm(_, f) => (To::B, f),
                })
                .collect(),
        )
    }

    /// The system takes the frame: through the program first, then the forwarder's turn (which
    /// replays what the program forwarded, or receives what it handed up).
    fn system_turn(&mut self, frame: Option<(usize, Vec<u8>)>) -> Result<Sent, TestCaseError> {
        let mut sent = Vec::new();
        // A driver gives XDP at least an Ethernet header (and BPF_PROG_TEST_RUN refuses less):
        // a shorter frame reaches the forwarder's port directly.
        if let Some((interface, frame)) = frame.as_ref().filter(|(_, f)| f.len() < 14) {
            self.port(*interface).rx.push_back(frame.clone());
        } else if let Some((interface, frame)) = frame {
            let program = self.system.fast.as_mut().unwrap().fast_path();
            let run = program.test_run(&frame, self.ifs[interface]).unwrap();
            match run.action {
                XDP_REDIRECT => {
                    self.fast += 1;
                    let (dst, src) = (&run.frame[0..6], &run.frame[6..12]);
                    let to = if src == PROVIDER_MAC {
                        To::Provider
                    } else if src == VM_SIDE_MAC && dst == MAC_A {
                        To::A
                    } else if src == VM_SIDE_MAC && dst == MAC_B {
                        To::B
                    } else {
                        return Err(TestCaseError::fail(format!("redirected with MACs {dst:02x?} <- {src:02x?}")));
                    };
                    sent.push((to, run.frame));
                }
                XDP_PASS => {
                    self.up += 1;
                    prop_assert_eq!(&run.frame, &frame, "a frame handed up is unchanged");
                    self.port(interface).rx.push_back(frame);
                }
                action => return Err(TestCaseError::fail(format!("XDP action {action}"))),
            }
        }
        self.system.step(self.now).unwrap();
        sent.extend(self.system.provider.tx.drain(..).map(|f| (To::Provider, f)));
        sent.extend(self.system.vms[0].tx.drain(..).map(|f| (To::A, f)));
        sent.extend(self.system.vms[1].tx.drain(..).map(|f| (To::B, f)));
        Ok(Sent::new(sent))
    }

    fn port(&mut self, interface: usize) -> &mut MemPort {
        if interface == 0 { &mut self.system.provider } else { &mut self.system.vms[interface - 1] }
    }

    fn turn(&mut self, frame: Option<(usize, Vec<u8>)>) -> (Sent, Result<Sent, TestCaseError>) {
        (self.reference_turn(frame.clone()), self.system_turn(frame))
    }

    /// Both cores give every flow the same owner and phase; the program's flow map holds
    /// exactly the flows (and owners) the system's core would have a fast path hold, and the
    /// flows it tracks without knowing their owner yet (marked so: their frames go up).
    fn check_owners(&mut self, keys: &BTreeSet<FlowKey>, n: usize) -> Result<(), TestCaseError> {
        for key in keys {
            let reference = self.reference.core.flow(key).map(|f| (f.owner, f.phase));
            let system = self.system.node.core.flow(key).map(|f| (f.owner, f.phase));
            prop_assert_eq!(system, reference, "flow {} after op {}", key, n);
        }
        let mut reference = self.reference.core.fast_path_flows();
        let mut system = self.system.node.core.fast_path_flows();
        reference.sort();
        system.sort();
        prop_assert_eq!(&system, &reference, "the cores' fast-path flows after op {}", n);
        let mut program: Vec<(FlowKey, u8)> = self
            .system
            .fast
            .as_mut()
            .unwrap()
            .fast_path()
            .flows()
            .into_iter()
            .map(|(k, f)| {
                let key = FlowKey {
                    client_ip: k.client_ip,
                    client_port: k.client_port,
                    shadow_ip: k.shadow_ip,
                    shadow_port: k.shadow_port,
                    protocol: k.protocol,
                };
                (key, f.owner)
            })
            .collect();
        program.sort();
        let core = &self.system.node.core;
        let unknown = keys.iter().filter(|k| {
            core.entry(k.shadow_ip).is_some()
                && core.flow(k).is_some_and(|f| f.owner == Owner::Unknown && f.phase != Phase::Retired)
        });
        let mut expected: Vec<(FlowKey, u8)> = system
            .iter()
            .map(|&(k, side)| (k, if side == Side::Destination { abi::OWNER_DESTINATION } else { abi::OWNER_SOURCE }))
            .chain(unknown.map(|&k| (k, abi::OWNER_UNKNOWN)))
            .collect();
        expected.sort();
        prop_assert_eq!(&program, &expected, "the program's flow map after op {}", n);
        Ok(())
    }
}

/// The frames an op sends, each with the interface it arrives on (0: the provider's, 1 + i: VM
/// port i's), as the core's properties build them, with the MACs of this topology.
fn frames(op: &Op, last: &mut Vec<u8>) -> Vec<(usize, Vec<u8>)> {
    let vm = |b: bool| if b { 2 } else { 1 };
    let sent = match *op {
        Op::Inbound { client: c, port, flags, seq, data } => {
            let payload: &[u8] = if data { b"abc" } else { b"" };
            vec![addressed(0, tcp((client(c), 1000 + u16::from(port)), (X, 80), flags, u32::from(seq), 7, payload))]
        }
        Op::Egress { b, client: c, port, flags, seq, data } => {
            let payload: &[u8] = if data { b"xyz" } else { b"" };
            vec![addressed(vm(b), tcp((X, 80), (client(c), 1000 + u16::from(port)), flags, u32::from(seq), 7, payload))]
        }
        Op::Udp { inbound: true, client: c, port, .. } => {
            vec![addressed(0, udp((client(c), 5000 + u16::from(port)), (X, 53), b"q"))]
        }
        Op::Udp { inbound: false, b, client: c, port } => {
            vec![addressed(vm(b), udp((X, 53), (client(c), 5000 + u16::from(port)), b"a"))]
        }
        Op::Ping { client: c, id } => vec![addressed(0, icmp_echo(client(c), X, u16::from(id), 1, false))],
        Op::Fragment { inbound, b, client: c, ident, first } => {
            let (off, more, keep) = if first { (0, true, 16) } else { (2, false, 8) };
            if inbound {
                let f = udp((client(c), 7000), (X, 53), &[0; 40]);
                vec![addressed(0, make_fragment(f, u16::from(ident), off, more, keep))]
            } else {
                let f = udp((X, 53), (client(c), 7000), &[0; 40]);
                vec![addressed(vm(b), make_fragment(f, u16::from(ident), off, more, keep))]
            }
        }
        Op::Garbage(ref bytes) => vec![(0, bytes.clone()), (1, bytes.clone())],
        Op::Mangled { inbound, at, value } => {
            let mut f = last.clone();
            let i = usize::from(at) % f.len();
            f[i] = value;
            return vec![if inbound { (0, f) } else { (2, f) }];
        }
        Op::Advance(_) | Op::Control(_) => vec![],
    };
    if let Some((_, f)) = sent.last()
        && !matches!(op, Op::Garbage(_))
    {
        last.clone_from(f);
    }
    sent
}

/// The flow key of a TCP/UDP frame to or from X.
fn flow_key(frame: &[u8]) -> Option<FlowKey> {
    let Ok(Packet::Ipv4(ip)) = parse_frame(frame) else { return None };
    let (src_port, dst_port) = match ip.l4 {
        ipshadow_core::wire::L4::Tcp(t) => (t.src_port, t.dst_port),
        ipshadow_core::wire::L4::Udp { src_port, dst_port } => (src_port, dst_port),
        _ => return None,
    };
    let (client_ip, client_port, shadow_port) =
        if ip.dst == X { (ip.src, src_port, dst_port) } else { (ip.dst, dst_port, src_port) };
    Some(FlowKey { client_ip, client_port, shadow_ip: X, shadow_port, protocol: ip.protocol })
}

/// Runs one stream through both; returns the frames the program forwarded and handed up.
fn run(setup: &Setup, ops: &[Op], ifs: [u32; 3]) -> Result<(u64, u64), TestCaseError> {
    let mut pair = Pair::new(setup, ifs);
    let mut last = tcp((client(0), 1000), (X, 80), 0x02, 1, 0, &[]);
    let mut keys = BTreeSet::new();
    for (n, op) in ops.iter().enumerate() {
        let mut turns = Vec::new();
        match *op {
            Op::Advance(ms) => {
                pair.now = pair.now + Duration::from_millis(u64::from(ms));
                turns.push(pair.turn(None));
            }
            Op::Control(c) => {
                let now = pair.now;
                for core in [&mut pair.reference.core, &mut pair.system.node.core] {
                    let _ = match c {
                        0 => core.lease_bound(X, now),
                        1 => core.pause(X, now),
                        2 => core.resume(X, now),
                        3 => core.promote(X, now),
                        4 => core.abort(X, now),
                        5 => core.set_deadline(X, Some(now + Duration::from_secs(3))),
                        6 => core.cut_over(X, now),
                        _ => core.finish_rollback(X, now),
                    };
                }
                turns.push(pair.turn(None));
            }
            _ => {
                for (interface, frame) in frames(op, &mut last) {
                    keys.extend(flow_key(&frame));
                    turns.push(pair.turn(Some((interface, frame))));
                }
            }
        }
        for (reference, system) in turns {
            prop_assert_eq!(system?, reference, "what was sent at op {} ({:?})", n, op);
        }
        if n % CHECK_EVERY == CHECK_EVERY - 1 || n + 1 == ops.len() {
            pair.check_owners(&keys, n)?;
        }
    }
    let stats = pair.system.fast.as_mut().unwrap().fast_path().stats();
    prop_assert_eq!(stats.forwarded(), pair.fast, "the program's own count of what it forwarded");
    prop_assert_eq!((stats.records_lost, stats.flow_map_full), (0, 0));
    let c = pair.system.node.core.counters();
    prop_assert_eq!((c.fast_path_disagreed, c.fast_path_would_drop), (0, 0), "replays the core disagreed with");
    Ok((pair.fast, pair.up))
}

/// Runs `cases` random streams of up to 200 ops for setups drawn from `setups`; returns how
/// many frames the program forwarded and handed up over the run (`None`: skipped, not root).
fn streams(cases: u32, setups: impl Strategy<Value = Setup>) -> Option<(u64, u64)> {
    let ifs = namespace()?;
    let config = ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() };
    let (fast, up) = (Cell::new(0u64), Cell::new(0u64));
    TestRunner::new(config)
        .run(&(setups, prop::collection::vec(op(), 1..200)), |(setup, ops)| {
            let (f, u) = run(&setup, &ops, ifs)?;
            fast.set(fast.get() + f);
            up.set(up.get() + u);
            Ok(())
        })
        .unwrap();
    let (fast, up) = (fast.get(), up.get());
    eprintln!("{cases} streams: {fast} frames forwarded by the program, {up} handed up");
    Some((fast, up))
}

/// The observer saw both paths: the program forwarded frames, and handed others up.
fn both_paths(counts: Option<(u64, u64)>) {
    if let Some((fast, up)) = counts {
        assert!(fast > 0 && up > 0, "the program forwarded {fast} frames and handed {up} up");
    }
}

fn linear(mode: Mode, affinity: Affinity) -> Setup {
    Setup { mode, affinity, ramp: Ramp::Linear { pct_per_sec: 5.0 }, bound: false }
}

#[test]
fn independent_streams_with_a_ramp_and_control_actions() {
    both_paths(streams(160, Just(linear(Mode::Independent, Affinity::Flow))));
}

#[test]
fn independent_streams_at_fixed_splits() {
    let pct = prop::sample::select(vec![0.0, 30.0, 50.0, 70.0, 100.0]);
    let setups = (pct, any::<bool>()).prop_map(|(pct, client)| Setup {
        mode: Mode::Independent,
        affinity: if client { Affinity::Client } else { Affinity::Flow },
        ramp: Ramp::Steps { steps: vec![RampStep { pct, hold: Duration::from_secs(3600) }] },
        bound: true,
    });
    both_paths(streams(160, setups));
}

#[test]
fn client_affinity_streams_with_a_ramp() {
    both_paths(streams(48, Just(linear(Mode::Independent, Affinity::Client))));
}

/// Replica mode delivers to both VMs and hands flows off: the address is the core's alone
/// until its migration ends (then the program routes it to the VM that holds it).
#[test]
fn replica_streams() {
    both_paths(streams(24, Just(linear(Mode::Replica, Affinity::Flow))));
}

fn fixed(pct: f64) -> Setup {
    let ramp = Ramp::Steps { steps: vec![RampStep { pct, hold: Duration::from_secs(3600) }] };
    Setup { mode: Mode::Independent, affinity: Affinity::Flow, ramp, bound: true }
}

/// Streams that found a difference once, each with what was wrong.
#[test]
fn streams_that_once_differed() {
    let Some(ifs) = namespace() else { return };
    let syn = 0x02;
    let cases = [
        (
            "the program decided a SYN on a tuple the core tracks without knowing its owner (the map \
             had no such flows): to A alone, where the core sends it to both",
            fixed(0.0),
            vec![
                Op::Inbound { client: 2, port: 3, flags: 0x18, seq: 9597, data: true },
                Op::Inbound { client: 2, port: 3, flags: syn, seq: 44648, data: true },
            ],
        ),
        (
            "the core never heard of a client whose frames the program routed to the address's new \
             holder: it asked (ARP) instead of sending the holder's fragment on",
            linear(Mode::Independent, Affinity::Flow),
            vec![
                Op::Control(6),
                Op::Inbound { client: 5, port: 0, flags: syn, seq: 0, data: false },
                Op::Fragment { inbound: false, b: true, client: 5, ident: 0, first: false },
            ],
        ),
        (
            "a client's new MAC, seen only in frames the program routed, never reached the core",
            fixed(0.0),
            vec![
                Op::Ping { client: 3, id: 0 },
                Op::Mangled { inbound: true, at: 56, value: 126 },
                Op::Control(4),
                Op::Egress { b: false, client: 0, port: 0, flags: syn, seq: 949, data: true },
                Op::Control(7),
                Op::Udp { inbound: true, b: true, client: 3, port: 3 },
                Op::Fragment { inbound: false, b: false, client: 3, ident: 2, first: true },
            ],
        ),
        (
            "a MAC the core learned did not reach the program's map: the sync believed the map \
             still held what it had written there, though the program had learned another since",
            fixed(0.0),
            vec![
                Op::Inbound { client: 0, port: 2, flags: syn, seq: 0, data: false },
                Op::Egress { b: false, client: 0, port: 1, flags: syn, seq: 0, data: false },
                Op::Inbound { client: 0, port: 1, flags: 0x10, seq: 0, data: false },
                Op::Mangled { inbound: true, at: 6, value: 56 },
                Op::Control(5),
                Op::Ping { client: 0, id: 0 },
                Op::Advance(250),
                Op::Udp { inbound: false, b: true, client: 0, port: 0 },
            ],
        ),
        (
            "a replayed record was dated microseconds before the turn whose frames the core had \
             seen already, in the millisecond before: the flow its RST closed expired a \
             millisecond early",
            linear(Mode::Independent, Affinity::Flow),
            vec![
                Op::Egress { b: false, client: 0, port: 7, flags: syn, seq: 0, data: false },
                Op::Inbound { client: 0, port: 0, flags: syn, seq: 0, data: false },
                Op::Egress { b: false, client: 0, port: 7, flags: 0x04, seq: 0, data: false },
                Op::Advance(2810),
                Op::Advance(2823),
                Op::Advance(3048),
                // Ten seconds to the millisecond: the closed flow's timeout, not past it.
                Op::Advance(1319),
                Op::Egress { b: false, client: 2, port: 6, flags: 0x10, seq: 48844, data: false },
            ],
        ),
    ];
    for (what, setup, ops) in cases {
        if let Err(e) = run(&setup, &ops, ifs) {
            panic!("{what}: {e}");
        }
    }
}

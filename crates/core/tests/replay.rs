//! Fast-path replay: packets a fast path forwarded itself, replayed by the core, leave it in
//! exactly the state the core would be in had it forwarded them (flows, counters, patterns,
//! split, events); where the fast path and the core disagree, the packet's side wins, counted.

#![allow(clippy::unwrap_used)]

use core::time::Duration;
use std::net::Ipv4Addr;

use ipshadow_core::l2::RouterNode;
use ipshadow_core::testkit::{Harness, X, tcp, udp};
use ipshadow_core::wire::{Ipv4Info, Packet, TcpFlags, parse_frame};
use ipshadow_core::{
    Affinity, CongestionControlParameters, Deliver, DropReason, EgressVerdict, Event, FlowKey, FlowOrigin,
    InboundVerdict, Instant, MigrationOptions, Owner, Phase, Ramp, RampStep, Replay, RouterConfig, RouterCounters,
    ShadowingEntry, Side, SplitReason, VmId, split_hash, split_threshold,
};

const SALT: u64 = 0x5eed;
const SYN: u8 = TcpFlags::SYN;
const ACK: u8 = TcpFlags::ACK;
const SYN_ACK: u8 = TcpFlags::SYN | TcpFlags::ACK;
const DATA: u8 = TcpFlags::ACK | TcpFlags::PSH;
const FIN: u8 = TcpFlags::FIN | TcpFlags::ACK;
const RST: u8 = TcpFlags::RST;

fn client(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, n)
}

fn ip_of(frame: &[u8]) -> Ipv4Info {
    let Ok(Packet::Ipv4(ip)) = parse_frame(frame) else { panic!("not IPv4") };
    ip
}

/// A client port on `client(c)` whose TCP flow to X:80 the split sends to `side` at `pct`.
fn port_to(c: u8, side: Side, pct: f64) -> u16 {
    (10_000u16..)
        .find(|&port| {
            let key = FlowKey { client_ip: client(c), client_port: port, shadow_ip: X, shadow_port: 80, protocol: 6 };
            let to_b = u64::from(split_hash(SALT, &key, Affinity::Flow)) < split_threshold(pct);
            to_b == (side == Side::Destination)
        })
        .unwrap()
}

fn harness(split: f64) -> Harness {
    let ramp = Ramp::Steps { steps: vec![RampStep { pct: split, hold: Duration::from_secs(3600) }] };
    let options = MigrationOptions { ramp, salt: SALT, ..Default::default() };
    // One unanswered SYN to B is trouble: the replayed signal must move the split too.
    let params = CongestionControlParameters { max_unanswered_syns_per_interval: 0, ..Default::default() };
    let mut h = Harness::new(RouterConfig { max_flows: 64, hash_key: Some(1), ..Default::default() }, options, params);
    let now = h.now;
    h.router.lease_bound(X, now).unwrap();
    h
}

/// What one step of the stream is.
enum Step {
    In(Vec<u8>),
    Out(Side, Vec<u8>),
    Wait(Duration),
}

fn counters_without_fast_path(c: &RouterCounters) -> RouterCounters {
    RouterCounters { fast_path_replayed: 0, fast_path_disagreed: 0, fast_path_would_drop: 0, ..*c }
}

/// Feeds `steps` to one router normally and to another through replay wherever the first
/// forwarded a packet to (or from) one VM, as a fast path would; the rest both take the slow
/// path. After every step both must be in the same state.
fn run_pair(steps: Vec<Step>, keys: &[FlowKey]) -> (Harness, Vec<Event>, u64) {
    let (mut normal, mut replayed) = (harness(50.0), harness(50.0));
    let mut events = Vec::new();
    let (mut replays, mut slow) = (0, 0);
    for (n, step) in steps.into_iter().enumerate() {
        match step {
            Step::In(frame) => match normal.inbound(&frame) {
                InboundVerdict::Deliver(d @ (Deliver::Source | Deliver::Destination)) => {
                    let side = if d == Deliver::Source { Side::Source } else { Side::Destination };
                    let now = replayed.now;
                    assert_eq!(replayed.router.replay_inbound(&ip_of(&frame), side, now), Replay::Agreed, "step {n}");
                    replays += 1;
                }
                verdict => {
                    assert_eq!(replayed.inbound(&frame), verdict, "step {n}");
                    slow += 1;
                }
            },
            Step::Out(side, frame) => match normal.from_vm(side, &frame) {
                EgressVerdict::Forward => {
                    let vm = if side == Side::Source { replayed.a } else { replayed.b };
                    let now = replayed.now;
                    assert_eq!(replayed.router.replay_egress(vm, &ip_of(&frame), now), Replay::Agreed, "step {n}");
                    replays += 1;
                }
                verdict => {
                    assert_eq!(replayed.from_vm(side, &frame), verdict, "step {n}");
                    slow += 1;
                }
            },
            Step::Wait(by) => {
                normal.advance(by);
                replayed.advance(by);
            }
        }
        let normal_events = normal.events();
        assert_eq!(replayed.events(), normal_events, "events after step {n}");
        events.extend(normal_events);
        for key in keys {
            assert_eq!(replayed.router.flow(key), normal.router.flow(key), "flow {key} after step {n}");
        }
        let (r, c) = (replayed.router.counters(), normal.router.counters());
        assert_eq!(counters_without_fast_path(r), *c, "counters after step {n}");
        assert_eq!(replayed.router.entry(X), normal.router.entry(X), "entry after step {n}");
        let now = normal.now;
        assert_eq!(
            format!("{:?}", replayed.router.patterns(X, now)),
            format!("{:?}", normal.router.patterns(X, now)),
            "patterns after step {n}"
        );
    }
    let c = *replayed.router.counters();
    assert_eq!((c.fast_path_replayed, c.fast_path_disagreed, c.fast_path_would_drop), (replays, 0, 0));
    assert!(replays + slow > 0);
    (normal, events, replays)
}

#[test]
fn replay_leaves_the_core_as_forwarding_would() {
    let (a_port, b_port, b_syn_port) =
        (port_to(1, Side::Source, 50.0), port_to(2, Side::Destination, 50.0), { port_to(3, Side::Destination, 50.0) });
    let (ca, cb, cs) = ((client(1), a_port), (client(2), b_port), (client(3), b_syn_port));
    let x = (X, 80);
    let dns = ((client(4), 5353), (X, 53));
    let key = |c: (Ipv4Addr, u16), protocol, port| FlowKey {
        client_ip: c.0,
        client_port: c.1,
        shadow_ip: X,
        shadow_port: port,
        protocol,
    };
    let keys = [key(ca, 6, 80), key(cb, 6, 80), key(cs, 6, 80), key(dns.0, 17, 53)];
    let steps = vec![
        // A's connection: handshake, a request and its answer, an orderly close.
        Step::In(tcp(ca, x, SYN, 100, 0, b"")),
        Step::Out(Side::Source, tcp(x, ca, SYN_ACK, 500, 101, b"")),
        Step::In(tcp(ca, x, ACK, 101, 501, b"")),
        Step::Wait(Duration::from_millis(20)),
        Step::In(tcp(ca, x, DATA, 101, 501, b"GET / HTTP/1.1\r\n\r\n")),
        Step::Out(Side::Source, tcp(x, ca, DATA, 501, 119, b"HTTP/1.1 200 OK\r\n\r\n")),
        Step::In(tcp(ca, x, ACK, 119, 520, b"")),
        // B's connection, reset by its client.
        Step::In(tcp(cb, x, SYN, 7, 0, b"")),
        Step::Out(Side::Destination, tcp(x, cb, SYN_ACK, 900, 8, b"")),
        Step::In(tcp(cb, x, ACK, 8, 901, b"")),
        Step::In(tcp(cb, x, DATA, 8, 901, b"ping")),
        Step::In(tcp(cb, x, DATA, 8, 901, b"ping")), // a retransmission
        Step::Out(Side::Destination, tcp(x, cb, DATA, 901, 12, b"pong")),
        // A conflict: A answers B's flow (dropped on both, by the slow path).
        Step::Out(Side::Source, tcp(x, cb, DATA, 1, 12, b"nope")),
        Step::In(tcp(cb, x, RST, 12, 0, b"")),
        // A datagram flow (to whichever side the split says) and its answer.
        Step::In(udp(dns.0, dns.1, b"query")),
        Step::Out(Side::Source, udp(dns.1, dns.0, b"answer")),
        Step::Out(Side::Destination, udp(dns.1, dns.0, b"answer")),
        Step::In(udp(dns.0, dns.1, b"query again")),
        // A SYN to B nobody answers, sent again after the SYN timeout: an unanswered SYN.
        Step::In(tcp(cs, x, SYN, 40, 0, b"")),
        Step::Wait(Duration::from_millis(950)),
        Step::In(tcp(cs, x, SYN, 40, 0, b"")),
        // A's close.
        Step::In(tcp(ca, x, FIN, 119, 520, b"")),
        Step::Out(Side::Source, tcp(x, ca, FIN, 520, 120, b"")),
        Step::In(tcp(ca, x, ACK, 120, 521, b"")),
        // The controller judges the interval: the unanswered SYN halves the split on both.
        Step::Wait(Duration::from_millis(1100)),
        Step::Wait(Duration::from_secs(40)),
    ];
    let (normal, events, replays) = run_pair(steps, &keys);
    assert!(replays > 12, "{replays} replayed");
    // The stream did what it says (and the replayed router, compared at every step, did too).
    let p = normal.router.patterns(X, normal.now).unwrap();
    assert_eq!((p.source.unanswered_syns, p.destination.unanswered_syns), (0, 1));
    let decreased = events.iter().any(|e| {
        matches!(e, Event::SplitChanged { change, .. }
            if change.reason == SplitReason::Decrease(ipshadow_core::Signal::UnansweredSyn))
    });
    assert!(decreased, "{events:?}");
    let ended = |key: &FlowKey| {
        events.iter().find_map(|e| match e {
            Event::FlowEnded { key: k, owner, .. } if k == key => Some(*owner),
            _ => None,
        })
    };
    assert_eq!(
        [ended(&keys[0]), ended(&keys[1]), ended(&keys[2])],
        [Some(Owner::Source), Some(Owner::Destination), Some(Owner::Destination)]
    );
    assert!(events.iter().any(|e| matches!(e, Event::Conflict { from: Side::Source, .. })));
}

#[test]
fn split_moved_under_the_fast_path_the_new_flow_takes_its_side() {
    let mut h = harness(0.0);
    let now = h.now;
    h.router.promote(X, now).unwrap();
    let c = (client(5), 4242);
    let syn = tcp(c, (X, 80), SYN, 1, 0, b"");
    // The fast path decided at the old threshold (0 %): A. The core now says B.
    let _ = h.events();
    assert_eq!(
        h.router.replay_inbound(&ip_of(&syn), Side::Source, now),
        Replay::OwnerAdopted { from: Owner::Destination }
    );
    let key = FlowKey { client_ip: c.0, client_port: c.1, shadow_ip: X, shadow_port: 80, protocol: 6 };
    assert_eq!(h.router.flow(&key).map(|f| f.owner), Some(Owner::Source));
    let events = h.events();
    assert!(
        matches!(events[..], [Event::FlowStarted { owner: Owner::Source, origin: FlowOrigin::Inbound, .. }]),
        "{events:?}"
    );
    let e = h.router.entry(X).unwrap();
    assert_eq!((e.counters.flows_to_source, e.counters.flows_to_destination), (1, 0));
    assert_eq!(h.router.counters().fast_path_disagreed, 1);
    // From then on the flow is A's for the core too: its answer and the client's ACK agree.
    let vm = h.a;
    assert_eq!(h.router.replay_egress(vm, &ip_of(&tcp((X, 80), c, SYN_ACK, 9, 2, b"")), now), Replay::Agreed);
    assert_eq!(h.inbound(&tcp(c, (X, 80), ACK, 2, 10, b"")), InboundVerdict::Deliver(Deliver::Source));
    assert_eq!(h.router.counters().fast_path_disagreed, 1);
}

#[test]
fn a_tracked_flow_delivered_to_the_other_side_moves_there_with_its_census() {
    let mut h = harness(0.0);
    let c = (client(6), 5000);
    let x = (X, 80);
    h.inbound(&tcp(c, x, SYN, 1, 0, b""));
    h.from_vm(Side::Source, &tcp(x, c, SYN_ACK, 9, 2, b""));
    h.inbound(&tcp(c, x, ACK, 2, 10, b""));
    let _ = h.events();
    let now = h.now;
    let data = tcp(c, x, DATA, 2, 10, b"hello");
    assert_eq!(
        h.router.replay_inbound(&ip_of(&data), Side::Destination, now),
        Replay::OwnerAdopted { from: Owner::Source }
    );
    let events = h.events();
    assert!(matches!(events[..], [Event::HandOff { from: Side::Source, to: Side::Destination, .. }]), "{events:?}");
    let e = h.router.entry(X).unwrap();
    assert_eq!((e.counters.flows_to_source, e.counters.flows_to_destination), (0, 1));
    let p = h.router.patterns(X, now).unwrap();
    let (open, idle) = h.router.scan_open_flows(X);
    assert_eq!(([p.source.open, p.destination.open], [p.source.idle, p.destination.idle]), (open, idle));
    assert_eq!(open, [0, 1]);
}

#[test]
fn an_unknown_flow_the_fast_path_knows_is_its_sides() {
    let mut h = harness(50.0);
    let c = (client(7), 6000);
    let now = h.now;
    let _ = h.events();
    // Mid-stream: the core alone would deliver it to both and learn the owner from the replies.
    let ack = tcp(c, (X, 80), ACK, 2, 10, b"");
    assert_eq!(
        h.router.replay_inbound(&ip_of(&ack), Side::Destination, now),
        Replay::OwnerAdopted { from: Owner::Unknown }
    );
    let key = FlowKey { client_ip: c.0, client_port: c.1, shadow_ip: X, shadow_port: 80, protocol: 6 };
    let flow = *h.router.flow(&key).unwrap();
    assert_eq!((flow.owner, flow.phase), (Owner::Destination, Phase::Established));
    let events = h.events();
    assert!(
        matches!(events[..], [Event::FlowStarted { owner: Owner::Destination, origin: FlowOrigin::Unknown, .. }]),
        "{events:?}"
    );
}

#[test]
fn what_the_core_would_drop_or_does_not_shadow_is_counted() {
    let mut h = harness(0.0);
    let c = (client(8), 7000);
    let x = (X, 80);
    h.inbound(&tcp(c, x, SYN, 1, 0, b""));
    h.from_vm(Side::Source, &tcp(x, c, SYN_ACK, 9, 2, b""));
    let now = h.now;
    // B answers A's flow: the core would drop it as a conflict, counted as one.
    let vm = h.b;
    let conflict = tcp(x, c, DATA, 50, 2, b"mine");
    let replay = h.router.replay_egress(vm, &ip_of(&conflict), now);
    assert!(matches!(replay, Replay::CoreWouldDrop(DropReason::Conflict(_))), "{replay:?}");
    assert_eq!(h.router.counters().conflicts.data, 1);
    // A packet to an address the core does not shadow (the fast path's table is stale).
    let stray = tcp(c, (Ipv4Addr::new(10, 0, 0, 99), 80), DATA, 2, 10, b"x");
    assert_eq!(h.router.replay_inbound(&ip_of(&stray), Side::Source, now), Replay::NotShadowed);
    let k = *h.router.counters();
    assert_eq!((k.fast_path_replayed, k.fast_path_disagreed, k.fast_path_would_drop), (2, 2, 1));
    assert_eq!((k.inbound_frames, k.egress_frames), (2, 2));
}

#[test]
fn the_layer_2_router_learns_the_client_from_a_replayed_frame() {
    let (mac_a, mac_b, client_mac) = ([2, 0xa, 0, 0, 0, 1], [2, 0xb, 0, 0, 0, 1], [2, 0xc1, 0, 0, 0, 9]);
    let ports = vec![(VmId::from("vm-a"), mac_a), (VmId::from("vm-b"), mac_b)];
    let now = Instant::from_secs(1);
    let config = RouterConfig { max_flows: 64, ..Default::default() };
    let mut node = RouterNode::new(config, [2, 0xee, 0, 0, 0, 1], [2, 0xee, 0, 0, 0, 2], X, ports, now);
    let entry = ShadowingEntry::new(
        X,
        VmId::from("vm-a"),
        VmId::from("vm-b"),
        now,
        CongestionControlParameters::default(),
        MigrationOptions { salt: SALT, ..Default::default() },
    );
    node.core.add_entry(entry, now).unwrap();
    node.shadow_ports(X, 0, 1);
    let c = (client(9), 8000);
    let syn = tcp(c, (X, 80), SYN, 1, 0, b"");
    assert_eq!(node.replay_inbound(&ip_of(&syn), client_mac, Side::Source, now), Replay::Agreed);
    assert_eq!(node.neighbours().get(c.0, now), Some(client_mac));
    let answer = tcp((X, 80), c, SYN_ACK, 9, 2, b"");
    assert_eq!(node.replay_egress(0, &ip_of(&answer), now), Replay::Agreed);
    assert_eq!((node.stats.to_vms, node.stats.to_provider), (1, 1));
    assert_eq!(node.core.counters().fast_path_replayed, 2);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 200, ..Default::default() })]

    /// Random streams: whatever the packets, replaying what the normal router forwarded to or from
    /// one VM leaves the replaying router in the same state, step by step.
    #[test]
    fn random_streams_replay_to_the_same_state(
        ops in proptest::collection::vec((0u8..6, 0u8..4, 0u8..8, proptest::prelude::any::<u16>(), 0u16..1500), 1..120)
    ) {
        let flags = [SYN, SYN_ACK, ACK, DATA, FIN, RST, TcpFlags::RST | ACK, DATA];
        let x = (X, 80);
        let keys: Vec<FlowKey> = (0..4u8)
            .flat_map(|c| {
                [6u8, 17].map(|protocol| FlowKey {
                    client_ip: client(c),
                    client_port: 3000 + u16::from(c),
                    shadow_ip: X,
                    shadow_port: 80,
                    protocol,
                })
            })
            .collect();
        // Every stream carries at least one frame (one of only waits would observe nothing).
        let first = Step::In(udp((client(0), 3000), x, b"q"));
        let steps = std::iter::once(first).chain(ops
            .into_iter()
            .map(|(what, c, f, seq, wait)| {
                let cl = (client(c), 3000 + u16::from(c));
                let (f, seq, payload) = (flags[usize::from(f)], u32::from(seq), if seq % 2 == 0 { &b"data"[..] } else { b"" });
                match what {
                    0 | 1 => Step::In(tcp(cl, x, f, seq, 7, payload)),
                    2 => Step::Out(Side::Source, tcp(x, cl, f, seq, 7, payload)),
                    3 => Step::Out(Side::Destination, tcp(x, cl, f, seq, 7, payload)),
                    4 if wait % 3 == 0 => Step::Out(if wait % 2 == 0 { Side::Source } else { Side::Destination }, udp(x, cl, b"a")),
                    4 => Step::In(udp(cl, x, b"q")),
                    _ => Step::Wait(Duration::from_millis(u64::from(wait) * 7)),
                }
            }))
            .collect();
        run_pair(steps, &keys);
    }
}

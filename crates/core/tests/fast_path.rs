//! What a fast path copies from the core: the shadowed addresses (salt, threshold, VMs, slow),
//! `retired_until`, a generation that changes whenever they may have, the flows with known owners
//! (and the events that keep a copy of them in step, retirement included), and a restarted
//! router's refill from the fast path's flow map.

#![allow(clippy::unwrap_used)]

use core::time::Duration;
use std::net::Ipv4Addr;

use ipshadow_core::l2::RouterNode;
use ipshadow_core::testkit::{Harness, X, tcp};
use ipshadow_core::wire::TcpFlags;
use ipshadow_core::{
    Affinity, CongestionControlParameters, Deliver, Event, FlowKey, FlowOrigin, InboundVerdict, Instant,
    MigrationOptions, Mode, Owner, Phase, Ramp, RampStep, RouterConfig, RouterError, ShadowingEntry, Side, Strategy,
    VmId, VmRef, split_threshold,
};

const SYN: u8 = TcpFlags::SYN;
const ACK: u8 = TcpFlags::ACK;
const SYN_ACK: u8 = TcpFlags::SYN | TcpFlags::ACK;
const C: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

fn options(pct: f64) -> MigrationOptions {
    MigrationOptions {
        ramp: Ramp::Steps {
            steps: vec![
                RampStep { pct, hold: Duration::from_secs(10) },
                RampStep { pct: 100.0, hold: Duration::from_secs(3600) },
            ],
        },
        salt: 77,
        // The end comes at the deadline (or a cut-over), not early: the tests watch the window.
        early_finish: false,
        ..Default::default()
    }
}

fn key(port: u16) -> FlowKey {
    FlowKey { client_ip: C, client_port: port, shadow_ip: X, shadow_port: 80, protocol: 6 }
}

/// A connection from `port` to A (split 0 when opened), idle, everything acknowledged.
fn open_on_a(h: &mut Harness, port: u16) {
    assert_eq!(h.inbound(&tcp((C, port), (X, 80), SYN, 100, 0, &[])), InboundVerdict::Deliver(Deliver::Source));
    h.from_vm(Side::Source, &tcp((X, 80), (C, port), SYN_ACK, 900, 101, &[]));
    h.inbound(&tcp((C, port), (X, 80), ACK, 101, 901, b"GET /"));
    h.from_vm(Side::Source, &tcp((X, 80), (C, port), ACK, 901, 106, b"200 OK"));
    h.inbound(&tcp((C, port), (X, 80), ACK, 106, 907, &[]));
}

#[test]
fn shadows_carry_the_split_and_the_generation_follows_every_change() {
    let mut h = Harness::new(RouterConfig::default(), options(25.0), CongestionControlParameters::default());
    let g0 = h.router.fast_path_generation();
    let [s] = h.router.fast_path_shadows().collect::<Vec<_>>()[..] else { panic!("one address") };
    assert_eq!((s.ip, s.salt, s.threshold, s.affinity), (X, 77, 0, Affinity::Flow));
    assert_eq!((s.source, s.destination, s.slow), (h.a, h.b, false));
    // Packets change nothing the fast path copies.
    open_on_a(&mut h, 4000);
    assert_eq!(h.router.fast_path_generation(), g0);
    // B's lease: the ramp starts at 25 %.
    h.router.lease_bound(X, h.now).unwrap();
    let g1 = h.router.fast_path_generation();
    assert_ne!(g1, g0);
    assert_eq!(h.router.fast_path_shadows().next().unwrap().threshold, split_threshold(25.0));
    // The ramp's next step, taken by poll.
    h.advance(Duration::from_secs(11));
    let g2 = h.router.fast_path_generation();
    assert_ne!(g2, g1);
    assert_eq!(h.router.fast_path_shadows().next().unwrap().threshold, 1 << 32);
    // A plain address.
    h.router.assign_address(Ipv4Addr::new(10, 0, 0, 20), h.b);
    let g3 = h.router.fast_path_generation();
    assert_ne!(g3, g2);
    // The end: the entry goes, the address is B's.
    h.router.cut_over(X, h.now).unwrap();
    assert_ne!(h.router.fast_path_generation(), g3);
    assert_eq!(h.router.fast_path_shadows().count(), 0);
}

#[test]
fn other_strategies_modes_and_the_closing_window_are_slow() {
    let now = Instant::from_secs(1);
    let mut router = ipshadow_core::ShadowRouter::new(RouterConfig::default(), Vec::new(), now);
    let add = |r: &mut ipshadow_core::ShadowRouter<Vec<Event>>, last: u8, strategy, mode| {
        let options = MigrationOptions { strategy, mode, ..Default::default() };
        let ip = Ipv4Addr::new(10, 0, 0, last);
        let entry = ShadowingEntry::new(
            ip,
            VmId::from(format!("a{last}").as_str()),
            VmId::from(format!("b{last}").as_str()),
            now,
            CongestionControlParameters::default(),
            options,
        );
        r.add_entry(entry, now).unwrap();
        ip
    };
    let flow = add(&mut router, 1, Strategy::Flow, Mode::Independent);
    let packet = add(&mut router, 2, Strategy::Packet, Mode::Independent);
    let instant = add(&mut router, 3, Strategy::Instant, Mode::Independent);
    let replica = add(&mut router, 4, Strategy::Flow, Mode::Replica);
    let slow =
        |r: &ipshadow_core::ShadowRouter<Vec<Event>>, ip| r.fast_path_shadows().find(|s| s.ip == ip).unwrap().slow;
    assert_eq!([flow, packet, instant, replica].map(|ip| slow(&router, ip)), [false, true, true, true]);

    // The closing window (10 s before the deadline by default) makes A's flows slow.
    let mut h = Harness::new(RouterConfig::default(), options(50.0), CongestionControlParameters::default());
    let deadline = h.now + Duration::from_secs(60);
    h.router.set_deadline(X, Some(deadline)).unwrap();
    h.router.lease_bound(X, h.now).unwrap();
    h.advance(Duration::from_secs(49));
    let before = h.router.fast_path_generation();
    let s = h.router.fast_path_shadows().next().unwrap();
    assert!(!s.slow && !s.slow_source);
    h.advance(Duration::from_secs(1));
    let s = h.router.fast_path_shadows().next().unwrap();
    assert!(!s.slow && s.slow_source);
    assert_ne!(h.router.fast_path_generation(), before);
}

#[test]
fn a_flow_closed_at_the_cut_over_is_retired_from_the_fast_path_and_retired_until_is_set() {
    let mut h = Harness::new(RouterConfig::default(), options(50.0), CongestionControlParameters::default());
    let deadline = h.now + Duration::from_secs(60);
    h.router.set_deadline(X, Some(deadline)).unwrap();
    open_on_a(&mut h, 4000);
    h.router.lease_bound(X, h.now).unwrap();
    assert_eq!(h.router.fast_path_flows(), vec![(key(4000), Side::Source)]);
    let _ = h.events();
    // The window opens: A's flows go to the core from now on, but the idle flow is not closed
    // in the same instant. A fast path may still be forwarding (and not yet have reported) an
    // exchange of it: the first closes wait for the first scan.
    h.advance(Duration::from_secs(50));
    assert!(h.router.fast_path_shadows().next().unwrap().slow_source);
    assert_eq!(h.router.flow(&key(4000)).unwrap().phase, Phase::Established);
    assert!(!h.events().iter().any(|e| matches!(e, Event::FlowRetired { .. })));
    h.advance(Duration::from_millis(250));
    let events = h.events();
    assert!(events.iter().any(|e| matches!(e, Event::FlowRetired { key: k, .. } if *k == key(4000))), "{events:?}");
    assert_eq!(h.router.flow(&key(4000)).unwrap().phase, Phase::Retired);
    assert!(h.router.fast_path_flows().is_empty());
    assert_eq!(h.router.retired_until(), None);
    // The deadline: the retired flow, its client silent, stays to answer its late close.
    let before = h.router.fast_path_generation();
    h.advance(Duration::from_secs(10));
    assert!(h.router.entry(X).is_none());
    assert!(h.router.retired_until().is_some_and(|t| t > h.now));
    assert_ne!(h.router.fast_path_generation(), before);
}

#[test]
fn a_restarted_router_refills_its_table_from_the_fast_path() {
    let mut h = Harness::new(RouterConfig::default(), options(50.0), CongestionControlParameters::default());
    h.router.lease_bound(X, h.now).unwrap();
    let _ = h.events();
    let now = h.now;
    assert_eq!(h.router.restore_flow(key(5000), Side::Destination, now), Ok(true));
    assert_eq!(h.router.restore_flow(key(5000), Side::Source, now), Ok(false), "already tracked: unchanged");
    let other = FlowKey { shadow_ip: Ipv4Addr::new(10, 0, 0, 99), ..key(1) };
    assert_eq!(h.router.restore_flow(other, Side::Source, now), Err(RouterError::NotShadowed(other.shadow_ip)));
    let flow = *h.router.flow(&key(5000)).unwrap();
    assert_eq!((flow.owner, flow.phase), (Owner::Destination, Phase::Established));
    let events = h.events();
    assert!(
        matches!(events[..], [Event::FlowStarted { owner: Owner::Destination, origin: FlowOrigin::Unknown, .. }]),
        "{events:?}"
    );
    let e = h.router.entry(X).unwrap();
    assert_eq!((e.counters.flows_to_destination, e.counters.flows_learned), (1, 0));
    // Counted open on B at once, as the census scan finds it.
    let p = h.router.patterns(X, now).unwrap();
    assert_eq!([p.source.open, p.destination.open], h.router.scan_open_flows(X).0);
    assert_eq!(h.router.scan_open_flows(X).0, [0, 1]);
    // Its next packet goes to its owner, nothing to learn; the other VM's answer is a conflict.
    let data = tcp((C, 5000), (X, 80), ACK | TcpFlags::PSH, 10, 20, b"more");
    assert_eq!(h.inbound(&data), InboundVerdict::Deliver(Deliver::Destination));
    let answer = tcp((X, 80), (C, 5000), ACK, 20, 14, b"nope");
    assert!(matches!(h.from_vm(Side::Source, &answer), ipshadow_core::EgressVerdict::Drop(_)));
}

#[test]
fn the_layer_2_router_gives_its_ports_and_blocks_for_its_test_features() {
    let (mac_a, mac_b) = ([2, 0xa, 0, 0, 0, 1], [2, 0xb, 0, 0, 0, 1]);
    let ports = vec![(VmId::from("vm-b"), mac_b), (VmId::from("vm-a"), mac_a), (VmId::from("vm-c"), [0; 6])];
    let now = Instant::from_secs(1);
    let mut node =
        RouterNode::new(RouterConfig::default(), [2, 0xee, 0, 0, 0, 1], [2, 0xee, 0, 0, 0, 2], X, ports, now);
    let entry = |ip, a: &str, b: &str| {
        ShadowingEntry::new(
            ip,
            VmId::from(a),
            VmId::from(b),
            now,
            CongestionControlParameters::default(),
            options(50.0),
        )
    };
    node.core.add_entry(entry(X, "vm-a", "vm-b"), now).unwrap();
    let y = Ipv4Addr::new(10, 0, 0, 11);
    node.core.add_entry(entry(y, "vm-a", "vm-c"), now).unwrap();
    let g0 = node.fast_path_generation();
    // Without the node's ports an address stays on the slow path.
    assert!(node.fast_path_shadows().all(|s| s.slow));
    node.shadow_ports(X, 1, 0);
    node.shadow_ports(y, 1, 2);
    let g1 = node.fast_path_generation();
    assert_ne!(g1, g0);
    let shadows: Vec<_> = node.fast_path_shadows().map(|s| (s.ip, s.source, s.destination, s.slow)).collect();
    assert!(shadows.contains(&(X, VmRef(1), VmRef(0), false)), "{shadows:?}");
    assert!(shadows.iter().any(|&(ip, .., slow)| ip == y && slow), "vm-c's MAC is not known yet: {shadows:?}");
    assert!(!node.fast_path_blocked());
    node.flood = Some((1, 0));
    assert!(node.fast_path_blocked());
    node.flood = None;
    node.mirror = Some((1, 0));
    assert!(node.fast_path_blocked());
    // A restart starts a fresh core; the generation still moves on.
    node.restart(now);
    assert!(node.fast_path_generation() > g1);
}

//! A migration's life in the router: lease bound, ramp, congestion control on signals measured
//! from B, operator actions, and the end (cut-over at the deadline, rollback).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use core::time::Duration;
use std::net::Ipv4Addr;

use ipshadow_core::testkit::{Harness, X, tcp, udp};
use ipshadow_core::wire::{L4, Packet, TcpFlags as F, parse_frame};
use ipshadow_core::{
    CongestionControlParameters, Deliver, EgressVerdict, EntryState, Event, InboundVerdict, MigrationOptions, Mode,
    Outcome, Ramp, RampStep, RouterConfig, RouterError, Side, Signal, SplitReason,
};

const C: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

fn deliver(v: InboundVerdict) -> Deliver {
    match v {
        InboundVerdict::Deliver(d) => d,
        other => panic!("expected delivery, got {other:?}"),
    }
}

fn steps(pcts: &[f64], hold_s: u64) -> Ramp {
    Ramp::Steps { steps: pcts.iter().map(|&pct| RampStep { pct, hold: Duration::from_secs(hold_s) }).collect() }
}

fn splits(events: &[Event]) -> Vec<(f64, SplitReason)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::SplitChanged { change, .. } => Some((change.to_pct, change.reason)),
            _ => None,
        })
        .collect()
}

/// Opens a full TCP connection from client port `port`; returns the side it went to.
fn connect(h: &mut Harness, port: u16) -> Side {
    let d = deliver(h.inbound(&tcp((C, port), (X, 80), F::SYN, 1000, 0, &[])));
    let side = if d == Deliver::Source { Side::Source } else { Side::Destination };
    assert_eq!(h.from_vm(side, &tcp((X, 80), (C, port), F::SYN | F::ACK, 5000, 1001, &[])), EgressVerdict::Forward);
    assert_eq!(deliver(h.inbound(&tcp((C, port), (X, 80), F::ACK, 1001, 5001, b"hello"))), d);
    side
}

#[test]
fn ramp_starts_only_when_b_lease_is_bound_and_follows_the_steps() {
    let options = MigrationOptions { ramp: steps(&[10.0, 50.0, 100.0], 30), ..Default::default() };
    let mut h = Harness::new(RouterConfig::default(), options, CongestionControlParameters::default());
    h.advance(Duration::from_secs(60));
    assert_eq!(h.router.entry(X).unwrap().traffic_split_percentage, 0.0);
    assert_eq!(h.router.entry(X).unwrap().state, EntryState::WaitingForLease);
    h.router.lease_bound(X, h.now).unwrap();
    assert_eq!(h.router.entry(X).unwrap().state, EntryState::Ramping);
    for _ in 0..100 {
        h.advance(Duration::from_secs(1));
    }
    let seen = splits(&h.events());
    assert_eq!(
        seen,
        vec![(10.0, SplitReason::Increase), (50.0, SplitReason::Increase), (100.0, SplitReason::Increase)]
    );
    assert!(matches!(h.router.lease_bound(X, h.now), Err(RouterError::InvalidState { .. })));
}

#[test]
fn unanswered_syns_to_b_cut_the_split() {
    let params = CongestionControlParameters { max_unanswered_syns_per_interval: 0, ..Default::default() };
    let options = MigrationOptions { ramp: steps(&[100.0], 3600), ..Default::default() };
    let mut h = Harness::new(RouterConfig::default(), options, params);
    h.router.lease_bound(X, h.now).unwrap();
    // B is silent: the client retransmits its SYN after 1 s.
    assert_eq!(deliver(h.inbound(&tcp((C, 1000), (X, 80), F::SYN, 1, 0, &[]))), Deliver::Destination);
    h.advance(Duration::from_millis(1000));
    assert_eq!(deliver(h.inbound(&tcp((C, 1000), (X, 80), F::SYN, 1, 0, &[]))), Deliver::Destination);
    h.advance(Duration::from_millis(1000));
    let seen = splits(&h.events());
    assert_eq!(seen.last(), Some(&(50.0, SplitReason::Decrease(Signal::UnansweredSyn))));
    // Healthy intervals open it again by the additive increase (5 points each).
    h.advance(Duration::from_secs(1));
    assert_eq!(h.router.entry(X).unwrap().traffic_split_percentage, 55.0);
}

#[test]
fn resets_from_b_on_its_own_flows_cut_the_split() {
    let params = CongestionControlParameters { max_resets_per_interval: 1, ..Default::default() };
    let options = MigrationOptions { ramp: steps(&[100.0], 3600), ..Default::default() };
    let mut h = Harness::new(RouterConfig::default(), options, params);
    h.router.lease_bound(X, h.now).unwrap();
    for port in 0..3 {
        assert_eq!(connect(&mut h, 2000 + port), Side::Destination);
        assert_eq!(
            h.from_vm(Side::Destination, &tcp((X, 80), (C, 2000 + port), F::RST, 5001, 0, &[])),
            EgressVerdict::Forward
        );
    }
    h.advance(Duration::from_secs(1));
    assert_eq!(splits(&h.events()).last(), Some(&(50.0, SplitReason::Decrease(Signal::Reset))));
}

#[test]
fn pause_resume_promote_abort() {
    let options = MigrationOptions { ramp: Ramp::Linear { pct_per_sec: 2.0 }, ..Default::default() };
    let mut h = Harness::new(RouterConfig::default(), options, CongestionControlParameters::default());
    h.router.lease_bound(X, h.now).unwrap();
    h.advance(Duration::from_secs(10));
    assert_eq!(h.router.entry(X).unwrap().traffic_split_percentage, 20.0);
    h.router.pause(X, h.now).unwrap();
    h.advance(Duration::from_secs(20));
    assert_eq!(h.router.entry(X).unwrap().traffic_split_percentage, 20.0);
    h.router.resume(X, h.now).unwrap();
    h.advance(Duration::from_secs(5));
    assert_eq!(h.router.entry(X).unwrap().traffic_split_percentage, 30.0);
    h.router.promote(X, h.now).unwrap();
    assert_eq!(h.router.entry(X).unwrap().traffic_split_percentage, 100.0);
    h.router.abort(X, h.now).unwrap();
    let e = h.router.entry(X).unwrap();
    assert_eq!((e.traffic_split_percentage, e.state), (0.0, EntryState::RollingBack));
    assert!(h.router.pause(X, h.now).is_err());
    assert!(h.router.cut_over(X, h.now).is_err(), "a rolling-back migration cannot cut over");
}

#[test]
fn cut_over_at_deadline_resets_a_flows_cleanly_and_hands_the_address_to_b() {
    let options = MigrationOptions { ramp: steps(&[50.0], 3600), ..Default::default() };
    let mut h = Harness::new(RouterConfig::default(), options, CongestionControlParameters::default());
    h.router.lease_bound(X, h.now).unwrap();
    let mut on_a = Vec::new();
    for port in 0..40 {
        if connect(&mut h, 3000 + port) == Side::Source {
            on_a.push(3000 + port);
        }
    }
    assert!(!on_a.is_empty());
    // A closes one of its flows before the deadline: it is not cut.
    let closed = on_a.pop().unwrap();
    assert_eq!(h.from_vm(Side::Source, &tcp((X, 80), (C, closed), F::RST, 5001, 0, &[])), EgressVerdict::Forward);
    // A UDP flow on A is handed over, not reset.
    let udp_on_a = (0..200)
        .map(|p| 6000 + p)
        .find(|&p| h.inbound(&udp((C, p), (X, 53), b"q")) == InboundVerdict::Deliver(Deliver::Source));
    let deadline = h.now + Duration::from_secs(5);
    h.router.set_deadline(X, Some(deadline)).unwrap();
    assert!(h.router.poll_at().unwrap() <= deadline);
    h.advance(Duration::from_secs(5));
    assert!(h.router.entry(X).is_none(), "entry removed at the deadline");
    let events = h.events();
    let report = events
        .iter()
        .find_map(|e| match e {
            Event::MigrationEnded { outcome: Outcome::Completed, report, .. } => Some(*report),
            _ => None,
        })
        .expect("migration ended");
    assert_eq!(report.reset, on_a.len() as u64);
    assert_eq!(report.handed_over, u64::from(udp_on_a.is_some()));
    assert_eq!(report.flows_open_on_losing_side, report.reset + report.handed_over);
    // One RST per open A flow to the client, with seq = the client's last ACK (its RCV.NXT),
    // and one to A in the client's name.
    let mut reset_ports = Vec::new();
    let mut to_a = 0;
    while let Some(t) = h.router.poll_transmit() {
        if t.vm == Some(h.a) {
            to_a += 1;
            continue;
        }
        assert_eq!(t.to, C);
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&0x0800u16.to_be_bytes());
        frame.extend_from_slice(&t.datagram);
        let Ok(Packet::Ipv4(ip)) = parse_frame(&frame) else { panic!("router built a bad datagram") };
        let L4::Tcp(seg) = ip.l4 else { panic!() };
        assert!(seg.flags.rst() && seg.flags.ack());
        assert_eq!((ip.src, seg.src_port, seg.seq, seg.ack), (X, 80, 5001, 1006));
        reset_ports.push(seg.dst_port);
    }
    reset_ports.sort_unstable();
    on_a.sort_unstable();
    assert_eq!(reset_ports, on_a);
    assert_eq!(to_a, on_a.len());
    assert_eq!(h.router.flow_count(), 0, "every flow of X forgotten");
    assert_eq!(h.router.address_holder(X), Some(h.b));
    // After cut-over X is an ordinary address of B.
    assert_eq!(h.inbound(&tcp((C, 3000), (X, 80), F::ACK, 1, 1, b"x")), InboundVerdict::NotShadowed);
    assert_eq!(
        h.router.egress(h.a, &udp((X, 53), (C, 9), b""), h.now),
        EgressVerdict::Drop(ipshadow_core::DropReason::Spoofed)
    );
    assert!(h.leaks.is_empty(), "{:?}", h.leaks);
}

#[test]
fn replica_cut_over_hands_every_flow_to_b() {
    let options = MigrationOptions { mode: Mode::Replica, ramp: steps(&[0.0], 3600), ..Default::default() };
    let mut h = Harness::new(RouterConfig::default(), options, CongestionControlParameters::default());
    h.router.lease_bound(X, h.now).unwrap();
    for port in 0..10 {
        assert_eq!(deliver(h.inbound(&tcp((C, 4000 + port), (X, 80), F::SYN, 1, 0, &[]))), Deliver::Both);
    }
    h.router.cut_over(X, h.now).unwrap();
    let report = h
        .events()
        .iter()
        .find_map(|e| match e {
            Event::MigrationEnded { report, .. } => Some(*report),
            _ => None,
        })
        .unwrap();
    assert_eq!((report.flows_open_on_losing_side, report.handed_over, report.reset), (10, 10, 0));
    assert!(h.router.poll_transmit().is_none());
}

#[test]
fn rollback_finishes_with_the_address_back_on_a() {
    let options = MigrationOptions { ramp: steps(&[100.0], 3600), ..Default::default() };
    let mut h = Harness::new(RouterConfig::default(), options, CongestionControlParameters::default());
    h.router.lease_bound(X, h.now).unwrap();
    assert_eq!(connect(&mut h, 5000), Side::Destination);
    h.router.abort(X, h.now).unwrap();
    // B's flow drains; new flows go to A.
    assert_eq!(deliver(h.inbound(&tcp((C, 5000), (X, 80), F::ACK, 1006, 5001, b"more"))), Deliver::Destination);
    assert_eq!(connect(&mut h, 5001), Side::Source);
    h.router.finish_rollback(X, h.now).unwrap();
    assert_eq!(h.router.address_holder(X), Some(h.a));
    assert_eq!(h.router.poll_transmit().map(|t| t.to), Some(C), "B's open flow is reset");
    assert!(h.events().iter().any(|e| matches!(e, Event::MigrationEnded { outcome: Outcome::RolledBack, .. })));
}

#[test]
fn bad_entries_are_refused_and_change_nothing() {
    let mut h =
        Harness::new(RouterConfig::default(), MigrationOptions::default(), CongestionControlParameters::default());
    let dup = h.router.entry(X).unwrap().clone();
    assert_eq!(h.router.add_entry(dup.clone(), h.now), Err(RouterError::AlreadyShadowed(X)));
    let mut same = dup.clone();
    same.ip_address = Ipv4Addr::new(10, 0, 0, 20);
    same.destination_vm_id = same.source_vm_id.clone();
    assert_eq!(h.router.add_entry(same, h.now), Err(RouterError::SameVm));
    let mut bad = dup;
    bad.ip_address = Ipv4Addr::new(10, 0, 0, 21);
    bad.congestion_control_parameters.floor_pct = 150.0;
    assert!(matches!(h.router.add_entry(bad, h.now), Err(RouterError::InvalidParameter { name: "floor_pct", .. })));
    assert_eq!(h.router.entries().count(), 1);
    assert_eq!(
        h.router.pause(Ipv4Addr::new(10, 9, 9, 9), h.now),
        Err(RouterError::NotShadowed(Ipv4Addr::new(10, 9, 9, 9)))
    );
}

#[test]
fn restarted_router_resumes_at_the_recorded_split() {
    let mut entry = ipshadow_core::ShadowingEntry::new(
        X,
        "vm-a".into(),
        "vm-b".into(),
        ipshadow_core::Instant::ZERO,
        CongestionControlParameters::default(),
        MigrationOptions { ramp: steps(&[40.0, 100.0], 60), ..Default::default() },
    );
    entry.state = EntryState::Ramping;
    entry.traffic_split_percentage = 40.0;
    let mut r =
        ipshadow_core::ShadowRouter::new(RouterConfig::default(), Vec::new(), ipshadow_core::Instant::from_secs(500));
    r.add_entry(entry, ipshadow_core::Instant::from_secs(500)).unwrap();
    assert_eq!(r.entry(X).unwrap().traffic_split_percentage, 40.0);
}

#[test]
fn conflicts_and_retransmissions_seen_from_b_cut_the_split() {
    let params = CongestionControlParameters {
        max_conflicts_per_interval: 0,
        max_retransmit_ratio: 0.2,
        min_segments_for_ratio: 10,
        ..Default::default()
    };
    let options = MigrationOptions { ramp: steps(&[100.0], 3600), ..Default::default() };
    // Conflicts: B answers a flow that A opened (a connection of A's to a server).
    let mut h = Harness::new(RouterConfig::default(), options.clone(), params);
    h.router.lease_bound(X, h.now).unwrap();
    let db = Ipv4Addr::new(192, 0, 2, 9);
    assert_eq!(h.from_vm(Side::Source, &tcp((X, 40_000), (db, 5432), F::SYN, 1, 0, &[])), EgressVerdict::Forward);
    assert!(matches!(
        h.from_vm(Side::Destination, &tcp((X, 40_000), (db, 5432), F::ACK, 1, 1, b"x")),
        EgressVerdict::Drop(_)
    ));
    h.advance(Duration::from_secs(1));
    assert_eq!(splits(&h.events()).last(), Some(&(50.0, SplitReason::Decrease(Signal::Conflict))));
    // Retransmissions: a client resends data B has not acknowledged.
    let mut h = Harness::new(RouterConfig::default(), options, params);
    h.router.lease_bound(X, h.now).unwrap();
    assert_eq!(connect(&mut h, 7000), Side::Destination);
    let mut seq = 1006;
    for i in 0..20 {
        let resend = i % 2 == 1;
        let s = if resend { seq - 4 } else { seq };
        assert_eq!(deliver(h.inbound(&tcp((C, 7000), (X, 80), F::ACK, s, 5001, b"data"))), Deliver::Destination);
        if !resend {
            seq += 4;
        }
    }
    h.advance(Duration::from_secs(1));
    assert_eq!(splits(&h.events()).last(), Some(&(50.0, SplitReason::Decrease(Signal::Retransmission))));
}

#[test]
fn idle_flows_expire_with_their_lifetime_reported() {
    let options = MigrationOptions { ramp: steps(&[0.0], 3600), ..Default::default() };
    let mut h = Harness::new(RouterConfig::default(), options, CongestionControlParameters::default());
    h.router.lease_bound(X, h.now).unwrap();
    // A TCP connection that closes with FIN, and a UDP exchange.
    assert_eq!(connect(&mut h, 8000), Side::Source);
    h.advance(Duration::from_secs(2));
    h.inbound(&tcp((C, 8000), (X, 80), F::FIN | F::ACK, 1006, 5001, &[]));
    h.from_vm(Side::Source, &tcp((X, 80), (C, 8000), F::FIN | F::ACK, 5001, 1007, &[]));
    assert_eq!(deliver(h.inbound(&udp((C, 9000), (X, 53), b"q"))), Deliver::Source);
    h.from_vm(Side::Source, &udp((X, 53), (C, 9000), b"a"));
    // Closed TCP is kept 10 s, answered UDP 180 s: step past both, sweeping as the router does.
    let start = h.now;
    let mut ended = Vec::new();
    for _ in 0..200 {
        h.advance(Duration::from_secs(1));
        for e in h.events() {
            if let Event::FlowEnded { key, lifetime, reason, at, .. } = e {
                ended.push((key.protocol, lifetime.as_millis(), reason, (at - start).as_secs()));
            }
        }
    }
    ended.sort_by_key(|e| e.0);
    assert_eq!(ended.len(), 2, "{ended:?}");
    let (tcp_end, udp_end) = (ended[0], ended[1]);
    // Lifetime: first to last packet. Removal: once idle past the timeout, within one sweep period.
    assert_eq!((tcp_end.0, tcp_end.1, tcp_end.2), (6, 2_000, ipshadow_core::FlowEndReason::Idle));
    assert!((10..=21).contains(&tcp_end.3), "FIN at 0 s (+2), kept 10 s idle: {tcp_end:?}");
    assert_eq!((udp_end.0, udp_end.1, udp_end.2), (17, 0, ipshadow_core::FlowEndReason::Idle));
    assert!((180..=191).contains(&udp_end.3), "{udp_end:?}");
    assert_eq!(h.router.flow_count(), 0);
    assert_eq!(h.router.counters().flows_expired, 2);
}

#[test]
fn other_protocols_vlan_tags_and_arp() {
    let options = MigrationOptions { ramp: steps(&[100.0], 3600), ..Default::default() };
    let mut h = Harness::new(RouterConfig::default(), options, CongestionControlParameters::default());
    h.router.lease_bound(X, h.now).unwrap();
    // GRE (protocol 47) from a client: one flow per client and protocol.
    let mut gre = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .ipv4(C.octets(), X.octets(), 64)
        .write(&mut gre, 47u8.into(), &[0; 8])
        .unwrap();
    assert_eq!(deliver(h.inbound(&gre)), Deliver::Destination);
    h.router.abort(X, h.now).unwrap();
    assert_eq!(deliver(h.inbound(&gre)), Deliver::Destination, "the GRE flow stays on B");
    let key = ipshadow_core::FlowKey { client_ip: C, client_port: 0, shadow_ip: X, shadow_port: 0, protocol: 47 };
    assert!(h.router.flow(&key).is_some());
    // An 802.1Q-tagged segment is decided like an untagged one.
    let tagged = ipshadow_core::testkit::vlan_tag(&tcp((C, 100), (X, 80), F::SYN, 1, 0, &[]), 0x8100, 300);
    assert_eq!(deliver(h.inbound(&tagged)), Deliver::Source);
    // ARP is handed to the data plane with its fields.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 9]);
    arp.extend_from_slice(&C.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&X.octets());
    let InboundVerdict::Arp(info) = h.inbound(&arp) else { panic!("ARP not recognised") };
    assert_eq!((info.operation, info.sender_ip, info.target_ip), (1, C, X));
    // Malformed frames are counted drops.
    let mut bad = tcp((C, 1), (X, 80), F::SYN, 1, 0, &[]);
    bad[24] ^= 1;
    assert!(matches!(h.inbound(&bad), InboundVerdict::Drop(ipshadow_core::DropReason::Malformed(_))));
    assert_eq!(h.router.counters().malformed.bad_checksum, 1);
}

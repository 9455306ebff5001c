//! Inbound decisions and the egress arbiter, with exact packets. Every test ends by checking
//! that no RST or data segment from a non-owner left the router.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use core::time::Duration;
use std::net::Ipv4Addr;

use ipshadow_core::testkit::{Harness, X, icmp_echo, make_fragment, tcp, udp};
use ipshadow_core::wire::TcpFlags as F;
use ipshadow_core::{
    Affinity, ConflictKind, CongestionControlParameters, Deliver, DropReason, EgressVerdict, Event, InboundVerdict,
    MigrationOptions, Mode, Owner, Ramp, RampStep, RouterConfig, Side, Strategy,
};

const C: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const SYN: u8 = F::SYN;
const SYNACK: u8 = F::SYN | F::ACK;
const ACK: u8 = F::ACK;
const RST: u8 = F::RST;

fn fixed_split(pct: f64) -> Ramp {
    Ramp::Steps { steps: vec![RampStep { pct, hold: Duration::from_secs(3600) }] }
}

fn harness(options: MigrationOptions) -> Harness {
    let mut h = Harness::new(RouterConfig::default(), options, CongestionControlParameters::default());
    h.router.lease_bound(X, h.now).unwrap();
    h
}

fn at_split(pct: f64) -> Harness {
    harness(MigrationOptions { ramp: fixed_split(pct), ..Default::default() })
}

fn deliver(v: InboundVerdict) -> Deliver {
    match v {
        InboundVerdict::Deliver(d) => d,
        other => panic!("expected delivery, got {other:?}"),
    }
}

fn no_leaks(h: &Harness) {
    assert!(h.leaks.is_empty(), "non-owner segments left the router: {:?}", h.leaks);
}

#[test]
fn split_zero_sends_new_flows_to_a_and_hundred_to_b() {
    let mut h = harness(MigrationOptions::default());
    // Before the lease is bound the split is 0 even with a ramp.
    let mut w = Harness::new(RouterConfig::default(), MigrationOptions::default(), Default::default());
    assert_eq!(deliver(w.inbound(&tcp((C, 1000), (X, 80), SYN, 1, 0, &[]))), Deliver::Source);
    assert_eq!(h.router.entry(X).unwrap().traffic_split_percentage, 1.0);
    let mut b = at_split(100.0);
    for p in 0..200 {
        assert_eq!(deliver(b.inbound(&tcp((C, 2000 + p), (X, 80), SYN, 1, 0, &[]))), Deliver::Destination);
    }
    let mut a = at_split(0.0);
    for p in 0..200 {
        assert_eq!(deliver(a.inbound(&tcp((C, 2000 + p), (X, 80), SYN, 1, 0, &[]))), Deliver::Source);
    }
    no_leaks(&h);
    h.advance(Duration::from_secs(1));
}

#[test]
fn later_packets_follow_the_owner_even_when_the_split_moves() {
    let mut h = harness(MigrationOptions { ramp: Ramp::Linear { pct_per_sec: 1.0 }, ..Default::default() });
    // Open 100 flows at split 0..1 %: almost all on A.
    let mut owners = Vec::new();
    for p in 0..100u16 {
        let d = deliver(h.inbound(&tcp((C, 3000 + p), (X, 80), SYN, 1, 0, &[])));
        let side = if d == Deliver::Source { Side::Source } else { Side::Destination };
        assert_eq!(h.from_vm(side, &tcp((X, 80), (C, 3000 + p), SYNACK, 9, 2, &[])), EgressVerdict::Forward);
        assert_eq!(deliver(h.inbound(&tcp((C, 3000 + p), (X, 80), ACK, 2, 10, &[]))), d);
        owners.push(d);
    }
    h.advance(Duration::from_secs(100)); // split 100 %
    assert_eq!(h.router.entry(X).unwrap().traffic_split_percentage, 100.0);
    for p in 0..100u16 {
        let d = deliver(h.inbound(&tcp((C, 3000 + p), (X, 80), ACK, 2, 1, b"data")));
        assert_eq!(d, owners[p as usize], "flow {p} changed owner");
    }
    // A new flow now goes to B.
    assert_eq!(deliver(h.inbound(&tcp((C, 9999), (X, 80), SYN, 1, 0, &[]))), Deliver::Destination);
    no_leaks(&h);
}

#[test]
fn udp_icmp_and_other_protocols_have_flows() {
    let mut h = at_split(100.0);
    assert_eq!(deliver(h.inbound(&udp((C, 5353), (X, 53), b"q"))), Deliver::Destination);
    assert_eq!(deliver(h.inbound(&icmp_echo(C, X, 9, 1, false))), Deliver::Destination);
    h.router.abort(X, h.now).unwrap(); // split 0 from here on
    assert_eq!(deliver(h.inbound(&udp((C, 5353), (X, 53), b"q2"))), Deliver::Destination, "UDP flow stays");
    assert_eq!(deliver(h.inbound(&icmp_echo(C, X, 9, 2, false))), Deliver::Destination, "ping session stays");
    assert_eq!(deliver(h.inbound(&udp((C, 5354), (X, 53), b"q"))), Deliver::Source, "new flow after abort");
    assert_eq!(deliver(h.inbound(&icmp_echo(C, X, 10, 1, false))), Deliver::Source);
    no_leaks(&h);
}

#[test]
fn client_affinity_pins_every_flow_of_a_client() {
    let mut h = harness(MigrationOptions { ramp: fixed_split(50.0), affinity: Affinity::Client, ..Default::default() });
    let clients: Vec<Ipv4Addr> = (1..=40).map(|n| Ipv4Addr::new(203, 0, 113, n)).collect();
    let mut seen = [0usize; 2];
    for c in &clients {
        let first = deliver(h.inbound(&tcp((*c, 1000), (X, 80), SYN, 1, 0, &[])));
        seen[(first == Deliver::Destination) as usize] += 1;
        for p in 1..10u16 {
            assert_eq!(deliver(h.inbound(&tcp((*c, 1000 + p), (X, 443), SYN, 1, 0, &[]))), first);
            assert_eq!(deliver(h.inbound(&udp((*c, 2000 + p), (X, 53), b""))), first);
        }
    }
    assert!(seen[0] > 5 && seen[1] > 5, "both VMs get clients at 50 %: {seen:?}");
}

/// The defect `simulate --affinity client` showed (1,000 of 1,000 connections reset): a client's
/// connections open on A before the migration must stay on A whatever its new flows do, whether
/// the router knew them (opened at split 0) or learns them midstream, where B's RST to the
/// mirrored segment must not claim them.
#[test]
fn client_affinity_never_moves_a_clients_open_flows() {
    let mut h = harness(MigrationOptions {
        ramp: Ramp::Linear { pct_per_sec: 1.0 },
        affinity: Affinity::Client,
        ..Default::default()
    });
    let clients: Vec<Ipv4Addr> = (1..=40).map(|n| Ipv4Addr::new(203, 0, 113, n)).collect();
    for c in &clients {
        // Known flow: opened while the split is (near) 0.
        let d = deliver(h.inbound(&tcp((*c, 1000), (X, 80), SYN, 1, 0, &[])));
        assert_eq!(d, Deliver::Source);
        assert_eq!(h.from_vm(Side::Source, &tcp((X, 80), (*c, 1000), SYNACK, 9, 2, &[])), EgressVerdict::Forward);
        assert_eq!(deliver(h.inbound(&tcp((*c, 1000), (X, 80), ACK, 2, 10, &[]))), Deliver::Source);
    }
    h.advance(Duration::from_secs(100)); // split 100 %: every client's new flows go to B
    for c in &clients {
        assert_eq!(deliver(h.inbound(&tcp((*c, 1001), (X, 80), SYN, 1, 0, &[]))), Deliver::Destination);
        assert_eq!(deliver(h.inbound(&tcp((*c, 1000), (X, 80), ACK, 2, 10, b"req"))), Deliver::Source);
        // Unknown to the router (opened before it started): mirrored, B resets, A answers.
        let seg = tcp((*c, 2000), (X, 22), ACK, 100, 500, b"ls\n");
        assert_eq!(deliver(h.inbound(&seg)), Deliver::Both);
        let rst_b = tcp((X, 22), (*c, 2000), RST, 500, 0, &[]);
        assert_eq!(h.from_vm(Side::Destination, &rst_b), EgressVerdict::Drop(DropReason::ResetSuppressed));
        let reply = tcp((X, 22), (*c, 2000), ACK, 500, 103, b"file\n");
        assert_eq!(h.from_vm(Side::Source, &reply), EgressVerdict::Forward);
        assert_eq!(deliver(h.inbound(&tcp((*c, 2000), (X, 22), ACK, 103, 505, b"x"))), Deliver::Source);
    }
    no_leaks(&h);
}

#[test]
fn unknown_flow_goes_to_both_and_owner_is_learned_from_the_reply() {
    let mut h = at_split(50.0);
    // Mid-connection segment with no state (e.g. after a router restart).
    let seg = tcp((C, 4000), (X, 22), ACK, 100, 500, b"ls\n");
    assert_eq!(deliver(h.inbound(&seg)), Deliver::Both);
    // B has no such socket: its RST is held back.
    let rst_b = tcp((X, 22), (C, 4000), RST, 500, 0, &[]);
    assert_eq!(h.from_vm(Side::Destination, &rst_b), EgressVerdict::Drop(DropReason::ResetSuppressed));
    // A owns it and answers with data.
    let reply = tcp((X, 22), (C, 4000), ACK, 500, 103, b"file\n");
    assert_eq!(h.from_vm(Side::Source, &reply), EgressVerdict::Forward);
    let key = ipshadow_core::testkit::egress_flow_key(&reply).unwrap();
    assert_eq!(h.router.flow(&key).unwrap().owner, Owner::Source);
    assert_eq!(deliver(h.inbound(&tcp((C, 4000), (X, 22), ACK, 103, 505, b"x"))), Deliver::Source);
    // B's RST arriving just after A's answer is still B's answer to the mirrored segment: held
    // back as expected, not a conflict (which would count as trouble against B's split).
    assert_eq!(h.from_vm(Side::Destination, &rst_b), EgressVerdict::Drop(DropReason::ResetSuppressed));
    assert_eq!(h.router.counters().conflicts.total(), 0);
    // Long after the learning, a RST from B on A's flow is a conflict.
    h.advance(Duration::from_secs(5));
    assert_eq!(h.from_vm(Side::Destination, &rst_b), EgressVerdict::Drop(DropReason::Conflict(ConflictKind::Rst)));
    assert!(h.events().iter().any(|e| matches!(e, Event::OwnerLearned { owner: Side::Source, .. })));
    assert_eq!(h.router.counters().resets_suppressed, 2);
    no_leaks(&h);
}

#[test]
fn unknown_flow_reset_by_both_lets_one_rst_through() {
    let mut h = at_split(50.0);
    assert_eq!(deliver(h.inbound(&tcp((C, 4001), (X, 22), ACK, 100, 500, b"?"))), Deliver::Both);
    let rst_a = tcp((X, 22), (C, 4001), RST, 500, 0, &[]);
    let rst_b = tcp((X, 22), (C, 4001), RST, 500, 0, &[]);
    assert_eq!(h.from_vm(Side::Source, &rst_a), EgressVerdict::Drop(DropReason::ResetSuppressed));
    h.advance(Duration::from_millis(200));
    assert_eq!(h.from_vm(Side::Destination, &rst_b), EgressVerdict::Forward, "nobody has it: the client must learn");
    assert!(h.router.flow(&ipshadow_core::testkit::egress_flow_key(&rst_b).unwrap()).is_none());
    // The two RSTs must fall within the window: far apart they do not pair.
    assert_eq!(deliver(h.inbound(&tcp((C, 4002), (X, 22), ACK, 1, 1, b"?"))), Deliver::Both);
    let rst_a = tcp((X, 22), (C, 4002), RST, 1, 0, &[]);
    assert_eq!(h.from_vm(Side::Source, &rst_a), EgressVerdict::Drop(DropReason::ResetSuppressed));
    h.advance(Duration::from_secs(10));
    let rst_b = tcp((X, 22), (C, 4002), RST, 1, 0, &[]);
    assert_eq!(h.from_vm(Side::Destination, &rst_b), EgressVerdict::Drop(DropReason::ResetSuppressed));
}

#[test]
fn conflicts_from_the_non_owner_are_dropped_and_counted_by_kind() {
    let mut h = at_split(0.0);
    assert_eq!(deliver(h.inbound(&tcp((C, 5000), (X, 80), SYN, 10, 0, &[]))), Deliver::Source);
    assert_eq!(h.from_vm(Side::Source, &tcp((X, 80), (C, 5000), SYNACK, 700, 11, &[])), EgressVerdict::Forward);
    assert_eq!(deliver(h.inbound(&tcp((C, 5000), (X, 80), ACK, 11, 701, b"GET /"))), Deliver::Source);
    assert_eq!(h.from_vm(Side::Source, &tcp((X, 80), (C, 5000), ACK, 701, 16, b"200 OK....")), EgressVerdict::Forward);
    let cases = [
        (tcp((X, 80), (C, 5000), RST, 701, 0, &[]), ConflictKind::Rst),
        (tcp((X, 80), (C, 5000), SYNACK, 9, 11, &[]), ConflictKind::SynAck),
        (tcp((X, 80), (C, 5000), ACK, 701, 16, b"200 OK"), ConflictKind::DuplicateSequence),
        (tcp((X, 80), (C, 5000), ACK, 90_000, 16, b"other"), ConflictKind::Data),
        (tcp((X, 80), (C, 5000), ACK, 711, 16, &[]), ConflictKind::Other),
    ];
    for (frame, kind) in &cases {
        assert_eq!(h.from_vm(Side::Destination, frame), EgressVerdict::Drop(DropReason::Conflict(*kind)));
    }
    let c = h.router.entry(X).unwrap().counters.conflicts;
    assert_eq!((c.rst, c.syn_ack, c.duplicate_sequence, c.data, c.other), (1, 1, 1, 1, 1));
    assert_eq!(h.router.counters().conflicts.total(), 5);
    no_leaks(&h);
}

#[test]
fn outbound_connections_claim_their_flow() {
    let mut h = at_split(50.0);
    let db = Ipv4Addr::new(192, 0, 2, 50);
    // B connects out to a database; the reply goes to B whatever the split says.
    assert_eq!(h.from_vm(Side::Destination, &tcp((X, 41_000), (db, 5432), SYN, 1, 0, &[])), EgressVerdict::Forward);
    assert_eq!(deliver(h.inbound(&tcp((db, 5432), (X, 41_000), SYNACK, 50, 2, &[]))), Deliver::Destination);
    assert_eq!(h.from_vm(Side::Destination, &tcp((X, 41_000), (db, 5432), ACK, 2, 51, &[])), EgressVerdict::Forward);
    let key = ipshadow_core::testkit::egress_flow_key(&tcp((X, 41_000), (db, 5432), ACK, 2, 51, &[])).unwrap();
    assert_eq!(h.router.flow(&key).unwrap().phase, ipshadow_core::Phase::Established);
    // A using the same tuple collides and loses (the flow is established).
    assert_eq!(
        h.from_vm(Side::Source, &tcp((X, 41_000), (db, 5432), SYN, 7, 0, &[])),
        EgressVerdict::Drop(DropReason::Conflict(ConflictKind::Collision))
    );
    // UDP out from A.
    assert_eq!(h.from_vm(Side::Source, &udp((X, 5000), (db, 53), b"q")), EgressVerdict::Forward);
    assert_eq!(deliver(h.inbound(&udp((db, 53), (X, 5000), b"a"))), Deliver::Source);
    no_leaks(&h);
}

#[test]
fn simultaneous_claims_are_won_by_the_priority_vm() {
    // At split 0 the priority VM of every tuple is A; at 100 it is B.
    for (pct, winner) in [(0.0, Side::Source), (100.0, Side::Destination)] {
        let mut h = at_split(pct);
        let db = Ipv4Addr::new(192, 0, 2, 51);
        let syn = |seq| tcp((X, 42_000), (db, 5432), SYN, seq, 0, &[]);
        let loser = winner.other();
        assert_eq!(h.from_vm(loser, &syn(1)), EgressVerdict::Forward, "first claim");
        assert_eq!(h.from_vm(winner, &syn(2)), EgressVerdict::Forward, "priority VM takes the unanswered tuple");
        assert_eq!(
            h.from_vm(loser, &syn(1)),
            EgressVerdict::Drop(DropReason::Conflict(ConflictKind::Collision)),
            "and keeps it"
        );
        assert_eq!(deliver(h.inbound(&tcp((db, 5432), (X, 42_000), SYNACK, 9, 3, &[]))), Deliver::from(winner));
        assert!(
            h.events()
                .iter()
                .any(|e| matches!(e, Event::FlowEnded { reason: ipshadow_core::FlowEndReason::CollisionLost, .. }))
        );
    }
}

#[test]
fn anti_spoofing() {
    let mut h = at_split(50.0);
    let other = Ipv4Addr::new(10, 0, 0, 99);
    let vm_c = h.router.vm_ref(&"vm-c".into());
    h.router.assign_address(other, vm_c);
    // A VM sending from an address it does not hold.
    assert_eq!(h.from_vm(Side::Source, &udp((other, 1), (C, 2), b"")), EgressVerdict::Drop(DropReason::Spoofed));
    assert_eq!(h.router.egress(vm_c, &udp((other, 1), (C, 2), b""), h.now), EgressVerdict::Forward);
    // A third VM sending from the shadowed address.
    assert_eq!(h.router.egress(vm_c, &udp((X, 1), (C, 2), b""), h.now), EgressVerdict::Drop(DropReason::Spoofed));
    // DHCP from 0.0.0.0 is allowed.
    let dhcp = udp((Ipv4Addr::UNSPECIFIED, 68), (Ipv4Addr::BROADCAST, 67), &[0; 240]);
    assert_eq!(h.from_vm(Side::Destination, &dhcp), EgressVerdict::Forward);
    assert_eq!(h.router.counters().spoofed, 2);
}

#[test]
fn packet_strategy_splits_every_packet_and_instant_moves_everything() {
    let mut h = harness(MigrationOptions { ramp: fixed_split(50.0), strategy: Strategy::Packet, ..Default::default() });
    let mut to_b = 0;
    for i in 0..1000u32 {
        if deliver(h.inbound(&tcp((C, 6000), (X, 80), ACK, i, 1, b"x"))) == Deliver::Destination {
            to_b += 1;
        }
    }
    assert!((400..=600).contains(&to_b), "one flow's packets spread over both VMs: {to_b}");
    let mut i = harness(MigrationOptions { strategy: Strategy::Instant, ..Default::default() });
    assert_eq!(deliver(i.inbound(&tcp((C, 6001), (X, 80), ACK, 1, 1, b"x"))), Deliver::Destination);
    assert_eq!(
        i.from_vm(Side::Source, &tcp((X, 80), (C, 6001), ACK, 1, 2, b"y")),
        EgressVerdict::Drop(DropReason::SourceReleased)
    );
}

#[test]
fn fragments_follow_their_first_fragment() {
    let mut h = at_split(100.0);
    let whole = udp((C, 7000), (X, 53), &[1; 64]);
    assert_eq!(deliver(h.inbound(&make_fragment(whole.clone(), 42, 0, true, 24))), Deliver::Destination);
    assert_eq!(deliver(h.inbound(&make_fragment(whole.clone(), 42, 3, false, 16))), Deliver::Destination);
    // A later fragment whose first fragment was never seen goes to both VMs.
    assert_eq!(deliver(h.inbound(&make_fragment(whole.clone(), 43, 3, false, 16))), Deliver::Both);
    assert_eq!(h.router.counters().fragments_mirrored, 1);
    // From a VM: the non-owner's first fragment is dropped, and so are its later fragments.
    let reply = udp((X, 53), (C, 7000), &[2; 64]);
    assert_eq!(
        h.from_vm(Side::Source, &make_fragment(reply.clone(), 77, 0, true, 24)),
        EgressVerdict::Drop(DropReason::Conflict(ConflictKind::Other))
    );
    assert_eq!(
        h.from_vm(Side::Source, &make_fragment(reply.clone(), 77, 3, false, 16)),
        EgressVerdict::Drop(DropReason::FragmentOrphan)
    );
    assert_eq!(h.from_vm(Side::Destination, &make_fragment(reply.clone(), 78, 0, true, 24)), EgressVerdict::Forward);
    assert_eq!(h.from_vm(Side::Destination, &make_fragment(reply, 78, 3, false, 16)), EgressVerdict::Forward);
}

#[test]
fn icmp_errors_reach_the_flow_owner() {
    let mut h = at_split(100.0);
    assert_eq!(deliver(h.inbound(&tcp((C, 8000), (X, 443), SYN, 1, 0, &[]))), Deliver::Destination);
    // "Fragmentation needed" from a router on the path, quoting B's segment X:443 -> C:8000.
    let quoted = tcp((X, 443), (C, 8000), SYNACK, 5, 2, &[]);
    let mut icmp = vec![3u8, 4, 0, 0, 0, 0, 0x05, 0xdc];
    icmp.extend_from_slice(&quoted[14..14 + 28]);
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .ipv4([192, 0, 2, 1], X.octets(), 64)
        .write(&mut f, 1u8.into(), &icmp)
        .unwrap();
    h.router.abort(X, h.now).unwrap(); // new flows would go to A now
    assert_eq!(deliver(h.inbound(&f)), Deliver::Destination);
}

#[test]
fn not_shadowed_traffic_is_left_alone() {
    let mut h = at_split(50.0);
    let y = Ipv4Addr::new(10, 0, 0, 11);
    assert_eq!(h.inbound(&tcp((C, 1), (y, 80), SYN, 1, 0, &[])), InboundVerdict::NotShadowed);
    assert_eq!(h.router.flow_count(), 0);
}

#[test]
fn replica_mode_mirrors_dedups_and_hands_off() {
    let mut h = harness(MigrationOptions { mode: Mode::Replica, ramp: fixed_split(0.0), ..Default::default() });
    assert_eq!(deliver(h.inbound(&tcp((C, 9000), (X, 80), SYN, 1, 0, &[]))), Deliver::Both);
    let synack = tcp((X, 80), (C, 9000), SYNACK, 100, 2, &[]);
    assert_eq!(h.from_vm(Side::Source, &synack), EgressVerdict::Forward);
    assert_eq!(h.from_vm(Side::Destination, &synack), EgressVerdict::Drop(DropReason::ReplicaDuplicate));
    assert_eq!(deliver(h.inbound(&tcp((C, 9000), (X, 80), ACK, 2, 101, b"req"))), Deliver::Both);
    let data = tcp((X, 80), (C, 9000), ACK, 101, 5, b"resp");
    assert_eq!(h.from_vm(Side::Source, &data), EgressVerdict::Forward);
    assert_eq!(h.from_vm(Side::Destination, &data), EgressVerdict::Drop(DropReason::ReplicaDuplicate));
    // Promote: the primary moves to B; B's copy of data the client already acknowledged is a
    // duplicate, its new data goes out, and A's copies are now the duplicates.
    h.router.promote(X, h.now).unwrap();
    assert_eq!(deliver(h.inbound(&tcp((C, 9000), (X, 80), ACK, 5, 105, &[]))), Deliver::Both);
    assert_eq!(h.from_vm(Side::Destination, &data), EgressVerdict::Drop(DropReason::ReplicaDuplicate));
    let more = tcp((X, 80), (C, 9000), ACK, 105, 5, b"more");
    assert_eq!(h.from_vm(Side::Destination, &more), EgressVerdict::Forward);
    assert_eq!(h.from_vm(Side::Source, &more), EgressVerdict::Drop(DropReason::ReplicaDuplicate));
    assert!(h.events().iter().any(|e| matches!(e, Event::HandOff { from: Side::Source, to: Side::Destination, .. })));
    assert_eq!(h.router.entry(X).unwrap().counters.handoffs, 1);
    no_leaks(&h);
}

#[test]
fn batch_decisions_equal_one_by_one_decisions() {
    let y = Ipv4Addr::new(10, 0, 0, 11);
    let mut frames = Vec::new();
    for i in 0..600u32 {
        let port = 1000 + (i % 97) as u16; // flows recur within one look-ahead window
        let client = Ipv4Addr::new(198, 51, 100, (i % 5) as u8 + 1);
        frames.push(match i % 9 {
            0 => tcp((client, port), (X, 80), SYN, i, 0, &[]),
            1 | 2 => tcp((client, port), (X, 80), ACK, i, 7, b"data"),
            3 => udp((client, port), (X, 53), b"q"),
            4 => icmp_echo(client, X, port, 1, false),
            5 => {
                make_fragment(udp((client, port), (X, 53), &[0; 40]), i as u16 % 7, (i % 2) as u16 * 2, i % 2 == 0, 16)
            }
            6 => tcp((client, port), (y, 80), SYN, 1, 0, &[]),
            7 => tcp((client, port), (X, 80), RST, i, 0, &[]),
            _ => vec![0xab; (i % 60) as usize],
        });
    }
    let options = MigrationOptions { ramp: fixed_split(50.0), ..Default::default() };
    let mut single = harness(options.clone());
    let mut batch = harness(options);
    let one_by_one: Vec<_> = frames.iter().map(|f| single.inbound(f)).collect();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let mut batched = Vec::new();
    for chunk in refs.chunks(50) {
        batch.router.inbound_batch(chunk, batch.now, &mut batched);
    }
    assert_eq!(one_by_one, batched);
    assert_eq!(single.router.counters(), batch.router.counters());
    assert_eq!(single.router.entry(X), batch.router.entry(X));
}

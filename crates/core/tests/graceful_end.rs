//! The end of a migration for the flows still on A: the closing window closes each at a quiet
//! moment (idle, no request waiting for its answer, no segment for 250 ms) with a FIN in A's name
//! at exactly the client's next expected sequence number (and one to A in the client's name),
//! spread over the window's first half, absorbs the client's close, resets only flows never
//! quiet; and the early finish once A is empty.

#![allow(clippy::unwrap_used)]

use core::time::Duration;
use std::net::Ipv4Addr;

use ipshadow_core::testkit::{Harness, X, tcp};
use ipshadow_core::wire::{L4, Packet, TcpFlags as F, TcpInfo, parse_frame};
use ipshadow_core::{
    Deliver, DropReason, EgressVerdict, EndCause, Event, InboundVerdict, MigrationOptions, Outcome, Ramp, RampStep,
    RouterConfig, Side, Transmit, TransmitKind,
};

const SYN: u8 = F::SYN;
const SYNACK: u8 = F::SYN | F::ACK;
const ACK: u8 = F::ACK;
const FINACK: u8 = F::FIN | F::ACK;
const C: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// From the window's opening to its first closes: one scan period, so that a fast path has
/// stopped forwarding A's flows and reported what it forwarded before.
const FIRST_SCAN: Duration = Duration::from_millis(250);

/// A harness whose migration has a deadline `deadline` from now, 10 s closing window, ramping.
fn harness(deadline: Duration, early_finish: bool) -> Harness {
    let options = MigrationOptions {
        ramp: Ramp::Steps { steps: vec![RampStep { pct: 50.0, hold: Duration::from_secs(3600) }] },
        early_finish,
        ..Default::default()
    };
    let mut h = Harness::new(RouterConfig::default(), options, Default::default());
    let deadline = h.now + deadline;
    h.router.set_deadline(X, Some(deadline)).unwrap();
    h
}

/// Opens a connection from `port` at split 0 (A: the lease is not bound yet), with one exchange;
/// client ISN 100, A's ISN 900; leaves it idle (everything acknowledged).
fn open_on_a(h: &mut Harness, port: u16) {
    assert_eq!(h.inbound(&tcp((C, port), (X, 80), SYN, 100, 0, &[])), InboundVerdict::Deliver(Deliver::Source));
    h.from_vm(Side::Source, &tcp((X, 80), (C, port), SYNACK, 900, 101, &[]));
    h.inbound(&tcp((C, port), (X, 80), ACK, 101, 901, b"GET /"));
    h.from_vm(Side::Source, &tcp((X, 80), (C, port), ACK, 901, 106, b"200 OK"));
    h.inbound(&tcp((C, port), (X, 80), ACK, 106, 907, &[]));
}

fn sent(h: &mut Harness) -> Vec<(Transmit, TcpInfo)> {
    let mut out = Vec::new();
    while let Some(t) = h.router.poll_transmit() {
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[8, 0]);
        frame.extend_from_slice(&t.datagram);
        let Ok(Packet::Ipv4(ip)) = parse_frame(&frame) else { panic!("router sent a bad datagram") };
        let L4::Tcp(info) = ip.l4 else { panic!("not TCP") };
        out.push((t, info));
    }
    out
}

fn report(h: &mut Harness) -> (ipshadow_core::CutOverReport, ipshadow_core::Instant) {
    h.events()
        .into_iter()
        .find_map(|e| match e {
            Event::MigrationEnded { outcome: Outcome::Completed, report, at, .. } => Some((report, at)),
            _ => None,
        })
        .expect("the migration ended")
}

#[test]
fn an_idle_flow_is_closed_in_order_at_the_window_and_its_close_absorbed() {
    let mut h = harness(Duration::from_secs(60), false);
    open_on_a(&mut h, 4000);
    h.router.lease_bound(X, h.now).unwrap();
    h.advance(Duration::from_secs(49));
    assert!(sent(&mut h).is_empty(), "nothing before the window");
    h.advance(Duration::from_secs(1)); // deadline - 10 s: the window opens
    assert!(sent(&mut h).is_empty(), "no close in the instant the window opens");
    h.advance(FIRST_SCAN);
    let out = sent(&mut h);
    assert_eq!(out.len(), 2, "{out:?}");
    let (to_client, fin) = &out[0];
    assert_eq!((to_client.to, to_client.vm, to_client.kind), (C, None, TransmitKind::Close));
    assert!(fin.flags.fin() && fin.flags.ack());
    assert_eq!((fin.src_port, fin.dst_port, fin.seq, fin.ack), (80, 4000, 907, 106), "at the client's RCV.NXT");
    let (to_a, fin_a) = &out[1];
    assert_eq!((to_a.vm, to_a.kind), (Some(h.a), TransmitKind::Close));
    assert_eq!((fin_a.src_port, fin_a.dst_port, fin_a.seq, fin_a.ack), (4000, 80, 106, 907));
    assert_eq!(h.router.entry(X).unwrap().traffic_split_percentage, 100.0, "new flows to B");
    // The client acknowledges the FIN and closes: the router answers, nothing reaches A or B.
    let closed = InboundVerdict::Drop(DropReason::ClosedByRouter);
    assert_eq!(h.inbound(&tcp((C, 4000), (X, 80), ACK, 106, 908, &[])), closed);
    assert!(sent(&mut h).is_empty(), "a pure ACK is not answered");
    assert_eq!(h.inbound(&tcp((C, 4000), (X, 80), FINACK, 106, 908, &[])), closed);
    let out = sent(&mut h);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].0.kind, out[0].1.seq, out[0].1.ack), (TransmitKind::Ack, 908, 107));
    // A's own FIN (its application closed) is acknowledged in the client's name and dropped.
    let a_fin = tcp((X, 80), (C, 4000), FINACK, 907, 107, &[]);
    assert_eq!(h.from_vm(Side::Source, &a_fin), EgressVerdict::Drop(DropReason::ClosedByRouter));
    let out = sent(&mut h);
    assert_eq!((out[0].0.vm, out[0].1.seq, out[0].1.ack), (Some(h.a), 107, 908));
    // A is empty and the client closed: the migration ends before the deadline.
    h.advance(Duration::from_secs(1));
    let (r, at) = report(&mut h);
    assert_eq!((r.flows_open_on_losing_side, r.closed_gracefully, r.reset), (1, 1, 0), "{r:?}");
    assert_eq!(r.cause, EndCause::Drained);
    assert!(at < h.now + Duration::from_secs(9));
}

#[test]
fn a_busy_flow_waits_for_its_idle_moment_and_one_never_idle_is_reset() {
    let mut h = harness(Duration::from_secs(60), false);
    open_on_a(&mut h, 4001);
    open_on_a(&mut h, 4002);
    // Both busy: a request each, not yet answered.
    h.inbound(&tcp((C, 4001), (X, 80), ACK, 106, 907, b"GET /2"));
    h.inbound(&tcp((C, 4002), (X, 80), ACK, 106, 907, b"GET /2"));
    h.router.lease_bound(X, h.now).unwrap();
    h.advance(Duration::from_secs(50));
    assert!(sent(&mut h).is_empty(), "busy flows are not closed");
    // 4001 is answered and acknowledged: closed once it has been quiet for 250 ms.
    assert_eq!(h.from_vm(Side::Source, &tcp((X, 80), (C, 4001), ACK, 907, 112, b"200 OK")), EgressVerdict::Forward);
    assert!(sent(&mut h).is_empty(), "the answer is in flight");
    assert_eq!(h.inbound(&tcp((C, 4001), (X, 80), ACK, 112, 913, &[])), InboundVerdict::Deliver(Deliver::Source));
    h.advance(Duration::from_millis(200));
    assert!(sent(&mut h).is_empty(), "idle, but not quiet for long enough yet");
    h.advance(Duration::from_millis(300));
    let out = sent(&mut h);
    assert_eq!(out.len(), 2);
    assert_eq!((out[0].1.seq, out[0].1.ack), (913, 112));
    // 4002 never answers: reset at the deadline.
    h.advance(Duration::from_millis(9500));
    let out = sent(&mut h);
    assert_eq!(out.iter().map(|(t, _)| t.kind).collect::<Vec<_>>(), [TransmitKind::Reset; 2]);
    assert_eq!((out[0].0.vm, out[0].1.dst_port, out[0].1.seq), (None, 4002, 907), "at the client's RCV.NXT");
    // A is reset too, in the client's name, so its application lets the connection go.
    assert_eq!((out[1].0.vm, out[1].1.src_port, out[1].1.seq), (Some(h.a), 4002, 112), "at A's RCV.NXT");
    let (r, _) = report(&mut h);
    assert_eq!((r.flows_open_on_losing_side, r.closed_gracefully, r.reset), (2, 1, 1), "{r:?}");
    assert_eq!(r.cause, EndCause::Deadline);
}

#[test]
fn a_request_crossing_the_fin_is_acknowledged_not_delivered() {
    let mut h = harness(Duration::from_secs(60), false);
    open_on_a(&mut h, 4003);
    h.router.lease_bound(X, h.now).unwrap();
    h.advance(Duration::from_secs(50));
    h.advance(FIRST_SCAN);
    assert_eq!(sent(&mut h).len(), 2);
    // The client sent its next request before the FIN reached it.
    let req = tcp((C, 4003), (X, 80), ACK, 106, 907, b"GET /3");
    assert_eq!(h.inbound(&req), InboundVerdict::Drop(DropReason::ClosedByRouter));
    let out = sent(&mut h);
    // Acknowledged with the FIN again (the request does not show the FIN arrived).
    assert_eq!((out[0].0.kind, out[0].1.seq, out[0].1.ack), (TransmitKind::Close, 907, 112));
    assert_eq!(h.router.counters().closed_crossed, 1);
    // Sent after the FIN arrived: a plain acknowledgment.
    let req = tcp((C, 4003), (X, 80), ACK, 112, 908, b"GET /4");
    assert_eq!(h.inbound(&req), InboundVerdict::Drop(DropReason::ClosedByRouter));
    let out = sent(&mut h);
    assert_eq!((out[0].0.kind, out[0].1.seq, out[0].1.ack), (TransmitKind::Ack, 908, 118));
    assert_eq!(h.router.counters().closed_crossed, 2);
}

#[test]
fn early_finish_when_a_is_empty_at_100_percent() {
    let options = MigrationOptions {
        ramp: Ramp::Steps { steps: vec![RampStep { pct: 100.0, hold: Duration::from_secs(1) }] },
        ..Default::default()
    };
    let mut h = Harness::new(RouterConfig::default(), options, Default::default());
    let deadline = h.now + Duration::from_secs(86_400);
    h.router.set_deadline(X, Some(deadline)).unwrap();
    open_on_a(&mut h, 4004);
    h.router.lease_bound(X, h.now).unwrap();
    h.advance(Duration::from_secs(40));
    assert!(h.router.entry(X).is_some(), "A still has an open flow: no early finish");
    // A's flow ends; the migration finishes within a check period, a day early.
    h.inbound(&tcp((C, 4004), (X, 80), F::RST, 106, 0, &[]));
    h.advance(Duration::from_secs(1));
    h.advance(Duration::from_secs(1));
    let (r, at) = report(&mut h);
    assert_eq!(r.cause, EndCause::Drained);
    assert!(deadline - at > Duration::from_secs(86_000));
}

#[test]
fn idle_flows_that_would_outlive_the_longest_deadline_are_closed_early() {
    let options = MigrationOptions {
        ramp: Ramp::Steps { steps: vec![RampStep { pct: 100.0, hold: Duration::from_secs(1) }] },
        ..Default::default()
    };
    let mut h = Harness::new(RouterConfig::default(), options, Default::default());
    h.router.set_deadline(X, Some(h.now + Duration::from_secs(86_400))).unwrap();
    open_on_a(&mut h, 4005); // idle, and no flow has ever ended: no drain in sight
    h.router.lease_bound(X, h.now).unwrap();
    h.advance(Duration::from_secs(31));
    h.advance(FIRST_SCAN);
    let out = sent(&mut h);
    assert_eq!(out.len(), 2, "closed in order: {out:?}");
    h.inbound(&tcp((C, 4005), (X, 80), FINACK, 106, 908, &[]));
    h.advance(Duration::from_secs(1));
    let (r, _) = report(&mut h);
    assert_eq!((r.closed_gracefully, r.reset, r.cause), (1, 0, EndCause::Drained));
}

#[test]
fn a_client_that_notices_the_close_after_the_cut_over_is_still_answered_not_reset() {
    let mut h = harness(Duration::from_secs(60), false);
    open_on_a(&mut h, 4006);
    open_on_a(&mut h, 4007);
    h.inbound(&tcp((C, 4007), (X, 80), ACK, 106, 907, b"GET /2")); // busy: keeps the window open
    h.router.lease_bound(X, h.now).unwrap();
    h.advance(Duration::from_secs(50));
    h.advance(FIRST_SCAN);
    assert_eq!(sent(&mut h).len(), 2, "4006 closed in order");
    h.advance(Duration::from_secs(10)); // the deadline: the migration ends
    report(&mut h);
    assert!(h.router.entry(X).is_none());
    sent(&mut h);
    // 4006's client only now writes its next request (it was not reading while idle), then
    // closes: the router still answers for A, B never sees it.
    let closed = InboundVerdict::Drop(DropReason::ClosedByRouter);
    assert_eq!(h.inbound(&tcp((C, 4006), (X, 80), ACK, 106, 908, b"GET /3")), closed);
    assert_eq!(h.inbound(&tcp((C, 4006), (X, 80), FINACK, 112, 908, &[])), closed);
    let acks: Vec<_> = sent(&mut h).into_iter().map(|(t, i)| (t.kind, i.seq, i.ack)).collect();
    assert_eq!(acks, [(TransmitKind::Ack, 908, 112), (TransmitKind::Ack, 908, 113)]);
    // A new connection from the same port is B's.
    assert_eq!(h.inbound(&tcp((C, 4006), (X, 80), SYN, 5000, 0, &[])), InboundVerdict::NotShadowed);
    // A minute later nothing is kept.
    h.advance(Duration::from_secs(70));
    assert_eq!(h.inbound(&tcp((C, 4007), (X, 80), ACK, 112, 907, &[])), InboundVerdict::NotShadowed);
}

/// One request/response exchange on a flow opened by `open_on_a` whose client has sent
/// `c` bytes and A `a` bytes so far (sequence numbers relative to the ISNs 100 and 900).
fn exchange(h: &mut Harness, port: u16, c: &mut u32, a: &mut u32) {
    h.inbound(&tcp((C, port), (X, 80), ACK, 101 + *c, 901 + *a, b"GET /"));
    *c += 5;
    h.from_vm(Side::Source, &tcp((X, 80), (C, port), ACK, 901 + *a, 101 + *c, b"200 OK"));
    *a += 6;
    h.inbound(&tcp((C, port), (X, 80), ACK, 101 + *c, 901 + *a, &[]));
}

#[test]
fn a_flow_never_quiet_for_250_ms_is_reset_though_idle_between_its_exchanges() {
    let mut h = harness(Duration::from_secs(60), false);
    open_on_a(&mut h, 4010);
    h.router.lease_bound(X, h.now).unwrap();
    h.advance(Duration::from_secs(49));
    // An exchange every 100 ms through the window: everything acknowledged after each, never
    // quiet for 250 ms.
    let (mut c, mut a) = (5, 6);
    for _ in 0..110 {
        exchange(&mut h, 4010, &mut c, &mut a);
        assert!(sent(&mut h).iter().all(|(t, _)| t.kind != TransmitKind::Close), "closed mid-stream");
        h.advance(Duration::from_millis(100));
    }
    let out = sent(&mut h);
    assert_eq!(
        out.iter().map(|(t, _)| (t.kind, t.vm)).collect::<Vec<_>>(),
        [(TransmitKind::Reset, None), (TransmitKind::Reset, Some(h.a))],
        "{out:?}"
    );
    let (r, _) = report(&mut h);
    assert_eq!((r.flows_open_on_losing_side, r.closed_gracefully, r.reset), (1, 0, 1), "{r:?}");
}

#[test]
fn a_request_acknowledged_but_not_yet_answered_is_not_closed_until_its_answer() {
    let mut h = harness(Duration::from_secs(60), false);
    open_on_a(&mut h, 4011);
    h.router.lease_bound(X, h.now).unwrap();
    h.advance(Duration::from_secs(48));
    // A slow request: A acknowledges it at once and computes the answer for 5 s.
    h.inbound(&tcp((C, 4011), (X, 80), ACK, 106, 907, b"POST /"));
    h.from_vm(Side::Source, &tcp((X, 80), (C, 4011), ACK, 907, 112, &[]));
    for _ in 0..20 {
        h.advance(Duration::from_millis(250));
        assert!(sent(&mut h).is_empty(), "closed while the answer is being computed");
    }
    h.from_vm(Side::Source, &tcp((X, 80), (C, 4011), ACK, 907, 112, b"201 Created"));
    h.inbound(&tcp((C, 4011), (X, 80), ACK, 112, 918, &[]));
    h.advance(Duration::from_millis(500));
    let out = sent(&mut h);
    assert_eq!(out.iter().map(|(t, _)| t.kind).collect::<Vec<_>>(), [TransmitKind::Close; 2]);
    assert_eq!((out[0].1.seq, out[0].1.ack), (918, 112));
}

#[test]
fn closes_are_spread_over_the_first_half_of_the_window() {
    let mut h = harness(Duration::from_secs(60), false);
    for port in 5000..5100 {
        open_on_a(&mut h, port);
    }
    h.router.lease_bound(X, h.now).unwrap();
    h.advance(Duration::from_secs(50)); // the window opens: 100 idle flows, 10 s
    assert!(sent(&mut h).is_empty(), "the first closes wait for the first scan");
    let mut per_look = Vec::new();
    while per_look.iter().sum::<usize>() < 100 && per_look.len() < 40 {
        h.advance(Duration::from_millis(250));
        per_look.push(sent(&mut h).len() / 2);
    }
    // 5 s in 250 ms looks: 20 of them, 5 flows each.
    assert_eq!(per_look.iter().sum::<usize>(), 100, "{per_look:?}");
    assert_eq!(per_look.len(), 20, "{per_look:?}");
    assert!(per_look.iter().all(|&n| n == 5), "{per_look:?}");
}

#[test]
fn a_lost_fin_is_sent_again_when_the_client_shows_it_did_not_get_it() {
    let mut h = harness(Duration::from_secs(60), false);
    open_on_a(&mut h, 4012);
    h.router.lease_bound(X, h.now).unwrap();
    h.advance(Duration::from_secs(50));
    h.advance(FIRST_SCAN);
    assert_eq!(sent(&mut h).len(), 2, "closed in order");
    // The FIN was lost: the client's next request still acknowledges only 907.
    let closed = InboundVerdict::Drop(DropReason::ClosedByRouter);
    assert_eq!(h.inbound(&tcp((C, 4012), (X, 80), ACK, 106, 907, b"GET /4")), closed);
    let out: Vec<_> = sent(&mut h).into_iter().map(|(t, i)| (t.kind, i.flags.fin(), i.seq, i.ack)).collect();
    assert_eq!(out, [(TransmitKind::Close, true, 907, 112)], "the FIN again, acknowledging the request");
    // Its acknowledgment of the FIN needs no answer.
    assert_eq!(h.inbound(&tcp((C, 4012), (X, 80), ACK, 112, 908, &[])), closed);
    assert!(sent(&mut h).is_empty());
}

#[test]
fn a_phantom_flow_seen_by_one_last_ack_is_closed_as_overdue_and_the_migration_finishes_early() {
    let options = MigrationOptions {
        ramp: Ramp::Steps { steps: vec![RampStep { pct: 100.0, hold: Duration::from_secs(1) }] },
        ..Default::default()
    };
    let mut h = Harness::new(RouterConfig::default(), options, Default::default());
    let start = h.now;
    let deadline = h.now + Duration::from_secs(86_400);
    h.router.set_deadline(X, Some(deadline)).unwrap();
    // The last ACK of a connection that closed as the router began to watch: never another
    // segment, so the router cannot tell it from an idle connection.
    h.inbound(&tcp((C, 4020), (X, 80), ACK, 5000, 7000, &[]));
    h.router.lease_bound(X, h.now).unwrap();
    // Short connections that open and close at once: the forecast expects a drain in moments.
    for port in 6000..6030 {
        h.inbound(&tcp((C, port), (X, 80), SYN, 100, 0, &[]));
        let owner =
            if h.router.entry(X).unwrap().traffic_split_percentage >= 100.0 { Side::Destination } else { Side::Source };
        h.from_vm(owner, &tcp((X, 80), (C, port), SYNACK, 900, 101, &[]));
        h.inbound(&tcp((C, port), (X, 80), FINACK, 101, 901, &[]));
        h.from_vm(owner, &tcp((X, 80), (C, port), FINACK, 901, 102, &[]));
        h.inbound(&tcp((C, port), (X, 80), ACK, 102, 902, &[]));
        h.advance(Duration::from_millis(500));
    }
    assert!(sent(&mut h).is_empty());
    let mut closed_at = None;
    for _ in 0..100 {
        h.advance(Duration::from_millis(250));
        if let Some((t, fin)) = sent(&mut h).into_iter().find(|(_, i)| i.dst_port == 4020) {
            assert_eq!((t.kind, fin.flags.fin(), fin.seq, fin.ack), (TransmitKind::Close, true, 7000, 5000));
            closed_at = Some(h.now);
            break;
        }
    }
    let closed_at = closed_at.expect("the phantom flow was closed");
    // Watched for 30 s (15 of them above), then all idle for at least 5 s past its forecast.
    assert!(closed_at - start >= Duration::from_secs(35), "{:?}", closed_at - start);
    // Its client is gone: its stack answers the FIN with a RST. The migration ends, drained.
    h.inbound(&tcp((C, 4020), (X, 80), F::RST, 5000, 0, &[]));
    h.advance(Duration::from_secs(1));
    let (r, at) = report(&mut h);
    assert_eq!((r.closed_gracefully, r.reset, r.cause), (1, 0, EndCause::Drained), "{r:?}");
    assert!(deadline - at > Duration::from_secs(86_000));
}

#[test]
fn a_fin_behind_what_the_client_received_is_sent_again_at_its_acknowledgment() {
    // An exchange the router has not seen (on its way through a fast path when the flow was
    // closed): the client has 6 more bytes of A's, A 5 more of the client's, than the FINs say.
    let mut h = harness(Duration::from_secs(60), false);
    open_on_a(&mut h, 4013);
    h.router.lease_bound(X, h.now).unwrap();
    h.advance(Duration::from_secs(50));
    h.advance(FIRST_SCAN);
    let fins: Vec<_> = sent(&mut h).into_iter().map(|(_, i)| (i.seq, i.ack)).collect();
    assert_eq!(fins, [(907, 106), (106, 907)], "FINs at what the router saw");
    // The client ignores the old FIN and acknowledges what it has: the FIN again, at 913.
    let closed = InboundVerdict::Drop(DropReason::ClosedByRouter);
    assert_eq!(h.inbound(&tcp((C, 4013), (X, 80), ACK, 111, 913, &[])), closed);
    let out: Vec<_> = sent(&mut h).into_iter().map(|(t, i)| (t.kind, t.vm, i.flags.fin(), i.seq, i.ack)).collect();
    assert_eq!(out, [(TransmitKind::Close, None, true, 913, 111)]);
    // Accepted now: its acknowledgment needs no answer; its own FIN is acknowledged.
    assert_eq!(h.inbound(&tcp((C, 4013), (X, 80), ACK, 111, 914, &[])), closed);
    assert!(sent(&mut h).is_empty());
    assert_eq!(h.inbound(&tcp((C, 4013), (X, 80), FINACK, 111, 914, &[])), closed);
    let out: Vec<_> = sent(&mut h).into_iter().map(|(t, i)| (t.kind, i.flags.fin(), i.seq, i.ack)).collect();
    assert_eq!(out, [(TransmitKind::Ack, false, 914, 112)]);
    // A ignored its FIN too (old): its acknowledgment of the client's 5 bytes gets the FIN again.
    let a_ack = tcp((X, 80), (C, 4013), ACK, 913, 111, &[]);
    assert_eq!(h.from_vm(Side::Source, &a_ack), EgressVerdict::Drop(DropReason::ClosedByRouter));
    let out: Vec<_> = sent(&mut h).into_iter().map(|(t, i)| (t.vm, i.flags.fin(), i.seq, i.ack)).collect();
    assert_eq!(out, [(Some(h.a), true, 111, 913)]);
    // A's FIN, acknowledging it: a plain ACK in the client's name.
    let a_fin = tcp((X, 80), (C, 4013), FINACK, 913, 112, &[]);
    assert_eq!(h.from_vm(Side::Source, &a_fin), EgressVerdict::Drop(DropReason::ClosedByRouter));
    let out: Vec<_> = sent(&mut h).into_iter().map(|(t, i)| (t.vm, i.flags.fin(), i.seq, i.ack)).collect();
    assert_eq!(out, [(Some(h.a), false, 112, 914)]);
    assert_eq!(h.router.counters().closes_behind, 2);
}

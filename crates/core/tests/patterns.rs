//! What the router measures for a shadowed address, with exact packets: A's flows known from the
//! moment the migration is requested, handshake and first-byte times per VM, idle flows, and
//! lifetimes that feed the drain forecast.

#![allow(clippy::unwrap_used)]

use core::time::Duration;
use std::net::Ipv4Addr;

use ipshadow_core::testkit::{Harness, X, tcp};
use ipshadow_core::wire::TcpFlags as F;
use ipshadow_core::{Deliver, EgressVerdict, InboundVerdict, MigrationOptions, RouterConfig, Side};

const SYN: u8 = F::SYN;
const SYNACK: u8 = F::SYN | F::ACK;
const ACK: u8 = F::ACK;
const FINACK: u8 = F::FIN | F::ACK;

fn client(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, n)
}

/// A full exchange on a new connection of `c` at split 0 (A): handshake, one request, one answer.
fn connect_and_exchange(h: &mut Harness, c: Ipv4Addr, rtt: Duration, think: Duration) {
    assert_eq!(h.inbound(&tcp((c, 4000), (X, 80), SYN, 100, 0, &[])), InboundVerdict::Deliver(Deliver::Source));
    h.advance(rtt);
    assert_eq!(h.from_vm(Side::Source, &tcp((X, 80), (c, 4000), SYNACK, 900, 101, &[])), EgressVerdict::Forward);
    h.inbound(&tcp((c, 4000), (X, 80), ACK, 101, 901, &[]));
    h.inbound(&tcp((c, 4000), (X, 80), ACK, 101, 901, b"GET /"));
    h.advance(think);
    h.from_vm(Side::Source, &tcp((X, 80), (c, 4000), ACK, 901, 106, b"200 OK"));
}

#[test]
fn flows_open_before_the_migration_are_known_on_a_before_the_ramp() {
    // Installed and not yet ramping (B's lease not bound): a mid-stream segment is A's.
    let mut h = Harness::new(RouterConfig::default(), MigrationOptions::default(), Default::default());
    let seg = tcp((client(1), 5000), (X, 22), ACK, 7, 9, b"ls\n");
    assert_eq!(h.inbound(&seg), InboundVerdict::Deliver(Deliver::Source), "not mirrored to B");
    let p = h.router.patterns(X, h.now).unwrap();
    assert_eq!((p.source.open, p.source.open_unknown_start, p.destination.open), (1, 1, 0));
    assert_eq!(h.router.entry(X).unwrap().counters.resets_suppressed, 0);
    // It stays A's when the ramp starts.
    h.router.lease_bound(X, h.now).unwrap();
    assert_eq!(h.inbound(&seg), InboundVerdict::Deliver(Deliver::Source));
}

#[test]
fn handshake_first_byte_idle_and_lifetime_are_measured() {
    let mut h = Harness::new(RouterConfig::default(), MigrationOptions::default(), Default::default());
    connect_and_exchange(&mut h, client(2), Duration::from_millis(3), Duration::from_millis(40));
    let p = h.router.patterns(X, h.now).unwrap();
    assert_eq!(p.arrivals, 1);
    let hs = p.source.handshake_ms;
    assert_eq!(hs.count, 1);
    assert!(hs.p50_ms.unwrap() >= 3.0 && hs.p50_ms.unwrap() < 4.0, "{hs:?}");
    let fb = p.source.first_byte_ms;
    assert_eq!(fb.count, 1);
    assert!((fb.p50_ms.unwrap() - 40.0).abs() < 5.0, "{fb:?}");
    assert_eq!((p.source.open, p.source.idle), (1, 0), "the answer is not acknowledged yet: busy");
    h.inbound(&tcp((client(2), 4000), (X, 80), ACK, 106, 907, &[]));
    assert_eq!(h.router.patterns(X, h.now).unwrap().source.idle, 1, "everything acknowledged: idle");
    // Closed after 10 s: one lifetime of 10 s, nothing open.
    h.advance(Duration::from_secs(10));
    h.inbound(&tcp((client(2), 4000), (X, 80), FINACK, 106, 907, &[]));
    h.from_vm(Side::Source, &tcp((X, 80), (client(2), 4000), FINACK, 907, 107, &[]));
    let p = h.router.patterns(X, h.now).unwrap();
    assert_eq!((p.source.open, p.source.idle), (0, 0));
    assert_eq!(p.lifetimes_ms.count, 1);
    assert!((p.lifetimes_ms.p50_ms.unwrap() / 10_043.0 - 1.0).abs() < 0.13, "{:?}", p.lifetimes_ms);
}

#[test]
fn an_idle_flow_that_expires_leaves_the_census_with_its_lifetime() {
    let config = RouterConfig { sweep_period: Duration::from_secs(1), max_flows: 1024, ..Default::default() };
    let mut h = Harness::new(config, MigrationOptions::default(), Default::default());
    connect_and_exchange(&mut h, client(3), Duration::from_millis(1), Duration::from_millis(1));
    assert_eq!(h.router.patterns(X, h.now).unwrap().source.open, 1);
    // Past the established timeout (2 h) with nothing sent: swept, counted ended at its last packet.
    for _ in 0..(3 * 3600) {
        h.advance(Duration::from_secs(1));
    }
    let p = h.router.patterns(X, h.now).unwrap();
    assert_eq!(p.source.open, 0);
    assert_eq!(p.lifetimes_ms.count, 1);
    assert!(p.lifetimes_ms.p50_ms.unwrap() < 100.0, "lifetime ends at the last packet: {:?}", p.lifetimes_ms);
}

#[test]
fn the_forecast_follows_the_measured_lifetimes() {
    let mut h = Harness::new(RouterConfig::default(), MigrationOptions::default(), Default::default());
    // 200 connections on A; one ends every 100 ms (lifetimes 0.1..20 s); forecast with 100 left.
    for n in 0..200u16 {
        let c = Ipv4Addr::new(203, 0, (n / 250) as u8, (n % 250) as u8 + 1);
        connect_and_exchange(&mut h, c, Duration::ZERO, Duration::ZERO);
    }
    for n in 0..100u16 {
        h.advance(Duration::from_millis(100));
        let c = Ipv4Addr::new(203, 0, (n / 250) as u8, (n % 250) as u8 + 1);
        h.inbound(&tcp((c, 4000), (X, 80), F::RST, 106, 0, &[]));
    }
    let f = h.router.forecast(X, h.now).unwrap();
    assert_eq!(f.open, 100);
    // Half ended within 10 s: the other half, lifetimes continuing at the same hazard, drains
    // well after that, but within minutes.
    let p50 = f.p50_ms.unwrap();
    assert!(p50 > 5_000.0 && p50 < 600_000.0, "{f:?}");
    assert!(f.p90_ms.unwrap() >= p50);
}

/// Application-aware health: B answering requests far slower than A on the same address is
/// trouble for the split (AIMD), and staying so recommends a rollback.
#[test]
fn a_slow_destination_slows_the_ramp_and_then_recommends_rolling_back() {
    use ipshadow_core::{CongestionControlParameters, Event, Ramp, RampStep, SplitReason};
    let params = CongestionControlParameters { rollback_after_intervals: 3, ..Default::default() };
    let options = MigrationOptions {
        ramp: Ramp::Steps { steps: vec![RampStep { pct: 50.0, hold: Duration::from_secs(3600) }] },
        ..Default::default()
    };
    let mut h = Harness::new(RouterConfig::default(), options, params);
    h.router.lease_bound(X, h.now).unwrap();
    let mut port = 1000u16;
    let mut slow_seen = false;
    for second in 0..8 {
        // Per second: new connections until 40 have been answered, each by its owner: A within
        // 2 ms, B after 400 ms.
        for _ in 0..40 {
            port += 1;
            let c = client(9);
            let InboundVerdict::Deliver(d) = h.inbound(&tcp((c, port), (X, 80), SYN, 1, 0, &[])) else { panic!() };
            let (side, delay) = match d {
                Deliver::Source => (Side::Source, Duration::from_millis(2)),
                _ => (Side::Destination, Duration::from_millis(400)),
            };
            h.from_vm(side, &tcp((X, 80), (c, port), SYNACK, 9, 2, &[]));
            h.inbound(&tcp((c, port), (X, 80), ACK, 2, 10, b"GET /"));
            h.now = h.now + delay;
            h.from_vm(side, &tcp((X, 80), (c, port), ACK, 10, 7, b"200 OK"));
            h.now = h.now - delay;
        }
        h.advance(Duration::from_secs(1));
        let events = h.events();
        slow_seen |= events.iter().any(|e| {
            matches!(e, Event::SplitChanged { change, .. } if change.reason == SplitReason::Decrease(ipshadow_core::Signal::SlowAnswer))
        });
        let canary = h.router.patterns(X, h.now).unwrap().canary;
        if second == 0 {
            assert!(canary.first_byte_limit_ms.is_some(), "A's median measured: {canary:?}");
        }
    }
    assert!(slow_seen, "B's slow answers decreased the split");
    let canary = h.router.patterns(X, h.now).unwrap().canary;
    assert!(canary.slow_answers > 10 && canary.rollback_recommended, "{canary:?}");
    assert!(h.router.entry(X).unwrap().traffic_split_percentage < 50.0);
}

/// A flow the router learns while it is closing (after a restart, the client's FIN mid-stream
/// and A's FIN in reply) is closed, not left open on A for hours, where it would hold back the
/// early finish.
#[test]
fn a_flow_learned_while_closing_is_not_counted_open() {
    let mut h = Harness::new(RouterConfig::default(), MigrationOptions::default(), Default::default());
    h.router.lease_bound(X, h.now).unwrap(); // ramping: unknown flows are learned
    let c = client(4);
    assert_eq!(h.inbound(&tcp((c, 6000), (X, 80), FINACK, 50, 70, &[])), InboundVerdict::Deliver(Deliver::Both));
    assert_eq!(h.from_vm(Side::Source, &tcp((X, 80), (c, 6000), FINACK, 70, 51, &[])), EgressVerdict::Forward);
    h.inbound(&tcp((c, 6000), (X, 80), ACK, 51, 71, &[]));
    let p = h.router.patterns(X, h.now).unwrap();
    assert_eq!(p.source.open, 0, "{:?}", p.source);
    assert_eq!(h.router.scan_open_flows(X).0, [0, 0]);
}

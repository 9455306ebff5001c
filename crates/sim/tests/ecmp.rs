//! Two routers behind ECMP (docs/ecmp.md): the same desired state on both, the clients' flows
//! hashed across them, the VMs' replies through the same router or another one.

#![allow(clippy::unwrap_used)]

use core::time::Duration;

use ipshadow_core::{Ramp, RampStep};
use ipshadow_sim::scenario::{Ecmp, Lifetime, ReplyPath, Report, ScenarioConfig, run};

/// The small scenario of `scenarios.rs` (10 clients, 100 long-lived connections of 10-40 s,
/// the migration at 10 s, steps of 5 s) with two routers.
fn small(replies: ReplyPath, skew_ms: u64) -> ScenarioConfig {
    let step = |pct| RampStep { pct, hold: Duration::from_secs(5) };
    ScenarioConfig {
        clients: 10,
        long_lived: 100,
        churn_per_sec: 10,
        udp_per_sec: 2,
        lifetime: Lifetime::Uniform { min_s: 10.0, max_s: 40.0 },
        duration: Duration::from_secs(60),
        workload_stop: Duration::from_secs(55),
        migration_start: Duration::from_secs(10),
        deadline: Duration::from_secs(40),
        ramp: Ramp::Steps { steps: vec![step(1.0), step(5.0), step(25.0), step(50.0), step(100.0)] },
        ecmp: Some(Ecmp { replies, skew: Duration::from_millis(skew_ms) }),
        ..ScenarioConfig::default()
    }
}

fn summary(r: &Report) -> String {
    format!(
        "total {} completed {} closed {} broken {} ({:?}) cut {} open {} state {} split {} conflicts {} resets held {}\n{}",
        r.connections_total,
        r.connections_completed,
        r.closed_gracefully,
        r.connections_broken,
        r.broken_by,
        r.cut_at_deadline,
        r.connections_open_at_end,
        r.migration_state,
        r.final_split_pct,
        r.conflicts_suppressed,
        r.resets_suppressed,
        r.human()
    )
}

/// The small scenario with long-lived connections idle for 40 s between exchanges (longer
/// than the 30 s a router keeps a flow it never saw answered) and lifetimes of 100-200 s.
fn idle(ecmp: Option<Ecmp>) -> ScenarioConfig {
    ScenarioConfig {
        interval: Duration::from_secs(40),
        lifetime: Lifetime::Uniform { min_s: 100.0, max_s: 200.0 },
        duration: Duration::from_secs(150),
        workload_stop: Duration::from_secs(140),
        deadline: Duration::from_secs(120),
        ecmp,
        ..small(ReplyPath::Symmetric, 0)
    }
}

/// With replies through the router that saw the request, each flow lives on one router: the
/// routers never disagree on an owner, nothing breaks, and the splits differ exactly for the
/// second router's delay after each of the ramp's five steps (the window docs/ecmp.md
/// quantifies), during which some new flows are decided by the router still on the old split.
#[test]
fn symmetric_routing_breaks_nothing_and_the_splits_differ_only_for_the_skew() {
    for skew_ms in [0, 20, 1000] {
        let r = run(&small(ReplyPath::Symmetric, skew_ms)).unwrap();
        let e = r.ecmp.as_ref().unwrap();
        println!("skew {skew_ms} ms: {}", summary(&r));
        assert!(r.connections_total > 500, "{}", summary(&r));
        assert_eq!((r.connections_broken, r.cut_at_deadline, r.udp.broken), (0, 0, 0), "{}", summary(&r));
        for v in &e.routers {
            assert!(v.inbound_frames > 1000 && v.egress_frames > 1000, "both routers forwarded: {e:?}");
        }
        assert_eq!((e.flows_on_both, e.owner_disagreements, e.flows_mirrored), (0, 0, 0), "{e:?}");
        assert!((e.split_differed_ms - 5.0 * skew_ms as f64).abs() < 1e-6, "{e:?}");
        assert_eq!(e.new_flows_while_split_differed > 0, skew_ms > 0, "{e:?}");
        assert_eq!(r.conflicts_suppressed, 0, "{}", summary(&r));
    }
}

/// Replies through another router with today's egress arbiter: the router that sees only a
/// flow's replies learns its owner from the first one, so busy connections survive; but the
/// router that sees only the requests never learns that anyone answered, so its closing window
/// closes nothing in order (the cut-over resets instead) and nothing breaks only because every
/// connection spoke within 30 s.
#[test]
fn asymmetric_replies_keep_busy_connections_but_not_the_closing_window() {
    let symmetric = run(&small(ReplyPath::Symmetric, 20)).unwrap();
    let crossed = run(&small(ReplyPath::Crossed, 20)).unwrap();
    println!("symmetric: {}\ncrossed: {}", summary(&symmetric), summary(&crossed));
    let e = crossed.ecmp.as_ref().unwrap();
    assert!(e.flows_on_both > 100, "the observer saw flows tracked by both routers: {e:?}");
    assert_eq!(e.owner_disagreements, 0, "{e:?}");
    assert_eq!(crossed.connections_broken, 0, "{}", summary(&crossed));
    let closed = |r: &Report| {
        r.ecmp.as_ref().unwrap().routers.iter().filter_map(|v| v.cut_over).map(|c| c.closed_gracefully).sum::<u64>()
    };
    assert!(closed(&symmetric) > 0, "{}", summary(&symmetric));
    assert_eq!(closed(&crossed), 0, "{}", summary(&crossed));
    assert!(crossed.cut_at_deadline > symmetric.cut_at_deadline, "{}", summary(&crossed));
}

/// Connections idle longer than the 30 s a router keeps a flow it never saw answered, with
/// replies through another router: the request-side router forgets the flow, finds it again
/// mid-stream, sends it to both VMs and never learns its owner (the reply crosses the other
/// router, which drops the non-owner's RSTs as conflicts and cuts its own split for them), and
/// thinks A has drained. Today's arbiter breaks such connections; one router, and two with
/// symmetric replies, break none.
#[test]
fn asymmetric_replies_break_idle_connections_with_todays_arbiter() {
    let one = run(&idle(None)).unwrap();
    let symmetric = run(&idle(Some(Ecmp { replies: ReplyPath::Symmetric, skew: Duration::from_millis(20) }))).unwrap();
    println!("one router: {}\nsymmetric: {}", summary(&one), summary(&symmetric));
    assert_eq!((one.connections_broken, symmetric.connections_broken), (0, 0));
    for replies in [ReplyPath::Single, ReplyPath::Crossed] {
        let r = run(&idle(Some(Ecmp { replies, skew: Duration::from_millis(20) }))).unwrap();
        println!("{replies:?}: {}", summary(&r));
        let e = r.ecmp.as_ref().unwrap();
        assert!(e.flows_mirrored > 0 && r.conflicts_suppressed > 0, "{e:?}");
        let [d0, d1] = [e.routers[0].split_decreases, e.routers[1].split_decreases];
        assert_ne!(d0, d1, "each router cut its own split on its own signals: {e:?}");
        assert!(e.split_differed_ms > 1000.0, "{e:?}");
        assert!(r.connections_broken > 0, "{}", summary(&r));
    }
}

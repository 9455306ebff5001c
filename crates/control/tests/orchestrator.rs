//! The manager's decisions from lease events, router reports, probes and time.

#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;

use ipshadow_contracts::dhcp::Role;
use ipshadow_contracts::dhcp::{LeaseEvent, LeaseEventKind};
use ipshadow_contracts::router::Status;
use ipshadow_contracts::router::{EndedMigration, ProbeStatus};
use ipshadow_control::migration::{Lifecycle, MigrationEvent as E, MigrationState};
use ipshadow_control::orchestrator::{Decision, Input, Limits, decide};
use ipshadow_control::reassign::Migration;
use ipshadow_core::{CongestionControlParameters, Instant, MigrationOptions, Outcome, ShadowingEntry};

const X: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const T0: u64 = 1_800_000_000_000;

fn migration(events: &[E]) -> Migration {
    let mut lifecycle = Lifecycle::new();
    for e in events {
        lifecycle.apply(e.clone(), T0 + 1).unwrap();
    }
    Migration {
        id: 3,
        ip: X,
        tenant: "acme".into(),
        source: "vm-a".into(),
        destination: "vm-b".into(),
        strategy: Default::default(),
        mode: Default::default(),
        affinity: Default::default(),
        ramp: Default::default(),
        deadline_ms: T0 + 600_000,
        deadline_source: ipshadow_control::reassign::DeadlineSource::Requested,
        plan: None,
        created_ms: T0,
        split_pct: 5.0,
        lifecycle,
        cut_over: None,
    }
}

fn lease(kind: LeaseEventKind, vm: &str, role: Option<Role>) -> LeaseEvent {
    LeaseEvent {
        kind,
        ip: X,
        client: "02:00:00:00:00:0b".into(),
        vm: Some(vm.into()),
        migration: role.map(|r| (3, r)),
        at: T0 / 1000,
    }
}

fn events(d: Vec<(u64, Decision)>) -> Vec<Decision> {
    d.into_iter()
        .map(|(id, d)| {
            assert_eq!(id, 3);
            d
        })
        .collect()
}

#[test]
fn lease_events_start_the_ramp_fail_on_decline_and_cut_over_when_a_lets_go() {
    let waiting = [migration(&[E::PlanWritten])];
    let limits = Limits::default();
    let bound_b = lease(LeaseEventKind::Bound, "vm-b", Some(Role::Destination));
    assert_eq!(
        events(decide(&waiting, &Input::Lease(&bound_b), T0, limits)),
        [Decision::Event(E::DestinationLeaseBound)]
    );
    // Without a router to ask, the bound lease itself makes B ready.
    let no_router = Limits { router_reports: false, ..limits };
    assert_eq!(
        events(decide(&waiting, &Input::Lease(&bound_b), T0, no_router)),
        [Decision::Event(E::DestinationLeaseBound), Decision::Event(E::DestinationReady)]
    );
    // A renewal after the bound lease is recorded adds nothing.
    let bound = [migration(&[E::PlanWritten, E::DestinationLeaseBound])];
    let renewed_b = lease(LeaseEventKind::Renewed, "vm-b", Some(Role::Destination));
    assert!(decide(&bound, &Input::Lease(&renewed_b), T0, limits).is_empty());
    let bound_a = lease(LeaseEventKind::Renewed, "vm-a", Some(Role::Source));
    assert!(decide(&waiting, &Input::Lease(&bound_a), T0, limits).is_empty());
    let declined = lease(LeaseEventKind::Declined, "vm-b", Some(Role::Destination));
    assert!(matches!(
        &events(decide(&waiting, &Input::Lease(&declined), T0, limits))[..],
        [Decision::Event(E::Fail { .. })]
    ));
    let ramping = [migration(&[E::PlanWritten, E::DestinationLeaseBound, E::DestinationReady])];
    let released = lease(LeaseEventKind::Released, "vm-a", Some(Role::Source));
    assert!(matches!(
        &events(decide(&ramping, &Input::Lease(&released), T0, limits))[..],
        [Decision::Event(E::CutOver { reason })] if reason.contains("vm-a")
    ));
    // Another address's events are not this migration's business.
    let mut other = released.clone();
    other.ip = Ipv4Addr::new(10, 0, 0, 11);
    assert!(decide(&ramping, &Input::Lease(&other), T0, limits).is_empty());
}

#[test]
fn time_fails_a_migration_without_a_lease_and_cuts_over_at_the_deadline() {
    let limits = Limits::default();
    let waiting = [migration(&[E::PlanWritten])];
    assert!(decide(&waiting, &Input::Tick, T0 + 60_000, limits).is_empty());
    assert!(matches!(
        &events(decide(&waiting, &Input::Tick, T0 + 1 + limits.lease_timeout_ms, limits))[..],
        [Decision::Event(E::Fail { reason })] if reason.contains("no bound lease for vm-b")
    ));
    let ramping = [migration(&[E::PlanWritten, E::DestinationLeaseBound, E::DestinationReady])];
    assert!(decide(&ramping, &Input::Tick, T0 + 599_999, limits).is_empty());
    assert_eq!(
        events(decide(&ramping, &Input::Tick, T0 + 600_000, limits)),
        [Decision::Event(E::CutOver { reason: "deadline".into() })]
    );
    let done = [migration(&[E::PlanWritten, E::Abort])];
    assert!(decide(&done, &Input::Tick, T0 + 10_000_000, limits).is_empty(), "final migrations are left alone");
}

fn status(split: f64, probes: [(u64, u64); 2], now_ms: u64) -> Status {
    let mut entry = ShadowingEntry::new(
        X,
        "vm-a".into(),
        "vm-b".into(),
        Instant::from_millis(T0),
        CongestionControlParameters::default(),
        MigrationOptions::default(),
    );
    entry.traffic_split_percentage = split;
    let probe = |vm: &str, ago: u64| ProbeStatus {
        vm: vm.into(),
        last_reply: Some(Instant::from_millis(now_ms - ago)),
        answered: [(X, Instant::from_millis(now_ms - ago))].into(),
    };
    Status {
        started: Instant::from_millis(T0),
        updated: Instant::from_millis(now_ms),
        entries: vec![entry],
        probes: vec![probe("vm-a", probes[0].0), probe("vm-b", probes[1].0)],
        ..Status::default()
    }
}

#[test]
fn router_reports_carry_the_split_the_end_and_the_health_of_both_vms() {
    let limits = Limits::default();
    let ramping = [migration(&[E::PlanWritten, E::DestinationLeaseBound, E::DestinationReady])];
    let now = T0 + 30_000;
    assert_eq!(
        events(decide(&ramping, &Input::Router(&status(25.0, [(100, 0); 2], now)), now, limits)),
        [Decision::Split(25.0)]
    );
    // B silent for 5 s: roll back. A silent: fast-forward.
    let b_dead = status(5.0, [(100, 0), (5_000, 0)], now);
    assert!(matches!(
        &events(decide(&ramping, &Input::Router(&b_dead), now, limits))[..],
        [Decision::Event(E::DestinationFailed { .. })]
    ));
    let a_dead = status(5.0, [(5_000, 0), (100, 0)], now);
    assert!(matches!(
        &events(decide(&ramping, &Input::Router(&a_dead), now, limits))[..],
        [Decision::Event(E::CutOver { .. })]
    ));
    // B that has not answered since its lease was bound is still coming up: it fails only after
    // the start-up window (the router has run for long, but probes B only since the entry came).
    let lease_bound_at = T0 + 1;
    let mut never = status(5.0, [(100, 0); 2], now);
    never.started = Instant::from_millis(T0 - 3_600_000);
    never.probes[1].last_reply = None;
    let window_end = lease_bound_at + limits.startup_timeout_ms;
    never.updated = Instant::from_millis(window_end);
    assert!(events(decide(&ramping, &Input::Router(&never), window_end, limits)).is_empty());
    never.updated = Instant::from_millis(window_end + 1);
    assert!(matches!(
        &events(decide(&ramping, &Input::Router(&never), window_end + 1, limits))[..],
        [Decision::Event(E::DestinationFailed { .. })]
    ));
    // A reply from before the lease was bound counts as none.
    never.probes[1].last_reply = Some(Instant::from_millis(T0 - 1));
    never.updated = Instant::from_millis(window_end);
    assert!(events(decide(&ramping, &Input::Router(&never), window_end, limits)).is_empty());
    // Silence is measured as of the report's time: a report that arrives late (its write held
    // up by an unreachable store member) does not make B silent for the seconds it spent on
    // the way; the same silence in a fresh report does.
    let late = status(5.0, [(100, 0), (1_000, 0)], now - 4_500);
    assert!(events(decide(&ramping, &Input::Router(&late), now, limits)).is_empty());
    let fresh = status(5.0, [(100, 0), (5_500, 0)], now);
    assert!(matches!(
        &events(decide(&ramping, &Input::Router(&fresh), now, limits))[..],
        [Decision::Event(E::DestinationFailed { .. })]
    ));
    // A router group's member that just became active: B's last answer it holds is from an
    // earlier term (10 s old); silence counts from its takeover, so B is still in its window.
    let mut taken_over = status(5.0, [(100, 0), (10_000, 0)], now);
    let member = |role| ipshadow_core::ha::GroupStatus {
        group: "edge".into(),
        name: "r2".into(),
        role,
        since: Instant::from_millis(now - 500),
        term: 9,
        active: Some("r2".into()),
        last_takeover: None,
        last_step_down: None,
        counters: Default::default(),
    };
    taken_over.ha = Some(member(ipshadow_core::ha::Role::Active));
    assert!(events(decide(&ramping, &Input::Router(&taken_over), now, limits)).is_empty());
    taken_over.ha = None;
    assert!(matches!(
        &events(decide(&ramping, &Input::Router(&taken_over), now, limits))[..],
        [Decision::Event(E::DestinationFailed { .. })]
    ));
    // The router cut over at the deadline by itself: the manager catches up in order.
    let mut ended = status(100.0, [(100, 0); 2], now);
    ended.entries.clear();
    ended.ended.push(EndedMigration {
        ip: X,
        outcome: Outcome::Completed,
        report: Default::default(),
        at: Instant::from_millis(now),
    });
    assert!(matches!(
        &events(decide(&ramping, &Input::Router(&ended), now, limits))[..],
        [Decision::Event(E::CutOver { reason }), Decision::RecordCutOver(r), Decision::Event(E::RouterCompleted)]
            if reason == "deadline" && r.at_ms == now
    ));
    let cut = [migration(&[
        E::PlanWritten,
        E::DestinationLeaseBound,
        E::DestinationReady,
        E::CutOver { reason: "x".into() },
    ])];
    assert!(matches!(
        &events(decide(&cut, &Input::Router(&ended), now, limits))[..],
        [Decision::RecordCutOver(_), Decision::Event(E::RouterCompleted)]
    ));
    // An early finish (A drained) before the deadline: `finished_early` with the time saved.
    ended.ended[0].report.cause = ipshadow_core::EndCause::Drained;
    assert!(matches!(
        &events(decide(&ramping, &Input::Router(&ended), now, limits))[..],
        [Decision::Event(E::FinishedEarly { early_by_ms, .. }), Decision::RecordCutOver(r), Decision::Event(E::RouterCompleted)]
            if *early_by_ms == 570_000 && r.early_by_ms == Some(570_000)
    ));
    // A manager behind the router (it never saw B ready) catches up with a plain cut-over.
    let waiting = [migration(&[E::PlanWritten, E::DestinationLeaseBound])];
    assert!(matches!(
        &events(decide(&waiting, &Input::Router(&ended), now, limits))[..],
        [Decision::Event(E::CutOver { reason }), Decision::RecordCutOver(_), Decision::Event(E::RouterCompleted)]
            if reason == "drained"
    ));
    assert_eq!(cut[0].lifecycle.state, MigrationState::CutOver);
}

#[test]
fn a_canary_that_recommends_rollback_rolls_the_migration_back() {
    let limits = Limits::default();
    let ramping = [migration(&[E::PlanWritten, E::DestinationLeaseBound, E::DestinationReady])];
    let now = T0 + 60_000;
    let mut troubled = status(5.0, [(100, 0); 2], now);
    let mut patterns = ipshadow_contracts::router::AddressPatterns { measured: Default::default(), forecast: None };
    patterns.measured.canary.slow_answers = 170;
    patterns.measured.canary.troubled_intervals = 29;
    patterns.measured.canary.first_byte_limit_ms = Some(62);
    troubled.patterns.insert(X, patterns.clone());
    // Trouble, but not yet for long enough: the ramp goes on (the router slows it).
    assert!(events(decide(&ramping, &Input::Router(&troubled), now, limits)).is_empty());
    patterns.measured.canary.troubled_intervals = 30;
    patterns.measured.canary.rollback_recommended = true;
    troubled.patterns.insert(X, patterns.clone());
    let decided = events(decide(&ramping, &Input::Router(&troubled), now, limits));
    let [Decision::Event(E::DestinationFailed { reason })] = &decided[..] else { panic!("{decided:?}") };
    assert!(
        reason.contains("30 intervals") && reason.contains("170 slow answers") && reason.contains("62 ms"),
        "{reason}"
    );
    // A recommendation left from an earlier migration of the address (no entry of this one)
    // is not this migration's.
    troubled.entries[0].migration_start_time = Instant::from_millis(T0 - 1);
    assert!(events(decide(&ramping, &Input::Router(&troubled), now, limits)).is_empty());
}

#[test]
fn b_takes_flows_once_it_answers_for_x_after_its_lease_was_bound_or_the_migration_fails() {
    let limits = Limits::default();
    // Bound at T0 + 1 (the helper applies every event then); still waiting.
    let bound = [migration(&[E::PlanWritten, E::DestinationLeaseBound])];
    assert_eq!(bound[0].lifecycle.state, MigrationState::WaitingForDestinationLease);
    let now = T0 + 5_000;
    let mut report = status(5.0, [(100, 100); 2], now);
    // B answers for another address only (or not at all): not ready.
    report.probes[1].answered = [(Ipv4Addr::new(10, 0, 0, 99), Instant::from_millis(now - 100))].into();
    assert!(events(decide(&bound, &Input::Router(&report), now, limits)).is_empty());
    // An answer for X from before the lease was bound (an earlier holder): not ready.
    report.probes[1].answered = [(X, Instant::from_millis(T0))].into();
    assert!(events(decide(&bound, &Input::Router(&report), now, limits)).is_empty());
    // A's answers for X never make B ready.
    report.probes[0].answered = [(X, Instant::from_millis(now - 100))].into();
    assert!(events(decide(&bound, &Input::Router(&report), now, limits)).is_empty());
    // B answers for X after its lease was bound: the ramp starts.
    report.probes[1].answered = [(X, Instant::from_millis(T0 + 1))].into();
    assert_eq!(events(decide(&bound, &Input::Router(&report), now, limits)), [Decision::Event(E::DestinationReady)]);
    // Without an answer, the start-up window after the bound lease ends it cleanly.
    let window_end = T0 + 1 + limits.startup_timeout_ms;
    assert!(decide(&bound, &Input::Tick, window_end - 1, limits).is_empty());
    assert!(matches!(
        &events(decide(&bound, &Input::Tick, window_end, limits))[..],
        [Decision::Event(E::Fail { reason })] if reason == "vm-b holds a lease on 10.0.0.10 but did not answer ARP for it within 30 s"
    ));
    // The lease timeout no longer applies once the lease is bound.
    let late = T0 + 1 + limits.lease_timeout_ms;
    assert!(matches!(
        &events(decide(&bound, &Input::Tick, late, limits))[..],
        [Decision::Event(E::Fail { reason })] if reason.contains("did not answer ARP")
    ));
    // Not before B's lease is bound: that has its own timeout.
    let waiting = [migration(&[E::PlanWritten])];
    assert!(events(decide(&waiting, &Input::Router(&report), now, limits)).is_empty());
    assert!(decide(&waiting, &Input::Tick, window_end, limits).is_empty());
}

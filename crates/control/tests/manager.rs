//! The manager over a real store file: a migration from the reassign call to the address on B,
//! driven by the inputs the DHCP server and the router would give, with the manager replaced by
//! a fresh one (a restart) mid-ramp: it carries on at the recorded split and deadline.

#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;

use ipshadow_contracts::dhcp::PlanState;
use ipshadow_contracts::dhcp::Role;
use ipshadow_contracts::dhcp::{LeaseEvent, LeaseEventKind};
use ipshadow_contracts::router::Status;
use ipshadow_contracts::router::{AddressPatterns, EndedMigration, ProbeStatus};
use ipshadow_control::RedbStore;
use ipshadow_control::extend::EXTENSION_INTERVAL_MS;
use ipshadow_control::inventory::{Inventory, Vm};
use ipshadow_control::manager::Manager;
use ipshadow_control::migration::{MigrationEvent, MigrationState};
use ipshadow_control::orchestrator::{Input, Limits};
use ipshadow_control::reassign::{DeadlinePolicy, DeadlineSource, ReassignRequest, Reassigned};
use ipshadow_core::patterns::{DrainForecast, PatternsReport, Tail};
use ipshadow_core::{
    CongestionControlParameters, CutOverReport, EndCause, EntryState, Instant, MigrationOptions, Outcome,
    ShadowingEntry,
};

const X: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const T0: u64 = 1_800_000_000_000;

fn manager(path: &std::path::Path) -> Manager<RedbStore> {
    Manager::new(Inventory::new(RedbStore::open(path).unwrap()), Limits::default())
}

fn report(split: f64, start_ms: u64, now_ms: u64) -> Status {
    let mut entry = ShadowingEntry::new(
        X,
        "vm-a".into(),
        "vm-b".into(),
        Instant::from_millis(start_ms),
        CongestionControlParameters::default(),
        MigrationOptions::default(),
    );
    entry.traffic_split_percentage = split;
    entry.state = EntryState::Ramping;
    Status { updated: Instant::from_millis(now_ms), entries: vec![entry], ..Status::default() }
}

#[test]
fn a_migration_from_the_call_to_the_cut_over_survives_a_manager_restart() {
    let dir = tempfile::Builder::new().prefix("ipshadow-manager-").tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let first = manager(&path);
    let inv = first.inventory();
    for (id, mac) in [("vm-a", "02:00:00:00:00:0a"), ("vm-b", "02:00:00:00:00:0b")] {
        inv.add_vm(&Vm { id: id.into(), tenant: "acme".into(), mac: mac.into(), segment: id.into() }).unwrap();
    }
    inv.add_address("acme", X, Some("vm-a")).unwrap();
    let request = ReassignRequest {
        to: "vm-b".into(),
        migrate: true,
        ramp: None,
        affinity: None,
        mode: None,
        strategy: None,
        deadline_ms: Some(T0 + 300_000),
        dry_run: false,
    };
    let Reassigned::Migrating(m) =
        inv.reassign(Some("acme"), X, &request, T0, None, DeadlinePolicy::default()).unwrap()
    else {
        panic!()
    };

    // The plan and the entry go out; the router waits for B's lease.
    assert_eq!(first.start_pending(T0 + 1).unwrap()[0].state, MigrationState::WaitingForDestinationLease);
    let (desired, plans) = first.desired(T0 + 1).unwrap();
    assert_eq!(desired.entries[0].entry.state, EntryState::WaitingForLease);
    assert_eq!(desired.addresses[&X].0, "vm-a");
    assert_eq!(
        (plans[0].id, plans[0].state.clone(), plans[0].deadline),
        (m.id, PlanState::Active, (T0 + 300_000) / 1000)
    );

    // B binds X, then answers the router's probe for it: the ramp starts; the router reports 25 %.
    let bound = LeaseEvent {
        kind: LeaseEventKind::Bound,
        ip: X,
        client: "02:00:00:00:00:0b".into(),
        vm: Some("vm-b".into()),
        migration: Some((m.id, Role::Destination)),
        at: T0 / 1000 + 5,
    };
    assert_eq!(
        first.handle(&Input::Lease(&bound), T0 + 5_000).unwrap()[0].state,
        MigrationState::WaitingForDestinationLease
    );
    let mut answered = report(0.0, m.created_ms, T0 + 7_000);
    answered.entries[0].state = EntryState::WaitingForLease;
    answered.probes.push(ProbeStatus {
        vm: "vm-b".into(),
        last_reply: Some(Instant::from_millis(T0 + 6_500)),
        answered: [(X, Instant::from_millis(T0 + 6_500))].into(),
    });
    let applied = first.handle(&Input::Router(&answered), T0 + 7_000).unwrap();
    assert_eq!(applied.last().unwrap().state, MigrationState::Ramping);
    first.handle(&Input::Router(&report(25.0, m.created_ms, T0 + 40_000)), T0 + 40_000).unwrap();
    drop(first);

    // A new manager on the same store: the router it projects resumes at 25 % and the deadline.
    let second = manager(&path);
    let (desired, _) = second.desired(T0 + 41_000).unwrap();
    let entry = &desired.entries[0];
    assert!(entry.lease_bound);
    assert_eq!((entry.entry.state, entry.entry.traffic_split_percentage), (EntryState::Ramping, 25.0));
    assert_eq!(entry.entry.options.deadline, Some(Instant::from_millis(T0 + 300_000)));
    // A repeated report changes nothing; the deadline passes; the router reports the cut-over.
    assert!(second.handle(&Input::Router(&report(25.0, m.created_ms, T0 + 42_000)), T0 + 42_000).unwrap().is_empty());
    assert_eq!(second.handle(&Input::Tick, T0 + 300_000).unwrap()[0].state, MigrationState::CutOver);
    let (desired, _) = second.desired(T0 + 300_001).unwrap();
    assert!(desired.entries[0].cut_over, "the router is told to cut over");
    let mut ended = Status::default();
    ended.ended.push(EndedMigration {
        ip: X,
        outcome: Outcome::Completed,
        report: Default::default(),
        at: Instant::from_millis(T0 + 300_002),
    });
    let applied = second.handle(&Input::Router(&ended), T0 + 300_003).unwrap();
    assert_eq!(applied.last().unwrap().state, MigrationState::Completed);
    // A second report of the same end is harmless.
    assert!(second.handle(&Input::Router(&ended), T0 + 300_004).unwrap().is_empty());

    let (desired, plans) = second.desired(T0 + 300_005).unwrap();
    assert!(desired.entries.is_empty());
    assert_eq!(desired.addresses[&X].0, "vm-b");
    assert_eq!(plans[0].state, PlanState::Completed);
    let history: Vec<_> = second.migrations().unwrap()[0].lifecycle.history.iter().map(|h| h.to).collect();
    use MigrationState as S;
    assert_eq!(
        history,
        [S::WaitingForDestinationLease, S::WaitingForDestinationLease, S::Ramping, S::CutOver, S::Completed]
    );
}

/// A migration of X with its deadline 300 s after T0, ramping (B bound and answered) under
/// `limits`, and its id.
fn ramping(path: &std::path::Path, limits: Limits) -> (Manager<RedbStore>, u64) {
    let manager = Manager::new(Inventory::new(RedbStore::open(path).unwrap()), limits);
    let inv = manager.inventory();
    for (id, mac) in [("vm-a", "02:00:00:00:00:0a"), ("vm-b", "02:00:00:00:00:0b")] {
        inv.add_vm(&Vm { id: id.into(), tenant: "acme".into(), mac: mac.into(), segment: id.into() }).unwrap();
    }
    inv.add_address("acme", X, Some("vm-a")).unwrap();
    let request = ReassignRequest {
        to: "vm-b".into(),
        migrate: true,
        ramp: None,
        affinity: None,
        mode: None,
        strategy: None,
        deadline_ms: Some(T0 + 300_000),
        dry_run: false,
    };
    let Reassigned::Migrating(m) = inv.reassign(Some("acme"), X, &request, T0, None, limits.policy).unwrap() else {
        panic!()
    };
    manager.start_pending(T0 + 1).unwrap();
    let bound = LeaseEvent {
        kind: LeaseEventKind::Bound,
        ip: X,
        client: "02:00:00:00:00:0b".into(),
        vm: Some("vm-b".into()),
        migration: Some((m.id, Role::Destination)),
        at: T0 / 1000 + 5,
    };
    manager.handle(&Input::Lease(&bound), T0 + 5_000).unwrap();
    let mut answered = report(0.0, m.created_ms, T0 + 7_000);
    answered.probes.push(ProbeStatus {
        vm: "vm-b".into(),
        last_reply: Some(Instant::from_millis(T0 + 6_500)),
        answered: [(X, Instant::from_millis(T0 + 6_500))].into(),
    });
    manager.handle(&Input::Router(&answered), T0 + 7_000).unwrap();
    assert_eq!(manager.inventory().migration(None, m.id).unwrap().lifecycle.state, MigrationState::Ramping);
    (manager, m.id)
}

/// A router report at `now_ms` at 100 % with A's drain forecast: p90 in `p90_s` seconds.
fn forecasting(start_ms: u64, now_ms: u64, p90_s: Option<f64>) -> Status {
    let mut status = report(100.0, start_ms, now_ms);
    status.patterns.insert(
        X,
        AddressPatterns {
            measured: PatternsReport::default(),
            forecast: Some(DrainForecast {
                open: 12,
                p50_ms: p90_s.map(|s| s * 500.0),
                p90_ms: p90_s.map(|s| s * 1000.0),
                expected_open_at_deadline: Some(8.0),
                horizon_ms: 60_000.0,
                tail: Tail::Exponential { rate_per_s: 0.01 },
                observations: 300,
            }),
        },
    );
    status
}

/// Issue 12: the manager moves A's lease end later for A's forecast drain, within the policy,
/// recorded with its source and reason; the DHCP plan and the router follow; never shortened,
/// never twice within the interval, never for a drain nobody can foresee.
#[test]
fn a_forecast_drain_past_the_closing_window_extends_a_s_lease_within_the_policy() {
    let dir = tempfile::Builder::new().prefix("ipshadow-manager-").tempdir().unwrap();
    let policy = DeadlinePolicy { max_extension_ms: 600_000, ..DeadlinePolicy::default() };
    let (manager, id) = ramping(&dir.path().join("store.redb"), Limits { policy, ..Limits::default() });
    let created = manager.inventory().migration(None, id).unwrap().created_ms;
    // Keep-alive connections that never ended: no p90, nothing to gain from a later deadline.
    let now = T0 + 100_000;
    manager.handle(&Input::Router(&forecasting(created, now, None)), now).unwrap();
    assert_eq!(manager.inventory().migration(None, id).unwrap().deadline_ms, T0 + 300_000);
    // A drain of 250 s (p90) ends past the closing window (deadline - 10 s, 190 s away).
    manager.handle(&Input::Router(&forecasting(created, now, Some(250.0))), now).unwrap();
    let m = manager.inventory().migration(None, id).unwrap();
    // now + 250 s + 10 s closing window + 31.25 s margin (an eighth of p90), to the second.
    let extended = T0 + 100_000 + 250_000 + 10_000 + 32_000;
    assert_eq!((m.deadline_ms, m.deadline_source), (extended, DeadlineSource::DrainForecast));
    assert_eq!(m.lifecycle.state, MigrationState::Ramping, "the state does not change");
    let last = m.lifecycle.history.last().unwrap();
    assert!(
        matches!(&last.event, MigrationEvent::DeadlineExtended { from_ms, to_ms, reason }
            if *from_ms == T0 + 300_000 && *to_ms == extended && reason.contains("12 open flows on vm-a")),
        "{last:?}"
    );
    assert_eq!(m.plan.as_ref().map(|p| p.deadline_ms), Some(T0 + 300_000), "the plan as it was made");
    // The DHCP server's plan and the router's entry follow.
    let (desired, plans) = manager.desired(now).unwrap();
    assert_eq!(desired.entries[0].entry.options.deadline, Some(Instant::from_millis(extended)));
    assert_eq!(plans[0].deadline, extended / 1000);
    // A larger forecast soon after: not within the interval.
    let soon = now + EXTENSION_INTERVAL_MS - 1;
    manager.handle(&Input::Router(&forecasting(created, soon, Some(2_000.0))), soon).unwrap();
    assert_eq!(manager.inventory().migration(None, id).unwrap().deadline_ms, extended);
    // After it: extended again, capped at the original deadline + max_extension (600 s).
    let later = now + EXTENSION_INTERVAL_MS;
    manager.handle(&Input::Router(&forecasting(created, later, Some(2_000.0))), later).unwrap();
    let m = manager.inventory().migration(None, id).unwrap();
    assert_eq!(m.deadline_ms, T0 + 300_000 + 600_000);
    assert!(m.lifecycle.history.last().is_some_and(|h| matches!(&h.event,
        MigrationEvent::DeadlineExtended { reason, .. } if reason.contains("capped at max_extension"))));
    // A smaller forecast much later never shortens it.
    let much_later = later + 10 * EXTENSION_INTERVAL_MS;
    manager.handle(&Input::Router(&forecasting(created, much_later, Some(5.0))), much_later).unwrap();
    let m = manager.inventory().migration(None, id).unwrap();
    assert_eq!((m.deadline_ms, m.lifecycle.extensions().count()), (T0 + 900_000, 2));
    // The manager's deadline tick follows the extended deadline: no cut-over at the old one.
    assert!(manager.handle(&Input::Tick, T0 + 300_000).unwrap().is_empty());
}

/// Issue 12: the router finishes early (A drained at 100 %): the migration completes with the
/// time saved in its history, the cut-over report in its document, and A's lease ends then.
#[test]
fn an_early_finish_records_the_time_saved_and_ends_a_s_lease() {
    let dir = tempfile::Builder::new().prefix("ipshadow-manager-").tempdir().unwrap();
    let (manager, id) = ramping(&dir.path().join("store.redb"), Limits::default());
    let end = T0 + 120_000;
    let mut ended = Status::default();
    ended.ended.push(EndedMigration {
        ip: X,
        outcome: Outcome::Completed,
        report: CutOverReport {
            flows_open_on_losing_side: 3,
            handed_over: 0,
            closed_gracefully: 3,
            reset: 0,
            cause: EndCause::Drained,
        },
        at: Instant::from_millis(end),
    });
    let applied = manager.handle(&Input::Router(&ended), end + 1).unwrap();
    assert_eq!(applied.last().unwrap().state, MigrationState::Completed);
    let m = manager.inventory().migration(None, id).unwrap();
    let events: Vec<_> = m.lifecycle.history.iter().map(|h| h.event.name()).collect();
    assert_eq!(events[events.len() - 2..], ["finished_early", "router_completed"]);
    let early = m.lifecycle.history.iter().find_map(|h| match &h.event {
        MigrationEvent::FinishedEarly { early_by_ms, .. } => Some(*early_by_ms),
        _ => None,
    });
    assert_eq!(early, Some(180_000), "deadline (T0 + 300 s) minus the end (T0 + 120 s)");
    let record = m.cut_over.expect("the cut-over report");
    assert_eq!(
        (record.cause, record.early_by_ms, record.closed_gracefully, record.reset, record.at_ms),
        (ipshadow_control::migration::EndCause::Drained, Some(180_000), 3, 0, end)
    );
    // A's lease plan is completed with its end moved to the early end: A's renewal is refused.
    let (desired, plans) = manager.desired(end + 2).unwrap();
    assert!(desired.entries.is_empty());
    assert_eq!(desired.addresses[&X].0, "vm-b");
    assert_eq!((plans[0].state.clone(), plans[0].deadline), (PlanState::Completed, end / 1000));
    // The same report again changes nothing.
    assert!(manager.handle(&Input::Router(&ended), end + 3).unwrap().is_empty());
}

/// Issue 13: a record written behind the API's back that does not even read back is left out of
/// what the parts are given (and named), instead of leaving them with nothing.
#[test]
fn an_unreadable_record_is_skipped_by_the_projection() {
    let dir = tempfile::tempdir().unwrap();
    let manager = manager(&dir.path().join("store.redb"));
    let inv = manager.inventory();
    inv.add_vm(&Vm { id: "vm-a".into(), tenant: "acme".into(), mac: "02:00:00:00:00:0a".into(), segment: "a".into() })
        .unwrap();
    inv.add_address("acme", Ipv4Addr::new(10, 0, 0, 10), Some("vm-a")).unwrap();
    let txn = ipshadow_control::Txn::new()
        .put("/v1/vms/broken", b"{not json".to_vec())
        .put("/v1/addresses/10.0.0.99", b"[]".to_vec());
    ipshadow_control::Store::txn(inv.store(), txn).unwrap();
    let p = manager.projection(0).unwrap();
    assert_eq!(p.reservations.len(), 1);
    assert_eq!((p.reservations[0].vm.as_str(), p.reservations[0].ip), ("vm-a", Some(Ipv4Addr::new(10, 0, 0, 10))));
    assert_eq!(p.unreadable.len(), 2, "{:?}", p.unreadable);
    assert!(p.unreadable[0].contains("/v1/vms/broken"), "{:?}", p.unreadable);
    assert!(p.unreadable[1].contains("/v1/addresses/10.0.0.99"), "{:?}", p.unreadable);
    assert_eq!(manager.dhcp().unwrap().0, p.reservations);
}

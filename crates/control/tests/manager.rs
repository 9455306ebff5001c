//! The manager over a real store file: a migration from the reassign call to the address on B,
//! driven by the inputs the DHCP server and the router would give, with the manager replaced by
//! a fresh one (a restart) mid-ramp: it carries on at the recorded split and deadline.

#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;

use ipshadow_control::RedbStore;
use ipshadow_control::inventory::{Inventory, Vm};
use ipshadow_control::manager::Manager;
use ipshadow_control::migration::MigrationState;
use ipshadow_control::orchestrator::{Input, Limits};
use ipshadow_control::reassign::{DeadlinePolicy, ReassignRequest, Reassigned};
use ipshadow_core::{CongestionControlParameters, EntryState, Instant, MigrationOptions, Outcome, ShadowingEntry};
use ipshadow_dataplane::Status;
use ipshadow_dataplane::status::{EndedMigration, ProbeStatus};
use ipshadow_dhcp::Role;
use ipshadow_dhcp::plan::PlanState;
use ipshadow_dhcp::server::{LeaseEvent, LeaseEventKind};

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

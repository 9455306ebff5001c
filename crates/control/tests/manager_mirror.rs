//! The manager fed by its caller's watch of the store ([`Manager::reset`], [`Manager::observe`]):
//! it decides from its mirror, sees its own writes at once, hears of other writers' changes
//! through the watch, and a decision made on a stale mirror changes nothing wrong.

#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::time::Duration;

use ipshadow_contracts::dhcp::PlanState;
use ipshadow_control::inventory::{Inventory, Vm};
use ipshadow_control::manager::Manager;
use ipshadow_control::migration::{MigrationEvent, MigrationState};
use ipshadow_control::mirror::{Changed, Taken};
use ipshadow_control::orchestrator::{Input, Limits};
use ipshadow_control::reassign::{DeadlinePolicy, ReassignRequest, Reassigned};
use ipshadow_control::{RedbStore, Store, Watcher};
use ipshadow_core::EntryState;

const X: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const T0: u64 = 1_800_000_000_000;

fn vm(id: &str, mac: &str) -> Vm {
    Vm { id: id.into(), tenant: "acme".into(), mac: mac.into(), segment: id.into() }
}

/// Every change the watch delivered so far, passed to the manager; how many.
fn feed(manager: &Manager<RedbStore>, watcher: &Watcher) -> usize {
    let mut n = 0;
    while let Some(event) = watcher.next_timeout(Duration::from_millis(50)) {
        manager.observe(&event).unwrap();
        n += 1;
    }
    n
}

#[test]
fn a_manager_fed_by_its_callers_watch_decides_from_its_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("store.redb")).unwrap();
    let inv = Inventory::new(store.clone());
    inv.add_vm(&vm("vm-a", "02:00:00:00:00:0a")).unwrap();
    inv.add_vm(&vm("vm-b", "02:00:00:00:00:0b")).unwrap();
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

    // At the start: a snapshot, and a watch from its revision.
    let manager = Manager::new(Inventory::new(store.clone()), Limits::default());
    let (kvs, revision) = store.range("/").unwrap();
    manager.reset(&kvs, revision);
    assert_eq!(manager.revision(), revision);
    let watcher = store.watch("/", revision).unwrap();

    // Its own write is in its mirror at once, before the watch brings it.
    let started = manager.start_pending(T0 + 1).unwrap();
    assert_eq!(started[0].state, MigrationState::WaitingForDestinationLease);
    let (desired, plans) = manager.desired(T0 + 1).unwrap();
    assert_eq!((plans[0].id, plans[0].state.clone()), (m.id, PlanState::Active));
    assert_eq!(desired.entries[0].entry.state, EntryState::WaitingForLease);
    assert!(feed(&manager, &watcher) > 0, "the watch delivers the manager's own write too");
    assert_eq!(manager.desired(T0 + 1).unwrap(), (desired, plans), "and it changes nothing");

    // Another writer's change reaches it through the watch, not before.
    inv.add_vm(&vm("vm-c", "02:00:00:00:00:0c")).unwrap();
    assert_eq!(manager.dhcp().unwrap().0.len(), 2, "not observed yet");
    assert!(feed(&manager, &watcher) > 0);
    let reservations = manager.dhcp().unwrap().0;
    assert_eq!(reservations.iter().map(|r| r.vm.as_str()).collect::<Vec<_>>(), ["vm-a", "vm-b", "vm-c"]);

    // Decided on a stale mirror (the user aborted, unobserved): the write finds the record
    // changed, nothing wrong is written, and the mirror has the record read back.
    inv.advance(m.id, MigrationEvent::Abort, T0 + 10_000).unwrap();
    assert!(manager.handle(&Input::Tick, T0 + 300_000).unwrap().is_empty(), "no cut-over of an aborted migration");
    let stored = inv.migration(None, m.id).unwrap();
    assert_eq!(stored.lifecycle.state, MigrationState::Aborted);
    let (desired, plans) = manager.desired(T0 + 11_000).unwrap();
    assert_eq!(desired.entries[0].entry.state, EntryState::RollingBack);
    assert_eq!(plans[0].state, PlanState::RolledBack);
    assert_eq!(desired.addresses[&X].0, "vm-a");

    // A compaction (or a new connection): the caller lists again and resets; the same picture.
    feed(&manager, &watcher);
    let before = manager.projection(T0 + 11_000).unwrap();
    let (kvs, revision) = store.range("/").unwrap();
    manager.reset(&kvs, revision);
    assert_eq!(manager.projection(T0 + 11_000).unwrap(), before);
    // The entry drains for B's shadow lease, then leaves the router by itself.
    let leaves = manager.next_router_change(T0 + 11_000).unwrap().unwrap();
    assert!(manager.projection(leaves).unwrap().router.entries.is_empty());
    assert_eq!(manager.projection(leaves - 1).unwrap().router.entries.len(), 1);

    // Handed only what changed: everything first, then nothing, then the router's part alone
    // when the entry has drained.
    let mut taken = Taken::default();
    let first = manager.changed(T0 + 11_000, &mut taken).unwrap();
    assert_eq!(first.router.unwrap(), before.router);
    assert_eq!(first.dhcp.unwrap(), (before.reservations, before.plans));
    assert_eq!(manager.changed(T0 + 12_000, &mut taken).unwrap(), Changed::default());
    let drained = manager.changed(leaves, &mut taken).unwrap();
    assert!(drained.router.unwrap().entries.is_empty());
    assert_eq!(drained.dhcp, None);
}

#[test]
fn a_manager_never_fed_follows_the_store_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open_keeping(&dir.path().join("store.redb"), 4).unwrap();
    let manager = Manager::new(Inventory::new(store.clone()), Limits::default());
    let inv = manager.inventory();
    assert!(manager.dhcp().unwrap().0.is_empty());
    inv.add_vm(&vm("vm-a", "02:00:00:00:00:0a")).unwrap();
    assert_eq!(manager.dhcp().unwrap().0.len(), 1, "a write of another is seen by the next call");
    // Many changes between two calls: each decoded once, all seen.
    for i in 0..10u8 {
        inv.add_vm(&vm(&format!("vm-{i}"), &format!("02:00:00:00:01:{i:02x}"))).unwrap();
    }
    assert_eq!(manager.dhcp().unwrap().0.len(), 11);
    assert_eq!(manager.revision(), store.range("/").unwrap().1);
    // A change heard elsewhere: the manager waits for its mirror to have it, and says when it
    // did not come within the wait.
    let now = store.range("/").unwrap().1;
    assert!(manager.catch_up(now, Duration::from_millis(50)).unwrap());
    let started = std::time::Instant::now();
    assert!(!manager.catch_up(now + 100, Duration::from_millis(50)).unwrap());
    assert!(started.elapsed() >= Duration::from_millis(50), "it waited");
    // Fed by its caller, it has nothing to wait for.
    manager.reset(&store.range("/").unwrap().0, now);
    assert!(manager.catch_up(now + 100, Duration::from_millis(50)).unwrap());
}

#[test]
fn a_caller_taking_over_loses_nothing_its_own_watch_had_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("store.redb")).unwrap();
    let manager = Manager::new(Inventory::new(store.clone()), Limits::default());
    let inv = manager.inventory();
    assert!(manager.dhcp().unwrap().0.is_empty(), "listed; following the store by itself");
    inv.add_vm(&vm("vm-x", "02:00:00:00:00:0c")).unwrap();
    // The caller's watch starts after that change: it will never deliver it.
    let (_, revision) = store.range("/").unwrap();
    let watcher = store.watch("/", revision).unwrap();
    inv.add_vm(&vm("vm-y", "02:00:00:00:00:0d")).unwrap();
    assert!(feed(&manager, &watcher) > 0);
    let vms: Vec<String> = manager.dhcp().unwrap().0.into_iter().map(|r| r.vm).collect();
    assert_eq!(vms, ["vm-x", "vm-y"]);
    // From now on only the caller's watch feeds it.
    inv.add_vm(&vm("vm-z", "02:00:00:00:00:0e")).unwrap();
    assert_eq!(manager.dhcp().unwrap().0.len(), 2);
    feed(&manager, &watcher);
    assert_eq!(manager.dhcp().unwrap().0.len(), 3);
}

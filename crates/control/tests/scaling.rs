//! The manager's work per store change against the store's history (issue 14 item 5): 10,000
//! VMs each holding an address, one migration ramping, and 10, 1,000 or 10,000 ended ones, in a
//! redb file. Each step is what `serve` does for a router report: decide on it (the split it
//! reports is written), project the store for the router and the DHCP server, start pending
//! migrations. Before: the manager as it was, reading and decoding every VM, address and
//! migration for each of those (rebuilt here from the same public functions it called). After:
//! the manager fed by a watch (`Manager::observe`), deciding and projecting from its mirror.
//! Ignored by default (it is a measurement); run by `bench/manager-scaling.sh`, which prints the
//! `RESULT` lines.

#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant as Clock};

use ipshadow_contracts::router::Status;
use ipshadow_control::inventory::{Address, Inventory, Vm, address_key, vm_key};
use ipshadow_control::manager::Manager;
use ipshadow_control::migration::{Lifecycle, MigrationEvent, MigrationState};
use ipshadow_control::mirror::Taken;
use ipshadow_control::orchestrator::{Decision, Input, Limits, decide};
use ipshadow_control::plan::{PlanInput, plan};
use ipshadow_control::project::{dhcp_plans, dhcp_reservations, router_desired};
use ipshadow_control::reassign::{DeadlinePolicy, DeadlineSource, Migration, migration_key};
use ipshadow_control::{RedbStore, Store, Txn};
use ipshadow_core::{CongestionControlParameters, EntryState, Instant, MigrationOptions, ShadowingEntry};

const T0: u64 = 1_800_000_000_000;
const ADDRESSES: u32 = 10_000;
const RUNNING: u64 = 1_000_000;

fn ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + i)
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

/// Migration `id` of address `i` from `vm-{i}` to `vm-{i+1}`, taken along `events`.
fn migration(id: u64, i: u32, events: &[MigrationEvent]) -> Migration {
    let policy = DeadlinePolicy::default();
    let deadline_ms = T0 + 300_000;
    let input = PlanInput { requested: None, now_ms: T0, deadline_ms, deadline_source: DeadlineSource::Requested };
    let plan = plan(input, &policy).unwrap();
    let mut lifecycle = Lifecycle::new();
    for (n, e) in events.iter().enumerate() {
        lifecycle.apply(e.clone(), T0 + n as u64 * 1_000).unwrap();
    }
    Migration {
        id,
        ip: ip(i),
        tenant: "acme".into(),
        source: format!("vm-{i}"),
        destination: format!("vm-{}", (i + 1) % ADDRESSES),
        strategy: Default::default(),
        mode: Default::default(),
        affinity: Default::default(),
        ramp: plan.ramp.clone(),
        deadline_ms,
        deadline_source: DeadlineSource::Requested,
        plan: Some(plan),
        created_ms: T0,
        split_pct: 0.0,
        lifecycle,
        cut_over: None,
    }
}

/// A store of 10,000 VMs and addresses, `ended` completed migrations and one ramping.
fn store(dir: &std::path::Path, ended: u64) -> RedbStore {
    use MigrationEvent as E;
    let store = RedbStore::open(&dir.join("store.redb")).unwrap();
    let mut txn = Txn::new();
    for i in 0..ADDRESSES {
        let vm = Vm {
            id: format!("vm-{i}"),
            tenant: "acme".into(),
            mac: format!("02:00:00:00:{:02x}:{:02x}", i >> 8, i & 0xff),
            segment: format!("seg-{}", i % 16),
        };
        let address = Address { ip: ip(i), tenant: "acme".into(), vm: Some(vm.id.clone()), migration: None };
        txn = txn.put(vm_key(&vm.id), json(&vm)).put(address_key(address.ip), json(&address));
        if txn.ops.len() >= 2_000 {
            store.txn(std::mem::take(&mut txn)).unwrap();
        }
    }
    let done = [
        E::PlanWritten,
        E::DestinationLeaseBound,
        E::DestinationReady,
        E::CutOver { reason: "deadline".into() },
        E::RouterCompleted,
    ];
    for id in 1..=ended {
        let m = migration(id, (id % u64::from(ADDRESSES)) as u32, &done);
        txn = txn.put(migration_key(id), json(&m));
        if txn.ops.len() >= 1_000 {
            store.txn(std::mem::take(&mut txn)).unwrap();
        }
    }
    let running = migration(RUNNING, 0, &done[..3]);
    store.txn(txn.put(migration_key(RUNNING), json(&running))).unwrap();
    store
}

/// The router's report of the ramping migration at `split` %.
fn report(split: f64, now_ms: u64) -> Status {
    let mut entry = ShadowingEntry::new(
        ip(0),
        "vm-0".into(),
        "vm-1".into(),
        Instant::from_millis(T0),
        CongestionControlParameters::default(),
        MigrationOptions::default(),
    );
    entry.traffic_split_percentage = split;
    entry.state = EntryState::Ramping;
    Status {
        updated: Instant::from_millis(now_ms),
        started: Instant::from_millis(now_ms),
        entries: vec![entry],
        ..Status::default()
    }
}

/// The manager before the mirror: every step read and decoded the whole store.
fn before(inv: &Inventory<RedbStore>, status: &Status, now_ms: u64) -> usize {
    let limits = Limits::default();
    // `handle`: every migration read for the decision.
    let migrations = inv.migrations(None).unwrap();
    for (id, decision) in decide(&migrations, &Input::Router(status), now_ms, limits) {
        if let Decision::Split(pct) = decision {
            inv.record_split(id, pct).unwrap();
            inv.migration(None, id).unwrap();
        }
    }
    // `start_pending`: every migration read again.
    let pending = inv.migrations(None).unwrap().iter().filter(|m| m.lifecycle.state == MigrationState::Pending).count();
    projection_before(inv, now_ms) + pending
}

/// The projection before the mirror: three range reads and every record decoded.
fn projection_before(inv: &Inventory<RedbStore>, now_ms: u64) -> usize {
    let (vms, _) = inv.readable_records::<Vm>("/v1/vms/").unwrap();
    let (addresses, _) = inv.readable_records::<Address>("/v1/addresses/").unwrap();
    let migrations = inv.migrations(None).unwrap();
    let router = router_desired(&addresses, &migrations, now_ms, &DeadlinePolicy::default());
    let reservations = dhcp_reservations(&vms, &addresses);
    let plans = dhcp_plans(&migrations);
    router.entries.len() + router.addresses.len() + reservations.len() + plans.len()
}

/// The projection from the mirror (what is left of it per change: copying it out).
fn projection_after(manager: &Manager<RedbStore>, now_ms: u64) -> usize {
    let p = manager.projection(now_ms).unwrap();
    p.router.entries.len() + p.router.addresses.len() + p.reservations.len() + p.plans.len()
}

/// The manager with its mirror, fed by the caller's watch.
fn after(manager: &Manager<RedbStore>, watcher: &ipshadow_control::Watcher, status: &Status, now_ms: u64) -> usize {
    manager.handle(&Input::Router(status), now_ms).unwrap();
    while let Some(event) = watcher.try_next() {
        manager.observe(&event).unwrap();
    }
    let pending = manager.start_pending(now_ms).unwrap().len();
    projection_after(manager, now_ms) + pending
}

/// The same, with the parts handed only what changed (`Manager::changed`).
fn changed_after(
    manager: &Manager<RedbStore>,
    watcher: &ipshadow_control::Watcher,
    taken: &mut Taken,
    status: &Status,
    now_ms: u64,
) -> usize {
    manager.handle(&Input::Router(status), now_ms).unwrap();
    while let Some(event) = watcher.try_next() {
        manager.observe(&event).unwrap();
    }
    let changed = manager.changed(now_ms, taken).unwrap();
    let pending = manager.start_pending(now_ms).unwrap().len();
    changed.router.map_or(0, |r| r.entries.len()) + changed.dhcp.map_or(0, |d| d.1.len()) + pending
}

/// Only what the mirror does per change: the decision (with its write) and the change observed.
fn decide_after(
    manager: &Manager<RedbStore>,
    watcher: &ipshadow_control::Watcher,
    status: &Status,
    now_ms: u64,
) -> usize {
    let applied = manager.handle(&Input::Router(status), now_ms).unwrap().len();
    while let Some(event) = watcher.try_next() {
        manager.observe(&event).unwrap();
    }
    applied
}

/// The median of `runs` timings of `step(i)`.
fn median(runs: usize, mut step: impl FnMut(usize) -> usize) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|i| {
            let start = Clock::now();
            std::hint::black_box(step(i));
            start.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

#[test]
#[ignore = "a measurement: bench/manager-scaling.sh runs it"]
fn manager_work_per_store_change() {
    let mut line = String::from("RESULT");
    for ended in [10u64, 1_000, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), ended);
        let inv = Inventory::new(store.clone());
        let runs = if ended >= 10_000 { 9 } else { 21 };
        let now = T0 + 60_000;
        let old = median(runs, |i| before(&inv, &report(1.0 + i as f64, now), now));

        let manager = Manager::new(Inventory::new(store.clone()), Limits::default());
        let start = Clock::now();
        let (kvs, revision) = store.range("/v1/").unwrap();
        manager.reset(&kvs, revision);
        let listed = start.elapsed();
        let watcher = store.watch("/v1/", revision).unwrap();
        let new = median(101, |i| after(&manager, &watcher, &report(50.0 + i as f64 * 0.1, now), now));
        let decided = median(101, |i| decide_after(&manager, &watcher, &report(70.0 + i as f64 * 0.1, now), now));
        let mut taken = Taken::default();
        let handed =
            median(101, |i| changed_after(&manager, &watcher, &mut taken, &report(80.0 + i as f64 * 0.1, now), now));
        let old_projection = median(runs, |_| projection_before(&inv, now));
        let new_projection = median(101, |_| projection_after(&manager, now));
        // Both did the same work: the same projection sizes.
        assert_eq!(before(&inv, &report(99.0, now), now), after(&manager, &watcher, &report(99.0, now), now));
        assert_eq!(projection_before(&inv, now), projection_after(&manager, now));
        println!(
            "ended={ended}: per change before {} ms, after {} ms (of which decide+write+observe {} ms), \
             after handing only what changed {} ms; \
             projection alone before {} ms, after {} ms; start (list and mirror) {} ms",
            ms(old),
            ms(new),
            ms(decided),
            ms(handed),
            ms(old_projection),
            ms(new_projection),
            ms(listed)
        );
        line.push_str(&format!(
            " before_ms_{ended}={} after_ms_{ended}={} decide_ms_{ended}={} changed_ms_{ended}={} \
             projection_before_ms_{ended}={} \
             projection_after_ms_{ended}={} reset_ms_{ended}={}",
            ms(old),
            ms(new),
            ms(decided),
            ms(handed),
            ms(old_projection),
            ms(new_projection),
            ms(listed)
        ));
    }
    println!("{line}");
}

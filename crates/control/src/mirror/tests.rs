//! The mirror against the projection computed from all records: random sequences of puts and
//! deletes of VMs, addresses and migrations (and records that do not read back), applied as a
//! store's watch would deliver them, replayed and out of order.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipshadow_contracts::router::Desired;
use proptest::prelude::*;

use super::*;
use crate::inventory::encode;
use crate::migration::{Lifecycle, MigrationEvent};
use crate::project::{ROLLBACK_DRAIN, dhcp_plans, dhcp_reservations, router_desired};
use crate::reassign::DeadlineSource;

/// A change to the model store.
#[derive(Clone, Debug)]
enum Change {
    PutVm {
        vm: u8,
        mac: u8,
    },
    DeleteVm(u8),
    PutAddress {
        ip: u8,
        vm: Option<u8>,
    },
    DeleteAddress(u8),
    PutMigration {
        id: u8,
        ip: u8,
        from: u8,
        to: u8,
        path: u8,
        at_s: u16,
        split: u8,
    },
    DeleteMigration(u8),
    /// Garbage, or a record stored under another record's key.
    PutUnreadable {
        which: u8,
        misplaced: bool,
    },
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (0..5u8, 0..3u8).prop_map(|(vm, mac)| Change::PutVm { vm, mac }),
        (0..5u8).prop_map(Change::DeleteVm),
        (0..6u8, proptest::option::of(0..5u8)).prop_map(|(ip, vm)| Change::PutAddress { ip, vm }),
        (0..6u8).prop_map(Change::DeleteAddress),
        (1..8u8, 0..6u8, 0..5u8, 0..5u8, 0..PATHS.len() as u8, 0..200u16, 0..=100u8).prop_map(
            |(id, ip, from, to, path, at_s, split)| Change::PutMigration { id, ip, from, to, path, at_s, split }
        ),
        (1..8u8).prop_map(Change::DeleteMigration),
        (0..3u8, any::<bool>()).prop_map(|(which, misplaced)| Change::PutUnreadable { which, misplaced }),
    ]
}

const T0: u64 = 1_800_000_000_000;

/// Every state a migration can be stored in, by the events that lead there.
const PATHS: [&[&str]; 10] = [
    &[],
    &["plan"],
    &["plan", "bound"],
    &["plan", "bound", "ready"],
    &["plan", "bound", "ready", "pause"],
    &["plan", "bound", "ready", "promote", "cut"],
    &["plan", "bound", "ready", "cut", "done"],
    &["plan", "bound", "ready", "failed"],
    &["plan", "abort"],
    &["plan", "fail"],
];

fn event(name: &str) -> MigrationEvent {
    match name {
        "plan" => MigrationEvent::PlanWritten,
        "bound" => MigrationEvent::DestinationLeaseBound,
        "ready" => MigrationEvent::DestinationReady,
        "pause" => MigrationEvent::Pause,
        "promote" => MigrationEvent::Promote,
        "cut" => MigrationEvent::CutOver { reason: "deadline".into() },
        "done" => MigrationEvent::RouterCompleted,
        "failed" => MigrationEvent::DestinationFailed { reason: "probes".into() },
        "abort" => MigrationEvent::Abort,
        _ => MigrationEvent::Fail { reason: "no lease".into() },
    }
}

fn ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 10 + i)
}

fn vm(i: u8) -> String {
    format!("vm-{i}")
}

fn migration(id: u8, ip_: u8, from: u8, to: u8, path: u8, at_s: u16, split: u8) -> Migration {
    let mut lifecycle = Lifecycle::new();
    let at_ms = T0 + u64::from(at_s) * 1000;
    for name in PATHS[usize::from(path) % PATHS.len()] {
        lifecycle.apply(event(name), at_ms).unwrap();
    }
    Migration {
        id: u64::from(id),
        ip: ip(ip_),
        tenant: "acme".into(),
        source: vm(from),
        destination: vm(to),
        strategy: Default::default(),
        mode: Default::default(),
        affinity: Default::default(),
        ramp: Default::default(),
        deadline_ms: T0 + 300_000,
        deadline_source: DeadlineSource::Requested,
        plan: None,
        created_ms: T0,
        split_pct: f64::from(split),
        lifecycle,
        cut_over: None,
    }
}

/// The store the mirror follows, kept as the store keeps it.
#[derive(Default)]
struct Model {
    kvs: BTreeMap<String, KeyValue>,
    revision: u64,
}

impl Model {
    fn write(&mut self, key: String, value: Option<Vec<u8>>) -> Option<WatchEvent> {
        self.revision += 1;
        let revision = self.revision;
        match value {
            Some(value) => {
                let create_revision = self.kvs.get(&key).map_or(revision, |kv| kv.create_revision);
                let kv = KeyValue { key: key.clone(), value, create_revision, mod_revision: revision };
                self.kvs.insert(key, kv.clone());
                Some(WatchEvent::Put(kv))
            }
            None => self.kvs.remove(&key).map(|_| WatchEvent::Delete { key, revision }),
        }
    }

    fn change(&mut self, c: &Change) -> Option<WatchEvent> {
        match c {
            Change::PutVm { vm: v, mac } => {
                let record = Vm {
                    id: vm(*v),
                    tenant: "acme".into(),
                    mac: format!("02:00:00:00:0{mac}:0{v}"),
                    segment: format!("seg-{v}"),
                };
                self.write(vm_key(&record.id), Some(encode(&record)))
            }
            Change::DeleteVm(v) => self.write(vm_key(&vm(*v)), None),
            Change::PutAddress { ip: i, vm: v } => {
                let record = Address { ip: ip(*i), tenant: "acme".into(), vm: v.map(vm), migration: None };
                self.write(address_key(record.ip), Some(encode(&record)))
            }
            Change::DeleteAddress(i) => self.write(address_key(ip(*i)), None),
            Change::PutMigration { id, ip, from, to, path, at_s, split } => {
                let m = migration(*id, *ip, *from, *to, *path, *at_s, *split);
                self.write(migration_key(m.id), Some(encode(&m)))
            }
            Change::DeleteMigration(id) => self.write(migration_key(u64::from(*id)), None),
            Change::PutUnreadable { which, misplaced } => {
                let (key, record) = match which {
                    0 => (vm_key("vm-9"), encode(&Vm { id: "vm-1".into(), ..vm_record() })),
                    1 => (address_key(ip(9)), encode(&Address { ip: ip(1), ..address_record() })),
                    _ => (migration_key(9), encode(&migration(1, 0, 0, 1, 1, 0, 0))),
                };
                let value = if *misplaced { record } else { b"{not json".to_vec() };
                self.write(key, Some(value))
            }
        }
    }

    /// What the records say, computed from all of them as the manager did before the mirror.
    fn projected(&self, now_ms: u64) -> (Desired, Vec<Reservation>, Vec<MigrationPlan>) {
        let mut kvs: Vec<&KeyValue> = self.kvs.values().collect();
        kvs.sort_by_key(|kv| kv.create_revision);
        let vms: Vec<Vm> =
            kvs.iter().filter_map(|kv| decode(kv, |v: &Vm| vm_key(&v.id)).ok()).map(|r| r.value).collect();
        let addresses: Vec<Address> =
            kvs.iter().filter_map(|kv| decode(kv, |a: &Address| address_key(a.ip)).ok()).map(|r| r.value).collect();
        let migrations: Vec<Migration> = self
            .kvs
            .values()
            .filter_map(|kv| decode(kv, |m: &Migration| migration_key(m.id)).ok())
            .map(|r| r.value)
            .collect();
        (
            router_desired(&addresses, &migrations, now_ms, &DeadlinePolicy::default()),
            dhcp_reservations(&vms, &addresses),
            dhcp_plans(&migrations),
        )
    }
}

fn vm_record() -> Vm {
    Vm { id: "vm-0".into(), tenant: "acme".into(), mac: "02:00:00:00:00:00".into(), segment: "seg".into() }
}

fn address_record() -> Address {
    Address { ip: ip(0), tenant: "acme".into(), vm: None, migration: None }
}

fn assert_same(mirror: &Mirror, model: &Model) {
    // Before, during and after the drain windows the changes open (ended 0-200 s after T0).
    let drain = ROLLBACK_DRAIN.as_millis() as u64;
    for now_ms in [0, T0, T0 + 30_000, T0 + 100_000, T0 + 100_000 + drain, T0 + 150_000 + drain, T0 + 200_000 + drain] {
        let (router, reservations, plans) = model.projected(now_ms);
        assert_eq!(mirror.router(now_ms), router, "router at {now_ms}");
        assert_eq!(mirror.reservations(), reservations);
        assert_eq!(mirror.plans(), plans);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Applied one change at a time, replays included, the mirror's projection is the one
    /// computed from every record; a mirror reset from a snapshot of the end agrees with it.
    #[test]
    fn the_incremental_projection_equals_the_projection_from_all_records(
        changes in proptest::collection::vec(change(), 1..60),
        replay_every in 2..7usize,
    ) {
        let mut model = Model::default();
        let mut mirror = Mirror::new(DeadlinePolicy::default());
        let mut seen = Vec::new();
        for (i, c) in changes.iter().enumerate() {
            if let Some(event) = model.change(c) {
                mirror.apply(&event);
                seen.push(event);
            }
            // A watch resumed from an older revision replays what was applied already.
            if i % replay_every == 0 {
                for event in seen.iter().rev().take(3).rev() {
                    mirror.apply(event);
                }
            }
            assert_same(&mirror, &model);
        }
        prop_assert_eq!(mirror.revision(), seen.last().map_or(0, WatchEvent::revision));
        let snapshot: Vec<KeyValue> = model.kvs.values().cloned().collect();
        let reset = Mirror::from_snapshot(DeadlinePolicy::default(), &snapshot, model.revision);
        assert_same(&reset, &model);
        prop_assert_eq!(reset.unreadable(), mirror.unreadable());
        let unfinished: Vec<u64> = mirror.unfinished().map(|m| m.id).collect();
        let expected: Vec<u64> = mirror.migrations().filter(|m| !m.value.lifecycle.state.is_final()).map(|m| m.value.id).collect();
        prop_assert_eq!(unfinished, expected);
    }
}

/// Times around the drain windows the changes open (ended 0-200 s after T0).
fn now() -> impl Strategy<Value = u64> {
    let drain = ROLLBACK_DRAIN.as_millis() as u64;
    prop_oneof![Just(0), (0..300_000u64).prop_map(move |t| T0 + t), (0..200_000u64).prop_map(move |t| T0 + drain + t)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A caller handed only what changed ([`Mirror::changed`]) holds, after every change and at
    /// every time (forwards or back), what the records say.
    #[test]
    fn a_caller_handed_only_the_changes_holds_the_projection(
        steps in proptest::collection::vec((change(), now(), any::<bool>()), 1..60),
    ) {
        let mut model = Model::default();
        let mut mirror = Mirror::new(DeadlinePolicy::default());
        let mut taken = Taken::default();
        let (mut router, mut dhcp) = (None, None);
        for (c, now_ms, reset) in steps {
            if let Some(event) = model.change(&c) {
                mirror.apply(&event);
            }
            if reset && now_ms % 7 == 0 {
                let snapshot: Vec<KeyValue> = model.kvs.values().cloned().collect();
                mirror.reset(&snapshot, model.revision);
            }
            let changed = mirror.changed(now_ms, &mut taken);
            router = changed.router.or(router);
            dhcp = changed.dhcp.or(dhcp);
            let (r, reservations, plans) = model.projected(now_ms);
            prop_assert_eq!(router.as_ref(), Some(&r));
            prop_assert_eq!(dhcp.as_ref(), Some(&(reservations, plans)));
        }
        // Nothing changed, nothing handed again.
        prop_assert_eq!(mirror.changed(0, &mut taken).dhcp, None);
    }
}

#[test]
fn records_that_do_not_read_back_are_listed_and_leave_when_fixed() {
    let mut model = Model::default();
    let mut mirror = Mirror::new(DeadlinePolicy::default());
    for c in [
        Change::PutAddress { ip: 0, vm: Some(0) },
        Change::PutUnreadable { which: 1, misplaced: true },
        Change::PutUnreadable { which: 0, misplaced: false },
        Change::PutVm { vm: 0, mac: 0 },
    ] {
        mirror.apply(&model.change(&c).unwrap());
    }
    let unreadable = mirror.unreadable();
    assert_eq!(unreadable.len(), 2, "{unreadable:?}");
    assert!(unreadable[0].starts_with("stored /v1/vms/vm-9 is corrupt"), "{unreadable:?}");
    assert!(unreadable[1].contains("holds the record of /v1/addresses/10.0.0.11"), "{unreadable:?}");
    // The misplaced address does not take 10.0.0.11 from anyone; the readable VM keeps its address.
    assert_eq!(mirror.router(0).addresses.len(), 1);
    assert_eq!(mirror.reservations()[0].ip, Some(ip(0)));
    mirror.apply(&model.write(address_key(ip(9)), None).unwrap());
    mirror.apply(&model.write(vm_key("vm-9"), Some(encode(&Vm { id: "vm-9".into(), ..vm_record() }))).unwrap());
    assert!(mirror.unreadable().is_empty());
    assert_eq!(mirror.reservations().len(), 2);
}

#[test]
fn an_own_write_seen_first_is_not_undone_by_its_older_watch_events() {
    let mut model = Model::default();
    let mut mirror = Mirror::new(DeadlinePolicy::default());
    let first =
        model.change(&Change::PutMigration { id: 1, ip: 0, from: 0, to: 1, path: 0, at_s: 0, split: 0 }).unwrap();
    let second =
        model.change(&Change::PutMigration { id: 1, ip: 0, from: 0, to: 1, path: 1, at_s: 0, split: 0 }).unwrap();
    // The manager reads its own write back before the watch brings either change.
    mirror.observe_current(&migration_key(1), model.kvs.get(&migration_key(1)));
    assert_eq!(mirror.revision(), 0, "only the watch moves the revision");
    mirror.apply(&first);
    assert_eq!(mirror.plans().len(), 1, "the pending state of the first write does not come back");
    mirror.apply(&second);
    assert_eq!(mirror.revision(), 2);
    assert_same(&mirror, &model);
    // A delete older than the key's record is ignored too.
    mirror.apply(&WatchEvent::Delete { key: migration_key(1), revision: 1 });
    assert_eq!(mirror.plans().len(), 1);
}

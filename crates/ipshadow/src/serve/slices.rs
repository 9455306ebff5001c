//! Tests of the parts on a shared store: each router gets its slice of the desired state, from
//! the VMs its report names, and loses it when its report goes. On the embedded store here (the
//! same `Store` trait as etcd): what is tested is the manager's side, not etcd.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ipshadow_control::api::parts::PartHealth;
use ipshadow_control::bus::{self, RouterReport};
use ipshadow_control::{RedbStore, Store, Txn};
use ipshadow_core::VmId;
use ipshadow_dataplane::Desired;

use super::manage::{Outputs, RouterTargets};
use super::parts::Heard;

fn store() -> (tempfile::TempDir, RedbStore) {
    let dir = tempfile::tempdir().expect("temporary folder");
    let store = RedbStore::open(&dir.path().join("store.redb")).expect("store");
    (dir, store)
}

fn vms(names: &[&str]) -> BTreeSet<VmId> {
    names.iter().map(|n| VmId::from(*n)).collect()
}

fn slice(store: &RedbStore, router: &str) -> Option<(Desired, u64)> {
    let kv = store.get(&bus::router_desired_key(router)).expect("read")?;
    Some((serde_json::from_slice(&kv.value).expect("a desired state"), kv.mod_revision))
}

fn report(store: &RedbStore, router: &str, names: &[&str]) {
    let health =
        PartHealth { part: "router".into(), up: true, restarts: 0, last_error: None, age_ms: 0, skipped: vec![] };
    let report =
        RouterReport { name: router.into(), health, published_ms: 1, vms: vms(names), status: Default::default() };
    let bytes = serde_json::to_vec(&report).expect("encoded");
    store.txn(Txn::new().put(bus::router_key(router), bytes)).expect("written");
}

#[test]
fn each_router_gets_the_slice_of_its_vms_and_a_gone_router_loses_it() {
    let (_dir, store) = store();
    let ip = |last| Ipv4Addr::new(10, 0, 0, last);
    let desired = Desired { addresses: [(ip(1), "vm-a".into()), (ip(2), "vm-c".into())].into(), entries: vec![] };
    store.txn(Txn::new().put(bus::router_desired_key("r3"), b"{}".to_vec())).expect("an old slice");
    let sink = Outputs::stored_router(store.clone());
    let mut targets = RouterTargets::default();
    targets.live.insert("r1".into(), vms(&["vm-a", "vm-b"]));
    targets.live.insert("r2".into(), vms(&["vm-c"]));
    targets.gone.insert("r3".into());
    assert!(sink(&desired, &targets));
    let (r1, written) = slice(&store, "r1").expect("r1's slice");
    assert_eq!(r1.addresses, [(ip(1), "vm-a".into())].into());
    assert_eq!(slice(&store, "r2").expect("r2's slice").0.addresses, [(ip(2), "vm-c".into())].into());
    assert!(slice(&store, "r3").is_none(), "the slice of a router gone stays");
    // The same again: nothing written. A change to r2's VMs only: only r2's slice written.
    targets.gone.clear();
    assert!(sink(&desired, &targets));
    assert_eq!(slice(&store, "r1").expect("r1").1, written);
    let mut changed = desired.clone();
    changed.addresses.insert(ip(3), "vm-c".into());
    assert!(sink(&changed, &targets));
    assert_eq!(slice(&store, "r1").expect("r1").1, written, "r1's slice did not change");
    assert_eq!(slice(&store, "r2").expect("r2").0.addresses.len(), 2);
}

/// Waits for the next segments heard, skipping reports.
fn next_segments(heard: &std::sync::mpsc::Receiver<Heard>) -> (String, Option<BTreeSet<VmId>>) {
    loop {
        match heard.recv_timeout(Duration::from_secs(10)).expect("heard within 10 s") {
            Heard::RouterSegments { name, vms } => return (name, vms),
            _ => continue,
        }
    }
}

#[test]
fn the_manager_hears_the_vms_of_each_router_and_when_its_report_goes() {
    let (_dir, store) = store();
    report(&store, "r1", &["vm-a", "vm-b"]);
    // A slice an earlier leader wrote for a router that no longer reports.
    store.txn(Txn::new().put(bus::router_desired_key("r9"), b"{}".to_vec())).expect("an old slice");
    let (tx, heard) = std::sync::mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let part = super::remote::manager_hears(store.clone(), tx, Arc::clone(&stop)).expect("started");
    let mut first = [next_segments(&heard), next_segments(&heard)];
    first.sort();
    assert_eq!(first, [("r1".to_owned(), Some(vms(&["vm-a", "vm-b"]))), ("r9".to_owned(), None)]);
    // A new router; a report of r1 with the same VMs says nothing new; r1's report goes.
    report(&store, "r2", &["vm-c"]);
    assert_eq!(next_segments(&heard), ("r2".to_owned(), Some(vms(&["vm-c"]))));
    report(&store, "r1", &["vm-a", "vm-b"]);
    store.txn(Txn::new().delete(bus::router_key("r1"))).expect("deleted");
    assert_eq!(next_segments(&heard), ("r1".to_owned(), None));
    stop.store(true, Ordering::Relaxed);
    part.join().expect("joined").expect("ended well");
}

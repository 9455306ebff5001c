//! The store's conformance suite, run on the embedded store (redb), on a real etcd and on a
//! cluster of three etcd members:
//! revisions, compare-and-swap transactions, watches that replay then follow (each change once,
//! in order, also while writers race). Then what only one of them has: redb's durability across
//! reopening and its log compaction, etcd's watch resumed across a restart and its compaction.

#![allow(clippy::unwrap_used)]

#[path = "store/cluster.rs"]
mod cluster;
#[path = "store/election.rs"]
mod election;
#[path = "common/etcd.rs"]
mod etcd;
#[path = "store/follow.rs"]
mod follow;
#[path = "store/leases.rs"]
mod leases;
#[path = "common/proxy.rs"]
mod proxy;
// The same tool check as the binary crate's tests (one file, not a copy).
#[path = "../../ipshadow/tests/common/tools.rs"]
mod tools;

use std::time::Duration;

use election::{
    a_leader_that_stopped_renewing_is_replaced_and_can_write_nothing,
    a_leader_whose_lease_was_revoked_knows_within_a_renewal, one_candidate_leads_and_a_resignation_hands_over_at_once,
};
use follow::a_follower_gets_the_state_then_each_change;
use ipshadow_control::{Compare, RedbStore, Store, StoreError, Txn, TxnOutcome, WatchEvent};
use leases::{
    a_put_under_an_ended_lease_is_refused_and_writes_nothing, a_revoked_lease_deletes_its_keys_at_once,
    an_expired_lease_deletes_its_keys_and_watchers_see_it, renewals_keep_a_lease_and_its_keys,
};

/// A store path in a new temporary folder, removed when the folder's guard is dropped.
fn temp(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::Builder::new().prefix(&format!("ipshadow-store-{name}-")).tempdir().unwrap();
    let path = dir.path().join("store.redb");
    (dir, path)
}

fn put(store: &impl Store, key: &str, value: &str) -> u64 {
    match store.txn(Txn::new().put(key, value.as_bytes().to_vec())).unwrap() {
        TxnOutcome::Committed(r) => r,
        TxnOutcome::Failed(_) => panic!("an unconditional put failed"),
    }
}

/// Each test of the suite, once on a fresh redb file and once on a fresh etcd (its keys under a
/// prefix, as a shared etcd would hold them).
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod on_redb {
            $(#[test]
            fn $name() {
                let (_dir, path) = super::temp(stringify!($name));
                super::$name(&ipshadow_control::RedbStore::open(&path).unwrap());
            })*
        }
        mod on_etcd {
            $(#[test]
            fn $name() {
                let Some(etcd) = super::etcd::Etcd::start(stringify!($name)) else { return };
                super::$name(&etcd.store("/ipshadow-test"));
            })*
        }
        mod on_etcd_cluster {
            $(#[test]
            fn $name() {
                let Some(cluster) = super::etcd::EtcdCluster::start(stringify!($name), 3) else { return };
                super::$name(&cluster.store("/ipshadow-test"));
            })*
        }
    };
}

/// Tests of a three-member etcd cluster only, each on a cluster of its own.
macro_rules! on_a_cluster {
    ($($name:ident),* $(,)?) => {
        mod on_a_cluster {
            $(#[test]
            fn $name() {
                let Some(mut cluster) = super::etcd::EtcdCluster::start(stringify!($name), 3) else { return };
                super::cluster::$name(&mut cluster);
            })*
        }
    };
}

on_a_cluster!(
    a_watch_resumes_across_a_restart_of_its_member,
    a_watch_goes_on_when_the_leader_member_dies,
    a_follower_compacted_past_is_reset,
);

conformance!(
    revisions_ranges_and_compare_and_swap,
    a_watch_replays_what_it_missed_then_follows_each_change_once_in_order,
    an_expired_lease_deletes_its_keys_and_watchers_see_it,
    renewals_keep_a_lease_and_its_keys,
    a_revoked_lease_deletes_its_keys_at_once,
    a_put_under_an_ended_lease_is_refused_and_writes_nothing,
    one_candidate_leads_and_a_resignation_hands_over_at_once,
    a_leader_that_stopped_renewing_is_replaced_and_can_write_nothing,
    a_leader_whose_lease_was_revoked_knows_within_a_renewal,
    a_follower_gets_the_state_then_each_change,
);

fn revisions_ranges_and_compare_and_swap(store: &impl Store) {
    assert_eq!(store.range("/").unwrap(), (vec![], 0));
    assert_eq!(put(store, "/v1/vms/a", "1"), 1);
    assert_eq!(put(store, "/v1/vms/b", "2"), 2);
    assert_eq!(put(store, "/v1/vms/a", "3"), 3);
    put(store, "/v1/z", "outside");
    let a = store.get("/v1/vms/a").unwrap().unwrap();
    assert_eq!((a.value.as_slice(), a.create_revision, a.mod_revision), (&b"3"[..], 1, 3));
    let (vms, revision) = store.range("/v1/vms/").unwrap();
    assert_eq!(vms.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(), ["/v1/vms/a", "/v1/vms/b"]);
    assert_eq!(revision, 4);

    // Creating what exists fails and writes nothing; a stale revision fails; the right one wins.
    let create = Txn::new().when(Compare::Absent("/v1/vms/a".into())).put("/v1/vms/a", b"x".to_vec());
    assert_eq!(store.txn(create).unwrap(), TxnOutcome::Failed(4));
    let stale = Txn::new().when(Compare::ModRevision("/v1/vms/a".into(), 1)).put("/v1/vms/a", b"x".to_vec());
    assert_eq!(store.txn(stale).unwrap(), TxnOutcome::Failed(4));
    assert_eq!(store.get("/v1/vms/a").unwrap().unwrap().value, b"3");
    let fresh = Txn::new()
        .when(Compare::ModRevision("/v1/vms/a".into(), 3))
        .put("/v1/vms/a", b"4".to_vec())
        .delete("/v1/vms/b")
        .delete("/v1/vms/never");
    assert_eq!(store.txn(fresh).unwrap(), TxnOutcome::Committed(5));
    assert!(store.get("/v1/vms/b").unwrap().is_none());
    // Both writes of a transaction share its revision.
    assert_eq!(store.get("/v1/vms/a").unwrap().unwrap().mod_revision, 5);
}

fn a_watch_replays_what_it_missed_then_follows_each_change_once_in_order<S: Store>(store: &S) {
    put(store, "/m/1", "a");
    put(store, "/other", "x");
    put(store, "/m/2", "b");
    let watcher = store.watch("/m/", 1).unwrap();
    let first = watcher.next_timeout(Duration::from_secs(1)).unwrap();
    assert!(matches!(&first, WatchEvent::Put(kv) if kv.key == "/m/2" && kv.mod_revision == 3), "{first:?}");
    assert!(watcher.try_next().is_none(), "revision 1 was before `after`, /other is not watched");

    // Writers race with a watcher that starts from zero: every change arrives once, in order.
    let from_zero = store.watch("/m/", 0).unwrap();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    put(&store, &format!("/m/w{w}/{i}"), "v");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    store.txn(Txn::new().delete("/m/1")).unwrap();
    // Replayed 2, live 200 puts and 1 delete; then nothing more.
    let mut seen = Vec::new();
    while seen.len() < 2 + 200 + 1 {
        seen.push(from_zero.next_timeout(Duration::from_secs(5)).expect("every change arrives"));
    }
    assert!(from_zero.next_timeout(Duration::from_millis(200)).is_none(), "no change twice");
    assert!(seen.windows(2).all(|w| w[0].revision() < w[1].revision()), "in revision order, no repeats");
    assert!(matches!(seen.last(), Some(WatchEvent::Delete { key, .. }) if key == "/m/1"));
}

/// A watch on a key that never changes again (a finished migration's event stream) is
/// forgotten once its watcher is dropped: watches come and go for as long as the server runs.
#[test]
fn dropped_watchers_are_forgotten_without_a_change_to_their_keys() {
    let store = RedbStore::open(&temp("forget").1).unwrap();
    put(&store, "/m/1", "a");
    for _ in 0..100 {
        drop(store.watch("/m/1", 1).unwrap());
    }
    let kept = store.watch("/m/1", 1).unwrap();
    assert_eq!(store.open_watches(), 1, "only the live watch is kept");
    // A write elsewhere forgets dropped ones too, and the live one still hears its key.
    let other = store.watch("/m/2", 1).unwrap();
    drop(other);
    put(&store, "/x", "y");
    assert_eq!(store.open_watches(), 1);
    put(&store, "/m/1", "b");
    assert!(matches!(kept.next_timeout(Duration::from_secs(1)), Some(WatchEvent::Put(kv)) if kv.key == "/m/1"));
}

#[test]
fn everything_survives_reopening_and_old_revisions_are_compacted() {
    let (_dir, path) = temp("durable");
    {
        let store = RedbStore::open_keeping(&path, 10).unwrap();
        for i in 0..30 {
            put(&store, &format!("/k/{}", i % 3), &i.to_string());
        }
    }
    let store = RedbStore::open_keeping(&path, 10).unwrap();
    let (keys, revision) = store.range("/k/").unwrap();
    assert_eq!(revision, 30);
    assert_eq!(
        keys.iter().map(|kv| String::from_utf8(kv.value.clone()).unwrap()).collect::<Vec<_>>(),
        ["27", "28", "29"]
    );
    // The last 10 revisions replay; older ones are gone and the watcher is told so.
    let recent = store.watch("/k/", 20).unwrap();
    let mut n = 0;
    while recent.try_next().is_some() {
        n += 1;
    }
    assert_eq!(n, 10);
    assert!(matches!(store.watch("/k/", 5), Err(StoreError::Compacted { requested: 6, oldest: 21 })));
    // Watching from the current revision needs no history.
    assert!(store.watch("/k/", 30).unwrap().try_next().is_none());
}

/// Leases are the process's: a store opened again deletes the keys the previous process left
/// under a lease (a Delete at a new revision) and keeps the others.
#[test]
fn reopening_deletes_the_keys_of_the_previous_process_leases() {
    let (_dir, path) = temp("orphans");
    let revision = {
        let store = RedbStore::open(&path).unwrap();
        let lease = store.grant_lease(Duration::from_secs(600)).unwrap();
        leases::put_leased(&store, "/l/leased", "a", lease);
        put(&store, "/l/plain", "b")
    };
    let store = RedbStore::open(&path).unwrap();
    let (keys, now) = store.range("/l/").unwrap();
    assert_eq!(keys.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(), ["/l/plain"]);
    assert_eq!(now, revision + 1);
    let watcher = store.watch("/l/", revision).unwrap();
    assert_eq!(watcher.try_next(), Some(WatchEvent::Delete { key: "/l/leased".into(), revision: revision + 1 }));
}

/// What etcd refuses that redb takes comes back as typed errors, nothing written.
#[test]
fn etcd_refuses_large_transactions_and_a_key_written_twice_with_typed_errors() {
    let Some(etcd) = etcd::Etcd::start("limits") else { return };
    let store = etcd.store("/ipshadow-test");
    let mut large = Txn::new();
    for i in 0..129 {
        large = large.put(format!("/k/{i}"), b"v".to_vec());
    }
    assert!(matches!(store.txn(large), Err(StoreError::TxnTooLarge { ops: 129 })));
    let mut at_limit = Txn::new();
    for i in 0..128 {
        at_limit = at_limit.put(format!("/k/{i}"), b"v".to_vec());
    }
    assert!(matches!(store.txn(at_limit), Ok(TxnOutcome::Committed(1))), "128 is the default limit");
    let twice = Txn::new().put("/k/x", b"1".to_vec()).delete("/k/x");
    assert!(matches!(store.txn(twice), Err(StoreError::DuplicateKey { key }) if key == "/k/x"));
    assert_eq!(store.range("/k/").unwrap(), (store.range("/k/").unwrap().0, 1), "nothing written");
}

#[test]
fn a_file_that_is_not_a_store_is_a_clear_error() {
    let (_dir, path) = temp("garbage");
    std::fs::write(&path, b"this is not a redb file, it is a text file long enough to look like one").unwrap();
    let err = RedbStore::open(&path).err().expect("refused");
    assert!(err.to_string().contains("store.redb"), "{err}");
}

/// A watch goes on across an etcd restart: etcd killed and started again on its data, the
/// watcher hears the changes made after, once each, with nothing of before repeated.
#[test]
fn etcd_a_watch_resumes_across_a_restart() {
    let Some(mut etcd) = etcd::Etcd::start("resume") else { return };
    let store = etcd.store("/ipshadow-test");
    put(&store, "/m/1", "a");
    let watcher = store.watch("/m/", 0).unwrap();
    let first = watcher.next_timeout(Duration::from_secs(5)).expect("the replayed change");
    assert_eq!((first.key(), first.revision()), ("/m/1", 1));

    etcd.restart();
    // The client reconnects on its own; the first calls may still meet the closed connection.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let revision = loop {
        match store.txn(Txn::new().put("/m/2", b"b".to_vec())) {
            Ok(TxnOutcome::Committed(r)) => break r,
            other => assert!(std::time::Instant::now() < deadline, "no write after the restart: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(revision, 2, "the data survived the restart");
    put(&store, "/m/3", "c");
    let after: Vec<_> =
        (0..2).map(|_| watcher.next_timeout(Duration::from_secs(30)).expect("a change after")).collect();
    assert_eq!(after.iter().map(|e| (e.key(), e.revision())).collect::<Vec<_>>(), [("/m/2", 2), ("/m/3", 3)]);
    assert!(watcher.next_timeout(Duration::from_millis(300)).is_none(), "nothing repeated");
    assert!(watcher.failure().is_none());
}

/// After etcd compacts its history, a watch from before is refused with the typed error (the
/// caller re-lists and re-watches); from the oldest kept revision on it replays.
#[test]
fn etcd_a_watch_from_before_a_compaction_is_the_typed_error() {
    let Some(etcd) = etcd::Etcd::start("compaction") else { return };
    let store = etcd.store("/ipshadow-test");
    for i in 0..10 {
        put(&store, &format!("/k/{}", i % 3), &i.to_string());
    }
    store.compact(5).unwrap();
    match store.watch("/k/", 2) {
        Err(StoreError::Compacted { requested: 3, oldest: 5 }) => {}
        other => panic!("expected Compacted {{ requested: 3, oldest: 5 }}, got {:?}", other.map(|_| "a watcher")),
    }
    let (_, revision) = store.range("/k/").unwrap();
    assert_eq!(revision, 10);
    let replay = store.watch("/k/", 4).unwrap();
    let revisions: Vec<_> =
        (5..=10).map(|_| replay.next_timeout(Duration::from_secs(5)).expect("a kept change").revision()).collect();
    assert_eq!(revisions, [5, 6, 7, 8, 9, 10]);
}

/// Two stores on one etcd under different key prefixes see only their own keys.
#[test]
fn etcd_key_prefixes_keep_stores_apart() {
    let Some(etcd) = etcd::Etcd::start("prefixes") else { return };
    let (a, b) = (etcd.store("/a"), etcd.store("/b"));
    put(&a, "/v1/x", "from a");
    let watch_b = b.watch("/", 0).unwrap();
    put(&b, "/v1/x", "from b");
    assert_eq!(a.get("/v1/x").unwrap().unwrap().value, b"from a");
    let (keys, _) = b.range("/").unwrap();
    assert_eq!(
        keys.iter().map(|kv| (kv.key.as_str(), kv.value.as_slice())).collect::<Vec<_>>(),
        [("/v1/x", &b"from b"[..])]
    );
    let event = watch_b.next_timeout(Duration::from_secs(5)).expect("b's own change");
    assert_eq!(event.key(), "/v1/x");
    assert!(watch_b.next_timeout(Duration::from_millis(200)).is_none(), "a's change is not b's");
}

/// A watcher cut off from etcd (while other clients still write) resumes from the last change it
/// delivered; cut off again while etcd compacts past it, its stream ends with the typed error.
#[test]
fn etcd_a_cut_off_watch_resumes_then_ends_with_the_compaction() {
    let Some(etcd) = etcd::Etcd::start("partition") else { return };
    let relay = proxy::Proxy::start(etcd.client_port());
    let watched = ipshadow_control::EtcdStore::connect(&[relay.endpoint()], "/ipshadow-test").unwrap();
    let direct = etcd.store("/ipshadow-test");
    put(&direct, "/m/1", "a");
    let watcher = watched.watch("/m/", 0).unwrap();
    assert_eq!(watcher.next_timeout(Duration::from_secs(5)).map(|e| e.revision()), Some(1));

    relay.cut();
    put(&direct, "/m/2", "b");
    relay.restore();
    let resumed = watcher.next_timeout(Duration::from_secs(30)).expect("the change made while cut off");
    assert_eq!((resumed.key(), resumed.revision()), ("/m/2", 2));

    relay.cut();
    put(&direct, "/m/3", "c");
    put(&direct, "/m/4", "d");
    direct.compact(4).unwrap();
    relay.restore();
    // The stream ends (the store's task drops its end) without delivering 3.
    assert!(watcher.next_timeout(Duration::from_secs(30)).is_none(), "revision 3 is compacted away");
    match watcher.failure() {
        Some(StoreError::Compacted { requested: 3, oldest: 4 }) => {}
        other => panic!("expected Compacted {{ requested: 3, oldest: 4 }}, got {other:?}"),
    }
}

/// A follower that fell behind etcd's compaction (cut off meanwhile) is reset to the current
/// state, then follows again.
#[test]
fn etcd_a_follower_compacted_past_is_reset_then_follows() {
    let Some(etcd) = etcd::Etcd::start("follow") else { return };
    let relay = proxy::Proxy::start(etcd.client_port());
    let watched = ipshadow_control::EtcdStore::connect(&[relay.endpoint()], "/ipshadow-test").unwrap();
    follow::a_follower_compacted_past_is_reset_then_follows(
        &etcd.store("/ipshadow-test"),
        watched,
        || relay.cut(),
        || relay.restore(),
    );
}

/// A leader cut off from etcd (a partition) stops calling itself leader within its time to
/// live, by its own clock; a standby leads once the lease expires; back in touch, the former
/// leader's writes are refused and nothing of them lands.
#[test]
fn etcd_a_leader_cut_off_stops_leading_within_its_ttl_and_writes_nothing_after() {
    use ipshadow_control::election::{Candidate, leader};
    let Some(etcd) = etcd::Etcd::start("partitioned-leader") else { return };
    let relay = proxy::Proxy::start(etcd.client_port());
    let cut_off = ipshadow_control::EtcdStore::connect(&[relay.endpoint()], "/ipshadow-test").unwrap();
    let direct = etcd.store("/ipshadow-test");
    let key = "/v1/leaders/manager";
    let a = Candidate::new(cut_off, key, "a", leases::TTL).campaign_once().unwrap().expect("a leads");
    let a_store = a.fenced();
    assert!(matches!(a_store.txn(Txn::new().put("/v1/x", b"a1".to_vec())), Ok(TxnOutcome::Committed(_))));

    relay.cut();
    let cut = std::time::Instant::now();
    while a.is_leading() {
        assert!(cut.elapsed() < leases::TTL * 2, "still leading {:?} after it lost etcd", cut.elapsed());
        // Polling a condition: the leader's own view.
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("a leader cut off from etcd stops leading after {:?}", cut.elapsed());
    let stop = std::sync::atomic::AtomicBool::new(false);
    let b = Candidate::new(direct.clone(), key, "b", leases::TTL).campaign(&stop).unwrap().expect("b leads");
    println!("a standby leads {:?} after the leader was cut off", cut.elapsed());
    assert!(b.is_leading());
    relay.restore();
    assert!(matches!(a_store.txn(Txn::new().put("/v1/y", b"late".to_vec())), Err(StoreError::NotLeader { .. })));
    assert!(direct.get("/v1/y").unwrap().is_none(), "nothing of a's landed");
    assert_eq!(leader(&direct, key).unwrap().as_deref(), Some("b"));
}

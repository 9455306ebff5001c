//! The embedded store: revisions, compare-and-swap transactions, watches that replay then follow
//! (each change once, in order, also while writers race), durability across reopening, and
//! compaction refusing a replay it can no longer give.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ipshadow_control::{Compare, RedbStore, Store, StoreError, Txn, TxnOutcome, WatchEvent};

/// A store path in a new temporary folder, removed when the folder's guard is dropped.
fn temp(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::Builder::new().prefix(&format!("ipshadow-store-{name}-")).tempdir().unwrap();
    let path = dir.path().join("store.redb");
    (dir, path)
}

fn put(store: &RedbStore, key: &str, value: &str) -> u64 {
    match store.txn(Txn::new().put(key, value.as_bytes().to_vec())).unwrap() {
        TxnOutcome::Committed(r) => r,
        TxnOutcome::Failed(_) => panic!("an unconditional put failed"),
    }
}

#[test]
fn revisions_ranges_and_compare_and_swap() {
    let store = RedbStore::open(&temp("cas").1).unwrap();
    assert_eq!(store.range("/").unwrap(), (vec![], 0));
    assert_eq!(put(&store, "/v1/vms/a", "1"), 1);
    assert_eq!(put(&store, "/v1/vms/b", "2"), 2);
    assert_eq!(put(&store, "/v1/vms/a", "3"), 3);
    put(&store, "/v1/z", "outside");
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

#[test]
fn a_watch_replays_what_it_missed_then_follows_each_change_once_in_order() {
    let store = RedbStore::open(&temp("watch").1).unwrap();
    put(&store, "/m/1", "a");
    put(&store, "/other", "x");
    put(&store, "/m/2", "b");
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
    let mut seen = Vec::new();
    while let Some(e) = from_zero.next_timeout(Duration::from_millis(200)) {
        seen.push(e);
    }
    assert_eq!(seen.len(), 2 + 200 + 1, "replayed 2, live 200 puts and 1 delete");
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

#[test]
fn a_file_that_is_not_a_store_is_a_clear_error() {
    let (_dir, path) = temp("garbage");
    std::fs::write(&path, b"this is not a redb file, it is a text file long enough to look like one").unwrap();
    let err = RedbStore::open(&path).err().expect("refused");
    assert!(err.to_string().contains("store.redb"), "{err}");
}

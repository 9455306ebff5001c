//! Leases, on every store: a key put under a lease goes when the lease expires or is revoked (a
//! Delete at a new revision, watched), renewals keep it, and a lease that ended refuses
//! renewals and leased puts with the typed error, writing nothing.

use std::time::{Duration, Instant};

use ipshadow_control::{Compare, LeaseId, Store, StoreError, Txn, TxnOutcome, WatchEvent, Watcher};

use super::put;

/// Asked of every store; etcd makes it its minimum, 2 s with default flags.
pub const TTL: Duration = Duration::from_secs(1);
/// Longer than etcd's minimum lease and its 500 ms expiry check.
const EXPIRES_WITHIN: Duration = Duration::from_secs(10);

pub fn put_leased(store: &impl Store, key: &str, value: &str, lease: LeaseId) -> u64 {
    match store.txn(Txn::new().put_leased(key, value.as_bytes().to_vec(), lease)).unwrap() {
        TxnOutcome::Committed(r) => r,
        TxnOutcome::Failed(_) => panic!("an unconditional put failed"),
    }
}

/// The next event of `watcher`, within `within`.
fn next(watcher: &Watcher, within: Duration) -> WatchEvent {
    watcher.next_timeout(within).expect("an event in time")
}

pub fn an_expired_lease_deletes_its_keys_and_watchers_see_it(store: &impl Store) {
    let lease = store.grant_lease(TTL).unwrap();
    let granted = Instant::now();
    let put_at = put_leased(store, "/l/leased", "a", lease);
    put(store, "/l/plain", "b");
    let watcher = store.watch("/l/", put_at + 1).unwrap();
    // Nothing else touches the store: the expiry alone must produce the deletion.
    let event = next(&watcher, EXPIRES_WITHIN);
    let took = granted.elapsed();
    assert!(
        matches!(&event, WatchEvent::Delete { key, revision } if key == "/l/leased" && *revision == put_at + 2),
        "{event:?}"
    );
    assert!(took >= TTL, "not before its time to live: {took:?}");
    assert!(store.get("/l/leased").unwrap().is_none());
    assert!(store.get("/l/plain").unwrap().is_some(), "a key of no lease stays");
    assert!(matches!(store.keep_alive(lease), Err(StoreError::LeaseExpired { lease: l }) if l == lease));
}

pub fn renewals_keep_a_lease_and_its_keys(store: &impl Store) {
    let lease = store.grant_lease(TTL).unwrap();
    let put_at = put_leased(store, "/l/kept", "a", lease);
    let watcher = store.watch("/l/", put_at).unwrap();
    // Three times etcd's minimum lease, renewed every 300 ms.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        store.keep_alive(lease).unwrap();
        assert!(watcher.next_timeout(Duration::from_millis(300)).is_none(), "a renewed lease's key stays");
    }
    assert_eq!(store.get("/l/kept").unwrap().unwrap().mod_revision, put_at);
    // Not renewed any more, it goes.
    assert!(matches!(next(&watcher, EXPIRES_WITHIN), WatchEvent::Delete { key, .. } if key == "/l/kept"));
}

pub fn a_revoked_lease_deletes_its_keys_at_once(store: &impl Store) {
    let lease = store.grant_lease(Duration::from_secs(60)).unwrap();
    put_leased(store, "/l/a", "a", lease);
    let last = put_leased(store, "/l/b", "b", lease);
    // A key put again without a lease is no longer the lease's.
    let other = store.grant_lease(Duration::from_secs(60)).unwrap();
    put_leased(store, "/l/unbound", "c", other);
    let revision = put(store, "/l/unbound", "d");
    store.revoke_lease(other).unwrap();
    assert!(store.get("/l/unbound").unwrap().is_some(), "unbound by the plain put");
    let watcher = store.watch("/l/", revision).unwrap();
    store.revoke_lease(lease).unwrap();
    assert!(store.get("/l/a").unwrap().is_none() && store.get("/l/b").unwrap().is_none(), "gone when revoke returns");
    let deleted: Vec<_> = (0..2).map(|_| next(&watcher, Duration::from_secs(5))).collect();
    assert!(deleted.iter().all(|e| matches!(e, WatchEvent::Delete { .. }) && e.revision() > last), "{deleted:?}");
    let mut keys: Vec<_> = deleted.iter().map(|e| e.key().to_owned()).collect();
    keys.sort();
    assert_eq!(keys, ["/l/a", "/l/b"]);
    store.revoke_lease(lease).unwrap();
    assert!(matches!(store.keep_alive(lease), Err(StoreError::LeaseExpired { .. })));
}

pub fn a_put_under_an_ended_lease_is_refused_and_writes_nothing(store: &impl Store) {
    let lease = store.grant_lease(Duration::from_secs(60)).unwrap();
    store.revoke_lease(lease).unwrap();
    let before = put(store, "/l/seen", "x");
    let txn = Txn::new().put("/l/plain", b"p".to_vec()).put_leased("/l/leased", b"l".to_vec(), lease);
    assert!(matches!(store.txn(txn), Err(StoreError::LeaseExpired { lease: l }) if l == lease));
    let unknown = Txn::new().put_leased("/l/leased", b"l".to_vec(), LeaseId(7_777_777));
    assert!(matches!(store.txn(unknown), Err(StoreError::LeaseExpired { lease: LeaseId(7_777_777) })));
    let (keys, revision) = store.range("/l/").unwrap();
    assert_eq!((keys.len(), revision), (1, before), "nothing written, no revision taken");
    // As on etcd, the lease is looked at only when the comparisons hold.
    let failing = Txn::new().when(Compare::Absent("/l/seen".into())).put_leased("/l/leased", b"l".to_vec(), lease);
    assert_eq!(store.txn(failing).unwrap(), TxnOutcome::Failed(before));
}

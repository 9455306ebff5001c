//! A follower of a prefix: the state, then each change; and, on etcd, a follower that fell
//! behind a compaction is reset to the current state and follows again, nothing missed.

use std::collections::BTreeMap;
use std::time::Duration;

use ipshadow_control::store::follow::{Change, Follow};
use ipshadow_control::{EtcdStore, Store, Txn, WatchEvent};

use super::put;

/// What a follower holds: keys to values, and the revision it is at.
#[derive(Default)]
pub struct Mirror {
    pub keys: BTreeMap<String, Vec<u8>>,
    pub revision: u64,
    pub resets: usize,
}

impl Mirror {
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Reset { snapshot, revision } => {
                self.keys = snapshot.into_iter().map(|kv| (kv.key, kv.value)).collect();
                self.revision = revision;
                self.resets += 1;
            }
            Change::Event(event) => {
                assert!(event.revision() > self.revision, "in order, once: {event:?} at {}", self.revision);
                self.revision = event.revision();
                match event {
                    WatchEvent::Put(kv) => self.keys.insert(kv.key, kv.value),
                    WatchEvent::Delete { key, .. } => self.keys.remove(&key),
                };
            }
        }
    }

    /// Follows until it holds `store`'s state of `prefix` (within 30 s).
    pub fn catch_up<S: Store>(&mut self, follow: &mut Follow<S>, store: &impl Store, prefix: &str) {
        let (want, revision) = store.range(prefix).unwrap();
        let want: BTreeMap<_, _> = want.into_iter().map(|kv| (kv.key, kv.value)).collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.revision < revision || self.keys != want {
            assert!(
                std::time::Instant::now() < deadline,
                "not caught up with revision {revision}: at {}",
                self.revision
            );
            if let Some(change) = follow.next_timeout(Duration::from_millis(200)).unwrap() {
                self.apply(change);
            }
        }
    }
}

pub fn a_follower_gets_the_state_then_each_change<S: Store>(store: &S) {
    put(store, "/f/a", "1");
    put(store, "/f/b", "2");
    put(store, "/g/outside", "x");
    let mut follow = Follow::new(store.clone(), "/f/");
    let first = follow.next_timeout(Duration::from_secs(5)).unwrap().expect("the state first");
    let Change::Reset { snapshot, revision } = first else { panic!("a reset first, got {first:?}") };
    assert_eq!((snapshot.len(), revision), (2, 3));
    put(store, "/f/c", "3");
    store.txn(Txn::new().delete("/f/a")).unwrap();
    let next = follow.next_timeout(Duration::from_secs(5)).unwrap();
    assert!(matches!(next, Some(Change::Event(WatchEvent::Put(kv))) if kv.key == "/f/c" && kv.mod_revision == 4));
    let next = follow.next_timeout(Duration::from_secs(5)).unwrap();
    assert!(matches!(next, Some(Change::Event(WatchEvent::Delete { key, revision: 5 })) if key == "/f/a"));
    assert_eq!(follow.next_timeout(Duration::from_millis(200)).unwrap(), None);
    assert_eq!(follow.revision(), 5);
}

/// `watched` reaches etcd through a link the test can `cut` and `restore`; `direct` does not.
/// The follower falls behind while cut, etcd compacts past it, and once restored it is reset
/// to the current state and follows again.
pub fn a_follower_compacted_past_is_reset_then_follows(
    direct: &EtcdStore,
    watched: EtcdStore,
    cut: impl Fn(),
    restore: impl Fn(),
) {
    put(direct, "/f/gone", "0");
    put(direct, "/f/a", "1");
    let mut follow = Follow::new(watched, "/f/");
    let mut mirror = Mirror::default();
    mirror.catch_up(&mut follow, direct, "/f/");
    put(direct, "/f/b", "2");
    mirror.catch_up(&mut follow, direct, "/f/");
    assert_eq!(mirror.resets, 1, "the first state only");

    cut();
    put(direct, "/f/c", "3");
    direct.txn(Txn::new().delete("/f/gone")).unwrap();
    let compacted_to = put(direct, "/f/a", "4");
    direct.compact(compacted_to).unwrap();
    restore();
    mirror.catch_up(&mut follow, direct, "/f/");
    assert_eq!(mirror.resets, 2, "reset once, after the compaction");
    assert_eq!(
        mirror.keys.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect::<Vec<_>>(),
        [("/f/a", &b"4"[..]), ("/f/b", b"2"), ("/f/c", b"3")]
    );
    // And it follows again.
    put(direct, "/f/d", "5");
    mirror.catch_up(&mut follow, direct, "/f/");
    assert_eq!(mirror.resets, 2);
    assert_eq!(mirror.keys.get("/f/d").map(Vec::as_slice), Some(&b"5"[..]));
}

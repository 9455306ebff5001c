//! Leader election on any [`Store`], with fencing (issue 14): managers campaign for one key,
//! the first to create it (under a lease of its own) leads, and every write of the leader
//! carries a compare on that key's creation, so that a leader that was paused or cut off past
//! its lease, and replaced, can change nothing when it comes back.
//!
//! The leader renews its lease every third of its time to live and stops calling itself leader
//! as soon as a renewal says the lease ended, or when no renewal was confirmed for a time to
//! live (its own clock: the store's lease, counted from the store's receipt of a renewal sent
//! later, ends no sooner). A standby watches the key and campaigns again when it is deleted:
//! the leader resigned (at once) or its lease expired (within the time to live, plus etcd's
//! expiry check of 500 ms and its minimum lease of 2 s).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::{Compare, KeyValue, LeaseId, Store, StoreError, Txn, TxnOutcome, WatchEvent, Watcher};

/// How often a standby waiting for the key to go looks at its stop flag, and whether the key
/// is there after all (a watch that ended).
const STANDBY_TICK: Duration = Duration::from_millis(100);

/// One campaigner for an election key.
pub struct Candidate<S: Store> {
    store: S,
    key: String,
    name: String,
    ttl: Duration,
    /// The store's revision when the last attempt found the key taken.
    taken_at: u64,
}

impl<S: Store> Candidate<S> {
    /// A candidate called `name` for `election_key` (like `/v1/leaders/manager`), leading
    /// under leases of `ttl`.
    pub fn new(store: S, election_key: &str, name: &str, ttl: Duration) -> Self {
        Self { store, key: election_key.to_owned(), name: name.to_owned(), ttl, taken_at: 0 }
    }

    /// Tries once: creates the key (if absent) under a fresh lease, its value the candidate's
    /// name. `None`: another leads.
    pub fn campaign_once(&mut self) -> Result<Option<Leadership<S>>, StoreError> {
        // Before the grant: the lease ends no sooner than a time to live after this.
        let asked = Instant::now();
        let lease = self.store.grant_lease(self.ttl)?;
        let txn = Txn::new().when(Compare::Absent(self.key.clone())).put_leased(
            self.key.clone(),
            self.name.as_bytes().to_vec(),
            lease,
        );
        match self.store.txn(txn) {
            Ok(TxnOutcome::Committed(revision)) => {
                Ok(Some(Leadership::start(self.store.clone(), self.key.clone(), lease, revision, self.ttl, asked)))
            }
            Ok(TxnOutcome::Failed(revision)) => {
                self.taken_at = revision;
                // Not ours to keep: a lease left behind would only wait for its time to live.
                let _ = self.store.revoke_lease(lease);
                Ok(None)
            }
            Err(e) => {
                let _ = self.store.revoke_lease(lease);
                Err(e)
            }
        }
    }

    /// Campaigns until leading, waiting between attempts for the key to be deleted; `None`
    /// once `stop` is set.
    pub fn campaign(&mut self, stop: &AtomicBool) -> Result<Option<Leadership<S>>, StoreError> {
        loop {
            if stop.load(Ordering::SeqCst) {
                return Ok(None);
            }
            if let Some(leadership) = self.campaign_once()? {
                return Ok(Some(leadership));
            }
            // Changes after the failed attempt: a deletion since then is seen.
            let watcher = match self.store.watch(&self.key, self.taken_at) {
                Ok(watcher) => watcher,
                // That history is gone already (etcd compacted): simply try again.
                Err(StoreError::Compacted { .. }) => continue,
                Err(e) => return Err(e),
            };
            if !self.wait_for_deletion(&watcher, stop)? {
                return Ok(None);
            }
        }
    }

    /// Waits until the key is deleted (`true`) or `stop` is set (`false`).
    fn wait_for_deletion(&self, watcher: &Watcher, stop: &AtomicBool) -> Result<bool, StoreError> {
        loop {
            if stop.load(Ordering::SeqCst) {
                return Ok(false);
            }
            match watcher.next_timeout(STANDBY_TICK) {
                // The watch is on a prefix: another key may start with this one.
                Some(WatchEvent::Delete { key, .. }) if key == self.key => return Ok(true),
                Some(_) => {}
                // A watch that ended (a compaction on etcd): look at the key itself.
                None if watcher.failure().is_some() => return Ok(self.store.get(&self.key)?.is_none()),
                None => {}
            }
        }
    }
}

/// The name of who leads `election_key`, if anyone does.
pub fn leader<S: Store>(store: &S, election_key: &str) -> Result<Option<String>, StoreError> {
    Ok(store.get(election_key)?.map(|kv: KeyValue| String::from_utf8_lossy(&kv.value).into_owned()))
}

/// What the leader and its fenced stores share.
struct State {
    ttl: Duration,
    /// False for good once the leadership ended (or was found to have).
    leading: AtomicBool,
    /// When the last confirmed renewal (or the grant) was asked.
    confirmed: Mutex<Instant>,
    /// Renewals stopped ([`Leadership::pause_renewals`]).
    paused: AtomicBool,
}

impl State {
    fn leading(&self) -> bool {
        let confirmed = *self.confirmed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if confirmed.elapsed() >= self.ttl {
            self.leading.store(false, Ordering::SeqCst);
        }
        self.leading.load(Ordering::SeqCst)
    }
}

/// Leading an election: the lease is renewed on a thread of its own until resigned or dropped
/// (dropping stops renewing: a standby leads once the lease expires).
pub struct Leadership<S: Store> {
    store: S,
    key: String,
    lease: LeaseId,
    revision: u64,
    state: Arc<State>,
    /// Dropped (or sent to) to stop the renewals.
    stop: Option<Sender<()>>,
}

impl<S: Store> Leadership<S> {
    fn start(store: S, key: String, lease: LeaseId, revision: u64, ttl: Duration, asked: Instant) -> Self {
        let state = Arc::new(State {
            ttl,
            leading: AtomicBool::new(true),
            confirmed: Mutex::new(asked),
            paused: AtomicBool::new(false),
        });
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (renewer, renewed) = (store.clone(), Arc::clone(&state));
        let spawned = std::thread::Builder::new().name("leader-lease".into()).spawn(move || {
            // Six renewals per time to live: an etcd election (a second or two) between two of
            // them leaves a confirmed renewal well within the lease, so the leader keeps leading.
            let every = (ttl / 6).max(Duration::from_millis(10));
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                // A paused process does nothing at all, not even give up.
                if renewed.paused.load(Ordering::SeqCst) {
                    continue;
                }
                if !renewed.leading() {
                    // Its clock says it lost the lease: let a standby lead at once if it did not.
                    let _ = renewer.revoke_lease(lease);
                    return;
                }
                let asked = Instant::now();
                match renewer.keep_alive(lease) {
                    Ok(()) => *renewed.confirmed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = asked,
                    Err(StoreError::LeaseExpired { .. }) => {
                        renewed.leading.store(false, Ordering::SeqCst);
                        return;
                    }
                    // Unconfirmed (etcd unreachable): tried again; the time to live decides.
                    Err(_) => {}
                }
            }
        });
        if spawned.is_err() {
            // No renewals: leading only for the lease's first time to live, as the clock says.
            tracing::warn!("could not start the leader's lease renewals");
        }
        Self { store, key, lease, revision, state, stop: Some(stop) }
    }

    /// The compare every write of the leader carries: its key, as it created it.
    pub fn fence(&self) -> Compare {
        Compare::ModRevision(self.key.clone(), self.revision)
    }

    /// Whether it still leads, as far as it knows: false once a renewal said the lease ended,
    /// or no renewal was confirmed for a time to live. Never true again after.
    pub fn is_leading(&self) -> bool {
        self.state.leading()
    }

    /// The lease the leadership key is bound to (to bind other keys to the leader's life).
    pub fn lease(&self) -> LeaseId {
        self.lease
    }

    /// A store whose every transaction carries [`Leadership::fence`].
    pub fn fenced(&self) -> FencedStore<S> {
        FencedStore {
            inner: self.store.clone(),
            key: self.key.clone(),
            revision: self.revision,
            state: Some(Arc::clone(&self.state)),
        }
    }

    /// Stops renewing, as a process paused or cut off would: the lease expires after its time
    /// to live. For fault drills and tests.
    pub fn pause_renewals(&self) {
        self.state.paused.store(true, Ordering::SeqCst);
    }

    /// Gives up leading: the lease is revoked and a standby leads at once. An error (the store
    /// unreachable) leaves the lease to expire after its time to live.
    pub fn resign(mut self) -> Result<(), StoreError> {
        self.state.leading.store(false, Ordering::SeqCst);
        self.stop.take();
        self.store.revoke_lease(self.lease)
    }
}

impl<S: Store> Drop for Leadership<S> {
    fn drop(&mut self) {
        self.state.leading.store(false, Ordering::SeqCst);
    }
}

/// A store whose every transaction is fenced by a leadership: it commits only while the
/// leadership key is the one the leader created. A transaction that fails because the fence no
/// longer holds is [`StoreError::NotLeader`] (not [`TxnOutcome::Failed`], which callers retry).
#[derive(Clone)]
pub struct FencedStore<S> {
    inner: S,
    key: String,
    revision: u64,
    /// The leader's own view, when made by [`Leadership::fenced`]: once it knows it does not
    /// lead, nothing is even sent.
    state: Option<Arc<State>>,
}

impl<S: Store> FencedStore<S> {
    /// `inner` fenced by the leadership key `key` as created at `revision` (what
    /// [`Leadership::fence`] compares).
    pub fn new(inner: S, key: &str, revision: u64) -> Self {
        Self { inner, key: key.to_owned(), revision, state: None }
    }

    fn not_leader(&self) -> StoreError {
        StoreError::NotLeader { key: self.key.clone() }
    }
}

impl<S: Store> Store for FencedStore<S> {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key)
    }

    fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64), StoreError> {
        self.inner.range(prefix)
    }

    fn txn(&self, mut txn: Txn) -> Result<TxnOutcome, StoreError> {
        if self.state.as_ref().is_some_and(|s| !s.leading()) {
            return Err(self.not_leader());
        }
        txn.compare.push(Compare::ModRevision(self.key.clone(), self.revision));
        match self.inner.txn(txn)? {
            TxnOutcome::Committed(revision) => Ok(TxnOutcome::Committed(revision)),
            // Which compare failed? The fence, if the key is not the leader's any more.
            TxnOutcome::Failed(revision) => match self.inner.get(&self.key)? {
                Some(kv) if kv.mod_revision == self.revision => Ok(TxnOutcome::Failed(revision)),
                _ => Err(self.not_leader()),
            },
        }
    }

    fn watch(&self, prefix: &str, after: u64) -> Result<Watcher, StoreError> {
        self.inner.watch(prefix, after)
    }

    fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.inner.grant_lease(ttl)
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.keep_alive(lease)
    }

    fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.revoke_lease(lease)
    }
}

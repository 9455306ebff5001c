//! The manager's store: keys and values with revisions and watches, the shape of etcd's API, so
//! that the embedded implementation ([`redb::RedbStore`], one file) and an etcd one can be swapped
//! without touching callers.
//!
//! Every change gets the next store-wide revision. A [`Txn`] applies its writes only if all its
//! comparisons hold (compare-and-swap on a key's modification revision: how two managers, or two
//! API requests, avoid overwriting each other). A watch on a prefix first replays the changes
//! after a given revision that the store still remembers, then delivers live ones, in revision
//! order, each exactly once.

pub mod etcd;
pub mod follow;
pub mod redb;

/// A lease: keys put under it ([`Op::PutLeased`]) are deleted when it expires (its holder stopped
/// renewing it with [`Store::keep_alive`] for its time to live) or is revoked. How a process
/// publishes what holds only while it lives: a leader's key, a router's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaseId(pub i64);

/// One stored key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key (UTF-8, `/`-separated by convention: `/v1/migrations/42`).
    pub key: String,
    /// The value (JSON by convention).
    pub value: Vec<u8>,
    /// Revision of the change that created the key.
    pub create_revision: u64,
    /// Revision of the last change to the key.
    pub mod_revision: u64,
}

/// A change, as a watch delivers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was created or changed.
    Put(KeyValue),
    /// A key was deleted.
    Delete {
        /// The key.
        key: String,
        /// The revision of the deletion.
        revision: u64,
    },
}

impl WatchEvent {
    /// The revision of the change.
    pub fn revision(&self) -> u64 {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }

    /// The key changed.
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }
}

/// A condition of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key exists and was last changed at exactly this revision.
    ModRevision(String, u64),
}

/// A write of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create or replace a key.
    Put(String, Vec<u8>),
    /// Delete a key (nothing happens if it does not exist).
    Delete(String),
    /// Create or replace a key bound to a lease: it is deleted when the lease ends. A later
    /// [`Op::Put`] of the key unbinds it.
    PutLeased(String, Vec<u8>, LeaseId),
}

/// Writes applied together, only if every comparison holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    /// Conditions.
    pub compare: Vec<Compare>,
    /// Writes.
    pub ops: Vec<Op>,
}

impl Txn {
    /// A transaction with no conditions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a condition.
    pub fn when(mut self, compare: Compare) -> Self {
        self.compare.push(compare);
        self
    }

    /// Adds a put.
    pub fn put(mut self, key: impl Into<String>, value: Vec<u8>) -> Self {
        self.ops.push(Op::Put(key.into(), value));
        self
    }

    /// Adds a put bound to `lease` (see [`Op::PutLeased`]).
    pub fn put_leased(mut self, key: impl Into<String>, value: Vec<u8>, lease: LeaseId) -> Self {
        self.ops.push(Op::PutLeased(key.into(), value, lease));
        self
    }

    /// Adds a delete.
    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.ops.push(Op::Delete(key.into()));
        self
    }
}

/// Writes that join the first transaction committed through [`Rider::commit`], under that
/// transaction's conditions and their own: how an idempotency record is written in the same
/// transaction as the operation it records, whichever of the inventory's operations that is.
#[derive(Debug)]
pub struct Rider {
    extra: Txn,
    committed: Option<u64>,
}

impl Rider {
    /// A rider of `extra`'s conditions and writes.
    pub fn new(extra: Txn) -> Self {
        Self { extra, committed: None }
    }

    /// The revision of the transaction it joined, once it has.
    pub fn committed(&self) -> Option<u64> {
        self.committed
    }

    /// Applies `txn` to `store`, joined by `rider`'s conditions and writes unless they already
    /// joined an earlier one; a transaction that fails (its conditions or the rider's) writes
    /// nothing, and the rider waits for the next.
    pub fn commit<S: Store>(
        rider: Option<&std::sync::Mutex<Rider>>,
        store: &S,
        mut txn: Txn,
    ) -> Result<TxnOutcome, StoreError> {
        let Some(rider) = rider else { return store.txn(txn) };
        // Held across the commit: two transactions of one operation must not both take it.
        let mut rider = rider.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if rider.committed.is_some() {
            return store.txn(txn);
        }
        txn.compare.extend(rider.extra.compare.iter().cloned());
        txn.ops.extend(rider.extra.ops.iter().cloned());
        let outcome = store.txn(txn)?;
        if let TxnOutcome::Committed(revision) = outcome {
            rider.committed = Some(revision);
        }
        Ok(outcome)
    }
}

/// What a transaction did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Every comparison held; the writes are durable at this revision.
    Committed(u64),
    /// A comparison failed; nothing was written (the store's revision then).
    Failed(u64),
}

/// Why the store could not do something.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be opened (path, permissions, a lock held by another process, a file
    /// that is not a store).
    #[error("store {path}: {detail}")]
    Open {
        /// Where.
        path: String,
        /// Why.
        detail: String,
    },
    /// Another process has the store open (or one that was killed is still exiting).
    #[error("store {path}: another process has it open")]
    Locked {
        /// Where.
        path: String,
    },
    /// A read or write failed.
    #[error("store: {what}: {detail}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The cause.
        detail: String,
    },
    /// The store could not be reached (every etcd member tried was down, cut off or without a
    /// leader, for longer than a request is retried): nothing is known to have been written;
    /// try again later.
    #[error("store: {what}: unreachable: {detail}")]
    Unavailable {
        /// What was being done.
        what: &'static str,
        /// The cause.
        detail: String,
    },
    /// A watch asked for changes older than the store remembers (or, on etcd, fell that far
    /// behind while following): the caller must read the current state again (range) and watch
    /// from the revision that read returned.
    #[error("store: revision {requested} is compacted (oldest kept: {oldest})")]
    Compacted {
        /// Revision asked for.
        requested: u64,
        /// Oldest revision still replayable.
        oldest: u64,
    },
    /// The lease expired or was revoked (or never existed): its keys are gone, and a
    /// transaction putting under it wrote nothing.
    #[error("store: lease {} expired", lease.0)]
    LeaseExpired {
        /// The lease (of a transaction, its first leased put's).
        lease: LeaseId,
    },
    /// A fenced write ([`crate::election::FencedStore`]) was refused because its writer no
    /// longer leads: the leadership key is gone or was created again by another candidate.
    /// Nothing was written; unlike [`TxnOutcome::Failed`] a retry cannot succeed.
    #[error("store: not the leader any more ({key})")]
    NotLeader {
        /// The leadership key.
        key: String,
    },
    /// The transaction has more operations than the store takes in one (etcd's
    /// `--max-txn-ops`, 128 by default). Nothing was written.
    #[error("store: a transaction of {ops} operations is more than the store takes")]
    TxnTooLarge {
        /// Operations (writes) of the transaction.
        ops: usize,
    },
    /// The transaction writes one key twice, which etcd refuses. Nothing was written.
    #[error("store: a transaction writes {key} twice")]
    DuplicateKey {
        /// The key.
        key: String,
    },
}

/// The store's interface. Implementations are cheap to clone handles onto shared state.
pub trait Store: Clone + Send + Sync + 'static {
    /// The value of one key.
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Every key starting with `prefix`, in key order, with the store's revision at the read.
    fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64), StoreError>;

    /// Applies a transaction atomically and durably.
    fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError>;

    /// Changes to keys starting with `prefix` after revision `after`: first those the store
    /// remembers, then live ones.
    fn watch(&self, prefix: &str, after: u64) -> Result<Watcher, StoreError>;

    /// A new lease that ends `ttl` after its last renewal (a store may round `ttl` up: etcd
    /// counts whole seconds, and at least its minimum).
    fn grant_lease(&self, ttl: std::time::Duration) -> Result<LeaseId, StoreError>;

    /// Renews `lease` for its time to live; [`StoreError::LeaseExpired`] once it ended (its
    /// keys are then gone).
    fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// Ends `lease` now, deleting its keys; a lease already ended is no error.
    fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError>;
}

/// A stream of changes to a prefix, read by a thread ([`Watcher::next_timeout`]) or a task
/// ([`Watcher::next`]: no thread waits for it). Dropping it ends the watch.
pub struct Watcher {
    receiver: flume::Receiver<WatchEvent>,
    /// Alive while the watcher is: the store forgets a watch whose token is gone without
    /// waiting for a change to fail to reach it (a watch on a key that never changes again).
    alive: std::sync::Arc<()>,
    /// Why the stream ended, when a store's watch task ends it (etcd compacted past it).
    failure: std::sync::Arc<std::sync::Mutex<Option<StoreError>>>,
}

impl Watcher {
    /// A watcher reading from `receiver`.
    pub(crate) fn new(receiver: flume::Receiver<WatchEvent>) -> Self {
        Self { receiver, alive: std::sync::Arc::new(()), failure: std::sync::Arc::default() }
    }

    /// Where a store's watch task leaves why it ended the stream.
    pub(crate) fn failure_slot(&self) -> std::sync::Arc<std::sync::Mutex<Option<StoreError>>> {
        std::sync::Arc::clone(&self.failure)
    }

    /// Why the store ended this watch, once it has ([`StoreError::Compacted`]: re-list and
    /// re-watch); `None` while it runs. Events sent before the end are still read first.
    pub fn failure(&self) -> Option<StoreError> {
        self.failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }

    /// What the store keeps to tell whether the watcher is still there.
    pub(crate) fn liveness(&self) -> std::sync::Weak<()> {
        std::sync::Arc::downgrade(&self.alive)
    }

    /// The next change, for a task: `None` once the store has let go of the watch (shut down,
    /// or ended it: see [`Watcher::failure`]).
    pub async fn next(&self) -> Option<WatchEvent> {
        self.receiver.recv_async().await.ok()
    }

    /// The next change, waiting up to `timeout`; `None` when nothing came (or the store is gone).
    pub fn next_timeout(&self, timeout: std::time::Duration) -> Option<WatchEvent> {
        self.receiver.recv_timeout(timeout).ok()
    }

    /// The next change within `timeout`, telling a quiet stream from one that ended (the
    /// store's task let go of it: see [`Watcher::failure`]).
    pub(crate) fn next_or_end(&self, timeout: std::time::Duration) -> Next {
        match self.receiver.recv_timeout(timeout) {
            Ok(event) => Next::Event(event),
            Err(flume::RecvTimeoutError::Timeout) => Next::Quiet,
            Err(flume::RecvTimeoutError::Disconnected) => Next::Ended,
        }
    }

    /// The next change if one is waiting.
    pub fn try_next(&self) -> Option<WatchEvent> {
        self.receiver.try_recv().ok()
    }
}

/// What [`Watcher::next_or_end`] found.
pub(crate) enum Next {
    /// A change.
    Event(WatchEvent),
    /// Nothing within the time.
    Quiet,
    /// The stream ended.
    Ended,
}

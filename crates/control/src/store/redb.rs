//! The embedded store: one redb file. Each transaction is one write transaction committed with
//! fsync (redb's default durability), so a change a caller was told about survives a crash. A
//! log of recent changes lets a watcher replay what it missed (a manager that restarts, a router
//! that reconnects); older entries are compacted. Leases are the process's ([`leases`]).

mod leases;

use flume::Sender;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Compare, KeyValue, LeaseId, Op, Store, StoreError, Txn, TxnOutcome, WatchEvent, Watcher};
use leases::Leases;

/// Keys to (create revision, modification revision, value).
const KV: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("kv");
/// Changes by revision: kind (0 put, 1 delete), key length (u32), key, value.
const LOG: TableDefinition<'_, (u64, u32), &[u8]> = TableDefinition::new("log");
/// `revision` (the last one) and `oldest` (the oldest replayable).
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// Keys put under a lease, to the lease: what a store opened again deletes (leases are the
/// process's, and that process is gone).
const LEASED: TableDefinition<'_, &str, i64> = TableDefinition::new("leased");

/// Changes kept for replay, by default.
pub const LOG_KEEP: u64 = 100_000;

/// The embedded store (a handle: clones share the file and the watchers).
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    /// Revisions kept replayable.
    log_keep: u64,
    /// Held while a transaction commits and its events are delivered, and while a watch
    /// replays, so that every watcher sees every change once and in order.
    writer: Mutex<Vec<Watch>>,
    /// The leases (locked after `writer` when both are).
    leases: Arc<Leases>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.leases.lock().closed = true;
        self.leases.wake();
    }
}

/// A live watch: its prefix, where its events go, and whether its [`Watcher`] still exists.
struct Watch {
    prefix: String,
    sender: Sender<WatchEvent>,
    alive: Weak<()>,
}

fn io(what: &'static str) -> impl Fn(&dyn std::fmt::Display) -> StoreError {
    move |e| StoreError::Io { what, detail: e.to_string() }
}

fn encode_kv(create: u64, modified: u64, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + value.len());
    v.extend_from_slice(&create.to_be_bytes());
    v.extend_from_slice(&modified.to_be_bytes());
    v.extend_from_slice(value);
    v
}

fn decode_kv(key: &str, bytes: &[u8]) -> Result<KeyValue, StoreError> {
    if bytes.len() < 16 {
        return Err(StoreError::Io { what: "reading a key", detail: format!("{key}: record too short") });
    }
    let word = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
    Ok(KeyValue { key: key.to_owned(), value: bytes[16..].to_vec(), create_revision: word(0), mod_revision: word(8) })
}

fn encode_event(event: &WatchEvent) -> Vec<u8> {
    let (kind, key, value) = match event {
        WatchEvent::Put(kv) => (0u8, kv.key.as_str(), encode_kv(kv.create_revision, kv.mod_revision, &kv.value)),
        WatchEvent::Delete { key, .. } => (1u8, key.as_str(), Vec::new()),
    };
    let mut v = vec![kind];
    v.extend_from_slice(&(key.len() as u32).to_be_bytes());
    v.extend_from_slice(key.as_bytes());
    v.extend_from_slice(&value);
    v
}

fn decode_event(revision: u64, bytes: &[u8]) -> Result<WatchEvent, StoreError> {
    let corrupt = || StoreError::Io { what: "reading the change log", detail: format!("entry {revision} is corrupt") };
    let (&kind, rest) = bytes.split_first().ok_or_else(corrupt)?;
    let len = rest.get(..4).ok_or_else(corrupt)?;
    let len = u32::from_be_bytes(len.try_into().map_err(|_| corrupt())?) as usize;
    let key = rest.get(4..4 + len).ok_or_else(corrupt)?;
    let key = std::str::from_utf8(key).map_err(|_| corrupt())?;
    match kind {
        0 => Ok(WatchEvent::Put(decode_kv(key, &rest[4 + len..])?)),
        1 => Ok(WatchEvent::Delete { key: key.to_owned(), revision }),
        _ => Err(corrupt()),
    }
}

impl RedbStore {
    /// Opens the store at `path`, creating it if missing (its directory must exist).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_keeping(path, LOG_KEEP)
    }

    /// Opens the store keeping the last `log_keep` revisions replayable for watches.
    pub fn open_keeping(path: &Path, log_keep: u64) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked { path: path.display().to_string() },
            e => StoreError::Open { path: path.display().to_string(), detail: e.to_string() },
        })?;
        let inner = Inner { db, log_keep: log_keep.max(1), writer: Mutex::new(Vec::new()), leases: Arc::default() };
        let store = Self { inner: Arc::new(inner) };
        // Create the tables, so that a fresh store reads as empty.
        let tx = store.inner.db.begin_write().map_err(|e| io("opening")(&e))?;
        {
            tx.open_table(KV).map_err(|e| io("opening")(&e))?;
            tx.open_table(LOG).map_err(|e| io("opening")(&e))?;
            tx.open_table(META).map_err(|e| io("opening")(&e))?;
            tx.open_table(LEASED).map_err(|e| io("opening")(&e))?;
        }
        tx.commit().map_err(|e| io("opening")(&e))?;
        // The leases of the process that had the file before are gone, so are their keys.
        let orphans = {
            let tx = store.inner.db.begin_read().map_err(|e| io("opening")(&e))?;
            let leased = tx.open_table(LEASED).map_err(|e| io("opening")(&e))?;
            let mut keys = Vec::new();
            for entry in leased.iter().map_err(|e| io("opening")(&e))? {
                keys.push(Op::Delete(entry.map_err(|e| io("opening")(&e))?.0.value().to_owned()));
            }
            keys
        };
        if !orphans.is_empty() {
            store.apply(&mut store.writer(), Txn { compare: Vec::new(), ops: orphans })?;
        }
        Ok(store)
    }

    /// Watches the store delivers to (a dropped [`Watcher`] is forgotten at the next write or
    /// watch).
    pub fn open_watches(&self) -> usize {
        self.writer().len()
    }

    fn writer(&self) -> MutexGuard<'_, Vec<Watch>> {
        // A panic while holding the lock cannot leave the watcher list inconsistent.
        self.inner.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn meta(table: &impl ReadableTable<&'static str, u64>, name: &str) -> Result<u64, StoreError> {
        Ok(table.get(name).map_err(|e| io("reading the revision")(&e))?.map_or(0, |v| v.value()))
    }

    /// Applies `txn` holding the writer lock (`watchers`): the compares, then the leases of its
    /// leased puts (alive, else nothing is written), then the writes, durably, then the events.
    fn apply(&self, watchers: &mut Vec<Watch>, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let tx = self.inner.db.begin_write().map_err(|e| io("writing")(&e))?;
        let mut events = Vec::new();
        let revision;
        // Held to the commit, so that no lease ends between its check and its keys' writing.
        let mut leases = self.inner.leases.lock();
        // Keys bound to (Some) or unbound from (None) a lease, told to the table once durable.
        let mut bindings: Vec<(String, Option<LeaseId>, Option<LeaseId>)> = Vec::new();
        {
            let mut kv = tx.open_table(KV).map_err(|e| io("writing")(&e))?;
            let mut meta = tx.open_table(META).map_err(|e| io("writing")(&e))?;
            let mut leased = tx.open_table(LEASED).map_err(|e| io("writing")(&e))?;
            let current = Self::meta(&meta, "revision")?;
            for compare in &txn.compare {
                let held = match compare {
                    Compare::Absent(key) => kv.get(key.as_str()).map_err(|e| io("reading")(&e))?.is_none(),
                    Compare::ModRevision(key, rev) => match kv.get(key.as_str()).map_err(|e| io("reading")(&e))? {
                        Some(v) => decode_kv(key, v.value())?.mod_revision == *rev,
                        None => false,
                    },
                };
                if !held {
                    return Ok(TxnOutcome::Failed(current));
                }
            }
            // As etcd: a lease is checked only when the comparisons held.
            let now = Instant::now();
            for op in &txn.ops {
                if let Op::PutLeased(_, _, lease) = op
                    && !leases.alive(*lease, now)
                {
                    return Err(StoreError::LeaseExpired { lease: *lease });
                }
            }
            revision = current + 1;
            for op in &txn.ops {
                let (key, value, lease) = match op {
                    Op::Put(key, value) => (key, value, None),
                    Op::PutLeased(key, value, lease) => (key, value, Some(*lease)),
                    Op::Delete(key) => {
                        if kv.remove(key.as_str()).map_err(|e| io("writing")(&e))?.is_some() {
                            events.push(WatchEvent::Delete { key: key.clone(), revision });
                        }
                        if let Some(old) = leased.remove(key.as_str()).map_err(|e| io("writing")(&e))? {
                            bindings.push((key.clone(), Some(LeaseId(old.value())), None));
                        }
                        continue;
                    }
                };
                let create = match kv.get(key.as_str()).map_err(|e| io("reading")(&e))? {
                    Some(old) => decode_kv(key, old.value())?.create_revision,
                    None => revision,
                };
                kv.insert(key.as_str(), encode_kv(create, revision, value).as_slice())
                    .map_err(|e| io("writing")(&e))?;
                let old = match lease {
                    Some(lease) => leased.insert(key.as_str(), lease.0),
                    None => leased.remove(key.as_str()),
                };
                let old = old.map_err(|e| io("writing")(&e))?.map(|v| LeaseId(v.value()));
                if old != lease {
                    bindings.push((key.clone(), old, lease));
                }
                events.push(WatchEvent::Put(KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                    create_revision: create,
                    mod_revision: revision,
                }));
            }
            let mut log = tx.open_table(LOG).map_err(|e| io("writing")(&e))?;
            for (i, event) in events.iter().enumerate() {
                log.insert((revision, i as u32), encode_event(event).as_slice()).map_err(|e| io("writing")(&e))?;
            }
            // Compaction: keep the last `log_keep` revisions replayable.
            let oldest = Self::meta(&meta, "oldest")?.max(1);
            let keep_from = (revision + 1).saturating_sub(self.inner.log_keep).max(1);
            if keep_from > oldest {
                log.retain_in((oldest, 0)..(keep_from, 0), |_, _| false).map_err(|e| io("compacting")(&e))?;
                meta.insert("oldest", keep_from).map_err(|e| io("writing")(&e))?;
            } else if Self::meta(&meta, "oldest")? == 0 {
                meta.insert("oldest", 1).map_err(|e| io("writing")(&e))?;
            }
            meta.insert("revision", revision).map_err(|e| io("writing")(&e))?;
        }
        tx.commit().map_err(|e| io("committing")(&e))?;
        for (key, old, new) in bindings {
            if let Some(old) = old {
                leases.detach(old, &key);
            }
            if let Some(new) = new {
                leases.attach(new, &key);
            }
        }
        drop(leases);
        // Durable: now the watchers may hear of it. A watcher that is gone is dropped.
        watchers.retain(|w| {
            w.alive.strong_count() > 0
                && events
                    .iter()
                    .filter(|e| e.key().starts_with(w.prefix.as_str()))
                    .all(|e| w.sender.send(e.clone()).is_ok())
        });
        Ok(TxnOutcome::Committed(revision))
    }

    /// Ends `ids` (if `expired_only`, those still expired: a renewal may have come first) and
    /// deletes their keys in one transaction.
    fn end_leases(&self, ids: &[LeaseId], expired_only: bool) -> Result<(), StoreError> {
        let mut watchers = self.writer();
        let now = Instant::now();
        let keys: Vec<Op> = {
            let mut leases = self.inner.leases.lock();
            ids.iter().flat_map(|id| leases.end(*id, expired_only, now)).map(Op::Delete).collect()
        };
        if !keys.is_empty() {
            self.apply(&mut watchers, Txn { compare: Vec::new(), ops: keys })?;
        }
        Ok(())
    }
}

impl Store for RedbStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let tx = self.inner.db.begin_read().map_err(|e| io("reading")(&e))?;
        let table = tx.open_table(KV).map_err(|e| io("reading")(&e))?;
        match table.get(key).map_err(|e| io("reading")(&e))? {
            Some(v) => Ok(Some(decode_kv(key, v.value())?)),
            None => Ok(None),
        }
    }

    fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64), StoreError> {
        let tx = self.inner.db.begin_read().map_err(|e| io("reading")(&e))?;
        let table = tx.open_table(KV).map_err(|e| io("reading")(&e))?;
        let meta = tx.open_table(META).map_err(|e| io("reading")(&e))?;
        let revision = Self::meta(&meta, "revision")?;
        let mut out = Vec::new();
        for entry in table.range(prefix..).map_err(|e| io("reading")(&e))? {
            let (k, v) = entry.map_err(|e| io("reading")(&e))?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push(decode_kv(k.value(), v.value())?);
        }
        Ok((out, revision))
    }

    fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        self.apply(&mut self.writer(), txn)
    }

    fn watch(&self, prefix: &str, after: u64) -> Result<Watcher, StoreError> {
        let mut watchers = self.writer();
        let (sender, receiver) = flume::unbounded();
        let tx = self.inner.db.begin_read().map_err(|e| io("reading")(&e))?;
        let meta = tx.open_table(META).map_err(|e| io("reading")(&e))?;
        let (current, oldest) = (Self::meta(&meta, "revision")?, Self::meta(&meta, "oldest")?.max(1));
        if after < current && after + 1 < oldest {
            return Err(StoreError::Compacted { requested: after + 1, oldest });
        }
        let log = tx.open_table(LOG).map_err(|e| io("reading")(&e))?;
        for entry in log.range((after + 1, 0)..).map_err(|e| io("reading")(&e))? {
            let (k, v) = entry.map_err(|e| io("reading")(&e))?;
            let event = decode_event(k.value().0, v.value())?;
            if event.key().starts_with(prefix) {
                // The receiver is ours and alive: this cannot fail.
                let _ = sender.send(event);
            }
        }
        let watcher = Watcher::new(receiver);
        // Watches of keys no longer written (a finished migration's stream) are forgotten here too.
        watchers.retain(|w| w.alive.strong_count() > 0);
        watchers.push(Watch { prefix: prefix.to_owned(), sender, alive: watcher.liveness() });
        Ok(watcher)
    }

    fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let mut leases = self.inner.leases.lock();
        let id = leases.grant(ttl, Instant::now());
        if !leases.reaper && !leases.closed {
            let (inner, table) = (Arc::downgrade(&self.inner), Arc::clone(&self.inner.leases));
            std::thread::Builder::new()
                .name("store-leases".into())
                .spawn(move || reap(&inner, &table))
                .map_err(|e| io("starting the lease reaper")(&e))?;
            leases.reaper = true;
        }
        drop(leases);
        self.inner.leases.wake();
        Ok(id)
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        let renewed = self.inner.leases.lock().renew(lease, Instant::now());
        match renewed {
            Some(true) => Ok(()),
            // Expired, the reaper not there yet: end it here, so that its keys are gone when
            // the caller hears it expired.
            Some(false) => {
                self.end_leases(&[lease], true)?;
                Err(StoreError::LeaseExpired { lease })
            }
            None => Err(StoreError::LeaseExpired { lease }),
        }
    }

    fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.end_leases(&[lease], false)
    }
}

/// The reaper: ends each lease at its deadline. It holds the store only while ending leases, so
/// that dropping the last handle closes the file.
fn reap(inner: &Weak<Inner>, leases: &Leases) {
    let mut table = leases.lock();
    loop {
        if table.closed {
            return;
        }
        let now = Instant::now();
        let expired = table.expired(now);
        if expired.is_empty() {
            let wait = table.next_in(now);
            table = leases.wait(table, wait);
            continue;
        }
        drop(table);
        let Some(inner) = inner.upgrade() else { return };
        let failed = RedbStore { inner }.end_leases(&expired, true).is_err();
        table = leases.lock();
        if failed {
            // A write that failed (a full disk): try again soon, not in a tight loop.
            table = leases.wait(table, Duration::from_millis(200));
        }
    }
}

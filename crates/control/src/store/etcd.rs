//! The distributed store: etcd v3 through the etcd-client crate. Keys live under a key prefix
//! (so that one etcd can hold more than ipshadow); compares, ranges and watches map one to one
//! onto etcd's.
//!
//! Revisions: an empty etcd is at revision 1 and its first change gets 2, where the trait's
//! stores start at 0 and give 1 (callers read 0 as "nothing yet"). This store reports etcd's
//! revisions minus one, both ways, so that revision arithmetic is the same on every store.
//!
//! etcd refuses what redb accepts in two cases: a transaction with more operations than its
//! `--max-txn-ops` (128 by default), [`StoreError::TxnTooLarge`], and one that writes a key
//! twice, [`StoreError::DuplicateKey`]. Nothing is written then.
//!
//! Leases are etcd's. Their time to live is in whole seconds (rounded up here), and etcd raises
//! a shorter one to its minimum: 1.5 election timeouts rounded up to a second, 2 s with the
//! default flags (`--heartbeat-interval 100`, `--election-timeout 1000`). An expired lease ends
//! at etcd's next expiry check (every 500 ms), and a new etcd leader extends every lease by an
//! election timeout: keys may outlive a lease's time to live by that much.
//!
//! When etcd's leader member dies, the others elect another within about 2 s with default flags
//! (measured by the store tests); a write proposed before they noticed waits for etcd's request
//! timeout (5 s and two election timeouts: 7 s) and fails, and is then retried by the caller.
//!
//! The [`Store`] trait is synchronous for now: each handle owns a small tokio runtime, calls
//! wait for their future on it, and each watch is a task on it. The trait becomes async in a
//! later step (issue 14), and this runtime then goes.

use flume::Sender;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use etcd_client::{Client, GetOptions, WatchOptions};

use super::{Compare, KeyValue, LeaseId, Op, Store, StoreError, Txn, TxnOutcome, WatchEvent, Watcher};

/// The key prefix ipshadow keeps its keys under on etcd when it is given none (`serve --store
/// etcd://host:port` without a path, and the lab's cluster).
pub const DEFAULT_ETCD_PREFIX: &str = "/ipshadow";

/// How long a watch that lost its connection waits before watching again, at most.
const RECONNECT_MAX: Duration = Duration::from_secs(1);
/// How often an idle watch task checks whether its [`Watcher`] is still there.
const LIVENESS_EVERY: Duration = Duration::from_millis(500);

/// A store on etcd (a handle: clones share the connection and the runtime).
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    client: Client,
    key_prefix: String,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle may be dropped on an async task: a blocking shutdown would panic there.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// How long connecting to a member may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one request may take (a cluster electing a leader answers within about a second).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an idle connection is pinged, and how long the answer may take.
const PING_EVERY: Duration = Duration::from_secs(1);
/// See [`PING_EVERY`].
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one attempt to renew a lease may take before it is sent again (to another member,
/// as the balancer picks): far below the shortest lease a part holds (3 s).
const RENEWAL_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a request is tried again while the members it reached were unreachable.
const RETRY_WITHIN: Duration = Duration::from_secs(3);

/// Whether a failed request may be sent again: the member it went to was unreachable (killed,
/// cut off, without a leader); the client's balancer sends the next one to another member. A
/// write is sent again only when it never left (the connection was refused or not made), so
/// that it cannot be applied twice.
fn worth_retrying(e: &etcd_client::Error, idempotent: bool) -> bool {
    let unavailable = match e {
        etcd_client::Error::GRpcStatus(status) => match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => true,
            // What tonic makes of the request timeout (a member cut off, every member down).
            tonic::Code::Cancelled => status.message() == "Timeout expired",
            _ => false,
        },
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    };
    unavailable && (idempotent || e.to_string().contains("connect"))
}

/// Runs `attempt` until it succeeds, fails for a reason a retry cannot mend, or
/// [`RETRY_WITHIN`] has passed.
async fn retrying<T, F: Future<Output = Result<T, etcd_client::Error>>>(
    idempotent: bool,
    mut attempt: impl FnMut() -> F,
) -> Result<T, etcd_client::Error> {
    let started = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(20);
    loop {
        match attempt().await {
            Err(e) if worth_retrying(&e, idempotent) && started.elapsed() < RETRY_WITHIN => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

fn io(what: &'static str) -> impl Fn(etcd_client::Error) -> StoreError {
    move |e| {
        // Unreachable after the retries: the caller may try later (the API answers 503).
        if worth_retrying(&e, true) {
            StoreError::Unavailable { what, detail: e.to_string() }
        } else {
            StoreError::Io { what, detail: e.to_string() }
        }
    }
}

/// Whether etcd said the lease does not exist (any more).
fn lease_not_found(e: &etcd_client::Error) -> bool {
    e.to_string().contains("lease not found")
}

/// The first key `txn` writes twice.
fn duplicate_key(txn: &Txn) -> Option<String> {
    let mut seen = std::collections::HashSet::new();
    txn.ops.iter().map(op_key).find(|key| !seen.insert(*key)).map(str::to_owned)
}

fn op_key(op: &Op) -> &str {
    match op {
        Op::Put(key, _) | Op::Delete(key) | Op::PutLeased(key, _, _) => key,
    }
}

/// etcd's revision as the trait's (see the module's note); etcd's are never below 1.
fn ours(etcd_revision: i64) -> u64 {
    u64::try_from(etcd_revision).unwrap_or(0).saturating_sub(1)
}

/// The trait's revision as etcd's.
fn theirs(revision: u64) -> i64 {
    i64::try_from(revision.saturating_add(1)).unwrap_or(i64::MAX)
}

impl EtcdStore {
    /// Connects to etcd at `endpoints` (`http://host:port`), keeping every key under
    /// `key_prefix` (`""` for none, else like `/ipshadow`, no trailing `/`). Keys, and the
    /// prefixes ranged and watched, start with `/`: then two stores stay apart even when one's
    /// key prefix starts the other's (`/a`, `/ab`).
    pub fn connect(endpoints: &[String], key_prefix: &str) -> Result<Self, StoreError> {
        let open = |detail: String| StoreError::Open { path: endpoints.join(","), detail };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-store")
            .enable_all()
            .build()
            .map_err(|e| open(e.to_string()))?;
        // A member killed refuses connections, one cut off answers nothing: connections and
        // requests time out, idle connections are pinged, and a member that lost its cluster's
        // leader refuses requests and ends watches (they resume on another member).
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(PING_EVERY, PING_TIMEOUT)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let connect = Client::connect(endpoints.to_vec(), Some(options));
        let client = runtime.block_on(connect).map_err(|e| open(e.to_string()))?;
        let inner = Inner { runtime: Some(runtime), client, key_prefix: key_prefix.to_owned() };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// Compacts etcd's history up to (not including) the trait's revision `revision`: watches
    /// from before it then get [`StoreError::Compacted`]. What an operator's etcd does on its
    /// own schedule (`--auto-compaction-*`); here for tests and tools.
    pub fn compact(&self, revision: u64) -> Result<(), StoreError> {
        let mut client = self.inner.client.clone();
        let options = etcd_client::CompactionOptions::new().with_physical();
        self.run(async move { client.compact(theirs(revision), Some(options)).await })?.map_err(io("compacting"))?;
        Ok(())
    }

    /// Runs `future` on the store's runtime and waits for it. Spawned, not `block_on`: callers
    /// may be on another runtime's thread, where `block_on` panics.
    fn run<T: Send + 'static>(&self, future: impl Future<Output = T> + Send + 'static) -> Result<T, StoreError> {
        let gone = || StoreError::Io { what: "reaching etcd", detail: "the store's runtime is gone".into() };
        let runtime = self.inner.runtime.as_ref().ok_or_else(gone)?;
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let _ = sender.send(future.await);
        });
        receiver.recv().map_err(|_| gone())
    }

    fn key_value(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
        let key = kv.key_str().map_err(io("reading a key"))?;
        let key = key.strip_prefix(self.inner.key_prefix.as_str()).unwrap_or(key);
        Ok(KeyValue {
            key: key.to_owned(),
            value: kv.value().to_vec(),
            create_revision: ours(kv.create_revision()),
            mod_revision: ours(kv.mod_revision()),
        })
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.inner.key_prefix)
    }
}

impl Store for EtcdStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let client = self.inner.client.clone();
        let key = self.full(key);
        let response = self
            .run(async move {
                retrying(true, || {
                    let (mut client, key) = (client.clone(), key.clone());
                    async move { client.get(key, None).await }
                })
                .await
            })?
            .map_err(io("reading"))?;
        response.kvs().first().map(|kv| self.key_value(kv)).transpose()
    }

    fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64), StoreError> {
        let client = self.inner.client.clone();
        let prefix = self.full(prefix);
        let response = self
            .run(async move {
                retrying(true, || {
                    let (mut client, prefix) = (client.clone(), prefix.clone());
                    async move { client.get(prefix, Some(GetOptions::new().with_prefix())).await }
                })
                .await
            })?
            .map_err(io("reading"))?;
        let revision = response.header().map_or(0, |h| ours(h.revision()));
        let kvs = response.kvs().iter().map(|kv| self.key_value(kv)).collect::<Result<_, _>>()?;
        Ok((kvs, revision))
    }

    fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        use etcd_client::{CompareOp, TxnOp};
        let compares: Vec<_> = txn
            .compare
            .iter()
            .map(|c| match c {
                // A key that does not exist has version 0 (etcd's own idiom for "absent").
                Compare::Absent(key) => etcd_client::Compare::version(self.full(key), CompareOp::Equal, 0),
                Compare::ModRevision(key, revision) => {
                    etcd_client::Compare::mod_revision(self.full(key), CompareOp::Equal, theirs(*revision))
                }
            })
            .collect();
        let ops: Vec<_> = txn
            .ops
            .iter()
            .map(|op| match op {
                Op::Put(key, value) => TxnOp::put(self.full(key), value.clone(), None),
                Op::Delete(key) => TxnOp::delete(self.full(key), None),
                Op::PutLeased(key, value, lease) => {
                    TxnOp::put(self.full(key), value.clone(), Some(etcd_client::PutOptions::new().with_lease(lease.0)))
                }
            })
            .collect();
        let client = self.inner.client.clone();
        let request = etcd_client::Txn::new().when(compares).and_then(ops);
        let response = self
            .run(async move {
                retrying(false, || {
                    let (mut client, request) = (client.clone(), request.clone());
                    async move { client.txn(request).await }
                })
                .await
            })?
            .map_err(|e| {
                let detail = e.to_string();
                let first_lease = txn.ops.iter().find_map(|op| match op {
                    Op::PutLeased(_, _, lease) => Some(*lease),
                    _ => None,
                });
                match first_lease {
                    Some(lease) if lease_not_found(&e) => StoreError::LeaseExpired { lease },
                    _ if detail.contains("too many operations in txn request") => {
                        StoreError::TxnTooLarge { ops: txn.ops.len() }
                    }
                    _ if detail.contains("duplicate key given in txn request") => {
                        StoreError::DuplicateKey { key: duplicate_key(&txn).unwrap_or_default() }
                    }
                    _ => io("writing")(e),
                }
            })?;
        let revision = response.header().map_or(0, |h| ours(h.revision()));
        Ok(if response.succeeded() { TxnOutcome::Committed(revision) } else { TxnOutcome::Failed(revision) })
    }

    fn watch(&self, prefix: &str, after: u64) -> Result<Watcher, StoreError> {
        let full = self.full(prefix);
        let start = theirs(after.saturating_add(1));
        let mut client = self.inner.client.clone();
        let key = full.clone();
        // Opened here, not in the task, so that a compacted start is this call's error.
        let opened = self.run(async move {
            let options = WatchOptions::new().with_prefix().with_start_revision(start);
            let (watcher, mut stream) = client.watch(key, Some(options)).await?;
            // A watch from a compacted revision is cancelled at once; check with a range at
            // that revision (cheap: count only) instead of waiting for what may never come.
            let probe = GetOptions::new().with_prefix().with_revision(start).with_count_only();
            let compacted = match client.get(full.clone(), Some(probe)).await {
                Err(e) if e.to_string().contains("compacted") => match stream.message().await? {
                    Some(response) => Some(response.compact_revision()),
                    None => Some(0),
                },
                _ => None,
            };
            Ok::<_, etcd_client::Error>((watcher, stream, compacted))
        })?;
        let (etcd_watcher, stream, compacted) = opened.map_err(io("watching"))?;
        if let Some(oldest) = compacted {
            return Err(StoreError::Compacted { requested: after.saturating_add(1), oldest: ours(oldest) });
        }
        let (sender, receiver) = flume::unbounded();
        let watcher = Watcher::new(receiver);
        let task = WatchTask {
            store: self.clone(),
            prefix: self.full(prefix),
            next: start,
            sender,
            alive: watcher.liveness(),
            failure: watcher.failure_slot(),
        };
        let runtime = self
            .inner
            .runtime
            .as_ref()
            .ok_or_else(|| StoreError::Io { what: "watching", detail: "the store's runtime is gone".into() })?;
        runtime.spawn(task.run(etcd_watcher, stream));
        Ok(watcher)
    }

    fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        // Whole seconds, rounded up: never shorter than asked.
        let seconds = i64::try_from(ttl.as_millis().div_ceil(1000)).unwrap_or(i64::MAX).max(1);
        let client = self.inner.client.clone();
        let response = self
            .run(async move {
                retrying(true, || {
                    let mut client = client.clone();
                    async move { client.lease_grant(seconds, None).await }
                })
                .await
            })?
            .map_err(io("granting a lease"))?;
        Ok(LeaseId(response.id()))
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        let client = self.inner.client.clone();
        // One renewal: the keep-alive stream's first answer (a time to live of 0, an error
        // here, for a lease that ended), then the stream is dropped.
        match self.run(async move {
            retrying(true, || {
                let mut client = client.clone();
                async move {
                    // A member cut off answers nothing: this attempt gives up well within a
                    // lease's time and the next goes to another member (a renewal is idempotent).
                    match tokio::time::timeout(RENEWAL_ATTEMPT_TIMEOUT, client.lease_keep_alive(lease.0)).await {
                        Ok(answer) => answer,
                        Err(_) => {
                            Err(etcd_client::Error::GRpcStatus(tonic::Status::deadline_exceeded("renewal unanswered")))
                        }
                    }
                }
            })
            .await
            .map(|_| ())
        })? {
            Ok(()) => Ok(()),
            Err(e) if lease_not_found(&e) => Err(StoreError::LeaseExpired { lease }),
            Err(e) => Err(io("renewing a lease")(e)),
        }
    }

    fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        let client = self.inner.client.clone();
        match self.run(async move {
            retrying(true, || {
                let mut client = client.clone();
                async move { client.lease_revoke(lease.0).await }
            })
            .await
            .map(|_| ())
        })? {
            Err(e) if !lease_not_found(&e) => Err(io("revoking a lease")(e)),
            _ => Ok(()),
        }
    }
}

/// One watch's task: delivers etcd's events in order and, when the connection breaks, watches
/// again from the revision after the last one delivered, so nothing is lost or repeated.
struct WatchTask {
    store: EtcdStore,
    prefix: String,
    /// etcd revision to watch from when watching again.
    next: i64,
    sender: Sender<WatchEvent>,
    alive: Weak<()>,
    failure: Arc<Mutex<Option<StoreError>>>,
}

impl WatchTask {
    async fn run(mut self, mut watcher: etcd_client::Watcher, mut stream: etcd_client::WatchStream) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.follow(&mut stream).await {
                Ended::WatcherGone => {
                    let _ = watcher.cancel().await;
                    return;
                }
                Ended::Compacted(oldest) => {
                    let requested = ours(self.next);
                    self.fail(StoreError::Compacted { requested, oldest: ours(oldest) });
                    return;
                }
                Ended::Broken => {}
            }
            // Watch again until etcd answers (a restart, a partition), unless nobody listens.
            loop {
                if self.alive.strong_count() == 0 {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_MAX);
                let options = WatchOptions::new().with_prefix().with_start_revision(self.next);
                let mut client = self.store.inner.client.clone();
                if let Ok((w, s)) = client.watch(self.prefix.clone(), Some(options)).await {
                    (watcher, stream) = (w, s);
                    backoff = Duration::from_millis(50);
                    break;
                }
            }
        }
    }

    /// Delivers events until the stream ends, the watcher is dropped or etcd compacted past us.
    async fn follow(&mut self, stream: &mut etcd_client::WatchStream) -> Ended {
        let mut tick = tokio::time::interval(LIVENESS_EVERY);
        loop {
            let message = tokio::select! {
                message = stream.message() => message,
                _ = tick.tick() => {
                    if self.alive.strong_count() == 0 {
                        return Ended::WatcherGone;
                    }
                    continue;
                }
            };
            let response = match message {
                Ok(Some(response)) => response,
                Ok(None) | Err(_) => return Ended::Broken,
            };
            if response.compact_revision() != 0 {
                return Ended::Compacted(response.compact_revision());
            }
            if response.canceled() {
                return Ended::Broken;
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let delivered = match event.event_type() {
                    etcd_client::EventType::Put => match self.store.key_value(kv) {
                        Ok(kv) => WatchEvent::Put(kv),
                        Err(e) => {
                            self.fail(e);
                            return Ended::WatcherGone;
                        }
                    },
                    etcd_client::EventType::Delete => {
                        let key = String::from_utf8_lossy(kv.key());
                        let key = key.strip_prefix(self.store.inner.key_prefix.as_str()).unwrap_or(&key);
                        WatchEvent::Delete { key: key.to_owned(), revision: ours(kv.mod_revision()) }
                    }
                };
                if self.sender.send(delivered).is_err() {
                    return Ended::WatcherGone;
                }
                self.next = self.next.max(kv.mod_revision() + 1);
            }
        }
    }

    fn fail(&self, error: StoreError) {
        *self.failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(error);
    }
}

/// Why a watch stream stopped delivering.
enum Ended {
    /// Nobody listens any more.
    WatcherGone,
    /// etcd compacted past the next revision (etcd's revision, the oldest kept).
    Compacted(i64),
    /// The connection broke or etcd cancelled the watch: watch again.
    Broken,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request that timed out (no member answered) is the store being unavailable (the API
    /// answers 503, not 500): tried again when that cannot apply it twice.
    #[test]
    fn a_timed_out_request_is_unavailable_and_retried_only_when_idempotent() {
        let timed_out = || etcd_client::Error::GRpcStatus(tonic::Status::cancelled("Timeout expired"));
        assert!(worth_retrying(&timed_out(), true));
        assert!(!worth_retrying(&timed_out(), false));
        assert!(matches!(io("reading")(timed_out()), StoreError::Unavailable { .. }));
        let refused = etcd_client::Error::GRpcStatus(tonic::Status::unavailable("error trying to connect"));
        assert!(worth_retrying(&refused, false), "a write never sent is sent again");
        let cancelled = etcd_client::Error::GRpcStatus(tonic::Status::cancelled("by the caller"));
        assert!(matches!(io("reading")(cancelled), StoreError::Io { .. }));
    }
}

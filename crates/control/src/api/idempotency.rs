//! Idempotency keys on POST: a client that retries a request with the same `Idempotency-Key`
//! gets the first response again (same status, body and `Location`: the same migration id)
//! instead of a second migration.
//!
//! The record, under `/v1/idempotency/{tenant}/{key}`, holds a SHA-256 of the request (method,
//! path, raw body bytes), the response, and when it expires ([`DEFAULT_TTL_MS`], 24 h, after it
//! was written; [`ApiState::idempotency_ttl_ms`](super::ApiState::idempotency_ttl_ms)). An
//! expired record counts as absent: the same key then starts a new request (with the same or
//! another body), whose success replaces the record. [`purge_expired`] deletes expired records
//! so the store does not grow without bound (the manager's loop calls it).
//!
//! The record is written in the operation's own transaction: the middleware hands the handler
//! (through a task-local, [`RIDER`]) a [`Rider`] that joins the first transaction the inventory
//! commits for the request, with a compare-and-swap on the key being absent (or on the expired
//! record it replaces). The response is not known then, so that record is *pending* (status 0);
//! the response replaces it right after (a compare-and-swap on the pending record's revision).
//! So the operation and its key are durable together or not at all:
//! - a crash after the operation leaves a pending record: a retry is not run again; it gets 409
//!   `raced` saying the request was carried out and its answer was not recorded (read the
//!   resource), until the record expires;
//! - two identical requests racing: only one transaction can take the key, so only one runs the
//!   operation; the loser fails its compare, and answers with the winner's record (409 `raced`,
//!   retry, while that is still pending).
//!
//! An operation that succeeds without writing anything (none does today, a dry run aside) gets
//! its record written after it, as a write of its own.
//!
//! A dry run (`"dry_run": true` on the reassign call) is not recorded either, though it
//! succeeds: it is a question, not the operation, and a client that asks first and then sends
//! the real request with the same key must get the operation, not the remembered answer to its
//! question, nor 422 for a key "used" by the question. Its handler marks its response
//! [`NotRecorded`]; such a key stays vacant (a key already recorded for another request is still
//! 422: the lookup comes first).
//!
//! Only successes (2xx) are recorded: a refusal changes nothing, so running a refused request
//! again is the same as running it the first time (and lets a client that fixed the state retry
//! with the same key). The same key with a different request is refused with 422
//! `idempotency_key_reused` until the record expires.

use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ApiState;
use super::auth::authenticate;
use super::error::ApiError;
use crate::store::{Compare, KeyValue, Rider, Store, StoreError, Txn, TxnOutcome};

/// The request header (lower case, as looked up).
pub const HEADER: &str = "idempotency-key";

/// The request header as the OpenAPI document names it.
pub const HEADER_NAME: &str = "Idempotency-Key";

/// The error code of a key reused for another request.
pub const KEY_REUSED: &str = "idempotency_key_reused";

/// How long a record is kept by default: 24 hours, in milliseconds.
pub const DEFAULT_TTL_MS: u64 = 24 * 3_600_000;

/// Where the records live in the store.
pub const PREFIX: &str = "/v1/idempotency/";

/// The largest request body a keyed POST may carry (the API's bodies are a few hundred bytes).
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// Most records [`purge_expired`] deletes in one transaction.
const PURGE_BATCH: usize = 128;

/// A response extension set by a handler whose success must not be recorded under its key (a
/// dry run: it changed nothing, see the module's documentation). Never sent.
#[derive(Clone, Copy, Debug)]
pub struct NotRecorded;

tokio::task_local! {
    /// The idempotency record that joins the transaction of the keyed request being handled
    /// (see [`super::ApiState::blocking`]).
    pub(crate) static RIDER: Arc<Mutex<Rider>>;
}

/// The status of a record whose operation is done and whose response is not recorded yet.
const PENDING: u16 = 0;

/// What is stored for a key.
#[derive(Serialize, Deserialize)]
struct Record {
    request_sha256: String,
    status: u16,
    location: Option<String>,
    body: String,
    /// When the record stops counting, unix milliseconds (0 in records written before expiry
    /// existed: expired).
    #[serde(default)]
    expires_ms: u64,
}

/// 1-128 visible ASCII characters.
fn parse_key(value: &HeaderValue) -> Result<&str, ApiError> {
    let bytes = value.as_bytes();
    if (1..=128).contains(&bytes.len()) && bytes.iter().all(|b| b.is_ascii_graphic()) {
        // Visible ASCII is valid UTF-8.
        value.to_str().map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))
    } else {
        Err(ApiError::bad_request("Idempotency-Key must be 1-128 visible ASCII characters"))
    }
}

fn digest(method: &str, path: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    // NUL cannot occur in a method or a path, so the three parts cannot run into each other.
    for part in [method.as_bytes(), b"\0", path.as_bytes(), b"\0", body] {
        h.update(part);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The record in `kv` if it still counts at `now_ms`: `None` when it expired or cannot be read
/// (a record is only a remembered answer; one that cannot be read is as good as gone).
fn live(kv: &KeyValue, now_ms: u64) -> Option<Record> {
    serde_json::from_slice::<Record>(&kv.value).ok().filter(|r| r.expires_ms > now_ms)
}

/// What the store holds for a key.
enum Lookup {
    /// The same request's recorded response.
    Replay(Response),
    /// Nothing that counts: a new record may be written when this holds.
    Vacant(Compare),
}

/// The recorded response for `key` if the same request made it; 422 if another request did.
async fn lookup<S: Store>(
    state: &ApiState<S>,
    key: &str,
    request_sha256: &str,
    now_ms: u64,
) -> Result<Lookup, ApiError> {
    let store = state.inventory.store().clone();
    let owned_key = key.to_owned();
    let kv = tokio::task::spawn_blocking(move || store.get(&owned_key))
        .await
        .map_err(|e| ApiError::internal(format!("store task: {e}")))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let Some(kv) = kv else { return Ok(Lookup::Vacant(Compare::Absent(key.to_owned()))) };
    let Some(record) = live(&kv, now_ms) else {
        return Ok(Lookup::Vacant(Compare::ModRevision(kv.key, kv.mod_revision)));
    };
    if record.request_sha256 != request_sha256 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            KEY_REUSED,
            "this Idempotency-Key was used for a different request",
        ));
    }
    if record.status == PENDING {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "raced",
            "the request with this Idempotency-Key was carried out and its answer is not recorded yet: retry in \
             a moment; if this persists, the server stopped before recording it: read the resource instead",
        ));
    }
    let status = StatusCode::from_u16(record.status).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut response = (status, record.body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(location) = record.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        headers.insert(header::LOCATION, location);
    }
    headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(Lookup::Replay(response))
}

/// Records a success under `key` if what was vacant still is (an expired record that the purge
/// deleted meanwhile counts as vacant too); a racing twin's record is left as it is.
async fn record<S: Store>(state: &ApiState<S>, key: &str, vacant: Compare, record: &Record) -> Result<(), ApiError> {
    let store = state.inventory.store().clone();
    let value = serde_json::to_vec(record).map_err(|e| ApiError::internal(e.to_string()))?;
    let key = key.to_owned();
    let write = move || -> Result<(), StoreError> {
        let replaced_expired = matches!(vacant, Compare::ModRevision(..));
        let outcome = store.txn(Txn::new().when(vacant).put(key.clone(), value.clone()))?;
        if matches!(outcome, TxnOutcome::Failed(_)) && replaced_expired {
            store.txn(Txn::new().when(Compare::Absent(key.clone())).put(key, value))?;
        }
        Ok(())
    };
    tokio::task::spawn_blocking(write)
        .await
        .map_err(|e| ApiError::internal(format!("store task: {e}")))?
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// Deletes the idempotency records in `store` that expired at `now_ms` (and any that cannot be
/// read), in transactions of up to 128 deletes, each conditional on the record still being the
/// one read: a key reused (and so re-recorded) meanwhile keeps its new record. Returns how many
/// records were deleted.
///
/// The records are read in one range (the store has no paged read): memory for one day of
/// keyed requests.
pub fn purge_expired<S: Store>(store: &S, now_ms: u64) -> Result<usize, StoreError> {
    let (kvs, _) = store.range(PREFIX)?;
    let expired: Vec<(String, u64)> =
        kvs.into_iter().filter(|kv| live(kv, now_ms).is_none()).map(|kv| (kv.key, kv.mod_revision)).collect();
    let delete = |txn: Txn, (key, revision): &(String, u64)| {
        txn.when(Compare::ModRevision(key.clone(), *revision)).delete(key.clone())
    };
    let mut purged = 0;
    for batch in expired.chunks(PURGE_BATCH) {
        match store.txn(batch.iter().fold(Txn::new(), delete))? {
            TxnOutcome::Committed(_) => purged += batch.len(),
            TxnOutcome::Failed(_) => {
                // One of them changed since the read: each alone, so that the others still go.
                for one in batch {
                    if let TxnOutcome::Committed(_) = store.txn(delete(Txn::new(), one))? {
                        purged += 1;
                    }
                }
            }
        }
    }
    Ok(purged)
}

/// The middleware: POSTs with an `Idempotency-Key` header go through it, everything else
/// passes untouched.
pub async fn layer<S: Store>(State(state): State<ApiState<S>>, request: Request, next: Next) -> Response {
    if request.method() != axum::http::Method::POST || !request.headers().contains_key(HEADER) {
        return next.run(request).await;
    }
    match keyed(state, request, next).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn keyed<S: Store>(state: ApiState<S>, request: Request, next: Next) -> Result<Response, ApiError> {
    let caller = authenticate(request.headers(), &state.tokens)?;
    let key = match request.headers().get(HEADER) {
        Some(value) => parse_key(value)?.to_owned(),
        None => return Ok(next.run(request).await),
    };
    let record_key = format!("{PREFIX}{}/{key}", caller.idempotency_space());
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| ApiError::bad_request(format!("request body unreadable or over {MAX_BODY} bytes: {e}")))?;
    let path = parts.uri.path_and_query().map_or(parts.uri.path(), |p| p.as_str());
    let request_sha256 = digest(parts.method.as_str(), path, &body);
    let vacant = match lookup(&state, &record_key, &request_sha256, (state.clock)()).await? {
        Lookup::Replay(stored) => return Ok(stored),
        Lookup::Vacant(vacant) => vacant,
    };
    let pending = Record {
        request_sha256: request_sha256.clone(),
        status: PENDING,
        location: None,
        body: String::new(),
        expires_ms: (state.clock)().saturating_add(state.idempotency_ttl_ms),
    };
    let pending = serde_json::to_vec(&pending).map_err(|e| ApiError::internal(e.to_string()))?;
    let rider = Arc::new(Mutex::new(Rider::new(Txn::new().when(vacant.clone()).put(record_key.clone(), pending))));
    let response = RIDER.scope(rider.clone(), next.run(Request::from_parts(parts, Body::from(body)))).await;
    let committed = rider.lock().unwrap_or_else(std::sync::PoisonError::into_inner).committed();
    let (parts, body) = response.into_parts();
    let body: Bytes =
        axum::body::to_bytes(body, usize::MAX).await.map_err(|e| ApiError::internal(format!("response body: {e}")))?;
    if parts.extensions.get::<NotRecorded>().is_some() {
        // A dry run: answered as it is, the key left vacant.
    } else if parts.status.is_success() {
        let location = parts.headers.get(header::LOCATION).and_then(|l| l.to_str().ok()).map(str::to_owned);
        let new = Record {
            request_sha256: request_sha256.clone(),
            status: parts.status.as_u16(),
            location,
            body: String::from_utf8_lossy(&body).into_owned(),
            expires_ms: (state.clock)().saturating_add(state.idempotency_ttl_ms),
        };
        // The pending record the operation wrote, else (it wrote nothing) what was vacant.
        let vacant = committed.map_or(vacant, |revision| Compare::ModRevision(record_key.clone(), revision));
        record(&state, &record_key, vacant, &new).await?;
    } else if let Lookup::Replay(stored) = lookup(&state, &record_key, &request_sha256, (state.clock)()).await? {
        // A racing twin with the same key succeeded and recorded it: that is the answer.
        return Ok(stored);
    }
    Ok(Response::from_parts(parts, Body::from(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii_up_to_128() {
        let ok = |s: &str| parse_key(&HeaderValue::from_str(s).expect("a header value")).is_ok();
        assert!(ok("a") && ok("retry-1/2:x") && ok(&"k".repeat(128)));
        assert!(!ok("") && !ok("has space") && !ok(&"k".repeat(129)));
    }

    #[test]
    fn the_digest_separates_method_path_and_body() {
        assert_ne!(digest("POST", "/v1/a", b"b"), digest("POST", "/v1/ab", b""));
        assert_eq!(digest("POST", "/v1/a", b"{}").len(), 64);
    }

    fn store(name: &str) -> crate::RedbStore {
        let dir =
            tempfile::Builder::new().prefix(&format!("ipshadow-idempotency-{name}-")).tempdir().expect("a temp dir");
        // The open store keeps its file: the folder can go now (Linux frees the file at its close).
        crate::RedbStore::open(&dir.path().join("store.redb")).expect("a store")
    }

    fn record_expiring(expires_ms: u64) -> Vec<u8> {
        let r = Record { request_sha256: "00".into(), status: 201, location: None, body: "{}".into(), expires_ms };
        serde_json::to_vec(&r).expect("a record")
    }

    fn keys(store: &impl Store) -> Vec<String> {
        store.range(PREFIX).expect("a range").0.into_iter().map(|kv| kv.key).collect()
    }

    /// More expired records than one batch holds all go; live ones and other keys stay; an
    /// unreadable record counts as expired.
    #[test]
    fn the_purge_deletes_exactly_the_expired_records_in_batches() {
        let store = store("batches");
        let mut txn = Txn::new().put("/v1/vms/vm-a", b"{}".to_vec()).put(format!("{PREFIX}@admin/bad"), b"[".to_vec());
        for i in 0..300 {
            let expires = if i < 2 * PURGE_BATCH + 7 { 1_000 } else { 5_000 };
            txn = txn.put(format!("{PREFIX}acme/k{i:03}"), record_expiring(expires));
        }
        store.txn(txn).expect("seeded");
        assert_eq!(purge_expired(&store, 999).expect("purged"), 1, "only the unreadable one is due");
        assert_eq!(purge_expired(&store, 1_000).expect("purged"), 2 * PURGE_BATCH + 7);
        let left = keys(&store);
        assert_eq!(left.len(), 300 - (2 * PURGE_BATCH + 7));
        assert!(left.iter().all(|k| k.as_str() >= "/v1/idempotency/acme/k263"), "{left:?}");
        assert!(store.get("/v1/vms/vm-a").expect("a read").is_some(), "not a record: untouched");
        assert_eq!(purge_expired(&store, 1_000).expect("purged"), 0);
        assert_eq!(purge_expired(&store, 5_000).expect("purged"), 300 - (2 * PURGE_BATCH + 7));
        assert_eq!(keys(&store), Vec::<String>::new());
    }

    /// A store that, on the first transaction, first re-records one key (a key reused after its
    /// record expired, racing the purge).
    #[derive(Clone)]
    struct Racing {
        inner: crate::RedbStore,
        key: String,
        fired: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl Store for Racing {
        fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
            self.inner.get(key)
        }
        fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64), StoreError> {
            self.inner.range(prefix)
        }
        fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
            if !self.fired.swap(true, std::sync::atomic::Ordering::SeqCst) {
                self.inner.txn(Txn::new().put(self.key.clone(), record_expiring(9_000)))?;
            }
            self.inner.txn(txn)
        }
        fn watch(&self, prefix: &str, after: u64) -> Result<crate::store::Watcher, StoreError> {
            self.inner.watch(prefix, after)
        }
        fn grant_lease(&self, ttl: std::time::Duration) -> Result<crate::LeaseId, StoreError> {
            self.inner.grant_lease(ttl)
        }
        fn keep_alive(&self, lease: crate::LeaseId) -> Result<(), StoreError> {
            self.inner.keep_alive(lease)
        }
        fn revoke_lease(&self, lease: crate::LeaseId) -> Result<(), StoreError> {
            self.inner.revoke_lease(lease)
        }
    }

    #[test]
    fn a_record_written_again_during_the_purge_is_kept() {
        let inner = store("racing");
        let mut txn = Txn::new();
        for i in 0..5 {
            txn = txn.put(format!("{PREFIX}acme/k{i}"), record_expiring(1_000));
        }
        inner.txn(txn).expect("seeded");
        let key = format!("{PREFIX}acme/k2");
        let racing = Racing { inner: inner.clone(), key: key.clone(), fired: Default::default() };
        assert_eq!(purge_expired(&racing, 2_000).expect("purged"), 4);
        assert_eq!(keys(&inner), [key]);
    }

    /// A VM of tenant acme; MACs are unique across the store, so each id gets its own.
    fn vm(id: &str) -> crate::inventory::Vm {
        let last = id.bytes().last().unwrap_or(0);
        crate::inventory::Vm {
            tenant: "acme".into(),
            id: id.into(),
            mac: format!("02:00:00:00:00:{last:02x}"),
            segment: id.into(),
        }
    }

    /// A pending record for `key`, riding on the next transaction if `key` is absent.
    fn rider_for(key: &str) -> Arc<Mutex<Rider>> {
        let pending = Record {
            request_sha256: "ab".into(),
            status: PENDING,
            location: None,
            body: String::new(),
            expires_ms: 9_000,
        };
        let value = serde_json::to_vec(&pending).expect("a record");
        Arc::new(Mutex::new(Rider::new(Txn::new().when(Compare::Absent(key.into())).put(key, value))))
    }

    fn revision_of(store: &impl Store, key: &str) -> Option<u64> {
        store.get(key).expect("a read").map(|kv| kv.mod_revision)
    }

    /// Issue 6's note: the record is written by the operation's own transaction (the same
    /// revision), once; an operation that fails writes none; a key another request took stops
    /// the operation (nothing of it is written).
    #[test]
    fn the_record_is_written_in_the_operations_transaction() {
        let store = store("rider");
        let key = format!("{PREFIX}acme/k1");
        let rider = rider_for(&key);
        let inventory = crate::inventory::Inventory::new(store.clone()).with_rider(rider.clone());
        inventory.add_vm(&vm("vm-a")).expect("added");
        let revision = revision_of(&store, "/v1/vms/vm-a").expect("the vm");
        assert_eq!(revision_of(&store, &key), Some(revision), "the same transaction");
        assert_eq!(rider.lock().expect("a lock").committed(), Some(revision));
        // A second write of the same request does not write the record again.
        inventory.add_vm(&vm("vm-b")).expect("added");
        assert_eq!(revision_of(&store, &key), Some(revision));

        // An operation refused by the store (the vm exists) writes no record.
        let other = format!("{PREFIX}acme/k2");
        let refused = crate::inventory::Inventory::new(store.clone()).with_rider(rider_for(&other));
        assert!(refused.add_vm(&vm("vm-a")).is_err());
        assert_eq!(revision_of(&store, &other), None);

        // The key is taken (a twin request's record): the operation is not done.
        let twin = crate::inventory::Inventory::new(store.clone()).with_rider(rider_for(&key));
        assert!(twin.add_vm(&vm("vm-c")).is_err());
        assert_eq!(revision_of(&store, "/v1/vms/vm-c"), None, "not done without its key");
    }

    /// After a crash between the operation and its response, the retry finds the pending record:
    /// it is answered 409 `raced` (the operation is not run again); another request with the key
    /// is still 422.
    #[test]
    fn a_pending_record_is_not_run_again() {
        let store = store("pending");
        let key = format!("{PREFIX}acme/k1");
        let inventory = crate::inventory::Inventory::new(store.clone()).with_rider(rider_for(&key));
        inventory.add_vm(&vm("vm-a")).expect("added");
        let state = super::super::ApiState::new(store, super::super::TokenTable::new("admin-token-0123456789"));
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
        match runtime.block_on(lookup(&state, &key, "ab", 1_000)) {
            Err(e) => {
                assert_eq!((e.status, e.code), (StatusCode::CONFLICT, "raced"));
                assert!(e.message.contains("carried out"), "{}", e.message);
            }
            Ok(_) => panic!("a pending record answered as a replay or as vacant"),
        }
        match runtime.block_on(lookup(&state, &key, "cd", 1_000)) {
            Err(e) => assert_eq!(e.code, KEY_REUSED),
            Ok(_) => panic!("another request's key answered"),
        }
    }
}

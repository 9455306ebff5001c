//! Idempotency keys on POST: a client that retries a request with the same `Idempotency-Key`
//! gets the first response again (same status, body and `Location`: the same migration id)
//! instead of a second migration.
//!
//! The record, under `/v1/idempotency/{tenant}/{key}`, holds a SHA-256 of the request (method,
//! path, raw body bytes) and the response. It is written with a compare-and-swap on the key being
//! absent right after the operation succeeded, so there is a small window between the two
//! writes:
//! - a crash in it leaves the operation done and no record: a retry runs again and gets the
//!   operation's own refusal (e.g. 409 "already migrating"), never a second migration, because
//!   every operation is itself a compare-and-swap;
//! - two identical requests racing: both run, the store lets exactly one succeed, and the loser,
//!   if the winner's record is already written, answers with it; otherwise it answers with its
//!   own refusal and the next retry gets the recorded success.
//!
//! Only successes (2xx) are recorded: a refusal changes nothing, so running a refused request
//! again is the same as running it the first time (and lets a client that fixed the state retry
//! with the same key). The same key with a different request is refused with 422
//! `idempotency_key_reused`. Records are kept until the store is cleaned (no expiry yet).

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
use crate::store::{Compare, Store, Txn, TxnOutcome};

/// The request header.
pub const HEADER: &str = "idempotency-key";

/// The largest request body a keyed POST may carry (the API's bodies are a few hundred bytes).
const MAX_BODY: usize = 64 * 1024;

/// What is stored for a key.
#[derive(Serialize, Deserialize)]
struct Record {
    request_sha256: String,
    status: u16,
    location: Option<String>,
    body: String,
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

/// The recorded response for `key` if the same request made it; 422 if another request did.
async fn replay<S: Store>(state: &ApiState<S>, key: &str, request_sha256: &str) -> Result<Option<Response>, ApiError> {
    let store = state.inventory.store().clone();
    let owned_key = key.to_owned();
    let kv = tokio::task::spawn_blocking(move || store.get(&owned_key))
        .await
        .map_err(|e| ApiError::internal(format!("store task: {e}")))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let Some(kv) = kv else { return Ok(None) };
    let record: Record =
        serde_json::from_slice(&kv.value).map_err(|e| ApiError::internal(format!("stored {key} is corrupt: {e}")))?;
    if record.request_sha256 != request_sha256 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request",
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
    Ok(Some(response))
}

/// Records a success under `key` unless a record is there already.
async fn record<S: Store>(state: &ApiState<S>, key: &str, record: &Record) -> Result<TxnOutcome, ApiError> {
    let store = state.inventory.store().clone();
    let value = serde_json::to_vec(record).map_err(|e| ApiError::internal(e.to_string()))?;
    let txn = Txn::new().when(Compare::Absent(key.to_owned())).put(key, value);
    tokio::task::spawn_blocking(move || store.txn(txn))
        .await
        .map_err(|e| ApiError::internal(format!("store task: {e}")))?
        .map_err(|e| ApiError::internal(e.to_string()))
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
    let record_key = format!("/v1/idempotency/{}/{key}", caller.idempotency_space());
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| ApiError::bad_request(format!("request body unreadable or over {MAX_BODY} bytes: {e}")))?;
    let path = parts.uri.path_and_query().map_or(parts.uri.path(), |p| p.as_str());
    let request_sha256 = digest(parts.method.as_str(), path, &body);
    if let Some(stored) = replay(&state, &record_key, &request_sha256).await? {
        return Ok(stored);
    }
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    let (parts, body) = response.into_parts();
    let body: Bytes =
        axum::body::to_bytes(body, usize::MAX).await.map_err(|e| ApiError::internal(format!("response body: {e}")))?;
    if parts.status.is_success() {
        let location = parts.headers.get(header::LOCATION).and_then(|l| l.to_str().ok()).map(str::to_owned);
        let new = Record {
            request_sha256: request_sha256.clone(),
            status: parts.status.as_u16(),
            location,
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        record(&state, &record_key, &new).await?;
    } else if let Some(stored) = replay(&state, &record_key, &request_sha256).await? {
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
}

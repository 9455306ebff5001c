//! The API's one error shape, `{"error": "<code>", "message": "..."}`, the status each code
//! maps to, and extractors that turn axum's plain-text rejections (bad JSON, a bad path
//! parameter) into that shape: a client parses one format whatever went wrong.
//!
//! A 500 reveals nothing of the server (store paths, file errors, internal keys): its detail is
//! logged (tracing, at error level) under a fresh random id, and the body says only that id, so
//! an operator can find the one in the log from the one a user reports.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::inventory::InventoryError;

/// The error code of a ramp that cannot reach 100 % before the deadline (422).
pub const RAMP_DOES_NOT_FIT: &str = "ramp_does_not_fit";

/// The error code of an id, MAC or address that is not the tenant's to claim (403): outside its
/// prefixes, or another tenant's record; the two are not told apart.
pub const NOT_AVAILABLE: &str = "not_available";

/// The body of every error response.
#[derive(Clone, Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Machine-readable code: `not_found`, `exists`, `conflict`, `raced` (retry), `invalid`,
    /// `ramp_does_not_fit`, `idempotency_key_reused`, `unauthorized`, `forbidden`, `not_available`,
    /// `bad_request`,
    /// `method_not_allowed`, `unavailable` (retry later), `internal` (the document's `ErrorCode`).
    #[schema(value_type = super::schema::ErrorCodeSchema)]
    pub error: String,
    /// What went wrong, for a human.
    pub message: String,
}

/// A refused or failed request, as it is sent.
#[derive(Clone, Debug)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// The code (see [`ErrorBody::error`]).
    pub code: &'static str,
    /// The message.
    pub message: String,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    /// 400: the request could not be read (malformed JSON, a bad path parameter or header).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401: no token, or one nobody issued.
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "a valid bearer token is required")
    }

    /// 403: the caller is known but may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 422: the request is well-formed but wrong.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }

    /// 503: the server is at a limit (open event streams) or its store is unreachable; retry
    /// later.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 500: the store failed (never used for a refusal). `detail` is logged, never sent.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }

    /// What the client is sent. For a 500 the message is replaced by a generic one naming a new
    /// id, and the detail is logged under that id; every other status's message is the API's
    /// own words about the request, and is sent as it is.
    pub fn public_body(&self) -> ErrorBody {
        let message = if self.status == StatusCode::INTERNAL_SERVER_ERROR {
            let id = incident_id();
            tracing::error!(incident = %id, detail = %self.message, "internal error answered with 500");
            format!("internal error (incident {id}); the server's log has the detail")
        } else {
            self.message.clone()
        };
        ErrorBody { error: self.code.to_owned(), message }
    }
}

/// A fresh id for one internal error: 64 bits that no client can predict (the standard
/// library's per-process random hash keys over a counter), in hex.
fn incident_id() -> String {
    use std::hash::BuildHasher as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> = std::sync::OnceLock::new();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:016x}", KEYS.get_or_init(Default::default).hash_one(n))
}

impl From<InventoryError> for ApiError {
    fn from(e: InventoryError) -> Self {
        let message = e.to_string();
        match e {
            InventoryError::NotFound { .. } => Self::new(StatusCode::NOT_FOUND, "not_found", message),
            InventoryError::Exists { .. } => Self::new(StatusCode::CONFLICT, "exists", message),
            // One answer whether it is outside the tenant's prefixes or another tenant's: a
            // `Taken` nobody converted with `seen_by` is treated as not the caller's to see.
            InventoryError::NotAvailable { .. } | InventoryError::Taken { .. } => {
                Self::new(StatusCode::FORBIDDEN, NOT_AVAILABLE, message)
            }
            InventoryError::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", message),
            InventoryError::Invalid(_) => Self::invalid(message),
            InventoryError::RampDoesNotFit(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, RAMP_DOES_NOT_FIT, message)
            }
            InventoryError::Raced => Self::new(StatusCode::CONFLICT, "raced", message),
            InventoryError::Store(crate::store::StoreError::Unavailable { .. }) => {
                Self::unavailable(format!("{message}; try again"))
            }
            InventoryError::Store(_) | InventoryError::Corrupt { .. } => Self::internal(message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.public_body();
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6750 3: a 401 names the scheme the client should use.
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            // RFC 9110 10.2.3: when to try again, in seconds.
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

/// A JSON body whose rejections are [`ApiError`]s: 400 when it is not JSON (or not declared as
/// JSON), 422 when it is JSON of the wrong shape (an unknown field, a missing one, a bad type).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::invalid(e.body_text())),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// Path parameters whose rejections are 400 [`ApiError`]s (an IP address that does not parse, a
/// migration id that is not a number).
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(e @ PathRejection::FailedToDeserializePathParams(_)) => Err(ApiError::bad_request(e.body_text())),
            Err(e) => Err(ApiError::internal(e.body_text())),
        }
    }
}

/// Query parameters whose rejections are 400 [`ApiError`]s (a limit that is not a number).
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// Unknown paths: 404 in the API's shape.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// A known path with a method it does not serve: 405 in the API's shape.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this endpoint")
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(response: Response) -> ErrorBody {
        let bytes = axum::body::to_bytes(response.into_body(), 4096).await.expect("a body");
        serde_json::from_slice(&bytes).expect("the error shape")
    }

    /// A 500's body names an incident, never the detail (a path, a store error); two incidents
    /// have two ids; other statuses keep their message.
    #[test]
    fn a_500_body_reveals_no_internals() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
        let detail = "store /var/lib/ipshadow/store.redb: writing: No space left on device";
        let response = ApiError::internal(detail).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let first = runtime.block_on(body_of(response));
        assert_eq!(first.error, "internal");
        assert!(!first.message.contains("store") && !first.message.contains("/var"), "{}", first.message);
        assert!(first.message.starts_with("internal error (incident "), "{}", first.message);
        let second = runtime.block_on(body_of(ApiError::internal(detail).into_response()));
        assert_ne!(first.message, second.message, "each incident has its own id");

        let refusal = runtime.block_on(body_of(ApiError::invalid("deadline too short").into_response()));
        assert_eq!(refusal.message, "deadline too short");
        let unavailable = ApiError::unavailable("256 event streams are open").public_body();
        assert_eq!(unavailable.message, "256 event streams are open");
    }
}

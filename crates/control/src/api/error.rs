//! The API's one error shape, `{"error": "<code>", "message": "..."}`, the status each code
//! maps to, and extractors that turn axum's plain-text rejections (bad JSON, a bad path
//! parameter) into that shape: a client parses one format whatever went wrong.

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

    /// 503: the server is at a limit (open event streams); retry later.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 500: the store failed (never used for a refusal).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
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
            InventoryError::Store(_) | InventoryError::Corrupt { .. } => Self::internal(message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: self.code.to_owned(), message: self.message };
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

/// Unknown paths: 404 in the API's shape.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// A known path with a method it does not serve: 405 in the API's shape.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this endpoint")
}

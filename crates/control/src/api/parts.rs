//! What the parts running in this process report (`ipshadow serve` with a router and a DHCP
//! server): `GET /v1/router/status` (the router's shadowing table as it applies it, the
//! migrations that ended there with their cut-over reports, flows, counters of every port and
//! drop reason, health-probe answers) and `GET /v1/dhcp/status` (leases, counters, lease events
//! by kind). For the operator: they name every tenant's addresses.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::error::ErrorBody;
use super::{ApiError, ApiState, Caller};
use crate::store::Store;

fn operator_only(caller: &Caller, what: &str) -> Result<(), ApiError> {
    match caller.tenant() {
        Some(_) => Err(ApiError::forbidden(format!("{what} is for the operator (admin token)"))),
        None => Ok(()),
    }
}

fn not_running(part: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no {part} has reported in this process"))
}

/// The router's last status report (a few times a second).
#[utoipa::path(get, path = "/v1/router/status", tag = "meta", security(("bearer" = [])),
    responses((status = 200, description = "The router's status report", body = Object),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "No router runs in this process, or it has not reported yet", body = ErrorBody)))]
pub async fn router_status<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Caller,
) -> Result<Json<ipshadow_dataplane::Status>, ApiError> {
    operator_only(&caller, "the router's status")?;
    // Serialized straight from the report: no intermediate JSON tree (it can be large).
    state.parts.router_status.as_ref().and_then(|f| f()).map(Json).ok_or_else(|| not_running("router"))
}

/// The DHCP server's leases, counters and lease events by kind.
#[utoipa::path(get, path = "/v1/dhcp/status", tag = "meta", security(("bearer" = [])),
    responses((status = 200, description = "The DHCP server's status", body = Object),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "No DHCP server runs in this process", body = ErrorBody)))]
pub async fn dhcp_status<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    operator_only(&caller, "the DHCP server's status")?;
    state.parts.dhcp_status.as_ref().and_then(|f| f()).map(Json).ok_or_else(|| not_running("DHCP server"))
}

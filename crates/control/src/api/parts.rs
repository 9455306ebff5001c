//! What the parts running in this process report (`ipshadow serve` with a router and a DHCP
//! server): `GET /v1/router/status` (the router's shadowing table as it applies it, the
//! migrations that ended there with their cut-over reports, flows, counters of every port and
//! drop reason, health-probe answers) and `GET /v1/dhcp/status` (leases, counters, lease events
//! by kind), each with its part's [`PartHealth`] (`health`: up, restarts, last failure, how
//! stale the report is, records skipped). For the operator: they name every tenant's addresses.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::error::ErrorBody;
use super::{ApiError, ApiState, Caller};
use crate::store::Store;

/// How a part running in this process is: `GET /healthz` (503 when one is not [`PartHealth::ok`]),
/// `/metrics` and the part's status endpoint show it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct PartHealth {
    /// `dhcp` or `router`.
    pub part: String,
    /// Running now (false while it waits to be restarted after a failure).
    pub up: bool,
    /// Times it was restarted after a failure since the process started.
    pub restarts: u64,
    /// Its last failure, if it had one.
    pub last_error: Option<String>,
    /// Time since it last went round its loop, milliseconds: how stale what it reports is.
    pub age_ms: u64,
    /// Records of the store the part was given but could not take, left out, each with why (a
    /// record stored before the API checked it, or written behind its back).
    pub skipped: Vec<String>,
}

/// A part whose loop has not turned for this long is stuck: not healthy though still up.
pub const STALE_MS: u64 = 10_000;

impl PartHealth {
    /// Up, and not stale.
    pub fn ok(&self) -> bool {
        self.up && self.age_ms < STALE_MS
    }
}

/// The health of each part running in this process.
pub type HealthSource = std::sync::Arc<dyn Fn() -> Vec<PartHealth> + Send + Sync>;

/// The health of `part`, if it runs in this process.
fn health_of<S: Store>(state: &ApiState<S>, part: &str) -> Option<PartHealth> {
    state.parts.health.as_ref().and_then(|f| f().into_iter().find(|h| h.part == part))
}

/// The router's status report with its part's health.
#[derive(serde::Serialize)]
pub struct RouterStatusView {
    /// The report.
    #[serde(flatten)]
    pub status: ipshadow_contracts::router::Status,
    /// The router part's health (none when nothing supervises it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<PartHealth>,
}

fn operator_only(caller: &Caller, what: &str) -> Result<(), ApiError> {
    match caller.tenant() {
        Some(_) => Err(ApiError::forbidden(format!("{what} is for the operator (admin token)"))),
        None => Ok(()),
    }
}

fn not_running(part: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no {part} has reported in this process"))
}

/// The router's last status report (a few times a second), with `health` (up, restarts, how
/// stale: `age_ms`).
#[utoipa::path(get, path = "/v1/router/status", tag = "meta", security(("bearer" = [])),
    responses((status = 200, description = "The router's status report", body = Object),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "No router runs in this process, or it has not reported yet", body = ErrorBody)))]
pub async fn router_status<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Caller,
) -> Result<Json<RouterStatusView>, ApiError> {
    operator_only(&caller, "the router's status")?;
    // Serialized straight from the report: no intermediate JSON tree (it can be large).
    let status = state.parts.router_status.as_ref().and_then(|f| f()).ok_or_else(|| not_running("router"))?;
    Ok(Json(RouterStatusView { status, health: health_of(&state, "router") }))
}

/// One router, as `GET /v1/routers` lists it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RouterSummary {
    /// Its name (`--name` of its process).
    pub name: String,
    /// Its process.
    pub pid: u32,
    /// When it made its last report, unix milliseconds.
    pub updated_ms: u64,
    /// Flows it tracks.
    pub flows: usize,
    /// Shadowed addresses in its table.
    pub shadowed: usize,
    /// Its part in its router group (role, term, last takeover and its cause, counters), if it
    /// is in one.
    #[schema(value_type = Option<Object>)]
    pub group: Option<ipshadow_core::ha::GroupStatus>,
}

impl RouterSummary {
    /// The summary of router `name`'s report.
    pub fn of(name: &str, status: &ipshadow_contracts::router::Status) -> Self {
        Self {
            name: name.to_owned(),
            pid: status.pid,
            updated_ms: status.updated.as_millis(),
            flows: status.flows,
            shadowed: status.entries.len(),
            group: status.ha.clone(),
        }
    }
}

/// Every router's last report, summed up.
pub type RoutersSource = std::sync::Arc<dyn Fn() -> Vec<RouterSummary> + Send + Sync>;

/// Every router.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RouterList {
    /// By name.
    pub routers: Vec<RouterSummary>,
}

/// Every router that reports (several in router groups: one active, the others standing by),
/// each with its role, term and last takeover.
#[utoipa::path(get, path = "/v1/routers", tag = "meta", security(("bearer" = [])),
    responses((status = 200, description = "Every router that reports", body = RouterList),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "No router is configured", body = ErrorBody)))]
pub async fn routers<S: Store>(State(state): State<ApiState<S>>, caller: Caller) -> Result<Json<RouterList>, ApiError> {
    operator_only(&caller, "the routers' status")?;
    let source = state.parts.routers.as_ref().ok_or_else(|| not_running("router"))?;
    Ok(Json(RouterList { routers: source() }))
}

/// The DHCP server's leases, counters and lease events by kind, with `health` (up, restarts, how
/// stale: `age_ms`, records skipped).
#[utoipa::path(get, path = "/v1/dhcp/status", tag = "meta", security(("bearer" = [])),
    responses((status = 200, description = "The DHCP server's status", body = Object),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "No DHCP server runs in this process", body = ErrorBody)))]
pub async fn dhcp_status<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    operator_only(&caller, "the DHCP server's status")?;
    let mut status = state.parts.dhcp_status.as_ref().and_then(|f| f()).ok_or_else(|| not_running("DHCP server"))?;
    if let (Some(object), Some(health)) = (status.as_object_mut(), health_of(&state, "dhcp")) {
        object.insert("health".to_owned(), serde_json::to_value(health).unwrap_or_default());
    }
    Ok(Json(status))
}

//! `GET /metrics`: the manager's view in the Prometheus text format (version 0.0.4), for the
//! operator (admin token; Prometheus sends it with `authorization: credentials`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::error::ErrorBody;
use super::{ApiError, ApiState, Caller};
use crate::migration::MigrationState;
use crate::store::Store;

/// Every state, so that a state with no migration still shows as 0 (a time series that
/// disappears is harder to alert on than one at zero).
const STATES: [MigrationState; 9] = [
    MigrationState::Pending,
    MigrationState::WaitingForDestinationLease,
    MigrationState::Ramping,
    MigrationState::Paused,
    MigrationState::CutOver,
    MigrationState::Completed,
    MigrationState::RolledBack,
    MigrationState::Aborted,
    MigrationState::Failed,
];

fn state_name(state: MigrationState) -> String {
    serde_json::to_value(state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// Counts of VMs, addresses and migrations by state, and each shadowed address's split.
#[utoipa::path(get, path = "/metrics", tag = "meta", security(("bearer" = [])),
    responses((status = 200, description = "Prometheus text format (version 0.0.4)", content_type = "text/plain", body = String),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn metrics<S: Store>(State(state): State<ApiState<S>>, caller: Caller) -> Result<Response, ApiError> {
    if caller.tenant().is_some() {
        return Err(ApiError::forbidden("metrics are for the operator (admin token)"));
    }
    let (vms, addresses, migrations) =
        state.blocking(|inv| Ok((inv.vms(None)?.len(), inv.addresses(None)?.len(), inv.migrations(None)?))).await?;
    let mut by_state: BTreeMap<String, u64> = STATES.iter().map(|s| (state_name(*s), 0)).collect();
    for m in &migrations {
        *by_state.entry(state_name(m.lifecycle.state)).or_default() += 1;
    }
    let mut out = String::new();
    let _ = writeln!(out, "# HELP ipshadow_vms VMs in the inventory.\n# TYPE ipshadow_vms gauge\nipshadow_vms {vms}");
    let _ = writeln!(
        out,
        "# HELP ipshadow_addresses Addresses in the inventory.\n# TYPE ipshadow_addresses gauge\nipshadow_addresses {addresses}"
    );
    let _ = writeln!(out, "# HELP ipshadow_migrations Migrations by state.\n# TYPE ipshadow_migrations gauge");
    for (name, count) in &by_state {
        let _ = writeln!(out, "ipshadow_migrations{{state=\"{name}\"}} {count}");
    }
    let _ = writeln!(
        out,
        "# HELP ipshadow_split_percent Share of new flows sent to the destination VM, per shadowed address.\n\
         # TYPE ipshadow_split_percent gauge"
    );
    for m in migrations.iter().filter(|m| m.lifecycle.state.is_shadowing()) {
        let _ = writeln!(out, "ipshadow_split_percent{{ip=\"{}\",migration=\"{}\"}} {}", m.ip, m.id, m.split_pct);
    }
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    Ok(([(header::CONTENT_TYPE, content_type)], out).into_response())
}

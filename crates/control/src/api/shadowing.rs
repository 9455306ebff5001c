//! `GET /v1/shadowing`: the seed's shadowing table — one `ShadowingEntry` per address the caller
//! may see that is shadowed now, with the seed's field names.

use std::net::Ipv4Addr;

use axum::Json;
use axum::extract::State;
use ipshadow_core::CongestionControlParameters;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::ErrorBody;
use super::{ApiError, ApiState, Caller};
use crate::migration::MigrationState;
use crate::store::Store;

/// One row of the shadowing table.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShadowingView {
    /// The shadowed address.
    #[schema(value_type = String, format = Ipv4)]
    pub ip_address: Ipv4Addr,
    /// VM A, the address's old holder.
    pub source_vm_id: String,
    /// VM B, the new holder.
    pub destination_vm_id: String,
    /// When the migration began, unix milliseconds.
    pub migration_start_time: u64,
    /// Share of new flows sent to B, percent, as last recorded from the router.
    pub traffic_split_percentage: f64,
    /// The AIMD parameters of the split.
    #[schema(value_type = super::schema::CongestionControlParametersSchema)]
    pub congestion_control_parameters: CongestionControlParameters,
    /// The migration's state.
    pub state: MigrationState,
    /// The migration behind the entry.
    pub migration_id: u64,
    /// Cut-over time, unix milliseconds.
    pub deadline_ms: u64,
}

/// The shadowing table the caller may see.
#[utoipa::path(get, path = "/v1/shadowing", tag = "migrations", security(("bearer" = [])),
    responses((status = 200, body = [ShadowingView]), (status = 401, body = ErrorBody)))]
pub async fn list_shadowing<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Caller,
) -> Result<Json<Vec<ShadowingView>>, ApiError> {
    let params = CongestionControlParameters::default();
    let migrations = state.blocking(move |inv| Ok(inv.migrations(caller.tenant())?)).await?;
    let rows = migrations
        .into_iter()
        .filter(|m| m.lifecycle.state.is_shadowing())
        .map(|m| ShadowingView {
            ip_address: m.ip,
            source_vm_id: m.source,
            destination_vm_id: m.destination,
            migration_start_time: m.created_ms,
            traffic_split_percentage: m.split_pct,
            congestion_control_parameters: params,
            state: m.lifecycle.state,
            migration_id: m.id,
            deadline_ms: m.deadline_ms,
        })
        .collect();
    Ok(Json(rows))
}

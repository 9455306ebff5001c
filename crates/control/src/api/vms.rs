//! `/v1/vms`: a tenant's VMs (the admin's: everyone's).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::{ApiJson, ApiPath, ErrorBody};
use super::{ApiError, ApiState, Caller};
use crate::inventory::Vm;
use crate::store::Store;

/// `POST /v1/vms`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVm {
    /// Its id (unique across tenants): 1-64 letters, digits, `-`, `_`, `.`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub id: String,
    /// Its interface's MAC address: `02:00:00:00:00:0a`, `02-00-00-00-00-0A` or `02000000000a`
    /// (kept in the first form). Unique across tenants.
    #[schema(pattern = "^([0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}|[0-9A-Fa-f]{2}(-[0-9A-Fa-f]{2}){5}|[0-9A-Fa-f]{12})$")]
    pub mac: String,
    /// Where the router reaches it (the router port, by VM id, or a segment name): 1-64 letters,
    /// digits, `-`, `_`, `.`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub segment: String,
    /// The owner: required for the admin; a tenant may omit it or name itself.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub tenant: Option<String>,
}

/// The VMs the caller may see.
#[utoipa::path(get, path = "/v1/vms", tag = "vms", security(("bearer" = [])),
    responses((status = 200, body = [Vm]), (status = 401, body = ErrorBody)))]
pub async fn list_vms<S: Store>(State(state): State<ApiState<S>>, caller: Caller) -> Result<Json<Vec<Vm>>, ApiError> {
    state.blocking(move |inv| Ok(inv.vms(caller.tenant())?)).await.map(Json)
}

/// Adds a VM.
#[utoipa::path(post, path = "/v1/vms", tag = "vms", security(("bearer" = [])), request_body = CreateVm,
    responses((status = 201, body = Vm, description = "Added"),
        (status = 403, body = ErrorBody, description = "A tenant naming another (`forbidden`), or an id or MAC another \
            tenant's VM has (`not_available`: the same answer whatever the reason, the other record not shown)"),
        (status = 409, body = ErrorBody, description = "A VM of the caller's with this id or MAC exists (`exists`)"),
        (status = 422, body = ErrorBody, description = "A bad id or MAC, or (with a DHCP server in the process) a \
            reservation it would refuse (`invalid`)")))]
pub async fn create_vm<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateVm>,
) -> Result<(StatusCode, Json<Vm>), ApiError> {
    let vm = Vm { tenant: caller.owner(body.tenant.as_deref())?, id: body.id, mac: body.mac, segment: body.segment };
    let admission = state.admission.clone();
    let vm = state
        .blocking(move |inv| {
            // The MAC as the DHCP server will see it: the stored (normalised) one.
            let vm = Vm { mac: crate::inventory::normalise_mac(&vm.mac)?, ..vm };
            admission.admit_vm(&vm)?;
            Ok(inv.add_vm(&vm).map_err(|e| e.seen_by(caller.tenant()))?)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(vm)))
}

/// One VM.
#[utoipa::path(get, path = "/v1/vms/{id}", tag = "vms", security(("bearer" = [])),
    params(("id" = String, Path, description = "VM id", pattern = "^[A-Za-z0-9._-]{1,64}$")),
    responses((status = 200, body = Vm)))]
pub async fn get_vm<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Vm>, ApiError> {
    state.blocking(move |inv| Ok(inv.vm(caller.tenant(), &id)?.value)).await.map(Json)
}

/// Removes a VM that holds no address and is no running migration's destination.
#[utoipa::path(delete, path = "/v1/vms/{id}", tag = "vms", security(("bearer" = [])),
    params(("id" = String, Path, description = "VM id", pattern = "^[A-Za-z0-9._-]{1,64}$")),
    responses((status = 204, description = "Removed"),
        (status = 409, body = ErrorBody, description = "It holds an address, or a migration is moving one to it")))]
pub async fn delete_vm<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.blocking(move |inv| Ok(inv.remove_vm(caller.tenant(), &id)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

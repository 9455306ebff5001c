//! `/v1/addresses`: a tenant's addresses, and the seed's reassign call.

use std::net::Ipv4Addr;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiJson, ApiPath, ErrorBody};
use super::idempotency::NotRecorded;
use super::{ApiError, ApiResult, ApiState, Caller};
use crate::inventory::Address;
use crate::plan::Plan;
use crate::reassign::{Migration, ReassignRequest, Reassigned};
use crate::store::Store;

/// `POST /v1/addresses`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAddress {
    /// The address.
    #[schema(value_type = String, format = Ipv4)]
    pub ip: Ipv4Addr,
    /// The owner's VM holding it, if any.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub vm: Option<String>,
    /// The owner: required for the admin; a tenant may omit it or name itself.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub tenant: Option<String>,
}

/// `200` answer of a reassignment without `migrate`: the address has moved.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Moved {
    /// Always `moved`.
    pub result: MoveResult,
    /// The address as it is now.
    pub address: Address,
}

/// What [`Moved::result`] says: one value, so that a client can tell the two answers of a
/// reassignment apart by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MoveResult {
    /// The address has moved.
    Moved,
}

/// The addresses the caller may see.
#[utoipa::path(get, path = "/v1/addresses", tag = "addresses", security(("bearer" = [])),
    responses((status = 200, body = [Address]), (status = 401, body = ErrorBody)))]
pub async fn list_addresses<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Caller,
) -> Result<Json<Vec<Address>>, ApiError> {
    state.blocking(move |inv| Ok(inv.addresses(caller.tenant())?)).await.map(Json)
}

/// `200` answer of a dry run (`"dry_run": true`): what the call would do. Nothing was created
/// or changed.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct DryRun {
    /// `would_move` (without `migrate`) or `would_migrate`.
    pub result: DryRunResult,
    /// The address.
    #[schema(value_type = String, format = Ipv4)]
    pub ip: Ipv4Addr,
    /// The VM holding it now (none: only a move is possible).
    pub source: Option<String>,
    /// The VM that would get it.
    pub destination: String,
    /// With `would_migrate`: the plan the migration would follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
}

/// What a dry run says would happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DryRunResult {
    /// The address would move at once.
    WouldMove,
    /// A migration would start, following the plan.
    WouldMigrate,
}

/// The two `200` answers of a reassignment, told apart by `result`: moved at once, or a dry
/// run's.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ReassignOk {
    /// Moved at once.
    Moved(Moved),
    /// What a dry run would do.
    DryRun(DryRun),
}

/// Adds an address, held by one of the owner's VMs or by none.
#[utoipa::path(post, path = "/v1/addresses", tag = "addresses", security(("bearer" = [])),
    request_body = CreateAddress,
    responses((status = 201, body = Address, description = "Added"),
        (status = 403, body = ErrorBody, description = "A tenant naming another (`forbidden`), or an address outside \
            the prefixes the admin gave the tenant or held by another tenant (`not_available`: the same answer for \
            both, the other record not shown)"),
        (status = 404, body = ErrorBody, description = "No such VM of the owner"),
        (status = 409, body = ErrorBody, description = "The address exists, the caller's (`exists`)"),
        (status = 422, body = ErrorBody, description = "With a DHCP server in the process, an address in none of its \
            subnets or a reservation it would refuse; with a router, a VM it has no port for (`invalid`)")))]
pub async fn create_address<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateAddress>,
) -> Result<(StatusCode, Json<Address>), ApiError> {
    let tenant = caller.owner(body.tenant.as_deref())?;
    let admission = state.admission.clone();
    let address = state
        .blocking(move |inv| {
            admission.admit_address(inv, caller.tenant(), &tenant, body.ip, body.vm.as_deref())?;
            inv.add_address(&tenant, body.ip, body.vm.as_deref()).map_err(|e| e.seen_by(caller.tenant()))?;
            Ok(inv.address(None, body.ip)?.value)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(address)))
}

/// One address.
#[utoipa::path(get, path = "/v1/addresses/{ip}", tag = "addresses", security(("bearer" = [])),
    params(("ip" = String, Path, description = "IPv4 address", format = Ipv4)),
    responses((status = 200, body = Address)))]
pub async fn get_address<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Caller,
    ApiPath(ip): ApiPath<Ipv4Addr>,
) -> Result<Json<Address>, ApiError> {
    state.blocking(move |inv| Ok(inv.address(caller.tenant(), ip)?.value)).await.map(Json)
}

/// The seed's IP reassignment: without `migrate` the address moves at once (200); with it a
/// migration starts (202, `Location` names it) and the address moves without dropping
/// connections, following a plan fitted to the deadline: the default ramp shortened to fit, or
/// the requested one if it reaches 100 % in time (else 422 `ramp_does_not_fit`, saying what
/// would fit). With `dry_run` the same checks are made and the answer (200) says what would
/// happen, with the plan; nothing is created, and the answer is not recorded under an
/// `Idempotency-Key` (the key stays free for the real request).
#[utoipa::path(post, path = "/v1/addresses/{ip}/reassign", tag = "addresses", security(("bearer" = [])),
    request_body = ReassignRequest,
    params(("ip" = String, Path, description = "IPv4 address", format = Ipv4)),
    responses((status = 200, body = ReassignOk,
            description = "Moved at once (`result: moved`), or a dry run's answer (`would_move`, `would_migrate` \
                with the plan; nothing changed)"),
        (status = 202, body = Migration, description = "Migration started",
            headers(("Location" = String, description = "The migration (`/v1/migrations/{id}`)"))),
        (status = 404, body = ErrorBody, description = "No such address, or no such VM of its owner"),
        (status = 409, body = ErrorBody,
            description = "Already migrating, already held by that VM, held by no VM with `migrate`, or (with a \
                DHCP server in the process) A or the target already in another unfinished migration"),
        (status = 422, body = ErrorBody,
            description = "Well-formed but wrong (`invalid`; also a target the DHCP server or the router of the \
                process could not serve the address on), a ramp that cannot reach 100 % before the deadline \
                minus the destination's readiness allowance or never reaches it (`ramp_does_not_fit`: the message \
                gives the ramp's time to 100 %, the time available, a stepped ramp with the same percentages that \
                fits, the equivalent linear rate and the earliest deadline the ramp fits), or an Idempotency-Key \
                reused for another request (`idempotency_key_reused`)")))]
pub async fn reassign<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Caller,
    ApiPath(ip): ApiPath<Ipv4Addr>,
    ApiJson(request): ApiJson<ReassignRequest>,
) -> ApiResult {
    let now = (state.clock)();
    let policy = state.policy;
    let lease_end = state.parts.lease_end.as_ref().and_then(|f| f(ip));
    let dhcp_in_process = state.parts.dhcp_status.is_some();
    let admission = state.admission.clone();
    let done = state
        .blocking(move |inv| {
            // The parts must be able to take the address on its new holder (the owner's VM).
            let owner = inv.address(caller.tenant(), ip)?.value.tenant;
            admission.admit_holder(inv, &owner, ip, &request.to)?;
            if dhcp_in_process && request.migrate {
                inv.refuse_busy_vms(caller.tenant(), ip, &request.to)?;
            }
            // The seed's default deadline: the end of A's current lease, when a DHCP server
            // runs in this process and A holds one; else the requested one or the policy's.
            let dry_run = |result, plan| {
                let source = inv.address(caller.tenant(), ip)?.value.vm;
                Ok(Done::DryRun(DryRun { result, ip, source, destination: request.to.clone(), plan }))
            };
            match inv.reassign(caller.tenant(), ip, &request, now, lease_end, policy)? {
                Reassigned::Moved => Ok(Done::Moved(inv.address(caller.tenant(), ip)?.value)),
                Reassigned::Migrating(m) => Ok(Done::Migrating(m)),
                Reassigned::WouldMove => dry_run(DryRunResult::WouldMove, None),
                Reassigned::WouldMigrate(plan) => dry_run(DryRunResult::WouldMigrate, Some(*plan)),
            }
        })
        .await?;
    Ok(match done {
        Done::Moved(address) => (StatusCode::OK, Json(Moved { result: MoveResult::Moved, address })).into_response(),
        Done::DryRun(answer) => {
            let mut response = (StatusCode::OK, Json(answer)).into_response();
            // A question, not the operation: its key stays free for the real request.
            response.extensions_mut().insert(NotRecorded);
            response
        }
        Done::Migrating(m) => {
            let location = HeaderValue::from_str(&format!("/v1/migrations/{}", m.id))
                .map_err(|e| ApiError::internal(e.to_string()))?;
            (StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(*m)).into_response()
        }
    })
}

/// What a reassignment did, as the handler answers it.
enum Done {
    Moved(Address),
    Migrating(Box<Migration>),
    DryRun(DryRun),
}

/// Removes an address that no migration is moving (the router and the DHCP server let it go).
#[utoipa::path(delete, path = "/v1/addresses/{ip}", tag = "addresses", security(("bearer" = [])),
    params(("ip" = String, Path, description = "IPv4 address", format = Ipv4)),
    responses((status = 204, description = "Removed"),
        (status = 409, body = ErrorBody, description = "A migration is moving it")))]
pub async fn delete_address<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Caller,
    ApiPath(ip): ApiPath<Ipv4Addr>,
) -> Result<StatusCode, ApiError> {
    state.blocking(move |inv| Ok(inv.remove_address(caller.tenant(), ip)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

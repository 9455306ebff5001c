//! `/v1/migrations`: the migrations the caller may see, and the user's controls over one
//! (pause, resume, promote, abort). The manager moves them through the other states; their
//! changes can be followed as server-sent events ([`super::events`]).

use axum::Json;
use axum::extract::State;

use serde::Deserialize;

use super::error::{ApiPath, ApiQuery, ErrorBody};
use super::observed::{MigrationView, observe};
use super::{ApiError, ApiState, Caller};
use crate::migration::MigrationEvent;
use crate::reassign::Migration;
use crate::store::Store;

/// Most migrations in one page of the list.
pub const MAX_PAGE: u32 = 1000;

/// A page of the migration list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// Only migrations with an id above this one (the last id of the previous page). An id, so
    /// at most 2^63 - 1 (the document's int64).
    #[param(minimum = 0)]
    pub after: Option<u64>,
    /// Most migrations returned, 1 to 1000 (default 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// The migrations the caller may see, oldest first, a page at a time: a page shorter than its
/// `limit` is the last. Ended migrations stay for the server's retention (by default 30 days,
/// at most 10,000).
#[utoipa::path(get, path = "/v1/migrations", tag = "migrations", security(("bearer" = [])), params(Page),
    responses((status = 200, body = [Migration]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list_migrations<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Caller,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Vec<Migration>>, ApiError> {
    let limit = page.limit.unwrap_or(MAX_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!("limit must be within 1..={MAX_PAGE}, not {limit}")));
    }
    let after = page.after.unwrap_or(0);
    if after > i64::MAX as u64 {
        return Err(ApiError::bad_request(format!("after must be a migration id, at most {}, not {after}", i64::MAX)));
    }
    let all = state.blocking(move |inv| Ok(inv.migrations(caller.tenant())?)).await?;
    // Ids grow with creation, so id order is the list's order.
    Ok(Json(all.into_iter().filter(|m| m.id > after).take(limit as usize).collect()))
}

/// One migration, with its state and history, and while it shadows its address the router's
/// latest measurements and drain forecast for it (`observed`, with the report's time and age).
#[utoipa::path(get, path = "/v1/migrations/{id}", tag = "migrations", security(("bearer" = [])),
    params(("id" = u64, Path, description = "Migration id")),
    responses((status = 200, body = MigrationView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn get_migration<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Caller,
    ApiPath(id): ApiPath<u64>,
) -> Result<Json<MigrationView>, ApiError> {
    let migration = state.blocking(move |inv| Ok(inv.migration(caller.tenant(), id)?)).await?;
    let now = (state.clock)();
    let observed =
        state.parts.router_status.as_ref().and_then(|f| f()).and_then(|status| observe(&status, &migration, now));
    Ok(Json(MigrationView { migration, observed }))
}

/// Applies a user's event to a migration the caller may see; a state that refuses it is 409.
async fn control<S: Store>(
    state: ApiState<S>,
    caller: Caller,
    id: u64,
    event: MigrationEvent,
) -> Result<Json<Migration>, ApiError> {
    let now = (state.clock)();
    state
        .blocking(move |inv| {
            // Visibility first: another tenant's migration reads as not found.
            inv.migration(caller.tenant(), id)?;
            Ok(inv.advance(id, event, now)?)
        })
        .await
        .map(Json)
}

/// Freezes the split where it is (the migration must be ramping).
#[utoipa::path(post, path = "/v1/migrations/{id}/pause", tag = "migrations", security(("bearer" = [])),
    params(("id" = u64, Path, description = "Migration id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key, 1-128 visible ASCII")),
    responses((status = 200, body = Migration), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn pause_migration<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Caller,
    ApiPath(id): ApiPath<u64>,
) -> Result<Json<Migration>, ApiError> {
    control(state, caller, id, MigrationEvent::Pause).await
}

/// Lets a paused split rise again.
#[utoipa::path(post, path = "/v1/migrations/{id}/resume", tag = "migrations", security(("bearer" = [])),
    params(("id" = u64, Path, description = "Migration id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key, 1-128 visible ASCII")),
    responses((status = 200, body = Migration), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn resume_migration<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Caller,
    ApiPath(id): ApiPath<u64>,
) -> Result<Json<Migration>, ApiError> {
    control(state, caller, id, MigrationEvent::Resume).await
}

/// Stops the migration: the address stays the source's.
#[utoipa::path(post, path = "/v1/migrations/{id}/abort", tag = "migrations", security(("bearer" = [])),
    params(("id" = u64, Path, description = "Migration id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key, 1-128 visible ASCII")),
    responses((status = 200, body = Migration), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn abort_migration<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Caller,
    ApiPath(id): ApiPath<u64>,
) -> Result<Json<Migration>, ApiError> {
    control(state, caller, id, MigrationEvent::Abort).await
}

/// Sends every new flow to B from now on (the migration must be ramping or paused, and not yet
/// promoted); the state does not change, and the deadline still ends A's remaining flows.
#[utoipa::path(post, path = "/v1/migrations/{id}/promote", tag = "migrations", security(("bearer" = [])),
    params(("id" = u64, Path, description = "Migration id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key, 1-128 visible ASCII")),
    responses((status = 200, body = Migration), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn promote_migration<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Caller,
    ApiPath(id): ApiPath<u64>,
) -> Result<Json<Migration>, ApiError> {
    control(state, caller, id, MigrationEvent::Promote).await
}

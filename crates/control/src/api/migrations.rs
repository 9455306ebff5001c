//! `/v1/migrations`: the migrations the caller may see, and the user's controls over one
//! (pause, resume, promote, abort). The manager moves them through the other states; their
//! changes can be followed as server-sent events ([`super::events`]).

use axum::Json;
use axum::extract::State;

use super::error::{ApiPath, ErrorBody};
use super::observed::{MigrationView, observe};
use super::{ApiError, ApiState, Caller};
use crate::migration::MigrationEvent;
use crate::reassign::Migration;
use crate::store::Store;

/// The migrations the caller may see, oldest first.
#[utoipa::path(get, path = "/v1/migrations", tag = "migrations", security(("bearer" = [])),
    responses((status = 200, body = [Migration]), (status = 401, body = ErrorBody)))]
pub async fn list_migrations<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Caller,
) -> Result<Json<Vec<Migration>>, ApiError> {
    state.blocking(move |inv| Ok(inv.migrations(caller.tenant())?)).await.map(Json)
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

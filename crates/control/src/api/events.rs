//! `GET /v1/migrations/{id}/events`: one migration's changes as server-sent events (what
//! `ipshadow migration watch` follows).
//!
//! The first event is the migration as it is; then every change to its record (the manager's
//! steps, a new split, the user's controls) is one `event: migration` with the whole record as
//! JSON and the store revision as the event id. While the migration shadows its address and a
//! router in the process reports it, an `event: observation` (no id: it is not a store version)
//! carries the router's newer measurements and drain forecast, at most once every
//! [`OBSERVATION_EVERY`]: the router reports five times a second, a watcher needs less. The stream ends after the event that brings the
//! migration to a final state, when the server shuts down, or with one `event: error` if the
//! record can no longer be read. Comments keep idle connections (and proxies) open.
//!
//! Each stream is a task awaiting the store's watch (no thread waits for it) and handing events
//! to the response through a tokio channel; the task ends within [`POLL`] once the client has
//! gone. Streams of unfinished migrations open at once are capped
//! ([`super::ApiState::max_event_streams`], [`DEFAULT_MAX_STREAMS`]), and so are each tenant's
//! ([`super::ApiState::max_event_streams_per_tenant`], [`DEFAULT_MAX_STREAMS_PER_TENANT`]): one
//! more is a 503 with `Retry-After`, so clients cannot hold the store's watches without bound,
//! and one tenant cannot take every stream from the others (the admin has only the overall cap).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::mpsc;

use super::error::{ApiPath, ErrorBody};
use super::observed::{Observation, observe};
use super::{ApiError, ApiState, Caller};
use crate::inventory::{InventoryError, decode};
use crate::reassign::{Migration, migration_key};
use crate::store::{Store, WatchEvent, Watcher};

/// How often an idle stream sends a comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How long the bridge task waits on the store before it checks that the client is still there.
pub const POLL: Duration = Duration::from_millis(250);

/// Event streams open at once by default.
pub const DEFAULT_MAX_STREAMS: usize = 256;

/// Event streams one tenant may have open at once by default: a quarter of all.
pub const DEFAULT_MAX_STREAMS_PER_TENANT: usize = DEFAULT_MAX_STREAMS / 4;

/// Events the bridge may be ahead of a slow client (then it waits; the store keeps the rest).
const BUFFER: usize = 16;

/// The shortest time between two `observation` events of one stream.
pub const OBSERVATION_EVERY: Duration = Duration::from_secs(1);

/// The router's observation of a migration's address now, if there is one.
type Observer = Box<dyn Fn(&Migration) -> Option<Observation> + Send + Sync>;

/// The migration's changes as server-sent events: first the migration as it is, then each new
/// version of it, until it reaches a final state.
#[utoipa::path(get, path = "/v1/migrations/{id}/events", tag = "migrations", security(("bearer" = [])),
    params(("id" = u64, Path, description = "Migration id")),
    responses(
        (status = 200, content_type = "text/event-stream", body = super::schema::MigrationStreamEventSchema,
            description = "`event: migration`, `id:` the store revision, `data:` the whole migration as JSON: \
                first the current one, then one per change; the stream ends after a final state. While the \
                migration shadows its address, `event: observation` (no id), `data:` the router's newer \
                measurements and drain forecast, at most once a second. An `event: error` (data: the error \
                shape) ends it when the record cannot be read."),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "Too many event streams are open, in all or of the caller's tenant: retry after `Retry-After` seconds.")))]
pub async fn migration_events<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Caller,
    ApiPath(id): ApiPath<u64>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let key = migration_key(id);
    // Taken before the store's watch is: a refused stream leaves nothing behind.
    let slot = StreamSlot::take(&state, caller.tenant())?;
    let (current, revision, watcher) = state
        .blocking(move |inv| {
            // Visibility first: another tenant's migration is 404 before any stream starts.
            inv.migration(caller.tenant(), id)?;
            // Read and watch from the same revision: no change is missed, none is sent twice.
            let (kvs, revision) = inv.store().range(&key).map_err(InventoryError::from)?;
            let kv = kvs
                .into_iter()
                .find(|kv| kv.key == key)
                .ok_or(InventoryError::NotFound { kind: "migration", id: id.to_string() })?;
            let current = decode::<Migration>(&kv)?.value;
            let watcher = inv.store().watch(&key, revision).map_err(InventoryError::from)?;
            Ok((current, kv.mod_revision, watcher))
        })
        .await?;

    let (sender, receiver) = mpsc::channel(BUFFER);
    // The channel is new and has room: the first event cannot be refused.
    let _ = sender.try_send(migration_event(&current, revision));
    if !current.lifecycle.state.is_final() {
        let key = migration_key(id);
        let observer = state.parts.router_status.clone().map(|status| {
            let clock = state.clock.clone();
            Box::new(move |m: &Migration| status().and_then(|s| observe(&s, m, clock()))) as Observer
        });
        tokio::spawn(async move {
            bridge(&watcher, &key, &sender, current, observer.as_ref()).await;
            drop(slot);
        });
    }

    let stopping = state.stopping.subscribe();
    let stream = futures_util::stream::unfold((receiver, stopping), |(mut receiver, mut stopping)| async move {
        let event = tokio::select! {
            event = receiver.recv() => event,
            // A stream open at shutdown would hold the graceful shutdown forever.
            _ = stopping.wait_for(|stop| *stop) => None,
        };
        event.map(|e| (Ok(e), (receiver, stopping)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive")))
}

/// The event streams open now: in all, and by tenant (a tenant with none has no entry, so the
/// map holds at most one entry per open stream).
#[derive(Debug, Default)]
pub(crate) struct OpenStreams {
    total: usize,
    by_tenant: HashMap<String, usize>,
}

/// One of the open streams the server allows: freed when dropped (the bridge task ends, or the
/// migration was already final and no task started).
struct StreamSlot {
    open: Arc<Mutex<OpenStreams>>,
    tenant: Option<String>,
}

impl StreamSlot {
    fn take<S: Store>(state: &ApiState<S>, tenant: Option<&str>) -> Result<Self, ApiError> {
        let (max, per_tenant) = (state.max_event_streams, state.max_event_streams_per_tenant);
        let mut open = lock(&state.event_streams);
        if open.total >= max {
            return Err(ApiError::unavailable(format!(
                "{max} event streams are open, the most this server allows: retry later"
            )));
        }
        if let Some(tenant) = tenant {
            let mine = open.by_tenant.entry(tenant.to_owned()).or_default();
            if *mine >= per_tenant {
                return Err(ApiError::unavailable(format!(
                    "your tenant has {per_tenant} event streams open, the most one tenant may: close one or retry later"
                )));
            }
            *mine += 1;
        }
        open.total += 1;
        Ok(Self { open: Arc::clone(&state.event_streams), tenant: tenant.map(str::to_owned) })
    }
}

/// The counts, whatever a panicking holder left (they are plain numbers, updated in one place).
fn lock(open: &Mutex<OpenStreams>) -> std::sync::MutexGuard<'_, OpenStreams> {
    open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        open.total = open.total.saturating_sub(1);
        if let Some(tenant) = &self.tenant
            && let Some(mine) = open.by_tenant.get_mut(tenant)
        {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                open.by_tenant.remove(tenant);
            }
        }
    }
}

/// Forwards the changes of `key` from the store's watch to the response until the migration is
/// final, the client has gone (the receiver is dropped) or the store is closed; between them,
/// the router's newer observations of the migration (`current`, as last sent) from `observer`.
async fn bridge(
    watcher: &Watcher,
    key: &str,
    sender: &mpsc::Sender<Event>,
    mut current: Migration,
    observer: Option<&Observer>,
) {
    let mut observed: Option<(Instant, u64)> = None;
    loop {
        if sender.is_closed() {
            return;
        }
        if let Some(observer) = observer
            && observed.is_none_or(|(sent, _)| sent.elapsed() >= OBSERVATION_EVERY)
            && let Some(seen) = observer(&current)
            && observed.is_none_or(|(_, at_ms)| at_ms != seen.at_ms)
        {
            observed = Some((Instant::now(), seen.at_ms));
            if sender.send(observation_event(&seen)).await.is_err() {
                return;
            }
        }
        let (event, last) = match tokio::time::timeout(POLL, watcher.next()).await {
            Ok(Some(WatchEvent::Put(kv))) if kv.key == key => match decode::<Migration>(&kv) {
                Ok(m) => {
                    let event = migration_event(&m.value, kv.mod_revision);
                    let last = m.value.lifecycle.state.is_final();
                    current = m.value;
                    (event, last)
                }
                Err(e) => (error_event(&ApiError::from(e)), true),
            },
            Ok(Some(WatchEvent::Delete { key, .. })) => {
                (error_event(&ApiError::internal(format!("{key} was deleted"))), true)
            }
            // A longer key under the same prefix (none is written today).
            Ok(Some(WatchEvent::Put(_))) => continue,
            // The store let go of the watch (shut down): nothing more will come.
            Ok(None) => return,
            // Quiet: look at the client and the router again.
            Err(_) => continue,
        };
        // Waits while the client is slow; fails once it has gone.
        if sender.send(event).await.is_err() || last {
            return;
        }
    }
}

/// `event: migration`, the store revision as its id, the migration as JSON.
fn migration_event(m: &Migration, revision: u64) -> Event {
    match serde_json::to_string(m) {
        Ok(json) => Event::default().event("migration").id(revision.to_string()).data(json),
        Err(e) => error_event(&ApiError::internal(format!("migration {}: {e}", m.id))),
    }
}

/// `event: observation`, the router's observation as JSON (no id: not a store version).
fn observation_event(seen: &Observation) -> Event {
    match serde_json::to_string(seen) {
        Ok(json) => Event::default().event("observation").data(json),
        Err(e) => error_event(&ApiError::internal(format!("observation: {e}"))),
    }
}

/// `event: error` with the API's error shape.
fn error_event(e: &ApiError) -> Event {
    let body = e.public_body();
    // Two strings always serialise.
    Event::default().event("error").data(serde_json::to_string(&body).unwrap_or_default())
}

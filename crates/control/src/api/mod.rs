//! The versioned JSON REST API (`/v1/...`): VMs, addresses, the seed's reassign call with
//! `migrate`, and migrations with pause, resume, promote and abort, and their changes as
//! server-sent events ([`events`]); `/healthz` and `/openapi.json`.
//!
//! Every request is authenticated by a bearer token ([`auth`]); every error has one JSON shape
//! ([`error`]); POSTs may carry an idempotency key ([`idempotency`]). Store calls are
//! synchronous (a write waits for fsync), so handlers run them on tokio's blocking pool.

pub mod addresses;
pub mod auth;
pub mod error;
pub mod events;
pub mod idempotency;
pub mod metrics;
pub mod migrations;
pub mod observed;
pub mod parts;
pub mod schema;
pub mod shadowing;
pub mod tls;
pub mod vms;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

pub use auth::{Caller, TokenTable};
pub use error::{ApiError, ErrorBody};
use schema::SharedResponses;

use crate::admission::Admission;
use crate::inventory::Inventory;
use crate::reassign::DeadlinePolicy;
use crate::store::Store;

/// The answer of a handler that chooses its status (and headers) itself.
pub(crate) type ApiResult = Result<Response, ApiError>;

/// The current time, unix milliseconds.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// What the handlers share.
pub struct ApiState<S: Store> {
    /// The inventory and migrations.
    pub inventory: Arc<Inventory<S>>,
    /// Who may call.
    pub tokens: Arc<TokenTable>,
    /// The clock (the system's by default; tests inject their own).
    pub clock: Clock,
    /// Limits on requested deadlines.
    pub policy: DeadlinePolicy,
    /// What tenants may claim and what the parts of this process can take.
    pub admission: Arc<Admission>,
    /// How long an idempotency record answers retries, milliseconds (24 h by default).
    pub idempotency_ttl_ms: u64,
    /// The other parts running in this process, when there are.
    pub parts: Parts,
    /// Event streams of unfinished migrations open at once, at most (each holds a watch on the
    /// store); one more is refused with 503 until one ends.
    pub max_event_streams: usize,
    /// Event streams one tenant may have open at once (within `max_event_streams`), so that one
    /// tenant cannot take them all; the admin has only the overall limit.
    pub max_event_streams_per_tenant: usize,
    /// Event streams open now.
    pub(crate) event_streams: Arc<std::sync::Mutex<events::OpenStreams>>,
    /// Set once [`serve`] begins to shut down: long-lived responses (event streams) end then,
    /// or the graceful shutdown would wait for them forever.
    pub(crate) stopping: Arc<tokio::sync::watch::Sender<bool>>,
}

/// The end of the current (not shadowed) lease on an address, unix milliseconds.
pub type LeaseEndSource = Arc<dyn Fn(std::net::Ipv4Addr) -> Option<u64> + Send + Sync>;

/// The router's last status report.
pub type RouterStatusSource = Arc<dyn Fn() -> Option<ipshadow_contracts::router::Status> + Send + Sync>;

/// The DHCP server's status (leases, counters, lease events by kind) as JSON.
pub type DhcpStatusSource = Arc<dyn Fn() -> Option<serde_json::Value> + Send + Sync>;

/// What the API may ask of the DHCP server and the router running in the same process
/// (`ipshadow serve`); both absent when the API runs alone.
#[derive(Clone, Default)]
pub struct Parts {
    /// A's lease end: the default deadline of a migration (the seed's rule).
    pub lease_end: Option<LeaseEndSource>,
    /// The router's status (of the active router, when there are several).
    pub router_status: Option<RouterStatusSource>,
    /// Every router's summary (`GET /v1/routers`, the groups' metrics).
    pub routers: Option<parts::RoutersSource>,
    /// The DHCP server's status.
    pub dhcp_status: Option<DhcpStatusSource>,
    /// The health of each part (`/healthz`, `/metrics`, the status endpoints).
    pub health: Option<parts::HealthSource>,
}

// Derived `Clone` would require `S: Clone` on the struct's users for no reason; every field is a
// cheap handle.
impl<S: Store> Clone for ApiState<S> {
    fn clone(&self) -> Self {
        Self {
            inventory: self.inventory.clone(),
            tokens: self.tokens.clone(),
            clock: self.clock.clone(),
            policy: self.policy,
            admission: self.admission.clone(),
            idempotency_ttl_ms: self.idempotency_ttl_ms,
            parts: self.parts.clone(),
            max_event_streams: self.max_event_streams,
            max_event_streams_per_tenant: self.max_event_streams_per_tenant,
            event_streams: self.event_streams.clone(),
            stopping: self.stopping.clone(),
        }
    }
}

impl<S: Store> ApiState<S> {
    /// State over `store` with `tokens`, the system clock, the default deadline policy, and the
    /// default [`Admission`] (tenants claim no address until given prefixes).
    pub fn new(store: S, tokens: TokenTable) -> Self {
        Self {
            inventory: Arc::new(Inventory::new(store)),
            tokens: Arc::new(tokens),
            clock: Arc::new(system_clock_ms),
            policy: DeadlinePolicy::default(),
            admission: Arc::default(),
            idempotency_ttl_ms: idempotency::DEFAULT_TTL_MS,
            parts: Parts::default(),
            max_event_streams: events::DEFAULT_MAX_STREAMS,
            max_event_streams_per_tenant: events::DEFAULT_MAX_STREAMS_PER_TENANT,
            event_streams: Arc::default(),
            stopping: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }

    /// Connects the API to the DHCP server and the router of this process.
    pub fn with_parts(mut self, parts: Parts) -> Self {
        self.parts = parts;
        self
    }

    /// Replaces what tenants may claim and what the parts can take.
    pub fn with_admission(mut self, admission: Admission) -> Self {
        self.admission = Arc::new(admission);
        self
    }

    /// Replaces the clock.
    pub fn with_clock(mut self, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Replaces how long idempotency records answer retries.
    pub fn with_idempotency_ttl_ms(mut self, ttl_ms: u64) -> Self {
        self.idempotency_ttl_ms = ttl_ms;
        self
    }

    /// Replaces the limit on event streams open at once.
    pub fn with_max_event_streams(mut self, max: usize) -> Self {
        self.max_event_streams = max;
        self
    }

    /// Replaces the limit on event streams one tenant may have open at once.
    pub fn with_max_event_streams_per_tenant(mut self, max: usize) -> Self {
        self.max_event_streams_per_tenant = max;
        self
    }

    /// Replaces the deadline policy.
    pub fn with_policy(mut self, policy: DeadlinePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Runs `f` on the inventory on the blocking pool (store calls wait for the disk); within a
    /// keyed POST, its first committed transaction also writes the request's idempotency record.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inventory<S>) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        // In a keyed POST, the operation's transaction carries the idempotency record.
        let inventory = match idempotency::RIDER.try_with(Arc::clone) {
            Ok(rider) => Arc::new(self.inventory.with_rider(rider)),
            Err(_) => self.inventory.clone(),
        };
        tokio::task::spawn_blocking(move || f(&inventory))
            .await
            .map_err(|e| ApiError::internal(format!("store task: {e}")))?
    }
}

/// Unix milliseconds by the system clock (0 before 1970, which no real clock reports).
fn system_clock_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The OpenAPI document, generated from the handlers and types below.
#[derive(OpenApi)]
#[openapi(
    info(title = "ipshadow", description = "Moves an IP address between VMs without dropping connections."),
    paths(
        health,
        vms::list_vms,
        vms::create_vm,
        vms::get_vm,
        vms::delete_vm,
        addresses::list_addresses,
        addresses::create_address,
        addresses::get_address,
        addresses::delete_address,
        addresses::reassign,
        migrations::list_migrations,
        migrations::get_migration,
        migrations::pause_migration,
        migrations::resume_migration,
        migrations::abort_migration,
        migrations::promote_migration,
        events::migration_events,
        shadowing::list_shadowing,
        parts::router_status,
        parts::routers,
        parts::dhcp_status,
        metrics::metrics,
    ),
    components(schemas(ErrorBody, Health, parts::PartHealth)),
    modifiers(&BearerScheme, &SharedResponses),
)]
pub struct ApiDoc;

/// Adds the `bearer` security scheme the paths refer to.
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `GET /healthz`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` while the process serves requests and every part in it runs; `degraded` when one
    /// does not (it is being restarted, or stuck).
    pub status: &'static str,
    /// The parts running in this process (none: only the API and the manager), each with its
    /// health.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<parts::PartHealth>,
}

/// The process is up (no token needed: load balancers and probes call it); 503 names a part of
/// it that is down (restarting after a failure) or stuck.
#[utoipa::path(get, path = "/healthz", tag = "meta",
    responses((status = 200, body = Health), (status = 503, body = Health,
        description = "A part is down or stuck (`status: degraded`; `parts` says which, with its last failure)")))]
async fn health<S: Store>(axum::extract::State(state): axum::extract::State<ApiState<S>>) -> Response {
    let parts = state.parts.health.as_ref().map(|f| f()).unwrap_or_default();
    if parts.iter().all(parts::PartHealth::ok) {
        axum::Json(Health { status: "ok", parts }).into_response()
    } else {
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, axum::Json(Health { status: "degraded", parts })).into_response()
    }
}

/// The API's routes over `state`.
pub fn router<S: Store>(state: ApiState<S>) -> Router {
    // Generated once: the document depends only on the code.
    let document = ApiDoc::openapi().to_json().map_err(|e| e.to_string());
    let openapi = move || {
        let document = document.clone();
        async move {
            match document {
                Ok(json) => {
                    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], json).into_response()
                }
                Err(e) => ApiError::internal(format!("openapi document: {e}")).into_response(),
            }
        }
    };
    Router::new()
        .route("/v1/vms", get(vms::list_vms::<S>).post(vms::create_vm::<S>))
        .route("/v1/vms/{id}", get(vms::get_vm::<S>).delete(vms::delete_vm::<S>))
        .route("/v1/addresses", get(addresses::list_addresses::<S>).post(addresses::create_address::<S>))
        .route("/v1/addresses/{ip}", get(addresses::get_address::<S>).delete(addresses::delete_address::<S>))
        .route("/v1/addresses/{ip}/reassign", post(addresses::reassign::<S>))
        .route("/v1/migrations", get(migrations::list_migrations::<S>))
        .route("/v1/migrations/{id}", get(migrations::get_migration::<S>))
        .route("/v1/migrations/{id}/pause", post(migrations::pause_migration::<S>))
        .route("/v1/migrations/{id}/resume", post(migrations::resume_migration::<S>))
        .route("/v1/migrations/{id}/abort", post(migrations::abort_migration::<S>))
        .route("/v1/migrations/{id}/promote", post(migrations::promote_migration::<S>))
        .route("/v1/migrations/{id}/events", get(events::migration_events::<S>))
        .route("/v1/shadowing", get(shadowing::list_shadowing::<S>))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), idempotency::layer::<S>))
        .route("/metrics", get(metrics::metrics::<S>))
        .route("/v1/router/status", get(parts::router_status::<S>))
        .route("/v1/routers", get(parts::routers::<S>))
        .route("/v1/dhcp/status", get(parts::dhcp_status::<S>))
        .route("/healthz", get(health::<S>))
        .route("/openapi.json", get(openapi))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn(read_whole_body))
        .with_state(state)
}

/// Reads every request's body before anything answers it. A refusal that comes before the body
/// is read (a missing token, an unknown path) would otherwise leave it unread, and the server
/// closes such a keep-alive connection after its answer: a client that reuses it for its next
/// request meets a closed connection (ureq: "Peer disconnected"). Bodies here are small JSON
/// documents; one over [`idempotency::MAX_BODY`] is refused.
async fn read_whole_body(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let (parts, body) = request.into_parts();
    match axum::body::to_bytes(body, idempotency::MAX_BODY).await {
        Ok(bytes) => next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))).await,
        Err(e) => {
            ApiError::bad_request(format!("request body unreadable or over {} bytes: {e}", idempotency::MAX_BODY))
                .into_response()
        }
    }
}

/// Serves the API on `listener` (a [`tokio::net::TcpListener`] for plain HTTP, a
/// [`tls::TlsListener`] for HTTPS) until `shutdown` completes, then stops accepting and lets the
/// requests under way finish.
pub async fn serve<S: Store, L>(
    listener: L,
    state: ApiState<S>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let stopping = state.stopping.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.send_replace(true);
    };
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

//! Helpers shared by the API tests: the tokens they use and the API served on 127.0.0.1 over
//! real TCP, with a store of its own and a client. Each test file keeps its own requests and
//! replies (their shapes differ) and builds the [`ApiState`] it needs.

#![allow(dead_code)]

use ipshadow_control::RedbStore;
use ipshadow_control::admission::{Admission, Ipv4Net};
use ipshadow_control::api::{ApiState, TokenTable, serve};

/// The clock of the tests that do not move it (ms since the epoch).
pub const NOW: u64 = 1_800_000_000_000;
/// The admin's token.
pub const ADMIN: &str = "admin-secret";
/// Tenant acme's token.
pub const ACME: &str = "acme-secret";
/// Tenant zeta's token.
pub const ZETA: &str = "zeta-secret";

/// The API on a free port of 127.0.0.1, stopped (gracefully, then its runtime) when dropped.
pub struct Api {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// A client of it without a token of its own (each request names its token); its
    /// [`send`](ipshadow_client::Api::send) returns every status as a reply.
    pub client: ipshadow_client::Api,
    /// The store the API serves (to look underneath, or to stand in for the manager).
    pub store: RedbStore,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
    /// The store's folder, removed after the server stopped.
    _dir: tempfile::TempDir,
}

impl Api {
    /// Serves the state `state` builds on a new store in a new temporary folder
    /// `ipshadow-{suite}-{name}-*` (removed when dropped): `suite` and `name` name the test.
    pub fn start(suite: &str, name: &str, state: impl FnOnce(RedbStore) -> ApiState<RedbStore>) -> Self {
        let dir = tempfile::Builder::new().prefix(&format!("ipshadow-{suite}-{name}-")).tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("store.redb")).unwrap();
        let state = state(store.clone());
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(serve(listener, state, async {
            let _ = stop.await;
        }));
        let client = ipshadow_client::Api::new(&base, None, None).unwrap();
        Self { base, client, store, shutdown: Some(shutdown), runtime: Some(runtime), _dir: dir }
    }

    /// Starts the graceful shutdown (the streams still open end); a second call does nothing.
    pub fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.stop();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(std::time::Duration::from_secs(5));
        }
    }
}

/// The admin, acme and zeta with their tokens, on a clock stopped at [`NOW`]; acme and zeta may
/// claim addresses in [`TENANT_PREFIX`].
pub fn tenants_at_now(store: RedbStore) -> ApiState<RedbStore> {
    let tokens = TokenTable::new(ADMIN).with_tenant(ACME, "acme").with_tenant(ZETA, "zeta");
    ApiState::new(store, tokens).with_clock(|| NOW).with_admission(tenant_prefixes())
}

/// The prefix the tests' tenants may claim addresses in (both of them: which tenant holds an
/// address is the inventory's to say).
pub const TENANT_PREFIX: &str = "10.0.0.0/8";

/// acme and zeta may claim [`TENANT_PREFIX`].
pub fn tenant_prefixes() -> Admission {
    let net: Ipv4Net = TENANT_PREFIX.parse().unwrap();
    Admission::new().with_prefixes("acme", [net]).with_prefixes("zeta", [net])
}

//! The REST API against the running server over real TCP, with a real HTTP client: the full
//! migration flow, every refusal (with the one JSON error shape), tenant isolation, idempotent
//! retries, the plan fitted to the deadline (a ramp that cannot fit is 422 `ramp_does_not_fit`),
//! dry runs that create nothing, the OpenAPI document and the health check. The API runs here without the manager
//! (which `ipshadow serve` runs beside it): the tests advance a migration through the store as
//! the manager would, to reach every state quickly. The manager's own part, through the same
//! API with a real DHCP client and router, is `crates/ipshadow/tests/lab_demo.rs`.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{ACME, ADMIN, Api, NOW, ZETA};
use ipshadow_client::Request;
use ipshadow_control::api::{ApiState, Parts};
use ipshadow_control::inventory::Inventory;
use ipshadow_control::migration::MigrationEvent;
use ipshadow_control::{RedbStore, Store};
use serde_json::{Value, json};

const X: &str = "10.0.0.10";

/// A server on 127.0.0.1, a client, and the store underneath (to stand in for the manager).
struct Server {
    api: Api,
    manager: Inventory<RedbStore>,
}

/// A response: status, `Location`, `WWW-Authenticate`, JSON body (`null` when empty).
struct Reply {
    status: u16,
    location: Option<String>,
    www_authenticate: Option<String>,
    body: Value,
    raw: String,
}

impl Server {
    /// The admin, acme and zeta, on a clock stopped at [`NOW`].
    fn start(name: &str) -> Self {
        let api = Api::start("api", name, common::tenants_at_now);
        let manager = Inventory::new(api.store.clone());
        Self { api, manager }
    }

    /// Sends a request; `body` is sent as JSON text as is (so malformed JSON can be sent).
    fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>, key: Option<&str>) -> Reply {
        let mut request = Request::new(method, path);
        request = match token {
            Some(token) => request.bearer(token),
            None => request.without_token(),
        };
        if let Some(key) = key {
            request = request.idempotency_key(key);
        }
        if let Some(body) = body {
            request = request.body(Some("application/json"), body);
        }
        let reply = self.api.client.send(&request).unwrap();
        let header = |name: &str| reply.header(name).map(str::to_owned);
        let (location, www_authenticate) = (header("location"), header("www-authenticate"));
        // Every response is JSON except /metrics' success (Prometheus text), read as `raw`.
        let text = reply.header("content-type").is_some_and(|v| v.starts_with("text/plain"));
        let body = if reply.text.is_empty() || text { Value::Null } else { serde_json::from_str(&reply.text).unwrap() };
        Reply { status: reply.status, location, www_authenticate, body, raw: reply.text }
    }

    fn get(&self, path: &str, token: &str) -> Reply {
        self.call("GET", path, Some(token), None, None)
    }

    fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call("POST", path, Some(token), Some(&body.to_string()), None)
    }

    /// acme's VMs vm-a and vm-b, zeta's vm-z, and acme's X held by vm-a, created by the admin.
    fn with_inventory(name: &str) -> Self {
        Self::with_inventory_on(name, common::tenants_at_now)
    }

    /// As [`Server::with_inventory`], on the state `state` builds.
    fn with_inventory_on(name: &str, state: fn(RedbStore) -> ApiState<RedbStore>) -> Self {
        let api = Api::start("api", name, state);
        let s = Self { manager: Inventory::new(api.store.clone()), api };
        for (id, tenant, mac) in [
            ("vm-a", "acme", "02:00:00:00:00:0a"),
            ("vm-b", "acme", "02:00:00:00:00:0b"),
            ("vm-z", "zeta", "02:00:00:00:00:0c"),
        ] {
            let r = s.post("/v1/vms", ADMIN, json!({"id": id, "mac": mac, "segment": id, "tenant": tenant}));
            assert_eq!(r.status, 201, "{}", r.raw);
            assert_eq!(r.body, json!({"id": id, "tenant": tenant, "mac": mac, "segment": id}));
        }
        let r = s.post("/v1/addresses", ADMIN, json!({"ip": X, "vm": "vm-a", "tenant": "acme"}));
        assert_eq!(r.status, 201, "{}", r.raw);
        assert_eq!(r.body, json!({"ip": X, "tenant": "acme", "vm": "vm-a", "migration": null}));
        s
    }

    /// Does what the manager will: writes the plan, then reports B's lease bound (the ramp starts).
    fn manager_starts_ramp(&self, id: u64) {
        self.manager.advance(id, MigrationEvent::PlanWritten, NOW).unwrap();
        self.manager.advance(id, MigrationEvent::DestinationLeaseBound, NOW).unwrap();
        self.manager.advance(id, MigrationEvent::DestinationReady, NOW).unwrap();
    }
}

fn assert_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.raw);
    assert_eq!(r.body["error"], code, "{}", r.raw);
    assert!(r.body["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", r.raw);
    assert_eq!(r.body.as_object().unwrap().len(), 2, "only error and message: {}", r.raw);
}

#[test]
fn the_full_flow_migrate_pause_resume_abort_and_again() {
    let s = Server::with_inventory("flow");
    let r = s.post(&format!("/v1/addresses/{X}/reassign"), ACME, json!({"to": "vm-b", "migrate": true}));
    assert_eq!(r.status, 202, "{}", r.raw);
    assert_eq!(r.location.as_deref(), Some("/v1/migrations/1"));
    assert_eq!(
        (r.body["id"].as_u64(), r.body["source"].as_str(), r.body["destination"].as_str()),
        (Some(1), Some("vm-a"), Some("vm-b"))
    );
    assert_eq!(r.body["lifecycle"]["state"], "pending");
    // No lease end is known yet: the policy's default (1 h) applies and is shown.
    assert_eq!(
        (r.body["deadline_ms"].as_u64(), r.body["deadline_source"].as_str()),
        (Some(NOW + 3_600_000), Some("policy_default"))
    );
    let got = s.get("/v1/migrations/1", ACME);
    assert_eq!((got.status, &got.body), (200, &r.body));
    let a = s.get(&format!("/v1/addresses/{X}"), ACME);
    assert_eq!((a.body["vm"].as_str(), a.body["migration"].as_u64()), (Some("vm-a"), Some(1)));

    // Nothing to pause before the ramp starts.
    assert_error(&s.call("POST", "/v1/migrations/1/pause", Some(ACME), None, None), 409, "conflict");
    // A pending migration shadows nothing yet.
    assert_eq!(s.get("/v1/shadowing", ACME).body, json!([]));
    s.manager_starts_ramp(1);
    // Now the seed's shadowing table lists the address with its fields.
    let table = s.get("/v1/shadowing", ACME);
    assert_eq!(table.status, 200);
    let row = &table.body[0];
    assert_eq!(
        (row["ip_address"].as_str(), row["source_vm_id"].as_str(), row["destination_vm_id"].as_str()),
        (Some(X), Some("vm-a"), Some("vm-b"))
    );
    assert_eq!((row["migration_start_time"].as_u64(), row["state"].as_str()), (Some(NOW), Some("ramping")));
    assert_eq!(row["traffic_split_percentage"].as_f64(), Some(0.0));
    assert!(row["congestion_control_parameters"]["additive_increase_pct"].is_number(), "{row}");
    for (action, state) in [("pause", "paused"), ("resume", "ramping"), ("abort", "aborted")] {
        let r = s.call("POST", &format!("/v1/migrations/1/{action}"), Some(ACME), None, None);
        assert_eq!(r.status, 200, "{action}: {}", r.raw);
        assert_eq!(r.body["lifecycle"]["state"], state);
    }
    assert_error(&s.call("POST", "/v1/migrations/1/resume", Some(ACME), None, None), 409, "conflict");
    let history: Vec<String> = s.get("/v1/migrations/1", ACME).body["lifecycle"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["to"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        history,
        ["waiting_for_destination_lease", "waiting_for_destination_lease", "ramping", "paused", "ramping", "aborted"]
    );
    // Aborted: X is A's again, with no migration mark, and a second migration can start.
    let a = s.get(&format!("/v1/addresses/{X}"), ACME);
    assert_eq!(a.body, json!({"ip": X, "tenant": "acme", "vm": "vm-a", "migration": null}));
    let r = s.post(&format!("/v1/addresses/{X}/reassign"), ACME, json!({"to": "vm-b", "migrate": true, "deadline_ms": NOW + 60_000, "ramp": {"kind": "linear", "pct_per_sec": 2.0}}));
    assert_eq!(r.status, 202, "{}", r.raw);
    assert_eq!(r.location.as_deref(), Some("/v1/migrations/2"));
    assert_eq!(r.body["deadline_source"], "requested");
    assert_eq!(s.get("/v1/migrations", ACME).body.as_array().unwrap().len(), 2);

    // Without migrate the classic move: at once, 200 with the address as it now is.
    let y = "10.0.0.11";
    assert_eq!(s.post("/v1/addresses", ACME, json!({"ip": y, "vm": "vm-a"})).status, 201);
    let r = s.post(&format!("/v1/addresses/{y}/reassign"), ACME, json!({"to": "vm-b"}));
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(
        r.body,
        json!({"result": "moved", "address": {"ip": y, "tenant": "acme", "vm": "vm-b", "migration": null}})
    );

    // VMs: a tenant creates its own; one holding an address cannot go; a free one can.
    let r = s.post("/v1/vms", ACME, json!({"id": "vm-c", "mac": "02:00:00:00:00:0d", "segment": "s1"}));
    assert_eq!((r.status, r.body["tenant"].as_str()), (201, Some("acme")));
    assert_error(&s.call("DELETE", "/v1/vms/vm-b", Some(ACME), None, None), 409, "conflict");
    let r = s.call("DELETE", "/v1/vms/vm-c", Some(ACME), None, None);
    assert_eq!((r.status, r.raw.as_str()), (204, ""));
    assert_error(&s.get("/v1/vms/vm-c", ACME), 404, "not_found");
    let ids: Vec<String> =
        s.get("/v1/vms", ADMIN).body.as_array().unwrap().iter().map(|v| v["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, ["vm-a", "vm-b", "vm-z"]);
}

#[test]
fn every_refusal_is_precise_and_changes_nothing() {
    let s = Server::with_inventory("refusals");
    let reassign = |ip: &str, body: Value| s.post(&format!("/v1/addresses/{ip}/reassign"), ACME, body);
    assert_error(&reassign("10.9.9.9", json!({"to": "vm-b", "migrate": true})), 404, "not_found");
    assert_error(&reassign(X, json!({"to": "vm-nope", "migrate": true})), 404, "not_found");
    assert_error(&reassign(X, json!({"to": "vm-z", "migrate": true})), 404, "not_found");
    assert_error(&reassign(X, json!({"to": "vm-a", "migrate": true})), 409, "conflict");
    assert_error(&reassign(X, json!({"to": "vm-b", "migrate": true, "deadline_ms": NOW + 1_000})), 422, "invalid");
    assert_error(
        &reassign(X, json!({"to": "vm-b", "migrate": true, "ramp": {"kind": "linear", "pct_per_sec": 0.0}})),
        422,
        "invalid",
    );
    assert_error(&reassign(X, json!({"to": "vm-b", "deadline_ms": NOW + 60_000})), 422, "invalid");
    // Malformed requests: the same JSON shape, never axum's plain text.
    let bad = s.call("POST", &format!("/v1/addresses/{X}/reassign"), Some(ACME), Some("{\"to\": "), None);
    assert_error(&bad, 400, "bad_request");
    assert_error(&reassign(X, json!({"to": "vm-b", "migrate": true, "speed": 9})), 422, "invalid");
    assert_error(&reassign(X, json!({"migrate": true})), 422, "invalid");
    assert_error(&reassign("not-an-ip", json!({"to": "vm-b"})), 400, "bad_request");
    assert_error(&s.get("/v1/migrations/abc", ACME), 400, "bad_request");
    assert_error(&s.get("/v1/migrations/99", ACME), 404, "not_found");
    let untyped = s.api.client.send(&Request::post("/v1/vms").bearer(ACME).body(None, "{}")).unwrap();
    assert_eq!(untyped.status, 400, "a body not declared as JSON");
    assert_error(&s.get("/v1/nothing-here", ACME), 404, "not_found");
    assert_error(&s.call("PUT", "/v1/vms", Some(ACME), Some("{}"), None), 405, "method_not_allowed");
    // Inventory refusals.
    assert_error(
        &s.post("/v1/vms", ADMIN, json!({"id": "vm-a", "mac": "02:00:00:00:00:0e", "segment": "s", "tenant": "acme"})),
        409,
        "exists",
    );
    assert_error(&s.post("/v1/vms", ACME, json!({"id": "vm-q", "mac": "not-a-mac", "segment": "s"})), 422, "invalid");
    assert_error(
        &s.post("/v1/vms", ADMIN, json!({"id": "vm-q", "mac": "02:00:00:00:00:0e", "segment": "s"})),
        422,
        "invalid",
    );
    assert_error(&s.post("/v1/addresses", ACME, json!({"ip": X})), 409, "exists");
    assert_error(&s.post("/v1/addresses", ACME, json!({"ip": "10.0.0.12", "vm": "vm-z"})), 404, "not_found");
    // Nothing changed: X is still A's, no migration exists.
    assert_eq!(s.get(&format!("/v1/addresses/{X}"), ACME).body["migration"], Value::Null);
    assert_eq!(s.get("/v1/migrations", ADMIN).body, json!([]));
    // Already migrating.
    assert_eq!(reassign(X, json!({"to": "vm-b", "migrate": true})).status, 202);
    assert_error(&reassign(X, json!({"to": "vm-b", "migrate": true})), 409, "conflict");
    assert_error(&reassign(X, json!({"to": "vm-b"})), 409, "conflict");
    assert_eq!(s.get("/v1/migrations", ADMIN).body.as_array().unwrap().len(), 1);
}

/// With a DHCP server in the process (which leases a VM one address), a migration that would
/// give a VM a second unfinished one is refused at the call, not failed by the manager later.
#[test]
fn with_a_dhcp_server_a_vm_takes_part_in_one_migration_at_a_time() {
    let with_dhcp = |store| {
        let parts = Parts { dhcp_status: Some(Arc::new(|| None)), ..Parts::default() };
        common::tenants_at_now(store).with_parts(parts)
    };
    let s = Server::with_inventory_on("busy", with_dhcp);
    let y = "10.0.0.11";
    assert_eq!(
        s.post("/v1/vms", ADMIN, json!({"id": "vm-c", "mac": "02:00:00:00:00:0d", "segment": "c", "tenant": "acme"}))
            .status,
        201
    );
    assert_eq!(s.post("/v1/addresses", ACME, json!({"ip": y, "vm": "vm-c"})).status, 201);
    let reassign =
        |ip: &str, to: &str| s.post(&format!("/v1/addresses/{ip}/reassign"), ACME, json!({"to": to, "migrate": true}));
    assert_eq!(reassign(X, "vm-b").status, 202);
    // vm-b is X's destination: Y cannot go there; vm-a is X's source: Y cannot go there either.
    for to in ["vm-b", "vm-a"] {
        let r = reassign(y, to);
        assert_error(&r, 409, "conflict");
        assert!(
            r.body["message"].as_str().unwrap().contains(&format!("{to} already takes part in migration 1")),
            "{}",
            r.raw
        );
    }
    // Another tenant's address is 404 before anything about VMs is said.
    assert_error(
        &s.post(&format!("/v1/addresses/{X}/reassign"), ZETA, json!({"to": "vm-z", "migrate": true})),
        404,
        "not_found",
    );
    // Without migrate the address moves at once: no DHCP plan, no refusal.
    assert_eq!(s.post(&format!("/v1/addresses/{y}/reassign"), ACME, json!({"to": "vm-b"})).status, 200);
    // Once X's migration ends, vm-b is free again.
    assert_eq!(s.post("/v1/migrations/1/abort", ACME, json!({})).status, 200);
    assert_eq!(reassign(y, "vm-a").status, 202);
    assert_eq!(s.get("/v1/migrations", ADMIN).body.as_array().unwrap().len(), 2);
}

#[test]
fn tenants_are_isolated_and_tokens_required() {
    let s = Server::with_inventory("tenants");
    assert_eq!(
        s.post(&format!("/v1/addresses/{X}/reassign"), ACME, json!({"to": "vm-b", "migrate": true})).status,
        202
    );
    // zeta sees nothing of acme's: its VMs, addresses and migrations read as not found.
    for path in ["/v1/vms/vm-a", &format!("/v1/addresses/{X}"), "/v1/migrations/1"] {
        assert_error(&s.get(path, ZETA), 404, "not_found");
    }
    assert_eq!(s.get("/v1/vms", ZETA).body.as_array().unwrap().len(), 1);
    assert_eq!(s.get("/v1/addresses", ZETA).body, json!([]));
    assert_eq!(s.get("/v1/migrations", ZETA).body, json!([]));
    assert_eq!(s.get("/v1/shadowing", ZETA).body, json!([]));
    // ... and cannot touch it.
    assert_error(&s.post(&format!("/v1/addresses/{X}/reassign"), ZETA, json!({"to": "vm-z"})), 404, "not_found");
    for action in ["pause", "resume", "abort"] {
        assert_error(&s.call("POST", &format!("/v1/migrations/1/{action}"), Some(ZETA), None, None), 404, "not_found");
    }
    assert_error(&s.call("DELETE", "/v1/vms/vm-b", Some(ZETA), None, None), 404, "not_found");
    let foreign = json!({"id": "vm-y", "mac": "02:00:00:00:00:0f", "segment": "s", "tenant": "acme"});
    assert_error(&s.post("/v1/vms", ZETA, foreign), 403, "forbidden");
    assert_error(&s.post("/v1/addresses", ZETA, json!({"ip": "10.0.0.20", "tenant": "acme"})), 403, "forbidden");
    assert_eq!(s.get("/v1/migrations/1", ACME).body["lifecycle"]["state"], "pending");
    // No token, an unknown one, another scheme: 401 naming the Bearer scheme.
    for r in [
        s.call("GET", "/v1/vms", None, None, None),
        s.get("/v1/vms", "nobody"),
        s.call("POST", &format!("/v1/addresses/{X}/reassign"), None, Some("{}"), Some("k")),
    ] {
        assert_error(&r, 401, "unauthorized");
        assert_eq!(r.www_authenticate.as_deref(), Some("Bearer"));
    }
    // Metrics are the operator's.
    assert_error(&s.get("/metrics", ACME), 403, "forbidden");
    let metrics = s.get("/metrics", ADMIN);
    assert_eq!(metrics.status, 200);
    for line in
        ["ipshadow_vms 3", "ipshadow_migrations{state=\"pending\"} 1", "ipshadow_migrations{state=\"ramping\"} 0"]
    {
        assert!(metrics.raw.lines().any(|l| l == line), "{line} missing from:\n{}", metrics.raw);
    }
    // The admin sees every tenant.
    assert_eq!(s.get("/v1/migrations/1", ADMIN).status, 200);
    assert_eq!(s.get("/v1/vms", ADMIN).body.as_array().unwrap().len(), 3);
}

#[test]
fn idempotent_retries_create_one_migration() {
    let s = Server::with_inventory("idempotency");
    let path = format!("/v1/addresses/{X}/reassign");
    let body = json!({"to": "vm-b", "migrate": true}).to_string();
    let first = s.call("POST", &path, Some(ACME), Some(&body), Some("move-x-1"));
    let again = s.call("POST", &path, Some(ACME), Some(&body), Some("move-x-1"));
    assert_eq!(first.status, 202, "{}", first.raw);
    assert_eq!((again.status, &again.raw, &again.location), (first.status, &first.raw, &first.location));
    assert_eq!(s.get("/v1/migrations", ACME).body.as_array().unwrap().len(), 1);
    // The same key for another request is refused; without a key the retry is a new request.
    let other = json!({"to": "vm-b", "migrate": true, "deadline_ms": NOW + 60_000}).to_string();
    assert_error(&s.call("POST", &path, Some(ACME), Some(&other), Some("move-x-1")), 422, "idempotency_key_reused");
    assert_error(&s.call("POST", &path, Some(ACME), Some(&body), None), 409, "conflict");
    assert_error(&s.call("POST", &path, Some(ACME), Some(&body), Some("has space")), 400, "bad_request");
    // Keys are per tenant: zeta's "move-x-1" is its own.
    let vm = json!({"id": "vm-y", "mac": "02:00:00:00:00:0f", "segment": "s"}).to_string();
    assert_eq!(s.call("POST", "/v1/vms", Some(ZETA), Some(&vm), Some("move-x-1")).status, 201);
    // A refusal is not recorded: once the state allows it, the same key succeeds.
    s.manager_starts_ramp(1);
    let pause = s.call("POST", "/v1/migrations/1/pause", Some(ACME), None, Some("p"));
    assert_eq!(pause.status, 200, "{}", pause.raw);
    assert_eq!(s.call("POST", "/v1/migrations/1/pause", Some(ACME), None, Some("p")).raw, pause.raw);

    // Two identical keyed requests racing: exactly one migration, and every later retry
    // returns it.
    let s = Server::with_inventory("idempotency-race");
    let replies: Vec<Reply> = std::thread::scope(|scope| {
        let handles: Vec<_> =
            (0..2).map(|_| scope.spawn(|| s.call("POST", &path, Some(ACME), Some(&body), Some("race")))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(replies.iter().any(|r| r.status == 202), "one of them started it");
    assert!(replies.iter().all(|r| r.status == 202 || r.status == 409), "the other answered or was refused");
    assert_eq!(s.get("/v1/migrations", ACME).body.as_array().unwrap().len(), 1);
    let retry = s.call("POST", &path, Some(ACME), Some(&body), Some("race"));
    assert_eq!((retry.status, retry.location.as_deref()), (202, Some("/v1/migrations/1")));
}

#[test]
fn an_address_is_removed_unless_it_is_migrating() {
    let s = Server::with_inventory("remove-address");
    let path = format!("/v1/addresses/{X}");
    // Another tenant's address reads as not found, and stays.
    assert_error(&s.call("DELETE", &path, Some(ZETA), None, None), 404, "not_found");
    // A migrating address is refused, and stays.
    let r = s.post(&format!("{path}/reassign"), ACME, json!({"to": "vm-b", "migrate": true}));
    assert_eq!(r.status, 202, "{}", r.raw);
    assert_error(&s.call("DELETE", &path, Some(ACME), None, None), 409, "conflict");
    assert_eq!(s.get(&path, ACME).status, 200);
    // Once the migration ended, the owner removes it.
    assert_eq!(s.post("/v1/migrations/1/abort", ACME, json!({})).status, 200);
    let r = s.call("DELETE", &path, Some(ACME), None, None);
    assert_eq!(r.status, 204, "{}", r.raw);
    assert_error(&s.get(&path, ACME), 404, "not_found");
    assert_error(&s.call("DELETE", &path, Some(ACME), None, None), 404, "not_found");
}

#[test]
fn health_and_openapi_need_no_token() {
    let s = Server::start("meta");
    let r = s.call("GET", "/healthz", None, None, None);
    assert_eq!((r.status, &r.body), (200, &json!({"status": "ok"})));
    let r = s.call("GET", "/openapi.json", None, None, None);
    assert_eq!(r.status, 200);
    assert!(r.body["openapi"].as_str().unwrap().starts_with("3."), "{}", r.body["openapi"]);
    let paths = r.body["paths"].as_object().unwrap();
    assert!(paths["/v1/addresses/{ip}/reassign"]["post"].is_object());
    assert!(paths.contains_key("/v1/migrations/{id}/abort"));
    let schemas = r.body["components"]["schemas"].as_object().unwrap();
    for name in ["ReassignRequest", "Migration", "Ramp", "Strategy", "ErrorBody", "Vm", "Address"] {
        assert!(schemas.contains_key(name), "{name} missing from the document");
    }
    assert_eq!(r.body["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
}

/// The API with A's lease ending 48 s from [`NOW`] (issue 12's case), as a DHCP server in the
/// process would say.
fn lease_ends_in_48s(store: RedbStore) -> ApiState<RedbStore> {
    let parts = Parts { lease_end: Some(Arc::new(|_| Some(NOW + 48_000))), ..Parts::default() };
    common::tenants_at_now(store).with_parts(parts)
}

/// `{"kind": "steps", ...}` with one hold for every step.
fn steps(pcts: &[f64], hold_ms: u64) -> Value {
    let steps: Vec<Value> = pcts.iter().map(|pct| json!({"pct": pct, "hold_ms": hold_ms})).collect();
    json!({"kind": "steps", "steps": steps})
}

/// No ramp requested, A's lease ending in 48 s: the default ramp's holds become 6 s (24 s to
/// 100 %, half of the 48 s), shown in the plan and given to the router as the migration's ramp.
/// With a deadline a day away the default is kept.
#[test]
fn the_default_ramp_is_fitted_to_the_deadline_and_shown_in_the_plan() {
    let s = Server::with_inventory_on("plan-default", lease_ends_in_48s);
    let r = s.post(&format!("/v1/addresses/{X}/reassign"), ACME, json!({"to": "vm-b", "migrate": true}));
    assert_eq!(r.status, 202, "{}", r.raw);
    let fitted = steps(&[1.0, 5.0, 25.0, 50.0, 100.0], 6_000);
    assert_eq!(
        r.body["plan"],
        json!({
            "ramp": fitted,
            "ramp_source": "default_scaled",
            "scaled": true,
            "share": 0.5,
            "ramp_to_100_ms": 24_000,
            "ready_allowance_ms": 10_000,
            "deadline_ms": NOW + 48_000,
            "deadline_source": "source_lease_end",
            "time_to_deadline_ms": 48_000,
            "slack_ms": 14_000,
            "close_grace_ms": 10_000,
        })
    );
    assert_eq!(
        (&r.body["ramp"], &r.body["deadline_ms"], &r.body["deadline_source"]),
        (&fitted, &json!(NOW + 48_000), &json!("source_lease_end"))
    );
    assert_eq!(s.get("/v1/migrations/1", ACME).body, r.body);

    let s = Server::with_inventory("plan-day");
    let day = json!({"to": "vm-b", "migrate": true, "deadline_ms": NOW + 86_400_000});
    let r = s.post(&format!("/v1/addresses/{X}/reassign"), ACME, day);
    assert_eq!(r.status, 202, "{}", r.raw);
    let plan = &r.body["plan"];
    assert_eq!(
        (&plan["ramp"], &plan["ramp_source"], &plan["scaled"]),
        (&steps(&[1.0, 5.0, 25.0, 50.0, 100.0], 30_000), &json!("default"), &json!(false))
    );
    assert_eq!((plan["ramp_to_100_ms"].as_u64(), plan.get("share")), (Some(120_000), None));
}

/// A requested ramp that reaches 100 % in time is followed as requested; one that does not, or
/// never reaches 100 %, is 422 `ramp_does_not_fit` in the one error shape, saying what would fit,
/// and nothing is stored.
#[test]
fn a_ramp_that_cannot_fit_is_refused_with_what_would_and_nothing_changes() {
    let s = Server::with_inventory_on("plan-misfit", lease_ends_in_48s);
    let path = format!("/v1/addresses/{X}/reassign");
    let before = s.api.store.range("/").unwrap();
    let r = s.post(
        &path,
        ACME,
        json!({"to": "vm-b", "migrate": true, "ramp": steps(&[1.0, 5.0, 25.0, 50.0, 100.0], 30_000)}),
    );
    assert_error(&r, 422, "ramp_does_not_fit");
    let message = r.body["message"].as_str().unwrap();
    for part in [
        "reaches 100 % after 120 s",
        "only 38 s are available (48 s to the deadline minus 10 s",
        "steps 1, 5, 25, 50, 100 % holding 6 s each",
        "linear at 4.17 %/s",
        &format!("deadline 130 s or more from now (deadline_ms >= {})", NOW + 130_000),
    ] {
        assert!(message.contains(part), "{part:?} missing from {message:?}");
    }
    let r = s.post(&path, ACME, json!({"to": "vm-b", "migrate": true, "ramp": steps(&[10.0, 50.0], 1_000)}));
    assert_error(&r, 422, "ramp_does_not_fit");
    assert!(r.body["message"].as_str().unwrap().contains("never reaches 100 %: its last step is 50 %"), "{}", r.raw);
    let r = s.post(&path, ACME, json!({"to": "vm-b", "migrate": true, "ramp": {"kind": "linear", "pct_per_sec": 1.0}}));
    assert_error(&r, 422, "ramp_does_not_fit");
    assert_eq!(s.api.store.range("/").unwrap(), before, "a refusal changed the store");
    assert_eq!(s.get("/v1/migrations", ADMIN).body, json!([]));

    // The suggestion fits, and is followed as requested.
    let r = s.post(
        &path,
        ACME,
        json!({"to": "vm-b", "migrate": true, "ramp": steps(&[1.0, 5.0, 25.0, 50.0, 100.0], 6_000)}),
    );
    assert_eq!(r.status, 202, "{}", r.raw);
    assert_eq!((&r.body["plan"]["ramp_source"], &r.body["plan"]["scaled"]), (&json!("requested"), &json!(false)));
    assert_eq!(r.body["ramp"], steps(&[1.0, 5.0, 25.0, 50.0, 100.0], 6_000));
}

/// A dry run answers 200 with what would happen and creates nothing: no migration, the address
/// not marked, no id taken (the real request gets id 1), and with an Idempotency-Key nothing is
/// recorded (the real request with the same key runs, and is then the key's answer).
#[test]
fn a_dry_run_answers_the_plan_and_creates_nothing() {
    let s = Server::with_inventory_on("dry-run", lease_ends_in_48s);
    let path = format!("/v1/addresses/{X}/reassign");
    let before = s.api.store.range("/").unwrap();
    let dry = json!({"to": "vm-b", "migrate": true, "dry_run": true}).to_string();
    let r = s.call("POST", &path, Some(ACME), Some(&dry), Some("move-x"));
    assert_eq!((r.status, r.location.as_deref()), (200, None), "{}", r.raw);
    assert_eq!(
        (&r.body["result"], &r.body["ip"], &r.body["source"], &r.body["destination"]),
        (&json!("would_migrate"), &json!(X), &json!("vm-a"), &json!("vm-b"))
    );
    assert_eq!(r.body["plan"]["ramp"], steps(&[1.0, 5.0, 25.0, 50.0, 100.0], 6_000));
    assert_eq!(r.body["plan"]["ramp_source"], "default_scaled");
    // Without migrate: it would move at once.
    let r = s.post(&path, ACME, json!({"to": "vm-b", "dry_run": true}));
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.body, json!({"result": "would_move", "ip": X, "source": "vm-a", "destination": "vm-b"}));
    // Refused as the real request would be.
    assert_error(&s.post(&path, ACME, json!({"to": "vm-a", "migrate": true, "dry_run": true})), 409, "conflict");
    assert_error(
        &s.post(&path, ACME, json!({"to": "vm-b", "migrate": true, "dry_run": true, "ramp": steps(&[50.0], 1_000)})),
        422,
        "ramp_does_not_fit",
    );
    assert_eq!(s.get("/v1/migrations", ADMIN).body, json!([]));
    assert_eq!(s.get(&format!("/v1/addresses/{X}"), ACME).body["migration"], Value::Null);
    assert_eq!(s.api.store.range("/").unwrap(), before, "a dry run changed the store");

    // The real request with the dry run's key: not a replay, not "reused"; id 1, the plan shown.
    let real = json!({"to": "vm-b", "migrate": true}).to_string();
    let r = s.call("POST", &path, Some(ACME), Some(&real), Some("move-x"));
    assert_eq!((r.status, r.location.as_deref()), (202, Some("/v1/migrations/1")), "{}", r.raw);
    assert_eq!(r.body["plan"]["ramp"], steps(&[1.0, 5.0, 25.0, 50.0, 100.0], 6_000));
    assert_eq!(s.call("POST", &path, Some(ACME), Some(&real), Some("move-x")).raw, r.raw, "the key's answer now");
    // A dry run after it now meets the address migrating.
    assert_error(&s.call("POST", &path, Some(ACME), Some(&dry), None), 409, "conflict");
}

/// The router's report as `ipshadow serve` would hand it to the API: X shadowed by a migration
/// created at [`NOW`], reported 400 ms before [`NOW`], with A's drain forecast.
fn router_report() -> ipshadow_contracts::router::Status {
    use ipshadow_core::patterns::{DrainForecast, PatternsReport, Tail};
    use ipshadow_core::{CongestionControlParameters, Instant, MigrationOptions, ShadowingEntry};
    let x = X.parse().unwrap();
    let entry = ShadowingEntry::new(
        x,
        "vm-a".into(),
        "vm-b".into(),
        Instant::from_millis(NOW),
        CongestionControlParameters::default(),
        MigrationOptions::default(),
    );
    let mut measured = PatternsReport { arrivals: 90, arrival_rate_per_s: 2.5, ..PatternsReport::default() };
    measured.source.open = 12;
    measured.source.idle = 7;
    measured.destination.open = 30;
    let forecast = DrainForecast {
        open: 12,
        p50_ms: Some(42_000.0),
        p90_ms: None,
        expected_open_at_deadline: Some(3.5),
        horizon_ms: 60_000.0,
        tail: Tail::Pareto { alpha: 1.5 },
        observations: 120,
    };
    ipshadow_contracts::router::Status {
        updated: Instant::from_millis(NOW - 400),
        entries: vec![entry],
        patterns: [(x, ipshadow_contracts::router::AddressPatterns { measured, forecast: Some(forecast) })].into(),
        ..Default::default()
    }
}

fn router_reporting(store: RedbStore) -> ApiState<RedbStore> {
    let parts = Parts { router_status: Some(Arc::new(|| Some(router_report()))), ..Parts::default() };
    common::tenants_at_now(store).with_parts(parts)
}

/// Issue 12: a migration's document shows the router's latest measurements and drain forecast
/// for its address with the report's time and age, and `/metrics` has them per address.
#[test]
fn a_shadowing_migration_shows_the_router_s_patterns_and_forecast_and_metrics_have_them() {
    let s = Server::with_inventory_on("observed", router_reporting);
    let r = s.post(&format!("/v1/addresses/{X}/reassign"), ACME, json!({"to": "vm-b", "migrate": true}));
    assert_eq!(r.status, 202, "{}", r.raw);
    assert!(r.body.get("observed").is_none(), "the reassign call answers the stored migration");
    let m = s.get("/v1/migrations/1", ACME).body;
    let observed = &m["observed"];
    assert_eq!((observed["at_ms"].as_u64(), observed["age_ms"].as_u64()), (Some(NOW - 400), Some(400)), "{m}");
    assert_eq!(observed["patterns"]["source"]["open"], 12);
    assert_eq!(observed["patterns"]["source"]["idle"], 7);
    assert_eq!(observed["patterns"]["destination"]["open"], 30);
    assert_eq!(observed["patterns"]["arrival_rate_per_s"], 2.5);
    assert_eq!(observed["forecast"]["p50_ms"], 42_000.0);
    assert_eq!(observed["forecast"]["p90_ms"], Value::Null, "not foreseeable");
    assert_eq!(observed["forecast"]["tail"], json!({"kind": "pareto", "alpha": 1.5}));
    // The stored migration is unchanged underneath.
    assert_eq!(m["lifecycle"], r.body["lifecycle"]);

    let metrics = s.get("/metrics", ADMIN);
    assert_eq!(metrics.status, 200);
    for line in [
        "ipshadow_flows_open{ip=\"10.0.0.10\",side=\"source\"} 12",
        "ipshadow_flows_open{ip=\"10.0.0.10\",side=\"destination\"} 30",
        "ipshadow_flows_idle{ip=\"10.0.0.10\",side=\"source\"} 7",
        "ipshadow_flow_arrivals_per_second{ip=\"10.0.0.10\"} 2.5",
        "ipshadow_drain_forecast_seconds{ip=\"10.0.0.10\",quantile=\"0.5\"} 42",
        "ipshadow_drain_forecast_seconds{ip=\"10.0.0.10\",quantile=\"0.9\"} +Inf",
        "ipshadow_drain_expected_open_at_deadline{ip=\"10.0.0.10\"} 3.5",
        "ipshadow_router_report_age_seconds 0.4",
        "# TYPE ipshadow_drain_forecast_seconds gauge",
    ] {
        assert!(metrics.raw.lines().any(|l| l == line), "{line} missing from:\n{}", metrics.raw);
    }

    // Once the migration no longer shadows the address, nothing is shown for it.
    s.manager.advance(1, MigrationEvent::Abort, NOW).unwrap();
    assert!(s.get("/v1/migrations/1", ACME).body.get("observed").is_none());
}

/// The migration list comes a page at a time: `after` and `limit` walk it in id order, a short
/// page is the last, and a limit out of range is a precise 400.
#[test]
fn the_migration_list_is_paged() {
    let s = Server::with_inventory("paged");
    for _ in 0..5 {
        assert_eq!(
            s.post(&format!("/v1/addresses/{X}/reassign"), ACME, json!({"to": "vm-b", "migrate": true})).status,
            202
        );
        let id = s.get("/v1/migrations", ACME).body.as_array().unwrap().last().unwrap()["id"].as_u64().unwrap();
        assert_eq!(s.post(&format!("/v1/migrations/{id}/abort"), ACME, json!({})).status, 200);
    }
    let ids = |path: &str| -> Vec<u64> {
        s.get(path, ACME).body.as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect()
    };
    assert_eq!(ids("/v1/migrations"), [1, 2, 3, 4, 5]);
    assert_eq!(ids("/v1/migrations?limit=2"), [1, 2]);
    assert_eq!(ids("/v1/migrations?after=2&limit=2"), [3, 4]);
    assert_eq!(ids("/v1/migrations?after=4&limit=2"), [5], "a short page is the last");
    assert_eq!(ids("/v1/migrations?after=5"), Vec::<u64>::new());
    assert_error(&s.get("/v1/migrations?limit=0", ACME), 400, "bad_request");
    assert_error(&s.get("/v1/migrations?limit=1001", ACME), 400, "bad_request");
    assert_error(&s.get("/v1/migrations?limit=many", ACME), 400, "bad_request");
    assert_error(&s.get("/v1/migrations?after=9223372036854775808", ACME), 400, "bad_request");
}

/// A DHCP server that is down (waiting to be restarted) and has skipped a record.
fn dhcp_down(store: RedbStore) -> ApiState<RedbStore> {
    let health = || {
        vec![ipshadow_control::api::parts::PartHealth {
            part: "dhcp".into(),
            up: false,
            restarts: 3,
            last_error: Some("lease store: disk full".into()),
            age_ms: 1_200,
            skipped: vec!["configuration key reservations.evil.ip: is in no configured subnet".into()],
        }]
    };
    let status = || Some(json!({"leases": [], "counters": {}, "events": {}}));
    let parts = Parts { health: Some(Arc::new(health)), dhcp_status: Some(Arc::new(status)), ..Parts::default() };
    common::tenants_at_now(store).with_parts(parts)
}

/// Issue 13: a part that is down shows in `/healthz` (503 naming it), `/metrics` (up, restarts,
/// age, skipped records) and its status endpoint (`health`, with how stale it is).
#[test]
fn a_part_that_is_down_shows_in_healthz_metrics_and_its_status() {
    let s = Server::with_inventory_on("part-down", dhcp_down);
    let r = s.call("GET", "/healthz", None, None, None);
    assert_eq!(r.status, 503, "{}", r.raw);
    assert_eq!(r.body["status"], "degraded");
    assert_eq!((r.body["parts"][0]["part"].as_str(), r.body["parts"][0]["up"].as_bool()), (Some("dhcp"), Some(false)));
    assert_eq!(r.body["parts"][0]["last_error"], "lease store: disk full");
    let metrics = s.get("/metrics", ADMIN);
    for line in [
        "ipshadow_part_up{part=\"dhcp\"} 0",
        "ipshadow_part_restarts_total{part=\"dhcp\"} 3",
        "ipshadow_part_age_seconds{part=\"dhcp\"} 1.2",
        "ipshadow_part_skipped_records{part=\"dhcp\"} 1",
    ] {
        assert!(metrics.raw.contains(line), "{line} missing from {}", metrics.raw);
    }
    let status = s.get("/v1/dhcp/status", ADMIN);
    assert_eq!(status.status, 200, "{}", status.raw);
    assert_eq!(status.body["health"]["age_ms"], 1_200);
    assert_eq!(status.body["health"]["skipped"].as_array().map(Vec::len), Some(1));
}

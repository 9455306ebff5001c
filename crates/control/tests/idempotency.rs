//! Idempotency records expire: against the running server over real TCP with a clock the test
//! moves, a retry within the record's lifetime (24 h by default) gets the first answer again, the
//! same key after it is a new request (whatever its body), and `purge_expired` deletes exactly
//! the records whose lifetime is over.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

mod common;

use common::{ACME, ADMIN, Api};
use ipshadow_client::Request;
use ipshadow_control::api::idempotency::{DEFAULT_TTL_MS, PREFIX, purge_expired};
use ipshadow_control::api::{ApiState, TokenTable};
use ipshadow_control::{RedbStore, Store};
use serde_json::{Value, json};

const T0: u64 = 1_800_000_000_000;
const HOUR: u64 = 3_600_000;
const X: &str = "10.0.0.10";

/// A server on 127.0.0.1 whose clock the test sets, and the store underneath.
struct Server {
    api: Api,
    clock: Arc<AtomicU64>,
}

/// A response: status, `Location`, `Idempotent-Replayed`, the body as sent.
#[derive(Debug)]
struct Reply {
    status: u16,
    location: Option<String>,
    replayed: bool,
    raw: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.raw).unwrap()
    }
}

impl Server {
    fn start(name: &str, configure: impl FnOnce(ApiState<RedbStore>) -> ApiState<RedbStore>) -> Self {
        let clock = Arc::new(AtomicU64::new(T0));
        let now = Arc::clone(&clock);
        let api = Api::start("idempotency", name, |store| {
            let tokens = TokenTable::new(ADMIN).with_tenant(ACME, "acme");
            let state = ApiState::new(store, tokens).with_admission(common::tenant_prefixes());
            configure(state.with_clock(move || now.load(Ordering::SeqCst)))
        });
        let s = Self { api, clock };
        // acme's VMs vm-a and vm-b, and X held by vm-a.
        for (id, mac) in [("vm-a", "02:00:00:00:00:0a"), ("vm-b", "02:00:00:00:00:0b")] {
            assert_eq!(s.post("/v1/vms", ACME, &json!({"id": id, "mac": mac, "segment": id}), None).status, 201);
        }
        assert_eq!(s.post("/v1/addresses", ACME, &json!({"ip": X, "vm": "vm-a"}), None).status, 201);
        s
    }

    fn at(&self, now_ms: u64) -> &Self {
        self.clock.store(now_ms, Ordering::SeqCst);
        self
    }

    fn post(&self, path: &str, token: &str, body: &Value, key: Option<&str>) -> Reply {
        let mut request = Request::post(path).bearer(token).json(body);
        if let Some(key) = key {
            request = request.idempotency_key(key);
        }
        let reply = self.api.client.send(&request).unwrap();
        Reply {
            status: reply.status,
            location: reply.header("location").map(str::to_owned),
            replayed: reply.header("idempotent-replayed") == Some("true"),
            raw: reply.text,
        }
    }

    /// The keys of the idempotency records in the store.
    fn records(&self) -> Vec<String> {
        self.api.store.range(PREFIX).unwrap().0.into_iter().map(|kv| kv.key).collect()
    }
}

#[test]
fn a_retry_before_expiry_is_answered_again_and_after_it_is_a_new_request() {
    let s = Server::start("expiry", |state| state);
    let path = format!("/v1/addresses/{X}/reassign");
    let migrate = json!({"to": "vm-b", "migrate": true});
    let first = s.at(T0).post(&path, ACME, &migrate, Some("move-x"));
    assert_eq!((first.status, first.location.as_deref(), first.replayed), (202, Some("/v1/migrations/1"), false));

    // Until the last millisecond of its 24 h: the same answer, byte for byte, marked as a replay;
    // another request with the key is refused.
    let again = s.at(T0 + DEFAULT_TTL_MS - 1).post(&path, ACME, &migrate, Some("move-x"));
    assert_eq!((again.status, &again.raw, &again.location, again.replayed), (202, &first.raw, &first.location, true));
    let other = json!({"to": "vm-b", "migrate": true, "ramp": {"kind": "linear", "pct_per_sec": 1.0}});
    let reused = s.post(&path, ACME, &other, Some("move-x"));
    assert_eq!((reused.status, reused.json()["error"].as_str()), (422, Some("idempotency_key_reused")));

    // From then on the record counts no more: the retry runs, and gets the operation's own
    // answer (X is migrating already).
    let late = s.at(T0 + DEFAULT_TTL_MS).post(&path, ACME, &migrate, Some("move-x"));
    assert_eq!((late.status, late.json()["error"].as_str(), late.replayed), (409, Some("conflict"), false));
    // A refusal is not recorded, so the expired record is still there, and replaced by the next
    // success with the key, which a retry then gets.
    assert_eq!(s.post("/v1/migrations/1/abort", ACME, &json!(null), None).status, 200);
    let second = s.post(&path, ACME, &other, Some("move-x"));
    assert_eq!((second.status, second.location.as_deref(), second.replayed), (202, Some("/v1/migrations/2"), false));
    let replay = s.at(T0 + 2 * DEFAULT_TTL_MS - 1).post(&path, ACME, &other, Some("move-x"));
    assert_eq!((replay.status, &replay.raw, replay.replayed), (202, &second.raw, true));
    assert_eq!(s.records().len(), 1);
}

/// Issue 6's note: the record is created by the operation's own transaction (the revision that
/// started the migration), then completed with the response; a retry gets that response.
#[test]
fn the_record_is_created_in_the_operations_transaction() {
    let s = Server::start("same-txn", |state| state);
    let path = format!("/v1/addresses/{X}/reassign");
    let migrate = json!({"to": "vm-b", "migrate": true});
    let first = s.post(&path, ACME, &migrate, Some("k"));
    assert_eq!(first.status, 202, "{}", first.raw);
    let record = s.api.store.get(&format!("{PREFIX}acme/k")).unwrap().unwrap();
    let migration = s.api.store.get(&ipshadow_control::reassign::migration_key(1)).unwrap().unwrap();
    assert_eq!(record.create_revision, migration.create_revision, "written together");
    assert!(record.mod_revision > record.create_revision, "then completed with the response");
    let again = s.post(&path, ACME, &migrate, Some("k"));
    assert_eq!((again.status, &again.raw, again.replayed), (202, &first.raw, true));
}

#[test]
fn the_purge_removes_exactly_the_expired_records() {
    let s = Server::start("purge", |state| state);
    let vm = |id: &str, mac: &str| json!({"id": id, "mac": mac, "segment": id});
    // Records written at T0 (acme's and the admin's), T0 + 6 h and T0 + 12 h.
    assert_eq!(s.at(T0).post("/v1/vms", ACME, &vm("vm-c", "02:00:00:00:00:0c"), Some("c")).status, 201);
    let admin_vm = json!({"id": "vm-d", "mac": "02:00:00:00:00:0d", "segment": "s", "tenant": "acme"});
    assert_eq!(s.post("/v1/vms", ADMIN, &admin_vm, Some("c")).status, 201);
    assert_eq!(s.at(T0 + 6 * HOUR).post("/v1/vms", ACME, &vm("vm-e", "02:00:00:00:00:0e"), Some("e")).status, 201);
    let f = s.at(T0 + 12 * HOUR).post("/v1/vms", ACME, &vm("vm-f", "02:00:00:00:00:0f"), Some("f"));
    assert_eq!(f.status, 201);
    // A refusal leaves no record.
    assert_eq!(s.post("/v1/vms", ACME, &vm("vm-f", "02:00:00:00:00:0f"), Some("refused")).status, 409);
    let all =
        [format!("{PREFIX}@admin/c"), format!("{PREFIX}acme/c"), format!("{PREFIX}acme/e"), format!("{PREFIX}acme/f")];
    assert_eq!(s.records(), all);

    assert_eq!(purge_expired(&s.api.store, T0 + 24 * HOUR - 1).unwrap(), 0);
    assert_eq!(purge_expired(&s.api.store, T0 + 24 * HOUR).unwrap(), 2);
    assert_eq!(s.records(), all[2..]);
    assert_eq!(purge_expired(&s.api.store, T0 + 24 * HOUR).unwrap(), 0, "nothing more is due");
    // What is left still answers retries.
    let retry = s.at(T0 + 30 * HOUR).post("/v1/vms", ACME, &vm("vm-f", "02:00:00:00:00:0f"), Some("f"));
    assert_eq!((retry.status, &retry.raw, retry.replayed), (201, &f.raw, true));
    assert_eq!(purge_expired(&s.api.store, T0 + 36 * HOUR).unwrap(), 2);
    assert_eq!(s.records(), Vec::<String>::new());
    // Other records are not the purge's.
    assert_eq!(s.api.store.range("/v1/vms/").unwrap().0.len(), 6);
}

#[test]
fn the_lifetime_is_the_states() {
    let s = Server::start("ttl", |state| state.with_idempotency_ttl_ms(60_000));
    let vm = json!({"id": "vm-c", "mac": "02:00:00:00:00:0c", "segment": "s"});
    let first = s.at(T0).post("/v1/vms", ACME, &vm, Some("k"));
    assert_eq!(first.status, 201);
    assert!(s.at(T0 + 59_999).post("/v1/vms", ACME, &vm, Some("k")).replayed);
    // Expired: the key is free for another request.
    let other = json!({"id": "vm-d", "mac": "02:00:00:00:00:0d", "segment": "s"});
    let reused = s.at(T0 + 60_000).post("/v1/vms", ACME, &other, Some("k"));
    assert_eq!((reused.status, reused.json()["id"].as_str(), reused.replayed), (201, Some("vm-d"), false));
    assert_eq!(purge_expired(&s.api.store, T0 + 60_000).unwrap(), 0, "the new record lives until T0 + 120 s");
    assert_eq!(purge_expired(&s.api.store, T0 + 120_000).unwrap(), 1);
}

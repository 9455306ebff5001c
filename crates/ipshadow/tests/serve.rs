//! `ipshadow serve` as a user meets it: with no arguments in an empty folder it creates
//! `ipshadow-data/` with the store and an admin token (mode 0600), answers on 127.0.0.1:7480,
//! moves a new migration on by itself, stops on SIGTERM, and after a restart (also after
//! SIGKILL) has lost nothing.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::serve::Serve;
use ipshadow_client::{Api, Request};
use serde_json::{Value, json};

fn call(api: &Api, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = Request::new(method, path).bearer(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let reply = api.send(&request).unwrap();
    (reply.status, reply.json().unwrap_or(Value::Null))
}

fn state_of(api: &Api, token: &str, id: u64) -> String {
    call(api, "GET", &format!("/v1/migrations/{id}"), token, None).1["lifecycle"]["state"].as_str().unwrap().to_owned()
}

#[test]
fn serve_starts_on_defaults_keeps_a_migration_across_restarts() {
    let dir = std::env::temp_dir().join(format!("ipshadow-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let server = Serve::start(&dir, &[]);
    assert_eq!(server.base, "http://127.0.0.1:7480");
    let token_file = dir.join("ipshadow-data/admin-token");
    assert_eq!(std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777, 0o600);
    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_owned();
    let api = Api::new(&server.base, None, None).unwrap();
    assert_eq!(call(&api, "GET", "/healthz", "", None).0, 200);
    assert_eq!(call(&api, "GET", "/v1/vms", "wrong-token", None).0, 401);

    for (id, mac) in [("vm-a", "02:00:00:00:00:0a"), ("vm-b", "02:00:00:00:00:0b")] {
        let vm = json!({"id": id, "tenant": "acme", "mac": mac, "segment": id});
        assert_eq!(call(&api, "POST", "/v1/vms", &token, Some(vm)).0, 201);
    }
    let address = json!({"ip": "10.0.0.10", "tenant": "acme", "vm": "vm-a"});
    assert_eq!(call(&api, "POST", "/v1/addresses", &token, Some(address)).0, 201);
    let (status, migration) =
        call(&api, "POST", "/v1/addresses/10.0.0.10/reassign", &token, Some(json!({"to": "vm-b", "migrate": true})));
    assert_eq!(status, 202, "{migration}");
    let id = migration["id"].as_u64().unwrap();
    // The manager writes the plan and the entry by itself and waits for B's lease.
    let deadline = Instant::now() + Duration::from_secs(5);
    while state_of(&api, &token, id) != "waiting_for_destination_lease" {
        assert!(Instant::now() < deadline, "the manager did not move the migration on");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(server); // SIGKILL

    // Restarted (same folder, same token file): everything is there, the manager goes on.
    let server = Serve::start(&dir, &[]);
    let api = Api::new(&server.base, None, None).unwrap();
    let (status, listed) = call(&api, "GET", "/v1/migrations", &token, None);
    assert_eq!(status, 200);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(state_of(&api, &token, id), "waiting_for_destination_lease");
    let (status, _) = call(&api, "POST", &format!("/v1/migrations/{id}/abort"), &token, None);
    assert_eq!(status, 200);
    assert_eq!(state_of(&api, &token, id), "aborted");
    let (_, a) = call(&api, "GET", "/v1/addresses/10.0.0.10", &token, None);
    assert_eq!(a["vm"], "vm-a");

    // SIGTERM: a clean stop.
    let mut server = server;
    Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_configuration_is_one_clear_line() {
    let dir = std::env::temp_dir().join(format!("ipshadow-serve-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (config, expect) in [
        ("listen = \"not an address\"\n", "listen"),
        ("colour = \"blue\"\n", "unknown field"),
        ("[[tenants]]\nname = \"acme\"\ntoken = \"short\"\n", "shorter than 16"),
    ] {
        let path = dir.join("serve.toml");
        std::fs::write(&path, config).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_ipshadow"))
            .args(["serve", "--config"])
            .arg(&path)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect) && !stderr.contains("panicked"), "{config}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

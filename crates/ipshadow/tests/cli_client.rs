//! The CLI client as a user runs it: `ipshadow vm|address|reassign|migration|shadowing` against
//! `ipshadow serve` (a real process on a free port, its generated admin token found in
//! `./ipshadow-data/`), with tables, `--json` equal to the server's JSON, one-line refusals and
//! exit codes. Pause, resume and promote need a migration whose destination holds its lease,
//! which `serve` alone cannot give yet: that part runs against the API served in the test, the
//! test standing in for the manager through the store.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::serve::Serve;
use ipshadow_client::{Api, Request};
use ipshadow_control::RedbStore;
use ipshadow_control::admission::Admission;
use ipshadow_control::api::{ApiState, TokenTable};
use ipshadow_control::inventory::Inventory;
use ipshadow_control::migration::MigrationEvent as E;
use serde_json::{Value, json};

const ACME: &str = "acme-token-0123456789";
const ZETA: &str = "zeta-token-0123456789";
const X: &str = "10.0.0.10";
/// Long enough for anything here on a loaded machine.
const WAIT: Duration = Duration::from_secs(20);

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ipshadow-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `ipshadow serve` in `dir`, with tenants acme and zeta in its configuration.
fn start_serve(dir: &Path) -> Serve {
    let config = format!(
        "listen = \"127.0.0.1:0\"\n\
         [[tenants]]\nname = \"acme\"\ntoken = \"{ACME}\"\nprefixes = [\"10.0.0.0/24\"]\n\
         [[tenants]]\nname = \"zeta\"\ntoken = \"{ZETA}\"\nprefixes = [\"10.0.1.0/24\"]\n"
    );
    std::fs::write(dir.join("serve.toml"), config).unwrap();
    Serve::start(dir, &["--config", "serve.toml"])
}

/// What a CLI run printed, and how it ended.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }

    /// Exit 1 with exactly one line, `error: ...` starting with `prefix`.
    fn refused(&self, prefix: &str) {
        assert_eq!(self.code, Some(1), "{}{}", self.stdout, self.stderr);
        assert_eq!(self.stderr.lines().count(), 1, "one line: {}", self.stderr);
        assert!(self.stderr.starts_with(&format!("error: {prefix}")), "{}", self.stderr);
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
        Run { code: o.status.code(), stdout: text(o.stdout), stderr: text(o.stderr) }
    }
}

/// The CLI in `dir`, finding the API through IPSHADOW_API and the token (if given) through
/// IPSHADOW_TOKEN; nothing else from the environment.
fn cli_command(dir: &Path, api: &str, token: Option<&str>, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ipshadow"));
    command.args(args).current_dir(dir).env("IPSHADOW_API", api).env_remove("IPSHADOW_TOKEN");
    if let Some(token) = token {
        command.env("IPSHADOW_TOKEN", token);
    }
    command
}

fn cli(dir: &Path, api: &str, token: Option<&str>, args: &[&str]) -> Run {
    cli_command(dir, api, token, args).output().unwrap().into()
}

/// `cli` that must succeed.
fn ok(dir: &Path, api: &str, token: Option<&str>, args: &[&str]) -> Run {
    let run = cli(dir, api, token, args);
    assert_eq!(run.code, Some(0), "{args:?}: {}{}", run.stdout, run.stderr);
    run
}

/// The server's own JSON for `path`.
fn get(api: &str, token: &str, path: &str) -> Value {
    let reply = Api::new(api, None, None).unwrap().send(&Request::get(path).bearer(token)).unwrap();
    reply.json().unwrap()
}

/// A CLI run in the background, its stdout read line by line as it comes; killed when dropped.
struct Background {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    stdout: String,
}

impl Background {
    fn spawn(mut command: Command) -> Self {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let (sender, lines) = std::sync::mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || stdout.lines().map_while(Result::ok).try_for_each(|l| sender.send(l)));
        Self { child, lines, stdout: String::new() }
    }

    /// The next line it prints.
    fn line(&mut self) -> String {
        let line = self.lines.recv_timeout(WAIT).expect("a line");
        self.stdout.push_str(&line);
        self.stdout.push('\n');
        line
    }

    /// Waits for its end (at most [`WAIT`]).
    fn finish(mut self) -> Run {
        let started = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(started.elapsed() < WAIT, "the command did not end: {}", self.stdout);
            std::thread::sleep(Duration::from_millis(50));
        }
        while let Ok(line) = self.lines.recv_timeout(WAIT) {
            self.stdout.push_str(&line);
            self.stdout.push('\n');
        }
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut self.child.stderr.take().unwrap(), &mut stderr).unwrap();
        let code = self.child.try_wait().unwrap().and_then(|s| s.code());
        Run { code, stdout: std::mem::take(&mut self.stdout), stderr }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_cli_against_ipshadow_serve() {
    let dir = temp_dir("serve");
    let serve = start_serve(&dir);
    let api = serve.base.as_str();
    let admin = std::fs::read_to_string(dir.join("ipshadow-data/admin-token")).unwrap().trim().to_owned();

    // No token given: the admin token `serve` generated in ./ipshadow-data is used.
    let added = ok(
        &dir,
        api,
        None,
        &["vm", "add", "vm-a", "--mac", "02:00:00:00:00:0a", "--segment", "seg-a", "--tenant", "acme"],
    );
    assert!(added.stdout.contains("vm-a") && added.stdout.contains("acme"), "{}", added.stdout);
    let added = ok(
        &dir,
        api,
        None,
        &["vm", "add", "vm-b", "--mac", "02:00:00:00:00:0b", "--segment", "seg-b", "--tenant", "acme", "--json"],
    );
    assert_eq!(added.json(), json!({"id": "vm-b", "tenant": "acme", "mac": "02:00:00:00:00:0b", "segment": "seg-b"}));
    ok(&dir, api, None, &["address", "add", X, "--vm", "vm-a", "--tenant", "acme"]);
    let vms = ok(&dir, api, Some(ACME), &["vm", "list"]).stdout;
    let lines: Vec<&str> = vms.lines().collect();
    assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["ID", "TENANT", "MAC", "SEGMENT"], "{vms}");
    assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>(), ["vm-a", "acme", "02:00:00:00:00:0a", "seg-a"]);
    assert_eq!(lines[1].find("acme"), lines[0].find("TENANT"), "aligned columns:\n{vms}");
    let shown = ok(&dir, api, Some(ACME), &["address", "show", X]).stdout;
    assert!(shown.contains("vm-a") && shown.contains("acme"), "{shown}");

    // A migration, as acme; the manager in `serve` moves it on to wait for B's lease.
    let started = ok(
        &dir,
        api,
        Some(ACME),
        &["reassign", X, "--to", "vm-b", "--migrate", "--deadline-in", "600", "--affinity", "client"],
    );
    assert!(started.stdout.starts_with("migration 1 started: 10.0.0.10 vm-a -> vm-b"), "{}", started.stdout);
    let waiting = Instant::now();
    while get(api, ACME, "/v1/migrations/1")["lifecycle"]["state"] != "waiting_for_destination_lease" {
        assert!(waiting.elapsed() < WAIT, "the manager did not start the migration");
        std::thread::sleep(Duration::from_millis(50));
    }
    let list = ok(&dir, api, Some(ACME), &["migration", "list"]).stdout;
    let row: Vec<&str> = list.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..7], ["1", X, "vm-a", "vm-b", "waiting_for_destination_lease", "0%", "no"], "{list}");
    // --json prints the server's JSON as is.
    let listed = ok(&dir, api, Some(ACME), &["migration", "list", "--json"]).json();
    assert_eq!(listed, get(api, ACME, "/v1/migrations"));
    assert_eq!(listed[0]["affinity"], "client");
    let shown = ok(&dir, api, Some(ACME), &["migration", "show", "1", "--json"]).json();
    assert_eq!(shown, listed[0]);
    let shown = ok(&dir, api, Some(ACME), &["migration", "show", "1"]).stdout;
    assert!(shown.contains("waiting_for_destination_lease") && shown.contains("plan_written"), "{shown}");

    // Pause, resume and promote need the ramp to have started (B's lease): refused, one line.
    for action in ["pause", "resume", "promote"] {
        cli(&dir, api, Some(ACME), &["migration", action, "1"]).refused("409 a migration in state");
    }
    let aborted = ok(&dir, api, Some(ACME), &["migration", "abort", "1"]);
    assert_eq!(aborted.stdout, "migration 1: aborted (split 0%)\n");
    let watched = cli(&dir, api, Some(ACME), &["migration", "watch", "1"]);
    assert_eq!(watched.code, Some(1), "{}{}", watched.stdout, watched.stderr);
    assert_eq!(watched.stdout, "migration 1: aborted: 10.0.0.10 stays vm-a's\n");
    assert_eq!(watched.stderr, "error: migration 1 ended aborted\n");

    // A second migration shadows the address: the seed's table lists it.
    ok(&dir, api, Some(ACME), &["reassign", X, "--to", "vm-b", "--migrate"]);
    let shadowed = Instant::now();
    let table = loop {
        let table = ok(&dir, api, Some(ACME), &["shadowing"]).stdout;
        if table.lines().count() > 1 {
            break table;
        }
        assert!(shadowed.elapsed() < WAIT, "no shadowing entry: {table}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(table.starts_with("IP_ADDRESS  SOURCE_VM_ID  DESTINATION_VM_ID"), "{table}");
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..3], [X, "vm-a", "vm-b"], "{table}");
    assert_eq!(ok(&dir, api, Some(ACME), &["shadowing", "--json"]).json(), get(api, ACME, "/v1/shadowing"));

    // Refusals: one line with the status, exit 1.
    cli(&dir, api, Some(ACME), &["reassign", "10.0.0.99", "--to", "vm-b"]).refused("404 address 10.0.0.99 not found");
    cli(&dir, api, Some(ACME), &["reassign", X, "--to", "vm-nope", "--migrate"]).refused("404 vm vm-nope not found");
    cli(&dir, api, Some(ACME), &["reassign", X, "--to", "vm-b", "--migrate"]).refused("409 ");
    let wrong = cli(&dir, api, None, &["vm", "list", "--token", "wrong-token-0123456789"]);
    wrong.refused("401 ");
    assert_eq!(wrong.stderr, "error: 401 a valid bearer token is required\n");
    let nowhere = cli(&dir, "http://127.0.0.1:1", Some(ACME), &["vm", "list"]);
    nowhere.refused("cannot reach the API at http://127.0.0.1:1");
    assert!(nowhere.stderr.contains("ipshadow serve"), "{}", nowhere.stderr);

    // Tenants: zeta sees nothing of acme's, even what the admin created for acme.
    ok(
        &dir,
        api,
        Some(&admin),
        &["vm", "add", "vm-z", "--mac", "02:00:00:00:00:0c", "--segment", "seg-z", "--tenant", "zeta"],
    );
    let zeta_vms = ok(&dir, api, Some(ZETA), &["vm", "list", "--json"]).json();
    assert_eq!(zeta_vms, json!([{"id": "vm-z", "tenant": "zeta", "mac": "02:00:00:00:00:0c", "segment": "seg-z"}]));
    cli(&dir, api, Some(ZETA), &["vm", "show", "vm-a"]).refused("404 vm vm-a not found");
    cli(&dir, api, Some(ZETA), &["address", "show", X]).refused("404 ");
    cli(&dir, api, Some(ZETA), &["migration", "show", "1"]).refused("404 ");
    cli(&dir, api, Some(ZETA), &["migration", "watch", "1"]).refused("404 ");
    assert_eq!(ok(&dir, api, Some(ZETA), &["migration", "list", "--json"]).json(), json!([]));
    assert_eq!(ok(&dir, api, Some(ZETA), &["shadowing", "--json"]).json(), json!([]));
    cli(&dir, api, Some(ZETA), &["address", "remove", X]).refused("404 ");
    // The parts' status is the operator's; this serve runs no router.
    cli(&dir, api, Some(ZETA), &["status", "router"]).refused("403 ");
    cli(&dir, api, Some(&admin), &["status", "router"]).refused("404 ");
    cli(
        &dir,
        api,
        Some(ZETA),
        &["vm", "add", "vm-y", "--mac", "02:00:00:00:00:0d", "--segment", "s", "--tenant", "acme"],
    )
    .refused("403 ");
    // The admin sees both; a VM holding nothing can go.
    assert_eq!(ok(&dir, api, Some(&admin), &["vm", "list", "--json"]).json().as_array().unwrap().len(), 3);
    assert_eq!(ok(&dir, api, Some(&admin), &["vm", "remove", "vm-z"]).stdout, "removed vm vm-z\n");
    drop(serve);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `reassign --dry-run` prints the plan (the default ramp fitted to a 48 s deadline) and changes
/// nothing; the real call then starts migration 1, and `migration show` shows its plan.
#[test]
fn a_dry_run_prints_the_plan_and_migration_show_shows_it() {
    let dir = temp_dir("dry-run");
    let serve = start_serve(&dir);
    let api = serve.base.as_str();
    for (id, mac) in [("vm-a", "02:00:00:00:00:0a"), ("vm-b", "02:00:00:00:00:0b")] {
        ok(&dir, api, Some(ACME), &["vm", "add", id, "--mac", mac, "--segment", id]);
    }
    ok(&dir, api, Some(ACME), &["address", "add", X, "--vm", "vm-a"]);
    let dry = ["reassign", X, "--to", "vm-b", "--migrate", "--deadline-in", "48", "--dry-run"];
    let plan = ok(&dir, api, Some(ACME), &[&dry[..], &["--json"]].concat()).json();
    assert_eq!((&plan["result"], &plan["plan"]["ramp_source"]), (&json!("would_migrate"), &json!("default_scaled")));
    // Half of the ~48 s (the CLI's clock and the server's differ by the call's time) in 4 holds.
    let holds: Vec<u64> =
        plan["plan"]["ramp"]["steps"].as_array().unwrap().iter().map(|s| s["hold_ms"].as_u64().unwrap()).collect();
    assert!(holds.len() == 5 && holds.iter().all(|&h| (5_500..=6_000).contains(&h)), "{plan}");
    let table = ok(&dir, api, Some(ACME), &dry).stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0], "dry run: 10.0.0.10 vm-a -> vm-b would migrate (nothing changed)", "{table}");
    assert!(lines[1].starts_with("ramp ") && lines[1].contains("1, 5, 25, 50, 100% every "), "{table}");
    assert!(lines[1].contains("(default, shortened to reach 100% within 50% of the time to the deadline)"), "{table}");
    assert!(table.contains("100% after") && table.contains("10s allowed") && table.contains("requested"), "{table}");
    let moved = ok(&dir, api, Some(ACME), &["reassign", X, "--to", "vm-b", "--dry-run"]).stdout;
    assert_eq!(moved, "dry run: 10.0.0.10 vm-a -> vm-b would move at once (nothing changed)\n");
    // Nothing changed.
    assert_eq!(ok(&dir, api, Some(ACME), &["migration", "list", "--json"]).json(), json!([]));
    assert_eq!(
        get(api, ACME, &format!("/v1/addresses/{X}")),
        json!({"ip": X, "tenant": "acme", "vm": "vm-a", "migration": null})
    );

    let started = ok(&dir, api, Some(ACME), &["reassign", X, "--to", "vm-b", "--migrate", "--deadline-in", "48"]);
    assert!(started.stdout.starts_with("migration 1 started"), "{}", started.stdout);
    let shown = ok(&dir, api, Some(ACME), &["migration", "show", "1"]).stdout;
    for key in ["ramp ", "100% after ", "drain time ", "closing window "] {
        assert!(shown.lines().any(|l| l.starts_with(key)), "{key:?} missing:\n{shown}");
    }
    assert!(shown.contains("the last 10s before the cut-over"), "{shown}");
    assert!(shown.contains("1, 5, 25, 50, 100% every ") && shown.contains("shortened"), "{shown}");
    drop(serve);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The API served in this process on a free port, and its store (to stand in for the manager).
struct InProcess {
    base: String,
    manager: Inventory<RedbStore>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl InProcess {
    fn start(dir: &Path) -> Self {
        let store = RedbStore::open(&dir.join("store.redb")).unwrap();
        let prefix = "10.0.0.0/24".parse().unwrap();
        let state = ApiState::new(store.clone(), TokenTable::new("admin-token-0123456789").with_tenant(ACME, "acme"))
            .with_admission(Admission::new().with_prefixes("acme", [prefix]));
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(ipshadow_control::api::serve(listener, state, async {
            let _ = stop.await;
        }));
        Self { base, manager: Inventory::new(store), shutdown: Some(shutdown), runtime: Some(runtime) }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

#[test]
fn the_cli_controls_and_watches_a_ramping_migration() {
    let dir = temp_dir("ramp");
    let server = InProcess::start(&dir);
    let api = server.base.as_str();
    for (id, mac) in [("vm-a", "02:00:00:00:00:0a"), ("vm-b", "02:00:00:00:00:0b")] {
        ok(&dir, api, Some(ACME), &["vm", "add", id, "--mac", mac, "--segment", id]);
    }
    ok(&dir, api, Some(ACME), &["address", "add", X, "--vm", "vm-a"]);
    ok(&dir, api, Some(ACME), &["reassign", X, "--to", "vm-b", "--migrate", "--deadline-in", "600"]);
    // Standing in for the manager: the plan is written and B's lease is bound.
    server.manager.advance(1, E::PlanWritten, 0).unwrap();
    server.manager.advance(1, E::DestinationLeaseBound, 0).unwrap();
    server.manager.advance(1, E::DestinationReady, 0).unwrap();

    // Stdout is a pipe: plain lines, one per change. The first is the migration as it is.
    let mut watch = Background::spawn(cli_command(&dir, api, Some(ACME), &["migration", "watch", "1"]));
    assert!(watch.line().starts_with("migration 1: ramping, split 0%, cut-over in 9m"), "{}", watch.stdout);
    server.manager.record_split(1, 5.0).unwrap();
    assert_eq!(watch.line().split(", cut-over").next(), Some("migration 1: ramping, split 5%"));
    assert_eq!(ok(&dir, api, Some(ACME), &["migration", "pause", "1"]).stdout, "migration 1: paused (split 5%)\n");
    assert_eq!(ok(&dir, api, Some(ACME), &["migration", "resume", "1"]).stdout, "migration 1: ramping (split 5%)\n");
    let promoted = ok(&dir, api, Some(ACME), &["migration", "promote", "1"]);
    assert_eq!(promoted.stdout, "migration 1: promoted, every new flow goes to vm-b (ramping)\n");
    cli(&dir, api, Some(ACME), &["migration", "promote", "1"]).refused("409 ");
    let shown = ok(&dir, api, Some(ACME), &["migration", "show", "1", "--json"]).json();
    assert_eq!(shown["lifecycle"]["promoted"], true);
    let events: Vec<&str> = shown["lifecycle"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event"]["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["plan_written", "destination_lease_bound", "destination_ready", "pause", "resume", "promote"]);
    let list = ok(&dir, api, Some(ACME), &["migration", "list"]).stdout;
    assert!(list.lines().nth(1).unwrap().split_whitespace().any(|c| c == "yes"), "promoted shows: {list}");
    ok(&dir, api, Some(ACME), &["migration", "abort", "1"]);

    let watched = watch.finish();
    assert_eq!(watched.code, Some(1), "{}{}", watched.stdout, watched.stderr);
    // Every change arrived, in order, then the end.
    let states: Vec<&str> = watched.stdout.lines().map(|l| l.split([':', ',']).nth(1).unwrap_or("").trim()).collect();
    assert_eq!(states, ["ramping", "ramping", "paused", "ramping", "ramping", "aborted"], "{}", watched.stdout);
    assert!(watched.stdout.lines().nth(4).unwrap().ends_with(", promoted"), "{}", watched.stdout);
    assert!(watched.stdout.ends_with("migration 1: aborted: 10.0.0.10 stays vm-a's\n"), "{}", watched.stdout);
    assert_eq!(watched.stderr, "error: migration 1 ended aborted\n");

    // `reassign --watch` starts one and follows it; a completed migration exits 0.
    let watch = Background::spawn(cli_command(
        &dir,
        api,
        Some(ACME),
        &["reassign", X, "--to", "vm-b", "--migrate", "--watch", "--json"],
    ));
    let started = Instant::now();
    while server.manager.migration(None, 2).is_err() {
        assert!(started.elapsed() < WAIT, "reassign --watch did not start a migration");
        std::thread::sleep(Duration::from_millis(20));
    }
    for event in [
        E::PlanWritten,
        E::DestinationLeaseBound,
        E::DestinationReady,
        E::CutOver { reason: "deadline".into() },
        E::RouterCompleted,
    ] {
        server.manager.advance(2, event, 0).unwrap();
    }
    let watched = watch.finish();
    assert_eq!((watched.code, watched.stderr.as_str()), (Some(0), ""), "{}", watched.stdout);
    // --json: only JSON on stdout: the reply of reassign, then each version of the migration.
    let printed: Vec<Value> =
        serde_json::Deserializer::from_str(&watched.stdout).into_iter().map(Result::unwrap).collect();
    assert_eq!(printed[0]["lifecycle"]["state"], "pending");
    assert_eq!(printed.last(), Some(&get(api, ACME, "/v1/migrations/2")));
    assert_eq!(printed.last().unwrap()["lifecycle"]["state"], "completed");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

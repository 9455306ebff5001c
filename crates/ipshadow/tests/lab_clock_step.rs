//! Issue 13 item 6, on the running product: the router host's system clock steps during a
//! migration (NTP correcting a bad start, an operator's `date -s`), an hour forward and then two
//! hours back. `serve` (API, manager, DHCP server and router in one process) runs under
//! libfaketime, which moves only the system clock (CLOCK_REALTIME) of the lab's ipshadow
//! processes; the monotonic clock, the VMs' DHCP clients and the client host are untouched.
//!
//! Expected: `serve` logs each step (which proves it saw them); the migration stays `ramping`
//! through both (a forward step read as time passed would cut over at once, and a manager
//! timing out the destination would fail it); no connection breaks (no flow expired and
//! re-decided); and the cut-over comes at the recorded deadline by the real clock, neither an
//! hour early nor an hour late. Needs root and Debian's libfaketime; with CI=true it fails
//! rather than skips.

#![allow(clippy::unwrap_used)]

mod common;

use common::lab::{EXE, Guard, cli, long_lived_clients, run, wait_for};

use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

/// Debian's libfaketime, the variant for multi-threaded programs.
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
/// Long-lived connections from c1, all on A when the migration starts.
const CONNECTIONS: u64 = 20;
/// The migration's deadline.
const DEADLINE_SECS: u64 = 60;

fn n(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer).and_then(Value::as_u64).unwrap_or_else(|| panic!("no {pointer} in {v}"))
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as u64
}

#[test]
fn a_system_clock_step_moves_no_cut_over_and_breaks_no_connection() {
    if !common::netns::namespaces_available("lab_clock_step") {
        return;
    }
    if !std::path::Path::new(FAKETIME).exists() {
        let why = format!("lab_clock_step: needs {FAKETIME} (Debian package libfaketime; scripts/test.sh installs it)");
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("SKIPPED {why}");
        return;
    }
    let prefix = format!("k{}", std::process::id() % 10_000);
    let mut guard = Guard { prefix: prefix.clone(), workloads: Vec::new() };
    let dir = format!("/run/ipshadow/{prefix}");
    // The offset file libfaketime reads (at most once a second): no offset to begin with.
    let offset_file = std::env::temp_dir().join(format!("ipshadow-clock-step-{}", std::process::id()));
    std::fs::write(&offset_file, "+0\n").unwrap();
    let out = Command::new(EXE)
        .args(["lab", "up", "--prefix", &prefix, "--clients", "1"])
        .env("LD_PRELOAD", FAKETIME)
        .env("FAKETIME_TIMESTAMP_FILE", &offset_file)
        .env("FAKETIME_CACHE_DURATION", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        // The lab's ipshadow processes only: not `ip`, nor the VMs' DHCP clients.
        .env("FAKETIME_ONLY_CMDS", "ipshadow")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lab up: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let token = std::fs::read_to_string(format!("{dir}/serve/admin-token")).unwrap().trim().to_owned();
    let progress = format!("{dir}/clock-progress.json");
    let report = format!("{dir}/clock-report.json");
    long_lived_clients(&mut guard, CONNECTIONS, &progress, &report);
    let read = |path: &str| -> Option<Value> { serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok() };
    let exchanging = |what: &str| {
        let before = read(&progress).map_or(0, |p| n(&p, "/exchanges"));
        wait_for(what, Duration::from_secs(20), |seen| {
            let p = read(&progress)?;
            *seen = p.to_string();
            assert_eq!(n(&p, "/broken"), 0, "{what}: a connection broke: {p}");
            (n(&p, "/open") == CONNECTIONS && n(&p, "/exchanges") >= before + 2 * CONNECTIONS).then_some(())
        });
    };
    exchanging("every connection open and exchanging");

    let deadline_in = DEADLINE_SECS.to_string();
    let m =
        cli(&prefix, &token, &["reassign", "10.0.0.10", "--to", "vm-b", "--migrate", "--deadline-in", &deadline_in]);
    let id = n(&m, "/id").to_string();
    let show = || cli(&prefix, &token, &["migration", "show", &id]);
    wait_for("the lease plan", Duration::from_secs(5), |seen| {
        let m = show();
        *seen = m["lifecycle"]["state"].to_string();
        (m["lifecycle"]["state"] != "pending").then_some(())
    });
    run(&["lab", "dhcp-client", "b", "--prefix", &prefix]);
    wait_for("the ramp", Duration::from_secs(30), |seen| {
        let m = show();
        *seen = m["lifecycle"]["state"].to_string();
        (m["lifecycle"]["state"] == "ramping").then_some(())
    });

    // An hour forward, then two hours back (an hour behind the real clock).
    let serve_log = format!("{dir}/serve.log");
    for (offset, logged) in [("+3600", "stepped by +3600"), ("-3600", "stepped by -3600")] {
        std::fs::write(&offset_file, format!("{offset}\n")).unwrap();
        wait_for(&format!("serve to see the step to {offset} s"), Duration::from_secs(10), |seen| {
            let log = std::fs::read_to_string(&serve_log).unwrap_or_default();
            *seen = log.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
            log.contains(logged).then_some(())
        });
        // The manager ticks every second and the router decides per frame: watch for 3 s.
        let watch_until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < watch_until {
            let m = show();
            assert_eq!(m["lifecycle"]["state"], "ramping", "the step to {offset} s changed the migration: {m}");
            std::thread::sleep(Duration::from_millis(200));
        }
        exchanging(&format!("the connections exchanging after the step to {offset} s"));
    }

    // The cut-over, at the deadline by the real clock. The connections stay open on A (so A does
    // not drain and finish early); those still open at the deadline are cut, as designed.
    let deadline_ms = n(&show(), "/deadline_ms");
    assert!(unix_ms() < deadline_ms, "the deadline passed before the steps were checked: {}", show());
    let wait = Duration::from_millis(deadline_ms - unix_ms()) + Duration::from_secs(20);
    let (seen_ms, m) = wait_for("the cut-over", wait, |seen| {
        let m = show();
        *seen = m["lifecycle"]["state"].to_string();
        (m["lifecycle"]["state"] != "ramping").then(|| (unix_ms(), m))
    });
    guard.stop_workloads();
    let history = m["lifecycle"]["history"].as_array().unwrap();
    let events: Vec<&str> = history.iter().map(|h| h["event"]["event"].as_str().unwrap_or("?")).collect();
    let cut_over = history.iter().find(|h| h["event"]["event"] == "cut_over").unwrap_or_else(|| panic!("{m}"));
    let (at_ms, deadline_ms) = (n(cut_over, "/at_ms"), n(&m, "/deadline_ms"));
    eprintln!(
        "lab_clock_step: deadline {deadline_ms}; cut over at {at_ms} ({:+} ms, {}), seen at {seen_ms}; history {events:?}",
        at_ms as i64 - deadline_ms as i64,
        cut_over["event"]
    );
    assert!(seen_ms + 1_000 >= deadline_ms, "cut over early by the real clock: {m}");
    // A's lease ends at the deadline, to the second.
    assert!(at_ms.abs_diff(deadline_ms) < 5_000, "cut over at {at_ms}, not at the deadline: {m}");
    let _ = std::fs::remove_file(&offset_file);
}

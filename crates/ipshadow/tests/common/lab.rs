//! Helpers of the lab tests that drive `ipshadow` as a user would: a guard that removes what a
//! test started, the CLI in the router's namespace, waiting for a condition.

// Each test crate compiles this module and uses part of it.
#![allow(dead_code)]

use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub const EXE: &str = env!("CARGO_BIN_EXE_ipshadow");

/// The workload processes a test started and its lab, removed when the test ends, passed or
/// failed: the processes by their ids, then everything of the lab (`lab down`).
pub struct Guard {
    /// The lab's prefix.
    pub prefix: String,
    /// Processes to kill.
    pub workloads: Vec<Child>,
}

impl Guard {
    /// Stops the workload processes with SIGTERM (they finish what is outstanding and write
    /// their reports) and waits for each, at most 20 s.
    pub fn stop_workloads(&mut self) {
        for child in &self.workloads {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).output();
        }
        for child in &mut self.workloads {
            let until = Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() {
                assert!(Instant::now() < until, "a workload process did not stop");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for child in &mut self.workloads {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new(EXE).args(["lab", "down", "--prefix", &self.prefix]).output();
    }
}

/// `ipshadow ARGS`, which must succeed.
pub fn run(args: &[&str]) -> Output {
    let out = Command::new(EXE).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ipshadow {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `ipshadow ARGS` inside the router's namespace, where the lab's API listens (as the README
/// tells a user), with the lab's admin token; its JSON output.
pub fn cli(prefix: &str, token: &str, args: &[&str]) -> Value {
    let out = Command::new("ip")
        .args(["netns", "exec", &format!("{prefix}-r"), EXE])
        .args(args)
        .args(["--json", "--token", token])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ipshadow {}: {stdout}{}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("ipshadow {}: {e}: {stdout}", args.join(" ")))
}

/// Starts `connections` long-lived connections from client host c1 to X (an exchange every
/// 200 ms, for up to 10 minutes), writing `progress` and, when stopped, `report`; the process
/// is the guard's to stop.
pub fn long_lived_clients(guard: &mut Guard, connections: u64, progress: &str, report: &str) {
    let child = Command::new("ip")
        .args(["netns", "exec", &format!("{}-c1", guard.prefix), EXE, "traffic", "run", "--target", "10.0.0.10:7000"])
        .args(["--long-lived", &connections.to_string(), "--lifetime", "3600", "3600", "--interval-ms", "200"])
        .args(["--churn", "0", "--duration", "600", "--seed", "1", "--client-id", "1", "--json"])
        .args(["--report", report, "--progress", progress])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    guard.workloads.push(child);
}

/// `ipshadow ARGS` as [`cli`], for a call that must be refused: its error line.
pub fn cli_refused(prefix: &str, token: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &format!("{prefix}-r"), EXE])
        .args(args)
        .args(["--token", token])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "ipshadow {} was not refused: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// Waits for `cond` (polled every 100 ms) at most `limit`; panics with `what` and the last
/// thing `cond` wrote into its `seen` if it never holds.
pub fn wait_for<T>(what: &str, limit: Duration, mut cond: impl FnMut(&mut String) -> Option<T>) -> T {
    let until = Instant::now() + limit;
    let mut seen = String::new();
    loop {
        if let Some(v) = cond(&mut seen) {
            return v;
        }
        assert!(Instant::now() < until, "timed out after {limit:?} waiting for {what}; last seen: {seen}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

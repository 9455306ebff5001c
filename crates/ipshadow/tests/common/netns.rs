//! Network namespaces for integration tests: created with a unique prefix, removed with every
//! process inside them when the test ends, passed or failed. Needs root; with `CI=true` a test
//! that cannot get namespaces fails instead of skipping.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs `sh -c cmd`, returning its output; panics with the output when it fails.
pub fn sh(cmd: &str) -> Output {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh runs");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `sh -c cmd` and returns stdout+stderr, whatever the exit status.
pub fn sh_any(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh runs");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Whether this process can create network namespaces. Without: a skip message, or under
/// `CI=true` a failure.
pub fn namespaces_available(test: &str) -> bool {
    if !super::tools::require_tool(test, "ip", "iproute2") {
        return false;
    }
    // Tests run in parallel: each probes with its own name.
    let unique: u32 = test.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b))) % 100_000;
    let probe = format!("ipsdprobe{}-{unique}", std::process::id());
    let ok = Command::new("ip").args(["netns", "add", &probe]).output().is_ok_and(|o| o.status.success());
    if ok {
        let _ = Command::new("ip").args(["netns", "del", &probe]).output();
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test}: needs root and network namespaces (CI=true)");
    eprintln!("SKIPPED {test}: needs root and network namespaces");
    false
}

/// Namespaces named `{prefix}-{name}` and a scratch directory, all removed on drop.
pub struct Netns {
    /// Unique prefix of every name.
    pub prefix: String,
    /// Scratch directory.
    pub dir: PathBuf,
    names: Vec<String>,
}

impl Netns {
    /// A new set; `tag` (<= 4 chars) keeps interface names under 15 characters.
    pub fn new(tag: &str) -> Self {
        let prefix = format!("{tag}{}", std::process::id() % 10_000);
        let dir = std::env::temp_dir().join(format!("ipshadow-test-{prefix}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self { prefix, dir, names: Vec::new() }
    }

    /// Creates namespace `{prefix}-{name}` with loopback up; returns its name.
    pub fn add(&mut self, name: &str) -> String {
        let ns = format!("{}-{name}", self.prefix);
        sh(&format!("ip netns add {ns} && ip -n {ns} link set lo up"));
        self.names.push(ns.clone());
        ns
    }

    /// A path in the scratch directory.
    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in &self.names {
            // Every process in our namespaces was started by this test.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).output();
                }
            }
        }
        // A namespace deleted while a killed process still holds it lingers: wait (at most 2 s)
        // until none of ours has a process left.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while std::time::Instant::now() < until
            && self.names.iter().any(|ns| {
                Command::new("ip").args(["netns", "pids", ns]).output().is_ok_and(|o| !o.stdout.trim_ascii().is_empty())
            })
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        if std::env::var_os("IPSHADOW_KEEP_TEST_DIR").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

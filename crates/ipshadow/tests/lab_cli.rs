//! The lab's commands refuse what they cannot do with one clear line: no root (pointing to
//! `simulate`), bad prefixes, bad demo and router options. None of these needs root to test;
//! as root the refusal is checked by dropping to the `nobody` user.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

const EXE: &str = env!("CARGO_BIN_EXE_ipshadow");

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

/// Runs the binary as an unprivileged user: as root through setpriv (from a copy that user can
/// read), otherwise as we are.
fn unprivileged(args: &[&str]) -> Output {
    if !is_root() {
        return Command::new(EXE).args(args).output().unwrap();
    }
    let dir = std::env::temp_dir().join(format!("ipshadow-unpriv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("ipshadow");
    std::fs::copy(EXE, &copy).unwrap();
    let status = Command::new("chmod").args(["-R", "a+rx"]).arg(&dir).status().unwrap();
    assert!(status.success());
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&copy)
        .args(args)
        .current_dir(&dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    out
}

fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success(), "should fail");
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn without_root_the_demo_and_the_lab_point_to_simulate() {
    for args in [&["demo"][..], &["lab", "up"], &["lab", "down"]] {
        let out = unprivileged(args);
        let stderr = one_line_error(&out);
        assert!(stderr.contains("root") && stderr.contains("ipshadow simulate"), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

#[test]
fn bad_options_get_one_clear_line() {
    for (args, expect) in [
        (&["demo", "--lifetime", "5", "2"][..], "--lifetime"),
        (&["demo", "--deadline", "0"], "--deadline"),
        (&["demo", "--restart-at", "90"], "--restart-at"),
        (&["demo", "--ramp", "50,10"], "--ramp"),
        (&["lab", "status", "--prefix", "no spaces!"], "bad prefix"),
        (&["lab", "status", "--prefix", "muchtoolongprefix"], "bad prefix"),
    ] {
        let out = Command::new(EXE).args(args).output().unwrap();
        let stderr = one_line_error(&out);
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
    // Router options are checked by the parser, before anything is opened.
    for args in [
        &["router", "--provider", "p", "--gateway", "10.0.0.1", "--vm", "no-equals"][..],
        &["router", "--provider", "p", "--gateway", "10.0.0.1", "--vm", "a=eth0,zz:00"],
        &["router", "--provider", "p", "--gateway", "10.0.0.1", "--vm", "a=x", "--fixed-split", "10.0.0.10=a,b,150"],
        &["router", "--provider", "p", "--gateway", "10.0.0.1", "--vm", "a=x", "--address", "300.1.1.1=a"],
    ] {
        let out = Command::new(EXE).args(args).output().unwrap();
        let stderr = one_line_error(&out);
        assert!(stderr.contains("error"), "{args:?}: {stderr}");
    }
}

#[test]
fn lab_status_of_a_lab_that_is_not_up_says_so() {
    let out = Command::new(EXE).args(["lab", "status", "--prefix", "nolab1", "--json"]).output().unwrap();
    assert!(out.status.success());
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["up"], false);
    assert_eq!(status["namespaces"].as_array().map(Vec::len), Some(0));
}

//! `ipshadow simulate` as a user runs it: same seed, same bytes; the JSON keys MISSION.md
//! promises; a plot; clear errors for bad options.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Output};

/// A small scenario (seconds of wall time) with every kind of traffic and a full migration.
const SMALL: &[&str] = &[
    "simulate",
    "--clients",
    "20",
    "--long-lived",
    "200",
    "--churn",
    "20",
    "--udp",
    "5",
    "--duration",
    "90",
    "--migration-start",
    "10",
    "--deadline",
    "70",
    "--lifetime",
    "10",
    "40",
    "--ramp-hold",
    "5",
];

fn ipshadow(extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ipshadow")).args(SMALL).args(extra).output().unwrap()
}

#[test]
fn same_seed_same_output_byte_for_byte() {
    let first = ipshadow(&["--json", "--seed", "7"]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let second = ipshadow(&["--json", "--seed", "7"]);
    assert_eq!(first.stdout, second.stdout, "same seed, same bytes");
    let other = ipshadow(&["--json", "--seed", "8"]);
    assert_ne!(first.stdout, other.stdout, "another seed, another run");
    // The human table is just as deterministic (timing goes to stderr).
    let (a, b) = (ipshadow(&["--seed", "7"]), ipshadow(&["--seed", "7"]));
    assert_eq!(a.stdout, b.stdout);
    assert!(String::from_utf8_lossy(&a.stderr).contains("simulated packets/s"));
}

#[test]
fn json_has_the_keys_mission_lists() {
    let out = ipshadow(&["--json", "--strategy", "flow", "--mode", "replica"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in common::MISSION_KEYS {
        assert!(report.get(key).is_some(), "missing {key} in {report}");
    }
    assert_eq!(report["strategy"], "flow");
    assert_eq!(report["mode"], "replica");
    assert_eq!(report["migration_state"], "completed");
    assert_eq!(report["connections_broken"], 0);
    assert!(report["connections_total"].as_u64().unwrap() > 200);
}

#[test]
fn plot_is_an_svg_with_the_three_series() {
    let path = std::env::temp_dir().join(format!("ipshadow-plot-{}.svg", std::process::id()));
    let out = ipshadow(&["--plot", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let svg = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
    for label in ["on A", "on B", "split %"] {
        assert!(svg.contains(label), "legend {label} missing");
    }
    assert!(svg.matches("<polyline").count() >= 3, "three lines drawn");
}

#[test]
fn bad_options_get_clear_errors() {
    for (args, expect) in [
        (&["--fault", "b-dies"][..], "missing '@'"),
        (&["--fault", "meteor@3"][..], "unknown fault"),
        (&["--fault", "non-owner@50-40"][..], "TO must be after FROM"),
        (&["--loss", "1.5"][..], "--loss must be in [0, 1)"),
        (&["--ramp", "50,10"][..], "must not decrease"),
        (&["--lifetime", "9", "3"][..], "MAX (3) is below MIN (9)"),
        (&["--clients", "0"][..], "--clients must be at least 1"),
        (&["--duration", "1e20"][..], "from 0 to 1e9"),
        (&["--fault", "b-dies@1e20"][..], "from 0 to 1e9"),
        (&["--churn", "2000000000"][..], "at most 100000 per second"),
        (&["--ramp-linear", "2", "--ramp-hold", "5"][..], "--ramp-hold applies to --ramp steps"),
    ] {
        // Refused before anything runs, so the default scenario's size does not matter.
        let out = Command::new(env!("CARGO_BIN_EXE_ipshadow")).arg("simulate").args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{args:?}: {stderr}");
    }
}

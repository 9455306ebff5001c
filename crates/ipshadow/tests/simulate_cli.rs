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

/// SMALL without option `drop` (and its values), then `extra`.
fn ipshadow_without(drop: &str, extra: &[&str]) -> Output {
    let at = SMALL.iter().position(|a| *a == drop).unwrap();
    let values = SMALL[at + 1..].iter().take_while(|a| !a.starts_with("--")).count();
    let args = SMALL[..at].iter().chain(&SMALL[at + 1 + values..]);
    Command::new(env!("CARGO_BIN_EXE_ipshadow")).args(args).args(extra).output().unwrap()
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

/// Two routers behind ECMP (docs/ecmp.md): the report gains an `ecmp` object with both
/// routers' views, the run stays deterministic, and one router's report has no such key.
#[test]
fn ecmp_reports_both_routers() {
    let out = ipshadow(&["--json", "--ecmp", "symmetric", "--ecmp-skew-ms", "30"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ecmp = &report["ecmp"];
    assert_eq!(ecmp["replies"], "symmetric");
    assert_eq!(ecmp["skew_ms"], 30.0);
    assert_eq!(ecmp["split_differed_ms"], 150.0, "five steps, each 30 ms apart: {ecmp}");
    for router in ecmp["routers"].as_array().unwrap() {
        assert!(router["frames_forwarded"].as_u64().unwrap() > 1000, "{ecmp}");
    }
    assert_eq!(report["connections_broken"], 0);
    let again = ipshadow(&["--json", "--ecmp", "symmetric", "--ecmp-skew-ms", "30"]);
    assert_eq!(out.stdout, again.stdout, "same seed, same bytes");
    let one: serde_json::Value = serde_json::from_slice(&ipshadow(&["--json"]).stdout).unwrap();
    assert!(one.get("ecmp").is_none(), "one router, no ecmp key");
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
        (
            &["--lifetime-dist", "pareto", "--lifetime-mean", "5"][..],
            "--lifetime-mean applies to --lifetime-dist exponential, not pareto",
        ),
        (&["--lifetime-dist", "pareto", "--lifetime-alpha", "0"][..], "alpha must be above 0"),
        (&["--lifetime-dist", "exponential", "--lifetime-mean=-1"][..], "--lifetime-dist exponential: the mean"),
        (&["--lifetime-dist", "lognormal", "--lifetime-sigma", "nan"][..], "sigma must be within"),
        (&["--lifetime-dist", "weibull"][..], "invalid value 'weibull'"),
        (&["--ramp-plan", "planned", "--ramp", "1,100"][..], "cannot be used with"),
        (&["--end-after-migration=-3"][..], "--end-after-migration must be a number of seconds"),
        (&["--fault", "server-closes-idle@x"][..], "not a number"),
        (&["--ecmp-skew-ms", "5"][..], "--ecmp <REPLIES>"),
        (&["--ecmp", "sideways"][..], "invalid value 'sideways'"),
        (&["--interval", "0"][..], "--interval must be positive"),
    ] {
        // Refused before anything runs, so the default scenario's size does not matter.
        let out = Command::new(env!("CARGO_BIN_EXE_ipshadow")).arg("simulate").args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{args:?}: {stderr}");
    }
}

/// The forecast block, the orderly closes and the lifetime distributions, as a user asks for them.
#[test]
fn forecast_and_graceful_closes_in_the_json() {
    let pareto = ["--json", "--lifetime-dist", "pareto", "--lifetime-scale", "8", "--lifetime-alpha", "1.5"];
    let out = ipshadow_without("--lifetime", &pareto);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let forecast = &report["forecast"];
    for key in ["at_s", "open_on_a", "p50_s", "p90_s", "expected_open_at_deadline", "actual_drain_s", "p50_error_pct"] {
        assert!(forecast.get(key).is_some(), "missing forecast.{key} in {forecast}");
    }
    assert!(forecast["open_on_a"].as_u64().unwrap() > 0, "{forecast}");
    // Without the fault, the only orderly closes are the router's, in the closing window.
    let by_router = report["cut_over"]["closed_gracefully"].as_u64().unwrap_or(0);
    assert!(report["closed_gracefully"].as_u64().unwrap() <= by_router, "{report}");
    let out = ipshadow(&["--json", "--loss", "0", "--fault", "server-closes-idle@20"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["closed_gracefully"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["connections_broken"], 0, "{report}");
}

/// `--ramp-plan planned` is the control plane's plan for the deadline: 1, 5, 25, 50, 100 % with
/// holds of a quarter of half the time to the deadline (48 s: 6 s each, 100 % after 24 s), and
/// the migration ends at the deadline.
#[test]
fn the_planned_ramp_reaches_100_percent_by_half_the_deadline() {
    let out = ipshadow_without("--ramp-hold", &["--json", "--ramp-plan", "planned"]);
    let out = if out.status.success() { out } else { panic!("{}", String::from_utf8_lossy(&out.stderr)) };
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // SMALL's deadline is 70 s: holds of 70 x 0.5 / 4 = 8.75 s, 100 % after 35 s.
    let t = &report["timeline"];
    let to_100 = t["split_100_s"].as_f64().unwrap() - t["lease_bound_s"].as_f64().unwrap();
    assert!((to_100 - 35.0).abs() < 0.5, "100 % after {to_100} s: {t}");
    let out = Command::new(env!("CARGO_BIN_EXE_ipshadow"))
        .args(["simulate", "--clients", "5", "--long-lived", "20", "--churn", "5", "--udp", "1", "--duration", "60"])
        .args([
            "--migration-start",
            "5",
            "--lifetime",
            "5",
            "20",
            "--json",
            "--ramp-plan",
            "planned",
            "--deadline",
            "48",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = &report["timeline"];
    let to_100 = t["split_100_s"].as_f64().unwrap() - t["lease_bound_s"].as_f64().unwrap();
    assert!((to_100 - 24.0).abs() < 0.5, "100 % after {to_100} s: {t}");
    // Ended by the deadline at the latest (earlier when A drained: the early finish).
    assert!(t["migration_end_s"].as_f64().unwrap() - t["migration_start_s"].as_f64().unwrap() <= 48.0, "{t}");
}

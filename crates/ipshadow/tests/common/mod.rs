//! Helpers shared by the integration tests.

pub mod lab;
pub mod netns;
pub mod serve;
pub mod tools;

/// The report keys MISSION.md promises for `simulate --json` and `demo --json`.
#[allow(dead_code)]
pub const MISSION_KEYS: [&str; 9] = [
    "strategy",
    "mode",
    "connections_total",
    "connections_broken",
    "connections_completed",
    "cut_at_deadline",
    "migration_state",
    "final_split_pct",
    "conflicts_suppressed",
];

//! What the router last measured for a migration's address, as the API shows it: the traffic
//! patterns and the drain forecast of A's open flows (issue 12).
//!
//! They are not stored: the router reports them five times a second to the manager in the same
//! process, which keeps its latest status for the API ([`super::Parts::router_status`]). Writing
//! each report to the store would cost a fsync five times a second per address for figures that
//! are stale a fifth of a second later; a reader gets the report's time (`at_ms`) and age instead.
//! A migration that is not shadowing its address (or whose entry the router has not installed
//! yet, or an API without a router in its process) has none.

use ipshadow_contracts::router::Status;
use ipshadow_core::Instant;
use ipshadow_core::patterns::{DrainForecast, PatternsReport};
use serde::{Deserialize, Serialize};

use crate::migration::MigrationState;
use crate::reassign::Migration;

/// The router's latest measurements and drain forecast for one migration's address.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Observation {
    /// When the router made the report, unix milliseconds.
    pub at_ms: u64,
    /// How old the report was when this answer was made, milliseconds.
    pub age_ms: u64,
    /// Arrivals, lifetimes, open flows per VM (open, idle, oldest), handshake and first-byte
    /// times, since the migration's entry was installed.
    #[schema(value_type = super::schema::PatternsSchema)]
    pub patterns: PatternsReport,
    /// When A's open flows will have ended (p50, p90) and how many are expected still open at
    /// the deadline; null before any flow was observed.
    #[schema(value_type = Option<super::schema::DrainForecastSchema>)]
    pub forecast: Option<DrainForecast>,
}

/// A migration with the router's latest observation of its address (`GET /v1/migrations/{id}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MigrationView {
    /// The stored migration.
    #[serde(flatten)]
    pub migration: Migration,
    /// The router's latest measurements and drain forecast for the address; absent when the
    /// migration does not shadow it, or no router in this process has reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<Observation>,
}

/// What `status` says of `m`'s address at `now_ms`: only for a migration that shadows it (or is
/// about to: the router measures from the moment its entry is installed), and only from this
/// migration's entry (not an earlier one of the same address).
pub fn observe(status: &Status, m: &Migration, now_ms: u64) -> Option<Observation> {
    if !(m.lifecycle.state.is_shadowing() || m.lifecycle.state == MigrationState::Pending) {
        return None;
    }
    let start = Instant::from_millis(m.created_ms);
    status.entries.iter().find(|e| e.ip_address == m.ip && e.migration_start_time == start)?;
    let patterns = status.patterns.get(&m.ip)?;
    let at_ms = status.updated.as_millis();
    Some(Observation {
        at_ms,
        age_ms: now_ms.saturating_sub(at_ms),
        patterns: patterns.measured,
        forecast: patterns.forecast,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::Ipv4Addr;

    use ipshadow_contracts::router::AddressPatterns;
    use ipshadow_core::{CongestionControlParameters, MigrationOptions, ShadowingEntry};

    use super::*;
    use crate::migration::{Lifecycle, MigrationEvent};

    const X: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);

    fn migration(events: &[MigrationEvent]) -> Migration {
        let mut lifecycle = Lifecycle::new();
        for e in events {
            lifecycle.apply(e.clone(), 1_000).unwrap();
        }
        Migration {
            id: 1,
            ip: X,
            tenant: "acme".into(),
            source: "vm-a".into(),
            destination: "vm-b".into(),
            strategy: Default::default(),
            mode: Default::default(),
            affinity: Default::default(),
            ramp: Default::default(),
            deadline_ms: 100_000,
            deadline_source: crate::reassign::DeadlineSource::Requested,
            plan: None,
            created_ms: 500,
            split_pct: 0.0,
            lifecycle,
            cut_over: None,
        }
    }

    fn status(start_ms: u64) -> Status {
        let entry = ShadowingEntry::new(
            X,
            "vm-a".into(),
            "vm-b".into(),
            Instant::from_millis(start_ms),
            CongestionControlParameters::default(),
            MigrationOptions::default(),
        );
        let mut measured = PatternsReport::default();
        measured.source.open = 5;
        Status {
            updated: Instant::from_millis(9_000),
            entries: vec![entry],
            patterns: [(X, AddressPatterns { measured, forecast: None })].into(),
            ..Status::default()
        }
    }

    #[test]
    fn only_a_shadowing_migration_s_own_entry_is_observed() {
        let m = migration(&[MigrationEvent::PlanWritten]);
        let seen = observe(&status(500), &m, 9_250).unwrap();
        assert_eq!((seen.at_ms, seen.age_ms, seen.patterns.source.open), (9_000, 250, 5));
        assert_eq!(observe(&status(400), &m, 9_250), None, "an earlier migration's entry");
        let aborted = migration(&[MigrationEvent::PlanWritten, MigrationEvent::Abort]);
        assert_eq!(observe(&status(500), &aborted, 9_250), None, "not shadowing");
        let mut none = status(500);
        none.patterns.clear();
        assert_eq!(observe(&none, &m, 9_250), None);
    }
}

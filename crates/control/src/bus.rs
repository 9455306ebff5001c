//! How the parts reach each other through the store when they run as processes of their own
//! (`serve --store etcd://...`): the manager writes what each part should do under one key per
//! part kind, the parts follow those keys, and publish what they hear under keys of their own.
//! On the embedded store all parts share one process and these keys are not used (channels
//! carry the same documents).
//!
//! | key | written by | read by | bound to the writer's lease |
//! |---|---|---|---|
//! | [`ROUTER_DESIRED`]`<name>`: [`Desired`](ipshadow_contracts::router::Desired), the router's slice | leading manager | that router | no |
//! | [`DHCP_FEED`]: [`DhcpFeed`] | leading manager | DHCP servers | no |
//! | [`ROUTERS`]`<name>`: [`RouterReport`] | each router | manager, API | yes |
//! | [`DHCP_SERVERS`]`<name>`: [`DhcpReport`] | each DHCP server | manager, API | yes |
//! | [`LEASE_EVENTS`]`<name>/<seq>`: [`LeaseEvent`](ipshadow_contracts::dhcp::LeaseEvent) | each DHCP server | manager (deletes) | no |
//! | [`MANAGER_ELECTION`]: the leading manager's name | the manager that leads | managers, API, lab | yes |
//!
//! Reports vanish with their writer's lease (a part that died is not shown as up); lease events
//! do not: one written by a DHCP server that then died is still the manager's to handle.
//!
//! Each router follows its own slice of the desired state ([`Desired::slice`]: what concerns
//! the VMs its report names), so a change to one VM segment wakes only the routers that serve
//! it. The manager writes a router's slice once it has heard the router's report, keeps it
//! current while the report is there, and deletes it when the report is gone (a router that
//! lost the store keeps forwarding with the last slice it read, and gets a fresh one once its
//! report is back). A router restarted under the same name resumes from its slice at once.
//!
//! [`Desired::slice`]: ipshadow_contracts::router::Desired::slice

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipshadow_contracts::dhcp::{MigrationPlan, Reservation};
use ipshadow_contracts::router::Status;
use ipshadow_core::VmId;
use serde::{Deserialize, Serialize};

use crate::api::parts::PartHealth;

/// Every key of the parts, for a watch.
pub const PARTS: &str = "/v1/parts/";
/// Each router's slice of the desired state, by router name.
pub const ROUTER_DESIRED: &str = "/v1/parts/router/desired/";
/// The DHCP servers' reservations and lease plans.
pub const DHCP_FEED: &str = "/v1/parts/dhcp/feed";
/// Each router's report, by name.
pub const ROUTERS: &str = "/v1/parts/routers/";
/// Each DHCP server's report, by name.
pub const DHCP_SERVERS: &str = "/v1/parts/dhcp/servers/";
/// Lease events not yet handled by the manager, by server name and sequence.
pub const LEASE_EVENTS: &str = "/v1/parts/dhcp/events/";
/// The managers' election: the leading manager's name, bound to its lease.
pub const MANAGER_ELECTION: &str = "/v1/parts/managers/leader";

/// What the DHCP servers follow.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DhcpFeed {
    /// Each VM's client keys and address.
    pub reservations: Vec<Reservation>,
    /// The lease plans of moving addresses.
    pub plans: Vec<MigrationPlan>,
}

/// A router's report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouterReport {
    /// The router's name (its process's `--name`).
    pub name: String,
    /// Its health when it wrote the report.
    pub health: PartHealth,
    /// When it wrote the report, unix milliseconds.
    pub published_ms: u64,
    /// The VMs it has ports for: the manager writes it the slice of the desired state that
    /// concerns them.
    #[serde(default)]
    pub vms: BTreeSet<VmId>,
    /// Its status.
    pub status: Status,
}

/// A DHCP server's report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DhcpReport {
    /// The server's name.
    pub name: String,
    /// Its health when it wrote the report.
    pub health: PartHealth,
    /// When it wrote the report, unix milliseconds.
    pub published_ms: u64,
    /// Leases, counters and lease events by kind, as `GET /v1/dhcp/status` shows them.
    pub status: serde_json::Value,
    /// Current leases outside migrations: when each ends, unix milliseconds.
    pub lease_ends: BTreeMap<Ipv4Addr, u64>,
    /// Lease plans the server refused: migration and why.
    pub refused: Vec<(u64, String)>,
}

/// The key of a router's report.
pub fn router_key(name: &str) -> String {
    format!("{ROUTERS}{name}")
}

/// The key of a router's slice of the desired state.
pub fn router_desired_key(name: &str) -> String {
    format!("{ROUTER_DESIRED}{name}")
}

/// The key of a DHCP server's report.
pub fn dhcp_server_key(name: &str) -> String {
    format!("{DHCP_SERVERS}{name}")
}

/// The key of a lease event: sorted by server, then by `sequence` (which a server keeps
/// increasing across its restarts: unix microseconds of the event plus a counter).
pub fn lease_event_key(server: &str, sequence: u64) -> String {
    format!("{LEASE_EVENTS}{server}/{sequence:020}")
}

/// The health as seen now: a report's age added to what it said.
pub fn aged(health: &PartHealth, published_ms: u64, now_ms: u64) -> PartHealth {
    let mut health = health.clone();
    health.age_ms = health.age_ms.saturating_add(now_ms.saturating_sub(published_ms));
    health
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys sort as the manager must handle them: by server, then in order of the events.
    #[test]
    fn lease_event_keys_sort_by_server_then_sequence() {
        let mut keys = vec![lease_event_key("b", 1), lease_event_key("a", 10), lease_event_key("a", 9)];
        keys.sort();
        assert_eq!(keys, [lease_event_key("a", 9), lease_event_key("a", 10), lease_event_key("b", 1)]);
        assert!(keys.iter().all(|k| k.starts_with(LEASE_EVENTS) && k.starts_with(PARTS)));
    }

    /// A report's age is what it said plus the time since it was written.
    #[test]
    fn a_report_ages_with_the_time_since_it_was_written() {
        let health =
            PartHealth { part: "router".into(), up: true, restarts: 0, last_error: None, age_ms: 50, skipped: vec![] };
        assert_eq!(aged(&health, 1_000, 12_000).age_ms, 11_050);
        assert!(!aged(&health, 1_000, 12_000).ok());
        assert_eq!(aged(&health, 1_000, 900).age_ms, 50);
    }
}

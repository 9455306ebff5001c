//! Migration lease plans: what the manager tells the DHCP server about an address that moves.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Where a plan is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum PlanState {
    /// X is shadowed: B gets it with the short lease, A until the deadline.
    Active,
    /// Cut over: X is B's, with a normal lease; A is NAKed.
    Completed,
    /// Rolled back: X stays A's, with a normal lease; B is NAKed.
    RolledBack,
    /// Failed (e.g. B declined X): as rolled back for the leases, with the reason.
    Failed(String),
}

/// The lease plan of one migration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationPlan {
    /// The migration's id (carried in the shadowing option).
    pub id: u64,
    /// The address that moves.
    pub ip: Ipv4Addr,
    /// VM A's inventory id.
    pub source: String,
    /// VM B's inventory id.
    pub destination: String,
    /// Unix time (seconds) A's lease ends: cut-over.
    pub deadline: u64,
    /// Where it is.
    pub state: PlanState,
}

impl MigrationPlan {
    /// A new active plan.
    pub fn new(id: u64, ip: Ipv4Addr, source: &str, destination: &str, deadline: u64) -> Self {
        Self {
            id,
            ip,
            source: source.to_owned(),
            destination: destination.to_owned(),
            deadline,
            state: PlanState::Active,
        }
    }

    /// Whether X is (still) shadowed.
    pub fn is_active(&self) -> bool {
        self.state == PlanState::Active
    }
}

/// Which side of a migration a lease belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// VM A, the address's old holder.
    Source,
    /// VM B, the new holder.
    Destination,
}

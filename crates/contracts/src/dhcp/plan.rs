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

#[cfg(test)]
mod tests {
    use super::*;

    /// The store's records and the API carry these shapes: a change here is a format change.
    #[test]
    fn plans_keep_their_serialized_shape() {
        let mut plan = MigrationPlan::new(7, Ipv4Addr::new(10, 0, 0, 10), "vm-a", "vm-b", 1_700_000_000);
        assert!(plan.is_active());
        plan.state = PlanState::Failed("B declined".into());
        let json = serde_json::to_value(&plan).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({"id": 7, "ip": "10.0.0.10", "source": "vm-a", "destination": "vm-b",
                "deadline": 1_700_000_000u64, "state": {"state": "failed", "reason": "B declined"}})
        );
        assert_eq!(serde_json::from_value::<MigrationPlan>(json).expect("reads back"), plan);
        assert_eq!(
            serde_json::to_value(PlanState::RolledBack).expect("serializes"),
            serde_json::json!({"state": "rolled_back"})
        );
        assert_eq!(serde_json::to_value(Role::Destination).expect("serializes"), serde_json::json!("destination"));
    }
}

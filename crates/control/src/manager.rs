//! The network manager over the store: it turns what it hears (lease events, router reports,
//! time) into migration events with [`crate::orchestrator::decide`], records them, and projects
//! the store onto what the router and the DHCP server should do. It keeps nothing of its own in
//! memory: a manager started again on the same store carries on where the last one stopped.

use ipshadow_contracts::dhcp::MigrationPlan;
use ipshadow_contracts::router::Desired;

use crate::inventory::{Address, Inventory, InventoryError, Vm};
use crate::migration::{MigrationEvent, MigrationState};
use crate::orchestrator::{Decision, Input, Limits, decide};
use crate::project::{dhcp_plans, dhcp_reservations, router_desired};
use crate::reassign::Migration;
use crate::store::Store;

/// What the manager did with one migration.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    /// The migration.
    pub id: u64,
    /// The decision carried out.
    pub decision: Decision,
    /// Its state afterwards.
    pub state: MigrationState,
}

/// What the store says the parts should do.
#[derive(Clone, Debug, PartialEq)]
pub struct Projection {
    /// The router's desired state.
    pub router: Desired,
    /// The DHCP server's reservations.
    pub reservations: Vec<ipshadow_contracts::dhcp::Reservation>,
    /// The DHCP server's lease plans.
    pub plans: Vec<MigrationPlan>,
    /// Records of the store that could not be read back and were left out (`key: why`).
    pub unreadable: Vec<String>,
}

/// The manager.
pub struct Manager<S: Store> {
    inventory: Inventory<S>,
    limits: Limits,
}

impl<S: Store> Manager<S> {
    /// A manager over `inventory`.
    pub fn new(inventory: Inventory<S>, limits: Limits) -> Self {
        Self { inventory, limits }
    }

    /// The inventory.
    pub fn inventory(&self) -> &Inventory<S> {
        &self.inventory
    }

    /// Every migration, oldest first.
    pub fn migrations(&self) -> Result<Vec<Migration>, InventoryError> {
        self.inventory.migrations(None)
    }

    /// What the router and the DHCP server should do now.
    pub fn desired(&self, now_ms: u64) -> Result<(Desired, Vec<MigrationPlan>), InventoryError> {
        let p = self.projection(now_ms)?;
        Ok((p.router, p.plans))
    }

    /// What the DHCP server should know: the reservations and the lease plans.
    pub fn dhcp(&self) -> Result<(Vec<ipshadow_contracts::dhcp::Reservation>, Vec<MigrationPlan>), InventoryError> {
        // The time only matters to the router's part of the projection.
        let p = self.projection(0)?;
        Ok((p.reservations, p.plans))
    }

    /// Everything the parts should do now, from one read of the VMs, addresses and migrations.
    pub fn projection(&self, now_ms: u64) -> Result<Projection, InventoryError> {
        let (vms, mut unreadable) = self.inventory.readable_records::<Vm>("/v1/vms/")?;
        let (addresses, unreadable_addresses) = self.inventory.readable_records::<Address>("/v1/addresses/")?;
        unreadable.extend(unreadable_addresses);
        let migrations = self.migrations()?;
        Ok(Projection {
            router: router_desired(&addresses, &migrations, now_ms, &self.limits.policy),
            reservations: dhcp_reservations(&vms, &addresses),
            plans: dhcp_plans(&migrations),
            unreadable,
        })
    }

    /// Moves pending migrations on: the caller is about to hand their plan and entry to the
    /// DHCP server and the router (from [`Manager::desired`], which includes them from here on).
    pub fn start_pending(&self, now_ms: u64) -> Result<Vec<Applied>, InventoryError> {
        let mut applied = Vec::new();
        for m in self.migrations()?.into_iter().filter(|m| m.lifecycle.state == MigrationState::Pending) {
            let event = MigrationEvent::PlanWritten;
            let after = self.inventory.advance(m.id, event.clone(), now_ms)?;
            applied.push(Applied { id: m.id, decision: Decision::Event(event), state: after.lifecycle.state });
        }
        Ok(applied)
    }

    /// Carries out what `input` calls for. A decision that lost a race with another writer is
    /// decided again on fresh state once.
    pub fn handle(&self, input: &Input<'_>, now_ms: u64) -> Result<Vec<Applied>, InventoryError> {
        let mut applied = Vec::new();
        for attempt in 0..2 {
            let migrations = self.migrations()?;
            let mut raced = false;
            for (id, decision) in decide(&migrations, input, now_ms, self.limits) {
                let result = match &decision {
                    Decision::Event(event) => {
                        self.inventory.advance(id, event.clone(), now_ms).map(|m| m.lifecycle.state)
                    }
                    Decision::Split(pct) => self
                        .inventory
                        .record_split(id, *pct)
                        .and_then(|()| self.inventory.migration(None, id).map(|m| m.lifecycle.state)),
                    Decision::ExtendDeadline(extension) => {
                        self.inventory.extend_deadline(id, extension, now_ms).map(|m| m.lifecycle.state)
                    }
                    Decision::RecordCutOver(record) => {
                        self.inventory.record_cut_over(id, *record).map(|m| m.lifecycle.state)
                    }
                };
                match result {
                    Ok(state) => applied.push(Applied { id, decision, state }),
                    Err(InventoryError::Raced) if attempt == 0 => raced = true,
                    // A transition another input already made (two reports of the same end).
                    Err(InventoryError::Conflict(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            if !raced {
                break;
            }
        }
        Ok(applied)
    }
}

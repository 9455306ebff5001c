//! ipshadow's DHCPv4 server, sans-IO: a datagram and `now` in, a reply and lease-table changes
//! out. During a migration of address X from VM A to VM B it leases X to both (B with a short
//! shadow lease), marks both replies with the shadowing option, caps A's lease at the deadline
//! and NAKs A after it.

pub mod config;
pub mod lease;
pub mod plan;
pub mod plans;
pub mod server;
pub mod service;
mod socket;
pub mod store;
pub mod wire;

pub use config::{ConfigError, DhcpConfig, MigrationConfig, Reservation, SubnetConfig};
pub use lease::{ClientKey, Lease, LeaseChange, LeaseTable, Role};
pub use plan::{MigrationPlan, PlanState};
pub use server::{DhcpCounters, DhcpServer, Handled, LeaseEvent, LeaseEventKind, PlanError, Reply, ReplyTo};
pub use store::{LeaseStore, StoreError};

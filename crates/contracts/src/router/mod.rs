//! The router's documents: what the manager wants it to do ([`Desired`], written by the manager,
//! read by the router) and what it reports ([`Status`], written by the router a few times a
//! second, read by the manager, the API and `ipshadow demo`).

pub mod desired;
pub mod status;

pub use desired::{Desired, DesiredEntry, ReconcileError};
pub use status::{AddressPatterns, DataPathStatus, EndedMigration, FastPathStatus, PortIo, ProbeStatus, Status};

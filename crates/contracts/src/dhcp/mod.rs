//! The DHCP server's documents: reservations and lease plans (written by the manager from the
//! store, read by the server), lease events and counters (written by the server, read by the
//! manager and the API), and the server's rules on what it takes (its subnets; the server checks
//! its configuration by them, the manager its API requests).

pub mod events;
pub mod plan;
pub mod reservation;
pub mod rules;

pub use events::{DhcpCounters, LeaseEvent, LeaseEventKind};
pub use plan::{MigrationPlan, PlanState, Role};
pub use reservation::{ClientKey, Reservation, parse_mac};
pub use rules::{ConfigError, DhcpRules, Pool, SubnetConfig};

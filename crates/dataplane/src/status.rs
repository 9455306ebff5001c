//! What a running router reports about itself. The report is a contract between the router and
//! its readers (the manager, the API, `ipshadow demo`), so it lives in `ipshadow_contracts`; the
//! old paths stay.

pub use ipshadow_contracts::router::{
    AddressPatterns, DataPathStatus, EndedMigration, FastPathStatus, PortIo, ProbeStatus, Status,
};

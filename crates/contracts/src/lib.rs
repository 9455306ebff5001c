//! The contracts between ipshadow's parts: the documents the manager, the router and the DHCP
//! server exchange, with the pure rules they share. They depend on the core and serde only, so a
//! part that only reads them (the manager, the API, a client) never compiles sockets, rings or a
//! DHCP service (STYLE.md 13, issue 14).
//!
//! | document | written by | read by |
//! |---|---|---|
//! | [`router::Desired`]: which VM holds each address, which are shadowed | manager | router |
//! | [`router::Status`]: shadowing table, ended migrations, counters, probes | router | manager, API, demo |
//! | [`dhcp::Reservation`]: each VM's client keys and address | manager | DHCP server |
//! | [`dhcp::MigrationPlan`]: the lease plan of a moving address | manager | DHCP server |
//! | [`dhcp::LeaseEvent`], [`dhcp::DhcpCounters`]: what happened to leases | DHCP server | manager, API |
//! | [`dhcp::DhcpRules`]: the subnets the DHCP server serves | DHCP server's configuration | manager's admission |
//!
//! Their serialized shapes are user-facing (the API, the store's records, the router's status
//! file, `ipshadow dhcp`'s configuration file): a change to a serde attribute here is a change
//! to a published format.

pub mod dhcp;
pub mod router;

//! What the DHCP server reports: lease events (the manager consumes them; B's first `Bound`
//! starts the ramp) and its counters (the API's status and metrics show them).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::Role;

/// What happened to a lease (the manager consumes these; B's first `Bound` starts the ramp).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseEventKind {
    /// A client got an address it did not hold.
    Bound,
    /// A client extended its lease.
    Renewed,
    /// A client gave its address back.
    Released,
    /// A client found its address in use (DHCPDECLINE).
    Declined,
    /// A lease ran out.
    Expired,
    /// A client was refused the address it asked for (DHCPNAK): A past the deadline, B after a
    /// rollback.
    Refused,
}

/// A lease event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseEvent {
    /// What.
    pub kind: LeaseEventKind,
    /// The address.
    pub ip: Ipv4Addr,
    /// The client, as text.
    pub client: String,
    /// The VM, when known.
    pub vm: Option<String>,
    /// The migration and side, when part of one.
    pub migration: Option<(u64, Role)>,
    /// Unix time.
    pub at: u64,
}

/// Counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DhcpCounters {
    /// Datagrams handled.
    pub received: u64,
    /// Datagrams dropped, by reason.
    pub dropped: BTreeMap<&'static str, u64>,
    /// Offers sent.
    pub offers: u64,
    /// ACKs sent (INFORM answers included).
    pub acks: u64,
    /// NAKs sent.
    pub naks: u64,
    /// DECLINEs received.
    pub declines: u64,
    /// RELEASEs received.
    pub releases: u64,
    /// Requests from clients the inventory does not know and no pool serves (RFC 2131 4.3.2:
    /// the server stays silent about clients it has no record of).
    pub unknown_clients: u64,
    /// DISCOVERs left unanswered because the pool had no free address.
    pub pool_exhausted: u64,
    /// REQUESTs that chose another server.
    pub other_server: u64,
    /// Messages naming a VM that arrived on an interface other than its segment's (a VM
    /// releasing, declining or asking in another's name): dropped, no lease event.
    pub wrong_segment_dropped: u64,
}

impl DhcpCounters {
    /// Counts a datagram dropped for `reason`.
    pub fn count_drop(&mut self, reason: &'static str) {
        *self.dropped.entry(reason).or_default() += 1;
    }
}

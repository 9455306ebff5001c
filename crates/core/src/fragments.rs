//! Remembering where a fragmented datagram's first fragment went, so the later fragments (which
//! carry no ports) follow it. RFC 791: fragments of one datagram share source, destination,
//! protocol and identification.

use foldhash::fast::SeedableRandomState;
use std::collections::HashMap;

use crate::time::Instant;
use crate::wire::Ipv4Info;

/// Where a datagram's fragments go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FragmentRoute {
    /// Inbound: deliver to these VMs (bit 0 A, bit 1 B).
    Deliver(u8),
    /// Egress: the first fragment passed.
    Pass,
    /// Egress: the first fragment was dropped; drop the rest too.
    Drop,
}

type FragmentId = (u32, u32, u16, u8);

fn id(ip: &Ipv4Info) -> FragmentId {
    (ip.src.to_bits(), ip.dst.to_bits(), ip.ident, ip.protocol)
}

/// Bounded table of datagrams in flight; entries live as long as Linux keeps a reassembly queue.
pub(crate) struct FragmentTable {
    routes: HashMap<FragmentId, (FragmentRoute, Instant), SeedableRandomState>,
    max: usize,
    lifetime: core::time::Duration,
}

impl FragmentTable {
    /// A table of at most `max` datagrams, its hash keyed like the flow table's (remote clients
    /// choose the addresses and identifications).
    pub fn new(max: usize, key: Option<u64>) -> Self {
        Self {
            routes: HashMap::with_capacity_and_hasher(max.min(4096), crate::keyed::hasher(key)),
            max,
            lifetime: core::time::Duration::from_secs(30),
        }
    }

    /// Remembers the route of a first fragment. False when the table is full.
    pub fn remember(&mut self, ip: &Ipv4Info, route: FragmentRoute, now: Instant) -> bool {
        if self.routes.len() >= self.max {
            self.expire(now);
            if self.routes.len() >= self.max {
                return false;
            }
        }
        self.routes.insert(id(ip), (route, now + self.lifetime));
        true
    }

    /// The route of a later fragment's datagram, if its first fragment was seen.
    pub fn route(&self, ip: &Ipv4Info, now: Instant) -> Option<FragmentRoute> {
        self.routes.get(&id(ip)).filter(|(_, until)| *until > now).map(|(r, _)| *r)
    }

    /// Forgets datagrams past their lifetime.
    pub fn expire(&mut self, now: Instant) {
        self.routes.retain(|_, (_, until)| *until > now);
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

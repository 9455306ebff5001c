//! What a fast path (the XDP program) copies from the core to forward the steady state itself.
//!
//! The core stays the authority. A fast path holds, in its own maps:
//!
//! - per shadowed address, a [`FastPathShadow`] ([`ShadowRouter::fast_path_shadows`]): the
//!   split's salt and threshold (a new flow goes to B when
//!   [`crate::shadow::split_hash`]`(salt, key, affinity) < threshold`), the two VMs, and whether
//!   every packet to the address must go to the core (`slow`);
//! - [`ShadowRouter::retired_until`]: while it is in the future, TCP to addresses that are not
//!   shadowed goes to the core (it answers the late segments of flows it closed at a cut-over);
//! - the flows whose owner is known, followed from the events: `FlowStarted` with a known owner,
//!   `OwnerLearned` and `HandOff` set the owner; `FlowRetired` and `FlowEnded` remove the flow
//!   (the end of a migration ends each of its flows with a `FlowEnded`, bar those already
//!   retired). [`ShadowRouter::fast_path_flows`] lists them all, for a fresh start of the fast
//!   path's map.
//!
//! Everything but the flows is re-read when [`ShadowRouter::fast_path_generation`] changes. The
//! fast path forwards a packet only to (or from) its flow's owner and reports it; the core
//! replays it (`router/replay.rs`). Everything else goes to the core: fragments, ICMP, ARP,
//! flows it does not know, and all packets of a `slow` address. Conversely, a router restarted
//! behind a fast path refills its table from the fast path's flow map with
//! [`ShadowRouter::restore_flow`] instead of learning every owner again.

use std::net::Ipv4Addr;

use super::observe::observe;
use super::{ShadowRouter, VmRef};
use crate::error::RouterError;
use crate::events::{Event, FlowOrigin};
use crate::flow::{Flow, FlowKey, Owner, Phase, Side, marks};
use crate::shadow::{Affinity, Mode, Shadow, Strategy};
use crate::time::Instant;

/// A shadowed address as a fast path holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastPathShadow {
    /// The shadowed address.
    pub ip: Ipv4Addr,
    /// The key of the split hash ([`crate::shadow::split_hash`]).
    pub salt: u64,
    /// A new flow goes to B when its split hash is below this
    /// ([`crate::shadow::split_threshold`] of the split); 2^32: all.
    pub threshold: u64,
    /// What the split hash hashes: the flow, or its client alone.
    pub affinity: Affinity,
    /// VM A (a port of the layer-2 router).
    pub source: VmRef,
    /// VM B.
    pub destination: VmRef,
    /// Every packet to (and from) this address must go to the core: its strategy is not `flow`
    /// (`packet` decides per packet, `instant` has no owners), or its mode is not `independent`
    /// (replica mode delivers to both VMs and hands flows off). In other states (waiting for B's
    /// lease, ramping, paused, rolling back) the owner of a known flow is all that decides a
    /// packet.
    pub slow: bool,
    /// The packets of A's flows must go to the core: the closing window has begun (the router
    /// closes A's flows at quiet moments, which it must see, and answers the flows it closed
    /// itself). B's flows and new ones still need only the owner and the split.
    pub slow_source: bool,
}

impl FastPathShadow {
    pub(crate) fn of(shadow: &Shadow) -> Self {
        Self {
            ip: shadow.entry.ip_address,
            salt: shadow.salt,
            threshold: shadow.threshold,
            affinity: shadow.affinity,
            source: shadow.source,
            destination: shadow.destination,
            slow: shadow.strategy != Strategy::Flow || shadow.mode != Mode::Independent,
            slow_source: shadow.ending.closing_since.is_some(),
        }
    }
}

impl<S: crate::events::EventSink> ShadowRouter<S> {
    /// A number that changes whenever anything a fast path copies apart from the flows may have
    /// changed: an entry added or removed, a split, a state, a closing window begun, an address
    /// assigned or released, [`ShadowRouter::retired_until`]. Compare it with the one last copied;
    /// it starts at 1.
    pub fn fast_path_generation(&self) -> u64 {
        self.fast_path_generation
    }

    /// Carries the generation over from the router this one replaces (a restart), so that it
    /// still differs from what a fast path copied last.
    pub(crate) fn continue_generation(&mut self, previous: u64) {
        self.fast_path_generation = self.fast_path_generation.max(previous.wrapping_add(1));
    }

    /// Every shadowed address as a fast path holds it.
    pub fn fast_path_shadows(&self) -> impl Iterator<Item = FastPathShadow> + '_ {
        self.shadows.values().map(FastPathShadow::of)
    }

    /// Until when TCP to an address that is not shadowed must go to the core: it keeps flows it
    /// closed at a cut-over to answer their clients' late segments. `None`: never was.
    pub fn retired_until(&self) -> Option<Instant> {
        self.retired_until
    }

    /// Every tracked flow of a shadowed address whose owner is known and which is not retired:
    /// what a fast path's flow map holds. Scans the whole table (a fresh start, not a sync).
    pub fn fast_path_flows(&self) -> Vec<(FlowKey, Side)> {
        let keys = self.flows.keys_where(|k, f| {
            f.owner != Owner::Unknown && f.phase != Phase::Retired && self.shadows.contains_key(&k.shadow_ip)
        });
        keys.into_iter().filter_map(|k| Some((k, self.flow(&k)?.owner.side()?))).collect()
    }

    /// Tracks `key` as an established flow of `owner` (its start unknown, its owner not learned
    /// from a reply), as a router restarted behind a fast path finds it in the fast path's flow
    /// map. Reported as a `FlowStarted` of origin `Unknown`. Returns whether it was added: not
    /// if the flow is tracked already, or the table is full of established flows.
    pub fn restore_flow(&mut self, key: FlowKey, owner: Side, now: Instant) -> Result<bool, RouterError> {
        if !self.shadows.contains_key(&key.shadow_ip) {
            return Err(RouterError::NotShadowed(key.shadow_ip));
        }
        let hash = self.flows.hash(&key);
        if self.flows.find(&key, hash).is_some() {
            return Ok(false);
        }
        let mut flow = Flow::new(owner.into(), Phase::Established, now);
        flow.marks |= marks::UNKNOWN_START;
        let Some(index) = self.admit(&key, hash, flow, now) else { return Ok(false) };
        let (shadows, tables) = self.split_borrow();
        let Some(shadow) = shadows.get_mut(&key.shadow_ip) else { return Ok(true) };
        let counters = &mut shadow.entry.counters;
        match owner {
            Side::Source => counters.flows_to_source += 1,
            Side::Destination => counters.flows_to_destination += 1,
        }
        // Counted open on its owner's side now, as a flow picked up mid-stream is at its packet.
        observe(&mut shadow.patterns, &key, tables.flows.flow_mut(index), now);
        tables.sink.event(Event::FlowStarted { key, owner: owner.into(), origin: FlowOrigin::Unknown, at: now });
        Ok(true)
    }
}

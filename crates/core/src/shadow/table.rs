//! The shadowing table: shadowed address -> entry, with the hot per-packet fields precomputed.

use core::hash::BuildHasher;
use std::collections::HashMap;
use std::net::Ipv4Addr;

use foldhash::fast::FixedState;

use super::entry::{Affinity, Mode, ShadowingEntry, Strategy};
use super::split::{SplitChange, SplitController};
use crate::VmRef;
use crate::flow::{FlowKey, Side};
use crate::time::Instant;

/// One shadowed address as the router holds it.
pub(crate) struct Shadow {
    /// Split hash threshold: a flow whose 32-bit hash is below it goes to B. 2^32 means all.
    pub threshold: u64,
    pub strategy: Strategy,
    pub mode: Mode,
    pub affinity: Affinity,
    /// Seeded with the entry's salt.
    pub split_hasher: foldhash::quality::FixedState,
    pub source: VmRef,
    pub destination: VmRef,
    /// Per-packet RNG state for the `packet` strategy (splitmix64).
    pub rng: u64,
    /// When `poll` must next visit this entry (controller or deadline).
    pub wake_at: Option<Instant>,
    pub controller: SplitController,
    pub entry: ShadowingEntry,
}

impl Shadow {
    pub fn new(entry: ShadowingEntry, source: VmRef, destination: VmRef, controller: SplitController) -> Self {
        let salt = entry.options.salt;
        let mut shadow = Self {
            threshold: 0,
            strategy: entry.options.strategy,
            mode: entry.options.mode,
            affinity: entry.options.affinity,
            split_hasher: foldhash::quality::FixedState::with_seed(salt),
            source,
            destination,
            rng: salt ^ 0x9e37_79b9_7f4a_7c15,
            wake_at: None,
            controller,
            entry,
        };
        shadow.sync_split();
        shadow
    }

    /// Copies the controller's split into the entry and the hash threshold.
    pub fn sync_split(&mut self) {
        let pct = self.controller.split();
        self.entry.traffic_split_percentage = pct;
        self.threshold = ((pct / 100.0) * 4_294_967_296.0).round() as u64;
    }

    /// Applies a change returned by the controller.
    pub fn apply(&mut self, change: Option<SplitChange>) -> Option<SplitChange> {
        if change.is_some() {
            self.sync_split();
        }
        change
    }

    /// The side a new flow with this key goes to at the current split; in replica mode, the
    /// flow's primary; in a collision, the priority VM.
    #[inline]
    pub fn decide(&self, key: &FlowKey) -> Side {
        let h = self.split_hasher.hash_one(key.words()) >> 32;
        if h < self.threshold { Side::Destination } else { Side::Source }
    }

    /// The seed's `random_number < traffic_split_percentage`, per packet.
    pub fn decide_packet(&mut self) -> Side {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        if (z >> 32) < self.threshold { Side::Destination } else { Side::Source }
    }

    /// The VM on `side`.
    pub fn vm(&self, side: Side) -> VmRef {
        match side {
            Side::Source => self.source,
            Side::Destination => self.destination,
        }
    }

    /// Which side `vm` is, if either.
    pub fn side_of(&self, vm: VmRef) -> Option<Side> {
        if vm == self.source {
            Some(Side::Source)
        } else if vm == self.destination {
            Some(Side::Destination)
        } else {
            None
        }
    }
}

/// Shadowed address -> [`Shadow`].
pub(crate) type ShadowingTable = HashMap<Ipv4Addr, Shadow, FixedState>;

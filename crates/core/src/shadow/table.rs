//! The shadowing table: shadowed address -> entry, with the hot per-packet fields precomputed.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use foldhash::fast::FixedState;

use super::entry::{Affinity, Mode, ShadowingEntry, Strategy};
use super::hash::{split_hash, split_threshold};
use super::split::{SignalCounts, SplitChange, SplitController};
use crate::VmRef;
use crate::flow::{FlowKey, Side};
use crate::patterns::TrafficPatterns;
use crate::time::Instant;

/// One shadowed address as the router holds it. The first cache line holds everything a packet
/// of an existing flow reads or writes; the entry and controller behind it are touched by new
/// flows, timers and the control plane only.
#[repr(C, align(64))]
pub(crate) struct Shadow {
    /// Split hash threshold: a flow whose 32-bit hash is below it goes to B. 2^32 means all.
    pub threshold: u64,
    /// The entry's salt, the key of [`split_hash`].
    pub salt: u64,
    /// Inbound packets delivered to A, B, both (merged into the entry's counters when read).
    pub packets: [u64; 3],
    /// Signals about B counted since the controller last judged an interval.
    pub signals: SignalCounts,
    pub strategy: Strategy,
    pub mode: Mode,
    pub affinity: Affinity,
    // Second line: egress and control.
    pub source: VmRef,
    pub destination: VmRef,
    /// Per-packet RNG state for the `packet` strategy (splitmix64).
    pub rng: u64,
    /// When `poll` must next visit this entry (controller or deadline).
    pub wake_at: Option<Instant>,
    pub controller: SplitController,
    pub entry: ShadowingEntry,
    /// What the router measures for this address (boxed: kilobytes, off the packet line).
    pub patterns: Box<TrafficPatterns>,
    /// The end as far as it went: the closing window's flows (see `router/close.rs`).
    pub ending: Ending,
}

/// The end of a migration as it goes: the closing window before the deadline, the flows closed
/// in order so far, when to look again.
#[derive(Clone, Debug, Default)]
pub(crate) struct Ending {
    /// When the closing window began.
    pub closing_since: Option<Instant>,
    /// The cut-over report so far (flows on A when the window began, closed gracefully).
    pub report: crate::events::CutOverReport,
    /// Flows closed by the router whose client has not closed its side yet.
    pub retired_open: u32,
    /// When the router last closed a flow.
    pub last_close: Option<Instant>,
    /// When `poll` must look at the entry again for the early finish or the window's end.
    pub check_at: Option<Instant>,
    /// A's flows marked to close at a quiet moment and not closed yet (the window's work list:
    /// bounded by the flow table, emptied as they close or end).
    pub to_close: Vec<FlowKey>,
    /// Most flows closed per look (the closes spread over the window's first half, so that the
    /// clients' reconnections do not all reach B at once).
    pub close_per_scan: u32,
    /// Since A's flows were last seen all idle (at 100 %, watched long enough): when they are
    /// overdue, i.e. still there well past the drain the forecast gave then.
    pub overdue_at: Option<Instant>,
}

impl Shadow {
    pub fn new(
        entry: ShadowingEntry,
        source: VmRef,
        destination: VmRef,
        controller: SplitController,
        now: Instant,
    ) -> Self {
        let salt = entry.options.salt;
        let mut shadow = Self {
            threshold: 0,
            packets: [0; 3],
            signals: SignalCounts::default(),
            strategy: entry.options.strategy,
            mode: entry.options.mode,
            affinity: entry.options.affinity,
            salt,
            source,
            destination,
            rng: salt ^ 0x9e37_79b9_7f4a_7c15,
            wake_at: None,
            controller,
            entry,
            patterns: Box::new(TrafficPatterns::new(now)),
            ending: Ending::default(),
        };
        shadow.sync_split();
        shadow
    }

    /// The entry as the control plane sees it: with the packet counters merged in.
    pub fn snapshot(&self) -> ShadowingEntry {
        let mut entry = self.entry.clone();
        let c = &mut entry.counters;
        [c.packets_to_source, c.packets_to_destination, c.packets_to_both] = self.packets;
        entry
    }

    /// Copies the controller's split into the entry and the hash threshold.
    pub fn sync_split(&mut self) {
        let pct = self.controller.split();
        self.entry.traffic_split_percentage = pct;
        self.threshold = split_threshold(pct);
    }

    /// Applies a change returned by the controller.
    pub fn apply(&mut self, change: Option<SplitChange>) -> Option<SplitChange> {
        if change.is_some() {
            self.sync_split();
        }
        change
    }

    /// The side a new flow with this key goes to at the current split; in replica mode, the
    /// flow's primary; in a collision, the priority VM. With client affinity the decision hashes
    /// the client's address alone, so every new flow of a client goes the same way; it is a pure
    /// function of the split (no pin is stored), so a rising split only ever moves a client's
    /// *new* flows to B, while the flows it has open stay with their owners in the flow table.
    /// The hash is [`split_hash`], which the XDP fast path computes too.
    #[inline]
    pub fn decide(&self, key: &FlowKey) -> Side {
        let h = split_hash(self.salt, key, self.affinity);
        if u64::from(h) < self.threshold { Side::Destination } else { Side::Source }
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

const _: () = assert!(core::mem::offset_of!(Shadow, affinity) < 64, "packet-path fields fit one cache line");

/// Where a shadowed address's [`Shadow`] is, with the strategy that decides whether a packet has
/// a flow key, so a batch can compute keys and prefetch before touching the entry itself.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Located {
    pub slot: u32,
    pub strategy: Strategy,
}

/// Shadowed address -> [`Shadow`]: a small index (12 bytes an address: 10k addresses stay in
/// cache) over a dense arena of cache-line-aligned entries.
pub(crate) struct ShadowingTable {
    index: HashMap<u32, Located, FixedState>,
    arena: Vec<Shadow>,
}

impl ShadowingTable {
    pub fn new() -> Self {
        Self { index: HashMap::with_hasher(FixedState::default()), arena: Vec::new() }
    }

    #[inline]
    pub fn locate(&self, ip: &Ipv4Addr) -> Option<Located> {
        self.index.get(&ip.to_bits()).copied()
    }

    #[inline]
    pub fn at(&self, slot: u32) -> &Shadow {
        &self.arena[slot as usize]
    }

    #[inline]
    pub fn at_mut(&mut self, slot: u32) -> &mut Shadow {
        &mut self.arena[slot as usize]
    }

    /// Hints the CPU to load an entry's packet-path line.
    #[inline]
    pub fn prefetch(&self, slot: u32) {
        crate::prefetch::read(&self.arena[slot as usize]);
    }

    #[inline]
    pub fn get(&self, ip: &Ipv4Addr) -> Option<&Shadow> {
        self.locate(ip).map(|l| &self.arena[l.slot as usize])
    }

    #[inline]
    pub fn get_mut(&mut self, ip: &Ipv4Addr) -> Option<&mut Shadow> {
        self.locate(ip).map(|l| &mut self.arena[l.slot as usize])
    }

    pub fn contains_key(&self, ip: &Ipv4Addr) -> bool {
        self.index.contains_key(&ip.to_bits())
    }

    /// Adds or replaces the entry of `ip`.
    pub fn insert(&mut self, ip: Ipv4Addr, shadow: Shadow) {
        let located = |slot| Located { slot, strategy: shadow.strategy };
        match self.index.get(&ip.to_bits()) {
            Some(l) => {
                let slot = l.slot;
                self.index.insert(ip.to_bits(), located(slot));
                self.arena[slot as usize] = shadow;
            }
            None => {
                let slot = self.arena.len() as u32;
                self.index.insert(ip.to_bits(), located(slot));
                self.arena.push(shadow);
            }
        }
    }

    pub fn remove(&mut self, ip: &Ipv4Addr) -> Option<Shadow> {
        let slot = self.index.remove(&ip.to_bits())?.slot;
        let shadow = self.arena.swap_remove(slot as usize);
        // The last entry moved into the hole: point its index there.
        if let Some(moved) = self.arena.get(slot as usize)
            && let Some(l) = self.index.get_mut(&moved.entry.ip_address.to_bits())
        {
            l.slot = slot;
        }
        Some(shadow)
    }

    pub fn values(&self) -> impl Iterator<Item = &Shadow> {
        self.arena.iter()
    }
}

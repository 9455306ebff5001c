//! The flow table: a fixed-capacity open-addressing hash table with linear probing.
//!
//! Why by hand: the router needs (1) memory fixed at start-up and never grown on the packet path,
//! (2) eviction that prefers embryonic flows and never touches an established one, (3) a prefetch
//! of a key's slot before the lookup, so a batch of packets overlaps its cache misses. General
//! maps (std, hashbrown) offer none of the three. A slot is 48 bytes (16 of key, 32 of
//! [`Flow`]); the capacity is `max_flows * 8 / 5` slots, so the load never exceeds 0.625 and a
//! lookup touches one or two cache lines.
//!
//! Remote clients choose the keys, so the hash is keyed at random per process (`crate::keyed`):
//! with a key known in advance they could pile their flows into one probe run.

use core::hash::BuildHasher;

use foldhash::fast::SeedableRandomState;

use super::TimeoutsMs;
use super::{Flow, FlowKey};
use crate::time::Instant;

/// Slots scanned for a victim when the table is full. Bounded so that a table full of
/// established flows refuses a new one in constant time instead of scanning everything.
const EVICT_SCAN: usize = 256;

#[derive(Clone, Copy)]
#[repr(C)]
struct Slot {
    w0: u64,
    /// 0 marks an empty slot (a stored key always has its low bit set).
    w1: u64,
    flow: Flow,
}

const EMPTY: Slot = Slot { w0: 0, w1: 0, flow: Flow::new_const() };

impl Flow {
    const fn new_const() -> Self {
        Self {
            created: Instant::ZERO,
            last_seen_ms: 0,
            client_seq_max: 0,
            client_ack: 0,
            owner_seq_max: 0,
            stamp_ms: 0,
            owner: super::Owner::Unknown,
            phase: super::Phase::Embryonic,
            flags: 0,
            marks: 0,
        }
    }
}

/// A new flow could not be admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    /// The table holds its maximum and no embryonic or expired flow was found to make room.
    #[error("flow table full of established flows")]
    Full,
}

/// A flow removed to make room for a new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Evicted {
    /// Its key.
    pub key: FlowKey,
    /// Its state when removed.
    pub flow: Flow,
    /// True if it had merely expired (idle past its timeout), false if it was evicted alive.
    pub expired: bool,
}

/// Fixed-capacity flow table. See the module documentation.
pub struct FlowTable {
    slots: Box<[Slot]>,
    len: usize,
    max_flows: usize,
    hasher: SeedableRandomState,
    evict_hand: usize,
    sweep_hand: usize,
}

impl FlowTable {
    /// A table for at most `max_flows` flows. Its hash is keyed with `key`, or at random for this
    /// process when `None` (see [`crate::RouterConfig::hash_key`]). Allocates all its memory now.
    pub fn new(max_flows: usize, key: Option<u64>) -> Self {
        let max_flows = max_flows.max(1);
        let capacity = max_flows.saturating_mul(8) / 5 + 1;
        Self {
            slots: vec![EMPTY; capacity].into_boxed_slice(),
            len: 0,
            max_flows,
            hasher: crate::keyed::hasher(key),
            evict_hand: 0,
            sweep_hand: 0,
        }
    }

    /// Flows stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no flow is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most flows the table admits.
    pub fn max_flows(&self) -> usize {
        self.max_flows
    }

    /// Bytes of the slot array (the table's whole footprint apart from a few words).
    pub fn memory_bytes(&self) -> usize {
        self.slots.len() * size_of::<Slot>()
    }

    /// The key's hash, for [`FlowTable::prefetch`] and the lookups.
    #[inline]
    pub fn hash(&self, key: &FlowKey) -> u64 {
        self.hasher.hash_one(key.words())
    }

    /// The slot where the key's probe starts (diagnostics and tests: keys with nearby home
    /// slots share one probe run).
    pub fn home_slot(&self, key: &FlowKey) -> usize {
        self.home(self.hash(key))
    }

    #[inline]
    fn home(&self, hash: u64) -> usize {
        // Lemire's multiply-shift range reduction: any capacity, no modulo.
        ((u128::from(hash) * self.slots.len() as u128) >> 64) as usize
    }

    #[inline]
    fn next(&self, i: usize) -> usize {
        if i + 1 == self.slots.len() { 0 } else { i + 1 }
    }

    /// Hints the CPU to load the key's home slot, so that a lookup a few packets later hits cache.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        let home = self.home(hash);
        // A 48-byte slot may straddle two cache lines, and a key sits on average 0.8 slots past
        // its home at the table's load: ask for the home slot's lines and the next slot's end.
        crate::prefetch::read(&self.slots[home]);
        crate::prefetch::read(&self.slots[home].flow.marks);
        crate::prefetch::read(&self.slots[self.next(home)].flow.marks);
    }

    /// Index of the key's slot, if stored.
    #[inline]
    pub fn find(&self, key: &FlowKey, hash: u64) -> Option<usize> {
        let (w0, w1) = key.words();
        let mut i = self.home(hash);
        loop {
            let slot = &self.slots[i];
            if slot.w1 == w1 && slot.w0 == w0 {
                return Some(i);
            }
            if slot.w1 == 0 {
                return None;
            }
            i = self.next(i);
        }
    }

    /// The flow in slot `index` (from [`FlowTable::find`] or [`FlowTable::insert`]).
    #[inline]
    pub fn flow(&self, index: usize) -> &Flow {
        &self.slots[index].flow
    }

    /// The flow in slot `index`, mutable.
    #[inline]
    pub fn flow_mut(&mut self, index: usize) -> &mut Flow {
        &mut self.slots[index].flow
    }

    /// The key in slot `index`.
    pub fn key(&self, index: usize) -> FlowKey {
        let slot = &self.slots[index];
        FlowKey::from_words(slot.w0, slot.w1)
    }

    /// Stores a flow whose key is not in the table. When the table is full, first removes an
    /// expired or evictable (embryonic/pending) flow and returns it; established flows are never
    /// chosen.
    pub(crate) fn insert(
        &mut self,
        key: &FlowKey,
        hash: u64,
        flow: Flow,
        now_ms: u32,
        timeouts: &TimeoutsMs,
    ) -> Result<(usize, Option<Evicted>), InsertError> {
        let evicted = if self.len >= self.max_flows { Some(self.make_room(now_ms, timeouts)?) } else { None };
        let (w0, w1) = key.words();
        let mut i = self.home(hash);
        while self.slots[i].w1 != 0 {
            i = self.next(i);
        }
        self.slots[i] = Slot { w0, w1, flow };
        self.len += 1;
        Ok((i, evicted))
    }

    fn make_room(&mut self, now_ms: u32, timeouts: &TimeoutsMs) -> Result<Evicted, InsertError> {
        let mut i = self.evict_hand % self.slots.len();
        for _ in 0..EVICT_SCAN.min(self.slots.len()) {
            let slot = self.slots[i];
            if slot.w1 != 0 {
                let expired = self.is_expired(i, now_ms, timeouts);
                if expired || slot.flow.phase.evictable() {
                    let key = FlowKey::from_words(slot.w0, slot.w1);
                    self.remove(i);
                    self.evict_hand = i;
                    return Ok(Evicted { key, flow: slot.flow, expired });
                }
            }
            i = self.next(i);
        }
        self.evict_hand = i;
        Err(InsertError::Full)
    }

    /// Whether the flow in slot `index` has been idle past its timeout at `now_ms`.
    #[inline]
    pub(crate) fn is_expired(&self, index: usize, now_ms: u32, timeouts: &TimeoutsMs) -> bool {
        let slot = &self.slots[index];
        let flow = &slot.flow;
        let protocol = (slot.w1 >> 8) as u8;
        let idle = now_ms.wrapping_sub(flow.last_seen_ms);
        // A last-seen "in the future" (wrapped negative) is a caller clock going backwards: not idle.
        idle < u32::MAX / 2 && idle > timeouts.idle_ms(protocol, flow.phase, flow.has(super::flags::REPLIED))
    }

    /// Removes the flow in slot `index` and returns it. Backward-shift deletion keeps every other
    /// key reachable without tombstones.
    pub fn remove(&mut self, index: usize) -> (FlowKey, Flow) {
        let removed = self.slots[index];
        let mut hole = index;
        let mut j = self.next(hole);
        while self.slots[j].w1 != 0 {
            let slot = self.slots[j];
            let home = self.home(self.hasher.hash_one((slot.w0, slot.w1)));
            // The entry at j may fill the hole if its home is not in the cyclic range (hole, j].
            let stays = if hole <= j { hole < home && home <= j } else { hole < home || home <= j };
            if !stays {
                self.slots[hole] = slot;
                hole = j;
            }
            j = self.next(j);
        }
        self.slots[hole] = EMPTY;
        self.len -= 1;
        (FlowKey::from_words(removed.w0, removed.w1), removed.flow)
    }

    /// Visits up to `budget` slots from where the last sweep stopped and removes the flows that
    /// have expired, handing each to `on_expired`.
    pub(crate) fn sweep(
        &mut self,
        budget: usize,
        now_ms: u32,
        timeouts: &TimeoutsMs,
        mut on_expired: impl FnMut(FlowKey, Flow),
    ) {
        let mut i = self.sweep_hand % self.slots.len();
        for _ in 0..budget.min(self.slots.len()) {
            // After a removal the slot holds a shifted entry (or is empty): look at it again.
            while self.slots[i].w1 != 0 && self.is_expired(i, now_ms, timeouts) {
                let (key, flow) = self.remove(i);
                on_expired(key, flow);
            }
            i = self.next(i);
        }
        self.sweep_hand = i;
    }

    /// Keys of every stored flow for which `pred` holds (a full scan: cut-over, not per packet).
    pub fn keys_where(&self, mut pred: impl FnMut(&FlowKey, &Flow) -> bool) -> Vec<FlowKey> {
        self.slots
            .iter()
            .filter(|s| s.w1 != 0)
            .map(|s| (FlowKey::from_words(s.w0, s.w1), &s.flow))
            .filter(|(k, f)| pred(k, f))
            .map(|(k, _)| k)
            .collect()
    }

    /// Mean and longest distance of stored keys from their home slot (a full scan: diagnostics
    /// and tests of the hash's spread, not for the packet path).
    pub fn probe_lengths(&self) -> (f64, usize) {
        let cap = self.slots.len();
        let (mut total, mut longest) = (0usize, 0usize);
        for (i, s) in self.slots.iter().enumerate().filter(|(_, s)| s.w1 != 0) {
            let home = self.home(self.hasher.hash_one((s.w0, s.w1)));
            let d = (i + cap - home) % cap;
            total += d;
            longest = longest.max(d);
        }
        (total as f64 / self.len.max(1) as f64, longest)
    }

    /// Number of slots (for sweep budgeting).
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::flow::{FlowTimeouts, Owner, Phase};

    fn key(n: u32) -> FlowKey {
        FlowKey {
            client_ip: Ipv4Addr::from_bits(0xc633_0000 | (n >> 16)),
            client_port: n as u16,
            shadow_ip: Ipv4Addr::new(10, 0, 0, 10),
            shadow_port: 80,
            protocol: 6,
        }
    }

    fn timeouts() -> TimeoutsMs {
        TimeoutsMs::from(&FlowTimeouts::default())
    }

    #[test]
    fn insert_find_remove_keep_every_other_key_reachable() {
        let mut t = FlowTable::new(1000, Some(7));
        let to = timeouts();
        for n in 0..1000 {
            let k = key(n);
            let h = t.hash(&k);
            t.insert(&k, h, Flow::new(Owner::Source, Phase::Established, Instant::ZERO), 0, &to).unwrap();
        }
        assert_eq!(t.len(), 1000);
        for n in (0..1000).step_by(3) {
            let k = key(n);
            let i = t.find(&k, t.hash(&k)).unwrap();
            assert_eq!(t.remove(i).0, k);
        }
        for n in 0..1000 {
            let k = key(n);
            assert_eq!(t.find(&k, t.hash(&k)).is_some(), n % 3 != 0, "key {n}");
        }
    }

    #[test]
    fn full_table_evicts_embryonic_never_established() {
        let mut t = FlowTable::new(100, Some(1));
        let to = timeouts();
        for n in 0..50 {
            let k = key(n);
            let h = t.hash(&k);
            t.insert(&k, h, Flow::new(Owner::Source, Phase::Established, Instant::ZERO), 0, &to).unwrap();
        }
        for n in 50..10_000 {
            let k = key(n);
            let h = t.hash(&k);
            let (_, evicted) =
                t.insert(&k, h, Flow::new(Owner::Source, Phase::Embryonic, Instant::ZERO), 0, &to).unwrap();
            if let Some(e) = evicted {
                assert_eq!(e.flow.phase, Phase::Embryonic);
                assert!(!e.expired);
            }
        }
        for n in 0..50 {
            let k = key(n);
            assert!(t.find(&k, t.hash(&k)).is_some(), "established flow {n} survived the flood");
        }
        assert_eq!(t.len(), 100);
    }

    #[test]
    fn full_table_of_established_flows_refuses() {
        let mut t = FlowTable::new(10, Some(1));
        let to = timeouts();
        for n in 0..10 {
            let k = key(n);
            let h = t.hash(&k);
            t.insert(&k, h, Flow::new(Owner::Source, Phase::Established, Instant::ZERO), 0, &to).unwrap();
        }
        let k = key(99);
        let h = t.hash(&k);
        assert_eq!(
            t.insert(&k, h, Flow::new(Owner::Source, Phase::Embryonic, Instant::ZERO), 0, &to),
            Err(InsertError::Full)
        );
    }

    #[test]
    fn sweep_removes_idle_flows_only() {
        let mut t = FlowTable::new(100, Some(3));
        let to = timeouts();
        for n in 0..40 {
            let k = key(n);
            let h = t.hash(&k);
            let phase = if n % 2 == 0 { Phase::Embryonic } else { Phase::Established };
            t.insert(&k, h, Flow::new(Owner::Source, phase, Instant::ZERO), 0, &to).unwrap();
        }
        // 31 s later: embryonic TCP (30 s) has expired, established (2 h) has not.
        let mut expired = Vec::new();
        t.sweep(usize::MAX, 31_000, &to, |k, f| expired.push((k, f.phase)));
        assert_eq!(expired.len(), 20);
        assert!(expired.iter().all(|(_, p)| *p == Phase::Embryonic));
        assert_eq!(t.len(), 20);
    }
}

//! The provider-side neighbour table: client address -> the MAC the router sends its frames to.
//!
//! Remote hosts fill it (every accepted frame and ARP request teaches the router where its sender
//! is), so it has a cap and an age, like the kernel's neighbour table (`gc_thresh3`,
//! `gc_stale_time`): at the cap the entry confirmed longest ago makes room; an entry not
//! confirmed for `max_age` is forgotten. A flood of random source addresses therefore costs at
//! most the cap's memory and pushes out only entries of hosts that have been silent longer than
//! every flooded one; the router learns them again from their next frame or by asking (ARP).
//!
//! Ordered maps rather than a hash table: the keys come from remote hosts, and a B-tree has no
//! hash to collide.

use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::time::Instant;

/// The least time between two moves of an entry in the age order.
const REFRESH: Duration = Duration::from_secs(1);

/// Bounds of the neighbour table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NeighbourConfig {
    /// Most addresses remembered (each costs about [`NeighbourTable::BYTES_PER_ENTRY`]).
    pub max_entries: usize,
    /// An address not confirmed (no frame accepted from it, no ARP from it) for this long is
    /// forgotten.
    #[serde(with = "crate::time::duration_ms", rename = "max_age_ms")]
    pub max_age: Duration,
}

impl Default for NeighbourConfig {
    fn default() -> Self {
        // 64k clients heard from in the last 10 minutes: a few MiB at most. An idle client
        // aged out is asked for again (ARP) when a VM next sends to it.
        Self { max_entries: 1 << 16, max_age: Duration::from_secs(600) }
    }
}

/// The neighbour table. See the module documentation.
#[derive(Debug, Default)]
pub struct NeighbourTable {
    config: NeighbourConfig,
    /// Address -> (MAC, when last confirmed).
    entries: BTreeMap<Ipv4Addr, ([u8; 6], Instant)>,
    /// The same entries by when they were last confirmed: the oldest first.
    by_age: BTreeSet<(Instant, Ipv4Addr)>,
    evicted: u64,
    aged: u64,
}

impl NeighbourTable {
    /// Upper bound of the heap bytes one entry costs: 20 in the map (address, MAC, time) and
    /// 16 in the age index; B-tree leaves of 11 slots hold at least 5 (about 230 and 190 bytes a
    /// leaf: 46 and 38 bytes an entry at the worst), and the inner nodes add a tenth. Checked by
    /// the flood test in `tests/bounds.rs`.
    pub const BYTES_PER_ENTRY: usize = 128;

    /// An empty table.
    pub fn new(config: NeighbourConfig) -> Self {
        Self { config, ..Self::default() }
    }

    /// Records that `ip` is at `mac`, confirmed at `now`. At the cap, the entry confirmed longest
    /// ago is evicted first. Returns whether `ip` is new to the table.
    pub fn confirm(&mut self, ip: Ipv4Addr, mac: [u8; 6], now: Instant) -> bool {
        match self.entries.get_mut(&ip) {
            Some((old_mac, at)) => {
                *old_mac = mac;
                // Re-ordered at most once a second: every accepted frame confirms its sender, and
                // the age is minutes, so finer times would only cost two B-tree updates a packet.
                if now.saturating_duration_since(*at) >= REFRESH {
                    self.by_age.remove(&(*at, ip));
                    self.by_age.insert((now, ip));
                    *at = now;
                }
                false
            }
            None => {
                if self.entries.len() >= self.config.max_entries.max(1)
                    && let Some((_, oldest)) = self.by_age.pop_first()
                {
                    self.entries.remove(&oldest);
                    self.evicted += 1;
                }
                self.entries.insert(ip, (mac, now));
                self.by_age.insert((now, ip));
                true
            }
        }
    }

    /// The MAC of `ip`, if known and not older than the table's age at `now`.
    pub fn get(&self, ip: Ipv4Addr, now: Instant) -> Option<[u8; 6]> {
        let (mac, at) = self.entries.get(&ip)?;
        (now.saturating_duration_since(*at) <= self.config.max_age).then_some(*mac)
    }

    /// Forgets the entries not confirmed for the table's age at `now`.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(at, ip)) = self.by_age.first()
            && now.saturating_duration_since(at) > self.config.max_age
        {
            self.by_age.pop_first();
            self.entries.remove(&ip);
            self.aged += 1;
        }
    }

    /// Forgets everything (a restart).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.by_age.clear();
    }

    /// Addresses remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no address is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The bounds the table keeps.
    pub fn config(&self) -> &NeighbourConfig {
        &self.config
    }

    /// Entries evicted at the cap to make room for a new address.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Entries forgotten because they were not confirmed for the table's age.
    pub fn aged(&self) -> u64 {
        self.aged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> Ipv4Addr {
        Ipv4Addr::from_bits(0x0a00_0000 | n)
    }

    #[test]
    fn at_the_cap_the_entry_confirmed_longest_ago_makes_room() {
        let mut t = NeighbourTable::new(NeighbourConfig { max_entries: 3, max_age: Duration::from_secs(60) });
        for n in 0..3 {
            t.confirm(ip(n), [n as u8; 6], Instant::from_secs(u64::from(n)));
        }
        // 0 is confirmed again: 1 is now the oldest.
        t.confirm(ip(0), [9; 6], Instant::from_secs(5));
        t.confirm(ip(7), [7; 6], Instant::from_secs(6));
        assert_eq!(t.len(), 3);
        assert_eq!(t.evicted(), 1);
        let now = Instant::from_secs(6);
        assert_eq!(t.get(ip(1), now), None);
        assert_eq!(t.get(ip(0), now), Some([9; 6]));
        assert_eq!(t.get(ip(2), now), Some([2; 6]));
        assert_eq!(t.get(ip(7), now), Some([7; 6]));
    }

    #[test]
    fn a_confirmation_within_the_second_keeps_the_place_in_the_age_order() {
        let mut t = NeighbourTable::new(NeighbourConfig { max_entries: 2, max_age: Duration::from_secs(60) });
        t.confirm(ip(1), [1; 6], Instant::from_millis(0));
        t.confirm(ip(2), [2; 6], Instant::from_millis(100));
        t.confirm(ip(1), [1; 6], Instant::from_millis(500));
        t.confirm(ip(3), [3; 6], Instant::from_millis(600));
        assert_eq!(t.get(ip(1), Instant::from_millis(600)), None, "still the oldest");
        assert_eq!(t.get(ip(2), Instant::from_millis(600)), Some([2; 6]));
    }

    #[test]
    fn entries_not_confirmed_for_the_age_are_forgotten() {
        let mut t = NeighbourTable::new(NeighbourConfig { max_entries: 10, max_age: Duration::from_secs(60) });
        t.confirm(ip(1), [1; 6], Instant::from_secs(0));
        t.confirm(ip(2), [2; 6], Instant::from_secs(30));
        assert_eq!(t.get(ip(1), Instant::from_secs(61)), None, "stale: not used even before the sweep");
        t.expire(Instant::from_secs(61));
        assert_eq!((t.len(), t.aged()), (1, 1));
        assert_eq!(t.get(ip(2), Instant::from_secs(61)), Some([2; 6]));
    }
}

//! The embedded store's leases. They live in the process's memory, not in the file: a lease
//! cannot outlive the process that renews it, so a store opened again deletes every key a
//! previous process left under a lease (the file remembers which keys those are). Deadlines are
//! on the monotonic clock, and a reaper thread ends expired leases by itself, so that watchers
//! see the deletions without any other operation on the store.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::store::LeaseId;

/// The lease table and what wakes its reaper.
#[derive(Default)]
pub(super) struct Leases {
    table: Mutex<Table>,
    wake: Condvar,
}

/// Leases by id.
#[derive(Default)]
pub(super) struct Table {
    next_id: i64,
    leases: HashMap<LeaseId, Lease>,
    /// The store is gone: the reaper ends.
    pub(super) closed: bool,
    /// A reaper thread runs (started with the first lease).
    pub(super) reaper: bool,
}

/// One lease.
struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

impl Leases {
    /// The table, locked (a panic while holding it leaves nothing half-changed that matters).
    pub(super) fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until woken or `timeout` passed.
    pub(super) fn wait<'a>(&self, table: MutexGuard<'a, Table>, timeout: Duration) -> MutexGuard<'a, Table> {
        self.wake.wait_timeout(table, timeout).unwrap_or_else(std::sync::PoisonError::into_inner).0
    }

    /// Wakes the reaper (a new deadline, or the store closing).
    pub(super) fn wake(&self) {
        self.wake.notify_all();
    }
}

impl Table {
    /// A new lease of `ttl` from `now`.
    pub(super) fn grant(&mut self, ttl: Duration, now: Instant) -> LeaseId {
        if self.next_id == 0 {
            // Ids differ from those of an earlier store in this process (a holder of a stale
            // id must not renew somebody else's lease): start from the wall clock.
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            self.next_id = (nanos.as_nanos() as i64 & 0x0000_7fff_ffff_ffff).max(1);
        }
        let id = LeaseId(self.next_id);
        self.next_id += 1;
        self.leases.insert(id, Lease { ttl, deadline: now + ttl, keys: BTreeSet::new() });
        id
    }

    /// Whether `lease` exists and has not expired at `now`.
    pub(super) fn alive(&self, lease: LeaseId, now: Instant) -> bool {
        self.leases.get(&lease).is_some_and(|l| l.deadline > now)
    }

    /// Renews `lease`: `Some(true)` renewed, `Some(false)` expired but not yet ended, `None`
    /// unknown (ended).
    pub(super) fn renew(&mut self, lease: LeaseId, now: Instant) -> Option<bool> {
        let l = self.leases.get_mut(&lease)?;
        if l.deadline <= now {
            return Some(false);
        }
        l.deadline = now + l.ttl;
        Some(true)
    }

    /// Binds `key` to `lease` (a lease that exists).
    pub(super) fn attach(&mut self, lease: LeaseId, key: &str) {
        if let Some(l) = self.leases.get_mut(&lease) {
            l.keys.insert(key.to_owned());
        }
    }

    /// Unbinds `key` from `lease`.
    pub(super) fn detach(&mut self, lease: LeaseId, key: &str) {
        if let Some(l) = self.leases.get_mut(&lease) {
            l.keys.remove(key);
        }
    }

    /// Removes `lease` (if `expired_only`, only when it expired at `now`), returning its keys.
    pub(super) fn end(&mut self, lease: LeaseId, expired_only: bool, now: Instant) -> Vec<String> {
        match self.leases.get(&lease) {
            Some(l) if !expired_only || l.deadline <= now => {
                self.leases.remove(&lease).map(|l| l.keys.into_iter().collect()).unwrap_or_default()
            }
            _ => Vec::new(),
        }
    }

    /// Leases expired at `now`.
    pub(super) fn expired(&self, now: Instant) -> Vec<LeaseId> {
        self.leases.iter().filter(|(_, l)| l.deadline <= now).map(|(id, _)| *id).collect()
    }

    /// How long until the next deadline (an hour when there is none: a grant wakes the reaper).
    pub(super) fn next_in(&self, now: Instant) -> Duration {
        self.leases
            .values()
            .map(|l| l.deadline.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_secs(3600))
    }
}

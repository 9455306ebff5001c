//! The projection of the mirror onto the router and the DHCP server, kept per record: a changed
//! address touches its router address and its VMs' reservations, a changed migration its plan
//! and its router entry, a changed VM its reservation. Equal, at every step, to
//! [`crate::project`]'s functions computed from all records (the property test in `tests.rs`).
//! The one part that depends on the time, whether a rolled-back or aborted migration's entry
//! still drains, is decided per call over the entries ordered by when they leave.

use std::ops::Bound;

use ipshadow_contracts::dhcp::{MigrationPlan, Reservation};
use ipshadow_contracts::router::Desired;
use ipshadow_core::VmId;

use super::{Mirror, Record};
use crate::inventory::{Address, Vm, vm_key};
use crate::project::{dhcp_plan, dhcp_reservation, drain_end, router_entry};
use crate::reassign::Migration;

/// What a caller of [`Mirror::changed`] last took, to be handed only what changed since.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Taken {
    /// The router part's generation, and the time it was taken at.
    router: Option<(u64, u64)>,
    /// The DHCP part's generation.
    dhcp: Option<u64>,
}

/// The parts of the projection that changed ([`Mirror::changed`]); `None`: as last taken.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changed {
    /// The router's desired state.
    pub router: Option<Desired>,
    /// The DHCP server's reservations and lease plans.
    pub dhcp: Option<(Vec<Reservation>, Vec<MigrationPlan>)>,
}

impl Mirror {
    /// The router's desired state at `now_ms` (as [`crate::project::router_desired`]).
    pub fn router(&self, now_ms: u64) -> Desired {
        let draining = self.draining.range((Bound::Excluded((now_ms, u64::MAX)), Bound::Unbounded));
        let mut entries: Vec<_> = self.entries.iter().chain(draining.map(|((_, id), e)| (id, e))).collect();
        // Both are few (migrations under way or just rolled back): ordered by id, as the store
        // lists them.
        entries.sort_by_key(|(id, _)| **id);
        Desired {
            addresses: self.router_addresses.clone(),
            entries: entries.into_iter().map(|(_, e)| e.clone()).collect(),
        }
    }

    /// The DHCP server's reservations (as [`crate::project::dhcp_reservations`]).
    pub fn reservations(&self) -> Vec<Reservation> {
        self.reservations.values().cloned().collect()
    }

    /// The DHCP server's lease plans (as [`crate::project::dhcp_plans`]).
    pub fn plans(&self) -> Vec<MigrationPlan> {
        self.plans.values().cloned().collect()
    }

    /// The parts of the projection that changed since the caller last took them with `seen`
    /// (everything, the first time): the router's desired state when a record it depends on
    /// changed or an entry stopped (or started) draining between then and `now_ms`; the DHCP
    /// server's reservations and plans when one of them changed. A `seen` belongs to one mirror.
    pub fn changed(&self, now_ms: u64, seen: &mut Taken) -> Changed {
        let router = match seen.router {
            Some((generation, then)) if generation == self.generations.router && !self.drains_between(then, now_ms) => {
                None
            }
            _ => Some(self.router(now_ms)),
        };
        seen.router = Some((self.generations.router, now_ms));
        let dhcp = match seen.dhcp {
            Some(generation) if generation == self.generations.dhcp => None,
            _ => Some((self.reservations(), self.plans())),
        };
        seen.dhcp = Some(self.generations.dhcp);
        Changed { router, dhcp }
    }

    /// Whether an entry is in the router's desired state at one of `a` and `b` and not at the
    /// other (it is until its end: leaves at `end` when `a < end <= b`).
    fn drains_between(&self, a: u64, b: u64) -> bool {
        let (low, high) = (a.min(b), a.max(b));
        self.draining.range((Bound::Excluded((low, u64::MAX)), Bound::Included((high, u64::MAX)))).next().is_some()
    }

    /// When the router's desired state changes by itself next, after `now_ms`: the next
    /// rolled-back or aborted migration's entry leaving it.
    pub fn next_router_change(&self, now_ms: u64) -> Option<u64> {
        self.draining.range((Bound::Excluded((now_ms, u64::MAX)), Bound::Unbounded)).next().map(|((end, _), _)| *end)
    }

    pub(super) fn add_vm(&mut self, key: String, record: Record<Vm>) {
        let ip = self.held.get(&record.value.id).and_then(|ips| ips.first().copied());
        let reservation = dhcp_reservation(&record.value, ip);
        self.reservations.insert((record.create_revision, record.value.id.clone()), reservation);
        self.vms.insert(key, record);
    }

    pub(super) fn drop_vm(&mut self, old: &Record<Vm>) {
        self.reservations.remove(&(old.create_revision, old.value.id.clone()));
    }

    pub(super) fn add_address(&mut self, record: Record<Address>) {
        let a = &record.value;
        if let Some(vm) = &a.vm {
            self.router_addresses.insert(a.ip, VmId::from(vm.as_str()));
            self.held.entry(vm.clone()).or_default().insert(a.ip);
            let vm = vm.clone();
            self.addresses.insert(a.ip, record);
            self.refresh_reservation(&vm);
        } else {
            self.addresses.insert(a.ip, record);
        }
    }

    pub(super) fn drop_address(&mut self, old: &Record<Address>) {
        let a = &old.value;
        let Some(vm) = &a.vm else { return };
        self.router_addresses.remove(&a.ip);
        if let Some(ips) = self.held.get_mut(vm) {
            ips.remove(&a.ip);
            if ips.is_empty() {
                self.held.remove(vm);
            }
        }
        self.refresh_reservation(vm);
    }

    /// VM `id`'s reservation again, after the addresses it holds changed.
    fn refresh_reservation(&mut self, id: &str) {
        let Some(record) = self.vms.get(&vm_key(id)) else { return };
        let ip = self.held.get(id).and_then(|ips| ips.first().copied());
        if let Some(reservation) = self.reservations.get_mut(&(record.create_revision, record.value.id.clone())) {
            reservation.ip = ip;
        }
    }

    pub(super) fn add_migration(&mut self, record: Record<Migration>) {
        let m = &record.value;
        if let Some(plan) = dhcp_plan(m) {
            self.plans.insert(m.id, plan);
        }
        if let Some(entry) = router_entry(m, &self.policy) {
            match drain_end(m) {
                Some(end) => self.draining.insert((end, m.id), entry),
                None => self.entries.insert(m.id, entry),
            };
        }
        if !m.lifecycle.state.is_final() {
            self.unfinished.insert(m.id);
        }
        self.migrations.insert(m.id, record);
    }

    pub(super) fn drop_migration(&mut self, old: &Record<Migration>) {
        let m = &old.value;
        self.plans.remove(&m.id);
        self.entries.remove(&m.id);
        if let Some(end) = drain_end(m) {
            self.draining.remove(&(end, m.id));
        }
        self.unfinished.remove(&m.id);
    }
}

//! The reconciler that brings a running router in line with its desired state (the document
//! itself, [`Desired`], is a contract between the manager and the router: `ipshadow_contracts`).
//!
//! The router does not take commands: it watches a document (today a JSON file in its state
//! directory, later a key in etcd) that says which VM holds which address and which addresses are
//! shadowed, with each [`ShadowingEntry`] as last recorded (state, split, deadline). Whenever the
//! document changes, and once at start, [`Reconciler::apply`] makes the router match it. A router
//! that restarts reads the same document and resumes every migration at its recorded split,
//! which is what lets it be killed at any moment.
//!
//! The document's deadlines are wall-clock times (the manager's and the DHCP server's clock);
//! the router runs on its monotonic clock. Each entry's deadline is converted when the entry is
//! installed and with that entry's conversion from then on, so a step of the wall clock neither
//! moves a cut-over nor, since flows live on the monotonic clock, expires a flow.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

pub use ipshadow_contracts::router::{Desired, DesiredEntry, ReconcileError};
use ipshadow_core::l2::RouterNode;
use ipshadow_core::{Clocks, EntryState, Instant, ShadowingEntry, VmId, VmRef, WallOffset};

/// Applies desired states to a router, remembering what it applied.
#[derive(Debug, Default)]
pub struct Reconciler {
    /// Addresses assigned from the document (to release those that leave it).
    assigned: BTreeMap<Ipv4Addr, VmId>,
    /// Migrations that ended in this router (address, start time): an entry still in the
    /// document because the manager has not caught up must not start again.
    ended: BTreeSet<(Ipv4Addr, Instant)>,
    /// Migrations promoted already (promotion is a one-time act).
    promoted: BTreeSet<(Ipv4Addr, Instant)>,
    /// Start time of the migration installed for each address.
    installed: BTreeMap<Ipv4Addr, Instant>,
    /// When each installed entry was installed, by the wall clock (what the manager's latency
    /// from API call to active entry is measured against).
    installed_at: BTreeMap<Ipv4Addr, Instant>,
    /// The wall-to-monotonic conversion of each installed entry's deadline, fixed at install.
    offsets: BTreeMap<Ipv4Addr, WallOffset>,
}

impl Reconciler {
    /// A reconciler that has applied nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that the migration of `ip` ended in the router on its own (deadline reached):
    /// the document may still list it until the manager catches up.
    pub fn migration_ended(&mut self, ip: Ipv4Addr) {
        self.installed_at.remove(&ip);
        self.offsets.remove(&ip);
        if let Some(start) = self.installed.remove(&ip) {
            self.ended.insert((ip, start));
        }
    }

    /// When each shadowed address's current entry was installed in this router (wall clock).
    pub fn installed_at(&self) -> &BTreeMap<Ipv4Addr, Instant> {
        &self.installed_at
    }

    /// The conversion between the wall clock and the router's monotonic clock fixed when the
    /// entry of `ip` was installed (none if it is not installed).
    pub fn offset(&self, ip: Ipv4Addr) -> Option<WallOffset> {
        self.offsets.get(&ip).copied()
    }

    /// Makes `node` match `desired`. Every part that can be applied is; the errors say what could
    /// not (a bad entry does not stop the others).
    pub fn apply(&mut self, node: &mut RouterNode, desired: &Desired, clocks: Clocks) -> Vec<ReconcileError> {
        let now = clocks.now;
        let mut errors = Vec::new();
        let wanted: BTreeSet<Ipv4Addr> = desired.entries.iter().map(|d| d.entry.ip_address).collect();
        // Entries the manager removed while the router still shadows them: the address goes to
        // whichever VM the document now gives it.
        let current: Vec<ShadowingEntry> = node.core.entries().collect();
        for entry in current.iter().filter(|e| !wanted.contains(&e.ip_address)) {
            let ip = entry.ip_address;
            let to_source = desired.addresses.get(&ip) == Some(&entry.source_vm_id);
            let result = if to_source {
                let _ = node.core.abort(ip, now);
                node.core.finish_rollback(ip, now)
            } else {
                node.core.cut_over(ip, now)
            };
            self.ended.insert((ip, entry.migration_start_time));
            self.offsets.remove(&ip);
            node.unshadow(ip);
            if let Err(source) = result {
                errors.push(ReconcileError::Refused { ip, source });
            }
        }
        // Migrations the document no longer lists cannot come back with the same start: what is
        // remembered of them goes (the lists would otherwise grow with every migration).
        let listed: BTreeSet<(Ipv4Addr, Instant)> =
            desired.entries.iter().map(|d| (d.entry.ip_address, d.entry.migration_start_time)).collect();
        self.ended.retain(|key| listed.contains(key));
        self.promoted.retain(|key| listed.contains(key));
        for d in &desired.entries {
            if let Err(e) = self.apply_entry(node, d, clocks) {
                errors.push(e);
            }
        }
        self.apply_addresses(node, desired, &wanted, &mut errors);
        errors
    }

    fn apply_addresses(
        &mut self,
        node: &mut RouterNode,
        desired: &Desired,
        shadowed: &BTreeSet<Ipv4Addr>,
        errors: &mut Vec<ReconcileError>,
    ) {
        for ip in self.assigned.keys().copied().collect::<Vec<_>>() {
            if !desired.addresses.contains_key(&ip) && !shadowed.contains(&ip) && node.core.entry(ip).is_none() {
                node.core.release_address(ip);
                self.assigned.remove(&ip);
            }
        }
        for (&ip, vm) in &desired.addresses {
            // While the document lists an entry for the address, the entry (or how it ended)
            // decides who holds it; the plain holder applies once the manager removes the entry.
            if shadowed.contains(&ip) || node.core.entry(ip).is_some() {
                continue;
            }
            let Some(port) = node.port_of(vm) else {
                errors.push(ReconcileError::UnknownVm { ip, vm: vm.clone() });
                continue;
            };
            if node.core.address_holder(ip) != Some(VmRef(port as u32)) {
                node.core.assign_address(ip, VmRef(port as u32));
            }
            self.assigned.insert(ip, vm.clone());
        }
    }

    fn apply_entry(&mut self, node: &mut RouterNode, d: &DesiredEntry, clocks: Clocks) -> Result<(), ReconcileError> {
        let now = clocks.now;
        let wanted = &d.entry;
        let ip = wanted.ip_address;
        let key = (ip, wanted.migration_start_time);
        if self.ended.contains(&key) {
            return Ok(());
        }
        let refused = |source| ReconcileError::Refused { ip, source };
        let mut current = match node.core.entry(ip) {
            Some(current) if current.migration_start_time == wanted.migration_start_time => current,
            Some(_) => {
                // Another migration of the same address: the old one is over for the manager.
                node.core.cut_over(ip, now).map_err(refused)?;
                self.install(node, wanted, clocks)?
            }
            None => self.install(node, wanted, clocks)?,
        };
        if d.lease_bound && current.state == EntryState::WaitingForLease {
            node.core.lease_bound(ip, now).map_err(refused)?;
            current.state = EntryState::Ramping;
        }
        match (current.state, wanted.state) {
            (EntryState::Ramping, EntryState::Paused) => node.core.pause(ip, now).map_err(refused)?,
            (EntryState::Paused, EntryState::Ramping) => node.core.resume(ip, now).map_err(refused)?,
            (s, EntryState::RollingBack) if s != EntryState::RollingBack => {
                node.core.abort(ip, now).map_err(refused)?;
            }
            _ => {}
        }
        let offset = self.offsets.get(&ip).copied().unwrap_or(clocks.offset());
        let deadline = wanted.options.deadline.map(|d| offset.to_monotonic(d));
        if current.options.deadline != deadline {
            node.core.set_deadline(ip, deadline).map_err(refused)?;
        }
        if d.promote && self.promoted.insert(key) {
            node.core.promote(ip, now).map_err(refused)?;
        }
        if d.finish_rollback && node.core.entry(ip).is_some_and(|e| e.state == EntryState::RollingBack) {
            self.ended.insert(key);
            node.core.finish_rollback(ip, now).map_err(refused)?;
            node.unshadow(ip);
        } else if d.cut_over {
            self.ended.insert(key);
            node.core.cut_over(ip, now).map_err(refused)?;
            node.unshadow(ip);
        }
        Ok(())
    }

    /// Installs an entry the router does not have (a new migration, or a restart) in its recorded
    /// state; returns the router's view of it. The caller then applies the document's requests
    /// (a bound lease, promotion, cut-over) as for any entry.
    fn install(
        &mut self,
        node: &mut RouterNode,
        entry: &ShadowingEntry,
        clocks: Clocks,
    ) -> Result<ShadowingEntry, ReconcileError> {
        let ip = entry.ip_address;
        let port = |vm: &VmId| node.port_of(vm).ok_or_else(|| ReconcileError::UnknownVm { ip, vm: vm.clone() });
        let (source, destination) = (port(&entry.source_vm_id)?, port(&entry.destination_vm_id)?);
        let offset = clocks.offset();
        let mut installed = entry.clone();
        installed.options.deadline = entry.options.deadline.map(|d| offset.to_monotonic(d));
        node.core.add_entry(installed.clone(), clocks.now).map_err(|source| ReconcileError::Refused { ip, source })?;
        node.shadow_ports(ip, source, destination);
        self.installed.insert(ip, entry.migration_start_time);
        self.installed_at.insert(ip, clocks.wall);
        self.offsets.insert(ip, offset);
        Ok(node.core.entry(ip).unwrap_or(installed))
    }
}

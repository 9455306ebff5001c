//! The manager's mirror of the store: the VMs, addresses and migrations decoded once, kept up to
//! date from the store's watch one changed key at a time, with what the router and the DHCP
//! server should do derived from it incrementally ([`view`]). Pure logic: whoever owns the watch
//! feeds it ([`Mirror::reset`] with a snapshot, [`Mirror::apply`] for each change), so the
//! manager's work per change grows with the change, not with the store's history.
//!
//! A record is taken only if it reads back and is the record its key names (a VM under its id's
//! key, an address under its own, a migration under its id's); any other is left out and listed
//! ([`Mirror::unreadable`]), as [`crate::inventory::Inventory::readable_records`] does: a record
//! written behind the API's back is never the reason a part gets nothing.

mod view;

pub use view::{Changed, Taken};

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipshadow_contracts::dhcp::{MigrationPlan, Reservation};
use ipshadow_contracts::router::DesiredEntry;
use ipshadow_core::VmId;
use serde::Deserialize;

use crate::inventory::{Address, Vm, address_key, vm_key};
use crate::reassign::{DeadlinePolicy, Migration, migration_key};
use crate::store::{KeyValue, WatchEvent};

/// Where the VMs are kept.
pub const VMS: &str = "/v1/vms/";
/// Where the addresses are kept.
pub const ADDRESSES: &str = "/v1/addresses/";
/// Where the migrations are kept.
pub const MIGRATIONS: &str = "/v1/migrations/";

/// A decoded record with the revisions the store gave it.
#[derive(Clone, Debug, PartialEq)]
pub struct Record<T> {
    /// The record.
    pub value: T,
    /// The revision that created its key (VMs are ordered by it: of two that clash, the older
    /// keeps its reservation).
    pub create_revision: u64,
    /// The revision of its last change.
    pub mod_revision: u64,
}

/// What the parts see of one key, compared before and after a change of it.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    /// An address's holder.
    holder: Option<VmId>,
    /// A migration's plan.
    plan: Option<MigrationPlan>,
    /// A migration's router entry, and when it leaves the router if it drains.
    entry: Option<(Option<u64>, DesiredEntry)>,
}

/// A record left out: why, and where it sorts.
#[derive(Clone, Debug, PartialEq)]
struct Unreadable {
    kind: Kind,
    create_revision: u64,
    mod_revision: u64,
    why: String,
}

/// What a key holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Vm,
    Address,
    Migration,
}

impl Kind {
    fn of(key: &str) -> Option<Self> {
        if key.starts_with(VMS) {
            Some(Self::Vm)
        } else if key.starts_with(ADDRESSES) {
            Some(Self::Address)
        } else if key.starts_with(MIGRATIONS) {
            Some(Self::Migration)
        } else {
            None
        }
    }
}

/// The decoded VMs, addresses and migrations of a store at a revision, and the projection of
/// them onto the router and the DHCP server, kept incrementally.
#[derive(Clone, Debug)]
pub struct Mirror {
    policy: DeadlinePolicy,
    revision: u64,
    vms: BTreeMap<String, Record<Vm>>,
    addresses: BTreeMap<Ipv4Addr, Record<Address>>,
    migrations: BTreeMap<u64, Record<Migration>>,
    unreadable: BTreeMap<String, Unreadable>,
    /// Migrations not yet final: the only ones the manager decides about.
    unfinished: BTreeSet<u64>,
    /// The router's plain addresses.
    router_addresses: BTreeMap<Ipv4Addr, VmId>,
    /// The addresses each VM holds (its reservation gets the lowest).
    held: BTreeMap<String, BTreeSet<Ipv4Addr>>,
    /// The DHCP reservations, by the VM's creation revision and id.
    reservations: BTreeMap<(u64, String), Reservation>,
    /// The DHCP plans, by migration id.
    plans: BTreeMap<u64, MigrationPlan>,
    /// Router entries of migrations pending or shadowing, by migration id.
    entries: BTreeMap<u64, DesiredEntry>,
    /// Router entries of rolled-back or aborted migrations, by when they leave the router.
    draining: BTreeMap<(u64, u64), DesiredEntry>,
    /// Counts the changes to the router's part and to the DHCP server's ([`Mirror::changed`]).
    generations: Generations,
}

/// How many times each part of the projection changed (kept across [`Mirror::reset`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Generations {
    router: u64,
    dhcp: u64,
}

impl Mirror {
    /// An empty mirror (revision 0) whose router entries follow `policy` (closing window and
    /// outlive limit of migrations stored before plans had their own).
    pub fn new(policy: DeadlinePolicy) -> Self {
        Self {
            policy,
            revision: 0,
            vms: BTreeMap::new(),
            addresses: BTreeMap::new(),
            migrations: BTreeMap::new(),
            unreadable: BTreeMap::new(),
            unfinished: BTreeSet::new(),
            router_addresses: BTreeMap::new(),
            held: BTreeMap::new(),
            reservations: BTreeMap::new(),
            plans: BTreeMap::new(),
            entries: BTreeMap::new(),
            draining: BTreeMap::new(),
            generations: Generations::default(),
        }
    }

    /// The mirror of a snapshot: `kvs` as [`crate::Store::range`] returned them at `revision`
    /// (keys outside the VMs, addresses and migrations are ignored, so one range of `/` or
    /// `/v1/` will do).
    pub fn from_snapshot(policy: DeadlinePolicy, kvs: &[KeyValue], revision: u64) -> Self {
        let mut mirror = Self::new(policy);
        mirror.reset(kvs, revision);
        mirror
    }

    /// Forgets everything and mirrors a snapshot instead (after a watch reported
    /// [`crate::StoreError::Compacted`]: re-list, reset, watch again from `revision`).
    pub fn reset(&mut self, kvs: &[KeyValue], revision: u64) {
        let generations = self.generations;
        *self = Self::new(self.policy);
        for kv in kvs {
            self.put(kv);
        }
        self.revision = revision;
        // Whatever a caller saw before, it sees everything again.
        self.generations = Generations { router: generations.router + 1, dhcp: generations.dhcp + 1 };
    }

    /// Applies one change of the store's watch, decoding only the key it changed. A change
    /// older than what the mirror holds for its key (replayed, or the manager's own write seen
    /// first through [`Mirror::observe_current`]) changes nothing.
    pub fn apply(&mut self, event: &WatchEvent) {
        self.revision = self.revision.max(event.revision());
        match event {
            WatchEvent::Put(kv) => self.put(kv),
            WatchEvent::Delete { key, revision } => {
                if self.mod_revision(key).is_none_or(|r| r <= *revision) {
                    self.remove(key);
                }
            }
        }
    }

    /// Takes what the store holds now for `key` (read with [`crate::Store::get`]: `None` if it
    /// is gone), without moving [`Mirror::revision`]: how the manager sees its own write, or the
    /// one record a raced write was about, before the watch brings it.
    pub fn observe_current(&mut self, key: &str, kv: Option<&KeyValue>) {
        match kv {
            Some(kv) => self.put(kv),
            None => self.remove(key),
        }
    }

    /// The revision of the last change applied (or of the snapshot).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The readable VMs, oldest first.
    pub fn vms(&self) -> impl Iterator<Item = &Record<Vm>> {
        let mut vms: Vec<&Record<Vm>> = self.vms.values().collect();
        vms.sort_by(|a, b| (a.create_revision, &a.value.id).cmp(&(b.create_revision, &b.value.id)));
        vms.into_iter()
    }

    /// The readable addresses, by address.
    pub fn addresses(&self) -> impl Iterator<Item = &Record<Address>> {
        self.addresses.values()
    }

    /// One migration, if it reads back.
    pub fn migration(&self, id: u64) -> Option<&Record<Migration>> {
        self.migrations.get(&id)
    }

    /// The readable migrations, oldest (lowest id) first.
    pub fn migrations(&self) -> impl Iterator<Item = &Record<Migration>> {
        self.migrations.values()
    }

    /// The migrations not yet final (what the manager decides about), oldest first.
    pub fn unfinished(&self) -> impl Iterator<Item = &Migration> {
        self.unfinished.iter().filter_map(|id| self.migrations.get(id)).map(|r| &r.value)
    }

    /// The records left out, each as `key: why`: VMs, then addresses, then migrations, each
    /// oldest first.
    pub fn unreadable(&self) -> Vec<String> {
        let mut out: Vec<(&Unreadable, &String)> = self.unreadable.iter().map(|(k, u)| (u, k)).collect();
        out.sort_by(|(a, ka), (b, kb)| (a.kind, a.create_revision, ka).cmp(&(b.kind, b.create_revision, kb)));
        out.into_iter().map(|(u, _)| u.why.clone()).collect()
    }

    /// The revision the mirror holds for `key`, readable or not.
    fn mod_revision(&self, key: &str) -> Option<u64> {
        if let Some(u) = self.unreadable.get(key) {
            return Some(u.mod_revision);
        }
        match Kind::of(key)? {
            Kind::Vm => self.vms.get(key).map(|r| r.mod_revision),
            Kind::Address => self.addresses.get(&address_of(key)?).map(|r| r.mod_revision),
            Kind::Migration => self.migrations.get(&migration_of(key)?).map(|r| r.mod_revision),
        }
    }

    /// Applies `change` to `key`, counting a change of each part of the projection it made.
    fn changing(&mut self, key: &str, change: impl FnOnce(&mut Self)) {
        let Some(kind) = Kind::of(key) else { return };
        let before = self.seen_of(kind, key);
        change(self);
        let after = self.seen_of(kind, key);
        match kind {
            // VMs change seldom: any change counts for their reservation.
            Kind::Vm => self.generations.dhcp += 1,
            Kind::Address if before.holder != after.holder => {
                self.generations.router += 1;
                self.generations.dhcp += 1;
            }
            Kind::Address => {}
            Kind::Migration => {
                if before.plan != after.plan {
                    self.generations.dhcp += 1;
                }
                if before.entry != after.entry {
                    self.generations.router += 1;
                }
            }
        }
    }

    /// What the parts see of `key` now.
    fn seen_of(&self, kind: Kind, key: &str) -> Seen {
        let mut seen = Seen::default();
        match kind {
            Kind::Vm => {}
            Kind::Address => seen.holder = address_of(key).and_then(|ip| self.router_addresses.get(&ip)).cloned(),
            Kind::Migration => {
                if let Some(record) = migration_of(key).and_then(|id| self.migrations.get(&id)) {
                    let m = &record.value;
                    seen.plan = self.plans.get(&m.id).cloned();
                    let end = crate::project::drain_end(m);
                    let entry = match end {
                        Some(end) => self.draining.get(&(end, m.id)),
                        None => self.entries.get(&m.id),
                    };
                    seen.entry = entry.cloned().map(|e| (end, e));
                }
            }
        }
        seen
    }

    fn put(&mut self, kv: &KeyValue) {
        self.changing(&kv.key, |mirror| mirror.replace(kv));
    }

    fn remove(&mut self, key: &str) {
        self.changing(key, |mirror| mirror.forget(key));
    }

    fn replace(&mut self, kv: &KeyValue) {
        let Some(kind) = Kind::of(&kv.key) else { return };
        if self.mod_revision(&kv.key).is_some_and(|r| r >= kv.mod_revision) {
            return;
        }
        self.forget(&kv.key);
        let result = match kind {
            Kind::Vm => decode::<Vm>(kv, |vm| vm_key(&vm.id)).map(|record| self.add_vm(kv.key.clone(), record)),
            Kind::Address => decode::<Address>(kv, |a| address_key(a.ip)).map(|record| self.add_address(record)),
            Kind::Migration => {
                decode::<Migration>(kv, |m| migration_key(m.id)).map(|record| self.add_migration(record))
            }
        };
        if let Err(why) = result {
            let unreadable =
                Unreadable { kind, create_revision: kv.create_revision, mod_revision: kv.mod_revision, why };
            self.unreadable.insert(kv.key.clone(), unreadable);
        }
    }

    fn forget(&mut self, key: &str) {
        if self.unreadable.remove(key).is_some() {
            return;
        }
        match Kind::of(key) {
            Some(Kind::Vm) => {
                if let Some(old) = self.vms.remove(key) {
                    self.drop_vm(&old);
                }
            }
            Some(Kind::Address) => {
                if let Some(old) = address_of(key).and_then(|ip| self.addresses.remove(&ip)) {
                    self.drop_address(&old);
                }
            }
            Some(Kind::Migration) => {
                if let Some(old) = migration_of(key).and_then(|id| self.migrations.remove(&id)) {
                    self.drop_migration(&old);
                }
            }
            None => {}
        }
    }
}

/// The address whose key `key` is (in the one form the inventory writes).
fn address_of(key: &str) -> Option<Ipv4Addr> {
    key.strip_prefix(ADDRESSES)?.parse().ok().filter(|ip| address_key(*ip) == key)
}

/// The migration whose key `key` is (in the one form the inventory writes).
fn migration_of(key: &str) -> Option<u64> {
    key.strip_prefix(MIGRATIONS)?.parse().ok().filter(|id| migration_key(*id) == key)
}

/// The record under `kv`, if it reads back and `key_of` it is the key it is stored under.
fn decode<T: for<'de> Deserialize<'de>>(kv: &KeyValue, key_of: impl Fn(&T) -> String) -> Result<Record<T>, String> {
    let value: T = serde_json::from_slice(&kv.value).map_err(|e| format!("stored {} is corrupt: {e}", kv.key))?;
    let own = key_of(&value);
    if own != kv.key {
        return Err(format!("stored {} is corrupt: it holds the record of {own}", kv.key));
    }
    Ok(Record { value, create_revision: kv.create_revision, mod_revision: kv.mod_revision })
}

#[cfg(test)]
mod tests;

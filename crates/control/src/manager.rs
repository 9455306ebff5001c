//! The network manager over the store: it turns what it hears (lease events, router reports,
//! time) into migration events with [`crate::orchestrator::decide`], records them, and projects
//! the store onto what the router and the DHCP server should do. What it keeps in memory is a
//! mirror of the store ([`crate::mirror`]), nothing of its own: a manager started again on the
//! same store carries on where the last one stopped.

use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use ipshadow_contracts::dhcp::MigrationPlan;
use ipshadow_contracts::router::Desired;

use crate::inventory::{Inventory, InventoryError, address_key};
use crate::migration::{MigrationEvent, MigrationState};
use crate::mirror::{Changed, Mirror, Taken};
use crate::orchestrator::{Decision, Input, Limits, decide};
use crate::reassign::{Migration, migration_key};
use crate::store::{KeyValue, Store, WatchEvent, Watcher};

/// What the manager did with one migration.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    /// The migration.
    pub id: u64,
    /// The decision carried out.
    pub decision: Decision,
    /// Its state afterwards.
    pub state: MigrationState,
}

/// What the store says the parts should do.
#[derive(Clone, Debug, PartialEq)]
pub struct Projection {
    /// The router's desired state.
    pub router: Desired,
    /// The DHCP server's reservations.
    pub reservations: Vec<ipshadow_contracts::dhcp::Reservation>,
    /// The DHCP server's lease plans.
    pub plans: Vec<MigrationPlan>,
    /// Records of the store that could not be read back and were left out (`key: why`).
    pub unreadable: Vec<String>,
}

/// The manager.
///
/// It decides from a [`Mirror`] of the store rather than reading every record again for each
/// change: its work per change grows with the change, not with the store's history. Its writes
/// still go through the inventory's compare-and-swap transactions; after each it reads back the
/// one or two keys it wrote (and after a lost race the record it raced for), so it decides on its
/// own writes before the watch brings them.
///
/// Who keeps the mirror up to date:
/// - a caller that owns a watch of the store calls [`Manager::reset`] with a snapshot (at the
///   start and whenever the watch must start again: [`crate::StoreError::Compacted`], a new
///   connection), then [`Manager::observe`] with every change the watch delivers after it;
/// - a manager never reset follows the store by itself: it lists the store the first time it is
///   used and watches it from there, draining what the watch delivered at the start of every
///   call. On [`crate::RedbStore`] a change is delivered before its transaction returns, so such
///   a manager sees every committed write, as when it read the store each time; on etcd it sees a
///   change once its watch event arrives (milliseconds). A compaction is met by listing again.
///   Such a manager kept but not called holds the changes in its watch until its next call.
pub struct Manager<S: Store> {
    inventory: Inventory<S>,
    limits: Limits,
    following: Mutex<Following>,
}

/// The mirror and what keeps it up to date.
struct Following {
    mirror: Mirror,
    feed: Feed,
}

/// Where the mirror's changes come from.
enum Feed {
    /// Nowhere yet: the manager lists the store when first used.
    Unlisted,
    /// The manager's own watch of the store.
    Own(Watcher),
    /// The caller's watch ([`Manager::reset`], [`Manager::observe`]).
    Caller,
}

impl<S: Store> Manager<S> {
    /// A manager over `inventory`. It follows the store by itself until [`Manager::reset`] hands
    /// that to the caller.
    pub fn new(inventory: Inventory<S>, limits: Limits) -> Self {
        let following = Following { mirror: Mirror::new(limits.policy), feed: Feed::Unlisted };
        Self { inventory, limits, following: Mutex::new(following) }
    }

    /// The inventory.
    pub fn inventory(&self) -> &Inventory<S> {
        &self.inventory
    }

    /// Every migration, oldest first (read from the store: what the API lists).
    pub fn migrations(&self) -> Result<Vec<Migration>, InventoryError> {
        self.inventory.migrations(None)
    }

    /// Mirrors `kvs`, a snapshot of the store at `revision` (as [`Store::range`] returns it; a
    /// range of `/v1/` or `/` will do), and from now on expects the caller to pass every change
    /// after `revision` to [`Manager::observe`] (the manager stops following the store itself).
    pub fn reset(&self, kvs: &[KeyValue], revision: u64) {
        let mut following = self.lock();
        following.mirror.reset(kvs, revision);
        following.feed = Feed::Caller;
    }

    /// Applies one change from the caller's watch of the store (any key: those that are no VM,
    /// address or migration are ignored). Called before any [`Manager::reset`], the manager
    /// lists the store first and then leaves following it to the caller.
    pub fn observe(&self, event: &WatchEvent) -> Result<(), InventoryError> {
        // Listed, and what its own watch delivered applied, before the caller takes over.
        let mut following = self.following()?;
        following.feed = Feed::Caller;
        following.mirror.apply(event);
        Ok(())
    }

    /// Lists the store again and mirrors it (a full read: for a caller that lost track, or a
    /// test that changed the store behind the manager's back).
    pub fn refresh(&self) -> Result<(), InventoryError> {
        let mut following = self.lock();
        let store = self.inventory.store();
        let (kvs, revision) = store.range(PREFIX)?;
        following.mirror.reset(&kvs, revision);
        if !matches!(following.feed, Feed::Caller) {
            following.feed = Feed::Own(store.watch(PREFIX, revision)?);
        }
        Ok(())
    }

    /// Waits, at most `within`, until the mirror has applied the store's change at `revision`
    /// (heard through another watch of the store, which may deliver it first): true once it
    /// has. A manager that follows the store itself would otherwise decide on a mirror a change
    /// behind, and not look again until something else woke it. With the caller's feed there is
    /// nothing to wait for.
    pub fn catch_up(&self, revision: u64, within: std::time::Duration) -> Result<bool, InventoryError> {
        let deadline = std::time::Instant::now() + within;
        let mut following = self.following()?;
        let Following { mirror, feed } = &mut *following;
        let Feed::Own(watcher) = feed else { return Ok(true) };
        while mirror.revision() < revision {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match watcher.next_timeout(left) {
                Some(event) => mirror.apply(&event),
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    /// The revision of the store's last change the mirror applied (0 before it first listed
    /// the store): where a caller's watch resumes.
    pub fn revision(&self) -> u64 {
        self.lock().mirror.revision()
    }

    /// When the router's desired state next changes with time alone, after `now_ms` (a
    /// rolled-back migration's entry leaving it), if it does.
    pub fn next_router_change(&self, now_ms: u64) -> Result<Option<u64>, InventoryError> {
        Ok(self.following()?.mirror.next_router_change(now_ms))
    }

    /// What the router and the DHCP server should do now.
    pub fn desired(&self, now_ms: u64) -> Result<(Desired, Vec<MigrationPlan>), InventoryError> {
        let p = self.projection(now_ms)?;
        Ok((p.router, p.plans))
    }

    /// What the DHCP server should know: the reservations and the lease plans.
    pub fn dhcp(&self) -> Result<(Vec<ipshadow_contracts::dhcp::Reservation>, Vec<MigrationPlan>), InventoryError> {
        let following = self.following()?;
        Ok((following.mirror.reservations(), following.mirror.plans()))
    }

    /// Everything the parts should do now, from the mirror.
    pub fn projection(&self, now_ms: u64) -> Result<Projection, InventoryError> {
        let following = self.following()?;
        let mirror = &following.mirror;
        Ok(Projection {
            router: mirror.router(now_ms),
            reservations: mirror.reservations(),
            plans: mirror.plans(),
            unreadable: mirror.unreadable(),
        })
    }

    /// The parts of the projection that changed since the caller last took them with `taken`
    /// (everything the first time, and after a [`Manager::reset`]): what a loop that hands the
    /// router and the DHCP server their documents calls instead of [`Manager::projection`], so
    /// that a change neither part sees (a split the router reported, recorded) costs no copy of
    /// either. A `taken` belongs to one manager.
    pub fn changed(&self, now_ms: u64, taken: &mut Taken) -> Result<Changed, InventoryError> {
        Ok(self.following()?.mirror.changed(now_ms, taken))
    }

    /// The records of the store left out of the projection, each as `key: why`.
    pub fn unreadable(&self) -> Result<Vec<String>, InventoryError> {
        Ok(self.following()?.mirror.unreadable())
    }

    /// Moves pending migrations on: the caller is about to hand their plan and entry to the
    /// DHCP server and the router (from [`Manager::desired`], which includes them from here on).
    pub fn start_pending(&self, now_ms: u64) -> Result<Vec<Applied>, InventoryError> {
        let mut following = self.following()?;
        let pending: Vec<(u64, Ipv4Addr)> = following
            .mirror
            .unfinished()
            .filter(|m| m.lifecycle.state == MigrationState::Pending)
            .map(|m| (m.id, m.ip))
            .collect();
        let mut applied = Vec::new();
        for (id, ip) in pending {
            let event = MigrationEvent::PlanWritten;
            let result = self.inventory.advance(id, event.clone(), now_ms);
            self.read_back(&mut following.mirror, id, Some(ip))?;
            match result {
                Ok(after) => {
                    applied.push(Applied { id, decision: Decision::Event(event), state: after.lifecycle.state })
                }
                // Moved on by another writer since the mirror last heard of it.
                Err(InventoryError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(applied)
    }

    /// Carries out what `input` calls for. A decision that lost a race with another writer is
    /// decided again once, on the record read back.
    pub fn handle(&self, input: &Input<'_>, now_ms: u64) -> Result<Vec<Applied>, InventoryError> {
        let mut following = self.following()?;
        let mut applied = Vec::new();
        for attempt in 0..2 {
            // Only migrations not yet final are decided about: few, whatever the history.
            let migrations: Vec<Migration> = following.mirror.unfinished().cloned().collect();
            let mut raced = false;
            for (id, decision) in decide(&migrations, input, now_ms, self.limits) {
                let result = match &decision {
                    Decision::Event(event) => {
                        self.inventory.advance(id, event.clone(), now_ms).map(|m| m.lifecycle.state)
                    }
                    Decision::Split(pct) => self
                        .inventory
                        .record_split(id, *pct)
                        .and_then(|()| self.inventory.migration(None, id).map(|m| m.lifecycle.state)),
                    Decision::ExtendDeadline(extension) => {
                        self.inventory.extend_deadline(id, extension, now_ms).map(|m| m.lifecycle.state)
                    }
                    Decision::RecordCutOver(record) => {
                        self.inventory.record_cut_over(id, *record).map(|m| m.lifecycle.state)
                    }
                };
                // An event that ends the migration also gives its address back.
                let ip = matches!(decision, Decision::Event(_))
                    .then(|| migrations.iter().find(|m| m.id == id).map(|m| m.ip))
                    .flatten();
                self.read_back(&mut following.mirror, id, ip)?;
                match result {
                    Ok(state) => applied.push(Applied { id, decision, state }),
                    Err(InventoryError::Raced) if attempt == 0 => raced = true,
                    // A transition another input already made (two reports of the same end).
                    Err(InventoryError::Conflict(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            if !raced {
                break;
            }
        }
        Ok(applied)
    }

    /// Takes what the store holds now for migration `id` (and address `ip`) into the mirror.
    fn read_back(&self, mirror: &mut Mirror, id: u64, ip: Option<Ipv4Addr>) -> Result<(), InventoryError> {
        let keys = std::iter::once(migration_key(id)).chain(ip.map(address_key));
        for key in keys {
            let kv = self.inventory.store().get(&key)?;
            mirror.observe_current(&key, kv.as_ref());
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Following> {
        // The mirror is only changed by whole applications of a change: a panic elsewhere
        // cannot leave it half updated.
        self.following.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The mirror, brought up to date with what the manager's own watch delivered (listed
    /// first if it never was).
    fn following(&self) -> Result<MutexGuard<'_, Following>, InventoryError> {
        let mut following = self.lock();
        let store = self.inventory.store();
        let Following { mirror, feed } = &mut *following;
        let compacted = match feed {
            Feed::Caller => false,
            Feed::Unlisted => true,
            Feed::Own(watcher) => {
                while let Some(event) = watcher.try_next() {
                    mirror.apply(&event);
                }
                watcher.failure().is_some()
            }
        };
        if compacted {
            let (kvs, revision) = store.range(PREFIX)?;
            mirror.reset(&kvs, revision);
            *feed = Feed::Own(store.watch(PREFIX, revision)?);
        }
        Ok(following)
    }
}

/// What the mirror holds: the VMs, addresses and migrations are all under it.
const PREFIX: &str = "/v1/";

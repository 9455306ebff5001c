//! The keeper of a router group's lease (issue 15): a thread beside a router that is in a group
//! (`[router] group = "..."`, the store on etcd). The group's key,
//! `/v1/parts/router/groups/<group>/active`, is held under a lease by the active member, its
//! value the member's name; the revision that created it is the member's term.
//!
//! The keeper takes the key when it is free and tells the forwarding loop ([`LeaseNews`]); the
//! loop decides from that and from what it hears on the segments ([`GroupView`], see
//! `ipshadow_core::ha`). Standing by, it looks at the key every [`LOOK_EVERY`]; it ends the
//! lease of an active the loop heard go silent on every segment (or resign), which is what
//! makes a takeover take half a second rather than the lease's time to live; and when the key
//! is free while an active is still heard (the store was away for everyone, and the active's
//! lease ran out meanwhile), it leaves the active [`GRACE`] to take the key again. Active, it
//! renews the lease six times a time to live, at once when the loop asks (after a stall), and
//! takes the key again if the lease ran out while nobody else took it.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipshadow_control::{Compare, LeaseId, Store, StoreError, Txn, TxnOutcome};
use ipshadow_core::ha::{GroupView, LeaseNews, Role};

use super::remote::Part;

/// The group lease's time to live: etcd's shortest with its default timing (it refuses less
/// than 1.5 times its election timeout and counts whole seconds).
pub const GROUP_TTL: Duration = Duration::from_secs(2);
/// How often a standby looks at the group's key, and the keeper at the loop's view.
const LOOK_EVERY: Duration = Duration::from_millis(50);
/// How long a standby leaves a still-heard active to take a free key again.
const GRACE: Duration = Duration::from_secs(1);
/// The least time between two renewals when the loop asks for them.
const CONFIRM_AT_MOST_EVERY: Duration = Duration::from_millis(50);

/// The key of a group's active member.
pub fn group_key(group: &str) -> String {
    format!("{}router/groups/{group}/active", ipshadow_control::bus::PARTS)
}

/// What the keeper and the router thread share.
#[derive(Clone, Default)]
pub struct GroupLink {
    /// The loop's view, as of its last turn.
    pub view: Arc<Mutex<GroupView>>,
    /// The lease held now, as [`LeaseNews::Acquired`]: a router opened again (after a failure)
    /// is told at once.
    pub held: Arc<Mutex<Option<LeaseNews>>>,
}

impl GroupLink {
    fn view(&self) -> GroupView {
        self.view.lock().map(|v| v.clone()).unwrap_or_default()
    }

    fn set_held(&self, held: Option<LeaseNews>) {
        if let Ok(mut h) = self.held.lock() {
            *h = held;
        }
    }
}

/// The lease held: its id, and when its last renewal was asked.
struct Held {
    lease: LeaseId,
    renewed: Instant,
}

/// Starts the keeper of `group`'s lease for the router `name`; `ports`: the router's
/// interfaces (a standby ends a silent active's lease only while its own links are up).
pub fn keep<S: Store>(
    store: S,
    (group, name): (String, String),
    ports: Vec<String>,
    news: Sender<LeaseNews>,
    link: GroupLink,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Part> {
    let key = group_key(&group);
    Ok(std::thread::Builder::new().name("group-lease".into()).spawn(move || {
        let mut keeper = Keeper::new(store, key, name, ports, news, link);
        while !stop.load(Ordering::Relaxed) {
            keeper.turn();
            std::thread::sleep(LOOK_EVERY);
        }
        if let Some(held) = keeper.held.take() {
            keeper.link.set_held(None);
            // The loop has resigned (or will hear the next active): let a standby lead now.
            let _ = keeper.store.revoke_lease(held.lease);
        }
        Ok(())
    })?)
}

struct Keeper<S> {
    store: S,
    key: String,
    name: String,
    ports: Vec<String>,
    news: Sender<LeaseNews>,
    link: GroupLink,
    held: Option<Held>,
    /// Since when a standby finds the key free while it hears an active.
    free_since: Option<Instant>,
    /// Leases of silent actives already ended.
    ended: BTreeSet<u64>,
}

impl<S: Store> Keeper<S> {
    fn new(store: S, key: String, name: String, ports: Vec<String>, news: Sender<LeaseNews>, link: GroupLink) -> Self {
        Self { store, key, name, ports, news, link, held: None, free_since: None, ended: BTreeSet::new() }
    }

    fn turn(&mut self) {
        let view = self.link.view();
        match self.held.take() {
            Some(held) => self.active(held, &view),
            None => self.standby(&view),
        }
    }

    fn active(&mut self, held: Held, view: &GroupView) {
        if view.role == Some(Role::Standby) {
            // The loop heard a newer term: ours is over; end it if the store still has it.
            let _ = self.store.revoke_lease(held.lease);
            self.link.set_held(None);
            return;
        }
        let due = held.renewed.elapsed() >= GROUP_TTL / 6
            || view.confirm_now && held.renewed.elapsed() >= CONFIRM_AT_MOST_EVERY;
        if !due {
            self.held = Some(held);
            return;
        }
        let asked = Instant::now();
        match self.store.keep_alive(held.lease) {
            Ok(()) => {
                self.held = Some(Held { renewed: asked, ..held });
                let _ = self.news.send(LeaseNews::Confirmed);
            }
            Err(StoreError::LeaseExpired { .. }) => {
                // The store was away longer than the lease: take the key again if nobody did.
                match self.campaign() {
                    Ok(true) => {}
                    _ => {
                        self.link.set_held(None);
                        let _ = self.news.send(LeaseNews::Lost);
                    }
                }
            }
            Err(_) => {
                // Unreachable: keep forwarding, try again soon.
                self.held = Some(Held { renewed: asked, ..held });
                let _ = self.news.send(LeaseNews::Unreachable);
            }
        }
    }

    fn standby(&mut self, view: &GroupView) {
        if let Some(lease) = view.end_lease
            && !self.ended.contains(&lease)
            && self.links_up()
            && let Ok(lease_id) = i64::try_from(lease)
        {
            // The active went silent on every segment (or resigned): its lease is ended now,
            // not when it runs out. Ended once; an error (the store unreachable) is retried.
            match self.store.revoke_lease(LeaseId(lease_id)) {
                Ok(()) | Err(StoreError::LeaseExpired { .. }) => {
                    self.ended.insert(lease);
                    eprintln!(
                        "ipshadow serve: router group: ended the lease of the active router, silent on every segment"
                    );
                }
                Err(_) => return,
            }
        }
        let free = match self.store.get(&self.key) {
            Ok(kv) => kv.is_none(),
            Err(_) => return,
        };
        if !free {
            self.free_since = None;
            return;
        }
        let since = *self.free_since.get_or_insert_with(Instant::now);
        if view.hears_active && since.elapsed() < GRACE {
            return;
        }
        self.free_since = None;
        let _ = self.campaign();
    }

    /// Tries to take the key; whether it did (and told the loop).
    fn campaign(&mut self) -> Result<bool, StoreError> {
        let asked = Instant::now();
        let lease = self.store.grant_lease(GROUP_TTL)?;
        let txn = Txn::new().when(Compare::Absent(self.key.clone())).put_leased(
            self.key.clone(),
            self.name.as_bytes().to_vec(),
            lease,
        );
        match self.store.txn(txn) {
            Ok(TxnOutcome::Committed(term)) => {
                let acquired = LeaseNews::Acquired { term, lease: lease.0.unsigned_abs() };
                self.held = Some(Held { lease, renewed: asked });
                self.link.set_held(Some(acquired));
                let _ = self.news.send(acquired);
                eprintln!("ipshadow serve: router group: {} holds the lease (term {term})", self.name);
                Ok(true)
            }
            other => {
                let _ = self.store.revoke_lease(lease);
                other.map(|_| false)
            }
        }
    }

    /// Whether every port of the router has its link up (a standby cut off from the segments
    /// must not end the lease of an active it cannot hear).
    fn links_up(&self) -> bool {
        self.ports.iter().all(|port| {
            std::fs::read_to_string(format!("/sys/class/net/{port}/carrier")).is_ok_and(|c| c.trim() == "1")
        })
    }
}

#[cfg(test)]
mod tests;

//! The manager's loop inside `ipshadow serve`: it hears the store's changes, the DHCP server's
//! lease events and the router's status reports on one channel, turns them into migration
//! events through [`Manager`], and hands the parts what the store now says they should do. It
//! keeps nothing of its own: a restarted process starts again from the store.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as Clock};

use ipshadow_control::bus;
use ipshadow_control::inventory::InventoryError;
use ipshadow_control::manager::Manager;
use ipshadow_control::migration::MigrationEvent;
use ipshadow_control::orchestrator::Input;
use ipshadow_control::{Store, Txn, TxnOutcome};
use ipshadow_core::VmId;
use ipshadow_dataplane::{Desired, Status};

use super::parts::{DhcpFeed, Heard, RouterFeed};

/// How long the manager waits for its mirror to reach a change heard through the store's watch
/// (its own watch brings it within milliseconds; a longer wait means that watch is broken, and
/// the mirror lists the store again on its next use).
const CATCH_UP_WITHIN: Duration = Duration::from_millis(500);
/// Most routers' slices written in one transaction.
const SLICES_PER_TXN: usize = 64;
/// How often time-based decisions are taken (deadlines, timeouts) when nothing else happens.
const TICK: Duration = Duration::from_millis(200);
/// How often expired idempotency records and ended migrations past their retention are removed
/// (records expire after 24 h; a replay after that is a new request whether or not the record
/// is still there).
const PURGE: Duration = Duration::from_secs(60);

/// Where one kind of document goes: a channel to the part in this process, or its key in the
/// store; false when it could not be handed on (tried again with the next projection).
pub type Sink<T> = Box<dyn Fn(&T) -> bool + Send>;

/// The routers of other processes: the VMs each has ports for, as their reports say, and the
/// routers whose slices of the desired state are to go (their reports went).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouterTargets {
    /// Each router's VMs, by name.
    pub live: BTreeMap<String, BTreeSet<VmId>>,
    /// Routers whose slices are to be deleted.
    pub gone: BTreeSet<String>,
}

/// Where the routers' desired state goes: the router of this process (all of it), or each
/// router of another process its slice; false when it could not be handed on.
pub type RouterSink = Box<dyn Fn(&Desired, &RouterTargets) -> bool + Send>;

/// Where the manager's projections go.
pub struct Outputs {
    /// The router(s).
    pub router: Option<RouterSink>,
    /// The DHCP server(s).
    pub dhcp: Option<Sink<DhcpFeed>>,
    /// The router's last status, for the API.
    pub router_status: Arc<Mutex<Option<Status>>>,
}

impl Outputs {
    /// To the router of this process.
    pub fn local_router(feed: RouterFeed) -> RouterSink {
        Box::new(move |desired, _| {
            feed.send(desired.clone());
            true
        })
    }

    /// To the DHCP server of this process.
    pub fn local_dhcp(feed: Sender<DhcpFeed>) -> Sink<DhcpFeed> {
        Box::new(move |f| feed.send(f.clone()).is_ok())
    }

    /// To the routers of other processes, through the store: each its slice, written when it
    /// changed; the slices of routers gone deleted.
    pub fn stored_router<S: Store>(store: S) -> RouterSink {
        let written: Mutex<BTreeMap<String, Desired>> = Mutex::default();
        Box::new(move |desired, targets| {
            let mut written = written.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut ops: Vec<(String, Option<Desired>)> = Vec::new();
            for (name, vms) in &targets.live {
                let slice = desired.slice(vms);
                if written.get(name) != Some(&slice) {
                    ops.push((name.clone(), Some(slice)));
                }
            }
            ops.extend(targets.gone.iter().map(|name| (name.clone(), None)));
            // A few transactions rather than one: etcd takes at most 128 operations in one.
            ops.chunks(SLICES_PER_TXN).all(|chunk| {
                let mut txn = Txn::new();
                for (name, slice) in chunk {
                    let key = bus::router_desired_key(name);
                    txn = match slice {
                        Some(slice) => match serde_json::to_vec(slice) {
                            Ok(bytes) => txn.put(key, bytes),
                            Err(e) => {
                                eprintln!("ipshadow serve: manager: encoding {key}: {e}");
                                return false;
                            }
                        },
                        None => txn.delete(key),
                    };
                }
                let done = commit(&store, txn, bus::ROUTER_DESIRED);
                if done {
                    for (name, slice) in chunk {
                        match slice {
                            Some(slice) => written.insert(name.clone(), slice.clone()),
                            None => written.remove(name),
                        };
                    }
                }
                done
            })
        })
    }

    /// To the DHCP servers of other processes, through the store.
    pub fn stored_dhcp<S: Store>(store: S) -> Sink<DhcpFeed> {
        Box::new(move |(reservations, plans)| {
            let feed = bus::DhcpFeed { reservations: reservations.clone(), plans: plans.clone() };
            write(&store, bus::DHCP_FEED, &feed)
        })
    }
}

/// Writes a document for other processes.
fn write<S: Store>(store: &S, key: &str, value: &impl serde::Serialize) -> bool {
    let bytes = match serde_json::to_vec(value) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("ipshadow serve: manager: encoding {key}: {e}");
            return false;
        }
    };
    commit(store, Txn::new().put(key, bytes), key)
}

/// Commits a write for other processes; false (said) when it did not land.
fn commit<S: Store>(store: &S, txn: Txn, key: &str) -> bool {
    match store.txn(txn) {
        Ok(TxnOutcome::Committed(_)) => true,
        Ok(TxnOutcome::Failed(_)) => false,
        Err(e) => {
            eprintln!("ipshadow serve: manager: writing {key}: {e}");
            false
        }
    }
}

/// Forwards the store's changes as [`Heard::StoreChanged`] until `stop`; not those of the parts'
/// keys ([`bus::PARTS`], on etcd): the projection does not read them, what the parts report
/// reaches the manager through [`super::remote::manager_hears`], and its own writes there (the
/// desired state, the DHCP feed) would each wake it for a projection that changes nothing. On
/// etcd every wake reads the store, and a change the API commits meanwhile waits for it.
pub fn watch_store<S: Store>(store: &S, heard: Sender<Heard>, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let store = store.clone();
    std::thread::Builder::new().name("store-watch".into()).spawn(move || {
        super::remote::follow(&store, "/v1/", &stop, |change| {
            if let super::remote::Change::Event(event) = &change
                && event.key().starts_with(bus::PARTS)
            {
                return;
            }
            let revision = match &change {
                super::remote::Change::Event(event) => event.revision(),
                super::remote::Change::Reset(kvs) => kvs.iter().map(|kv| kv.mod_revision).max().unwrap_or(0),
            };
            let _ = heard.send(Heard::StoreChanged(revision));
        });
    })?;
    Ok(())
}

/// Runs the manager until `stop`.
pub fn manage<S: Store>(
    manager: &Manager<S>,
    heard: &Receiver<Heard>,
    outputs: &Outputs,
    retention: &ipshadow_control::retention::Retention,
    keep_going: &dyn Fn() -> bool,
    clock: impl Fn() -> u64,
) {
    let mut last_desired: Option<Desired> = None;
    let mut targets = RouterTargets::default();
    let mut last_dhcp: Option<DhcpFeed> = None;
    let mut unreadable = Vec::new();
    let mut next_tick = Clock::now();
    let mut next_purge = Clock::now();
    while keep_going() {
        let wait = next_tick.saturating_duration_since(Clock::now());
        let mut batch = Vec::new();
        match heard.recv_timeout(wait) {
            Ok(h) => batch.push(h),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        batch.extend(heard.try_iter());
        // The manager's mirror follows the store through a watch of its own, which may bring a
        // change heard here a moment later: it decides once the mirror has it (on etcd;
        // on the embedded store a change is in the mirror before its transaction returns).
        let heard_revision =
            batch.iter().filter_map(|h| if let Heard::StoreChanged(r) = h { Some(*r) } else { None }).max();
        if let Some(revision) = heard_revision {
            match manager.catch_up(revision, CATCH_UP_WITHIN) {
                Ok(true) => {}
                Ok(false) => eprintln!(
                    "ipshadow serve: manager: its mirror did not reach revision {revision} within {CATCH_UP_WITHIN:?}"
                ),
                Err(e) => eprintln!("ipshadow serve: manager: {e}"),
            }
        }
        let now = clock();
        // Of several reports of one router only the newest matters (a router is its process:
        // its id and when it started).
        let router = |h: &Heard| match h {
            Heard::Router(s) => Some((s.pid, s.started)),
            _ => None,
        };
        let newest = |i: usize| {
            let this = router(&batch[i]);
            this.is_some() && !batch[i + 1..].iter().any(|later| router(later) == this)
        };
        for (i, h) in batch.iter().enumerate() {
            let result = match h {
                Heard::Lease(event) => manager.handle(&Input::Lease(event), now).map(drop),
                Heard::StoredLease { event, key } => manager.handle(&Input::Lease(event), now).and_then(|_| {
                    // Handled: the DHCP server's record of it goes (a retry after a crash
                    // between the two is a repeated event, which decides nothing new).
                    manager.inventory().store().txn(Txn::new().delete(key.as_str())).map(drop).map_err(Into::into)
                }),
                Heard::Router(status) if newest(i) => {
                    if let Ok(mut shared) = outputs.router_status.lock() {
                        *shared = Some((**status).clone());
                    }
                    manager.handle(&Input::Router(status), now).map(drop)
                }
                Heard::PlanRefused { id, reason } => {
                    eprintln!("ipshadow serve: migration {id}: {reason}");
                    let event = MigrationEvent::Fail { reason: reason.clone() };
                    match manager.inventory().advance(*id, event, now) {
                        // Already failed (the refusal is heard again with every new feed).
                        Err(InventoryError::Conflict(_)) => Ok(()),
                        other => other.map(drop),
                    }
                }
                Heard::RouterSegments { name, vms } => {
                    match vms {
                        Some(vms) => {
                            targets.gone.remove(name);
                            targets.live.insert(name.clone(), vms.clone());
                        }
                        None => {
                            targets.live.remove(name);
                            targets.gone.insert(name.clone());
                        }
                    }
                    // Written again with the next projection, changed or not.
                    last_desired = None;
                    Ok(())
                }
                Heard::Router(_) | Heard::StoreChanged(_) => Ok(()),
            };
            if let Err(e) = result {
                eprintln!("ipshadow serve: manager: {e}");
            }
        }
        if Clock::now() >= next_tick {
            next_tick = Clock::now() + TICK;
            if let Err(e) = manager.handle(&Input::Tick, now) {
                eprintln!("ipshadow serve: manager: {e}");
            }
        }
        if Clock::now() >= next_purge {
            next_purge = Clock::now() + PURGE;
            match ipshadow_control::api::idempotency::purge_expired(manager.inventory().store(), now) {
                Ok(0) => {}
                Ok(n) => eprintln!("ipshadow serve: {n} expired idempotency records removed"),
                Err(e) => eprintln!("ipshadow serve: removing expired idempotency records: {e}"),
            }
            match ipshadow_control::retention::purge_ended(manager.inventory().store(), retention, now) {
                Ok(0) => {}
                Ok(n) => eprintln!("ipshadow serve: {n} ended migrations past their retention removed"),
                Err(e) => eprintln!("ipshadow serve: removing ended migrations: {e}"),
            }
        }
        // The router first: a new migration's entry reaches it before the manager's own
        // transaction (plan written) and its fsync.
        project(manager, outputs, now, (&mut last_desired, &mut targets), &mut last_dhcp, &mut unreadable);
        match manager.start_pending(now) {
            Ok(started) if !started.is_empty() => {
                project(manager, outputs, now, (&mut last_desired, &mut targets), &mut last_dhcp, &mut unreadable)
            }
            Ok(_) => {}
            Err(e) => eprintln!("ipshadow serve: manager: {e}"),
        }
    }
}

/// Hands the parts what the store says now, when it differs from what they have (one read of
/// the store for both).
fn project<S: Store>(
    manager: &Manager<S>,
    outputs: &Outputs,
    now_ms: u64,
    (last_desired, targets): (&mut Option<Desired>, &mut RouterTargets),
    last_dhcp: &mut Option<DhcpFeed>,
    last_unreadable: &mut Vec<String>,
) {
    let projection = match manager.projection(now_ms) {
        Ok(p) => p,
        Err(e) => return eprintln!("ipshadow serve: manager: {e}"),
    };
    // Said once, not on every projection.
    if projection.unreadable != *last_unreadable {
        for why in &projection.unreadable {
            eprintln!("ipshadow serve: manager: skipped a record of the store: {why}");
        }
        last_unreadable.clone_from(&projection.unreadable);
    }
    if let Some(router) = &outputs.router
        && last_desired.as_ref() != Some(&projection.router)
        && router(&projection.router, targets)
    {
        *last_desired = Some(projection.router);
        targets.gone.clear();
    }
    let feed = (projection.reservations, projection.plans);
    if let Some(dhcp) = &outputs.dhcp
        && last_dhcp.as_ref() != Some(&feed)
        && dhcp(&feed)
    {
        *last_dhcp = Some(feed);
    }
}

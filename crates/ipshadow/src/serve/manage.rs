//! The manager's loop inside `ipshadow serve`: it hears the store's changes, the DHCP server's
//! lease events and the router's status reports on one channel, turns them into migration
//! events through [`Manager`], and hands the parts what the store now says they should do. It
//! keeps nothing of its own: a restarted process starts again from the store.

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
use ipshadow_dataplane::{Desired, Status};

use super::parts::{DhcpFeed, Heard, RouterFeed};

/// How often time-based decisions are taken (deadlines, timeouts) when nothing else happens.
const TICK: Duration = Duration::from_millis(200);
/// How often expired idempotency records and ended migrations past their retention are removed
/// (records expire after 24 h; a replay after that is a new request whether or not the record
/// is still there).
const PURGE: Duration = Duration::from_secs(60);

/// Where one kind of document goes: a channel to the part in this process, or its key in the
/// store; false when it could not be handed on (tried again with the next projection).
pub type Sink<T> = Box<dyn Fn(&T) -> bool + Send>;

/// Where the manager's projections go.
pub struct Outputs {
    /// The router(s).
    pub router: Option<Sink<Desired>>,
    /// The DHCP server(s).
    pub dhcp: Option<Sink<DhcpFeed>>,
    /// The router's last status, for the API.
    pub router_status: Arc<Mutex<Option<Status>>>,
}

impl Outputs {
    /// To the router of this process.
    pub fn local_router(feed: RouterFeed) -> Sink<Desired> {
        Box::new(move |desired| {
            feed.send(desired.clone());
            true
        })
    }

    /// To the DHCP server of this process.
    pub fn local_dhcp(feed: Sender<DhcpFeed>) -> Sink<DhcpFeed> {
        Box::new(move |f| feed.send(f.clone()).is_ok())
    }

    /// To the routers of other processes, through the store.
    pub fn stored_router<S: Store>(store: S) -> Sink<Desired> {
        Box::new(move |desired| write(&store, bus::ROUTER_DESIRED, desired))
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
    match store.txn(Txn::new().put(key, bytes)) {
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
            let _ = heard.send(Heard::StoreChanged);
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
        let now = clock();
        // Of several router reports only the newest matters.
        let newest_router = batch.iter().rposition(|h| matches!(h, Heard::Router(_)));
        for (i, h) in batch.iter().enumerate() {
            let result = match h {
                Heard::Lease(event) => manager.handle(&Input::Lease(event), now).map(drop),
                Heard::StoredLease { event, key } => manager.handle(&Input::Lease(event), now).and_then(|_| {
                    // Handled: the DHCP server's record of it goes (a retry after a crash
                    // between the two is a repeated event, which decides nothing new).
                    manager.inventory().store().txn(Txn::new().delete(key.as_str())).map(drop).map_err(Into::into)
                }),
                Heard::Router(status) if Some(i) == newest_router => {
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
                Heard::Router(_) | Heard::StoreChanged => Ok(()),
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
        project(manager, outputs, now, &mut last_desired, &mut last_dhcp, &mut unreadable);
        match manager.start_pending(now) {
            Ok(started) if !started.is_empty() => {
                project(manager, outputs, now, &mut last_desired, &mut last_dhcp, &mut unreadable)
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
    last_desired: &mut Option<Desired>,
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
        && router(&projection.router)
    {
        *last_desired = Some(projection.router);
    }
    let feed = (projection.reservations, projection.plans);
    if let Some(dhcp) = &outputs.dhcp
        && last_dhcp.as_ref() != Some(&feed)
        && dhcp(&feed)
    {
        *last_dhcp = Some(feed);
    }
}

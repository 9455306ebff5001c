//! The DHCP server and the router inside `ipshadow serve`: each on its own thread, each
//! following what the manager projects from the store (sent over a channel, no files), each
//! telling the manager what it hears (lease events, status reports) over one channel back.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::fd::AsFd as _;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, anyhow};
use ipshadow_core::Instant;
use ipshadow_dataplane::runtime::write_atomically;
use ipshadow_dataplane::{Desired, Router, RouterClock, RouterControl, RouterSetup, Status};
use ipshadow_dhcp::server::LeaseEvent;
use ipshadow_dhcp::service::Service;
use ipshadow_dhcp::{DhcpConfig, MigrationPlan, Reservation};

use ipshadow_control::admission::sift_reservations;

use super::group::GroupLink;
use super::supervise::{PartState, supervise};
use ipshadow_core::ha::{GroupView, LeaseNews};

/// What the manager hears.
pub enum Heard {
    /// A lease event from the DHCP server.
    Lease(LeaseEvent),
    /// A lease event a DHCP server in another process stored at `key` (deleted once handled).
    StoredLease {
        /// The event.
        event: LeaseEvent,
        /// Where it is stored.
        key: String,
    },
    /// The router's status report.
    Router(Box<Status>),
    /// Something changed in the store, at this revision.
    StoreChanged(u64),
    /// Which VMs a router of another process has ports for, as its report says (`None`: its
    /// report is gone, or its slice of the desired state has no router any more).
    RouterSegments {
        /// The router's name.
        name: String,
        /// Its VMs.
        vms: Option<std::collections::BTreeSet<ipshadow_core::VmId>>,
    },
    /// The DHCP server refused a migration's lease plan (a VM already in another migration, an
    /// address the source does not hold): the migration cannot go on.
    PlanRefused {
        /// The migration.
        id: u64,
        /// The DHCP server's reason.
        reason: String,
    },
}

/// What the DHCP server follows: the reservations and the lease plans.
pub type DhcpFeed = (Vec<Reservation>, Vec<MigrationPlan>);

/// The manager's line to the router: the desired state, and a nudge so that the router does not
/// sleep through it.
pub struct RouterFeed {
    desired: Sender<Desired>,
    wake: UnixDatagram,
}

impl RouterFeed {
    /// Hands `desired` to the router.
    pub fn send(&self, desired: Desired) {
        if self.desired.send(desired).is_ok() {
            // A full socket buffer means a nudge is already waiting: nothing lost.
            let _ = self.wake.send(&[1]);
        }
    }
}

/// The router's side of [`RouterFeed`].
struct FeedControl {
    desired: Receiver<Desired>,
    wake: UnixDatagram,
    heard: Sender<Heard>,
    status_file: Option<std::path::PathBuf>,
    /// The newest document, for a restarted router.
    last: Option<Desired>,
    /// Hand [`FeedControl::last`] again (the router was restarted and has applied nothing).
    replay: bool,
    health: Arc<PartState>,
    /// In a group: news from the keeper of the group's lease, and what the loop tells it.
    group: Option<(Receiver<LeaseNews>, GroupLink)>,
    /// Tell a router opened again which lease the keeper holds.
    replay_lease: bool,
}

impl RouterControl for FeedControl {
    fn wake_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        Some(self.wake.as_fd())
    }

    fn desired(&mut self, _now: Instant) -> Option<Desired> {
        // Asked on every turn of the router's loop: it is alive.
        self.health.alive();
        // Only the newest document matters.
        let latest = self.desired.try_iter().last();
        if latest.is_some() {
            let mut buf = [0u8; 64];
            while self.wake.recv(&mut buf).is_ok() {}
            self.last.clone_from(&latest);
            self.replay = false;
            return latest;
        }
        if std::mem::take(&mut self.replay) {
            return self.last.clone();
        }
        None
    }

    fn lease_news(&mut self) -> Option<LeaseNews> {
        let (news, link) = self.group.as_ref()?;
        if std::mem::take(&mut self.replay_lease) {
            // Drained first: what it says is older than what the keeper holds now.
            while news.try_recv().is_ok() {}
            if let Some(held) = link.held.lock().ok().and_then(|h| *h) {
                return Some(held);
            }
        }
        news.try_recv().ok()
    }

    fn group_view(&mut self, view: GroupView) {
        if let Some((_, link)) = &self.group
            && let Ok(mut shared) = link.view.lock()
        {
            *shared = view;
        }
    }

    fn report(&mut self, status: Status) {
        if let Some(path) = &self.status_file
            && let Err(e) = write_atomically(path, &status)
        {
            eprintln!("ipshadow serve: router: {:#}", anyhow::Error::new(e));
        }
        let _ = self.heard.send(Heard::Router(Box::new(status)));
    }
}

/// Starts the router on its own thread (its ports are opened there and stay there); returns
/// once it forwards, or with the reason it could not start. A router that fails later is opened
/// again with back-off ([`supervise`]) and given the newest desired state again.
pub fn start_router(
    setup: RouterSetup,
    (status_file, group): (Option<std::path::PathBuf>, Option<(Receiver<LeaseNews>, GroupLink)>),
    heard: Sender<Heard>,
    health: Arc<PartState>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(RouterFeed, JoinHandle<anyhow::Result<()>>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (wake_tx, wake_rx) = UnixDatagram::pair().context("creating the router's wake-up socket")?;
    wake_rx.set_nonblocking(true)?;
    wake_tx.set_nonblocking(true)?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<String, String>>();
    let thread = std::thread::Builder::new().name("router".into()).spawn(move || {
        let clock = RouterClock::start_with(super::clock::wall);
        let router = match Router::open(setup.clone(), clock.read()) {
            Ok(router) => router,
            Err(e) => {
                let _ = ready_tx.send(Err(format!("{:#}", anyhow::Error::new(e))));
                return Ok(());
            }
        };
        let _ = ready_tx.send(Ok(router.describe()));
        let mut control = FeedControl {
            desired: rx,
            wake: wake_rx,
            heard,
            status_file,
            last: None,
            replay: false,
            health: Arc::clone(&health),
            group,
            replay_lease: false,
        };
        let run = |mut router: Router| {
            let result = router.run(&stop, &mut control, || clock.read()).map_err(anyhow::Error::new);
            eprintln!("ipshadow serve: router stopped after {} frames", router.forwarder.frames);
            // The next life starts from nothing applied, standing by.
            control.replay = true;
            control.replay_lease = true;
            result
        };
        // The failed router (its ports) is dropped before a new one opens them again.
        let restart = || Router::open(setup.clone(), clock.read()).map_err(anyhow::Error::new);
        supervise(&health, &stop, router, run, restart);
        Ok(())
    })?;
    let thread = started(ready_rx, thread, "router")?;
    Ok((RouterFeed { desired: tx, wake: wake_tx }, thread))
}

/// What the DHCP thread publishes for the API.
#[derive(Default)]
pub struct DhcpShared {
    /// Current leases that are not part of a migration, by address: unix milliseconds they end
    /// (a migration's default deadline).
    pub lease_ends: BTreeMap<Ipv4Addr, u64>,
    /// Leases, counters and lease events by kind, as `GET /v1/dhcp/status` shows them.
    pub status: serde_json::Value,
    /// Lease events by kind since the process started.
    events: BTreeMap<String, u64>,
}

/// [`DhcpShared`] between the DHCP thread and the API.
pub type SharedDhcp = Arc<Mutex<DhcpShared>>;

/// Where the DHCP thread says how it is: its status for the API, its health.
pub struct DhcpReports {
    /// Leases and counters.
    pub shared: SharedDhcp,
    /// Up, restarts, records skipped.
    pub health: Arc<PartState>,
}

/// How late a new lease plan may reach the DHCP server at most.
const DHCP_FOLLOW: Duration = Duration::from_millis(50);

/// How stale the published counters may be at most (plus one [`DHCP_FOLLOW`]) when requests
/// made no lease event: a flood of them does not publish every lease for every batch.
const COUNTERS_EVERY: Duration = Duration::from_millis(200);

/// Starts the DHCP server on its own thread, following `feed` (the first feed is applied before
/// the first request is answered); returns once it serves. A server that fails later (its
/// socket, its lease store) is started again with back-off ([`supervise`]) on the newest feed.
pub fn start_dhcp(
    config: DhcpConfig,
    first: DhcpFeed,
    feed: Receiver<DhcpFeed>,
    heard: Sender<Heard>,
    DhcpReports { shared, health }: DhcpReports,
    mut log: std::fs::File,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<String, String>>();
    let thread = std::thread::Builder::new().name("dhcp".into()).spawn(move || {
        let open = |latest: &DhcpFeed| -> anyhow::Result<Service> {
            let mut s = Service::start_with_clock(config.clone(), super::clock::unix_secs)?;
            s.set_wait(DHCP_FOLLOW)?;
            follow(&mut s, latest.clone(), &heard, &health)?;
            Ok(s)
        };
        let service = match open(&first) {
            Ok(service) => service,
            Err(e) => {
                let _ = ready_tx.send(Err(format!("{e:#}")));
                return Ok(());
            }
        };
        let at = service.local_addr().map_or_else(|| "?".to_owned(), |a| a.to_string());
        let _ = ready_tx.send(Ok(format!("serving on {at}")));
        // The newest feed: a restarted server follows it from the start.
        let latest_cell = std::cell::RefCell::new(first);
        let run = |mut service: Service| -> anyhow::Result<()> {
            let service = &mut service;
            publish(service, &shared);
            // Requests that made no lease event still move the counters (drops among them):
            // they are published too, at most every COUNTERS_EVERY.
            let (mut published, mut counted) = (std::time::Instant::now(), false);
            while !stop.load(Ordering::Relaxed) {
                health.alive();
                if let Some(newest) = feed.try_iter().last() {
                    latest_cell.replace(newest.clone());
                    follow(service, newest, &heard, &health)?;
                    publish(service, &shared);
                }
                let received = service.server().counters().received;
                let events = service.step()?;
                counted |= service.server().counters().received != received;
                if counted && events.is_empty() && published.elapsed() >= COUNTERS_EVERY {
                    publish(service, &shared);
                    (published, counted) = (std::time::Instant::now(), false);
                }
                if !events.is_empty() {
                    (published, counted) = (std::time::Instant::now(), false);
                    if let Ok(mut shared) = shared.lock() {
                        for event in &events {
                            if let Ok(serde_json::Value::String(kind)) = serde_json::to_value(event.kind) {
                                *shared.events.entry(kind).or_default() += 1;
                            }
                        }
                    }
                    publish(service, &shared);
                }
                for event in events {
                    // The lease event log: one JSON line each, for the operator's audit.
                    if let Ok(line) = serde_json::to_string(&event) {
                        let _ = writeln!(log, "{line}");
                    }
                    let _ = heard.send(Heard::Lease(event));
                }
            }
            Ok(())
        };
        // The failed service (its socket, its lease store) is dropped before a new one opens them.
        let restart = || open(&latest_cell.borrow());
        supervise(&health, &stop, service, run, restart);
        Ok(())
    })?;
    started(ready_rx, thread, "DHCP server")
}

/// Waits for a part's thread to say it runs (a line for the log) or why it could not start.
fn started(
    ready: Receiver<Result<String, String>>,
    thread: JoinHandle<anyhow::Result<()>>,
    part: &str,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    match ready.recv() {
        Ok(Ok(line)) => {
            eprintln!("ipshadow serve: {part}: {line}");
            Ok(thread)
        }
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(anyhow!("{part}: {e}"))
        }
        Err(_) => Err(anyhow!("the {part} thread ended before it started")),
    }
}

/// Hands the server the reservations it can take, and the plans. Reservations its own rules
/// refuse (a record stored before the API checked them, or behind its back) are left out and
/// reported in its health: one bad record never stops the server for everyone.
fn follow(
    service: &mut Service,
    (reservations, plans): DhcpFeed,
    heard: &Sender<Heard>,
    health: &PartState,
) -> Result<(), ipshadow_dhcp::service::ServiceError> {
    let (reservations, skipped) = sift_reservations(&service.server().config().rules(), reservations);
    health.skipped(skipped);
    for (id, why) in service.follow(reservations, &plans)? {
        let _ = heard.send(Heard::PlanRefused { id, reason: format!("the DHCP server refused its lease plan: {why}") });
    }
    Ok(())
}

/// A lease as `GET /v1/dhcp/status` shows it.
#[derive(serde::Serialize)]
struct LeaseView<'a> {
    ip: Ipv4Addr,
    vm: Option<&'a str>,
    client: String,
    expires_ms: u64,
    migration: Option<u64>,
    role: Option<ipshadow_dhcp::Role>,
}

/// Publishes the leases for the API: their ends outside migrations (the default deadline) and
/// the status view.
fn publish(service: &Service, shared: &SharedDhcp) {
    let leases = service.server().leases();
    let ends: BTreeMap<Ipv4Addr, u64> =
        leases.iter().filter(|l| l.migration.is_none()).map(|l| (l.ip, l.expires.saturating_mul(1000))).collect();
    let views: Vec<LeaseView<'_>> = leases
        .iter()
        .map(|l| LeaseView {
            ip: l.ip,
            vm: l.vm.as_deref(),
            client: l.client.to_string(),
            expires_ms: l.expires.saturating_mul(1000),
            migration: l.migration.map(|(id, _)| id),
            role: l.migration.map(|(_, role)| role),
        })
        .collect();
    if let Ok(mut shared) = shared.lock() {
        shared.lease_ends = ends;
        shared.status = serde_json::json!({
            "leases": views,
            "counters": service.server().counters(),
            "events": shared.events,
        });
    }
}

#[cfg(test)]
mod tests {
    use ipshadow_control::inventory::{Address, Inventory, Vm, address_key, vm_key};
    use ipshadow_control::manager::Manager;
    use ipshadow_control::{RedbStore, Store, Txn};

    use super::*;

    /// A record the API would refuse, written into the store directly (as before the API
    /// checked it): the DHCP server starts all the same and reports the bad one in its health (issue 13's `reservations.evil.ip: is in no configured
    /// subnet`, which used to stop `serve` from starting).
    #[test]
    fn a_bad_record_in_the_store_is_skipped_at_start() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("ipshadow-parts-skip-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let store = RedbStore::open(&dir.join("store.redb"))?;
        let inventory = Inventory::new(store.clone());
        let vm = |id: &str, mac: &str| Vm { id: id.into(), tenant: "acme".into(), mac: mac.into(), segment: id.into() };
        inventory.add_vm(&vm("vm-a", "02:00:00:00:00:0a"))?;
        inventory.add_address("acme", Ipv4Addr::new(10, 0, 0, 10), Some("vm-a"))?;
        // Behind the API's back: a VM whose address is in no DHCP subnet.
        let evil = vm("evil", "02:00:00:00:00:ee");
        let bad = Address {
            ip: Ipv4Addr::new(192, 168, 77, 7),
            tenant: "other".into(),
            vm: Some("evil".into()),
            migration: None,
        };
        store.txn(
            Txn::new()
                .put(vm_key("evil"), serde_json::to_vec(&evil)?)
                .put(address_key(bad.ip), serde_json::to_vec(&bad)?),
        )?;
        let manager = Manager::new(inventory, Default::default());
        let config = ipshadow_dhcp::DhcpConfig::from_toml(&format!(
            "server_id = \"127.0.0.1\"\nlisten = \"127.0.0.1:0\"\nlease_store = \"{}\"\n\
             [[subnets]]\nnetwork = \"10.0.0.0\"\nprefix = 24\n",
            dir.join("leases.redb").display()
        ))?;
        let (heard, _heard_rx) = std::sync::mpsc::channel();
        let (_feed_tx, feed) = std::sync::mpsc::channel();
        let log = std::fs::File::create(dir.join("dhcp-events.jsonl"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let health = PartState::new("dhcp");
        let shared = SharedDhcp::default();
        let reports = DhcpReports { shared, health: health.clone() };
        let thread = start_dhcp(config, manager.dhcp()?, feed, heard, reports, log, Arc::clone(&stop))?;
        let h = health.health();
        assert!(h.ok(), "{h:?}");
        assert_eq!(h.skipped, vec!["configuration key reservations.evil.ip: is in no configured subnet".to_owned()]);
        stop.store(true, Ordering::Relaxed);
        thread.join().map_err(|_| anyhow!("the DHCP thread panicked"))??;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}

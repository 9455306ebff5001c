//! The links between parts in different processes, through the store ([`ipshadow_control::bus`]):
//! each is a thread that follows keys of the store into a part's channel, or publishes what a
//! part hears under its own keys. Inside one process on the embedded store the same channels
//! are joined directly ([`super::parts`]); the parts themselves do not know which.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use ipshadow_contracts::router::{Desired, Status};
use ipshadow_control::bus::{self, DhcpFeed, DhcpReport, RouterReport};
use ipshadow_control::{KeyValue, LeaseId, Store, Txn, WatchEvent};

use super::parts::{Heard, RouterFeed, SharedDhcp};
use super::supervise::PartState;

/// How long a follower waits on its watch before it looks at `stop` again.
const POLL: Duration = Duration::from_millis(200);
/// After a failed read of the store, how long to wait before trying again (etcd unreachable).
const RETRY: Duration = Duration::from_millis(500);
/// How often a DHCP server publishes its report when nothing else made it.
const DHCP_REPORT_EVERY: Duration = Duration::from_millis(500);

/// A thread of a part, its result when it ends.
pub type Part = JoinHandle<anyhow::Result<()>>;

/// A change of the keys a follower follows.
pub enum Change {
    /// Everything under the prefix now (at start, and after the store forgot what the follower
    /// had not read: a compaction).
    Reset(Vec<KeyValue>),
    /// One change.
    Event(WatchEvent),
}

/// Follows every key under `prefix` into `on` until `stop`: the keys now, then each change; a
/// watch the store ended (compacted past it) or that could not start is replaced by a new read
/// and a new watch. An unreachable store is retried: the part keeps what it had.
pub fn follow<S: Store>(store: &S, prefix: &str, stop: &AtomicBool, mut on: impl FnMut(Change)) {
    let mut said = false;
    while !stop.load(Ordering::Relaxed) {
        let started = store.range(prefix).and_then(|(kvs, revision)| Ok((kvs, store.watch(prefix, revision)?)));
        let (kvs, watcher) = match started {
            Ok(started) => started,
            Err(e) => {
                if !said {
                    eprintln!("ipshadow serve: following {prefix}: {e}; trying again");
                    said = true;
                }
                std::thread::sleep(RETRY);
                continue;
            }
        };
        said = false;
        on(Change::Reset(kvs));
        while !stop.load(Ordering::Relaxed) {
            match watcher.next_timeout(POLL) {
                Some(event) => on(Change::Event(event)),
                None => {
                    if let Some(e) = watcher.failure() {
                        eprintln!("ipshadow serve: following {prefix}: {e}; reading it again");
                        break;
                    }
                }
            }
        }
    }
}

/// Starts a thread named `name` running `body`.
fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> anyhow::Result<Part> {
    Ok(std::thread::Builder::new().name(name.into()).spawn(move || {
        body();
        Ok(())
    })?)
}

/// Decodes a document, saying what was wrong with it once per key and value.
fn decode<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Option<T> {
    match serde_json::from_slice(&kv.value) {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!("ipshadow serve: skipped {} (revision {}): {e}", kv.key, kv.mod_revision);
            None
        }
    }
}

/// A router in this process follows its slice of the desired state, which the leading manager
/// writes under the router's name.
pub fn router_follows<S: Store>(store: S, name: &str, feed: RouterFeed, stop: Arc<AtomicBool>) -> anyhow::Result<Part> {
    let key = bus::router_desired_key(name);
    spawn("desired-follow", move || {
        // The key as a prefix: another router's name may start with this one's (exact match below).
        follow(&store, &key, &stop, |change| {
            let kv = match change {
                Change::Reset(kvs) => kvs.into_iter().find(|kv| kv.key == key),
                Change::Event(WatchEvent::Put(kv)) if kv.key == key => Some(kv),
                // Deleted (the manager lost this router's report while the router was cut off
                // from the store, or a store wiped by hand): the router keeps the last desired
                // state until the manager writes a new one.
                Change::Event(_) => None,
            };
            if let Some(desired) = kv.as_ref().and_then(decode::<Desired>) {
                feed.send(desired);
            }
        });
    })
}

/// A DHCP server in this process follows the reservations and plans the leading manager writes.
pub fn dhcp_follows<S: Store>(
    store: S,
    feed: Sender<(Vec<ipshadow_contracts::dhcp::Reservation>, Vec<ipshadow_contracts::dhcp::MigrationPlan>)>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Part> {
    spawn("dhcp-feed-follow", move || {
        follow(&store, bus::DHCP_FEED, &stop, |change| {
            let kv = match change {
                Change::Reset(kvs) => kvs.into_iter().find(|kv| kv.key == bus::DHCP_FEED),
                Change::Event(WatchEvent::Put(kv)) if kv.key == bus::DHCP_FEED => Some(kv),
                Change::Event(_) => None,
            };
            if let Some(f) = kv.as_ref().and_then(decode::<DhcpFeed>) {
                let _ = feed.send((f.reservations, f.plans));
            }
        });
    })
}

/// How long a part's report outlives the part: it is written under a lease of this time to
/// live, renewed with the reports (a router reports five times a second, a DHCP server at
/// least twice), so a part that died vanishes from the store within it.
const REPORT_TTL: Duration = Duration::from_secs(5);

/// The lease a part's reports are bound to: granted on first use, renewed every third of its
/// time to live, granted again when it ended (the store was unreachable for longer than it).
#[derive(Default)]
struct ReportLease {
    lease: Option<(LeaseId, std::time::Instant)>,
}

impl ReportLease {
    /// The lease to write under now.
    fn current<S: Store>(&mut self, store: &S) -> Result<LeaseId, ipshadow_control::StoreError> {
        if let Some((lease, renewed)) = self.lease {
            if renewed.elapsed() < REPORT_TTL / 3 {
                return Ok(lease);
            }
            match store.keep_alive(lease) {
                Ok(()) => {
                    self.lease = Some((lease, std::time::Instant::now()));
                    return Ok(lease);
                }
                Err(ipshadow_control::StoreError::LeaseExpired { .. }) => self.lease = None,
                Err(e) => return Err(e),
            }
        }
        let lease = store.grant_lease(REPORT_TTL)?;
        self.lease = Some((lease, std::time::Instant::now()));
        Ok(lease)
    }
}

/// Writes a part's report at `key` under its lease.
fn put_report<S: Store>(
    store: &S,
    lease: &mut ReportLease,
    key: &str,
    value: &impl serde::Serialize,
    failing: &mut bool,
) -> bool {
    let Ok(bytes) = serde_json::to_vec(value) else { return false };
    let written = lease.current(store).and_then(|id| store.txn(Txn::new().put_leased(key, bytes, id)));
    if let Err(ipshadow_control::StoreError::LeaseExpired { .. }) = written {
        // Ended between the renewal and the write: the next report takes a new one.
        lease.lease = None;
    }
    said(key, written.map(drop), failing)
}

/// Says the first failure of a run of them (etcd unreachable), and when it works again.
fn said(key: &str, result: Result<(), ipshadow_control::StoreError>, failing: &mut bool) -> bool {
    match result {
        Ok(()) => {
            if std::mem::take(failing) {
                eprintln!("ipshadow serve: writing {key} works again");
            }
            true
        }
        Err(e) => {
            if !*failing {
                eprintln!("ipshadow serve: writing {key}: {e}");
                *failing = true;
            }
            false
        }
    }
}

/// Writes `value` at `key`, saying the first failure of a run of them (etcd unreachable).
fn put<S: Store>(store: &S, key: &str, value: &impl serde::Serialize, failing: &mut bool) -> bool {
    let Ok(bytes) = serde_json::to_vec(value) else { return false };
    said(key, store.txn(Txn::new().put(key, bytes)).map(drop), failing)
}

/// Publishes the router's status reports (what it tells `heard`) under its name.
pub fn router_publishes<S: Store>(
    store: S,
    (name, vms): (String, std::collections::BTreeSet<ipshadow_core::VmId>),
    heard: Receiver<Heard>,
    health: Arc<PartState>,
    clock: fn() -> u64,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Part> {
    spawn("router-publish", move || {
        let key = bus::router_key(&name);
        let mut failing = false;
        let mut lease = ReportLease::default();
        while !stop.load(Ordering::Relaxed) {
            let status = match heard.recv_timeout(POLL) {
                // Only the newest report matters.
                Ok(Heard::Router(status)) => heard
                    .try_iter()
                    .filter_map(|h| if let Heard::Router(s) = h { Some(s) } else { None })
                    .last()
                    .unwrap_or(status),
                Ok(_) | Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let report = RouterReport {
                name: name.clone(),
                health: health.health(),
                published_ms: clock(),
                vms: vms.clone(),
                status: *status,
            };
            put_report(&store, &mut lease, &key, &report, &mut failing);
        }
    })
}

/// Publishes the DHCP server's lease events (each under a key of its own, for the manager to
/// handle and delete) and its report (leases, counters, refused plans) under its name.
pub fn dhcp_publishes<S: Store>(
    store: S,
    name: String,
    heard: Receiver<Heard>,
    (shared, health): (SharedDhcp, Arc<PartState>),
    clock: fn() -> u64,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Part> {
    spawn("dhcp-publish", move || {
        let key = bus::dhcp_server_key(&name);
        // Unique and increasing across restarts of this server: the event's unix milliseconds
        // times 1000, or one more than the last when several come within a millisecond.
        let mut next_sequence = 0u64;
        let mut refused: BTreeMap<u64, String> = BTreeMap::new();
        let mut pending: Vec<(String, ipshadow_contracts::dhcp::LeaseEvent)> = Vec::new();
        let mut failing = false;
        let mut lease = ReportLease::default();
        let mut last = std::time::Instant::now() - DHCP_REPORT_EVERY;
        while !stop.load(Ordering::Relaxed) {
            let mut changed = false;
            match heard.recv_timeout(POLL) {
                Ok(first) => {
                    for h in std::iter::once(first).chain(heard.try_iter()) {
                        match h {
                            Heard::Lease(event) => {
                                let seq = next_sequence.max(clock().saturating_mul(1000));
                                next_sequence = seq + 1;
                                pending.push((bus::lease_event_key(&name, seq), event));
                            }
                            Heard::PlanRefused { id, reason } => {
                                refused.insert(id, reason);
                            }
                            _ => {}
                        }
                        changed = true;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            // Lease events in order; one not written stays for the next turn (nothing lost
            // while etcd is away, as long as this process lives).
            while let Some((event_key, event)) = pending.first() {
                if !put(&store, event_key, event, &mut failing) {
                    break;
                }
                pending.remove(0);
            }
            if changed || last.elapsed() >= DHCP_REPORT_EVERY {
                let (status, lease_ends) = match shared.lock() {
                    Ok(s) => (s.status.clone(), s.lease_ends.clone()),
                    Err(_) => continue,
                };
                let report = DhcpReport {
                    name: name.clone(),
                    health: health.health(),
                    published_ms: clock(),
                    status,
                    lease_ends,
                    refused: refused.iter().map(|(id, why)| (*id, why.clone())).collect(),
                };
                if put_report(&store, &mut lease, &key, &report, &mut failing) {
                    last = std::time::Instant::now();
                }
            }
        }
    })
}

/// What the manager hears from parts in other processes: router reports, lease events (with
/// their keys, deleted once handled) and refused plans, into its `heard` channel.
pub fn manager_hears<S: Store>(store: S, heard: Sender<Heard>, stop: Arc<AtomicBool>) -> anyhow::Result<Part> {
    spawn("parts-follow", move || {
        // Refusals are repeated in every report of their server: handed on once.
        let mut refusals_heard = std::collections::BTreeSet::new();
        // The VMs of each router whose report is there, as last handed on.
        let mut segments: BTreeMap<String, std::collections::BTreeSet<ipshadow_core::VmId>> = BTreeMap::new();
        // The newest term heard of each router group.
        let mut terms: BTreeMap<String, u64> = BTreeMap::new();
        let mut hear = |kv: &KeyValue, segments: &mut BTreeMap<_, _>| -> bool {
            let h = if let Some(name) = kv.key.strip_prefix(bus::ROUTERS) {
                decode::<RouterReport>(kv).map(|r| {
                    let mut heard = Vec::new();
                    if segments.get(name) != Some(&r.vms) {
                        segments.insert(name.to_owned(), r.vms.clone());
                        heard.push(Heard::RouterSegments { name: name.to_owned(), vms: Some(r.vms) });
                    }
                    // Of a router group only the active member's report speaks for the
                    // traffic: a standby forwards nothing (but follows its slice all the same).
                    let standing_by = r.status.ha.as_ref().is_some_and(|h| h.role != ipshadow_core::ha::Role::Active);
                    // An active member of an older term than one already heard is a router that
                    // has not yet heard it was replaced (back from a cut): its report is stale.
                    let stale = r.status.ha.as_ref().is_some_and(|h| {
                        let newest = terms.entry(h.group.clone()).or_insert(h.term);
                        *newest = (*newest).max(h.term);
                        h.term < *newest
                    });
                    if !standing_by && !stale {
                        heard.push(Heard::Router(Box::new(r.status)));
                    }
                    heard
                })
            } else if kv.key.starts_with(bus::LEASE_EVENTS) {
                decode(kv).map(|event| vec![Heard::StoredLease { event, key: kv.key.clone() }])
            } else if kv.key.starts_with(bus::DHCP_SERVERS) {
                decode::<DhcpReport>(kv).map(|r| {
                    r.refused
                        .into_iter()
                        .filter(|(id, _)| refusals_heard.insert((r.name.clone(), *id)))
                        .map(|(id, reason)| Heard::PlanRefused { id, reason })
                        .collect()
                })
            } else {
                None
            };
            h.unwrap_or_default().into_iter().all(|h| heard.send(h).is_ok())
        };
        let gone = |name: &str| heard.send(Heard::RouterSegments { name: name.to_owned(), vms: None }).is_ok();
        follow(&store, bus::PARTS, &stop, |change| match change {
            Change::Reset(kvs) => {
                // Routers whose reports went while the watch was away, and slices written for
                // routers that have none (written by an earlier leader): their slices go.
                let reporting: std::collections::BTreeSet<&str> =
                    kvs.iter().filter_map(|kv| kv.key.strip_prefix(bus::ROUTERS)).collect();
                let sliced = kvs.iter().filter_map(|kv| kv.key.strip_prefix(bus::ROUTER_DESIRED));
                let orphans: std::collections::BTreeSet<String> = segments
                    .keys()
                    .map(String::as_str)
                    .chain(sliced)
                    .filter(|name| !reporting.contains(name))
                    .map(str::to_owned)
                    .collect();
                for name in &orphans {
                    segments.remove(name);
                    gone(name);
                }
                for kv in &kvs {
                    hear(kv, &mut segments);
                }
            }
            Change::Event(WatchEvent::Put(kv)) => {
                hear(&kv, &mut segments);
            }
            Change::Event(WatchEvent::Delete { key, .. }) => {
                if let Some(name) = key.strip_prefix(bus::ROUTERS)
                    && segments.remove(name).is_some()
                {
                    gone(name);
                }
            }
        });
    })
}

/// The newest report of each part in other processes, for the API.
#[derive(Default)]
pub struct PartsView {
    routers: BTreeMap<String, RouterReport>,
    dhcp: BTreeMap<String, DhcpReport>,
}

impl PartsView {
    /// Follows the parts' reports into a view the API reads.
    pub fn follow<S: Store>(store: S, stop: Arc<AtomicBool>) -> anyhow::Result<(Arc<Mutex<PartsView>>, Part)> {
        let view = Arc::new(Mutex::new(PartsView::default()));
        let shared = Arc::clone(&view);
        let thread = spawn("parts-view", move || {
            follow(&store, bus::PARTS, &stop, |change| {
                let Ok(mut view) = shared.lock() else { return };
                match change {
                    Change::Reset(kvs) => {
                        *view = PartsView::default();
                        for kv in &kvs {
                            view.put(kv);
                        }
                    }
                    Change::Event(WatchEvent::Put(kv)) => view.put(&kv),
                    Change::Event(WatchEvent::Delete { key, .. }) => view.delete(&key),
                }
            });
        })?;
        Ok((view, thread))
    }

    fn put(&mut self, kv: &KeyValue) {
        if let Some(name) = kv.key.strip_prefix(bus::ROUTERS) {
            if let Some(r) = decode(kv) {
                self.routers.insert(name.to_owned(), r);
            }
        } else if let Some(name) = kv.key.strip_prefix(bus::DHCP_SERVERS)
            && let Some(r) = decode(kv)
        {
            self.dhcp.insert(name.to_owned(), r);
        }
    }

    fn delete(&mut self, key: &str) {
        if let Some(name) = key.strip_prefix(bus::ROUTERS) {
            self.routers.remove(name);
        } else if let Some(name) = key.strip_prefix(bus::DHCP_SERVERS) {
            self.dhcp.remove(name);
        }
    }

    /// The router report that speaks for the traffic: of a router group's active member if
    /// one reports, else the newest.
    pub fn router_status(&self) -> Option<Status> {
        let active = |r: &&RouterReport| r.status.ha.as_ref().is_none_or(|h| h.role == ipshadow_core::ha::Role::Active);
        // Of two that say they are active, the newer term (the other has not heard it yet).
        let newest = |r: &&RouterReport| (r.status.ha.as_ref().map_or(0, |h| h.term), r.published_ms);
        let pick = self.routers.values().filter(active).max_by_key(newest);
        pick.or_else(|| self.routers.values().max_by_key(newest)).map(|r| r.status.clone())
    }

    /// Every router's summary, by name.
    pub fn routers(&self) -> Vec<ipshadow_control::api::parts::RouterSummary> {
        self.routers.iter().map(|(name, r)| ipshadow_control::api::parts::RouterSummary::of(name, &r.status)).collect()
    }

    /// The newest DHCP server's status.
    pub fn dhcp_status(&self) -> Option<serde_json::Value> {
        self.dhcp.values().max_by_key(|r| r.published_ms).map(|r| r.status.clone())
    }

    /// When the current lease on `ip` ends, as any DHCP server knows it.
    pub fn lease_end(&self, ip: std::net::Ipv4Addr) -> Option<u64> {
        self.dhcp.values().filter_map(|r| r.lease_ends.get(&ip).copied()).max()
    }
}

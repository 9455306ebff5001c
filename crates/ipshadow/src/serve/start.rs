//! Starting the parts of one `serve` process on its store, and stopping them: the one place the
//! parts are wired, whether they share the process (the embedded store: channels between them)
//! or each runs where `--roles` puts it (etcd: the store between them, [`super::remote`]).

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::bail;
use ipshadow_control::Store;
use ipshadow_control::api::parts::{RouterSummary, RoutersSource};
use ipshadow_control::api::{ApiState, DhcpStatusSource, LeaseEndSource, Parts, RouterStatusSource, TokenTable};
use ipshadow_control::bus;
use ipshadow_control::inventory::Inventory;
use ipshadow_control::manager::Manager;
use ipshadow_control::orchestrator::Limits;

use super::manage::{self, Outputs};
use super::parts::{self, Heard};
use super::remote::{self, PartsView};
use super::roles::Roles;
use super::supervise::PartState;
use super::{ServeConfig, clock, files, group, transport};

/// What a process needs besides its store.
pub(super) struct Setup {
    pub config: ServeConfig,
    pub roles: Roles,
    pub name: String,
    pub listen: std::net::SocketAddr,
    pub transport: transport::Transport,
    pub data_dir: PathBuf,
    pub tokens: TokenTable,
    pub policy: ipshadow_control::reassign::DeadlinePolicy,
    pub retention: ipshadow_control::retention::Retention,
    pub admission: ipshadow_control::admission::Admission,
}

/// Runs this process's parts on `store` until SIGTERM or SIGINT; `embedded`: the parts share
/// this process and talk over channels, else through the store.
pub(super) fn run<S: Store>(store: S, embedded: bool, setup: Setup) -> anyhow::Result<()> {
    let Setup { config, roles, name, listen, transport, data_dir, tokens, policy, retention, admission } = setup;
    if embedded && !roles.manager && (roles.router && config.router.is_some() || roles.dhcp && config.dhcp.is_some()) {
        bail!(
            "on the embedded store the router and the DHCP server follow the manager of their own process: add \
             manager to --roles, or keep the state in etcd (--store etcd://...)"
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    // With a router (in this process or, with a shared configuration, another), B takes flows
    // once it answers the router's probe for X.
    let limits = Limits { router_reports: config.router.is_some(), policy, ..Limits::default() };
    let manager = Manager::new(Inventory::new(store.clone()), limits);
    let (heard_tx, heard_rx) = std::sync::mpsc::channel::<Heard>();
    let mut threads: Vec<JoinHandle<anyhow::Result<()>>> = Vec::new();
    let mut outputs = Outputs { router: None, dhcp: None, router_status: Default::default() };
    let shared_dhcp: parts::SharedDhcp = Default::default();
    let router_health = PartState::new("router");
    let dhcp_health = PartState::new("dhcp");
    let run_router = roles.router && config.router.is_some();
    let run_dhcp = roles.dhcp && config.dhcp.is_some();
    let mut view = None;
    let started = (|| -> anyhow::Result<()> {
        if roles.manager && embedded {
            manage::watch_store(&store, heard_tx.clone(), Arc::clone(&stop))?;
        }
        if let Some(router) = config.router.as_ref().filter(|_| run_router) {
            // Its reports go to the manager of this process, or into the store.
            let (heard, reports) = if embedded { (heard_tx.clone(), None) } else { split_channel() };
            let setup = router.setup(&name)?;
            let vms = setup.vms.iter().map(|v| v.id.clone()).collect();
            // In a group, the router forwards only while the keeper holds the group's lease.
            let group = match &setup.group {
                Some(_) if embedded => bail!(
                    "[router] group: a router group keeps its lease in a shared store: keep the state in etcd \
                     (--store etcd://...)"
                ),
                Some(g) => {
                    let (news_tx, news_rx) = std::sync::mpsc::channel();
                    let link = group::GroupLink::default();
                    let mut ports = vec![setup.provider.clone()];
                    ports.extend(setup.vms.iter().map(|v| v.interface.clone()));
                    let names = (g.group.clone(), g.name.clone());
                    let keeper = group::keep(store.clone(), names, ports, news_tx, link.clone(), Arc::clone(&stop))?;
                    threads.push(keeper);
                    Some((news_rx, link))
                }
                None => None,
            };
            let (feed, thread) = parts::start_router(
                setup,
                (router.status_file.clone(), group),
                heard,
                router_health.clone(),
                Arc::clone(&stop),
            )?;
            threads.push(thread);
            match reports {
                None => outputs.router = Some(Outputs::local_router(feed)),
                Some(reports) => {
                    let s = store.clone();
                    let health = router_health.clone();
                    threads.push(remote::router_publishes(
                        s,
                        (name.clone(), vms),
                        reports,
                        health,
                        clock::unix_ms,
                        Arc::clone(&stop),
                    )?);
                    threads.push(remote::router_follows(store.clone(), &name, feed, Arc::clone(&stop))?);
                }
            }
        }
        if let Some(mut dhcp) = config.dhcp.clone().filter(|_| run_dhcp) {
            if !dhcp.reservations.is_empty() || !dhcp.migrations.is_empty() {
                bail!("[dhcp]: reservations and migrations come from the inventory, not the configuration");
            }
            if dhcp.lease_store.is_relative() {
                dhcp.lease_store = data_dir.join(&dhcp.lease_store);
            }
            let (tx, rx) = std::sync::mpsc::channel();
            // The first feed is applied before the first request is answered.
            let first = if embedded { manager.dhcp()? } else { stored_feed(&store) };
            let (heard, events) = if embedded { (heard_tx.clone(), None) } else { split_channel() };
            let log = files::append_private(&data_dir.join("dhcp-events.jsonl"))?;
            let reports = parts::DhcpReports { shared: shared_dhcp.clone(), health: dhcp_health.clone() };
            threads.push(parts::start_dhcp(dhcp, first, rx, heard, reports, log, Arc::clone(&stop))?);
            match events {
                None => outputs.dhcp = Some(Outputs::local_dhcp(tx)),
                Some(events) => {
                    let both = (shared_dhcp.clone(), dhcp_health.clone());
                    threads.push(remote::dhcp_publishes(
                        store.clone(),
                        name.clone(),
                        events,
                        both,
                        clock::unix_ms,
                        Arc::clone(&stop),
                    )?);
                    threads.push(remote::dhcp_follows(store.clone(), tx, Arc::clone(&stop))?);
                }
            }
        }
        if roles.api && !embedded {
            let (v, thread) = PartsView::follow(store.clone(), Arc::clone(&stop))?;
            view = Some(v);
            threads.push(thread);
        }
        Ok(())
    })();
    drop(heard_tx);
    if let Err(e) = started {
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            let _ = t.join();
        }
        return Err(e);
    }
    let local_health: Vec<_> = [(run_router, router_health), (run_dhcp, dhcp_health)]
        .into_iter()
        .filter_map(|(runs, health)| runs.then_some(health))
        .collect();
    let api_parts = match &view {
        Some(view) => remote_parts(&config, view, local_health),
        None => local_parts(&config, &name, &shared_dhcp, &outputs.router_status, local_health),
    };
    let manager_thread = match (roles.manager, embedded) {
        (false, _) => None,
        // Alone on its store: it leads.
        (true, true) => {
            let stop = Arc::clone(&stop);
            Some(std::thread::Builder::new().name("manager".into()).spawn(move || {
                let keep_going = || !stop.load(Ordering::Relaxed);
                manage::manage(&manager, &heard_rx, &outputs, &retention, &keep_going, clock::unix_ms);
            })?)
        }
        (true, false) => {
            let (stop, store, name) = (Arc::clone(&stop), store.clone(), name.clone());
            Some(std::thread::Builder::new().name("manager".into()).spawn(move || {
                super::lead::campaign_and_manage(store, &name, limits, &retention, &stop);
            })?)
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let result = runtime.block_on(async {
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        };
        if !roles.api {
            eprintln!("ipshadow serve: {name}: running without the API");
            shutdown.await;
            return Ok(());
        }
        let state = ApiState::new(store, tokens)
            .with_clock(clock::unix_ms)
            .with_parts(api_parts)
            .with_policy(policy)
            .with_admission(admission);
        transport::serve_api(listen, transport, &data_dir, state, shutdown).await
    });
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    if manager_thread.is_some_and(|t| t.join().is_err()) {
        failures.push("the manager thread panicked".to_owned());
    }
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("{e:#}")),
            Err(_) => failures.push("a part's thread panicked".to_owned()),
        }
    }
    // Not eprintln!: a closed stderr must not turn a clean stop into a panic.
    let _ = writeln!(std::io::stderr(), "ipshadow serve: stopped");
    result?;
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// A channel whose sending end a part gets and whose receiving end a publisher reads.
fn split_channel() -> (std::sync::mpsc::Sender<Heard>, Option<std::sync::mpsc::Receiver<Heard>>) {
    let (tx, rx) = std::sync::mpsc::channel();
    (tx, Some(rx))
}

/// The DHCP feed the leading manager last wrote (none yet: an empty one).
fn stored_feed<S: Store>(store: &S) -> parts::DhcpFeed {
    let feed =
        store.get(bus::DHCP_FEED).ok().flatten().and_then(|kv| serde_json::from_slice::<bus::DhcpFeed>(&kv.value).ok());
    feed.map(|f| (f.reservations, f.plans)).unwrap_or_default()
}

/// What the API shows of the parts of this process.
fn local_parts(
    config: &ServeConfig,
    name: &str,
    shared_dhcp: &parts::SharedDhcp,
    router_status: &Arc<Mutex<Option<ipshadow_contracts::router::Status>>>,
    health: Vec<Arc<PartState>>,
) -> Parts {
    Parts {
        lease_end: config.dhcp.is_some().then(|| {
            let ends = shared_dhcp.clone();
            Arc::new(move |ip| ends.lock().ok().and_then(|e| e.lease_ends.get(&ip).copied())) as LeaseEndSource
        }),
        dhcp_status: config.dhcp.is_some().then(|| {
            let shared = shared_dhcp.clone();
            Arc::new(move || shared.lock().ok().map(|s| s.status.clone())) as DhcpStatusSource
        }),
        router_status: config.router.is_some().then(|| {
            let status = router_status.clone();
            Arc::new(move || status.lock().ok().and_then(|s| s.clone())) as RouterStatusSource
        }),
        routers: config.router.is_some().then(|| {
            let (status, name) = (router_status.clone(), name.to_owned());
            Arc::new(move || {
                let status = status.lock().ok().and_then(|s| s.clone());
                status.iter().map(|s| RouterSummary::of(&name, s)).collect()
            }) as RoutersSource
        }),
        health: Some(Arc::new(move || health.iter().map(|p| p.health()).collect())),
    }
}

/// What the API shows of the parts of every process, from their reports in the store; the
/// health is of this process's parts (its `/healthz` says whether this process is well). As
/// on one host, a part the configuration has no section for is not shown (nor counted on: a VM
/// may be in several migrations at once when no DHCP server leases it one address).
fn remote_parts(config: &ServeConfig, view: &Arc<Mutex<PartsView>>, health: Vec<Arc<PartState>>) -> Parts {
    let (v1, v2, v3, v4) = (view.clone(), view.clone(), view.clone(), view.clone());
    Parts {
        lease_end: config
            .dhcp
            .is_some()
            .then(|| Arc::new(move |ip| v1.lock().ok().and_then(|v| v.lease_end(ip))) as LeaseEndSource),
        dhcp_status: config
            .dhcp
            .is_some()
            .then(|| Arc::new(move || v2.lock().ok().and_then(|v| v.dhcp_status())) as DhcpStatusSource),
        router_status: config
            .router
            .is_some()
            .then(|| Arc::new(move || v3.lock().ok().and_then(|v| v.router_status())) as RouterStatusSource),
        routers: config
            .router
            .is_some()
            .then(|| Arc::new(move || v4.lock().map(|v| v.routers()).unwrap_or_default()) as RoutersSource),
        health: Some(Arc::new(move || health.iter().map(|p| p.health()).collect())),
    }
}

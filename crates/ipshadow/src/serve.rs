//! `ipshadow serve`: the network manager and its REST API in one process, on the embedded store.
//! With no arguments it starts on MISSION.md's defaults: the API on 127.0.0.1:7480, data in
//! `./ipshadow-data/`, the admin token from `IPSHADOW_ADMIN_TOKEN` (or generated once, kept in
//! the data folder with mode 0600, and its path printed). The manager moves migrations on as time
//! passes; the DHCP server and the router join this process in the next steps of issue 6.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use clap::Args;
use ipshadow_control::RedbStore;
use ipshadow_control::api::{ApiState, TokenTable};
use ipshadow_control::inventory::Inventory;
use ipshadow_control::manager::Manager;
use ipshadow_control::orchestrator::{Input, Limits};
use serde::Deserialize;

/// Options of `ipshadow serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Configuration file (TOML: `listen`, `data_dir`, `[[tenants]] name, token`); without it
    /// every default applies.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// The configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServeConfig {
    /// Where the API listens.
    listen: Option<SocketAddr>,
    /// Where the store and the generated admin token live.
    data_dir: Option<PathBuf>,
    /// Tenants and their bearer tokens.
    #[serde(default)]
    tenants: Vec<TenantConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantConfig {
    name: String,
    token: String,
}

/// The default API address.
const DEFAULT_LISTEN: &str = "127.0.0.1:7480";
/// How often the manager looks at its migrations.
const MANAGER_PERIOD: Duration = Duration::from_millis(200);

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// The admin token: from the environment, else from the data folder, else a new one written
/// there readable by its owner only.
fn admin_token(data_dir: &Path) -> anyhow::Result<String> {
    if let Ok(token) = std::env::var("IPSHADOW_ADMIN_TOKEN") {
        if token.len() < 16 {
            bail!("IPSHADOW_ADMIN_TOKEN is shorter than 16 characters");
        }
        return Ok(token);
    }
    let path = data_dir.join("admin-token");
    if let Ok(token) = std::fs::read_to_string(&path) {
        return Ok(token.trim().to_owned());
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("reading /dev/urandom")?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{token}")?;
    eprintln!("ipshadow serve: generated an admin token in {} (mode 0600)", path.display());
    Ok(token)
}

/// Runs the manager and the API until SIGTERM or SIGINT.
pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            toml::from_str::<ServeConfig>(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => ServeConfig::default(),
    };
    let listen = match config.listen {
        Some(addr) => addr,
        None => DEFAULT_LISTEN.parse()?,
    };
    let data_dir = config.data_dir.clone().unwrap_or_else(|| PathBuf::from("ipshadow-data"));
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let store = RedbStore::open(&data_dir.join("store.redb"))?;
    let mut tokens = TokenTable::new(admin_token(&data_dir)?);
    for t in &config.tenants {
        if t.token.len() < 16 {
            bail!("tenant {}: token shorter than 16 characters", t.name);
        }
        tokens = tokens.with_tenant(t.token.clone(), t.name.clone());
    }

    let stop = Arc::new(AtomicBool::new(false));
    let manager = {
        let (store, stop) = (store.clone(), Arc::clone(&stop));
        std::thread::Builder::new().name("manager".into()).spawn(move || manage(store, &stop))?
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
        eprintln!(
            "ipshadow serve: API on http://{}, data in {}",
            listener.local_addr()?,
            data_dir.display()
        );
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        };
        ipshadow_control::api::serve(listener, ApiState::new(store, tokens), shutdown).await?;
        anyhow::Ok(())
    });
    stop.store(true, Ordering::Relaxed);
    let manager_result = manager.join();
    // Not eprintln!: a closed stderr must not turn a clean stop into a panic.
    let _ = writeln!(std::io::stderr(), "ipshadow serve: stopped");
    result?;
    match manager_result {
        Ok(r) => r,
        Err(_) => bail!("the manager thread panicked"),
    }
}

/// The manager's loop: pending migrations move on, time-based decisions are taken. Everything
/// it knows is in the store, so a restart resumes exactly here.
fn manage(store: RedbStore, stop: &AtomicBool) -> anyhow::Result<()> {
    let manager = Manager::new(Inventory::new(store), Limits::default());
    while !stop.load(Ordering::Relaxed) {
        let now = unix_ms();
        manager.start_pending(now)?;
        manager.handle(&Input::Tick, now)?;
        std::thread::sleep(MANAGER_PERIOD);
    }
    Ok(())
}

//! `ipshadow serve`: the network manager, its REST API, and (when configured) the DHCP server
//! and the Shadow Router in one process, on the embedded store. With no arguments it starts on
//! MISSION.md's defaults: the API on 127.0.0.1:7480, data in `./ipshadow-data/`, the admin token
//! from `IPSHADOW_ADMIN_TOKEN` (or generated once, kept in the data folder with mode 0600, and
//! its path printed); without `[router]` and `[dhcp]` sections only the API and the manager run.
//!
//! Data flows one way: API -> store -> manager -> router / DHCP server (each follows what the
//! manager projects from the store); what the parts hear comes back to the manager on one
//! channel. Everything durable is in the store and the DHCP lease store, so a process killed
//! at any moment resumes every migration where it was recorded.

mod admit;
mod clock;
mod files;
mod group;
mod lead;
mod manage;
mod parts;
mod remote;
mod roles;
#[cfg(test)]
mod slices;
mod start;
mod supervise;
mod transport;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use ipshadow_control::RedbStore;
use ipshadow_control::api::TokenTable;
use ipshadow_control::reassign::{DeadlinePolicy, PolicyError};
use serde::Deserialize;

/// Options of `ipshadow serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Configuration file (TOML: `listen`, `data_dir`, `tls_cert`, `tls_key`,
    /// `allow_plain_http`, `[[tenants]] name, token, prefixes`); without it every default applies.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where the state is kept: `redb` (the default: `store.redb` in the data folder, every part
    /// in this process) or `etcd://host:port[,host:port...][/key-prefix]` (key prefix
    /// `/ipshadow` by default), where parts run as processes of their own (`--roles`).
    #[arg(long, value_name = "URL", default_value = "redb")]
    store: String,
    /// The parts this process runs, comma-separated (default: all; the router and the DHCP
    /// server only when the configuration has their section). On etcd, managers campaign and
    /// one leads.
    #[arg(long, value_delimiter = ',', value_name = "ROLE,...")]
    roles: Option<Vec<roles::Role>>,
    /// This process's name among the parts in the store (default: host name and process id).
    #[arg(long)]
    name: Option<String>,
}

/// The configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServeConfig {
    /// Where the API listens.
    listen: Option<SocketAddr>,
    /// Where the store and the generated admin token live.
    data_dir: Option<PathBuf>,
    /// The API's certificate chain (PEM): with `tls_key`, the API is served over HTTPS.
    tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM).
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a `listen` address that is not loopback (refused without it).
    #[serde(default)]
    allow_plain_http: bool,
    /// Tenants and their bearer tokens.
    #[serde(default)]
    tenants: Vec<TenantConfig>,
    /// The Shadow Router in this process (needs root).
    router: Option<RouterConfig>,
    /// The DHCP server in this process: `ipshadow dhcp`'s configuration without `reservations`
    /// and `migrations` (the inventory's VMs and the migrations give those); a relative
    /// `lease_store` is inside `data_dir`.
    dhcp: Option<ipshadow_dhcp::DhcpConfig>,
    /// Limits on the deadlines users may request, and how ramps are fitted to them.
    #[serde(default)]
    policy: PolicyConfig,
    /// How long ended migrations are kept.
    #[serde(default)]
    retention: RetentionConfig,
}

/// The `[retention]` section: an ended migration is removed `ended_migration_days` after it
/// ended, and only the newest `max_ended_migrations` are kept; running ones are never removed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RetentionConfig {
    ended_migration_days: u64,
    max_ended_migrations: usize,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        let r = ipshadow_control::retention::Retention::default();
        Self { ended_migration_days: r.max_age.as_secs() / 86_400, max_ended_migrations: r.max_ended }
    }
}

impl RetentionConfig {
    fn retention(&self) -> anyhow::Result<ipshadow_control::retention::Retention> {
        let secs =
            self.ended_migration_days.checked_mul(86_400).context("[retention]: ended_migration_days is too large")?;
        Ok(ipshadow_control::retention::Retention {
            max_age: Duration::from_secs(secs),
            max_ended: self.max_ended_migrations,
        })
    }
}

/// The `[policy]` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PolicyConfig {
    /// Shortest requested deadline, seconds from the request.
    min_deadline_secs: u64,
    /// Longest requested deadline, seconds from the request.
    max_deadline_secs: u64,
    /// Deadline when nothing was requested and the source's lease end is unknown, seconds.
    default_deadline_secs: u64,
    /// Share of the time to the deadline the default ramp is fitted into, in (0, 1].
    plan_share: f64,
    /// Time B's DHCP client is given to bind the address before the ramp starts, seconds: a
    /// requested ramp must reach 100 % within the time to the deadline minus this.
    ready_allowance_secs: u64,
    /// The router's closing window before the deadline, seconds: every new flow to B, A's last
    /// flows closed with a FIN at an idle moment; the default ramp ends before it.
    close_grace_secs: u64,
    /// The most the manager may move a deadline later so that A's forecast drain fits, seconds.
    max_extension_secs: u64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        let d = DeadlinePolicy::default();
        Self {
            min_deadline_secs: d.min_ms / 1000,
            max_deadline_secs: d.max_ms / 1000,
            default_deadline_secs: d.default_ms / 1000,
            plan_share: d.plan_share,
            ready_allowance_secs: d.ready_allowance_ms / 1000,
            close_grace_secs: d.close_grace_ms / 1000,
            max_extension_secs: d.max_extension_ms / 1000,
        }
    }
}

impl PolicyConfig {
    fn policy(&self) -> anyhow::Result<DeadlinePolicy> {
        let p = self;
        let ms = |key: &str, secs: u64| secs.checked_mul(1000).with_context(|| format!("[policy]: {key} is too large"));
        let policy = DeadlinePolicy {
            min_ms: ms("min_deadline_secs", p.min_deadline_secs)?,
            max_ms: ms("max_deadline_secs", p.max_deadline_secs)?,
            default_ms: ms("default_deadline_secs", p.default_deadline_secs)?,
            plan_share: p.plan_share,
            ready_allowance_ms: ms("ready_allowance_secs", p.ready_allowance_secs)?,
            close_grace_ms: ms("close_grace_secs", p.close_grace_secs)?,
            max_extension_ms: ms("max_extension_secs", p.max_extension_secs)?,
        };
        // The library names the concepts; the keys are this file's (`_secs`).
        policy.validate().map_err(|e| match e {
            PolicyError::DeadlineOrder => {
                anyhow::anyhow!("[policy]: need 0 < min_deadline_secs <= default_deadline_secs <= max_deadline_secs")
            }
            PolicyError::PlanShare(share) => anyhow::anyhow!("[policy]: plan_share must be within (0, 1], not {share}"),
            PolicyError::NoRoomForRamp { ramp_ms, .. } => anyhow::anyhow!(
                "[policy]: min_deadline_secs must be at least ready_allowance_secs + {} (the default ramp at its \
                 shortest holds)",
                ramp_ms.div_ceil(1000)
            ),
            other => anyhow::anyhow!("[policy]: {other}"),
        })?;
        Ok(policy)
    }
}

/// The `[router]` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouterConfig {
    /// Interface towards the clients.
    provider: String,
    /// The VMs' gateway address.
    gateway: std::net::Ipv4Addr,
    /// One port per VM: `{ id, interface, mac? }`.
    vms: Vec<VmPortConfig>,
    /// Most flows tracked.
    #[serde(default = "default_max_flows")]
    max_flows: usize,
    /// Most client addresses in the provider-side neighbour table (the one heard from longest
    /// ago is forgotten for a new one).
    #[serde(default = "default_max_neighbours")]
    max_neighbours: usize,
    /// A client not heard from for this long is forgotten (asked for again by ARP when a VM
    /// sends to it), seconds.
    #[serde(default = "default_neighbour_age_secs")]
    neighbour_age_secs: u64,
    /// Leave the host kernel's processing of the router's frames on.
    #[serde(default)]
    kernel_sees_frames: bool,
    /// Poll the rings in a loop (one CPU busy).
    #[serde(default)]
    busy_poll: bool,
    /// Also write each status report to this file (atomically), for tools that read files.
    status_file: Option<PathBuf>,
    /// The router group this router belongs to (needs the store on etcd): one member of a
    /// group forwards, the others stand by and take over when it fails.
    #[serde(default)]
    group: Option<String>,
    /// How frames are forwarded: "auto" (the default: the XDP fast path when the interfaces take
    /// it, else AF_PACKET, said in one log line), "xdp" (or fail), "af-packet".
    #[serde(default)]
    data_path: DataPathConfig,
    /// Where the XDP fast path pins its flows (a directory on a bpffs; default under
    /// /run/ipshadow/bpf).
    #[serde(default)]
    bpf_dir: Option<PathBuf>,
}

/// `[router] data_path`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum DataPathConfig {
    #[default]
    Auto,
    Xdp,
    AfPacket,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmPortConfig {
    id: String,
    interface: String,
    mac: Option<String>,
}

fn default_max_flows() -> usize {
    1 << 20
}

fn default_max_neighbours() -> usize {
    ipshadow_core::neighbours::NeighbourConfig::default().max_entries
}

fn default_neighbour_age_secs() -> u64 {
    ipshadow_core::neighbours::NeighbourConfig::default().max_age.as_secs()
}

impl RouterConfig {
    /// The router's setup; `name`: the process's `--name`, its name in its group.
    fn setup(&self, name: &str) -> anyhow::Result<ipshadow_dataplane::RouterSetup> {
        if self.max_neighbours == 0 || self.neighbour_age_secs == 0 {
            bail!("[router]: max_neighbours and neighbour_age_secs must be at least 1");
        }
        if let Some(group) = &self.group {
            let ok = !group.is_empty()
                && group.len() <= ipshadow_core::ha::wire::MAX_NAME
                && group.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !ok {
                bail!("[router]: group {group:?}: 1-64 letters, digits, '-', '_' or '.'");
            }
        }
        let vms = self
            .vms
            .iter()
            .map(|v| {
                let mac = v.mac.as_deref().map(ipshadow_dataplane::runtime::parse_mac).transpose()?;
                Ok(ipshadow_dataplane::VmPort { id: v.id.as_str().into(), interface: v.interface.clone(), mac })
            })
            .collect::<anyhow::Result<_>>()
            .context("in [router]")?;
        Ok(ipshadow_dataplane::RouterSetup {
            provider: self.provider.clone(),
            vms,
            gateway: self.gateway,
            max_flows: self.max_flows,
            neighbours: ipshadow_core::neighbours::NeighbourConfig {
                max_entries: self.max_neighbours,
                max_age: Duration::from_secs(self.neighbour_age_secs),
            },
            kernel_sees_frames: self.kernel_sees_frames,
            busy_poll: self.busy_poll,
            status_period: Duration::from_millis(200),
            group: self
                .group
                .as_ref()
                .map(|group| ipshadow_dataplane::GroupSetup { group: group.clone(), name: name.to_owned() }),
            data_path: match self.data_path {
                DataPathConfig::Auto => ipshadow_dataplane::runtime::DataPath::Auto,
                DataPathConfig::Xdp => ipshadow_dataplane::runtime::DataPath::Xdp,
                DataPathConfig::AfPacket => ipshadow_dataplane::runtime::DataPath::AfPacket,
            },
            bpf_dir: self.bpf_dir.clone(),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantConfig {
    name: String,
    token: String,
    /// The prefixes the tenant may claim addresses in (none: no address; see [`admit`]).
    #[serde(default)]
    prefixes: Vec<ipshadow_control::admission::Ipv4Net>,
}

/// The default API address.
const DEFAULT_LISTEN: &str = "127.0.0.1:7480";

/// Opens the store. A process killed a moment ago may still hold its lock while its last
/// threads exit (a supervisor restarting `serve` at once meets this): wait a little for it.
fn open_store(path: &Path) -> anyhow::Result<RedbStore> {
    let give_up = std::time::Instant::now() + Duration::from_secs(10);
    let mut said = false;
    loop {
        match RedbStore::open(path) {
            Err(ipshadow_control::StoreError::Locked { .. }) if std::time::Instant::now() < give_up => {
                if !said {
                    eprintln!("ipshadow serve: {} is locked by another process; waiting up to 10 s", path.display());
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            result => return Ok(result?),
        }
    }
}

/// Runs this process's parts until SIGTERM or SIGINT.
pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            toml::from_str::<ServeConfig>(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => ServeConfig::default(),
    };
    let roles = roles::Roles::from_args(args.roles.as_deref())?;
    let choice = roles::StoreChoice::parse(&args.store)?;
    let name = args.name.clone().unwrap_or_else(roles::default_name);
    let listen = match config.listen {
        Some(addr) => addr,
        None => DEFAULT_LISTEN.parse()?,
    };
    let transport = transport::TransportConfig {
        tls_cert: config.tls_cert.clone(),
        tls_key: config.tls_key.clone(),
        allow_plain_http: config.allow_plain_http,
    }
    .transport(listen)?;
    let data_dir = config.data_dir.clone().unwrap_or_else(|| PathBuf::from("ipshadow-data"));
    files::data_dir(&data_dir)?;
    let mut tokens = TokenTable::new(files::admin_token(&data_dir)?);
    for t in &config.tenants {
        if t.token.len() < 16 {
            bail!("tenant {}: token shorter than 16 characters", t.name);
        }
        tokens = tokens.with_tenant(t.token.clone(), t.name.clone());
    }
    let policy = config.policy.policy()?;
    let retention = config.retention.retention()?;
    let admission = admit::admission(&config)?;
    let setup = start::Setup {
        config,
        roles,
        name,
        listen,
        transport,
        data_dir: data_dir.clone(),
        tokens,
        policy,
        retention,
        admission,
    };
    match choice {
        roles::StoreChoice::Embedded => {
            let store_path = data_dir.join("store.redb");
            let store = open_store(&store_path)?;
            // redb creates the file with the umask's mode.
            files::private_file(&store_path)?;
            start::run(store, true, setup)
        }
        roles::StoreChoice::Etcd { endpoints, prefix } => {
            let store = ipshadow_control::EtcdStore::connect(&endpoints, &prefix)
                .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?;
            eprintln!("ipshadow serve: {}: store on etcd at {} under {prefix}", setup.name, endpoints.join(","));
            start::run(store, false, setup)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml_text: &str) -> anyhow::Result<DeadlinePolicy> {
        let config: ServeConfig = toml::from_str(toml_text)?;
        config.policy.policy()
    }

    /// The `[policy]` keys of issue 12: defaults, and each bad value refused naming its key.
    #[test]
    fn plan_share_and_ready_allowance_are_read_and_checked() -> anyhow::Result<()> {
        assert_eq!(policy("")?, DeadlinePolicy::default());
        // The lab's shortest deadline is accepted with the default allowance.
        let min = ipshadow_lab::lab::control::MIN_DEADLINE_SECS;
        assert_eq!(
            policy(&format!("[policy]\nmin_deadline_secs = {min}\ndefault_deadline_secs = 60\n"))?.min_ms,
            min * 1000
        );
        let p = policy("[policy]\nplan_share = 0.25\nready_allowance_secs = 5\n")?;
        assert_eq!((p.plan_share, p.ready_allowance_ms), (0.25, 5_000));
        let p = policy("[policy]\nclose_grace_secs = 20\nmax_extension_secs = 600\n")?;
        assert_eq!((p.close_grace_ms, p.max_extension_ms), (20_000, 600_000));
        for (text, key) in [
            ("[policy]\nplan_share = 0.0\n", "plan_share"),
            ("[policy]\nplan_share = 1.5\n", "plan_share"),
            ("[policy]\nplan_share = nan\n", "plan_share"),
            // 12 s leaves 2 s after B's 10 s: the default ramp needs 4 s at 1 s per step.
            ("[policy]\nmin_deadline_secs = 12\n", "ready_allowance_secs + 4"),
            ("[policy]\nready_allowance_secs = 18446744073709551615\n", "ready_allowance_secs is too large"),
            ("[policy]\nclose_grace_secs = 18446744073709551615\n", "close_grace_secs is too large"),
            ("[policy]\nmax_extension_secs = 18446744073709551615\n", "max_extension_secs is too large"),
        ] {
            let e = policy(text).expect_err(text).to_string();
            assert!(e.contains(key), "{text:?}: {e}");
        }
        Ok(())
    }
}

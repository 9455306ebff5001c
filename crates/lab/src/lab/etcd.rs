//! The lab on etcd (`ipshadow lab up --etcd 3`): an etcd cluster (Debian's etcd-server), one
//! member per namespace on a control segment of its own, and the parts of `ipshadow serve` as
//! processes of their own in the router's namespace: the router, the DHCP server, two managers
//! (one leads) and two API nodes.
//!
//! ```text
//!  etcd e1 (ns e1) ─┐
//!  etcd e2 (ns e2) ─┼─ control bridge br1 (ns sw) ── ctl: router's namespace (10.99.0.2)
//!  etcd e3 (ns e3) ─┘     10.99.0.11-13                 serve --roles router | dhcp | manager x2 | api x2
//! ```
//! The clients' provider segment and the VM segments are the one-host lab's; the control
//! segment carries only the parts' traffic to etcd, so cutting a member off (its link down) or
//! killing it touches no client's frame.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::control::API;
use super::services::{Lab, alive, exe};
use super::topology::{ip_in, veth};

/// The router namespace's address on the control segment.
const CONTROL_ROUTER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
/// Where the API's second node listens in the router's namespace.
pub const API2: &str = "127.0.0.1:7481";
/// The port etcd serves clients on.
const CLIENT_PORT: u16 = 2379;
/// The port etcd members talk to each other on.
const PEER_PORT: u16 = 2380;
/// The most members the lab runs.
pub const MAX_MEMBERS: u8 = 7;
/// How long etcd and the parts may take to start on a slow machine.
const START_WITHIN: Duration = Duration::from_secs(30);

/// A part of `serve` the etcd lab runs: pid-file name, roles, `--name`, configuration file.
const PARTS: [(&str, &str, &str, &str); 6] = [
    ("serve-m1", "manager", "m1", "serve.toml"),
    ("serve-m2", "manager", "m2", "serve.toml"),
    ("serve-api1", "api", "api1", "serve.toml"),
    ("serve-api2", "api", "api2", "serve-api2.toml"),
    ("serve-dhcp", "dhcp", "dhcp", "serve.toml"),
    ("serve-router", "router", "router", "serve.toml"),
];

/// The address of member `i` (1-based).
pub fn member_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, 0, 10 + i)
}

impl Lab {
    /// Members of the lab's etcd cluster (0: the one-host lab on the embedded store).
    pub fn etcd_members(&self) -> u8 {
        std::fs::read_to_string(self.dir.join("etcd-members")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
    }

    /// The pid-file names of the processes of the lab's control plane (and of its routers).
    pub fn control_processes(&self) -> Vec<String> {
        match self.etcd_members() {
            0 => vec!["serve".to_owned()],
            n => {
                let mut all: Vec<String> = (1..=n).map(|i| format!("etcd-{i}")).collect();
                all.extend(self.parts().map(|p| p.0.to_owned()));
                if self.routers() >= 2 {
                    all.extend(self.router_names().iter().map(|name| self.router_process_of(name)));
                }
                all
            }
        }
    }

    /// The parts of `serve` that run in the control plane's namespace: all of them, or all but
    /// the router with a router group (its routers run in hosts of their own).
    fn parts(&self) -> impl Iterator<Item = &'static (&'static str, &'static str, &'static str, &'static str)> {
        let group = self.routers() >= 2;
        PARTS.iter().filter(move |p| !(group && p.2 == "router"))
    }

    /// The pid-file name of the process that runs the router (with a router group: the active
    /// one, or the first while none is).
    pub fn router_process(&self) -> String {
        let name = self.active_router().unwrap_or_else(|| self.router_names().swap_remove(0));
        self.router_process_of(&name)
    }

    /// `--store` of the lab's parts.
    pub fn store_url(&self) -> String {
        let hosts: Vec<String> = (1..=self.etcd_members()).map(|i| format!("{}:{CLIENT_PORT}", member_ip(i))).collect();
        format!("etcd://{}", hosts.join(","))
    }

    /// Builds the control segment and starts the etcd cluster and the parts; returns once the
    /// router reports and the first API node answers.
    pub(super) fn start_on_etcd(&self, members: u8) -> anyhow::Result<()> {
        if !(1..=MAX_MEMBERS).contains(&members) {
            bail!("--etcd: 1 to {MAX_MEMBERS} members");
        }
        std::fs::write(self.dir.join("etcd-members"), members.to_string())?;
        let sw = self.ns("sw");
        ip_in(&sw, &["link", "add", "br1", "type", "bridge"])?;
        ip_in(&sw, &["link", "set", "br1", "up"])?;
        veth(&sw, "rctl", &self.ns("r"), "ctl")?;
        ip_in(&sw, &["link", "set", "rctl", "master", "br1"])?;
        ip_in(&self.ns("r"), &["addr", "add", &format!("{CONTROL_ROUTER}/24"), "dev", "ctl"])?;
        if self.routers() >= 2 {
            for i in 1..=self.routers() {
                let (port, host) = (format!("r{i}c"), self.ns(&format!("r{i}")));
                veth(&sw, &port, &host, "ctl")?;
                ip_in(&sw, &["link", "set", &port, "master", "br1"])?;
                let address = Ipv4Addr::new(10, 99, 0, 2 + i);
                ip_in(&host, &["addr", "add", &format!("{address}/24"), "dev", "ctl"])?;
            }
        }
        for i in 1..=members {
            let ns = self.ns(&format!("e{i}"));
            super::topology::add_ns(&ns)?;
            veth(&sw, &format!("e{i}"), &ns, "eth0")?;
            ip_in(&sw, &["link", "set", &format!("e{i}"), "master", "br1"])?;
            ip_in(&ns, &["addr", "add", &format!("{}/24", member_ip(i)), "dev", "eth0"])?;
        }
        for i in 1..=members {
            self.start_etcd_member(i)?;
        }
        self.wait_for_etcd()?;
        self.start_parts()
    }

    /// Starts (or starts again, on its data) member `i`.
    pub fn start_etcd_member(&self, i: u8) -> anyhow::Result<u32> {
        let members = self.etcd_members();
        let url = |i: u8, port: u16| format!("http://{}:{port}", member_ip(i));
        let cluster: Vec<String> = (1..=members).map(|j| format!("e{j}={}", url(j, PEER_PORT))).collect();
        let data = self.dir.join(format!("etcd/e{i}"));
        let fresh = !data.exists();
        let (client, peer, name) = (url(i, CLIENT_PORT), url(i, PEER_PORT), format!("e{i}"));
        let data = data.display().to_string();
        let cluster = cluster.join(",");
        let mut args = vec!["--name", &name, "--data-dir", &data, "--listen-client-urls", &client];
        args.extend(["--advertise-client-urls", &client, "--listen-peer-urls", &peer]);
        args.extend(["--initial-advertise-peer-urls", &peer, "--initial-cluster", &cluster]);
        args.extend(["--initial-cluster-token", &self.prefix]);
        if fresh {
            args.extend(["--initial-cluster-state", "new"]);
        }
        let exe = which("etcd").context("etcd is not installed (Debian package etcd-server)")?;
        self.spawn(&self.ns(&format!("e{i}")), &format!("etcd-{i}"), &exe, &args, None)
    }

    /// Waits until every member says it is healthy.
    fn wait_for_etcd(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_WITHIN;
        for i in 1..=self.etcd_members() {
            let url = format!("http://{}:{CLIENT_PORT}/health", member_ip(i));
            loop {
                let healthy = self
                    .http_in_router_ns("GET", &url, None)
                    .is_ok_and(|(code, v)| code == 200 && v["health"] == "true");
                if healthy {
                    break;
                }
                if !self.pid(&format!("etcd-{i}")).is_some_and(alive) || Instant::now() > deadline {
                    bail!(
                        "etcd member e{i} did not become healthy; see {}",
                        self.dir.join(format!("etcd-{i}.log")).display()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Starts every part of `serve` as a process of its own; returns once the router reports and
    /// the first API node answers.
    fn start_parts(&self) -> anyhow::Result<()> {
        let config = self.dir.join("serve.toml");
        let api2 = self.dir.join("serve-api2.toml");
        let text = std::fs::read_to_string(&config)?;
        std::fs::write(&api2, text.replace(&format!("listen = \"{API}\""), &format!("listen = \"{API2}\"")))?;
        for (process, ..) in self.parts() {
            self.start_part(process)?;
        }
        if self.routers() >= 2 {
            self.write_router_configs()?;
            for name in self.router_names() {
                self.start_router(&name)?;
            }
        }
        let deadline = Instant::now() + START_WITHIN;
        loop {
            // Each router reports under its own process id.
            let routers_up =
                self.router_statuses().iter().all(|r| r.status.as_ref().is_some_and(|s| Some(s.pid) == r.pid));
            if routers_up && self.api("GET", "/healthz", None).is_ok_and(|(code, _)| code == 200) {
                return Ok(());
            }
            if let Some(process) = self.control_processes().into_iter().find(|p| !self.pid(p).is_some_and(alive)) {
                bail!("{process} ended; see {}", self.dir.join(format!("{process}.log")).display());
            }
            if Instant::now() > deadline {
                bail!("the parts did not start within {START_WITHIN:?}; see {}/serve-*.log", self.dir.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts one part (again, after it was killed): `serve-m1`, `serve-router`, `serve-r2`...
    pub fn start_part(&self, process: &str) -> anyhow::Result<u32> {
        if let Some(router) = process.strip_prefix("serve-").filter(|_| self.routers() >= 2)
            && self.router_names().iter().any(|name| name == router)
        {
            return self.start_router(router);
        }
        let (_, role, name, file) =
            PARTS.iter().find(|p| p.0 == process).with_context(|| format!("no part {process} in the lab"))?;
        let file = self.dir.join(file).display().to_string();
        let store = self.store_url();
        let args = ["serve", "--config", &file, "--store", &store, "--roles", role, "--name", name];
        self.spawn(&self.ns("r"), process, &exe()?, &args, None)
    }

    /// The value of `key` in the lab's store, read from inside the router's namespace.
    pub fn store_get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let endpoints: Vec<String> =
            (1..=self.etcd_members()).map(|i| format!("http://{}:{CLIENT_PORT}", member_ip(i))).collect();
        self.in_router_ns(move || {
            // The store's threads are made from this one: they are in the namespace too.
            let store = ipshadow_control::EtcdStore::connect(&endpoints, ipshadow_control::DEFAULT_ETCD_PREFIX)?;
            Ok(ipshadow_control::Store::get(&store, key)?.map(|kv| kv.value))
        })
    }

    /// The name of the manager that leads now (`m1`, `m2`), as the election key says.
    pub fn leading_manager(&self) -> Option<String> {
        let value = self.store_get(ipshadow_control::bus::MANAGER_ELECTION).ok()??;
        String::from_utf8(value).ok()
    }

    /// Cuts member `i` off the control segment (its link on the bridge down), or puts it back.
    pub fn cut_etcd_member(&self, i: u8, cut: bool) -> anyhow::Result<()> {
        ip_in(&self.ns("sw"), &["link", "set", &format!("e{i}"), if cut { "down" } else { "up" }])?;
        Ok(())
    }

    /// The member etcd's members say leads (1-based), if they agree on one.
    pub fn etcd_leader(&self) -> Option<u8> {
        (1..=self.etcd_members()).find(|&i| {
            let url = format!("http://{}:{CLIENT_PORT}/v3/maintenance/status", member_ip(i));
            self.http_in_router_ns("POST", &url, Some(serde_json::json!({}))).is_ok_and(|(code, v)| {
                code == 200 && v["leader"].is_string() && v["leader"] == v["header"]["member_id"]
            })
        })
    }
}

/// Where `program` is on `PATH`.
fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}

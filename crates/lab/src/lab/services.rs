//! The lab's processes (`ipshadow serve` with the router and the DHCP server, traffic servers,
//! DHCP clients) and its files.
//! Every process is started by us with `ip netns exec`, its id kept in a pid file; `down` stops
//! those ids, then anything still inside the lab's namespaces (a DHCP client's daemon), then
//! removes the namespaces.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ipshadow_dataplane::Status;
use serde::Serialize;

use super::topology::{self, ip, ip_in};
use super::{SERVICE_PORT, X};

/// A lab, by prefix.
pub struct Lab {
    /// Prefix of its names.
    pub prefix: String,
    /// Its files: pid files, logs, configurations, the router's state directory.
    pub dir: PathBuf,
}

/// The DHCP clients a VM can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DhcpClient {
    /// ISC dhclient.
    Dhclient,
    /// dhcpcd (probes the address with ARP before binding, RFC 5227).
    Dhcpcd,
}

/// What `lab status` shows.
#[derive(Debug, Serialize)]
pub struct LabStatus {
    prefix: String,
    up: bool,
    namespaces: Vec<String>,
    processes: Vec<ProcessStatus>,
    addresses: Vec<(String, Vec<String>)>,
    router: Option<Status>,
    /// On etcd: the manager that leads (`m1`, `m2`).
    #[serde(skip_serializing_if = "Option::is_none")]
    manager_leader: Option<String>,
    /// On etcd: the member its members say leads (`e2`).
    #[serde(skip_serializing_if = "Option::is_none")]
    etcd_leader: Option<String>,
    /// With a router group: each router and its part in the group.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    routers: Vec<super::RouterReport>,
}

#[derive(Debug, Serialize)]
struct ProcessStatus {
    name: String,
    pid: Option<u32>,
    alive: bool,
}

/// The processes `up` starts besides the control plane's, by pid-file name.
const SERVICES: [&str; 2] = ["server-a", "server-b"];
/// The processes the lab starts on request (`up --http`, DHCP clients), by pid-file name.
const OPTIONAL: [&str; 6] = ["nginx-a", "nginx-b", "dhclient-a", "dhclient-b", "dhcpcd-a", "dhcpcd-b"];

impl Lab {
    /// The lab named `prefix` (which is checked: it becomes part of namespace names).
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let ok = !prefix.is_empty()
            && prefix.len() <= 8
            && prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !prefix.starts_with('-');
        if !ok {
            bail!("bad prefix {prefix:?}: 1-8 letters, digits or '-'");
        }
        Ok(Self { prefix: prefix.to_owned(), dir: super::state_dir(prefix) })
    }

    /// The name of one of the lab's namespaces (`r`, `a`, `b`, `sw`, `c1`, ...).
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Fails with a clear message when not root.
    pub fn require_root(&self) -> anyhow::Result<()> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let root = status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
        if !root {
            bail!(
                "the lab needs root (network namespaces, AF_PACKET); without root, `ipshadow simulate` runs the same \
                 migration in a simulated network"
            );
        }
        Ok(())
    }

    /// Whether every namespace and service is there.
    pub fn is_up(&self) -> bool {
        let existing = topology::existing(&self.prefix);
        ["sw", "r", "a", "b", "c1"].iter().all(|n| existing.contains(&self.ns(n)))
            && self.services().iter().all(|s| self.pid(s).is_some_and(alive))
    }

    /// Every process `up` starts, by pid-file name.
    fn services(&self) -> Vec<String> {
        let mut all = self.control_processes();
        all.extend(SERVICES.iter().map(|s| (*s).to_owned()));
        all
    }

    /// Builds the lab from scratch and starts its services; `etcd`: members of an etcd cluster
    /// to keep the state in, with the parts as processes of their own (0: one `serve` process
    /// on the embedded store); `routers`: 1, or a router group of 2 to
    /// [`MAX_ROUTERS`](super::MAX_ROUTERS) router hosts (on etcd, one member if `etcd` is 0).
    pub fn up(
        &self,
        clients: u8,
        etcd: u8,
        routers: u8,
        refuse_xdp: bool,
        data_path: super::DataPathChoice,
    ) -> anyhow::Result<()> {
        if !(1..=super::MAX_ROUTERS).contains(&routers) {
            bail!("--routers: 1 to {}", super::MAX_ROUTERS);
        }
        self.down()?;
        std::fs::create_dir_all(self.dir.join("router")).with_context(|| format!("creating {}", self.dir.display()))?;
        let etcd = if routers >= 2 { etcd.max(1) } else { etcd };
        let result = std::fs::write(self.dir.join("routers"), routers.to_string())
            .and_then(|()| std::fs::write(self.dir.join("data-path"), data_path.config()))
            .context("writing the lab's router count and data path")
            .and_then(|()| self.mount_bpffs())
            .and_then(|()| self.build(clients, etcd, routers, refuse_xdp));
        if result.is_err() {
            // Leave nothing half made behind.
            let _ = self.down();
        }
        result
    }

    /// A bpffs for the routers' pinned flows (`<lab>/bpf/<router>`), mounted from the host's
    /// mount namespace: one a router mounted inside `ip netns exec` would go with its process,
    /// and a restarted router would not find its flows.
    fn mount_bpffs(&self) -> anyhow::Result<()> {
        let dir = self.dir.join("bpf");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let status = Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&dir).status().context("running mount")?;
        if !status.success() {
            bail!("mount -t bpf bpf {}: {status}", dir.display());
        }
        Ok(())
    }

    fn build(&self, clients: u8, etcd: u8, routers: u8, refuse_xdp: bool) -> anyhow::Result<()> {
        topology::build(&self.prefix, clients, routers, refuse_xdp)?;
        if etcd == 0 {
            self.start_serve()?;
        } else {
            self.write_serve_config()?;
            self.start_on_etcd(etcd)?;
        }
        self.register_inventory()?;
        let exe = exe()?;
        for vm in ["a", "b"] {
            let status = self.dir.join(format!("server-{vm}.json")).display().to_string();
            let listen = format!("0.0.0.0:{SERVICE_PORT}");
            let args = ["traffic", "serve", "--listen", &listen, "--status", &status];
            self.spawn(&self.ns(vm), &format!("server-{vm}"), &exe, &args, None)?;
        }
        self.write_dhclient_files()?;
        self.dhclient("a")?;
        self.wait_for_address("a", Duration::from_secs(20))
    }

    /// Runs a DHCP client in a VM (`a` or `b`) until it holds X.
    pub fn dhcp_client(&self, vm: &str, client: DhcpClient) -> anyhow::Result<()> {
        match client {
            DhcpClient::Dhclient => self.dhclient(vm)?,
            DhcpClient::Dhcpcd => {
                std::fs::write(self.dir.join("dhcpcd.conf"), "define 224 binhex ipshadow\noption ipshadow\n")?;
                // dhcpcd keeps its lease by interface name, shared by every namespace: a stale
                // one would make it ask for an old address first.
                let _ = std::fs::remove_file("/var/lib/dhcpcd/eth0.lease");
                let (conf, hook) = (self.dir.join("dhcpcd.conf"), self.dir.join(format!("hook-{vm}.sh")));
                let (conf, hook) = (conf.display().to_string(), hook.display().to_string());
                // In the foreground (-B) so that the lab holds its process id. Its RFC 5227 ARP
                // probe for X must meet no answer, or it declines the address.
                let args = ["-B", "-4", "--noipv4ll", "-f", &conf, "-c", &hook, "eth0"];
                self.spawn(&self.ns(vm), &format!("dhcpcd-{vm}"), Path::new("dhcpcd"), &args, None)?;
            }
        }
        self.wait_for_address(vm, Duration::from_secs(30))
    }

    /// Runs ISC dhclient in a VM (`a` or `b`): it binds, configures the address and the
    /// default route through the lab's hook (never the host's resolv.conf), then keeps renewing.
    pub fn dhclient(&self, vm: &str) -> anyhow::Result<()> {
        let d = |f: &str| self.dir.join(f).display().to_string();
        let (conf, hook, pid, leases) = (
            d("dhclient.conf"),
            d(&format!("hook-{vm}.sh")),
            d(&format!("dhclient-{vm}.pid")),
            d(&format!("dhclient-{vm}.leases")),
        );
        let log = File::create(self.dir.join(format!("dhclient-{vm}.log")))?;
        // dhclient returns once bound (or after its timeout) and keeps running as a daemon.
        let status = Command::new("ip")
            .args(["netns", "exec", &self.ns(vm), "dhclient", "-4", "-v", "-cf", &conf, "-sf", &hook, "-pf", &pid])
            .args(["-lf", &leases, "eth0"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .context("running dhclient (Debian package isc-dhcp-client)")?;
        if !status.success() {
            bail!("dhclient in VM {vm} failed; see {}", self.dir.join(format!("dhclient-{vm}.log")).display());
        }
        Ok(())
    }

    fn write_dhclient_files(&self) -> anyhow::Result<()> {
        std::fs::write(
            self.dir.join("dhclient.conf"),
            "timeout 15;\nretry 1;\ninitial-interval 1;\n\
             option ipshadow code 224 = array of unsigned integer 8;\nalso request ipshadow;\n",
        )?;
        for vm in ["a", "b"] {
            let events = self.dir.join(format!("dhclient-{vm}.events")).display().to_string();
            let hook = self.dir.join(format!("hook-{vm}.sh"));
            std::fs::write(
                &hook,
                format!(
                    r#"#!/bin/sh
# The lab's dhclient hook: address and default route only (never the host's resolv.conf).
case "$reason" in
  BOUND|RENEW|REBIND|REBOOT)
    ip addr replace "$new_ip_address/24" dev "$interface"
    set -- $new_routers
    [ -n "$1" ] && ip route replace default via "$1" dev "$interface" ;;
  EXPIRE|FAIL|RELEASE|STOP|NAK)
    ip addr flush dev "$interface" scope global ;;
esac
echo "$(date +%s.%N) $reason ${{new_ip_address:-}} ${{new_dhcp_lease_time:-}} ${{new_ipshadow:-}}" >> {events}
"#
                ),
            )?;
            let mut perms = std::fs::metadata(&hook)?.permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
            std::fs::set_permissions(&hook, perms)?;
        }
        Ok(())
    }

    /// Waits until VM `vm` holds X.
    pub fn wait_for_address(&self, vm: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.addresses(vm).contains(&format!("{X}/24")) {
            if Instant::now() > deadline {
                bail!("VM {vm} did not get {X} by DHCP; see {}", self.dir.join(format!("dhclient-{vm}.log")).display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// The IPv4 addresses of a VM's interface.
    pub fn addresses(&self, vm: &str) -> Vec<String> {
        let out = ip_in(&self.ns(vm), &["-4", "-o", "addr", "show", "dev", "eth0"]).unwrap_or_default();
        out.lines().filter_map(|l| l.split_whitespace().nth(3)).map(str::to_owned).collect()
    }

    /// Starts `exe ARGS` inside namespace `ns` in its own process group, output to
    /// `NAME.log` (stdout to `stdout` if given), pid to `NAME.pid`.
    pub fn spawn(&self, ns: &str, name: &str, exe: &Path, args: &[&str], stdout: Option<File>) -> anyhow::Result<u32> {
        // Appended: a process started again (serve after a SIGKILL) keeps its first life's log.
        let log = File::options().create(true).append(true).open(self.dir.join(format!("{name}.log")))?;
        let stdout = match stdout {
            Some(f) => Stdio::from(f),
            None => Stdio::from(log.try_clone()?),
        };
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        // `ip netns exec` executes the program in place: the child's id is the program's.
        let pid = child.id();
        std::fs::write(self.dir.join(format!("{name}.pid")), pid.to_string())?;
        Ok(pid)
    }

    /// The id recorded for a process the lab started.
    pub fn pid(&self, name: &str) -> Option<u32> {
        std::fs::read_to_string(self.dir.join(format!("{name}.pid"))).ok()?.trim().parse().ok()
    }

    /// Sends `signal` to a process the lab started (by its recorded id).
    pub fn signal(&self, name: &str, signal: &str) -> bool {
        self.pid(name).is_some_and(|pid| kill(pid, signal))
    }

    /// Stops a process the lab started: SIGTERM, then SIGKILL after 3 s.
    pub fn stop(&self, name: &str) {
        if let Some(pid) = self.pid(name) {
            stop_pid(pid);
        }
        let _ = std::fs::remove_file(self.dir.join(format!("{name}.pid")));
    }

    /// The router's last report (the lab's `serve` writes it to `router/status.json`); with a
    /// router group, the active router's (or, while none is, the last report of any).
    pub fn router_status(&self) -> Option<Status> {
        if self.routers() >= 2 {
            return self.forwarding_router_status();
        }
        let text = std::fs::read_to_string(self.dir.join("router/status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Stops everything and removes the namespaces and files. Safe to run at any time.
    pub fn down(&self) -> anyhow::Result<()> {
        for name in self.services().iter().map(String::as_str).chain(OPTIONAL) {
            self.stop(name);
        }
        // Whatever else runs inside the lab's namespaces was started by the lab (DHCP clients'
        // daemons, traffic generators of a demo that crashed).
        for ns in topology::existing(&self.prefix) {
            let pids = ip(&["netns", "pids", &ns]).unwrap_or_default();
            for pid in pids.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                stop_pid(pid);
            }
        }
        topology::remove(&self.prefix)?;
        // The routers' pinned flows go with the lab's bpffs.
        let bpf = self.dir.join("bpf");
        if bpf.exists() {
            let _ = Command::new("umount").arg(&bpf).status();
        }
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).with_context(|| format!("removing {}", self.dir.display()))?;
        }
        Ok(())
    }

    /// What is up.
    pub fn status(&self) -> LabStatus {
        let processes = self
            .services()
            .into_iter()
            .chain(
                OPTIONAL
                    .iter()
                    .filter(|name| name.starts_with("nginx") && self.pid(name).is_some())
                    .map(|s| (*s).to_owned()),
            )
            .map(|name| {
                let pid = self.pid(&name);
                ProcessStatus { alive: pid.is_some_and(alive), name, pid }
            })
            .collect();
        LabStatus {
            prefix: self.prefix.clone(),
            up: self.is_up(),
            namespaces: topology::existing(&self.prefix),
            processes,
            addresses: ["a", "b"].iter().map(|vm| (format!("vm-{vm}"), self.addresses(vm))).collect(),
            router: self.router_status(),
            manager_leader: (self.etcd_members() > 0).then(|| self.leading_manager()).flatten(),
            etcd_leader: (self.etcd_members() > 0).then(|| self.etcd_leader().map(|i| format!("e{i}"))).flatten(),
            routers: if self.routers() >= 2 { self.router_statuses() } else { Vec::new() },
        }
    }
}

impl LabStatus {
    /// A few lines for people.
    pub fn text(&self) -> String {
        let mut s = format!("lab {}: {}\n", self.prefix, if self.up { "up" } else { "down" });
        s += &format!(
            "  namespaces: {}\n",
            if self.namespaces.is_empty() { "-".into() } else { self.namespaces.join(" ") }
        );
        for p in &self.processes {
            let state = match (p.pid, p.alive) {
                (Some(pid), true) => format!("running (pid {pid})"),
                (Some(pid), false) => format!("dead (pid {pid})"),
                (None, _) => "not started".into(),
            };
            s += &format!("  {:<12} {state}\n", p.name);
        }
        if let Some(leader) = &self.manager_leader {
            s += &format!("  manager leading: {leader}\n");
        }
        if let Some(leader) = &self.etcd_leader {
            s += &format!("  etcd leader: {leader}\n");
        }
        for r in &self.routers {
            let role = match (r.role(), &r.status) {
                (Some(role), _) => format!("{role:?}").to_lowercase(),
                (None, Some(_)) => "no group in its report".to_owned(),
                (None, None) => "no report".to_owned(),
            };
            let stale = if r.fresh || r.status.is_none() { "" } else { " (stale report)" };
            let term = r.ha.as_ref().filter(|ha| ha.term > 0).map_or(String::new(), |ha| format!(", term {}", ha.term));
            s += &format!("  router {:<8} {role}{term}{stale}\n", r.name);
        }
        for (vm, addrs) in &self.addresses {
            s += &format!("  {vm} addresses: {}\n", if addrs.is_empty() { "-".into() } else { addrs.join(" ") });
        }
        if let Some(r) = &self.router {
            s += &format!("  router: {} flows, {} shadowed", r.flows, r.entries.len());
            for e in &r.entries {
                s += &format!(" [{} {:?} split {:.1} %]", e.ip_address, e.state, e.traffic_split_percentage);
            }
            s += "\n";
        }
        s
    }
}

/// This program, to start its other subcommands in the namespaces.
pub fn exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("finding the ipshadow executable")
}

/// Whether process `pid` exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

/// Sends a signal (`TERM`, `KILL`, ...) with kill(1).
pub fn kill(pid: u32, signal: &str) -> bool {
    Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).output().is_ok_and(|o| o.status.success())
}

/// SIGTERM, up to 3 s to exit, then SIGKILL.
pub fn stop_pid(pid: u32) {
    if !alive(pid) || !kill(pid, "TERM") {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if alive(pid) {
        kill(pid, "KILL");
    }
}

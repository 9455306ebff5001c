//! The lab's router group (`ipshadow lab up --routers N`, issue 15): router hosts `r1..rN`,
//! each running `serve --roles router --name rI` in a namespace of its own, in the group
//! `lab`; one is active (it holds the group's lease in etcd), the others stand by.
//!
//! ```text
//!  clients c1..cN ── br0 ─┬─ prov ─ r1 ─ ctl (10.99.0.3) ─┐
//!                         └─ prov ─ r2 ─ ctl (10.99.0.4) ─┴─ br1 ─┬─ etcd e1..eM (10.99.0.11..)
//!  VM A ── bra ─┬─ vma of r1, r2                                  └─ ctl of r (10.99.0.2)
//!               └─ vma of r (10.0.0.2)      control host r: DHCP server, managers m1 m2,
//!  VM B ── brb ─┬─ vmb of r1, r2                            API nodes api1 api2 (no router)
//!               └─ vmb of r (10.0.0.2)
//! ```
//! (every bridge in the switch's namespace `sw`).
//! Every router host's `prov` has the provider MAC and its `vma`/`vmb` the gateway's (a group
//! virtual MAC, as keepalived's use_vmac): only the active one transmits, so the bridges learn
//! its port from its gratuitous ARP. The control host `r` runs the DHCP server (its
//! `server_id` is 10.0.0.2: the routers answer ARP for the gateway 10.0.0.1), the two managers
//! and the two API nodes, as the lab on etcd does, but no router.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use ipshadow_core::ha::{GroupStatus, Role};
use ipshadow_dataplane::Status;
use serde::Serialize;

use super::services::{Lab, alive, exe};
use super::topology;

/// The lab's router group.
pub const GROUP: &str = "lab";
/// A report older than this is stale: its router is paused, dead or cut off its rings' loop.
const FRESH: Duration = Duration::from_secs(1);

/// One router of the lab and its last report, as `lab status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct RouterReport {
    /// `r1`, `r2`... (`router` in a lab without a group).
    pub name: String,
    /// Its process id, as recorded.
    pub pid: Option<u32>,
    /// Whether that process runs.
    pub alive: bool,
    /// Whether its last report is younger than a second.
    pub fresh: bool,
    /// Its part in the group, as it last reported (none before it reported, or without a group).
    pub ha: Option<GroupStatus>,
    /// Its last report.
    #[serde(skip)]
    pub status: Option<Status>,
}

impl RouterReport {
    /// Its role as last reported.
    pub fn role(&self) -> Option<Role> {
        self.ha.as_ref().map(|ha| ha.role)
    }

    /// Active by its own fresh report.
    pub fn is_active(&self) -> bool {
        self.fresh && self.role() == Some(Role::Active)
    }
}

impl Lab {
    /// Router hosts of the lab (1: the router runs in `r`, with no group).
    pub fn routers(&self) -> u8 {
        std::fs::read_to_string(self.dir.join("routers")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1)
    }

    /// The names of the lab's routers: `r1..rN` in a group, `router` alone.
    pub fn router_names(&self) -> Vec<String> {
        match self.routers() {
            0 | 1 => vec!["router".to_owned()],
            n => (1..=n).map(|i| format!("r{i}")).collect(),
        }
    }

    /// The pid-file name of router `name`'s process.
    pub fn router_process_of(&self, name: &str) -> String {
        match (self.routers(), self.etcd_members()) {
            (0 | 1, 0) => "serve".to_owned(),
            (0 | 1, _) => "serve-router".to_owned(),
            _ => format!("serve-{name}"),
        }
    }

    /// Where router `name` writes its report.
    pub(super) fn router_status_file(&self, name: &str) -> PathBuf {
        match self.routers() {
            0 | 1 => self.dir.join("router/status.json"),
            _ => self.dir.join(format!("router-{name}/status.json")),
        }
    }

    /// Router `name` and its last report.
    pub fn router_report(&self, name: &str) -> RouterReport {
        let text = std::fs::read_to_string(self.router_status_file(name)).unwrap_or_default();
        let status: Option<Status> = serde_json::from_str(&text).ok();
        let ha = status.as_ref().and_then(|s| s.ha.clone());
        let now = ipshadow_dataplane::runtime::wall_now().as_micros();
        let fresh =
            status.as_ref().is_some_and(|s| now.saturating_sub(s.updated.as_micros()) < FRESH.as_micros() as u64);
        let pid = self.pid(&self.router_process_of(name));
        RouterReport { name: name.to_owned(), pid, alive: pid.is_some_and(alive), fresh, ha, status }
    }

    /// Every router of the lab and its last report.
    pub fn router_statuses(&self) -> Vec<RouterReport> {
        self.router_names().iter().map(|name| self.router_report(name)).collect()
    }

    /// The router whose fresh report says it is active (none without a group).
    pub fn active_router(&self) -> Option<String> {
        newest_active(&self.router_statuses()).map(|i| i.name.clone())
    }

    /// The router that forwards: the active one in a group (or, while none is, the one that
    /// reported last), the only one otherwise.
    pub(super) fn forwarding_router_status(&self) -> Option<Status> {
        let all = self.router_statuses();
        if let Some(active) = newest_active(&all) {
            return active.status.clone();
        }
        all.into_iter().filter_map(|r| r.status).max_by_key(|s| s.updated)
    }

    /// Router host `name`'s index (`r2`: 2).
    fn router_index(&self, name: &str) -> anyhow::Result<u8> {
        let i = name.strip_prefix('r').and_then(|i| i.parse::<u8>().ok());
        match i {
            Some(i) if self.routers() >= 2 && (1..=self.routers()).contains(&i) => Ok(i),
            _ => bail!("no router host {name} in the lab ({} routers)", self.routers()),
        }
    }

    /// Writes each router host's configuration: the lab's `serve.toml`, with the group and a
    /// status file of its own.
    pub(super) fn write_router_configs(&self) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(self.dir.join("serve.toml"))?;
        let shared = self.dir.join("router/status.json").display().to_string();
        let bpf = self.dir.join("bpf/r").display().to_string();
        for name in self.router_names() {
            let own = self.router_status_file(&name);
            if let Some(dir) = own.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            let config = text
                .replace(&format!("status_file = \"{shared}\""), &format!("status_file = \"{}\"", own.display()))
                .replace(
                    &format!("bpf_dir = \"{bpf}\""),
                    &format!("bpf_dir = \"{}\"", self.dir.join("bpf").join(&name).display()),
                )
                .replace("[router]\n", &format!("[router]\ngroup = \"{GROUP}\"\n"));
            std::fs::write(self.dir.join(format!("serve-{name}.toml")), config)?;
        }
        Ok(())
    }

    /// Starts (or starts again) router `name` in its host's namespace.
    pub fn start_router(&self, name: &str) -> anyhow::Result<u32> {
        self.router_index(name)?;
        let file = self.dir.join(format!("serve-{name}.toml")).display().to_string();
        let store = self.store_url();
        let args = ["serve", "--config", &file, "--store", &store, "--roles", "router", "--name", name];
        self.spawn(&self.ns(name), &format!("serve-{name}"), &exe()?, &args, None)
    }

    /// Takes router host `name`'s links down on the switch's side (`cut`), or up again; with
    /// `store_only`, only its link to the control segment (etcd).
    pub fn cut_router(&self, name: &str, cut: bool, store_only: bool) -> anyhow::Result<()> {
        topology::cut_router(&self.prefix, self.router_index(name)?, cut, store_only)
    }

    /// Frames router host `name` sent on `prov`, `vma` and `vmb`, by its kernel's count.
    pub fn router_tx_packets(&self, name: &str) -> anyhow::Result<u64> {
        topology::router_tx_packets(&self.prefix, self.router_index(name)?)
    }
}

/// Of the routers that say they are active, the one of the newest term: another may not have
/// heard yet that it was replaced (back from a cut).
fn newest_active(all: &[RouterReport]) -> Option<&RouterReport> {
    all.iter().filter(|r| r.is_active()).max_by_key(|r| r.ha.as_ref().map_or(0, |h| h.term))
}

#[cfg(test)]
mod tests {
    use ipshadow_core::Instant;
    use ipshadow_core::ha::GroupCounters;

    use super::*;

    /// A lab of two routers in a folder of its own whose reports are `(pid, role, age)`.
    fn lab_with(test: &str, reports: &[(u32, Option<Role>, Duration)]) -> Lab {
        let dir = std::env::temp_dir().join(format!("ipshadow-lab-{test}-{}", std::process::id()));
        let lab = Lab { prefix: "t".into(), dir };
        std::fs::create_dir_all(&lab.dir).unwrap();
        std::fs::write(lab.dir.join("routers"), reports.len().to_string()).unwrap();
        let now = ipshadow_dataplane::runtime::wall_now().as_micros();
        for (i, (pid, role, age)) in reports.iter().enumerate() {
            let name = format!("r{}", i + 1);
            let updated = Instant::from_micros(now - age.as_micros() as u64);
            let mut report = serde_json::to_value(Status { pid: *pid, updated, ..Status::default() }).unwrap();
            if let Some(role) = role {
                let ha = GroupStatus {
                    group: GROUP.into(),
                    name: name.clone(),
                    role: *role,
                    since: updated,
                    term: 7,
                    active: None,
                    last_takeover: None,
                    last_step_down: None,
                    counters: GroupCounters { takeovers: 1, ..GroupCounters::default() },
                };
                report["ha"] = serde_json::to_value(ha).unwrap();
            }
            let file = lab.router_status_file(&name);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, report.to_string()).unwrap();
            std::fs::write(lab.dir.join(format!("serve-{name}.pid")), pid.to_string()).unwrap();
        }
        lab
    }

    #[test]
    fn the_active_router_is_the_one_whose_fresh_report_says_so() {
        let ms = Duration::from_millis;
        let lab = lab_with("active", &[(11, Some(Role::Standby), ms(100)), (12, Some(Role::Active), ms(200))]);
        assert_eq!(lab.router_names(), ["r1", "r2"]);
        assert_eq!(lab.router_process_of("r2"), "serve-r2");
        assert_eq!(lab.active_router().as_deref(), Some("r2"));
        assert_eq!(lab.router_status().map(|s| s.pid), Some(12), "the active router's report");
        let roles: Vec<_> = lab.router_statuses().iter().map(RouterReport::role).collect();
        assert_eq!(roles, [Some(Role::Standby), Some(Role::Active)]);
        assert!(lab.router_report("r1").ha.is_some_and(|ha| ha.counters.takeovers == 1 && ha.term == 7));
        std::fs::remove_dir_all(&lab.dir).unwrap();

        // Paused: its last report still says active, but it is stale. No router is active;
        // the lab's router report is the latest of any.
        let lab = lab_with("stale", &[(21, Some(Role::Active), ms(3_000)), (22, Some(Role::Standby), ms(100))]);
        assert_eq!(lab.active_router(), None);
        assert!(!lab.router_report("r1").fresh && lab.router_report("r2").fresh);
        assert_eq!(lab.router_status().map(|s| s.pid), Some(22));
        std::fs::remove_dir_all(&lab.dir).unwrap();

        // A router that reports no group (a router before groups) is no one's active.
        let lab = lab_with("nogroup", &[(31, None, ms(100)), (32, None, ms(100))]);
        assert_eq!(lab.active_router(), None);
        assert!(lab.router_statuses().iter().all(|r| r.status.is_some() && r.ha.is_none()));
        assert!(lab.cut_router("r3", true, false).is_err(), "no such router host");
        std::fs::remove_dir_all(&lab.dir).unwrap();
    }
}

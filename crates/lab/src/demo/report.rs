//! The demo's report: the keys of `simulate --json` measured on real Linux TCP connections,
//! then the traffic tallies, the timeline and the router's counters.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipshadow_core::Outcome;
use ipshadow_core::ha::{GroupCounters, Role, StepDown, Takeover};
use ipshadow_dataplane::Status;
use ipshadow_dataplane::status::EndedMigration;
use serde::Serialize;

use super::DemoArgs;
use crate::lab::RouterReport;
use crate::traffic::report::{Cause, Report as TrafficReport};

/// When things happened, in seconds after the migration started.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timeline {
    /// Unix time of the start.
    pub started_unix_s: f64,
    /// B's lease bound.
    pub lease_bound_s: Option<f64>,
    /// B answered for X: the ramp's start.
    pub ramp_started_s: Option<f64>,
    /// The split first at 100 %.
    pub split_100_s: Option<f64>,
    /// The router reported the migration ended (cut-over or rollback).
    pub ended_s: Option<f64>,
}

/// One SIGKILL of `serve` mid-migration and what the new process resumed with.
#[derive(Clone, Debug, Serialize)]
pub struct Restart {
    /// When it was killed, seconds after the migration started.
    pub at_s: f64,
    /// How long until the new process's router reported and its API answered.
    pub back_after_s: f64,
    /// The migration's state before the kill and after the restart.
    pub state_before: String,
    /// After the restart.
    pub state_after: String,
    /// The split recorded in the store before the kill.
    pub recorded_split_pct: f64,
    /// The split of the new router's entry in its first report.
    pub resumed_split_pct: Option<f64>,
    /// The migration's deadline, unix milliseconds.
    pub deadline_ms: u64,
    /// The new router's entry's deadline.
    pub resumed_deadline_ms: Option<u64>,
    /// The DHCP server's leases on X before the kill: (VM, migration, end in unix ms).
    pub leases_before: Vec<(String, Option<u64>, u64)>,
    /// And after the restart.
    pub leases_after: Vec<(String, Option<u64>, u64)>,
    /// TCP flows of X open in the old router's last report before the kill.
    pub open_flows_before: u64,
    /// Flows of X the new router learned from the VMs' replies (its entry's `flows_learned`
    /// in its last report before the migration ended).
    pub flows_learned_after: u64,
    /// Flows of X the new router took back from the fast path's pinned flow map (XDP).
    pub flows_restored_after: u64,
    /// How the new router forwards: `xdp` or `af_packet`.
    pub data_path_after: String,
    /// The new `serve`'s process id (its router reports under it).
    #[serde(skip)]
    pub pid_after: u32,
}

/// A router of the group at the demo's end, from its last report.
#[derive(Clone, Debug, Serialize)]
pub struct RouterEnd {
    /// `r1`...
    pub name: String,
    /// Its role (none if it never reported its group).
    pub role: Option<Role>,
    /// Whether its last report was fresh (under a second old).
    pub fresh: bool,
    /// Its last takeover.
    pub last_takeover: Option<Takeover>,
    /// The last time it stopped being active.
    pub last_step_down: Option<StepDown>,
    /// Its group counters (of its last process: a router killed and started again counts
    /// from 0).
    pub counters: Option<GroupCounters>,
}

impl From<RouterReport> for RouterEnd {
    fn from(r: RouterReport) -> Self {
        let (role, fresh) = (r.role(), r.fresh);
        let ha = r.ha;
        Self {
            name: r.name,
            role,
            fresh,
            last_takeover: ha.as_ref().and_then(|ha| ha.last_takeover.clone()),
            last_step_down: ha.as_ref().and_then(|ha| ha.last_step_down.clone()),
            counters: ha.map(|ha| ha.counters),
        }
    }
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct DemoReport {
    strategy: String,
    mode: String,
    connections_total: u64,
    connections_broken: u64,
    connections_completed: u64,
    cut_at_deadline: u64,
    migration_state: String,
    final_split_pct: f64,
    conflicts_suppressed: u64,
    connections_open_at_end: u64,
    /// Of the completed connections, those closed in order by the server side at an idle
    /// moment (the router's graceful end in A's name): the client opened another.
    connections_closed_by_server: u64,
    /// Connections each VM's server accepted.
    served: std::collections::BTreeMap<String, u64>,
    /// The DHCP server's lease events by kind (a `declined` would mean B saw X in use).
    dhcp_events: std::collections::BTreeMap<String, u64>,
    long_lived: crate::traffic::report::KindCounts,
    churn: crate::traffic::report::KindCounts,
    causes: std::collections::BTreeMap<String, u64>,
    exchanges: u64,
    bytes_verified: u64,
    timeline: Timeline,
    /// `serve` restarts (SIGKILL) and what the new process resumed with.
    restarts: Vec<Restart>,
    /// Faults injected into the lab on etcd (a manager or etcd's leader killed).
    faults: Vec<super::faults::Fault>,
    /// Who led the managers, one entry per change the demo saw (on etcd).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    manager_terms: Vec<super::faults::ManagerTerm>,
    /// With a router group: each router at the end.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    routers: Vec<RouterEnd>,
    /// The migration as the API shows it at the end, with its history.
    migration: Option<serde_json::Value>,
    cut_over: Option<EndedMigration>,
    router: Option<Status>,
}

/// What the manager saw of the router, the DHCP server and the VMs during the demo.
pub struct Observed {
    /// When things happened.
    pub timeline: Timeline,
    /// How the migration ended, as the router reported it.
    pub ended: Option<EndedMigration>,
    /// Client endpoints the router reset at the cut-over.
    pub reset_clients: BTreeSet<(Ipv4Addr, u16)>,
    /// The router's last report.
    pub router: Option<Status>,
    /// Conflicting replies suppressed, over every router process.
    pub conflicts: u64,
    /// Connections each VM's server accepted.
    pub served: std::collections::BTreeMap<String, u64>,
    /// The DHCP server's lease events by kind.
    pub dhcp_events: std::collections::BTreeMap<String, u64>,
    /// The migration as the API shows it at the end.
    pub migration: Option<serde_json::Value>,
    /// `serve` restarts.
    pub restarts: Vec<Restart>,
    /// Faults injected.
    pub faults: Vec<super::faults::Fault>,
    /// Who led the managers (on etcd).
    pub manager_terms: Vec<super::faults::ManagerTerm>,
    /// With a router group: each router at the end.
    pub routers: Vec<RouterEnd>,
}

impl DemoReport {
    /// Puts the pieces together. Connections the router itself reset when A's deadline came are
    /// counted as cut at the deadline, not as broken.
    pub fn new(args: &DemoArgs, traffic: TrafficReport, observed: Observed) -> Self {
        let Observed {
            timeline,
            ended,
            reset_clients,
            router,
            conflicts,
            served,
            dhcp_events,
            migration,
            restarts,
            faults,
            manager_terms,
            routers,
        } = observed;
        let cut = traffic
            .broken
            .iter()
            .filter(|b| {
                b.cause == Cause::Reset
                    && b.local.is_some_and(|l| match l.ip() {
                        std::net::IpAddr::V4(ip) => reset_clients.contains(&(ip, l.port())),
                        std::net::IpAddr::V6(_) => false,
                    })
            })
            .count() as u64;
        // The migration's state is the manager's (the store's); the split is the router's
        // while it shadows, and what the end means after.
        let state =
            migration.as_ref().and_then(|m| m["lifecycle"]["state"].as_str()).unwrap_or("not_started").to_owned();
        let split = match (state.as_str(), router.as_ref().and_then(|r| r.entries.first())) {
            ("completed", _) => 100.0,
            ("rolled_back" | "aborted" | "failed", _) => 0.0,
            (_, Some(entry)) => entry.traffic_split_percentage,
            _ => migration.as_ref().and_then(|m| m["split_pct"].as_f64()).unwrap_or(0.0),
        };
        let _ = ended.as_ref().map(|e| e.outcome == Outcome::Completed);
        let name = |v: &dyn std::fmt::Debug| format!("{v:?}").to_lowercase();
        Self {
            strategy: name(&args.strategy),
            mode: name(&args.mode),
            connections_total: traffic.connections_total,
            connections_broken: traffic.connections_broken - cut,
            connections_completed: traffic.connections_completed,
            cut_at_deadline: cut,
            migration_state: state,
            final_split_pct: split,
            conflicts_suppressed: conflicts,
            connections_open_at_end: traffic.connections_open,
            connections_closed_by_server: traffic.connections_closed_by_server,
            served,
            dhcp_events,
            long_lived: traffic.by_kind.long_lived,
            churn: traffic.by_kind.churn,
            causes: traffic.causes.clone(),
            exchanges: traffic.exchanges,
            bytes_verified: traffic.bytes_verified,
            timeline,
            restarts,
            faults,
            manager_terms,
            routers,
            migration,
            cut_over: ended,
            router,
        }
    }

    /// The report for people.
    pub fn text(&self) -> String {
        let t = &self.timeline;
        let at = |v: Option<f64>| v.map_or("-".to_owned(), |s| format!("{s:.1} s"));
        let mut s = format!(
            "migration of 10.0.0.10 from vm-a to vm-b ({} strategy, {} mode): {}\n\
             \x20 connections: {} total, {} completed, {} broken, {} cut at the deadline, {} open at the end\n\
             \x20 served by vm-a {}, by vm-b {}\n\
             \x20 long-lived: {} total, {} broken; churn: {} total, {} broken\n\
             \x20 exchanges verified: {} ({} response bytes)\n\
             \x20 timeline: B's lease bound {}, ramp started {}, split 100 % {}, ended {}\n\
             \x20 final split {:.0} %, conflicting replies suppressed {}\n",
            self.strategy,
            self.mode,
            self.migration_state,
            self.connections_total,
            self.connections_completed,
            self.connections_broken,
            self.cut_at_deadline,
            self.connections_open_at_end,
            self.served.get("vm-a").copied().unwrap_or(0),
            self.served.get("vm-b").copied().unwrap_or(0),
            self.long_lived.total,
            self.long_lived.broken,
            self.churn.total,
            self.churn.broken,
            self.exchanges,
            self.bytes_verified,
            at(t.lease_bound_s),
            at(t.ramp_started_s),
            at(t.split_100_s),
            at(t.ended_s),
            self.final_split_pct,
            self.conflicts_suppressed,
        );
        for r in &self.restarts {
            s += &format!(
                "  serve killed at {:.1} s ({}, split {:.1} % recorded), running again {:.0} ms later ({}, router resumed at {})\n",
                r.at_s,
                r.state_before,
                r.recorded_split_pct,
                r.back_after_s * 1e3,
                r.state_after,
                r.resumed_split_pct.map_or("-".to_owned(), |p| format!("{p:.1} %")),
            );
        }
        for f in &self.faults {
            let after = match (&f.new_leader, f.recovered_after_s) {
                _ if f.kind == "etcd_down" => format!("for {:?}", super::faults::OUTAGE),
                _ if f.at_unix_ms.is_some() => router_fault_text(f),
                (Some(l), Some(secs)) => format!("{l} led {:.0} ms later", secs * 1e3),
                _ => "no new leader".to_owned(),
            };
            let during = f.exchanges_during.map_or(String::new(), |n| format!(", {n} exchanges verified meanwhile"));
            s += &format!("  {} ({}) at {:.1} s: {after}{during}\n", f.kind.replace('_', " "), f.target, f.at_s);
        }
        for r in &self.routers {
            let role = r.role.map_or("no report".to_owned(), |role| format!("{role:?}").to_lowercase());
            let c = r.counters.clone().unwrap_or_default();
            s += &format!(
                "  router {}: {role} at the end; takeovers {}, step-downs {}, stalls {}, frames dropped {}\n",
                r.name, c.takeovers, c.step_downs, c.stalls, c.frames_dropped
            );
        }
        let causes: Vec<String> =
            self.causes.iter().filter(|(_, n)| **n > 0).map(|(c, n)| format!("{c} {n}")).collect();
        if !causes.is_empty() {
            s += &format!("  causes of broken connections: {}\n", causes.join(", "));
        }
        s
    }
}

/// What a router fault led to, for people.
fn router_fault_text(f: &super::faults::Fault) -> String {
    let mut parts = Vec::new();
    match (&f.new_active, f.took_ms) {
        (Some(active), Some(ms)) => parts.push(format!("{active} took over, forwarding {ms} ms later")),
        (Some(active), None) => parts.push(format!("{active} active")),
        (None, _) => parts.push("no router active".to_owned()),
    }
    if let Some(stepped) = f.stepped_down {
        parts.push(if stepped { "it stepped down".to_owned() } else { "it did not step down".to_owned() });
    }
    if let Some(tx) = f.tx_after_resume {
        parts.push(format!("{tx} frames sent after SIGSTOP"));
    }
    if let Some(dropped) = f.frames_dropped {
        parts.push(format!("{dropped} frames dropped as not active"));
    }
    parts.join(", ")
}

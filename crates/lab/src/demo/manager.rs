//! The demo as a user runs a migration: traffic on, then one call to the API of the lab's
//! `ipshadow serve` (reassign X to vm-b with `migrate`), VM B's DHCP client started, and the
//! migration followed through the API (and the router's report) until it ends. Everything in
//! between is the manager's work inside `serve`: the lease plan, the shadowing entry, the ramp
//! on B's bound lease, the cut-over at A's deadline, the address given to B. `--restart-at`
//! kills `serve` with SIGKILL mid-migration and starts it again.

use std::io::IsTerminal;
use std::time::{Duration, Instant as Clock};

use anyhow::{Context, bail};
use ipshadow_dataplane::status::EndedMigration;
use serde_json::{Value, json};

use super::DemoArgs;
use super::report::{DemoReport, Observed, Restart, Timeline};
use crate::lab::{Lab, SERVICE_PORT, X};
use crate::traffic::report::Report as TrafficReport;

/// A demo in progress.
pub struct Demo<'a> {
    lab: &'a Lab,
    args: &'a DemoArgs,
    timeline: Timeline,
    /// Router process ids seen, with the last conflict total each reported.
    conflicts_by_router: Vec<(u32, u64)>,
    ended: Option<EndedMigration>,
    reset_clients: std::collections::BTreeSet<(std::net::Ipv4Addr, u16)>,
    last_router: Option<ipshadow_dataplane::Status>,
    /// The migration the API created.
    migration_id: Option<u64>,
    /// Its state and recorded split, as last read.
    state: String,
    split: f64,
    /// `serve` restarts and what it resumed with.
    restarts: Vec<Restart>,
    /// Faults injected.
    faults: Vec<super::faults::Fault>,
    /// Who led, as the demo saw it (on etcd).
    manager_terms: Vec<super::faults::ManagerTerm>,
}

impl<'a> Demo<'a> {
    /// A demo on a lab that is up.
    pub fn new(lab: &'a Lab, args: &'a DemoArgs) -> anyhow::Result<Self> {
        Ok(Self {
            lab,
            args,
            timeline: Timeline::default(),
            conflicts_by_router: Vec::new(),
            ended: None,
            reset_clients: Default::default(),
            last_router: None,
            migration_id: None,
            state: "not_started".to_owned(),
            split: 0.0,
            restarts: Vec::new(),
            faults: Vec::new(),
            manager_terms: Vec::new(),
        })
    }

    /// Runs the traffic and the migration; returns the report.
    pub fn run(mut self) -> anyhow::Result<DemoReport> {
        let clients = self.start_traffic()?;
        let outcome = self.migrate();
        let traffic = self.stop_traffic(&clients);
        outcome?;
        let traffic = traffic?;
        let conflicts = self.conflicts();
        let dhcp = dhcp_events(&self.lab.dir.join("serve/dhcp-events.jsonl"));
        let served = ["a", "b"].iter().map(|vm| (format!("vm-{vm}"), self.server_count(vm, "accepted"))).collect();
        let routers = match self.lab.routers() {
            0 | 1 => Vec::new(),
            _ => self.lab.router_statuses().into_iter().map(super::report::RouterEnd::from).collect(),
        };
        let migration = match self.migration_id {
            Some(id) => Some(self.migration(id)?),
            None => None,
        };
        let observed = Observed {
            timeline: self.timeline,
            ended: self.ended,
            reset_clients: self.reset_clients,
            router: self.last_router,
            conflicts,
            served,
            dhcp_events: dhcp,
            migration,
            restarts: self.restarts,
            faults: self.faults,
            manager_terms: self.manager_terms,
            routers,
        };
        Ok(DemoReport::new(self.args, traffic, observed))
    }

    fn conflicts(&self) -> u64 {
        self.conflicts_by_router.iter().map(|(_, c)| c).sum()
    }

    fn start_traffic(&self) -> anyhow::Result<Vec<u8>> {
        let exe = crate::lab::services::exe()?;
        let n = u32::from(self.args.clients);
        let mut started = Vec::new();
        for i in 1..=self.args.clients {
            let share = |total: u32| total / n + u32::from(u32::from(i) <= total % n);
            let report = self.lab.dir.join(format!("traffic-c{i}.json")).display().to_string();
            let progress = self.lab.dir.join(format!("progress-c{i}.json")).display().to_string();
            let (target, long_lived, churn) = (
                format!("{X}:{SERVICE_PORT}"),
                share(self.args.long_lived).to_string(),
                share(self.args.churn).to_string(),
            );
            let (min, max, id) = (self.args.lifetime[0].to_string(), self.args.lifetime[1].to_string(), i.to_string());
            let args = [
                "traffic",
                "run",
                "--target",
                &target,
                "--long-lived",
                &long_lived,
                "--churn",
                &churn,
                "--lifetime",
                &min,
                &max,
                "--duration",
                "86400",
                "--client-id",
                &id,
                "--seed",
                &id,
                "--report",
                &report,
                "--progress",
                &progress,
            ];
            self.lab.spawn(&self.lab.ns(&format!("c{i}")), &format!("traffic-c{i}"), &exe, &args, None)?;
            started.push(i);
        }
        Ok(started)
    }

    /// Stops the generators (SIGTERM: they close what is open and write their reports) and adds
    /// their reports up.
    fn stop_traffic(&self, clients: &[u8]) -> anyhow::Result<TrafficReport> {
        for i in clients {
            self.lab.signal(&format!("traffic-c{i}"), "TERM");
        }
        let mut total = TrafficReport::new();
        for i in clients {
            let path = self.lab.dir.join(format!("traffic-c{i}.json"));
            let deadline = Clock::now() + Duration::from_secs(20);
            let report = loop {
                let pid = self.lab.pid(&format!("traffic-c{i}"));
                if let Ok(text) = std::fs::read_to_string(&path)
                    && pid.is_none_or(|p| !crate::lab::services::alive(p))
                {
                    break serde_json::from_str::<TrafficReport>(&text)
                        .with_context(|| format!("in {}", path.display()))?;
                }
                if Clock::now() > deadline {
                    bail!(
                        "client c{i} wrote no report; see {}",
                        self.lab.dir.join(format!("traffic-c{i}.log")).display()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            total.add(&report);
        }
        Ok(total)
    }

    fn migrate(&mut self) -> anyhow::Result<()> {
        let args = self.args;
        std::thread::sleep(Duration::from_secs(args.warmup));
        // The user's call: reassign X to vm-b with `migrate`, the strategy, mode and affinity
        // chosen. No ramp and no deadline unless asked for: the control plane's plan takes A's
        // lease end as the deadline and fits its default ramp to it.
        let start_ms = ipshadow_dataplane::runtime::wall_now().as_micros() / 1000;
        let mut request = json!({
            "to": "vm-b",
            "migrate": true,
            "strategy": args.strategy.to_core(),
            "mode": args.mode.to_core(),
            "affinity": args.affinity.to_core(),
        });
        if let Some(ramp) = args.ramp()? {
            request["ramp"] = json!(ramp);
        }
        if let Some(deadline) = args.deadline {
            request["deadline_ms"] = json!(start_ms + deadline * 1000);
        }
        let migration = self.lab.api_ok("POST", &format!("/v1/addresses/{X}/reassign"), Some(request))?;
        let id = migration["id"].as_u64().context("the reassign answer has no migration id")?;
        let deadline_ms = migration["deadline_ms"].as_u64().context("the reassign answer has no deadline")?;
        self.migration_id = Some(id);
        self.timeline.started_unix_s = start_ms as f64 / 1e3;
        let clock = Clock::now();
        // B boots its DHCP client once the manager has written the lease plan.
        let planned = Clock::now() + Duration::from_secs(5);
        while self.migration(id)?["lifecycle"]["state"] == "pending" && Clock::now() < planned {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.lab.dhcp_client("b", args.b_dhcp_client)?;
        let strategy = format!("{:?}", args.strategy).to_lowercase();
        eprintln!("ipshadow demo: migration {id} of {X} from vm-a to vm-b started ({strategy} strategy)");

        let mut restarts: Vec<u64> = args.restarts.clone();
        restarts.sort_unstable();
        let mut faults = super::faults::schedule(args);
        let mut outages = super::faults::Outages::new(Duration::from_secs(args.pause_for));
        let mut api_failing = false;
        let tty = std::io::stderr().is_terminal();
        let mut last_line = Clock::now();
        let mut give_up = Duration::from_millis(deadline_ms.saturating_sub(start_ms)) + Duration::from_secs(30);
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let t = clock.elapsed();
            if restarts.first().is_some_and(|&r| t >= Duration::from_secs(r)) {
                restarts.remove(0);
                self.restart_serve(id, t)?;
            }
            if faults.first().is_some_and(|&(at, _)| t >= at) {
                let (_, kind) = faults.remove(0);
                let (fault, end) = super::faults::inject(self.lab, kind, t, &mut outages, &mut self.faults)?;
                self.faults.push(fault);
                if let Some(end) = end {
                    faults.push(end);
                    faults.sort_by_key(|(at, _)| *at);
                }
            }
            super::faults::note_leader(self.lab, clock.elapsed(), &mut self.manager_terms);
            // With etcd down the API answers 503: the demo waits, as a user's client would.
            let m = match self.migration(id) {
                Ok(m) => {
                    api_failing = false;
                    m
                }
                Err(e) => {
                    if !std::mem::replace(&mut api_failing, true) {
                        eprintln!("\nipshadow demo: the API: {e:#}; trying again");
                    }
                    if t > give_up {
                        bail!("the migration did not end by its deadline; see {}", self.lab.dir.display());
                    }
                    continue;
                }
            };
            // The manager may extend the deadline for A's forecast drain.
            if let Some(deadline) = m["deadline_ms"].as_u64() {
                give_up =
                    give_up.max(Duration::from_millis(deadline.saturating_sub(start_ms)) + Duration::from_secs(30));
            }
            self.follow(&m, start_ms, t);
            if tty || last_line.elapsed() >= Duration::from_secs(5) {
                last_line = Clock::now();
                self.progress(t, tty);
            }
            if let Some(ended) = self.timeline.ended_s
                && t.as_secs_f64() >= ended + args.after as f64
            {
                break;
            }
            if t > give_up {
                bail!("the migration did not end by its deadline; see {}", self.lab.dir.display());
            }
        }
        if tty {
            eprintln!();
        }
        super::router_faults::finish(self.lab, &mut outages.routers, &mut self.faults);
        Ok(())
    }

    /// The migration as the API shows it.
    fn migration(&self, id: u64) -> anyhow::Result<Value> {
        self.lab.api_ok("GET", &format!("/v1/migrations/{id}"), None)
    }

    /// The DHCP server's leases on X: (VM, migration, end in unix ms).
    fn leases_on_x(&self) -> anyhow::Result<Vec<(String, Option<u64>, u64)>> {
        let status = self.lab.api_ok("GET", "/v1/dhcp/status", None)?;
        let mut leases: Vec<_> = status["leases"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter(|l| l["ip"] == X.to_string())
            .map(|l| {
                (
                    l["vm"].as_str().unwrap_or("").to_owned(),
                    l["migration"].as_u64(),
                    l["expires_ms"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        leases.sort();
        Ok(leases)
    }

    /// Kills `serve` (API, manager, DHCP server and router at once) with SIGKILL and starts it
    /// again; records what the store had before and what the new process resumed with.
    fn restart_serve(&mut self, id: u64, t: Duration) -> anyhow::Result<()> {
        eprintln!(
            "\nipshadow demo: killing ipshadow serve (SIGKILL) at {:.1} s and starting it again",
            t.as_secs_f64()
        );
        let before = self.migration(id)?;
        let leases_before = self.leases_on_x()?;
        // The TCP flows of X the old router had open: the ones the new one must learn.
        let open_flows_before = self
            .lab
            .router_status()
            .and_then(|s| s.patterns.get(&X).cloned())
            .map_or(0, |p| u64::from(p.measured.source.open) + u64::from(p.measured.destination.open));
        // On etcd the router is a process of its own: the one killed and started again.
        let process = self.lab.router_process();
        if let Some(pid) = self.lab.pid(&process) {
            crate::lab::services::kill(pid, "KILL");
            while crate::lab::services::alive(pid) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let killed = Clock::now();
        let pid = if self.lab.etcd_members() == 0 { self.lab.start_serve()? } else { self.lab.start_part(&process)? };
        let back_after_s = killed.elapsed().as_secs_f64();
        // The new router's first report that has the entry: where it resumed.
        let waited = Clock::now();
        let resumed = loop {
            let status = self.lab.router_status().filter(|s| s.pid == pid);
            if status.as_ref().is_some_and(|s| s.entries.iter().any(|e| e.ip_address == X))
                || waited.elapsed() > Duration::from_secs(3)
            {
                break status;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let entry = resumed.as_ref().and_then(|s| s.entries.iter().find(|e| e.ip_address == X));
        let after = self.migration(id)?;
        self.restarts.push(Restart {
            at_s: t.as_secs_f64(),
            back_after_s,
            state_before: before["lifecycle"]["state"].as_str().unwrap_or("").to_owned(),
            state_after: after["lifecycle"]["state"].as_str().unwrap_or("").to_owned(),
            recorded_split_pct: before["split_pct"].as_f64().unwrap_or(0.0),
            resumed_split_pct: entry.map(|e| e.traffic_split_percentage),
            deadline_ms: before["deadline_ms"].as_u64().unwrap_or(0),
            resumed_deadline_ms: entry.and_then(|e| e.options.deadline).map(|d| d.as_micros() / 1000),
            leases_before,
            leases_after: self.leases_on_x()?,
            open_flows_before,
            flows_learned_after: 0,
            flows_restored_after: 0,
            data_path_after: String::new(),
            pid_after: pid,
        });
        Ok(())
    }

    /// Takes in the migration's record and the router's report: timeline, conflicts, and how
    /// it ended.
    fn follow(&mut self, m: &Value, start_ms: u64, t: Duration) {
        let since_start = |at_ms: u64| at_ms.saturating_sub(start_ms) as f64 / 1e3;
        for h in m["lifecycle"]["history"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let at = h["at_ms"].as_u64().unwrap_or(0);
            if h["event"]["event"] == "destination_lease_bound" {
                self.timeline.lease_bound_s = Some(since_start(at));
            }
            if h["to"] == "ramping" && self.timeline.ramp_started_s.is_none() {
                self.timeline.ramp_started_s = Some(since_start(at));
            }
        }
        self.state = m["lifecycle"]["state"].as_str().unwrap_or("").to_owned();
        self.split = m["split_pct"].as_f64().unwrap_or(0.0);
        let Some(status) = self.lab.router_status() else { return };
        if let Some(current) = status.entries.iter().find(|e| e.ip_address == X) {
            let total = current.counters.conflicts.total();
            // The entry leaves the table when the migration ends: keep what the restarted router
            // had learned by its last report.
            for r in self.restarts.iter_mut().filter(|r| r.pid_after == status.pid) {
                r.flows_learned_after = r.flows_learned_after.max(current.counters.flows_learned);
                if let Some(path) = &status.data_path {
                    r.data_path_after.clone_from(&path.mode);
                    let restored = path.fast_path.as_ref().map_or(0, |f| f.flows_restored);
                    r.flows_restored_after = r.flows_restored_after.max(restored);
                }
            }
            match self.conflicts_by_router.iter_mut().find(|(pid, _)| *pid == status.pid) {
                Some((_, c)) => *c = total,
                None => self.conflicts_by_router.push((status.pid, total)),
            }
            if current.traffic_split_percentage >= 100.0 && self.timeline.split_100_s.is_none() {
                self.timeline.split_100_s = Some(t.as_secs_f64());
            }
        }
        if self.ended.is_none()
            && let Some(ended) = status.ended.iter().find(|e| e.ip == X)
        {
            self.ended = Some(ended.clone());
            self.reset_clients.extend(status.reset_clients.iter().copied());
        }
        let final_state = matches!(self.state.as_str(), "completed" | "rolled_back" | "aborted" | "failed");
        if final_state && self.timeline.ended_s.is_none() {
            let last = m["lifecycle"]["history"].as_array().and_then(|h| h.last()).and_then(|h| h["at_ms"].as_u64());
            self.timeline.ended_s = Some(last.map_or(t.as_secs_f64(), since_start));
        }
        self.last_router = Some(status);
    }

    /// A counter from a VM's traffic server status (`open`, `accepted`, ...).
    fn server_count(&self, vm: &str, key: &str) -> u64 {
        std::fs::read_to_string(self.lab.dir.join(format!("server-{vm}.json")))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v[key].as_u64())
            .unwrap_or(0)
    }

    fn progress(&self, t: Duration, tty: bool) {
        let split = match (
            self.state.as_str(),
            self.last_router.as_ref().and_then(|s| s.entries.iter().find(|e| e.ip_address == X)),
        ) {
            ("completed", _) => 100.0,
            ("rolled_back" | "aborted" | "failed", _) => 0.0,
            (_, Some(e)) => e.traffic_split_percentage,
            (_, None) => self.split,
        };
        let open = |vm: &str| self.server_count(vm, "open");
        let (mut completed, mut broken) = (0, 0);
        for i in 1..=self.args.clients {
            if let Ok(text) = std::fs::read_to_string(self.lab.dir.join(format!("progress-c{i}.json")))
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            {
                completed += v["completed"].as_u64().unwrap_or(0);
                broken += v["broken"].as_u64().unwrap_or(0);
            }
        }
        let bar = "#".repeat((split / 5.0).round() as usize);
        let line = format!(
            "t={:5.1}s {:<12} split {:5.1}% [{bar:<20}] on A {:4} on B {:4} completed {:6} broken {:3} conflicts {}",
            t.as_secs_f64(),
            self.state,
            split,
            open("a"),
            open("b"),
            completed,
            broken,
            self.conflicts()
        );
        if tty {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
    }
}

/// Lease events of the DHCP server by kind (bound, renewed, declined, refused, ...).
fn dhcp_events(path: &std::path::Path) -> std::collections::BTreeMap<String, u64> {
    let mut counts = std::collections::BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        if let Ok(event) = serde_json::from_str::<serde_json::Value>(line)
            && let Some(kind) = event["kind"].as_str()
        {
            *counts.entry(kind.to_owned()).or_default() += 1;
        }
    }
    counts
}

//! The demo's manager loop: traffic on, migration installed, the ramp started by B's bound lease,
//! the router's split recorded, router restarts injected, the address handed to B at cut-over.

use std::io::{BufRead, BufReader, IsTerminal, Seek, SeekFrom};
use std::time::{Duration, Instant as Clock};

use anyhow::{Context, bail};
use ipshadow_core::{CongestionControlParameters, MigrationOptions, Outcome, ShadowingEntry, VmId};
use ipshadow_dataplane::status::EndedMigration;
use ipshadow_dataplane::{Desired, DesiredEntry};

use super::DemoArgs;
use super::report::{DemoReport, Observed, Timeline};
use crate::lab::{Lab, SERVICE_PORT, X};
use crate::traffic::report::Report as TrafficReport;

/// Id of the demo's migration in the DHCP server's plan.
const MIGRATION_ID: u64 = 1;

/// A demo in progress.
pub struct Demo<'a> {
    lab: &'a Lab,
    args: &'a DemoArgs,
    desired: Desired,
    timeline: Timeline,
    /// Router process ids seen, with the last conflict total each reported.
    conflicts_by_router: Vec<(u32, u64)>,
    ended: Option<EndedMigration>,
    reset_clients: std::collections::BTreeSet<(std::net::Ipv4Addr, u16)>,
    last_router: Option<ipshadow_dataplane::Status>,
    /// A's deadline, unix seconds (the DHCP plan's).
    deadline_unix_s: u64,
}

impl<'a> Demo<'a> {
    /// A demo on a lab that is up.
    pub fn new(lab: &'a Lab, args: &'a DemoArgs) -> anyhow::Result<Self> {
        Ok(Self {
            lab,
            args,
            desired: Desired { addresses: [(X, VmId::from("vm-a"))].into(), entries: vec![] },
            timeline: Timeline::default(),
            conflicts_by_router: Vec::new(),
            ended: None,
            reset_clients: Default::default(),
            last_router: None,
            deadline_unix_s: 0,
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
        let dhcp = dhcp_events(&self.lab.dir.join("dhcp-events.jsonl"));
        let served = ["a", "b"].iter().map(|vm| (format!("vm-{vm}"), self.server_count(vm, "accepted"))).collect();
        let observed = Observed {
            timeline: self.timeline,
            ended: self.ended,
            reset_clients: self.reset_clients,
            router: self.last_router,
            conflicts,
            served,
            dhcp_events: dhcp,
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
        let start = crate::router::now();
        let deadline = start + Duration::from_secs(args.deadline);
        let options = MigrationOptions {
            strategy: args.strategy.to_core(),
            mode: args.mode.to_core(),
            affinity: args.affinity.to_core(),
            ramp: args.ramp()?,
            deadline: Some(deadline),
            salt: start.as_micros(),
        };
        let params = CongestionControlParameters::default();
        let entry = ShadowingEntry::new(X, VmId::from("vm-a"), VmId::from("vm-b"), start, params, options);
        self.desired.entries =
            vec![DesiredEntry { entry, lease_bound: false, promote: false, cut_over: false, finish_rollback: false }];
        self.lab.write_desired(&self.desired)?;
        let clock = Clock::now();
        self.timeline.started_unix_s = start.as_micros() as f64 / 1e6;
        // The DHCP server learns the plan (the standalone server reads plans at start), then B
        // boots its DHCP client and asks for an address.
        let events = self.lab.dir.join("dhcp-events.jsonl");
        let mut seen = std::fs::metadata(&events).map(|m| m.len()).unwrap_or(0);
        self.deadline_unix_s = deadline.as_micros() / 1_000_000;
        self.lab.start_dhcp(Some((MIGRATION_ID, self.deadline_unix_s, "active")))?;
        self.lab.dhcp_client("b", args.b_dhcp_client)?;
        let strategy = format!("{:?}", args.strategy).to_lowercase();
        eprintln!("ipshadow demo: migration of {X} from vm-a to vm-b started ({strategy} strategy)");

        let mut restarts: Vec<u64> = args.router_restarts.clone();
        restarts.sort_unstable();
        let tty = std::io::stderr().is_terminal();
        let mut last_line = Clock::now();
        let give_up = Duration::from_secs(args.deadline + 30);
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let t = clock.elapsed();
            if !self.desired.entries.is_empty() && !self.desired.entries[0].lease_bound && b_bound(&events, &mut seen)?
            {
                self.desired.entries[0].lease_bound = true;
                self.lab.write_desired(&self.desired)?;
                self.timeline.lease_bound_s = Some(t.as_secs_f64());
            }
            if restarts.first().is_some_and(|&r| t >= Duration::from_secs(r)) {
                restarts.remove(0);
                self.restart_router(t)?;
            }
            self.follow_router(t)?;
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
        Ok(())
    }

    fn restart_router(&mut self, t: Duration) -> anyhow::Result<()> {
        eprintln!("\nipshadow demo: killing the router (SIGKILL) at {:.1} s and starting it again", t.as_secs_f64());
        if let Some(pid) = self.lab.pid("router") {
            crate::lab::services::kill(pid, "KILL");
            while crate::lab::services::alive(pid) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let killed = Clock::now();
        self.lab.start_router()?;
        self.timeline.router_restarts.push((t.as_secs_f64(), killed.elapsed().as_secs_f64()));
        Ok(())
    }

    /// Reads the router's report: records the entry's split and state (a restarted router
    /// resumes there) and, at the end, gives the address to the winner.
    fn follow_router(&mut self, t: Duration) -> anyhow::Result<()> {
        let Some(status) = self.lab.router_status() else { return Ok(()) };
        let start = self.desired.entries.first().map(|d| d.entry.migration_start_time);
        if let Some(current) =
            status.entries.iter().find(|e| e.ip_address == X && Some(e.migration_start_time) == start)
        {
            let total = current.counters.conflicts.total();
            match self.conflicts_by_router.iter_mut().find(|(pid, _)| *pid == status.pid) {
                Some((_, c)) => *c = total,
                None => self.conflicts_by_router.push((status.pid, total)),
            }
            if current.traffic_split_percentage >= 100.0 && self.timeline.split_100_s.is_none() {
                self.timeline.split_100_s = Some(t.as_secs_f64());
            }
            let recorded = &mut self.desired.entries[0].entry;
            if recorded.state != current.state || recorded.traffic_split_percentage != current.traffic_split_percentage
            {
                recorded.state = current.state;
                recorded.traffic_split_percentage = current.traffic_split_percentage;
                recorded.counters = current.counters;
                self.lab.write_desired(&self.desired)?;
            }
        }
        if self.ended.is_none()
            && let Some(ended) = status.ended.iter().find(|e| e.ip == X)
        {
            let (winner, plan) =
                if ended.outcome == Outcome::Completed { ("vm-b", "completed") } else { ("vm-a", "rolled_back") };
            self.desired = Desired { addresses: [(X, VmId::from(winner))].into(), entries: vec![] };
            self.lab.write_desired(&self.desired)?;
            // The DHCP server learns how the plan ended: B's next renewal gets the normal lease.
            self.lab.start_dhcp(Some((MIGRATION_ID, self.deadline_unix_s, plan)))?;
            self.timeline.ended_s = Some(t.as_secs_f64());
            self.ended = Some(ended.clone());
            self.reset_clients.extend(status.reset_clients.iter().copied());
        }
        self.last_router = Some(status);
        Ok(())
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
        let split =
            match (&self.ended, self.last_router.as_ref().and_then(|s| s.entries.iter().find(|e| e.ip_address == X))) {
                (Some(e), _) if e.outcome == Outcome::Completed => 100.0,
                (Some(_), _) => 0.0,
                (None, Some(e)) => e.traffic_split_percentage,
                (None, None) => 0.0,
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
            "t={:5.1}s split {:5.1}% [{bar:<20}] on A {:4} on B {:4} completed {:6} broken {:3} conflicts {}",
            t.as_secs_f64(),
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

/// Whether the DHCP server's event log has, past `seen`, B's lease on X bound in the migration.
fn b_bound(path: &std::path::Path, seen: &mut u64) -> anyhow::Result<bool> {
    let Ok(mut file) = std::fs::File::open(path) else { return Ok(false) };
    file.seek(SeekFrom::Start(*seen))?;
    let mut found = false;
    for line in BufReader::new(file).lines() {
        let line = line?;
        *seen += line.len() as u64 + 1;
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        if event["kind"] == "bound"
            && event["vm"] == "vm-b"
            && event["ip"] == X.to_string()
            && !event["migration"].is_null()
        {
            found = true;
        }
    }
    Ok(found)
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

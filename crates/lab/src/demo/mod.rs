//! `ipshadow demo`: the lab, real traffic, one migration of X from VM A to VM B, the report.
//!
//! The demo is a user of the lab's `ipshadow serve`: it calls the reassign API with `migrate`,
//! starts VM B's DHCP client, and follows the migration through the API; the manager inside
//! `serve` does the rest (lease plan, shadowing entry, ramp on B's bound lease, cut-over at the
//! deadline, the address given to B).

mod faults;
mod manager;
mod report;
mod router_faults;

use std::time::Duration;

use anyhow::bail;
use clap::{ArgAction, Args};
use ipshadow_core::{Ramp, RampStep};

use crate::args::{AffinityArg, ModeArg, StrategyArg};
use crate::lab::Lab;

/// Options of `ipshadow demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// How new traffic is split: per flow (ipshadow), per packet (the seed's pseudocode), or an
    /// instant reassignment.
    #[arg(long, value_enum, default_value = "flow")]
    pub strategy: StrategyArg,
    /// B runs its own stack (independent) or is a state-synchronised copy of A (replica; the lab's
    /// VMs are independent Linux hosts, so replica mode only shows its arbitration).
    #[arg(long, value_enum, default_value = "independent")]
    pub mode: ModeArg,
    /// What a split decision pins: each flow, or every flow of a client address.
    #[arg(long, value_enum, default_value = "flow")]
    pub affinity: AffinityArg,
    /// Client hosts.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=50))]
    pub clients: u8,
    /// Long-lived TCP connections kept open, over all clients.
    #[arg(long, default_value_t = 500)]
    pub long_lived: u32,
    /// New short TCP connections per second, over all clients.
    #[arg(long, default_value_t = 20)]
    pub churn: u32,
    /// Shortest and longest lifetime of a long-lived connection, seconds.
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], default_values_t = [10u32, 30], action = ArgAction::Set)]
    pub lifetime: Vec<u32>,
    /// Seconds of traffic before the migration starts.
    #[arg(long, default_value_t = 8)]
    pub warmup: u64,
    /// Ramp steps in percent, each held `--ramp-hold` seconds (an override: by default the
    /// demo sends no ramp and the control plane fits its default ramp to the deadline).
    #[arg(long, value_delimiter = ',', value_name = "PCTS", action = ArgAction::Set)]
    pub ramp: Option<Vec<f64>>,
    /// Seconds each ramp step is held (an override, with `--ramp` or alone for the steps 1, 5,
    /// 25, 50, 100 %; default with `--ramp`: 5).
    #[arg(long, value_name = "SECS")]
    pub ramp_hold: Option<u64>,
    /// A's deadline (the cut-over), seconds after the migration starts (an override: by default
    /// the demo sends none and the deadline is the end of A's DHCP lease, 30-60 s away in the
    /// lab).
    #[arg(long, value_name = "SECS")]
    pub deadline: Option<u64>,
    /// Seconds of traffic after the cut-over.
    #[arg(long, default_value_t = 5)]
    pub after: u64,
    /// Kill `ipshadow serve` (API, manager, DHCP server and router) with SIGKILL this many
    /// seconds after the migration starts, and start it again (repeatable).
    #[arg(long = "restart-at", alias = "router-restart-at", value_name = "SECS")]
    pub restarts: Vec<u64>,
    /// Build the lab with the routers' interface towards VM B refusing XDP (as `lab up
    /// --refuse-xdp`): the demo on the AF_PACKET path the router falls back to.
    #[arg(long)]
    pub refuse_xdp: bool,
    /// How the routers forward (as `lab up --data-path`): `auto` (the default:
    /// the XDP fast path when the interfaces take it), `xdp`, `af-packet`.
    #[arg(long, value_enum, default_value = "auto")]
    pub data_path: crate::lab::DataPathChoice,
    /// Keep the lab's state in an etcd cluster of this many members, with the parts as
    /// processes of their own (as `lab up --etcd`): the router, the DHCP server, two managers
    /// and two API nodes.
    #[arg(long, value_name = "MEMBERS", default_value_t = 0)]
    pub etcd: u8,
    /// With `--etcd`: kill the leading manager (SIGKILL) this many seconds after the migration
    /// starts; it is started again as a standby (repeatable).
    #[arg(long = "kill-manager-at", value_name = "SECS")]
    pub kill_manager: Vec<u64>,
    /// With `--etcd`: kill etcd's leader member (SIGKILL) this many seconds after the migration
    /// starts; it stays down (repeatable, while a majority is left).
    #[arg(long = "kill-etcd-leader-at", value_name = "SECS")]
    pub kill_etcd_leader: Vec<u64>,
    /// With `--etcd`: cut etcd's leader member off its segment (link down) this many seconds
    /// after the migration starts, for 10 s.
    #[arg(long = "cut-etcd-leader-at", value_name = "SECS")]
    pub cut_etcd_leader: Vec<u64>,
    /// With `--etcd`: kill every etcd member (SIGKILL) this many seconds after the migration
    /// starts, and start them again 10 s later.
    #[arg(long = "etcd-down-at", value_name = "SECS")]
    pub etcd_down: Vec<u64>,
    /// Router hosts, as `lab up --routers`: 2 or more make a router group (one active, the
    /// others standing by) on etcd (one member unless `--etcd` says more).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=i64::from(crate::lab::MAX_ROUTERS)))]
    pub routers: u8,
    /// With `--routers 2` or more: kill the router that is active (SIGKILL) this many seconds
    /// after the migration starts; it is started again as a standby once another took over
    /// (repeatable).
    #[arg(long = "kill-router-at", value_name = "SECS")]
    pub kill_router: Vec<u64>,
    /// With `--routers 2` or more: kill a standby router (SIGKILL) this many seconds after the
    /// migration starts, and start it again (repeatable).
    #[arg(long = "kill-standby-router-at", value_name = "SECS")]
    pub kill_standby_router: Vec<u64>,
    /// With `--routers 2` or more: take every link of the active router down on the switch's
    /// side (provider, VM segments, control segment) this many seconds after the migration
    /// starts, for 10 s (repeatable).
    #[arg(long = "cut-router-at", value_name = "SECS")]
    pub cut_router: Vec<u64>,
    /// With `--routers 2` or more: cut the active router off etcd (its control-segment link
    /// down; still on the segments) this many seconds after the migration starts, for 10 s
    /// (repeatable).
    #[arg(long = "cut-router-store-at", value_name = "SECS")]
    pub cut_router_store: Vec<u64>,
    /// With `--routers 2` or more: pause the active router (SIGSTOP) this many seconds after the
    /// migration starts, for `--pause-for` seconds, then resume it (SIGCONT; repeatable).
    #[arg(long = "pause-router-at", value_name = "SECS")]
    pub pause_router: Vec<u64>,
    /// How long `--pause-router-at` pauses the router, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub pause_for: u64,
    /// VM B's DHCP client (VM A always runs dhclient).
    #[arg(long, value_enum, default_value = "dhclient")]
    pub b_dhcp_client: crate::lab::services::DhcpClient,
    /// Print the report as one JSON object (the keys of `simulate --json`).
    #[arg(long)]
    pub json: bool,
    /// Leave the lab up afterwards (`ipshadow lab down --prefix P` removes it).
    #[arg(long)]
    pub keep_lab: bool,
    /// Prefix of the lab's names.
    #[arg(long, default_value = "ipshdemo")]
    pub prefix: String,
}

/// The ramp's steps when only `--ramp-hold` is given.
const DEFAULT_STEPS: [f64; 5] = [1.0, 5.0, 25.0, 50.0, 100.0];
/// The hold of each step when only `--ramp` is given, seconds.
const DEFAULT_HOLD_SECS: u64 = 5;

impl DemoArgs {
    /// The ramp the user asked for, if any (none: the control plane's plan chooses).
    fn ramp(&self) -> anyhow::Result<Option<Ramp>> {
        if self.ramp.is_none() && self.ramp_hold.is_none() {
            return Ok(None);
        }
        let hold = Duration::from_secs(self.ramp_hold.unwrap_or(DEFAULT_HOLD_SECS));
        let pcts = self.ramp.as_deref().unwrap_or(&DEFAULT_STEPS);
        let ramp = Ramp::Steps { steps: pcts.iter().map(|&pct| RampStep { pct, hold }).collect() };
        ramp.validate().map_err(|e| anyhow::anyhow!("--ramp: {e}"))?;
        Ok(Some(ramp))
    }

    /// The latest time after the migration's start the deadline may be known to be before it
    /// is read from the API: the requested one, or the soonest A's lease can end in the lab
    /// (half its lease, when its DHCP client renews).
    fn earliest_deadline_secs(&self) -> u64 {
        self.deadline.unwrap_or(crate::lab::control::LEASE_SECS / 2)
    }

    fn check(&self) -> anyhow::Result<()> {
        self.ramp()?;
        if self.lifetime[1] < self.lifetime[0] || self.lifetime[0] == 0 {
            bail!("--lifetime: MIN must be at least 1 and MAX at least MIN");
        }
        let min = crate::lab::control::MIN_DEADLINE_SECS;
        if let Some(deadline) = self.deadline
            && !(min..=3600).contains(&deadline)
        {
            bail!("--deadline must be {min} to 3600 seconds (the lab's shortest deadline leaves B time to be ready)");
        }
        if self.long_lived > 20_000 || self.churn > 2_000 {
            bail!("--long-lived is at most 20000 and --churn at most 2000 per second in the lab");
        }
        let deadline = self.earliest_deadline_secs();
        if self.routers >= 2 && !self.restarts.is_empty() {
            bail!("--restart-at restarts the one router; with --routers, --kill-router-at kills the active one");
        }
        if let Some(late) = self.restarts.iter().find(|&&t| t >= deadline) {
            bail!("--restart-at {late} is not before the deadline ({deadline} s; without --deadline, A's lease end)");
        }
        let etcd_faults = || {
            self.kill_manager.iter().chain(&self.kill_etcd_leader).chain(&self.cut_etcd_leader).chain(&self.etcd_down)
        };
        if self.etcd_members() == 0 && etcd_faults().next().is_some() {
            bail!(
                "--kill-manager-at, --kill-etcd-leader-at, --cut-etcd-leader-at and --etcd-down-at need the lab on etcd (--etcd 3)"
            );
        }
        let router_faults = || {
            self.kill_router
                .iter()
                .chain(&self.kill_standby_router)
                .chain(&self.cut_router)
                .chain(&self.cut_router_store)
                .chain(&self.pause_router)
        };
        if self.routers < 2 && router_faults().next().is_some() {
            bail!(
                "--kill-router-at, --kill-standby-router-at, --cut-router-at, --cut-router-store-at and \
                 --pause-router-at need a router group (--routers 2)"
            );
        }
        if !(1..=60).contains(&self.pause_for) {
            bail!("--pause-for: 1 to 60 seconds");
        }
        if let Some(late) = etcd_faults().chain(router_faults()).find(|&&t| t >= deadline) {
            bail!("a fault at {late} s is not before the deadline ({deadline} s; without --deadline, A's lease end)");
        }
        // A cluster of n members keeps a majority through (n - 1) / 2 losses.
        let members = self.etcd_members();
        if self.kill_etcd_leader.len() > usize::from(members.saturating_sub(1) / 2) {
            bail!(
                "--kill-etcd-leader-at: {members} members keep a majority through {} kills",
                (members.max(1) - 1) / 2
            );
        }
        Ok(())
    }

    /// The members of the lab's etcd cluster: `--etcd`, or one for a router group without it.
    fn etcd_members(&self) -> u8 {
        if self.routers >= 2 { self.etcd.max(1) } else { self.etcd }
    }
}

/// Runs the demo: lab up, traffic, migration, report, lab down.
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    args.check()?;
    let lab = Lab::new(&args.prefix)?;
    lab.require_root()?;
    let hosts = if args.clients == 1 { "1 client host".to_owned() } else { format!("{} client hosts", args.clients) };
    let store = match args.etcd_members() {
        0 => String::new(),
        n => format!(", state in a {n}-member etcd cluster"),
    };
    let routers = if args.routers >= 2 { format!(", a group of {} routers", args.routers) } else { String::new() };
    eprintln!("ipshadow demo: building the lab ({hosts}, VM A holds 10.0.0.10 by DHCP{store}{routers})");
    lab.up(args.clients, args.etcd, args.routers, args.refuse_xdp, args.data_path)?;
    let result = manager::Demo::new(&lab, args).and_then(|demo| demo.run());
    if !args.keep_lab
        && let Err(e) = lab.down()
    {
        eprintln!("ipshadow demo: removing the lab: {e:#}");
    }
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(())
}

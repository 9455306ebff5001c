//! `ipshadow reassign`, `ipshadow migration ...` and `ipshadow shadowing`: the seed's reassign
//! call, the migrations it starts with the user's controls over them, and the shadowing table.

use std::net::Ipv4Addr;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use ipshadow_client::Api;
use ipshadow_control::migration::MigrationState;
use serde::Deserialize;
use serde_json::{Value, json};

use super::table::{Table, clean, duration, now_ms, pairs, pct, relative, utc};
use super::{ConnectArgs, parse, print_json, watch};

/// `ipshadow reassign`.
#[derive(Args, Debug)]
pub struct ReassignArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The address.
    ip: Ipv4Addr,
    /// The VM that gets it.
    #[arg(long, value_name = "VM")]
    to: String,
    /// Move it gradually without dropping connections (a migration) instead of at once.
    #[arg(long)]
    migrate: bool,
    /// Cut over this many seconds from now (default: the end of the source's lease, or the
    /// server's default).
    #[arg(long, value_name = "SECS", requires = "migrate")]
    deadline_in: Option<u64>,
    /// How new flows are split between the VMs.
    #[arg(long, value_parser = ["flow", "packet", "instant"], requires = "migrate")]
    strategy: Option<String>,
    /// Whether B runs its own stack or is a replica of A.
    #[arg(long, value_parser = ["independent", "replica"], requires = "migrate")]
    mode: Option<String>,
    /// What a split decision pins: each flow, or every flow of a client.
    #[arg(long, value_parser = ["flow", "client"], requires = "migrate")]
    affinity: Option<String>,
    /// Follow the migration until it ends (as `ipshadow migration watch`).
    #[arg(long, requires = "migrate", conflicts_with = "dry_run")]
    watch: bool,
    /// Only show what would happen (with `--migrate`: the plan, the ramp fitted to the
    /// deadline); nothing is created or changed.
    #[arg(long)]
    dry_run: bool,
}

/// `ipshadow migration`.
#[derive(Args, Debug)]
pub struct MigrationArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(subcommand)]
    command: MigrationCommand,
}

#[derive(Subcommand, Debug)]
enum MigrationCommand {
    /// List the migrations the token may see.
    List,
    /// Show one migration with its history.
    Show {
        /// Migration id.
        id: u64,
    },
    /// Freeze the split where it is (the migration must be ramping).
    Pause {
        /// Migration id.
        id: u64,
    },
    /// Let a paused split rise again.
    Resume {
        /// Migration id.
        id: u64,
    },
    /// Send every new flow to the destination from now on (ramping or paused).
    Promote {
        /// Migration id.
        id: u64,
    },
    /// Stop the migration: the address stays the source's.
    Abort {
        /// Migration id.
        id: u64,
    },
    /// Follow a migration until it ends: exit 0 when it completed, 1 when it did not.
    Watch {
        /// Migration id.
        id: u64,
    },
}

/// `ipshadow shadowing`.
#[derive(Args, Debug)]
pub struct ShadowingArgs {
    #[command(flatten)]
    connect: ConnectArgs,
}

/// A migration as the server sends it: what the commands print (the rest is ignored).
#[derive(Clone, Debug, Deserialize)]
pub struct Migration {
    /// Its id.
    pub id: u64,
    /// The address.
    pub ip: Ipv4Addr,
    /// The owner.
    pub tenant: String,
    /// VM A.
    pub source: String,
    /// VM B.
    pub destination: String,
    /// Split strategy.
    pub strategy: String,
    /// Mode.
    pub mode: String,
    /// Affinity.
    pub affinity: String,
    /// Cut-over time, unix milliseconds.
    pub deadline_ms: u64,
    /// Where the deadline came from.
    pub deadline_source: String,
    /// How the ramp was fitted to the deadline (absent on migrations older than plans).
    #[serde(default)]
    pub plan: Option<Plan>,
    /// Creation time, unix milliseconds.
    pub created_ms: u64,
    /// The split last reported, percent.
    pub split_pct: f64,
    /// State and history.
    pub lifecycle: Lifecycle,
    /// The router's latest measurements and drain forecast (`GET /v1/migrations/{id}` only,
    /// while the address is shadowed).
    #[serde(default)]
    pub observed: Option<Observed>,
    /// What the router's cut-over did, once it reported it.
    #[serde(default)]
    pub cut_over: Option<CutOver>,
}

/// The router's latest observation of a migration's address (also the `observation` events of
/// the stream): what the commands print (the rest is ignored).
#[derive(Clone, Debug, Deserialize)]
pub struct Observed {
    /// How old the report was when the server answered, milliseconds.
    #[serde(default)]
    pub age_ms: u64,
    /// The measurements.
    pub patterns: ObservedPatterns,
    /// The drain forecast of A's open flows, once any flow was observed.
    #[serde(default)]
    pub forecast: Option<Forecast>,
}

/// What the commands print of the router's measurements.
#[derive(Clone, Debug, Deserialize)]
pub struct ObservedPatterns {
    /// New inbound TCP flows per second.
    pub arrival_rate_per_s: f64,
    /// VM A.
    pub source: ObservedSide,
    /// VM B.
    pub destination: ObservedSide,
}

/// One VM's open flows.
#[derive(Clone, Debug, Deserialize)]
pub struct ObservedSide {
    /// TCP flows open.
    pub open: u32,
    /// Of those, idle.
    pub idle: u32,
}

/// What the commands print of the drain forecast.
#[derive(Clone, Debug, Deserialize)]
pub struct Forecast {
    /// Median time until A's last open flow has ended, milliseconds (absent: not foreseeable).
    #[serde(default)]
    pub p50_ms: Option<f64>,
    /// 90th percentile of the same.
    #[serde(default)]
    pub p90_ms: Option<f64>,
    /// Flows expected still open at the deadline.
    #[serde(default)]
    pub expected_open_at_deadline: Option<f64>,
}

impl Observed {
    /// `12 open on A (7 idle), 30 on B, 2.5 new/s`.
    pub fn flows(&self) -> String {
        let (a, b) = (&self.patterns.source, &self.patterns.destination);
        format!(
            "{} open on A ({} idle), {} on B, {} new/s",
            a.open,
            a.idle,
            b.open,
            trimmed(self.patterns.arrival_rate_per_s)
        )
    }

    /// `A drained in ~42s (p90 1m 10s)`, or why no date can be given.
    pub fn drain(&self) -> String {
        match &self.forecast {
            None => "no flow observed yet".to_owned(),
            Some(_) if self.patterns.source.open == 0 => "A has no open flow".to_owned(),
            Some(f) => match (f.p50_ms, f.p90_ms) {
                (Some(p50), Some(p90)) => {
                    format!("A drained in ~{} (p90 {})", ramp_time(p50.max(0.0) as u64), ramp_time(p90.max(0.0) as u64))
                }
                (Some(p50), None) => format!("A drained in ~{} (p90 not foreseeable)", ramp_time(p50.max(0.0) as u64)),
                _ => "not foreseeable (no flow has ended yet): the closing window ends them".to_owned(),
            },
        }
    }
}

/// What the router's cut-over did to A's last flows.
#[derive(Clone, Debug, Deserialize)]
pub struct CutOver {
    /// `deadline`, `drained` (early finish) or `requested`.
    pub cause: String,
    /// Time saved by an early finish, milliseconds.
    #[serde(default)]
    pub early_by_ms: Option<u64>,
    /// A's flows open when the end began.
    pub flows_open_on_losing_side: u64,
    /// Handed to B.
    #[serde(default)]
    pub handed_over: u64,
    /// Closed with an orderly FIN at an idle moment.
    #[serde(default)]
    pub closed_gracefully: u64,
    /// Reset.
    #[serde(default)]
    pub reset: u64,
}

impl CutOver {
    /// `drained, 3m 0s before the deadline: 3 closed gracefully, 0 reset, 0 handed over (of 3 open on A)`.
    pub fn text(&self) -> String {
        let when = match self.early_by_ms {
            Some(ms) => format!("{}, {} before the deadline", clean(&self.cause), ramp_time(ms)),
            None => clean(&self.cause),
        };
        format!(
            "{when}: {} closed gracefully, {} reset, {} handed over (of {} open on A)",
            self.closed_gracefully, self.reset, self.handed_over, self.flows_open_on_losing_side
        )
    }
}

/// `2.5`, `3`, `0.125`: at most three decimals.
fn trimmed(x: f64) -> String {
    let text = format!("{x:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// A migration's plan as the server sends it: what the commands print (the rest is ignored).
#[derive(Clone, Debug, Deserialize)]
pub struct Plan {
    /// The ramp the router follows (`{"kind": "steps", ...}` or `{"kind": "linear", ...}`).
    pub ramp: Value,
    /// `requested`, `default` or `default_scaled`.
    pub ramp_source: String,
    /// The share of the time to the deadline the ramp was fitted into, when scaled.
    #[serde(default)]
    pub share: Option<f64>,
    /// Ramp start to 100 %, milliseconds.
    pub ramp_to_100_ms: u64,
    /// B's time to be ready before the ramp starts, milliseconds.
    pub ready_allowance_ms: u64,
    /// Cut-over time, unix milliseconds.
    pub deadline_ms: u64,
    /// Where the deadline came from.
    pub deadline_source: String,
    /// Ramp at 100 % to deadline (at the latest), milliseconds.
    pub slack_ms: u64,
    /// The closing window before the deadline, milliseconds (absent on plans older than it).
    #[serde(default)]
    pub close_grace_ms: Option<u64>,
}

impl Plan {
    /// `key  value` pairs: the ramp, when it reaches 100 %, the cut-over and the slack.
    fn pairs(&self, now_ms: u64) -> Vec<(&'static str, String)> {
        let source = match (self.ramp_source.as_str(), self.share) {
            ("default_scaled", Some(share)) => {
                format!("default, shortened to reach 100% within {} of the time to the deadline", pct(share * 100.0))
            }
            (source, _) => clean(source),
        };
        vec![
            ("ramp", format!("{} ({source})", ramp_text(&self.ramp))),
            (
                "100% after",
                format!(
                    "{} of ramp (which starts once the destination is ready: {} allowed)",
                    ramp_time(self.ramp_to_100_ms),
                    ramp_time(self.ready_allowance_ms)
                ),
            ),
            (
                "cut-over",
                format!(
                    "{} ({}, {})",
                    utc(self.deadline_ms),
                    relative(self.deadline_ms, now_ms),
                    clean(&self.deadline_source)
                ),
            ),
            ("drain time", format!("{} at 100% before the cut-over, at least", ramp_time(self.slack_ms))),
        ]
        .into_iter()
        .chain(self.close_grace_ms.map(|ms| {
            (
                "closing window",
                format!("the last {} before the cut-over: A's remaining flows closed at an idle moment", ramp_time(ms)),
            )
        }))
        .collect()
    }
}

/// A ramp's time: tenths of a second below a minute (holds are often a few seconds, and a
/// fitted one need not be whole), else as [`duration`].
fn ramp_time(ms: u64) -> String {
    if ms < 60_000 {
        let text = format!("{:.1}", ms as f64 / 1000.0);
        format!("{}s", text.trim_end_matches('0').trim_end_matches('.'))
    } else {
        duration(ms)
    }
}

/// `1, 5, 25, 50, 100% every 6s`, `1% 2s, 50% 4s, 100% 4s`, `linear 2%/s`.
fn ramp_text(ramp: &Value) -> String {
    match ramp["kind"].as_str() {
        Some("linear") => format!("linear {}/s", pct(ramp["pct_per_sec"].as_f64().unwrap_or(0.0))),
        Some("steps") => {
            let steps = ramp["steps"].as_array().map(Vec::as_slice).unwrap_or_default();
            let step = |s: &Value| (s["pct"].as_f64().unwrap_or(0.0), s["hold_ms"].as_u64().unwrap_or(0));
            let holds: Vec<u64> = steps.iter().map(|s| step(s).1).collect();
            if holds.windows(2).all(|w| w[0] == w[1]) {
                let pcts: Vec<String> = steps.iter().map(|s| pct(step(s).0).trim_end_matches('%').to_owned()).collect();
                format!("{}% every {}", pcts.join(", "), ramp_time(holds.first().copied().unwrap_or(0)))
            } else {
                let each: Vec<String> =
                    steps.iter().map(|s| format!("{} {}", pct(step(s).0), ramp_time(step(s).1))).collect();
                each.join(", ")
            }
        }
        _ => clean(&ramp.to_string()),
    }
}

/// A migration's state and history.
#[derive(Clone, Debug, Deserialize)]
pub struct Lifecycle {
    /// Where it is.
    pub state: MigrationState,
    /// Every step.
    pub history: Vec<Step>,
    /// B was promoted.
    #[serde(default)]
    pub promoted: bool,
}

/// One step of the history.
#[derive(Clone, Debug, Deserialize)]
pub struct Step {
    /// When, unix milliseconds.
    pub at_ms: u64,
    /// State before.
    pub from: MigrationState,
    /// State after.
    pub to: MigrationState,
    /// The event: its name, and its reason when it has one.
    pub event: Value,
}

/// A state as the API spells it (`waiting_for_destination_lease`).
pub fn state_name(state: MigrationState) -> String {
    state.as_str().to_owned()
}

impl Migration {
    /// `10.0.0.10 vm-a -> vm-b`.
    pub fn route(&self) -> String {
        clean(&format!("{} {} -> {}", self.ip, self.source, self.destination))
    }

    /// The cut-over, relative to now, while it can still come.
    pub fn cut_over(&self, now_ms: u64) -> String {
        if self.lifecycle.state.is_final() { "-".into() } else { relative(self.deadline_ms, now_ms) }
    }

    fn details(&self) -> String {
        let now = now_ms();
        let mut items = vec![
            ("id", self.id.to_string()),
            ("address", self.route()),
            ("tenant", self.tenant.clone()),
            ("state", state_name(self.lifecycle.state)),
            ("split", pct(self.split_pct)),
            ("promoted", if self.lifecycle.promoted { "yes" } else { "no" }.into()),
            ("strategy", format!("{} ({}, affinity {})", self.strategy, self.mode, self.affinity)),
            ("cut-over", format!("{} ({}, {})", utc(self.deadline_ms), self.cut_over(now), self.deadline_source)),
            ("created", format!("{} ({})", utc(self.created_ms), relative(self.created_ms, now))),
        ];
        if let Some(plan) = &self.plan {
            // The cut-over is shown above, relative to now while it can still come.
            items.extend(plan.pairs(now).into_iter().filter(|(k, _)| *k != "cut-over"));
        }
        if let Some(seen) = &self.observed {
            items.push(("flows", format!("{} (measured {} ago)", seen.flows(), ramp_time(seen.age_ms))));
            let mut drain = seen.drain();
            if let Some(n) = seen.forecast.as_ref().and_then(|f| f.expected_open_at_deadline) {
                drain.push_str(&format!("; {} expected open at the cut-over", trimmed(n)));
            }
            items.push(("drain forecast", drain));
        }
        if let Some(end) = &self.cut_over {
            items.push(("ended", end.text()));
        }
        let mut text = pairs(&items);
        let mut history = Table::new(&["AT", "FROM", "TO", "EVENT"]);
        for step in &self.lifecycle.history {
            let name = step.event["event"].as_str().unwrap_or("?");
            let event = match step.event["reason"].as_str() {
                Some(reason) => format!("{name}: {reason}"),
                None => name.to_owned(),
            };
            history.row(vec![utc(step.at_ms), state_name(step.from), state_name(step.to), event]);
        }
        if !history.is_empty() {
            text.push_str(&format!("\n{history}"));
        }
        text
    }
}

/// Runs `ipshadow reassign`.
pub fn run_reassign(args: &ReassignArgs) -> anyhow::Result<()> {
    let api = args.connect.connect()?;
    let mut body = json!({"to": args.to, "migrate": args.migrate});
    let fields = [("strategy", &args.strategy), ("mode", &args.mode), ("affinity", &args.affinity)];
    for (name, value) in fields {
        if let Some(value) = value {
            body[name] = json!(value);
        }
    }
    if args.dry_run {
        body["dry_run"] = json!(true);
    }
    if let Some(secs) = args.deadline_in {
        let deadline =
            secs.checked_mul(1000).and_then(|ms| ms.checked_add(now_ms())).context("--deadline-in is too far")?;
        body["deadline_ms"] = json!(deadline);
    }
    let reply = api.post(&format!("/v1/addresses/{}/reassign", args.ip), Some(&body))?;
    if args.connect.json {
        print_json(&reply)?;
    }
    if args.dry_run {
        return if args.connect.json { Ok(()) } else { print_dry_run(&api, reply) };
    }
    // Without migrate: `{"result": "moved", "address": ...}`; with it: the migration.
    if reply.get("result").is_some() {
        if !args.connect.json {
            println!("{} moved to {}", args.ip, clean(&args.to));
        }
        return Ok(());
    }
    let m: Migration = parse(&api, reply)?;
    if !args.connect.json {
        println!(
            "migration {} started: {}, cut-over {} ({})",
            m.id,
            m.route(),
            utc(m.deadline_ms),
            relative(m.deadline_ms, now_ms())
        );
        if !args.watch {
            println!("follow it: ipshadow migration watch {}", m.id);
        }
    }
    if args.watch { watch::run(&api, m.id, args.connect.json) } else { Ok(()) }
}

/// A dry run's answer as the server sends it.
#[derive(Deserialize)]
struct DryRun {
    result: String,
    ip: Ipv4Addr,
    source: Option<String>,
    destination: String,
    plan: Option<Plan>,
}

/// Prints what a dry run says would happen.
fn print_dry_run(api: &Api, reply: Value) -> anyhow::Result<()> {
    let dry: DryRun = parse(api, reply)?;
    let route = clean(&format!("{} {} -> {}", dry.ip, dry.source.as_deref().unwrap_or("(none)"), dry.destination));
    match (dry.result.as_str(), &dry.plan) {
        ("would_migrate", Some(plan)) => {
            println!("dry run: {route} would migrate (nothing changed)");
            print!("{}", pairs(&plan.pairs(now_ms())));
        }
        _ => println!("dry run: {route} would move at once (nothing changed)"),
    }
    Ok(())
}

/// Runs `ipshadow migration ...`.
pub fn run_migration(args: &MigrationArgs) -> anyhow::Result<()> {
    let api = args.connect.connect()?;
    let json = args.connect.json;
    let (id, action) = match &args.command {
        MigrationCommand::List => return list(&api, json),
        MigrationCommand::Watch { id } => return watch::run(&api, *id, json),
        MigrationCommand::Show { id } => {
            let reply = api.get(&format!("/v1/migrations/{id}"))?;
            if json {
                return print_json(&reply);
            }
            print!("{}", parse::<Migration>(&api, reply)?.details());
            return Ok(());
        }
        MigrationCommand::Pause { id } => (id, "pause"),
        MigrationCommand::Resume { id } => (id, "resume"),
        MigrationCommand::Promote { id } => (id, "promote"),
        MigrationCommand::Abort { id } => (id, "abort"),
    };
    let reply = api.post(&format!("/v1/migrations/{id}/{action}"), None)?;
    if json {
        return print_json(&reply);
    }
    let m: Migration = parse(&api, reply)?;
    let state = state_name(m.lifecycle.state);
    match action {
        "promote" => println!("migration {id}: promoted, every new flow goes to {} ({state})", clean(&m.destination)),
        _ => println!("migration {id}: {state} (split {})", pct(m.split_pct)),
    }
    Ok(())
}

/// Every migration the caller may see, page after page (the server sends at most 1000 at a time).
fn all_migrations(api: &Api) -> anyhow::Result<serde_json::Value> {
    const PAGE: usize = 1000;
    let mut all = Vec::new();
    let mut after = 0u64;
    loop {
        let reply = api.get(&format!("/v1/migrations?after={after}&limit={PAGE}"))?;
        let serde_json::Value::Array(page) = reply else {
            anyhow::bail!("the server's migration list is not a JSON array");
        };
        let n = page.len();
        let last = page.last().and_then(|m| m.get("id")).and_then(serde_json::Value::as_u64);
        all.extend(page);
        match last {
            Some(id) if n == PAGE && id > after => after = id,
            _ => return Ok(serde_json::Value::Array(all)),
        }
    }
}

fn list(api: &Api, json: bool) -> anyhow::Result<()> {
    let reply = all_migrations(api)?;
    if json {
        return print_json(&reply);
    }
    let now = now_ms();
    let mut table = Table::new(&["ID", "IP", "SOURCE", "DESTINATION", "STATE", "SPLIT", "PROMOTED", "CUT-OVER"]);
    for m in parse::<Vec<Migration>>(api, reply)? {
        let promoted = if m.lifecycle.promoted { "yes" } else { "no" };
        table.row(vec![
            m.id.to_string(),
            m.ip.to_string(),
            m.source.clone(),
            m.destination.clone(),
            state_name(m.lifecycle.state),
            pct(m.split_pct),
            promoted.into(),
            m.cut_over(now),
        ]);
    }
    print!("{table}");
    Ok(())
}

/// One row of the seed's shadowing table as the server sends it.
#[derive(Deserialize)]
struct ShadowingEntry {
    ip_address: Ipv4Addr,
    source_vm_id: String,
    destination_vm_id: String,
    migration_start_time: u64,
    traffic_split_percentage: f64,
    state: MigrationState,
    migration_id: u64,
    deadline_ms: u64,
}

/// Runs `ipshadow shadowing`: the seed's table, one row per shadowed address.
pub fn run_shadowing(args: &ShadowingArgs) -> anyhow::Result<()> {
    let api = args.connect.connect()?;
    let reply = api.get("/v1/shadowing")?;
    if args.connect.json {
        return print_json(&reply);
    }
    let now = now_ms();
    // The seed's field names, as the columns' names.
    let mut table = Table::new(&[
        "IP_ADDRESS",
        "SOURCE_VM_ID",
        "DESTINATION_VM_ID",
        "MIGRATION_START_TIME",
        "TRAFFIC_SPLIT_PERCENTAGE",
        "STATE",
        "MIGRATION",
        "CUT-OVER",
    ]);
    for e in parse::<Vec<ShadowingEntry>>(&api, reply)? {
        table.row(vec![
            e.ip_address.to_string(),
            e.source_vm_id,
            e.destination_vm_id,
            utc(e.migration_start_time),
            pct(e.traffic_split_percentage),
            state_name(e.state),
            e.migration_id.to_string(),
            relative(e.deadline_ms, now),
        ]);
    }
    print!("{table}");
    Ok(())
}

/// Options of `ipshadow status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Which part of the server's process (admin token).
    #[arg(value_enum)]
    part: StatusPart,
}

/// A part `ipshadow status` shows.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum StatusPart {
    /// The Shadow Router's report (`GET /v1/router/status`).
    Router,
    /// The DHCP server's leases, counters and lease events (`GET /v1/dhcp/status`).
    Dhcp,
}

/// Runs `ipshadow status router|dhcp`: a summary, or the whole report with `--json`.
pub fn run_status(args: &StatusArgs) -> anyhow::Result<()> {
    let api = args.connect.connect()?;
    let path = match args.part {
        StatusPart::Router => "/v1/router/status",
        StatusPart::Dhcp => "/v1/dhcp/status",
    };
    let reply = api.get(path)?;
    if args.connect.json {
        return print_json(&reply);
    }
    match args.part {
        StatusPart::Router => {
            println!("flows {}", reply["flows"]);
            let mut table = Table::new(&["IP_ADDRESS", "SOURCE_VM_ID", "DESTINATION_VM_ID", "STATE", "SPLIT_%"]);
            for e in reply["entries"].as_array().map(Vec::as_slice).unwrap_or_default() {
                let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                table.row(vec![
                    text(&e["ip_address"]),
                    text(&e["source_vm_id"]),
                    text(&e["destination_vm_id"]),
                    text(&e["state"]),
                    format!("{:.1}", e["traffic_split_percentage"].as_f64().unwrap_or(0.0)),
                ]);
            }
            print!("{table}");
            let mut ports = Table::new(&["INTERFACE", "ROLE", "RECEIVED", "SENT", "SEND_ERRORS"]);
            for p in reply["ports"].as_array().map(Vec::as_slice).unwrap_or_default() {
                let cell = |k: &str| p[k].as_str().map_or_else(|| p[k].to_string(), str::to_owned);
                ports.row(vec![cell("interface"), cell("role"), cell("received"), cell("sent"), cell("send_errors")]);
            }
            print!("{ports}");
        }
        StatusPart::Dhcp => {
            println!("lease events {}", reply["events"]);
            let mut table = Table::new(&["IP", "VM", "CLIENT", "EXPIRES_IN_S", "MIGRATION", "ROLE"]);
            let now = now_ms();
            for l in reply["leases"].as_array().map(Vec::as_slice).unwrap_or_default() {
                let text = |v: &Value| {
                    v.as_str().map_or_else(|| if v.is_null() { "-".into() } else { v.to_string() }, str::to_owned)
                };
                let left = l["expires_ms"].as_u64().unwrap_or(0).saturating_sub(now) / 1000;
                table.row(vec![
                    text(&l["ip"]),
                    text(&l["vm"]),
                    text(&l["client"]),
                    left.to_string(),
                    text(&l["migration"]),
                    text(&l["role"]),
                ]);
            }
            print!("{table}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Issue 12: `migration show` prints the router's flows and drain forecast while the
    /// address is shadowed, and what the cut-over did once it ended (early: the time saved).
    #[test]
    fn show_prints_the_forecast_and_the_cut_over() {
        let mut m = json!({
            "id": 1, "ip": "10.0.0.10", "tenant": "acme", "source": "vm-a", "destination": "vm-b",
            "strategy": "flow", "mode": "independent", "affinity": "flow", "deadline_ms": 1_800_000_300_000u64,
            "deadline_source": "drain_forecast", "created_ms": 1_800_000_000_000u64, "split_pct": 100.0,
            "lifecycle": {"state": "ramping", "history": [{"at_ms": 1_800_000_100_000u64, "from": "ramping",
                "to": "ramping", "event": {"event": "deadline_extended", "from_ms": 1, "to_ms": 2,
                "reason": "12 open flows on vm-a forecast to drain in 250 s"}}]},
            "observed": {"at_ms": 1, "age_ms": 400,
                "patterns": {"arrival_rate_per_s": 2.5, "source": {"open": 12, "idle": 7},
                    "destination": {"open": 30, "idle": 1}},
                "forecast": {"open": 12, "p50_ms": 42_000.0, "p90_ms": 70_000.0, "expected_open_at_deadline": 0.25}}
        });
        let shown = serde_json::from_value::<Migration>(m.clone()).unwrap().details();
        for part in [
            "12 open on A (7 idle), 30 on B, 2.5 new/s (measured 0.4s ago)",
            "A drained in ~42s (p90 1m 10s); 0.25 expected open at the cut-over",
            "deadline_extended: 12 open flows on vm-a forecast to drain in 250 s",
            "drain_forecast",
        ] {
            assert!(shown.contains(part), "{part:?} missing:\n{shown}");
        }
        m["observed"] = Value::Null;
        m["lifecycle"]["state"] = json!("completed");
        m["cut_over"] = json!({"at_ms": 1, "cause": "drained", "early_by_ms": 180_000, "flows_open_on_losing_side": 3,
            "handed_over": 0, "closed_gracefully": 3, "reset": 0});
        let shown = serde_json::from_value::<Migration>(m).unwrap().details();
        assert!(
            shown.contains(
                "drained, 3m 00s before the deadline: 3 closed gracefully, 0 reset, 0 handed over (of 3 open on A)"
            ),
            "{shown}"
        );
        assert!(!shown.contains("drain forecast"), "{shown}");
    }
}

//! `ipshadow simulate`: options -> scenario -> report (table or JSON) and an optional plot.

use core::time::Duration;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{ArgAction, Args, ValueEnum};
use ipshadow_core::{Affinity, Mode, Ramp, RampStep, Strategy};
use ipshadow_sim::scenario::{self, Fault, ScenarioConfig};

/// Options of `ipshadow simulate`. Every default is the default scenario's.
#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// How new traffic is split: per flow (ipshadow), per packet (the seed's pseudocode), or an
    /// instant reassignment.
    #[arg(long, value_enum, default_value = "flow")]
    strategy: StrategyArg,
    /// B runs its own stack (independent) or is a state-synchronised copy of A (replica).
    #[arg(long, value_enum, default_value = "independent")]
    mode: ModeArg,
    /// What a split decision pins: each flow, or every flow of a client address.
    #[arg(long, value_enum, default_value = "flow")]
    affinity: AffinityArg,
    /// Seed of every random choice in the run: same seed, same output.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Client hosts.
    #[arg(long, default_value_t = 50)]
    clients: u16,
    /// Long-lived TCP connections kept open.
    #[arg(long, default_value_t = 1000)]
    long_lived: u32,
    /// New short TCP connections per second.
    #[arg(long, default_value_t = 50)]
    churn: u32,
    /// New UDP sessions per second.
    #[arg(long, default_value_t = 10)]
    udp: u32,
    /// Shortest and longest lifetime of a long-lived connection, seconds (uniform between).
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], default_values_t = [30.0, 150.0], action = ArgAction::Set)]
    lifetime: Vec<f64>,
    /// Length of the run, seconds.
    #[arg(long, default_value_t = 300.0)]
    duration: f64,
    /// When the migration starts, seconds.
    #[arg(long, default_value_t = 20.0)]
    migration_start: f64,
    /// B's lease is bound this long after the start, seconds.
    #[arg(long, default_value_t = 5.0)]
    lease_delay: f64,
    /// A's lease ends (cut-over) this long after the migration start, seconds.
    #[arg(long, default_value_t = 220.0)]
    deadline: f64,
    /// Ramp steps in percent, held `--ramp-hold` seconds each.
    #[arg(long, value_delimiter = ',', default_value = "1,5,25,50,100", conflicts_with = "ramp_linear", action = ArgAction::Set)]
    ramp: Vec<f64>,
    /// Seconds each ramp step is held.
    #[arg(long, default_value_t = 10.0)]
    ramp_hold: f64,
    /// A linear ramp instead of steps: percentage points per second.
    #[arg(long)]
    ramp_linear: Option<f64>,
    /// Frame loss on each client cable, in [0, 1).
    #[arg(long, default_value_t = 0.001)]
    loss: f64,
    /// A fault to inject (repeatable): b-dies@SECS, a-dies@SECS, router-restart@SECS,
    /// non-owner@FROM-TO (A's frames also reach B), loss@SHARE.
    #[arg(long = "fault")]
    faults: Vec<Fault>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Draw the split and the live connections on A and B over time into an SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

/// `--strategy` on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum StrategyArg {
    Flow,
    Packet,
    Instant,
}

/// `--mode` on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum ModeArg {
    Independent,
    Replica,
}

/// `--affinity` on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum AffinityArg {
    Flow,
    Client,
}

impl StrategyArg {
    /// The core's strategy.
    pub(crate) fn to_core(self) -> Strategy {
        match self {
            StrategyArg::Flow => Strategy::Flow,
            StrategyArg::Packet => Strategy::Packet,
            StrategyArg::Instant => Strategy::Instant,
        }
    }
}

impl ModeArg {
    /// The core's mode.
    pub(crate) fn to_core(self) -> Mode {
        match self {
            ModeArg::Independent => Mode::Independent,
            ModeArg::Replica => Mode::Replica,
        }
    }
}

impl AffinityArg {
    /// The core's affinity.
    pub(crate) fn to_core(self) -> Affinity {
        match self {
            AffinityArg::Flow => Affinity::Flow,
            AffinityArg::Client => Affinity::Client,
        }
    }
}

fn seconds(name: &str, v: f64) -> anyhow::Result<Duration> {
    if !(v.is_finite() && (0.0..=scenario::MAX_SECONDS).contains(&v)) {
        bail!("--{name} must be a number of seconds from 0 to 1e9, not {v}");
    }
    Ok(Duration::try_from_secs_f64(v)?)
}

impl SimulateArgs {
    fn config(&self) -> anyhow::Result<ScenarioConfig> {
        let mut c = ScenarioConfig {
            seed: self.seed,
            strategy: self.strategy.to_core(),
            mode: self.mode.to_core(),
            affinity: self.affinity.to_core(),
            clients: self.clients,
            long_lived: self.long_lived,
            churn_per_sec: self.churn,
            udp_per_sec: self.udp,
            faults: self.faults.clone(),
            ..ScenarioConfig::default()
        };
        if self.clients == 0 {
            bail!("--clients must be at least 1");
        }
        if self.churn > scenario::MAX_RATE || self.udp > scenario::MAX_RATE {
            bail!("--churn and --udp must be at most {} per second", scenario::MAX_RATE);
        }
        let [min, max] = [self.lifetime[0], self.lifetime[1]];
        c.lifetime_min = seconds("lifetime", min)?;
        c.lifetime_max = seconds("lifetime", max)?;
        if c.lifetime_max < c.lifetime_min {
            bail!("--lifetime: MAX ({max}) is below MIN ({min})");
        }
        c.duration = seconds("duration", self.duration)?;
        c.migration_start = seconds("migration-start", self.migration_start)?;
        c.lease_delay = seconds("lease-delay", self.lease_delay)?;
        c.deadline = seconds("deadline", self.deadline)?;
        c.workload_stop = c.duration.saturating_sub(Duration::from_secs(30).min(c.duration / 10));
        if !(0.0..1.0).contains(&self.loss) {
            bail!("--loss must be in [0, 1), not {}", self.loss);
        }
        c.client_link.loss = self.loss;
        if self.ramp_linear.is_some() && self.ramp_hold != 10.0 {
            bail!("--ramp-hold applies to --ramp steps, not to --ramp-linear");
        }
        c.ramp = match self.ramp_linear {
            Some(pct_per_sec) => Ramp::Linear { pct_per_sec },
            None => {
                let hold = seconds("ramp-hold", self.ramp_hold)?;
                Ramp::Steps { steps: self.ramp.iter().map(|&pct| RampStep { pct, hold }).collect() }
            }
        };
        c.ramp.validate().context("--ramp")?;
        Ok(c)
    }
}

/// Runs the scenario and prints the report; wall time goes to stderr so stdout stays the same
/// for the same seed.
pub fn run(args: &SimulateArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let started = std::time::Instant::now();
    let report = scenario::run(&config)?;
    let wall = started.elapsed();
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut stdout, &report)?;
        writeln!(stdout)?;
    } else {
        write!(stdout, "{}", report.human())?;
    }
    if let Some(path) = &args.plot {
        crate::plot::draw(path, &report).with_context(|| format!("drawing {}", path.display()))?;
        if !args.json {
            writeln!(stdout, "Plot written to {}", path.display())?;
        }
    }
    let frames = report.frames_forwarded();
    eprintln!(
        "wall time {:.2} s for {:.0} s simulated; {} frames forwarded = {:.0} simulated packets/s",
        wall.as_secs_f64(),
        report.simulated_seconds,
        frames,
        frames as f64 / wall.as_secs_f64().max(1e-9)
    );
    Ok(())
}

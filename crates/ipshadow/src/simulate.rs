//! `ipshadow simulate`: options -> scenario -> report (table or JSON) and an optional plot.

use core::time::Duration;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{ArgAction, Args, ValueEnum};
use ipshadow_control::plan::{PlanInput, plan};
use ipshadow_control::reassign::{DeadlinePolicy, DeadlineSource};
use ipshadow_core::{Ramp, RampStep};
use ipshadow_lab::args::{AffinityArg, ModeArg, StrategyArg};
use ipshadow_sim::scenario::{self, Ecmp, Fault, Lifetime, ReplyPath, ScenarioConfig};

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
    /// How long-lived connections' lifetimes are distributed; each takes its own parameters
    /// (`--lifetime`, `--lifetime-mean`, `--lifetime-scale`/`--lifetime-alpha`,
    /// `--lifetime-median`/`--lifetime-sigma`).
    #[arg(long, value_enum, default_value = "uniform")]
    lifetime_dist: LifetimeDistArg,
    /// uniform: shortest and longest lifetime of a long-lived connection, seconds [default: 30 150].
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], action = ArgAction::Set)]
    lifetime: Option<Vec<f64>>,
    /// exponential: mean lifetime, seconds [default: 60].
    #[arg(long, value_name = "SECS")]
    lifetime_mean: Option<f64>,
    /// pareto: the shortest lifetime (the scale), seconds [default: 20].
    #[arg(long, value_name = "SECS")]
    lifetime_scale: Option<f64>,
    /// pareto: the tail index alpha (heavier below 2; the mean is infinite at 1 or below) [default: 1.5].
    #[arg(long, value_name = "ALPHA")]
    lifetime_alpha: Option<f64>,
    /// lognormal: median lifetime, seconds [default: 40].
    #[arg(long, value_name = "SECS")]
    lifetime_median: Option<f64>,
    /// lognormal: standard deviation of the lifetime's logarithm [default: 1].
    #[arg(long, value_name = "SIGMA")]
    lifetime_sigma: Option<f64>,
    /// Length of the run, seconds.
    #[arg(long, default_value_t = 300.0)]
    duration: f64,
    /// End the run this many seconds after the migration ended, if that is before `--duration`
    /// (a day-long `--deadline` then costs no wall time once the migration finished early).
    #[arg(long, value_name = "SECS")]
    end_after_migration: Option<f64>,
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
    /// The ramp a migration requested with no ramp gets from the control plane instead of
    /// `--ramp`: `fixed` is the default ramp as it is (1, 5, 25, 50, 100 % every 30 s), `planned`
    /// the plan derived from it and `--deadline` (its holds scaled so it reaches 100 % by half
    /// the time to the deadline, at most 30 s each; the default `[policy]`).
    #[arg(long, value_enum, conflicts_with_all = ["ramp", "ramp_linear", "ramp_hold"])]
    ramp_plan: Option<RampPlanArg>,
    /// Frame loss on each client cable, in [0, 1).
    #[arg(long, default_value_t = 0.001)]
    loss: f64,
    /// A fault to inject (repeatable): b-dies@SECS, a-dies@SECS, router-restart@SECS,
    /// non-owner@FROM-TO (A's frames also reach B), loss@SHARE, server-closes-idle@SECS (from
    /// then on A's server closes connections idle for 0.3 s with a FIN, like a keep-alive timeout).
    #[arg(long = "fault")]
    faults: Vec<Fault>,
    /// Mean pause between a long-lived connection's exchanges, seconds (+-20 %).
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Two routers behind ECMP instead of one (docs/ecmp.md): the clients' flows hashed across
    /// them; the VMs' replies through the same router (symmetric), through the first one for
    /// every flow (single: one gateway MAC on the VM side), or through the other one (crossed).
    #[arg(long, value_enum, value_name = "REPLIES")]
    ecmp: Option<EcmpArg>,
    /// With `--ecmp`: the second router starts its ramp this many milliseconds after the first.
    #[arg(long, default_value_t = 20, requires = "ecmp")]
    ecmp_skew_ms: u64,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Draw the split and the live connections on A and B over time into an SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

/// `--lifetime-dist` on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LifetimeDistArg {
    Uniform,
    Exponential,
    Pareto,
    Lognormal,
}

/// `--ecmp` on the command line: which router the VMs' replies cross.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum EcmpArg {
    /// The router the flow's requests crossed.
    Symmetric,
    /// The first router, for every flow.
    Single,
    /// The other router, for every flow.
    Crossed,
}

/// `--ramp-plan` on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum RampPlanArg {
    /// The control plane's default ramp, unfitted.
    Fixed,
    /// The control plane's plan for `--deadline`.
    Planned,
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
        c.lifetime = self.lifetime()?;
        c.duration = seconds("duration", self.duration)?;
        c.end_after_migration = self.end_after_migration.map(|s| seconds("end-after-migration", s)).transpose()?;
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
        c.ramp = match (self.ramp_plan, self.ramp_linear) {
            (Some(RampPlanArg::Fixed), _) => Ramp::default(),
            (Some(RampPlanArg::Planned), _) => planned_ramp(c.deadline)?,
            (None, Some(pct_per_sec)) => Ramp::Linear { pct_per_sec },
            (None, None) => {
                let hold = seconds("ramp-hold", self.ramp_hold)?;
                Ramp::Steps { steps: self.ramp.iter().map(|&pct| RampStep { pct, hold }).collect() }
            }
        };
        c.ramp.validate().context("--ramp")?;
        c.interval = seconds("interval", self.interval)?;
        if c.interval.is_zero() {
            bail!("--interval must be positive");
        }
        c.ecmp = self.ecmp.map(|replies| Ecmp {
            replies: match replies {
                EcmpArg::Symmetric => ReplyPath::Symmetric,
                EcmpArg::Single => ReplyPath::Single,
                EcmpArg::Crossed => ReplyPath::Crossed,
            },
            skew: Duration::from_millis(self.ecmp_skew_ms),
        });
        Ok(c)
    }

    /// The lifetime distribution and its parameters; a parameter of another distribution is
    /// refused rather than ignored.
    fn lifetime(&self) -> anyhow::Result<Lifetime> {
        use LifetimeDistArg as D;
        let dist = self.lifetime_dist;
        for (given, name, of) in [
            (self.lifetime.is_some(), "--lifetime", D::Uniform),
            (self.lifetime_mean.is_some(), "--lifetime-mean", D::Exponential),
            (self.lifetime_scale.is_some(), "--lifetime-scale", D::Pareto),
            (self.lifetime_alpha.is_some(), "--lifetime-alpha", D::Pareto),
            (self.lifetime_median.is_some(), "--lifetime-median", D::Lognormal),
            (self.lifetime_sigma.is_some(), "--lifetime-sigma", D::Lognormal),
        ] {
            if given && of != dist {
                bail!("{name} applies to --lifetime-dist {}, not {}", value_name(of), value_name(dist));
            }
        }
        let lifetime = match dist {
            D::Uniform => {
                let (min_s, max_s) = match self.lifetime.as_deref() {
                    Some(&[min, max]) => (min, max),
                    Some(_) => bail!("--lifetime takes two values: MIN MAX"),
                    None => (30.0, 150.0),
                };
                seconds("lifetime", min_s)?;
                seconds("lifetime", max_s)?;
                if max_s < min_s {
                    bail!("--lifetime: MAX ({max_s}) is below MIN ({min_s})");
                }
                Lifetime::Uniform { min_s, max_s }
            }
            D::Exponential => Lifetime::Exponential { mean_s: self.lifetime_mean.unwrap_or(60.0) },
            D::Pareto => Lifetime::Pareto {
                scale_s: self.lifetime_scale.unwrap_or(20.0),
                alpha: self.lifetime_alpha.unwrap_or(1.5),
            },
            D::Lognormal => Lifetime::LogNormal {
                median_s: self.lifetime_median.unwrap_or(40.0),
                sigma: self.lifetime_sigma.unwrap_or(1.0),
            },
        };
        lifetime.validate().map_err(|e| anyhow::anyhow!("--lifetime-dist {}: {}", value_name(dist), e.why))?;
        Ok(lifetime)
    }
}

/// The name clap shows for a value.
fn value_name(v: impl ValueEnum) -> String {
    v.to_possible_value().map_or_else(String::new, |p| p.get_name().to_owned())
}

/// The ramp the control plane plans for a migration requested with no ramp and this deadline
/// (counted from the request, which is the scenario's migration start), under the default policy.
fn planned_ramp(deadline: Duration) -> anyhow::Result<Ramp> {
    let deadline_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
    let input = PlanInput { requested: None, now_ms: 0, deadline_ms, deadline_source: DeadlineSource::Requested };
    match plan(input, &DeadlinePolicy::default()) {
        Ok(plan) => Ok(plan.ramp),
        Err(misfit) => bail!("--ramp-plan planned: {misfit}"),
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

//! What a scenario runs: topology, workload, migration and faults.

use core::fmt;
use core::str::FromStr;
use core::time::Duration;

use ipshadow_core::{Affinity, CongestionControlParameters, Mode, Ramp, RampStep, Strategy};
use serde::Serialize;

use super::ecmp::Ecmp;
use super::lifetime::Lifetime;
use crate::link::LinkConfig;

/// Something that goes wrong during a run. Times are from the start of the run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum Fault {
    /// VM B stops (no frame in or out) at `at_s`.
    BDies {
        /// Seconds from the start.
        at_s: f64,
    },
    /// VM A stops at `at_s`.
    ADies {
        /// Seconds from the start.
        at_s: f64,
    },
    /// The router process restarts at `at_s`: all flow state is lost, the entry is re-installed
    /// from the manager's store.
    RouterRestart {
        /// Seconds from the start.
        at_s: f64,
    },
    /// From `from_s` to `to_s` frames the router delivers to A alone are also copied to B
    /// (a flooding switch), so B answers flows it does not own.
    NonOwnerReplies {
        /// Seconds from the start.
        from_s: f64,
        /// Seconds from the start.
        to_s: f64,
    },
    /// Every client link loses this share of frames (replaces the scenario's mild loss).
    Loss {
        /// In [0, 1).
        share: f64,
    },
    /// From `at_s` on, A's server closes every TCP connection that has been idle (everything
    /// answered and acknowledged) for [`crate::app::server::KEEPALIVE_TIMEOUT`], with an orderly
    /// FIN, as nginx's `keepalive_timeout` or a graceful reload does. A keep-alive client sees
    /// the close while it has no request outstanding and reconnects: nothing is lost.
    ServerClosesIdle {
        /// Seconds from the start.
        at_s: f64,
    },
}

/// A fault description that could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad fault {given:?}: {why} (expected b-dies@SECS, a-dies@SECS, router-restart@SECS, non-owner@FROM-TO, loss@SHARE, server-closes-idle@SECS)"
)]
pub struct FaultParseError {
    given: String,
    why: &'static str,
}

impl FromStr for Fault {
    type Err = FaultParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| FaultParseError { given: s.to_owned(), why };
        let (name, arg) = s.split_once('@').ok_or_else(|| err("missing '@'"))?;
        let secs = |v: &str| -> Result<f64, FaultParseError> {
            let x: f64 = v.trim().parse().map_err(|_| err("not a number"))?;
            if x.is_finite() && (0.0..=MAX_SECONDS).contains(&x) {
                Ok(x)
            } else {
                Err(err("must be a number from 0 to 1e9"))
            }
        };
        match name.trim() {
            "b-dies" => Ok(Fault::BDies { at_s: secs(arg)? }),
            "a-dies" => Ok(Fault::ADies { at_s: secs(arg)? }),
            "router-restart" => Ok(Fault::RouterRestart { at_s: secs(arg)? }),
            "server-closes-idle" => Ok(Fault::ServerClosesIdle { at_s: secs(arg)? }),
            "non-owner" => {
                let (a, b) = arg.split_once('-').ok_or_else(|| err("needs FROM-TO"))?;
                let (from_s, to_s) = (secs(a)?, secs(b)?);
                if to_s <= from_s {
                    return Err(err("TO must be after FROM"));
                }
                Ok(Fault::NonOwnerReplies { from_s, to_s })
            }
            "loss" => {
                let share = secs(arg)?;
                if share >= 1.0 {
                    return Err(err("loss share must be below 1"));
                }
                Ok(Fault::Loss { share })
            }
            _ => Err(err("unknown fault")),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::BDies { at_s } => write!(f, "b-dies@{at_s}"),
            Fault::ADies { at_s } => write!(f, "a-dies@{at_s}"),
            Fault::RouterRestart { at_s } => write!(f, "router-restart@{at_s}"),
            Fault::NonOwnerReplies { from_s, to_s } => write!(f, "non-owner@{from_s}-{to_s}"),
            Fault::Loss { share } => write!(f, "loss@{share}"),
            Fault::ServerClosesIdle { at_s } => write!(f, "server-closes-idle@{at_s}"),
        }
    }
}

/// The longest time any option may name, in seconds (about 31 years of simulated time).
pub const MAX_SECONDS: f64 = 1e9;

/// The most new connections or sessions per second (the gap between two must be at least 1 us).
pub const MAX_RATE: u32 = 100_000;

/// A scenario that cannot run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct ConfigError {
    /// The option at fault.
    pub field: &'static str,
    /// What is wrong with it.
    pub why: String,
}

/// Everything a run depends on. Same config, same run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScenarioConfig {
    /// Seeds every RNG of the run (links, stacks, workload).
    pub seed: u64,
    /// Split strategy.
    pub strategy: Strategy,
    /// Independent or replica.
    pub mode: Mode,
    /// Per flow or per client.
    pub affinity: Affinity,
    /// Client hosts on the provider segment.
    pub clients: u16,
    /// Long-lived connections kept open (each replaced when it ends, until `workload_stop`).
    pub long_lived: u32,
    /// The first long-lived connections open evenly over this period.
    #[serde(with = "secs")]
    pub long_lived_ramp_up: Duration,
    /// How long a long-lived connection is meant to last (drawn once per connection; the
    /// client closes it at that moment).
    pub lifetime: Lifetime,
    /// Mean pause between a long-lived connection's exchanges (+-20 %).
    #[serde(with = "secs")]
    pub interval: Duration,
    /// New short TCP connections per second (1 to 3 exchanges each).
    pub churn_per_sec: u32,
    /// New UDP sessions per second (5 exchanges each).
    pub udp_per_sec: u32,
    /// No connection opens after this.
    #[serde(with = "secs")]
    pub workload_stop: Duration,
    /// Length of the run.
    #[serde(with = "secs")]
    pub duration: Duration,
    /// The run ends this long after the migration ended (cut-over, or a rollback finished),
    /// when that comes before `duration`: a deadline a day away costs no wall time once the
    /// migration has finished early. `None`: the run lasts `duration`.
    #[serde(with = "opt_secs")]
    pub end_after_migration: Option<Duration>,
    /// When the migration starts (the entry is installed; B has been offered X).
    #[serde(with = "secs")]
    pub migration_start: Duration,
    /// B's lease becomes bound this long after the start: the ramp begins.
    #[serde(with = "secs")]
    pub lease_delay: Duration,
    /// A's lease ends this long after the migration start: cut-over.
    #[serde(with = "secs")]
    pub deadline: Duration,
    /// B's short shadow lease: after a rollback B holds X at most this long.
    #[serde(with = "secs")]
    pub shadow_lease: Duration,
    /// How the split rises.
    pub ramp: Ramp,
    /// AIMD on the split.
    pub congestion: CongestionControlParameters,
    /// Each client's cable to the router.
    #[serde(skip)]
    pub client_link: LinkConfig,
    /// Each VM's cable to the router.
    #[serde(skip)]
    pub vm_link: LinkConfig,
    /// smoltcp stacks per VM (see [`crate::vm`]); 32 keeps each stack near 30 sockets.
    pub vm_stacks: usize,
    /// A connection with no progress for this long is broken.
    #[serde(with = "secs")]
    pub app_timeout: Duration,
    /// Health probes: a VM that has not answered for this long has failed.
    #[serde(with = "secs")]
    pub failure_detection: Duration,
    /// Faults to inject.
    pub faults: Vec<Fault>,
    /// Two routers behind ECMP instead of one (docs/ecmp.md); `None`: one router.
    pub ecmp: Option<Ecmp>,
    /// Time granularity: events are rounded up to a multiple of it, so frames that arrive
    /// close together are handled in one pass.
    #[serde(skip)]
    pub tick: Duration,
}

impl Default for ScenarioConfig {
    /// The default scenario: 1,000 long-lived connections (lifetimes uniform in 30..150 s) plus
    /// 50 new short connections and 10 UDP sessions per second from 50 clients over cables with
    /// 0.1 % loss; the migration starts at 20 s, B's lease is bound 5 s later, the split steps
    /// 1, 5, 25, 50, 100 % every 10 s, A's lease ends at 240 s; the run ends at 300 s.
    fn default() -> Self {
        let step = |pct| RampStep { pct, hold: Duration::from_secs(10) };
        Self {
            seed: 1,
            strategy: Strategy::Flow,
            mode: Mode::Independent,
            affinity: Affinity::Flow,
            clients: 50,
            long_lived: 1000,
            long_lived_ramp_up: Duration::from_secs(10),
            lifetime: Lifetime::Uniform { min_s: 30.0, max_s: 150.0 },
            interval: Duration::from_secs(1),
            churn_per_sec: 50,
            udp_per_sec: 10,
            workload_stop: Duration::from_secs(270),
            duration: Duration::from_secs(300),
            end_after_migration: None,
            migration_start: Duration::from_secs(20),
            lease_delay: Duration::from_secs(5),
            deadline: Duration::from_secs(220),
            shadow_lease: Duration::from_secs(60),
            ramp: Ramp::Steps { steps: vec![step(1.0), step(5.0), step(25.0), step(50.0), step(100.0)] },
            congestion: CongestionControlParameters::default(),
            client_link: LinkConfig {
                latency: Duration::from_millis(2),
                jitter: Duration::from_micros(500),
                loss: 0.001,
            },
            vm_link: LinkConfig { latency: Duration::from_micros(200), jitter: Duration::ZERO, loss: 0.0 },
            vm_stacks: 32,
            app_timeout: Duration::from_secs(30),
            failure_detection: Duration::from_secs(3),
            faults: Vec::new(),
            ecmp: None,
            tick: Duration::from_micros(100),
        }
    }
}

impl ScenarioConfig {
    /// Checks that the scenario can run; the error names the option.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, why: &str| Err(ConfigError { field, why: why.to_owned() });
        if !(1..=60_000).contains(&self.clients) {
            return bad("clients", "must be within 1..=60000");
        }
        if self.churn_per_sec > MAX_RATE || self.udp_per_sec > MAX_RATE {
            return bad("churn/udp", "at most 100000 per second");
        }
        self.lifetime.validate()?;
        if let Some(linger) = self.end_after_migration
            && linger.as_secs_f64() > MAX_SECONDS
        {
            return bad("end_after_migration", "must be at most 1e9 seconds");
        }
        if self.vm_stacks == 0 || self.vm_stacks > 1024 {
            return bad("vm_stacks", "must be within 1..=1024");
        }
        for (field, d) in [
            ("duration", self.duration),
            ("migration_start", self.migration_start),
            ("deadline", self.deadline),
            ("lease_delay", self.lease_delay),
            ("interval", self.interval),
            ("ecmp skew", self.ecmp.map_or(Duration::ZERO, |e| e.skew)),
        ] {
            if d.as_secs_f64() > MAX_SECONDS {
                return bad(field, "must be at most 1e9 seconds");
            }
        }
        for (field, link) in [("client link", self.client_link), ("vm link", self.vm_link)] {
            if !(0.0..1.0).contains(&link.loss) {
                return bad(field, "loss must be in [0, 1)");
            }
        }
        if self.tick.is_zero() {
            return bad("tick", "must be positive");
        }
        self.ramp.validate().map_err(|e| ConfigError { field: "ramp", why: e.to_string() })?;
        self.congestion.validate().map_err(|e| ConfigError { field: "congestion", why: e.to_string() })
    }
}

/// Durations as seconds (a float) in the JSON report.
mod secs {
    use core::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// Optional durations as seconds (a float, or null) in the JSON report.
mod opt_secs {
    use core::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}

//! The scenario: clients, the router (or two behind ECMP) and two VMs in one simulated
//! network, a migration of X from A to B under load, faults, and the report.

mod config;
mod control;
mod ecmp;
mod lifetime;
mod report;
mod world;

pub use config::{ConfigError, Fault, FaultParseError, MAX_RATE, MAX_SECONDS, ScenarioConfig};
pub use ecmp::{Ecmp, EcmpReport, ReplyPath, RouterView};
pub use lifetime::Lifetime;
pub use report::{Breaks, FailureReport, ForecastCheck, Report, RouterSummary, Sample, Tally, Timeline};

/// Runs a scenario to its end and reports; refuses a scenario that cannot run.
pub fn run(config: &ScenarioConfig) -> Result<Report, ConfigError> {
    config.validate()?;
    let mut world = world::World::new(config.clone());
    world.run();
    Ok(world.report())
}

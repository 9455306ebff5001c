//! The scenario: clients, the router and two VMs in one simulated network, a migration of X
//! from A to B under load, faults, and the report.

mod config;
mod control;
mod report;
mod world;

pub use config::{Fault, FaultParseError, ScenarioConfig};
pub use report::{Breaks, FailureReport, Report, Sample, Tally, Timeline};

/// Runs a scenario to its end and reports.
pub fn run(config: &ScenarioConfig) -> Report {
    let mut world = world::World::new(config.clone());
    world.run();
    world.report()
}

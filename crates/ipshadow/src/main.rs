//! `ipshadow`: move an IP address from one VM to another without dropping a connection.
//!
//! Subcommands so far: `simulate` (the migration in a deterministic simulated network) and
//! `dhcp` (the DHCP server alone).

mod dhcp;
mod plot;
mod simulate;

use clap::{Parser, Subcommand};

/// Move an IP address from one VM to another without dropping a connection.
#[derive(Parser, Debug)]
#[command(name = "ipshadow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a migration in a deterministic simulated network (no privileges needed): real TCP
    /// stacks (smoltcp) in clients and VMs, the shadowing core in between, a virtual clock.
    Simulate(simulate::SimulateArgs),
    /// Run the DHCP server alone from a configuration file (leases for migrations, durable
    /// lease store); lease events are printed as JSON lines.
    Dhcp(dhcp::DhcpArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Simulate(args) => simulate::run(&args),
        Command::Dhcp(args) => dhcp::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line with the cause chain; a backtrace is for bugs, not for bad options.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

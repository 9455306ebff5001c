//! `ipshadow`: move an IP address from one VM to another without dropping a connection.
//!
//! Subcommands so far: `simulate` (the migration in a deterministic simulated network).

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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Simulate(args) => simulate::run(&args),
    }
}

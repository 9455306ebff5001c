//! `ipshadow`: move an IP address from one VM to another without dropping a connection.
//!
//! `serve` runs the parts (API, manager, DHCP server, router) in one process; `vm`, `address`,
//! `reassign`, `migration` and `shadowing` are its CLI client; `router` and `dhcp` run one part
//! alone; `lab` and `demo` build the network-namespace lab and migrate in it under real traffic;
//! `simulate` runs the migration in a deterministic simulated network; `traffic` is the lab's
//! verified workload. `lab`, `demo` and `traffic` live in `ipshadow_lab`, apart from the
//! product's code.

mod client;
mod dhcp;
mod plot;
mod router;
mod serve;
mod simulate;

use clap::{Parser, Subcommand};
use ipshadow_lab::{demo, lab, traffic};

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
    /// Generate verified TCP traffic for the lab: `traffic serve` in the VMs, `traffic run` in
    /// the client hosts (every byte checked, each connection completed, broken or open).
    Traffic(traffic::TrafficArgs),
    /// Build, inspect or remove the lab: client hosts, the router, VM A and VM B in Linux
    /// network namespaces, with real DHCP clients and TCP servers (needs root).
    Lab(lab::LabArgs),
    /// Run a migration in the lab under real traffic and print the report: lab up, traffic,
    /// migration of 10.0.0.10 from VM A to VM B, lab down (needs root; without it, use
    /// `simulate`).
    Demo(demo::DemoArgs),
    /// Run the REST API, the network manager and (with `[router]` and `[dhcp]` in --config) the
    /// Shadow Router and the DHCP server in one process on the embedded store (defaults: API on
    /// 127.0.0.1:7480, data in ./ipshadow-data/, admin token from IPSHADOW_ADMIN_TOKEN).
    Serve(serve::ServeArgs),
    /// Run the Shadow Router on Linux interfaces (AF_PACKET; needs root): it follows the
    /// desired state in its state directory and reports its status there.
    Router(router::RouterArgs),
    /// Add, list, show or remove VMs through the API (--api URL / IPSHADOW_API, --token /
    /// IPSHADOW_TOKEN).
    Vm(client::inventory::VmArgs),
    /// Add, list or show addresses through the API.
    Address(client::inventory::AddressArgs),
    /// Reassign an address to another VM: at once, or with --migrate without dropping
    /// connections (--watch follows the migration).
    Reassign(client::migrations::ReassignArgs),
    /// List, show, pause, resume, promote, abort or watch (live progress) migrations.
    Migration(client::migrations::MigrationArgs),
    /// Show the shadowing table: every address shadowed now, with its split.
    Shadowing(client::migrations::ShadowingArgs),
    /// Show a part of the server's process: `router` (shadowing table, flows, ports) or `dhcp`
    /// (leases, lease events); the whole report with --json (admin token).
    Status(client::migrations::StatusArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Simulate(args) => simulate::run(&args),
        Command::Dhcp(args) => dhcp::run(&args),
        Command::Traffic(args) => traffic::run(&args),
        Command::Router(args) => router::run(&args),
        Command::Lab(args) => lab::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Vm(args) => client::inventory::run_vm(&args),
        Command::Address(args) => client::inventory::run_address(&args),
        Command::Reassign(args) => client::migrations::run_reassign(&args),
        Command::Migration(args) => client::migrations::run_migration(&args),
        Command::Shadowing(args) => client::migrations::run_shadowing(&args),
        Command::Status(args) => client::migrations::run_status(&args),
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

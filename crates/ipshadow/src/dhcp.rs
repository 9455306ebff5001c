//! `ipshadow dhcp`: the DHCP server alone, from a configuration file, for tests and benchmarks.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::Args;
use ipshadow_dhcp::DhcpConfig;
use ipshadow_dhcp::service::Service;

/// Options of `ipshadow dhcp`.
#[derive(Args, Debug)]
pub struct DhcpArgs {
    /// The server's configuration (TOML; unknown keys are refused).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

/// Runs the server until the process is stopped. Lease events are printed as JSON lines. Every
/// ACK is sent after its lease is on disk, so stopping it at any moment (even SIGKILL) loses
/// nothing a client was told.
pub fn run(args: &DhcpArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.config).with_context(|| format!("reading {}", args.config.display()))?;
    let config = DhcpConfig::from_toml(&text).with_context(|| format!("in {}", args.config.display()))?;
    let new_store = !config.lease_store.exists();
    let store = config.lease_store.clone();
    let mut service = Service::start(config).with_context(|| format!("starting with {}", args.config.display()))?;
    if new_store {
        eprintln!("ipshadow dhcp: created a new, empty lease store at {}", store.display());
    }
    if let Some(addr) = service.local_addr() {
        eprintln!("ipshadow dhcp: serving on {addr}, {} leases loaded", service.server().leases().len());
    }
    // Nothing sets it yet: the process runs until killed, which loses nothing (see above).
    let stop = AtomicBool::new(false);
    service.run(&stop, &mut std::io::stdout().lock())?;
    Ok(())
}

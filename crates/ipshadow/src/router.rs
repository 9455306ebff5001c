//! `ipshadow router`: the Shadow Router on Linux interfaces. One provider-side port and one port
//! per VM, AF_PACKET rings on each, one thread polling them all. It follows the desired state in
//! its state directory (`desired.json`, written by the manager) and reports `status.json` there
//! a few times a second. Killing it loses nothing the manager needs: a new process reads the same
//! document and resumes every migration at its recorded split; flows it no longer knows are
//! learned from the VMs' replies. This is the command line only: the ports, the loop and the
//! state directory are `ipshadow_dataplane::runtime`'s.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ipshadow_core::{CongestionControlParameters, EntryState, Instant, MigrationOptions, ShadowingEntry, VmId};
use ipshadow_dataplane::runtime::DataPath;
use ipshadow_dataplane::runtime::{StateDirControl, parse_mac};
use ipshadow_dataplane::{Desired, DesiredEntry, Router, RouterClock, RouterSetup, VmPort};

/// Options of `ipshadow router`.
#[derive(Args, Debug)]
pub struct RouterArgs {
    /// Interface towards the clients (the provider segment).
    #[arg(long, value_name = "IFACE")]
    provider: String,
    /// A VM port, `ID=IFACE` or `ID=IFACE,MAC` (repeat, one per VM). Without a MAC the VM's
    /// address is learned from the first frame it sends.
    #[arg(long = "vm", value_name = "ID=IFACE[,MAC]", value_parser = parse_vm, required = true)]
    vms: Vec<VmPort>,
    /// The VMs' gateway address: the router answers ARP for it on the VM side.
    #[arg(long, value_name = "IP")]
    gateway: Ipv4Addr,
    /// A plain (not shadowed) address and the VM holding it, `IP=ID` (repeat). The desired
    /// state adds to these.
    #[arg(long = "address", value_name = "IP=ID", value_parser = parse_address)]
    addresses: Vec<(Ipv4Addr, VmId)>,
    /// Directory of the desired state (`desired.json`, watched) and the status report
    /// (`status.json`, rewritten every `--status-ms`).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// A shadowing entry frozen at a split, for benchmarks: `IP=SOURCE,DESTINATION,PCT`.
    #[arg(long = "fixed-split", value_name = "IP=SRC,DST,PCT", value_parser = parse_fixed)]
    fixed: Vec<(Ipv4Addr, VmId, VmId, f64)>,
    /// Most flows tracked (memory is reserved at start, about 77 bytes per flow).
    #[arg(long, default_value_t = 1 << 20)]
    max_flows: usize,
    /// Let the host's kernel process the frames of the router's interfaces too. By default an
    /// nftables ingress table drops them after the router's sockets have seen them (the kernel
    /// would otherwise look up a route for every frame, or forward it a second time if IP
    /// forwarding is on); ARP and DHCP (UDP port 67) from the VMs still reach the host.
    #[arg(long)]
    kernel_sees_frames: bool,
    /// Never sleep waiting for frames: poll the rings in a loop (one CPU fully busy, for a
    /// dedicated core; saves the wake-up on every batch).
    #[arg(long)]
    busy_poll: bool,
    /// How often the status report is written and the desired state checked, in milliseconds.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    status_ms: u64,
    /// How frames are forwarded: `auto` (the XDP fast path when the interfaces take it in driver
    /// mode, else AF_PACKET, said in one log line), `xdp` (or fail), `af-packet`.
    #[arg(long, value_enum, default_value_t = DataPathArg::Auto)]
    data_path: DataPathArg,
    /// Where the XDP fast path pins its flows, so that a restarted router keeps them: a
    /// directory on a bpffs (default: under /run/ipshadow/bpf, mounted if needed).
    #[arg(long, value_name = "DIR")]
    bpf_dir: Option<PathBuf>,
}

/// `--data-path`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DataPathArg {
    /// XDP when it loads, else AF_PACKET.
    Auto,
    /// XDP or fail.
    Xdp,
    /// AF_PACKET only.
    AfPacket,
}

impl From<DataPathArg> for DataPath {
    fn from(arg: DataPathArg) -> Self {
        match arg {
            DataPathArg::Auto => DataPath::Auto,
            DataPathArg::Xdp => DataPath::Xdp,
            DataPathArg::AfPacket => DataPath::AfPacket,
        }
    }
}

fn parse_vm(s: &str) -> Result<VmPort, String> {
    let (id, rest) = s.split_once('=').ok_or("expected ID=IFACE[,MAC]")?;
    let (interface, mac) = match rest.split_once(',') {
        Some((i, m)) => (i, Some(parse_mac(m).map_err(|e| e.to_string())?)),
        None => (rest, None),
    };
    if id.is_empty() || interface.is_empty() {
        return Err("expected ID=IFACE[,MAC]".into());
    }
    Ok(VmPort { id: VmId::from(id), interface: interface.to_owned(), mac })
}

fn parse_address(s: &str) -> Result<(Ipv4Addr, VmId), String> {
    let (ip, id) = s.split_once('=').ok_or("expected IP=ID")?;
    let ip = ip.parse().map_err(|_| format!("bad IPv4 address {ip:?}"))?;
    Ok((ip, VmId::from(id)))
}

fn parse_fixed(s: &str) -> Result<(Ipv4Addr, VmId, VmId, f64), String> {
    let (ip, rest) = s.split_once('=').ok_or("expected IP=SOURCE,DESTINATION,PCT")?;
    let ip = ip.parse().map_err(|_| format!("bad IPv4 address {ip:?}"))?;
    let [source, destination, pct] = rest.split(',').collect::<Vec<_>>()[..] else {
        return Err("expected IP=SOURCE,DESTINATION,PCT".into());
    };
    let pct: f64 = pct.parse().map_err(|_| format!("bad percentage {pct:?}"))?;
    if !(0.0..=100.0).contains(&pct) {
        return Err(format!("percentage {pct} outside 0..=100"));
    }
    Ok((ip, VmId::from(source), VmId::from(destination), pct))
}

/// The fixed part of the desired state: the command line's addresses (the first VM given for an
/// address wins) and frozen entries.
fn fixed(args: &RouterArgs, started: Instant) -> Desired {
    let mut desired = Desired::default();
    for (ip, vm) in &args.addresses {
        desired.addresses.entry(*ip).or_insert_with(|| vm.clone());
    }
    for (ip, source, destination, pct) in &args.fixed {
        let options = MigrationOptions { salt: u64::from(u32::from(*ip)), ..MigrationOptions::default() };
        let params = CongestionControlParameters::default();
        let mut entry = ShadowingEntry::new(*ip, source.clone(), destination.clone(), started, params, options);
        entry.traffic_split_percentage = *pct;
        entry.state = EntryState::Paused;
        desired.entries.push(DesiredEntry {
            entry,
            lease_bound: true,
            promote: false,
            cut_over: false,
            finish_rollback: false,
        });
    }
    desired
}

/// Runs the router until SIGTERM or SIGINT.
pub fn run(args: &RouterArgs) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("installing signal handlers")?;
    }
    let clock = RouterClock::start();
    let clocks = clock.read();
    let started = clocks.wall;
    let setup = RouterSetup {
        provider: args.provider.clone(),
        vms: args.vms.clone(),
        gateway: args.gateway,
        max_flows: args.max_flows,
        neighbours: ipshadow_core::neighbours::NeighbourConfig::default(),
        kernel_sees_frames: args.kernel_sees_frames,
        busy_poll: args.busy_poll,
        status_period: Duration::from_millis(args.status_ms),
        group: None,
        data_path: args.data_path.into(),
        bpf_dir: args.bpf_dir.clone(),
    };
    let mut router = Router::open(setup, clocks)?;
    if let Some(dir) = &args.state_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let period = Duration::from_millis(args.status_ms);
    let mut control = StateDirControl::new(args.state_dir.clone(), period, fixed(args, started), clocks.now);
    if let Err(e) = control.refresh() {
        eprintln!("ipshadow router: {:#}; starting without it", anyhow::Error::new(e));
    }
    router.apply(&control.current(), clocks);
    eprintln!("ipshadow router: {} ({} shadowed)", router.describe(), router.forwarder.node.core.entries().count());
    router.run(&stop, &mut control, || clock.read())?;
    eprintln!("ipshadow router: stopped after {} frames", router.forwarder.frames);
    Ok(())
}

//! `ipshadow router`: the Shadow Router on Linux interfaces. One provider-side port and one port
//! per VM, AF_PACKET rings on each, one thread polling them all. It follows the desired state in
//! its state directory (`desired.json`, written by the manager) and reports `status.json` there
//! a few times a second. Killing it loses nothing the manager needs: a new process reads the same
//! document and resumes every migration at its recorded split; flows it no longer knows are
//! learned from the VMs' replies.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Args;
use ipshadow_core::{Clocks, CongestionControlParameters, EntryState, Instant, MigrationOptions, ShadowingEntry, VmId};
use ipshadow_dataplane::{Desired, DesiredEntry, Status};

pub mod runtime;

pub use runtime::{Router, RouterControl, RouterSetup, VmPort, parse_mac};

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
}

fn parse_vm(s: &str) -> Result<VmPort, String> {
    let (id, rest) = s.split_once('=').ok_or("expected ID=IFACE[,MAC]")?;
    let (interface, mac) = match rest.split_once(',') {
        Some((i, m)) => (i, Some(parse_mac(m)?)),
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

/// The wall clock: unix time in microseconds, the time of the manager's deadlines and the DHCP
/// server's lease ends.
pub(crate) fn wall_now() -> Instant {
    let since = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Instant::from_micros(since.as_micros() as u64)
}

/// The router's clocks. Its own time (flow timers, probes, ramps) is monotonic: it counts from
/// the wall clock's reading at start, so it reads as unix time until the wall clock steps, and a
/// step (NTP, `date -s`) moves neither a flow's expiry nor an installed deadline. The wall clock
/// is read beside it, for deadlines first heard of and for the status report.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RouterClock {
    start: std::time::Instant,
    wall_at_start: Instant,
    /// The wall clock read beside: the system's, or the process's own (`serve`'s, which does
    /// not step, so its parts agree on every deadline).
    wall: fn() -> Instant,
}

impl RouterClock {
    /// A clock whose monotonic time starts at the system clock's now.
    pub(crate) fn start() -> Self {
        Self::start_with(wall_now)
    }

    /// A clock whose monotonic time starts at `wall`'s now, and that reads `wall` beside.
    pub(crate) fn start_with(wall: fn() -> Instant) -> Self {
        Self { start: std::time::Instant::now(), wall_at_start: wall(), wall }
    }

    /// Both clocks, now.
    pub(crate) fn read(&self) -> Clocks {
        Clocks::new(self.wall_at_start + self.start.elapsed(), (self.wall)())
    }
}

/// The desired state: the command line's addresses and fixed entries, plus the document.
fn desired(args: &RouterArgs, document: &Desired, started: Instant) -> Desired {
    let mut desired = document.clone();
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

/// The desired-state document, watched by modification time and length.
struct Watched {
    path: Option<PathBuf>,
    seen: Option<(SystemTime, u64)>,
    document: Desired,
}

impl Watched {
    /// Reads the document again if it changed; `Ok(true)` when it did. A document that does not
    /// parse is refused whole (the router keeps the last good one).
    fn refresh(&mut self) -> anyhow::Result<bool> {
        let Some(path) = &self.path else { return Ok(false) };
        let stamp = std::fs::metadata(path).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        if stamp == self.seen {
            return Ok(false);
        }
        self.seen = stamp;
        if stamp.is_none() {
            self.document = Desired::default();
            return Ok(true);
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        self.document = serde_json::from_str(&text).with_context(|| format!("in {}", path.display()))?;
        Ok(true)
    }
}

/// Writes `value` as JSON to `path` through a temporary file and a rename, so a reader never
/// sees half a report.
pub(crate) fn write_atomically(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(value)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Desired state from `STATE_DIR/desired.json` (checked every status period), status to
/// `STATE_DIR/status.json`.
struct FileControl<'a> {
    args: &'a RouterArgs,
    watched: Watched,
    started: Instant,
    next_check: Instant,
}

impl RouterControl for FileControl<'_> {
    fn wake_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }

    fn desired(&mut self, now: Instant) -> Option<Desired> {
        if now < self.next_check {
            return None;
        }
        self.next_check = now + Duration::from_millis(self.args.status_ms);
        match self.watched.refresh() {
            Ok(true) => Some(desired(self.args, &self.watched.document, self.started)),
            Ok(false) => None,
            Err(e) => {
                eprintln!("ipshadow router: {e:#}; keeping the previous desired state");
                None
            }
        }
    }

    fn report(&mut self, status: Status) {
        if let Some(dir) = &self.args.state_dir
            && let Err(e) = write_atomically(&dir.join("status.json"), &status)
        {
            eprintln!("ipshadow router: {e:#}");
        }
    }
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
    };
    let mut router = Router::open(setup, clocks)?;
    if let Some(dir) = &args.state_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut watched = Watched {
        path: args.state_dir.as_ref().map(|d| d.join("desired.json")),
        seen: None,
        document: Desired::default(),
    };
    if let Err(e) = watched.refresh() {
        eprintln!("ipshadow router: {e:#}; starting without it");
    }
    router.apply(&desired(args, &watched.document, started), clocks);
    eprintln!("ipshadow router: {} ({} shadowed)", router.describe(), router.forwarder.node.core.entries().count());
    let mut control = FileControl { args, watched, started, next_check: clocks.now };
    router.run(&stop, &mut control, || clock.read())?;
    eprintln!("ipshadow router: stopped after {} frames", router.forwarder.frames);
    Ok(())
}

//! `ipshadow router`: the Shadow Router on Linux interfaces. One provider-side port and one port
//! per VM, AF_PACKET rings on each, one thread polling them all. It follows the desired state in
//! its state directory (`desired.json`, written by the manager) and reports `status.json` there
//! a few times a second. Killing it loses nothing the manager needs: a new process reads the same
//! document and resumes every migration at its recorded split; flows it no longer knows are
//! learned from the VMs' replies.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use clap::Args;
use ipshadow_core::l2::RouterNode;
use ipshadow_core::{
    CongestionControlParameters, EntryState, Instant, MigrationOptions, RouterConfig, ShadowingEntry, VmId,
};
use ipshadow_dataplane::status::PortIo;
use ipshadow_dataplane::{AfPacketPort, Desired, DesiredEntry, Forwarder, RingConfig, wait_any};

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

/// A VM port from the command line.
#[derive(Clone, Debug)]
struct VmPort {
    id: VmId,
    interface: String,
    mac: Option<[u8; 6]>,
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

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<u8> = s
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("bad MAC address {s:?}"))?;
    bytes.try_into().map_err(|_| format!("bad MAC address {s:?}"))
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

/// The router's clock: unix time in microseconds, the same epoch as the manager's deadlines and
/// the DHCP server's, and the same for a restarted process.
pub(crate) fn now() -> Instant {
    let since = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Instant::from_micros(since.as_micros() as u64)
}

/// The MAC address of a local interface.
fn interface_mac(interface: &str) -> anyhow::Result<[u8; 6]> {
    let path = format!("/sys/class/net/{interface}/address");
    let text = std::fs::read_to_string(&path).with_context(|| format!("no interface {interface} ({path})"))?;
    parse_mac(&text).map_err(anyhow::Error::msg)
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
fn write_atomically(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(value)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Name of the nftables table that keeps the host's kernel off the router's interfaces.
const NFT_TABLE: &str = "ipshadow_router";

/// Installs (or replaces) the ingress table: frames on the router's interfaces are dropped after
/// the packet sockets saw them (taps run before the ingress hook), except what the host itself
/// serves on the VM side (ARP for the gateway, DHCP).
fn keep_kernel_off(args: &RouterArgs) -> anyhow::Result<()> {
    let mut rules = format!(
        "table netdev {NFT_TABLE} {{}}\ndelete table netdev {NFT_TABLE}\ntable netdev {NFT_TABLE} {{\n\
         chain provider {{ type filter hook ingress device \"{}\" priority 0; policy drop; }}\n",
        args.provider
    );
    for (i, vm) in args.vms.iter().enumerate() {
        rules += &format!(
            "chain vm{i} {{ type filter hook ingress device \"{}\" priority 0; policy drop; \
             meta protocol arp accept; meta protocol ip udp dport 67 accept; }}\n",
            vm.interface
        );
    }
    rules += "}\n";
    nft(&rules)
}

fn nft(script: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running nft (Debian package nftables)")?;
    child.stdin.take().context("nft's input")?.write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Runs the router until SIGTERM or SIGINT.
pub fn run(args: &RouterArgs) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("installing signal handlers")?;
    }
    let mut seen = std::collections::BTreeSet::new();
    for vm in &args.vms {
        if !seen.insert(&vm.id) {
            bail!("VM {} is given twice", vm.id);
        }
    }
    let started = now();
    let open = |interface: &str| {
        AfPacketPort::open(interface, RingConfig::default())
            .with_context(|| format!("opening an AF_PACKET port on {interface} (needs root or CAP_NET_RAW)"))
    };
    let provider = open(&args.provider)?;
    let vms = args.vms.iter().map(|vm| open(&vm.interface)).collect::<anyhow::Result<Vec<_>>>()?;
    let provider_mac = interface_mac(&args.provider)?;
    let vm_side_mac = interface_mac(&args.vms[0].interface)?;
    let ports = args.vms.iter().map(|vm| (vm.id.clone(), vm.mac.unwrap_or([0; 6]))).collect();
    let config = RouterConfig { max_flows: args.max_flows, ..RouterConfig::default() };
    let node = RouterNode::new(config, provider_mac, vm_side_mac, args.gateway, ports, started);
    let mut forwarder = Forwarder::new(provider, vms, node);
    if !args.kernel_sees_frames {
        keep_kernel_off(args).context("keeping the kernel off the router's interfaces (or --kernel-sees-frames)")?;
    }

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
    report_errors(forwarder.apply(&desired(args, &watched.document, started), started));
    eprintln!(
        "ipshadow router: forwarding between {} and {} ({} shadowed)",
        args.provider,
        args.vms.iter().map(|v| format!("{}={}", v.id, v.interface)).collect::<Vec<_>>().join(", "),
        forwarder.node.core.entries().count()
    );

    let period = Duration::from_millis(args.status_ms);
    let mut next_housekeeping = started;
    let mut next_probe = started;
    while !stop.load(Ordering::Relaxed) {
        let now = now();
        let received = forwarder.step(now).context("forwarding")?;
        if now >= next_housekeeping {
            next_housekeeping = now + period;
            match watched.refresh() {
                Ok(true) => report_errors(forwarder.apply(&desired(args, &watched.document, started), now)),
                Ok(false) => {}
                Err(e) => eprintln!("ipshadow router: {e:#}; keeping the previous desired state"),
            }
            if let Some(dir) = &args.state_dir {
                let mut status = forwarder.status(started, now);
                status.ports = port_io(args, &forwarder);
                if let Err(e) = write_atomically(&dir.join("status.json"), &status) {
                    eprintln!("ipshadow router: {e:#}");
                }
            }
        }
        if now >= next_probe {
            next_probe = now + Duration::from_secs(1);
            forwarder.probe();
        }
        if received == 0 && !args.busy_poll {
            let mut ports = vec![&forwarder.provider];
            ports.extend(forwarder.vms.iter());
            wait_any(&ports, 5).context("waiting for frames")?;
        }
    }
    if !args.kernel_sees_frames
        && let Err(e) = nft(&format!("delete table netdev {NFT_TABLE}\n"))
    {
        eprintln!("ipshadow router: removing the nftables table {NFT_TABLE}: {e:#}");
    }
    eprintln!("ipshadow router: stopped after {} frames", forwarder.frames);
    Ok(())
}

fn report_errors(errors: &[String]) {
    for e in errors {
        eprintln!("ipshadow router: not applied: {e}");
    }
}

fn port_io(args: &RouterArgs, forwarder: &Forwarder<AfPacketPort>) -> Vec<PortIo> {
    let io = |interface: &str, role: &str, port: &AfPacketPort| {
        let s = port.stats();
        PortIo {
            interface: interface.to_owned(),
            role: role.to_owned(),
            received: s.received,
            sent: s.sent,
            send_errors: s.send_errors,
            oversize: s.oversize,
        }
    };
    let mut ports = vec![io(&args.provider, "provider", &forwarder.provider)];
    for (vm, port) in args.vms.iter().zip(&forwarder.vms) {
        ports.push(io(&vm.interface, &vm.id.0, port));
    }
    ports
}

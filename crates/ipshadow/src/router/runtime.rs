//! The router's run time, shared by `ipshadow router` (desired state from a file) and
//! `ipshadow serve` (desired state from the manager in the same process): the interfaces opened
//! as AF_PACKET ports, the host kernel kept off them, and the forwarding loop, which asks its
//! [`RouterControl`] for new desired state and hands it status reports.

use std::net::Ipv4Addr;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use ipshadow_core::l2::RouterNode;
use ipshadow_core::{Clocks, Instant, RouterConfig, VmId};
use ipshadow_dataplane::status::PortIo;
use ipshadow_dataplane::{AfPacketPort, Desired, Forwarder, RingConfig, Status, wait_any};

/// A VM port: the VM's id, the interface it is reached on, its MAC if known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmPort {
    /// The VM.
    pub id: VmId,
    /// The interface towards it.
    pub interface: String,
    /// Its MAC; learned from its first frame when not given.
    pub mac: Option<[u8; 6]>,
}

/// The router's interfaces and options.
#[derive(Clone, Debug)]
pub struct RouterSetup {
    /// Interface towards the clients.
    pub provider: String,
    /// One port per VM.
    pub vms: Vec<VmPort>,
    /// The VMs' gateway address.
    pub gateway: Ipv4Addr,
    /// Most flows tracked.
    pub max_flows: usize,
    /// Bounds of the provider-side neighbour table (client addresses and their MACs).
    pub neighbours: ipshadow_core::neighbours::NeighbourConfig,
    /// Leave the host kernel's processing of the router's frames on.
    pub kernel_sees_frames: bool,
    /// Poll the rings in a loop instead of sleeping.
    pub busy_poll: bool,
    /// How often the status is reported.
    pub status_period: Duration,
}

/// Where the loop gets its desired state and sends its status.
pub trait RouterControl {
    /// A descriptor that becomes readable when new desired state is waiting (so the loop does
    /// not sleep through it), if the control has one.
    fn wake_fd(&self) -> Option<BorrowedFd<'_>>;
    /// New desired state, if there is some (asked on every turn of the loop: keep it cheap).
    fn desired(&mut self, now: Instant) -> Option<Desired>;
    /// The status, every status period.
    fn report(&mut self, status: Status);
}

/// MAC address from `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<u8> = s
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("bad MAC address {s:?}"))?;
    bytes.try_into().map_err(|_| format!("bad MAC address {s:?}"))
}

/// The MAC address of a local interface.
fn interface_mac(interface: &str) -> anyhow::Result<[u8; 6]> {
    let path = format!("/sys/class/net/{interface}/address");
    let text = std::fs::read_to_string(&path).with_context(|| format!("no interface {interface} ({path})"))?;
    parse_mac(&text).map_err(anyhow::Error::msg)
}

/// A router with its ports open, ready to forward.
pub struct Router {
    setup: RouterSetup,
    /// The forwarding loop's state.
    pub forwarder: Forwarder<AfPacketPort>,
    started: Instant,
}

impl Router {
    /// Opens every port and (unless told otherwise) keeps the host kernel off the interfaces.
    pub fn open(setup: RouterSetup, clocks: Clocks) -> anyhow::Result<Self> {
        let now = clocks.now;
        let mut seen = std::collections::BTreeSet::new();
        for vm in &setup.vms {
            if !seen.insert(&vm.id) {
                bail!("VM {} is given twice", vm.id);
            }
        }
        if setup.vms.is_empty() {
            bail!("the router needs at least one VM port");
        }
        let open = |interface: &str| {
            AfPacketPort::open(interface, RingConfig::default())
                .with_context(|| format!("opening an AF_PACKET port on {interface} (needs root or CAP_NET_RAW)"))
        };
        let provider = open(&setup.provider)?;
        let vms = setup.vms.iter().map(|vm| open(&vm.interface)).collect::<anyhow::Result<Vec<_>>>()?;
        let provider_mac = interface_mac(&setup.provider)?;
        let vm_side_mac = interface_mac(&setup.vms[0].interface)?;
        let ports = setup.vms.iter().map(|vm| (vm.id.clone(), vm.mac.unwrap_or([0; 6]))).collect();
        let config = RouterConfig {
            max_flows: setup.max_flows,
            neighbours: setup.neighbours.clone(),
            ..RouterConfig::default()
        };
        let node = RouterNode::new(config, provider_mac, vm_side_mac, setup.gateway, ports, now);
        let forwarder = Forwarder::new(provider, vms, node);
        if !setup.kernel_sees_frames {
            keep_kernel_off(&setup)
                .context("keeping the kernel off the router's interfaces (or let the kernel see frames)")?;
        }
        Ok(Self { setup, forwarder, started: clocks.wall })
    }

    /// One line naming the ports, for the log.
    pub fn describe(&self) -> String {
        let vms: Vec<String> = self.setup.vms.iter().map(|v| format!("{}={}", v.id, v.interface)).collect();
        format!("forwarding between {} and {}", self.setup.provider, vms.join(", "))
    }

    /// Applies `desired`, logging what could not be applied.
    pub fn apply(&mut self, desired: &Desired, clocks: Clocks) {
        for e in self.forwarder.apply(desired, clocks) {
            eprintln!("ipshadow router: not applied: {e}");
        }
    }

    /// The status report with the interfaces' counters.
    pub fn status(&self, clocks: Clocks) -> Status {
        let mut status = self.forwarder.status(self.started, clocks);
        status.ports = self.port_io();
        status
    }

    /// Forwards until `stop` is set, following `control`. `clock` reads the router's clocks
    /// (its monotonic time and the wall clock).
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        control: &mut dyn RouterControl,
        clock: impl Fn() -> Clocks,
    ) -> anyhow::Result<()> {
        let mut next_report = clock().now;
        let mut next_probe = next_report;
        while !stop.load(Ordering::Relaxed) {
            let clocks = clock();
            let now = clocks.now;
            let received = self.forwarder.step(now).context("forwarding")?;
            if let Some(desired) = control.desired(now) {
                // The clock read again: the step may have taken a while, and the installation
                // time is what the API-to-router latency is measured against.
                self.apply(&desired, clock());
            }
            if now >= next_report {
                next_report = now + self.setup.status_period;
                control.report(self.status(clocks));
            }
            if now >= next_probe {
                next_probe = now + Duration::from_secs(1);
                self.forwarder.probe();
            }
            if received == 0 && !self.setup.busy_poll {
                let mut ports = vec![&self.forwarder.provider];
                ports.extend(self.forwarder.vms.iter());
                let wake: Vec<BorrowedFd<'_>> = control.wake_fd().into_iter().collect();
                wait_any(&ports, &wake, 5).context("waiting for frames")?;
            }
        }
        Ok(())
    }

    fn port_io(&self) -> Vec<PortIo> {
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
        let mut ports = vec![io(&self.setup.provider, "provider", &self.forwarder.provider)];
        for (vm, port) in self.setup.vms.iter().zip(&self.forwarder.vms) {
            ports.push(io(&vm.interface, &vm.id.0, port));
        }
        ports
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        if !self.setup.kernel_sees_frames
            && let Err(e) = nft(&format!("delete table netdev {NFT_TABLE}\n"))
        {
            eprintln!("ipshadow router: removing the nftables table {NFT_TABLE}: {e:#}");
        }
    }
}

/// Name of the nftables table that keeps the host's kernel off the router's interfaces.
const NFT_TABLE: &str = "ipshadow_router";

/// Installs (or replaces) the ingress table: frames on the router's interfaces are dropped after
/// the packet sockets saw them (taps run before the ingress hook), except what the host itself
/// serves on the VM side (ARP for the gateway, DHCP).
fn keep_kernel_off(setup: &RouterSetup) -> anyhow::Result<()> {
    let mut rules = format!(
        "table netdev {NFT_TABLE} {{}}\ndelete table netdev {NFT_TABLE}\ntable netdev {NFT_TABLE} {{\n\
         chain provider {{ type filter hook ingress device \"{}\" priority 0; policy drop; }}\n",
        setup.provider
    );
    for (i, vm) in setup.vms.iter().enumerate() {
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

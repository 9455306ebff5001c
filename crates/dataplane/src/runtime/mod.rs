//! The router's run time, shared by `ipshadow router` (desired state from its state directory,
//! [`StateDirControl`]) and `ipshadow serve` (desired state from the manager in the same
//! process): the interfaces opened as AF_PACKET ports, the host kernel kept off them, and the
//! forwarding loop, which asks its [`RouterControl`] for new desired state and hands it status
//! reports.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ipshadow_core::ha::{GroupMember, GroupView, LeaseNews};
use ipshadow_core::l2::RouterNode;
use ipshadow_core::{Clocks, Instant, RouterConfig, VmId};
use thiserror::Error;

use crate::fast::FastPathSync;
use crate::status::PortIo;
use crate::{AfPacketPort, Desired, Forwarder, RingConfig, Status, wait_any};

mod bpffs;
mod clock;
mod nft;
mod state_dir;

pub use clock::{RouterClock, wall_now};
pub use ipshadow_core::ha::{GroupStatus, Role};
pub use nft::NftError;
pub use state_dir::{StateDirControl, StateDirError, write_atomically};

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
    /// The router group it belongs to, and its name there: it forwards only while its
    /// [`RouterControl`] holds the group's lease (see [`ipshadow_core::ha`]).
    pub group: Option<GroupSetup>,
    /// Which way frames are forwarded.
    pub data_path: DataPath,
    /// Where the fast path pins its flows (a directory on a bpffs), so that a restarted router
    /// finds them; `None`: [`default_bpf_dir`].
    pub bpf_dir: Option<PathBuf>,
}

/// Which way the router forwards frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DataPath {
    /// The XDP fast path when the interfaces take it, AF_PACKET otherwise (said in one log line).
    #[default]
    Auto,
    /// The XDP fast path, or fail.
    Xdp,
    /// AF_PACKET only.
    AfPacket,
}

/// Where a router pins its fast path's flows unless told: under `/run/ipshadow/bpf` (a bpffs
/// mounted there if none is; outside `/sys`, which `ip netns exec` replaces), one directory per
/// network namespace and provider interface, so a router restarted in the same place finds them.
pub fn default_bpf_dir(provider: &str) -> PathBuf {
    let netns = std::fs::read_link("/proc/self/ns/net")
        .ok()
        .and_then(|l| l.to_str().map(|s| s.trim_start_matches("net:[").trim_end_matches(']').to_owned()))
        .unwrap_or_else(|| "host".to_owned());
    PathBuf::from(format!("{BPF_ROOT}/{netns}-{provider}"))
}

/// The bpffs the routers pin under by default.
pub const BPF_ROOT: &str = "/run/ipshadow/bpf";

/// A router's place in its group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSetup {
    /// The group.
    pub group: String,
    /// This router's name in it.
    pub name: String,
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
    /// News about the group's lease, if the router is in a group (asked on every turn).
    fn lease_news(&mut self) -> Option<LeaseNews> {
        None
    }
    /// What the forwarding loop knows of the group from the segments, for the lease's keeper
    /// (handed on every turn of a router in a group: keep it cheap).
    fn group_view(&mut self, _view: GroupView) {}
}

/// A MAC address that is not six hexadecimal bytes separated by colons.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("bad MAC address {0:?}")]
pub struct BadMac(pub String);

/// Why the router could not open its ports or stopped forwarding.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// Two VM ports name the same VM.
    #[error("VM {0} is given twice")]
    DuplicateVm(VmId),
    /// The setup has no VM port.
    #[error("the router needs at least one VM port")]
    NoVmPort,
    /// An AF_PACKET port could not be opened.
    #[error("opening an AF_PACKET port on {interface} (needs root or CAP_NET_RAW)")]
    OpenPort {
        /// The interface.
        interface: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// An interface's MAC address could not be read.
    #[error("no interface {interface} ({})", path.display())]
    NoInterface {
        /// The interface.
        interface: String,
        /// Where its address was looked for.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// An interface's MAC address did not parse.
    #[error(transparent)]
    BadMac(#[from] BadMac),
    /// The nftables table that keeps the kernel off the interfaces could not be installed.
    #[error("keeping the kernel off the router's interfaces (or let the kernel see frames)")]
    KeepKernelOff(#[source] NftError),
    /// Receiving or sending frames failed.
    #[error("forwarding")]
    Forward(#[source] io::Error),
    /// Waiting for frames failed.
    #[error("waiting for frames")]
    Wait(#[source] io::Error),
    /// The XDP fast path was asked for and could not be set up.
    #[error("the XDP fast path")]
    FastPath(#[source] ipshadow_xdp::FastPathError),
}

/// MAC address from `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], BadMac> {
    let bytes: Vec<u8> = s
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| BadMac(s.to_owned()))?;
    bytes.try_into().map_err(|_| BadMac(s.to_owned()))
}

/// The MAC address of a local interface.
fn interface_mac(interface: &str) -> Result<[u8; 6], RuntimeError> {
    let path = PathBuf::from(format!("/sys/class/net/{interface}/address"));
    let text = std::fs::read_to_string(&path).map_err(|source| RuntimeError::NoInterface {
        interface: interface.to_owned(),
        path: path.clone(),
        source,
    })?;
    Ok(parse_mac(&text)?)
}

/// `e` and its sources, one after the other, for a log line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        line = format!("{line}: {s}");
        source = s.source();
    }
    line
}

/// A router with its ports open, ready to forward.
pub struct Router {
    setup: RouterSetup,
    /// The forwarding loop's state.
    pub forwarder: Forwarder<AfPacketPort>,
    started: Instant,
    /// Why the router forwards without the fast path, if it does.
    pub fallback: Option<String>,
}

/// Loads the fast path and attaches it to the router's interfaces.
fn open_fast_path(
    setup: &RouterSetup,
    macs: ([u8; 6], [u8; 6]),
    now: Instant,
) -> Result<FastPathSync, ipshadow_xdp::FastPathError> {
    let dir = setup.bpf_dir.clone().unwrap_or_else(|| default_bpf_dir(&setup.provider));
    bpffs::prepare(&dir)?;
    let vms: Vec<&str> = setup.vms.iter().map(|v| v.interface.as_str()).collect();
    let max_flows = setup.max_flows.min(u32::MAX as usize) as u32;
    FastPathSync::open(&setup.provider, &vms, macs, Some(dir), max_flows, now)
}

impl Router {
    /// Opens every port and (unless told otherwise) keeps the host kernel off the interfaces.
    pub fn open(setup: RouterSetup, clocks: Clocks) -> Result<Self, RuntimeError> {
        let now = clocks.now;
        let mut seen = std::collections::BTreeSet::new();
        for vm in &setup.vms {
            if !seen.insert(&vm.id) {
                return Err(RuntimeError::DuplicateVm(vm.id.clone()));
            }
        }
        if setup.vms.is_empty() {
            return Err(RuntimeError::NoVmPort);
        }
        let open = |interface: &str| {
            AfPacketPort::open(interface, RingConfig::default())
                .map_err(|source| RuntimeError::OpenPort { interface: interface.to_owned(), source })
        };
        let provider = open(&setup.provider)?;
        let vms = setup.vms.iter().map(|vm| open(&vm.interface)).collect::<Result<Vec<_>, _>>()?;
        let provider_mac = interface_mac(&setup.provider)?;
        let vm_side_mac = interface_mac(&setup.vms[0].interface)?;
        let ports = setup.vms.iter().map(|vm| (vm.id.clone(), vm.mac.unwrap_or([0; 6]))).collect();
        let config = RouterConfig {
            max_flows: setup.max_flows,
            neighbours: setup.neighbours.clone(),
            ..RouterConfig::default()
        };
        let node = RouterNode::new(config, provider_mac, vm_side_mac, setup.gateway, ports, now);
        let mut forwarder = Forwarder::new(provider, vms, node);
        forwarder.group = setup.group.as_ref().map(|g| GroupMember::new(&g.group, &g.name, now));
        let fallback = match setup.data_path {
            DataPath::AfPacket => Some("AF_PACKET chosen".to_owned()),
            DataPath::Auto | DataPath::Xdp => match open_fast_path(&setup, (provider_mac, vm_side_mac), now) {
                Ok(fast) => {
                    forwarder.fast = Some(fast);
                    None
                }
                Err(e) if setup.data_path == DataPath::Xdp => return Err(RuntimeError::FastPath(e)),
                Err(e) => {
                    let why = error_chain(&e);
                    eprintln!("ipshadow router: no XDP fast path ({why}): forwarding with AF_PACKET");
                    Some(why)
                }
            },
        };
        if !setup.kernel_sees_frames {
            nft::keep_kernel_off(&setup).map_err(RuntimeError::KeepKernelOff)?;
        }
        Ok(Self { setup, forwarder, started: clocks.wall, fallback })
    }

    /// One line naming the ports and the data path, for the log.
    pub fn describe(&self) -> String {
        let vms: Vec<String> = self.setup.vms.iter().map(|v| format!("{}={}", v.id, v.interface)).collect();
        let path = if self.forwarder.fast.is_some() { "XDP fast path" } else { "AF_PACKET" };
        format!("forwarding between {} and {} ({path})", self.setup.provider, vms.join(", "))
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
        status.data_path = Some(crate::status::DataPathStatus {
            mode: if self.forwarder.fast.is_some() { "xdp" } else { "af_packet" }.to_owned(),
            fallback: self.fallback.clone(),
            fast_path: self.forwarder.fast.as_ref().map(FastPathSync::status),
        });
        status
    }

    /// Forwards until `stop` is set, following `control`. `clock` reads the router's clocks
    /// (its monotonic time and the wall clock).
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        control: &mut dyn RouterControl,
        clock: impl Fn() -> Clocks,
    ) -> Result<(), RuntimeError> {
        let mut next_report = clock().now;
        let mut next_probe = next_report;
        let mut was_active = None;
        while !stop.load(Ordering::Relaxed) {
            let clocks = clock();
            let now = clocks.now;
            if let Some(group) = &mut self.forwarder.group {
                while let Some(news) = control.lease_news() {
                    group.lease(news, now);
                }
            }
            let received = self.forwarder.step_with(now, &|| clock().now).map_err(RuntimeError::Forward)?;
            if let Some(group) = &self.forwarder.group {
                control.group_view(group.view(now));
            }
            if let Some(desired) = control.desired(now) {
                // The clock read again: the step may have taken a while, and the installation
                // time is what the API-to-router latency is measured against.
                self.apply(&desired, clock());
            }
            if now >= next_report {
                next_report = now + self.setup.status_period;
                control.report(self.status(clocks));
            }
            // A router that just became its group's active member probes at once: the manager
            // counts the VMs' silence from then.
            let active = self.forwarder.group.as_ref().map(|g| g.may_forward());
            if active == Some(true) && was_active == Some(false) {
                next_probe = now;
            }
            was_active = active;
            if now >= next_probe {
                next_probe = now + Duration::from_secs(1);
                self.forwarder.probe();
            }
            if received == 0 && !self.setup.busy_poll {
                let mut ports = vec![&self.forwarder.provider];
                ports.extend(self.forwarder.vms.iter());
                let mut wake: Vec<BorrowedFd<'_>> = control.wake_fd().into_iter().collect();
                wake.extend(self.forwarder.fast.as_ref().map(FastPathSync::records_fd));
                wait_any(&ports, &wake, 5).map_err(RuntimeError::Wait)?;
            }
        }
        // An active member of a group says it stops: a standby takes over at once.
        self.forwarder.resign(clock().now);
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
            && let Err(e) = nft::let_kernel_in()
        {
            eprintln!("ipshadow router: removing the nftables table {}: {}", nft::NFT_TABLE, error_chain(&e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses_parse_or_are_refused() {
        assert_eq!(parse_mac("02:00:00:00:00:0a\n"), Ok([2, 0, 0, 0, 0, 10]));
        for bad in ["", "02:00:00:00:00", "02:00:00:00:00:0a:0b", "zz:00:00:00:00:00"] {
            assert_eq!(parse_mac(bad), Err(BadMac(bad.to_owned())), "{bad:?}");
        }
    }
}

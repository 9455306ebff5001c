//! What the tests of the XDP fast path share: the topology (the router's, the VMs' and the
//! clients' MACs) and a network namespace of the test thread's own with the interfaces whose
//! indexes the program's device map takes.

#![allow(unsafe_code)] // unshare(2), to give the test thread a network namespace of its own
#![allow(dead_code)] // only the fast path's tests use these; the other tests share `common`

use core::time::Duration;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use ipshadow_core::l2::RouterNode;
use ipshadow_core::testkit::X;
use ipshadow_core::{
    CongestionControlParameters, Instant, MigrationOptions, Ramp, RampStep, RouterConfig, ShadowingEntry, VmId,
};
use ipshadow_dataplane::Forwarder;
use ipshadow_dataplane::fast::FastPathSync;
use ipshadow_xdp::ifindex;

use super::MemPort;

/// The router's MAC on the provider side.
pub const PROVIDER_MAC: [u8; 6] = [2, 0xee, 0, 0, 0, 1];
/// The router's MAC on the VM side (the VMs' gateway).
pub const VM_SIDE_MAC: [u8; 6] = [2, 0xee, 0, 0, 0, 2];
/// VM A's MAC (node port 0).
pub const MAC_A: [u8; 6] = [2, 0xa, 0, 0, 0, 1];
/// VM B's MAC (node port 1).
pub const MAC_B: [u8; 6] = [2, 0xb, 0, 0, 0, 1];
/// The provider's router, through which every client's frames come.
pub const CLIENT_MAC: [u8; 6] = [2, 0xc, 0, 0, 0, 1];
/// The VMs' gateway address.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

/// Moves the test thread into a new network namespace with interfaces prov, vma and vmb (veth
/// pairs, peers unused: the program only needs their indexes) and returns their indexes;
/// `None` without root, outside CI (in CI, which runs as root, the test fails instead).
pub fn namespace() -> Option<[u32; 3]> {
    // SAFETY: unshare changes only the calling thread's namespaces and touches no memory.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI runs as root: unshare failed");
        eprintln!("skipped: needs root (a network namespace of its own)");
        return None;
    }
    for name in ["prov", "vma", "vmb"] {
        let peer = format!("{name}-peer");
        let ok = Command::new("ip")
            .args(["link", "add", name, "type", "veth", "peer", "name", &peer])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip link add {name} (iproute2)");
        assert!(Command::new("ip").args(["link", "set", name, "up"]).status().is_ok_and(|s| s.success()));
    }
    Some(["prov", "vma", "vmb"].map(|n| ifindex(n).expect("the interface just made")))
}

/// Gives a frame the MACs of the interface it arrives on (0: the provider's, from a client;
/// 1: VM A's; 2: VM B's, to the router).
pub fn addressed(interface: usize, mut frame: Vec<u8>) -> (usize, Vec<u8>) {
    if frame.len() >= 12 {
        let (dst, src) = match interface {
            0 => (PROVIDER_MAC, CLIENT_MAC),
            1 => (VM_SIDE_MAC, MAC_A),
            _ => (VM_SIDE_MAC, MAC_B),
        };
        frame[0..6].copy_from_slice(&dst);
        frame[6..12].copy_from_slice(&src);
    }
    (interface, frame)
}

/// Moves the test thread to `cpu` (modulo the CPUs it may run on), so that the program's test
/// runs spread over CPUs as an interface's receive queues would: the kernel's LRU hash keeps
/// free nodes per CPU. Returns the CPU, or `None` if the thread could not be moved.
pub fn on_cpu(cpu: usize) -> Option<usize> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let cpu = cpu % cpus;
    // SAFETY: the set is a plain bit array on the stack, written by CPU_SET and read by
    // sched_setaffinity for the calling thread (pid 0) for the call.
    let ok = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) == 0
    };
    ok.then_some(cpu)
}

/// A forwarder on in-memory ports with X shadowed at a fixed 50 % between the VMs on ports 0 (A)
/// and 1 (B), its core's flow table sized `max_flows`, its fast path opened detached on `ifs`
/// (the program's flow map sized from `max_flows`, as the router sizes it) with its flows
/// pinned in `pin_dir` if given; every other setting the default (the core's hash keyed at
/// random). No turn has run yet: the program is off until the first.
pub fn shadowing_forwarder(
    ifs: [u32; 3],
    max_flows: u32,
    pin_dir: Option<PathBuf>,
    now: Instant,
) -> Forwarder<MemPort> {
    let config = RouterConfig { max_flows: max_flows as usize, ..RouterConfig::default() };
    let ports = vec![(VmId::from("vm-a"), MAC_A), (VmId::from("vm-b"), MAC_B)];
    let mut node = RouterNode::new(config, PROVIDER_MAC, VM_SIDE_MAC, GATEWAY, ports, now);
    let ramp = Ramp::Steps { steps: vec![RampStep { pct: 50.0, hold: Duration::from_secs(3600) }] };
    let options = MigrationOptions { ramp, ..MigrationOptions::default() };
    let params = CongestionControlParameters::default();
    let entry = ShadowingEntry::new(X, VmId::from("vm-a"), VmId::from("vm-b"), now, params, options);
    node.core.add_entry(entry, now).unwrap();
    node.shadow_ports(X, 0, 1);
    node.core.lease_bound(X, now).unwrap();
    let mut fwd = Forwarder::new(MemPort::default(), vec![MemPort::default(), MemPort::default()], node);
    let macs = (PROVIDER_MAC, VM_SIDE_MAC);
    fwd.fast = Some(FastPathSync::open_detached(ifs[0], &ifs[1..], macs, pin_dir, max_flows, now).unwrap());
    fwd
}

//! The program's split is the core's: for random salts, flow keys, affinities and thresholds,
//! the side the program gives a new flow (read from the destination MAC it writes) is the one
//! `ipshadow_core::shadow::split_hash` gives it, and the core's fixed vectors come out of the
//! program too. Run with `BPF_PROG_TEST_RUN` in a network namespace of the test's own; needs
//! root (CI runs it; elsewhere it says so and stops).

#![allow(unsafe_code)] // unshare(2), to give the test thread a network namespace of its own
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::cell::{Cell, RefCell};
use std::net::Ipv4Addr;
use std::process::Command;

use ipshadow_core::{Affinity, FlowKey, split_hash, split_threshold};
use ipshadow_xdp::abi::{self, Config};
use ipshadow_xdp::{FastPath, FastPathSetup, XDP_REDIRECT, ifindex};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};

const PROVIDER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const VM_SIDE_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const A_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const B_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xc];

/// Moves the test thread into a new network namespace with interfaces prov, vma and vmb (veth
/// pairs, peers unused: the program only needs their indexes); `None` without root, outside CI.
fn namespace() -> Option<[u32; 3]> {
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
    Some(["prov", "vma", "vmb"].map(|n| ifindex(n).unwrap()))
}

fn fast_path(ifs: [u32; 3]) -> FastPath {
    let mut fp = FastPath::load(&FastPathSetup { pin_dir: None, max_flows: 1 << 16 }).unwrap();
    fp.set_provider(ifs[0]).unwrap();
    fp.set_vm_port(0, ifs[1], A_MAC).unwrap();
    fp.set_vm_port(1, ifs[2], B_MAC).unwrap();
    let config = Config {
        active_until_ns: u64::MAX,
        flags: abi::CFG_ENABLED,
        provider_mac: PROVIDER_MAC,
        vm_side_mac: VM_SIDE_MAC,
        ..fp.config()
    };
    fp.set_config(config).unwrap();
    fp
}

/// The first frame of `key`'s flow from the client: a UDP datagram or a TCP SYN. The TCP/UDP
/// checksum is zero, which never looks like one left to offload (the program would hand it up).
fn opening(key: &FlowKey) -> Vec<u8> {
    let tcp = key.protocol == 6;
    let l4_len = if tcp { 20 } else { 8 };
    let total = 20 + l4_len + 4;
    let mut f = Vec::with_capacity(14 + total);
    f.extend_from_slice(&PROVIDER_MAC);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&[8, 0]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = key.protocol;
    ip[12..16].copy_from_slice(&key.client_ip.octets());
    ip[16..20].copy_from_slice(&key.shadow_ip.octets());
    let sum: u32 = ip.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !((sum & 0xffff) + (sum >> 16)) as u16;
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&key.client_port.to_be_bytes());
    f.extend_from_slice(&key.shadow_port.to_be_bytes());
    if tcp {
        f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        f.extend_from_slice(&((l4_len + 4) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
    }
    f.extend_from_slice(b"ping");
    f
}

/// Whether the program sends `key`'s new flow to B under `salt`, `affinity` and `threshold`.
/// The flow is forgotten again, so that the next case with the same key is new too.
fn program_sends_to_b(
    fp: &mut FastPath,
    provider: u32,
    salt: u64,
    key: &FlowKey,
    affinity: Affinity,
    threshold: u64,
) -> bool {
    let flags = if affinity == Affinity::Client { abi::SHADOW_CLIENT_AFFINITY } else { 0 };
    fp.set_shadow(key.shadow_ip, abi::Shadow { salt, threshold, source: 0, destination: 1, flags }).unwrap();
    let run = fp.test_run(&opening(key), provider).unwrap();
    assert_eq!(run.action, XDP_REDIRECT, "a new flow of {key} is decided in the program");
    let to = &run.frame[0..6];
    assert!(to == A_MAC || to == B_MAC, "{key}: to A or B, not {to:02x?}");
    let map_key = abi::FlowKey {
        client_ip: key.client_ip,
        shadow_ip: key.shadow_ip,
        client_port: key.client_port,
        shadow_port: key.shadow_port,
        protocol: key.protocol,
    };
    let flow = fp.flow(&map_key).unwrap();
    assert_eq!(flow.owner == abi::OWNER_DESTINATION, to == B_MAC, "{key}: the map says where it went");
    fp.remove_flow(&map_key).unwrap();
    fp.remove_shadow(key.shadow_ip).unwrap();
    to == B_MAC
}

fn core_sends_to_b(salt: u64, key: &FlowKey, affinity: Affinity, threshold: u64) -> bool {
    u64::from(split_hash(salt, key, affinity)) < threshold
}

fn flow_key() -> impl Strategy<Value = FlowKey> {
    (any::<u32>(), any::<u32>(), any::<u16>(), any::<u16>(), prop::bool::ANY).prop_map(
        |(client, shadow, client_port, shadow_port, tcp)| FlowKey {
            client_ip: Ipv4Addr::from_bits(client),
            client_port,
            shadow_ip: Ipv4Addr::from_bits(shadow),
            shadow_port,
            protocol: if tcp { 6 } else { 17 },
        },
    )
}

fn threshold() -> impl Strategy<Value = u64> {
    prop_oneof![
        1 => Just(0u64),
        1 => Just(1u64 << 32),
        3 => prop::sample::select(vec![1.0, 10.0, 25.0, 50.0, 75.0, 99.0]).prop_map(split_threshold),
        3 => (0.0f64..=100.0).prop_map(split_threshold),
        4 => any::<u32>().prop_map(u64::from),
    ]
}

#[test]
fn the_program_splits_new_flows_as_the_core_does() {
    let Some(ifs) = namespace() else { return };
    // The runner takes a `Fn`: the program and the tallies are shared through cells.
    let fp = RefCell::new(fast_path(ifs));
    let mut runner =
        TestRunner::new(ProptestConfig { cases: 2_000, failure_persistence: None, ..ProptestConfig::default() });
    let affinity = prop_oneof![Just(Affinity::Flow), Just(Affinity::Client)];
    let (to_b, to_a) = (Cell::new(0u32), Cell::new(0u32));
    runner
        .run(&(any::<u64>(), flow_key(), affinity, threshold()), |(salt, key, affinity, threshold)| {
            let program = program_sends_to_b(&mut fp.borrow_mut(), ifs[0], salt, &key, affinity, threshold);
            prop_assert_eq!(
                program,
                core_sends_to_b(salt, &key, affinity, threshold),
                "salt {:#x}, {}, {:?}, threshold {}: program to B {}",
                salt,
                key,
                affinity,
                threshold,
                program
            );
            let tally = if program { &to_b } else { &to_a };
            tally.set(tally.get() + 1);
            Ok(())
        })
        .unwrap();
    // The observer saw both answers: the cases were not all one side.
    let (to_a, to_b) = (to_a.get(), to_b.get());
    assert!(to_a > 100 && to_b > 100, "to A {to_a}, to B {to_b}");
}

/// The split hashes fixed in the core (`shadow/hash.rs`, `fixed_vectors`): the program, given
/// the hash itself and the hash plus one as thresholds, must put each key just on either side.
#[test]
fn the_program_reproduces_the_cores_fixed_vectors() {
    let Some(ifs) = namespace() else { return };
    let mut fp = fast_path(ifs);
    let k = FlowKey {
        client_ip: Ipv4Addr::new(198, 51, 100, 7),
        client_port: 40_000,
        shadow_ip: Ipv4Addr::new(10, 0, 0, 10),
        shadow_port: 443,
        protocol: 6,
    };
    let vectors = [
        (0, k, Affinity::Flow, 0xa962_27cbu32),
        (0x0123_4567_89ab_cdef, k, Affinity::Flow, 0x332f_3efc),
        (0x0123_4567_89ab_cdef, k, Affinity::Client, 0x9b4c_284c),
        (u64::MAX, FlowKey { protocol: 17, client_port: 53, ..k }, Affinity::Flow, 0xd0c4_2338),
    ];
    for (salt, key, affinity, hash) in vectors {
        assert_eq!(split_hash(salt, &key, affinity), hash, "the core's vector");
        let hash = u64::from(hash);
        // A new flow goes to B exactly when its hash is below the threshold.
        assert!(
            !program_sends_to_b(&mut fp, ifs[0], salt, &key, affinity, hash),
            "salt {salt:#x}: hash not below itself"
        );
        assert!(program_sends_to_b(&mut fp, ifs[0], salt, &key, affinity, hash + 1), "salt {salt:#x}: below hash + 1");
    }
}

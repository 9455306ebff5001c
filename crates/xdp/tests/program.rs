//! The program itself, run with `BPF_PROG_TEST_RUN` in a network namespace of the test's own:
//! what it forwards, where, and what it hands up. Needs root (CI runs it; elsewhere it says so
//! and stops).

#![allow(unsafe_code)] // unshare(2), to give the test thread a network namespace of its own

use std::net::Ipv4Addr;
use std::process::Command;

use ipshadow_xdp::abi::{self, Config, FlowKey};
use ipshadow_xdp::{FastPath, FastPathSetup, XDP_PASS, XDP_REDIRECT, ifindex};

const PROVIDER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const VM_SIDE_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const A_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const B_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xc];
const X: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);

/// Moves the test thread into a new network namespace with interfaces prov, vma and vmb
/// (veth pairs, peers left unused: the program only needs their indexes); `None` without root.
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
    Some(["prov", "vma", "vmb"].map(|n| ifindex(n).expect("just made")))
}

fn fast_path(ifs: [u32; 3], threshold: u64) -> FastPath {
    let mut fp = FastPath::load(&FastPathSetup { pin_dir: None, max_flows: 1 << 16 }).expect("loads");
    fp.set_provider(ifs[0]).expect("provider");
    fp.set_vm_port(0, ifs[1], A_MAC).expect("A");
    fp.set_vm_port(1, ifs[2], B_MAC).expect("B");
    fp.set_config(Config {
        active_until_ns: u64::MAX,
        flags: abi::CFG_ENABLED,
        provider_mac: PROVIDER_MAC,
        vm_side_mac: VM_SIDE_MAC,
        ..fp.config()
    })
    .expect("config");
    fp.set_shadow(X, abi::Shadow { salt: 42, threshold, source: 0, destination: 1, flags: 0 }).expect("shadow");
    fp
}

/// An Ethernet + IPv4 + TCP/UDP frame with a correct header checksum.
fn frame(dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, l4: (u8, u16, u16, u8)) -> Vec<u8> {
    let (protocol, sport, dport, flags) = l4;
    let l4_len = if protocol == 6 { 20 } else { 8 };
    let total = 20 + l4_len + 6;
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[8, 0]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = protocol;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum: u32 = ip.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !((sum & 0xffff) + (sum >> 16)) as u16;
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    if protocol == 6 {
        f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        f.extend_from_slice(&((8 + 6) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
    }
    f.extend_from_slice(b"hello!");
    f
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn client(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0100 + n)
}

#[test]
fn a_new_flow_is_decided_remembered_and_its_owner_answers_it() {
    let Some(ifs) = namespace() else { return };
    // Every new flow to B.
    let mut fp = fast_path(ifs, 1 << 32);
    let syn = frame(PROVIDER_MAC, CLIENT_MAC, client(1), X, (6, 40000, 80, SYN));
    let run = fp.test_run(&syn, ifs[0]).expect("runs");
    assert_eq!(run.action, XDP_REDIRECT);
    assert_eq!(&run.frame[0..6], &B_MAC, "to B's MAC");
    assert_eq!(&run.frame[6..12], &VM_SIDE_MAC, "from the gateway's");
    assert_eq!(&run.frame[12..], &syn[12..], "nothing else changed");
    let key = FlowKey { client_ip: client(1), shadow_ip: X, client_port: 40000, shadow_port: 80, protocol: 6 };
    let flow = fp.flow(&key).expect("remembered");
    assert_eq!((flow.owner, flow.origin), (abi::OWNER_DESTINATION, abi::ORIGIN_FAST_PATH));
    // The split moves to A: the flow stays with B.
    fp.set_shadow(X, abi::Shadow { salt: 42, threshold: 0, source: 0, destination: 1, flags: 0 }).expect("shadow");
    let ack = frame(PROVIDER_MAC, CLIENT_MAC, client(1), X, (6, 40000, 80, ACK));
    assert_eq!(&fp.test_run(&ack, ifs[0]).expect("runs").frame[0..6], &B_MAC);
    // B's answer leaves towards the client, whose MAC the program learned.
    let answer = frame(VM_SIDE_MAC, B_MAC, X, client(1), (6, 80, 40000, ACK));
    let run = fp.test_run(&answer, ifs[2]).expect("runs");
    assert_eq!(run.action, XDP_REDIRECT);
    assert_eq!(&run.frame[0..6], &CLIENT_MAC);
    assert_eq!(&run.frame[6..12], &PROVIDER_MAC);
    // A's answer on B's flow is the core's to arbitrate.
    let conflict = frame(VM_SIDE_MAC, A_MAC, X, client(1), (6, 80, 40000, ACK));
    assert_eq!(fp.test_run(&conflict, ifs[1]).expect("runs").action, XDP_PASS);
    // Every forwarded frame was recorded, in order.
    let mut records = Vec::new();
    fp.drain_records(|r| records.push(r));
    let dirs: Vec<_> = records.iter().map(|r| (r.direction, r.new_flow)).collect();
    assert_eq!(
        dirs,
        [
            (abi::Direction::Inbound { owner: abi::OWNER_DESTINATION }, true),
            (abi::Direction::Inbound { owner: abi::OWNER_DESTINATION }, false),
            (abi::Direction::Egress { port: 1 }, false),
        ]
    );
    assert_eq!(records[0].tcp_flags, SYN);
    assert_eq!((records[0].src, records[0].dst, records[0].src_port), (client(1), X, 40000));
    let stats = fp.stats();
    assert_eq!((stats.inbound, stats.egress, stats.new_flows, stats.pass_flow), (2, 1, 1, 1));
}

#[test]
fn what_the_program_is_not_sure_of_goes_up() {
    let Some(ifs) = namespace() else { return };
    let mut fp = fast_path(ifs, 1 << 31);
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        (
            "a mid-stream segment of an unknown flow",
            frame(PROVIDER_MAC, CLIENT_MAC, client(2), X, (6, 1, 80, ACK)),
            ifs[0],
        ),
        ("another destination MAC", frame(CLIENT_MAC, CLIENT_MAC, client(2), X, (17, 1, 53, 0)), ifs[0]),
        ("an address nobody holds", frame(PROVIDER_MAC, CLIENT_MAC, client(2), client(3), (17, 1, 53, 0)), ifs[0]),
        (
            "ICMP",
            {
                let mut f = frame(PROVIDER_MAC, CLIENT_MAC, client(2), X, (17, 1, 53, 0));
                f[14 + 9] = 1;
                f[14 + 10] = f[14 + 10].wrapping_add(0); // checksum now wrong too: either way up
                f
            },
            ifs[0],
        ),
        (
            "a bad header checksum",
            {
                let mut f = frame(PROVIDER_MAC, CLIENT_MAC, client(2), X, (17, 1, 53, 0));
                f[14 + 10] ^= 0xff;
                f
            },
            ifs[0],
        ),
        (
            "a fragment",
            {
                let mut f = frame(PROVIDER_MAC, CLIENT_MAC, client(2), X, (17, 1, 53, 0));
                f[14 + 6] = 0x20; // more fragments
                f
            },
            ifs[0],
        ),
        (
            "a checksum left to offload",
            {
                let mut f = frame(PROVIDER_MAC, CLIENT_MAC, client(2), X, (6, 1, 80, SYN));
                // What a veth sender's kernel leaves: the pseudo-header's sum, folded, not inverted.
                let l4_len = (f.len() - 34) as u32;
                let words = [&f[26..28], &f[28..30], &f[30..32], &f[32..34]];
                let mut sum: u32 = words.iter().map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
                sum += 6 + l4_len;
                let sum = (sum & 0xffff) + (sum >> 16);
                let sum = ((sum & 0xffff) + (sum >> 16)) as u16;
                f[50..52].copy_from_slice(&sum.to_be_bytes());
                f
            },
            ifs[0],
        ),
        ("a truncated frame", frame(PROVIDER_MAC, CLIENT_MAC, client(2), X, (6, 1, 80, SYN))[..40].to_vec(), ifs[0]),
        (
            "ARP",
            {
                let mut f = frame(PROVIDER_MAC, CLIENT_MAC, client(2), X, (17, 1, 53, 0));
                f[12..14].copy_from_slice(&[8, 6]);
                f
            },
            ifs[0],
        ),
        (
            "a VM sending as an address it does not hold",
            frame(VM_SIDE_MAC, A_MAC, client(9), client(2), (17, 53, 1, 0)),
            ifs[1],
        ),
        ("DHCP from a VM", frame(VM_SIDE_MAC, A_MAC, X, client(2), (17, 68, 67, 0)), ifs[1]),
        ("an unknown interface", frame(PROVIDER_MAC, CLIENT_MAC, client(2), X, (17, 1, 53, 0)), 1),
    ];
    for (what, f, ifindex) in cases {
        let run = fp.test_run(&f, ifindex).expect("runs");
        assert_eq!(run.action, XDP_PASS, "{what}");
        assert_eq!(run.frame, f, "{what}: unchanged");
    }
    let stats = fp.stats();
    assert_eq!((stats.pass_checksum, stats.pass_fragment, stats.pass_local), (1, 1, 1), "{stats:?}");
    let mut n = 0;
    fp.drain_records(|_| n += 1);
    assert_eq!(n, 0, "nothing forwarded, nothing recorded");
    assert!(fp.flows().is_empty(), "no flow created");
    // Switched off, or paused: everything up.
    let udp = frame(PROVIDER_MAC, CLIENT_MAC, client(2), X, (17, 1, 53, 0));
    fp.set_config(Config { active_until_ns: 0, ..fp.config() }).expect("config");
    assert_eq!(fp.test_run(&udp, ifs[0]).expect("runs").action, XDP_PASS);
    fp.set_config(Config { active_until_ns: u64::MAX, ..fp.config() }).expect("config");
    assert_eq!(fp.test_run(&udp, ifs[0]).expect("runs").action, XDP_REDIRECT);
    // A slow address.
    fp.set_shadow(X, abi::Shadow { salt: 42, threshold: 0, source: 0, destination: 1, flags: abi::SHADOW_SLOW })
        .expect("shadow");
    assert_eq!(fp.test_run(&udp, ifs[0]).expect("runs").action, XDP_PASS);
}

#[test]
fn a_client_learned_from_a_routed_frame_is_recorded_once_per_mac() {
    let Some(ifs) = namespace() else { return };
    let mut fp = fast_path(ifs, 0);
    // An address A holds alone: its frames are routed, never replayed; the core hears of the
    // client only from the record.
    let held = Ipv4Addr::new(10, 0, 0, 20);
    fp.set_route(held, 0).expect("route");
    let udp = frame(PROVIDER_MAC, CLIENT_MAC, client(4), held, (17, 1, 53, 0));
    for _ in 0..3 {
        let run = fp.test_run(&udp, ifs[0]).expect("runs");
        assert_eq!((run.action, &run.frame[0..6]), (XDP_REDIRECT, &A_MAC[..]));
    }
    let moved = frame(PROVIDER_MAC, [2, 0, 0, 0, 0, 0xd], client(4), held, (17, 1, 53, 0));
    assert_eq!(fp.test_run(&moved, ifs[0]).expect("runs").action, XDP_REDIRECT);
    let mut records = Vec::new();
    fp.drain_records(|r| records.push(r));
    let learned: Vec<_> = records.iter().map(|r| (r.direction, r.src, r.src_mac)).collect();
    assert_eq!(
        learned,
        [
            (abi::Direction::Neighbour, client(4), CLIENT_MAC),
            (abi::Direction::Neighbour, client(4), [2, 0, 0, 0, 0, 0xd]),
        ],
        "one record per MAC, none per frame"
    );
    assert_eq!(fp.neighbour(client(4)), Some([2, 0, 0, 0, 0, 0xd]));
}

#[test]
fn a_flow_whose_owner_the_core_does_not_know_goes_up() {
    let Some(ifs) = namespace() else { return };
    // Every new flow to B: were the flow not in the map, the program would decide it.
    let mut fp = fast_path(ifs, 1 << 32);
    let key = FlowKey { client_ip: client(5), shadow_ip: X, client_port: 40000, shadow_port: 80, protocol: 6 };
    fp.set_flow(&key, abi::Flow { owner: abi::OWNER_UNKNOWN, origin: abi::ORIGIN_CORE, last_seen_ns: 0 })
        .expect("flow");
    for flags in [ACK, SYN] {
        let f = frame(PROVIDER_MAC, CLIENT_MAC, client(5), X, (6, 40000, 80, flags));
        assert_eq!(fp.test_run(&f, ifs[0]).expect("runs").action, XDP_PASS, "flags {flags:#x}");
    }
    let answer = frame(VM_SIDE_MAC, B_MAC, X, client(5), (6, 80, 40000, ACK));
    assert_eq!(fp.test_run(&answer, ifs[2]).expect("runs").action, XDP_PASS, "the core learns the owner");
    assert_eq!(fp.flow(&key).map(|f| f.owner), Some(abi::OWNER_UNKNOWN), "left to the core");
    assert_eq!(fp.stats().pass_flow, 3);
}

#[test]
fn a_udp_flows_datagrams_are_recorded_in_batches_with_their_count() {
    let Some(ifs) = namespace() else { return };
    let mut fp = fast_path(ifs, 0);
    assert_eq!(fp.config().udp_batch_ns, abi::UDP_BATCH_NS, "batches by default");
    let datagram = frame(PROVIDER_MAC, CLIENT_MAC, client(5), X, (17, 5353, 53, 0));
    let answer = frame(VM_SIDE_MAC, A_MAC, X, client(5), (17, 53, 5353, 0));
    // The first datagram opens the flow (recorded); the next nine, within the batch, are not.
    for _ in 0..10 {
        assert_eq!(fp.test_run(&datagram, ifs[0]).expect("runs").action, XDP_REDIRECT);
    }
    // The VM's first answer is recorded; its next four are batched.
    for _ in 0..5 {
        assert_eq!(fp.test_run(&answer, ifs[1]).expect("runs").action, XDP_REDIRECT);
    }
    let mut records = Vec::new();
    fp.drain_records(|r| records.push(r));
    let seen: Vec<_> =
        records.iter().filter(|r| r.direction != abi::Direction::Neighbour).map(|r| (r.direction, r.packets)).collect();
    assert_eq!(
        seen,
        [(abi::Direction::Inbound { owner: abi::OWNER_SOURCE }, 1), (abi::Direction::Egress { port: 0 }, 1)]
    );
    // The batch ends: the next datagram each way stands for the ones held back and itself.
    fp.set_config(Config { udp_batch_ns: 0, ..fp.config() }).expect("config");
    fp.test_run(&datagram, ifs[0]).expect("runs");
    fp.test_run(&answer, ifs[1]).expect("runs");
    records.clear();
    fp.drain_records(|r| records.push(r));
    let seen: Vec<_> = records.iter().map(|r| (r.direction, r.packets)).collect();
    assert_eq!(
        seen,
        [(abi::Direction::Inbound { owner: abi::OWNER_SOURCE }, 10), (abi::Direction::Egress { port: 0 }, 5)]
    );
    assert_eq!(fp.stats().inbound + fp.stats().egress, 17, "every datagram forwarded");
}

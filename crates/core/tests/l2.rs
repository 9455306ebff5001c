//! The layer-2 router: proxy ARP for routed addresses, gateway ARP on the VM side, MAC rewrite
//! both ways, client MACs learned, health-probe answers recorded, and no route counted.

#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;

use ipshadow_core::l2::{Out, RouterNode};
use ipshadow_core::testkit::{X, tcp};
use ipshadow_core::wire::{Packet, parse_frame};
use ipshadow_core::{Instant, RouterConfig, VmId, VmRef};

const PROVIDER_MAC: [u8; 6] = [2, 0xee, 0, 0, 0, 1];
const VM_SIDE_MAC: [u8; 6] = [2, 0xee, 0, 0, 0, 2];
const MAC_A: [u8; 6] = [2, 0xa, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0xb, 0, 0, 0, 1];
const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const CLIENT_MAC: [u8; 6] = [2, 0xc1, 0, 0, 0, 7];
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn node() -> RouterNode {
    let config = RouterConfig { max_flows: 1024, ..RouterConfig::default() };
    let ports = vec![(VmId::from("vm-a"), MAC_A), (VmId::from("vm-b"), MAC_B)];
    let mut node = RouterNode::new(config, PROVIDER_MAC, VM_SIDE_MAC, GATEWAY, ports, Instant::ZERO);
    node.core.assign_address(X, VmRef(0));
    node
}

fn arp(op: u16, sender: ([u8; 6], Ipv4Addr), target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&sender.0);
    f.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sender.0);
    f.extend_from_slice(&sender.1.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

fn with_macs(mut frame: Vec<u8>, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    frame[..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
    frame
}

#[test]
fn answers_arp_for_routed_addresses_and_the_gateway_only() {
    let mut n = node();
    let mut out = Vec::new();
    n.from_provider(arp(1, (CLIENT_MAC, CLIENT), X), Instant::ZERO, &mut out);
    let [Out::Provider(reply)] = &out[..] else { panic!("{out:?}") };
    let Ok(Packet::Arp(a)) = parse_frame(reply) else { panic!() };
    assert_eq!((a.operation, a.sender_mac, a.sender_ip, a.target_ip), (2, PROVIDER_MAC, X, CLIENT));
    assert_eq!(&reply[..6], &CLIENT_MAC);
    out.clear();
    n.from_provider(arp(1, (CLIENT_MAC, CLIENT), Ipv4Addr::new(10, 0, 0, 99)), Instant::ZERO, &mut out);
    assert!(out.is_empty(), "not an address the router routes");
    n.from_vm(0, arp(1, (MAC_A, X), GATEWAY), Instant::ZERO, &mut out);
    let [Out::Vm(0, reply)] = &out[..] else { panic!("{out:?}") };
    let Ok(Packet::Arp(a)) = parse_frame(reply) else { panic!() };
    assert_eq!((a.operation, a.sender_mac, a.sender_ip), (2, VM_SIDE_MAC, GATEWAY));
    // A probe goes to the VM; its answer is recorded.
    out.clear();
    n.probe(1, X, &mut out);
    assert!(matches!(&out[..], [Out::Vm(1, _)]));
    n.from_vm(1, arp(2, (MAC_B, X), GATEWAY), Instant::from_millis(5), &mut out);
    assert_eq!(n.probe_replies[1], Some(Instant::from_millis(5)));
    assert!(n.probe_answers.is_empty(), "X is not shadowed: no answer for it is kept");
}

#[test]
fn answers_for_a_shadowed_address_are_kept_per_port_and_forgotten_with_the_shadow() {
    let mut n = node();
    let mut out = Vec::new();
    n.shadow_ports(X, 0, 1);
    n.from_vm(1, arp(2, (MAC_B, X), GATEWAY), Instant::from_millis(5), &mut out);
    // An answer for an address not shadowed with that port is not kept (a VM cannot grow the map).
    n.from_vm(1, arp(2, (MAC_B, Ipv4Addr::new(10, 0, 0, 99)), GATEWAY), Instant::from_millis(6), &mut out);
    assert_eq!(n.probe_answers.iter().collect::<Vec<_>>(), [(&(1, X), &Instant::from_millis(5))]);
    assert_eq!(n.probe_replies[1], Some(Instant::from_millis(6)), "the VM answered, whatever for");
    // A new shadow of X between other ports drops the old answers; unshadowing drops them all.
    n.shadow_ports(X, 1, 0);
    assert!(n.probe_answers.is_empty());
    n.from_vm(0, arp(2, (MAC_A, X), GATEWAY), Instant::from_millis(7), &mut out);
    assert_eq!(n.probe_answers.len(), 1);
    n.unshadow(X);
    assert!(n.probe_answers.is_empty());
    assert!(out.is_empty(), "answers to probes are not forwarded anywhere");
}

/// Issue 13 item 3: an answer for X on B's port starts B's ramp only with B's MAC, as the frame's
/// source and as the ARP sender; any other is refused and counted.
#[test]
fn a_probe_answer_with_another_mac_is_refused_and_counted() {
    let mut n = node();
    let mut out = Vec::new();
    n.shadow_ports(X, 0, 1);
    let forged_mac = [2, 0x66, 0, 0, 0, 1];
    let forged = [
        // Both MACs forged.
        arp(2, (forged_mac, X), GATEWAY),
        // B's frame source, another ARP sender.
        with_macs(arp(2, (forged_mac, X), GATEWAY), VM_SIDE_MAC, MAC_B),
        // B's ARP sender in a frame from another MAC.
        with_macs(arp(2, (MAC_B, X), GATEWAY), VM_SIDE_MAC, forged_mac),
        // A's MAC on B's port.
        arp(2, (MAC_A, X), GATEWAY),
    ];
    for (i, frame) in forged.into_iter().enumerate() {
        n.from_vm(1, frame, Instant::from_millis(5), &mut out);
        assert_eq!(n.stats.probe_answers_refused, i as u64 + 1, "forged answer {i} counted");
    }
    assert!(n.probe_answers.is_empty(), "no forged answer for X kept");
    assert_eq!(n.probe_replies[1], None, "no forged answer counts as B answering");
    // B's own answer counts.
    n.from_vm(1, with_macs(arp(2, (MAC_B, X), GATEWAY), VM_SIDE_MAC, MAC_B), Instant::from_millis(6), &mut out);
    assert_eq!(n.probe_answers.iter().collect::<Vec<_>>(), [(&(1, X), &Instant::from_millis(6))]);
    assert_eq!(n.stats.probe_answers_refused, 4);
    assert!(out.is_empty());
}

#[test]
fn rewrites_macs_both_ways_and_counts_frames_without_a_route() {
    let mut n = node();
    let mut out = Vec::new();
    let syn = with_macs(tcp((CLIENT, 4000), (X, 80), 0x02, 1, 0, &[]), PROVIDER_MAC, CLIENT_MAC);
    n.from_provider(syn.clone(), Instant::ZERO, &mut out);
    let [Out::Vm(0, to_a)] = &out[..] else { panic!("{out:?}") };
    assert_eq!((&to_a[..6], &to_a[6..12]), (&MAC_A[..], &VM_SIDE_MAC[..]));
    assert_eq!(&to_a[12..], &syn[12..], "only the MACs change");
    out.clear();
    let syn_ack = with_macs(tcp((X, 80), (CLIENT, 4000), 0x12, 9, 2, &[]), VM_SIDE_MAC, MAC_A);
    n.from_vm(0, syn_ack, Instant::ZERO, &mut out);
    let [Out::Provider(to_client)] = &out[..] else { panic!("{out:?}") };
    assert_eq!((&to_client[..6], &to_client[6..12]), (&CLIENT_MAC[..], &PROVIDER_MAC[..]), "client MAC learned");
    out.clear();
    // B does not hold X: its frame is a spoofing drop; a client MAC never seen has no route.
    n.from_vm(1, with_macs(tcp((X, 80), (CLIENT, 4000), 0x10, 9, 2, &[]), VM_SIDE_MAC, MAC_B), Instant::ZERO, &mut out);
    n.from_vm(
        0,
        with_macs(tcp((X, 80), (Ipv4Addr::new(198, 51, 100, 1), 9), 0x10, 9, 2, &[]), VM_SIDE_MAC, MAC_A),
        Instant::ZERO,
        &mut out,
    );
    // The router asks where the unknown client is instead (next test).
    let [Out::Provider(request)] = &out[..] else { panic!("{out:?}") };
    assert!(matches!(parse_frame(request), Ok(Packet::Arp(a)) if a.target_ip == Ipv4Addr::new(198, 51, 100, 1)));
    assert_eq!(n.stats.dropped.get("spoofed"), Some(&1));
    assert_eq!(n.stats.no_route, 1);
}

/// A frame from VM A to `client`.
fn from_a(client: Ipv4Addr) -> Vec<u8> {
    with_macs(tcp((X, 80), (client, 4000), 0x10, 9, 2, &[]), VM_SIDE_MAC, MAC_A)
}

/// Issue 13 item 4 (and issue 5's note): a VM can reach a client the router has not heard from.
/// RFC 826: the router asks, once a second, in the name of the address the VM sent from.
#[test]
fn a_client_never_heard_from_is_asked_for_and_reached_once_it_answers() {
    let mut n = node();
    let mut out = Vec::new();
    n.from_vm(0, from_a(CLIENT), Instant::ZERO, &mut out);
    let [Out::Provider(request)] = &out[..] else { panic!("{out:?}") };
    assert_eq!((&request[..6], &request[6..12]), (&[0xff; 6][..], &PROVIDER_MAC[..]), "broadcast");
    let Ok(Packet::Arp(a)) = parse_frame(request) else { panic!() };
    assert_eq!((a.operation, a.sender_mac, a.sender_ip, a.target_ip), (1, PROVIDER_MAC, X, CLIENT));
    // The VM's stack sends again at once: no second request within the second.
    out.clear();
    n.from_vm(0, from_a(CLIENT), Instant::from_millis(200), &mut out);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!((n.stats.arp_requests, n.stats.no_route), (1, 2));
    // The client answers; the VM's next frame reaches it.
    let answer = with_macs(arp(2, (CLIENT_MAC, CLIENT), X), PROVIDER_MAC, CLIENT_MAC);
    n.from_provider(answer, Instant::from_millis(300), &mut out);
    assert!(out.is_empty(), "an answer is not answered");
    n.from_vm(0, from_a(CLIENT), Instant::from_millis(400), &mut out);
    let [Out::Provider(to_client)] = &out[..] else { panic!("{out:?}") };
    assert_eq!(&to_client[..6], &CLIENT_MAC);
    assert_eq!((n.stats.to_provider, n.stats.neighbours), (1, 1));
}

#[test]
fn frames_the_router_refuses_teach_it_nothing_and_entries_age() {
    let mut n = node();
    let mut out = Vec::new();
    // To an address the router does not route: no route, nothing learned.
    let stray =
        with_macs(tcp((CLIENT, 4000), (Ipv4Addr::new(10, 0, 0, 99), 80), 0x02, 1, 0, &[]), PROVIDER_MAC, CLIENT_MAC);
    n.from_provider(stray, Instant::ZERO, &mut out);
    assert!(out.is_empty());
    assert_eq!((n.stats.no_route, n.neighbours().len()), (1, 0));
    // Accepted: learned.
    let syn = with_macs(tcp((CLIENT, 4000), (X, 80), 0x02, 1, 0, &[]), PROVIDER_MAC, CLIENT_MAC);
    n.from_provider(syn, Instant::ZERO, &mut out);
    assert_eq!(n.neighbours().len(), 1);
    // Silent past the age: forgotten, and asked for again when A next sends to it.
    let age = n.neighbours().config().max_age;
    let later = Instant::ZERO + age + core::time::Duration::from_secs(1);
    n.poll(later, &mut out);
    assert_eq!((n.stats.neighbours, n.stats.neighbours_aged), (0, 1));
    out.clear();
    n.from_vm(0, from_a(CLIENT), later, &mut out);
    assert!(matches!(&out[..], [Out::Provider(f)] if matches!(parse_frame(f), Ok(Packet::Arp(_)))), "{out:?}");
}

#[test]
fn an_announcement_goes_to_every_segment_with_gratuitous_arp_for_every_address_served() {
    let mut n = node();
    n.shadow_ports(Ipv4Addr::new(10, 0, 0, 20), 0, 1);
    let ann = ipshadow_core::ha::Announcement {
        group: "edge".into(),
        name: "r1".into(),
        term: 3,
        lease: 4,
        resigning: false,
    };
    let mut out = Vec::new();
    n.announce(&ann, false, &mut out);
    assert_eq!(out.len(), 3, "the provider side and both VM ports: {out:?}");
    for o in &out {
        let (Out::Provider(f) | Out::Vm(_, f)) = o;
        assert_eq!(ipshadow_core::ha::Announcement::parse(f), Ok(ann.clone()));
    }
    let Out::Provider(f) = &out[0] else { panic!() };
    assert_eq!(&f[6..12], &PROVIDER_MAC);
    out.clear();
    n.announce(&ann, true, &mut out);
    let mut garps: Vec<(bool, [u8; 6], Ipv4Addr, Ipv4Addr)> = out
        .iter()
        .filter_map(|o| {
            let (provider, f) = match o {
                Out::Provider(f) => (true, f),
                Out::Vm(_, f) => (false, f),
            };
            let Ok(Packet::Arp(a)) = parse_frame(f) else { return None };
            Some((provider, a.sender_mac, a.sender_ip, a.target_ip))
        })
        .collect();
    garps.sort();
    let shadowed = Ipv4Addr::new(10, 0, 0, 20);
    assert_eq!(
        garps,
        [
            (false, VM_SIDE_MAC, GATEWAY, GATEWAY),
            (false, VM_SIDE_MAC, GATEWAY, GATEWAY),
            (true, PROVIDER_MAC, X, X),
            (true, PROVIDER_MAC, shadowed, shadowed),
        ]
    );
}

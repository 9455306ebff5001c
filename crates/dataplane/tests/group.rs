//! A forwarder in a router group, on in-memory ports: a standby takes nothing in and sends
//! nothing; holding the lease it announces itself on every segment (with gratuitous ARP) and
//! forwards; it stops at once when it hears a newer term; a turn that stalled sends nothing.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;

use common::MemPort;
use ipshadow_core::ha::{Announcement, GroupMember, LeaseNews, Role, TakeoverCause};
use ipshadow_core::l2::RouterNode;
use ipshadow_core::testkit::{X, tcp};
use ipshadow_core::{Clocks, Instant, RouterConfig, VmId};
use ipshadow_dataplane::{Desired, Forwarder};

const PROVIDER_MAC: [u8; 6] = [2, 0xee, 0, 0, 0, 1];
const VM_SIDE_MAC: [u8; 6] = [2, 0xee, 0, 0, 0, 2];
const MAC_A: [u8; 6] = [2, 0xa, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0xb, 0, 0, 0, 1];
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn member(t0: Instant) -> Forwarder<MemPort> {
    let config = RouterConfig { max_flows: 4096, ..RouterConfig::default() };
    let ports = vec![(VmId::from("vm-a"), MAC_A), (VmId::from("vm-b"), MAC_B)];
    let node = RouterNode::new(config, PROVIDER_MAC, VM_SIDE_MAC, GATEWAY, ports, t0);
    let mut f = Forwarder::new(MemPort::default(), vec![MemPort::default(), MemPort::default()], node);
    f.group = Some(GroupMember::new("edge", "r2", t0));
    let desired = Desired { addresses: [(X, VmId::from("vm-a"))].into(), entries: vec![] };
    assert!(f.apply(&desired, Clocks::single(t0)).is_empty());
    f
}

fn syn(i: u16) -> Vec<u8> {
    let mut f = tcp((Ipv4Addr::new(10, 0, 1, 7), 20_000 + i), (X, 7000), 0x02, 1, 0, b"");
    f[..6].copy_from_slice(&PROVIDER_MAC);
    f[6..12].copy_from_slice(&[2, 0xc, 0, 0, 0, 1]);
    f
}

fn sent(f: &Forwarder<MemPort>) -> usize {
    f.provider.tx.len() + f.vms.iter().map(|v| v.tx.len()).sum::<usize>()
}

fn ms(t0: Instant, ms: u64) -> Instant {
    t0 + std::time::Duration::from_millis(ms)
}

#[test]
fn a_standby_sends_nothing_and_takes_nothing_in() {
    let t0 = Instant::from_secs(1_000);
    let mut f = member(t0);
    for i in 0..10 {
        f.provider.rx.push_back(syn(i));
        f.step(ms(t0, u64::from(i) * 5)).unwrap();
    }
    f.probe();
    assert_eq!(sent(&f), 0, "no frame, no probe, no announcement");
    let status = f.status(t0, Clocks::single(ms(t0, 50)));
    let group = status.ha.unwrap();
    assert_eq!((group.role, group.counters.frames_dropped), (Role::Standby, 10));
    assert_eq!(f.node.stats.to_vms, 0);
}

#[test]
fn holding_the_lease_it_announces_itself_everywhere_and_forwards_until_it_hears_a_newer_term() {
    let t0 = Instant::from_secs(1_000);
    let mut f = member(t0);
    // The active r1 is heard on the provider side, then goes silent.
    let r1 = Announcement { group: "edge".into(), name: "r1".into(), term: 5, lease: 50, resigning: false };
    f.provider.rx.push_back(r1.frame([2, 0xee, 0, 0, 0, 9]));
    f.step(t0).unwrap();
    for i in 1..=120 {
        f.step(ms(t0, i * 5)).unwrap();
    }
    assert_eq!(f.group.as_ref().unwrap().view(ms(t0, 600)).end_lease, Some(50));
    f.group.as_mut().unwrap().lease(LeaseNews::Acquired { term: 7, lease: 70 }, ms(t0, 610));
    f.provider.rx.push_back(syn(1));
    f.step(ms(t0, 610)).unwrap();
    let announced = |port: &MemPort| port.tx.iter().filter_map(|fr| Announcement::parse(fr).ok()).count();
    assert_eq!((announced(&f.provider), announced(&f.vms[0]), announced(&f.vms[1])), (1, 1, 1));
    let garp_for = |port: &MemPort, ip: Ipv4Addr| {
        port.tx.iter().any(|fr| fr.len() >= 42 && fr[12..14] == [8, 6] && fr[28..32] == ip.octets())
    };
    assert!(garp_for(&f.provider, X), "gratuitous ARP for the address served");
    assert!(garp_for(&f.vms[0], GATEWAY) && garp_for(&f.vms[1], GATEWAY), "and for the gateway");
    assert_eq!(f.node.stats.to_vms, 1, "the SYN went to A");
    let takeover = f.status(t0, Clocks::single(ms(t0, 610))).ha.unwrap().last_takeover.unwrap();
    assert_eq!((takeover.cause, takeover.previous.as_deref()), (TakeoverCause::Silent, Some("r1")));
    assert_eq!(takeover.took_ms, Some(610));
    // r3 took over meanwhile (this router was cut off from the store): it stops at once.
    let r3 = Announcement { group: "edge".into(), name: "r3".into(), term: 9, lease: 90, resigning: false };
    f.vms[1].rx.push_back(r3.frame([2, 0xee, 0, 0, 0, 3]));
    f.step(ms(t0, 620)).unwrap();
    let before = sent(&f);
    f.provider.rx.push_back(syn(2));
    f.step(ms(t0, 625)).unwrap();
    assert_eq!(sent(&f), before, "nothing sent after the newer term was heard");
    assert_eq!(f.group.as_ref().unwrap().role(), Role::Standby);
}

#[test]
fn a_turn_that_stalled_sends_nothing_it_decided_before_the_stall() {
    let t0 = Instant::from_secs(1_000);
    let mut f = member(t0);
    f.group.as_mut().unwrap().lease(LeaseNews::Acquired { term: 7, lease: 70 }, t0);
    f.step(t0).unwrap();
    let before = sent(&f);
    f.provider.rx.push_back(syn(1));
    // The process was paused between taking the frame in and sending it.
    f.step_with(ms(t0, 5), &|| ms(t0, 3_000)).unwrap();
    assert_eq!(sent(&f), before);
    // The next turn finds the stall: suspended until the store confirms the lease.
    f.provider.rx.push_back(syn(2));
    f.step(ms(t0, 3_001)).unwrap();
    assert_eq!(sent(&f), before);
    assert_eq!(f.group.as_ref().unwrap().role(), Role::Suspended);
    f.group.as_mut().unwrap().lease(LeaseNews::Confirmed, ms(t0, 3_010));
    f.provider.rx.push_back(syn(3));
    f.step(ms(t0, 3_010)).unwrap();
    assert!(sent(&f) > before, "forwarding again once confirmed");
    let counters = f.status(t0, Clocks::single(ms(t0, 3_010))).ha.unwrap().counters;
    assert_eq!((counters.stalls, counters.frames_dropped), (1, 1));
    assert!(counters.frames_suppressed >= 1);
}

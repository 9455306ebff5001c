//! The forwarder driven by a desired state, on in-memory ports: addresses assigned, a migration
//! installed, started by B's bound lease, resumed at its recorded split by a fresh router (a
//! restart), ended by its deadline and not started again by a document that lags behind.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::MemPort;
use ipshadow_core::l2::RouterNode;
use ipshadow_core::testkit::{X, tcp};
use ipshadow_core::{
    Clocks, CongestionControlParameters, EntryState, Instant, MigrationOptions, Outcome, Ramp, RouterConfig,
    ShadowingEntry, VmId,
};
use ipshadow_dataplane::{Desired, DesiredEntry, Forwarder};

const PROVIDER_MAC: [u8; 6] = [2, 0xee, 0, 0, 0, 1];
const VM_SIDE_MAC: [u8; 6] = [2, 0xee, 0, 0, 0, 2];
const MAC_B: [u8; 6] = [2, 0xb, 0, 0, 0, 1];
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn forwarder(now: Instant) -> Forwarder<MemPort> {
    let config = RouterConfig { max_flows: 4096, ..RouterConfig::default() };
    // A's MAC is left to be learned; B's is configured.
    let ports = vec![(VmId::from("vm-a"), [0; 6]), (VmId::from("vm-b"), MAC_B)];
    let node = RouterNode::new(config, PROVIDER_MAC, VM_SIDE_MAC, GATEWAY, ports, now);
    Forwarder::new(MemPort::default(), vec![MemPort::default(), MemPort::default()], node)
}

fn entry(start: Instant, deadline: Instant) -> ShadowingEntry {
    let options = MigrationOptions {
        ramp: Ramp::Linear { pct_per_sec: 10.0 },
        deadline: Some(deadline),
        salt: 7,
        ..MigrationOptions::default()
    };
    ShadowingEntry::new(X, "vm-a".into(), "vm-b".into(), start, CongestionControlParameters::default(), options)
}

fn client(i: u16) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1, 1 + (i % 200) as u8)
}

fn syn(i: u16) -> Vec<u8> {
    let mut f = tcp((client(i), 20_000 + i), (X, 7000), 0x02, 1, 0, b"");
    f[..6].copy_from_slice(&PROVIDER_MAC);
    f[6..12].copy_from_slice(&[2, 0xc, 0, 0, 0, 1]);
    f
}

#[test]
fn a_vm_mac_is_learned_before_frames_reach_it() {
    let t0 = Instant::from_secs(1_000);
    let mut f = forwarder(t0);
    let desired = Desired { addresses: [(X, VmId::from("vm-a"))].into(), entries: vec![] };
    assert!(f.apply(&desired, Clocks::single(t0)).is_empty());
    f.provider.rx.push_back(syn(1));
    f.step(t0).unwrap();
    assert!(f.vms[0].tx.is_empty(), "A's MAC is not known yet");
    assert_eq!(f.node.stats.no_route, 1);
    // A speaks (a reply from X): its MAC is learned and the next SYN reaches it.
    let mut from_a = tcp((X, 7000), (client(1), 20_001), 0x12, 9, 2, b"");
    from_a[6..12].copy_from_slice(&[2, 0xa, 0, 0, 0, 1]);
    f.vms[0].rx.push_back(from_a);
    f.step(t0).unwrap();
    f.provider.rx.push_back(syn(2));
    f.step(t0).unwrap();
    assert_eq!(f.vms[0].tx.len(), 1);
    assert_eq!(&f.vms[0].tx[0][..6], &[2, 0xa, 0, 0, 0, 1]);
}

#[test]
fn a_migration_follows_the_document_through_a_restart_to_its_deadline() {
    let t0 = Instant::from_secs(1_000);
    let deadline = t0 + Duration::from_secs(60);
    let mut desired = Desired {
        addresses: [(X, VmId::from("vm-a"))].into(),
        entries: vec![DesiredEntry {
            entry: entry(t0, deadline),
            lease_bound: false,
            promote: false,
            cut_over: false,
            finish_rollback: false,
        }],
    };
    let mut f = forwarder(t0);
    assert!(f.apply(&desired, Clocks::single(t0)).is_empty());
    assert_eq!(f.node.core.entry(X).unwrap().state, EntryState::WaitingForLease);

    // B's lease is bound: the split ramps at 10 %/s.
    desired.entries[0].lease_bound = true;
    assert!(f.apply(&desired, Clocks::single(t0)).is_empty());
    let mut now = t0;
    for _ in 0..50 {
        now = now + Duration::from_millis(100);
        f.step(now).unwrap();
    }
    let split = f.node.core.entry(X).unwrap().traffic_split_percentage;
    assert!(split > 20.0, "split {split} after 5 s");

    // The manager records what the router reports; a fresh router (restart) resumes there.
    let recorded = f.status(t0, Clocks::single(now)).entries[0].clone();
    assert_eq!(recorded.state, EntryState::Ramping);
    desired.entries[0].entry = recorded.clone();
    let mut restarted = forwarder(now);
    assert!(restarted.apply(&desired, Clocks::single(now)).is_empty());
    let resumed = restarted.node.core.entry(X).unwrap();
    assert_eq!(resumed.state, EntryState::Ramping);
    assert!((resumed.traffic_split_percentage - recorded.traffic_split_percentage).abs() < 1e-9);

    // Past the deadline the router cuts over by itself; the lagging document does not bring the
    // entry back, and the address now belongs to B.
    let late = deadline + Duration::from_secs(1);
    restarted.step(late).unwrap();
    let status = restarted.status(now, Clocks::single(late));
    assert!(status.entries.is_empty());
    assert_eq!(status.ended.len(), 1);
    assert_eq!(status.ended[0].outcome, Outcome::Completed);
    assert!(restarted.apply(&desired, Clocks::single(late)).is_empty());
    assert!(restarted.node.core.entry(X).is_none(), "an ended migration must not start again");
    restarted.provider.rx.push_back(syn(3));
    restarted.step(late).unwrap();
    assert_eq!(restarted.vms[1].tx.len(), 1, "new flows go to B");
    assert!(restarted.vms[0].tx.is_empty());
}

#[test]
fn removing_an_entry_ends_the_migration_towards_the_documented_holder() {
    let t0 = Instant::from_secs(1_000);
    let mut f = forwarder(t0);
    let mut desired = Desired {
        addresses: [(X, VmId::from("vm-a"))].into(),
        entries: vec![DesiredEntry {
            entry: entry(t0, t0 + Duration::from_secs(600)),
            lease_bound: true,
            promote: false,
            cut_over: false,
            finish_rollback: false,
        }],
    };
    assert!(f.apply(&desired, Clocks::single(t0)).is_empty());
    // The manager rolled back: the entry is gone and A holds X.
    desired.entries.clear();
    assert!(f.apply(&desired, Clocks::single(t0)).is_empty());
    let status = f.status(t0, Clocks::single(t0));
    assert_eq!(status.ended.len(), 1);
    assert_eq!(status.ended[0].outcome, Outcome::RolledBack);
    assert_eq!(f.node.core.address_holder(X), Some(ipshadow_core::VmRef(0)));

    // An entry naming a VM without a port is refused with its reason; nothing else changes.
    let mut bad = entry(t0 + Duration::from_secs(1), t0 + Duration::from_secs(600));
    bad.destination_vm_id = VmId::from("vm-z");
    desired.entries.push(DesiredEntry {
        entry: bad,
        lease_bound: false,
        promote: false,
        cut_over: false,
        finish_rollback: false,
    });
    let errors = f.apply(&desired, Clocks::single(t0)).to_vec();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("vm-z"), "{errors:?}");
    assert!(f.node.core.entry(X).is_none());
}

/// The wall clock steps an hour forward, then two hours back, during a migration (NTP, or an
/// operator's `date -s`): the router's monotonic time goes on, the document is re-applied at
/// each step as on any change, and neither the open flows nor the cut-over move. A migration
/// first heard of after a step gets its deadline from when it was heard of.
#[test]
fn a_wall_clock_step_moves_no_cut_over_and_expires_no_flow() {
    let t0 = Instant::from_secs(1_000_000);
    let hour = Duration::from_secs(3_600);
    let deadline = t0 + Duration::from_secs(120);
    let mut desired = Desired {
        addresses: [(X, VmId::from("vm-a"))].into(),
        entries: vec![DesiredEntry {
            entry: entry(t0, deadline),
            lease_bound: true,
            promote: false,
            cut_over: false,
            finish_rollback: false,
        }],
    };
    let mut f = forwarder(t0);
    assert!(f.apply(&desired, Clocks::single(t0)).is_empty());
    for i in 0..20 {
        f.provider.rx.push_back(syn(i));
    }
    f.step(t0).unwrap();
    let flows = f.node.core.flow_count();
    assert_eq!(flows, 20, "the observer saw the flows");

    // The monotonic clock advances 20 s (SYN-only flows live 30 s) while the wall clock jumps
    // an hour ahead.
    let mono = t0 + Duration::from_secs(20);
    let ahead = Clocks::new(mono, mono + hour);
    assert!(f.apply(&desired, ahead).is_empty());
    f.step(mono).unwrap();
    assert_eq!(f.node.core.flow_count(), flows, "no flow expired");
    assert!(f.node.core.entry(X).is_some(), "no early cut-over");
    assert_eq!(f.node.core.entry(X).unwrap().options.deadline, Some(deadline), "the installed deadline did not move");
    // The report gives the manager its own deadline back, in its wall clock.
    assert_eq!(f.status(t0, ahead).entries[0].options.deadline, Some(deadline));
    assert_eq!(f.status(t0, ahead).updated, mono + hour);

    // Then two hours back: the deadline is still where it was.
    let mono = t0 + Duration::from_secs(25);
    let behind = Clocks::new(mono, mono - hour);
    assert!(f.apply(&desired, behind).is_empty());
    f.step(mono).unwrap();
    assert_eq!(f.node.core.flow_count(), flows, "no flow expired");
    assert_eq!(f.node.core.entry(X).unwrap().options.deadline, Some(deadline));
    f.step(deadline + Duration::from_secs(1)).unwrap();
    assert!(f.node.core.entry(X).is_none(), "cut over at its deadline on the monotonic clock");

    // A new migration heard of while the wall clock reads an hour behind: its deadline, 120 s
    // after that wall time, is 120 s after now on the monotonic clock.
    let mono = deadline + Duration::from_secs(2);
    let wall = mono - hour;
    let start = wall;
    desired.entries = vec![DesiredEntry {
        entry: ShadowingEntry::new(X, "vm-b".into(), "vm-a".into(), start, CongestionControlParameters::default(), {
            MigrationOptions { deadline: Some(wall + Duration::from_secs(120)), salt: 9, ..MigrationOptions::default() }
        }),
        lease_bound: true,
        promote: false,
        cut_over: false,
        finish_rollback: false,
    }];
    desired.addresses = [(X, VmId::from("vm-b"))].into();
    assert!(f.apply(&desired, Clocks::new(mono, wall)).is_empty(), "installed");
    assert_eq!(f.node.core.entry(X).unwrap().options.deadline, Some(mono + Duration::from_secs(120)));
    f.step(mono + Duration::from_secs(60)).unwrap();
    assert!(f.node.core.entry(X).is_some(), "not ended as if its deadline had passed");
    f.step(mono + Duration::from_secs(121)).unwrap();
    assert!(f.node.core.entry(X).is_none(), "cut over 120 s after it was heard of");
}

//! DHCP snooping (issue 13 item 3): a message naming a VM counts only when it arrives on that
//! VM's segment interface. During a migration of X from A to B, B releasing, declining or
//! renewing X in A's name (A's MAC as chaddr, A's client identifier, or both mixed with B's) is
//! dropped and counted and never becomes a lease event, which would end A's lease and cut the
//! migration over early. The same messages on A's interface still work; clients that are not
//! VMs bound to an interface keep the behaviour without snooping.

#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Encodable, Encoder, Message, MessageType};
use ipshadow_dhcp::{DhcpConfig, DhcpServer, Handled, LeaseEventKind, MigrationPlan, Role};

const X: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
const T0: u64 = 1_800_000_000;

fn config() -> DhcpConfig {
    DhcpConfig::from_toml(
        r#"
        server_id = "10.0.0.1"
        [[subnets]]
        network = "10.0.0.0"
        prefix = 24
        pool = { start = "10.0.0.100", end = "10.0.0.102" }
        relays = ["10.0.0.254"]
        [[reservations]]
        vm = "vm-a"
        mac = "02:00:00:00:00:0a"
        ip = "10.0.0.10"
        interface = "vma"
        [[reservations]]
        vm = "vm-b"
        mac = "02:00:00:00:00:0b"
        interface = "vmb"
        [[reservations]]
        vm = "vm-c"
        mac = "02:00:00:00:00:0c"
        ip = "10.0.0.12"
    "#,
    )
    .unwrap()
}

/// A client message from `mac`, with option 61 when `client_id` is given.
fn message(
    mac: [u8; 6],
    client_id: Option<&[u8]>,
    kind: MessageType,
    ciaddr: Ipv4Addr,
    opts: &[DhcpOption],
) -> Vec<u8> {
    let unspecified = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(0x1234, ciaddr, unspecified, unspecified, unspecified, &mac);
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    if let Some(id) = client_id {
        m.opts_mut().insert(DhcpOption::ClientIdentifier(id.to_vec()));
    }
    for o in opts {
        m.opts_mut().insert(o.clone());
    }
    let mut buf = Vec::new();
    m.encode(&mut Encoder::new(&mut buf)).unwrap();
    buf
}

fn select(mac: [u8; 6], client_id: Option<&[u8]>) -> Vec<u8> {
    let opts = [DhcpOption::RequestedIpAddress(X), DhcpOption::ServerIdentifier(SERVER)];
    message(mac, client_id, MessageType::Request, Ipv4Addr::UNSPECIFIED, &opts)
}

fn release(mac: [u8; 6], client_id: Option<&[u8]>) -> Vec<u8> {
    message(mac, client_id, MessageType::Release, X, &[DhcpOption::ServerIdentifier(SERVER)])
}

fn decline(mac: [u8; 6], client_id: Option<&[u8]>) -> Vec<u8> {
    let opts = [DhcpOption::RequestedIpAddress(X), DhcpOption::ServerIdentifier(SERVER)];
    message(mac, client_id, MessageType::Decline, Ipv4Addr::UNSPECIFIED, &opts)
}

fn renew(mac: [u8; 6], client_id: Option<&[u8]>) -> Vec<u8> {
    message(mac, client_id, MessageType::Request, X, &[])
}

/// A holds X (bound on its own segment, with `a_id` as client identifier if given), a migration
/// to B is planned and B holds X too (bound on its segment).
fn migrating(a_id: Option<&[u8]>) -> DhcpServer {
    let mut s = DhcpServer::new(config()).unwrap();
    assert!(s.handle_on(&select(MAC_A, a_id), Some("vma"), T0).reply.is_some());
    s.add_plan(MigrationPlan::new(7, X, "vm-a", "vm-b", T0 + 300)).unwrap();
    assert!(s.handle_on(&select(MAC_B, None), Some("vmb"), T0 + 1).reply.is_some());
    let bound: Vec<_> = s.take_events().iter().map(|e| (e.kind, e.migration)).collect();
    assert_eq!(
        bound,
        [(LeaseEventKind::Bound, None), (LeaseEventKind::Bound, Some((7, Role::Destination)))],
        "the observer: both binds on their own segments were events"
    );
    assert_eq!(s.leases().on(X).len(), 2);
    s
}

#[test]
fn b_cannot_release_decline_or_renew_x_in_a_s_name() {
    let a_id: &[u8] = &[1, 2, 0, 0, 0, 0, 0xa];
    // A by its MAC alone, and A by its client identifier (what dhclient and dhcpcd may send).
    for a_sends_id in [None, Some(a_id)] {
        let mut s = migrating(a_sends_id);
        let mut forged = vec![
            ("release", release(MAC_A, a_sends_id)),
            ("decline", decline(MAC_A, a_sends_id)),
            ("renew", renew(MAC_A, a_sends_id)),
            ("select", select(MAC_A, a_sends_id)),
        ];
        if let Some(id) = a_sends_id {
            // B's own chaddr with A's client identifier: A's lease is found by the key alone.
            forged.push(("release with B's chaddr", release(MAC_B, Some(id))));
        }
        // From B's segment, from another interface, and from one the kernel did not report.
        for (what, datagram) in &forged {
            for from in [Some("vmb"), Some("eth9"), None] {
                let before = s.counters().wrong_segment_dropped;
                assert_eq!(s.handle_on(datagram, from, T0 + 10), Handled::default(), "{what} from {from:?}");
                assert_eq!(s.counters().wrong_segment_dropped, before + 1, "{what} from {from:?} counted");
            }
        }
        assert!(s.take_events().is_empty(), "no lease event from the forged messages");
        assert!(s.plan(7).unwrap().is_active(), "the migration goes on");
        assert_eq!(s.leases().on(X).len(), 2, "A and B still hold X");
        assert_eq!(s.counters().releases + s.counters().declines, 0, "none reached the handlers");
    }
}

#[test]
fn on_a_s_own_segment_the_same_messages_work() {
    let mut s = migrating(None);
    let ack = s.handle_on(&renew(MAC_A, None), Some("vma"), T0 + 10);
    assert!(ack.reply.is_some() && !ack.changes.is_empty(), "A renews on its segment");
    let h = s.handle_on(&release(MAC_A, None), Some("vma"), T0 + 11);
    assert!(!h.changes.is_empty(), "A's release ends its lease");
    let events: Vec<_> = s.take_events().iter().map(|e| (e.kind, e.migration)).collect();
    assert_eq!(
        events,
        [(LeaseEventKind::Renewed, Some((7, Role::Source))), (LeaseEventKind::Released, Some((7, Role::Source)))]
    );
    // And A's DECLINE, on its segment, is A's to send.
    assert!(s.handle_on(&select(MAC_A, None), Some("vma"), T0 + 12).reply.is_some());
    s.handle_on(&decline(MAC_A, None), Some("vma"), T0 + 13);
    assert_eq!(s.take_events().last().map(|e| e.kind), Some(LeaseEventKind::Declined));
    assert_eq!(s.counters().wrong_segment_dropped, 0);
}

#[test]
fn clients_not_bound_to_an_interface_keep_today_s_behaviour() {
    let mut s = DhcpServer::new(config()).unwrap();
    // vm-c has no interface: served from anywhere, an unknown arrival included.
    let c = [2, 0, 0, 0, 0, 0xc];
    let opts = [DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 12)), DhcpOption::ServerIdentifier(SERVER)];
    let h = s.handle(&message(c, None, MessageType::Request, Ipv4Addr::UNSPECIFIED, &opts), T0);
    assert!(h.reply.is_some());
    // A pool client, on any interface.
    let stranger = [2, 0, 0, 0, 0, 0x99];
    let offer =
        s.handle_on(&message(stranger, None, MessageType::Discover, Ipv4Addr::UNSPECIFIED, &[]), Some("eth9"), T0);
    assert!(offer.reply.is_some());
    assert_eq!(s.counters().wrong_segment_dropped, 0);
}

/// `message` as relay agent `giaddr` forwards it (hops 1).
fn relayed(datagram: &[u8], giaddr: Ipv4Addr) -> Vec<u8> {
    use dhcproto::{Decodable, Decoder};
    let mut m = Message::decode(&mut Decoder::new(datagram)).unwrap();
    m.set_giaddr(giaddr).set_hops(1);
    let mut buf = Vec::new();
    m.encode(&mut Encoder::new(&mut buf)).unwrap();
    buf
}

#[test]
fn a_configured_relay_speaks_for_its_vms_but_not_from_a_vm_segment() {
    let relay = Ipv4Addr::new(10, 0, 0, 254);
    let mut s = DhcpServer::new(config()).unwrap();
    // A's request relayed by the subnet's relay agent, arriving on the uplink: answered (the
    // relay agent is the attachment point; snooping is its job).
    let h = s.handle_on(&relayed(&select(MAC_A, None), relay), Some("uplink"), T0);
    assert!(h.reply.is_some(), "a relayed request for a bound VM is served");
    assert_eq!(s.counters().wrong_segment_dropped, 0);
    // The same relayed message, forged on B's segment (B set giaddr itself): dropped.
    let forged = relayed(&release(MAC_A, None), relay);
    assert_eq!(s.handle_on(&forged, Some("vmb"), T0 + 1), Handled::default());
    // From an address no subnet lists as its relay, on the uplink: dropped too.
    let stranger = relayed(&release(MAC_A, None), Ipv4Addr::new(10, 0, 0, 253));
    assert_eq!(s.handle_on(&stranger, Some("uplink"), T0 + 1), Handled::default());
    assert_eq!(s.counters().wrong_segment_dropped, 2);
    assert!(s.take_events().iter().all(|e| e.kind == LeaseEventKind::Bound), "no release became an event");
    assert_eq!(s.leases().on(X).len(), 1, "A still holds X");
}

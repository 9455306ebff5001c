//! The server's decisions, message by message: reservations, the migration lease plan (both
//! VMs hold X, B with the short lease, A capped at the deadline and NAKed after it), rollback,
//! DECLINE by B, relays, the pool, and bad input.

#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Encodable, Encoder, Message, MessageType, OptionCode, UnknownOption};
use ipshadow_dhcp::{
    DhcpConfig, DhcpServer, Handled, LeaseChange, LeaseEventKind, MigrationPlan, PlanState, ReplyTo, Role, wire,
};

const X: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
const T0: u64 = 1_800_000_000;

fn config(pool: bool) -> DhcpConfig {
    let pool = if pool { "pool = { start = \"10.0.0.100\", end = \"10.0.0.102\" }" } else { "" };
    DhcpConfig::from_toml(&format!(
        r#"
        server_id = "10.0.0.1"
        [[subnets]]
        network = "10.0.0.0"
        prefix = 24
        routers = ["10.0.0.1"]
        dns = ["10.0.0.2"]
        lease_secs = 3600
        {pool}
        [[reservations]]
        vm = "vm-a"
        mac = "02:00:00:00:00:0a"
        ip = "10.0.0.10"
        [[reservations]]
        vm = "vm-b"
        mac = "02:00:00:00:00:0b"
    "#
    ))
    .unwrap()
}

fn message(mac: [u8; 6], kind: MessageType, ciaddr: Ipv4Addr, opts: Vec<DhcpOption>) -> Vec<u8> {
    relayed(mac, kind, ciaddr, Ipv4Addr::UNSPECIFIED, opts)
}

/// A client message, through the relay `giaddr` unless that is 0.0.0.0.
fn relayed(mac: [u8; 6], kind: MessageType, ciaddr: Ipv4Addr, giaddr: Ipv4Addr, opts: Vec<DhcpOption>) -> Vec<u8> {
    let mut m = Message::new_with_id(0x1234, ciaddr, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, giaddr, &mac);
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    for o in opts {
        m.opts_mut().insert(o);
    }
    let mut buf = Vec::new();
    m.encode(&mut Encoder::new(&mut buf)).unwrap();
    buf
}

fn discover(mac: [u8; 6]) -> Vec<u8> {
    message(mac, MessageType::Discover, Ipv4Addr::UNSPECIFIED, vec![])
}

fn select(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let opts = vec![DhcpOption::RequestedIpAddress(ip), DhcpOption::ServerIdentifier([10, 0, 0, 1].into())];
    message(mac, MessageType::Request, Ipv4Addr::UNSPECIFIED, opts)
}

fn renew(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    message(mac, MessageType::Request, ip, vec![])
}

struct Answer {
    kind: MessageType,
    yiaddr: Ipv4Addr,
    lease: Option<u32>,
    shadow: Option<Vec<u8>>,
    to: ReplyTo,
    raw: Vec<u8>,
}

fn answer(h: &Handled) -> Answer {
    let reply = h.reply.as_ref().expect("a reply");
    assert!(reply.bytes.len() >= 300, "padded to the BOOTP minimum");
    let m = Message::decode(&mut dhcproto::v4::Decoder::new(&reply.bytes)).unwrap();
    let lease = match m.opts().get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(t)) => Some(*t),
        _ => None,
    };
    let shadow = match m.opts().get(OptionCode::from(224)) {
        Some(DhcpOption::Unknown(u)) => Some(u.data().to_vec()),
        _ => None,
    };
    Answer {
        kind: m.opts().msg_type().unwrap(),
        yiaddr: m.yiaddr(),
        lease,
        shadow,
        to: reply.to,
        raw: reply.bytes.clone(),
    }
}

use dhcproto::v4::Decodable;

fn bind(s: &mut DhcpServer, mac: [u8; 6], now: u64) -> Answer {
    let offer = answer(&s.handle(&discover(mac), now));
    assert_eq!(offer.kind, MessageType::Offer);
    let h = s.handle(&select(mac, offer.yiaddr), now);
    assert!(!h.changes.is_empty(), "an ACK comes with a change to persist");
    let ack = answer(&h);
    assert_eq!(ack.kind, MessageType::Ack);
    ack
}

#[test]
fn a_reserved_vm_gets_renews_and_releases_its_address() {
    let mut s = DhcpServer::new(config(false)).unwrap();
    let ack = bind(&mut s, MAC_A, T0);
    assert_eq!((ack.yiaddr, ack.lease, ack.to), (X, Some(3600), ReplyTo::Broadcast));
    assert_eq!(ack.shadow, None);
    let again = answer(&s.handle(&renew(MAC_A, X), T0 + 1800));
    assert_eq!((again.kind, again.to), (MessageType::Ack, ReplyTo::Unicast(X)));
    let h = s.handle(&message(MAC_A, MessageType::Release, X, vec![]), T0 + 1900);
    assert!(h.reply.is_none());
    assert!(matches!(h.changes[..], [LeaseChange::Delete { ip, .. }] if ip == X));
    let kinds: Vec<_> = s.take_events().iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [LeaseEventKind::Bound, LeaseEventKind::Renewed, LeaseEventKind::Released]);
    assert!(s.leases().is_empty());
}

#[test]
fn during_a_migration_both_vms_hold_x_with_the_shadowing_option() {
    let mut s = DhcpServer::new(config(false)).unwrap();
    bind(&mut s, MAC_A, T0);
    let deadline = T0 + 600;
    s.add_plan(MigrationPlan::new(7, X, "vm-a", "vm-b", deadline)).unwrap();
    let b = bind(&mut s, MAC_B, T0 + 10);
    assert_eq!((b.yiaddr, b.lease), (X, Some(60)), "B gets X with the short shadow lease");
    let payload = b.shadow.unwrap();
    assert_eq!(payload[..2], [1, 2], "flag, role destination");
    assert_eq!(u64::from_be_bytes(payload[2..10].try_into().unwrap()), 7);
    assert_eq!(u64::from(u32::from_be_bytes(payload[10..14].try_into().unwrap())), deadline);
    assert_eq!(s.leases().on(X).len(), 2, "X is leased to both VMs");
    let events = s.take_events();
    assert!(events.iter().any(|e| e.kind == LeaseEventKind::Bound && e.migration == Some((7, Role::Destination))));
    // A renews: capped at the deadline, marked as the source.
    let a = answer(&s.handle(&renew(MAC_A, X), T0 + 300));
    assert_eq!((a.kind, a.lease), (MessageType::Ack, Some(300)));
    assert_eq!(a.to, ReplyTo::Broadcast, "X is held by two VMs: unicast to it could reach either");
    assert_eq!(a.shadow.unwrap()[..2], [1, 1]);
    // Past the deadline A is refused, B still renews.
    let late = answer(&s.handle(&renew(MAC_A, X), deadline));
    assert_eq!((late.kind, late.to), (MessageType::Nak, ReplyTo::Broadcast));
    let refused = s.take_events().pop().unwrap();
    assert_eq!((refused.kind, refused.migration), (LeaseEventKind::Refused, Some((7, Role::Source))));
    assert_eq!(answer(&s.handle(&renew(MAC_B, X), deadline)).kind, MessageType::Ack);
    // Completed: B gets the normal lease, no option; A stays refused.
    s.end_plan(7, PlanState::Completed).unwrap();
    let b = answer(&s.handle(&renew(MAC_B, X), deadline + 30));
    assert_eq!((b.kind, b.lease, b.shadow), (MessageType::Ack, Some(3600), None));
    assert_eq!(answer(&s.handle(&renew(MAC_A, X), deadline + 30)).kind, MessageType::Nak);
}

/// Issue 12: the manager extends A's lease end for A's forecast drain, or ends it early when A
/// drained: A's next renewal follows the plan's deadline.
#[test]
fn a_moved_deadline_extends_or_ends_a_s_lease() {
    let mut s = DhcpServer::new(config(false)).unwrap();
    bind(&mut s, MAC_A, T0);
    s.add_plan(MigrationPlan::new(7, X, "vm-a", "vm-b", T0 + 600)).unwrap();
    let a = answer(&s.handle(&renew(MAC_A, X), T0 + 300));
    assert_eq!((a.kind, a.lease), (MessageType::Ack, Some(300)));
    // Extended by 20 minutes: A renews to the new end, the option carries it.
    s.move_deadline(7, T0 + 1800).unwrap();
    let a = answer(&s.handle(&renew(MAC_A, X), T0 + 500));
    assert_eq!((a.kind, a.lease), (MessageType::Ack, Some(1300)));
    assert_eq!(u64::from(u32::from_be_bytes(a.shadow.unwrap()[10..14].try_into().unwrap())), T0 + 1800);
    assert_eq!(answer(&s.handle(&renew(MAC_A, X), T0 + 700)).kind, MessageType::Ack, "past the old end");
    // Finished early: completed with the end moved to now, A is refused from then on.
    s.end_plan(7, PlanState::Completed).unwrap();
    s.move_deadline(7, T0 + 800).unwrap();
    assert_eq!(s.plan(7).map(|p| p.deadline), Some(T0 + 800));
    assert_eq!(answer(&s.handle(&renew(MAC_A, X), T0 + 801)).kind, MessageType::Nak);
    assert!(s.move_deadline(7, u64::MAX).is_err(), "out of the option's range");
    assert!(s.move_deadline(99, T0).is_err(), "no such plan");
}

#[test]
fn after_a_rollback_a_keeps_x_and_b_is_refused() {
    let mut s = DhcpServer::new(config(false)).unwrap();
    bind(&mut s, MAC_A, T0);
    s.add_plan(MigrationPlan::new(8, X, "vm-a", "vm-b", T0 + 600)).unwrap();
    bind(&mut s, MAC_B, T0 + 10);
    s.end_plan(8, PlanState::RolledBack).unwrap();
    assert_eq!(answer(&s.handle(&renew(MAC_B, X), T0 + 40)).kind, MessageType::Nak);
    let a = answer(&s.handle(&renew(MAC_A, X), T0 + 700));
    assert_eq!((a.kind, a.lease, a.shadow), (MessageType::Ack, Some(3600), None), "not capped any more");
    // B's short lease lapses on its own.
    let changes = s.expire(T0 + 10 + 61);
    assert_eq!(changes.len(), 1);
    assert_eq!(s.leases().on(X).len(), 1);
}

#[test]
fn b_declining_x_fails_the_migration_without_quarantining_x() {
    let mut s = DhcpServer::new(config(true)).unwrap();
    bind(&mut s, MAC_A, T0);
    s.add_plan(MigrationPlan::new(9, X, "vm-a", "vm-b", T0 + 600)).unwrap();
    bind(&mut s, MAC_B, T0 + 10);
    // A DECLINE without our server identifier is not for us.
    let stray = message(MAC_B, MessageType::Decline, Ipv4Addr::UNSPECIFIED, vec![DhcpOption::RequestedIpAddress(X)]);
    assert_eq!(s.handle(&stray, T0 + 11), Handled::default());
    assert!(s.plan(9).unwrap().is_active());
    let ours = vec![DhcpOption::RequestedIpAddress(X), DhcpOption::ServerIdentifier([10, 0, 0, 1].into())];
    let h = s.handle(&message(MAC_B, MessageType::Decline, Ipv4Addr::UNSPECIFIED, ours), T0 + 11);
    assert!(h.reply.is_none());
    assert!(matches!(h.changes[..], [LeaseChange::Delete { .. }, LeaseChange::Plan(_)]), "{:?}", h.changes);
    match &s.plan(9).unwrap().state {
        PlanState::Failed(why) => assert!(why.contains("declined 10.0.0.10"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(answer(&s.handle(&renew(MAC_A, X), T0 + 700)).lease, Some(3600), "A keeps X");
    assert_eq!(answer(&s.handle(&renew(MAC_B, X), T0 + 12)).kind, MessageType::Nak);
}

#[test]
fn unknown_clients_are_ignored_without_a_pool_and_served_from_it_with_one() {
    let stranger = [2, 0, 0, 0, 0, 0x99];
    let mut s = DhcpServer::new(config(false)).unwrap();
    assert!(s.handle(&discover(stranger), T0).reply.is_none());
    assert_eq!(s.counters().unknown_clients, 1);
    let mut s = DhcpServer::new(config(true)).unwrap();
    let got: Vec<Ipv4Addr> = (0..3u8).map(|i| bind(&mut s, [2, 0, 0, 0, 1, i], T0).yiaddr).collect();
    assert_eq!(got, [[10, 0, 0, 100], [10, 0, 0, 101], [10, 0, 0, 102]].map(Ipv4Addr::from));
    assert!(s.handle(&discover([2, 0, 0, 0, 1, 9]), T0).reply.is_none(), "the pool is used up");
    // The same client gets the same address again.
    assert_eq!(bind(&mut s, [2, 0, 0, 0, 1, 1], T0 + 5).yiaddr, Ipv4Addr::new(10, 0, 0, 101));
}

#[test]
fn a_request_for_another_server_frees_our_offer() {
    let mut s = DhcpServer::new(config(true)).unwrap();
    let c = [2, 0, 0, 0, 1, 1];
    let offer = answer(&s.handle(&discover(c), T0));
    let other =
        vec![DhcpOption::RequestedIpAddress(offer.yiaddr), DhcpOption::ServerIdentifier([10, 0, 0, 254].into())];
    assert!(s.handle(&message(c, MessageType::Request, Ipv4Addr::UNSPECIFIED, other), T0).reply.is_none());
    assert_eq!(s.counters().other_server, 1);
    // The pool has three addresses: with two more clients offered the others, ours is free again.
    for i in 2..4 {
        assert_ne!(answer(&s.handle(&discover([2, 0, 0, 0, 1, i]), T0)).yiaddr, offer.yiaddr);
    }
    assert_eq!(answer(&s.handle(&discover([2, 0, 0, 0, 1, 4]), T0)).yiaddr, offer.yiaddr, "free again");
}

#[test]
fn relayed_requests_are_answered_to_the_relay_with_option_82_echoed_last() {
    let mut s = DhcpServer::new(config(false)).unwrap();
    let mut m = Message::new_with_id(
        9,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        [10, 0, 0, 254].into(),
        &MAC_A,
    );
    m.opts_mut().insert(DhcpOption::MessageType(MessageType::Discover));
    let mut buf = Vec::new();
    m.encode(&mut Encoder::new(&mut buf)).unwrap();
    // Insert a raw option 82 whose sub-options are out of order (2 before 1) before END.
    let end = buf.iter().rposition(|b| *b == 255).unwrap();
    let opt82 = [82u8, 8, 2, 2, 0xbe, 0xef, 1, 2, 0xca, 0xfe];
    buf.splice(end..end, opt82);
    let a = answer(&s.handle(&buf, T0));
    assert_eq!((a.kind, a.to), (MessageType::Offer, ReplyTo::Relay([10, 0, 0, 254].into())));
    let at = a.raw.windows(opt82.len()).position(|w| w == opt82).expect("option 82 echoed byte for byte");
    assert_eq!(a.raw[at + opt82.len()], 255, "and last, right before END");
    let _ = UnknownOption::new(OptionCode::from(224), vec![]);
}

#[test]
fn bad_datagrams_are_counted_drops() {
    let mut s = DhcpServer::new(config(false)).unwrap();
    let good = discover(MAC_A);
    let mut wrong_magic = good.clone();
    wrong_magic[236] = 0;
    for bad in [&good[..100], &wrong_magic[..], &[0u8; 2000][..]] {
        assert_eq!(s.handle(bad, T0), Handled::default());
    }
    assert_eq!(s.counters().dropped.values().sum::<u64>(), 3);
    assert!(s.counters().dropped.contains_key(wire::DecodeError::BadMagic.name()), "{:?}", s.counters().dropped);
}

#[test]
fn plans_are_checked() {
    let mut s = DhcpServer::new(config(false)).unwrap();
    assert!(s.add_plan(MigrationPlan::new(1, X, "vm-a", "vm-z", T0)).is_err());
    assert!(s.add_plan(MigrationPlan::new(1, X, "vm-a", "vm-a", T0)).is_err());
    assert!(s.add_plan(MigrationPlan::new(1, [10, 0, 0, 11].into(), "vm-a", "vm-b", T0)).is_err());
    s.add_plan(MigrationPlan::new(1, X, "vm-a", "vm-b", T0)).unwrap();
    assert!(s.add_plan(MigrationPlan::new(2, X, "vm-a", "vm-b", T0)).is_err(), "already migrating");
    s.end_plan(1, PlanState::Completed).unwrap();
    assert!(s.end_plan(1, PlanState::RolledBack).is_err());
}

#[test]
fn a_relayed_pool_client_renews_directly_and_a_stranger_is_not_answered() {
    let relay = Ipv4Addr::new(192, 168, 1, 1);
    let config = DhcpConfig::from_toml(
        r#"
        server_id = "10.0.0.1"
        [[subnets]]
        network = "10.0.0.0"
        prefix = 24
        [[subnets]]
        network = "10.9.0.0"
        prefix = 24
        relays = ["192.168.1.1"]
        pool = { start = "10.9.0.10", end = "10.9.0.20" }
    "#,
    )
    .unwrap();
    let mut s = DhcpServer::new(config).unwrap();
    let c = [2, 0, 0, 0, 9, 9];
    let offer = answer(&s.handle(&relayed(c, MessageType::Discover, Ipv4Addr::UNSPECIFIED, relay, vec![]), T0));
    assert_eq!((offer.yiaddr, offer.to), (Ipv4Addr::new(10, 9, 0, 10), ReplyTo::Relay(relay)));
    let select = vec![DhcpOption::RequestedIpAddress(offer.yiaddr), DhcpOption::ServerIdentifier([10, 0, 0, 1].into())];
    let ack = answer(&s.handle(&relayed(c, MessageType::Request, Ipv4Addr::UNSPECIFIED, relay, select), T0));
    assert_eq!(ack.kind, MessageType::Ack);
    // RENEWING goes straight to the server: no giaddr, ciaddr in the relayed subnet.
    let renew = answer(&s.handle(&renew(c, offer.yiaddr), T0 + 100));
    assert_eq!((renew.kind, renew.yiaddr), (MessageType::Ack, offer.yiaddr));
    // INIT-REBOOT of a client we never saw: RFC 2131 4.3.2, stay silent.
    let stranger = vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 9, 0, 15))];
    let h = s.handle(&relayed([2, 0, 0, 0, 8, 8], MessageType::Request, Ipv4Addr::UNSPECIFIED, relay, stranger), T0);
    assert!(h.reply.is_none());
    // A relayed NAK asks the relay to broadcast.
    let wrong = vec![
        DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 9, 0, 19)),
        DhcpOption::ServerIdentifier([10, 0, 0, 1].into()),
    ];
    let nak = s.handle(&relayed(c, MessageType::Request, Ipv4Addr::UNSPECIFIED, relay, wrong), T0 + 200);
    let bytes = &nak.reply.unwrap().bytes;
    assert_eq!(bytes[10] & 0x80, 0x80, "broadcast flag set on a relayed NAK");
}

#[test]
fn after_a_completed_plan_is_removed_b_keeps_x_and_a_stays_refused() {
    let mut s = DhcpServer::new(config(false)).unwrap();
    bind(&mut s, MAC_A, T0);
    s.add_plan(MigrationPlan::new(3, X, "vm-a", "vm-b", T0 + 100)).unwrap();
    assert!(matches!(
        s.add_plan(MigrationPlan::new(3, X, "vm-a", "vm-b", T0)),
        Err(ipshadow_dhcp::PlanError::AlreadyMigrating(_))
    ));
    bind(&mut s, MAC_B, T0 + 1);
    s.end_plan(3, PlanState::Completed).unwrap();
    s.remove_plan(3).unwrap();
    assert!(
        matches!(s.add_plan(MigrationPlan::new(3, X, "vm-b", "vm-a", T0 + 900)), Ok(())),
        "X is B's now: B can be the source"
    );
    s.remove_plan(3);
    let b = answer(&s.handle(&renew(MAC_B, X), T0 + 200));
    assert_eq!((b.kind, b.lease), (MessageType::Ack, Some(3600)));
    assert_eq!(answer(&s.handle(&renew(MAC_A, X), T0 + 200)).kind, MessageType::Nak);
}

#[test]
fn restore_drops_ended_leases_from_the_store_and_inform_ignores_strangers() {
    let mut s = DhcpServer::new(config(false)).unwrap();
    let lease = |mac: u8, expires| ipshadow_dhcp::Lease {
        ip: Ipv4Addr::new(10, 0, 0, mac),
        client: ipshadow_dhcp::ClientKey::Mac([2, 0, 0, 0, 1, mac]),
        vm: None,
        expires,
        migration: None,
    };
    let changes = s.restore([lease(50, T0 - 1), lease(51, T0 + 100)], T0);
    assert!(matches!(changes[..], [LeaseChange::Delete { ip, .. }] if ip == Ipv4Addr::new(10, 0, 0, 50)));
    assert_eq!(s.leases().len(), 1);
    let inform = message([2, 0, 0, 0, 7, 7], MessageType::Inform, Ipv4Addr::new(10, 0, 0, 77), vec![]);
    assert!(s.handle(&inform, T0).reply.is_none(), "provider mode: no answer for unknown clients");
    let known = message(MAC_A, MessageType::Inform, X, vec![]);
    assert_eq!(answer(&s.handle(&known, T0)).kind, MessageType::Ack);
}

//! Parsing exact frames: every accepted shape and every refusal.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::net::Ipv4Addr;

use ipshadow_core::testkit::{fix_ipv4_checksum, icmp_echo, make_fragment, tcp, udp, vlan_tag};
use ipshadow_core::wire::{Fragment, L4, Layer, Packet, ParseError, TcpFlags, parse_frame};

const C: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const X: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);

fn ipv4(frame: &[u8]) -> ipshadow_core::wire::Ipv4Info {
    match parse_frame(frame) {
        Ok(Packet::Ipv4(ip)) => ip,
        other => panic!("expected IPv4, got {other:?}"),
    }
}

#[test]
fn tcp_segment_fields() {
    let f = tcp((C, 40_000), (X, 443), TcpFlags::ACK | TcpFlags::PSH, 1000, 2000, b"hello");
    let ip = ipv4(&f);
    assert_eq!((ip.src, ip.dst, ip.protocol, ip.fragment, ip.vlan, ip.l3_offset), (C, X, 6, Fragment::Whole, None, 14));
    let L4::Tcp(t) = ip.l4 else { panic!("not tcp") };
    assert_eq!((t.src_port, t.dst_port, t.seq, t.ack, t.payload_len), (40_000, 443, 1000, 2000, 5));
    assert!(t.flags.ack() && !t.flags.syn() && !t.flags.rst());
    assert_eq!(t.seq_len(), 5);
}

#[test]
fn syn_and_fin_occupy_sequence_space() {
    let ip = ipv4(&tcp((C, 1), (X, 2), TcpFlags::SYN, 7, 0, &[]));
    let L4::Tcp(t) = ip.l4 else { panic!() };
    assert!(t.flags.is_syn_only());
    assert_eq!(t.seq_len(), 1);
    let ip = ipv4(&tcp((C, 1), (X, 2), TcpFlags::FIN | TcpFlags::ACK, 7, 1, b"ab"));
    let L4::Tcp(t) = ip.l4 else { panic!() };
    assert_eq!(t.seq_len(), 3);
}

#[test]
fn udp_and_icmp_echo() {
    let ip = ipv4(&udp((C, 5353), (X, 53), b"q"));
    assert_eq!(ip.l4, L4::Udp { src_port: 5353, dst_port: 53 });
    let ip = ipv4(&icmp_echo(C, X, 77, 1, false));
    assert_eq!(ip.l4, L4::IcmpEcho { id: 77, reply: false });
    let ip = ipv4(&icmp_echo(X, C, 77, 1, true));
    assert_eq!(ip.l4, L4::IcmpEcho { id: 77, reply: true });
}

#[test]
fn single_and_double_vlan_tags() {
    let f = udp((C, 1), (X, 2), b"");
    let tagged = vlan_tag(&f, 0x8100, 42);
    let ip = ipv4(&tagged);
    assert_eq!((ip.vlan, ip.l3_offset), (Some(42), 18));
    let qinq = vlan_tag(&tagged, 0x88a8, 7);
    let ip = ipv4(&qinq);
    assert_eq!((ip.vlan, ip.l3_offset), (Some(7), 22));
    let triple = vlan_tag(&qinq, 0x8100, 9);
    assert_eq!(parse_frame(&triple), Err(ParseError::TooManyVlanTags));
}

fn arp_frame(op: u16, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[2, 0, 0, 0, 0, 9]);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&[2, 0, 0, 0, 0, 9]);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

#[test]
fn arp_request_and_probe() {
    let Ok(Packet::Arp(a)) = parse_frame(&arp_frame(1, C, X)) else { panic!() };
    assert_eq!((a.operation, a.sender_ip, a.target_ip, a.sender_mac), (1, C, X, [2, 0, 0, 0, 0, 9]));
    // RFC 5227 probe: sender 0.0.0.0.
    let Ok(Packet::Arp(a)) = parse_frame(&arp_frame(1, Ipv4Addr::UNSPECIFIED, X)) else { panic!() };
    assert!(a.sender_ip.is_unspecified());
    let mut bad = arp_frame(1, C, X);
    bad[14 + 1] = 6; // hardware type 6 (IEEE 802), not Ethernet
    assert_eq!(parse_frame(&bad), Err(ParseError::UnsupportedArp));
    assert_eq!(parse_frame(&arp_frame(1, C, X)[..20]), Err(ParseError::Truncated(Layer::Arp)));
}

#[test]
fn other_ethertypes_pass_through_unparsed() {
    let mut f = udp((C, 1), (X, 2), b"");
    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    assert_eq!(parse_frame(&f), Ok(Packet::Other { ether_type: 0x86dd }));
}

#[test]
fn ipv4_header_refusals() {
    let good = tcp((C, 1), (X, 2), TcpFlags::SYN, 0, 0, &[]);
    let mut f = good.clone();
    f[24] ^= 0xff; // checksum
    assert_eq!(parse_frame(&f), Err(ParseError::BadChecksum));
    let mut f = good.clone();
    f[14] = 0x65; // version 6
    assert_eq!(parse_frame(&f), Err(ParseError::NotIpv4(6)));
    let mut f = good.clone();
    f[14] = 0x44; // IHL 4
    assert_eq!(parse_frame(&f), Err(ParseError::BadHeaderLength));
    let mut f = good.clone();
    f[16..18].copy_from_slice(&2000u16.to_be_bytes()); // total length beyond the frame
    fix_ipv4_checksum(&mut f);
    assert_eq!(parse_frame(&f), Err(ParseError::BadTotalLength));
    let mut f = good.clone();
    f[16..18].copy_from_slice(&10u16.to_be_bytes()); // shorter than the header
    fix_ipv4_checksum(&mut f);
    assert_eq!(parse_frame(&f), Err(ParseError::BadTotalLength));
    // Ethernet padding after the datagram is fine.
    let mut f = good.clone();
    f.extend_from_slice(&[0; 6]);
    assert!(parse_frame(&f).is_ok());
}

#[test]
fn tcp_header_refusals() {
    let mut f = tcp((C, 1), (X, 2), TcpFlags::SYN, 0, 0, &[]);
    f[34 + 12] = 0x40; // data offset 4 words
    assert_eq!(parse_frame(&f), Err(ParseError::BadTcpDataOffset));
    let mut f = tcp((C, 1), (X, 2), TcpFlags::SYN, 0, 0, &[]);
    f[34 + 12] = 0xf0; // 60-byte header in a 20-byte segment
    assert_eq!(parse_frame(&f), Err(ParseError::Truncated(Layer::Tcp)));
}

#[test]
fn fragments_first_later_and_rfc1858() {
    let whole = udp((C, 5000), (X, 53), &[7; 64]);
    let first = make_fragment(whole.clone(), 99, 0, true, 24);
    let ip = ipv4(&first);
    assert_eq!((ip.fragment, ip.ident), (Fragment::First, 99));
    assert_eq!(ip.l4, L4::Udp { src_port: 5000, dst_port: 53 });
    let later = make_fragment(whole.clone(), 99, 3, false, 16);
    let ip = ipv4(&later);
    assert_eq!((ip.fragment, ip.l4), (Fragment::Later, L4::LaterFragment));
    // A first TCP fragment that cannot hold the TCP header (RFC 1858 3.1).
    let seg = tcp((C, 1), (X, 2), TcpFlags::ACK, 0, 0, &[1; 40]);
    assert_eq!(parse_frame(&make_fragment(seg.clone(), 5, 0, true, 8)), Err(ParseError::TinyFragment));
    // A TCP fragment at offset 8 bytes overwrites the header (RFC 1858 3.2).
    assert_eq!(parse_frame(&make_fragment(seg, 5, 1, false, 8)), Err(ParseError::OverlappingFragment));
}

#[test]
fn icmp_error_quotes_the_original_flow() {
    // Port unreachable from a router on the path, about a UDP datagram X sent to C.
    let original = udp((X, 4444), (C, 53), b"query");
    let quote = &original[14..14 + 28];
    let mut icmp = vec![3u8, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(quote);
    let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]).ipv4(
        [192, 0, 2, 1],
        X.octets(),
        64,
    );
    let mut f = Vec::new();
    b.write(&mut f, 1u8.into(), &icmp).unwrap();
    let ip = ipv4(&f);
    let L4::IcmpError(q) = ip.l4 else { panic!("{:?}", ip.l4) };
    assert_eq!((q.protocol, q.src, q.dst, q.src_port, q.dst_port), (17, X, C, 4444, 53));
    // A quote too short to read is still a valid ICMP message, just not tied to a flow.
    let mut icmp = vec![3u8, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&quote[..10]);
    let mut f = Vec::new();
    b_again().write(&mut f, 1u8.into(), &icmp).unwrap();
    assert_eq!(ipv4(&f).l4, L4::IcmpOther);
}

fn b_again() -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]).ipv4([192, 0, 2, 1], X.octets(), 64)
}

#[test]
fn every_truncation_of_valid_frames_is_an_error_or_ok_never_a_panic() {
    let frames = [
        tcp((C, 1), (X, 2), TcpFlags::SYN, 0, 0, &[]),
        udp((C, 1), (X, 2), b"abc"),
        icmp_echo(C, X, 1, 1, false),
        arp_frame(1, C, X),
        vlan_tag(&udp((C, 1), (X, 2), b"abc"), 0x8100, 5),
    ];
    for f in &frames {
        for len in 0..f.len() {
            let _ = parse_frame(&f[..len]);
        }
        assert!(parse_frame(&f[..13]).is_err(), "13 bytes cannot be Ethernet");
    }
}

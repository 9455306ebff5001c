//! Completing TCP and UDP checksums the sender's kernel left to "hardware".
//!
//! A frame sent by a local stack over a veth (or tap) pair carries a partial checksum: the kernel
//! expects a NIC or the receiving stack to finish it, and a packet socket sees it flagged
//! `TP_STATUS_CSUMNOTREADY`. A router that re-sends such a frame must finish the checksum
//! itself, or the receiving host drops the segment (RFC 793 3.1, RFC 768: the checksum covers a
//! pseudo-header with both addresses, the protocol and the length).

use etherparse::checksum::Sum16BitWords;

/// Ethernet type of IPv4.
const ETHERTYPE_IPV4: u16 = 0x0800;
/// Ethernet type of an 802.1Q tag.
const ETHERTYPE_VLAN: u16 = 0x8100;

/// Computes and writes the TCP or UDP checksum of an Ethernet/IPv4 frame (one optional VLAN
/// tag). Returns false, changing nothing, for anything else or a frame too short for its
/// headers.
pub fn complete_l4_checksum(frame: &mut [u8]) -> bool {
    let mut l3 = 14;
    let ethertype = |at: usize| frame.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let mut kind = ethertype(12);
    if kind == Some(ETHERTYPE_VLAN) {
        l3 = 18;
        kind = ethertype(16);
    }
    if kind != Some(ETHERTYPE_IPV4) || frame.len() < l3 + 20 || frame[l3] >> 4 != 4 {
        return false;
    }
    let ihl = usize::from(frame[l3] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([frame[l3 + 2], frame[l3 + 3]]));
    // A fragment's checksum covers the whole datagram: only the sender can finish it.
    let fragment = u16::from_be_bytes([frame[l3 + 6], frame[l3 + 7]]) & 0x3fff != 0;
    if ihl < 20 || total < ihl || frame.len() < l3 + total || fragment {
        return false;
    }
    let protocol = frame[l3 + 9];
    let field = match protocol {
        6 => 16,
        17 => 6,
        _ => return false,
    };
    let l4 = l3 + ihl;
    let l4_len = total - ihl;
    if l4_len < field + 2 {
        return false;
    }
    frame[l4 + field] = 0;
    frame[l4 + field + 1] = 0;
    // etherparse sums words in native byte order; `to_be` turns the result into the value
    // whose big-endian bytes go on the wire.
    let sum = Sum16BitWords::new()
        .add_slice(&frame[l3 + 12..l3 + 20])
        .add_2bytes([0, protocol])
        .add_2bytes((l4_len as u16).to_be_bytes())
        .add_slice(&frame[l4..l4 + l4_len]);
    // RFC 768: a computed UDP checksum of zero is sent as all ones (zero means "none").
    let checksum = if protocol == 17 { sum.to_ones_complement_with_no_zero() } else { sum.ones_complement() }.to_be();
    frame[l4 + field..l4 + field + 2].copy_from_slice(&checksum.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::complete_l4_checksum;
    use ipshadow_core::testkit::{tcp, udp};
    use std::net::Ipv4Addr;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 11);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);

    #[test]
    fn restores_what_a_correct_sender_computes() {
        for frame in [
            tcp((A, 40_000), (B, 7000), 0x18, 1, 2, b"hello, odd length"),
            tcp((A, 40_000), (B, 7000), 0x02, 1, 0, b""),
            udp((A, 5353), (B, 53), b"0123456789"),
            udp((A, 5353), (B, 53), b"x"),
        ] {
            let mut broken = frame.clone();
            let field = if broken[23] == 6 { 14 + 20 + 16 } else { 14 + 20 + 6 };
            broken[field] ^= 0x5a;
            broken[field + 1] = 0x17;
            assert!(complete_l4_checksum(&mut broken));
            assert_eq!(broken, frame);
        }
    }

    #[test]
    fn leaves_other_and_short_frames_alone() {
        let mut arp = vec![0xff; 42];
        arp[12..14].copy_from_slice(&[8, 6]);
        let before = arp.clone();
        assert!(!complete_l4_checksum(&mut arp));
        assert_eq!(arp, before);
        let frame = tcp((A, 1), (B, 2), 0x10, 1, 2, b"abc");
        for cut in 0..frame.len() {
            let mut short = frame[..cut].to_vec();
            assert!(!complete_l4_checksum(&mut short), "cut at {cut}");
        }
    }
}

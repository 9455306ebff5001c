//! Frame parsing into [`Packet`].

use std::net::Ipv4Addr;

use etherparse::{
    ArpPacketSlice, Ethernet2HeaderSlice, Ipv4HeaderSlice, SingleVlanHeaderSlice, TcpHeaderSlice, UdpHeaderSlice,
};

use super::{ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_QINQ, ETHERTYPE_VLAN, PROTO_ICMP, PROTO_TCP, PROTO_UDP};

/// The protocol layer a parse error refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layer {
    /// Ethernet II header.
    Ethernet,
    /// 802.1Q/802.1ad tag.
    Vlan,
    /// ARP packet.
    Arp,
    /// IPv4 header.
    Ipv4,
    /// TCP header.
    Tcp,
    /// UDP header.
    Udp,
    /// ICMP header.
    Icmp,
}

impl core::fmt::Display for Layer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let name = match self {
            Layer::Ethernet => "Ethernet",
            Layer::Vlan => "VLAN",
            Layer::Arp => "ARP",
            Layer::Ipv4 => "IPv4",
            Layer::Tcp => "TCP",
            Layer::Udp => "UDP",
            Layer::Icmp => "ICMP",
        };
        f.write_str(name)
    }
}

/// Why a frame was refused. Small and `Copy`: the packet path counts it and moves on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The frame ends inside a header.
    #[error("frame ends inside its {0} header")]
    Truncated(Layer),
    /// The IPv4 header's version field is not 4 although the EtherType said IPv4.
    #[error("IPv4 EtherType but IP version {0}")]
    NotIpv4(u8),
    /// IHL below 5 words.
    #[error("IPv4 header length below 20 bytes")]
    BadHeaderLength,
    /// Total length shorter than the header, or longer than the frame.
    #[error("IPv4 total length disagrees with the header or the frame")]
    BadTotalLength,
    /// RFC 1812 5.2.2: a router drops a datagram whose header checksum is wrong.
    #[error("IPv4 header checksum mismatch")]
    BadChecksum,
    /// TCP data offset below 5 words or beyond the segment.
    #[error("TCP data offset out of range")]
    BadTcpDataOffset,
    /// RFC 1858 3.1: a first fragment too short to hold the whole transport header.
    #[error("first fragment too small to carry the transport header (RFC 1858)")]
    TinyFragment,
    /// RFC 1858 3.2: a TCP fragment at offset 8 bytes rewrites the header of the first one.
    #[error("TCP fragment at offset 8 overlaps the transport header (RFC 1858)")]
    OverlappingFragment,
    /// More than two stacked VLAN tags.
    #[error("more than two VLAN tags")]
    TooManyVlanTags,
    /// An ARP packet that is not Ethernet/IPv4 (hardware type 1, protocol 0x0800, sizes 6 and 4).
    #[error("ARP packet is not Ethernet/IPv4")]
    UnsupportedArp,
}

/// TCP control bits (RFC 9293 3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// FIN: no more data from sender.
    pub const FIN: u8 = 0x01;
    /// SYN: synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// RST: reset the connection.
    pub const RST: u8 = 0x04;
    /// PSH: push function.
    pub const PSH: u8 = 0x08;
    /// ACK: acknowledgment field is significant.
    pub const ACK: u8 = 0x10;

    /// FIN set.
    pub const fn fin(self) -> bool {
        self.0 & Self::FIN != 0
    }
    /// SYN set.
    pub const fn syn(self) -> bool {
        self.0 & Self::SYN != 0
    }
    /// RST set.
    pub const fn rst(self) -> bool {
        self.0 & Self::RST != 0
    }
    /// ACK set.
    pub const fn ack(self) -> bool {
        self.0 & Self::ACK != 0
    }
    /// A connection request: SYN without ACK.
    pub const fn is_syn_only(self) -> bool {
        self.syn() && !self.ack() && !self.rst()
    }
    /// The answer to a connection request: SYN with ACK.
    pub const fn is_syn_ack(self) -> bool {
        self.syn() && self.ack() && !self.rst()
    }
}

/// The fields of a TCP segment that the router reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpInfo {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number (meaningful when ACK is set).
    pub ack: u32,
    /// Control bits.
    pub flags: TcpFlags,
    /// Payload bytes carried (in this fragment, if fragmented).
    pub payload_len: u32,
}

impl TcpInfo {
    /// Sequence space the segment occupies: payload plus one for SYN and one for FIN.
    pub const fn seq_len(&self) -> u32 {
        self.payload_len + self.flags.syn() as u32 + self.flags.fin() as u32
    }
}

/// The flow of the datagram quoted inside an ICMP error (RFC 792), as its sender wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotedFlow {
    /// IP protocol of the quoted datagram.
    pub protocol: u8,
    /// Source of the quoted datagram (the host the error is sent to).
    pub src: Ipv4Addr,
    /// Destination of the quoted datagram.
    pub dst: Ipv4Addr,
    /// Source port (or ICMP echo id), 0 when the protocol has none.
    pub src_port: u16,
    /// Destination port, 0 when the protocol has none.
    pub dst_port: u16,
}

/// Transport-layer summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// TCP segment.
    Tcp(TcpInfo),
    /// UDP datagram.
    Udp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
    },
    /// ICMP echo request or reply.
    IcmpEcho {
        /// Echo identifier (the "port" of a ping session).
        id: u16,
        /// True for an echo reply (type 0), false for a request (type 8).
        reply: bool,
    },
    /// ICMP error (unreachable, time exceeded, parameter problem, source quench) quoting a datagram.
    IcmpError(QuotedFlow),
    /// Any other ICMP message, or an error whose quote could not be read.
    IcmpOther,
    /// Another IP protocol (GRE, ESP, SCTP...): flows of it are keyed by client address.
    Other,
    /// A non-first fragment: it carries no transport header.
    LaterFragment,
}

/// Where a datagram stands in IPv4 fragmentation (RFC 791).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment {
    /// Not fragmented.
    Whole,
    /// Offset 0 with more-fragments set: carries the transport header.
    First,
    /// Offset above 0.
    Later,
}

/// An IPv4 datagram's summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Info {
    /// Offset of the IPv4 header in the frame (after Ethernet and VLAN tags).
    pub l3_offset: u16,
    /// Outer VLAN id, if tagged.
    pub vlan: Option<u16>,
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// IP protocol number.
    pub protocol: u8,
    /// Identification field (joins fragments of one datagram).
    pub ident: u16,
    /// Fragment position.
    pub fragment: Fragment,
    /// Transport summary.
    pub l4: L4,
}

/// An Ethernet/IPv4 ARP packet's summary (RFC 826).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpInfo {
    /// Outer VLAN id, if tagged.
    pub vlan: Option<u16>,
    /// 1 request, 2 reply.
    pub operation: u16,
    /// Sender hardware address.
    pub sender_mac: [u8; 6],
    /// Sender protocol address (0.0.0.0 in an RFC 5227 probe).
    pub sender_ip: Ipv4Addr,
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

/// A parsed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packet {
    /// ARP.
    Arp(ArpInfo),
    /// IPv4.
    Ipv4(Ipv4Info),
    /// Another EtherType (IPv6, LLDP...): not for the shadowing core to decide.
    Other {
        /// The EtherType after any VLAN tags.
        ether_type: u16,
    },
}

/// Parses an Ethernet II frame (optionally with one or two VLAN tags).
///
/// Validates what forwarding relies on: header lengths, the IPv4 total length against the frame
/// (trailing Ethernet padding is allowed), the IPv4 header checksum, and the RFC 1858 fragment
/// rules. Transport checksums are left to the end hosts, as a router does.
pub fn parse_frame(frame: &[u8]) -> Result<Packet, ParseError> {
    let eth = Ethernet2HeaderSlice::from_slice(frame).map_err(|_| ParseError::Truncated(Layer::Ethernet))?;
    let mut ether_type = eth.ether_type().0;
    let mut offset = eth.slice().len();
    let mut vlan = None;
    let mut tags = 0;
    while ether_type == ETHERTYPE_VLAN || ether_type == ETHERTYPE_QINQ {
        tags += 1;
        if tags > 2 {
            return Err(ParseError::TooManyVlanTags);
        }
        let rest = frame.get(offset..).ok_or(ParseError::Truncated(Layer::Vlan))?;
        let tag = SingleVlanHeaderSlice::from_slice(rest).map_err(|_| ParseError::Truncated(Layer::Vlan))?;
        if vlan.is_none() {
            vlan = Some(tag.vlan_identifier().value());
        }
        ether_type = tag.ether_type().0;
        offset += tag.slice().len();
    }
    let rest = frame.get(offset..).ok_or(ParseError::Truncated(Layer::Ethernet))?;
    match ether_type {
        ETHERTYPE_IPV4 => parse_ipv4(rest, offset, vlan).map(Packet::Ipv4),
        ETHERTYPE_ARP => parse_arp(rest, vlan).map(Packet::Arp),
        other => Ok(Packet::Other { ether_type: other }),
    }
}

fn parse_arp(bytes: &[u8], vlan: Option<u16>) -> Result<ArpInfo, ParseError> {
    let arp = ArpPacketSlice::from_slice(bytes).map_err(|_| ParseError::Truncated(Layer::Arp))?;
    if arp.hw_addr_type().0 != 1 || arp.proto_addr_type().0 != ETHERTYPE_IPV4 {
        return Err(ParseError::UnsupportedArp);
    }
    let (Ok(sender_mac), Ok(sender_ip), Ok(target_ip)) = (
        <[u8; 6]>::try_from(arp.sender_hw_addr()),
        <[u8; 4]>::try_from(arp.sender_protocol_addr()),
        <[u8; 4]>::try_from(arp.target_protocol_addr()),
    ) else {
        return Err(ParseError::UnsupportedArp);
    };
    Ok(ArpInfo {
        vlan,
        operation: arp.operation().0,
        sender_mac,
        sender_ip: Ipv4Addr::from(sender_ip),
        target_ip: Ipv4Addr::from(target_ip),
    })
}

/// RFC 1071 one's-complement sum over the header; a valid header sums to 0xffff.
fn header_checksum_ok(header: &[u8]) -> bool {
    // Sum 32-bit words (the header is a multiple of 4 bytes) and fold: the one's-complement sum
    // is the same in any word size, and this is a third of the additions of 16-bit words.
    let mut sum: u64 = header.chunks_exact(4).map(|w| u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]))).sum();
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    let mut folded = (sum & 0xffff) + (sum >> 16);
    folded = (folded & 0xffff) + (folded >> 16);
    folded == 0xffff
}

fn parse_ipv4(bytes: &[u8], l3_offset: usize, vlan: Option<u16>) -> Result<Ipv4Info, ParseError> {
    use etherparse::err::ipv4::{HeaderError, HeaderSliceError};
    let ip = Ipv4HeaderSlice::from_slice(bytes).map_err(|e| match e {
        HeaderSliceError::Len(_) => ParseError::Truncated(Layer::Ipv4),
        HeaderSliceError::Content(HeaderError::UnexpectedVersion { version_number }) => {
            ParseError::NotIpv4(version_number)
        }
        HeaderSliceError::Content(_) => ParseError::BadHeaderLength,
    })?;
    let header_len = ip.slice().len();
    let total_len = usize::from(ip.total_len());
    if total_len < header_len || total_len > bytes.len() {
        return Err(ParseError::BadTotalLength);
    }
    if !header_checksum_ok(ip.slice()) {
        return Err(ParseError::BadChecksum);
    }
    let payload = &bytes[header_len..total_len];
    let protocol = ip.protocol().0;
    let frag_offset = ip.fragments_offset().value();
    let fragment = match (frag_offset, ip.more_fragments()) {
        (0, false) => Fragment::Whole,
        (0, true) => Fragment::First,
        _ => Fragment::Later,
    };
    let l4 = if fragment == Fragment::Later {
        if protocol == PROTO_TCP && frag_offset == 1 {
            return Err(ParseError::OverlappingFragment);
        }
        L4::LaterFragment
    } else {
        parse_l4(protocol, payload, fragment)?
    };
    Ok(Ipv4Info {
        l3_offset: l3_offset as u16,
        vlan,
        src: ip.source_addr(),
        dst: ip.destination_addr(),
        protocol,
        ident: ip.identification(),
        fragment,
        l4,
    })
}

fn parse_l4(protocol: u8, payload: &[u8], fragment: Fragment) -> Result<L4, ParseError> {
    // A first fragment that cannot hold the transport header is the RFC 1858 tiny-fragment attack.
    let truncated =
        |layer| if fragment == Fragment::First { ParseError::TinyFragment } else { ParseError::Truncated(layer) };
    match protocol {
        PROTO_TCP => {
            use etherparse::err::tcp::{HeaderError, HeaderSliceError};
            let tcp = TcpHeaderSlice::from_slice(payload).map_err(|e| match e {
                HeaderSliceError::Len(_) => truncated(Layer::Tcp),
                HeaderSliceError::Content(HeaderError::DataOffsetTooSmall { .. }) => ParseError::BadTcpDataOffset,
            })?;
            let flags = payload[13];
            Ok(L4::Tcp(TcpInfo {
                src_port: tcp.source_port(),
                dst_port: tcp.destination_port(),
                seq: tcp.sequence_number(),
                ack: tcp.acknowledgment_number(),
                flags: TcpFlags(flags & 0x3f),
                payload_len: (payload.len() - tcp.slice().len()) as u32,
            }))
        }
        PROTO_UDP => {
            let udp = UdpHeaderSlice::from_slice(payload).map_err(|_| truncated(Layer::Udp))?;
            Ok(L4::Udp { src_port: udp.source_port(), dst_port: udp.destination_port() })
        }
        PROTO_ICMP => parse_icmp(payload).ok_or_else(|| truncated(Layer::Icmp)),
        _ => Ok(L4::Other),
    }
}

/// ICMP (RFC 792): echo by identifier, errors by the flow of the datagram they quote.
fn parse_icmp(payload: &[u8]) -> Option<L4> {
    let header: &[u8; 8] = payload.get(..8)?.try_into().ok()?;
    let id = u16::from_be_bytes([header[4], header[5]]);
    Some(match header[0] {
        0 => L4::IcmpEcho { id, reply: true },
        8 => L4::IcmpEcho { id, reply: false },
        3 | 4 | 11 | 12 => parse_quote(&payload[8..]).map_or(L4::IcmpOther, L4::IcmpError),
        _ => L4::IcmpOther,
    })
}

/// The quoted datagram: its IPv4 header and at least the first 8 bytes of its payload.
fn parse_quote(quote: &[u8]) -> Option<QuotedFlow> {
    let first = *quote.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(first & 0x0f) * 4;
    if header_len < 20 {
        return None;
    }
    let header = quote.get(..header_len)?;
    let protocol = header[9];
    let src = Ipv4Addr::new(header[12], header[13], header[14], header[15]);
    let dst = Ipv4Addr::new(header[16], header[17], header[18], header[19]);
    let l4 = &quote[header_len..];
    let (src_port, dst_port) = match protocol {
        PROTO_TCP | PROTO_UDP => {
            let ports = l4.get(..4)?;
            (u16::from_be_bytes([ports[0], ports[1]]), u16::from_be_bytes([ports[2], ports[3]]))
        }
        // A quoted echo request: the identifier plays the role of the port.
        PROTO_ICMP => {
            let echo = l4.get(..8)?;
            if echo[0] != 8 && echo[0] != 0 {
                return None;
            }
            (u16::from_be_bytes([echo[4], echo[5]]), 0)
        }
        _ => (0, 0),
    };
    Some(QuotedFlow { protocol, src, dst, src_port, dst_port })
}

//! Packets on the wire: parsing frames into a small validated summary, and building the few
//! packets the router originates itself (a clean TCP reset at cut-over).
//!
//! Parsing uses etherparse's header slices one layer at a time, so only the headers the decision
//! needs are touched. After [`parse_frame`] returned `Ok`, nothing downstream indexes raw bytes.

mod build;
mod parse;

pub use build::{RstSpec, SegmentSpec, build_tcp_rst, build_tcp_segment};
pub use parse::{
    ArpInfo, Fragment, Ipv4Info, L4, Layer, Packet, ParseError, QuotedFlow, TcpFlags, TcpInfo, parse_frame,
};

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType (TPID) of an IEEE 802.1Q VLAN tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// EtherType (TPID) of an IEEE 802.1ad service tag (QinQ outer tag).
pub const ETHERTYPE_QINQ: u16 = 0x88a8;

/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

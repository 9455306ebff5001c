//! Packets the router originates.

use std::net::Ipv4Addr;

use etherparse::PacketBuilder;

/// A TCP reset the router sends on behalf of the shadowed address (cut-over of a flow that cannot
/// move, RFC 9293 3.10.7.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RstSpec {
    /// The shadowed address (source of the reset).
    pub shadow_ip: Ipv4Addr,
    /// The shadowed side's port.
    pub shadow_port: u16,
    /// The client receiving the reset.
    pub client_ip: Ipv4Addr,
    /// The client's port.
    pub client_port: u16,
    /// Sequence number: the client's RCV.NXT (the last acknowledgment it sent), so that an
    /// RFC 5961 receiver accepts the reset without a challenge ACK.
    pub seq: u32,
    /// Acknowledgment number: the client's SND.NXT as last seen.
    pub ack: u32,
}

/// Builds the IPv4 datagram (no link header: the data plane adds it) of a RST|ACK segment.
pub fn build_tcp_rst(spec: &RstSpec) -> Vec<u8> {
    let builder = PacketBuilder::ipv4(spec.shadow_ip.octets(), spec.client_ip.octets(), 64)
        .tcp(spec.shadow_port, spec.client_port, spec.seq, 0)
        .rst()
        .ack(spec.ack);
    let mut out = Vec::with_capacity(builder.size(0));
    // Writing into a Vec cannot fail for lack of space, and the header fields are all in range.
    if builder.write(&mut out, &[]).is_err() {
        out.clear();
    }
    out
}

/// A TCP segment the router sends in one endpoint's name: the FIN that closes one of A's flows
/// at the cut-over (towards the client in A's name, towards A in the client's), or the ACK of
/// the other end's FIN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentSpec {
    /// Source address and port (whose name the segment is sent in).
    pub from: (Ipv4Addr, u16),
    /// Destination address and port.
    pub to: (Ipv4Addr, u16),
    /// Sequence number: the receiver's RCV.NXT, so it is accepted in order.
    pub seq: u32,
    /// Acknowledgment number: the receiver's SND.NXT (everything it sent is acknowledged).
    pub ack: u32,
    /// With FIN (else a pure ACK).
    pub fin: bool,
}

/// Window the router advertises in the segments it sends in an endpoint's name: the flow is
/// closing, so the size only needs to let a last segment of the other end in.
const CLOSING_WINDOW: u16 = 16_384;

/// Builds the IPv4 datagram (no link header) of a FIN|ACK or ACK segment.
pub fn build_tcp_segment(spec: &SegmentSpec) -> Vec<u8> {
    let builder = PacketBuilder::ipv4(spec.from.0.octets(), spec.to.0.octets(), 64)
        .tcp(spec.from.1, spec.to.1, spec.seq, CLOSING_WINDOW)
        .ack(spec.ack);
    let builder = if spec.fin { builder.fin() } else { builder };
    let mut out = Vec::with_capacity(builder.size(0));
    if builder.write(&mut out, &[]).is_err() {
        out.clear();
    }
    out
}

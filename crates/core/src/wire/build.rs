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

//! Frame builders and a stepping harness, shared by the tests, the benchmarks and the fuzz
//! targets (and later the simulator's own checks). Not used by the router itself.

use std::net::Ipv4Addr;

use etherparse::PacketBuilder;

use core::time::Duration;

use crate::events::{Event, NullSink};
use crate::flow::{FlowKey, Owner, Side};
use crate::router::{Deliver, EgressVerdict, InboundVerdict, RouterConfig, ShadowRouter, VmRef};
use crate::shadow::{CongestionControlParameters, MigrationOptions, Ramp, RampStep, ShadowingEntry, VmId};
use crate::time::Instant;
use crate::wire::{L4, Packet, TcpFlags, parse_frame};

/// MAC of the provider-side router port in built frames.
pub const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
/// MAC of a client / VM in built frames.
pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    PacketBuilder::ethernet2(HOST_MAC, ROUTER_MAC).ipv4(src.octets(), dst.octets(), 64)
}

/// A TCP segment in an Ethernet frame. `flags` uses [`TcpFlags`] bits.
pub fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = ipv4(src.0, dst.0).tcp(src.1, dst.1, seq, 64_000);
    if flags & TcpFlags::SYN != 0 {
        b = b.syn();
    }
    if flags & TcpFlags::ACK != 0 {
        b = b.ack(ack);
    }
    if flags & TcpFlags::FIN != 0 {
        b = b.fin();
    }
    if flags & TcpFlags::RST != 0 {
        b = b.rst();
    }
    if flags & TcpFlags::PSH != 0 {
        b = b.psh();
    }
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("building a test frame");
    out
}

/// Writes the same frame as [`tcp`] into `out` (cleared first) without etherparse's builder:
/// the benchmark scenarios build millions of frames, also under valgrind, where the builder is
/// the slow part. A test checks both give identical bytes.
pub fn tcp_into(
    out: &mut Vec<u8>,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    flags: u8,
    seq: u32,
    ack: u32,
    payload: &[u8],
) {
    let tcp_len = 20 + payload.len();
    let total = 20 + tcp_len;
    out.clear();
    out.extend_from_slice(&ROUTER_MAC);
    out.extend_from_slice(&HOST_MAC);
    out.extend_from_slice(&0x0800u16.to_be_bytes());
    out.extend_from_slice(&[0x45, 0]);
    out.extend_from_slice(&(total as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]); // id 0, DF, TTL 64, TCP, checksum below
    out.extend_from_slice(&src.0.octets());
    out.extend_from_slice(&dst.0.octets());
    out.extend_from_slice(&src.1.to_be_bytes());
    out.extend_from_slice(&dst.1.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&(if flags & TcpFlags::ACK != 0 { ack } else { 0 }).to_be_bytes());
    out.extend_from_slice(&[0x50, flags]);
    out.extend_from_slice(&64_000u16.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    out.extend_from_slice(payload);
    fix_ipv4_checksum(out);
    // RFC 9293 3.1: one's-complement sum over the pseudo-header and the segment.
    let mut sum: u32 = 6 + tcp_len as u32;
    for w in out[26..34].chunks_exact(2).chain(out[34..].chunks(2)) {
        sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    out[50..52].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// A UDP datagram in an Ethernet frame.
pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    let b = ipv4(src.0, dst.0).udp(src.1, dst.1);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("building a test frame");
    out
}

/// An ICMP echo request (or reply) in an Ethernet frame.
pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16, reply: bool) -> Vec<u8> {
    let b = if reply { ipv4(src, dst).icmpv4_echo_reply(id, seq) } else { ipv4(src, dst).icmpv4_echo_request(id, seq) };
    let mut out = Vec::with_capacity(b.size(8));
    b.write(&mut out, &[0u8; 8]).expect("building a test frame");
    out
}

/// Rewrites a built frame's IPv4 header into a fragment: `offset8` in 8-byte units, more
/// fragments flag, identification; recomputes the header checksum.
pub fn make_fragment(mut frame: Vec<u8>, ident: u16, offset8: u16, more: bool, keep_payload: usize) -> Vec<u8> {
    let ip = 14;
    let ihl = usize::from(frame[ip] & 0x0f) * 4;
    frame.truncate(ip + ihl + keep_payload);
    let total = (ihl + keep_payload) as u16;
    frame[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
    frame[ip + 4..ip + 6].copy_from_slice(&ident.to_be_bytes());
    let flags_off = (u16::from(more) << 13) | (offset8 & 0x1fff);
    frame[ip + 6..ip + 8].copy_from_slice(&flags_off.to_be_bytes());
    fix_ipv4_checksum(&mut frame);
    frame
}

/// Recomputes the IPv4 header checksum of an Ethernet frame (no VLAN tag).
pub fn fix_ipv4_checksum(frame: &mut [u8]) {
    let ip = 14;
    let ihl = usize::from(frame[ip] & 0x0f) * 4;
    frame[ip + 10] = 0;
    frame[ip + 11] = 0;
    let mut sum: u32 = frame[ip..ip + ihl].chunks_exact(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let c = !(sum as u16);
    frame[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
}

/// Inserts an 802.1Q tag with `vid` after the MAC addresses.
pub fn vlan_tag(frame: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.len() + 4);
    out.extend_from_slice(&frame[..12]);
    out.extend_from_slice(&tpid.to_be_bytes());
    out.extend_from_slice(&vid.to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    out
}

/// The shadowed address used by the harness.
pub const X: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);

/// A router with one shadowed address [`X`] between VM A and VM B, a clock, and a check that no
/// reply from a non-owner leaves the router.
pub struct Harness {
    /// The router under test.
    pub router: ShadowRouter<Vec<Event>>,
    /// The harness clock.
    pub now: Instant,
    /// VM A's handle.
    pub a: VmRef,
    /// VM B's handle.
    pub b: VmRef,
    /// Every forwarded TCP RST or data segment from the VM that did not own its flow.
    pub leaks: Vec<String>,
}

impl Harness {
    /// A harness whose entry for [`X`] uses `options` and `params`, B's lease not yet bound.
    pub fn new(config: RouterConfig, options: MigrationOptions, params: CongestionControlParameters) -> Self {
        let now = Instant::from_secs(1);
        let mut router = ShadowRouter::new(config, Vec::new(), now);
        let entry = ShadowingEntry::new(X, VmId::from("vm-a"), VmId::from("vm-b"), now, params, options);
        router.add_entry(entry, now).expect("valid test entry");
        let a = router.vm_ref(&VmId::from("vm-a"));
        let b = router.vm_ref(&VmId::from("vm-b"));
        Self { router, now, a, b, leaks: Vec::new() }
    }

    /// Moves the clock and polls the router.
    pub fn advance(&mut self, by: core::time::Duration) {
        self.now = self.now + by;
        self.router.poll(self.now);
    }

    /// A frame from the provider side.
    pub fn inbound(&mut self, frame: &[u8]) -> InboundVerdict {
        self.router.inbound(frame, self.now)
    }

    /// A frame from VM A or B; records a leak if a non-owner's RST or data is forwarded.
    pub fn from_vm(&mut self, side: Side, frame: &[u8]) -> EgressVerdict {
        let vm = match side {
            Side::Source => self.a,
            Side::Destination => self.b,
        };
        let before = egress_flow_key(frame).and_then(|k| self.router.flow(&k).map(|f| f.owner));
        let verdict = self.router.egress(vm, frame, self.now);
        if verdict == EgressVerdict::Forward
            && let Some(key) = egress_flow_key(frame)
            && let Ok(Packet::Ipv4(ip)) = parse_frame(frame)
            && let L4::Tcp(t) = ip.l4
            && (t.flags.rst() || t.payload_len > 0)
            // A flow the router closed is kept past the end of its migration only to absorb its
            // client's close; the address's holder then answers for the tuple.
            && (self.router.entry(key.shadow_ip).is_some()
                || self.router.flow(&key).is_none_or(|f| f.phase != crate::flow::Phase::Retired))
        {
            let after = self.router.flow(&key).map(|f| f.owner).or(before);
            if let Some(owner) = after.and_then(Owner::side)
                && owner != side
            {
                self.leaks.push(format!("{side:?} sent {t:?} on {key} owned by {owner:?}"));
            }
        }
        verdict
    }

    /// Events so far, drained.
    pub fn events(&mut self) -> Vec<Event> {
        std::mem::take(self.router.sink_mut())
    }
}

/// Every test that uses the harness checks, at its end, that no RST or data segment from a
/// non-owner left the router.
impl Drop for Harness {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert!(self.leaks.is_empty(), "non-owner segments left the router: {:?}", self.leaks);
        }
    }
}

/// The flow key of a TCP/UDP frame sent by a VM from a shadowed address.
pub fn egress_flow_key(frame: &[u8]) -> Option<FlowKey> {
    let Ok(Packet::Ipv4(ip)) = parse_frame(frame) else { return None };
    let (client_port, shadow_port) = match ip.l4 {
        L4::Tcp(t) => (t.dst_port, t.src_port),
        L4::Udp { src_port, dst_port } => (dst_port, src_port),
        _ => return None,
    };
    Some(FlowKey { client_ip: ip.dst, client_port, shadow_ip: ip.src, shadow_port, protocol: ip.protocol })
}

/// Frames of `flows` established flows spread over `addresses` shadowed addresses, and a
/// router that tracks them all.
pub struct Scenario {
    /// The router, tracking every flow.
    pub router: ShadowRouter<NullSink>,
    /// Data segments of random flows, in random order, one per [`SCENARIO_STRIDE`] bytes, the way
    /// a packet ring (AF_PACKET, XDP) lays frames out.
    pub ring: Vec<u8>,
    /// Length of each frame in the ring.
    pub frame_len: usize,
}

/// Bytes between the starts of two frames in [`Scenario::ring`].
pub const SCENARIO_STRIDE: usize = 128;

/// The frames of a scenario ring, in order.
pub fn ring_frames(ring: &[u8], frame_len: usize) -> Vec<&[u8]> {
    ring.chunks_exact(SCENARIO_STRIDE).map(|f| &f[..frame_len]).collect()
}

/// splitmix64.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Builds a [`Scenario`]: `flows` flows established through the router over `addresses`
/// shadowed addresses at split 50 %, and `packets` frames of those flows in random order.
pub fn scenario(flows: u32, addresses: u32, packets: usize) -> Scenario {
    let now = Instant::from_secs(1);
    let config = RouterConfig { max_flows: flows as usize, ..Default::default() };
    let mut router = ShadowRouter::new(config, NullSink, now);
    let ramp = Ramp::Steps { steps: vec![RampStep { pct: 50.0, hold: Duration::from_secs(1 << 20) }] };
    let shadow = |i: u32| Ipv4Addr::from_bits(0x0a00_0000 | i);
    for i in 0..addresses {
        let options = MigrationOptions { ramp: ramp.clone(), salt: u64::from(i), ..Default::default() };
        let entry = ShadowingEntry::new(
            shadow(i),
            format!("a{i}").as_str().into(),
            format!("b{i}").as_str().into(),
            now,
            CongestionControlParameters::default(),
            options,
        );
        router.add_entry(entry, now).expect("entry");
        router.lease_bound(shadow(i), now).expect("lease");
    }
    let endpoints: Vec<_> = (0..flows)
        .map(|n| {
            let r = mix(u64::from(n));
            let client = (Ipv4Addr::from_bits(0x6400_0000 | (r as u32 & 0x00ff_ffff)), 1024 + (n % 60_000) as u16);
            (client, (shadow(n % addresses), 443u16))
        })
        .collect();
    let mut frame = Vec::with_capacity(128);
    for &(c, s) in &endpoints {
        tcp_into(&mut frame, c, s, TcpFlags::SYN, 1, 0, &[]);
        let InboundVerdict::Deliver(d) = router.inbound(&frame, now) else { panic!("flow refused") };
        let vm_id = match d {
            Deliver::Source => format!("a{}", s.0.to_bits() & 0xffffff),
            _ => format!("b{}", s.0.to_bits() & 0xffffff),
        };
        let vm = router.vm_ref(&vm_id.as_str().into());
        tcp_into(&mut frame, s, c, TcpFlags::SYN | TcpFlags::ACK, 9, 2, &[]);
        router.egress(vm, &frame, now);
        tcp_into(&mut frame, c, s, TcpFlags::ACK, 2, 10, &[]);
        router.inbound(&frame, now);
    }
    assert_eq!(router.flow_count(), flows as usize);
    let mut ring = vec![0u8; packets * SCENARIO_STRIDE];
    let mut frame_len = 0;
    for (i, slot) in ring.chunks_exact_mut(SCENARIO_STRIDE).enumerate() {
        let (c, s) = endpoints[(mix(i as u64 ^ 0xabcdef) % u64::from(flows)) as usize];
        tcp_into(&mut frame, c, s, TcpFlags::ACK | TcpFlags::PSH, 2 + i as u32, 10, b"GET / HTTP/1.1\r\n");
        frame_len = frame.len();
        slot[..frame_len].copy_from_slice(&frame);
    }
    Scenario { router, ring, frame_len }
}

/// The hash key the flow table used before it was keyed at random per process: a constant in the
/// source, so anyone could compute where a flow key lands.
pub const OLD_FLOW_HASH_KEY: u64 = 0x1b5d_ad0e;

/// `n` TCP flow keys from clients to `shadow` whose probes, in a flow table of `max_flows`
/// hashed with `key`, all start within `n / 8` slots of slot 0: what a remote host that knows the
/// key sends so that every lookup of its flows walks one run of `n` slots. Brute force over
/// client addresses (100.64.0.0/10) and ports, about `8 * 1.6 * max_flows` hashes.
pub fn colliding_flow_keys(max_flows: usize, key: u64, n: usize, shadow: (Ipv4Addr, u16)) -> Vec<FlowKey> {
    let table = crate::flow::FlowTable::new(max_flows, Some(key));
    let window = (n / 8).max(1);
    (0u32..)
        .map(|i| FlowKey {
            client_ip: Ipv4Addr::from_bits(0x6440_0000 | (i >> 16)),
            client_port: i as u16,
            shadow_ip: shadow.0,
            shadow_port: shadow.1,
            protocol: crate::wire::PROTO_TCP,
        })
        .filter(|k| table.home_slot(k) < window)
        .take(n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_tcp_writer_matches_the_builder() {
        let a = (Ipv4Addr::new(198, 51, 100, 7), 40_000);
        let b = (Ipv4Addr::new(10, 0, 0, 10), 443);
        let mut out = Vec::new();
        for (flags, payload) in
            [(TcpFlags::SYN, &b""[..]), (TcpFlags::ACK | TcpFlags::PSH, b"hello"), (TcpFlags::RST, b"")]
        {
            tcp_into(&mut out, a, b, flags, 77, 99, payload);
            assert_eq!(out, tcp(a, b, flags, 77, 99, payload), "flags {flags:#x}");
        }
    }
}

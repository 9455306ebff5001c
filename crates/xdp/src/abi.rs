//! The maps' keys and values as bytes, laid out exactly as `bpf/abi.h` declares them (checked
//! by the tests below against the sizes the compiled program's BTF gives). Plain byte arrays
//! rather than `#[repr(C)]` structs: no padding to get wrong and no `unsafe` to mark them as
//! plain data.

use std::net::Ipv4Addr;

/// VM ports the program knows: 0 to `MAX_VM_PORTS - 1`, the core's `VmRef`s.
pub const MAX_VM_PORTS: u32 = 63;
/// The device map's slot of the provider port.
pub const PROVIDER_SLOT: u32 = 63;

/// `config.flags`: the program forwards (clear: every frame goes up).
pub const CFG_ENABLED: u32 = 1;
/// `config.flags`: frames of addresses not shadowed go up.
pub const CFG_ROUTES_SLOW: u32 = 2;

/// `shadow.flags`: every frame of the address goes up.
pub const SHADOW_SLOW: u32 = 1;
/// `shadow.flags`: a new flow's side hashes the client address alone.
pub const SHADOW_CLIENT_AFFINITY: u32 = 2;
/// `shadow.flags`: the frames of A's flows go up (the closing window).
pub const SHADOW_SLOW_SOURCE: u32 = 4;

/// A flow owned by VM A.
pub const OWNER_SOURCE: u8 = 0;
/// A flow owned by VM B.
pub const OWNER_DESTINATION: u8 = 1;
/// A flow the core tracks without knowing its owner yet: its frames go up.
pub const OWNER_UNKNOWN: u8 = 2;
/// A flow the core wrote.
pub const ORIGIN_CORE: u8 = 0;
/// A flow the program decided.
pub const ORIGIN_FAST_PATH: u8 = 1;

/// `struct ips_config`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The program forwards while `bpf_ktime_get_ns()` is below.
    pub active_until_ns: u64,
    /// A UDP flow's datagrams are recorded at most this often each way, in batches that carry
    /// their count (the core's state of a UDP flow changes only in counters and last-seen
    /// times); 0: every datagram. [`UDP_BATCH_NS`] unless changed.
    pub udp_batch_ns: u64,
    /// `CFG_*`.
    pub flags: u32,
    /// The provider interface.
    pub provider_ifindex: u32,
    /// The router's MAC on the provider side.
    pub provider_mac: [u8; 6],
    /// The router's MAC on the VM side (the VMs' gateway).
    pub vm_side_mac: [u8; 6],
}

/// The default of [`Config::udp_batch_ns`]: 50 ms (a UDP flow's last-seen time in the core lags
/// by at most this, against idle timeouts of tens of seconds).
pub const UDP_BATCH_NS: u64 = 50_000_000;

/// Size of `struct ips_config`.
pub const CONFIG_SIZE: usize = 40;

impl Config {
    /// The bytes of the map value.
    pub fn encode(&self) -> [u8; CONFIG_SIZE] {
        let mut b = [0; CONFIG_SIZE];
        b[0..8].copy_from_slice(&self.active_until_ns.to_ne_bytes());
        b[8..16].copy_from_slice(&self.udp_batch_ns.to_ne_bytes());
        b[16..20].copy_from_slice(&self.flags.to_ne_bytes());
        b[20..24].copy_from_slice(&self.provider_ifindex.to_ne_bytes());
        b[24..30].copy_from_slice(&self.provider_mac);
        b[30..36].copy_from_slice(&self.vm_side_mac);
        b
    }
}

/// `struct ips_port`: a VM port's interface and the VM's MAC.
pub fn port(ifindex: u32, mac: [u8; 6]) -> [u8; 12] {
    let mut b = [0; 12];
    b[0..4].copy_from_slice(&ifindex.to_ne_bytes());
    b[4..10].copy_from_slice(&mac);
    b
}

/// `struct ips_shadow`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shadow {
    /// The entry's salt.
    pub salt: u64,
    /// A new flow whose split hash is below goes to B.
    pub threshold: u64,
    /// A's VM port.
    pub source: u32,
    /// B's VM port.
    pub destination: u32,
    /// `SHADOW_*`.
    pub flags: u32,
}

impl Shadow {
    /// The bytes of the map value.
    pub fn encode(&self) -> [u8; 32] {
        let mut b = [0; 32];
        b[0..8].copy_from_slice(&self.salt.to_ne_bytes());
        b[8..16].copy_from_slice(&self.threshold.to_ne_bytes());
        b[16..20].copy_from_slice(&self.source.to_ne_bytes());
        b[20..24].copy_from_slice(&self.destination.to_ne_bytes());
        b[24..28].copy_from_slice(&self.flags.to_ne_bytes());
        b
    }

    /// From the bytes of a map value.
    pub fn decode(b: &[u8; 32]) -> Self {
        Self {
            salt: u64_at(b, 0),
            threshold: u64_at(b, 8),
            source: u32_at(b, 16),
            destination: u32_at(b, 20),
            flags: u32_at(b, 24),
        }
    }
}

/// A map key of an IPv4 address: as on the wire.
pub fn address(ip: Ipv4Addr) -> [u8; 4] {
    ip.octets()
}

/// `struct ips_route`: the VM port holding an address alone.
pub fn route(port: u32) -> [u8; 8] {
    let mut b = [0; 8];
    b[0..4].copy_from_slice(&port.to_ne_bytes());
    b
}

/// `struct ips_flow_key`, oriented client -> shadowed address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// The remote end.
    pub client_ip: Ipv4Addr,
    /// The shadowed address.
    pub shadow_ip: Ipv4Addr,
    /// The remote end's port.
    pub client_port: u16,
    /// The port on the shadowed address.
    pub shadow_port: u16,
    /// IP protocol.
    pub protocol: u8,
}

impl FlowKey {
    /// The bytes of the map key.
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0; 16];
        b[0..4].copy_from_slice(&self.client_ip.octets());
        b[4..8].copy_from_slice(&self.shadow_ip.octets());
        b[8..10].copy_from_slice(&self.client_port.to_ne_bytes());
        b[10..12].copy_from_slice(&self.shadow_port.to_ne_bytes());
        b[12] = self.protocol;
        b
    }

    /// From the bytes of a map key.
    pub fn decode(b: &[u8; 16]) -> Self {
        Self {
            client_ip: Ipv4Addr::new(b[0], b[1], b[2], b[3]),
            shadow_ip: Ipv4Addr::new(b[4], b[5], b[6], b[7]),
            client_port: u16::from_ne_bytes([b[8], b[9]]),
            shadow_port: u16::from_ne_bytes([b[10], b[11]]),
            protocol: b[12],
        }
    }
}

/// `struct ips_flow`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// `OWNER_*`.
    pub owner: u8,
    /// `ORIGIN_*`.
    pub origin: u8,
    /// TCP: when the program last forwarded one of its frames (`bpf_ktime_get_ns`, to the
    /// millisecond); UDP: when it last recorded one towards the VM; or when the core wrote it.
    pub last_seen_ns: u64,
}

/// Size of `struct ips_flow`.
pub const FLOW_SIZE: usize = 32;

impl Flow {
    /// The bytes of the map value (the UDP batch counters at zero).
    pub fn encode(&self) -> [u8; FLOW_SIZE] {
        let mut b = [0; FLOW_SIZE];
        b[0] = self.owner;
        b[1] = self.origin;
        b[16..24].copy_from_slice(&self.last_seen_ns.to_ne_bytes());
        b
    }

    /// From the bytes of a map value.
    pub fn decode(b: &[u8; FLOW_SIZE]) -> Self {
        Self { owner: b[0], origin: b[1], last_seen_ns: u64_at(b, 16) }
    }
}

/// `struct ips_neighbour`: a client's MAC.
pub fn neighbour(mac: [u8; 6]) -> [u8; 8] {
    let mut b = [0; 8];
    b[0..6].copy_from_slice(&mac);
    b
}

/// Size of `struct ips_record`.
pub const RECORD_SIZE: usize = 48;

/// Which way a recorded frame went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the provider side, delivered to the flow's owner: `OWNER_SOURCE` or `OWNER_DESTINATION`.
    Inbound {
        /// The side delivered to.
        owner: u8,
    },
    /// From a VM (its port), sent to the provider side.
    Egress {
        /// The VM port.
        port: u8,
    },
    /// Not a frame: the program learned where a client is (`src` is at `src_mac`) from a frame
    /// it routed to an address a VM holds alone, which the core does not replay.
    Neighbour,
}

/// `struct ips_record`: one frame the program forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// `bpf_ktime_get_ns()` when forwarded.
    pub at_ns: u64,
    /// IPv4 source.
    pub src: Ipv4Addr,
    /// IPv4 destination.
    pub dst: Ipv4Addr,
    /// Transport source port.
    pub src_port: u16,
    /// Transport destination port.
    pub dst_port: u16,
    /// TCP sequence number (0 for UDP).
    pub seq: u32,
    /// TCP acknowledgment number (0 for UDP).
    pub ack: u32,
    /// Transport payload bytes.
    pub payload_len: u16,
    /// IPv4 identification.
    pub ident: u16,
    /// IP protocol (TCP or UDP).
    pub protocol: u8,
    /// TCP control bits (0 for UDP).
    pub tcp_flags: u8,
    /// Which way, and where.
    pub direction: Direction,
    /// The program created the flow.
    pub new_flow: bool,
    /// The frame's source MAC as received.
    pub src_mac: [u8; 6],
    /// Frames this record stands for: 1, or a batch of one UDP flow's datagrams one way.
    pub packets: u32,
}

impl Record {
    /// From a ring buffer item; `None` if it is not a record's size (never, from this program).
    pub fn decode(b: &[u8]) -> Option<Self> {
        let b: &[u8; RECORD_SIZE] = b.get(..RECORD_SIZE)?.try_into().ok()?;
        let direction = match b[34] {
            0 => Direction::Inbound { owner: b[35] },
            1 => Direction::Egress { port: b[35] },
            _ => Direction::Neighbour,
        };
        Some(Self {
            at_ns: u64_at(b, 0),
            src: Ipv4Addr::new(b[8], b[9], b[10], b[11]),
            dst: Ipv4Addr::new(b[12], b[13], b[14], b[15]),
            src_port: u16::from_ne_bytes([b[16], b[17]]),
            dst_port: u16::from_ne_bytes([b[18], b[19]]),
            seq: u32_at(b, 20),
            ack: u32_at(b, 24),
            payload_len: u16::from_ne_bytes([b[28], b[29]]),
            ident: u16::from_ne_bytes([b[30], b[31]]),
            protocol: b[32],
            tcp_flags: b[33],
            direction,
            new_flow: b[36] != 0,
            src_mac: [b[38], b[39], b[40], b[41], b[42], b[43]],
            packets: u32_at(b, 44).max(1),
        })
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(w)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(w)
}

/// The program's counters (the `stats` array, summed over CPUs), in `enum ips_stat`'s order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames to a shadowed address delivered to the flow's owner.
    pub inbound: u64,
    /// Frames from a shadowed address's owner sent to the provider side.
    pub egress: u64,
    /// Frames to an address a VM holds alone, delivered.
    pub routed_in: u64,
    /// Frames from one, sent.
    pub routed_out: u64,
    /// Flows the program decided.
    pub new_flows: u64,
    /// Records the ring had no room for.
    pub records_lost: u64,
    /// New flows the flow map refused.
    pub flow_map_full: u64,
    /// Up: the program switched off, or the router paused.
    pub pass_disabled: u64,
    /// Up: not IPv4 (ARP, VLAN, IPv6).
    pub pass_not_ipv4: u64,
    /// Up: malformed, or with IP options.
    pub pass_malformed: u64,
    /// Up: fragments.
    pub pass_fragment: u64,
    /// Up: neither TCP nor UDP.
    pub pass_protocol: u64,
    /// Up: another destination MAC, or an interface not the router's.
    pub pass_not_for_us: u64,
    /// Up: the address's frames all go up for now.
    pub pass_slow: u64,
    /// Up: no route, or a VM sending from an address it does not hold.
    pub pass_no_route: u64,
    /// Up: an unknown flow, not its owner, or a SYN on a known one.
    pub pass_flow: u64,
    /// Up: the next hop's MAC is not known yet.
    pub pass_next_hop: u64,
    /// Up: DHCP to the router's host.
    pub pass_local: u64,
    /// Up: a TCP/UDP checksum left to offload by the sender (veth, tap): completed up there.
    pub pass_checksum: u64,
}

/// Counters in `Stats`.
pub const STAT_COUNT: u32 = 19;

impl Stats {
    /// From the counters in `enum ips_stat`'s order.
    pub fn from_counters(c: &[u64; STAT_COUNT as usize]) -> Self {
        Self {
            inbound: c[0],
            egress: c[1],
            routed_in: c[2],
            routed_out: c[3],
            new_flows: c[4],
            records_lost: c[5],
            flow_map_full: c[6],
            pass_disabled: c[7],
            pass_not_ipv4: c[8],
            pass_malformed: c[9],
            pass_fragment: c[10],
            pass_protocol: c[11],
            pass_not_for_us: c[12],
            pass_slow: c[13],
            pass_no_route: c[14],
            pass_flow: c[15],
            pass_next_hop: c[16],
            pass_local: c[17],
            pass_checksum: c[18],
        }
    }

    /// Frames the program handed up to user space.
    pub fn passed(&self) -> u64 {
        self.pass_disabled
            + self.pass_not_ipv4
            + self.pass_malformed
            + self.pass_fragment
            + self.pass_protocol
            + self.pass_not_for_us
            + self.pass_slow
            + self.pass_no_route
            + self.pass_flow
            + self.pass_next_hop
            + self.pass_local
            + self.pass_checksum
            + self.flow_map_full
    }

    /// Frames the program forwarded itself.
    pub fn forwarded(&self) -> u64 {
        self.inbound + self.egress + self.routed_in + self.routed_out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_keys_and_shadows_read_back() {
        let key = FlowKey {
            client_ip: Ipv4Addr::new(10, 0, 1, 2),
            shadow_ip: Ipv4Addr::new(10, 0, 0, 10),
            client_port: 40000,
            shadow_port: 80,
            protocol: 6,
        };
        assert_eq!(FlowKey::decode(&key.encode()), key);
        // Addresses are in network order: the first byte of the key is the first octet.
        assert_eq!(key.encode()[0], 10);
        let shadow = Shadow { salt: 7, threshold: 1 << 31, source: 0, destination: 1, flags: SHADOW_SLOW };
        assert_eq!(Shadow::decode(&shadow.encode()), shadow);
        let flow = Flow { owner: OWNER_DESTINATION, origin: ORIGIN_CORE, last_seen_ns: 99 };
        assert_eq!(Flow::decode(&flow.encode()), flow);
    }

    #[test]
    fn a_short_record_is_refused() {
        assert_eq!(Record::decode(&[0; 47]), None);
        let mut b = [0; RECORD_SIZE];
        b[34] = 1;
        b[35] = 3;
        assert_eq!(Record::decode(&b).map(|r| r.direction), Some(Direction::Egress { port: 3 }));
        b[34] = 2;
        assert_eq!(Record::decode(&b).map(|r| r.direction), Some(Direction::Neighbour));
    }
}

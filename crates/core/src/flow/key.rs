//! Flow keys.

use std::net::Ipv4Addr;

use serde::Serialize;

/// Protocol number of the key a client-affinity split decision hashes (`affinity = client`). IP
/// protocol 0 is IPv6 Hop-by-Hop and never appears as an IPv4 transport, so such a key is never a
/// real flow's.
pub const PROTO_CLIENT_PIN: u8 = 0;

/// Identifies a flow, always oriented client -> shadowed address, whichever side opened it.
///
/// TCP/UDP: the 5-tuple. ICMP echo: the identifier as `client_port`, `shadow_port` 0. Other IP
/// protocols: ports 0 (one flow per client and protocol). Flows are tracked by this key with
/// either affinity; client affinity only changes how a new flow's side is decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct FlowKey {
    /// The remote end (client, or the server a VM connects to).
    pub client_ip: Ipv4Addr,
    /// The remote end's port.
    pub client_port: u16,
    /// The shadowed address.
    pub shadow_ip: Ipv4Addr,
    /// The port on the shadowed address.
    pub shadow_port: u16,
    /// IP protocol number.
    pub protocol: u8,
}

impl FlowKey {
    /// The key a client-affinity decision hashes: the same for every flow of `client_ip`.
    pub const fn client_pin(client_ip: Ipv4Addr, shadow_ip: Ipv4Addr) -> Self {
        Self { client_ip, client_port: 0, shadow_ip, shadow_port: 0, protocol: PROTO_CLIENT_PIN }
    }

    /// Packs the key into two words: addresses, then ports and protocol with a low "occupied"
    /// bit so that an all-zero second word marks an empty table slot.
    #[inline]
    pub(crate) const fn words(&self) -> (u64, u64) {
        let w0 = ((self.client_ip.to_bits() as u64) << 32) | self.shadow_ip.to_bits() as u64;
        let w1 =
            ((self.client_port as u64) << 32) | ((self.shadow_port as u64) << 16) | ((self.protocol as u64) << 8) | 1;
        (w0, w1)
    }

    /// Inverse of [`FlowKey::words`].
    #[inline]
    pub(crate) const fn from_words(w0: u64, w1: u64) -> Self {
        Self {
            client_ip: Ipv4Addr::from_bits((w0 >> 32) as u32),
            shadow_ip: Ipv4Addr::from_bits(w0 as u32),
            client_port: (w1 >> 32) as u16,
            shadow_port: (w1 >> 16) as u16,
            protocol: (w1 >> 8) as u8,
        }
    }
}

impl core::fmt::Display for FlowKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{}:{} -> {}:{} proto {}",
            self.client_ip, self.client_port, self.shadow_ip, self.shadow_port, self.protocol
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_never_look_empty() {
        let key = FlowKey {
            client_ip: Ipv4Addr::new(198, 51, 100, 7),
            client_port: 40_000,
            shadow_ip: Ipv4Addr::new(10, 0, 0, 10),
            shadow_port: 443,
            protocol: 6,
        };
        let (w0, w1) = key.words();
        assert_ne!(w1, 0);
        assert_eq!(FlowKey::from_words(w0, w1), key);
        let pin = FlowKey::client_pin(Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED);
        assert_ne!(pin.words().1, 0);
    }
}

//! Idle timeouts per protocol and phase.

use core::time::Duration;

use serde::{Deserialize, Serialize};

use super::Phase;
use crate::time::duration_ms;
use crate::wire::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};

/// How long a flow may stay idle before it is forgotten. The defaults follow Linux conntrack's
/// shape, with a shorter established TCP timeout: an established flow that outlives its state is
/// relearned by the unknown-flow path (delivered to both VMs, owner learned from the reply), so
/// forgetting it costs one round trip, not the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowTimeouts {
    /// TCP before the handshake completed.
    #[serde(with = "duration_ms")]
    pub tcp_embryonic: Duration,
    /// TCP established.
    #[serde(with = "duration_ms")]
    pub tcp_established: Duration,
    /// TCP after a FIN.
    #[serde(with = "duration_ms")]
    pub tcp_closing: Duration,
    /// TCP after a RST or both FINs.
    #[serde(with = "duration_ms")]
    pub tcp_closed: Duration,
    /// Unknown TCP flow while its owner is learned.
    #[serde(with = "duration_ms")]
    pub pending: Duration,
    /// UDP with no reply yet.
    #[serde(with = "duration_ms")]
    pub udp_unreplied: Duration,
    /// UDP that saw replies.
    #[serde(with = "duration_ms")]
    pub udp: Duration,
    /// ICMP echo sessions.
    #[serde(with = "duration_ms")]
    pub icmp: Duration,
    /// Other IP protocols, per client.
    #[serde(with = "duration_ms")]
    pub other: Duration,
}

impl Default for FlowTimeouts {
    fn default() -> Self {
        Self {
            tcp_embryonic: Duration::from_secs(30),
            tcp_established: Duration::from_secs(2 * 3600),
            tcp_closing: Duration::from_secs(60),
            tcp_closed: Duration::from_secs(10),
            pending: Duration::from_secs(30),
            udp_unreplied: Duration::from_secs(30),
            udp: Duration::from_secs(180),
            icmp: Duration::from_secs(30),
            other: Duration::from_secs(600),
        }
    }
}

/// The same timeouts as 32-bit milliseconds, looked up on the packet path.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TimeoutsMs {
    tcp: [u32; 6],
    udp_unreplied: u32,
    udp: u32,
    icmp: u32,
    other: u32,
}

fn ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX / 2).min(u32::MAX / 2)
}

impl From<&FlowTimeouts> for TimeoutsMs {
    fn from(t: &FlowTimeouts) -> Self {
        Self {
            tcp: [
                ms(t.tcp_embryonic),
                ms(t.pending),
                ms(t.tcp_established),
                ms(t.tcp_closing),
                ms(t.tcp_closed),
                // A retired flow waits for the client's close like a closing one.
                ms(t.tcp_closing),
            ],
            udp_unreplied: ms(t.udp_unreplied),
            udp: ms(t.udp),
            icmp: ms(t.icmp),
            other: ms(t.other),
        }
    }
}

impl TimeoutsMs {
    /// Idle timeout of a flow of `protocol` in `phase`, in milliseconds.
    #[inline]
    pub(crate) fn idle_ms(&self, protocol: u8, phase: Phase, replied: bool) -> u32 {
        match protocol {
            PROTO_TCP => self.tcp[phase as usize],
            PROTO_UDP if replied => self.udp,
            PROTO_UDP => self.udp_unreplied,
            PROTO_ICMP => self.icmp,
            _ => self.other,
        }
    }
}

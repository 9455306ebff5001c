//! Router-wide counters. Every dropped packet lands in exactly one counter.

use serde::{Deserialize, Serialize};

use crate::shadow::ConflictCounters;
use crate::wire::ParseError;

/// Malformed frames, by what was wrong.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MalformedCounters {
    /// Ended inside a header.
    pub truncated: u64,
    /// Wrong IP version, bad IHL or total length.
    pub bad_ip_header: u64,
    /// IPv4 header checksum mismatch.
    pub bad_checksum: u64,
    /// TCP data offset out of range.
    pub bad_tcp_header: u64,
    /// RFC 1858 tiny or overlapping fragments.
    pub bad_fragment: u64,
    /// Too many VLAN tags, or ARP that is not Ethernet/IPv4.
    pub unsupported: u64,
}

impl MalformedCounters {
    pub(crate) fn count(&mut self, e: ParseError) {
        let c = match e {
            ParseError::Truncated(_) => &mut self.truncated,
            ParseError::NotIpv4(_) | ParseError::BadHeaderLength | ParseError::BadTotalLength => {
                &mut self.bad_ip_header
            }
            ParseError::BadChecksum => &mut self.bad_checksum,
            ParseError::BadTcpDataOffset => &mut self.bad_tcp_header,
            ParseError::TinyFragment | ParseError::OverlappingFragment => &mut self.bad_fragment,
            ParseError::TooManyVlanTags | ParseError::UnsupportedArp => &mut self.unsupported,
        };
        *c += 1;
    }

    /// All malformed frames.
    pub fn total(&self) -> u64 {
        self.truncated
            + self.bad_ip_header
            + self.bad_checksum
            + self.bad_tcp_header
            + self.bad_fragment
            + self.unsupported
    }
}

/// Router-wide counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterCounters {
    /// Frames offered on the provider side.
    pub inbound_frames: u64,
    /// Frames offered from the VMs.
    pub egress_frames: u64,
    /// Malformed frames dropped (both directions).
    pub malformed: MalformedCounters,
    /// Frames from a VM whose source address it does not hold.
    pub spoofed: u64,
    /// Frames from A for an address it lost (`instant` strategy).
    pub source_released: u64,
    /// Packets of new flows dropped because the table was full of established flows.
    pub table_full: u64,
    /// Flows admitted.
    pub flows_created: u64,
    /// Flows removed after their idle timeout.
    pub flows_expired: u64,
    /// Embryonic flows evicted to admit new ones (a SYN flood shows here).
    pub evicted_embryonic: u64,
    /// Unknown (being learned) flows evicted to admit new ones.
    pub evicted_pending: u64,
    /// Conflicting replies dropped.
    pub conflicts: ConflictCounters,
    /// Replica duplicates removed.
    pub replica_duplicates: u64,
    /// RSTs held back while an unknown flow was learned.
    pub resets_suppressed: u64,
    /// RSTs the router sent to clients at cut-over or rollback.
    pub resets_sent: u64,
    /// FINs sent closing A's flows at the cut-over (to clients and to A).
    #[serde(default)]
    pub closes_sent: u64,
    /// Segments of flows the router closed, absorbed (answered by the router or dropped).
    #[serde(default)]
    pub closed_absorbed: u64,
    /// Of those, client data that crossed the router's FIN (a request the client must retry, as
    /// after any server's close of an idle keep-alive connection).
    #[serde(default)]
    pub closed_crossed: u64,
    /// Of the router's FINs, those sent again at the peer's acknowledgment: the first was behind
    /// what the peer had already received (an exchange still on its way through a fast path when
    /// the router closed), so the peer ignored it as old.
    #[serde(default)]
    pub closes_behind: u64,
    /// Non-first fragments delivered to both VMs because their first fragment was not seen.
    pub fragments_mirrored: u64,
    /// Non-first fragments from a VM with no first fragment seen, dropped.
    pub fragments_orphaned: u64,
    /// First fragments not remembered because the fragment table was full.
    pub fragment_table_full: u64,
    /// Packets a fast path forwarded itself and reported, replayed by the core
    /// ([`crate::ShadowRouter::replay_inbound`], [`crate::ShadowRouter::replay_egress`]).
    #[serde(default)]
    pub fast_path_replayed: u64,
    /// Of those, packets the core would have handled otherwise: sent to the other side (the
    /// flow then adopted the fast path's side), to both, or dropped; or inbound to an address
    /// the core no longer shadows.
    #[serde(default)]
    pub fast_path_disagreed: u64,
    /// Of the disagreements, packets the core would have dropped (also counted under the drop's
    /// own reason).
    #[serde(default)]
    pub fast_path_would_drop: u64,
}

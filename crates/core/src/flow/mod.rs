//! Flows: the unit of the split. A flow is owned by one VM from its first packet until it ends
//! (or until cut-over / replica hand-off), so a TCP connection never sees two endpoints.

mod key;
mod table;
mod timeouts;

pub use key::{FlowKey, PROTO_CLIENT_PIN};
pub use table::{Evicted, FlowTable, InsertError};
pub use timeouts::FlowTimeouts;
pub(crate) use timeouts::TimeoutsMs;

use serde::Serialize;

use crate::time::Instant;

/// One side of a migration: the VM the address moves from, or the one it moves to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// VM A, the source (old holder) of the address.
    Source,
    /// VM B, the destination (new holder).
    Destination,
}

impl Side {
    /// The other side.
    pub const fn other(self) -> Self {
        match self {
            Side::Source => Side::Destination,
            Side::Destination => Side::Source,
        }
    }
}

/// Owner as stored in a flow: a side, or not yet known (unknown established flow being learned).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[repr(u8)]
pub enum Owner {
    /// Owned by VM A.
    Source = 0,
    /// Owned by VM B.
    Destination = 1,
    /// Delivered to both until one of them answers (see MISSION.md, "Unknown flows").
    Unknown = 2,
}

impl Owner {
    /// The owning side, if known.
    pub const fn side(self) -> Option<Side> {
        match self {
            Owner::Source => Some(Side::Source),
            Owner::Destination => Some(Side::Destination),
            Owner::Unknown => None,
        }
    }
}

impl From<Side> for Owner {
    fn from(side: Side) -> Self {
        match side {
            Side::Source => Owner::Source,
            Side::Destination => Owner::Destination,
        }
    }
}

/// Where a flow is in its life; decides its idle timeout and whether it may be evicted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Phase {
    /// Opened (SYN, or first datagram) but not confirmed by the initiator after a reply: what a
    /// SYN flood creates. Evicted first when the table is full.
    Embryonic = 0,
    /// An established TCP flow the router had no state for: delivered to both VMs while the
    /// owner is learned. Evictable (it is relearned on its next packet).
    Pending = 1,
    /// Confirmed in both directions. Never evicted to make room; only idle expiry removes it.
    Established = 2,
    /// A FIN was seen.
    Closing = 3,
    /// A RST was seen, or both FINs: kept briefly to absorb stragglers.
    Closed = 4,
    /// Closed by the router at the cut-over with a FIN in A's name (and one to A in the
    /// client's): the client's last segments are answered by the router, A's dropped, nothing
    /// reaches B.
    Retired = 5,
}

impl Phase {
    /// Whether a table under pressure may drop this flow to admit a new one.
    pub const fn evictable(self) -> bool {
        matches!(self, Phase::Embryonic | Phase::Pending)
    }
}

/// Flow state bits.
pub(crate) mod flags {
    /// Opened by a VM (outbound), not by a client.
    pub const OUTBOUND: u8 = 1 << 0;
    /// The responder has answered (SYN-ACK, or a reply datagram).
    pub const REPLIED: u8 = 1 << 1;
    /// `client_seq_max` holds a value.
    pub const CLIENT_SEQ: u8 = 1 << 2;
    /// `client_ack` holds a value.
    pub const CLIENT_ACK: u8 = 1 << 3;
    /// `owner_seq_max` holds a value.
    pub const OWNER_SEQ: u8 = 1 << 4;
    /// Pending flow: a RST from VM A was suppressed at `stamp_ms`.
    pub const RST_SOURCE: u8 = 1 << 5;
    /// Pending flow: a RST from VM B was suppressed at `stamp_ms`.
    pub const RST_DESTINATION: u8 = 1 << 6;
    /// An unanswered SYN of this flow was already reported to the split controller.
    pub const SYN_SIGNALLED: u8 = 1 << 7;
}

/// More flow state bits, in `Flow::marks`.
pub(crate) mod marks {
    /// The owner was learned from a reply (the flow was unknown); `stamp_ms` holds when.
    pub const LEARNED: u8 = 1 << 0;
    /// First seen mid-stream: its start (and so its age) is unknown.
    pub const UNKNOWN_START: u8 = 1 << 1;
    /// Counted open in its entry's census (on the side `COUNTED_DESTINATION` says).
    pub const COUNTED: u8 = 1 << 2;
    /// Counted on B's side (else A's).
    pub const COUNTED_DESTINATION: u8 = 1 << 3;
    /// Counted idle: everything either side sent was acknowledged.
    pub const IDLE: u8 = 1 << 4;
    /// The owner acknowledged everything the client sent.
    pub const OWNER_ACKED: u8 = 1 << 5;
    /// The client sent data the owner has not yet answered; `stamp_ms` holds when (flows not
    /// `LEARNED` only), for the first-byte time.
    pub const AWAITING_ANSWER: u8 = 1 << 6;
    /// In the closing window: to be closed by the router at its next idle moment.
    pub const CLOSE_AT_IDLE: u8 = 1 << 7;
    /// On a `Retired` flow (the bit's other life): the client has closed its side (FIN or RST).
    pub const CLIENT_CLOSED: u8 = CLOSE_AT_IDLE;
}

/// What the router remembers of one flow: 32 bytes, so a 48-byte table slot with its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Flow {
    /// When the flow was first seen (for its lifetime).
    pub created: Instant,
    /// Last packet, in milliseconds since the caller's epoch, truncated to 32 bits.
    pub last_seen_ms: u32,
    /// TCP: highest sequence number plus length seen from the client.
    pub client_seq_max: u32,
    /// TCP: latest acknowledgment number the client sent (its RCV.NXT).
    pub client_ack: u32,
    /// TCP: highest sequence number plus length the owner sent.
    pub owner_seq_max: u32,
    /// Pending flow: when the first RST of one VM was suppressed; learned flow: when the owner
    /// was learned; any other flow awaiting an answer: when the client's request came (ms,
    /// 32-bit). A retired flow: the client's sequence number when the router closed it (what A
    /// was told the client sent).
    pub stamp_ms: u32,
    /// Who receives the flow's inbound packets and may answer.
    pub owner: Owner,
    /// Life phase.
    pub phase: Phase,
    /// State bits (see `flags`).
    pub flags: u8,
    /// More state bits (see `marks`).
    pub marks: u8,
}

impl Flow {
    /// A new flow seen at `now`.
    pub fn new(owner: Owner, phase: Phase, now: Instant) -> Self {
        Self {
            created: now,
            last_seen_ms: now.millis_u32(),
            client_seq_max: 0,
            client_ack: 0,
            owner_seq_max: 0,
            stamp_ms: 0,
            owner,
            phase,
            flags: 0,
            marks: 0,
        }
    }

    /// Whether flag bits are all set.
    pub(crate) const fn has(&self, bits: u8) -> bool {
        self.flags & bits == bits
    }

    /// Records that the owner has sent sequence space up to `end` (kept at the highest).
    pub(crate) fn raise_owner_seq(&mut self, end: u32) {
        raise(&mut self.owner_seq_max, &mut self.flags, flags::OWNER_SEQ, end);
    }

    /// Records that the client has sent sequence space up to `end` (kept at the highest).
    /// Returns whether `end` is new sequence space (beyond all the client sent before).
    pub(crate) fn raise_client_seq(&mut self, end: u32) -> bool {
        let new = self.flags & flags::CLIENT_SEQ == 0 || !crate::router::seq_le(end, self.client_seq_max);
        if new {
            self.client_seq_max = end;
            self.flags |= flags::CLIENT_SEQ;
        }
        new
    }

    /// Records the client's acknowledgment number (kept at the highest).
    pub(crate) fn raise_client_ack(&mut self, ack: u32) {
        raise(&mut self.client_ack, &mut self.flags, flags::CLIENT_ACK, ack);
    }

    /// Whether the flow was opened by one of the VMs.
    pub const fn is_outbound(&self) -> bool {
        self.flags & flags::OUTBOUND != 0
    }
}

/// Sets `field` to `value` if it holds nothing yet (`bit` clear) or `value` is later in 32-bit
/// sequence space.
fn raise(field: &mut u32, flags: &mut u8, bit: u8, value: u32) {
    if *flags & bit == 0 || crate::router::seq_le(*field, value) {
        *field = value;
        *flags |= bit;
    }
}

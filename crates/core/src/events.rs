//! Telemetry out of the core: one narrow interface, [`EventSink`], for the manager and the
//! flow-lifetime predictor.

use core::time::Duration;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::flow::{FlowKey, Owner, Side};
use crate::shadow::{EntryState, SplitChange};
use crate::time::Instant;

/// How a flow came to be tracked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowOrigin {
    /// A client opened it; the split decided the owner.
    Inbound,
    /// A VM opened it and claimed it.
    Outbound,
    /// Seen mid-connection (router restart, expired state): being learned from the replies.
    Unknown,
}

/// Why a flow stopped being tracked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowEndReason {
    /// Idle past its timeout (including after FIN or RST).
    Idle,
    /// Removed to admit a new flow while the table was full.
    Evicted,
    /// Both VMs reset an unknown flow: nobody has it.
    Reset,
    /// A closed flow's 5-tuple was reused by a new connection.
    Reused,
    /// Lost a 5-tuple collision to the priority VM's connection attempt.
    CollisionLost,
    /// The migration ended (cut-over or rollback) and the address left the table.
    MigrationEnded,
}

/// The kind of a conflicting reply from the VM that does not own the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictKind {
    /// RST.
    Rst,
    /// SYN-ACK.
    SynAck,
    /// Data in sequence space the owner has not used.
    Data,
    /// Data overlapping what the owner already sent.
    DuplicateSequence,
    /// Opening a 5-tuple the other VM holds.
    Collision,
    /// Anything else.
    Other,
}

/// How a migration left the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Cut over: the address belongs to B alone.
    Completed,
    /// Rolled back: the address belongs to A alone.
    RolledBack,
}

/// Why a migration ended when it did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndCause {
    /// A's deadline came (or, for a rollback, the rollback was finished).
    #[default]
    Deadline,
    /// Early finish: the split was 100 % and A had no open flow left (or only idle ones, closed
    /// in order), so the address went to B before the deadline.
    Drained,
    /// The manager asked for it now (A failed, or an operator's cut-over).
    Requested,
}

/// What the end of a migration did to the flows still on the side that lost the address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutOverReport {
    /// Flows still owned by the losing side when its end began (the closing window before the
    /// deadline, or the end itself).
    pub flows_open_on_losing_side: u64,
    /// Of those, handed to the winning side (replica mode, or connectionless flows).
    pub handed_over: u64,
    /// Of those, TCP flows closed towards the client with an orderly FIN at an idle moment (in
    /// A's name, at its next sequence number): the client sees a normal close and reconnects.
    #[serde(default)]
    pub closed_gracefully: u64,
    /// Of those, TCP flows closed with a clean RST to the client (never idle before the end).
    pub reset: u64,
    /// Why the migration ended when it did.
    #[serde(default)]
    pub cause: EndCause,
}

/// Something the core reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A flow began to be tracked.
    FlowStarted {
        /// The flow.
        key: FlowKey,
        /// Its owner (unknown while learned).
        owner: Owner,
        /// How it started.
        origin: FlowOrigin,
        /// When.
        at: Instant,
    },
    /// A flow stopped being tracked, with its lifetime (for the predictor).
    FlowEnded {
        /// The flow.
        key: FlowKey,
        /// Its owner at the end.
        owner: Owner,
        /// First packet to last packet.
        lifetime: Duration,
        /// Why.
        reason: FlowEndReason,
        /// When.
        at: Instant,
    },
    /// An unknown flow's owner answered (or, replaying a fast path's packet, turned out to be
    /// the side the fast path delivered it to).
    OwnerLearned {
        /// The flow.
        key: FlowKey,
        /// Its owner.
        owner: Side,
        /// When.
        at: Instant,
    },
    /// A tracked flow's owner moved to the other side. Replica mode: its primary moved (the split
    /// moved). Independent mode: a fast-path replay found the packet delivered to the other side
    /// than the core's table said ([`crate::ShadowRouter::replay_inbound`]), and the flow took the
    /// side the packet already went to.
    HandOff {
        /// The flow.
        key: FlowKey,
        /// Previous primary.
        from: Side,
        /// New primary.
        to: Side,
        /// When.
        at: Instant,
    },
    /// The router closed one of A's flows at the cut-over (a FIN each way): it stays tracked,
    /// `Retired`, to answer its client's last segments itself, so it has no owner to forward to
    /// any more. A fast path's copy of the flow drops it; a `FlowEnded` follows when it leaves
    /// the table.
    FlowRetired {
        /// The flow.
        key: FlowKey,
        /// When.
        at: Instant,
    },
    /// A conflicting reply was dropped.
    Conflict {
        /// The flow.
        key: FlowKey,
        /// The side that sent it.
        from: Side,
        /// What it was.
        kind: ConflictKind,
        /// When.
        at: Instant,
    },
    /// An entry's split changed.
    SplitChanged {
        /// The shadowed address.
        ip: Ipv4Addr,
        /// The change.
        change: SplitChange,
        /// When.
        at: Instant,
    },
    /// An entry's state changed.
    StateChanged {
        /// The shadowed address.
        ip: Ipv4Addr,
        /// Before.
        from: EntryState,
        /// After.
        to: EntryState,
        /// When.
        at: Instant,
    },
    /// A migration ended and its entry was removed.
    MigrationEnded {
        /// The address, now held by one VM.
        ip: Ipv4Addr,
        /// Completed or rolled back.
        outcome: Outcome,
        /// What happened to the losing side's flows.
        report: CutOverReport,
        /// When.
        at: Instant,
    },
}

/// Receives the core's events. Implementations must be cheap: they run on the packet path.
pub trait EventSink {
    /// Takes one event.
    fn event(&mut self, event: Event);
}

/// Discards every event.
#[derive(Clone, Copy, Debug, Default)]
pub struct NullSink;

impl EventSink for NullSink {
    #[inline(always)]
    fn event(&mut self, _event: Event) {}
}

/// Collects events (tests, and drivers that forward them in batches).
impl EventSink for Vec<Event> {
    fn event(&mut self, event: Event) {
        self.push(event);
    }
}

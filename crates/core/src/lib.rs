//! ipshadow's sans-IO core: the Shadow Router's decisions for an IP address that is moving from
//! one VM (A, the source) to another (B, the destination) without dropping a connection.
//!
//! Nothing here opens a socket, spawns a thread or reads a clock. Frames go in with `now`;
//! verdicts, events and the next deadline come out. The data plane, the simulator and the tests
//! drive the same code.
//!
//! Terms follow the seed spec: a [`ShadowingEntry`] per shadowed address, its
//! `traffic_split_percentage` raised by a ramp under AIMD congestion control
//! ([`SplitController`]); per-flow ownership ([`FlowKey`], [`Owner`]); the egress arbiter that
//! drops conflicting replies; cut-over at A's deadline.

pub mod counters;
pub mod error;
pub mod events;
pub mod flow;
mod fragments;
pub mod ha;
mod keyed;
pub mod l2;
pub mod neighbours;
pub mod patterns;
mod prefetch;
pub mod router;
pub mod shadow;
pub mod testkit;
pub mod time;
pub mod wire;

pub use counters::{MalformedCounters, RouterCounters};
pub use error::RouterError;
pub use events::{
    ConflictKind, CutOverReport, EndCause, Event, EventSink, FlowEndReason, FlowOrigin, NullSink, Outcome,
};
pub use flow::{Flow, FlowKey, FlowTimeouts, Owner, Phase, Side};
pub use router::{
    Deliver, DropReason, EgressVerdict, FastPathShadow, InboundVerdict, Replay, RouterConfig, ShadowRouter, Transmit,
    TransmitKind, VmRef,
};
pub use shadow::{
    Affinity, CongestionControlParameters, EntryCounters, EntryState, MigrationOptions, Mode, Ramp, RampStep,
    ShadowingEntry, Signal, SplitChange, SplitController, SplitReason, Strategy, VmId, split_hash, split_threshold,
};
pub use time::{Clocks, Instant, WallOffset};

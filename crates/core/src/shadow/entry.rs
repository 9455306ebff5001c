//! `ShadowingEntry`: the seed's data structure, field for field, plus state and counters.

use core::time::Duration;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::params::{CongestionControlParameters, Ramp};
use crate::time::Instant;

/// A VM's identifier in the inventory.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VmId(pub String);

impl From<&str> for VmId {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl core::fmt::Display for VmId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How inbound traffic is divided while the address is shadowed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Per flow: a new flow goes to B when its seeded hash is below the split, and every later
    /// packet follows its owner. What ipshadow does.
    #[default]
    Flow,
    /// The seed's literal pseudocode: each packet independently, at random. Kept to show why it
    /// breaks TCP.
    Packet,
    /// The classic reassignment: everything to B at once, A released. Kept for comparison.
    Instant,
}

/// Whether B is independent or a state-synchronised copy of A.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// B runs its own stack: A's flows stay on A until they end or the deadline cuts them.
    #[default]
    Independent,
    /// B mirrors A's state: inbound goes to both, duplicate replies are removed, and each flow's
    /// primary moves from A to B as the split rises.
    Replica,
}

/// What a split decision pins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Affinity {
    /// Each flow (5-tuple, ICMP id) decided on its own.
    #[default]
    Flow,
    /// Every flow of a client address goes to the same VM.
    Client,
}

/// Where a shadowing entry is in its life. Completed and rolled-back migrations are removed from
/// the table (the address then belongs to one VM), so they are outcomes, not states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryState {
    /// B has been offered the address; the split stays at 0 until B's lease is bound.
    WaitingForLease,
    /// The split follows the ramp and the congestion control.
    Ramping,
    /// The split is frozen.
    Paused,
    /// Aborted: the split is 0, B's remaining flows drain until the rollback finishes.
    RollingBack,
}

/// The options a migration was started with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationOptions {
    /// Split strategy.
    #[serde(default)]
    pub strategy: Strategy,
    /// Independent or replica.
    #[serde(default)]
    pub mode: Mode,
    /// Per flow or per client.
    #[serde(default)]
    pub affinity: Affinity,
    /// How the split rises.
    #[serde(default)]
    pub ramp: Ramp,
    /// A's lease end: cut-over happens here. `None` until the manager knows it.
    #[serde(default)]
    pub deadline: Option<Instant>,
    /// Salt of the split hash, so that migrations of different addresses split independently
    /// and a restarted router decides exactly as before.
    #[serde(default)]
    pub salt: u64,
    /// The closing window: this long before the deadline every new flow goes to B and A's
    /// remaining TCP flows are closed in order, each at its next idle moment (a FIN in A's name);
    /// only those never idle by the deadline are reset. Zero: all are reset at the deadline.
    #[serde(default = "default_close_grace", with = "crate::time::duration_ms", rename = "close_grace_ms")]
    pub close_grace: Duration,
    /// Cut over before the deadline once the split is 100 % and A has no open flow left (or only
    /// idle ones expected to outlive `outlive_limit`, closed in order first).
    #[serde(default = "default_early_finish")]
    pub early_finish: bool,
    /// Idle flows on A that the drain forecast expects to outlive this (the operator's longest
    /// deadline) are not waited for by the early finish.
    #[serde(default = "default_outlive_limit", with = "crate::time::duration_ms", rename = "outlive_limit_ms")]
    pub outlive_limit: Duration,
}

fn default_close_grace() -> Duration {
    Duration::from_secs(10)
}

fn default_early_finish() -> bool {
    true
}

fn default_outlive_limit() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

impl Default for MigrationOptions {
    fn default() -> Self {
        Self {
            strategy: Strategy::Flow,
            mode: Mode::Independent,
            affinity: Affinity::Flow,
            ramp: Ramp::default(),
            deadline: None,
            salt: 0,
            close_grace: default_close_grace(),
            early_finish: default_early_finish(),
            outlive_limit: default_outlive_limit(),
        }
    }
}

/// Conflicting replies dropped, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictCounters {
    /// A RST from the VM that does not own the flow.
    pub rst: u64,
    /// A SYN-ACK from the non-owner.
    pub syn_ack: u64,
    /// Data from the non-owner, in sequence space the owner has not used.
    pub data: u64,
    /// Data from the non-owner overlapping what the owner already sent (the seed's "duplicate
    /// TCP sequence numbers").
    pub duplicate_sequence: u64,
    /// A VM opening a 5-tuple the other VM holds.
    pub collision: u64,
    /// Anything else from the non-owner (pure ACK, FIN, UDP, ICMP).
    pub other: u64,
}

impl ConflictCounters {
    /// Counts one conflict of `kind`.
    pub(crate) fn count(&mut self, kind: crate::events::ConflictKind) {
        use crate::events::ConflictKind as K;
        let c = match kind {
            K::Rst => &mut self.rst,
            K::SynAck => &mut self.syn_ack,
            K::Data => &mut self.data,
            K::DuplicateSequence => &mut self.duplicate_sequence,
            K::Collision => &mut self.collision,
            K::Other => &mut self.other,
        };
        *c += 1;
    }

    /// All conflicts.
    pub fn total(&self) -> u64 {
        self.rst + self.syn_ack + self.data + self.duplicate_sequence + self.collision + self.other
    }
}

/// Per-entry counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryCounters {
    /// Inbound packets delivered to A only.
    pub packets_to_source: u64,
    /// Inbound packets delivered to B only.
    pub packets_to_destination: u64,
    /// Inbound packets delivered to both (unknown flows, replica mode, orphan fragments).
    pub packets_to_both: u64,
    /// Flows started on A (inbound decisions and A's own outbound flows).
    pub flows_to_source: u64,
    /// Flows started on B.
    pub flows_to_destination: u64,
    /// Unknown established flows whose owner was learned from a reply.
    pub flows_learned: u64,
    /// Conflicting replies dropped.
    pub conflicts: ConflictCounters,
    /// Replica mode: replies from the secondary (or already acknowledged) removed as duplicates.
    pub replica_duplicates: u64,
    /// RSTs held back while an unknown flow's owner was learned.
    pub resets_suppressed: u64,
    /// Replica mode: flows whose primary moved between A and B.
    pub handoffs: u64,
}

/// The seed's `ShadowingEntry`: an address held by two VMs while it moves from one to the other.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShadowingEntry {
    /// The shadowed IP address.
    pub ip_address: Ipv4Addr,
    /// ID of the source VM (A, the old holder).
    pub source_vm_id: VmId,
    /// ID of the destination VM (B, the new holder).
    pub destination_vm_id: VmId,
    /// When the migration began, on the router's clock.
    pub migration_start_time: Instant,
    /// Current percentage of new traffic forwarded to the destination VM, in [0, 100].
    pub traffic_split_percentage: f64,
    /// Parameters of the AIMD congestion control on the split.
    pub congestion_control_parameters: CongestionControlParameters,
    /// Life state.
    pub state: EntryState,
    /// Strategy, mode, affinity, ramp, deadline, salt.
    pub options: MigrationOptions,
    /// Counters.
    pub counters: EntryCounters,
}

impl ShadowingEntry {
    /// A new entry waiting for B's lease, split 0.
    pub fn new(
        ip_address: Ipv4Addr,
        source_vm_id: VmId,
        destination_vm_id: VmId,
        migration_start_time: Instant,
        congestion_control_parameters: CongestionControlParameters,
        options: MigrationOptions,
    ) -> Self {
        Self {
            ip_address,
            source_vm_id,
            destination_vm_id,
            migration_start_time,
            traffic_split_percentage: 0.0,
            congestion_control_parameters,
            state: EntryState::WaitingForLease,
            options,
            counters: EntryCounters::default(),
        }
    }
}

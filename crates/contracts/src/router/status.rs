//! What a running router reports about itself: its shadowing table, the migrations that ended,
//! counters of every port and drop reason, health-probe answers. The router writes it to its
//! state directory a few times a second; the manager (and `ipshadow demo`) read it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipshadow_core::l2::PortStats;
use ipshadow_core::patterns::{DrainForecast, PatternsReport};
use ipshadow_core::{CutOverReport, Instant, Outcome, RouterCounters, ShadowingEntry, VmId};
use serde::{Deserialize, Serialize};

/// A router's report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Process id of the router.
    pub pid: u32,
    /// When the router process started (its clock: unix time in microseconds).
    pub started: Instant,
    /// When this report was made.
    pub updated: Instant,
    /// The shadowing table: one entry per shadowed address, with its state, split and counters.
    pub entries: Vec<ShadowingEntry>,
    /// Migrations that ended in this router process (deadline reached, cut over, rolled back),
    /// the last `ENDED_KEPT` of them (the data plane's forwarding loop bounds the list).
    pub ended: Vec<EndedMigration>,
    /// Migrations that ended longer ago than the last kept ones.
    #[serde(default)]
    pub ended_forgotten: u64,
    /// Flows tracked.
    pub flows: usize,
    /// The core's counters (every dropped packet is in exactly one).
    pub counters: RouterCounters,
    /// Layer-2 counters: forwarded, ARP answered, no route, drops by reason.
    pub l2: PortStats,
    /// Frames in and out of each interface.
    pub ports: Vec<PortIo>,
    /// Transmit kicks the kernel refused (interface down, no buffer space).
    #[serde(default)]
    pub flush_errors: u64,
    /// Health probes: when each VM last answered.
    pub probes: Vec<ProbeStatus>,
    /// Client TCP endpoints the router itself reset when a migration ended (the losing side's
    /// flows): a client that saw a reset there was cut over, not broken by accident.
    pub reset_clients: BTreeSet<(Ipv4Addr, u16)>,
    /// What could not be applied from the desired state, as of the last change.
    pub errors: Vec<String>,
    /// When the router installed each shadowed address's entry (its clock, unix microseconds
    /// under `ipshadow router` and `serve`).
    #[serde(default)]
    pub installed_at: BTreeMap<Ipv4Addr, Instant>,
    /// What the router measured for each shadowed address since its entry was installed, and
    /// the drain forecast of A's open flows made from it.
    #[serde(default)]
    pub patterns: BTreeMap<Ipv4Addr, AddressPatterns>,
    /// The router's part in its group (active or standby, its last takeover), if it is in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<ipshadow_core::ha::GroupStatus>,
    /// How the router forwards: with the XDP fast path (its figures), or without it and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_path: Option<DataPathStatus>,
}

/// Traffic patterns and drain forecast of one shadowed address.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AddressPatterns {
    /// Arrivals, lifetimes, open flows per VM, handshake and first-byte times.
    pub measured: PatternsReport,
    /// When A's open flows will have ended; absent before any flow was observed.
    pub forecast: Option<DrainForecast>,
}

/// A migration that left the shadowing table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndedMigration {
    /// The address.
    pub ip: Ipv4Addr,
    /// Completed (B holds it) or rolled back (A does).
    pub outcome: Outcome,
    /// What happened to the losing side's flows.
    pub report: CutOverReport,
    /// When.
    pub at: Instant,
}

/// How a router forwards.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPathStatus {
    /// `xdp` (the fast path, with AF_PACKET for what it hands up) or `af_packet`.
    pub mode: String,
    /// Why the router forwards without the fast path, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// The fast path's figures, when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_path: Option<FastPathStatus>,
}

/// What the XDP fast path did, and how the router's core took it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FastPathStatus {
    /// The interfaces the program runs on.
    pub interfaces: Vec<String>,
    /// Frames it forwarded itself.
    pub frames_forwarded: u64,
    /// Frames it handed up to the AF_PACKET path.
    pub frames_passed: u64,
    /// Of those, by reason (`flow`: an unknown flow or not its owner's frame; `not_ipv4`,
    /// `protocol`, `checksum`: a checksum left to offload by the sender, ...).
    #[serde(default)]
    pub passed: BTreeMap<String, u64>,
    /// Flows it decided.
    pub flows_decided: u64,
    /// Records it had no room for (the loop fell behind; the core relearns what it missed from
    /// the frames that follow).
    pub records_lost: u64,
    /// New flows its flow map refused (handed up).
    pub flow_map_full: u64,
    /// Records replayed into the core.
    pub records_replayed: u64,
    /// Flows a previous router left in the pinned flow map that came back (their owner kept,
    /// none relearned).
    pub flows_restored: u64,
    /// Flows the map had lost (evicted under a flood of new flows) written again from the core.
    #[serde(default)]
    pub flows_healed: u64,
    /// Map updates that failed (counted; the loop goes on).
    pub map_errors: u64,
}

/// Frames through one interface.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortIo {
    /// Interface name.
    pub interface: String,
    /// What is behind it: `provider` or a VM id.
    pub role: String,
    /// Frames received.
    pub received: u64,
    /// Frames sent.
    pub sent: u64,
    /// Frames not sent (ring full, too long).
    pub send_errors: u64,
    /// Frames received longer than a ring slot and dropped (a sender's segmentation offload
    /// made them).
    #[serde(default)]
    pub oversize: u64,
}

/// The last answer of a VM to the router's ARP health probes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeStatus {
    /// The VM.
    pub vm: VmId,
    /// When it last answered, if ever.
    pub last_reply: Option<Instant>,
    /// When it last answered for each address it shadows now: a destination answers for the
    /// address only once it has configured it.
    #[serde(default)]
    pub answered: BTreeMap<Ipv4Addr, Instant>,
}

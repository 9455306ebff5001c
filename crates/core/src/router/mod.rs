//! The Shadow Router's decision logic, sans-IO: frames in, verdicts out; timers by `poll`.
//!
//! - [`ShadowRouter::inbound`]: a frame from the provider side. Decides which VM(s) get it.
//! - [`ShadowRouter::egress`]: a frame from a VM. Anti-spoofing and the egress arbiter.
//! - [`ShadowRouter::poll`] / [`ShadowRouter::poll_at`]: ramps, congestion control, deadlines,
//!   flow expiry. [`ShadowRouter::poll_transmit`]: packets the router itself sends (cut-over RSTs).

mod close;
mod control;
mod egress;
mod end;
mod fast_path;
mod inbound;
mod observe;
mod replay;

use core::time::Duration;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::Ipv4Addr;

use foldhash::fast::FixedState;
use serde::{Deserialize, Serialize};

use crate::counters::RouterCounters;
use crate::events::{ConflictKind, Event, EventSink, FlowEndReason};
use crate::flow::{Flow, FlowKey, FlowTable, FlowTimeouts, Phase};
use crate::fragments::FragmentTable;
use crate::shadow::{Shadow, ShadowingEntry, ShadowingTable, VmId};
use crate::time::Instant;
use crate::wire::{ArpInfo, ParseError};

pub use fast_path::FastPathShadow;
pub use replay::Replay;

/// A VM as the data plane knows it: a small handle (its port), resolved once from its [`VmId`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VmRef(pub u32);

/// Which VM(s) receive an inbound packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deliver {
    /// VM A only.
    Source,
    /// VM B only.
    Destination,
    /// Both: an unknown flow being learned, a replica, or a fragment whose head was not seen.
    Both,
}

impl Deliver {
    fn bits(self) -> u8 {
        match self {
            Deliver::Source => 1,
            Deliver::Destination => 2,
            Deliver::Both => 3,
        }
    }

    fn from_bits(bits: u8) -> Self {
        match bits {
            1 => Deliver::Source,
            2 => Deliver::Destination,
            _ => Deliver::Both,
        }
    }
}

impl From<crate::flow::Side> for Deliver {
    fn from(side: crate::flow::Side) -> Self {
        match side {
            crate::flow::Side::Source => Deliver::Source,
            crate::flow::Side::Destination => Deliver::Destination,
        }
    }
}

/// Why a packet was dropped. Every drop is also counted in [`RouterCounters`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The frame could not be parsed.
    Malformed(ParseError),
    /// A VM sent from an address it does not hold.
    Spoofed,
    /// A VM answered a flow it does not own.
    Conflict(ConflictKind),
    /// Replica mode: a duplicate of the primary's reply.
    ReplicaDuplicate,
    /// A RST for an unknown flow held back while the other VM may still own it.
    ResetSuppressed,
    /// New flow refused: the table is full of established flows.
    TableFull,
    /// A from A for an address that moved away from it (`instant` strategy).
    SourceReleased,
    /// A non-first fragment from a VM whose first fragment was not seen or was dropped.
    FragmentOrphan,
    /// A segment of a flow the router closed at the cut-over: answered by the router (the
    /// client's close) or dropped (A's).
    ClosedByRouter,
}

/// Decision for a frame from the provider side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboundVerdict {
    /// Not IPv4 to a shadowed address: forward as without ipshadow.
    NotShadowed,
    /// ARP: the data plane answers for the addresses it routes.
    Arp(ArpInfo),
    /// Deliver to these VM(s).
    Deliver(Deliver),
    /// Drop.
    Drop(DropReason),
}

/// Decision for a frame from a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EgressVerdict {
    /// Let it out to the provider side.
    Forward,
    /// Drop.
    Drop(DropReason),
}

/// What a packet the router originates is, for the data plane's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransmitKind {
    /// A RST to a client whose flow on the losing side could not be closed in order.
    Reset,
    /// A FIN closing one of A's flows at the cut-over (to the client in A's name, or to A in the
    /// client's).
    Close,
    /// The ACK of the other end's FIN on a flow the router closed.
    Ack,
}

/// A packet the router originates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Destination address (a client; or the shadowed address when it goes to a VM).
    pub to: Ipv4Addr,
    /// The VM it goes to; `None`: a client on the provider side.
    pub vm: Option<VmRef>,
    /// What it is.
    pub kind: TransmitKind,
    /// The IPv4 datagram; the data plane adds the link header.
    pub datagram: Vec<u8>,
}

/// Router configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// Most flows tracked; memory is allocated for them at start (48 bytes * 1.6 per flow).
    pub max_flows: usize,
    /// Idle timeouts.
    pub timeouts: FlowTimeouts,
    /// Key of the hash of the tables remote input fills (flows, fragments). `None`, the default:
    /// drawn at random once per process, so that remote clients cannot choose keys that collide.
    /// Fixed only by the simulator and tests, whose runs must repeat for a seed. Not the split's
    /// hash: that is seeded by each entry's salt, so restarted routers agree on the split.
    pub hash_key: Option<u64>,
    /// Every flow slot is visited for expiry once per this period.
    #[serde(with = "crate::time::duration_ms", rename = "sweep_period_ms")]
    pub sweep_period: Duration,
    /// When both VMs reset an unknown flow within this window, one RST is let through.
    #[serde(with = "crate::time::duration_ms", rename = "rst_pair_window_ms")]
    pub rst_pair_window: Duration,
    /// Datagrams in flight whose fragments are steered.
    pub max_fragmented_datagrams: usize,
    /// Drop frames from a VM whose source address it does not hold.
    pub anti_spoofing: bool,
    /// Bounds of the layer-2 router's provider-side neighbour table (`crate::l2`).
    pub neighbours: crate::neighbours::NeighbourConfig,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            max_flows: 1 << 20,
            timeouts: FlowTimeouts::default(),
            hash_key: None,
            sweep_period: Duration::from_secs(10),
            rst_pair_window: Duration::from_secs(3),
            max_fragmented_datagrams: 8192,
            anti_spoofing: true,
            neighbours: crate::neighbours::NeighbourConfig::default(),
        }
    }
}

/// Sweep steps per sweep period: each step visits 1/SWEEP_STEPS of the slots.
const SWEEP_STEPS: u32 = 100;

/// The Shadow Router's core. `S` receives the telemetry events.
pub struct ShadowRouter<S: EventSink> {
    config: RouterConfig,
    timeouts: crate::flow::TimeoutsMs,
    shadows: ShadowingTable,
    flows: FlowTable,
    fragments: FragmentTable,
    /// Owner of each plain (non-shadowed) address, for anti-spoofing.
    addresses: HashMap<Ipv4Addr, VmRef, FixedState>,
    vm_refs: HashMap<VmId, VmRef>,
    wakeups: BinaryHeap<Reverse<(Instant, Ipv4Addr)>>,
    next_sweep: Instant,
    transmit: VecDeque<Transmit>,
    counters: RouterCounters,
    /// Flows counted in a census that left the table, to be taken out of it by [`ShadowRouter::settle`].
    gone: Vec<(FlowKey, Flow)>,
    /// Until when flows the router closed at a cut-over may still be in the table, kept after
    /// their migration ended to answer their clients' late closes (see `router/close.rs`).
    retired_until: Option<Instant>,
    /// Bumped whenever what a fast path copies may have changed (see `router/fast_path.rs`).
    fast_path_generation: u64,
    sink: S,
}

impl<S: EventSink> ShadowRouter<S> {
    /// A router with no shadowed address, starting at `now`.
    pub fn new(config: RouterConfig, sink: S, now: Instant) -> Self {
        let timeouts = (&config.timeouts).into();
        let flows = FlowTable::new(config.max_flows, config.hash_key);
        let fragments = FragmentTable::new(config.max_fragmented_datagrams, config.hash_key);
        Self {
            timeouts,
            flows,
            fragments,
            // Keyed by addresses the operator installs, not by remote input: a fixed hash.
            shadows: ShadowingTable::new(),
            addresses: HashMap::with_hasher(FixedState::default()),
            vm_refs: HashMap::new(),
            wakeups: BinaryHeap::new(),
            next_sweep: now + config.sweep_period / SWEEP_STEPS,
            transmit: VecDeque::new(),
            counters: RouterCounters::default(),
            gone: Vec::new(),
            retired_until: None,
            fast_path_generation: 1,
            sink,
            config,
        }
    }

    /// Counters.
    pub fn counters(&self) -> &RouterCounters {
        &self.counters
    }

    /// The event sink.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// The event sink, mutable (to drain a collecting sink).
    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    /// Flows tracked.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// Mean and longest probe distance in the flow table (diagnostics; scans the table).
    pub fn flow_probe_lengths(&self) -> (f64, usize) {
        self.flows.probe_lengths()
    }

    /// Bytes held by the flow table.
    pub fn flow_table_bytes(&self) -> usize {
        self.flows.memory_bytes()
    }

    /// The flow with this key, if tracked.
    pub fn flow(&self, key: &FlowKey) -> Option<&Flow> {
        self.flows.find(key, self.flows.hash(key)).map(|i| self.flows.flow(i))
    }

    /// A snapshot of the shadowing entry of `ip`.
    pub fn entry(&self, ip: Ipv4Addr) -> Option<ShadowingEntry> {
        self.shadows.get(&ip).map(Shadow::snapshot)
    }

    /// What the router measured for shadowed address `ip` since its entry was installed.
    pub fn patterns(&self, ip: Ipv4Addr, now: Instant) -> Option<crate::patterns::PatternsReport> {
        self.shadows.get(&ip).map(|s| s.patterns.report(now))
    }

    /// The drain forecast of A's open flows on `ip` at `now`, for a cut-over at the entry's
    /// deadline; `None` before any flow was observed.
    pub fn forecast(&self, ip: Ipv4Addr, now: Instant) -> Option<crate::patterns::DrainForecast> {
        let shadow = self.shadows.get(&ip)?;
        shadow.patterns.forecast(now, shadow.entry.options.deadline)
    }

    /// Open TCP flows of `ip` on A and B, and of those the idle ones, counted by scanning the
    /// whole flow table (diagnostics and tests: the census keeps the same figures in step).
    pub fn scan_open_flows(&self, ip: Ipv4Addr) -> ([u32; 2], [u32; 2]) {
        let (mut open, mut idle) = ([0u32; 2], [0u32; 2]);
        for key in self.flows.keys_where(|k, f| {
            k.shadow_ip == ip
                && k.protocol == crate::wire::PROTO_TCP
                && f.owner != crate::flow::Owner::Unknown
                && matches!(f.phase, Phase::Established | Phase::Closing)
        }) {
            let Some(flow) = self.flow(&key) else { continue };
            let i = usize::from(flow.owner == crate::flow::Owner::Destination);
            open[i] += 1;
            idle[i] += u32::from(observe::is_idle(flow));
        }
        (open, idle)
    }

    /// Snapshots of every shadowing entry (the seed's shadowing table).
    pub fn entries(&self) -> impl Iterator<Item = ShadowingEntry> + '_ {
        self.shadows.values().map(Shadow::snapshot)
    }

    /// The handle of a VM, allocated on first use.
    pub fn vm_ref(&mut self, id: &VmId) -> VmRef {
        let next = VmRef(self.vm_refs.len() as u32);
        *self.vm_refs.entry(id.clone()).or_insert(next)
    }

    /// Records that `vm` holds the plain address `ip` (for anti-spoofing).
    pub fn assign_address(&mut self, ip: Ipv4Addr, vm: VmRef) {
        self.addresses.insert(ip, vm);
        self.fast_path_generation += 1;
    }

    /// Forgets the holder of a plain address.
    pub fn release_address(&mut self, ip: Ipv4Addr) {
        self.addresses.remove(&ip);
        self.fast_path_generation += 1;
    }

    /// Every plain (non-shadowed) address the router routes, in no particular order.
    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.addresses.keys().copied()
    }

    /// The holder of a plain (non-shadowed) address.
    pub fn address_holder(&self, ip: Ipv4Addr) -> Option<VmRef> {
        self.addresses.get(&ip).copied()
    }

    /// Next packet the router sends itself.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmit.pop_front()
    }

    /// When [`ShadowRouter::poll`] must next be called.
    pub fn poll_at(&self) -> Option<Instant> {
        let entry = self.wakeups.peek().map(|Reverse((t, _))| *t);
        Some(entry.map_or(self.next_sweep, |t| t.min(self.next_sweep)))
    }

    /// Advances timers to `now`: ramps and congestion control, deadlines (cut-over), expiry of
    /// idle flows and fragments.
    pub fn poll(&mut self, now: Instant) {
        while let Some(Reverse((at, ip))) = self.wakeups.peek().copied() {
            if at > now {
                break;
            }
            self.wakeups.pop();
            self.poll_entry(ip, at, now);
        }
        if now >= self.next_sweep {
            let steps =
                1 + (now - self.next_sweep).as_micros() / (self.config.sweep_period / SWEEP_STEPS).as_micros().max(1);
            let steps = u32::try_from(steps).unwrap_or(SWEEP_STEPS).min(SWEEP_STEPS);
            let budget = (self.flows.capacity() as u64 * u64::from(steps)).div_ceil(u64::from(SWEEP_STEPS)) as usize;
            let (flows, sink, counters, gone) = (&mut self.flows, &mut self.sink, &mut self.counters, &mut self.gone);
            flows.sweep(budget, now.millis_u32(), &self.timeouts, |key, flow| {
                counters.flows_expired += 1;
                remember_gone(gone, key, flow);
                sink.event(ended(key, &flow, FlowEndReason::Idle, now));
            });
            self.settle(now);
            if !self.fragments.is_empty() {
                self.fragments.expire(now);
            }
            self.next_sweep = now + self.config.sweep_period / SWEEP_STEPS;
        }
    }

    fn poll_entry(&mut self, ip: Ipv4Addr, at: Instant, now: Instant) {
        let Some(shadow) = self.shadows.get_mut(&ip) else { return };
        if shadow.wake_at != Some(at) {
            return; // superseded by a later schedule
        }
        shadow.wake_at = None;
        let signals = core::mem::take(&mut shadow.signals);
        shadow.controller.absorb(&signals);
        let change = shadow.controller.poll(now);
        if let Some(change) = shadow.apply(change) {
            self.sink.event(Event::SplitChanged { ip, change, at: now });
            self.fast_path_generation += 1;
        }
        let params = shadow.entry.congestion_control_parameters;
        shadow.patterns.refresh_limits(&params);
        shadow.patterns.set_trouble(shadow.controller.troubled_intervals(), params.rollback_after_intervals);
        if self.check_end(ip, now) {
            return;
        }
        self.schedule(ip);
    }

    /// Re-computes when `ip` needs `poll` next.
    fn schedule(&mut self, ip: Ipv4Addr) {
        let Some(shadow) = self.shadows.get_mut(&ip) else { return };
        let options = &shadow.entry.options;
        // The deadline, and before it the closing window's start (once).
        let end = options.deadline.map(|d| match shadow.ending.closing_since {
            None if !options.close_grace.is_zero() => d - options.close_grace,
            _ => d,
        });
        let wake = [shadow.controller.next_wakeup(), end, shadow.ending.check_at].into_iter().flatten().min();
        if wake != shadow.wake_at {
            shadow.wake_at = wake;
            if let Some(t) = wake {
                self.wakeups.push(Reverse((t, ip)));
            }
        }
    }

    /// Removes the flow in `index` and reports its end.
    fn end_flow(&mut self, index: usize, reason: FlowEndReason, now: Instant) {
        self.split_borrow().1.end_flow(index, reason, now);
        self.settle(now);
    }

    /// Takes flows that left the table out of their entries' census.
    #[inline(always)]
    fn settle(&mut self, now: Instant) {
        if !self.gone.is_empty() {
            self.settle_gone(now);
        }
    }

    #[cold]
    #[inline(never)]
    fn settle_gone(&mut self, now: Instant) {
        for (key, mut flow) in self.gone.drain(..) {
            if let Some(shadow) = self.shadows.get_mut(&key.shadow_ip) {
                let ended = observe::last_packet(&flow, now);
                observe::leave(&mut shadow.patterns, &mut flow, Some(ended));
            }
        }
    }

    /// Inserts a new flow, evicting an embryonic one if the table is full.
    fn admit(&mut self, key: &FlowKey, hash: u64, flow: Flow, now: Instant) -> Option<usize> {
        let index = self.split_borrow().1.admit(key, hash, flow, now);
        self.settle(now);
        index
    }

    /// The shadowing table and everything else, borrowed apart, so the packet path looks an
    /// entry up once and works on it and the flow table together.
    fn split_borrow(&mut self) -> (&mut ShadowingTable, Tables<'_, S>) {
        let tables = Tables {
            flows: &mut self.flows,
            fragments: &mut self.fragments,
            counters: &mut self.counters,
            sink: &mut self.sink,
            timeouts: &self.timeouts,
            gone: &mut self.gone,
            transmit: &mut self.transmit,
        };
        (&mut self.shadows, tables)
    }
}

/// The router's state apart from the shadowing table.
pub(crate) struct Tables<'a, S> {
    pub flows: &'a mut FlowTable,
    pub fragments: &'a mut FragmentTable,
    pub counters: &'a mut RouterCounters,
    pub sink: &'a mut S,
    pub timeouts: &'a crate::flow::TimeoutsMs,
    pub gone: &'a mut Vec<(FlowKey, Flow)>,
    pub transmit: &'a mut VecDeque<Transmit>,
}

impl<S: EventSink> Tables<'_, S> {
    /// Removes the flow in `index` and reports its end.
    pub fn end_flow(&mut self, index: usize, reason: FlowEndReason, now: Instant) {
        let (key, flow) = self.flows.remove(index);
        remember_gone(self.gone, key, flow);
        self.sink.event(ended(key, &flow, reason, now));
    }

    /// Inserts a new flow, evicting an embryonic one if the table is full.
    pub fn admit(&mut self, key: &FlowKey, hash: u64, flow: Flow, now: Instant) -> Option<usize> {
        match self.flows.insert(key, hash, flow, now.millis_u32(), self.timeouts) {
            Ok((index, evicted)) => {
                if let Some(e) = evicted {
                    let reason = if e.expired {
                        self.counters.flows_expired += 1;
                        FlowEndReason::Idle
                    } else {
                        if e.flow.phase == Phase::Pending {
                            self.counters.evicted_pending += 1;
                        } else {
                            self.counters.evicted_embryonic += 1;
                        }
                        FlowEndReason::Evicted
                    };
                    remember_gone(self.gone, e.key, e.flow);
                    self.sink.event(ended(e.key, &e.flow, reason, now));
                }
                self.counters.flows_created += 1;
                Some(index)
            }
            Err(crate::flow::InsertError::Full) => {
                self.counters.table_full += 1;
                None
            }
        }
    }
}

/// Keeps a removed flow that is counted in a census, for [`ShadowRouter::settle`].
#[inline]
fn remember_gone(gone: &mut Vec<(FlowKey, Flow)>, key: FlowKey, flow: Flow) {
    if flow.marks & crate::flow::marks::COUNTED != 0 {
        gone.push((key, flow));
    }
}

/// The `FlowEnded` event of a flow. Its lifetime runs from its first packet to its last, not to
/// when the router noticed it was idle: that is what the flow-lifetime predictor needs.
fn ended(key: FlowKey, flow: &Flow, reason: FlowEndReason, now: Instant) -> Event {
    let idle_ms = now.millis_u32().wrapping_sub(flow.last_seen_ms);
    let idle = if idle_ms < u32::MAX / 2 { Duration::from_millis(u64::from(idle_ms)) } else { Duration::ZERO };
    let lifetime = (now - flow.created).saturating_sub(idle);
    Event::FlowEnded { key, owner: flow.owner, lifetime, reason, at: now }
}

/// `a <= b` in 32-bit sequence space (RFC 9293 3.4).
#[inline]
pub(crate) const fn seq_le(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) >= 0
}

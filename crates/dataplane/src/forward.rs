//! The forwarding loop's body: frames from every port through the layer-2 router and out again,
//! the core's timers, its events turned into the status report. The caller owns the clock and
//! the waiting (see `ipshadow router`); this part is the same for AF_PACKET ports and any other
//! [`PacketPort`].

use std::io;
use std::net::Ipv4Addr;

use std::collections::VecDeque;

use ipshadow_core::ha::{Announcement, GroupMember};
use ipshadow_core::l2::{Out, RouterNode};

use ipshadow_core::{Clocks, Event, Instant};

use crate::PacketPort;
use crate::desired::{Desired, ReconcileError, Reconciler};
use crate::fast::FastPathSync;
use crate::status::{AddressPatterns, EndedMigration, ProbeStatus, Status};

/// Frames taken from one port before the next port gets its turn.
pub const BATCH: usize = 256;

/// Ended migrations kept for the status report: the manager reads a report a few times a second
/// and records what it finds, so the last ones are all it needs; older ones are counted.
pub const ENDED_KEPT: usize = 256;

/// A router node with its ports.
pub struct Forwarder<P: PacketPort> {
    /// The provider-side port.
    pub provider: P,
    /// One port per VM, in the node's port order.
    pub vms: Vec<P>,
    /// The layer-2 router.
    pub node: RouterNode,
    reconciler: Reconciler,
    out: Vec<Out>,
    ended: VecDeque<EndedMigration>,
    /// Ended migrations no longer in the report (more than [`ENDED_KEPT`] ended since).
    ended_forgotten: u64,
    errors: Vec<String>,
    /// Frames handed to the node so far.
    pub frames: u64,
    /// Transmit kicks the kernel refused (interface down, no buffer space): the frames stay
    /// queued in the ring for the next kick, or are lost with the interface.
    pub flush_errors: u64,
    /// The router's membership in its group, if it is in one: it forwards and sends only while
    /// active (without a group, always).
    pub group: Option<GroupMember>,
    /// The XDP fast path beside the ports, if it runs: it forwards what it can itself, and this
    /// loop replays that into the core and keeps its maps in step (see [`crate::fast`]).
    pub fast: Option<FastPathSync>,
}

impl<P: PacketPort> Forwarder<P> {
    /// A forwarder around `node`; `vms[i]` is the node's port `i`.
    pub fn new(provider: P, vms: Vec<P>, node: RouterNode) -> Self {
        Self {
            provider,
            vms,
            node,
            reconciler: Reconciler::new(),
            out: Vec::with_capacity(2 * BATCH),
            ended: VecDeque::new(),
            ended_forgotten: 0,
            errors: Vec::new(),
            frames: 0,
            flush_errors: 0,
            group: None,
            fast: None,
        }
    }

    /// Takes what every port has received (up to about [`BATCH`] frames each), forwards it, runs
    /// the core's timers and sends everything. Returns how many frames came in.
    pub fn step(&mut self, now: Instant) -> io::Result<usize> {
        self.step_with(now, &|| now)
    }

    /// [`Forwarder::step`], with `clock` read again before sending: in a group, a turn that
    /// stalled (the process was paused) sends nothing it decided before the stall.
    pub fn step_with(&mut self, now: Instant, clock: &dyn Fn() -> Instant) -> io::Result<usize> {
        if let Some(group) = &mut self.group {
            group.turn(now);
        }
        // What the fast path forwarded comes first: the frames it handed up came after it.
        if let Some(fast) = &mut self.fast {
            fast.replay(&mut self.node, now);
        }
        let before = self.node.stats.to_vms + self.node.stats.to_provider;
        let Self { provider, vms, node, out, group, fast, .. } = self;
        // Announcements of the router's group are heard, never forwarded; a member that is not
        // active takes no frame in (counted).
        let mut admit = |frame: &[u8]| match group {
            None => true,
            Some(g) if ipshadow_core::ha::wire::is_announcement(frame) => {
                match Announcement::parse(frame) {
                    Ok(a) => g.heard(&a, now),
                    Err(_) => g.heard_malformed(),
                }
                false
            }
            Some(g) if !g.may_forward() => {
                g.dropped(1);
                false
            }
            Some(_) => true,
        };
        let mut count = provider.receive(BATCH, &mut |frame| {
            if admit(frame) {
                match fast {
                    Some(fast) => fast.from_provider(node, frame, now, out),
                    None => node.from_provider(frame.to_vec(), now, out),
                }
            }
        })?;
        for (port, vm) in vms.iter_mut().enumerate() {
            count += vm.receive(BATCH, &mut |frame| {
                if admit(frame) {
                    match fast {
                        Some(fast) => fast.from_vm(node, port, frame, now, out),
                        None => node.from_vm(port, frame.to_vec(), now, out),
                    }
                }
            })?;
        }
        node.poll(now, out);
        if let Some((announcement, gratuitous)) = group.as_mut().and_then(|g| g.announcement(now)) {
            node.announce(&announcement, gratuitous, out);
        }
        self.frames += count as u64;
        let sent = self.transmit_checked(clock);
        if let Some(group) = &mut self.group
            && sent
            && self.node.stats.to_vms + self.node.stats.to_provider > before
        {
            group.forwarded(now);
        }
        self.drain_events();
        self.sync_fast_path(now);
        Ok(count)
    }

    /// Writes what the core changed into the fast path's maps.
    fn sync_fast_path(&mut self, now: Instant) {
        if let Some(fast) = &mut self.fast {
            fast.sync(&mut self.node, self.group.as_ref().map(GroupMember::may_forward), now);
        }
    }

    /// Sends an ARP health probe for each shadowed address to both of its VMs.
    pub fn probe(&mut self) {
        if self.group.as_ref().is_some_and(|g| !g.may_forward()) {
            // A standby sends nothing; its probes would teach the segments' switches its port.
            return;
        }
        let targets: Vec<(Ipv4Addr, usize, usize)> = self
            .node
            .core
            .entries()
            .filter_map(|e| {
                let a = self.node.port_of(&e.source_vm_id)?;
                let b = self.node.port_of(&e.destination_vm_id)?;
                Some((e.ip_address, a, b))
            })
            .collect();
        for (ip, a, b) in targets {
            self.node.probe(a, ip, &mut self.out);
            self.node.probe(b, ip, &mut self.out);
        }
        self.transmit();
    }

    /// Brings the router in line with the manager's desired state; returns what could not be
    /// applied (also kept for the status report).
    pub fn apply(&mut self, desired: &Desired, clocks: Clocks) -> &[String] {
        let now = clocks.now;
        // The core's timers run below (a cut-over, the closing window's closes): on what the
        // fast path forwarded up to now, not up to the turn's start.
        if let Some(fast) = &mut self.fast {
            fast.replay(&mut self.node, now);
        }
        let errors: Vec<ReconcileError> = self.reconciler.apply(&mut self.node, desired, clocks);
        // The reconciler may have cut over or rolled back: RSTs to send, events to record.
        self.node.poll(now, &mut self.out);
        self.transmit_checked(&|| now);
        self.drain_events();
        self.sync_fast_path(now);
        self.errors = errors.iter().map(ToString::to_string).collect();
        &self.errors
    }

    /// The status report, without the interface counters (the caller knows its ports). Its
    /// times are wall-clock times, the manager's: `started` is one already; the router's
    /// monotonic times are converted at `clocks`, each entry's deadline as it was installed.
    pub fn status(&self, started: Instant, clocks: Clocks) -> Status {
        let now = clocks.now;
        let wall = |t: Instant| clocks.offset().to_wall(t);
        let probes = self
            .node
            .ports()
            .iter()
            .zip(&self.node.probe_replies)
            .enumerate()
            .map(|(port, ((vm, _), last))| ProbeStatus {
                vm: vm.clone(),
                last_reply: last.map(wall),
                answered: self
                    .node
                    .probe_answers
                    .range((port, Ipv4Addr::UNSPECIFIED)..=(port, Ipv4Addr::BROADCAST))
                    .map(|(&(_, ip), &at)| (ip, wall(at)))
                    .collect(),
            })
            .collect();
        Status {
            pid: std::process::id(),
            started,
            updated: clocks.wall,
            entries: self
                .node
                .core
                .entries()
                .map(|mut e| {
                    let offset = self.reconciler.offset(e.ip_address).unwrap_or(clocks.offset());
                    e.options.deadline = e.options.deadline.map(|d| offset.to_wall(d));
                    e
                })
                .collect(),
            ended: self.ended.iter().map(|m| EndedMigration { at: wall(m.at), ..m.clone() }).collect(),
            ended_forgotten: self.ended_forgotten,
            flows: self.node.core.flow_count(),
            counters: *self.node.core.counters(),
            l2: self.node.stats.clone(),
            ports: Vec::new(),
            flush_errors: self.flush_errors,
            probes,
            reset_clients: self.node.reset_clients.iter().copied().collect(),
            errors: self.errors.clone(),
            installed_at: self
                .reconciler
                .installed_at()
                .iter()
                .filter(|(ip, _)| self.node.core.entry(**ip).is_some())
                .map(|(ip, at)| (*ip, *at))
                .collect(),
            patterns: self
                .node
                .core
                .entries()
                .filter_map(|e| {
                    let ip = e.ip_address;
                    let measured = self.node.core.patterns(ip, now)?;
                    Some((ip, AddressPatterns { measured, forecast: self.node.core.forecast(ip, now) }))
                })
                .collect(),
            ha: self.group.as_ref().map(|g| g.status(now, wall)),
            data_path: None,
        }
    }

    /// The group member's last announcement, sent on every segment, if it is active: it stops
    /// forwarding in order and a standby takes over at once.
    pub fn resign(&mut self, now: Instant) {
        let Some(announcement) = self.group.as_mut().and_then(|g| g.resign(now)) else { return };
        self.node.announce(&announcement, false, &mut self.out);
        self.transmit();
    }

    /// Sends what the node produced, if the router may send now (not in a group, or its active
    /// member in a turn that did not stall); otherwise counts it as suppressed. Whether it sent.
    fn transmit_checked(&mut self, clock: &dyn Fn() -> Instant) -> bool {
        if let Some(group) = &mut self.group
            && !self.out.is_empty()
            && (!group.may_forward() || group.turn_stalled(clock()))
        {
            group.suppressed(self.out.len() as u64);
            self.out.clear();
            // Nor does the fast path send until the group says the router may.
            if let Some(fast) = &mut self.fast {
                fast.hold();
            }
            return false;
        }
        self.transmit();
        true
    }

    /// Sends what the node produced. A full ring or a refused kick is counted (by the port, or
    /// in `flush_errors`), never fatal: one VM's interface going down must not stop the others.
    fn transmit(&mut self) {
        for out in self.out.drain(..) {
            // A full ring is a drop the port counts; the loop goes on.
            let _ = match out {
                Out::Provider(frame) => {
                    if let Some(fast) = &mut self.fast {
                        fast.sent_to_provider(&frame);
                    }
                    self.provider.send(&frame)
                }
                Out::Vm(port, frame) => match self.vms.get_mut(port) {
                    Some(vm) => vm.send(&frame),
                    None => Ok(()),
                },
            };
        }
        let refused = usize::from(self.provider.flush().is_err())
            + self.vms.iter_mut().map(|vm| usize::from(vm.flush().is_err())).sum::<usize>();
        self.flush_errors += refused as u64;
    }

    /// Takes the core's events: ended migrations are kept for the report (and told to the
    /// reconciler); the rest are for the flow-lifetime predictor, which does not exist yet.
    fn drain_events(&mut self) {
        // Taken out and put back empty, so the sink keeps its capacity: this runs every step.
        let mut events = std::mem::take(self.node.core.sink_mut());
        for event in events.drain(..) {
            if let Some(fast) = &mut self.fast {
                fast.event(&event);
            }
            if let Event::MigrationEnded { ip, outcome, report, at } = event {
                self.reconciler.migration_ended(ip);
                self.node.unshadow(ip);
                if self.ended.len() == ENDED_KEPT {
                    self.ended.pop_front();
                    self.ended_forgotten += 1;
                }
                self.ended.push_back(EndedMigration { ip, outcome, report, at });
            }
        }
        *self.node.core.sink_mut() = events;
    }
}

//! The manager's part in a run: it installs the migration, reports B's lease as bound, health-
//! checks both VMs with ARP probes (B failing rolls back, A failing fast-forwards), keeps the
//! entry in its store so a restarted router gets it back, and injects the faults.

use core::time::Duration;

use ipshadow_core::patterns::DrainForecast;
use ipshadow_core::{
    CutOverReport, EntryState, Event, Instant, MigrationOptions, Outcome, Owner, RouterCounters, ShadowingEntry, VmId,
    VmRef,
};

use super::config::Fault;
use super::world::{A, Action, B, World, X, client_flow};

/// A VM the health checks found dead (and acted on: B rolls back, A fast-forwards).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Failure {
    /// Its port: A or B.
    pub vm: usize,
    /// When the probes gave up on it.
    pub detected: Instant,
}

/// The router's drain forecast at the moment the split first reached 100 %, and the
/// connections it was about: the report sets it against when they actually ended.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ForecastProbe {
    /// When.
    pub at: Instant,
    /// The router's forecast (`None`: it had observed no flow).
    pub forecast: Option<DrainForecast>,
    /// Ledger ids of the client TCP connections whose flow the router had on A then.
    pub on_a: Vec<u32>,
}

/// What the manager knows and remembers.
pub(crate) struct Control {
    /// The entry as stored: its state, split and deadline follow the router's events.
    pub stored: Option<ShadowingEntry>,
    /// How and when the migration ended, and what that did to the losing side's flows.
    pub outcome: Option<(Outcome, CutOverReport, Instant)>,
    /// When the entry was installed.
    pub started: Option<Instant>,
    /// When B's lease was reported bound.
    pub lease_bound: Option<Instant>,
    /// When the split first reached 100 %.
    pub split_100: Option<Instant>,
    /// The drain forecast taken then.
    pub forecast_probe: Option<ForecastProbe>,
    /// The VM failure acted on, if any.
    pub failure: Option<Failure>,
    /// When the router restarted.
    pub restarts: Vec<Instant>,
    /// Replica hand-offs reported by the router.
    pub handoffs: u64,
    /// Open non-owner fault windows (they may overlap).
    pub flood_windows: u32,
    /// Multiplicative decreases of the split (trouble signals from B).
    pub decreases: u64,
    /// Counters of router processes that were restarted (a restart loses them).
    pub carried: Vec<RouterCounters>,
    last_answer: [Instant; 2],
}

impl Control {
    pub fn new() -> Self {
        Self {
            stored: None,
            outcome: None,
            started: None,
            lease_bound: None,
            split_100: None,
            forecast_probe: None,
            failure: None,
            restarts: Vec::new(),
            handoffs: 0,
            flood_windows: 0,
            decreases: 0,
            carried: Vec::new(),
            last_answer: [Instant::ZERO; 2],
        }
    }

    /// The split as last reported by the router (100 after a cut-over, 0 after a rollback).
    pub fn split_pct(&self) -> f64 {
        match (&self.outcome, &self.stored) {
            (Some((Outcome::Completed, ..)), _) => 100.0,
            (Some((Outcome::RolledBack, ..)), _) => 0.0,
            (None, Some(entry)) => entry.traffic_split_percentage,
            (None, None) => 0.0,
        }
    }

    /// The migration's state as a word.
    pub fn state(&self) -> &'static str {
        match (&self.outcome, &self.stored) {
            (Some((Outcome::Completed, ..)), _) => "completed",
            (Some((Outcome::RolledBack, ..)), _) => "rolled_back",
            (None, Some(entry)) => match entry.state {
                EntryState::WaitingForLease => "waiting_for_destination_lease",
                EntryState::Ramping => "ramping",
                EntryState::Paused => "paused",
                EntryState::RollingBack => "rolling_back",
            },
            (None, None) => "not_started",
        }
    }

    /// When the migration ended for good: the cut-over, or the rollback's end (B's shadow lease
    /// lapsed). A rollback not yet finished has not ended.
    pub fn ended_at(&self) -> Option<Instant> {
        self.outcome.map(|(.., at)| at)
    }

    fn active(&self) -> bool {
        self.stored.is_some() && self.outcome.is_none()
    }
}

impl World {
    pub(crate) fn control_act(&mut self, action: Action) {
        let now = self.now;
        match action {
            Action::StartMigration => self.start_migration(),
            // A dead B never binds its lease; a refused transition (B already failed and rolled
            // back) simply does not happen.
            Action::LeaseBound
                if self.vms[B].alive && self.control.active() && self.router.core.lease_bound(X, now).is_ok() =>
            {
                self.control.lease_bound = Some(now);
                if let Some(ecmp) = self.cfg.ecmp {
                    self.schedule(now + ecmp.skew, Action::PeerLeaseBound);
                }
            }
            Action::PeerLeaseBound => {
                // Refused when the peer's entry ended or rolled back meanwhile: nothing to start.
                if let Some(peer) = &mut self.peer {
                    let _ = peer.core.lease_bound(X, now);
                }
            }
            Action::Probe => {
                self.probe();
                self.schedule(now + Duration::from_secs(1), Action::Probe);
            }
            Action::Fault(i) => self.fault(i),
            Action::FaultEnd(_) => {
                self.control.flood_windows = self.control.flood_windows.saturating_sub(1);
                if self.control.flood_windows == 0 {
                    self.router.flood = None;
                    if let Some(peer) = &mut self.peer {
                        peer.flood = None;
                    }
                }
            }
            Action::FinishRollback => {
                let _ = self.router.core.finish_rollback(X, now);
                if let Some(peer) = &mut self.peer {
                    let _ = peer.core.finish_rollback(X, now);
                }
            }
            _ => {}
        }
        self.control_after_router();
    }

    fn start_migration(&mut self) {
        let now = self.now;
        let options = MigrationOptions {
            strategy: self.cfg.strategy,
            mode: self.cfg.mode,
            affinity: self.cfg.affinity,
            ramp: self.cfg.ramp.clone(),
            deadline: Some(now + self.cfg.deadline),
            salt: self.cfg.seed,
            ..MigrationOptions::default()
        };
        let entry = ShadowingEntry::new(X, VmId::from("vm-a"), VmId::from("vm-b"), now, self.cfg.congestion, options);
        if let Err(e) = self.router.core.add_entry(entry.clone(), now) {
            // The scenario's own entry is valid by construction; a refusal is a bug to surface.
            panic!("the router refused the scenario's entry: {e}");
        }
        self.router.shadow_ports(X, A, B);
        if let Some(peer) = &mut self.peer {
            if let Err(e) = peer.core.add_entry(entry.clone(), now) {
                panic!("the second router refused the scenario's entry: {e}");
            }
            peer.shadow_ports(X, A, B);
        }
        self.control.stored = Some(entry);
        self.control.started = Some(now);
        self.control.last_answer = [now; 2];
        for record in &mut self.ledger {
            if record.outcome == crate::app::client::Outcome::Open && record.kind != crate::app::client::ConnKind::Udp {
                record.open_at_start = true;
            }
        }
        self.schedule(now + self.cfg.lease_delay, Action::LeaseBound);
    }

    /// Sends ARP probes to both VMs and acts on one that stopped answering.
    fn probe(&mut self) {
        let now = self.now;
        for port in [A, B] {
            if let Some(t) = self.router.probe_replies[port] {
                self.control.last_answer[port] = self.control.last_answer[port].max(t);
            }
        }
        let mut out = Vec::new();
        for port in [A, B] {
            self.router.probe(port, X, &mut out);
        }
        for o in out {
            if let crate::router::Out::Vm(port, frame) = o {
                self.vm_down[port].send(frame, now);
            }
        }
        if !self.control.active() || self.control.failure.is_some() {
            return;
        }
        for port in [A, B] {
            if now - self.control.last_answer[port] <= self.cfg.failure_detection {
                continue;
            }
            let acted = if port == B {
                // B failed: roll back; B's short lease lapses and the address stays A's.
                let ok = self.router.core.abort(X, now).is_ok();
                if let Some(peer) = &mut self.peer {
                    let _ = peer.core.abort(X, now);
                }
                if ok {
                    self.schedule(now + self.cfg.shadow_lease, Action::FinishRollback);
                }
                ok
            } else {
                // A failed: fast-forward, B takes the address now (refused while rolling back:
                // then both VMs are gone and there is nothing left to do).
                if let Some(peer) = &mut self.peer {
                    let _ = peer.core.cut_over(X, now);
                }
                self.router.core.cut_over(X, now).is_ok()
            };
            if acted {
                self.control.failure = Some(Failure { vm: port, detected: now });
                return;
            }
        }
    }

    fn fault(&mut self, i: usize) {
        let now = self.now;
        match self.cfg.faults[i] {
            Fault::BDies { .. } => self.vms[B].alive = false,
            Fault::ADies { .. } => self.vms[A].alive = false,
            Fault::NonOwnerReplies { .. } => {
                self.control.flood_windows += 1;
                self.router.flood = Some((A, B));
                if let Some(peer) = &mut self.peer {
                    peer.flood = Some((A, B));
                }
            }
            Fault::Loss { .. } => {}
            Fault::ServerClosesIdle { .. } => {
                for shard in &mut self.vms[A].shards {
                    shard.app.close_idle_from(crate::app::server::KEEPALIVE_TIMEOUT);
                    shard.wake = Some(now);
                }
            }
            Fault::RouterRestart { .. } => {
                self.control.carried.push(*self.router.core.counters());
                self.control.restarts.push(now);
                self.router.restart(now);
                // Re-install from the store, as the manager does for a router that (re)starts.
                match (&self.control.stored, &self.control.outcome) {
                    (Some(entry), None) => {
                        if let Err(e) = self.router.core.add_entry(entry.clone(), now) {
                            // The entry was accepted before and only its state and split changed
                            // since, as the router reported them: a refusal is a bug to surface.
                            panic!("the restarted router refused the stored entry: {e}");
                        }
                        self.router.shadow_ports(X, A, B);
                    }
                    (_, Some((Outcome::Completed, ..))) => self.router.core.assign_address(X, VmRef(B as u32)),
                    _ => self.router.core.assign_address(X, VmRef(A as u32)),
                }
            }
        }
    }

    /// Takes the router's forecast and the connections it has on A, for the report to check
    /// against their ends.
    fn probe_forecast(&mut self) {
        let now = self.now;
        let forecast = self.router.core.forecast(X, now);
        let mut on_a = Vec::new();
        for (i, c) in self.clients.iter().enumerate() {
            for (port, id) in c.app.tcp_ports() {
                let key = client_flow(i, port);
                if self.router.core.flow(&key).is_some_and(|f| f.owner == Owner::Source) {
                    on_a.push(id);
                }
            }
        }
        on_a.sort_unstable();
        self.control.forecast_probe = Some(ForecastProbe { at: now, forecast, on_a });
    }

    /// Takes the routers' events into the store and the report, until a migration ended on one
    /// router has been ended on the other too.
    pub(crate) fn control_after_router(&mut self) {
        loop {
            let events = core::mem::take(self.router.core.sink_mut());
            let peer_events = self.peer.as_mut().map(|p| core::mem::take(p.core.sink_mut())).unwrap_or_default();
            if events.is_empty() && peer_events.is_empty() {
                *self.router.core.sink_mut() = events;
                return;
            }
            self.router_events(events);
            self.peer_events(peer_events);
        }
    }

    /// Counts what two routers behind ECMP do differently, from router `i`'s event.
    fn track_ecmp(&mut self, i: usize, event: &Event) {
        match event {
            Event::SplitChanged { change, at, .. } => {
                self.ecmp.split_changed(i, change.to_pct, *at);
                if matches!(change.reason, ipshadow_core::SplitReason::Decrease(_)) {
                    self.ecmp.decreases[i] += 1;
                }
            }
            Event::FlowStarted { origin: ipshadow_core::FlowOrigin::Inbound, .. } => self.ecmp.new_flow(),
            Event::OwnerLearned { .. } => self.ecmp.learned[i] += 1,
            Event::MigrationEnded { at, report, .. } => self.ecmp.ended[i] = Some((*at, *report)),
            _ => {}
        }
    }

    /// The second router's events: its migration's end is the manager's to spread (the address
    /// is B's, or A's, on every router), as a router's report ends it for all.
    fn peer_events(&mut self, events: Vec<Event>) {
        let now = self.now;
        for event in &events {
            self.track_ecmp(1, event);
            if let Event::MigrationEnded { outcome, .. } = event {
                if let Some(peer) = &mut self.peer {
                    peer.unshadow(X);
                }
                if *outcome == Outcome::Completed && self.router.core.entry(X).is_some() {
                    let _ = self.router.core.cut_over(X, now);
                }
            }
        }
    }

    /// The first router's events, which the manager records.
    fn router_events(&mut self, events: Vec<Event>) {
        let now = self.now;
        let mut reached_100 = false;
        for event in &events {
            if self.peer.is_some() {
                self.track_ecmp(0, event);
            }
            match event {
                Event::SplitChanged { change, at, .. } => {
                    if let Some(entry) = &mut self.control.stored {
                        entry.traffic_split_percentage = change.to_pct;
                    }
                    if matches!(change.reason, ipshadow_core::SplitReason::Decrease(_)) {
                        self.control.decreases += 1;
                    }
                    if change.to_pct >= 100.0 && self.control.split_100.is_none() {
                        self.control.split_100 = Some(*at);
                        // At a cut-over A's flows are gone with the entry: nothing to forecast.
                        reached_100 = change.reason != ipshadow_core::SplitReason::CutOver;
                    }
                }
                Event::StateChanged { to, .. } => {
                    if let Some(entry) = &mut self.control.stored {
                        entry.state = *to;
                        if *to == EntryState::RollingBack {
                            // A rollback has no deadline: the router cleared its own; a restarted
                            // router must not cut over to B at the old one.
                            entry.options.deadline = None;
                        }
                    }
                }
                Event::HandOff { .. } => self.control.handoffs += 1,
                Event::MigrationEnded { outcome, report, at, .. } => {
                    self.control.outcome = Some((*outcome, *report, *at));
                    self.router.unshadow(X);
                    if let Some(peer) = &mut self.peer
                        && *outcome == Outcome::Completed
                        && peer.core.entry(X).is_some()
                    {
                        let _ = peer.core.cut_over(X, now);
                    }
                }
                _ => {}
            }
        }
        let mut events = events;
        events.clear();
        *self.router.core.sink_mut() = events;
        if reached_100 {
            self.probe_forecast();
        }
    }
}

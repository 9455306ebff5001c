//! The simulated network and its event loop: a virtual clock that jumps to the next event.

use core::time::Duration;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::Ipv4Addr;

use ipshadow_core::{Instant, RouterConfig, VmId, VmRef};
use rand_core::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

use super::config::{Fault, ScenarioConfig};
use super::control::Control;
use super::ecmp::{self, Tracker};
use super::report::Sample;
use crate::app::client::{ClientApp, ConnKind, ConnPlan, Ended, Outcome};
use crate::host::{Host, HostConfig};
use crate::link::Link;
use crate::router::{Out, RouterNode};
use crate::vm::Vm;

/// The shadowed address.
pub(crate) const X: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
/// The router's address on the VM segments (the VMs' gateway).
pub(crate) const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const PROVIDER_MAC: [u8; 6] = [2, 0xee, 0, 0, 0, 1];
const VM_SIDE_MAC: [u8; 6] = [2, 0xee, 0, 0, 0, 2];
/// Ports of the VMs on the router.
pub(crate) const A: usize = 0;
pub(crate) const B: usize = 1;

/// Something scheduled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Action {
    OpenLongLived,
    /// A keep-alive client's new connection after an orderly close, for the rest of its plan.
    ReopenLongLived(Instant),
    Churn,
    Udp,
    StartMigration,
    LeaseBound,
    /// The second router behind ECMP hears that B's lease is bound (its watch is slower).
    PeerLeaseBound,
    Probe,
    Sample,
    Fault(usize),
    FaultEnd(usize),
    FinishRollback,
}

/// A client host, its application and its cable.
pub(crate) struct Client {
    pub host: Host,
    pub app: ClientApp,
    pub wake: Option<Instant>,
    pub up: Link,
    pub down: Link,
}

/// What the run knows of one connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnRecord {
    pub kind: ConnKind,
    pub client: u16,
    pub port: u16,
    pub started: Instant,
    pub outcome: Outcome,
    pub open_at_start: bool,
    /// A long-lived connection's planned end (a replacement after an orderly close keeps its
    /// predecessor's).
    pub planned_end: Option<Instant>,
    /// When it ended.
    pub ended_at: Option<Instant>,
    /// Exchanges it was to make (`u32::MAX`: until its planned end).
    pub exchanges: u32,
}

pub(crate) struct World {
    pub cfg: ScenarioConfig,
    pub now: Instant,
    pub clients: Vec<Client>,
    pub vms: [Vm; 2],
    pub vm_up: [Link; 2],
    pub vm_down: [Link; 2],
    pub router: RouterNode,
    /// The second router behind ECMP, with the same desired state.
    pub peer: Option<RouterNode>,
    /// What two routers behind ECMP cost.
    pub ecmp: Tracker,
    pub control: Control,
    agenda: BinaryHeap<Reverse<(Instant, u64, Action)>>,
    agenda_seq: u64,
    rng: Pcg64Mcg,
    next_client: usize,
    pub ledger: Vec<ConnRecord>,
    pub samples: Vec<Sample>,
    out: Vec<Out>,
    ended: Vec<Ended>,
}

pub(crate) fn client_ip(i: u16) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8)
}

fn client_mac(i: u16) -> [u8; 6] {
    let [hi, lo] = i.to_be_bytes();
    [2, 0xc1, 0, 0, hi, lo]
}

/// A seed for part `what` number `n` of the run.
fn sub_seed(seed: u64, what: u64, n: u64) -> u64 {
    let mut x = seed ^ what.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ n.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 31;
    x.wrapping_mul(0x94d0_49bb_1331_11eb)
}

impl World {
    pub fn new(mut cfg: ScenarioConfig) -> Self {
        let now = Instant::ZERO;
        let seed = cfg.seed;
        for fault in &cfg.faults {
            if let Fault::Loss { share } = fault {
                cfg.client_link.loss = *share;
            }
        }
        let clients = (0..cfg.clients)
            .map(|i| {
                let n = u64::from(i);
                let config = HostConfig {
                    mac: client_mac(i),
                    ip: client_ip(i),
                    prefix: 16,
                    gateway: None,
                    seed: sub_seed(seed, 1, n),
                };
                Client {
                    host: Host::new(config, now),
                    app: ClientApp::new(X, cfg.app_timeout, sub_seed(seed, 2, n)),
                    wake: None,
                    up: Link::new(cfg.client_link, sub_seed(seed, 3, n)),
                    down: Link::new(cfg.client_link, sub_seed(seed, 4, n)),
                }
            })
            .collect();
        // A replica runs the same stacks with the same seeds as A and sees the same frames.
        let replica = cfg.mode == ipshadow_core::Mode::Replica;
        let a_seed = sub_seed(seed, 5, 0);
        let b_seed = if replica { a_seed } else { sub_seed(seed, 5, 1) };
        let vm = |mac_tag: u8, seed| Vm::new([2, mac_tag, 0, 0, 0, 1], X, 24, GATEWAY, seed, cfg.vm_stacks, now);
        let vms = [vm(0x0a, a_seed), vm(0x0b, b_seed)];
        // The links of a replica pair behave alike, so A and B lose the same frames.
        let vm_link_seed = |side: u64| sub_seed(seed, 6, if replica { 0 } else { side });
        let vm_up = [Link::new(cfg.vm_link, vm_link_seed(0)), Link::new(cfg.vm_link, vm_link_seed(1))];
        let vm_down = [Link::new(cfg.vm_link, vm_link_seed(2) ^ 1), Link::new(cfg.vm_link, vm_link_seed(3) ^ 1)];
        // The product keys the flow table's hash at random; a run must repeat for its seed (slot
        // order decides evictions and the order flows expire in), so the simulator fixes the key.
        let router_config =
            RouterConfig { max_flows: 1 << 16, hash_key: Some(sub_seed(seed, 8, 0)), ..RouterConfig::default() };
        let ports = vec![(VmId::from("vm-a"), vms[A].mac), (VmId::from("vm-b"), vms[B].mac)];
        // Routers behind ECMP share their MACs (one virtual MAC each side, as a group's would),
        // so a client or a VM sees the same next hop whichever router a frame crosses.
        let new_router = |config: RouterConfig| {
            let mut router = RouterNode::new(config, PROVIDER_MAC, VM_SIDE_MAC, GATEWAY, ports.clone(), now);
            router.core.assign_address(X, VmRef(A as u32));
            if replica {
                router.mirror = Some((A, B));
            }
            router
        };
        let peer = cfg
            .ecmp
            .map(|_| new_router(RouterConfig { hash_key: Some(sub_seed(seed, 8, 1)), ..router_config.clone() }));
        let router = new_router(router_config);
        let mut world = Self {
            control: Control::new(),
            rng: Pcg64Mcg::seed_from_u64(sub_seed(seed, 7, 0)),
            cfg,
            now,
            clients,
            vms,
            vm_up,
            vm_down,
            router,
            peer,
            ecmp: Tracker::default(),
            agenda: BinaryHeap::new(),
            agenda_seq: 0,
            next_client: 0,
            ledger: Vec::new(),
            samples: Vec::new(),
            out: Vec::new(),
            ended: Vec::new(),
        };
        world.plan();
        world
    }

    fn plan(&mut self) {
        let start = Instant::ZERO;
        let n = self.cfg.long_lived;
        for i in 0..n {
            let at = start + self.cfg.long_lived_ramp_up.mul_f64(f64::from(i) / f64::from(n.max(1)));
            self.schedule(at, Action::OpenLongLived);
        }
        if self.cfg.churn_per_sec > 0 {
            self.schedule(start, Action::Churn);
        }
        if self.cfg.udp_per_sec > 0 {
            self.schedule(start, Action::Udp);
        }
        self.schedule(start + self.cfg.migration_start, Action::StartMigration);
        self.schedule(start + Duration::from_secs(1), Action::Probe);
        self.schedule(start, Action::Sample);
        for (i, fault) in self.cfg.faults.clone().iter().enumerate() {
            let at = |s: f64| start + Duration::from_secs_f64(s);
            match *fault {
                Fault::BDies { at_s } | Fault::ADies { at_s } | Fault::RouterRestart { at_s } => {
                    self.schedule(at(at_s), Action::Fault(i));
                }
                Fault::NonOwnerReplies { from_s, to_s } => {
                    self.schedule(at(from_s), Action::Fault(i));
                    self.schedule(at(to_s), Action::FaultEnd(i));
                }
                Fault::ServerClosesIdle { at_s } => self.schedule(at(at_s), Action::Fault(i)),
                Fault::Loss { .. } => {}
            }
        }
    }

    pub(crate) fn schedule(&mut self, at: Instant, action: Action) {
        self.agenda_seq += 1;
        self.agenda.push(Reverse((at, self.agenda_seq, action)));
    }

    /// Runs to the end of the scenario.
    pub fn run(&mut self) {
        let tick = self.cfg.tick.as_micros().max(1) as u64;
        while self.now <= self.end() {
            self.step();
            let next = self.next_event().unwrap_or(self.end());
            let next = next.max(self.now + Duration::from_micros(1));
            self.now = Instant::from_micros(next.as_micros().div_ceil(tick) * tick);
        }
        self.now = self.end();
    }

    /// The end of the run: `duration`, or `end_after_migration` after the migration ended
    /// when that is sooner.
    fn end(&self) -> Instant {
        let end = Instant::ZERO + self.cfg.duration;
        match (self.cfg.end_after_migration, self.control.ended_at()) {
            (Some(linger), Some(ended)) => end.min(ended + linger),
            _ => end,
        }
    }

    fn step(&mut self) {
        let now = self.now;
        while let Some(Reverse((at, _, action))) = self.agenda.peek().copied() {
            if at > now {
                break;
            }
            self.agenda.pop();
            self.act(action);
        }
        let ecmp_seed = sub_seed(self.cfg.seed, 9, 0);
        for i in 0..self.clients.len() {
            while let Some(frame) = self.clients[i].up.receive(now) {
                match (&mut self.peer, ecmp::hash_router(&frame, true, ecmp_seed)) {
                    (Some(peer), Some(1)) => peer.from_provider(frame, now, &mut self.out),
                    (Some(peer), None) => {
                        peer.from_provider(frame.clone(), now, &mut self.out);
                        self.router.from_provider(frame, now, &mut self.out);
                    }
                    _ => self.router.from_provider(frame, now, &mut self.out),
                }
            }
        }
        for v in [A, B] {
            while let Some(frame) = self.vm_up[v].receive(now) {
                let replies = self.cfg.ecmp.map_or(ecmp::ReplyPath::Symmetric, |e| e.replies);
                match (&mut self.peer, ecmp::reply_router(&frame, ecmp_seed, replies)) {
                    (Some(peer), Some(1)) => peer.from_vm(v, frame, now, &mut self.out),
                    (Some(peer), None) => {
                        peer.from_vm(v, frame.clone(), now, &mut self.out);
                        self.router.from_vm(v, frame, now, &mut self.out);
                    }
                    _ => self.router.from_vm(v, frame, now, &mut self.out),
                }
            }
        }
        self.router.poll(now, &mut self.out);
        if let Some(peer) = &mut self.peer {
            peer.poll(now, &mut self.out);
        }
        self.send_router_output();
        self.control_after_router();
        for c in &mut self.clients {
            while let Some(frame) = c.down.receive(now) {
                c.host.device.rx.push_back(frame);
            }
        }
        for v in [A, B] {
            while let Some(frame) = self.vm_down[v].receive(now) {
                self.vms[v].deliver(frame);
            }
        }
        self.run_hosts();
        self.record_ended();
    }

    fn run_hosts(&mut self) {
        let now = self.now;
        for c in &mut self.clients {
            if c.host.device.rx.is_empty() && c.wake.is_none_or(|w| w > now) {
                continue;
            }
            c.host.poll(now);
            if c.app.run(&mut c.host, now, &mut self.ended) {
                c.host.poll(now);
            }
            while let Some(frame) = c.host.device.tx.pop_front() {
                c.up.send(frame, now);
            }
            c.wake = [c.host.poll_at(now), c.app.next_wake()].into_iter().flatten().min();
        }
        for v in [A, B] {
            let vm = &mut self.vms[v];
            if !vm.alive {
                continue;
            }
            for shard in &mut vm.shards {
                if shard.host.device.rx.is_empty() && shard.wake.is_none_or(|w| w > now) {
                    continue;
                }
                shard.host.poll(now);
                if shard.app.run(&mut shard.host, now) {
                    shard.host.poll(now);
                }
                while let Some(frame) = shard.host.device.tx.pop_front() {
                    self.vm_up[v].send(frame, now);
                }
                shard.wake = [shard.host.poll_at(now), shard.app.next_wake(&shard.host)].into_iter().flatten().min();
            }
        }
    }

    pub(crate) fn send_router_output(&mut self) {
        let now = self.now;
        for out in self.out.drain(..) {
            match out {
                // A router behind ECMP asks where a client is before it sends it a reply whose
                // request crossed the other router. (One router always knows its clients from
                // their requests; its broadcasts stay undelivered, as before.)
                Out::Provider(frame) if self.peer.is_some() && ecmp::arp_target(&frame).is_some() => {
                    let Some(ip) = ecmp::arp_target(&frame) else { continue };
                    let [_, _, hi, lo] = ip.octets();
                    let index = usize::from(hi.wrapping_sub(1)) * 250 + usize::from(lo.wrapping_sub(1));
                    if let Some(c) = self.clients.get_mut(index)
                        && client_ip(index as u16) == ip
                    {
                        c.down.send(frame, now);
                    }
                }
                Out::Provider(frame) => {
                    let [.., hi, lo] = [frame[0], frame[1], frame[2], frame[3], frame[4], frame[5]];
                    let index = usize::from(u16::from_be_bytes([hi, lo]));
                    if frame[0..4] == [2, 0xc1, 0, 0]
                        && let Some(c) = self.clients.get_mut(index)
                    {
                        c.down.send(frame, now);
                    }
                }
                Out::Vm(port, frame) => self.vm_down[port].send(frame, now),
            }
        }
    }

    fn next_event(&self) -> Option<Instant> {
        let mut next = self.agenda.peek().map(|Reverse((t, ..))| *t);
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        consider(self.router.core.poll_at());
        consider(self.peer.as_ref().and_then(|p| p.core.poll_at()));
        for c in &self.clients {
            consider(c.wake);
            consider(c.up.next_arrival());
            consider(c.down.next_arrival());
        }
        for v in [A, B] {
            consider(self.vm_up[v].next_arrival());
            consider(self.vm_down[v].next_arrival());
            if self.vms[v].alive {
                for shard in &self.vms[v].shards {
                    consider(shard.wake);
                }
            }
        }
        next
    }

    fn act(&mut self, action: Action) {
        let now = self.now;
        let stop = Instant::ZERO + self.cfg.workload_stop;
        match action {
            Action::OpenLongLived if now < stop => self.open_long_lived(),
            Action::OpenLongLived => {}
            Action::ReopenLongLived(end) if now < end => self.open_long_lived_until(end),
            Action::ReopenLongLived(_) => {}
            Action::Churn => {
                if now < stop {
                    let exchanges = 1 + (self.rng.next_u64() % 3) as u32;
                    self.open(ConnKind::Churn, exchanges, Duration::ZERO);
                    let gap = Duration::from_secs(1) / self.cfg.churn_per_sec;
                    self.schedule(now + gap, Action::Churn);
                }
            }
            Action::Udp => {
                if now < stop {
                    self.open(ConnKind::Udp, 5, Duration::ZERO);
                    let gap = Duration::from_secs(1) / self.cfg.udp_per_sec;
                    self.schedule(now + gap, Action::Udp);
                }
            }
            Action::Sample => {
                self.sample();
                self.schedule(now + Duration::from_secs(1), Action::Sample);
            }
            other => self.control_act(other),
        }
    }

    fn open_long_lived(&mut self) {
        let lifetime = self.cfg.lifetime.sample(&mut self.rng);
        self.open_long_lived_until(self.now + lifetime);
    }

    /// A long-lived connection that exchanges messages until `end` (at least one exchange).
    fn open_long_lived_until(&mut self, end: Instant) {
        self.open_planned(ConnKind::LongLived, u32::MAX, self.cfg.interval, Some(end));
    }

    fn open(&mut self, kind: ConnKind, exchanges: u32, interval: Duration) {
        self.open_planned(kind, exchanges, interval, None);
    }

    fn open_planned(&mut self, kind: ConnKind, exchanges: u32, interval: Duration, ends_at: Option<Instant>) {
        if self.clients.is_empty() {
            return;
        }
        let index = self.next_client;
        self.next_client = (self.next_client + 1) % self.clients.len();
        let id = self.ledger.len() as u32;
        let c = &mut self.clients[index];
        let port = c.app.start(&mut c.host, ConnPlan { id, kind, exchanges, interval, ends_at }, self.now);
        c.wake = Some(self.now);
        self.ledger.push(ConnRecord {
            kind,
            client: index as u16,
            port,
            started: self.now,
            outcome: Outcome::Open,
            open_at_start: false,
            planned_end: ends_at,
            ended_at: None,
            exchanges,
        });
    }

    fn record_ended(&mut self) {
        let stop = Instant::ZERO + self.cfg.workload_stop;
        let ended = core::mem::take(&mut self.ended);
        for e in &ended {
            let record = &mut self.ledger[e.id as usize];
            record.outcome = e.outcome;
            record.ended_at = Some(e.at);
            let (kind, planned_end) = (record.kind, record.planned_end);
            if e.outcome == Outcome::ClosedGracefully {
                // A keep-alive client reconnects for the rest of its plan, to whichever VM the
                // split now sends new flows: nothing is lost. A long-lived one (a pool) does so
                // when it next needs the connection, within its exchange interval, not all at
                // the same instant (the VM's listen backlog is a handful of sockets).
                match (kind, planned_end) {
                    (ConnKind::LongLived, Some(end)) if self.now < end => {
                        let interval_ms = u64::try_from(self.cfg.interval.as_millis()).unwrap_or(1000).max(1);
                        let at = self.now + Duration::from_millis(self.rng.next_u64() % interval_ms);
                        self.schedule(at.min(end), Action::ReopenLongLived(end));
                    }
                    (ConnKind::Churn, _) => {
                        let left = self.ledger[e.id as usize].exchanges.saturating_sub(e.exchanges);
                        if left > 0 {
                            self.open(ConnKind::Churn, left, Duration::ZERO);
                        }
                    }
                    _ => {}
                }
                continue;
            }
            if kind == ConnKind::LongLived && self.now < stop {
                if e.outcome == Outcome::Completed {
                    self.open_long_lived();
                } else {
                    // A client whose connection broke reconnects after a pause, as real clients
                    // back off; a thousand at the same instant would overflow any listen backlog.
                    let pause = Duration::from_millis(1000 + self.rng.next_u64() % 2000);
                    self.schedule(self.now + pause, Action::OpenLongLived);
                }
            }
        }
        self.ended = ended;
        self.ended.clear();
    }

    fn sample(&mut self) {
        if let Some(peer) = &self.peer {
            for (i, c) in self.clients.iter().enumerate() {
                for (port, _) in c.app.tcp_ports() {
                    let key = client_flow(i, port);
                    let owners = [self.router.core.flow(&key).map(|f| f.owner), peer.core.flow(&key).map(|f| f.owner)];
                    self.ecmp.owners(key, owners);
                }
            }
        }
        let (on_a, on_b) = self.live_by_side();
        self.samples.push(Sample {
            t_s: self.now.as_micros() as f64 / 1e6,
            split_pct: self.control.split_pct(),
            live_on_a: on_a,
            live_on_b: on_b,
        });
    }

    /// Live TCP connections on A and on B. Independent mode counts each VM's established server
    /// sockets (a dead VM has none). In replica mode both VMs hold every connection, so each
    /// open client connection counts for the VM whose replies reach the client (its primary).
    fn live_by_side(&self) -> (u64, u64) {
        if self.cfg.mode == ipshadow_core::Mode::Independent {
            let count = |v: usize| if self.vms[v].alive { self.vms[v].established() as u64 } else { 0 };
            return (count(A), count(B));
        }
        let mut sides = (0, 0);
        let holder = self.router.core.address_holder(X);
        for (i, c) in self.clients.iter().enumerate() {
            for (port, _) in c.app.tcp_ports() {
                let key = client_flow(i, port);
                let on_b = match self.router.core.flow(&key) {
                    Some(flow) => flow.owner == ipshadow_core::Owner::Destination,
                    None => holder == Some(VmRef(B as u32)),
                };
                if on_b {
                    sides.1 += 1;
                } else {
                    sides.0 += 1;
                }
            }
        }
        sides
    }
}

/// The flow key of client `i`'s TCP connection from `port` to X's service.
pub(crate) fn client_flow(i: usize, port: u16) -> ipshadow_core::FlowKey {
    ipshadow_core::FlowKey {
        client_ip: client_ip(i as u16),
        client_port: port,
        shadow_ip: X,
        shadow_port: crate::app::proto::TCP_PORT,
        protocol: 6,
    }
}

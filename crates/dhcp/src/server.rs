//! The server's logic, sans-IO: a datagram and `now` (unix seconds) in; a reply, the lease
//! changes to persist before the reply may go out, and lease events out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode, UnknownOption};

pub use ipshadow_contracts::dhcp::{DhcpCounters, LeaseEvent, LeaseEventKind};

use crate::config::{ConfigError, DhcpConfig, SubnetConfig};
use crate::lease::{ClientKey, Lease, LeaseChange, LeaseTable, Role};
use crate::plan::{MigrationPlan, PlanState, shadow_option_payload};
use crate::plans::Plans;
use crate::wire::{self, Request};

/// How long an offered address is held for the client that was offered it, seconds.
const OFFER_HOLD_SECS: u64 = 60;

/// Where a reply goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyTo {
    /// To the relay agent (giaddr), server port 67.
    Relay(Ipv4Addr),
    /// To the client's address, client port 68.
    Unicast(Ipv4Addr),
    /// To 255.255.255.255, client port 68, on the receiving interface. Used for clients without
    /// an address too: this server does not write ARP entries to unicast to an unconfigured
    /// client, and every client accepts a broadcast reply.
    Broadcast,
}

/// An encoded reply and its destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The UDP payload.
    pub bytes: Vec<u8>,
    /// Where it goes.
    pub to: ReplyTo,
}

/// What handling one datagram produced. The reply may be sent only once `changes` are durable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Handled {
    /// The answer, if any.
    pub reply: Option<Reply>,
    /// Lease-table changes to persist first.
    pub changes: Vec<LeaseChange>,
}

/// Why a plan was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A VM the inventory does not know.
    #[error("VM {0} is not in the inventory")]
    UnknownVm(String),
    /// The address is not the source's.
    #[error("{ip} is not reserved for {vm}")]
    NotSourceAddress {
        /// The address.
        ip: Ipv4Addr,
        /// The source VM.
        vm: String,
    },
    /// Another migration of the address is active.
    #[error("{0} is already migrating")]
    AlreadyMigrating(Ipv4Addr),
    /// A and B are the same VM.
    #[error("source and destination are the same VM")]
    SameVm,
    /// A plan with that id exists.
    #[error("migration {0} exists already")]
    DuplicateId(u64),
    /// A VM is already part of an active migration.
    #[error("VM {0} is already part of an active migration")]
    VmBusy(String),
    /// The deadline does not fit the shadowing option (unix seconds, 32 bits).
    #[error("deadline {0} is out of range")]
    DeadlineOutOfRange(u64),
    /// No plan with that id.
    #[error("no migration {0}")]
    NoSuchPlan(u64),
    /// The plan already ended.
    #[error("migration {0} is not active")]
    NotActive(u64),
}

/// What the server decided a client should hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Assignment {
    ip: Ipv4Addr,
    lease_secs: u32,
    migration: Option<(u64, Role, u64)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decision {
    Assign(Assignment),
    /// A known client that may hold no address now: NAK what it asks for.
    Refuse,
    /// A client the inventory does not know and no pool serves.
    Unknown,
}

/// The DHCP server.
pub struct DhcpServer {
    config: DhcpConfig,
    /// Reservation index by each client key a VM may present.
    reservations: BTreeMap<ClientKey, usize>,
    vms: BTreeMap<String, usize>,
    reserved_ips: BTreeSet<Ipv4Addr>,
    /// The interfaces VMs are bound to (their segments): a relayed message arriving on one of
    /// them is a VM's forgery, not a relay agent's.
    segment_interfaces: BTreeSet<String>,
    leases: LeaseTable,
    offers: BTreeMap<ClientKey, (Ipv4Addr, u64)>,
    offered_ips: BTreeMap<Ipv4Addr, ClientKey>,
    declined: BTreeMap<Ipv4Addr, u64>,
    plans: Plans,
    pool_cursor: Vec<u32>,
    /// A full scan of the subnet's pool found no free address, and nothing was freed since.
    pool_exhausted: Vec<bool>,
    events: Vec<LeaseEvent>,
    counters: DhcpCounters,
}

impl DhcpServer {
    /// A server with no leases.
    pub fn new(config: DhcpConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut reservations = BTreeMap::new();
        let mut vms = BTreeMap::new();
        let mut reserved_ips = BTreeSet::new();
        let segment_interfaces = config.reservations.iter().filter_map(|r| r.interface.clone()).collect();
        for (i, r) in config.reservations.iter().enumerate() {
            for key in r.keys()? {
                reservations.insert(key, i);
            }
            vms.insert(r.vm.clone(), i);
            if let Some(ip) = r.ip {
                reserved_ips.insert(ip);
            }
        }
        let pool_cursor = vec![0; config.subnets.len()];
        let pool_exhausted = vec![false; config.subnets.len()];
        Ok(Self {
            config,
            reservations,
            vms,
            reserved_ips,
            segment_interfaces,
            leases: LeaseTable::default(),
            offers: BTreeMap::new(),
            offered_ips: BTreeMap::new(),
            declined: BTreeMap::new(),
            plans: Plans::default(),
            pool_cursor,
            pool_exhausted,
            events: Vec::new(),
            counters: DhcpCounters::default(),
        })
    }

    /// Loads leases from the store at start. Returns the changes that bring the store in line:
    /// leases that ended while the server was down, pool leases on addresses reserved since,
    /// and a client's older lease superseded by a newer one are deleted.
    pub fn restore(&mut self, leases: impl IntoIterator<Item = Lease>, now: u64) -> Vec<LeaseChange> {
        let mut changes = Vec::new();
        let mut leases: Vec<Lease> = leases.into_iter().collect();
        leases.sort_by_key(|l| l.expires);
        for lease in leases {
            let reserved_for_other = self.reserved_ips.contains(&lease.ip)
                && self
                    .reservations
                    .get(&lease.client)
                    .is_none_or(|&v| self.config.reservations[v].ip != Some(lease.ip))
                && lease.migration.is_none();
            if lease.expires <= now || reserved_for_other {
                changes.push(LeaseChange::Delete { ip: lease.ip, client: lease.client });
            } else {
                // `put` deletes the client's older lease on another address, if any.
                changes.extend(self.leases.put(lease).into_iter().filter(|c| matches!(c, LeaseChange::Delete { .. })));
            }
        }
        changes
    }

    /// Takes a new configuration (the inventory's reservations changed) without losing state:
    /// leases, declined addresses, plans, counters and pending events carry over; leases the new
    /// reservations no longer allow are ended as at [`DhcpServer::restore`]. Open offers are
    /// dropped (their clients ask again). Returns the changes to persist; on error nothing
    /// changed.
    pub fn reconfigure(&mut self, config: DhcpConfig, now: u64) -> Result<Vec<LeaseChange>, ConfigError> {
        let mut next = Self::new(config)?;
        let leases: Vec<Lease> = self.leases.iter().cloned().collect();
        next.plans = core::mem::take(&mut self.plans);
        let changes = next.restore(leases, now);
        next.declined = core::mem::take(&mut self.declined);
        next.events = core::mem::take(&mut self.events);
        next.counters = core::mem::take(&mut self.counters);
        *self = next;
        Ok(changes)
    }

    /// The configuration in use.
    pub fn config(&self) -> &DhcpConfig {
        &self.config
    }

    /// The lease table.
    pub fn leases(&self) -> &LeaseTable {
        &self.leases
    }

    /// Counters.
    pub fn counters(&self) -> &DhcpCounters {
        &self.counters
    }

    /// Takes the lease events so far.
    pub fn take_events(&mut self) -> Vec<LeaseEvent> {
        core::mem::take(&mut self.events)
    }

    /// A migration plan.
    pub fn plan(&self, id: u64) -> Option<&MigrationPlan> {
        self.plans.get(id)
    }

    /// Starts leasing `plan.ip` to both VMs.
    pub fn add_plan(&mut self, plan: MigrationPlan) -> Result<(), PlanError> {
        if plan.source == plan.destination {
            return Err(PlanError::SameVm);
        }
        let source = *self.vms.get(&plan.source).ok_or_else(|| PlanError::UnknownVm(plan.source.clone()))?;
        self.vms.get(&plan.destination).ok_or_else(|| PlanError::UnknownVm(plan.destination.clone()))?;
        if self.config.reservations[source].ip != Some(plan.ip) {
            return Err(PlanError::NotSourceAddress { ip: plan.ip, vm: plan.source.clone() });
        }
        if self.plans.active_of_ip(plan.ip).next().is_some() {
            return Err(PlanError::AlreadyMigrating(plan.ip));
        }
        if self.plans.contains(plan.id) {
            return Err(PlanError::DuplicateId(plan.id));
        }
        for vm in [&plan.source, &plan.destination] {
            if self.plans.vm_busy(vm) {
                return Err(PlanError::VmBusy(vm.clone()));
            }
        }
        if u32::try_from(plan.deadline).is_err() {
            return Err(PlanError::DeadlineOutOfRange(plan.deadline));
        }
        self.plans.insert(plan);
        Ok(())
    }

    /// Every plan, by id.
    pub fn plans(&self) -> impl Iterator<Item = &MigrationPlan> {
        self.plans.values()
    }

    /// The plans with their indexes (by VM, by address): what each request looks its client's
    /// plan up in.
    pub fn indexed_plans(&self) -> &Plans {
        &self.plans
    }

    /// Puts back a plan from the store as it was (any state), replacing one with the same id.
    pub fn restore_plan(&mut self, plan: MigrationPlan) {
        self.plans.insert(plan);
    }

    /// Ends a plan: `Completed` (X is B's), `RolledBack` or `Failed` (X stays A's).
    pub fn end_plan(&mut self, id: u64, state: PlanState) -> Result<(), PlanError> {
        let plan = self.plans.get(id).ok_or(PlanError::NoSuchPlan(id))?;
        if !plan.is_active() {
            return Err(PlanError::NotActive(id));
        }
        self.plans.modify(id, |plan| plan.state = state);
        Ok(())
    }

    /// Moves a plan's deadline (A's lease end): later when the manager extends it for A's
    /// drain, earlier when the migration finished early. A's next renewal gets a lease to the
    /// new deadline (or, once the plan is completed, a DHCPNAK).
    pub fn move_deadline(&mut self, id: u64, deadline: u64) -> Result<(), PlanError> {
        if u32::try_from(deadline).is_err() {
            return Err(PlanError::DeadlineOutOfRange(deadline));
        }
        self.plans.modify(id, |plan| plan.deadline = deadline).ok_or(PlanError::NoSuchPlan(id))
    }

    /// Forgets an ended plan. A completed plan's address becomes the destination's reservation
    /// (and no longer the source's), so B keeps it and A stays refused.
    pub fn remove_plan(&mut self, id: u64) -> Option<MigrationPlan> {
        let plan = self.plans.remove(id)?;
        if plan.state == PlanState::Completed {
            for r in &mut self.config.reservations {
                if r.vm == plan.source && r.ip == Some(plan.ip) {
                    r.ip = None;
                } else if r.vm == plan.destination {
                    r.ip = Some(plan.ip);
                }
            }
        }
        Some(plan)
    }

    /// Ends leases, offers and declines whose time is up; returns the changes to persist.
    pub fn expire(&mut self, now: u64) -> Vec<LeaseChange> {
        let mut changes = Vec::new();
        for lease in self.leases.expire(now) {
            self.event(LeaseEventKind::Expired, &lease.client, lease.ip, lease.vm.clone(), lease.migration, now);
            changes.push(LeaseChange::Delete { ip: lease.ip, client: lease.client });
        }
        let stale: Vec<ClientKey> =
            self.offers.iter().filter(|(_, (_, t))| *t <= now).map(|(k, _)| k.clone()).collect();
        for key in stale {
            self.forget_offer(&key);
        }
        self.declined.retain(|_, until| *until > now);
        if !changes.is_empty() {
            self.pool_freed();
        }
        changes
    }

    /// Handles one datagram received on port 67, on an interface the caller does not know: a
    /// message naming a VM bound to an interface is dropped (see [`DhcpServer::handle_on`]).
    pub fn handle(&mut self, datagram: &[u8], now: u64) -> Handled {
        self.handle_on(datagram, None, now)
    }

    /// Handles one datagram received on port 67 on `interface` (its name, as the kernel
    /// reported the arrival; `None` when it did not).
    pub fn handle_on(&mut self, datagram: &[u8], interface: Option<&str>, now: u64) -> Handled {
        self.counters.received += 1;
        let request = match wire::decode(datagram) {
            Ok(r) => r,
            Err(e) => {
                self.counters.count_drop(e.name());
                return Handled::default();
            }
        };
        let client = client_key(&request.message);
        if self.off_segment(&client, &request.message, interface) {
            self.counters.wrong_segment_dropped += 1;
            return Handled::default();
        }
        let vm = self.vm_of(&client, &request.message);
        match request.message_type {
            MessageType::Discover => self.discover(&request, &client, vm, now),
            MessageType::Request => self.request(&request, &client, vm, now),
            MessageType::Decline => self.decline(&request, &client, vm, now),
            MessageType::Release => self.release(&request, &client, now),
            MessageType::Inform => self.inform(&request, &client, vm),
            _ => {
                self.counters.count_drop("not_a_client_message");
                Handled::default()
            }
        }
    }

    fn vm_of(&self, client: &ClientKey, message: &Message) -> Option<usize> {
        self.reservations.get(client).copied().or_else(|| {
            // A client that sends a client identifier may still be reserved by its MAC.
            let mac: [u8; 6] = message.chaddr().get(..6)?.try_into().ok()?;
            (message.hlen() == 6).then_some(())?;
            self.reservations.get(&ClientKey::Mac(mac)).copied()
        })
    }

    /// DHCP snooping (what RFC 7513's SAVI-DHCP binds to a binding anchor, the attachment
    /// point): whether the message names a VM bound to an interface other than `interface`. A
    /// message names every VM it could act for: the one reserved for its client key, the one
    /// reserved for its chaddr, and the one holding a lease under its client key. All three,
    /// since a forged message may mix one VM's chaddr with another's client identifier, and the
    /// lease it then releases is found by the client key alone.
    ///
    /// A message relayed by one of a subnet's configured relay agents, arriving on an interface
    /// that is no VM's segment, is not checked here: it came in on the relay's link, so its
    /// arrival says nothing of the VM's; binding it to the attachment point is the relay
    /// agent's job (snooping on the switch or router that relays, as RFC 7513 places it).
    fn off_segment(&self, client: &ClientKey, message: &Message, interface: Option<&str>) -> bool {
        let giaddr = message.giaddr();
        let relayed = !giaddr.is_unspecified()
            && self.config.subnets.iter().any(|s| s.relays.contains(&giaddr))
            && interface.is_some_and(|i| !self.segment_interfaces.contains(i));
        if relayed {
            return false;
        }
        let by_chaddr = <[u8; 6]>::try_from(message.chaddr().get(..6).unwrap_or_default())
            .ok()
            .filter(|_| message.hlen() == 6)
            .and_then(|mac| self.reservations.get(&ClientKey::Mac(mac)).copied());
        let by_lease = self.leases.of(client).and_then(|l| l.vm.as_deref()).and_then(|vm| self.vms.get(vm).copied());
        [self.reservations.get(client).copied(), by_chaddr, by_lease]
            .into_iter()
            .flatten()
            .filter_map(|v| self.config.reservations.get(v)?.interface.as_deref())
            .any(|bound| interface != Some(bound))
    }

    fn subnet_for(&self, ip: Ipv4Addr) -> Option<usize> {
        self.config.subnets.iter().position(|s| s.contains(ip))
    }

    fn normal_lease(&self, ip: Ipv4Addr) -> u32 {
        // Every assigned address lies in a configured subnet (validated); the fallback is moot.
        self.subnet_for(ip).map_or(self.config.subnets[0].lease_secs, |i| self.config.subnets[i].lease_secs)
    }

    /// What `client` (VM `vm`) should hold now. `allocate`: a DISCOVER may be given a new pool
    /// address; a REQUEST only confirms one the client holds or was offered.
    fn decide(
        &mut self,
        client: &ClientKey,
        vm: Option<usize>,
        message: &Message,
        now: u64,
        allocate: bool,
    ) -> Decision {
        if let Some(v) = vm {
            let name = &self.config.reservations[v].vm;
            let own = self.config.reservations[v].ip;
            // The plan with the highest id naming the VM (the latest migration) decides.
            if let Some(plan) = self.plans.latest_of_vm(name) {
                let normal = self.normal_lease(plan.ip);
                let assign = |ip, lease_secs, migration| Decision::Assign(Assignment { ip, lease_secs, migration });
                let own_other =
                    || own.filter(|ip| *ip != plan.ip).map_or(Decision::Refuse, |ip| assign(ip, normal, None));
                let as_destination = &plan.destination == name;
                return match (&plan.state, as_destination) {
                    (PlanState::Active, true) => {
                        let secs = self.config.shadow_lease_secs.min(normal);
                        assign(plan.ip, secs, Some((plan.id, Role::Destination, plan.deadline)))
                    }
                    (PlanState::Completed, true) => assign(plan.ip, normal, None),
                    (_, true) => own_other(),
                    (PlanState::Active, false) if now < plan.deadline => {
                        let left = u32::try_from(plan.deadline - now).unwrap_or(u32::MAX);
                        assign(plan.ip, normal.min(left), Some((plan.id, Role::Source, plan.deadline)))
                    }
                    (PlanState::Active | PlanState::Completed, false) => own_other(),
                    (_, false) => assign(plan.ip, normal, None),
                };
            }
            if let Some(ip) = own {
                return Decision::Assign(Assignment { ip, lease_secs: self.normal_lease(ip), migration: None });
            }
        }
        match self.pool_address(client, message, now, allocate) {
            Some(ip) => Decision::Assign(Assignment { ip, lease_secs: self.normal_lease(ip), migration: None }),
            None if vm.is_some() => Decision::Refuse,
            None => Decision::Unknown,
        }
    }

    /// The pool address of a client the inventory does not reserve one for: the one it holds or
    /// was offered, else (when `allocate`) the next free one. The subnet is the relay's, else the
    /// one of the client's current address, else the first (the server's own link).
    fn pool_address(&mut self, client: &ClientKey, message: &Message, now: u64, allocate: bool) -> Option<Ipv4Addr> {
        let (giaddr, ciaddr) = (message.giaddr(), message.ciaddr());
        let subnet = if !giaddr.is_unspecified() {
            self.config.subnets.iter().position(|s| s.relays.contains(&giaddr)).or_else(|| self.subnet_for(giaddr))?
        } else if !ciaddr.is_unspecified() {
            self.subnet_for(ciaddr)?
        } else {
            0
        };
        let pool = self.config.subnets.get(subnet)?.pool?;
        let in_pool = |ip: Ipv4Addr| (u32::from(pool.start)..=u32::from(pool.end)).contains(&u32::from(ip));
        if let Some(lease) = self.leases.of(client).filter(|l| in_pool(l.ip)) {
            return Some(lease.ip);
        }
        if let Some((ip, _)) = self.offers.get(client).filter(|(ip, _)| in_pool(*ip)) {
            return Some(*ip);
        }
        if !allocate {
            return None;
        }
        if self.pool_exhausted[subnet] {
            // Nothing was freed since the last full scan: do not scan again for every DISCOVER.
            self.counters.pool_exhausted += 1;
            return None;
        }
        let size = u32::from(pool.end) - u32::from(pool.start) + 1;
        for _ in 0..size {
            let offset = self.pool_cursor[subnet] % size;
            self.pool_cursor[subnet] = (offset + 1) % size;
            let ip = Ipv4Addr::from(u32::from(pool.start) + offset);
            let free = !self.reserved_ips.contains(&ip)
                && self.leases.on(ip).is_empty()
                && !self.offered_ips.contains_key(&ip)
                && self.declined.get(&ip).is_none_or(|until| *until <= now);
            if free {
                return Some(ip);
            }
        }
        self.pool_exhausted[subnet] = true;
        self.counters.pool_exhausted += 1;
        None
    }

    /// Something was freed: the pools may have room again.
    fn pool_freed(&mut self) {
        self.pool_exhausted.iter_mut().for_each(|e| *e = false);
    }

    fn discover(&mut self, req: &Request, client: &ClientKey, vm: Option<usize>, now: u64) -> Handled {
        let Decision::Assign(a) = self.decide(client, vm, &req.message, now, true) else {
            self.counters.unknown_clients += u64::from(vm.is_none());
            return Handled::default();
        };
        self.forget_offer(client);
        self.offers.insert(client.clone(), (a.ip, now.saturating_add(OFFER_HOLD_SECS)));
        self.offered_ips.insert(a.ip, client.clone());
        self.counters.offers += 1;
        let reply = self.answer(req, client, MessageType::Offer, Some(&a));
        Handled { reply, changes: Vec::new() }
    }

    fn request(&mut self, req: &Request, client: &ClientKey, vm: Option<usize>, now: u64) -> Handled {
        let m = &req.message;
        let server_id = match m.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
            _ => None,
        };
        if server_id.is_some_and(|id| id != self.config.server_id) {
            // SELECTING another server's offer: ours is free again.
            self.counters.other_server += 1;
            self.forget_offer(client);
            return Handled::default();
        }
        let requested = match m.opts().get(OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
            _ => None,
        };
        let Some(asked) = requested.or((!m.ciaddr().is_unspecified()).then_some(m.ciaddr())) else {
            self.counters.count_drop("request_without_address");
            return Handled::default();
        };
        match self.decide(client, vm, m, now, false) {
            Decision::Assign(a) if a.ip == asked => self.bind(req, client, vm, &a, now),
            Decision::Unknown => {
                self.counters.unknown_clients += 1;
                Handled::default()
            }
            Decision::Assign(_) | Decision::Refuse => {
                self.counters.naks += 1;
                let vm_name = vm.map(|v| self.config.reservations[v].vm.clone());
                let migration = self.plans.latest_of_ip(asked).map(|p| {
                    let role =
                        if vm_name.as_deref() == Some(p.source.as_str()) { Role::Source } else { Role::Destination };
                    (p.id, role)
                });
                self.event(LeaseEventKind::Refused, client, asked, vm_name, migration, now);
                Handled { reply: self.answer(req, client, MessageType::Nak, None), changes: Vec::new() }
            }
        }
    }

    fn bind(&mut self, req: &Request, client: &ClientKey, vm: Option<usize>, a: &Assignment, now: u64) -> Handled {
        self.forget_offer(client);
        let vm_name = vm.map(|v| self.config.reservations[v].vm.clone());
        let migration = a.migration.map(|(id, role, _)| (id, role));
        let renewal = self.leases.of(client).is_some_and(|l| l.ip == a.ip && l.expires > now);
        let lease = Lease {
            ip: a.ip,
            client: client.clone(),
            vm: vm_name.clone(),
            expires: now.saturating_add(u64::from(a.lease_secs)),
            migration,
        };
        let changes = self.leases.put(lease);
        let kind = if renewal { LeaseEventKind::Renewed } else { LeaseEventKind::Bound };
        self.event(kind, client, a.ip, vm_name, migration, now);
        self.counters.acks += 1;
        Handled { reply: self.answer(req, client, MessageType::Ack, Some(a)), changes }
    }

    /// DHCPDECLINE (RFC 2131 4.3.3): the client found the address in use. Only a DECLINE sent to
    /// us, of an address the client holds or was offered, counts.
    fn decline(&mut self, req: &Request, client: &ClientKey, vm: Option<usize>, now: u64) -> Handled {
        self.counters.declines += 1;
        let opts = req.message.opts();
        let Some(DhcpOption::RequestedIpAddress(ip)) = opts.get(OptionCode::RequestedIpAddress).cloned() else {
            self.counters.count_drop("decline_without_address");
            return Handled::default();
        };
        if !matches!(opts.get(OptionCode::ServerIdentifier), Some(DhcpOption::ServerIdentifier(id)) if *id == self.config.server_id)
        {
            self.counters.count_drop("decline_not_for_us");
            return Handled::default();
        }
        let held = self.leases.on(ip).iter().any(|l| &l.client == client);
        let offered = self.offers.get(client).is_some_and(|(o, _)| *o == ip);
        if !held && !offered {
            self.counters.count_drop("decline_of_unheld_address");
            return Handled::default();
        }
        self.forget_offer(client);
        let vm_name = vm.map(|v| self.config.reservations[v].vm.clone());
        let mut changes: Vec<LeaseChange> = self.leases.remove(ip, client).into_iter().collect();
        let plan =
            self.plans.active_of_ip(ip).find(|p| vm_name.as_deref() == Some(p.destination.as_str())).map(|p| p.id);
        let failed = plan.and_then(|id| {
            self.plans.modify(id, |plan| {
                // B found X in use: its ARP probe was answered, so the VM segments are not kept
                // apart. The migration fails; X is not quarantined (A still holds it).
                plan.state = PlanState::Failed(format!(
                    "{} declined {ip}: its ARP probe for the address was answered (VM segments not isolated)",
                    plan.destination
                ));
                plan.clone()
            })
        });
        let migration = match failed {
            Some(plan) => {
                let id = plan.id;
                changes.push(LeaseChange::Plan(plan));
                Some((id, Role::Destination))
            }
            None => {
                // Quarantine only what the pool would hand out again; a reservation stays its VM's.
                if !self.reserved_ips.contains(&ip) && self.in_any_pool(ip) {
                    self.declined.insert(ip, now.saturating_add(u64::from(self.config.decline_hold_secs)));
                }
                None
            }
        };
        self.event(LeaseEventKind::Declined, client, ip, vm_name, migration, now);
        Handled { reply: None, changes }
    }

    fn in_any_pool(&self, ip: Ipv4Addr) -> bool {
        self.config
            .subnets
            .iter()
            .filter_map(|s| s.pool)
            .any(|p| (u32::from(p.start)..=u32::from(p.end)).contains(&u32::from(ip)))
    }

    fn release(&mut self, req: &Request, client: &ClientKey, now: u64) -> Handled {
        self.counters.releases += 1;
        let ip = req.message.ciaddr();
        let Some(lease) = self.leases.on(ip).iter().find(|l| &l.client == client).cloned() else {
            return Handled::default();
        };
        let changes = self.leases.remove(ip, client).into_iter().collect();
        self.pool_freed();
        self.event(LeaseEventKind::Released, client, ip, lease.vm, lease.migration, now);
        Handled { reply: None, changes }
    }

    /// DHCPINFORM (RFC 2131 4.3.5): configuration for a client with an address, only for VMs
    /// the inventory knows or addresses of a subnet with a pool (provider mode ignores others).
    fn inform(&mut self, req: &Request, client: &ClientKey, vm: Option<usize>) -> Handled {
        let ciaddr = req.message.ciaddr();
        if ciaddr.is_unspecified() {
            self.counters.count_drop("inform_without_address");
            return Handled::default();
        }
        let served = vm.is_some() || self.subnet_for(ciaddr).is_some_and(|s| self.config.subnets[s].pool.is_some());
        if !served {
            self.counters.unknown_clients += 1;
            return Handled::default();
        }
        self.counters.acks += 1;
        Handled { reply: self.answer(req, client, MessageType::Ack, None), changes: Vec::new() }
    }

    fn forget_offer(&mut self, client: &ClientKey) {
        if let Some((ip, _)) = self.offers.remove(client)
            && self.offered_ips.get(&ip) == Some(client)
        {
            self.offered_ips.remove(&ip);
            self.pool_freed();
        }
    }

    fn event(
        &mut self,
        kind: LeaseEventKind,
        client: &ClientKey,
        ip: Ipv4Addr,
        vm: Option<String>,
        migration: Option<(u64, Role)>,
        at: u64,
    ) {
        self.events.push(LeaseEvent { kind, ip, client: client.to_string(), vm, migration, at });
    }

    /// Builds and encodes a reply of `kind` to `req` (RFC 2131 4.1, 4.3.1-4.3.2); an assignment
    /// adds the address and its options. `None` only if encoding fails (counted).
    fn answer(
        &mut self,
        req: &Request,
        client: &ClientKey,
        kind: MessageType,
        a: Option<&Assignment>,
    ) -> Option<Reply> {
        let m = &req.message;
        let mut r = Message::default();
        r.set_opcode(Opcode::BootReply)
            .set_htype(m.htype())
            .set_xid(m.xid())
            .set_flags(m.flags())
            .set_giaddr(m.giaddr())
            .set_chaddr(m.chaddr());
        let opts = r.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ServerIdentifier(self.config.server_id));
        if let Some(DhcpOption::ClientIdentifier(id)) = m.opts().get(OptionCode::ClientIdentifier) {
            // RFC 6842: echo the client identifier.
            opts.insert(DhcpOption::ClientIdentifier(id.clone()));
        }
        if kind == MessageType::Ack && a.is_none() {
            // INFORM: configuration only, no lease.
            r.set_ciaddr(m.ciaddr());
            if let Some(s) = self.subnet_for(m.ciaddr()) {
                subnet_options(r.opts_mut(), &self.config.subnets[s]);
            }
        }
        if let Some(a) = a {
            r.set_yiaddr(a.ip);
            if kind == MessageType::Ack {
                r.set_ciaddr(m.ciaddr());
            }
            let opts = r.opts_mut();
            opts.insert(DhcpOption::AddressLeaseTime(a.lease_secs));
            opts.insert(DhcpOption::Renewal(a.lease_secs / 2));
            opts.insert(DhcpOption::Rebinding(a.lease_secs - a.lease_secs / 8));
            if let Some(s) = self.subnet_for(a.ip) {
                subnet_options(opts, &self.config.subnets[s]);
            }
            if let Some((id, role, deadline)) = a.migration {
                let code = OptionCode::from(self.config.shadow_option_code);
                opts.insert(DhcpOption::Unknown(UnknownOption::new(code, shadow_option_payload(role, id, deadline))));
            }
        }
        // An address held by two VMs (a migration, or after the cut-over until A's lease ends):
        // unicast to it could reach either, so its clients are answered by broadcast (their xid
        // and chaddr pick the reply out).
        let shadowed = self.plans.active_of_ip(m.ciaddr()).next().is_some()
            || self.leases.on(m.ciaddr()).iter().any(|l| &l.client != client);
        if kind == MessageType::Nak && !m.giaddr().is_unspecified() {
            // RFC 2131 4.3.2: a NAK through a relay asks it to broadcast.
            r.set_flags(m.flags().set_broadcast());
        }
        let to = if !m.giaddr().is_unspecified() {
            ReplyTo::Relay(m.giaddr())
        } else if kind != MessageType::Nak && !m.ciaddr().is_unspecified() && !shadowed {
            ReplyTo::Unicast(m.ciaddr())
        } else {
            ReplyTo::Broadcast
        };
        match wire::encode(&r, req.relay_agent.as_deref()) {
            Ok(bytes) => Some(Reply { bytes, to }),
            Err(_) => {
                self.counters.count_drop("reply_not_encodable");
                None
            }
        }
    }
}

fn subnet_options(opts: &mut dhcproto::v4::DhcpOptions, s: &SubnetConfig) {
    opts.insert(DhcpOption::SubnetMask(s.mask()));
    opts.insert(DhcpOption::BroadcastAddr(s.broadcast()));
    if !s.routers.is_empty() {
        opts.insert(DhcpOption::Router(s.routers.clone()));
    }
    if !s.dns.is_empty() {
        opts.insert(DhcpOption::DomainNameServer(s.dns.clone()));
    }
}

/// The client's key: its client identifier, else its hardware address.
fn client_key(m: &Message) -> ClientKey {
    if let Some(DhcpOption::ClientIdentifier(id)) = m.opts().get(OptionCode::ClientIdentifier)
        && !id.is_empty()
    {
        return ClientKey::ClientId(id.clone());
    }
    let hw = m.chaddr().get(..usize::from(m.hlen()).min(16)).unwrap_or_default();
    match <[u8; 6]>::try_from(hw) {
        Ok(mac) if u8::from(m.htype()) == 1 => ClientKey::Mac(mac),
        _ => {
            let mut key = vec![u8::from(m.htype())];
            key.extend_from_slice(hw);
            ClientKey::Hardware(key)
        }
    }
}

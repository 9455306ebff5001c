//! The server on a UDP socket: read a batch of requests, decide each (sans-IO), commit all
//! their lease changes in one durable transaction, then send the replies. No ACK leaves before
//! its lease is on disk; one fsync serves the whole batch. Each request keeps the interface it
//! came in on, so its broadcast reply goes back out there (IP_PKTINFO, in `socket.rs`).

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::{DhcpConfig, MigrationConfigState};
use crate::plan::{MigrationPlan, PlanState};
use crate::server::{DhcpServer, Handled, LeaseEvent, Reply};
use crate::socket::{Arrival, DhcpSocket, interface_name, routes};
use crate::store::{LeaseStore, StoreError};
use crate::{ConfigError, PlanError};

/// Most requests decided per commit.
const BATCH: usize = 256;

/// Why the service stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A configured migration was refused.
    #[error("migration in the configuration: {0}")]
    Plan(#[from] PlanError),
    /// The lease store failed; no reply was sent for the uncommitted batch.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An earlier error left memory and store apart: restart the service.
    #[error("the service failed earlier and must be restarted from its store")]
    Failed,
    /// The socket could not be set up or failed.
    #[error("socket {what}: {source}")]
    Socket {
        /// What was being done.
        what: String,
        /// Why.
        source: std::io::Error,
    },
}

fn socket_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServiceError {
    let what = what.into();
    move |source| ServiceError::Socket { what, source }
}

/// Unix time in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A running DHCP service.
pub struct Service {
    server: DhcpServer,
    store: LeaseStore,
    socket: DhcpSocket,
    /// The source of broadcast replies (option 54's address, what clients expect to see).
    server_id: Ipv4Addr,
    last_expiry: u64,
    /// A commit failed: memory is ahead of the store, so the service must not serve again.
    failed: bool,
    /// The receive buffer.
    buf: Vec<u8>,
    /// Unix seconds: the system clock, or the embedding process's own (one that does not step).
    clock: fn() -> u64,
}

impl Service {
    /// Opens the store, restores its leases, applies the configured migrations, binds the socket.
    pub fn start(config: DhcpConfig) -> Result<Self, ServiceError> {
        Self::start_with_clock(config, unix_now)
    }

    /// [`Service::start`] on `clock` (unix seconds) instead of the system clock: a process
    /// whose parts must agree on every deadline gives them all one clock.
    pub fn start_with_clock(config: DhcpConfig, clock: fn() -> u64) -> Result<Self, ServiceError> {
        let now = clock();
        let store = LeaseStore::open(&config.lease_store)?;
        let socket = DhcpSocket::bind(&config).map_err(|(what, source)| ServiceError::Socket { what, source })?;
        let migrations = config.migrations.clone();
        let server_id = config.server_id;
        let mut server = DhcpServer::new(config)?;
        let mut changes = server.restore(store.load()?, now);
        // A stored plan that ended (e.g. failed by B's DECLINE before a crash) wins over the
        // configuration; an active one takes the configuration's deadline and state.
        let stored = store.load_plans()?;
        let ended: std::collections::BTreeSet<u64> = stored.iter().filter(|p| !p.is_active()).map(|p| p.id).collect();
        for plan in stored.into_iter().filter(|p| !p.is_active()) {
            server.restore_plan(plan);
        }
        for m in migrations.into_iter().filter(|m| !ended.contains(&m.id)) {
            server.add_plan(MigrationPlan::new(m.id, m.ip, &m.source, &m.destination, m.deadline))?;
            match m.state {
                MigrationConfigState::Active => {}
                MigrationConfigState::Completed => server.end_plan(m.id, PlanState::Completed)?,
                MigrationConfigState::RolledBack => server.end_plan(m.id, PlanState::RolledBack)?,
            }
            if let Some(plan) = server.plan(m.id) {
                changes.push(crate::LeaseChange::Plan(plan.clone()));
            }
        }
        store.commit(&changes)?;
        Ok(Self { server, store, socket, server_id, last_expiry: now, failed: false, buf: vec![0; 2048], clock })
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr()
    }

    /// How long [`Service::step`] waits for a first request at most (500 ms unless set): a
    /// caller that interleaves [`Service::follow`] sets how late a new plan may be.
    pub fn set_wait(&self, wait: std::time::Duration) -> Result<(), ServiceError> {
        self.socket.set_wait(wait).map_err(socket_error("set timeout"))
    }

    /// The server's state.
    pub fn server(&self) -> &DhcpServer {
        &self.server
    }

    /// Serves until `stop` is set; lease events go to `events` as JSON lines.
    ///
    /// After an error the service refuses to run again: its memory may hold changes the store
    /// does not (a failed commit), so it must be restarted from the store.
    pub fn run(&mut self, stop: &AtomicBool, events: &mut impl std::io::Write) -> Result<(), ServiceError> {
        if self.failed {
            return Err(ServiceError::Failed);
        }
        let result = self.serve(stop, events);
        self.failed = result.is_err();
        result
    }

    fn serve(&mut self, stop: &AtomicBool, events: &mut impl std::io::Write) -> Result<(), ServiceError> {
        while !stop.load(Ordering::Relaxed) {
            for event in self.step()? {
                if let Ok(line) = serde_json::to_string(&event) {
                    let _ = writeln!(events, "{line}");
                }
            }
            let _ = events.flush();
        }
        Ok(())
    }

    /// Serves one batch: waits for requests up to the socket's receive timeout, decides them,
    /// commits their lease changes (and expired leases) durably, sends the replies. Returns the
    /// lease events. For a caller that interleaves its own work ([`Service::follow`]).
    pub fn step(&mut self) -> Result<Vec<LeaseEvent>, ServiceError> {
        if self.failed {
            return Err(ServiceError::Failed);
        }
        // The receive buffer lives in the service: this runs many times a second.
        let mut buf = core::mem::take(&mut self.buf);
        let result = self.step_with(&mut buf);
        self.buf = buf;
        self.failed = result.is_err();
        result
    }

    fn step_with(&mut self, buf: &mut [u8]) -> Result<Vec<LeaseEvent>, ServiceError> {
        // Each request with where it arrived: its reply leaves through the same interface.
        let mut batch: Vec<(Handled, Option<Arrival>)> = Vec::new();
        match self.socket.recv(buf, true) {
            Ok((n, arrival)) => batch.push((self.handle(&buf[..n], arrival), arrival)),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(e) => return Err(socket_error("receive")(e)),
        }
        if !batch.is_empty() {
            // Take whatever else is waiting, so one commit serves them all.
            while batch.len() < BATCH {
                match self.socket.recv(buf, false) {
                    Ok((n, arrival)) => batch.push((self.handle(&buf[..n], arrival), arrival)),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(socket_error("receive")(e)),
                }
            }
        }
        // Replies that change no lease (OFFER, NAK, INFORM answers) need no commit: they go
        // out now, so clients are not kept waiting behind the fsync.
        for (handled, arrival) in &mut batch {
            if handled.changes.is_empty()
                && let Some(reply) = handled.reply.take()
            {
                self.send(&reply, *arrival);
            }
        }
        let now = (self.clock)();
        let mut changes: Vec<_> = batch.iter_mut().flat_map(|(h, _)| h.changes.drain(..)).collect();
        if now != self.last_expiry {
            self.last_expiry = now;
            changes.extend(self.server.expire(now));
        }
        if !changes.is_empty() {
            self.store.commit(&changes)?;
        }
        for (handled, arrival) in batch.drain(..) {
            if let Some(reply) = handled.reply {
                self.send(&reply, arrival);
            }
        }
        Ok(self.server.take_events())
    }

    /// Follows the manager: the inventory's reservations and the migrations' lease plans. New
    /// reservations replace the old ones (leases kept); a plan the server does not have is
    /// added (an ended one restored as it is); an active plan the manager ended is ended; an
    /// active plan's deadline follows the manager's (a lease extension, an early finish). A plan
    /// the server ended itself (B's DECLINE) stays ended: the manager hears of it through the
    /// lease event. Every change is committed before the next reply. Returns the plans refused
    /// (the rest still apply).
    pub fn follow(
        &mut self,
        reservations: Vec<crate::Reservation>,
        plans: &[MigrationPlan],
    ) -> Result<Vec<(u64, PlanError)>, ServiceError> {
        if self.failed {
            return Err(ServiceError::Failed);
        }
        let now = (self.clock)();
        let mut changes = Vec::new();
        if reservations != self.server.config().reservations {
            let config = DhcpConfig { reservations, ..self.server.config().clone() };
            changes.extend(self.server.reconfigure(config, now)?);
        }
        let mut refused = Vec::new();
        for plan in plans {
            let result = match self.server.plan(plan.id) {
                None if plan.is_active() => self.server.add_plan(plan.clone()),
                None => {
                    self.server.restore_plan(plan.clone());
                    Ok(())
                }
                Some(current) if current.is_active() && !plan.is_active() => {
                    let moved = current.deadline != plan.deadline;
                    self.server
                        .end_plan(plan.id, plan.state.clone())
                        .and_then(|()| if moved { self.server.move_deadline(plan.id, plan.deadline) } else { Ok(()) })
                }
                // The manager extended A's lease end (or moved it): A's next renewal gets it.
                Some(current) if current.is_active() && current.deadline != plan.deadline => {
                    self.server.move_deadline(plan.id, plan.deadline)
                }
                Some(_) => continue,
            };
            match result {
                Ok(()) => changes.extend(self.server.plan(plan.id).cloned().map(crate::LeaseChange::Plan)),
                Err(e) => refused.push((plan.id, e)),
            }
        }
        if !changes.is_empty()
            && let Err(e) = self.store.commit(&changes)
        {
            self.failed = true;
            return Err(e.into());
        }
        Ok(refused)
    }
}

impl Service {
    /// Decides one request, knowing the interface it came in on (DHCP snooping needs its name).
    fn handle(&mut self, datagram: &[u8], arrival: Option<Arrival>) -> Handled {
        let interface = interface_name(arrival);
        self.server.handle_on(datagram, interface.as_deref(), (self.clock)())
    }

    fn send(&self, reply: &Reply, arrival: Option<Arrival>) {
        // A reply that cannot be sent is like a lost datagram: the client retries.
        let _ = self.socket.send(&reply.bytes, &routes(reply.to, arrival, self.server_id));
    }
}

//! The client side of the workload: TCP connections that exchange verified request/response
//! messages (long-lived ones at an interval, short "churn" ones back to back) and UDP sessions
//! with retries. Each ends as completed, closed gracefully by the server, broken (with its
//! cause) or still open.
//!
//! The TCP clients behave like a keep-alive HTTP client or a connection pool: an orderly close
//! (FIN) from the server while no request is outstanding is how such servers end idle
//! connections (nginx's `keepalive_timeout`, a graceful reload, the router's close at the
//! cut-over), so it is no failure: the connection ends as [`Outcome::ClosedGracefully`] and the
//! scenario opens a replacement for the rest of its plan. A request on a reused connection that
//! crossed that FIN (no byte of its answer came) is retried on the replacement, as RFC 9112
//! 9.3.1 lets a client do. A FIN in the middle of an answer, or on a fresh connection, and a RST
//! lose what was in flight: broken.

use core::time::Duration;
use std::net::Ipv4Addr;

use ipshadow_core::Instant;
use rand_core::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde::Serialize;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::IpEndpoint;

use super::proto::{HEADER, TCP_PORT, UDP_PORT, request, respond};
use crate::host::Host;

/// What kind of connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnKind {
    /// Exchanges a message at an interval for its whole lifetime.
    LongLived,
    /// A short connection: a few exchanges back to back, then close.
    Churn,
    /// A UDP session (request/response with retries).
    Udp,
}

/// Why a connection broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakCause {
    /// The client's stack received a RST.
    Reset,
    /// No progress within the application timeout.
    Timeout,
    /// A byte differed from what the server must have sent, or the server broke the protocol
    /// (closed before the last exchange).
    Corrupt,
}

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Not ended yet.
    Open,
    /// Every exchange verified and the connection closed cleanly.
    Completed,
    /// The server closed it with a FIN while no request was outstanding: every exchange so far
    /// verified, nothing lost; the client reconnects for the rest of its plan.
    ClosedGracefully,
    /// Broken.
    Broken(BreakCause),
}

/// What the client reports when a connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ended {
    /// The connection's id.
    pub id: u32,
    /// How.
    pub outcome: Outcome,
    /// When.
    pub at: Instant,
    /// Exchanges verified before it ended.
    pub exchanges: u32,
}

/// What a new connection does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConnPlan {
    /// Its id (seeds every byte of its messages).
    pub id: u32,
    /// Kind.
    pub kind: ConnKind,
    /// Exchanges before it closes.
    pub exchanges: u32,
    /// Mean pause between exchanges (each pause is drawn within +-20 % of it).
    pub interval: Duration,
    /// When it is meant to end: the client closes it then, between exchanges (a long-lived
    /// connection's planned lifetime). `None`: after `exchanges`.
    pub ends_at: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Connecting,
    Idle,
    Waiting,
    Closing,
}

struct TcpConn {
    handle: SocketHandle,
    plan: ConnPlan,
    port: u16,
    phase: Phase,
    seq: u32,
    next_at: Instant,
    deadline: Instant,
    expect: Vec<u8>,
    got: usize,
}

struct UdpSession {
    handle: SocketHandle,
    plan: ConnPlan,
    seq: u32,
    tries: u32,
    request: Vec<u8>,
    expect: Vec<u8>,
    deadline: Instant,
}

/// Tries of one UDP request before the session counts as broken.
const UDP_TRIES: u32 = 5;
/// Wait for a UDP response before retrying.
const UDP_RETRY: Duration = Duration::from_millis(400);

/// The client application of one host.
pub struct ClientApp {
    server: Ipv4Addr,
    timeout: Duration,
    rng: Pcg64Mcg,
    next_port: u16,
    tcp: Vec<TcpConn>,
    udp: Vec<UdpSession>,
    /// Sockets closed by us, kept until the stack is done with them (TIME-WAIT, a RST to send).
    lingering: Vec<(SocketHandle, bool)>,
}

impl ClientApp {
    /// A client of `server`. `timeout` bounds each TCP wait (connect, one exchange, close); a UDP
    /// request is tried 5 times, 400 ms apart. `seed` drives message sizes and pauses.
    pub fn new(server: Ipv4Addr, timeout: Duration, seed: u64) -> Self {
        Self {
            server,
            timeout,
            rng: Pcg64Mcg::seed_from_u64(seed),
            next_port: 20_000,
            tcp: Vec::new(),
            udp: Vec::new(),
            lingering: Vec::new(),
        }
    }

    /// Local endpoints (port, id) of the open TCP connections.
    pub fn tcp_ports(&self) -> impl Iterator<Item = (u16, u32)> + '_ {
        self.tcp.iter().map(|c| (c.port, c.plan.id))
    }

    fn port(&mut self) -> u16 {
        let port = self.next_port;
        self.next_port = if self.next_port >= 60_000 { 20_000 } else { self.next_port + 1 };
        port
    }

    /// Starts a connection or session; returns its local port.
    pub fn start(&mut self, host: &mut Host, plan: ConnPlan, now: Instant) -> u16 {
        let port = self.port();
        if plan.kind == ConnKind::Udp {
            let buffer = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8 * 1024]);
            let mut socket = udp::Socket::new(buffer(), buffer());
            let _ = socket.bind(port);
            let handle = host.sockets.add(socket);
            self.udp.push(UdpSession {
                handle,
                plan,
                seq: 0,
                tries: 0,
                request: Vec::new(),
                expect: Vec::new(),
                deadline: now,
            });
            return port;
        }
        let mut socket = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 4096]), tcp::SocketBuffer::new(vec![0; 4096]));
        let remote = IpEndpoint::new(self.server.into(), TCP_PORT);
        // A fresh socket with a non-zero local port and a unicast remote cannot fail to connect.
        let _ = socket.connect(host.iface.context(), remote, port);
        let handle = host.sockets.add(socket);
        self.tcp.push(TcpConn {
            handle,
            plan,
            port,
            phase: Phase::Connecting,
            seq: 0,
            next_at: now,
            deadline: now + self.timeout,
            expect: Vec::new(),
            got: 0,
        });
        port
    }

    /// When the application next needs to run without new input.
    pub fn next_wake(&self) -> Option<Instant> {
        let tcp = self.tcp.iter().map(|c| if c.phase == Phase::Idle { c.next_at } else { c.deadline });
        tcp.chain(self.udp.iter().map(|s| s.deadline)).min()
    }

    /// Runs the application at `now`; ended connections are appended to `ended`. Returns whether
    /// anything was written (the host should poll again).
    pub fn run(&mut self, host: &mut Host, now: Instant, ended: &mut Vec<Ended>) -> bool {
        let mut wrote = false;
        self.lingering.retain_mut(|(handle, seen)| {
            let state = host.sockets.get::<tcp::Socket<'_>>(*handle).state();
            if state == tcp::State::Closed && *seen {
                host.sockets.remove(*handle);
                return false;
            }
            *seen = true;
            true
        });
        let mut tcp = core::mem::take(&mut self.tcp);
        tcp.retain_mut(|conn| match self.step_tcp(host, conn, now, &mut wrote) {
            Some(outcome) => {
                ended.push(Ended { id: conn.plan.id, outcome, at: now, exchanges: conn.seq });
                self.lingering.push((conn.handle, false));
                false
            }
            None => true,
        });
        self.tcp = tcp;
        let mut udp = core::mem::take(&mut self.udp);
        udp.retain_mut(|session| match self.step_udp(host, session, now, &mut wrote) {
            Some(outcome) => {
                ended.push(Ended { id: session.plan.id, outcome, at: now, exchanges: session.seq });
                host.sockets.remove(session.handle);
                false
            }
            None => true,
        });
        self.udp = udp;
        wrote
    }

    fn pause(&mut self, interval: Duration) -> Duration {
        let us = interval.as_micros() as u64;
        if us == 0 {
            return Duration::ZERO;
        }
        let spread = us / 5;
        Duration::from_micros(us - spread + self.rng.next_u64() % (2 * spread + 1))
    }

    fn request_len(&mut self) -> u16 {
        16 + (self.rng.next_u64() % 241) as u16
    }

    fn step_tcp(&mut self, host: &mut Host, conn: &mut TcpConn, now: Instant, wrote: &mut bool) -> Option<Outcome> {
        let timeout = self.timeout;
        let socket = host.sockets.get_mut::<tcp::Socket<'_>>(conn.handle);
        let state = socket.state();
        if state == tcp::State::Closed {
            // Nothing but a RST closes a socket we did not abort (no stack timeout is set).
            return Some(Outcome::Broken(BreakCause::Reset));
        }
        // Check every byte as it arrives: anything beyond or unlike the expected response is
        // corruption (outside an exchange nothing is expected at all).
        while socket.can_recv() {
            let (expect, got) = (&conn.expect, conn.got);
            let (n, ok) = socket
                .recv(|buf| {
                    let n = buf.len().min(expect.len() - got);
                    let ok = n == buf.len() && buf[..n] == expect[got..got + n];
                    (n, (n, ok))
                })
                .unwrap_or((0, false));
            if !ok {
                socket.abort();
                *wrote = true;
                return Some(Outcome::Broken(BreakCause::Corrupt));
            }
            conn.got += n;
        }
        let give_up = |socket: &mut tcp::Socket<'_>, wrote: &mut bool| {
            socket.abort();
            *wrote = true;
            Some(Outcome::Broken(BreakCause::Timeout))
        };
        match conn.phase {
            Phase::Connecting if state == tcp::State::Established => {
                conn.phase = Phase::Idle;
                conn.next_at = now;
            }
            Phase::Connecting | Phase::Waiting if now >= conn.deadline && conn.got < conn.expect.len().max(1) => {
                return give_up(socket, wrote);
            }
            Phase::Waiting if conn.got == conn.expect.len() => {
                conn.seq += 1;
                conn.expect.clear();
                conn.got = 0;
                if conn.seq >= conn.plan.exchanges {
                    socket.close();
                    *wrote = true;
                    if state == tcp::State::CloseWait {
                        // The server's FIN came with the last response: both sides are done.
                        return Some(Outcome::Completed);
                    }
                    conn.phase = Phase::Closing;
                    conn.deadline = now + timeout;
                } else {
                    conn.phase = Phase::Idle;
                    let next = now + self.pause(conn.plan.interval);
                    conn.next_at = conn.plan.ends_at.map_or(next, |end| next.min(end));
                }
            }
            Phase::Waiting if state == tcp::State::CloseWait && conn.got == 0 && conn.seq > 0 => {
                // The request crossed the server's close of the idle connection (no byte of its
                // answer came): a keep-alive client retries it on a new connection (RFC 9112
                // 9.3.1), which the replacement does; nothing is lost.
                socket.close();
                *wrote = true;
                return Some(Outcome::ClosedGracefully);
            }
            Phase::Waiting if state == tcp::State::CloseWait => {
                // The server closed with the response incomplete: it will never come.
                socket.abort();
                *wrote = true;
                return Some(Outcome::Broken(BreakCause::Corrupt));
            }
            // LAST-ACK: the server had closed too (after our last exchange): nothing is pending.
            Phase::Closing if matches!(state, tcp::State::TimeWait | tcp::State::LastAck) => {
                return Some(Outcome::Completed);
            }
            Phase::Closing if now >= conn.deadline => return give_up(socket, wrote),
            _ => {}
        }
        if conn.phase == Phase::Idle && state == tcp::State::CloseWait {
            // An orderly close at idle: what a keep-alive server does to an idle connection.
            socket.close();
            *wrote = true;
            return Some(Outcome::ClosedGracefully);
        }
        if conn.phase == Phase::Idle && conn.plan.ends_at.is_some_and(|end| now >= end) {
            // The planned lifetime is over: close between exchanges, as the application would.
            socket.close();
            *wrote = true;
            conn.phase = Phase::Closing;
            conn.deadline = now + timeout;
            return None;
        }
        if conn.phase == Phase::Idle && now >= conn.next_at {
            if state != tcp::State::Established {
                // The server closed before the last exchange: not what the protocol allows.
                socket.abort();
                *wrote = true;
                return Some(Outcome::Broken(BreakCause::Corrupt));
            }
            let len = self.request_len();
            let message = request(conn.plan.id, conn.seq, len);
            if socket.send_capacity() - socket.send_queue() >= message.len() {
                let Ok(expect) = respond(&message) else {
                    // Our own request is always well formed; if not, this run proves nothing.
                    socket.abort();
                    return Some(Outcome::Broken(BreakCause::Corrupt));
                };
                let _ = socket.send_slice(&message);
                conn.expect = expect;
                conn.got = 0;
                conn.phase = Phase::Waiting;
                conn.deadline = now + timeout;
                *wrote = true;
            }
        }
        None
    }

    fn step_udp(&mut self, host: &mut Host, s: &mut UdpSession, now: Instant, wrote: &mut bool) -> Option<Outcome> {
        let socket = host.sockets.get_mut::<udp::Socket<'_>>(s.handle);
        while let Ok((datagram, _)) = socket.recv() {
            if s.expect.is_empty() {
                continue;
            }
            if datagram == s.expect.as_slice() {
                s.expect.clear();
                s.seq += 1;
                s.tries = 0;
            } else if datagram.len() >= HEADER && datagram[4..8] != s.expect[4..8] {
                // A late answer to an earlier try of an earlier request: not an error.
            } else {
                return Some(Outcome::Broken(BreakCause::Corrupt));
            }
        }
        if s.expect.is_empty() {
            if s.seq >= s.plan.exchanges {
                return Some(Outcome::Completed);
            }
            let len = self.request_len();
            s.request = request(s.plan.id, s.seq, len);
            let Ok(expect) = respond(&s.request) else { return Some(Outcome::Broken(BreakCause::Corrupt)) };
            s.expect = expect;
            s.deadline = now;
        }
        if now >= s.deadline {
            if s.tries >= UDP_TRIES {
                return Some(Outcome::Broken(BreakCause::Timeout));
            }
            s.tries += 1;
            let socket = host.sockets.get_mut::<udp::Socket<'_>>(s.handle);
            *wrote |= socket.send_slice(&s.request, IpEndpoint::new(self.server.into(), UDP_PORT)).is_ok();
            s.deadline = now + UDP_RETRY;
        }
        None
    }
}

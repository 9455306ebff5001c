//! The service in each VM: a TCP and a UDP request/response server that checks every request
//! byte and answers with a response derived from it. It reacts to input only (no timers), so a
//! replica that receives the same frames at the same instants answers byte for byte the same;
//! the one exception is the keep-alive timeout a fault may switch on ([`ServerApp::close_idle_after`]).

use ipshadow_core::Instant;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Duration;

use super::proto::{TCP_PORT, UDP_PORT, message_len, respond};
use crate::host::Host;

/// Receive and send buffer of each server TCP socket.
const TCP_BUFFER: usize = 4096;

/// Without a packet from the client for this long a connection is given up (as a kernel gives
/// up a SYN-RECEIVED connection after its SYN-ACK retries).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a connection may stay idle before a server with the `server-closes-idle` fault
/// closes it. Shorter than the long-lived clients' pause between requests (0.8 s at least), so
/// the FIN always reaches a client with no request outstanding, as a keep-alive timeout is
/// meant to (nginx's default is 75 s; the simulator's clients talk every second).
pub const KEEPALIVE_TIMEOUT: core::time::Duration = core::time::Duration::from_millis(300);

/// A fresh listening socket.
fn listener() -> tcp::Socket<'static> {
    let mut socket =
        tcp::Socket::new(tcp::SocketBuffer::new(vec![0; TCP_BUFFER]), tcp::SocketBuffer::new(vec![0; TCP_BUFFER]));
    socket.set_timeout(Some(IDLE_TIMEOUT));
    // Listening on a non-zero port with a fresh socket cannot fail.
    let _ = socket.listen(TCP_PORT);
    socket
}

/// One accepted (or listening) TCP socket and the bytes it has not finished with.
struct ServerConn {
    handle: SocketHandle,
    /// The socket has left LISTEN at least once.
    active: bool,
    inbox: Vec<u8>,
    outbox: Vec<u8>,
    /// The last byte received or sent (the start of the connection's idle time); `None` until
    /// the first exchange after the keep-alive timeout was switched on.
    last_activity: Option<Instant>,
}

/// The server application of one host.
pub struct ServerApp {
    backlog: usize,
    conns: Vec<ServerConn>,
    udp: SocketHandle,
    /// Requests answered.
    pub requests: u64,
    /// Requests refused as corrupt (the connection was reset).
    pub corrupt: u64,
    /// When set, connections idle (everything answered and acknowledged) for this long are
    /// closed with a FIN, like a keep-alive timeout. `None` (the default): never.
    pub close_idle_after: Option<core::time::Duration>,
    /// Connections closed by the keep-alive timeout.
    pub closed_idle: u64,
}

impl ServerApp {
    /// Opens the UDP socket and `backlog` listening TCP sockets on `host`.
    pub fn new(host: &mut Host, backlog: usize) -> Self {
        let rx = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0; 64 * 1024]);
        let tx = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0; 64 * 1024]);
        let mut socket = udp::Socket::new(rx, tx);
        // Binding a fresh socket to a non-zero port cannot fail.
        let _ = socket.bind(UDP_PORT);
        let udp = host.sockets.add(socket);
        let mut app = Self {
            backlog: backlog.max(1),
            conns: Vec::new(),
            udp,
            requests: 0,
            corrupt: 0,
            close_idle_after: None,
            closed_idle: 0,
        };
        app.top_up_listeners(host, Instant::ZERO);
        app.listeners_last(host);
        app
    }

    /// Connections past the handshake and not yet closed.
    pub fn established(&self, host: &Host) -> usize {
        self.conns
            .iter()
            .filter(|c| {
                let state = host.sockets.get::<tcp::Socket<'_>>(c.handle).state();
                !matches!(state, tcp::State::Listen | tcp::State::SynReceived | tcp::State::Closed)
            })
            .count()
    }

    /// From now on, closes connections idle for `after`. A connection open now starts its idle
    /// time at its next exchange, not now: its client may be about to send a request, which the
    /// FIN would cross; after an answer the client's pause is longer than `after`.
    pub fn close_idle_from(&mut self, after: core::time::Duration) {
        self.close_idle_after = Some(after);
        for conn in &mut self.conns {
            conn.last_activity = None;
        }
    }

    /// When the keep-alive timeout next needs the application to run without input.
    pub fn next_wake(&self, host: &Host) -> Option<Instant> {
        let after = self.close_idle_after?;
        self.conns
            .iter()
            .filter(|c| c.active && c.inbox.is_empty() && c.outbox.is_empty())
            .filter(|c| host.sockets.get::<tcp::Socket<'_>>(c.handle).state() == tcp::State::Established)
            .filter_map(|c| c.last_activity.map(|t| t + after))
            .min()
    }

    /// Serves whatever arrived at `now`. Returns whether anything was written (the host should
    /// poll again).
    pub fn run(&mut self, host: &mut Host, now: Instant) -> bool {
        let mut wrote = self.serve_udp(host);
        let (requests, corrupt, closed_idle) = (&mut self.requests, &mut self.corrupt, &mut self.closed_idle);
        let close_idle_after = self.close_idle_after;
        self.conns.retain_mut(|conn| {
            let socket = host.sockets.get_mut::<tcp::Socket<'static>>(conn.handle);
            match socket.state() {
                tcp::State::Closed | tcp::State::TimeWait => {
                    host.sockets.remove(conn.handle);
                    return false;
                }
                // smoltcp sends a socket reset in SYN-RECEIVED back to LISTEN with its backed-off
                // retransmission timer (seconds to minutes): the next client it accepted would
                // wait that long for a lost SYN-ACK. A kernel starts each connection afresh.
                tcp::State::Listen if conn.active => {
                    *socket = listener();
                    conn.active = false;
                    return true;
                }
                tcp::State::Listen => return true,
                _ if !conn.active => {
                    conn.active = true;
                    conn.last_activity = Some(now);
                }
                _ => {}
            }
            while socket.can_recv() {
                let mut chunk = [0u8; TCP_BUFFER];
                match socket.recv_slice(&mut chunk) {
                    Ok(n) if n > 0 => {
                        conn.inbox.extend_from_slice(&chunk[..n]);
                        conn.last_activity = Some(now);
                    }
                    _ => break,
                }
            }
            while let Some(len) = message_len(&conn.inbox) {
                match respond(&conn.inbox[..len]) {
                    Ok(response) => {
                        *requests += 1;
                        conn.outbox.extend_from_slice(&response);
                    }
                    Err(_) => {
                        // A corrupt request: reset the connection, as a real server would drop it.
                        *corrupt += 1;
                        socket.abort();
                        conn.inbox.clear();
                        conn.outbox.clear();
                        wrote = true;
                        return true;
                    }
                }
                conn.inbox.drain(..len);
            }
            if !conn.outbox.is_empty() && socket.can_send() {
                let n = socket.send_slice(&conn.outbox).unwrap_or(0);
                conn.outbox.drain(..n);
                if n > 0 {
                    conn.last_activity = Some(now);
                    wrote = true;
                }
            }
            // Idle: nothing unanswered, nothing unsent or unacknowledged, for the whole timeout.
            if let Some(after) = close_idle_after
                && socket.state() == tcp::State::Established
                && conn.inbox.is_empty()
                && conn.outbox.is_empty()
                && socket.send_queue() == 0
                && conn.last_activity.is_some_and(|t| now >= t + after)
            {
                socket.close();
                *closed_idle += 1;
                wrote = true;
            }
            if socket.state() == tcp::State::CloseWait && conn.outbox.is_empty() {
                socket.close();
                wrote = true;
            }
            true
        });
        self.top_up_listeners(host, now);
        self.listeners_last(host);
        wrote
    }

    fn serve_udp(&mut self, host: &mut Host) -> bool {
        let socket = host.sockets.get_mut::<udp::Socket<'_>>(self.udp);
        let mut wrote = false;
        while let Ok((datagram, meta)) = socket.recv() {
            match respond(datagram) {
                Ok(response) => {
                    self.requests += 1;
                    // A full send buffer drops the answer, as a real UDP socket would.
                    wrote |= socket.send_slice(&response, meta.endpoint).is_ok();
                }
                Err(_) => self.corrupt += 1,
            }
        }
        wrote
    }

    /// Moves listening sockets behind every connection in the socket set. smoltcp gives a
    /// segment to the first socket that accepts it, and a listening socket accepts any SYN: one
    /// in front of a connection still in SYN-RECEIVED would take the client's retransmitted
    /// SYN and open a second connection on the same 4-tuple (a kernel finds the pending one).
    fn listeners_last(&mut self, host: &mut Host) {
        let listening = |host: &Host, h| host.sockets.get::<tcp::Socket<'_>>(h).state() == tcp::State::Listen;
        let mut order: Vec<usize> = (0..self.conns.len()).collect();
        order.sort_by_key(|&i| self.conns[i].handle);
        let (mut lo, mut hi) = (0, order.len());
        loop {
            while lo < hi && !listening(host, self.conns[order[lo]].handle) {
                lo += 1;
            }
            while hi > lo && listening(host, self.conns[order[hi - 1]].handle) {
                hi -= 1;
            }
            if hi <= lo + 1 {
                return;
            }
            let (listener, conn) = (order[lo], order[hi - 1]);
            let (low, high) = (self.conns[listener].handle, self.conns[conn].handle);
            let empty = || tcp::Socket::new(tcp::SocketBuffer::new(Vec::new()), tcp::SocketBuffer::new(Vec::new()));
            let listener_socket = core::mem::replace(host.sockets.get_mut::<tcp::Socket<'static>>(low), empty());
            let conn_socket = core::mem::replace(host.sockets.get_mut::<tcp::Socket<'static>>(high), listener_socket);
            *host.sockets.get_mut::<tcp::Socket<'static>>(low) = conn_socket;
            self.conns[listener].handle = high;
            self.conns[conn].handle = low;
            lo += 1;
            hi -= 1;
        }
    }

    /// Keeps `backlog` sockets listening: smoltcp turns a listening socket into the connection.
    fn top_up_listeners(&mut self, host: &mut Host, now: Instant) {
        let listening = self
            .conns
            .iter()
            .filter(|c| host.sockets.get::<tcp::Socket<'_>>(c.handle).state() == tcp::State::Listen)
            .count();
        for _ in listening..self.backlog {
            let handle = host.sockets.add(listener());
            self.conns.push(ServerConn {
                handle,
                active: false,
                inbox: Vec::new(),
                outbox: Vec::new(),
                last_activity: Some(now),
            });
        }
    }
}

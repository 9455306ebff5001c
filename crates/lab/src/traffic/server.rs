//! `ipshadow traffic serve`: the service in each VM. One task per connection reads requests,
//! checks every byte with [`respond`], and writes the response; a bad request resets that
//! connection and is counted.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use ipshadow_sim::app::proto::{message_len, respond};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::{ServeArgs, StopSignals, write_atomic};

/// Pending connections the kernel queues for us: a client opening its long-lived connections
/// all at once (and every client doing so after a restart) must not see SYNs dropped.
const BACKLOG: u32 = 1024;
/// How often `--status` is rewritten.
const STATUS_EVERY: Duration = Duration::from_millis(500);
/// A pause after a failed accept (out of descriptors): retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The server's counters, shared by the connection tasks.
#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    closed: AtomicU64,
    corrupt: AtomicU64,
}

/// The `--status` file's content.
#[derive(Debug, Serialize)]
struct Status {
    /// Connections accepted since the start.
    accepted: u64,
    /// Connections accepted and not closed yet.
    open: u64,
    /// Connections ended, for any reason (including `corrupt`).
    closed: u64,
    /// Connections reset because a request was wrong.
    corrupt: u64,
}

impl Counters {
    fn status(&self) -> Status {
        // `closed` is read first: a connection closing between the two reads then shows as
        // still open rather than making `open` negative.
        let closed = self.closed.load(Ordering::Relaxed);
        let corrupt = self.corrupt.load(Ordering::Relaxed);
        let accepted = self.accepted.load(Ordering::Relaxed);
        Status { accepted, open: accepted.saturating_sub(closed), closed, corrupt }
    }
}

/// Serves until SIGTERM or SIGINT, then writes the status a last time.
pub async fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let mut signals = StopSignals::install()?;
    let listener = listen(args.listen).with_context(|| format!("listening on {}", args.listen))?;
    let counters = Arc::new(Counters::default());
    if let Some(path) = &args.status {
        // A status file that cannot be written is a bad option: say so now, not every 500 ms.
        write_status(path, &counters).with_context(|| format!("writing {}", path.display()))?;
    }
    let local = listener.local_addr().unwrap_or(args.listen);
    eprintln!("ipshadow traffic: serving on {local}");
    let mut tick = tokio::time::interval(STATUS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            signal = signals.recv() => {
                eprintln!("ipshadow traffic: {signal}, stopping");
                break;
            }
            _ = tick.tick(), if args.status.is_some() => {
                if let Some(path) = &args.status
                    && let Err(e) = write_status(path, &counters)
                {
                    eprintln!("ipshadow traffic: warning: writing {}: {e}", path.display());
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    counters.accepted.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(connection(stream, Arc::clone(&counters)));
                }
                // The client gave up before we accepted: nothing to count, nothing to wait for.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    eprintln!("ipshadow traffic: accept: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    if let Some(path) = &args.status {
        write_status(path, &counters).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // A restarted server must not wait for its predecessor's TIME_WAIT sockets.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

fn write_status(path: &Path, counters: &Counters) -> io::Result<()> {
    let mut json = serde_json::to_vec(&counters.status()).map_err(io::Error::other)?;
    json.push(b'\n');
    write_atomic(path, &json)
}

/// One accepted connection, from accept to close.
async fn connection(mut stream: TcpStream, counters: Arc<Counters>) {
    // Request/response: each message is one write; Nagle would only delay it.
    let _ = stream.set_nodelay(true);
    if let Err(BadRequest) = answer(&mut stream).await {
        counters.corrupt.fetch_add(1, Ordering::Relaxed);
        // Reset rather than close: the client must see at once that this connection is broken,
        // and the kernel must not wait to deliver anything else on it.
        let _ = stream.set_zero_linger();
    }
    counters.closed.fetch_add(1, Ordering::Relaxed);
}

/// A request whose bytes are not the ones its header implies.
struct BadRequest;

/// Answers requests until the client closes or the connection fails (both `Ok`: the client's
/// business, not ours) or a request is wrong.
async fn answer(stream: &mut TcpStream) -> Result<(), BadRequest> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        buf.reserve(4096);
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
        while let Some(len) = message_len(&buf) {
            let response = respond(&buf[..len]).map_err(|_| BadRequest)?;
            buf.drain(..len);
            if stream.write_all(&response).await.is_err() {
                return Ok(());
            }
        }
        // A wrong header is refused at once, not after waiting for the up to 64 KiB of
        // payload its length field claims.
        if buf.len() >= 2 && (buf[0] != b'Q' || buf[1] != 0) {
            return Err(BadRequest);
        }
    }
}

//! `ipshadow traffic http`: a keep-alive HTTP/1.1 workload, as a connection pool uses a server.
//!
//! N slots, each with one persistent connection to the target, send `GET PATH` with a think
//! time between requests and check every response: status 200, `Content-Length`, and a body
//! that is exactly one of the bodies the servers serve (`--expect NAME=FILE`, which also tells
//! which server answered). What a pool does, the workload does (RFC 9112 9.3.1 and 9.6):
//! - an orderly close by the server (EOF while no request is outstanding, or `Connection:
//!   close`) is no failure: the slot opens a new connection for its next request
//!   (`server_closes`);
//! - a request sent on a reused connection that gets EOF before any byte of its response is
//!   retried once on a new connection (`retried`): the server closed the idle connection as
//!   the request crossed its FIN.
//!
//! Everything else is a failure: a reset (with a request outstanding, or on an idle
//! connection), a timeout, EOF without a response on a fresh connection or the retry, EOF in
//! the middle of a response, a bad response, a failed connect.

mod report;
mod response;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{ArgAction, Args};
use rand_core::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};

use self::report::{Failure, Ledger};
use self::response::{BadResponse, Bodies, parse_head};
use super::{StopSignals, write_atomic};

/// Long enough for the kernel's SYN retransmits (1 s, then 3 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One request, from its first byte written to its last response byte read.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// In closed loop (`--think 0`) the slots start spread over this much time.
const START_SPREAD: Duration = Duration::from_secs(1);
/// After a failure in closed loop, the slot waits this long before its next request (against a
/// dead server, at once would be a connect loop).
const FAILURE_PAUSE: Duration = Duration::from_millis(100);
/// How often `--progress` is rewritten.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// After the run stops, how long outstanding requests get to end (beyond their own timeout).
const DRAIN: Duration = Duration::from_secs(12);

/// Options of `ipshadow traffic http`.
#[derive(Args, Debug)]
pub struct HttpArgs {
    /// The server's address and port.
    #[arg(long, value_name = "IP:PORT")]
    target: SocketAddr,
    /// The path requested.
    #[arg(long, default_value = "/ipshadow.txt")]
    path: String,
    /// A body a server serves, and the name of that server (repeat for each server; at least
    /// one): every response must be exactly one of them.
    #[arg(long = "expect", value_name = "NAME=FILE", required = true)]
    expect: Vec<String>,
    /// Persistent connections (slots), each with one request outstanding at most.
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    connections: u32,
    /// Think time between two requests of a connection, milliseconds: MIN MAX (uniform), one
    /// value for a fixed time, or 0 for a closed loop (the next request as soon as the
    /// response is in, like wrk).
    #[arg(long, num_args = 1..=2, value_names = ["MIN", "MAX"], default_values_t = [200u64, 1000],
          action = ArgAction::Set)]
    think: Vec<u64>,
    /// Length of the run, seconds (SIGTERM or SIGINT stop it earlier).
    #[arg(long, value_name = "SECS", default_value_t = 60.0, value_parser = super::positive_seconds)]
    duration: f64,
    /// Seed of the think times.
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,
    /// Print the report as one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Write a progress snapshot as JSON to this file every 500 ms (atomically).
    #[arg(long, value_name = "FILE")]
    progress: Option<PathBuf>,
}

/// The validated options.
#[derive(Debug)]
struct Plan {
    target: SocketAddr,
    request: Vec<u8>,
    bodies: Bodies,
    connections: u32,
    think: (Duration, Duration),
    duration: Duration,
    seed: u64,
    json: bool,
    report: Option<PathBuf>,
    progress: Option<PathBuf>,
}

impl Plan {
    fn from_args(a: &HttpArgs) -> anyhow::Result<Plan> {
        let (min, max) = match *a.think.as_slice() {
            [t] => (t, t),
            [min, max] if min <= max => (min, max),
            [min, max] => bail!("--think: MAX ({max}) is below MIN ({min})"),
            _ => bail!("--think takes MIN MAX, one fixed value, or 0"),
        };
        if max > 3_600_000 {
            bail!("--think: at most 3600000 ms");
        }
        if !a.path.starts_with('/') || a.path.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
            bail!("--path must start with '/' and hold no spaces or control characters");
        }
        let mut bodies = Bodies::default();
        for e in &a.expect {
            let Some((name, file)) = e.split_once('=').filter(|(n, f)| !n.is_empty() && !f.is_empty()) else {
                bail!("--expect {e:?}: NAME=FILE");
            };
            let body = std::fs::read(file).with_context(|| format!("--expect {name}: reading {file}"))?;
            bodies.add(name, body).map_err(|e| anyhow::anyhow!("--expect {e}"))?;
        }
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ipshadow-traffic\r\nAccept: */*\r\n\r\n",
            a.path,
            a.target.ip()
        );
        Ok(Plan {
            target: a.target,
            request: request.into_bytes(),
            bodies,
            connections: a.connections,
            think: (Duration::from_millis(min), Duration::from_millis(max)),
            duration: Duration::from_secs_f64(a.duration),
            seed: a.seed,
            json: a.json,
            report: a.report.clone(),
            progress: a.progress.clone(),
        })
    }
}

/// Runs `ipshadow traffic http` until its duration ends or SIGTERM/SIGINT.
pub fn run(args: &HttpArgs) -> anyhow::Result<()> {
    // Validate before anything starts, so a bad option costs nothing and says one line.
    let plan = Plan::from_args(args)?;
    super::block_on(run_plan(plan))
}

/// What every slot shares.
struct Ctx {
    plan: Plan,
    ledger: Ledger,
    start: Instant,
}

async fn run_plan(plan: Plan) -> anyhow::Result<()> {
    let mut signals = StopSignals::install()?;
    let think_ms = [plan.think.0.as_millis() as u64, plan.think.1.as_millis() as u64];
    let ledger = Ledger::new(plan.connections, think_ms, plan.bodies.names());
    let ctx = Arc::new(Ctx { plan, ledger, start: Instant::now() });
    let progress = ctx.plan.progress.clone();
    if let Some(path) = &progress {
        write_progress(&ctx, path).with_context(|| format!("writing {}", path.display()))?;
    }
    let (stop_tx, stop) = watch::channel(false);
    let mut slots = JoinSet::new();
    for slot in 0..ctx.plan.connections {
        slots.spawn(run_slot(Arc::clone(&ctx), slot, stop.clone()));
    }
    let deadline = ctx.start + ctx.plan.duration;
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    loop {
        tokio::select! {
            _ = sleep_until(deadline) => break,
            signal = signals.recv() => {
                eprintln!("ipshadow traffic http: {signal}, stopping");
                break;
            }
            _ = tick.tick(), if progress.is_some() => {
                if let Some(path) = &progress
                    && let Err(e) = write_progress(&ctx, path)
                {
                    eprintln!("ipshadow traffic http: warning: writing {}: {e}", path.display());
                }
            }
        }
    }
    let duration_s = ctx.start.elapsed().as_secs_f64();
    // Thinking slots stop at once; a slot with a request outstanding finishes it first.
    let _ = stop_tx.send(true);
    if timeout(DRAIN, async { while slots.join_next().await.is_some() {} }).await.is_err() {
        // The ledger counts what did not end as unfinished.
        slots.abort_all();
    }
    let report = ctx.ledger.finish(duration_s);
    if let Some(path) = &progress {
        write_progress(&ctx, path).with_context(|| format!("writing {}", path.display()))?;
    }
    super::emit_report(&report, &report.summary(), ctx.plan.json, ctx.plan.report.as_deref())
}

fn write_progress(ctx: &Ctx, path: &std::path::Path) -> std::io::Result<()> {
    let mut json =
        serde_json::to_vec(&ctx.ledger.progress(ctx.start.elapsed().as_secs_f64())).map_err(std::io::Error::other)?;
    json.push(b'\n');
    write_atomic(path, &json)
}

/// A slot's connection.
struct Conn {
    stream: TcpStream,
    /// Responses it carried: a request on a connection with some is on a reused connection.
    responses: u64,
}

/// What a slot saw while it was thinking.
enum Idle {
    /// The think time passed, the connection (if any) still open.
    Thought,
    /// The run stopped.
    Stopped,
}

/// One slot: think, request, think, ... until the run stops; reconnects whenever its
/// connection ended.
async fn run_slot(ctx: Arc<Ctx>, slot: u32, mut stop: watch::Receiver<bool>) {
    let mut rng = Pcg64Mcg::seed_from_u64(ctx.plan.seed ^ u64::from(slot).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let (min, max) = ctx.plan.think;
    let closed_loop = max.is_zero();
    let mut conn: Option<Conn> = None;
    let mut pause = if closed_loop { START_SPREAD * slot / ctx.plan.connections.max(1) } else { Duration::ZERO };
    loop {
        let think = if closed_loop { pause } else { min + (max - min).mul_f64(unit(&mut rng)) };
        if let Idle::Stopped = idle(&ctx, &mut conn, think, &mut stop).await {
            return;
        }
        pause = Duration::ZERO;
        if !request(&ctx, &mut conn).await {
            pause = FAILURE_PAUSE;
        }
    }
}

fn unit(rng: &mut Pcg64Mcg) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Waits `think` with no request outstanding, watching the connection: an EOF is the
/// server's orderly close, a RST a reset while idle, bytes are unsolicited; each ends the
/// connection (the next request opens a new one).
async fn idle(ctx: &Ctx, conn: &mut Option<Conn>, think: Duration, stop: &mut watch::Receiver<bool>) -> Idle {
    if *stop.borrow() {
        return Idle::Stopped;
    }
    if think.is_zero() {
        // Closed loop: the next request at once, whatever the socket holds (a FIN shows as EOF
        // before the response, which the request's retry handles).
        return Idle::Thought;
    }
    let until = Instant::now() + think;
    loop {
        let Some(c) = conn.as_mut() else {
            return tokio::select! {
                _ = stop.wait_for(|s| *s) => Idle::Stopped,
                _ = sleep_until(until) => Idle::Thought,
            };
        };
        let mut byte = [0u8; 1];
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return Idle::Stopped,
            _ = sleep_until(until) => return Idle::Thought,
            read = c.stream.read(&mut byte) => {
                match read {
                    Ok(0) => ctx.ledger.server_closed(),
                    Ok(_) => ctx.ledger.failed_idle(Failure::BadResponse),
                    Err(e) if is_reset(&e) => ctx.ledger.failed_idle(Failure::ResetIdle),
                    Err(_) => ctx.ledger.failed_idle(Failure::IoError),
                }
                *conn = None;
            }
        }
    }
}

/// One request with its one allowed retry; `false` if it failed.
async fn request(ctx: &Ctx, conn: &mut Option<Conn>) -> bool {
    ctx.ledger.request();
    let reused = conn.as_ref().is_some_and(|c| c.responses > 0);
    match attempt(ctx, conn).await {
        Ok(()) => true,
        // RFC 9112 9.3.1: a request on a reused connection that the server closed before any
        // response byte may be retried; a GET is idempotent. Once, on a new connection.
        Err(Failure::EofNoResponse) if reused => {
            ctx.ledger.retried();
            match attempt(ctx, conn).await {
                Ok(()) => true,
                Err(failure) => {
                    ctx.ledger.failed(failure);
                    false
                }
            }
        }
        Err(failure) => {
            ctx.ledger.failed(failure);
            false
        }
    }
}

/// Sends the request on the slot's connection (a new one if it has none) and verifies the
/// response. The connection is kept when the response was verified and the server keeps it.
async fn attempt(ctx: &Ctx, conn: &mut Option<Conn>) -> Result<(), Failure> {
    if conn.is_none() {
        let stream = match timeout(CONNECT_TIMEOUT, TcpStream::connect(ctx.plan.target)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(_)) | Err(_) => return Err(Failure::Connect),
        };
        // Each request is one write; Nagle would only delay it.
        let _ = stream.set_nodelay(true);
        ctx.ledger.connected();
        *conn = Some(Conn { stream, responses: 0 });
    }
    let Some(c) = conn.as_mut() else { return Err(Failure::Connect) };
    let started = Instant::now();
    let result = match timeout(REQUEST_TIMEOUT, exchange(&ctx.plan, &mut c.stream)).await {
        Err(_) => Err(Failure::Timeout),
        Ok(r) => r,
    };
    match result {
        Ok((server, close)) => {
            ctx.ledger.verified(server, started.elapsed().as_secs_f64() * 1e3);
            c.responses += 1;
            if close {
                ctx.ledger.server_closed();
                *conn = None;
            }
            Ok(())
        }
        Err(failure) => {
            *conn = None;
            Err(failure)
        }
    }
}

/// Writes the request and reads one response; the name of the server whose body it carried and
/// whether the server closes the connection after it.
async fn exchange<'p>(plan: &'p Plan, stream: &mut TcpStream) -> Result<(&'p str, bool), Failure> {
    stream.write_all(&plan.request).await.map_err(|e| io_failure(&e))?;
    let mut buf = Vec::with_capacity(1024 + plan.bodies.max_len());
    let mut chunk = vec![0u8; 16 * 1024];
    let bad = |_: BadResponse| Failure::BadResponse;
    let head = loop {
        let n = stream.read(&mut chunk).await.map_err(|e| io_failure(&e))?;
        if n == 0 {
            return Err(if buf.is_empty() { Failure::EofNoResponse } else { Failure::EofMidResponse });
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(head) = parse_head(&buf).map_err(bad)? {
            break head;
        }
    };
    if !plan.bodies.length_known(head.content_length) {
        return Err(Failure::BadResponse);
    }
    // Known lengths are those of files the client read: they fit in memory.
    let total = head.len + head.content_length as usize;
    while buf.len() < total {
        let n = stream.read(&mut chunk).await.map_err(|e| io_failure(&e))?;
        if n == 0 {
            return Err(Failure::EofMidResponse);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    // One request outstanding at most: anything after the body was not asked for.
    if buf.len() > total {
        return Err(Failure::BadResponse);
    }
    let server = plan.bodies.which(&buf[head.len..]).map_err(bad)?;
    Ok((server, head.close))
}

fn is_reset(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(e.kind(), K::ConnectionReset | K::BrokenPipe | K::ConnectionAborted)
}

fn io_failure(e: &std::io::Error) -> Failure {
    if is_reset(e) {
        Failure::Reset
    } else if e.kind() == std::io::ErrorKind::TimedOut {
        Failure::Timeout
    } else {
        Failure::IoError
    }
}

//! `ipshadow traffic run`: the clients. One task per connection; long-lived connections live in
//! slots (a slot replaces its connection when it ends), short ones are started at the churn
//! rate. Every outcome goes to the [`Ledger`]; the report is built from it at the end.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Context;
use ipshadow_sim::app::proto::{request, respond};
use rand_core::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until, timeout};

use super::ledger::{Ledger, Outcome};
use super::report::{Cause, Kind};
use super::{Plan, StopSignals, write_atomic};

/// Long enough for the kernel's SYN retransmits (1 s, then 3 s) to cover a router restart.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One request and its response. TCP retransmits (200 ms RTO, doubling) cover a router
/// restart of under 2 s well within this; shorter would count such a restart as broken.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// The long-lived connections start spread over this much time, not in one burst of SYNs.
const START_SPREAD: Duration = Duration::from_secs(2);
/// How long a clean close waits for the server's FIN before leaving the rest to the kernel.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// How often `--progress` is rewritten.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// After the run stops, how long connection tasks get to report before they are cancelled.
const DRAIN: Duration = Duration::from_secs(5);
/// Connection ids: the client id in the top byte, a counter in the other three.
const COUNTER_MASK: u32 = 0x00ff_ffff;

/// What every connection task shares.
struct Ctx {
    plan: Plan,
    ledger: Ledger,
    start: Instant,
    counter: AtomicU32,
}

impl Ctx {
    fn next_id(&self) -> u32 {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) & COUNTER_MASK;
        (u32::from(self.plan.client_id) << 24) | n
    }

    fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

/// Runs the plan until its duration ends or SIGTERM/SIGINT, then reports.
pub async fn run(plan: Plan) -> anyhow::Result<()> {
    let mut signals = StopSignals::install()?;
    let ctx = Arc::new(Ctx { plan, ledger: Ledger::new(), start: Instant::now(), counter: AtomicU32::new(0) });
    let progress = ctx.plan.progress.clone();
    if let Some(path) = &progress {
        // An unwritable progress file is a bad option: say so before any traffic starts.
        write_progress(&ctx, path).with_context(|| format!("writing {}", path.display()))?;
    }
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for slot in 0..ctx.plan.long_lived {
        tasks.spawn(long_lived_slot(Arc::clone(&ctx), slot, stop.clone()));
    }
    if ctx.plan.churn > 0.0 {
        tasks.spawn(churn(Arc::clone(&ctx), stop.clone()));
    }
    let deadline = ctx.start + ctx.plan.duration;
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    loop {
        tokio::select! {
            _ = sleep_until(deadline) => break,
            signal = signals.recv() => {
                eprintln!("ipshadow traffic: {signal}, stopping");
                break;
            }
            _ = tick.tick(), if progress.is_some() => {
                if let Some(path) = &progress
                    && let Err(e) = write_progress(&ctx, path)
                {
                    eprintln!("ipshadow traffic: warning: writing {}: {e}", path.display());
                }
            }
        }
    }
    let duration_s = ctx.elapsed_s();
    // Every task waits on `stop`: open connections end at once and report themselves `open`.
    let _ = stop_tx.send(true);
    if timeout(DRAIN, async { while tasks.join_next().await.is_some() {} }).await.is_err() {
        // The ledger counts what did not report as open.
        tasks.abort_all();
    }
    let report = ctx.ledger.finish(duration_s);
    if let Some(path) = &progress {
        write_progress(&ctx, path).with_context(|| format!("writing {}", path.display()))?;
    }
    super::emit_report(&report, &report.summary(), ctx.plan.json, ctx.plan.report.as_deref())
}

fn write_progress(ctx: &Ctx, path: &std::path::Path) -> io::Result<()> {
    let mut json = serde_json::to_vec(&ctx.ledger.progress(ctx.elapsed_s())).map_err(io::Error::other)?;
    json.push(b'\n');
    write_atomic(path, &json)
}

/// Sleeps `d` unless the run stops first; `true` if it stopped.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = stop.wait_for(|s| *s) => true,
        _ = sleep(d) => false,
    }
}

/// Keeps one long-lived connection open from its start (spread over the first seconds) to the
/// end of the run, replacing it whenever it ends.
async fn long_lived_slot(ctx: Arc<Ctx>, slot: u32, mut stop: watch::Receiver<bool>) {
    if sleep_or_stop(START_SPREAD * slot / ctx.plan.long_lived.max(1), &mut stop).await {
        return;
    }
    loop {
        let outcome = connection(&ctx, Kind::LongLived, &mut stop).await;
        if *stop.borrow() {
            return;
        }
        // A broken one is retried after an interval: against a dead server, at once would be a
        // connect loop that only inflates the broken count.
        if matches!(outcome, Outcome::Broken(..)) && sleep_or_stop(ctx.plan.interval, &mut stop).await {
            return;
        }
    }
}

/// Starts short connections at the churn rate until the run stops, then waits for them.
async fn churn(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    // Missed ticks are made up (the default burst behaviour), so the rate holds even above the
    // timer's 1 ms resolution.
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / ctx.plan.churn));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            _ = tick.tick() => {}
        }
        while conns.try_join_next().is_some() {}
        let (ctx, mut stop) = (Arc::clone(&ctx), stop.clone());
        conns.spawn(async move { connection(&ctx, Kind::Churn, &mut stop).await });
    }
    while conns.join_next().await.is_some() {}
}

/// One connection from connect to close, recorded in the ledger.
async fn connection(ctx: &Ctx, kind: Kind, stop: &mut watch::Receiver<bool>) -> Outcome {
    let id = ctx.next_id();
    // Per connection id: the same seed gives each connection the same lifetime and sizes,
    // whatever the timing of the others.
    let mut rng = Pcg64Mcg::seed_from_u64(ctx.plan.seed ^ u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let started_s = ctx.elapsed_s();
    ctx.ledger.started(kind);
    let mut local = None;
    let result = tokio::select! {
        // The run's end wins a tie: a connection alive at the end is open, whatever it was doing.
        biased;
        _ = stop.wait_for(|s| *s) => None,
        r = exchanges(ctx, kind, id, &mut rng, &mut local) => Some(r),
    };
    let outcome = match result {
        None => Outcome::Open,
        Some(Ok(Ended::ByServer)) => Outcome::ClosedByServer,
        Some(Ok(Ended::Planned(stream))) => match close(stream).await {
            Ok(()) => Outcome::Completed,
            Err(cause) => Outcome::Broken(cause, local, ctx.elapsed_s()),
        },
        Some(Err(cause)) => Outcome::Broken(cause, local, ctx.elapsed_s()),
    };
    ctx.ledger.ended(kind, started_s, outcome);
    outcome
}

/// How a connection's exchanges ended without an error.
enum Ended {
    /// Its lifetime is over: the stream, for the client's clean close.
    Planned(TcpStream),
    /// The server closed it in order at an idle moment: between exchanges, or as the next
    /// request crossed its FIN (EOF before any byte of the response; RFC 9112 9.3.1 calls
    /// this a close a client retries on a new connection, and the slot opens one).
    ByServer,
}

/// Connects and runs the connection's exchanges.
async fn exchanges(
    ctx: &Ctx,
    kind: Kind,
    id: u32,
    rng: &mut Pcg64Mcg,
    local: &mut Option<SocketAddr>,
) -> Result<Ended, Cause> {
    let mut stream = match timeout(CONNECT_TIMEOUT, TcpStream::connect(ctx.plan.target)).await {
        Err(_) => return Err(Cause::ConnectTimeout),
        Ok(Err(e)) => return Err(connect_cause(&e)),
        Ok(Ok(stream)) => stream,
    };
    *local = stream.local_addr().ok();
    // Request/response: each message is one write; Nagle would only delay it.
    let _ = stream.set_nodelay(true);
    match kind {
        Kind::Churn => {
            for seq in 0..1 + (rng.next_u64() % 3) as u32 {
                if !exchange(ctx, &mut stream, id, seq, rng).await? {
                    return Ok(Ended::ByServer);
                }
            }
        }
        Kind::LongLived => {
            let (min, max) = ctx.plan.lifetime;
            let unit = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            let end = Instant::now() + Duration::from_secs_f64(min + (max - min) * unit);
            let mut next = Instant::now();
            let mut seq = 0u32;
            while next < end {
                if !exchange(ctx, &mut stream, id, seq, rng).await? {
                    return Ok(Ended::ByServer);
                }
                seq = seq.wrapping_add(1);
                // After a slow exchange (retransmits) carry on from now rather than catching
                // up with a burst.
                next = (next + ctx.plan.interval).max(Instant::now());
                if !idle_until(&mut stream, next.min(end)).await? {
                    return Ok(Ended::ByServer);
                }
            }
        }
    }
    Ok(Ended::Planned(stream))
}

/// Waits until `until` with no exchange outstanding, watching the connection: `false` when
/// the server closed it in order (EOF), an error for a reset or bytes nobody asked for.
async fn idle_until(stream: &mut TcpStream, until: Instant) -> Result<bool, Cause> {
    let mut byte = [0u8; 1];
    tokio::select! {
        _ = sleep_until(until) => Ok(true),
        read = stream.read(&mut byte) => match read {
            Ok(0) => Ok(false),
            Ok(_) => Err(Cause::Corrupt),
            Err(e) => Err(io_cause(&e)),
        },
    }
}

/// One request and its response, every response byte checked against the one it must be.
/// `false` when the server had closed the connection in order before any byte of the response
/// to a request after the first (the request crossed the server's FIN).
async fn exchange(ctx: &Ctx, stream: &mut TcpStream, id: u32, seq: u32, rng: &mut Pcg64Mcg) -> Result<bool, Cause> {
    let len = 16 + (rng.next_u64() % 1009) as u16;
    let message = request(id, seq, len);
    // Our own request is always well formed; if not, nothing this run measures can be trusted.
    let expect = respond(&message).map_err(|_| Cause::Corrupt)?;
    let round_trip = async {
        stream.write_all(&message).await.map_err(|e| io_cause(&e))?;
        let mut buf = vec![0u8; expect.len()];
        let mut got = 0;
        while got < expect.len() {
            let n = stream.read(&mut buf[got..]).await.map_err(|e| io_cause(&e))?;
            if n == 0 && got == 0 && seq > 0 {
                // An orderly close the request crossed: nothing of the response was lost.
                return Ok(false);
            }
            if n == 0 {
                // The server closed while our response was outstanding.
                return Err(Cause::Reset);
            }
            // Checked as it arrives: a wrong byte is reported at once, not after a timeout.
            if buf[got..got + n] != expect[got..got + n] {
                return Err(Cause::Corrupt);
            }
            got += n;
        }
        Ok(true)
    };
    let answered = timeout(EXCHANGE_TIMEOUT, round_trip).await.map_err(|_| Cause::Timeout)??;
    if answered {
        ctx.ledger.exchange(expect.len());
    }
    Ok(answered)
}

/// Closes cleanly: our FIN, then the server's. Bytes after the last response are corrupt; a
/// server slow to close is the kernel's business, not a broken connection.
async fn close(mut stream: TcpStream) -> Result<(), Cause> {
    if stream.shutdown().await.is_err() {
        return Ok(());
    }
    let mut byte = [0u8; 1];
    match timeout(CLOSE_WAIT, stream.read(&mut byte)).await {
        Ok(Ok(n)) if n > 0 => Err(Cause::Corrupt),
        _ => Ok(()),
    }
}

fn io_cause(e: &io::Error) -> Cause {
    use io::ErrorKind as K;
    match e.kind() {
        K::ConnectionReset | K::BrokenPipe | K::ConnectionRefused | K::ConnectionAborted | K::UnexpectedEof => {
            Cause::Reset
        }
        K::TimedOut => Cause::Timeout,
        K::HostUnreachable | K::NetworkUnreachable => Cause::Unreachable,
        _ => Cause::IoError,
    }
}

fn connect_cause(e: &io::Error) -> Cause {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Cause::ConnectRefused,
        io::ErrorKind::TimedOut => Cause::ConnectTimeout,
        _ => Cause::ConnectError,
    }
}

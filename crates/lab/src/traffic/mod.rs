//! `ipshadow traffic`: the lab's traffic generator, on the kernel's real TCP.
//!
//! `serve` runs in each VM namespace and answers the workload protocol of
//! [`ipshadow_sim::app::proto`]; `run` runs in each client namespace, keeps long-lived
//! connections open and opens short ones, and reports what happened to every connection.
//! Every byte is verified at both ends: the server checks each request, the client each response.
//! `http` is a keep-alive HTTP/1.1 client for a real web server in the VMs (the lab's nginx),
//! every response verified, reconnecting on an orderly close as a connection pool does.

mod client;
pub mod http;
mod ledger;
pub mod report;
mod server;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{ArgAction, Args, Subcommand};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// Options of `ipshadow traffic`.
#[derive(Args, Debug)]
pub struct TrafficArgs {
    #[command(subcommand)]
    command: TrafficCommand,
}

#[derive(Subcommand, Debug)]
enum TrafficCommand {
    /// Answer the workload's requests (in a VM), verifying every request byte.
    Serve(ServeArgs),
    /// Open long-lived and short connections to a server (in a client) and report what
    /// happened to each of them.
    Run(RunArgs),
    /// Keep persistent HTTP/1.1 connections to a web server (in a client) and send GET requests
    /// with a think time between them, verifying every response; reconnect on an orderly close.
    Http(http::HttpArgs),
}

/// Options of `ipshadow traffic serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address and port to listen on.
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:7000")]
    listen: SocketAddr,
    /// Write the counters as JSON to this file every 500 ms (atomically: FILE.tmp, then rename).
    #[arg(long, value_name = "FILE")]
    status: Option<PathBuf>,
}

/// Options of `ipshadow traffic run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The server's address and port.
    #[arg(long, value_name = "IP:PORT")]
    target: SocketAddr,
    /// Long-lived connections kept open (each replaced when its lifetime ends).
    #[arg(long, value_name = "N", default_value_t = 100)]
    long_lived: u32,
    /// Shortest and longest lifetime of a long-lived connection, seconds (uniform between).
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], default_values_t = [20.0, 40.0],
          value_parser = positive_seconds, action = ArgAction::Set)]
    lifetime: Vec<f64>,
    /// Milliseconds between two exchanges on a long-lived connection.
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    interval_ms: u64,
    /// New short connections per second (0: none).
    #[arg(long, value_name = "RATE", default_value_t = 10.0, value_parser = churn_rate)]
    churn: f64,
    /// Length of the run, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60.0, value_parser = positive_seconds)]
    duration: f64,
    /// Seed of the lifetimes and payload sizes (per connection id).
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,
    /// This process's id among the clients of one run: the top byte of every connection id, so
    /// that ids stay unique across client processes.
    #[arg(long, value_name = "K", default_value_t = 0)]
    client_id: u8,
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

/// The validated options of a run.
#[derive(Debug)]
struct Plan {
    target: SocketAddr,
    long_lived: u32,
    lifetime: (f64, f64),
    interval: Duration,
    churn: f64,
    duration: Duration,
    seed: u64,
    client_id: u8,
    json: bool,
    report: Option<PathBuf>,
    progress: Option<PathBuf>,
}

impl Plan {
    /// Checks what clap's parsers cannot check alone.
    fn from_args(a: &RunArgs) -> anyhow::Result<Plan> {
        let &[min, max] = a.lifetime.as_slice() else { bail!("--lifetime takes two values: MIN MAX") };
        if max < min {
            bail!("--lifetime: MAX ({max}) is below MIN ({min})");
        }
        Ok(Plan {
            target: a.target,
            long_lived: a.long_lived,
            lifetime: (min, max),
            interval: Duration::from_millis(a.interval_ms),
            churn: a.churn,
            duration: Duration::from_secs_f64(a.duration),
            seed: a.seed,
            client_id: a.client_id,
            json: a.json,
            report: a.report.clone(),
            progress: a.progress.clone(),
        })
    }
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        // A week is far beyond any lab run and keeps Duration::from_secs_f64 from overflowing.
        Ok(v) if v.is_finite() && v > 0.0 && v <= 604_800.0 => Ok(v),
        Ok(_) => Err("must be a number of seconds above 0 (at most 604800)".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn churn_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=100_000.0).contains(&v) => Ok(v),
        Ok(_) => Err("must be between 0 and 100000 connections per second".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Runs `ipshadow traffic serve` or `ipshadow traffic run` until it ends (the run's duration)
/// or SIGTERM/SIGINT stops it.
pub fn run(args: &TrafficArgs) -> anyhow::Result<()> {
    match &args.command {
        TrafficCommand::Serve(a) => block_on(server::serve(a)),
        TrafficCommand::Run(a) => {
            // Validate before anything starts, so a bad option costs nothing and says one line.
            let plan = Plan::from_args(a)?;
            block_on(client::run(plan))
        }
        TrafficCommand::Http(a) => http::run(a),
    }
}

/// Runs `task` to its end on a fresh runtime.
fn block_on(task: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    raise_nofile_limit();
    // Two workers: the lab runs several of these processes on a small machine, and one task
    // per connection needs no more.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = rt.block_on(task);
    // Connection tasks still running are cancelled; their sockets close with the process.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Thousands of connections need thousands of descriptors; the usual soft limit is 1024.
fn raise_nofile_limit() {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("ipshadow traffic: warning: could not raise the open-file limit: {e}");
    }
}

/// SIGTERM and SIGINT, the two ways the lab and a person stop a traffic process.
struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    /// Installs the handlers (from here on neither signal kills the process).
    fn install() -> anyhow::Result<Self> {
        let term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        Ok(StopSignals { term, int })
    }

    /// Waits for either signal and names it.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Writes `bytes` to `path` so that a reader sees the old or the new content, never a mix:
/// write `path.tmp`, then rename it over `path`.
/// Prints a run's report (JSON, or the summary) and writes the JSON to `file` if asked.
fn emit_report(report: &impl serde::Serialize, summary: &str, json: bool, file: Option<&Path>) -> anyhow::Result<()> {
    let encoded = serde_json::to_string(report).context("encoding the report")?;
    if json {
        println!("{encoded}");
    } else {
        print!("{summary}");
    }
    if let Some(path) = file {
        write_atomic(path, format!("{encoded}\n").as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

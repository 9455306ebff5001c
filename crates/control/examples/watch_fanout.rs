//! Fan-out of the router's desired state on etcd (issue 14): one writer, many processes watching
//! the key as routers do, each with its own `EtcdStore` connection; per write, the time until
//! the last of them has it decoded.
//!
//! `watch_fanout bench --endpoints H:P,H:P,... [--watchers 50] [--writes 200] [--interval-ms 50]
//! [--addresses 300] [--prefix /ipshadow-bench]` starts `--watchers` copies of itself in `watch`
//! mode, waits until each watches, then writes a desired-state document (`--addresses` plain
//! addresses, about 20 bytes each) `--writes` times, one every `--interval-ms`. Each watcher
//! decodes every version it receives (the router's own decode, [`Desired`]) and prints the
//! version's revision and the time (unix microseconds; one host, one clock). Per write: from just
//! before the call and from the call's return (committed) to the last watcher's receipt. Ends
//! with `RESULT watch_fanout_p50_ms=... p99_ms=... max_ms=... committed_p99_ms=...
//! watchers=... writes=... doc_bytes=...`.
//!
//! The watchers are killed by pid when the bench ends (also when it fails), and each exits by
//! itself when its standard input closes (the bench gone, even by SIGKILL).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipshadow_contracts::router::Desired;
use ipshadow_control::bus::router_desired_key;
use ipshadow_control::{EtcdStore, Store, Txn, TxnOutcome, WatchEvent};
use ipshadow_core::VmId;

/// The router whose slice the watchers follow (all of them: a change that concerns every router).
const SLICE: &str = "bench";

type Error = Box<dyn std::error::Error + Send + Sync>;

/// How long after the last write every watcher's receipt may still come.
const SETTLE: Duration = Duration::from_secs(10);

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = Options::parse(&args[1.min(args.len())..])?;
    match args.first().map(String::as_str) {
        Some("bench") => bench(&options),
        Some("watch") => watch(&options),
        _ => Err("usage: watch_fanout bench|watch --endpoints H:P,... [--watchers N] [--writes N] \
                  [--interval-ms MS] [--addresses N] [--prefix P]"
            .into()),
    }
}

/// The command line's options.
struct Options {
    endpoints: Vec<String>,
    watchers: usize,
    writes: usize,
    interval: Duration,
    addresses: usize,
    prefix: String,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, Error> {
        let mut o = Self {
            endpoints: Vec::new(),
            watchers: 50,
            writes: 200,
            interval: Duration::from_millis(50),
            addresses: 300,
            prefix: "/ipshadow-bench".into(),
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--endpoints" => o.endpoints = value.split(',').map(|h| format!("http://{h}")).collect(),
                "--watchers" => o.watchers = value.parse()?,
                "--writes" => o.writes = value.parse()?,
                "--interval-ms" => o.interval = Duration::from_millis(value.parse()?),
                "--addresses" => o.addresses = value.parse()?,
                "--prefix" => o.prefix = value.clone(),
                other => return Err(format!("unknown option {other}").into()),
            }
        }
        if o.endpoints.is_empty() {
            return Err("--endpoints is needed".into());
        }
        if o.watchers == 0 || o.writes == 0 {
            return Err("--watchers and --writes must be at least 1".into());
        }
        Ok(o)
    }

    /// The same options for a watcher.
    fn for_watcher(&self) -> Vec<String> {
        let hosts: Vec<_> = self.endpoints.iter().map(|e| e.trim_start_matches("http://")).collect();
        vec!["watch".into(), "--endpoints".into(), hosts.join(","), "--prefix".into(), self.prefix.clone()]
    }
}

fn unix_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// `watch` mode: prints `ready`, then `<revision> <unix us>` for each version decoded.
fn watch(options: &Options) -> Result<(), Error> {
    // The bench gone (its end of our stdin closed): this process goes too.
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let store = EtcdStore::connect(&options.endpoints, &options.prefix)?;
    let (_, revision) = store.range(&router_desired_key(SLICE))?;
    let watcher = store.watch(&router_desired_key(SLICE), revision)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    loop {
        match watcher.next_timeout(Duration::from_secs(1)) {
            Some(WatchEvent::Put(kv)) => {
                let desired: Desired = serde_json::from_slice(&kv.value)?;
                let at = unix_us();
                writeln!(out, "{} {} {}", kv.mod_revision, at, desired.addresses.len())?;
                out.flush()?;
            }
            Some(WatchEvent::Delete { .. }) => {}
            None => {
                if let Some(e) = watcher.failure() {
                    return Err(e.into());
                }
            }
        }
    }
}

/// The watcher processes, killed by pid when dropped.
struct Watchers(Vec<Child>);

impl Drop for Watchers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}

/// A desired state of `n` plain addresses, version `i` (one address moved each time).
fn document(n: usize, i: usize) -> Result<Vec<u8>, Error> {
    let mut desired = Desired::default();
    for a in 0..n {
        let ip = Ipv4Addr::new(10, 0, 1 + (a / 250) as u8, 1 + (a % 250) as u8);
        let vm = if a == i % n.max(1) { "vm-b" } else { "vm-a" };
        desired.addresses.insert(ip, VmId(vm.into()));
    }
    Ok(serde_json::to_vec(&desired)?)
}

fn bench(options: &Options) -> Result<(), Error> {
    let exe = std::env::current_exe()?;
    let (tx, receipts) = mpsc::channel::<(usize, String)>();
    let mut watchers = Watchers(Vec::new());
    for w in 0..options.watchers {
        let mut child = Command::new(&exe)
            .args(options.for_watcher())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("a watcher without stdout")?;
        watchers.0.push(child);
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send((w, line)).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    // Every watcher watches before the first write.
    let mut ready = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready < options.watchers {
        let left = deadline.saturating_duration_since(Instant::now());
        match receipts.recv_timeout(left) {
            Ok((_, line)) if line == "ready" => ready += 1,
            Ok((w, line)) => return Err(format!("watcher {w}: {line}").into()),
            Err(_) => return Err(format!("{ready} of {} watchers ready within 60 s", options.watchers).into()),
        }
    }
    let store = EtcdStore::connect(&options.endpoints, &options.prefix)?;
    // revision -> (before the call, after it), unix microseconds.
    let mut writes: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut doc_bytes = 0;
    let start = Instant::now();
    for i in 0..options.writes {
        let doc = document(options.addresses, i)?;
        doc_bytes = doc.len();
        // Spaced from the start, not from the last write's end.
        let next = start + options.interval * i as u32;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let before = unix_us();
        match store.txn(Txn::new().put(router_desired_key(SLICE), doc))? {
            TxnOutcome::Committed(revision) => {
                writes.insert(revision, (before, unix_us()));
            }
            TxnOutcome::Failed(_) => return Err("an unconditional put failed".into()),
        }
    }
    // revision -> each watcher's receipt.
    let mut received: HashMap<u64, Vec<u64>> = HashMap::new();
    let wanted = writes.len() * options.watchers;
    let mut got = 0;
    let deadline = Instant::now() + SETTLE;
    while got < wanted {
        let Ok((w, line)) = receipts.recv_timeout(deadline.saturating_duration_since(Instant::now())) else { break };
        let mut fields = line.split(' ').map(str::parse::<u64>);
        let (Some(Ok(revision)), Some(Ok(at))) = (fields.next(), fields.next()) else {
            return Err(format!("watcher {w}: {line}").into());
        };
        if writes.contains_key(&revision) {
            received.entry(revision).or_default().push(at);
            got += 1;
        }
    }
    drop(watchers);
    let incomplete = writes.keys().filter(|r| received.get(r).map_or(0, Vec::len) < options.watchers).count();
    if incomplete > 0 {
        return Err(
            format!("{incomplete} of {} writes did not reach every watcher within {SETTLE:?}", writes.len()).into()
        );
    }
    let (mut from_call, mut from_commit, mut first) = (Vec::new(), Vec::new(), Vec::new());
    for (revision, (before, after)) in &writes {
        let times = &received[revision];
        let last = times.iter().copied().max().unwrap_or(0);
        let earliest = times.iter().copied().min().unwrap_or(0);
        from_call.push(ms(last.saturating_sub(*before)));
        from_commit.push(ms(last.saturating_sub(*after)));
        first.push(ms(earliest.saturating_sub(*before)));
    }
    for (name, v) in [
        ("write call -> last of the watchers decoded it", &mut from_call),
        ("write committed -> last of the watchers decoded it", &mut from_commit),
        ("write call -> first of the watchers decoded it", &mut first),
    ] {
        v.sort_by(f64::total_cmp);
        println!(
            "{name}: n={} p50={:.2} ms p90={:.2} ms p99={:.2} ms max={:.2} ms",
            v.len(),
            pct(v, 50.0),
            pct(v, 90.0),
            pct(v, 99.0),
            v[v.len() - 1]
        );
    }
    println!(
        "RESULT watch_fanout_p50_ms={:.2} p99_ms={:.2} max_ms={:.2} committed_p99_ms={:.2} watchers={} writes={} \
         doc_bytes={doc_bytes}",
        pct(&from_call, 50.0),
        pct(&from_call, 99.0),
        from_call[from_call.len() - 1],
        pct(&from_commit, 99.0),
        options.watchers,
        writes.len()
    );
    Ok(())
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The `p`th percentile of sorted `values` (nearest rank).
fn pct(values: &[f64], p: f64) -> f64 {
    let i = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    values[i.min(values.len() - 1)]
}

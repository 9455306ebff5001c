//! Keeps a part of `serve` (the DHCP server, the router) running: a part that fails after it
//! started is restarted with back-off instead of ending its thread while the API goes on
//! serving its last status, and its health (up, restarts, last failure, how stale, records it
//! skipped) is what `/healthz`, `/metrics` and its status endpoint show.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipshadow_control::api::parts::PartHealth;

/// First wait before a restart; it doubles with each failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait before a restart.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A part that ran this long before it failed starts again from [`FIRST_BACKOFF`].
const STEADY: Duration = Duration::from_secs(60);

/// One part's health, written by its thread, read by the API.
#[derive(Debug)]
pub struct PartState {
    part: &'static str,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    up: bool,
    restarts: u64,
    last_error: Option<String>,
    alive: Instant,
    skipped: Vec<String>,
}

impl PartState {
    /// A part that is starting (up, nothing heard yet).
    pub fn new(part: &'static str) -> Arc<Self> {
        let inner = Inner { up: true, restarts: 0, last_error: None, alive: Instant::now(), skipped: Vec::new() };
        Arc::new(Self { part, inner: Mutex::new(inner) })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> Option<T> {
        self.inner.lock().ok().map(|mut inner| f(&mut inner))
    }

    /// The part went round its loop: what it reports is fresh.
    pub fn alive(&self) {
        self.with(|i| i.alive = Instant::now());
    }

    /// The records the part left out (replacing the last list); logged when the list changes.
    pub fn skipped(&self, skipped: Vec<String>) {
        let changed = self.with(|i| (i.skipped != skipped).then(|| std::mem::replace(&mut i.skipped, skipped)));
        if let Some(Some(_)) = changed {
            for line in self.health().skipped {
                eprintln!("ipshadow serve: {}: skipped a record of the store: {line}", self.part);
            }
        }
    }

    /// The health as the API shows it.
    pub fn health(&self) -> PartHealth {
        self.with(|i| PartHealth {
            part: self.part.to_owned(),
            up: i.up,
            restarts: i.restarts,
            last_error: i.last_error.clone(),
            age_ms: i.alive.elapsed().as_millis() as u64,
            skipped: i.skipped.clone(),
        })
        .unwrap_or_else(|| PartHealth {
            part: self.part.to_owned(),
            up: false,
            restarts: 0,
            last_error: Some("health record poisoned".into()),
            age_ms: u64::MAX,
            skipped: Vec::new(),
        })
    }
}

/// Runs `run` (one life of the part: it returns when the part fails or `stop` is set) until
/// `stop`; after a failure, marks the part down, waits (100 ms, doubling to 10 s; back to 100 ms
/// after a minute of running) and calls `restart`, then `run` again. `restart` failing is a
/// failure too. `run` takes the part: a failed part is dropped (its sockets, its store closed)
/// before `restart` opens them again.
pub fn supervise<P>(
    state: &PartState,
    stop: &AtomicBool,
    mut part: P,
    mut run: impl FnMut(P) -> anyhow::Result<()>,
    mut restart: impl FnMut() -> anyhow::Result<P>,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        let result = run(part);
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let why = match result {
            Ok(()) => "stopped by itself".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        if started.elapsed() >= STEADY {
            backoff = FIRST_BACKOFF;
        }
        let failed = |why: String, backoff: Duration| {
            eprintln!("ipshadow serve: {} failed: {why}; restarting in {} ms", state.part, backoff.as_millis());
            state.with(|i| {
                i.up = false;
                i.last_error = Some(why);
            });
        };
        failed(why, backoff);
        part = loop {
            if !sleep_unless_stopped(backoff, stop) {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            state.with(|i| i.restarts += 1);
            match restart() {
                Ok(p) => break p,
                Err(e) => failed(format!("restart: {e:#}"), backoff),
            }
        };
        eprintln!("ipshadow serve: {} restarted", state.part);
        state.with(|i| {
            i.up = true;
            i.alive = Instant::now();
        });
    }
}

/// Sleeps `d` in short slices; false if `stop` was set meanwhile.
fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(20)));
    }
    !stop.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A part that fails twice in a row, then once its restart fails, is restarted each time,
    /// down in between, up and counted after; a stop ends the supervision.
    #[test]
    fn a_failed_part_is_restarted_with_backoff_and_counted() {
        let state = PartState::new("dhcp");
        let stop = Arc::new(AtomicBool::new(false));
        let lives = Arc::new(Mutex::new(Vec::<u32>::new()));
        let seen_down = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop, lives, seen_down) = (state.clone(), stop.clone(), lives.clone(), seen_down.clone());
            std::thread::spawn(move || {
                let mut next = 1;
                let mut restarts_tried = 0;
                supervise(
                    &state,
                    &stop,
                    0u32,
                    |life| {
                        lives.lock().unwrap().push(life);
                        if life < 2 {
                            anyhow::bail!("life {life} failed");
                        }
                        // The third life runs until stopped.
                        while !stop.load(Ordering::Relaxed) {
                            state.alive();
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Ok(())
                    },
                    || {
                        seen_down.fetch_or(!state.health().up, Ordering::Relaxed);
                        restarts_tried += 1;
                        if restarts_tried == 2 {
                            anyhow::bail!("could not open");
                        }
                        let life = next;
                        next += 1;
                        Ok(life)
                    },
                );
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while lives.lock().unwrap().len() < 3 || !state.health().up {
            assert!(Instant::now() < deadline, "not restarted: {:?}", state.health());
            std::thread::sleep(Duration::from_millis(10));
        }
        let health = state.health();
        assert_eq!(*lives.lock().unwrap(), vec![0, 1, 2]);
        assert_eq!(health.restarts, 3, "two failed lives and one failed restart: {health:?}");
        assert_eq!(health.last_error.as_deref(), Some("restart: could not open"), "{health:?}");
        assert!(health.ok(), "{health:?}");
        assert!(seen_down.load(Ordering::Relaxed), "down while waiting to restart");
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
    }

    /// A failed part is dropped before its restart: a socket it held can be bound again (the
    /// DHCP server's port, its lease store's lock, the router's ports).
    #[test]
    fn a_failed_part_releases_what_it_held_before_the_restart() {
        let state = PartState::new("dhcp");
        let stop = AtomicBool::new(false);
        let first = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let at = first.local_addr().unwrap();
        let mut lives = 0;
        supervise(
            &state,
            &stop,
            first,
            |_socket| {
                lives += 1;
                if lives == 2 {
                    // The restarted part runs; the test ends it.
                    stop.store(true, Ordering::Relaxed);
                    return Ok(());
                }
                anyhow::bail!("socket error")
            },
            || {
                // Still held: the test ends (and fails below) instead of retrying for ever.
                let socket = std::net::UdpSocket::bind(at);
                stop.store(socket.is_err(), Ordering::Relaxed);
                Ok(socket?)
            },
        );
        let health = state.health();
        assert_eq!((lives, health.restarts, health.up), (2, 1, true), "{health:?}");
    }

    #[test]
    fn skipped_records_are_kept_for_the_status() {
        let state = PartState::new("dhcp");
        state.skipped(vec!["reservations.evil.ip: is in no configured subnet".into()]);
        assert_eq!(state.health().skipped.len(), 1);
        state.skipped(Vec::new());
        assert!(state.health().skipped.is_empty());
    }
}

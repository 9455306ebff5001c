//! The run's shared counters: connection tasks record how each connection started and ended,
//! the progress file and the final [`Report`] are read from here.

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

use super::report::{BrokenConnection, Cause, Kind, MAX_BROKEN_LISTED, Report};

/// The `--progress` snapshot.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Progress {
    /// Connections started and not ended yet.
    pub open: u64,
    /// Connections completed so far.
    pub completed: u64,
    /// Connections broken so far.
    pub broken: u64,
    /// Of the completed connections, those the server closed in order at an idle moment.
    pub closed_by_server: u64,
    /// Exchanges verified so far: a reader polling the file sees traffic go on (or stop).
    pub exchanges: u64,
    /// Seconds since the run started.
    pub elapsed_s: f64,
}

/// How one connection ended.
#[derive(Clone, Copy, Debug)]
pub enum Outcome {
    /// Ended as planned.
    Completed,
    /// Closed by the server in order at an idle moment (counted completed: nothing was lost).
    ClosedByServer,
    /// Ended by an error: the cause, the local address if the connect succeeded, and when
    /// (seconds since the run started).
    Broken(Cause, Option<SocketAddr>, f64),
    /// Alive when the run stopped.
    Open,
}

/// The run's shared counters. Connection tasks hold it briefly (never across an await).
#[derive(Debug)]
pub struct Ledger {
    inner: Mutex<LedgerInner>,
}

#[derive(Debug)]
struct LedgerInner {
    report: Report,
    /// Connections started and not ended, per kind (long-lived, churn).
    in_flight: [u64; 2],
}

impl Kind {
    fn index(self) -> usize {
        match self {
            Kind::LongLived => 0,
            Kind::Churn => 1,
        }
    }
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Ledger { inner: Mutex::new(LedgerInner { report: Report::new(), in_flight: [0; 2] }) }
    }

    fn with<T>(&self, f: impl FnOnce(&mut LedgerInner) -> T) -> T {
        // A task that panicked while holding the lock left counters that are still counters.
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// A connection of `kind` starts (before its connect).
    pub fn started(&self, kind: Kind) {
        self.with(|l| {
            l.in_flight[kind.index()] += 1;
            l.report.connections_total += 1;
            l.report.by_kind.get_mut(kind).total += 1;
        });
    }

    /// A connection of `kind`, started at `started_s`, ended with `outcome`.
    pub fn ended(&self, kind: Kind, started_s: f64, outcome: Outcome) {
        self.with(|l| {
            l.in_flight[kind.index()] = l.in_flight[kind.index()].saturating_sub(1);
            let r = &mut l.report;
            match outcome {
                Outcome::Completed => {
                    r.connections_completed += 1;
                    r.by_kind.get_mut(kind).completed += 1;
                }
                Outcome::ClosedByServer => {
                    r.connections_completed += 1;
                    r.connections_closed_by_server += 1;
                    r.by_kind.get_mut(kind).completed += 1;
                }
                Outcome::Open => {
                    r.connections_open += 1;
                    r.by_kind.get_mut(kind).open += 1;
                }
                Outcome::Broken(cause, local, at_s) => {
                    r.connections_broken += 1;
                    r.by_kind.get_mut(kind).broken += 1;
                    *r.causes.entry(cause.as_str().to_owned()).or_insert(0) += 1;
                    if r.broken.len() < MAX_BROKEN_LISTED {
                        r.broken.push(BrokenConnection { local, kind, cause, at_s, started_s });
                    } else {
                        r.broken_unlisted += 1;
                    }
                }
            }
        });
    }

    /// One exchange verified, `bytes` response bytes.
    pub fn exchange(&self, bytes: usize) {
        self.with(|l| {
            l.report.exchanges += 1;
            l.report.bytes_verified += bytes as u64;
        });
    }

    /// The progress snapshot at `elapsed_s`.
    pub fn progress(&self, elapsed_s: f64) -> Progress {
        self.with(|l| Progress {
            open: l.in_flight.iter().sum(),
            completed: l.report.connections_completed,
            broken: l.report.connections_broken,
            closed_by_server: l.report.connections_closed_by_server,
            exchanges: l.report.exchanges,
            elapsed_s,
        })
    }

    /// The final report. Connections still in flight (their task did not report in time) count
    /// as open, so the totals always add up.
    pub fn finish(&self, duration_s: f64) -> Report {
        self.with(|l| {
            let mut r = l.report.clone();
            for kind in [Kind::LongLived, Kind::Churn] {
                let n = l.in_flight[kind.index()];
                r.connections_open += n;
                r.by_kind.get_mut(kind).open += n;
            }
            r.duration_s = duration_s;
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_snapshot_follows_closes_and_exchanges_as_they_happen() {
        let ledger = Ledger::new();
        for _ in 0..3 {
            ledger.started(Kind::LongLived);
        }
        ledger.exchange(40);
        ledger.exchange(40);
        ledger.ended(Kind::LongLived, 0.0, Outcome::ClosedByServer);
        let local = SocketAddr::from(([10, 0, 1, 11], 40_000));
        ledger.ended(Kind::LongLived, 0.0, Outcome::Broken(Cause::Reset, Some(local), 1.0));
        let p = ledger.progress(2.0);
        assert_eq!((p.open, p.completed, p.broken, p.closed_by_server, p.exchanges), (1, 1, 1, 1, 2));
        let json = serde_json::to_value(p).unwrap_or_default();
        assert_eq!(json["closed_by_server"], 1, "{json}");
        assert_eq!(json["exchanges"], 2, "{json}");
    }
}

//! What `ipshadow traffic http` measured: every request ends verified, failed or unfinished
//! (`requests = responses_verified + requests_failed + unfinished`), and the connections' ends
//! are counted by how they ended (an orderly close by the server, a reset while idle).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

/// Why a request (or an idle connection) failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// ECONNRESET (or EPIPE, ECONNABORTED) while the request was outstanding.
    Reset,
    /// A RST on a connection with no request outstanding: no request was lost (a pool drops the
    /// connection and opens another), but the connection ended with a reset instead of an
    /// orderly close; counted among the failures.
    ResetIdle,
    /// No complete response within the request timeout.
    Timeout,
    /// EOF before any byte of the response, on a new connection or on the retry (on a reused
    /// connection the first such EOF is retried, RFC 9112 9.3.1).
    EofNoResponse,
    /// EOF after part of the response.
    EofMidResponse,
    /// A response that is not the one served (status, headers, length, body), or bytes when
    /// none were asked for.
    BadResponse,
    /// The connection for the request could not be opened (refused, timed out, unreachable).
    Connect,
    /// Any other socket error.
    IoError,
}

impl Failure {
    /// Every failure, in the order the summary lists them.
    pub const ALL: [Failure; 8] = [
        Failure::Reset,
        Failure::ResetIdle,
        Failure::Timeout,
        Failure::EofNoResponse,
        Failure::EofMidResponse,
        Failure::BadResponse,
        Failure::Connect,
        Failure::IoError,
    ];

    /// The failure's key in the report's `failures` map.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Reset => "reset",
            Failure::ResetIdle => "reset_idle",
            Failure::Timeout => "timeout",
            Failure::EofNoResponse => "eof_no_response",
            Failure::EofMidResponse => "eof_mid_response",
            Failure::BadResponse => "bad_response",
            Failure::Connect => "connect",
            Failure::IoError => "io_error",
        }
    }
}

/// Response times, milliseconds (request written to last body byte read).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Longest.
    pub max_ms: f64,
}

/// The report of one `ipshadow traffic http` process.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpReport {
    /// Persistent connections the run keeps (slots).
    pub connections: u32,
    /// TCP connections opened (the first of each slot and every reconnect).
    pub connects: u64,
    /// Requests made (a retried request counts once).
    pub requests: u64,
    /// Responses verified: status 200, `Content-Length`, and a body one of the servers serves.
    pub responses_verified: u64,
    /// Requests that got no verified response (after the one allowed retry).
    pub requests_failed: u64,
    /// Failures of every kind: `requests_failed` plus connections reset while idle.
    pub failed: u64,
    /// `failed` by kind; every kind is listed, zero or not.
    pub failures: BTreeMap<String, u64>,
    /// Orderly closes by the server (EOF while no request was outstanding, or `Connection:
    /// close`): the slot reconnects, nothing is lost.
    pub server_closes: u64,
    /// Requests retried once on a new connection after EOF before any response byte on a
    /// reused connection (RFC 9112 9.3.1).
    pub retried: u64,
    /// Requests outstanding when the run stopped that did not end within the drain time.
    pub unfinished: u64,
    /// Verified responses by the server that sent them (`vm-a`, `vm-b`, ...).
    pub served_by: BTreeMap<String, u64>,
    /// Response times of the verified responses.
    pub latency: Latency,
    /// Think time between two requests of a connection, milliseconds: shortest and longest
    /// (0 0: closed loop).
    pub think_ms: [u64; 2],
    /// Wall time of the run, seconds.
    pub duration_s: f64,
}

impl HttpReport {
    /// The report for a person.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "traffic http: {:.1} s, {} connections (think {}..{} ms), {} connects",
            self.duration_s, self.connections, self.think_ms[0], self.think_ms[1], self.connects
        );
        let _ = writeln!(
            s,
            "  requests {}  verified {}  failed {}  unfinished {}  retried {}  server closes {}",
            self.requests,
            self.responses_verified,
            self.requests_failed,
            self.unfinished,
            self.retried,
            self.server_closes
        );
        let served: Vec<String> = self.served_by.iter().map(|(vm, n)| format!("{vm} {n}")).collect();
        let _ = writeln!(s, "  served by: {}", if served.is_empty() { "-".to_owned() } else { served.join(", ") });
        let _ = writeln!(
            s,
            "  latency p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
            self.latency.p50_ms, self.latency.p99_ms, self.latency.max_ms
        );
        let failures: Vec<String> =
            self.failures.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k} {n}")).collect();
        let _ =
            writeln!(s, "  failures: {}", if failures.is_empty() { "none".to_owned() } else { failures.join(", ") });
        s
    }
}

/// Response-time buckets: 0.1 ms wide up to this many (10 s, the request timeout).
const BUCKETS: usize = 100_000;

/// The run's shared counters. Slots hold the lock briefly, never across an await.
#[derive(Debug)]
pub struct Ledger {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    report: HttpReport,
    /// Requests started and not ended.
    outstanding: u64,
    /// Response times in 0.1 ms buckets (the last one holds everything longer).
    histogram: Vec<u32>,
}

/// The `--progress` snapshot.
#[derive(Clone, Debug, Serialize)]
pub struct Progress {
    /// Requests made so far.
    pub requests: u64,
    /// Responses verified so far.
    pub responses_verified: u64,
    /// Failures so far.
    pub failed: u64,
    /// Orderly closes by the server so far.
    pub server_closes: u64,
    /// Verified responses by server.
    pub served_by: BTreeMap<String, u64>,
    /// Seconds since the run started.
    pub elapsed_s: f64,
}

impl Inner {
    fn count(&mut self, failure: Failure) {
        self.report.failed += 1;
        *self.report.failures.entry(failure.as_str().to_owned()).or_insert(0) += 1;
    }
}

impl Ledger {
    /// An empty ledger for `connections` slots, every failure kind and server listed.
    pub fn new<'a>(connections: u32, think_ms: [u64; 2], servers: impl Iterator<Item = &'a str>) -> Self {
        let report = HttpReport {
            connections,
            think_ms,
            failures: Failure::ALL.iter().map(|f| (f.as_str().to_owned(), 0)).collect(),
            served_by: servers.map(|s| (s.to_owned(), 0)).collect(),
            ..HttpReport::default()
        };
        Ledger { inner: Mutex::new(Inner { report, outstanding: 0, histogram: vec![0; BUCKETS] }) }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// A TCP connection was opened.
    pub fn connected(&self) {
        self.with(|l| l.report.connects += 1);
    }

    /// A request starts.
    pub fn request(&self) {
        self.with(|l| {
            l.report.requests += 1;
            l.outstanding += 1;
        });
    }

    /// The outstanding request was retried on a new connection.
    pub fn retried(&self) {
        self.with(|l| l.report.retried += 1);
    }

    /// The outstanding request got a verified response from `server` after `ms`.
    pub fn verified(&self, server: &str, ms: f64) {
        self.with(|l| {
            l.outstanding = l.outstanding.saturating_sub(1);
            l.report.responses_verified += 1;
            *l.report.served_by.entry(server.to_owned()).or_insert(0) += 1;
            let bucket = ((ms * 10.0) as usize).min(BUCKETS - 1);
            l.histogram[bucket] += 1;
            l.report.latency.max_ms = l.report.latency.max_ms.max(ms);
        });
    }

    /// The outstanding request failed.
    pub fn failed(&self, failure: Failure) {
        self.with(|l| {
            l.outstanding = l.outstanding.saturating_sub(1);
            l.report.requests_failed += 1;
            l.count(failure);
        });
    }

    /// A connection with no request outstanding failed: reset ([`Failure::ResetIdle`]), bytes
    /// nobody asked for, another socket error. No request is charged.
    pub fn failed_idle(&self, failure: Failure) {
        self.with(|l| l.count(failure));
    }

    /// The server closed a connection in order.
    pub fn server_closed(&self) {
        self.with(|l| l.report.server_closes += 1);
    }

    /// The progress snapshot.
    pub fn progress(&self, elapsed_s: f64) -> Progress {
        self.with(|l| Progress {
            requests: l.report.requests,
            responses_verified: l.report.responses_verified,
            failed: l.report.failed,
            server_closes: l.report.server_closes,
            served_by: l.report.served_by.clone(),
            elapsed_s,
        })
    }

    /// The final report: requests still outstanding are `unfinished`.
    pub fn finish(&self, duration_s: f64) -> HttpReport {
        self.with(|l| {
            let mut r = l.report.clone();
            r.unfinished = l.outstanding;
            r.duration_s = duration_s;
            let quantile = |q: f64| {
                let rank = ((r.responses_verified as f64) * q).ceil().max(1.0) as u64;
                let mut seen = 0u64;
                for (i, n) in l.histogram.iter().enumerate() {
                    seen += u64::from(*n);
                    if seen >= rank {
                        return (i as f64 + 1.0) / 10.0;
                    }
                }
                0.0
            };
            if r.responses_verified > 0 {
                r.latency.p50_ms = quantile(0.5);
                r.latency.p99_ms = quantile(0.99).min(r.latency.max_ms);
                r.latency.p50_ms = r.latency.p50_ms.min(r.latency.max_ms);
            }
            r
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_request_ends_one_way() {
        let ledger = Ledger::new(2, [200, 1000], ["vm-a", "vm-b"].into_iter());
        ledger.connected();
        for ms in [1.0, 2.0, 3.0] {
            ledger.request();
            ledger.verified("vm-a", ms);
        }
        ledger.request();
        ledger.retried();
        ledger.verified("vm-b", 50.0);
        ledger.request();
        ledger.failed(Failure::Reset);
        ledger.failed_idle(Failure::ResetIdle);
        ledger.server_closed();
        ledger.request();
        let r = ledger.finish(2.5);
        assert_eq!((r.requests, r.responses_verified, r.requests_failed, r.unfinished), (6, 4, 1, 1));
        assert_eq!(r.requests, r.responses_verified + r.requests_failed + r.unfinished);
        assert_eq!((r.failed, r.failures["reset"], r.failures["reset_idle"], r.failures["timeout"]), (2, 1, 1, 0));
        assert_eq!((r.retried, r.server_closes, r.connects), (1, 1, 1));
        assert_eq!((r.served_by["vm-a"], r.served_by["vm-b"]), (3, 1));
        assert_eq!((r.latency.p50_ms, r.latency.max_ms), (2.1, 50.0));
        let back: HttpReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert!(r.summary().contains("failures: reset 1, reset_idle 1"), "{}", r.summary());
    }
}

//! What `ipshadow traffic run` measured: the report (JSON, or a human summary), and how reports
//! of several client processes add up.
//!
//! Every connection the run starts ends in exactly one of `completed`, `broken` or `open`, so
//! `connections_total = connections_completed + connections_broken + connections_open`, per kind
//! and in total. Reports of several client processes add up with [`Report::add`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The `broken` list stops growing here (the counters do not): a run against a dead target
/// must not grow without bound.
pub const MAX_BROKEN_LISTED: usize = 100_000;

/// The two kinds of connection the generator opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Kept open for its lifetime, one exchange per interval, then replaced.
    LongLived,
    /// Connect, 1-3 exchanges, close.
    Churn,
}

/// Why a connection broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// ECONNRESET, EPIPE, ECONNREFUSED or ECONNABORTED on an established connection, or the
    /// peer closed while a response was outstanding.
    Reset,
    /// An exchange took longer than its timeout, or the kernel gave up retransmitting.
    Timeout,
    /// A response byte differs from the one the request implies.
    Corrupt,
    /// The kernel reported the host or network unreachable (an ICMP error or no route).
    Unreachable,
    /// Any other socket error.
    IoError,
    /// The connect was refused (an RST answered the SYN).
    ConnectRefused,
    /// The connect did not complete within its timeout.
    ConnectTimeout,
    /// The connect failed otherwise (unreachable, no route, ...).
    ConnectError,
}

impl Cause {
    /// Every cause, in the order the human summary lists them.
    pub const ALL: [Cause; 8] = [
        Cause::Reset,
        Cause::Timeout,
        Cause::Corrupt,
        Cause::Unreachable,
        Cause::IoError,
        Cause::ConnectRefused,
        Cause::ConnectTimeout,
        Cause::ConnectError,
    ];

    /// The cause's key in the report's `causes` map (the same word serde writes).
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Reset => "reset",
            Cause::Timeout => "timeout",
            Cause::Corrupt => "corrupt",
            Cause::Unreachable => "unreachable",
            Cause::IoError => "io_error",
            Cause::ConnectRefused => "connect_refused",
            Cause::ConnectTimeout => "connect_timeout",
            Cause::ConnectError => "connect_error",
        }
    }
}

/// The outcome counters of one kind of connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindCounts {
    /// Connections started (connect attempted).
    pub total: u64,
    /// Ended by the client as planned, with a clean close.
    pub completed: u64,
    /// Ended by an error (see `causes`).
    pub broken: u64,
    /// Still alive when the run stopped; closed without being counted broken.
    pub open: u64,
}

impl KindCounts {
    fn add(&mut self, other: &KindCounts) {
        self.total += other.total;
        self.completed += other.completed;
        self.broken += other.broken;
        self.open += other.open;
    }
}

/// The counters split by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByKind {
    /// Long-lived connections.
    pub long_lived: KindCounts,
    /// Short (churn) connections.
    pub churn: KindCounts,
}

impl ByKind {
    pub(super) fn get_mut(&mut self, kind: Kind) -> &mut KindCounts {
        match kind {
            Kind::LongLived => &mut self.long_lived,
            Kind::Churn => &mut self.churn,
        }
    }
}

/// One broken connection, so that a reader can match it against what the router did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BrokenConnection {
    /// The client's address and port; `null` when the connect itself failed (the socket never
    /// had a port the router could have seen in an established flow).
    pub local: Option<SocketAddr>,
    /// Which kind of connection it was.
    pub kind: Kind,
    /// Why it broke.
    pub cause: Cause,
    /// When it broke, seconds since the run started.
    pub at_s: f64,
    /// When it started (connect attempted), seconds since the run started.
    pub started_s: f64,
}

/// The report of one run, or the sum of several (see [`Report::add`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    /// Connections started.
    pub connections_total: u64,
    /// Connections ended as planned.
    pub connections_completed: u64,
    /// Connections ended by an error.
    pub connections_broken: u64,
    /// Connections alive when the run stopped.
    pub connections_open: u64,
    /// Of the completed connections, those the server closed in order at an idle moment (a
    /// FIN between exchanges, or one the next request crossed): nothing was lost, the client
    /// opened another (as at a graceful cut-over).
    pub connections_closed_by_server: u64,
    /// The same counters per kind.
    pub by_kind: ByKind,
    /// Broken connections per cause; every cause is listed, zero or not.
    pub causes: BTreeMap<String, u64>,
    /// Request/response exchanges whose response was verified.
    pub exchanges: u64,
    /// Response bytes the client verified (the server verifies the request bytes).
    pub bytes_verified: u64,
    /// Wall time of the run, seconds (the longest, for a sum).
    pub duration_s: f64,
    /// The broken connections, at most [`MAX_BROKEN_LISTED`].
    pub broken: Vec<BrokenConnection>,
    /// Broken connections left out of `broken` because of the cap.
    pub broken_unlisted: u64,
}

impl Report {
    /// An empty report that lists every cause with zero.
    pub fn new() -> Self {
        Report { causes: Cause::ALL.iter().map(|c| (c.as_str().to_owned(), 0)).collect(), ..Report::default() }
    }

    /// Adds `other` (another client process's report of the same run) to this one.
    #[allow(dead_code, reason = "used by the lab's demo, which adds up the reports of its clients")]
    pub fn add(&mut self, other: &Report) {
        self.connections_total += other.connections_total;
        self.connections_completed += other.connections_completed;
        self.connections_broken += other.connections_broken;
        self.connections_open += other.connections_open;
        self.connections_closed_by_server += other.connections_closed_by_server;
        self.by_kind.long_lived.add(&other.by_kind.long_lived);
        self.by_kind.churn.add(&other.by_kind.churn);
        for (cause, n) in &other.causes {
            *self.causes.entry(cause.clone()).or_insert(0) += n;
        }
        self.exchanges += other.exchanges;
        self.bytes_verified += other.bytes_verified;
        self.duration_s = self.duration_s.max(other.duration_s);
        let room = MAX_BROKEN_LISTED.saturating_sub(self.broken.len());
        self.broken.extend(other.broken.iter().take(room).cloned());
        self.broken_unlisted += other.broken_unlisted + other.broken.len().saturating_sub(room) as u64;
    }

    /// The report for a person: a few lines, causes that occurred only.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let line = |s: &mut String, name: &str, k: &KindCounts| {
            let _ = writeln!(
                s,
                "  {name:<11} {:>7} total {:>7} completed {:>7} broken {:>7} open",
                k.total, k.completed, k.broken, k.open
            );
        };
        let _ = writeln!(s, "traffic run: {:.1} s", self.duration_s);
        let total = KindCounts {
            total: self.connections_total,
            completed: self.connections_completed,
            broken: self.connections_broken,
            open: self.connections_open,
        };
        line(&mut s, "all", &total);
        line(&mut s, "long-lived", &self.by_kind.long_lived);
        line(&mut s, "churn", &self.by_kind.churn);
        if self.connections_closed_by_server > 0 {
            let _ =
                writeln!(s, "closed by the server in order (counted completed): {}", self.connections_closed_by_server);
        }
        let _ = writeln!(s, "exchanges: {}, response bytes verified: {}", self.exchanges, self.bytes_verified);
        let causes: Vec<String> =
            self.causes.iter().filter(|(_, n)| **n > 0).map(|(c, n)| format!("{c} {n}")).collect();
        if !causes.is_empty() {
            let _ = writeln!(s, "broken by cause: {}", causes.join(", "));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::traffic::ledger::{Ledger, Outcome};

    fn one_run(broken: usize) -> Report {
        let ledger = Ledger::new();
        ledger.started(Kind::LongLived);
        ledger.ended(Kind::LongLived, 0.5, Outcome::Completed);
        ledger.started(Kind::Churn);
        ledger.exchange(100);
        for i in 0..broken {
            ledger.started(Kind::Churn);
            let local = SocketAddr::from(([10, 0, 1, 11], 40_000 + i as u16));
            ledger.ended(Kind::Churn, 1.0, Outcome::Broken(Cause::Reset, Some(local), 2.0));
        }
        // The churn connection started first never reports: it counts as open.
        ledger.finish(3.0)
    }

    #[test]
    fn every_connection_ends_one_way_and_reports_add_up() {
        let a = one_run(2);
        assert_eq!(
            (a.connections_total, a.connections_completed, a.connections_broken, a.connections_open),
            (4, 1, 2, 1)
        );
        assert_eq!(a.by_kind.churn, KindCounts { total: 3, completed: 0, broken: 2, open: 1 });
        assert_eq!(a.causes["reset"], 2);
        assert_eq!(a.causes["connect_refused"], 0, "every cause is listed");
        let mut sum = Report::new();
        sum.add(&a);
        sum.add(&one_run(3));
        assert_eq!(sum.connections_total, 9);
        assert_eq!(sum.connections_broken, 5);
        assert_eq!(sum.by_kind.long_lived.completed, 2);
        assert_eq!(sum.causes["reset"], 5);
        assert_eq!((sum.exchanges, sum.bytes_verified, sum.duration_s), (2, 200, 3.0));
        assert_eq!(sum.broken.len(), 5);
        let back: Report = serde_json::from_str(&serde_json::to_string(&sum).unwrap()).unwrap();
        assert_eq!(back, sum, "what the demo reads is what the run wrote");
        assert!(
            serde_json::to_string(&sum)
                .unwrap()
                .contains(r#""local":"10.0.1.11:40000","kind":"churn","cause":"reset""#)
        );
    }

    #[test]
    fn the_broken_list_is_capped_when_adding() {
        let mut big = Report::new();
        big.broken = vec![
            BrokenConnection {
                local: None,
                kind: Kind::Churn,
                cause: Cause::ConnectRefused,
                at_s: 0.0,
                started_s: 0.0
            };
            MAX_BROKEN_LISTED - 1
        ];
        big.add(&one_run(3));
        assert_eq!(big.broken.len(), MAX_BROKEN_LISTED);
        assert_eq!(big.broken_unlisted, 2);
    }
}

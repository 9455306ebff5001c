//! The report of a run: what happened to every connection, and to the migration.

use std::fmt::Write as _;

use ipshadow_core::patterns::Tail;
use ipshadow_core::{Affinity, CutOverReport, Mode, Outcome as MigrationOutcome, RouterCounters, Strategy};
use serde::Serialize;

use super::config::Fault;
use super::ecmp::EcmpReport;
use super::world::{A, B, World, client_ip};
use crate::app::client::{BreakCause, ConnKind, Outcome};
use crate::router::PortStats;

/// How connections of one kind ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Started.
    pub total: u64,
    /// Every exchange verified, closed cleanly.
    pub completed: u64,
    /// Closed by the server with a FIN while no request was outstanding (a keep-alive close at
    /// idle): nothing lost, the client reconnected for the rest of its plan.
    pub closed_gracefully: u64,
    /// Broken (RST, timeout, wrong data), not counting `cut_at_deadline`.
    pub broken: u64,
    /// Still open when the run ended.
    pub open_at_end: u64,
    /// Still on A when A's lease ended, and closed by the router's RST at cut-over.
    pub cut_at_deadline: u64,
}

/// Broken connections by cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Breaks {
    /// The client received a RST.
    pub reset: u64,
    /// No progress within the application timeout.
    pub timeout: u64,
    /// A byte differed from what the server must have sent.
    pub corrupt: u64,
}

/// When things happened, in seconds from the start of the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Timeline {
    /// The entry was installed.
    pub migration_start_s: Option<f64>,
    /// B's lease was bound: the ramp began.
    pub lease_bound_s: Option<f64>,
    /// The split first reached 100 %.
    pub split_100_s: Option<f64>,
    /// The migration ended (cut-over or rollback).
    pub migration_end_s: Option<f64>,
    /// Router restarts.
    pub router_restarts_s: Vec<f64>,
}

/// A VM failure the health checks detected.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FailureReport {
    /// `source` (A) or `destination` (B).
    pub vm: &'static str,
    /// When it was detected.
    pub detected_s: f64,
    /// `rollback` or `fast_forward`.
    pub action: &'static str,
    /// TCP connections started after the detection.
    pub started_after_detection: u64,
    /// Of those, broken.
    pub broken_started_after_detection: u64,
    /// TCP connections broken that started before the detection.
    pub broken_started_before_detection: u64,
}

/// The router's drain forecast at the moment the split first reached 100 %, against the truth:
/// when the last connection it had on A then actually ended. A long-lived connection's end is
/// its planned end (the client knows it), so the truth exists even when the cut-over, a fault
/// or the end of the run came first; a short one's is when it ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ForecastCheck {
    /// When the split reached 100 %, seconds from the start.
    pub at_s: f64,
    /// A's open TCP flows by the router's count.
    pub open_on_a: u64,
    /// Client connections whose flow the router had on A (the ones the truth is about).
    pub connections_on_a: u64,
    /// Forecast median time until the last of A's flows has ended, seconds (`None`: the
    /// router saw nothing end, or no forecast at all).
    pub p50_s: Option<f64>,
    /// Forecast 90th percentile of the same, seconds.
    pub p90_s: Option<f64>,
    /// Flows the forecast expects still open on A at the deadline.
    pub expected_open_at_deadline: Option<f64>,
    /// The tail the forecast fitted past its longest observation.
    pub tail: Option<Tail>,
    /// Flows (ended and open) the forecast rests on.
    pub observations: u64,
    /// The truth: seconds from `at_s` until the last connection on A ended (0 with none);
    /// `None` when a short connection was still open when the run ended.
    pub actual_drain_s: Option<f64>,
    /// (p50 - actual) / actual, percent: positive means the forecast said later.
    pub p50_error_pct: Option<f64>,
    /// The actual drain fell at or below the forecast p90.
    pub within_p90: Option<bool>,
    /// The ideal forecast's median: what a forecast that knew the lifetime distribution and the
    /// age of every long-lived connection on A would say, seconds (`None`: beyond 30 days). The
    /// drain is the maximum of many residual lives, so even this misses the actual drain by its
    /// spread; the router's forecast is judged against it to tell estimation error from luck.
    pub ideal_p50_s: Option<f64>,
    /// The ideal forecast's 90th percentile, seconds.
    pub ideal_p90_s: Option<f64>,
    /// (ideal p50 - actual) / actual, percent: the error no forecast can avoid in this run.
    pub ideal_error_pct: Option<f64>,
    /// (p50 - ideal p50) / ideal p50, percent: the forecast's own estimation error.
    pub p50_vs_ideal_pct: Option<f64>,
}

/// One point of the plot.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds from the start.
    pub t_s: f64,
    /// The split.
    pub split_pct: f64,
    /// Live TCP connections on A.
    pub live_on_a: u64,
    /// Live TCP connections on B.
    pub live_on_b: u64,
}

/// The report of a run. The keys MISSION.md names come first.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// Split strategy.
    pub strategy: Strategy,
    /// Independent or replica.
    pub mode: Mode,
    /// TCP connections started (long-lived and churn).
    pub connections_total: u64,
    /// Of those, broken (not counting `cut_at_deadline`).
    pub connections_broken: u64,
    /// Of those, completed.
    pub connections_completed: u64,
    /// Of those, still on A at the deadline and reset by the router at cut-over.
    pub cut_at_deadline: u64,
    /// Of those, closed by the server side with a FIN while the client had no request
    /// outstanding (a keep-alive close at idle, e.g. the router's close at the cut-over); the
    /// client reconnected and lost nothing.
    pub closed_gracefully: u64,
    /// `completed`, `rolled_back`, or the state the run ended in.
    pub migration_state: &'static str,
    /// The split at the end of the run.
    pub final_split_pct: f64,
    /// Conflicting replies from the VM that did not own the flow, dropped by the egress arbiter.
    pub conflicts_suppressed: u64,
    /// TCP connections still open at the end.
    pub connections_open_at_end: u64,
    /// Broken TCP connections by cause.
    pub broken_by: Breaks,
    /// Long-lived connections.
    pub long_lived: Tally,
    /// Short connections.
    pub churn: Tally,
    /// UDP sessions.
    pub udp: Tally,
    /// TCP connections open when the migration started (all of them on A).
    pub open_at_migration_start: u64,
    /// Of those, broken.
    pub broken_of_open_at_migration_start: u64,
    /// RSTs for unknown flows held back while their owner was learned.
    pub resets_suppressed: u64,
    /// Replica mode: duplicate replies removed.
    pub replica_duplicates: u64,
    /// Replica mode: flows whose primary moved from A to B.
    pub handoffs: u64,
    /// Multiplicative decreases of the split on trouble from B.
    pub split_decreases: u64,
    /// What the end of the migration did to the losing side's flows.
    pub cut_over: Option<CutOverReport>,
    /// When things happened.
    pub timeline: Timeline,
    /// The drain forecast when the split first reached 100 % on the ramp (not by a cut-over),
    /// and how it came out.
    pub forecast: Option<ForecastCheck>,
    /// A VM failure detected by the health checks.
    pub failure: Option<FailureReport>,
    /// Flow affinity.
    pub affinity: Affinity,
    /// The run's seed.
    pub seed: u64,
    /// Faults injected.
    pub faults: Vec<Fault>,
    /// Simulated time.
    pub simulated_seconds: f64,
    /// Requests answered by A and by B.
    pub requests_served: [u64; 2],
    /// The router's core counters (summed over restarts).
    pub router: RouterSummary,
    /// The router node's layer-2 counters (the first router's behind ECMP: `ecmp` has both).
    pub ports: PortStats,
    /// Frames put on links, and frames the links lost.
    pub link_frames: [u64; 2],
    /// Two routers behind ECMP: what each did and what they disagreed on (absent with one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ecmp: Option<EcmpReport>,
    /// The plot's points (not in the JSON: they are drawn, not read).
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

/// The core counters a reader needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RouterSummary {
    /// Frames from the provider side.
    pub inbound_frames: u64,
    /// Frames from the VMs.
    pub egress_frames: u64,
    /// Flows tracked.
    pub flows_created: u64,
    /// Frames from a VM whose source address it did not hold.
    pub spoofed: u64,
    /// A's frames dropped after an instant reassignment.
    pub source_released: u64,
    /// RSTs the router sent.
    pub resets_sent: u64,
}

impl Report {
    /// Frames the router forwarded (the simulated packet count), both routers' behind ECMP.
    pub fn frames_forwarded(&self) -> u64 {
        match &self.ecmp {
            Some(e) => e.routers.iter().map(|r| r.frames_forwarded).sum(),
            None => self.ports.to_vms + self.ports.to_provider,
        }
    }

    /// A table for people.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "ipshadow simulate: strategy {:?}, mode {:?}, seed {}, {:.0} s simulated{}",
            self.strategy,
            self.mode,
            self.seed,
            self.simulated_seconds,
            if self.faults.is_empty() {
                String::new()
            } else {
                format!(", faults: {}", self.faults.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "))
            }
        );
        let _ = writeln!(
            s,
            "\n{:<12} {:>8} {:>10} {:>13} {:>8} {:>12} {:>16}",
            "", "total", "completed", "closed at idle", "broken", "open at end", "cut at deadline"
        );
        for (name, t) in [("long-lived", self.long_lived), ("churn", self.churn), ("udp", self.udp)] {
            let _ = writeln!(
                s,
                "{name:<12} {:>8} {:>10} {:>13} {:>8} {:>12} {:>16}",
                t.total, t.completed, t.closed_gracefully, t.broken, t.open_at_end, t.cut_at_deadline
            );
        }
        let b = self.broken_by;
        let _ = writeln!(s, "\nTCP broken by: reset {}, timeout {}, corrupt {}", b.reset, b.timeout, b.corrupt);
        let _ = writeln!(
            s,
            "Open on A when the migration started: {} (broken since: {})",
            self.open_at_migration_start, self.broken_of_open_at_migration_start
        );
        let t = &self.timeline;
        let at = |x: Option<f64>| x.map_or("-".to_owned(), |v| format!("{v:.1} s"));
        let _ = writeln!(
            s,
            "Migration: {} (final split {:.1} %); start {}, B's lease bound {}, split 100 % {}, end {}",
            self.migration_state,
            self.final_split_pct,
            at(t.migration_start_s),
            at(t.lease_bound_s),
            at(t.split_100_s),
            at(t.migration_end_s)
        );
        if let Some(c) = self.cut_over {
            let _ = writeln!(
                s,
                "End of migration ({:?}): {} flows open on the losing side, {} handed over, {} closed gracefully, {} reset",
                c.cause, c.flows_open_on_losing_side, c.handed_over, c.closed_gracefully, c.reset
            );
        }
        if let Some(f) = &self.forecast {
            let s_or = |x: Option<f64>| x.map_or("-".to_owned(), |v| format!("{v:.1} s"));
            let _ = writeln!(
                s,
                "Drain forecast at split 100 % ({:.1} s): {} flows open on A ({} client connections), p50 {}, p90 {}, \
                 expected open at deadline {}; actual drain {}{}; ideal forecast p50 {}{}",
                f.at_s,
                f.open_on_a,
                f.connections_on_a,
                s_or(f.p50_s),
                s_or(f.p90_s),
                f.expected_open_at_deadline.map_or("-".to_owned(), |v| format!("{v:.1}")),
                s_or(f.actual_drain_s),
                f.p50_error_pct.map_or(String::new(), |e| format!(" (p50 error {e:+.0} %)")),
                s_or(f.ideal_p50_s),
                f.ideal_error_pct.map_or(String::new(), |e| format!(" (error {e:+.0} %)"))
            );
        }
        if let Some(f) = &self.failure {
            let _ = writeln!(
                s,
                "Failure: {} detected at {:.1} s -> {}; started after detection {}, broken {}; broken that started before {}",
                f.vm,
                f.detected_s,
                f.action,
                f.started_after_detection,
                f.broken_started_after_detection,
                f.broken_started_before_detection
            );
        }
        let _ = writeln!(
            s,
            "Arbiter: {} conflicting replies suppressed, {} RSTs held back, {} replica duplicates, {} hand-offs, {} split decreases",
            self.conflicts_suppressed,
            self.resets_suppressed,
            self.replica_duplicates,
            self.handoffs,
            self.split_decreases
        );
        let _ = writeln!(
            s,
            "Router: {} frames forwarded, {} flows, requests served A {} / B {}",
            self.frames_forwarded(),
            self.router.flows_created,
            self.requests_served[0],
            self.requests_served[1]
        );
        if let Some(e) = &self.ecmp {
            let _ = writeln!(
                s,
                "ECMP, two routers, replies {:?}, second ramp {:.0} ms late: splits differed {:.0} ms (gap up to {:.1} points), \
                 {} new flows then ({:.1} expected decided differently); owners disagreed on {} of {} flows both tracked; \
                 {} flows sent to both VMs",
                e.replies,
                e.skew_ms,
                e.split_differed_ms,
                e.max_split_gap_pct,
                e.new_flows_while_split_differed,
                e.expected_decided_differently,
                e.owner_disagreements,
                e.flows_on_both,
                e.flows_mirrored
            );
            for (i, r) in e.routers.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "  router {}: {} in / {} out frames, {} flows ({} expired, {} learned), {} conflicts, {} RSTs held back, \
                     {} spoofed, {} no route, {} split decreases, final split {:.1} %",
                    i + 1,
                    r.inbound_frames,
                    r.egress_frames,
                    r.flows_created,
                    r.flows_expired,
                    r.flows_learned,
                    r.conflicts,
                    r.resets_suppressed,
                    r.spoofed,
                    r.no_route,
                    r.split_decreases,
                    r.final_split_pct
                );
            }
        }
        s
    }
}

/// The `q`-quantile of the time until the last of connections aged `ages_s` has ended, when
/// each lives independently by `lifetime`: P(all ended within r) = Π (1 - S(a + r) / S(a)).
/// `None` beyond 30 days.
fn ideal_drain_s(lifetime: &super::Lifetime, ages_s: &[f64], q: f64) -> Option<f64> {
    const HORIZON_S: f64 = 30.0 * 86_400.0;
    let log_all_ended = |r: f64| -> f64 {
        ages_s
            .iter()
            .map(|&a| {
                let s = lifetime.survival(a);
                let open = if s > 0.0 { (lifetime.survival(a + r) / s).min(1.0) } else { 0.0 };
                (1.0 - open).max(1e-300).ln()
            })
            .sum()
    };
    if ages_s.is_empty() {
        return Some(0.0);
    }
    if log_all_ended(HORIZON_S) < q.ln() {
        return None;
    }
    let (mut lo, mut hi) = (0.0f64, HORIZON_S);
    for _ in 0..100 {
        if hi - lo <= 0.01 {
            break;
        }
        let mid = if lo < 1.0 { (lo + hi) / 2.0 } else { (lo * hi).sqrt() };
        if log_all_ended(mid) >= q.ln() { hi = mid } else { lo = mid }
    }
    Some(hi)
}

fn secs(t: ipshadow_core::Instant) -> f64 {
    t.as_micros() as f64 / 1e6
}

impl World {
    pub(crate) fn report(&self) -> Report {
        // Connections the router reset at a cut-over are "cut at the deadline" only when the
        // deadline ended the migration; after A failed they were lost with A, i.e. broken.
        let migration_ok = matches!(self.control.outcome, Some((MigrationOutcome::Completed, ..)))
            && self.control.failure.is_none_or(|f| f.vm == B);
        let (mut long_lived, mut churn, mut udp) = (Tally::default(), Tally::default(), Tally::default());
        let mut breaks = Breaks::default();
        let (mut open_at_start, mut broken_open_at_start) = (0, 0);
        let detected = self.control.failure.map(|f| f.detected);
        let (mut after, mut broken_after, mut broken_before) = (0, 0, 0);
        for r in &self.ledger {
            let tally = match r.kind {
                ConnKind::LongLived => &mut long_lived,
                ConnKind::Churn => &mut churn,
                ConnKind::Udp => &mut udp,
            };
            tally.total += 1;
            // Keyed by the client's endpoint: a port reused after the cut-over is another connection.
            let cut = migration_ok
                && r.kind != ConnKind::Udp
                && self.control.outcome.is_some_and(|(.., at)| r.started < at)
                && r.outcome == Outcome::Broken(BreakCause::Reset)
                && self.routers().any(|n| n.reset_clients.contains(&(client_ip(r.client), r.port)));
            let broken = matches!(r.outcome, Outcome::Broken(_)) && !cut;
            match r.outcome {
                Outcome::Open => tally.open_at_end += 1,
                Outcome::Completed => tally.completed += 1,
                Outcome::ClosedGracefully => tally.closed_gracefully += 1,
                Outcome::Broken(_) if cut => tally.cut_at_deadline += 1,
                Outcome::Broken(cause) => {
                    tally.broken += 1;
                    if r.kind != ConnKind::Udp {
                        match cause {
                            BreakCause::Reset => breaks.reset += 1,
                            BreakCause::Timeout => breaks.timeout += 1,
                            BreakCause::Corrupt => breaks.corrupt += 1,
                        }
                    }
                }
            }
            if r.kind == ConnKind::Udp {
                continue;
            }
            if r.open_at_start {
                open_at_start += 1;
                broken_open_at_start += u64::from(broken);
            }
            if let Some(d) = detected {
                if r.started > d {
                    after += 1;
                    broken_after += u64::from(broken);
                } else {
                    broken_before += u64::from(broken);
                }
            }
        }
        let mut counters = self.control.carried.clone();
        counters.extend(self.routers().map(|n| *n.core.counters()));
        let sum = |f: fn(&RouterCounters) -> u64| counters.iter().map(f).sum::<u64>();
        let tcp = |f: fn(&Tally) -> u64| f(&long_lived) + f(&churn);
        let failure = self.control.failure.map(|f| FailureReport {
            vm: if f.vm == B { "destination" } else { "source" },
            detected_s: secs(f.detected),
            action: if f.vm == B { "rollback" } else { "fast_forward" },
            started_after_detection: after,
            broken_started_after_detection: broken_after,
            broken_started_before_detection: broken_before,
        });
        let c = &self.control;
        Report {
            strategy: self.cfg.strategy,
            mode: self.cfg.mode,
            connections_total: tcp(|t| t.total),
            connections_broken: tcp(|t| t.broken),
            connections_completed: tcp(|t| t.completed),
            cut_at_deadline: tcp(|t| t.cut_at_deadline),
            closed_gracefully: tcp(|t| t.closed_gracefully),
            migration_state: c.state(),
            final_split_pct: c.split_pct(),
            conflicts_suppressed: sum(|c| c.conflicts.total()),
            connections_open_at_end: tcp(|t| t.open_at_end),
            broken_by: breaks,
            long_lived,
            churn,
            udp,
            open_at_migration_start: open_at_start,
            broken_of_open_at_migration_start: broken_open_at_start,
            resets_suppressed: sum(|c| c.resets_suppressed),
            replica_duplicates: sum(|c| c.replica_duplicates),
            handoffs: c.handoffs,
            split_decreases: c.decreases,
            cut_over: c.outcome.map(|(_, report, _)| report),
            timeline: Timeline {
                migration_start_s: c.started.map(secs),
                lease_bound_s: c.lease_bound.map(secs),
                split_100_s: c.split_100.map(secs),
                migration_end_s: c.outcome.map(|(.., at)| secs(at)),
                router_restarts_s: c.restarts.iter().map(|t| secs(*t)).collect(),
            },
            failure,
            forecast: self.forecast_check(),
            affinity: self.cfg.affinity,
            seed: self.cfg.seed,
            faults: self.cfg.faults.clone(),
            simulated_seconds: secs(self.now),
            requests_served: [self.vms[A].requests(), self.vms[B].requests()],
            router: RouterSummary {
                inbound_frames: sum(|c| c.inbound_frames),
                egress_frames: sum(|c| c.egress_frames),
                flows_created: sum(|c| c.flows_created),
                spoofed: sum(|c| c.spoofed),
                source_released: sum(|c| c.source_released),
                resets_sent: sum(|c| c.resets_sent),
            },
            ports: self.router.stats.clone(),
            link_frames: self.link_frames(),
            ecmp: self.ecmp_report(),
            samples: self.samples.clone(),
        }
    }

    fn forecast_check(&self) -> Option<ForecastCheck> {
        let probe = self.control.forecast_probe.as_ref()?;
        let ends: Option<Vec<_>> = probe
            .on_a
            .iter()
            .map(|&id| {
                let r = &self.ledger[id as usize];
                r.planned_end.or(r.ended_at)
            })
            .collect();
        let actual_drain_s =
            ends.map(|ends| ends.into_iter().max().map_or(0.0, |last| secs(last).max(secs(probe.at)) - secs(probe.at)));
        let f = probe.forecast.as_ref();
        let ms = |x: Option<f64>| x.map(|ms| ms / 1000.0);
        let (p50_s, p90_s) = (ms(f.and_then(|f| f.p50_ms)), ms(f.and_then(|f| f.p90_ms)));
        let error_pct = |x: Option<f64>, truth: Option<f64>| match (x, truth) {
            (Some(x), Some(truth)) if truth > 0.0 => Some((x - truth) / truth * 100.0),
            _ => None,
        };
        let p50_error_pct = error_pct(p50_s, actual_drain_s);
        // The long-lived connections' ages; a short one ends within moments.
        let ages: Vec<f64> = probe
            .on_a
            .iter()
            .map(|&id| &self.ledger[id as usize])
            .filter(|r| r.planned_end.is_some())
            .map(|r| secs(probe.at) - secs(r.started))
            .collect();
        let ideal = |q| ideal_drain_s(&self.cfg.lifetime, &ages, q);
        let (ideal_p50_s, ideal_p90_s) = (ideal(0.5), ideal(0.9));
        Some(ForecastCheck {
            at_s: secs(probe.at),
            open_on_a: f.map_or(0, |f| f.open),
            connections_on_a: probe.on_a.len() as u64,
            p50_s,
            p90_s,
            expected_open_at_deadline: f.and_then(|f| f.expected_open_at_deadline),
            tail: f.map(|f| f.tail),
            observations: f.map_or(0, |f| f.observations),
            actual_drain_s,
            p50_error_pct,
            within_p90: p90_s.zip(actual_drain_s).map(|(p90, actual)| actual <= p90),
            ideal_p50_s,
            ideal_p90_s,
            ideal_error_pct: error_pct(ideal_p50_s, actual_drain_s),
            p50_vs_ideal_pct: error_pct(p50_s, ideal_p50_s),
        })
    }

    /// The router, and the second one behind ECMP.
    fn routers(&self) -> impl Iterator<Item = &crate::router::RouterNode> {
        core::iter::once(&self.router).chain(self.peer.as_ref())
    }

    fn ecmp_report(&self) -> Option<EcmpReport> {
        let (ecmp, peer) = (self.cfg.ecmp?, self.peer.as_ref()?);
        let routers = [(self.router.core.counters(), &self.router.stats), (peer.core.counters(), &peer.stats)];
        Some(self.ecmp.clone().report(&ecmp, self.now, routers))
    }

    fn link_frames(&self) -> [u64; 2] {
        let links =
            self.clients.iter().flat_map(|c| [&c.up, &c.down]).chain(self.vm_up.iter()).chain(self.vm_down.iter());
        links.fold([0, 0], |[s, l], link| {
            let (sent, lost) = link.stats();
            [s + sent, l + lost]
        })
    }
}

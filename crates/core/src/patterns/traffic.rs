//! Everything measured for one shadowed address: arrivals, lifetimes, the census of open flows
//! per VM with their ages and whether each is idle, handshake and first-byte times per VM, resets
//! and unanswered SYNs per VM. A few kilobytes an address whatever the traffic.

use core::cell::RefCell;
use core::time::Duration;

use serde::{Deserialize, Serialize};

use super::census::AgeCensus;
use super::forecast::{DrainForecast, OpenGroup, Survival};
use super::histogram::{LogHistogram, Quantiles};
use crate::flow::Side;
use crate::time::Instant;

/// Arrival rates are measured over windows of this length.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// One VM's half of the measurements.
#[derive(Clone, Debug, Default)]
struct SideStats {
    /// Open TCP flows whose start the router saw.
    known: AgeCensus,
    /// Open TCP flows first seen mid-stream (open before the measurement, or relearned).
    unknown: AgeCensus,
    idle: u32,
    handshake: LogHistogram,
    first_byte: LogHistogram,
    resets: u64,
    unanswered_syns: u64,
}

/// The traffic patterns of one shadowed address.
#[derive(Clone, Debug)]
pub struct TrafficPatterns {
    since: Instant,
    arrivals: u64,
    window_start: Instant,
    window_arrivals: u64,
    last_rate: Option<f64>,
    lifetimes: LogHistogram,
    /// Flows of unknown start (open before the measurement) that ended: time from first seen to
    /// their end, their residual life as measured.
    residuals: LogHistogram,
    sides: [SideStats; 2],
    canary: Canary,
    /// The last survival fits (milliseconds of work each, see `benches/forecast.rs`), reused by
    /// the forecasts of the next `REFIT_EVERY` (a status report asks five times a second).
    fits: RefCell<Option<Fits>>,
}

/// Survival fits kept between forecasts.
#[derive(Clone, Debug)]
struct Fits {
    at: Instant,
    lifetimes: Option<Survival>,
    residuals: Option<Survival>,
}

/// How long survival fits are reused: their inputs (ended flows, the open flows' ages) move by
/// a few per cent in that time on a drain of minutes, and the drain's own quantiles are still
/// computed afresh from them for every forecast.
const REFIT_EVERY: Duration = Duration::from_secs(5);

/// What B is compared with: A's answer times on the same address.
#[derive(Clone, Copy, Debug, Default)]
struct Canary {
    /// Limits for B's handshake and first-byte times, ms (A's median x ratio + slack), once A
    /// has enough samples.
    limits: [Option<u64>; 2],
    slow_answers: u64,
    troubled_intervals: u32,
    rollback_recommended: bool,
}

/// Which answer time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    Handshake = 0,
    FirstByte = 1,
}

fn ix(side: Side) -> usize {
    match side {
        Side::Source => 0,
        Side::Destination => 1,
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl TrafficPatterns {
    /// Measurement beginning at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            since: now,
            arrivals: 0,
            window_start: now,
            window_arrivals: 0,
            last_rate: None,
            lifetimes: LogHistogram::default(),
            residuals: LogHistogram::default(),
            sides: Default::default(),
            canary: Canary::default(),
            fits: RefCell::new(None),
        }
    }

    /// A new inbound TCP flow (a client's SYN).
    pub(crate) fn arrival(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= RATE_WINDOW {
            self.last_rate = Some(self.window_arrivals as f64 / elapsed.as_secs_f64());
            self.window_start = now;
            self.window_arrivals = 0;
        }
        self.arrivals += 1;
        self.window_arrivals += 1;
    }

    /// A flow is open on `side` (established, or first seen mid-stream), started at `started`.
    pub(crate) fn open(&mut self, side: Side, known_start: bool, started: Instant) {
        let s = &mut self.sides[ix(side)];
        if known_start { s.known.add(started) } else { s.unknown.add(started) }
    }

    /// A flow counted open on `side` is no longer; `lifetime` when it ended (not merely moved to
    /// the other side) and its start was seen.
    pub(crate) fn close(
        &mut self,
        side: Side,
        known_start: bool,
        started: Instant,
        idle: bool,
        lifetime: Option<Duration>,
    ) {
        let s = &mut self.sides[ix(side)];
        if known_start {
            s.known.remove(started)
        } else {
            s.unknown.remove(started)
        }
        if idle {
            s.idle = s.idle.saturating_sub(1);
        }
        match (known_start, lifetime) {
            (true, Some(life)) => self.lifetimes.record(ms(life)),
            (false, Some(seen_for)) => self.residuals.record(ms(seen_for)),
            _ => {}
        }
    }

    /// An open flow on `side` became idle (`true`) or busy.
    pub(crate) fn idle_changed(&mut self, side: Side, idle: bool) {
        let n = &mut self.sides[ix(side)].idle;
        *n = if idle { n.saturating_add(1) } else { n.saturating_sub(1) };
    }

    /// `side` answered a client's SYN after `took`.
    pub(crate) fn handshake(&mut self, side: Side, took: Duration) {
        self.sides[ix(side)].handshake.record(ms(took));
    }

    /// `side` sent the first byte of an answer `took` after the client's request.
    pub(crate) fn first_byte(&mut self, side: Side, took: Duration) {
        self.sides[ix(side)].first_byte.record(ms(took));
    }

    /// Sets B's limits from A's answer times (each controller interval).
    pub(crate) fn refresh_limits(&mut self, params: &crate::shadow::CongestionControlParameters) {
        let a = &self.sides[0];
        for (i, h) in [&a.handshake, &a.first_byte].into_iter().enumerate() {
            self.canary.limits[i] = (h.total() >= u64::from(params.min_answer_samples))
                .then(|| h.quantile(0.5))
                .flatten()
                .map(|p50| (p50 * params.max_answer_ratio) as u64 + ms(params.answer_slack));
        }
    }

    /// Whether B's answer of `kind` that took `took` is slow compared with A's (counted if so).
    pub(crate) fn slow_answer(&mut self, kind: Answer, took: Duration) -> bool {
        let slow = self.canary.limits[kind as usize].is_some_and(|limit| ms(took) > limit);
        self.canary.slow_answers += u64::from(slow);
        slow
    }

    /// Records the controller's judgement: intervals of trouble in a row, and whether that is
    /// long enough to recommend rolling back.
    pub(crate) fn set_trouble(&mut self, intervals: u32, rollback_after: u32) {
        self.canary.troubled_intervals = intervals;
        self.canary.rollback_recommended |= rollback_after > 0 && intervals >= rollback_after;
    }

    /// `side` reset one of its own flows.
    pub(crate) fn reset(&mut self, side: Side) {
        self.sides[ix(side)].resets += 1;
    }

    /// A client gave up waiting for `side`'s SYN-ACK and sent its SYN again.
    pub(crate) fn unanswered_syn(&mut self, side: Side) {
        self.sides[ix(side)].unanswered_syns += 1;
    }

    /// When the measurement began.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// TCP flows open on `side`.
    pub fn open_on(&self, side: Side) -> u32 {
        let s = &self.sides[ix(side)];
        s.known.open() + s.unknown.open()
    }

    /// Of those, idle (nothing in flight either way).
    pub fn idle_on(&self, side: Side) -> u32 {
        self.sides[ix(side)].idle
    }

    /// The report at `now`.
    pub fn report(&self, now: Instant) -> PatternsReport {
        let elapsed = now.saturating_duration_since(self.window_start);
        let current = (elapsed >= Duration::from_secs(1)).then(|| self.window_arrivals as f64 / elapsed.as_secs_f64());
        let side = |side: Side| {
            let s = &self.sides[ix(side)];
            let open = self.open_on(side);
            SidePatterns {
                open,
                open_unknown_start: s.unknown.open(),
                idle: s.idle.min(open),
                oldest_open_ms: [s.known.oldest_ms(now), s.unknown.oldest_ms(now)].into_iter().flatten().max(),
                handshake_ms: s.handshake.summary(),
                first_byte_ms: s.first_byte.summary(),
                resets: s.resets,
                unanswered_syns: s.unanswered_syns,
            }
        };
        PatternsReport {
            measured_for_ms: ms(now.saturating_duration_since(self.since)),
            arrivals: self.arrivals,
            arrival_rate_per_s: current.or(self.last_rate).unwrap_or(0.0),
            lifetimes_ms: self.lifetimes.summary(),
            source: side(Side::Source),
            destination: side(Side::Destination),
            canary: CanaryReport {
                handshake_limit_ms: self.canary.limits[0],
                first_byte_limit_ms: self.canary.limits[1],
                slow_answers: self.canary.slow_answers,
                troubled_intervals: self.canary.troubled_intervals,
                rollback_recommended: self.canary.rollback_recommended,
            },
        }
    }

    /// The survival fits of the lifetimes and of the unknown-start cohort, from the last
    /// `REFIT_EVERY` or made now.
    fn fits(&self, now: Instant) -> (Option<Survival>, Option<Survival>) {
        let mut fits = self.fits.borrow_mut();
        if let Some(f) = fits.as_ref()
            && now.saturating_duration_since(f.at) < REFIT_EVERY
            && f.at <= now
        {
            return (f.lifetimes.clone(), f.residuals.clone());
        }
        let lifetimes = Survival::estimate(&self.lifetimes, self.sides.iter().flat_map(|s| s.known.ages(now)));
        // The cohort's tail is fitted past its first eighth too: the short requests in flight when
        // the measurement began are in it, and their ends within moments would read as a hazard
        // falling with age (a heavy tail).
        let residuals = Survival::estimate(&self.residuals, self.sides.iter().flat_map(|s| s.unknown.ages(now)));
        *fits = Some(Fits { at: now, lifetimes: lifetimes.clone(), residuals: residuals.clone() });
        (lifetimes, residuals)
    }

    /// The drain forecast of A's open flows at `now` for a cut-over at `deadline`, or `None`
    /// before anything was observed.
    pub fn forecast(&self, now: Instant, deadline: Option<Instant>) -> Option<DrainForecast> {
        let open = |f: fn(&SideStats) -> &AgeCensus| self.sides.iter().map(move |s| f(s).open()).sum::<u32>();
        let (lifetimes, residuals) = self.fits(now);
        let observations = self.lifetimes.total()
            + self.residuals.total()
            + u64::from(open(|s| &s.known))
            + u64::from(open(|s| &s.unknown));
        let a = &self.sides[0];
        let groups: Vec<OpenGroup> = a
            .known
            .ages(now)
            .map(|(age_ms, count)| OpenGroup { age_ms, count, known_start: true })
            .chain(a.unknown.ages(now).map(|(age_ms, count)| OpenGroup { age_ms, count, known_start: false }))
            .collect();
        let deadline_in = deadline.map(|d| d.saturating_duration_since(now).as_secs_f64() * 1000.0);
        // The flows open before the measurement are best told by their own cohort once some of
        // them have been seen to end; until then, by the equilibrium residual of the lifetimes.
        let residuals = residuals.filter(|_| self.residuals.total() >= MIN_COHORT_ENDS);
        DrainForecast::compute(lifetimes.as_ref(), residuals.as_ref(), &groups, deadline_in, observations)
    }
}

/// Ended flows of the unknown-start cohort needed before its own residual estimate is used.
const MIN_COHORT_ENDS: u64 = 10;

/// One VM's measurements in a report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SidePatterns {
    /// TCP flows open now.
    pub open: u32,
    /// Of those, first seen mid-stream (their age is at least the one shown).
    pub open_unknown_start: u32,
    /// Of those, idle: everything either side sent was acknowledged.
    pub idle: u32,
    /// Age of the oldest open flow, ms.
    pub oldest_open_ms: Option<u64>,
    /// Client SYN to this VM's SYN-ACK.
    pub handshake_ms: Quantiles,
    /// A client's request to this VM's first byte of the answer.
    pub first_byte_ms: Quantiles,
    /// RSTs this VM sent on its own flows.
    pub resets: u64,
    /// SYNs a client had to send again because this VM did not answer.
    pub unanswered_syns: u64,
}

/// What the router measured for a shadowed address since the migration was requested.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PatternsReport {
    /// How long the router has measured, ms.
    pub measured_for_ms: u64,
    /// New inbound TCP flows since then.
    pub arrivals: u64,
    /// New inbound TCP flows per second, over the last 10 s.
    pub arrival_rate_per_s: f64,
    /// Lifetimes of ended flows whose start the router saw (censored ones are in the forecast).
    pub lifetimes_ms: Quantiles,
    /// VM A.
    pub source: SidePatterns,
    /// VM B.
    pub destination: SidePatterns,
    /// B compared with A (application-aware health).
    #[serde(default)]
    pub canary: CanaryReport,
}

/// B's answers compared with A's on the same address, like a canary analysis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CanaryReport {
    /// B's handshakes slower than this are slow (A's median x ratio + slack), ms; absent until A
    /// has enough samples.
    pub handshake_limit_ms: Option<u64>,
    /// The same for the first byte of an answer, ms.
    pub first_byte_limit_ms: Option<u64>,
    /// B's slow answers so far.
    pub slow_answers: u64,
    /// Controller intervals in a row judged trouble for B (any signal), as of the last one.
    pub troubled_intervals: u32,
    /// B stayed in trouble for `rollback_after_intervals` in a row: the manager should roll back.
    pub rollback_recommended: bool,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Flows of 10-40 s lifetimes ended, 50 open: enough for a forecast.
    fn patterns(t0: Instant) -> TrafficPatterns {
        let mut p = TrafficPatterns::new(t0);
        for i in 0..200u64 {
            let started = t0 + Duration::from_millis(i * 100);
            p.open(Side::Source, true, started);
            p.close(Side::Source, true, started, false, Some(Duration::from_millis(10_000 + i * 150)));
        }
        for i in 0..50u64 {
            p.open(Side::Source, true, t0 + Duration::from_millis(i * 300));
        }
        p
    }

    #[test]
    fn forecasts_reuse_the_fits_until_they_are_refit_after_five_seconds() {
        let t0 = Instant::from_secs(100);
        let mut p = patterns(t0);
        let now = t0 + Duration::from_secs(45);
        let first = p.forecast(now, None).unwrap();
        // Flows that lived far longer end now: a fresh fit would see a longer tail.
        for i in 0..100u64 {
            let started = t0 + Duration::from_millis(i);
            p.open(Side::Source, true, started);
            p.close(Side::Source, true, started, false, Some(Duration::from_secs(600 + i)));
        }
        let soon = p.forecast(now + Duration::from_secs(1), None).unwrap();
        assert_eq!(soon.tail, first.tail, "the fits of a second ago are reused");
        let later = p.forecast(now + REFIT_EVERY, None).unwrap();
        assert_ne!(later.tail, first.tail, "refit after {REFIT_EVERY:?}");
        assert!(later.p50_ms.unwrap() > first.p50_ms.unwrap(), "{later:?} vs {first:?}");
    }
}

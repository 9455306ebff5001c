//! The split controller: ramp ceiling plus AIMD congestion control, sans-IO.
//!
//! Effective split = min(ramp ceiling, congestion window). The window starts open (100 %), so
//! the ramp rules while B is healthy. At the end of each interval the signals counted from B are
//! judged: trouble cuts the window to `split * multiplicative_decrease` (never below the floor);
//! a healthy interval opens it by `additive_increase_pct`. As in TCP, the decrease is immediate
//! and the recovery linear.

use core::time::Duration;

use serde::Serialize;

use super::params::{CongestionControlParameters, Ramp};
use crate::time::Instant;

/// A trouble (or activity) signal about B, measured by the router.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// B reset one of its own flows.
    Reset,
    /// B sent a reply on a flow it does not own.
    Conflict,
    /// A client retransmitted its SYN to B: B did not answer in time.
    UnansweredSyn,
    /// A client retransmitted data to B: B did not acknowledge it in time.
    Retransmission,
    /// A data segment was delivered to B (the retransmission ratio's denominator).
    DataSegment,
    /// B took much longer than A to answer a SYN or a request (application-aware health, like a
    /// canary analysis: see [`CongestionControlParameters::max_answer_ratio`]).
    SlowAnswer,
}

/// Why the split moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reason", content = "signal")]
pub enum SplitReason {
    /// The ramp ceiling or the congestion window opened.
    Increase,
    /// Trouble from B: multiplicative decrease, naming the signal that tripped it.
    Decrease(Signal),
    /// Operator promote: 100 %.
    Promote,
    /// Operator abort: 0 %.
    Abort,
    /// Cut-over at the deadline: 100 %.
    CutOver,
}

/// A change of the effective split.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct SplitChange {
    /// Before, percent.
    pub from_pct: f64,
    /// After, percent.
    pub to_pct: f64,
    /// Why.
    pub reason: SplitReason,
}

/// Signals counted over one interval. The router keeps one next to each entry's hot fields and
/// hands it to the controller when the interval is judged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignalCounts {
    resets: u32,
    conflicts: u32,
    unanswered_syns: u32,
    retransmissions: u32,
    data_segments: u32,
}

impl SignalCounts {
    /// Counts one signal.
    #[inline]
    pub fn record(&mut self, signal: Signal) {
        let n = match signal {
            Signal::Reset => &mut self.resets,
            Signal::Conflict => &mut self.conflicts,
            Signal::UnansweredSyn => &mut self.unanswered_syns,
            Signal::Retransmission => &mut self.retransmissions,
            Signal::DataSegment => &mut self.data_segments,
            // Rare (one per answer, not per packet): the controller counts these itself, so the
            // counts kept beside the packet path stay small.
            Signal::SlowAnswer => return,
        };
        *n = n.saturating_add(1);
    }

    fn add(&mut self, other: &Self) {
        self.resets = self.resets.saturating_add(other.resets);
        self.conflicts = self.conflicts.saturating_add(other.conflicts);
        self.unanswered_syns = self.unanswered_syns.saturating_add(other.unanswered_syns);
        self.retransmissions = self.retransmissions.saturating_add(other.retransmissions);
        self.data_segments = self.data_segments.saturating_add(other.data_segments);
    }
}

/// Moves one entry's split. Time is passed in; [`SplitController::next_wakeup`] says when to call
/// [`SplitController::poll`] next.
#[derive(Clone, Debug)]
pub struct SplitController {
    params: CongestionControlParameters,
    ramp: Ramp,
    started: Option<Instant>,
    paused_at: Option<Instant>,
    paused_total: Duration,
    /// Ramp time already behind a controller that resumed a recorded split (a restarted
    /// router): the ramp goes on from where it yields that split, not from its first step.
    resumed_from: Duration,
    cwnd: f64,
    split: f64,
    fixed: Option<f64>,
    interval_end: Option<Instant>,
    counts: SignalCounts,
    slow_answers: u32,
    /// Intervals judged trouble in a row, up to the last one judged.
    troubled: u32,
}

impl SplitController {
    /// A controller at split 0, waiting for [`SplitController::start`].
    pub fn new(params: CongestionControlParameters, ramp: Ramp) -> Self {
        Self {
            params,
            ramp,
            started: None,
            paused_at: None,
            paused_total: Duration::ZERO,
            resumed_from: Duration::ZERO,
            cwnd: 100.0,
            split: 0.0,
            fixed: None,
            interval_end: None,
            counts: SignalCounts::default(),
            slow_answers: 0,
            troubled: 0,
        }
    }

    /// A controller resuming at a recorded split (after a restart): the ramp continues from the
    /// point where it yields `split`.
    pub fn resume_at(params: CongestionControlParameters, ramp: Ramp, split: f64, started: Instant) -> Self {
        let mut c = Self::new(params, ramp);
        c.resumed_from = c.ramp.time_to_reach(split);
        c.started = Some(started);
        c.split = split.clamp(0.0, 100.0);
        c.interval_end = Some(started + c.params.interval);
        c
    }

    /// The effective split, percent.
    pub fn split(&self) -> f64 {
        self.split
    }

    /// Whether the ramp has started (B's lease is bound).
    pub fn started(&self) -> bool {
        self.started.is_some()
    }

    /// Whether paused.
    pub fn paused(&self) -> bool {
        self.paused_at.is_some()
    }

    /// B's lease is bound: the ramp starts now.
    pub fn start(&mut self, now: Instant) -> Option<SplitChange> {
        if self.started.is_some() {
            return None;
        }
        self.started = Some(now);
        self.interval_end = Some(now + self.params.interval);
        self.apply(self.ceiling(now).min(self.cwnd), SplitReason::Increase)
    }

    /// Counts a signal into the current interval.
    pub fn record(&mut self, signal: Signal) {
        if signal == Signal::SlowAnswer {
            self.slow_answers = self.slow_answers.saturating_add(1);
        } else {
            self.counts.record(signal);
        }
    }

    /// Intervals in a row judged trouble, as of the last one judged: B staying much worse than
    /// A for long is a reason to roll back, not only to slow down.
    pub fn troubled_intervals(&self) -> u32 {
        self.troubled
    }

    /// Adds signals counted elsewhere into the current interval.
    pub fn absorb(&mut self, counts: &SignalCounts) {
        self.counts.add(counts);
    }

    /// Freezes the split.
    pub fn pause(&mut self, now: Instant) {
        if self.paused_at.is_none() {
            self.paused_at = Some(now);
        }
    }

    /// Unfreezes; paused time does not count as ramp time.
    pub fn resume(&mut self, now: Instant) {
        if let Some(at) = self.paused_at.take() {
            self.paused_total = self.paused_total.saturating_add(now - at);
            self.interval_end = Some(now + self.params.interval);
            self.counts = SignalCounts::default();
        }
    }

    /// Fixes the split at 100 %.
    pub fn promote(&mut self) -> Option<SplitChange> {
        self.fixed = Some(100.0);
        self.apply(100.0, SplitReason::Promote)
    }

    /// Fixes the split at 0 %.
    pub fn abort(&mut self) -> Option<SplitChange> {
        self.fixed = Some(0.0);
        self.apply(0.0, SplitReason::Abort)
    }

    /// Fixes the split at 100 % for the cut-over.
    pub fn cut_over(&mut self) -> Option<SplitChange> {
        self.fixed = Some(100.0);
        self.apply(100.0, SplitReason::CutOver)
    }

    fn ceiling(&self, now: Instant) -> f64 {
        let Some(started) = self.started else { return 0.0 };
        let paused_now = self.paused_at.map_or(Duration::ZERO, |at| now - at);
        let ramp_time = (now - started).saturating_add(self.resumed_from);
        self.ramp.ceiling(ramp_time.saturating_sub(self.paused_total.saturating_add(paused_now)))
    }

    fn apply(&mut self, to: f64, reason: SplitReason) -> Option<SplitChange> {
        let to = if to.is_finite() { to.clamp(0.0, 100.0) } else { self.split };
        if to == self.split {
            return None;
        }
        let change = SplitChange { from_pct: self.split, to_pct: to, reason };
        self.split = to;
        Some(change)
    }

    /// The signal that makes the last interval trouble, if any.
    fn trouble(&self) -> Option<Signal> {
        let (c, p) = (&self.counts, &self.params);
        if c.unanswered_syns > p.max_unanswered_syns_per_interval {
            Some(Signal::UnansweredSyn)
        } else if c.resets > p.max_resets_per_interval {
            Some(Signal::Reset)
        } else if c.conflicts > p.max_conflicts_per_interval {
            Some(Signal::Conflict)
        } else if c.data_segments >= p.min_segments_for_ratio
            && f64::from(c.retransmissions) > p.max_retransmit_ratio * f64::from(c.data_segments)
        {
            Some(Signal::Retransmission)
        } else if self.slow_answers > p.max_slow_answers_per_interval {
            Some(Signal::SlowAnswer)
        } else {
            None
        }
    }

    /// Advances to `now`: judges finished intervals and follows the ramp.
    pub fn poll(&mut self, now: Instant) -> Option<SplitChange> {
        if self.fixed.is_some() || self.paused_at.is_some() {
            return None;
        }
        let mut end = self.interval_end?;
        let mut decrease = None;
        while end <= now {
            if let Some(signal) = self.trouble() {
                self.cwnd = (self.split * self.params.multiplicative_decrease).max(self.params.floor_pct);
                decrease = Some(signal);
                self.troubled = self.troubled.saturating_add(1);
            } else {
                self.troubled = 0;
                if decrease.is_none() {
                    self.cwnd = (self.cwnd + self.params.additive_increase_pct).min(100.0);
                }
            }
            self.counts = SignalCounts::default();
            self.slow_answers = 0;
            end = end + self.params.interval;
        }
        self.interval_end = Some(end);
        let target = self.ceiling(now).min(self.cwnd);
        let reason = match decrease {
            Some(signal) => SplitReason::Decrease(signal),
            None => SplitReason::Increase,
        };
        self.apply(target, reason)
    }

    /// When [`SplitController::poll`] next has work: the end of the interval or the next ramp step.
    pub fn next_wakeup(&self) -> Option<Instant> {
        if self.fixed.is_some() || self.paused_at.is_some() {
            return None;
        }
        let interval = self.interval_end?;
        let started = self.started?;
        let ramp_time = (interval - started).saturating_add(self.resumed_from).saturating_sub(self.paused_total);
        let step = self
            .ramp
            .next_step_after(ramp_time)
            .map(|t| started + t.saturating_sub(self.resumed_from) + self.paused_total);
        Some(step.map_or(interval, |s| s.min(interval)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shadow::RampStep;

    fn secs(s: u64) -> Instant {
        Instant::from_secs(s)
    }

    #[test]
    fn nothing_moves_before_the_lease_is_bound() {
        let mut c = SplitController::new(CongestionControlParameters::default(), Ramp::Linear { pct_per_sec: 10.0 });
        assert_eq!(c.poll(secs(100)), None);
        assert_eq!(c.split(), 0.0);
        assert_eq!(c.next_wakeup(), None);
    }

    #[test]
    fn linear_ramp_reaches_100_and_stays_in_range() {
        let mut c = SplitController::new(CongestionControlParameters::default(), Ramp::Linear { pct_per_sec: 10.0 });
        c.start(secs(10));
        for s in 11..=30 {
            c.poll(secs(s));
            assert!((0.0..=100.0).contains(&c.split()));
        }
        assert_eq!(c.split(), 100.0);
        c.poll(secs(15 + 10));
    }

    #[test]
    fn a_resumed_ramp_goes_on_from_its_recorded_split() {
        let hold = Duration::from_secs(5);
        let steps = [1.0, 5.0, 25.0, 50.0, 100.0].map(|pct| RampStep { pct, hold }).to_vec();
        let ramp = Ramp::Steps { steps };
        assert_eq!(ramp.time_to_reach(0.0), Duration::ZERO);
        assert_eq!(ramp.time_to_reach(5.0), Duration::from_secs(5));
        assert_eq!(ramp.time_to_reach(20.0), Duration::from_secs(10));
        assert_eq!(ramp.time_to_reach(100.0), Duration::from_secs(20));
        // Resumed at 5 % (the second step), the next step (25 %) comes one hold later, not four.
        let mut c = SplitController::resume_at(CongestionControlParameters::default(), ramp, 5.0, secs(100));
        c.poll(secs(101));
        assert_eq!(c.split(), 5.0, "not back to the first step");
        assert!(c.next_wakeup().is_some_and(|t| t <= secs(105)), "woken by the next step at the latest");
        c.poll(secs(105));
        assert_eq!(c.split(), 25.0);
        let linear = Ramp::Linear { pct_per_sec: 10.0 };
        assert_eq!(linear.time_to_reach(50.0), Duration::from_secs(5));
        let mut c = SplitController::resume_at(CongestionControlParameters::default(), linear, 50.0, secs(100));
        c.poll(secs(102));
        assert!((c.split() - 70.0).abs() < 1e-9, "{}", c.split());
    }

    #[test]
    fn trouble_halves_then_recovers_additively() {
        let params = CongestionControlParameters { additive_increase_pct: 5.0, ..Default::default() };
        let mut c = SplitController::new(
            params,
            Ramp::Steps { steps: vec![RampStep { pct: 40.0, hold: Duration::from_secs(1000) }] },
        );
        c.start(secs(0));
        assert_eq!(c.split(), 40.0);
        for _ in 0..6 {
            c.record(Signal::Reset);
        }
        let change = c.poll(secs(1)).unwrap();
        assert_eq!(change.reason, SplitReason::Decrease(Signal::Reset));
        assert_eq!(c.split(), 20.0);
        assert_eq!(c.poll(secs(2)).unwrap().to_pct, 25.0);
        c.poll(secs(5));
        assert_eq!(c.split(), 40.0, "recovers up to the ramp ceiling and no further");
    }

    #[test]
    fn floor_holds_and_abort_goes_to_zero() {
        let params = CongestionControlParameters { floor_pct: 2.0, ..Default::default() };
        let mut c = SplitController::new(params, Ramp::Linear { pct_per_sec: 100.0 });
        c.start(secs(0));
        for t in 1..20 {
            for _ in 0..10 {
                c.record(Signal::UnansweredSyn);
            }
            c.poll(secs(t));
            assert!(c.split() >= 2.0);
        }
        assert_eq!(c.split(), 2.0);
        c.abort();
        assert_eq!(c.split(), 0.0);
        assert_eq!(c.poll(secs(100)), None);
    }

    #[test]
    fn pause_freezes_ramp_time() {
        let mut c = SplitController::new(CongestionControlParameters::default(), Ramp::Linear { pct_per_sec: 1.0 });
        c.start(secs(0));
        c.poll(secs(10));
        assert_eq!(c.split(), 10.0);
        c.pause(secs(10));
        assert_eq!(c.poll(secs(50)), None);
        c.resume(secs(50));
        c.poll(secs(55));
        assert_eq!(c.split(), 15.0);
    }

    #[test]
    fn retransmission_ratio_needs_enough_samples() {
        let mut c = SplitController::new(CongestionControlParameters::default(), Ramp::Linear { pct_per_sec: 50.0 });
        c.start(secs(0));
        c.poll(secs(1));
        for _ in 0..10 {
            c.record(Signal::Retransmission);
            c.record(Signal::DataSegment);
        }
        assert_ne!(c.poll(secs(2)).map(|ch| ch.reason), Some(SplitReason::Decrease(Signal::Retransmission)));
        for _ in 0..100 {
            c.record(Signal::DataSegment);
        }
        for _ in 0..20 {
            c.record(Signal::Retransmission);
        }
        assert_eq!(c.poll(secs(3)).map(|ch| ch.reason), Some(SplitReason::Decrease(Signal::Retransmission)));
    }
}

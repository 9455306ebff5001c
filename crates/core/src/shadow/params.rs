//! Ramp and congestion-control parameters, with validation.

use core::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::RouterError;
use crate::time::duration_ms;

/// How the split rises once B's lease is bound: the ceiling that congestion control works under.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Ramp {
    /// Rises continuously from 0 at `pct_per_sec`.
    Linear {
        /// Percentage points per second.
        pct_per_sec: f64,
    },
    /// Holds each step's percentage for its duration, then moves to the next; the last step
    /// holds until cut-over.
    Steps {
        /// The steps, in order; percentages must not decrease.
        steps: Vec<RampStep>,
    },
}

/// One step of a stepped ramp.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RampStep {
    /// Split during this step.
    pub pct: f64,
    /// How long the step lasts.
    #[serde(with = "duration_ms", rename = "hold_ms")]
    pub hold: Duration,
}

impl Default for Ramp {
    /// 1, 5, 25, 50, 100 % every 30 s (MISSION.md).
    fn default() -> Self {
        let step = |pct| RampStep { pct, hold: Duration::from_secs(30) };
        Ramp::Steps { steps: vec![step(1.0), step(5.0), step(25.0), step(50.0), step(100.0)] }
    }
}

impl Ramp {
    /// Checks the ramp can be followed.
    pub fn validate(&self) -> Result<(), RouterError> {
        match self {
            Ramp::Linear { pct_per_sec } => {
                if !(pct_per_sec.is_finite() && *pct_per_sec > 0.0) {
                    return Err(RouterError::invalid("ramp.pct_per_sec", "must be a positive number"));
                }
            }
            Ramp::Steps { steps } => {
                if steps.is_empty() {
                    return Err(RouterError::invalid("ramp.steps", "needs at least one step"));
                }
                let mut last = 0.0;
                for s in steps {
                    if !(0.0..=100.0).contains(&s.pct) {
                        return Err(RouterError::invalid("ramp.steps.pct", "must be within 0..=100"));
                    }
                    if s.pct < last {
                        return Err(RouterError::invalid("ramp.steps.pct", "must not decrease"));
                    }
                    if s.hold.is_zero() {
                        return Err(RouterError::invalid("ramp.steps.hold_ms", "must be above 0"));
                    }
                    last = s.pct;
                }
            }
        }
        Ok(())
    }

    /// The ceiling after `elapsed` ramp time (pauses excluded), in percent.
    pub fn ceiling(&self, elapsed: Duration) -> f64 {
        match self {
            Ramp::Linear { pct_per_sec } => (pct_per_sec * elapsed.as_secs_f64()).min(100.0),
            Ramp::Steps { steps } => {
                let mut end = Duration::ZERO;
                for s in steps {
                    end = end.saturating_add(s.hold);
                    if elapsed < end {
                        return s.pct;
                    }
                }
                steps.last().map_or(100.0, |s| s.pct)
            }
        }
    }

    /// The shortest ramp time after which the ceiling is at least `pct` (where a resumed ramp
    /// goes on from).
    pub fn time_to_reach(&self, pct: f64) -> Duration {
        match self {
            Ramp::Linear { pct_per_sec } => {
                // A rate so slow that the time overflows never gets there: the longest time, not
                // zero (which would make it look instant).
                Duration::try_from_secs_f64(pct.clamp(0.0, 100.0) / pct_per_sec).unwrap_or(Duration::MAX)
            }
            Ramp::Steps { steps } => {
                let mut start = Duration::ZERO;
                for (i, s) in steps.iter().enumerate() {
                    if s.pct >= pct || i + 1 == steps.len() {
                        return start;
                    }
                    start = start.saturating_add(s.hold);
                }
                start
            }
        }
    }

    /// Ramp time at which the ceiling next changes after `elapsed`, for a stepped ramp.
    pub fn next_step_after(&self, elapsed: Duration) -> Option<Duration> {
        match self {
            Ramp::Linear { .. } => None,
            Ramp::Steps { steps } => {
                let mut end = Duration::ZERO;
                for s in steps {
                    end = end.saturating_add(s.hold);
                    if elapsed < end {
                        return Some(end);
                    }
                }
                None
            }
        }
    }
}

/// The seed's `congestion_control_parameters`: AIMD on the split, driven by trouble signals from
/// B that the router measures itself.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CongestionControlParameters {
    /// Additive increase of the congestion window per healthy interval, in percentage points.
    pub additive_increase_pct: f64,
    /// Length of a measurement interval.
    #[serde(with = "duration_ms", rename = "interval_ms")]
    pub interval: Duration,
    /// Factor applied to the split on trouble (0.5 halves it).
    pub multiplicative_decrease: f64,
    /// The split never falls below this by congestion control (only abort sets 0), so B keeps
    /// receiving a trickle that tells when it has recovered.
    pub floor_pct: f64,
    /// A SYN to B retransmitted by its client at least this long after the first is unanswered.
    #[serde(with = "duration_ms", rename = "syn_timeout_ms")]
    pub syn_timeout: Duration,
    /// RSTs from B on its own flows tolerated per interval.
    pub max_resets_per_interval: u32,
    /// Conflicting replies from B tolerated per interval.
    pub max_conflicts_per_interval: u32,
    /// Unanswered SYNs to B tolerated per interval.
    pub max_unanswered_syns_per_interval: u32,
    /// Share of inbound data segments to B that may be retransmissions before it is trouble.
    pub max_retransmit_ratio: f64,
    /// Fewest data segments to B in an interval before the retransmission ratio is judged.
    pub min_segments_for_ratio: u32,
    /// Application-aware health, like a canary analysis: B's answer to a SYN (handshake) or to a
    /// request (first byte) slower than this multiple of A's median on the same address, plus
    /// `answer_slack_ms`, counts as a slow answer.
    pub max_answer_ratio: f64,
    /// Added to the limit, so that sub-millisecond medians do not make noise trouble.
    #[serde(with = "duration_ms", rename = "answer_slack_ms")]
    pub answer_slack: Duration,
    /// A's answers measured before B is compared with them.
    pub min_answer_samples: u32,
    /// Slow answers from B tolerated per interval.
    pub max_slow_answers_per_interval: u32,
    /// Intervals of trouble in a row after which rolling back is recommended (B stays much
    /// worse than A); 0 never recommends it.
    pub rollback_after_intervals: u32,
}

impl Default for CongestionControlParameters {
    fn default() -> Self {
        Self {
            additive_increase_pct: 5.0,
            interval: Duration::from_secs(1),
            multiplicative_decrease: 0.5,
            floor_pct: 1.0,
            syn_timeout: Duration::from_millis(900),
            max_resets_per_interval: 5,
            max_conflicts_per_interval: 5,
            max_unanswered_syns_per_interval: 2,
            max_retransmit_ratio: 0.1,
            min_segments_for_ratio: 50,
            max_answer_ratio: 3.0,
            answer_slack: Duration::from_millis(50),
            min_answer_samples: 20,
            max_slow_answers_per_interval: 5,
            rollback_after_intervals: 30,
        }
    }
}

impl CongestionControlParameters {
    /// Checks every parameter is in range; the error names the parameter.
    pub fn validate(&self) -> Result<(), RouterError> {
        let p = self;
        if !(p.additive_increase_pct.is_finite() && p.additive_increase_pct > 0.0 && p.additive_increase_pct <= 100.0) {
            return Err(RouterError::invalid("additive_increase_pct", "must be within (0, 100]"));
        }
        if p.interval < Duration::from_millis(10) {
            return Err(RouterError::invalid("interval_ms", "must be at least 10"));
        }
        if !(p.multiplicative_decrease.is_finite()
            && p.multiplicative_decrease > 0.0
            && p.multiplicative_decrease < 1.0)
        {
            return Err(RouterError::invalid("multiplicative_decrease", "must be within (0, 1)"));
        }
        if !(0.0..=100.0).contains(&p.floor_pct) {
            return Err(RouterError::invalid("floor_pct", "must be within 0..=100"));
        }
        if !(0.0..=1.0).contains(&p.max_retransmit_ratio) {
            return Err(RouterError::invalid("max_retransmit_ratio", "must be within 0..=1"));
        }
        if !(p.max_answer_ratio.is_finite() && p.max_answer_ratio >= 1.0) {
            return Err(RouterError::invalid("max_answer_ratio", "must be a number of at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stepped_ramp_holds_each_step() {
        let ramp = Ramp::default();
        assert_eq!(ramp.ceiling(Duration::ZERO), 1.0);
        assert_eq!(ramp.ceiling(Duration::from_secs(29)), 1.0);
        assert_eq!(ramp.ceiling(Duration::from_secs(30)), 5.0);
        assert_eq!(ramp.ceiling(Duration::from_secs(119)), 50.0);
        assert_eq!(ramp.ceiling(Duration::from_secs(1000)), 100.0);
        assert_eq!(ramp.next_step_after(Duration::from_secs(31)), Some(Duration::from_secs(60)));
        assert_eq!(Ramp::Linear { pct_per_sec: 2.0 }.ceiling(Duration::from_millis(2500)), 5.0);
    }

    #[test]
    fn huge_holds_and_slow_rates_saturate_instead_of_overflowing() {
        let huge = RampStep { pct: 50.0, hold: Duration::MAX };
        let ramp = Ramp::Steps { steps: vec![huge, huge, RampStep { pct: 100.0, hold: Duration::MAX }] };
        assert_eq!(ramp.time_to_reach(100.0), Duration::MAX);
        assert_eq!(ramp.ceiling(Duration::from_secs(1)), 50.0);
        assert_eq!(ramp.next_step_after(Duration::from_secs(1)), Some(Duration::MAX));
        assert_eq!(Ramp::Linear { pct_per_sec: 1e-300 }.time_to_reach(100.0), Duration::MAX);
    }

    #[test]
    fn bad_parameters_are_named() {
        let p = CongestionControlParameters { multiplicative_decrease: 1.5, ..Default::default() };
        assert!(p.validate().unwrap_err().to_string().contains("multiplicative_decrease"));
        let r = Ramp::Steps {
            steps: vec![
                RampStep { pct: 50.0, hold: Duration::from_secs(1) },
                RampStep { pct: 10.0, hold: Duration::from_secs(1) },
            ],
        };
        assert!(r.validate().is_err());
        assert!(Ramp::Linear { pct_per_sec: f64::NAN }.validate().is_err());
    }
}

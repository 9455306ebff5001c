//! The drain forecast: when the flows still open on A will have ended, from the lifetimes the
//! router measured.
//!
//! 1. **Lifetimes.** The survival function S(t) = P(lifetime > t) of TCP flows whose start the
//!    router saw (SYN), ended ones as events and open ones as right-censored at their age, by the
//!    life-table (actuarial) form of the Kaplan–Meier product-limit estimator on the histogram's
//!    logarithmic bins (Kaplan & Meier, JASA 53, 1958; Cutler & Ederer, J. Chronic Dis. 8, 1958):
//!    censored flows count half at risk in their bin. Censoring is the normal case here: at the
//!    moment of a forecast most long flows are still open, and dropping them (or counting them as
//!    ended) would bias every figure short.
//! 2. **Beyond the longest observation** τ nothing is measured, so a tail is fitted to the last
//!    half of the observed range, [τ/2, τ]: the flows still at risk there, not the short ones
//!    that dominate early deaths. Constant hazard (exponential) by default, as Brown, Hollander &
//!    Korwar's tail completion (1974) does over the whole range; where the hazard clearly falls
//!    with age (the late half's under 3/4 of the preceding quarter's; a power law halves it), a Pareto tail with the
//!    log-log slope of the late half, because heavy-tailed lifetimes (Pareto, log-normal) are
//!    common for connections and an exponential tail would promise a drain that never comes. No
//!    flow ended at all (keep-alive connections): S stays 1, and the forecast says "never".
//! 3. **Flows of unknown age** (open before the measurement began, seen first mid-stream): their
//!    remaining life from when they were first seen is measured directly, as a cohort: the same
//!    life-table estimate over the time from first seen to the end of those that ended, the
//!    others censored, with the same tail fit. It is used once 10 of them have ended: with the
//!    migration requested moments before the ramp, these are most of A's flows and the best
//!    evidence of how A drains. Before that, renewal theory stands in: in a stationary system the
//!    remaining life of a flow found open at an arbitrary instant follows the equilibrium
//!    distribution S_e(r) = ∫_r^∞ S(u) du / E[lifetime] (the inspection paradox; Cox, Renewal
//!    Theory, 1962, ch. 5). Having survived `e` since first seen, its residual is
//!    R(e + r) / R(e) (R the cohort's survival, or S_e); a flow of known age `a`: S(a + r) / S(a).
//! 4. **Drain.** Flows end independently: P(all ended within r) = Π (1 - p_i(r)). Its median and
//!    90th percentile are the forecast; Σ p_i(deadline - now) is the expected number still open
//!    at the deadline.

use serde::{Deserialize, Serialize};

use super::histogram::{LogHistogram, bucket_count, bucket_of, upper_bound};

/// Longest drain the forecast names; beyond it the drain is reported as not foreseeable.
const HORIZON_MS: f64 = 30.0 * 86_400_000.0;

/// How the lifetimes past the longest observation are extrapolated.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Tail {
    /// Nothing ended in the late half of the observed range (or at all): no end in sight.
    None,
    /// Constant hazard, per second.
    Exponential {
        /// Hazard rate, 1/s.
        rate_per_s: f64,
    },
    /// Power law S(t) ∝ t^-alpha.
    Pareto {
        /// Tail index.
        alpha: f64,
    },
}

/// An estimated survival function of flow lifetimes.
#[derive(Clone, Debug, PartialEq)]
pub struct Survival {
    /// (t ms, S(t)) at the bins' upper bounds up to the horizon, from (0, 1).
    points: Vec<(f64, f64)>,
    tail: Tail,
    /// ∫_0^t S at each point.
    integral: Vec<f64>,
}

impl Survival {
    /// The life-table estimate from lifetimes of ended flows and the ages of open ones (right
    /// censored), or `None` with no observation at all.
    pub fn estimate(ended: &LogHistogram, open_ages: impl IntoIterator<Item = (u64, u32)>) -> Option<Self> {
        let mut censored = vec![0u64; bucket_count()];
        for (age, n) in open_ages {
            censored[bucket_of(age)] += u64::from(n);
        }
        let total: u64 = ended.total() + censored.iter().sum::<u64>();
        if total == 0 {
            return None;
        }
        let last = (0..bucket_count()).rev().find(|&i| ended.count(i) > 0 || censored[i] > 0)?;
        let mut points = vec![(0.0, 1.0)];
        let (mut at_risk, mut s) = (total as f64, 1.0);
        for (i, &c) in censored.iter().enumerate().take(last + 1) {
            let (d, c) = (f64::from(ended.count(i)), c as f64);
            let exposed = at_risk - c / 2.0;
            if exposed > 0.0 {
                s *= (1.0 - d / exposed).max(0.0);
            }
            at_risk -= d + c;
            points.push((upper_bound(i) as f64, s));
        }
        let tail = Self::fit_tail(&points);
        let mut survival = Self { points, tail, integral: Vec::new() };
        survival.integral = survival.points_integral();
        Some(survival)
    }

    fn fit_tail(points: &[(f64, f64)]) -> Tail {
        let tau = points.last().map_or(0.0, |p| p.0);
        let at = |t: f64| Self::interpolate(points, t);
        let (s_quarter, s_half, s_tau) = (at(tau / 4.0), at(tau / 2.0), at(tau));
        if s_tau <= 0.0 {
            return Tail::Exponential { rate_per_s: f64::INFINITY };
        }
        if s_half <= s_tau || tau <= 0.0 {
            return Tail::None;
        }
        let late = (s_half / s_tau).ln() / (tau / 2.0); // hazard per ms over [τ/2, τ]
        let early = if s_quarter > s_half { (s_quarter / s_half).ln() / (tau / 4.0) } else { 0.0 };
        if late < 0.75 * early {
            let alpha = ((s_half / s_tau).ln() / 2f64.ln()).max(1.05);
            Tail::Pareto { alpha }
        } else {
            Tail::Exponential { rate_per_s: late * 1000.0 }
        }
    }

    fn interpolate(points: &[(f64, f64)], t: f64) -> f64 {
        let i = points.partition_point(|p| p.0 < t);
        if i == 0 {
            return 1.0;
        }
        let Some(&(t1, s1)) = points.get(i) else { return points.last().map_or(1.0, |p| p.1) };
        let (t0, s0) = points[i - 1];
        if t1 <= t0 { s1 } else { s0 + (s1 - s0) * (t - t0) / (t1 - t0) }
    }

    fn points_integral(&self) -> Vec<f64> {
        let mut acc = 0.0;
        let mut out = vec![0.0];
        for w in self.points.windows(2) {
            acc += (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0;
            out.push(acc);
        }
        out
    }

    /// The longest observation, ms.
    pub fn horizon_ms(&self) -> f64 {
        self.points.last().map_or(0.0, |p| p.0)
    }

    /// The fitted tail.
    pub fn tail(&self) -> Tail {
        self.tail
    }

    /// S(t): the share of flows that live longer than `t_ms`.
    pub fn at(&self, t_ms: f64) -> f64 {
        let tau = self.horizon_ms();
        if t_ms <= tau {
            return Self::interpolate(&self.points, t_ms);
        }
        let s_tau = self.points.last().map_or(1.0, |p| p.1);
        match self.tail {
            Tail::None => s_tau,
            Tail::Exponential { rate_per_s } => s_tau * (-(rate_per_s / 1000.0) * (t_ms - tau)).exp(),
            Tail::Pareto { alpha } => s_tau * (t_ms / tau).powf(-alpha),
        }
    }

    /// ∫_t^∞ S(u) du in ms, or infinity when the tail never ends.
    fn integral_from(&self, t_ms: f64) -> f64 {
        let tau = self.horizon_ms();
        let s_tau = self.points.last().map_or(1.0, |p| p.1);
        let tail_from = |t: f64| -> f64 {
            let s = self.at(t);
            match self.tail {
                Tail::None if s_tau > 0.0 => f64::INFINITY,
                Tail::None => 0.0,
                Tail::Exponential { rate_per_s } => s / (rate_per_s / 1000.0),
                Tail::Pareto { alpha } => s * t / (alpha - 1.0),
            }
        };
        if t_ms >= tau {
            return tail_from(t_ms.max(1.0));
        }
        let total_to_tau = self.integral.last().copied().unwrap_or(0.0);
        let i = self.points.partition_point(|p| p.0 <= t_ms).max(1);
        let (t0, s0) = self.points[i - 1];
        let s_t = self.at(t_ms);
        let before = self.integral[i - 1] + (t_ms - t0) * (s0 + s_t) / 2.0;
        (total_to_tau - before) + tail_from(tau.max(1.0))
    }

    /// Mean lifetime, ms (infinite when the tail never ends).
    pub fn mean_ms(&self) -> f64 {
        self.integral_from(0.0)
    }

    /// P(a flow of age `age_ms` is still open `r_ms` later).
    pub fn residual(&self, age_ms: f64, r_ms: f64) -> f64 {
        let s = self.at(age_ms);
        if s <= 1e-12 { 0.0 } else { (self.at(age_ms + r_ms) / s).clamp(0.0, 1.0) }
    }

    /// The same for a flow of unknown age first seen `seen_ms` ago (equilibrium residual).
    pub fn residual_unknown_age(&self, seen_ms: f64, r_ms: f64) -> f64 {
        let j = self.integral_from(seen_ms);
        if !j.is_finite() {
            return 1.0;
        }
        if j <= 1e-9 { 0.0 } else { (self.integral_from(seen_ms + r_ms) / j).clamp(0.0, 1.0) }
    }
}

/// Open flows of one kind and (approximate) age.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpenGroup {
    /// Age (known start) or time since first seen (unknown start), ms.
    pub age_ms: u64,
    /// Flows.
    pub count: u32,
    /// Whether the router saw their start.
    pub known_start: bool,
}

/// When A's open flows will have ended.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrainForecast {
    /// A's open flows now.
    pub open: u64,
    /// Median time from now until the last of them has ended, ms; absent when not foreseeable
    /// within 30 days (nothing has been seen to end).
    pub p50_ms: Option<f64>,
    /// 90th percentile of the same, ms.
    pub p90_ms: Option<f64>,
    /// Flows expected still open at the deadline, when one is given.
    pub expected_open_at_deadline: Option<f64>,
    /// The longest lifetime or age observed, ms: past it the forecast rests on the fitted tail.
    pub horizon_ms: f64,
    /// The tail fitted past the horizon.
    pub tail: Tail,
    /// Flows whose lifetime was measured (ended) and ages (open) the estimate rests on.
    pub observations: u64,
}

impl DrainForecast {
    /// The forecast for `open` groups of A's flows at `deadline_in_ms` from now, from the
    /// survival of lifetimes (flows whose start was seen) and of the unknown-start cohort's
    /// remaining life since first seen; `None` when neither has an observation.
    pub fn compute(
        lifetimes: Option<&Survival>,
        cohort: Option<&Survival>,
        open: &[OpenGroup],
        deadline_in_ms: Option<f64>,
        observations: u64,
    ) -> Option<Self> {
        let main = lifetimes.or(cohort)?;
        let p_open = |g: &OpenGroup, r: f64| match (g.known_start, cohort, lifetimes) {
            (true, _, Some(s)) => s.residual(g.age_ms as f64, r),
            (false, Some(c), _) => c.residual(g.age_ms as f64, r),
            (false, None, Some(s)) => s.residual_unknown_age(g.age_ms as f64, r),
            // A known-start flow with only the cohort measured: the best evidence there is.
            (true, Some(c), None) => c.residual(g.age_ms as f64, r),
            (_, None, None) => 1.0,
        };
        // log P(all ended within r), from the groups' counts.
        let log_all_ended =
            |r: f64| -> f64 { open.iter().map(|g| f64::from(g.count) * (1.0 - p_open(g, r)).max(1e-300).ln()).sum() };
        let quantile = |q: f64| -> Option<f64> {
            if open.iter().all(|g| g.count == 0) {
                return Some(0.0);
            }
            let target = q.ln();
            if log_all_ended(HORIZON_MS) < target {
                return None;
            }
            let (mut lo, mut hi) = (0.0f64, HORIZON_MS);
            for _ in 0..80 {
                let mid = if lo < 1.0 { (lo + hi) / 2.0 } else { (lo * hi).sqrt() };
                if log_all_ended(mid) >= target {
                    hi = mid
                } else {
                    lo = mid
                }
                if hi - lo < 1.0 {
                    break;
                }
            }
            Some(hi)
        };
        Some(Self {
            open: open.iter().map(|g| u64::from(g.count)).sum(),
            p50_ms: quantile(0.5),
            p90_ms: quantile(0.9),
            expected_open_at_deadline: deadline_in_ms
                .map(|d| open.iter().map(|g| f64::from(g.count) * p_open(g, d.max(0.0))).sum()),
            horizon_ms: lifetimes.into_iter().chain(cohort).map(Survival::horizon_ms).fold(0.0, f64::max),
            tail: main.tail(),
            observations,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: impl IntoIterator<Item = u64>) -> LogHistogram {
        let mut h = LogHistogram::default();
        for v in values {
            h.record(v);
        }
        h
    }

    #[test]
    fn without_censoring_it_is_the_empirical_survival() {
        let s = Survival::estimate(&hist((1..=1000).map(|i| i * 100)), []).unwrap();
        for t in [10_000.0, 50_000.0, 90_000.0] {
            let truth = 1.0 - t / 100_000.0;
            assert!((s.at(t) - truth).abs() < 0.03, "S({t}) = {} vs {truth}", s.at(t));
        }
        assert!(s.at(200_000.0) < 1e-6);
    }

    #[test]
    fn censoring_is_not_counted_as_death() {
        // Exponential lifetimes, mean 60 s, observed for 30 s only: half the flows still open.
        let mean = 60_000.0f64;
        let n = 20_000;
        let (mut ended, mut open) = (LogHistogram::default(), Vec::new());
        for i in 0..n {
            let u = (f64::from(i) + 0.5) / f64::from(n);
            let life = -mean * (1.0 - u).ln();
            let observed_for = 30_000.0 * (f64::from(i % 100) + 0.5) / 100.0; // entry times spread
            if life <= observed_for { ended.record(life as u64) } else { open.push((observed_for as u64, 1)) }
        }
        let s = Survival::estimate(&ended, open).unwrap();
        let truth = (-20_000.0 / mean).exp();
        assert!((s.at(20_000.0) - truth).abs() < 0.03, "S(20 s) = {} vs {truth}", s.at(20_000.0));
        // Extrapolated past 30 s by the exponential tail: close to the truth at 2 minutes.
        assert!(matches!(s.tail(), Tail::Exponential { .. }), "{:?}", s.tail());
        let truth = (-120_000.0 / mean).exp();
        assert!((s.at(120_000.0) - truth).abs() < 0.05, "S(120 s) = {} vs {truth}", s.at(120_000.0));
        assert!((s.mean_ms() - mean).abs() / mean < 0.15, "mean {}", s.mean_ms());
    }

    #[test]
    fn nothing_ended_means_no_drain_in_sight() {
        let s = Survival::estimate(&LogHistogram::default(), [(30_000, 200)]).unwrap();
        let f = DrainForecast::compute(
            Some(&s),
            None,
            &[OpenGroup { age_ms: 30_000, count: 200, known_start: true }],
            Some(60_000.0),
            200,
        )
        .unwrap();
        assert_eq!((f.p50_ms, f.p90_ms), (None, None));
        assert_eq!(f.expected_open_at_deadline, Some(200.0));
    }

    #[test]
    fn drain_of_many_flows_is_later_than_of_one_and_p90_after_p50() {
        let s = Survival::estimate(&hist((1..=1000).map(|i| i * 100)), []).unwrap();
        let one =
            DrainForecast::compute(Some(&s), None, &[OpenGroup { age_ms: 0, count: 1, known_start: true }], None, 1000)
                .unwrap();
        let many = DrainForecast::compute(
            Some(&s),
            None,
            &[OpenGroup { age_ms: 0, count: 100, known_start: true }],
            None,
            1000,
        )
        .unwrap();
        let (p50, p90) = (many.p50_ms.unwrap(), many.p90_ms.unwrap());
        assert!((one.p50_ms.unwrap() - 50_000.0).abs() < 3_000.0, "{one:?}");
        // The last of 100 uniform(0, 100 s) lifetimes: median 99.3 s, 90th percentile 99.9 s,
        // within the histogram's resolution (12.5 %).
        assert!((p50 / 99_300.0 - 1.0).abs() < 0.1 && p90 >= p50 && p90 / 99_900.0 < 1.1, "{many:?}");
        let none = DrainForecast::compute(Some(&s), None, &[], Some(1.0), 0).unwrap();
        assert_eq!((none.p50_ms, none.expected_open_at_deadline), (Some(0.0), Some(0.0)));
    }

    #[test]
    fn unknown_ages_use_the_equilibrium_residual() {
        // Every lifetime exactly 100 s: a flow found open at a random instant has a residual
        // uniform on (0, 100 s), so half are gone 50 s later.
        let s = Survival::estimate(&hist(std::iter::repeat_n(100_000, 1000)), []).unwrap();
        let p = s.residual_unknown_age(0.0, 50_000.0);
        assert!((p - 0.5).abs() < 0.06, "{p}");
        assert!(s.residual_unknown_age(0.0, 120_000.0) < 0.01);
    }

    #[test]
    fn the_unknown_start_cohort_is_told_by_its_own_remaining_lives() {
        // 1,000 flows open before the measurement, remaining lives uniform on (0, 100 s),
        // watched for 40 s: 400 ended, 600 open. The last really ends 60 s from now; past the
        // 40 s watched, the constant-hazard tail can only be conservative for a bounded
        // distribution (minutes, not never, and not sooner than the flows' own pace).
        let (mut ended, mut open) = (LogHistogram::default(), Vec::new());
        for i in 0..1000u64 {
            let life = 100 * i + 50;
            if life <= 40_000 { ended.record(life) } else { open.push((40_000, 1)) }
        }
        let cohort = Survival::estimate(&ended, open).unwrap();
        let groups = [OpenGroup { age_ms: 40_000, count: 600, known_start: false }];
        let f = DrainForecast::compute(None, Some(&cohort), &groups, None, 1000).unwrap();
        let p50 = f.p50_ms.unwrap();
        assert!(p50 > 40_000.0, "not before the flows' own pace: {f:?}");
        assert!(p50 < 600_000.0, "{f:?}");
    }

    #[test]
    fn a_falling_hazard_gets_a_heavy_tail() {
        // Pareto lifetimes (alpha 1.5, from 1 s), observed up to 60 s.
        let n = 20_000;
        let (mut ended, mut open) = (LogHistogram::default(), Vec::new());
        for i in 0..n {
            let u = (f64::from(i) + 0.5) / f64::from(n);
            let life = 1000.0 * (1.0 - u).powf(-1.0 / 1.5);
            if life <= 60_000.0 { ended.record(life as u64) } else { open.push((60_000, 1)) }
        }
        let s = Survival::estimate(&ended, open).unwrap();
        assert!(matches!(s.tail(), Tail::Pareto { .. }), "{:?}", s.tail());
        let truth = (240_000.0f64 / 1000.0).powf(-1.5);
        assert!((s.at(240_000.0) / truth - 1.0).abs() < 0.5, "S(240 s) = {} vs {truth}", s.at(240_000.0));
    }
}

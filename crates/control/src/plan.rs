//! A migration's plan: the ramp the router will follow, fitted to the deadline it must reach
//! 100 % before. A ramp that cannot reach 100 % in time is never accepted silently (issue 12:
//! the default ramp, 120 s to 100 %, against a lease ending 48 s later left the split at 5 %
//! and the cut-over reset 95 % of the connections).
//!
//! Let T be the time from the request to the deadline. The ramp only starts once B's DHCP
//! client has bound the address and answers for it, which the policy's `ready_allowance`
//! stands for; so a ramp fits when it reaches 100 % within T - `ready_allowance`. The last
//! `close_grace` before the deadline is the router's closing window (every new flow to B, A's
//! last flows closed with a FIN at an idle moment), which the split must reach 100 % before.
//!
//! - No ramp requested: the default ramp (1, 5, 25, 50, 100 %, 30 s each) with its holds scaled
//!   down so it reaches 100 % by `plan_share` x T, and never after T - `ready_allowance` -
//!   `close_grace`, the rest of T left for A's flows to drain; never below the
//!   congestion-control interval (1 s), never stretched above 30 s (a day-long lease keeps a
//!   two-minute ramp).
//! - A requested ramp that does not fit T - `ready_allowance` is refused with a [`RampMisfit`]
//!   that says what would (its suggestions leave the whole closing window).
//! - The closing window is the policy's `close_grace`, or what remains after the ramp when the
//!   deadline is too close for all of it (the plan's `close_grace_ms`, which the router gets):
//!   a short deadline that fitted a ramp before the closing window existed still does, and the
//!   shortest deadline the policy allows needs no more room than it did.
//!
//! Everything here is a pure function of the request, the time and the policy.

use core::time::Duration;

use ipshadow_core::{CongestionControlParameters, Ramp, RampStep};
use serde::{Deserialize, Serialize};

use crate::reassign::{DeadlinePolicy, DeadlineSource};

/// Where a plan's ramp came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RampSource {
    /// The caller's, as requested (it fits).
    Requested,
    /// The default ramp as it is (the deadline leaves it room).
    Default,
    /// The default ramp with its holds shortened to fit the deadline.
    DefaultScaled,
}

/// How a migration will go: the ramp the router follows, and the deadline it reaches 100 %
/// before. Stored with the migration (`plan`) and answered by a dry run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Plan {
    /// The ramp the router will follow (the migration's `ramp`).
    #[schema(value_type = crate::api::schema::RampSchema)]
    pub ramp: Ramp,
    /// Where the ramp came from.
    pub ramp_source: RampSource,
    /// Whether the default ramp's holds were shortened to fit the deadline.
    pub scaled: bool,
    /// With `scaled`: the share of the time to the deadline the ramp was fitted into (the
    /// policy's `plan_share`, or less when B's readiness allowance leaves less).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub share: Option<f64>,
    /// Time from the ramp's start to a split of 100 %, milliseconds.
    pub ramp_to_100_ms: u64,
    /// Time allowed for B's DHCP client to bind the address and answer for it before the ramp
    /// starts, milliseconds (the policy's `ready_allowance`).
    pub ready_allowance_ms: u64,
    /// Cut-over time, unix milliseconds.
    pub deadline_ms: u64,
    /// Where the deadline came from.
    pub deadline_source: DeadlineSource,
    /// Time from the request to the deadline, milliseconds.
    pub time_to_deadline_ms: u64,
    /// Time left between the ramp reaching 100 % (at the latest) and the deadline: what A's
    /// flows have to end before the cut-over, milliseconds. Its last `close_grace_ms` are the
    /// closing window.
    pub slack_ms: u64,
    /// The closing window before the deadline, milliseconds: the policy's `close_grace`, or what
    /// the deadline leaves after the ramp when that is less. The router's `close_grace`.
    #[serde(default = "default_close_grace_ms")]
    pub close_grace_ms: u64,
}

/// The closing window of a plan stored before plans had one: the policy's default.
fn default_close_grace_ms() -> u64 {
    DeadlinePolicy::default().close_grace_ms
}

/// Why a requested ramp was refused, with what would fit (the message of a 422
/// `ramp_does_not_fit`).
#[derive(Clone, Debug, PartialEq)]
pub struct RampMisfit {
    /// The ramp refused.
    pub ramp: Ramp,
    /// Its time to 100 %, milliseconds; `None`: it never gets there (its last step is below).
    pub ramp_to_100_ms: Option<u64>,
    /// Time from the request to the deadline, milliseconds.
    pub time_to_deadline_ms: u64,
    /// The time B is given to be ready before the ramp starts, milliseconds.
    pub ready_allowance_ms: u64,
    /// A stepped ramp with the same percentages (ending at 100 %) and holds that fit; `None`
    /// when nothing fits (no time left once B is ready).
    pub fitting_steps: Option<Ramp>,
    /// The linear rate that reaches 100 % in the same time, percentage points per second.
    pub fitting_linear_pct_per_sec: Option<f64>,
    /// The earliest deadline at which the refused ramp fits, unix milliseconds (`None` when it
    /// never reaches 100 %).
    pub earliest_deadline_ms: Option<u64>,
    /// The latest deadline the policy allows, unix milliseconds.
    pub latest_deadline_ms: u64,
    /// When the request was made, unix milliseconds.
    pub now_ms: u64,
}

impl RampMisfit {
    /// Time the ramp may take to reach 100 %, milliseconds.
    pub fn available_ms(&self) -> u64 {
        self.time_to_deadline_ms.saturating_sub(self.ready_allowance_ms)
    }
}

impl core::fmt::Display for RampMisfit {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let (t, allowance, available) = (self.time_to_deadline_ms, self.ready_allowance_ms, self.available_ms());
        match self.ramp_to_100_ms {
            None => {
                let last = match &self.ramp {
                    Ramp::Steps { steps } => steps.last().map_or(0.0, |s| s.pct),
                    Ramp::Linear { .. } => 100.0,
                };
                write!(
                    f,
                    "the ramp never reaches 100 %: its last step is {} %, held until the cut-over resets every \
                     flow still on the source; ",
                    number(last)
                )?;
            }
            Some(r) => write!(
                f,
                "the ramp reaches 100 % after {}, but only {} are available ({} to the deadline minus {} for the \
                 destination to bind the address); ",
                secs(r),
                secs(available),
                secs(t),
                secs(allowance)
            )?,
        }
        match (&self.fitting_steps, self.fitting_linear_pct_per_sec) {
            (Some(steps), Some(rate)) => write!(
                f,
                "what would fit: {} (100 % after {}), or linear at {} %/s",
                describe_steps(steps),
                secs(ramp_to_100_ms(steps).unwrap_or(0)),
                number(rate)
            )?,
            _ => write!(f, "nothing fits: the deadline leaves no time once the destination is ready")?,
        }
        if let Some(earliest) = self.earliest_deadline_ms {
            write!(
                f,
                "; this ramp fits a deadline {} or more from now (deadline_ms >= {earliest})",
                secs(earliest.saturating_sub(self.now_ms))
            )?;
            if earliest > self.latest_deadline_ms {
                write!(
                    f,
                    ", later than the policy allows ({} from now)",
                    secs(self.latest_deadline_ms.saturating_sub(self.now_ms))
                )?;
            }
        }
        Ok(())
    }
}

/// `steps 1, 5, 25, 50, 100 % holding 6 s each`, or with each hold when they differ.
fn describe_steps(ramp: &Ramp) -> String {
    let Ramp::Steps { steps } = ramp else { return format!("{ramp:?}") };
    let pcts: Vec<String> = steps.iter().map(|s| number(s.pct)).collect();
    let holds: Vec<u64> = steps.iter().map(|s| hold_ms(s.hold)).collect();
    if holds.windows(2).all(|w| w[0] == w[1]) {
        format!("steps {} % holding {} each", pcts.join(", "), secs(holds.first().copied().unwrap_or(0)))
    } else {
        let each: Vec<String> =
            steps.iter().map(|s| format!("{} % for {}", number(s.pct), secs(hold_ms(s.hold)))).collect();
        format!("steps {}", each.join(", "))
    }
}

/// `6 s`, `9.5 s`, `0.25 s`.
fn secs(ms: u64) -> String {
    format!("{} s", number(ms as f64 / 1000.0))
}

/// A number without trailing zeros, at most three decimals.
fn number(x: f64) -> String {
    let text = format!("{x:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    text.to_owned()
}

fn hold_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Time from a ramp's start to a split of 100 %, milliseconds; `None` when it never gets there
/// (a stepped ramp whose last step is below 100 %). Saturates rather than overflows: a request
/// may hold holds of any length, and a very slow linear rate.
pub fn ramp_to_100_ms(ramp: &Ramp) -> Option<u64> {
    match ramp {
        Ramp::Linear { pct_per_sec } => {
            let ms = 100.0 / pct_per_sec * 1000.0;
            // NaN or negative only for a ramp that `validate` refuses: never reaches 100 %.
            if ms.is_nan() || ms < 0.0 {
                None
            } else {
                // `as` saturates: an infinite time is u64::MAX.
                Some(ms.ceil() as u64)
            }
        }
        Ramp::Steps { steps } => {
            let index = steps.iter().position(|s| s.pct >= 100.0)?;
            Some(steps[..index].iter().fold(0u64, |sum, s| sum.saturating_add(hold_ms(s.hold))))
        }
    }
}

/// What the plan needs to know of the request and the moment.
#[derive(Clone, Copy, Debug)]
pub struct PlanInput<'a> {
    /// The ramp requested, if any.
    pub requested: Option<&'a Ramp>,
    /// Now, unix milliseconds.
    pub now_ms: u64,
    /// The deadline chosen, unix milliseconds.
    pub deadline_ms: u64,
    /// Where it came from.
    pub deadline_source: DeadlineSource,
}

/// The plan of a migration requested with `input` under `policy`, or why the ramp cannot fit.
/// The requested ramp must have passed [`Ramp::validate`].
pub fn plan(input: PlanInput<'_>, policy: &DeadlinePolicy) -> Result<Plan, Box<RampMisfit>> {
    let t = input.deadline_ms.saturating_sub(input.now_ms);
    let allowance = policy.ready_allowance_ms;
    let available = t.saturating_sub(allowance);
    // The default ramp and the suggestions leave the whole closing window when the deadline has
    // room for it, else as much as the default ramp at its shortest holds leaves.
    let room = available.saturating_sub(policy.close_grace_ms);
    let shortest = ramp_to_100_ms(&scale_holds(&Ramp::default(), 0, 1, min_hold())).unwrap_or(0);
    let limit = room.max(shortest).min(available);
    let target = fit_target_ms(t, limit, policy.plan_share);
    let (ramp, source, share) = match input.requested {
        Some(ramp) => (ramp.clone(), RampSource::Requested, None),
        None => {
            let default = Ramp::default();
            let to_100 = ramp_to_100_ms(&default).unwrap_or(0);
            if target >= to_100 {
                (default, RampSource::Default, None)
            } else {
                let scaled = scale_holds(&default, target, to_100, min_hold());
                // The share of T the scaled ramp was fitted into: the policy's, or less when B's
                // readiness allowance and the closing window leave less (from the ratios, not the
                // rounded target).
                let share = if t == 0 { 0.0 } else { clamp_share(policy.plan_share).min(limit as f64 / t as f64) };
                (scaled, RampSource::DefaultScaled, Some(share))
            }
        }
    };
    let to_100 = ramp_to_100_ms(&ramp);
    match to_100 {
        Some(r) if r <= available => Ok(Plan {
            ramp,
            ramp_source: source,
            scaled: source == RampSource::DefaultScaled,
            share,
            ramp_to_100_ms: r,
            ready_allowance_ms: allowance,
            deadline_ms: input.deadline_ms,
            deadline_source: input.deadline_source,
            time_to_deadline_ms: t,
            slack_ms: available - r,
            close_grace_ms: policy.close_grace_ms.min(available - r),
        }),
        _ => Err(Box::new(misfit(ramp, to_100, input.now_ms, t, target, policy))),
    }
}

/// The time a suggested or default ramp is fitted into: `plan_share` of T, never after `limit`
/// (T - `ready_allowance` - `close_grace` when positive: a share of 1 would otherwise end the
/// ramp inside the closing window or after the deadline).
fn fit_target_ms(t: u64, available: u64, plan_share: f64) -> u64 {
    ((t as f64 * clamp_share(plan_share)) as u64).min(available)
}

/// A share outside (0, 1] is refused where the configuration is read
/// ([`DeadlinePolicy::validate`]); here it only must not stretch the ramp or go negative.
fn clamp_share(plan_share: f64) -> f64 {
    if plan_share.is_finite() { plan_share.clamp(0.0, 1.0) } else { 1.0 }
}

/// The shortest hold a fitted ramp gets: the congestion-control interval (1 s), the shortest
/// time in which the router judges B's health at a split.
fn min_hold() -> Duration {
    CongestionControlParameters::default().interval
}

/// `ramp` with every hold multiplied by `num / den` (at most 1: never stretched), rounded down
/// to the millisecond, and at least `floor`. In integers, so that 30 s x 24/120 is 6 s exactly.
fn scale_holds(ramp: &Ramp, num: u64, den: u64, floor: Duration) -> Ramp {
    let num = num.min(den);
    match ramp {
        Ramp::Linear { .. } => ramp.clone(),
        Ramp::Steps { steps } => Ramp::Steps {
            steps: steps
                .iter()
                .map(|s| {
                    let ms = (u128::from(hold_ms(s.hold)) * u128::from(num)).checked_div(u128::from(den));
                    // `num <= den`: the quotient fits a u64; a zero `den` keeps the hold.
                    let ms = ms.map_or(hold_ms(s.hold), |ms| u64::try_from(ms).unwrap_or(u64::MAX));
                    RampStep { pct: s.pct, hold: Duration::from_millis(ms).max(floor) }
                })
                .collect(),
        },
    }
}

/// What would fit instead of `ramp` (time to 100 %: `to_100`): suggestions are fitted into
/// `target` like the default ramp (so they still fit when sent again a moment later).
fn misfit(ramp: Ramp, to_100: Option<u64>, now_ms: u64, t: u64, target: u64, policy: &DeadlinePolicy) -> RampMisfit {
    let fitting = (target > 0).then(|| {
        // The same percentages up to the first at 100 %, or followed by a last step at 100 %.
        let shape = match &ramp {
            Ramp::Steps { steps } => {
                let mut shape: Vec<RampStep> = Vec::with_capacity(steps.len() + 1);
                for s in steps {
                    shape.push(*s);
                    if s.pct >= 100.0 {
                        break;
                    }
                }
                if shape.last().is_none_or(|s| s.pct < 100.0) {
                    let hold = shape.last().map_or(min_hold(), |s| s.hold);
                    shape.push(RampStep { pct: 100.0, hold });
                }
                Ramp::Steps { steps: shape }
            }
            // A linear ramp has no steps: the default ramp's percentages.
            Ramp::Linear { .. } => Ramp::default(),
        };
        let shape_to_100 = ramp_to_100_ms(&shape).unwrap_or(0);
        // Holds rounded down to the millisecond, at least 1 ms (a hold must be above 0).
        let steps = scale_holds(&shape, target, shape_to_100, Duration::from_millis(1));
        // Rounded up to a hundredth, so that it reaches 100 % no later than `target`.
        let rate = (100.0 / (target as f64 / 1000.0) * 100.0).ceil() / 100.0;
        (steps, rate)
    });
    let (fitting_steps, fitting_linear_pct_per_sec) = fitting.unzip();
    RampMisfit {
        ramp,
        ramp_to_100_ms: to_100,
        time_to_deadline_ms: t,
        ready_allowance_ms: policy.ready_allowance_ms,
        fitting_steps,
        fitting_linear_pct_per_sec,
        earliest_deadline_ms: to_100.map(|r| now_ms.saturating_add(policy.ready_allowance_ms).saturating_add(r)),
        latest_deadline_ms: now_ms.saturating_add(policy.max_ms),
        now_ms,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn input(requested: Option<&Ramp>, t_ms: u64) -> PlanInput<'_> {
        PlanInput { requested, now_ms: NOW, deadline_ms: NOW + t_ms, deadline_source: DeadlineSource::Requested }
    }

    fn steps(pcts: &[f64], hold_ms: u64) -> Ramp {
        Ramp::Steps { steps: pcts.iter().map(|&pct| RampStep { pct, hold: Duration::from_millis(hold_ms) }).collect() }
    }

    #[test]
    fn the_default_ramp_is_scaled_to_the_plan_share_and_never_stretched() {
        let policy = DeadlinePolicy::default();
        // 48 s to the deadline, share 0.5: 24 s to 100 %, four holds of 6 s.
        let p = plan(input(None, 48_000), &policy).unwrap();
        assert_eq!(p.ramp, steps(&[1.0, 5.0, 25.0, 50.0, 100.0], 6_000));
        assert_eq!((p.ramp_source, p.scaled, p.share), (RampSource::DefaultScaled, true, Some(0.5)));
        assert_eq!((p.ramp_to_100_ms, p.slack_ms, p.close_grace_ms), (24_000, 48_000 - 10_000 - 24_000, 10_000));
        // A day: the default as it is.
        let p = plan(input(None, 86_400_000), &policy).unwrap();
        assert_eq!((p.ramp, p.ramp_source, p.scaled, p.share), (Ramp::default(), RampSource::Default, false, None));
        assert_eq!(p.ramp_to_100_ms, 120_000);
        // A share of 1 still leaves B its readiness allowance and the closing window: 30 s ->
        // 10 s to 100 %, the last 10 s before the deadline for closing.
        let all = DeadlinePolicy { plan_share: 1.0, ..policy };
        let p = plan(input(None, 30_000), &all).unwrap();
        assert_eq!((p.ramp_to_100_ms, p.close_grace_ms, p.share), (10_000, 10_000, Some(10.0 / 30.0)));
        // Never below the congestion-control interval: with no room for 4 s, refused.
        let e = plan(input(None, 12_000), &policy).unwrap_err();
        assert_eq!((e.ramp_to_100_ms, e.earliest_deadline_ms), (Some(4_000), Some(NOW + 14_000)));
    }

    /// Issue 12: the split reaches 100 % before the closing window whenever the deadline has
    /// room for the whole window; a deadline too close for it keeps what the ramp leaves.
    #[test]
    fn the_ramp_ends_before_the_closing_window() {
        let policy = DeadlinePolicy::default();
        for t in [30_000, 36_000, 48_000, 60_000, 300_000, 86_400_000] {
            let p = plan(input(None, t), &policy).unwrap();
            assert!(
                p.ramp_to_100_ms + p.ready_allowance_ms + policy.close_grace_ms <= t,
                "{t}: {p:?} ends inside the closing window"
            );
            assert_eq!(p.close_grace_ms, policy.close_grace_ms, "{t}");
        }
        // 15 s (the lab's shortest): 4 s of ramp at 1 s holds after B's 10 s leave 1 s of window.
        let p = plan(input(None, 15_000), &policy).unwrap();
        assert_eq!((p.ramp_to_100_ms, p.close_grace_ms), (4_000, 1_000));
        // A requested ramp that fits before the deadline keeps what it leaves of the window.
        let p = plan(input(Some(&steps(&[10.0, 100.0], 15_000)), 30_000), &policy).unwrap();
        assert_eq!((p.slack_ms, p.close_grace_ms), (5_000, 5_000));
        // Suggestions leave the whole window: 48 s, 120 s asked -> 100 % after 24 s <= 28 s.
        let e = plan(input(Some(&Ramp::default()), 48_000), &policy).unwrap_err();
        assert_eq!(e.fitting_steps.as_ref().and_then(ramp_to_100_ms), Some(24_000));
        let tight = DeadlinePolicy { plan_share: 1.0, ..policy };
        let e = plan(input(Some(&Ramp::default()), 48_000), &tight).unwrap_err();
        assert_eq!(e.fitting_steps.as_ref().and_then(ramp_to_100_ms), Some(28_000));
    }

    #[test]
    fn a_requested_ramp_fits_or_is_refused_with_what_would() {
        let policy = DeadlinePolicy::default();
        let fits = steps(&[10.0, 100.0], 20_000);
        let p = plan(input(Some(&fits), 30_000), &policy).unwrap();
        assert_eq!((p.ramp_source, p.ramp_to_100_ms, p.slack_ms, p.scaled), (RampSource::Requested, 20_000, 0, false));
        // The default ramp requested explicitly against 48 s: 120 s needed, 38 s available.
        let e = plan(input(Some(&Ramp::default()), 48_000), &policy).unwrap_err();
        assert_eq!((e.ramp_to_100_ms, e.available_ms()), (Some(120_000), 38_000));
        assert_eq!(e.fitting_steps, Some(steps(&[1.0, 5.0, 25.0, 50.0, 100.0], 6_000)));
        assert_eq!(e.fitting_linear_pct_per_sec, Some(4.17));
        assert_eq!(e.earliest_deadline_ms, Some(NOW + 130_000));
        let text = e.to_string();
        for part in [
            "reaches 100 % after 120 s",
            "only 38 s are available",
            "48 s to the deadline minus 10 s",
            "steps 1, 5, 25, 50, 100 % holding 6 s each",
            "linear at 4.17 %/s",
            "deadline 130 s or more from now",
        ] {
            assert!(text.contains(part), "{part:?} missing from {text:?}");
        }
        // A linear ramp too slow: suggestions from the default percentages.
        let e = plan(input(Some(&Ramp::Linear { pct_per_sec: 1.0 }), 48_000), &policy).unwrap_err();
        assert_eq!(e.ramp_to_100_ms, Some(100_000));
        assert!(e.to_string().contains("linear at 4.17 %/s"), "{e}");
        // So slow it would overflow: saturates, refused, no panic.
        let e = plan(input(Some(&Ramp::Linear { pct_per_sec: 1e-300 }), 48_000), &policy).unwrap_err();
        assert_eq!(e.ramp_to_100_ms, Some(u64::MAX));
        assert!(e.to_string().contains("later than the policy allows"), "{e}");
        let huge = steps(&[1.0, 2.0, 100.0], u64::MAX);
        assert_eq!(plan(input(Some(&huge), 48_000), &policy).unwrap_err().ramp_to_100_ms, Some(u64::MAX));
    }

    #[test]
    fn a_ramp_whose_last_step_is_below_100_is_refused() {
        let policy = DeadlinePolicy::default();
        let short = steps(&[10.0, 50.0], 1_000);
        let e = plan(input(Some(&short), 600_000), &policy).unwrap_err();
        assert_eq!((e.ramp_to_100_ms, e.earliest_deadline_ms), (None, None));
        // Its percentages followed by 100 %, fitted.
        assert_eq!(e.fitting_steps, Some(steps(&[10.0, 50.0, 100.0], 1_000)));
        assert!(e.to_string().contains("never reaches 100 %: its last step is 50 %"), "{e}");
    }
}

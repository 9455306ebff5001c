//! Lease extension: the manager may move a migration's deadline (A's lease end, which the DHCP
//! server and the router both follow) later, so that the flows still open on A are forecast to
//! end before the router's closing window begins, within the policy's bounds.
//!
//! The decision is a pure function of the migration, the router's drain forecast for its
//! address, the policy and the time ([`drain_extension`]):
//!
//! - Taken at any router report while the migration is `ramping` or `paused`, not only once the
//!   split is 100 %. A's DHCP client learns a new lease end only when it renews (at half its
//!   lease, RFC 2131 4.4.5), so the earlier the extension the more renewals it has to hear of it
//!   before the old end, when an expired lease would cut over. While the split is below 100 %
//!   new flows still reach A, so the forecast for the flows open now is a lower bound of the
//!   drain needed: an extension made early is never one that a later forecast would undo, and
//!   the deadline is never shortened; a later, larger forecast extends again.
//! - Only when the forecast names a finite 90th percentile: nothing seen to end (keep-alive
//!   connections that never end on their own) means no date would be enough, and the router's
//!   closing window ends those flows with an orderly FIN instead.
//! - Needed when now + p90 is later than deadline - `close_grace`; the new deadline is
//!   now + p90 + `close_grace` + a margin of an eighth of p90 (at least 5 s): the forecast's
//!   histogram bins are within 12.5 % of the lifetimes they hold. Rounded up to a whole second
//!   (the DHCP server's lease plans count seconds).
//! - Capped at the migration's creation + the policy's longest deadline and at its original
//!   deadline + `max_extension`; at most once per [`EXTENSION_INTERVAL_MS`], so the DHCP server
//!   and the router are not sent a new deadline with every report; not once the closing window
//!   has begun (the router is closing A's flows: moving the deadline then would reopen nothing).

use ipshadow_core::patterns::DrainForecast;

use crate::migration::MigrationState;
use crate::reassign::{DeadlinePolicy, Migration};

/// The shortest time between two extensions of one migration, milliseconds.
pub const EXTENSION_INTERVAL_MS: u64 = 30_000;

/// The smallest margin past the forecast drain, milliseconds.
pub const MIN_MARGIN_MS: u64 = 5_000;

/// A deadline to move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extension {
    /// The deadline now, unix milliseconds.
    pub from_ms: u64,
    /// The deadline wanted (later), unix milliseconds.
    pub to_ms: u64,
    /// The forecast and the limits that decided it, for the history.
    pub reason: String,
}

/// The extension `forecast` calls for on `m` at `now_ms` under `policy`, if any (see the
/// module's documentation for the rules).
pub fn drain_extension(
    m: &Migration,
    forecast: &DrainForecast,
    policy: &DeadlinePolicy,
    now_ms: u64,
) -> Option<Extension> {
    if !matches!(m.lifecycle.state, MigrationState::Ramping | MigrationState::Paused) {
        return None;
    }
    let p90 = forecast.p90_ms.filter(|p| p.is_finite() && *p >= 0.0)?;
    let closing_starts = m.deadline_ms.saturating_sub(policy.close_grace_ms);
    if now_ms >= closing_starts {
        return None;
    }
    // `as` saturates: a forecast beyond u64 milliseconds is capped below like any other.
    let p90_ms = p90.ceil() as u64;
    if now_ms.saturating_add(p90_ms) <= closing_starts {
        return None;
    }
    if m.lifecycle.extensions().last().is_some_and(|(at, _, _)| now_ms < at.saturating_add(EXTENSION_INTERVAL_MS)) {
        return None;
    }
    let margin = (p90_ms / 8).max(MIN_MARGIN_MS);
    let wanted = now_ms.saturating_add(p90_ms).saturating_add(policy.close_grace_ms).saturating_add(margin);
    let wanted = wanted.div_ceil(1000).saturating_mul(1000);
    let longest = m.created_ms.saturating_add(policy.max_ms);
    let original = m.lifecycle.original_deadline_ms(m.deadline_ms);
    let most = original.saturating_add(policy.max_extension_ms);
    let (to_ms, capped) = if wanted <= longest.min(most) {
        (wanted, None)
    } else if longest <= most {
        (longest, Some(format!("capped at the longest deadline ({} after the request)", secs(policy.max_ms))))
    } else {
        (
            most,
            Some(format!(
                "capped at max_extension ({} past the deadline it was created with)",
                secs(policy.max_extension_ms)
            )),
        )
    };
    if to_ms <= m.deadline_ms {
        return None;
    }
    let p50 = forecast.p50_ms.filter(|p| p.is_finite()).map_or_else(|| "unknown".to_owned(), |p| secs(p.ceil() as u64));
    let mut reason = format!(
        "{} open flows on {} forecast to drain in {} (p90; p50 {}), past the closing window at {} s before the \
         deadline: moved {} later to leave the drain, the {} closing window and a {} margin",
        forecast.open,
        m.source,
        secs(p90_ms),
        p50,
        policy.close_grace_ms / 1000,
        secs(to_ms - m.deadline_ms),
        secs(policy.close_grace_ms),
        secs(margin),
    );
    if let Some(capped) = capped {
        reason.push_str("; ");
        reason.push_str(&capped);
    }
    Some(Extension { from_ms: m.deadline_ms, to_ms, reason })
}

/// `12 s`, `1.5 s`.
fn secs(ms: u64) -> String {
    let text = format!("{:.3}", ms as f64 / 1000.0);
    format!("{} s", text.trim_end_matches('0').trim_end_matches('.'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::Ipv4Addr;

    use ipshadow_core::patterns::Tail;

    use super::*;
    use crate::migration::{Lifecycle, MigrationEvent as E};
    use crate::reassign::DeadlineSource;

    const T0: u64 = 1_800_000_000_000;
    const DEADLINE: u64 = T0 + 60_000;

    fn ramping() -> Migration {
        let mut lifecycle = Lifecycle::new();
        for e in [E::PlanWritten, E::DestinationLeaseBound, E::DestinationReady] {
            lifecycle.apply(e, T0 + 1).unwrap();
        }
        Migration {
            id: 1,
            ip: Ipv4Addr::new(10, 0, 0, 10),
            tenant: "acme".into(),
            source: "vm-a".into(),
            destination: "vm-b".into(),
            strategy: Default::default(),
            mode: Default::default(),
            affinity: Default::default(),
            ramp: Default::default(),
            deadline_ms: DEADLINE,
            deadline_source: DeadlineSource::SourceLeaseEnd,
            plan: None,
            created_ms: T0,
            split_pct: 100.0,
            lifecycle,
            cut_over: None,
        }
    }

    fn forecast(p50_s: Option<f64>, p90_s: Option<f64>) -> DrainForecast {
        DrainForecast {
            open: 40,
            p50_ms: p50_s.map(|s| s * 1000.0),
            p90_ms: p90_s.map(|s| s * 1000.0),
            expected_open_at_deadline: Some(12.0),
            horizon_ms: 30_000.0,
            tail: Tail::Exponential { rate_per_s: 0.02 },
            observations: 500,
        }
    }

    /// Applies `e` as the manager would.
    fn extended(m: &Migration, e: &Extension, now: u64) -> Migration {
        let mut m = m.clone();
        let event = E::DeadlineExtended { from_ms: e.from_ms, to_ms: e.to_ms, reason: e.reason.clone() };
        m.lifecycle.apply(event, now).unwrap();
        m.deadline_ms = e.to_ms;
        m.deadline_source = DeadlineSource::DrainForecast;
        m
    }

    #[test]
    fn a_drain_past_the_closing_window_moves_the_deadline_with_room() {
        let policy = DeadlinePolicy::default();
        let m = ramping();
        let now = T0 + 30_000;
        // Drain in 40 s (p90), deadline in 30 s, closing window from 20 s: 40 + 10 + 5 s margin.
        let e = drain_extension(&m, &forecast(Some(25.0), Some(40.0)), &policy, now).unwrap();
        assert_eq!((e.from_ms, e.to_ms), (DEADLINE, now + 55_000));
        for part in ["40 open flows on vm-a", "drain in 40 s (p90; p50 25 s)", "moved 25 s later"] {
            assert!(e.reason.contains(part), "{part:?} not in {:?}", e.reason);
        }
        // A long drain gets an eighth of it as margin, rounded up to a whole second.
        let e = drain_extension(&m, &forecast(None, Some(400.0005)), &policy, now + 1).unwrap();
        assert_eq!(e.to_ms, (now + 1 + 400_001 + 10_000 + 50_000).div_ceil(1000) * 1000);
        assert_eq!(e.to_ms % 1000, 0);
    }

    #[test]
    fn no_extension_when_the_drain_fits_or_is_unforeseeable() {
        let policy = DeadlinePolicy::default();
        let m = ramping();
        let now = T0 + 30_000;
        // Ends by the closing window (20 s from now): nothing to do.
        assert_eq!(drain_extension(&m, &forecast(Some(10.0), Some(20.0)), &policy, now), None);
        // Keep-alive connections that never end: no p90, no date would be enough.
        assert_eq!(drain_extension(&m, &forecast(None, None), &policy, now), None);
        assert_eq!(drain_extension(&m, &forecast(None, Some(f64::INFINITY)), &policy, now), None);
        assert_eq!(drain_extension(&m, &forecast(None, Some(f64::NAN)), &policy, now), None);
        // Inside the closing window: the router is closing A's flows already.
        assert_eq!(drain_extension(&m, &forecast(None, Some(600.0)), &policy, DEADLINE - 10_000), None);
        // Not before B is ready, not once cut over.
        let mut waiting = m.clone();
        waiting.lifecycle = Lifecycle::new();
        waiting.lifecycle.apply(E::PlanWritten, T0).unwrap();
        assert_eq!(drain_extension(&waiting, &forecast(None, Some(600.0)), &policy, now), None);
        let mut cut = m.clone();
        cut.lifecycle.apply(E::CutOver { reason: "deadline".into() }, now).unwrap();
        assert_eq!(drain_extension(&cut, &forecast(None, Some(600.0)), &policy, now), None);
    }

    #[test]
    fn extensions_stay_within_the_policy_never_shorten_and_wait_between() {
        let policy = DeadlinePolicy { max_extension_ms: 120_000, ..DeadlinePolicy::default() };
        let m = ramping();
        let now = T0 + 30_000;
        // A drain of an hour: capped at the original deadline + 2 minutes.
        let e = drain_extension(&m, &forecast(None, Some(3_600.0)), &policy, now).unwrap();
        assert_eq!(e.to_ms, DEADLINE + 120_000);
        assert!(e.reason.contains("capped at max_extension"), "{}", e.reason);
        let m = extended(&m, &e, now);
        assert_eq!(m.lifecycle.original_deadline_ms(m.deadline_ms), DEADLINE);
        // Asked again later (past the interval): the cap is from the original deadline, nothing more.
        let later = now + EXTENSION_INTERVAL_MS;
        assert_eq!(drain_extension(&m, &forecast(None, Some(3_600.0)), &policy, later), None);
        // The longest deadline caps first when it is nearer.
        let short = DeadlinePolicy { max_ms: 100_000, ..DeadlinePolicy::default() };
        let e = drain_extension(&ramping(), &forecast(None, Some(3_600.0)), &short, now).unwrap();
        assert_eq!(e.to_ms, T0 + 100_000);
        assert!(e.reason.contains("capped at the longest deadline"), "{}", e.reason);
        // A smaller forecast after an extension never shortens it.
        let policy = DeadlinePolicy::default();
        let e = drain_extension(&ramping(), &forecast(None, Some(100.0)), &policy, now).unwrap();
        let m = extended(&ramping(), &e, now);
        let much_later = now + 10 * EXTENSION_INTERVAL_MS;
        let before_window = much_later.min(m.deadline_ms - 20_000);
        assert_eq!(drain_extension(&m, &forecast(None, Some(5.0)), &policy, before_window), None);
        assert_eq!(m.deadline_ms, e.to_ms);
        // A larger one extends again, but not within the interval.
        assert_eq!(drain_extension(&m, &forecast(None, Some(300.0)), &policy, now + EXTENSION_INTERVAL_MS - 1), None);
        let again = drain_extension(&m, &forecast(None, Some(300.0)), &policy, now + EXTENSION_INTERVAL_MS).unwrap();
        assert!(again.to_ms > m.deadline_ms && again.from_ms == m.deadline_ms);
    }
}

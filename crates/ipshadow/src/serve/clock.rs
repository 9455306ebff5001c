//! `serve`'s one clock. Deadlines and lease ends are unix times, but a step of the system clock
//! (NTP correcting a bad start, an operator's `date -s`) must neither cut a migration over early
//! nor end a lease or time a migration out: every part of the process (API, manager, DHCP
//! server, router) reads unix time as the system clock's reading at start plus the monotonic
//! time since. A step is logged when seen and takes effect at the next start; NTP's slewing is
//! followed, since the monotonic clock is slewed too.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Instant, SystemTime};

/// Unix time that does not step: the system clock at first use plus monotonic time since.
pub(crate) struct SteadyWall {
    start: Instant,
    unix_us_at_start: u64,
    /// The step last logged (system clock minus this clock), in ms.
    logged_step_ms: AtomicI64,
}

/// The process's clock.
static STEADY: LazyLock<SteadyWall> = LazyLock::new(SteadyWall::start);

/// A step smaller than this goes unlogged (reading two clocks is not instantaneous).
const STEP_LOGGED_MS: i64 = 1_000;

fn system_unix_us() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_micros() as u64
}

impl SteadyWall {
    fn start() -> Self {
        Self { start: Instant::now(), unix_us_at_start: system_unix_us(), logged_step_ms: AtomicI64::new(0) }
    }

    /// Unix microseconds by this clock; logs a step of the system clock the first time it is
    /// seen.
    fn now_us(&self) -> u64 {
        let now = self.unix_us_at_start + self.start.elapsed().as_micros() as u64;
        let step_ms = (system_unix_us() as i64 - now as i64) / 1_000;
        let logged = self.logged_step_ms.load(Ordering::Relaxed);
        if (step_ms - logged).abs() >= STEP_LOGGED_MS
            && self.logged_step_ms.compare_exchange(logged, step_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            eprintln!(
                "ipshadow serve: the system clock stepped by {:+.1} s since serve started; deadlines, lease \
                 ends and timeouts keep serve's own time until it restarts",
                step_ms as f64 / 1_000.0
            );
        }
        now
    }
}

/// Unix milliseconds by `serve`'s clock.
pub(crate) fn unix_ms() -> u64 {
    STEADY.now_us() / 1_000
}

/// Unix seconds by `serve`'s clock (the DHCP server's time).
pub(crate) fn unix_secs() -> u64 {
    STEADY.now_us() / 1_000_000
}

/// `serve`'s clock as the router reads wall time.
pub(crate) fn wall() -> ipshadow_core::time::Instant {
    ipshadow_core::time::Instant::from_micros(STEADY.now_us())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_reads_as_unix_time_and_never_goes_back() {
        let clock = SteadyWall::start();
        let first = clock.now_us();
        let system = system_unix_us();
        assert!(first.abs_diff(system) < 1_000_000, "starts at the system clock: {first} vs {system}");
        let mut last = first;
        for _ in 0..1_000 {
            let now = clock.now_us();
            assert!(now >= last);
            last = now;
        }
    }
}

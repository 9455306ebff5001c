//! The router's clocks: its own monotonic time, and the wall clock read beside it.

use std::time::SystemTime;

use ipshadow_core::{Clocks, Instant};

/// The wall clock: unix time in microseconds, the time of the manager's deadlines and the DHCP
/// server's lease ends.
pub fn wall_now() -> Instant {
    let since = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Instant::from_micros(since.as_micros() as u64)
}

/// The router's clocks. Its own time (flow timers, probes, ramps) is monotonic: it counts from
/// the wall clock's reading at start, so it reads as unix time until the wall clock steps, and a
/// step (NTP, `date -s`) moves neither a flow's expiry nor an installed deadline. The wall clock
/// is read beside it, for deadlines first heard of and for the status report.
#[derive(Clone, Copy, Debug)]
pub struct RouterClock {
    start: std::time::Instant,
    wall_at_start: Instant,
    /// The wall clock read beside: the system's, or the process's own (`serve`'s, which does
    /// not step, so its parts agree on every deadline).
    wall: fn() -> Instant,
}

impl RouterClock {
    /// A clock whose monotonic time starts at the system clock's now.
    pub fn start() -> Self {
        Self::start_with(wall_now)
    }

    /// A clock whose monotonic time starts at `wall`'s now, and that reads `wall` beside.
    pub fn start_with(wall: fn() -> Instant) -> Self {
        Self { start: std::time::Instant::now(), wall_at_start: wall(), wall }
    }

    /// Both clocks, now.
    pub fn read(&self) -> Clocks {
        Clocks::new(self.wall_at_start + self.start.elapsed(), (self.wall)())
    }
}

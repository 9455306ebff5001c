//! Time as the caller tells it.
//!
//! The core never reads a clock: every call takes `now`. [`Instant`] is a point on the caller's
//! monotonic clock in microseconds since an epoch the caller chooses (process start, or 0 in a
//! simulation). Durations are `core::time::Duration`.
//!
//! Two clocks meet at the edges. Flow timers, probes and ramps run on the monotonic clock, which
//! an NTP step or an operator's `date -s` never moves. Deadlines and lease ends are agreed with
//! other processes (the manager, the DHCP server) on the wall clock. [`Clocks`] is one reading of
//! both; its [`WallOffset`] turns a wall-clock deadline into a monotonic one when it is first
//! heard of, and that conversion is kept: a later step of the wall clock moves no deadline
//! already installed.

use core::ops::{Add, Sub};
use core::time::Duration;

use serde::{Deserialize, Serialize};

/// A point in time on the caller's monotonic clock, in microseconds since the caller's epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Instant {
    micros: u64,
}

impl Instant {
    /// The caller's epoch.
    pub const ZERO: Self = Self { micros: 0 };

    /// The instant `micros` microseconds after the epoch.
    pub const fn from_micros(micros: u64) -> Self {
        Self { micros }
    }

    /// The instant `millis` milliseconds after the epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Self { micros: millis.saturating_mul(1_000) }
    }

    /// The instant `secs` seconds after the epoch.
    pub const fn from_secs(secs: u64) -> Self {
        Self { micros: secs.saturating_mul(1_000_000) }
    }

    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> u64 {
        self.micros
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.micros / 1_000
    }

    /// Milliseconds since the epoch, truncated to 32 bits. The flow table stores last-seen times
    /// this way and compares them with wrapping arithmetic, which is exact for gaps under 24 days
    /// (every idle timeout is far shorter).
    pub(crate) const fn millis_u32(self) -> u32 {
        self.as_millis() as u32
    }

    /// Time elapsed from `earlier` to `self`, or zero if `earlier` is later.
    pub const fn saturating_duration_since(self, earlier: Self) -> Duration {
        Duration::from_micros(self.micros.saturating_sub(earlier.micros))
    }
}

impl Add<Duration> for Instant {
    type Output = Self;

    /// Saturates at the end of time rather than wrapping: a deadline that far out never fires.
    fn add(self, rhs: Duration) -> Self {
        let micros = u64::try_from(rhs.as_micros()).unwrap_or(u64::MAX);
        Self { micros: self.micros.saturating_add(micros) }
    }
}

impl Sub<Duration> for Instant {
    type Output = Self;

    /// Saturates at the epoch.
    fn sub(self, rhs: Duration) -> Self {
        let micros = u64::try_from(rhs.as_micros()).unwrap_or(u64::MAX);
        Self { micros: self.micros.saturating_sub(micros) }
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;

    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_duration_since(rhs)
    }
}

impl core::fmt::Display for Instant {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{:06}s", self.micros / 1_000_000, self.micros % 1_000_000)
    }
}

/// One reading of both clocks, taken together by the driver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Clocks {
    /// The monotonic clock: the core's time.
    pub now: Instant,
    /// The wall clock, in unix microseconds: the time deadlines and lease ends are written in.
    pub wall: Instant,
}

impl Clocks {
    /// Both clocks read at the same moment.
    pub const fn new(now: Instant, wall: Instant) -> Self {
        Self { now, wall }
    }

    /// The same clock for both (a simulation, or a driver whose monotonic epoch is the unix one
    /// and whose wall clock has not stepped).
    pub const fn single(now: Instant) -> Self {
        Self { now, wall: now }
    }

    /// How far the monotonic clock is from the wall clock at this reading.
    pub fn offset(self) -> WallOffset {
        WallOffset { micros: i128::from(self.now.as_micros()) - i128::from(self.wall.as_micros()) }
    }
}

/// The difference between the monotonic clock and the wall clock at one reading: converts a
/// wall-clock time into monotonic time and back. Kept per deadline from when it was heard of, so
/// that a step of the wall clock does not move it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct WallOffset {
    /// Monotonic minus wall, in microseconds.
    micros: i128,
}

impl WallOffset {
    /// No difference (both clocks the same).
    pub const ZERO: Self = Self { micros: 0 };

    /// The monotonic time of the wall-clock time `wall` (saturating at the ends of time).
    pub fn to_monotonic(self, wall: Instant) -> Instant {
        Self::shift(wall, self.micros)
    }

    /// The wall-clock time of the monotonic time `now` (saturating at the ends of time).
    pub fn to_wall(self, now: Instant) -> Instant {
        Self::shift(now, -self.micros)
    }

    fn shift(t: Instant, by: i128) -> Instant {
        let micros = (i128::from(t.as_micros()) + by).clamp(0, i128::from(u64::MAX));
        Instant::from_micros(micros as u64)
    }
}

/// Serde helper: durations as whole milliseconds, the unit operators write in config and API.
pub mod duration_ms {
    use core::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes a duration as milliseconds.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Reads a duration from milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_wrapping() {
        let t = Instant::from_secs(2);
        assert_eq!(t + Duration::from_millis(1500), Instant::from_micros(3_500_000));
        assert_eq!(Instant::from_secs(1) - t, Duration::ZERO);
        assert_eq!(t - Instant::from_secs(1), Duration::from_secs(1));
        assert_eq!(Instant::from_micros(u64::MAX) + Duration::from_secs(1), Instant::from_micros(u64::MAX));
        assert_eq!(Instant::from_millis(1_234).to_string(), "1.234000s");
    }

    #[test]
    fn a_wall_time_converts_to_monotonic_and_back() {
        // The monotonic clock started at 0 when the wall clock read 10,000 s.
        let clocks = Clocks::new(Instant::from_secs(5), Instant::from_secs(10_005));
        let offset = clocks.offset();
        assert_eq!(offset.to_monotonic(Instant::from_secs(10_300)), Instant::from_secs(300));
        assert_eq!(offset.to_wall(Instant::from_secs(300)), Instant::from_secs(10_300));
        // A deadline before the monotonic epoch saturates rather than wrapping.
        assert_eq!(offset.to_monotonic(Instant::from_secs(10)), Instant::ZERO);
        assert_eq!(Clocks::single(Instant::from_secs(9)).offset(), WallOffset::ZERO);
        // After a step of the wall clock one hour back, the same deadline seen anew would move:
        // that is why a conversion is kept from when the deadline was first heard of.
        let stepped = Clocks::new(Instant::from_secs(6), Instant::from_secs(10_006 - 3_600)).offset();
        assert_eq!(stepped.to_monotonic(Instant::from_secs(10_300)), Instant::from_secs(3_900));
    }
}

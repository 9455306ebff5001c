//! Time as the caller tells it.
//!
//! The core never reads a clock: every call takes `now`. [`Instant`] is a point on the caller's
//! monotonic clock in microseconds since an epoch the caller chooses (process start, or 0 in a
//! simulation). Durations are `core::time::Duration`.

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
}

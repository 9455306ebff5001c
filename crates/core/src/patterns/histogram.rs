//! A fixed-size logarithmic histogram of durations in milliseconds: eight buckets per power of
//! two (each at most 12.5 % wide), 0 ms to about two years, 280 counters. Bounded memory
//! whatever is recorded, which is what a router measuring remote traffic needs (never a per-flow
//! log); quantiles are exact to the bucket.

use serde::{Deserialize, Serialize};

/// Bits of a value kept below its leading one: 2^SUB buckets per octave.
const SUB: usize = 3;
/// Buckets: 0..8 ms one each, then 8 per octave up to 2^38 ms; longer values land in the last.
const BUCKETS: usize = (1 << SUB) + (38 - SUB) * (1 << SUB);

/// Counts of durations by logarithmic bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogHistogram {
    counts: [u32; BUCKETS],
    total: u64,
}

impl Default for LogHistogram {
    fn default() -> Self {
        Self { counts: [0; BUCKETS], total: 0 }
    }
}

/// The bucket of `ms`.
fn index(ms: u64) -> usize {
    const N: usize = 1 << SUB;
    if ms < N as u64 {
        return ms as usize;
    }
    let octave = 63 - ms.leading_zeros() as usize; // >= SUB
    let sub = ((ms >> (octave - SUB)) as usize) & (N - 1);
    (N + (octave - SUB) * N + sub).min(BUCKETS - 1)
}

/// The lowest value of bucket `i`, in ms.
pub(crate) fn lower_bound(i: usize) -> u64 {
    const N: usize = 1 << SUB;
    if i < N {
        return i as u64;
    }
    let octave = (i - N) / N + SUB;
    let sub = ((i - N) % N) as u64;
    (N as u64 + sub) << (octave - SUB)
}

/// The first value past bucket `i`, in ms.
pub(crate) fn upper_bound(i: usize) -> u64 {
    if i + 1 < BUCKETS { lower_bound(i + 1) } else { u64::MAX }
}

/// The bucket of `ms`, for callers that bin other data (censored ages) the same way.
pub(crate) fn bucket_of(ms: u64) -> usize {
    index(ms)
}

/// Number of buckets.
pub(crate) const fn bucket_count() -> usize {
    BUCKETS
}

impl LogHistogram {
    /// Records one duration of `ms` milliseconds.
    #[inline]
    pub fn record(&mut self, ms: u64) {
        let c = &mut self.counts[index(ms)];
        *c = c.saturating_add(1);
        self.total += 1;
    }

    /// Values recorded.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Count in bucket `i`.
    pub(crate) fn count(&self, i: usize) -> u32 {
        self.counts[i]
    }

    /// The `q`-quantile (0..=1) in ms, interpolated inside its bucket; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let target = q.clamp(0.0, 1.0) * self.total as f64;
        let mut seen = 0.0;
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let next = seen + f64::from(c);
            if next >= target {
                let (lo, hi) = (lower_bound(i) as f64, upper_bound(i).min(1 << 40) as f64);
                let within = ((target - seen) / f64::from(c)).clamp(0.0, 1.0);
                return Some(lo + within * (hi - lo));
            }
            seen = next;
        }
        Some(lower_bound(BUCKETS - 1) as f64)
    }

    /// Count, median and 90th percentile, for reports.
    pub fn summary(&self) -> Quantiles {
        Quantiles { count: self.total, p50_ms: self.quantile(0.5), p90_ms: self.quantile(0.9) }
    }
}

/// A histogram summed up for a report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Quantiles {
    /// Values recorded.
    pub count: u64,
    /// Median, ms (none recorded: absent).
    pub p50_ms: Option<f64>,
    /// 90th percentile, ms.
    pub p90_ms: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_tile_the_range_and_stay_within_a_quarter() {
        for i in 0..BUCKETS - 1 {
            assert_eq!(upper_bound(i), lower_bound(i + 1));
            assert_eq!(index(lower_bound(i)), i);
            assert_eq!(index(upper_bound(i) - 1), i);
            if i >= 8 {
                let (lo, hi) = (lower_bound(i) as f64, upper_bound(i) as f64);
                assert!((hi - lo) / lo <= 0.125 + 1e-9, "bucket {i}: {lo}..{hi}");
            }
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_land_in_the_right_bucket() {
        let mut h = LogHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        for ms in 1..=1000 {
            h.record(ms);
        }
        let p50 = h.quantile(0.5).unwrap();
        let p90 = h.quantile(0.9).unwrap();
        assert!((p50 - 500.0).abs() / 500.0 < 0.07, "{p50}");
        assert!((p90 - 900.0).abs() / 900.0 < 0.07, "{p90}");
        assert_eq!(h.total(), 1000);
    }
}

//! The census of open flows by age, in bounded memory: flows are counted in cohorts by when they
//! started, so their ages move with time without any per-flow record. A cohort covers at most
//! 1/16 of the time measured so far (at least a second), so ages stay accurate to a few percent
//! however long the measurement runs, and at most [`MAX_COHORTS`] are kept (the two oldest
//! neighbours merge), however many flows come and go.

use std::collections::VecDeque;

use crate::time::Instant;

/// Most cohorts kept.
pub const MAX_COHORTS: usize = 48;

/// Flows that started between `first` and `last` and are still open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cohort {
    first: Instant,
    last: Instant,
    open: u32,
}

/// Open flows by start time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgeCensus {
    cohorts: VecDeque<Cohort>,
    open: u32,
}

impl AgeCensus {
    /// Flows counted open.
    pub fn open(&self) -> u32 {
        self.open
    }

    /// Counts a flow that started at `started` as open.
    pub fn add(&mut self, started: Instant) {
        self.open += 1;
        if let Some(i) = self.find(started) {
            self.cohorts[i].open += 1;
            return;
        }
        let before = self.cohorts.partition_point(|c| c.first <= started);
        if before == 0 {
            match self.cohorts.front_mut() {
                // Older than every cohort left (its own emptied): the oldest takes it.
                Some(front) => {
                    front.first = started;
                    front.open += 1;
                }
                None => self.cohorts.push_back(Cohort { first: started, last: started, open: 1 }),
            }
            return;
        }
        let origin = self.cohorts[0].first;
        let width = (started.saturating_duration_since(origin) / 16).max(core::time::Duration::from_secs(1));
        let inside_gap = before < self.cohorts.len();
        let prev = &mut self.cohorts[before - 1];
        // Inside a gap between two cohorts (a late arrival), or close enough to the newest: join
        // the cohort before it, whose span then still ends before the next one begins.
        if inside_gap || started.saturating_duration_since(prev.first) < width {
            prev.last = started;
            prev.open += 1;
        } else {
            self.cohorts.push_back(Cohort { first: started, last: started, open: 1 });
            if self.cohorts.len() > MAX_COHORTS {
                self.merge_oldest();
            }
        }
    }

    /// Counts a flow that started at `started` as no longer open. It is taken from the cohort
    /// that holds its start (or the one before, or the oldest); on an empty census it is ignored
    /// (the caller's membership bit makes that impossible; this keeps the census sane anyway).
    pub fn remove(&mut self, started: Instant) {
        let before = self.cohorts.partition_point(|c| c.first <= started);
        if self.cohorts.is_empty() {
            return;
        }
        let i = before.saturating_sub(1);
        let c = &mut self.cohorts[i];
        c.open -= 1;
        self.open -= 1;
        if c.open == 0 {
            self.cohorts.remove(i);
        }
    }

    /// The cohort whose span holds `started`.
    fn find(&self, started: Instant) -> Option<usize> {
        let i = self.cohorts.partition_point(|c| c.first <= started);
        (i > 0 && started <= self.cohorts[i - 1].last).then(|| i - 1)
    }

    fn merge_oldest(&mut self) {
        if let Some(oldest) = self.cohorts.pop_front()
            && let Some(next) = self.cohorts.front_mut()
        {
            next.first = oldest.first;
            next.open += oldest.open;
        }
    }

    /// (age in ms, open flows) of each cohort at `now`, the age taken at the cohort's middle.
    pub fn ages(&self, now: Instant) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.cohorts.iter().map(move |c| {
            let mid = Instant::from_micros((c.first.as_micros() + c.last.as_micros()) / 2);
            (now.saturating_duration_since(mid).as_millis() as u64, c.open)
        })
    }

    /// The oldest open flow's age at `now`, ms.
    pub fn oldest_ms(&self, now: Instant) -> Option<u64> {
        self.cohorts.front().map(|c| now.saturating_duration_since(c.first).as_millis() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_adds_and_removes_and_memory_stays_bounded() {
        let mut census = AgeCensus::default();
        let mut started = Vec::new();
        for s in 0..10_000u64 {
            let t = Instant::from_millis(s * 37);
            census.add(t);
            started.push(t);
            assert!(census.cohorts.len() <= MAX_COHORTS);
        }
        assert_eq!(census.open(), 10_000);
        for t in started.iter().step_by(2) {
            census.remove(*t);
        }
        assert_eq!(census.open(), 5_000);
        let total: u32 = census.ages(Instant::from_secs(400)).map(|(_, n)| n).sum();
        assert_eq!(total, 5_000);
        for t in started.iter().skip(1).step_by(2) {
            census.remove(*t);
        }
        assert_eq!((census.open(), census.cohorts.len()), (0, 0));
    }

    #[test]
    fn ages_are_close_to_the_truth() {
        let mut census = AgeCensus::default();
        for s in 0..600u64 {
            census.add(Instant::from_secs(s));
        }
        let now = Instant::from_secs(600);
        let mean: f64 = census.ages(now).map(|(a, n)| a as f64 * f64::from(n)).sum::<f64>() / 600.0;
        assert!((mean / 1000.0 - 300.5).abs() < 10.0, "mean age {mean} ms");
        assert_eq!(census.oldest_ms(now), Some(600_000));
    }
}

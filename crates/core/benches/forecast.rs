//! The drain forecast's cost: fitting the survival function of 5,000 ended lifetimes (log-normal,
//! median 40 s) censored by 900 open flows, the expensive step, and the whole forecast of 900
//! open flows from two fits.
//!
//! Run: `cargo bench -p ipshadow-core --bench forecast`. The router computes the fits at most
//! every few seconds per shadowed address (`TrafficPatterns::forecast` keeps them) and the
//! quantiles at each status report.

use core::time::Duration;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ipshadow_core::patterns::{DrainForecast, LogHistogram, OpenGroup, Survival};

/// A deterministic log-normal sample (median 40 s, sigma 1) in milliseconds, by inverse
/// transform of evenly spread quantiles.
fn lifetimes(n: u32) -> LogHistogram {
    let mut h = LogHistogram::default();
    for i in 0..n {
        let p = (f64::from(i) + 0.5) / f64::from(n);
        // Acklam-free approximation of the normal quantile (Tukey's lambda, close enough here).
        let z = 4.91 * (p.powf(0.14) - (1.0 - p).powf(0.14));
        h.record((40_000.0 * z.exp()) as u64);
    }
    h
}

fn open_ages() -> Vec<(u64, u32)> {
    (1..=45).map(|s| (s * 1000, 20)).collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("forecast");
    group.measurement_time(Duration::from_secs(8));
    let ended = lifetimes(5_000);
    let ages = open_ages();
    group.bench_function("fit_survival", |b| {
        b.iter(|| black_box(Survival::estimate(black_box(&ended), ages.iter().copied())))
    });
    let survival = Survival::estimate(&ended, ages.iter().copied());
    let groups: Vec<OpenGroup> =
        ages.iter().map(|&(age_ms, count)| OpenGroup { age_ms, count, known_start: true }).collect();
    group.bench_function("drain_from_fits", |b| {
        b.iter(|| {
            black_box(DrainForecast::compute(
                survival.as_ref(),
                survival.as_ref(),
                black_box(&groups),
                Some(60_000.0),
                5_900,
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

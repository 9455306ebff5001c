//! How long a long-lived connection is meant to last: the distributions a scenario draws
//! lifetimes from. The drain forecast is only as good as its handling of their shapes, so the
//! simulator offers a light tail (uniform), a memoryless one (exponential) and two heavy ones
//! (Pareto, log-normal), as measured connection lifetimes often are (Paxson & Floyd, "Wide-area
//! traffic: the failure of Poisson modeling", 1995).
//!
//! Draws take the run's seeded RNG: same seed, same lifetimes.

use core::fmt;
use core::time::Duration;

use ipshadow_core::patterns::erfc;
use rand_core::Rng;
use serde::Serialize;

use super::config::{ConfigError, MAX_SECONDS};

/// A distribution of connection lifetimes, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "dist", rename_all = "snake_case")]
pub enum Lifetime {
    /// Uniform in [`min_s`, `max_s`].
    Uniform {
        /// Shortest, seconds.
        min_s: f64,
        /// Longest, seconds.
        max_s: f64,
    },
    /// Exponential (constant hazard) with this mean.
    Exponential {
        /// Mean, seconds.
        mean_s: f64,
    },
    /// Pareto (type I): P(lifetime > t) = (scale / t)^alpha for t >= scale. Its mean is
    /// alpha x scale / (alpha - 1) for alpha > 1; its variance is infinite for alpha <= 2.
    Pareto {
        /// The shortest lifetime, seconds.
        scale_s: f64,
        /// Tail index (1.5 is a typical heavy tail).
        alpha: f64,
    },
    /// Log-normal: ln(lifetime) is normal with median ln(`median_s`) and deviation `sigma`.
    LogNormal {
        /// Median, seconds.
        median_s: f64,
        /// Standard deviation of ln(lifetime).
        sigma: f64,
    },
}

impl Lifetime {
    /// Checks the parameters; the error names the option.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |why: &str| Err(ConfigError { field: "lifetime", why: why.to_owned() });
        let seconds = |x: f64| x.is_finite() && (0.0..=MAX_SECONDS).contains(&x);
        match *self {
            Lifetime::Uniform { min_s, max_s } => {
                if !(seconds(min_s) && seconds(max_s)) {
                    return bad("MIN and MAX must be numbers of seconds from 0 to 1e9");
                }
                if max_s < min_s {
                    return bad("the longest is below the shortest");
                }
            }
            Lifetime::Exponential { mean_s } => {
                if !(seconds(mean_s) && mean_s > 0.0) {
                    return bad("the mean must be a number of seconds above 0, at most 1e9");
                }
            }
            Lifetime::Pareto { scale_s, alpha } => {
                if !(seconds(scale_s) && scale_s > 0.0) {
                    return bad("the scale must be a number of seconds above 0, at most 1e9");
                }
                if !(alpha.is_finite() && alpha > 0.0 && alpha <= 100.0) {
                    return bad("alpha must be above 0 and at most 100");
                }
            }
            Lifetime::LogNormal { median_s, sigma } => {
                if !(seconds(median_s) && median_s > 0.0) {
                    return bad("the median must be a number of seconds above 0, at most 1e9");
                }
                if !(sigma.is_finite() && (0.0..=10.0).contains(&sigma)) {
                    return bad("sigma must be within 0..=10");
                }
            }
        }
        Ok(())
    }

    /// One lifetime drawn with `rng`, at most 1e9 s (a heavy tail may draw beyond any run).
    pub fn sample(&self, rng: &mut impl Rng) -> Duration {
        let s = match *self {
            Lifetime::Uniform { min_s, max_s } => {
                // In whole microseconds, so that MIN = MAX gives exactly that lifetime.
                let (min, max) = (micros(min_s), micros(max_s));
                let us = min + rng.next_u64() % (max.saturating_sub(min) + 1);
                return Duration::from_micros(us);
            }
            Lifetime::Exponential { mean_s } => -mean_s * open_unit(rng).ln(),
            Lifetime::Pareto { scale_s, alpha } => scale_s * open_unit(rng).powf(-1.0 / alpha),
            Lifetime::LogNormal { median_s, sigma } => median_s * (sigma * standard_normal(rng)).exp(),
        };
        Duration::from_secs_f64(if s.is_finite() { s.clamp(0.0, MAX_SECONDS) } else { MAX_SECONDS })
    }

    /// The distribution's mean, seconds (infinite for a Pareto tail with alpha <= 1).
    pub fn mean_s(&self) -> f64 {
        match *self {
            Lifetime::Uniform { min_s, max_s } => (min_s + max_s) / 2.0,
            Lifetime::Exponential { mean_s } => mean_s,
            Lifetime::Pareto { scale_s, alpha } if alpha > 1.0 => alpha * scale_s / (alpha - 1.0),
            Lifetime::Pareto { .. } => f64::INFINITY,
            Lifetime::LogNormal { median_s, sigma } => median_s * (sigma * sigma / 2.0).exp(),
        }
    }

    /// P(lifetime > `t_s`): the survival function, for the ideal drain forecast (what a forecast
    /// that knew the distribution and every connection's age would say).
    pub fn survival(&self, t_s: f64) -> f64 {
        if t_s <= 0.0 {
            return 1.0;
        }
        match *self {
            Lifetime::Uniform { min_s, .. } if t_s < min_s => 1.0,
            Lifetime::Uniform { max_s, .. } if t_s >= max_s => 0.0,
            Lifetime::Uniform { min_s, max_s } => (max_s - t_s) / (max_s - min_s),
            Lifetime::Exponential { mean_s } => (-t_s / mean_s).exp(),
            Lifetime::Pareto { scale_s, .. } if t_s < scale_s => 1.0,
            Lifetime::Pareto { scale_s, alpha } => (scale_s / t_s).powf(alpha),
            Lifetime::LogNormal { median_s, sigma } if sigma <= 0.0 => f64::from(u8::from(t_s < median_s)),
            Lifetime::LogNormal { median_s, sigma } => {
                0.5 * erfc((t_s / median_s).ln() / (sigma * core::f64::consts::SQRT_2))
            }
        }
    }

    /// The distribution's median, seconds.
    pub fn median_s(&self) -> f64 {
        match *self {
            Lifetime::Uniform { min_s, max_s } => (min_s + max_s) / 2.0,
            Lifetime::Exponential { mean_s } => mean_s * core::f64::consts::LN_2,
            Lifetime::Pareto { scale_s, alpha } => scale_s * 2f64.powf(1.0 / alpha),
            Lifetime::LogNormal { median_s, .. } => median_s,
        }
    }
}

impl fmt::Display for Lifetime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lifetime::Uniform { min_s, max_s } => write!(f, "uniform {min_s}-{max_s} s"),
            Lifetime::Exponential { mean_s } => write!(f, "exponential, mean {mean_s} s"),
            Lifetime::Pareto { scale_s, alpha } => write!(f, "pareto, scale {scale_s} s, alpha {alpha}"),
            Lifetime::LogNormal { median_s, sigma } => write!(f, "log-normal, median {median_s} s, sigma {sigma}"),
        }
    }
}

fn micros(s: f64) -> u64 {
    // `validate` bounds `s` to 0..=1e9: the product fits a u64 (`as` saturates anyway).
    (s * 1e6) as u64
}

/// Uniform in (0, 1]: never 0, so its logarithm and negative powers are finite.
fn open_unit(rng: &mut impl Rng) -> f64 {
    ((rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
}

/// A standard normal deviate (Box-Muller; one of the pair is used, so each draw takes two
/// numbers from the RNG and the sequence stays simple to replay).
fn standard_normal(rng: &mut impl Rng) -> f64 {
    let (u1, u2) = (open_unit(rng), open_unit(rng));
    (-2.0 * u1.ln()).sqrt() * (core::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rand_core::SeedableRng;
    use rand_pcg::Pcg64Mcg;

    use super::*;

    fn draws(dist: Lifetime, seed: u64, n: usize) -> Vec<f64> {
        let mut rng = Pcg64Mcg::seed_from_u64(seed);
        (0..n).map(|_| dist.sample(&mut rng).as_secs_f64()).collect()
    }

    fn mean(x: &[f64]) -> f64 {
        x.iter().sum::<f64>() / x.len() as f64
    }

    fn median(x: &[f64]) -> f64 {
        let mut x = x.to_vec();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    }

    const ALL: [Lifetime; 4] = [
        Lifetime::Uniform { min_s: 30.0, max_s: 150.0 },
        Lifetime::Exponential { mean_s: 60.0 },
        Lifetime::Pareto { scale_s: 20.0, alpha: 1.5 },
        Lifetime::LogNormal { median_s: 40.0, sigma: 1.0 },
    ];

    #[test]
    fn same_seed_same_lifetimes_another_seed_others() {
        for dist in ALL {
            assert_eq!(draws(dist, 7, 100), draws(dist, 7, 100), "{dist}");
            assert_ne!(draws(dist, 7, 100), draws(dist, 8, 100), "{dist}");
        }
    }

    #[test]
    fn medians_and_means_match_the_distribution() {
        const N: usize = 200_000;
        for dist in ALL {
            let x = draws(dist, 1, N);
            let (m, med) = (mean(&x), median(&x));
            // The sample median of 200,000 draws is within 1 % for all four shapes.
            assert!((med / dist.median_s() - 1.0).abs() < 0.01, "{dist}: median {med} vs {}", dist.median_s());
            // The sample mean of a Pareto with alpha 1.5 converges slowly (infinite variance):
            // 10 % is what 200,000 draws give; the others are within 1 %.
            let tolerance = if matches!(dist, Lifetime::Pareto { .. }) { 0.10 } else { 0.01 };
            assert!((m / dist.mean_s() - 1.0).abs() < tolerance, "{dist}: mean {m} vs {}", dist.mean_s());
            assert!(x.iter().all(|&v| (0.0..=MAX_SECONDS).contains(&v)), "{dist}");
        }
        let x = draws(Lifetime::Pareto { scale_s: 20.0, alpha: 1.5 }, 2, 1000);
        assert!(x.iter().all(|&v| v >= 20.0), "nothing below the Pareto scale");
        let x = draws(Lifetime::Uniform { min_s: 30.0, max_s: 150.0 }, 2, 1000);
        assert!(x.iter().all(|&v| (30.0..=150.0).contains(&v)), "uniform stays in its range");
    }

    #[test]
    fn the_survival_function_matches_the_draws() {
        const N: usize = 100_000;
        for dist in ALL {
            let x = draws(dist, 3, N);
            for t in [dist.median_s() / 2.0, dist.median_s(), dist.median_s() * 2.0, dist.mean_s() * 3.0] {
                let share = x.iter().filter(|&&v| v > t).count() as f64 / N as f64;
                assert!((dist.survival(t) - share).abs() < 0.006, "{dist}: S({t}) = {} vs {share}", dist.survival(t));
            }
            assert_eq!(dist.survival(0.0), 1.0);
        }
        assert!((erfc(0.0) - 1.0).abs() < 1e-7 && (erfc(1.0) - 0.157_299_207).abs() < 1e-7);
        assert!((erfc(-1.0) - 1.842_700_793).abs() < 1e-7 && erfc(6.0) < 1e-15);
    }

    #[test]
    fn bad_parameters_are_refused_with_the_option_named() {
        for bad in [
            Lifetime::Uniform { min_s: 9.0, max_s: 3.0 },
            Lifetime::Uniform { min_s: f64::NAN, max_s: 3.0 },
            Lifetime::Exponential { mean_s: 0.0 },
            Lifetime::Pareto { scale_s: 1.0, alpha: 0.0 },
            Lifetime::Pareto { scale_s: -1.0, alpha: 1.5 },
            Lifetime::LogNormal { median_s: 1.0, sigma: f64::INFINITY },
            Lifetime::LogNormal { median_s: 1e12, sigma: 1.0 },
        ] {
            assert_eq!(bad.validate().unwrap_err().field, "lifetime", "{bad:?}");
        }
    }
}

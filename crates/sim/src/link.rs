//! A one-way link: frames arrive after a latency plus jitter, or are lost, as its own seeded RNG
//! decides. Delivery keeps the sending order (a wire does not reorder), so jitter only spreads
//! gaps.

use core::time::Duration;
use std::collections::VecDeque;

use ipshadow_core::Instant;
use rand_core::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

/// A link's behaviour.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkConfig {
    /// One-way delay.
    pub latency: Duration,
    /// Extra delay drawn uniformly from [0, jitter].
    pub jitter: Duration,
    /// Probability that a frame is lost, in [0, 1].
    pub loss: f64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self { latency: Duration::from_micros(100), jitter: Duration::ZERO, loss: 0.0 }
    }
}

/// One direction of a cable between two ports.
#[derive(Debug)]
pub struct Link {
    config: LinkConfig,
    rng: Pcg64Mcg,
    in_flight: VecDeque<(Instant, Vec<u8>)>,
    sent: u64,
    lost: u64,
}

impl Link {
    /// A link whose randomness comes from `seed` alone.
    pub fn new(config: LinkConfig, seed: u64) -> Self {
        Self { config, rng: Pcg64Mcg::seed_from_u64(seed), in_flight: VecDeque::new(), sent: 0, lost: 0 }
    }

    /// Puts a frame on the link at `now`.
    pub fn send(&mut self, frame: Vec<u8>, now: Instant) {
        self.sent += 1;
        // 53 random bits give a uniform f64 in [0, 1).
        let draw = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        if draw < self.config.loss {
            self.lost += 1;
            return;
        }
        let jitter_us = u64::try_from(self.config.jitter.as_micros()).unwrap_or(u64::MAX);
        let extra = if jitter_us == 0 { 0 } else { self.rng.next_u64() % (jitter_us + 1) };
        let mut at = now + self.config.latency + Duration::from_micros(extra);
        if let Some((last, _)) = self.in_flight.back() {
            at = at.max(*last);
        }
        self.in_flight.push_back((at, frame));
    }

    /// When the next frame arrives, if one is in flight.
    pub fn next_arrival(&self) -> Option<Instant> {
        self.in_flight.front().map(|(t, _)| *t)
    }

    /// The next frame that has arrived by `now`.
    pub fn receive(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.in_flight.front().is_some_and(|(t, _)| *t <= now) {
            self.in_flight.pop_front().map(|(_, f)| f)
        } else {
            None
        }
    }

    /// Frames put on the link, and how many of them were lost.
    pub fn stats(&self) -> (u64, u64) {
        (self.sent, self.lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_order_and_seeded_loss() {
        let config = LinkConfig { latency: Duration::from_millis(5), jitter: Duration::from_millis(2), loss: 0.25 };
        let run = |seed| {
            let mut link = Link::new(config, seed);
            let mut arrivals = Vec::new();
            for i in 0..1000u32 {
                link.send(i.to_be_bytes().to_vec(), Instant::from_millis(u64::from(i)));
            }
            while let Some(now) = link.next_arrival() {
                while let Some(f) = link.receive(now) {
                    arrivals.push((now, u32::from_be_bytes([f[0], f[1], f[2], f[3]])));
                }
            }
            (arrivals, link.stats())
        };
        let (arrivals, (sent, lost)) = run(7);
        assert_eq!(sent, 1000);
        assert!((200..300).contains(&lost), "25 % loss: {lost}");
        assert_eq!(arrivals.len() as u64, sent - lost);
        assert!(arrivals.windows(2).all(|w| w[0].1 < w[1].1 && w[0].0 <= w[1].0), "in order");
        assert!(arrivals.iter().all(|(t, i)| {
            let sent_at = u64::from(*i);
            (sent_at + 5..).contains(&t.as_millis())
        }));
        assert_eq!(run(7).0, arrivals, "same seed, same run");
        assert_ne!(run(8).0, arrivals, "another seed, another run");
    }
}

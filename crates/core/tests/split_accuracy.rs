//! Split accuracy: at each ramp step, the share of new flows sent to B matches the target.
//!
//! Confidence bound: with n = 20,000 independent flows and true share p, the observed share has
//! standard deviation sqrt(p(1-p)/n) <= sqrt(0.25/20000) = 0.354 percentage points. The 2-point
//! tolerance is therefore >= 5.6 standard deviations: an unbiased, well-mixed hash misses it
//! with probability below 2e-8 per step, so a pass is the hash's quality, not luck. (The issue
//! asks for >= 5,000 flows per step: 4x that tightens the bound from 2.8 to 5.6 sigma.)

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use core::time::Duration;
use std::net::Ipv4Addr;

use ipshadow_core::testkit::{Harness, X, tcp, udp};
use ipshadow_core::wire::TcpFlags as F;
use ipshadow_core::{
    Affinity, CongestionControlParameters, Deliver, InboundVerdict, MigrationOptions, Ramp, RampStep, RouterConfig,
};

const FLOWS_PER_STEP: u32 = 20_000;
const STEPS: [f64; 7] = [1.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0];

/// splitmix64: client addresses and ports as a real client population would spread them.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn measure(affinity: Affinity, sequential: bool) {
    let ramp =
        Ramp::Steps { steps: STEPS.iter().map(|&pct| RampStep { pct, hold: Duration::from_secs(10) }).collect() };
    let options = MigrationOptions { ramp, affinity, salt: 0xfeed, ..Default::default() };
    let config = RouterConfig { max_flows: 1 << 20, ..Default::default() };
    let mut h = Harness::new(config, options, CongestionControlParameters::default());
    h.router.lease_bound(X, h.now).unwrap();
    let mut n: u64 = 0;
    for (i, &target) in STEPS.iter().enumerate() {
        if i > 0 {
            h.advance(Duration::from_secs(10));
        }
        assert_eq!(h.router.entry(X).unwrap().traffic_split_percentage, target);
        let mut to_b = 0u32;
        for _ in 0..FLOWS_PER_STEP {
            n += 1;
            let (ip, port) = if sequential {
                // One busy client subnet opening connections with sequential ports: the worst
                // case for a weak hash.
                (Ipv4Addr::from_bits(0xc633_6400 | (n >> 14) as u32), 10_000 + (n & 0x3fff) as u16)
            } else {
                let r = mix(n);
                (Ipv4Addr::from_bits(r as u32), (r >> 32) as u16 | 1024)
            };
            let frame = if n.is_multiple_of(4) {
                udp((ip, port), (X, 53), b"q")
            } else {
                tcp((ip, port), (X, 443), F::SYN, 1, 0, &[])
            };
            if h.inbound(&frame) == InboundVerdict::Deliver(Deliver::Destination) {
                to_b += 1;
            }
        }
        let share = 100.0 * f64::from(to_b) / f64::from(FLOWS_PER_STEP);
        println!("{affinity:?} sequential={sequential}: target {target:5.1} %  measured {share:6.2} %");
        assert!((share - target).abs() <= 2.0, "step {target} %: measured {share:.2} %");
    }
}

#[test]
fn per_flow_split_within_two_points_at_every_step() {
    measure(Affinity::Flow, false);
}

#[test]
fn per_flow_split_within_two_points_for_sequential_ports() {
    measure(Affinity::Flow, true);
}

#[test]
fn per_client_split_within_two_points_at_every_step() {
    measure(Affinity::Client, false);
}

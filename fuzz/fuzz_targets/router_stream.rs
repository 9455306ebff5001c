//! A stream of arbitrary frames into both sides of a router shadowing one address, with time
//! moving and control actions in between: nothing panics and the split stays in range.
#![no_main]

use core::time::Duration;

use ipshadow_core::testkit::{Harness, X};
use ipshadow_core::{CongestionControlParameters, MigrationOptions, Mode, RouterConfig, Side};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mode = if data.first().is_some_and(|b| b & 1 == 1) { Mode::Replica } else { Mode::Independent };
    let options = MigrationOptions { mode, ..Default::default() };
    let mut h = Harness::new(RouterConfig { max_flows: 32, ..Default::default() }, options, CongestionControlParameters::default());
    let _ = h.router.lease_bound(X, h.now);
    // Records: [kind, len, bytes...].
    let mut rest = data.get(1..).unwrap_or_default();
    while let [kind, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (frame, next) = tail.split_at(n);
        match kind % 6 {
            0 => {
                let _ = h.inbound(frame);
            }
            1 => {
                let _ = h.from_vm(Side::Source, frame);
            }
            2 => {
                let _ = h.from_vm(Side::Destination, frame);
            }
            3 => h.advance(Duration::from_millis(u64::from(*len) * 50)),
            4 => {
                let now = h.now;
                let _ = match len % 6 {
                    0 => h.router.promote(X, now),
                    1 => h.router.abort(X, now),
                    2 => h.router.pause(X, now),
                    3 => h.router.resume(X, now),
                    // A deadline soon: the closing window and the graceful end run too.
                    4 => h.router.set_deadline(X, Some(now + Duration::from_millis(u64::from(*len) * 100))),
                    _ => h.router.cut_over(X, now),
                };
            }
            _ => while h.router.poll_transmit().is_some() {},
        }
        if let Some(e) = h.router.entry(X) {
            assert!((0.0..=100.0).contains(&e.traffic_split_percentage));
        }
        rest = next;
    }
    if mode == Mode::Independent {
        assert!(h.leaks.is_empty(), "{:?}", h.leaks);
    }
});

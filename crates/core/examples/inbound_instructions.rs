//! Runs the inbound decision over a fixed packet sequence, for instruction counting under
//! `valgrind --tool=callgrind --toggle-collect=*measured_loop*` (see bench/inbound-decision.sh).
//! Usage: inbound_instructions hot|big [packets]

use std::hint::black_box;

use ipshadow_core::testkit::scenario;
use ipshadow_core::{InboundVerdict, Instant, NullSink, ShadowRouter};

#[inline(never)]
fn measured_loop(router: &mut ShadowRouter<NullSink>, frames: &[&[u8]], out: &mut Vec<InboundVerdict>) {
    out.clear();
    router.inbound_batch(frames, Instant::from_secs(2), out);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "hot".to_owned());
    let packets: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let s = match which.as_str() {
        "hot" => scenario(1_000, 1, packets),
        "big" => scenario(1_000_000, 10_000, packets),
        other => {
            eprintln!("unknown scenario {other}: use hot or big");
            std::process::exit(2);
        }
    };
    let mut router = s.router;
    let frames: Vec<&[u8]> = s.frames.iter().map(Vec::as_slice).collect();
    let mut out = Vec::with_capacity(frames.len());
    measured_loop(&mut router, &frames, &mut out);
    let delivered = out.iter().filter(|v| matches!(v, InboundVerdict::Deliver(_))).count();
    println!("scenario={which} packets={} delivered={delivered}", frames.len());
    black_box(out);
}

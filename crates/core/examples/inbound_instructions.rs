//! Runs the inbound decision over a fixed packet sequence, for instruction counting under
//! `valgrind --tool=callgrind --toggle-collect=*measured_loop*` (see bench/inbound-decision.sh).
//! Usage: inbound_instructions hot|big [packets] [batch|single]

use std::hint::black_box;

use ipshadow_core::testkit::{Scenario, ring_frames, scenario};
use ipshadow_core::{InboundVerdict, Instant, NullSink, ShadowRouter};

#[inline(never)]
fn measured_loop(router: &mut ShadowRouter<NullSink>, frames: &[&[u8]], batch: bool, out: &mut Vec<InboundVerdict>) {
    out.clear();
    let now = Instant::from_secs(2);
    if batch {
        router.inbound_batch(frames, now, out);
    } else {
        out.extend(frames.iter().map(|f| router.inbound(f, now)));
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "hot".to_owned());
    let packets: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let batch = args.next().is_none_or(|m| m != "single");
    let Scenario { mut router, ring, frame_len } = match which.as_str() {
        "hot" => scenario(1_000, 1, packets),
        "big" => scenario(1_000_000, 10_000, packets),
        other => {
            eprintln!("unknown scenario {other}: use hot or big");
            std::process::exit(2);
        }
    };
    let frames = ring_frames(&ring, frame_len);
    let (mean, longest) = router.flow_probe_lengths();
    eprintln!("flow table: {} flows, probe distance mean {mean:.2} longest {longest}", router.flow_count());
    let mut out = Vec::with_capacity(frames.len());
    measured_loop(&mut router, &frames, batch, &mut out);
    let delivered = out.iter().filter(|v| matches!(v, InboundVerdict::Deliver(_))).count();
    println!("scenario={which} packets={} delivered={delivered}", frames.len());
    black_box(out);
}

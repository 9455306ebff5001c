//! The inbound decision in ns per packet: a hot table (1k flows on one shadowed address) and a
//! large one (1M flows over 10k shadowed addresses, packets in random flow order).
//!
//! Run: `cargo bench -p ipshadow-core --bench inbound`. Each packet is a full Ethernet frame:
//! the figure includes parsing, the shadowing-table lookup, the flow lookup and the state update.

use core::time::Duration;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ipshadow_core::Instant;
use ipshadow_core::testkit::{Scenario, ring_frames, scenario};
use ipshadow_core::wire::parse_frame;
fn bench(c: &mut Criterion) {
    let now = Instant::from_secs(2);
    let mut group = c.benchmark_group("inbound");
    group.measurement_time(Duration::from_secs(8));

    let Scenario { mut router, ring, frame_len } = scenario(1_000, 1, 4096);
    let frames = ring_frames(&ring, frame_len);
    group.throughput(Throughput::Elements(frames.len() as u64));
    group.bench_function("hot_1k_flows/one_by_one", |b| {
        b.iter(|| {
            for f in &frames {
                black_box(router.inbound(black_box(f), now));
            }
        })
    });
    let mut out = Vec::with_capacity(frames.len());
    group.bench_function("hot_1k_flows/batch", |b| {
        b.iter(|| {
            out.clear();
            router.inbound_batch(black_box(&frames), now, &mut out);
            black_box(&out);
        })
    });
    let parsed: Vec<_> = frames.iter().map(|f| parse_frame(f).expect("valid")).collect();
    group.bench_function("hot_1k_flows/decision_only", |b| {
        b.iter(|| {
            for p in &parsed {
                black_box(router.inbound_packet(black_box(p), now));
            }
        })
    });
    group.bench_function("parse_only", |b| {
        b.iter(|| {
            for f in &frames {
                black_box(parse_frame(black_box(f)).ok());
            }
        })
    });
    drop(router);

    let Scenario { mut router, ring, frame_len } = scenario(1_000_000, 10_000, 1 << 20);
    let frames = ring_frames(&ring, frame_len);
    let chunk = 4096;
    group.throughput(Throughput::Elements(chunk as u64));
    let mut at = 0;
    group.bench_function("1M_flows_10k_ips/one_by_one", |b| {
        b.iter(|| {
            for f in &frames[at..at + chunk] {
                black_box(router.inbound(black_box(f), now));
            }
            at = (at + chunk) % frames.len();
        })
    });
    let mut out = Vec::with_capacity(chunk);
    group.bench_function("1M_flows_10k_ips/batch", |b| {
        b.iter(|| {
            out.clear();
            router.inbound_batch(black_box(&frames[at..at + chunk]), now, &mut out);
            black_box(&out);
            at = (at + chunk) % frames.len();
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

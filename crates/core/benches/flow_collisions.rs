//! Flow keys built to collide under the flow table's old constant hash key (issue 13 item 4): ns
//! per inbound packet of those flows, and their probe distances, under the old key and under the
//! product's key drawn at random per process. The table has the default size (1M flows).
//!
//! Run: `cargo bench -p ipshadow-core --bench flow_collisions` (or `bench/flow-collisions.sh`).
//! Prints the probe distances first; criterion's figures are per packet (one flow lookup each,
//! plus parsing and the state update).

use core::time::Duration;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ipshadow_core::testkit::{Harness, OLD_FLOW_HASH_KEY, X, colliding_flow_keys, tcp};
use ipshadow_core::wire::TcpFlags as F;
use ipshadow_core::{CongestionControlParameters, FlowKey, InboundVerdict, MigrationOptions, RouterConfig};

/// A harness whose table holds `keys` (as embryonic flows) hashed with `key`, and an ACK frame
/// of each.
fn loaded(keys: &[FlowKey], key: Option<u64>) -> (Harness, Vec<Vec<u8>>) {
    let config = RouterConfig { hash_key: key, ..RouterConfig::default() };
    let mut h = Harness::new(config, MigrationOptions::default(), CongestionControlParameters::default());
    let end = |k: &FlowKey| ((k.client_ip, k.client_port), (k.shadow_ip, k.shadow_port));
    for k in keys {
        let (c, s) = end(k);
        assert!(matches!(h.inbound(&tcp(c, s, F::SYN, 1, 0, &[])), InboundVerdict::Deliver(_)));
    }
    let frames = keys
        .iter()
        .map(|k| {
            let (c, s) = end(k);
            tcp(c, s, F::ACK, 2, 0, &[])
        })
        .collect();
    (h, frames)
}

fn bench(c: &mut Criterion) {
    let max_flows = RouterConfig::default().max_flows;
    let mut group = c.benchmark_group("flow_collisions");
    group.measurement_time(Duration::from_secs(4));
    for n in [250, 1000, 4000] {
        let keys = colliding_flow_keys(max_flows, OLD_FLOW_HASH_KEY, n, (X, 80));
        group.throughput(Throughput::Elements(n as u64));
        for (name, key) in [("old_constant_key", Some(OLD_FLOW_HASH_KEY)), ("random_key", None)] {
            let (mut h, frames) = loaded(&keys, key);
            let (mean, longest) = h.router.flow_probe_lengths();
            println!("flow_collisions/{name}/{n}: probe distance mean {mean:.1}, longest {longest}");
            let now = h.now;
            group.bench_function(format!("{name}/{n}"), |b| {
                b.iter(|| {
                    for f in &frames {
                        black_box(h.router.inbound(black_box(f), now));
                    }
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

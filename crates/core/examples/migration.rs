//! A migration of 10.0.0.10 from VM A to VM B through the sans-IO core, with synthetic
//! clients: connections open at a steady rate, exchange data, and close after a random
//! lifetime; both VMs answer every packet the router delivers (RST when they have no socket,
//! as Linux does). Prints the split, the connections on A and B, and what the router dropped.
//!
//! This is not the simulator (real TCP stacks arrive with `ipshadow simulate`); it shows the
//! core's decisions, ramp and cut-over at work. Run: `cargo run --release -p ipshadow-core --example migration`.

use core::time::Duration;
use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipshadow_core::testkit::{Harness, X, tcp};
use ipshadow_core::wire::TcpFlags as F;
use ipshadow_core::{
    CongestionControlParameters, Deliver, EgressVerdict, Event, InboundVerdict, MigrationOptions, Ramp, RampStep,
    RouterConfig, Side,
};

struct Conn {
    side: Side,
    ends_at: u64,
    client_seq: u32,
    server_seq: u32,
}

fn main() {
    let ramp = Ramp::Steps {
        steps: [5.0, 25.0, 50.0, 100.0].iter().map(|&pct| RampStep { pct, hold: Duration::from_secs(20) }).collect(),
    };
    let options = MigrationOptions { ramp, salt: 7, ..Default::default() };
    let mut h = Harness::new(RouterConfig::default(), options, CongestionControlParameters::default());
    let start = h.now;
    let mut conns: HashMap<(Ipv4Addr, u16), Conn> = HashMap::new();
    let (mut opened, mut completed, mut broken) = (0u64, 0u64, 0u64);
    let mut rng = 0x1234_5678_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    println!("  t(s)  split%  conns on A  conns on B  conflicts  suppressed");
    for tick in 0..1300u64 {
        let t_ms = tick * 100;
        if tick == 50 {
            h.router.lease_bound(X, h.now).expect("entry exists");
        }
        if tick == 60 {
            h.router.set_deadline(X, Some(start + Duration::from_secs(110))).expect("entry exists");
        }
        // 20 new connections per second, lifetimes 1..60 s.
        for _ in 0..2 {
            let client = (Ipv4Addr::from_bits(0xc633_6400 | (next() as u32 & 0xff)), 1024 + (next() % 60_000) as u16);
            if conns.contains_key(&client) {
                continue;
            }
            let InboundVerdict::Deliver(d) = h.inbound(&tcp(client, (X, 80), F::SYN, 100, 0, &[])) else { continue };
            let side = if d == Deliver::Destination { Side::Destination } else { Side::Source };
            h.from_vm(side, &tcp((X, 80), client, F::SYN | F::ACK, 5000, 101, &[]));
            h.inbound(&tcp(client, (X, 80), F::ACK, 101, 5001, &[]));
            conns.insert(
                client,
                Conn { side, ends_at: t_ms + 1000 + next() % 59_000, client_seq: 101, server_seq: 5001 },
            );
            opened += 1;
        }
        // Each connection sends a request every tick; its VM(s) answer.
        let mut done = Vec::new();
        for (client, c) in conns.iter_mut() {
            let verdict = h.inbound(&tcp(*client, (X, 80), F::ACK | F::PSH, c.client_seq, c.server_seq, b"ping"));
            let targets: &[Side] = match verdict {
                InboundVerdict::Deliver(Deliver::Source) => &[Side::Source],
                InboundVerdict::Deliver(Deliver::Destination) => &[Side::Destination],
                InboundVerdict::Deliver(Deliver::Both) => &[Side::Source, Side::Destination],
                _ => &[],
            };
            c.client_seq += 4;
            let mut answered = false;
            for &vm in targets {
                // The VM with the socket answers with data; the other one resets.
                let reply = if vm == c.side {
                    tcp((X, 80), *client, F::ACK | F::PSH, c.server_seq, c.client_seq, b"pong")
                } else {
                    tcp((X, 80), *client, F::RST, c.server_seq, 0, &[])
                };
                if h.from_vm(vm, &reply) == EgressVerdict::Forward {
                    if vm == c.side {
                        answered = true;
                    } else {
                        broken += 1; // a reset reached the client
                        done.push(*client);
                    }
                }
            }
            if answered {
                c.server_seq += 4;
            }
            if t_ms >= c.ends_at {
                h.inbound(&tcp(*client, (X, 80), F::FIN | F::ACK, c.client_seq, c.server_seq, &[]));
                h.from_vm(c.side, &tcp((X, 80), *client, F::FIN | F::ACK, c.server_seq, c.client_seq + 1, &[]));
                completed += 1;
                done.push(*client);
            }
        }
        for client in done {
            conns.remove(&client);
        }
        h.advance(Duration::from_millis(100));
        for e in h.events() {
            if let Event::MigrationEnded { report, .. } = e {
                println!(
                    "  cut-over at {:.0} s: {} flows still on A, {} reset cleanly, {} handed to B",
                    (h.now - start).as_secs_f64(),
                    report.flows_open_on_losing_side,
                    report.reset,
                    report.handed_over
                );
                let cut: Vec<_> = conns.iter().filter(|(_, c)| c.side == Side::Source).map(|(k, _)| *k).collect();
                for k in cut {
                    conns.remove(&k);
                }
                for c in conns.values_mut() {
                    c.side = Side::Destination;
                }
            }
        }
        if tick % 100 == 0 {
            let on = |s| conns.values().filter(|c| c.side == s).count();
            let entry = h.router.entry(X);
            println!(
                "{:6.0}  {:6.1}  {:10}  {:10}  {:9}  {:10}",
                (h.now - start).as_secs_f64(),
                entry.map_or(100.0, |e| e.traffic_split_percentage),
                on(Side::Source),
                on(Side::Destination),
                h.router.counters().conflicts.total(),
                h.router.counters().resets_suppressed,
            );
        }
    }
    println!(
        "opened {opened}, completed {completed}, broken {broken}, open {}, leaked non-owner segments {}",
        conns.len(),
        h.leaks.len()
    );
}

//! Property tests: random packet streams and control actions never panic, the split stays in
//! [0, 100], a flow's owner changes only through the events that allow it, and no reply from a
//! non-owner leaves the router.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use core::time::Duration;
use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipshadow_core::testkit::{Harness, X, icmp_echo, make_fragment, tcp, udp};
use ipshadow_core::wire::parse_frame;
use ipshadow_core::{
    Affinity, CongestionControlParameters, Event, FlowKey, MigrationOptions, Mode, Owner, Ramp, RouterConfig, Side,
};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Inbound { client: u8, port: u8, flags: u8, seq: u16, data: bool },
    Egress { b: bool, client: u8, port: u8, flags: u8, seq: u16, data: bool },
    Udp { inbound: bool, b: bool, client: u8, port: u8 },
    Ping { client: u8, id: u8 },
    Fragment { inbound: bool, b: bool, client: u8, ident: u8, first: bool },
    Garbage(Vec<u8>),
    Mangled { inbound: bool, at: u8, value: u8 },
    Advance(u16),
    Control(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let flags = prop::sample::select(vec![0x02u8, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0x01]);
    prop_oneof![
        4 => (any::<u8>(), 0u8..8, flags.clone(), any::<u16>(), any::<bool>())
            .prop_map(|(client, port, flags, seq, data)| Op::Inbound { client: client % 6, port, flags, seq, data }),
        4 => (any::<bool>(), any::<u8>(), 0u8..8, flags, any::<u16>(), any::<bool>())
            .prop_map(|(b, client, port, flags, seq, data)| Op::Egress { b, client: client % 6, port, flags, seq, data }),
        1 => (any::<bool>(), any::<bool>(), any::<u8>(), 0u8..4)
            .prop_map(|(inbound, b, client, port)| Op::Udp { inbound, b, client: client % 6, port }),
        1 => (any::<u8>(), 0u8..4).prop_map(|(client, id)| Op::Ping { client: client % 6, id }),
        1 => (any::<bool>(), any::<bool>(), any::<u8>(), 0u8..4, any::<bool>())
            .prop_map(|(inbound, b, client, ident, first)| Op::Fragment { inbound, b, client: client % 6, ident, first }),
        1 => prop::collection::vec(any::<u8>(), 0..80).prop_map(Op::Garbage),
        1 => (any::<bool>(), 0u8..60, any::<u8>()).prop_map(|(inbound, at, value)| Op::Mangled { inbound, at, value }),
        2 => (0u16..5000).prop_map(Op::Advance),
        1 => (0u8..8).prop_map(Op::Control),
    ]
}

fn client(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, n + 1)
}

/// The owner each flow must have, rebuilt from the events alone; and a fast path's flow map,
/// kept by the events as the data plane keeps it.
#[derive(Default)]
struct Model {
    owners: HashMap<FlowKey, Owner>,
    fast_path: HashMap<FlowKey, Side>,
    violations: Vec<String>,
}

impl Model {
    fn apply(&mut self, events: Vec<Event>) {
        for e in events {
            match e {
                Event::FlowStarted { key, owner, .. } | Event::FlowEnded { key, owner, .. } => {
                    self.fast_path.remove(&key);
                    if let (Some(side), Event::FlowStarted { .. }) = (owner.side(), &e) {
                        self.fast_path.insert(key, side);
                    }
                }
                Event::OwnerLearned { key, owner: side, .. } | Event::HandOff { key, to: side, .. } => {
                    self.fast_path.insert(key, side);
                }
                Event::FlowRetired { key, .. } => {
                    self.fast_path.remove(&key);
                }
                _ => {}
            }
            match e {
                Event::FlowStarted { key, owner, .. } => {
                    self.owners.insert(key, owner);
                }
                Event::FlowEnded { key, .. } => {
                    self.owners.remove(&key);
                }
                Event::OwnerLearned { key, owner, .. } => match self.owners.get(&key) {
                    Some(Owner::Unknown) => {
                        self.owners.insert(key, owner.into());
                    }
                    other => self.violations.push(format!("{key}: learned {owner:?} but owner was {other:?}")),
                },
                Event::HandOff { key, from, to, .. } => {
                    if let Some(o) = self.owners.get(&key)
                        && *o != Owner::from(from)
                    {
                        self.violations.push(format!("{key}: hand-off from {from:?} but owner was {o:?}"));
                    }
                    self.owners.insert(key, to.into());
                }
                Event::MigrationEnded { .. } => self.owners.clear(),
                _ => {}
            }
        }
    }
}

fn run(ops: Vec<Op>, mode: Mode, affinity: Affinity) -> Result<(), TestCaseError> {
    let options = MigrationOptions { mode, affinity, ramp: Ramp::Linear { pct_per_sec: 5.0 }, ..Default::default() };
    let config = RouterConfig { max_flows: 64, ..Default::default() };
    let mut h = Harness::new(config, options, CongestionControlParameters::default());
    let mut model = Model::default();
    let mut last_frame = tcp((client(0), 1000), (X, 80), 0x02, 1, 0, &[]);
    for op in ops {
        let side = |b: bool| if b { Side::Destination } else { Side::Source };
        match op {
            Op::Inbound { client: c, port, flags, seq, data } => {
                let f = tcp(
                    (client(c), 1000 + u16::from(port)),
                    (X, 80),
                    flags,
                    u32::from(seq),
                    7,
                    if data { b"abc" } else { b"" },
                );
                h.inbound(&f);
                last_frame = f;
            }
            Op::Egress { b, client: c, port, flags, seq, data } => {
                let f = tcp(
                    (X, 80),
                    (client(c), 1000 + u16::from(port)),
                    flags,
                    u32::from(seq),
                    7,
                    if data { b"xyz" } else { b"" },
                );
                h.from_vm(side(b), &f);
                last_frame = f;
            }
            Op::Udp { inbound, b, client: c, port } => {
                if inbound {
                    h.inbound(&udp((client(c), 5000 + u16::from(port)), (X, 53), b"q"));
                } else {
                    h.from_vm(side(b), &udp((X, 53), (client(c), 5000 + u16::from(port)), b"a"));
                }
            }
            Op::Ping { client: c, id } => {
                h.inbound(&icmp_echo(client(c), X, u16::from(id), 1, false));
            }
            Op::Fragment { inbound, b, client: c, ident, first } => {
                let (off, more, keep) = if first { (0, true, 16) } else { (2, false, 8) };
                if inbound {
                    let f = udp((client(c), 7000), (X, 53), &[0; 40]);
                    h.inbound(&make_fragment(f, u16::from(ident), off, more, keep));
                } else {
                    let f = udp((X, 53), (client(c), 7000), &[0; 40]);
                    h.from_vm(side(b), &make_fragment(f, u16::from(ident), off, more, keep));
                }
            }
            Op::Garbage(bytes) => {
                h.inbound(&bytes);
                h.from_vm(Side::Source, &bytes);
            }
            Op::Mangled { inbound, at, value } => {
                let mut f = last_frame.clone();
                let i = usize::from(at) % f.len();
                f[i] = value;
                let _ = parse_frame(&f);
                if inbound {
                    h.inbound(&f);
                } else {
                    h.from_vm(Side::Destination, &f);
                }
            }
            Op::Advance(ms) => h.advance(Duration::from_millis(u64::from(ms))),
            Op::Control(n) => {
                let now = h.now;
                let r = &mut h.router;
                let _ = match n {
                    0 => r.lease_bound(X, now),
                    1 => r.pause(X, now),
                    2 => r.resume(X, now),
                    3 => r.promote(X, now),
                    4 => r.abort(X, now),
                    5 => r.set_deadline(X, Some(now + Duration::from_secs(3))),
                    6 => r.cut_over(X, now),
                    _ => r.finish_rollback(X, now),
                };
            }
        }
        let events = h.events();
        model.apply(events);
        if let Some(e) = h.router.entry(X) {
            prop_assert!((0.0..=100.0).contains(&e.traffic_split_percentage));
        }
        for (key, owner) in &model.owners {
            if let Some(flow) = h.router.flow(key) {
                prop_assert_eq!(flow.owner, *owner, "flow {} changed owner without an event", key);
            }
        }
        prop_assert!(model.violations.is_empty(), "{:?}", model.violations);
        // Every change of a flow's owner, and every flow leaving the table or retired, was told.
        let fast_path: HashMap<FlowKey, Side> = h.router.fast_path_flows().into_iter().collect();
        prop_assert_eq!(&fast_path, &model.fast_path, "a fast path's flow map kept by the events");
    }
    if mode == Mode::Independent {
        prop_assert!(h.leaks.is_empty(), "non-owner segments left the router: {:?}", h.leaks);
    }
    // The census the forecast rests on is kept in step with the table by every path that opens,
    // closes, expires, evicts or hands off a flow.
    if let Some(p) = h.router.patterns(X, h.now) {
        let (open, idle) = h.router.scan_open_flows(X);
        prop_assert_eq!([p.source.open, p.destination.open], open, "census of open flows");
        prop_assert_eq!([p.source.idle, p.destination.idle], idle, "census of idle flows");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn independent_streams_keep_the_invariants(ops in prop::collection::vec(op(), 1..250)) {
        run(ops, Mode::Independent, Affinity::Flow)?;
    }

    #[test]
    fn replica_streams_keep_the_invariants(ops in prop::collection::vec(op(), 1..250)) {
        run(ops, Mode::Replica, Affinity::Flow)?;
    }

    #[test]
    fn client_affinity_streams_keep_the_invariants(ops in prop::collection::vec(op(), 1..250)) {
        run(ops, Mode::Independent, Affinity::Client)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_parser(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_frame(&bytes);
    }
}

//! Arbitrary frames into every port of the layer-2 router node (the data plane's edge), each
//! first through the checksum completer the AF_PACKET port applies to veth frames: nothing
//! panics, nothing the node sends is longer than what came in plus an ARP reply, and a frame to
//! a VM never goes out on another VM's port unless the core delivered it there.
#![no_main]

use core::time::Duration;
use std::net::Ipv4Addr;

use ipshadow_core::l2::{Out, RouterNode};
use ipshadow_core::{CongestionControlParameters, Instant, MigrationOptions, RouterConfig, ShadowingEntry, VmId};
use ipshadow_dataplane::checksum::complete_l4_checksum;
use libfuzzer_sys::fuzz_target;

const X: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);

fuzz_target!(|data: &[u8]| {
    let config = RouterConfig { max_flows: 64, ..RouterConfig::default() };
    let ports = vec![(VmId::from("vm-a"), [2, 0xa, 0, 0, 0, 1]), (VmId::from("vm-b"), [0; 6])];
    let mut now = Instant::from_secs(1_000);
    let mut node = RouterNode::new(config, [2, 0xee, 0, 0, 0, 1], [2, 0xee, 0, 0, 0, 2], Ipv4Addr::new(10, 0, 0, 1), ports, now);
    let entry = ShadowingEntry::new(X, "vm-a".into(), "vm-b".into(), now, CongestionControlParameters::default(), MigrationOptions::default());
    if data.first().is_some_and(|b| b & 1 == 1) {
        node.core.add_entry(entry, now).expect("a valid entry");
        node.shadow_ports(X, 0, 1);
        let _ = node.core.lease_bound(X, now);
    } else {
        node.core.assign_address(X, ipshadow_core::VmRef(0));
    }
    let mut out = Vec::new();
    // Records: [port, len, bytes...]; port 0 is the provider side, 1 and 2 the VMs.
    let mut rest = data.get(1..).unwrap_or_default();
    while let [port, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (bytes, next) = tail.split_at(n);
        let mut frame = bytes.to_vec();
        let _ = complete_l4_checksum(&mut frame);
        match port % 4 {
            0 => node.from_provider(frame, now, &mut out),
            1 => node.from_vm(0, frame, now, &mut out),
            2 => node.from_vm(1, frame, now, &mut out),
            _ => {
                now = now + Duration::from_millis(u64::from(*len) * 100);
                node.poll(now, &mut out);
                node.probe(0, X, &mut out);
            }
        }
        for o in out.drain(..) {
            let (Out::Provider(f) | Out::Vm(_, f)) = o;
            assert!(f.len() <= n.max(64) + 64, "a frame grew from {n} to {}", f.len());
        }
        rest = next;
    }
});

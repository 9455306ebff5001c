//! A router restarted behind its XDP fast path (issue 16: "no owner relearned"): the flows its
//! predecessor forwarded are in the pinned flow map, and the new core takes each back with its
//! owner, also from a frame that comes up before the first sync has switched the program on (a
//! restarted router's first turn takes the frames that waited in its new sockets). Learning the
//! owner again would deliver the frame to both VMs.
//!
//! As in `fast_path_flood.rs`, a [`Forwarder`] on in-memory ports runs beside the program,
//! which is attached nowhere and runs with `BPF_PROG_TEST_RUN`; its flows are pinned in a bpffs
//! the test mounts (and unmounts). Needs root: CI runs it; elsewhere it says so and stops.

#![allow(clippy::unwrap_used)]

mod common;

use core::time::Duration;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::MemPort;
use common::xdp::{MAC_A, MAC_B, addressed, namespace, shadowing_forwarder};
use ipshadow_core::testkit::{X, tcp};
use ipshadow_core::{FlowKey, Instant, Owner};
use ipshadow_dataplane::Forwarder;
use ipshadow_xdp::XDP_REDIRECT;

const SYN: u8 = 0x02;
const SYN_ACK: u8 = 0x12;
const ACK: u8 = 0x10;
const PSH_ACK: u8 = 0x18;
const CLIENT: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 51, 100, 9), 41_000);

/// A bpffs mounted for the test, unmounted and removed when dropped (also on failure).
struct Bpffs(PathBuf);

impl Bpffs {
    fn mount() -> Self {
        let dir = std::env::temp_dir().join(format!("ipshadow-restart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&dir).status().is_ok_and(|s| s.success());
        assert!(ok, "mount -t bpf bpf {} (util-linux mount, as root)", dir.display());
        Self(dir)
    }

    fn pins(&self) -> PathBuf {
        self.0.join("router")
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A router's forwarder with X shadowed at 50 % between A (port 0) and B (port 1), its fast
/// path's flows pinned in `pins`; with `first_turn`, one turn at `now`, which switches the
/// program on.
fn router(ifs: [u32; 3], pins: &Path, now: Instant, first_turn: bool) -> Forwarder<MemPort> {
    let mut fwd = shadowing_forwarder(ifs, 4096, Some(pins.into()), now);
    if first_turn {
        fwd.step(now).unwrap();
    }
    fwd
}

/// Runs `frame` through the program as if it arrived on `interface`; it must be redirected.
/// Returns the port it went to (0: A, 1: B, 2: the provider).
fn forwarded(fwd: &mut Forwarder<MemPort>, ifs: [u32; 3], interface: usize, frame: Vec<u8>) -> usize {
    let (interface, frame) = addressed(interface, frame);
    let run = fwd.fast.as_mut().unwrap().fast_path().test_run(&frame, ifs[interface]).unwrap();
    assert_eq!(run.action, XDP_REDIRECT, "forwarded by the program");
    match &run.frame[0..6] {
        d if d == MAC_A => 0,
        d if d == MAC_B => 1,
        _ => 2,
    }
}

#[test]
fn a_restarted_router_takes_a_flow_back_from_the_pinned_map_before_its_first_sync() {
    let Some(ifs) = namespace() else { return };
    let bpffs = Bpffs::mount();
    let t0 = Instant::from_secs(1);
    let key = FlowKey { client_ip: CLIENT.0, client_port: CLIENT.1, shadow_ip: X, shadow_port: 80, protocol: 6 };

    // The first router: a connection whose handshake the program forwards and decides.
    let mut first = router(ifs, &bpffs.pins(), t0, true);
    let owner = forwarded(&mut first, ifs, 0, tcp(CLIENT, (X, 80), SYN, 1000, 0, &[]));
    assert!(owner < 2);
    assert_eq!(forwarded(&mut first, ifs, 1 + owner, tcp((X, 80), CLIENT, SYN_ACK, 5000, 1001, &[])), 2);
    assert_eq!(forwarded(&mut first, ifs, 0, tcp(CLIENT, (X, 80), ACK, 1001, 5001, &[])), owner);
    first.step(t0 + Duration::from_millis(1)).unwrap();
    let expected = if owner == 0 { Owner::Source } else { Owner::Destination };
    assert_eq!(first.node.core.flow(&key).map(|f| f.owner), Some(expected), "the core replayed the handshake");
    drop(first); // killed: its flow map stays pinned

    // The new router, before its first turn: the program is off, so the client's next segment
    // comes up to the loop, where the core does not know the flow yet.
    let t1 = t0 + Duration::from_secs(1);
    let mut second = router(ifs, &bpffs.pins(), t1, false);
    second.provider.rx.push_back(addressed(0, tcp(CLIENT, (X, 80), PSH_ACK, 1001, 5001, b"ping")).1);
    second.step(t1).unwrap();
    let to: Vec<usize> = second.vms.iter().map(|vm| vm.tx.len()).collect();
    let mut only_owner = vec![0, 0];
    only_owner[owner] = 1;
    assert_eq!(to, only_owner, "delivered to its owner alone, as before the restart");
    assert_eq!(second.node.core.flow(&key).map(|f| f.owner), Some(expected));
    assert_eq!(second.node.core.entry(X).unwrap().counters.flows_learned, 0, "no owner learned again");
    assert_eq!(second.fast.as_ref().unwrap().status().flows_restored, 1);
}

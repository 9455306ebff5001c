//! A simulated VM: the address X on one port, served by several smoltcp stacks behind an
//! RSS-style demultiplexer.
//!
//! smoltcp looks a segment's socket up by scanning every socket, so one stack holding a thousand
//! connections would make the simulation quadratic. A VM is therefore `shards` stacks with the
//! same MAC and address, and its port hands each frame to the stack its 4-tuple hashes to, as a
//! multi-queue NIC steers flows to CPUs. Each connection lives wholly in one stack and behaves
//! exactly as it would in a single one: a segment for a connection the VM does not have still
//! meets a stack without it, which answers with a RST.

use std::net::Ipv4Addr;

use ipshadow_core::Instant;

use crate::app::server::ServerApp;
use crate::host::{Host, HostConfig};

/// Listening sockets kept ready in each stack.
const BACKLOG: usize = 8;

/// One stack of a VM and its server application.
pub struct Shard {
    /// The stack.
    pub host: Host,
    /// The service.
    pub app: ServerApp,
    /// When it next needs to run without input.
    pub wake: Option<Instant>,
}

/// A VM.
pub struct Vm {
    /// Its stacks.
    pub shards: Vec<Shard>,
    /// Its MAC address.
    pub mac: [u8; 6],
    /// False once the VM has died (fault injection): it neither receives nor sends.
    pub alive: bool,
}

impl Vm {
    /// A VM holding `ip/prefix` behind `gateway`. Stack `i` gets smoltcp seed `seed + i`, so a
    /// replica built with the same seed draws the same sequence numbers.
    pub fn new(
        mac: [u8; 6],
        ip: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
        seed: u64,
        shards: usize,
        now: Instant,
    ) -> Self {
        let shards = (0..shards.max(1) as u64)
            .map(|i| {
                let config = HostConfig { mac, ip, prefix, gateway: Some(gateway), seed: seed.wrapping_add(i) };
                let mut host = Host::new(config, now);
                let app = ServerApp::new(&mut host, BACKLOG);
                Shard { host, app, wake: Some(now) }
            })
            .collect();
        Self { shards, mac, alive: true }
    }

    /// Hands a frame from the wire to the stack(s) it is for.
    pub fn deliver(&mut self, frame: Vec<u8>) {
        if !self.alive {
            return;
        }
        match steer(&frame, self.shards.len()) {
            Steer::One(i) => self.shards[i].host.device.rx.push_back(frame),
            Steer::All => {
                for shard in &mut self.shards {
                    shard.host.device.rx.push_back(frame.clone());
                }
            }
        }
    }

    /// Requests answered by all stacks.
    pub fn requests(&self) -> u64 {
        self.shards.iter().map(|s| s.app.requests).sum()
    }

    /// Established connections over all stacks.
    pub fn established(&self) -> usize {
        self.shards.iter().map(|s| s.app.established(&s.host)).sum()
    }
}

enum Steer {
    One(usize),
    All,
}

/// Which stack gets a frame: TCP/UDP by the remote address and port; ARP replies to all (any
/// stack may be waiting for one); everything else to the first.
fn steer(frame: &[u8], shards: usize) -> Steer {
    if frame.len() < 14 {
        return Steer::One(0);
    }
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 if frame.len() >= 34 => {
            let ihl = usize::from(frame[14] & 0x0f) * 4;
            let l4 = 14 + ihl;
            if !matches!(frame[23], 6 | 17) || frame.len() < l4 + 4 {
                return Steer::One(0);
            }
            let src = u32::from_be_bytes([frame[26], frame[27], frame[28], frame[29]]);
            let port = u32::from(u16::from_be_bytes([frame[l4], frame[l4 + 1]]));
            let h = (u64::from(src) << 16 | u64::from(port)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            Steer::One(((h >> 32) % shards as u64) as usize)
        }
        0x0806 if frame.len() >= 22 && frame[21] == 2 => Steer::All,
        _ => Steer::One(0),
    }
}

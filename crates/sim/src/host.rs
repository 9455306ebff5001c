//! A simulated host: a smoltcp interface with one Ethernet port, its sockets, and its device.

use std::net::Ipv4Addr;

use ipshadow_core::Instant;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::wire::{EthernetAddress, IpCidr};

use crate::device::SimDevice;
use crate::{from_smoltcp, to_smoltcp};

/// What a host is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostConfig {
    /// Its MAC address.
    pub mac: [u8; 6],
    /// Its address.
    pub ip: Ipv4Addr,
    /// Prefix length of its segment.
    pub prefix: u8,
    /// Default gateway, if any.
    pub gateway: Option<Ipv4Addr>,
    /// smoltcp's random seed (initial sequence numbers, ephemeral ports): fixed for a repeatable run.
    pub seed: u64,
}

/// A host on a simulated segment.
pub struct Host {
    /// The TCP/IP stack.
    pub iface: Interface,
    /// Its sockets.
    pub sockets: SocketSet<'static>,
    /// Its port.
    pub device: SimDevice,
    /// Its configuration.
    pub config: HostConfig,
}

impl Host {
    /// A host with no sockets yet.
    pub fn new(config: HostConfig, now: Instant) -> Self {
        let mut device = SimDevice::new(1500);
        let mut iface_config = Config::new(EthernetAddress(config.mac).into());
        iface_config.random_seed = config.seed;
        let mut iface = Interface::new(iface_config, &mut device, to_smoltcp(now));
        iface.update_ip_addrs(|addrs| {
            // A fresh interface has room for its first address.
            let _ = addrs.push(IpCidr::new(config.ip.into(), config.prefix));
        });
        if let Some(gw) = config.gateway {
            // Adding the first default route cannot overflow the route table.
            let _ = iface.routes_mut().add_default_ipv4_route(gw);
        }
        Self { iface, sockets: SocketSet::new(Vec::new()), device, config }
    }

    /// Runs the stack at `now`: reads received frames, runs timers, queues frames to send.
    pub fn poll(&mut self, now: Instant) {
        self.iface.poll(to_smoltcp(now), &mut self.device, &mut self.sockets);
    }

    /// When the stack next needs [`Host::poll`] without new input.
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        self.iface.poll_at(to_smoltcp(now), &self.sockets).map(from_smoltcp)
    }
}

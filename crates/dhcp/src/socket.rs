//! The service's UDP socket: one socket on 0.0.0.0:67 serves every interface of the host. With
//! IP_PKTINFO (ip(7)) the kernel says, for each request, which interface it came in on; a
//! broadcast reply names that interface when it is sent, so it leaves where its client is, as
//! ISC dhcpd and Kea do. Without it, 255.255.255.255 follows the routing table: out one
//! interface of several VM segments, or nowhere when no route matches (the lab's router has
//! the gateway address as a /32 on each VM interface and no default route: ENETUNREACH).

use std::io::{ErrorKind, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::libc;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg, sendmsg, setsockopt, sockopt,
};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::DhcpConfig;
use crate::server::ReplyTo;

/// Receive buffer: room for the requests that arrive while a commit waits for the disk.
const RECEIVE_BUFFER: usize = 8 << 20;

/// Where a request came in, as the kernel reported it (IP_PKTINFO).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Arrival {
    /// Index of the interface it arrived on.
    pub(crate) ifindex: u32,
    /// The local address the kernel matched it to on that interface (`ipi_spec_dst`): for a
    /// broadcast request, that interface's address; 0.0.0.0 when it has none.
    pub(crate) local: Ipv4Addr,
}

/// The name of the interface a request arrived on. Looked up for each request, not kept: an
/// interface may be renamed, or removed and its index given to another, and at DHCP's rates
/// one ioctl per request costs nothing.
pub(crate) fn interface_name(arrival: Option<Arrival>) -> Option<String> {
    nix::net::if_::if_indextoname(arrival?.ifindex).ok()?.into_string().ok()
}

/// One way to send a reply: to an address, either by the routing table or pinned to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    /// Destination address and port.
    pub(crate) to: SocketAddrV4,
    /// `None`: the routing table decides; else out this interface from this source (IP_PKTINFO).
    pub(crate) via: Option<Via>,
}

/// An interface and source address given to the kernel with a datagram (IP_PKTINFO).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Via {
    /// Outgoing interface (`ipi_ifindex`).
    pub(crate) ifindex: u32,
    /// Source address (`ipi_spec_dst`); 0.0.0.0 lets the kernel pick the interface's address.
    pub(crate) source: Ipv4Addr,
}

/// The ways to send a reply, in order: the next is tried when the kernel refuses one for a
/// routing reason (see [`is_routing_error`]).
///
/// - To a relay (giaddr:67): the routing table only; the relay need not sit on the arrival link.
/// - Broadcast (255.255.255.255:68, RFC 2131 4.1): out the arrival interface, from the server
///   identifier (the address clients see in option 54), else from the interface's own address
///   when the server identifier is not local (the kernel refuses a non-local source).
/// - Unicast to ciaddr:68: the routing table first; when it has no route (ENETUNREACH), the
///   client is on the arrival link (it reached us without a relay), so out that interface.
pub(crate) fn routes(to: ReplyTo, arrival: Option<Arrival>, server_id: Ipv4Addr) -> Vec<Route> {
    let pinned = |to: SocketAddrV4| -> Vec<Route> {
        let Some(a) = arrival else { return Vec::new() };
        let mut sources = vec![server_id];
        if a.local != server_id {
            sources.push(a.local);
        }
        sources.into_iter().map(|source| Route { to, via: Some(Via { ifindex: a.ifindex, source }) }).collect()
    };
    let routed = |to: SocketAddrV4| Route { to, via: None };
    match to {
        ReplyTo::Relay(ip) => vec![routed(SocketAddrV4::new(ip, 67))],
        ReplyTo::Unicast(ip) => {
            let to = SocketAddrV4::new(ip, 68);
            let mut all = vec![routed(to)];
            all.extend(pinned(to));
            all
        }
        ReplyTo::Broadcast => {
            let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, 68);
            let all = pinned(to);
            // Without IP_PKTINFO (not reported for this datagram) routing is all there is.
            if all.is_empty() { vec![routed(to)] } else { all }
        }
    }
}

/// Whether a failed send may succeed another way: no route, or a source the kernel will not
/// use. Other errors (a full queue) are like a lost datagram: the client retries.
pub(crate) fn is_routing_error(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::NetworkUnreachable
            | ErrorKind::HostUnreachable
            | ErrorKind::AddrNotAvailable
            | ErrorKind::InvalidInput
    )
}

/// The server's socket: datagrams in with their [`Arrival`], replies out by [`Route`].
pub(crate) struct DhcpSocket {
    socket: UdpSocket,
    /// Control-message buffer for one IP_PKTINFO, reused by every receive.
    cmsg: Vec<u8>,
}

impl DhcpSocket {
    /// Binds `config.listen` (to `config.interface` only, when set) with IP_PKTINFO on.
    pub(crate) fn bind(config: &DhcpConfig) -> Result<Self, (String, std::io::Error)> {
        let err = |what: &str| {
            let what = what.to_owned();
            move |e| (what, e)
        };
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err("create"))?;
        socket.set_reuse_address(true).map_err(err("SO_REUSEADDR"))?;
        socket.set_broadcast(true).map_err(err("SO_BROADCAST"))?;
        // The kernel caps this at net.core.rmem_max; a smaller buffer only means earlier drops.
        let _ = socket.set_recv_buffer_size(RECEIVE_BUFFER);
        if let Some(interface) = &config.interface {
            // A filter: requests from other interfaces are not seen at all.
            socket
                .bind_device(Some(interface.as_bytes()))
                .map_err(err(&format!("bind to interface {interface} (needs root)")))?;
        }
        socket.bind(&SocketAddr::V4(config.listen).into()).map_err(err(&format!("bind {}", config.listen)))?;
        // The blocking wait for a batch's first request wakes at least this often, to expire
        // leases and see `stop`.
        socket.set_read_timeout(Some(Duration::from_millis(500))).map_err(err("set timeout"))?;
        let socket: UdpSocket = socket.into();
        setsockopt(&socket, sockopt::Ipv4PacketInfo, &true).map_err(|e| ("IP_PKTINFO".to_owned(), e.into()))?;
        Ok(Self { socket, cmsg: nix::cmsg_space!(libc::in_pktinfo) })
    }

    /// How long a waiting receive blocks at most.
    pub(crate) fn set_wait(&self, wait: Duration) -> std::io::Result<()> {
        self.socket.set_read_timeout(Some(wait))
    }

    /// The bound address.
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()
    }

    /// Receives one datagram into `buf`: its length and where it arrived (`None` if the kernel
    /// did not say). `wait`: block up to the read timeout; else return WouldBlock at once.
    pub(crate) fn recv(&mut self, buf: &mut [u8], wait: bool) -> std::io::Result<(usize, Option<Arrival>)> {
        let flags = if wait { MsgFlags::empty() } else { MsgFlags::MSG_DONTWAIT };
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<()>(self.socket.as_raw_fd(), &mut iov, Some(&mut self.cmsg), flags)?;
        let arrival = msg.cmsgs().ok().and_then(|mut cmsgs| {
            cmsgs.find_map(|c| match c {
                ControlMessageOwned::Ipv4PacketInfo(info) => Some(Arrival {
                    ifindex: u32::try_from(info.ipi_ifindex).ok()?,
                    local: Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr)),
                }),
                _ => None,
            })
        });
        Ok((msg.bytes, arrival))
    }

    /// Sends `bytes` the first way of `routes` the kernel accepts. A reply that cannot be sent
    /// is like a lost datagram (the client retries), so the last error is returned for
    /// information only.
    pub(crate) fn send(&self, bytes: &[u8], routes: &[Route]) -> std::io::Result<()> {
        let mut last = Err(std::io::Error::from(ErrorKind::NetworkUnreachable));
        for route in routes {
            last = self.send_one(bytes, route);
            match &last {
                Err(e) if is_routing_error(e.kind()) => {}
                _ => break,
            }
        }
        last
    }

    fn send_one(&self, bytes: &[u8], route: &Route) -> std::io::Result<()> {
        let Some(via) = route.via else {
            return self.socket.send_to(bytes, route.to).map(drop);
        };
        let info = libc::in_pktinfo {
            ipi_ifindex: i32::try_from(via.ifindex).map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))?,
            ipi_spec_dst: libc::in_addr { s_addr: u32::from(via.source).to_be() },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        let to = SockaddrIn::from(route.to);
        sendmsg(
            self.socket.as_raw_fd(),
            &[IoSlice::new(bytes)],
            &[ControlMessage::Ipv4PacketInfo(&info)],
            MsgFlags::empty(),
            Some(&to),
        )
        .map(drop)
        .map_err(std::io::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const VMA: Arrival = Arrival { ifindex: 7, local: SERVER };

    fn via(ifindex: u32, source: Ipv4Addr) -> Option<Via> {
        Some(Via { ifindex, source })
    }

    #[test]
    fn a_broadcast_reply_leaves_through_the_interface_its_request_came_in_on() {
        let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 68);
        assert_eq!(routes(ReplyTo::Broadcast, Some(VMA), SERVER), vec![Route { to: bcast, via: via(7, SERVER) }]);
        // A server identifier that is not local (the kernel refuses it as a source): then the
        // interface's own address.
        let other = Arrival { ifindex: 8, local: Ipv4Addr::new(192, 0, 2, 1) };
        assert_eq!(
            routes(ReplyTo::Broadcast, Some(other), SERVER),
            vec![Route { to: bcast, via: via(8, SERVER) }, Route { to: bcast, via: via(8, other.local) }]
        );
        // No IP_PKTINFO for the datagram: routing decides, as before.
        assert_eq!(routes(ReplyTo::Broadcast, None, SERVER), vec![Route { to: bcast, via: None }]);
    }

    #[test]
    fn relay_replies_use_routing_and_unicast_falls_back_to_the_arrival_link() {
        let relay = Ipv4Addr::new(192, 0, 2, 9);
        assert_eq!(
            routes(ReplyTo::Relay(relay), Some(VMA), SERVER),
            vec![Route { to: SocketAddrV4::new(relay, 67), via: None }]
        );
        let client = Ipv4Addr::new(10, 0, 0, 10);
        let to = SocketAddrV4::new(client, 68);
        assert_eq!(
            routes(ReplyTo::Unicast(client), Some(VMA), SERVER),
            vec![Route { to, via: None }, Route { to, via: via(7, SERVER) }]
        );
        assert_eq!(routes(ReplyTo::Unicast(client), None, SERVER), vec![Route { to, via: None }]);
    }

    #[test]
    fn only_routing_errors_try_the_next_way() {
        assert!(is_routing_error(ErrorKind::NetworkUnreachable));
        assert!(is_routing_error(ErrorKind::InvalidInput));
        assert!(!is_routing_error(ErrorKind::WouldBlock));
        assert!(!is_routing_error(ErrorKind::OutOfMemory));
    }

    /// Over loopback: the arrival is reported, and a reply pinned to it arrives.
    #[test]
    fn reports_the_arrival_interface_and_sends_through_it() {
        let config = DhcpConfig::from_toml(
            "server_id = \"127.0.0.1\"\nlisten = \"127.0.0.1:0\"\n[[subnets]]\nnetwork = \"10.0.0.0\"\nprefix = 24\n",
        )
        .expect("config");
        let mut server = DhcpSocket::bind(&config).expect("bind");
        let Some(SocketAddr::V4(addr)) = server.local_addr() else { panic!("not bound") };
        let client = UdpSocket::bind("127.0.0.1:0").expect("client");
        client.send_to(b"request", addr).expect("send");
        let mut buf = [0u8; 64];
        let (n, arrival) = server.recv(&mut buf, true).expect("recv");
        assert_eq!(&buf[..n], b"request");
        let arrival = arrival.expect("IP_PKTINFO reported");
        // Loopback is interface 1 in every namespace.
        assert_eq!(arrival, Arrival { ifindex: 1, local: Ipv4Addr::LOCALHOST });
        assert_eq!(interface_name(Some(arrival)).as_deref(), Some("lo"));
        assert_eq!(interface_name(None), None);
        assert!(matches!(server.recv(&mut buf, false), Err(e) if e.kind() == ErrorKind::WouldBlock));
        let Ok(SocketAddr::V4(back)) = client.local_addr() else { panic!("client not bound") };
        let pinned = Route { to: back, via: via(arrival.ifindex, Ipv4Addr::LOCALHOST) };
        server.send(b"reply", &[pinned]).expect("reply");
        let n = client.recv(&mut buf).expect("reply arrives");
        assert_eq!(&buf[..n], b"reply");
    }
}

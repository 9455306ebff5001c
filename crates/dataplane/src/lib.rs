//! ipshadow's data plane on Linux: packet ports on real interfaces and the forwarding loop around
//! the core's layer-2 router. An AF_PACKET port has TPACKET_V3 receive and transmit rings shared
//! with the kernel (frames are read in place a block at a time, and sent in batches with one
//! system call); the [`PacketPort`] trait hides it from the loop. The router is driven by a
//! desired state ([`desired`]) that it reconciles with, and reports a [`status::Status`]; [`runtime`]
//! opens the ports on named interfaces and runs the loop, following a [`RouterControl`].
//!
//! `unsafe` lives in [`afpacket`] and [`netns`] only (the ring is memory shared with the kernel;
//! entering a namespace is a raw system call); each use says why it is sound.

pub mod afpacket;
pub mod checksum;
pub mod desired;
pub mod fast;
pub mod forward;
pub mod netns;
pub mod runtime;
pub mod status;

pub use afpacket::{AfPacketPort, RingConfig, wait_any};
pub use desired::{Desired, DesiredEntry, Reconciler};
pub use forward::Forwarder;
pub use runtime::{GroupSetup, Router, RouterClock, RouterControl, RouterSetup, VmPort};
pub use status::Status;

/// A port that receives and sends Ethernet frames.
pub trait PacketPort {
    /// Hands up to about `max` received frames to `frame` (whole ring blocks are taken, so a
    /// call may go a little over); returns how many. Never blocks.
    fn receive(&mut self, max: usize, frame: &mut dyn FnMut(&[u8])) -> std::io::Result<usize>;

    /// Queues one frame for sending (a full queue is a counted drop and an error).
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()>;

    /// Sends what is queued.
    fn flush(&mut self) -> std::io::Result<()>;
}

//! ipshadow's data plane on Linux (issue 5, in progress): packet ports on real interfaces. Today:
//! an AF_PACKET port with TPACKET_V3 receive and transmit rings shared with the kernel (frames
//! are read in place a block at a time, and sent in batches with one system call), and the
//! [`PacketPort`] trait the forwarding loop will use for it and for the simulator's links alike.
//!
//! `unsafe` lives in [`afpacket`] and [`netns`] only (the ring is memory shared with the kernel;
//! entering a namespace is a raw system call); each use says why it is sound.

pub mod afpacket;
pub mod netns;

pub use afpacket::{AfPacketPort, RingConfig};

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

//! ipshadow's deterministic network simulator: a virtual clock that jumps to the next event,
//! links with latency, jitter and loss (each with its own seeded RNG), hosts built on smoltcp's
//! real TCP/IP stack, and the shadowing core between the client segment and two VMs, forwarding
//! real Ethernet frames. [`scenario::run`] migrates an address under load, with faults, and
//! reports what happened to every connection.
//!
//! Same seeds, same run: nothing here reads the OS clock or an unseeded RNG, and nothing
//! iterates a randomly ordered map.

pub mod app;
pub mod device;
pub mod host;
pub mod link;
pub mod router;
pub mod scenario;
pub mod vm;

pub use device::SimDevice;
pub use host::{Host, HostConfig};
pub use link::{Link, LinkConfig};

use ipshadow_core::Instant;

/// The simulator's time as smoltcp's.
pub fn to_smoltcp(t: Instant) -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros(i64::try_from(t.as_micros()).unwrap_or(i64::MAX))
}

/// smoltcp's time as the simulator's (negative times clamp to the epoch).
pub fn from_smoltcp(t: smoltcp::time::Instant) -> Instant {
    Instant::from_micros(u64::try_from(t.total_micros()).unwrap_or(0))
}

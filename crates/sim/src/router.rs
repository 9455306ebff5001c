//! The Shadow Router as a node of the simulated network: the core's layer-2 router
//! ([`ipshadow_core::l2`]), the same code the Linux data plane drives, between the simulated
//! client segment and the VMs' cables.

pub use ipshadow_core::l2::{Out, PortStats, RouterNode};

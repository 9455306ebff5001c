//! The applications the simulated hosts run: a verified request/response protocol, its server
//! (in the VMs) and its clients.

pub mod client;
pub mod proto;
pub mod server;

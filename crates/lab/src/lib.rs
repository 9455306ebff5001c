//! ipshadow's lab, apart from the product: [`lab`] builds a real topology in Linux network
//! namespaces (client hosts, the router's namespace running `ipshadow serve`, VM A and VM B with
//! real DHCP clients and servers), [`demo`] migrates an address in it under real traffic and
//! reports, and [`traffic`] is the verified TCP and HTTP workload the lab runs. The `ipshadow`
//! binary embeds their options as its `lab`, `demo` and `traffic` subcommands, and the lab runs
//! that same binary (its own executable) for every process it starts.

pub mod args;
pub mod demo;
pub mod lab;
pub mod traffic;

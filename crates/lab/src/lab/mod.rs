//! `ipshadow lab up|down|status`: a real topology in Linux network namespaces.
//!
//! ```text
//!  client hosts c1..cN ── bridge (ns sw) ── prov ┐
//!                                               router (ns r) ── vma ── VM A (ns a)
//!                                                             └─ vmb ── VM B (ns b)
//! ```
//! Clients are on the provider segment 10.0.1.0/16 and reach X = 10.0.0.10 on-link (the router
//! answers ARP for it). Each VM has its own segment to the router, whose VM-side interfaces carry
//! the gateway 10.0.0.1. The router's namespace runs `ipshadow serve` (API, manager, DHCP server
//! and Shadow Router in one process, API on 127.0.0.1:7480 there); the lab registers both VMs
//! and X on VM A through its API. VM A gets X by DHCP (ISC dhclient) at `up`; VM B gets it when
//! a migration starts. Both VMs run the
//! traffic server; with `up --http nginx` both VMs also run nginx on port 80 (see [`http`]).
//!
//! `up --routers N` (2 to 4) makes a router group instead (see [`routers`]): router hosts
//! `r1..rN`, each on the provider segment and on a bridge per VM segment, and `r` a control
//! host with the DHCP server, the managers and the API nodes, on etcd.
//! Everything is named with a prefix, lives under `/run/ipshadow/PREFIX/`, and
//! `down` removes it all, also after a crash. iproute2 (`ip`) does every network change.

pub mod control;
pub(crate) mod etcd;
pub(crate) mod http;
pub(crate) mod routers;
pub(crate) mod services;
mod topology;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Subcommand};

pub use routers::RouterReport;
pub use services::Lab;

/// The address that moves.
pub const X: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
/// The VMs' gateway (the router's VM side).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// TCP port of the traffic servers in the VMs.
pub const SERVICE_PORT: u16 = 7000;
/// MAC address of VM A's interface.
pub const MAC_A: &str = "02:1b:5d:00:0a:01";
/// MAC address of VM B's interface.
pub const MAC_B: &str = "02:1b:5d:00:0b:01";
/// MAC address of the router's VM-side interfaces (both: the VMs see one gateway).
pub const GATEWAY_MAC: &str = "02:1b:5d:00:00:01";
/// MAC address of the router's provider-side interface.
pub const PROVIDER_MAC: &str = "02:1b:5d:00:00:02";
/// With a router group: the control host's address on the VM segments (the DHCP server's).
pub const CONTROL_HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
/// With a router group: MAC address of the control host's VM-side interfaces.
pub const CONTROL_MAC: &str = "02:1b:5d:00:00:03";
/// The most router hosts of a group the lab builds.
pub const MAX_ROUTERS: u8 = 4;

/// Options of `ipshadow lab`.
#[derive(Args, Debug)]
pub struct LabArgs {
    #[command(subcommand)]
    command: LabCommand,
    /// Prefix of every namespace (at most 8 characters: letters, digits, '-').
    #[arg(long, global = true, default_value = "ipsh")]
    prefix: String,
}

#[derive(Subcommand, Debug)]
enum LabCommand {
    /// Build the lab (a lab already up is left as it is; leftovers of a broken one are
    /// removed first) and start `ipshadow serve` in the router's namespace (API, manager, DHCP
    /// server, router), the traffic servers and VM A's DHCP client.
    Up {
        /// Client hosts on the provider segment.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=50))]
        clients: u8,
        /// Also run a web server in both VMs on port 80, serving a file that names the VM
        /// (the client: `ipshadow traffic http`).
        #[arg(long, value_enum, value_name = "SERVER")]
        http: Option<http::HttpServer>,
        /// Keep the state in an etcd cluster of this many members (Debian's etcd-server, each in
        /// a namespace of its own) and run the parts as processes of their own: the router, the
        /// DHCP server, two managers (one leads) and two API nodes (the second on 127.0.0.1:7481).
        #[arg(long, value_name = "MEMBERS", default_value_t = 0)]
        etcd: u8,
        /// Router hosts (1: the router in the control plane's namespace, as always). 2 or more:
        /// a router group (one active, the others standing by), each router in a host of its
        /// own on the provider segment and on bridged VM segments; the parts run on etcd (with
        /// a one-member cluster unless `--etcd` says more).
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=i64::from(MAX_ROUTERS)))]
        routers: u8,
        /// Make the routers' interface towards VM B refuse an XDP program (its peer has more
        /// transmit queues than it has receive queues): the router says so and forwards with
        /// AF_PACKET.
        #[arg(long)]
        refuse_xdp: bool,
        /// How the routers forward (`[router] data_path`): `auto` (the default:
        /// the XDP fast path when the interfaces take it), `xdp`, `af-packet`.
        #[arg(long, value_enum, default_value = "auto")]
        data_path: DataPathChoice,
    },
    /// Start a VM's DHCP client (as the demo does for VM B once a migration is planned); returns
    /// once the VM holds 10.0.0.10.
    DhcpClient {
        /// The VM: `a` or `b`.
        #[arg(value_parser = ["a", "b"])]
        vm: String,
        /// Which DHCP client.
        #[arg(long, value_enum, default_value = "dhclient")]
        client: services::DhcpClient,
    },
    /// Stop every process in the lab and remove its namespaces and files.
    Down,
    /// Show what is up: namespaces, processes, VM addresses, the router's shadowing table.
    Status {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `lab` subcommand.
pub fn run(args: &LabArgs) -> anyhow::Result<()> {
    let lab = Lab::new(&args.prefix)?;
    match &args.command {
        LabCommand::Up { clients, http, etcd, routers, refuse_xdp, data_path } => {
            lab.require_root()?;
            if lab.is_up() {
                eprintln!("ipshadow lab: {} is already up", args.prefix);
                if let Some(server) = http
                    && !lab.http_running()
                {
                    lab.start_http(*server)?;
                }
            } else {
                lab.up(*clients, *etcd, *routers, *refuse_xdp, *data_path)?;
                if let Some(server) = http
                    && let Err(e) = lab.start_http(*server)
                {
                    // Leave nothing half made behind.
                    let _ = lab.down();
                    return Err(e);
                }
                eprintln!(
                    "ipshadow lab: {p} is up; its API: `ip netns exec {p}-r ipshadow migration list --token $(cat {t})`; \
                     `ipshadow lab down` removes it",
                    p = args.prefix,
                    t = lab.dir.join("serve/admin-token").display()
                );
            }
            if http.is_some() {
                eprintln!(
                    "ipshadow lab: nginx serves {X}:80 in both VMs; a keep-alive workload: {}",
                    lab.http_workload_hint()
                );
            }
            Ok(())
        }
        LabCommand::DhcpClient { vm, client } => {
            lab.require_root()?;
            if !lab.is_up() {
                bail!("the lab {} is not up (`ipshadow lab up`)", args.prefix);
            }
            lab.dhcp_client(vm, *client)
        }
        LabCommand::Down => {
            lab.require_root()?;
            lab.down()
        }
        LabCommand::Status { json } => {
            let status = lab.status();
            if *json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.text());
            }
            Ok(())
        }
    }
}

/// How the lab's routers forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DataPathChoice {
    /// AF_PACKET only.
    AfPacket,
    /// The XDP fast path when the interfaces take it, else AF_PACKET.
    Auto,
    /// The XDP fast path, or the router fails.
    Xdp,
}

impl DataPathChoice {
    /// The value of `[router] data_path`.
    pub fn config(self) -> &'static str {
        match self {
            Self::AfPacket => "af-packet",
            Self::Auto => "auto",
            Self::Xdp => "xdp",
        }
    }
}

/// Where the lab keeps its files.
pub fn state_dir(prefix: &str) -> PathBuf {
    PathBuf::from("/run/ipshadow").join(prefix)
}

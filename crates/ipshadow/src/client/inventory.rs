//! `ipshadow vm ...` and `ipshadow address ...`: a tenant's VMs and addresses.

use std::net::Ipv4Addr;

use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::json;

use super::table::{Table, pairs};
use super::{ConnectArgs, parse, print_json};

/// `ipshadow vm`.
#[derive(Args, Debug)]
pub struct VmArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(subcommand)]
    command: VmCommand,
}

#[derive(Subcommand, Debug)]
enum VmCommand {
    /// Add a VM.
    Add {
        /// Its id (unique across tenants): 1-64 letters, digits, '-', '_', '.'.
        id: String,
        /// Its interface's MAC address (02:00:00:00:00:0a): the DHCP server's reservation.
        #[arg(long)]
        mac: String,
        /// Where the router reaches it.
        #[arg(long)]
        segment: String,
        /// The owner (the admin must name it; a tenant's token implies its own).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List the VMs the token may see.
    List,
    /// Show one VM.
    Show {
        /// Its id.
        id: String,
    },
    /// Remove a VM that holds no address.
    Remove {
        /// Its id.
        id: String,
    },
}

/// `ipshadow address`.
#[derive(Args, Debug)]
pub struct AddressArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(subcommand)]
    command: AddressCommand,
}

#[derive(Subcommand, Debug)]
enum AddressCommand {
    /// Add an address, held by one of the owner's VMs or by none.
    Add {
        /// The address.
        ip: Ipv4Addr,
        /// The VM holding it.
        #[arg(long)]
        vm: Option<String>,
        /// The owner (the admin must name it; a tenant's token implies its own).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List the addresses the token may see.
    List,
    /// Show one address.
    Show {
        /// The address.
        ip: Ipv4Addr,
    },
    /// Remove an address that no migration is moving.
    Remove {
        /// The address.
        ip: Ipv4Addr,
    },
}

/// A VM as the server sends it (fields it adds later are ignored).
#[derive(Deserialize)]
struct Vm {
    id: String,
    tenant: String,
    mac: String,
    segment: String,
}

/// An address as the server sends it.
#[derive(Deserialize)]
struct Address {
    ip: Ipv4Addr,
    tenant: String,
    vm: Option<String>,
    #[serde(default)]
    migration: Option<u64>,
}

fn vm_pairs(vm: &Vm) -> String {
    pairs(&[
        ("id", vm.id.clone()),
        ("tenant", vm.tenant.clone()),
        ("mac", vm.mac.clone()),
        ("segment", vm.segment.clone()),
    ])
}

fn address_pairs(a: &Address) -> String {
    pairs(&[
        ("ip", a.ip.to_string()),
        ("tenant", a.tenant.clone()),
        ("vm", a.vm.clone().unwrap_or_else(|| "-".into())),
        ("migration", a.migration.map_or_else(|| "-".into(), |id| id.to_string())),
    ])
}

/// Runs `ipshadow vm ...`.
pub fn run_vm(args: &VmArgs) -> anyhow::Result<()> {
    let api = args.connect.connect()?;
    let reply = match &args.command {
        VmCommand::Add { id, mac, segment, tenant } => {
            api.post("/v1/vms", Some(&json!({"id": id, "mac": mac, "segment": segment, "tenant": tenant})))?
        }
        VmCommand::List => api.get("/v1/vms")?,
        VmCommand::Show { id } => api.get(&format!("/v1/vms/{}", path_segment(id)))?,
        VmCommand::Remove { id } => api.delete(&format!("/v1/vms/{}", path_segment(id)))?,
    };
    if args.connect.json {
        return print_json(&reply);
    }
    match &args.command {
        VmCommand::Add { .. } => print!("added vm\n{}", vm_pairs(&parse(&api, reply)?)),
        VmCommand::Show { .. } => print!("{}", vm_pairs(&parse(&api, reply)?)),
        VmCommand::Remove { id } => println!("removed vm {}", super::table::clean(id)),
        VmCommand::List => {
            let mut table = Table::new(&["ID", "TENANT", "MAC", "SEGMENT"]);
            for vm in parse::<Vec<Vm>>(&api, reply)? {
                table.row(vec![vm.id, vm.tenant, vm.mac, vm.segment]);
            }
            print!("{table}");
        }
    }
    Ok(())
}

/// Runs `ipshadow address ...`.
pub fn run_address(args: &AddressArgs) -> anyhow::Result<()> {
    let api = args.connect.connect()?;
    let reply = match &args.command {
        AddressCommand::Add { ip, vm, tenant } => {
            api.post("/v1/addresses", Some(&json!({"ip": ip, "vm": vm, "tenant": tenant})))?
        }
        AddressCommand::List => api.get("/v1/addresses")?,
        AddressCommand::Show { ip } => api.get(&format!("/v1/addresses/{ip}"))?,
        AddressCommand::Remove { ip } => api.delete(&format!("/v1/addresses/{ip}"))?,
    };
    if args.connect.json {
        return print_json(&reply);
    }
    match &args.command {
        AddressCommand::Add { .. } => print!("added address\n{}", address_pairs(&parse(&api, reply)?)),
        AddressCommand::Show { .. } => print!("{}", address_pairs(&parse(&api, reply)?)),
        AddressCommand::Remove { ip } => println!("removed address {ip}"),
        AddressCommand::List => {
            let mut table = Table::new(&["IP", "TENANT", "VM", "MIGRATION"]);
            for a in parse::<Vec<Address>>(&api, reply)? {
                let migration = a.migration.map_or_else(|| "-".into(), |id| id.to_string());
                table.row(vec![a.ip.to_string(), a.tenant, a.vm.unwrap_or_else(|| "-".into()), migration]);
            }
            print!("{table}");
        }
    }
    Ok(())
}

/// `id` as one path segment: the characters a VM id may not contain are percent-encoded, so
/// that a bad id reaches the server (which refuses it) instead of another path.
fn path_segment(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_stay_one_path_segment() {
        assert_eq!(super::path_segment("vm-a_1.x"), "vm-a_1.x");
        assert_eq!(super::path_segment("../a b"), "..%2Fa%20b");
    }
}

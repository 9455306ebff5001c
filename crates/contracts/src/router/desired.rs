//! The router's desired state, as the manager stores it.
//!
//! The router does not take commands: it watches this document (today a JSON file in its state
//! directory, later a key in etcd) that says which VM holds which address and which addresses are
//! shadowed, with each [`ShadowingEntry`] as last recorded (state, split, deadline). The data
//! plane's reconciler makes a running router match it whenever it changes, and once at start.
//!
//! The document's deadlines are wall-clock times (the manager's and the DHCP server's clock); the
//! router converts each entry's deadline to its monotonic clock when it installs the entry.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipshadow_core::{RouterError, ShadowingEntry, VmId};
use serde::{Deserialize, Serialize};

/// What the manager wants the router to do.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Desired {
    /// Plain addresses and the VM that holds each (not shadowed ones).
    #[serde(default)]
    pub addresses: BTreeMap<Ipv4Addr, VmId>,
    /// Shadowed addresses.
    #[serde(default)]
    pub entries: Vec<DesiredEntry>,
}

impl Desired {
    /// The part of it a router with ports for `vms` serves: the plain addresses those VMs hold
    /// and the shadowed addresses either side of which is one of them (a migration between a
    /// VM of this router and one of another is given whole: the router then says which VM it
    /// has no port for).
    pub fn slice(&self, vms: &BTreeSet<VmId>) -> Desired {
        Desired {
            addresses: self
                .addresses
                .iter()
                .filter(|(_, vm)| vms.contains(*vm))
                .map(|(ip, vm)| (*ip, vm.clone()))
                .collect(),
            entries: self
                .entries
                .iter()
                .filter(|e| vms.contains(&e.entry.source_vm_id) || vms.contains(&e.entry.destination_vm_id))
                .cloned()
                .collect(),
        }
    }
}

/// One shadowed address as the manager records it, and what it has asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredEntry {
    /// The entry as last recorded: its state (waiting, ramping, paused, rolling back), split and
    /// deadline are where a (re)started router resumes.
    pub entry: ShadowingEntry,
    /// B's lease on the address is bound: the ramp may start.
    #[serde(default)]
    pub lease_bound: bool,
    /// Send every new flow to B from now on.
    #[serde(default)]
    pub promote: bool,
    /// Cut over now (A's lease ended early, or A failed).
    #[serde(default)]
    pub cut_over: bool,
    /// Finish the rollback now (B's lease has lapsed).
    #[serde(default)]
    pub finish_rollback: bool,
}

/// Why a part of the desired state could not be applied (the rest still is).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The document names a VM the router has no port for.
    #[error("{ip}: no port for VM {vm}")]
    UnknownVm {
        /// The address concerned.
        ip: Ipv4Addr,
        /// The VM without a port.
        vm: VmId,
    },
    /// The core refused an operation.
    #[error("{ip}: {source}")]
    Refused {
        /// The address concerned.
        ip: Ipv4Addr,
        /// The core's reason.
        source: RouterError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty document is an empty desired state; a key the router does not know is refused
    /// rather than ignored (a newer manager's request must not pass unnoticed).
    #[test]
    fn the_document_defaults_and_refuses_unknown_keys() {
        assert_eq!(serde_json::from_str::<Desired>("{}").expect("empty"), Desired::default());
        assert!(serde_json::from_str::<Desired>(r#"{"adresses": {}}"#).is_err());
        let e = ReconcileError::UnknownVm { ip: Ipv4Addr::new(10, 0, 0, 10), vm: "vm-x".into() };
        assert_eq!(e.to_string(), "10.0.0.10: no port for VM vm-x");
    }

    /// A router's slice holds what concerns its VMs and nothing else.
    #[test]
    fn a_slice_holds_the_addresses_and_migrations_of_its_vms() {
        let ip = |last| Ipv4Addr::new(10, 0, 0, last);
        let entry = |last, a: &str, b: &str| DesiredEntry {
            entry: ShadowingEntry::new(
                ip(last),
                a.into(),
                b.into(),
                ipshadow_core::Instant::from_millis(1),
                Default::default(),
                Default::default(),
            ),
            lease_bound: false,
            promote: false,
            cut_over: false,
            finish_rollback: false,
        };
        let desired = Desired {
            addresses: [(ip(1), "vm-a".into()), (ip(2), "vm-c".into())].into(),
            entries: vec![entry(10, "vm-a", "vm-b"), entry(11, "vm-c", "vm-d"), entry(12, "vm-d", "vm-b")],
        };
        let ours: BTreeSet<VmId> = ["vm-a".into(), "vm-b".into()].into();
        let slice = desired.slice(&ours);
        assert_eq!(slice.addresses, [(ip(1), "vm-a".into())].into());
        let ips: Vec<Ipv4Addr> = slice.entries.iter().map(|e| e.entry.ip_address).collect();
        assert_eq!(ips, [ip(10), ip(12)]);
        assert_eq!(desired.slice(&BTreeSet::new()), Desired::default());
        let all: BTreeSet<VmId> = ["vm-a", "vm-b", "vm-c", "vm-d"].map(VmId::from).into();
        assert_eq!(desired.slice(&all), desired);
    }
}

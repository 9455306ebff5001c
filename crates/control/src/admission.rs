//! What a request may claim, and what the parts of this process can take, checked at the call so
//! that nothing the API accepts can stop a part (issue 13).
//!
//! - Ownership: a tenant claims addresses only inside the prefixes the admin gave it (none
//!   given: no address at all); the admin claims anything. Ids, MACs and addresses are unique
//!   across tenants ([`crate::inventory`]); a clash with another tenant's record answers the same
//!   as an address outside the prefixes ([`InventoryError::NotAvailable`]).
//! - The parts' own rules: what the store projects to the DHCP server (a VM's reservation: its
//!   MAC and the address it holds) is checked by the DHCP server's own rules,
//!   [`DhcpRules::check_reservation`] / [`DhcpRules::refused_reservations`]; what it projects
//!   to the router (an address held by a VM) needs a port for that VM, the rule behind the
//!   router's [`ReconcileError::UnknownVm`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

pub use ipnet::Ipv4Net;
use ipshadow_contracts::dhcp::{DhcpRules, Reservation};
use ipshadow_contracts::router::ReconcileError;

use crate::inventory::{Inventory, InventoryError, Vm};
use crate::project::dhcp_reservation;
use crate::store::Store;

/// The rules a request is admitted by. The default: tenants claim no address, and no part runs
/// in the process.
#[derive(Clone, Debug, Default)]
pub struct Admission {
    /// The prefixes each tenant may claim addresses in.
    prefixes: BTreeMap<String, Vec<Ipv4Net>>,
    /// The DHCP server's rules (its subnets), when one runs in this process; the reservations
    /// come from the store.
    dhcp: Option<DhcpRules>,
    /// The VMs the router has a port for, when a router runs in this process.
    router_ports: Option<BTreeSet<String>>,
}

impl Admission {
    /// Tenants claim nothing; no part runs.
    pub fn new() -> Self {
        Self::default()
    }

    /// `tenant` may claim addresses inside `prefixes` (added to any it had).
    pub fn with_prefixes(mut self, tenant: impl Into<String>, prefixes: impl IntoIterator<Item = Ipv4Net>) -> Self {
        self.prefixes.entry(tenant.into()).or_default().extend(prefixes);
        self
    }

    /// A DHCP server with `rules` runs in this process: what it would refuse is refused.
    pub fn with_dhcp(mut self, rules: DhcpRules) -> Self {
        self.dhcp = Some(rules);
        self
    }

    /// A router with a port for each of `vms` runs in this process: an address held by any other
    /// VM is refused.
    pub fn with_router_ports(mut self, vms: impl IntoIterator<Item = String>) -> Self {
        self.router_ports = Some(vms.into_iter().collect());
        self
    }

    /// Whether `caller` (`None`: the admin) may claim `ip`.
    pub fn may_claim(&self, caller: Option<&str>, ip: Ipv4Addr) -> bool {
        match caller {
            None => true,
            Some(tenant) => self.prefixes.get(tenant).is_some_and(|p| p.iter().any(|net| net.contains(&ip))),
        }
    }

    /// Checks a new address: `caller` may claim it, the DHCP server could lease it, and the VM
    /// that would hold it (`vm`, the owner's) could be served by the DHCP server and reached by
    /// the router.
    pub fn admit_address<S: Store>(
        &self,
        inventory: &Inventory<S>,
        caller: Option<&str>,
        owner: &str,
        ip: Ipv4Addr,
        vm: Option<&str>,
    ) -> Result<(), InventoryError> {
        if !self.may_claim(caller, ip) {
            return Err(InventoryError::NotAvailable { kind: "address", id: ip.to_string() });
        }
        if let Some(dhcp) = &self.dhcp {
            dhcp.check_address("ip", ip).map_err(|e| InventoryError::Invalid(format!("{ip}: DHCP server: {e}")))?;
        }
        match vm {
            Some(id) => self.admit_holder(inventory, owner, ip, id),
            None => Ok(()),
        }
    }

    /// Checks that VM `vm` of `owner` may hold `ip`: the reservation the DHCP server would get
    /// passes its rules, and the router has a port for the VM.
    pub fn admit_holder<S: Store>(
        &self,
        inventory: &Inventory<S>,
        owner: &str,
        ip: Ipv4Addr,
        vm: &str,
    ) -> Result<(), InventoryError> {
        let holder = inventory.vm(Some(owner), vm)?.value;
        if let Some(dhcp) = &self.dhcp {
            let held = inventory.addresses(None)?.into_iter().filter(|a| a.vm.as_deref() == Some(vm)).map(|a| a.ip);
            let reservation = dhcp_reservation(&holder, held.chain([ip]).min());
            dhcp.check_reservation(&reservation)
                .map_err(|e| InventoryError::Invalid(format!("{ip} for {vm}: DHCP server: {e}")))?;
        }
        self.check_port(ip, vm).map_err(|e| InventoryError::Invalid(format!("router: {e}")))
    }

    /// Checks a new VM: the DHCP server could take its reservation (it holds no address yet).
    pub fn admit_vm(&self, vm: &Vm) -> Result<(), InventoryError> {
        match &self.dhcp {
            Some(dhcp) => dhcp
                .check_reservation(&dhcp_reservation(vm, None))
                .map_err(|e| InventoryError::Invalid(format!("DHCP server: {e}"))),
            None => Ok(()),
        }
    }

    /// The router's rule: an address is held by a VM it has a port for.
    fn check_port(&self, ip: Ipv4Addr, vm: &str) -> Result<(), ReconcileError> {
        match &self.router_ports {
            Some(ports) if !ports.contains(vm) => Err(ReconcileError::UnknownVm { ip, vm: vm.into() }),
            _ => Ok(()),
        }
    }
}

/// Sifts the reservations the store projects for a DHCP server with `rules`: the ones it can
/// take, and the ones it would refuse (each with why, for the log and the status), by the
/// server's own [`DhcpRules::refused_reservations`]. A record stored before a rule existed, or
/// behind the API's back, is left out instead of stopping the server.
pub fn sift_reservations(rules: &DhcpRules, reservations: Vec<Reservation>) -> (Vec<Reservation>, Vec<String>) {
    let refused: BTreeMap<usize, String> = rules
        .refused_reservations(&reservations)
        .into_iter()
        .filter_map(|(r, e)| {
            let i = reservations.iter().position(|x| std::ptr::eq(x, r))?;
            Some((i, e.to_string()))
        })
        .collect();
    let skipped = refused.values().cloned().collect();
    let kept = reservations.into_iter().enumerate().filter(|(i, _)| !refused.contains_key(i)).map(|(_, r)| r).collect();
    (kept, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipshadow_contracts::dhcp::SubnetConfig;

    /// The rules of a server on 10.0.0.0/24 (as `ipshadow serve` hands them from its DHCP
    /// configuration).
    fn dhcp() -> DhcpRules {
        let subnet = SubnetConfig {
            network: Ipv4Addr::new(10, 0, 0, 0),
            prefix: 24,
            routers: vec![],
            dns: vec![],
            lease_secs: 3600,
            pool: None,
            relays: vec![],
        };
        DhcpRules { subnets: vec![subnet] }
    }

    fn reservation(vm: &str, mac: &str, ip: Option<[u8; 4]>) -> Reservation {
        Reservation {
            vm: vm.into(),
            mac: Some(mac.into()),
            client_id: None,
            ip: ip.map(Ipv4Addr::from),
            interface: None,
        }
    }

    #[test]
    fn tenants_claim_only_their_prefixes_and_the_admin_anything() {
        let net = |s: &str| s.parse::<Ipv4Net>().expect("a prefix");
        let rules = Admission::new().with_prefixes("acme", [net("192.168.77.0/24")]).with_prefixes("bare", []);
        let ip = Ipv4Addr::new(192, 168, 77, 7);
        assert!(rules.may_claim(Some("acme"), ip));
        assert!(!rules.may_claim(Some("acme"), Ipv4Addr::new(192, 168, 78, 7)));
        assert!(!rules.may_claim(Some("bare"), ip), "no prefixes: nothing");
        assert!(!rules.may_claim(Some("other"), ip), "not configured: nothing");
        assert!(rules.may_claim(None, Ipv4Addr::new(8, 8, 8, 8)));
    }

    /// The DHCP server's own rules sift: out of every subnet, a MAC twice (the first keeps it),
    /// a MAC that does not parse.
    #[test]
    fn reservations_the_dhcp_server_would_refuse_are_skipped() {
        let good = reservation("vm-a", "02:00:00:00:00:0a", Some([10, 0, 0, 10]));
        let outside = reservation("evil", "02:00:00:00:00:0e", Some([192, 168, 77, 7]));
        let twin = reservation("twin", "02:00:00:00:00:0a", None);
        let garbled = reservation("garbled", "zz", None);
        let (kept, skipped) = sift_reservations(&dhcp(), vec![good.clone(), outside, twin, garbled]);
        assert_eq!(kept, vec![good]);
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(skipped[0].contains("reservations.evil.ip: is in no configured subnet"), "{skipped:?}");
        assert!(skipped[1].contains("reservations.twin.mac"), "{skipped:?}");
        assert!(skipped[2].contains("reservations.garbled.mac"), "{skipped:?}");
        // What is kept is what the server takes.
        assert_eq!(dhcp().refused_reservations(&kept), vec![]);
    }

    #[test]
    fn the_router_needs_a_port_for_the_holder() {
        let rules = Admission::new().with_router_ports(["vm-a".to_owned()]);
        let ip = Ipv4Addr::new(10, 0, 0, 10);
        assert!(rules.check_port(ip, "vm-a").is_ok());
        let e = rules.check_port(ip, "evil").expect_err("no port");
        assert_eq!(e.to_string(), "10.0.0.10: no port for VM evil");
        assert!(Admission::new().check_port(ip, "evil").is_ok(), "no router: no rule");
    }
}

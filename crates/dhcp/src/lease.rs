//! Leases: who holds which address until when. An address is held by one client, except X
//! during a migration, which both VMs hold.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

pub use ipshadow_contracts::dhcp::{ClientKey, Role};
use serde::{Deserialize, Serialize};

/// A lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The address.
    pub ip: Ipv4Addr,
    /// Who holds it.
    pub client: ClientKey,
    /// The VM, when the inventory knows the client.
    pub vm: Option<String>,
    /// Unix time (seconds) it ends.
    pub expires: u64,
    /// The migration it is part of, and as which side.
    pub migration: Option<(u64, Role)>,
}

/// A change to persist: the lease table's (or a plan's) state after it must survive a crash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseChange {
    /// A migration plan's new state (e.g. failed by B's DECLINE).
    Plan(crate::plan::MigrationPlan),
    /// The lease (address, client) is now this.
    Put(Lease),
    /// The lease (address, client) is gone.
    Delete {
        /// The address.
        ip: Ipv4Addr,
        /// The client.
        client: ClientKey,
    },
}

/// Bound leases by address and by client, with an index by expiry.
#[derive(Clone, Debug, Default)]
pub struct LeaseTable {
    by_ip: BTreeMap<Ipv4Addr, Vec<Lease>>,
    by_client: BTreeMap<ClientKey, Ipv4Addr>,
    by_expiry: BTreeSet<(u64, Ipv4Addr, ClientKey)>,
}

impl LeaseTable {
    /// Leases held.
    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    /// Whether no lease is held.
    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }

    /// The leases on `ip` (two during a migration).
    pub fn on(&self, ip: Ipv4Addr) -> &[Lease] {
        self.by_ip.get(&ip).map_or(&[], Vec::as_slice)
    }

    /// The lease of `client`, if any.
    pub fn of(&self, client: &ClientKey) -> Option<&Lease> {
        let ip = self.by_client.get(client)?;
        self.on(*ip).iter().find(|l| &l.client == client)
    }

    /// Every lease, by address.
    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.by_ip.values().flatten()
    }

    /// Records `lease`, replacing the client's previous lease (a client holds one address).
    pub fn put(&mut self, lease: Lease) -> Vec<LeaseChange> {
        let mut changes = Vec::new();
        if let Some(old_ip) = self.by_client.get(&lease.client).copied()
            && old_ip != lease.ip
        {
            changes.extend(self.remove(old_ip, &lease.client.clone()));
        }
        if let Some(old) = self.on(lease.ip).iter().find(|l| l.client == lease.client) {
            self.by_expiry.remove(&(old.expires, old.ip, old.client.clone()));
        }
        self.by_expiry.insert((lease.expires, lease.ip, lease.client.clone()));
        self.by_client.insert(lease.client.clone(), lease.ip);
        let on_ip = self.by_ip.entry(lease.ip).or_default();
        match on_ip.iter_mut().find(|l| l.client == lease.client) {
            Some(slot) => *slot = lease.clone(),
            None => on_ip.push(lease.clone()),
        }
        changes.push(LeaseChange::Put(lease));
        changes
    }

    /// Removes the lease of `client` on `ip`.
    pub fn remove(&mut self, ip: Ipv4Addr, client: &ClientKey) -> Option<LeaseChange> {
        let on_ip = self.by_ip.get_mut(&ip)?;
        let at = on_ip.iter().position(|l| &l.client == client)?;
        let lease = on_ip.swap_remove(at);
        if on_ip.is_empty() {
            self.by_ip.remove(&ip);
        }
        self.by_client.remove(client);
        self.by_expiry.remove(&(lease.expires, lease.ip, lease.client.clone()));
        Some(LeaseChange::Delete { ip, client: client.clone() })
    }

    /// Removes and returns every lease that ended by `now`.
    pub fn expire(&mut self, now: u64) -> Vec<Lease> {
        let mut ended = Vec::new();
        while let Some((expires, ip, client)) = self.by_expiry.first().cloned() {
            if expires > now {
                break;
            }
            if let Some(lease) = self.on(ip).iter().find(|l| l.client == client).cloned() {
                self.remove(ip, &client);
                ended.push(lease);
            } else {
                self.by_expiry.pop_first();
            }
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(ip: [u8; 4], mac: u8, expires: u64) -> Lease {
        Lease { ip: ip.into(), client: ClientKey::Mac([2, 0, 0, 0, 0, mac]), vm: None, expires, migration: None }
    }

    #[test]
    fn one_address_per_client_two_clients_per_migrating_address_expiry_in_order() {
        let mut t = LeaseTable::default();
        t.put(lease([10, 0, 0, 10], 0xa, 100));
        t.put(lease([10, 0, 0, 10], 0xb, 50));
        assert_eq!(t.on([10, 0, 0, 10].into()).len(), 2);
        // The client moving to another address gives up the first.
        let changes = t.put(lease([10, 0, 0, 11], 0xb, 80));
        assert_eq!(changes.len(), 2);
        assert!(matches!(&changes[0], LeaseChange::Delete { ip, .. } if *ip == Ipv4Addr::new(10, 0, 0, 10)));
        assert_eq!(t.len(), 2);
        // Renewing moves the expiry.
        t.put(lease([10, 0, 0, 11], 0xb, 200));
        let ended = t.expire(150);
        assert_eq!(ended.iter().map(|l| l.expires).collect::<Vec<_>>(), vec![100]);
        assert_eq!(t.len(), 1);
        assert!(t.of(&ClientKey::Mac([2, 0, 0, 0, 0, 0xb])).is_some());
        assert_eq!(t.expire(200).len(), 1);
        assert!(t.is_empty());
    }
}

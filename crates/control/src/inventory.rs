//! The inventory: tenants' VMs and addresses, kept in the store as JSON under `/v1/...`, and
//! the typed reads and writes the manager and the API use. Every write is one compare-and-swap
//! transaction: two requests racing for the same address cannot both win.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::store::{Compare, KeyValue, Rider, Store, StoreError, Txn, TxnOutcome};

/// A VM of a tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    /// Its id (unique across tenants).
    pub id: String,
    /// The tenant that owns it.
    pub tenant: String,
    /// Its interface's MAC address (`02:00:00:00:00:0a`): the DHCP server's reservation.
    pub mac: String,
    /// Where the router reaches it: the interface of the router's host its segment is on. The
    /// DHCP server in `serve` takes a message naming the VM only from this interface (DHCP
    /// snooping).
    pub segment: String,
}

/// An address of a tenant and the VM holding it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Address {
    /// The address.
    #[schema(value_type = String, format = Ipv4)]
    pub ip: Ipv4Addr,
    /// The tenant that owns it.
    pub tenant: String,
    /// The VM holding it, if any.
    pub vm: Option<String>,
    /// The migration moving it, while one is under way.
    #[serde(default)]
    pub migration: Option<u64>,
}

/// Why an inventory request was refused (each maps to one HTTP status in the API).
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// Not found, or owned by another tenant (the two are not told apart: a tenant learns
    /// nothing of another's inventory).
    #[error("{kind} {id} not found")]
    NotFound {
        /// `vm`, `address` or `migration`.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// It exists already.
    #[error("{kind} {id} already exists")]
    Exists {
        /// `vm`, `mac` or `address`.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// It exists already, as a record of `owner`: [`InventoryError::seen_by`] tells the caller
    /// [`InventoryError::Exists`] if it may see that record, else only
    /// [`InventoryError::NotAvailable`] (the API does the same if nobody asked).
    #[error("{kind} {id} is not available to this tenant")]
    Taken {
        /// `vm`, `mac` or `address`.
        kind: &'static str,
        /// Its id.
        id: String,
        /// The tenant whose record it is.
        owner: String,
    },
    /// Not this tenant's to claim: an address outside the prefixes the admin gave it, or an id,
    /// MAC or address that another tenant's record has. The two are not told apart: a tenant
    /// learns nothing of another's inventory.
    #[error("{kind} {id} is not available to this tenant")]
    NotAvailable {
        /// `vm`, `mac` or `address`.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// The request contradicts the current state (a VM still holding an address, an address
    /// already migrating).
    #[error("{0}")]
    Conflict(String),
    /// The request itself is wrong (a bad MAC address, an empty id).
    #[error("{0}")]
    Invalid(String),
    /// The ramp cannot reach 100 % before the deadline (or never does); says what would fit.
    #[error("{0}")]
    RampDoesNotFit(Box<crate::plan::RampMisfit>),
    /// Someone else changed the same keys first: retry.
    #[error("changed concurrently, retry")]
    Raced,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record could not be read back.
    #[error("stored {key} is corrupt: {detail}")]
    Corrupt {
        /// The key.
        key: String,
        /// Why.
        detail: String,
    },
}

impl InventoryError {
    /// The error as `caller` (`None`: the admin) may see it: a [`InventoryError::Taken`] record
    /// it may not see becomes [`InventoryError::NotAvailable`], one it may see
    /// [`InventoryError::Exists`].
    pub fn seen_by(self, caller: Option<&str>) -> Self {
        match self {
            Self::Taken { kind, id, owner } if caller.is_none_or(|c| c == owner) => Self::Exists { kind, id },
            Self::Taken { kind, id, .. } => Self::NotAvailable { kind, id },
            other => other,
        }
    }
}

/// Key of a VM.
pub fn vm_key(id: &str) -> String {
    format!("/v1/vms/{id}")
}

/// Key of an address.
pub fn address_key(ip: Ipv4Addr) -> String {
    format!("/v1/addresses/{ip}")
}

/// Key of the VM that has a MAC address (normalised): what makes MACs unique across tenants
/// even when two requests race.
pub fn mac_key(mac: &str) -> String {
    format!("/v1/macs/{mac}")
}

/// A stored record with the revision it was read at (for compare-and-swap).
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned<T> {
    /// The record.
    pub value: T,
    /// Its modification revision.
    pub revision: u64,
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(kv: &KeyValue) -> Result<Versioned<T>, InventoryError> {
    let value = serde_json::from_slice(&kv.value)
        .map_err(|e| InventoryError::Corrupt { key: kv.key.clone(), detail: e.to_string() })?;
    Ok(Versioned { value, revision: kv.mod_revision })
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Inventory records are plain structs of strings and numbers: serialising cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn check_id(what: &str, id: &str) -> Result<(), InventoryError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(InventoryError::Invalid(format!("{what} must be 1-64 letters, digits, '-', '_' or '.'")))
    }
}

/// A MAC address in the one form the inventory keeps (`02:00:00:00:00:0a`: lowercase, colons),
/// from six hex pairs separated by `:` or `-`, or twelve hex digits, in either case. The DHCP
/// server and the router compare MACs as bytes: two spellings of one MAC are one MAC.
pub fn normalise_mac(mac: &str) -> Result<String, InventoryError> {
    let bad = || InventoryError::Invalid(format!("bad MAC address {mac:?}: expected six hex pairs"));
    let digits: String = match mac.len() {
        12 => mac.to_owned(),
        17 => {
            let separator = mac.as_bytes().get(2).copied().filter(|b| *b == b':' || *b == b'-').ok_or_else(bad)?;
            let pairs: Vec<&str> = mac.split(char::from(separator)).collect();
            if pairs.len() != 6 || pairs.iter().any(|p| p.len() != 2) {
                return Err(bad());
            }
            pairs.concat()
        }
        _ => return Err(bad()),
    };
    // Hex digits only: `u8::from_str_radix` alone would take a sign (`+f`).
    if digits.len() != 12 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let lower = digits.to_ascii_lowercase();
    let pairs: Vec<&str> = (0..6).filter_map(|i| lower.get(2 * i..2 * i + 2)).collect();
    Ok(pairs.join(":"))
}

/// Typed access to the inventory in a store, as seen by one tenant (`None`: the admin, who sees
/// every tenant).
pub struct Inventory<S: Store> {
    store: S,
    /// Writes to join the next transaction committed (an API request's idempotency record).
    rider: Option<Arc<Mutex<Rider>>>,
    /// The name history entries recorded through this inventory carry (a manager's).
    writer: Option<Arc<str>>,
}

impl<S: Store> Inventory<S> {
    /// The inventory kept in `store`.
    pub fn new(store: S) -> Self {
        Self { store, rider: None, writer: None }
    }

    /// The same inventory whose next committed transaction also carries `rider`'s writes.
    pub fn with_rider(&self, rider: Arc<Mutex<Rider>>) -> Self {
        Self { store: self.store.clone(), rider: Some(rider), writer: self.writer.clone() }
    }

    /// The same inventory, whose history entries say `name` recorded them.
    pub fn with_writer(self, name: &str) -> Self {
        Self { writer: Some(name.into()), ..self }
    }

    /// Signs the newest history entry of `m` with the writer's name, if there is one.
    pub(crate) fn sign(&self, m: &mut crate::reassign::Migration) {
        if let (Some(writer), Some(last)) = (&self.writer, m.lifecycle.history.last_mut()) {
            last.by = Some(writer.to_string());
        }
    }

    /// Commits `txn` (with the rider's writes, if they have not been written yet).
    pub(crate) fn commit(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        Rider::commit(self.rider.as_deref(), &self.store, txn)
    }

    /// The store underneath.
    pub fn store(&self) -> &S {
        &self.store
    }

    fn visible(tenant: Option<&str>, owner: &str) -> bool {
        tenant.is_none_or(|t| t == owner)
    }

    /// A VM, if `tenant` may see it.
    pub fn vm(&self, tenant: Option<&str>, id: &str) -> Result<Versioned<Vm>, InventoryError> {
        let not_found = || InventoryError::NotFound { kind: "vm", id: id.to_owned() };
        let kv = self.store.get(&vm_key(id))?.ok_or_else(not_found)?;
        let vm: Versioned<Vm> = decode(&kv)?;
        if Self::visible(tenant, &vm.value.tenant) { Ok(vm) } else { Err(not_found()) }
    }

    /// Every VM `tenant` may see, by id.
    pub fn vms(&self, tenant: Option<&str>) -> Result<Vec<Vm>, InventoryError> {
        self.visible_records("/v1/vms/", tenant, |vm: &Vm| &vm.tenant)
    }

    /// Every record under `prefix` that reads back, the oldest first (by the revision that created
    /// it), and the ones that do not, each as `key: why`. What the parts are given comes from here:
    /// a record written behind the API's back is skipped, never the reason a part gets nothing.
    /// (VMs oldest first: of two that clash, a MAC stored twice before MACs were unique, the one
    /// that was there first keeps its DHCP reservation.)
    pub fn readable_records<T: for<'de> Deserialize<'de>>(
        &self,
        prefix: &str,
    ) -> Result<(Vec<T>, Vec<String>), InventoryError> {
        let (mut kvs, _) = self.store.range(prefix)?;
        kvs.sort_by_key(|kv| kv.create_revision);
        let mut records = Vec::new();
        let mut unreadable = Vec::new();
        for kv in &kvs {
            match decode::<T>(kv) {
                Ok(record) => records.push(record.value),
                Err(e) => unreadable.push(e.to_string()),
            }
        }
        Ok((records, unreadable))
    }

    /// Every record under `prefix` whose owner (`owner` of it) `tenant` may see, in key order.
    pub(crate) fn visible_records<T: for<'de> Deserialize<'de>>(
        &self,
        prefix: &str,
        tenant: Option<&str>,
        owner: impl Fn(&T) -> &str,
    ) -> Result<Vec<T>, InventoryError> {
        let (kvs, _) = self.store.range(prefix)?;
        let mut out = Vec::new();
        for kv in &kvs {
            let record: T = decode(kv)?.value;
            if Self::visible(tenant, owner(&record)) {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Adds a VM, its MAC normalised ([`normalise_mac`]); returns the record stored. Its id and
    /// its MAC must be no other VM's, of any tenant ([`InventoryError::Taken`]).
    pub fn add_vm(&self, vm: &Vm) -> Result<Vm, InventoryError> {
        check_id("vm id", &vm.id)?;
        check_id("tenant", &vm.tenant)?;
        check_id("segment", &vm.segment)?;
        let vm = Vm { mac: normalise_mac(&vm.mac)?, ..vm.clone() };
        if let Some(owner) = self.vm_owner(&vm.id)? {
            return Err(InventoryError::Taken { kind: "vm", id: vm.id, owner });
        }
        // VMs stored before MACs were indexed have no index key: they are found by their record.
        let same_mac = self.vms(None)?.into_iter().find(|v| normalise_mac(&v.mac).is_ok_and(|m| m == vm.mac));
        if let Some(other) = same_mac {
            return Err(InventoryError::Taken { kind: "mac", id: vm.mac, owner: other.tenant });
        }
        let key = vm_key(&vm.id);
        let txn = Txn::new()
            .when(Compare::Absent(key.clone()))
            .when(Compare::Absent(mac_key(&vm.mac)))
            .put(key, encode(&vm))
            .put(mac_key(&vm.mac), vm.id.clone().into_bytes());
        match self.commit(txn)? {
            TxnOutcome::Committed(_) => Ok(vm),
            TxnOutcome::Failed(_) => {
                if let Some(owner) = self.vm_owner(&vm.id)? {
                    return Err(InventoryError::Taken { kind: "vm", id: vm.id, owner });
                }
                let holder =
                    self.store.get(&mac_key(&vm.mac))?.map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
                match holder.map(|id| self.vm_owner(&id)).transpose()?.flatten() {
                    Some(owner) => Err(InventoryError::Taken { kind: "mac", id: vm.mac, owner }),
                    None => Err(InventoryError::Raced),
                }
            }
        }
    }

    /// The tenant of VM `id`, if it exists.
    fn vm_owner(&self, id: &str) -> Result<Option<String>, InventoryError> {
        match self.store.get(&vm_key(id))? {
            Some(kv) => Ok(Some(decode::<Vm>(&kv)?.value.tenant)),
            None => Ok(None),
        }
    }

    /// Removes a VM that holds no address and is no unfinished migration's destination.
    pub fn remove_vm(&self, tenant: Option<&str>, id: &str) -> Result<(), InventoryError> {
        let vm = self.vm(tenant, id)?;
        if let Some(a) = self.addresses(None)?.into_iter().find(|a| a.vm.as_deref() == Some(id)) {
            return Err(InventoryError::Conflict(format!("vm {id} holds {}: reassign it first", a.ip)));
        }
        let migrating =
            self.migrations(None)?.into_iter().find(|m| m.destination == id && !m.lifecycle.state.is_final());
        if let Some(m) = migrating {
            return Err(InventoryError::Conflict(format!(
                "vm {id} is the destination of migration {} ({}): abort it or let it end first",
                m.id, m.ip
            )));
        }
        let mut txn = Txn::new().when(Compare::ModRevision(vm_key(id), vm.revision)).delete(vm_key(id));
        // Its MAC is free again (a VM stored before MACs were indexed has no index key).
        if let Ok(mac) = normalise_mac(&vm.value.mac)
            && self.store.get(&mac_key(&mac))?.is_some_and(|kv| kv.value == id.as_bytes())
        {
            txn = txn.delete(mac_key(&mac));
        }
        match self.commit(txn)? {
            TxnOutcome::Committed(_) => Ok(()),
            TxnOutcome::Failed(_) => Err(InventoryError::Raced),
        }
    }

    /// An address, if `tenant` may see it.
    pub fn address(&self, tenant: Option<&str>, ip: Ipv4Addr) -> Result<Versioned<Address>, InventoryError> {
        let not_found = || InventoryError::NotFound { kind: "address", id: ip.to_string() };
        let kv = self.store.get(&address_key(ip))?.ok_or_else(not_found)?;
        let a: Versioned<Address> = decode(&kv)?;
        if Self::visible(tenant, &a.value.tenant) { Ok(a) } else { Err(not_found()) }
    }

    /// Removes an address `tenant` may see, unless a migration is moving it. The router stops
    /// routing it and the DHCP server stops leasing it as they follow the store.
    pub fn remove_address(&self, tenant: Option<&str>, ip: Ipv4Addr) -> Result<(), InventoryError> {
        let address = self.address(tenant, ip)?;
        if let Some(id) = address.value.migration {
            return Err(InventoryError::Conflict(format!(
                "{ip} is migrating (migration {id}): abort it or let it end first"
            )));
        }
        let key = address_key(ip);
        let txn = Txn::new().when(Compare::ModRevision(key.clone(), address.revision)).delete(key);
        match self.commit(txn)? {
            TxnOutcome::Committed(_) => Ok(()),
            TxnOutcome::Failed(_) => Err(InventoryError::Raced),
        }
    }

    /// Every address `tenant` may see.
    pub fn addresses(&self, tenant: Option<&str>) -> Result<Vec<Address>, InventoryError> {
        self.visible_records("/v1/addresses/", tenant, |a: &Address| &a.tenant)
    }

    /// Adds an address of `tenant`, held by one of its VMs or by none.
    pub fn add_address(&self, tenant: &str, ip: Ipv4Addr, vm: Option<&str>) -> Result<(), InventoryError> {
        check_id("tenant", tenant)?;
        let mut txn = Txn::new().when(Compare::Absent(address_key(ip)));
        if let Some(id) = vm {
            // The VM must be the tenant's, and still be there when the address is written. Its
            // record is written again: a `remove_vm` that read it before now fails its own
            // compare instead of leaving the address on a VM that is gone.
            let held = self.vm(Some(tenant), id)?;
            txn = txn.when(Compare::ModRevision(vm_key(id), held.revision)).put(vm_key(id), encode(&held.value));
        }
        let record = Address { ip, tenant: tenant.to_owned(), vm: vm.map(str::to_owned), migration: None };
        match self.commit(txn.put(address_key(ip), encode(&record)))? {
            TxnOutcome::Committed(_) => Ok(()),
            TxnOutcome::Failed(_) => match self.store.get(&address_key(ip))? {
                Some(kv) => {
                    let owner = decode::<Address>(&kv)?.value.tenant;
                    Err(InventoryError::Taken { kind: "address", id: ip.to_string(), owner })
                }
                None => Err(InventoryError::Raced),
            },
        }
    }
}

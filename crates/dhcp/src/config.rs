//! The server's configuration (TOML): its identity, subnets, the inventory's reservations, and
//! the shadowing option. Unknown keys are refused, every value is checked, errors name the key.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use serde::Deserialize;

use crate::lease::ClientKey;

/// The configuration of one DHCP server.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpConfig {
    /// The server's own address: the server identifier (option 54) in every reply.
    pub server_id: Ipv4Addr,
    /// Code of the shadowing option (private use, 224..=254).
    #[serde(default = "default_shadow_option_code")]
    pub shadow_option_code: u8,
    /// B's lease time while X is shadowed, seconds (at least 30: udhcpc treats shorter as 30).
    #[serde(default = "default_shadow_lease_secs")]
    pub shadow_lease_secs: u32,
    /// How long a declined address is kept out of the pool, seconds.
    #[serde(default = "default_decline_hold_secs")]
    pub decline_hold_secs: u32,
    /// The subnets served.
    pub subnets: Vec<SubnetConfig>,
    /// VMs known to the inventory and their addresses.
    #[serde(default)]
    pub reservations: Vec<Reservation>,
    /// Where the service listens (`ipshadow dhcp`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddrV4,
    /// Only answer requests that arrive on this interface (SO_BINDTODEVICE). Without it, one
    /// socket answers requests from every interface of the host, and each broadcast reply
    /// leaves through the interface its request came in on (IP_PKTINFO), so several VM
    /// segments need no option each.
    #[serde(default)]
    pub interface: Option<String>,
    /// The lease store file (`ipshadow dhcp`).
    #[serde(default = "default_lease_store")]
    pub lease_store: PathBuf,
    /// Migrations to apply when the service starts (the manager adds them at run time; the
    /// standalone tool and its tests restart the service with a new list).
    #[serde(default)]
    pub migrations: Vec<MigrationConfig>,
}

/// A migration given in the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationConfig {
    /// The migration's id.
    pub id: u64,
    /// The address that moves.
    pub ip: Ipv4Addr,
    /// VM A.
    pub source: String,
    /// VM B.
    pub destination: String,
    /// A's lease end, unix seconds.
    pub deadline: u64,
    /// `active` (default), `completed` or `rolled_back`.
    #[serde(default)]
    pub state: MigrationConfigState,
}

/// How a configured migration stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationConfigState {
    /// X is shadowed.
    #[default]
    Active,
    /// X is B's.
    Completed,
    /// X stays A's.
    RolledBack,
}

/// One subnet.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetConfig {
    /// Network address.
    pub network: Ipv4Addr,
    /// Prefix length (1..=30).
    pub prefix: u8,
    /// Default routers (option 3).
    #[serde(default)]
    pub routers: Vec<Ipv4Addr>,
    /// DNS servers (option 6).
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// Normal lease time, seconds.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u32,
    /// Dynamic pool for clients the inventory does not know (none: they are ignored).
    #[serde(default)]
    pub pool: Option<Pool>,
    /// Relay agents (giaddr) serving this subnet from outside it; a relayed request is served
    /// by the subnet listing its relay, else by the subnet containing the relay's address.
    #[serde(default)]
    pub relays: Vec<Ipv4Addr>,
}

/// A dynamic address range, both ends included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// First address.
    pub start: Ipv4Addr,
    /// Last address.
    pub end: Ipv4Addr,
}

/// A VM known to the inventory: how its DHCP client identifies itself, and its address.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    /// The VM's id in the inventory.
    pub vm: String,
    /// Its MAC address, `aa:bb:cc:dd:ee:ff`.
    #[serde(default)]
    pub mac: Option<String>,
    /// Its client identifier (option 61) in hex, type byte first; preferred over the MAC.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Its address; none for a VM that has no address yet (a migration's destination).
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// The interface of this host the VM's segment is on. When set, a message naming the VM (by
    /// its MAC or client identifier, or by a lease it holds) counts only when it arrives on this
    /// interface; from any other it is dropped and counted (DHCP snooping). A name that is no
    /// interface of the host matches no arrival. A message a subnet's configured relay agent
    /// forwards (giaddr in `relays`) is exempt when it arrives on an interface that is no VM's
    /// segment: the relay agent is then the attachment point, and binding the VM to its port
    /// is the relay's job. None: from any interface.
    #[serde(default)]
    pub interface: Option<String>,
}

fn default_shadow_option_code() -> u8 {
    224
}
fn default_shadow_lease_secs() -> u32 {
    60
}
fn default_decline_hold_secs() -> u32 {
    600
}
fn default_lease_secs() -> u32 {
    3600
}
fn default_listen() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 67)
}
fn default_lease_store() -> PathBuf {
    PathBuf::from("ipshadow-dhcp.redb")
}

/// A configuration that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not valid TOML, or a key that does not exist or has the wrong type.
    #[error("configuration: {0}")]
    Toml(String),
    /// A value out of range or inconsistent with another.
    #[error("configuration key {key}: {why}")]
    Invalid {
        /// The key at fault.
        key: String,
        /// What is wrong.
        why: String,
    },
}

fn invalid(key: impl Into<String>, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), why: why.into() }
}

impl SubnetConfig {
    /// The subnet mask.
    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0))
    }

    /// Whether `ip` is inside the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::from(self.mask());
        u32::from(ip) & mask == u32::from(self.network) & mask
    }

    /// The broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !u32::from(self.mask()))
    }
}

impl Reservation {
    /// The keys a DHCP client of this VM may present.
    pub fn keys(&self) -> Result<Vec<ClientKey>, ConfigError> {
        let mut keys = Vec::new();
        if let Some(id) = &self.client_id {
            keys.push(ClientKey::ClientId(parse_hex(id).ok_or_else(|| {
                invalid(format!("reservations.{}.client_id", self.vm), "must be hex bytes, e.g. 01aabbccddeeff")
            })?));
        }
        if let Some(mac) = &self.mac {
            keys.push(ClientKey::Mac(parse_mac(mac).ok_or_else(|| {
                invalid(format!("reservations.{}.mac", self.vm), "must be six hex bytes, e.g. 02:00:00:00:00:01")
            })?));
        }
        Ok(keys)
    }
}

/// `aa:bb:cc:dd:ee:ff` (or with `-`).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for b in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn parse_hex(s: &str) -> Option<Vec<u8>> {
    let s: String = s.chars().filter(|c| *c != ':').collect();
    if s.is_empty() || !s.len().is_multiple_of(2) || s.len() > 2 * 255 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

impl DhcpConfig {
    /// Reads and checks a TOML configuration.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(224..=254).contains(&self.shadow_option_code) {
            return Err(invalid("shadow_option_code", "must be a private-use code, 224..=254"));
        }
        if self.shadow_lease_secs < 30 {
            return Err(invalid("shadow_lease_secs", "must be at least 30 (udhcpc treats shorter leases as 30 s)"));
        }
        if self.subnets.is_empty() {
            return Err(invalid("subnets", "at least one subnet is needed"));
        }
        for (i, s) in self.subnets.iter().enumerate() {
            let key = |k: &str| format!("subnets[{i}].{k}");
            if !(1..=30).contains(&s.prefix) {
                return Err(invalid(key("prefix"), "must be within 1..=30"));
            }
            if s.network != Ipv4Addr::from(u32::from(s.network) & u32::from(s.mask())) {
                return Err(invalid(key("network"), "has host bits set for its prefix"));
            }
            if s.lease_secs < 60 {
                return Err(invalid(key("lease_secs"), "must be at least 60"));
            }
            if let Some(pool) = s.pool {
                if !s.contains(pool.start) || !s.contains(pool.end) || u32::from(pool.start) > u32::from(pool.end) {
                    return Err(invalid(key("pool"), "start..=end must lie inside the subnet, start first"));
                }
                if pool.start == s.network || pool.end == s.broadcast() {
                    return Err(invalid(key("pool"), "must not include the network or broadcast address"));
                }
            }
        }
        if let Some((_, e)) = self.refused_reservations(&self.reservations).into_iter().next() {
            return Err(e);
        }
        Ok(())
    }

    /// Checks `ip` as an address the server may lease: inside a configured subnet. `key` names
    /// it in the error.
    pub fn check_address(&self, key: &str, ip: Ipv4Addr) -> Result<(), ConfigError> {
        if self.subnets.iter().any(|s| s.contains(ip)) {
            Ok(())
        } else {
            Err(invalid(key, "is in no configured subnet"))
        }
    }

    /// Checks one reservation on its own: a client key that parses, an address the server may
    /// lease. (Whether it clashes with others is [`DhcpConfig::refused_reservations`]'s.)
    pub fn check_reservation(&self, r: &Reservation) -> Result<(), ConfigError> {
        if r.keys()?.is_empty() {
            return Err(invalid(format!("reservations.{}.mac", r.vm), "a reservation needs a mac or a client_id"));
        }
        match r.ip {
            Some(ip) => self.check_address(&format!("reservations.{}.ip", r.vm), ip),
            None => Ok(()),
        }
    }

    /// The reservations of `reservations` this configuration cannot take, each with why: bad on
    /// its own, or clashing with one before it (a VM listed twice, a MAC or client id or an
    /// address given to two VMs: the first keeps it). [`DhcpConfig::validate`] refuses a
    /// configuration with any; `ipshadow serve` leaves them out of what the server follows and
    /// reports them, and its API refuses a request that would make one.
    pub fn refused_reservations<'a>(&self, reservations: &'a [Reservation]) -> Vec<(&'a Reservation, ConfigError)> {
        let mut refused = Vec::new();
        let mut ips = BTreeSet::new();
        let mut keys = BTreeSet::new();
        let mut vms = BTreeSet::new();
        for r in reservations {
            let key = |k: &str| format!("reservations.{}.{k}", r.vm);
            if let Err(e) = self.check_reservation(r) {
                refused.push((r, e));
                continue;
            }
            if vms.contains(r.vm.as_str()) {
                refused.push((r, invalid(key("vm"), "listed twice")));
                continue;
            }
            // Checked before any is taken: a refused reservation holds nothing.
            let client_keys = r.keys().unwrap_or_default();
            if client_keys.iter().any(|k| keys.contains(k)) {
                refused.push((r, invalid(key("mac"), "another VM has the same mac or client_id")));
                continue;
            }
            if let Some(ip) = r.ip
                && ips.contains(&ip)
            {
                refused.push((r, invalid(key("ip"), "reserved for another VM too")));
                continue;
            }
            vms.insert(r.vm.as_str());
            keys.extend(client_keys);
            ips.extend(r.ip);
        }
        refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        server_id = "10.0.0.1"
        [[subnets]]
        network = "10.0.0.0"
        prefix = 24
        routers = ["10.0.0.1"]
        pool = { start = "10.0.0.100", end = "10.0.0.200" }
        [[reservations]]
        vm = "vm-a"
        mac = "02:00:00:00:00:0a"
        ip = "10.0.0.10"
        [[reservations]]
        vm = "vm-b"
        client_id = "0102000000000b"
    "#;

    #[test]
    fn reads_a_good_file_and_names_the_key_of_a_bad_one() {
        let c = DhcpConfig::from_toml(GOOD).unwrap();
        assert_eq!(c.shadow_option_code, 224);
        assert_eq!(c.subnets[0].mask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(c.reservations[1].keys().unwrap(), vec![ClientKey::ClientId(vec![1, 2, 0, 0, 0, 0, 0xb])]);
        let unknown = GOOD.replace("prefix = 24", "prefix = 24\nprefx = 3");
        assert!(matches!(DhcpConfig::from_toml(&unknown), Err(ConfigError::Toml(e)) if e.contains("prefx")));
        let bad_mac = GOOD.replace("02:00:00:00:00:0a", "02:00:00:00:0a");
        assert_eq!(
            DhcpConfig::from_toml(&bad_mac).unwrap_err().to_string(),
            "configuration key reservations.vm-a.mac: must be six hex bytes, e.g. 02:00:00:00:00:01"
        );
        let short = GOOD.replace("server_id", "shadow_lease_secs = 10\nserver_id");
        assert!(DhcpConfig::from_toml(&short).unwrap_err().to_string().contains("shadow_lease_secs"));
        let outside = GOOD.replace("\"10.0.0.10\"", "\"10.9.0.10\"");
        assert!(DhcpConfig::from_toml(&outside).unwrap_err().to_string().contains("no configured subnet"));
    }
}

//! The server's configuration (TOML): its identity, subnets, the inventory's reservations, and
//! the shadowing option. Unknown keys are refused, every value is checked, errors name the key.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use serde::Deserialize;

use ipshadow_contracts::dhcp::rules;
use ipshadow_contracts::dhcp::rules::invalid;
pub use ipshadow_contracts::dhcp::{ConfigError, DhcpRules, Pool, Reservation, SubnetConfig, parse_mac};

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

fn default_shadow_option_code() -> u8 {
    224
}
fn default_shadow_lease_secs() -> u32 {
    60
}
fn default_decline_hold_secs() -> u32 {
    600
}
fn default_listen() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 67)
}
fn default_lease_store() -> PathBuf {
    PathBuf::from("ipshadow-dhcp.redb")
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

    /// The rules on what this server takes (its subnets), for the manager's admission.
    pub fn rules(&self) -> DhcpRules {
        DhcpRules { subnets: self.subnets.clone() }
    }

    /// Checks `ip` as an address the server may lease: inside a configured subnet. `key` names
    /// it in the error.
    pub fn check_address(&self, key: &str, ip: Ipv4Addr) -> Result<(), ConfigError> {
        rules::check_address(&self.subnets, key, ip)
    }

    /// Checks one reservation on its own: a client key that parses, an address the server may
    /// lease. (Whether it clashes with others is [`DhcpConfig::refused_reservations`]'s.)
    pub fn check_reservation(&self, r: &Reservation) -> Result<(), ConfigError> {
        rules::check_reservation(&self.subnets, r)
    }

    /// The reservations of `reservations` this configuration cannot take, each with why (see
    /// [`rules::refused_reservations`]); [`DhcpConfig::validate`] refuses a configuration with any.
    pub fn refused_reservations<'a>(&self, reservations: &'a [Reservation]) -> Vec<(&'a Reservation, ConfigError)> {
        rules::refused_reservations(&self.subnets, reservations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::ClientKey;

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

//! What a DHCP server can take: its subnets, and the checks of a reservation or an address
//! against them. The server checks its configuration by these rules; the manager checks each API
//! request by the same, so that nothing the API accepts can stop the server.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde::Deserialize;

use super::Reservation;

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

fn default_lease_secs() -> u32 {
    3600
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

/// Builds an [`ConfigError::Invalid`] naming `key`.
pub fn invalid(key: impl Into<String>, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), why: why.into() }
}

/// The DHCP server's rules on what it takes: the subnets it serves. The manager admits API
/// requests by them (`ipshadow serve` hands it the rules of the server it runs); the server
/// checks its own configuration by the same functions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DhcpRules {
    /// The subnets served.
    pub subnets: Vec<SubnetConfig>,
}

impl DhcpRules {
    /// Checks `ip` as an address the server may lease: see [`check_address`].
    pub fn check_address(&self, key: &str, ip: Ipv4Addr) -> Result<(), ConfigError> {
        check_address(&self.subnets, key, ip)
    }

    /// Checks one reservation on its own: see [`check_reservation`].
    pub fn check_reservation(&self, r: &Reservation) -> Result<(), ConfigError> {
        check_reservation(&self.subnets, r)
    }

    /// The reservations the server cannot take, each with why: see [`refused_reservations`].
    pub fn refused_reservations<'a>(&self, reservations: &'a [Reservation]) -> Vec<(&'a Reservation, ConfigError)> {
        refused_reservations(&self.subnets, reservations)
    }
}

/// Checks `ip` as an address a server with `subnets` may lease: inside one of them. `key` names
/// it in the error.
pub fn check_address(subnets: &[SubnetConfig], key: &str, ip: Ipv4Addr) -> Result<(), ConfigError> {
    if subnets.iter().any(|s| s.contains(ip)) { Ok(()) } else { Err(invalid(key, "is in no configured subnet")) }
}

/// Checks one reservation on its own: a client key that parses, an address a server with
/// `subnets` may lease. (Whether it clashes with others is [`refused_reservations`]'s.)
pub fn check_reservation(subnets: &[SubnetConfig], r: &Reservation) -> Result<(), ConfigError> {
    if r.keys()?.is_empty() {
        return Err(invalid(format!("reservations.{}.mac", r.vm), "a reservation needs a mac or a client_id"));
    }
    match r.ip {
        Some(ip) => check_address(subnets, &format!("reservations.{}.ip", r.vm), ip),
        None => Ok(()),
    }
}

/// The reservations of `reservations` a server with `subnets` cannot take, each with why: bad on
/// its own, or clashing with one before it (a VM listed twice, a MAC or client id or an address
/// given to two VMs: the first keeps it). The DHCP server refuses a configuration with any;
/// `ipshadow serve` leaves them out of what the server follows and reports them, and its API
/// refuses a request that would make one.
pub fn refused_reservations<'a>(
    subnets: &[SubnetConfig],
    reservations: &'a [Reservation],
) -> Vec<(&'a Reservation, ConfigError)> {
    let mut refused = Vec::new();
    let mut ips = BTreeSet::new();
    let mut keys = BTreeSet::new();
    let mut vms = BTreeSet::new();
    for r in reservations {
        let key = |k: &str| format!("reservations.{}.{k}", r.vm);
        if let Err(e) = check_reservation(subnets, r) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> DhcpRules {
        let subnet: SubnetConfig =
            serde_json::from_str(r#"{"network": "10.0.0.0", "prefix": 24}"#).expect("a subnet with defaults");
        assert_eq!(subnet.lease_secs, 3600);
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
    fn an_address_outside_every_subnet_is_refused_by_key() {
        let rules = rules();
        assert_eq!(rules.check_address("ip", Ipv4Addr::new(10, 0, 0, 7)), Ok(()));
        let e = rules.check_address("ip", Ipv4Addr::new(10, 0, 1, 7)).expect_err("outside");
        assert_eq!(e.to_string(), "configuration key ip: is in no configured subnet");
    }

    /// The first holder of a MAC or an address keeps it; a refused reservation holds nothing.
    #[test]
    fn clashing_reservations_are_refused_after_the_first() {
        let a = reservation("vm-a", "02:00:00:00:00:0a", Some([10, 0, 0, 10]));
        let same_mac = reservation("vm-b", "02:00:00:00:00:0a", Some([10, 0, 0, 11]));
        let same_ip = reservation("vm-c", "02:00:00:00:00:0c", Some([10, 0, 0, 10]));
        let takes_freed = reservation("vm-d", "02:00:00:00:00:0d", Some([10, 0, 0, 11]));
        let no_key = Reservation { mac: None, ..reservation("vm-e", "", None) };
        let all = [a, same_mac, same_ip, takes_freed, no_key];
        let refused: Vec<String> =
            rules().refused_reservations(&all).into_iter().map(|(r, e)| format!("{}: {e}", r.vm)).collect();
        assert_eq!(
            refused,
            [
                "vm-b: configuration key reservations.vm-b.mac: another VM has the same mac or client_id",
                "vm-c: configuration key reservations.vm-c.ip: reserved for another VM too",
                "vm-e: configuration key reservations.vm-e.mac: a reservation needs a mac or a client_id",
            ]
        );
    }
}

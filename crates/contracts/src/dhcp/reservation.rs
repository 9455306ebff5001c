//! Reservations: the VMs the inventory knows, projected by the manager for the DHCP server, and
//! how a DHCP client is recognised.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::rules::invalid;

/// How a DHCP client is recognised: its client identifier (option 61) when it sends one, else
/// its hardware address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ClientKey {
    /// Option 61, type byte first.
    ClientId(Vec<u8>),
    /// An Ethernet MAC address (htype 1, hlen 6).
    Mac([u8; 6]),
    /// Another hardware type: htype, then the address.
    Hardware(Vec<u8>),
}

impl core::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let hex = |f: &mut core::fmt::Formatter<'_>, b: &[u8], sep: &str| {
            for (i, x) in b.iter().enumerate() {
                write!(f, "{}{x:02x}", if i == 0 { "" } else { sep })?;
            }
            Ok(())
        };
        match self {
            ClientKey::ClientId(id) => {
                f.write_str("id:")?;
                hex(f, id, "")
            }
            ClientKey::Mac(mac) => hex(f, mac, ":"),
            ClientKey::Hardware(hw) => {
                f.write_str("hw:")?;
                hex(f, hw, "")
            }
        }
    }
}

/// A VM known to the inventory: how its DHCP client identifies itself, and its address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

//! Which parts a `serve` process runs (`--roles`) and on which store (`--store`).

use anyhow::{Context, bail};
use ipshadow_control::DEFAULT_ETCD_PREFIX;

/// A part a `serve` process can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// The REST API (any number of processes).
    Api,
    /// The network manager (on etcd, processes campaign and one leads).
    Manager,
    /// The Shadow Router (the configuration's `[router]`).
    Router,
    /// The DHCP server (the configuration's `[dhcp]`).
    Dhcp,
}

/// The parts of this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    /// The API.
    pub api: bool,
    /// The manager.
    pub manager: bool,
    /// The router, when configured.
    pub router: bool,
    /// The DHCP server, when configured.
    pub dhcp: bool,
}

impl Roles {
    /// The roles given, or every one.
    pub fn from_args(roles: Option<&[Role]>) -> anyhow::Result<Self> {
        let Some(roles) = roles else { return Ok(Self { api: true, manager: true, router: true, dhcp: true }) };
        if roles.is_empty() {
            bail!("--roles: name at least one of api, manager, router, dhcp");
        }
        Ok(Self {
            api: roles.contains(&Role::Api),
            manager: roles.contains(&Role::Manager),
            router: roles.contains(&Role::Router),
            dhcp: roles.contains(&Role::Dhcp),
        })
    }
}

/// Where the state is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreChoice {
    /// `store.redb` in the data folder: one process holds it, and runs every part.
    Embedded,
    /// An etcd cluster, keys under a prefix.
    Etcd {
        /// `http://host:port` of each member given.
        endpoints: Vec<String>,
        /// The key prefix (`/ipshadow` unless the URL has a path).
        prefix: String,
    },
}

impl StoreChoice {
    /// `redb`, or `etcd://host:port[,host:port...][/prefix]`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        if text == "redb" {
            return Ok(Self::Embedded);
        }
        let Some(rest) = text.strip_prefix("etcd://") else {
            bail!("--store {text:?}: give redb or etcd://host:port[,host:port...][/key-prefix]");
        };
        let (hosts, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/').to_owned()),
            None => (rest, DEFAULT_ETCD_PREFIX.to_owned()),
        };
        let endpoints = hosts
            .split(',')
            .map(|host| {
                let (name, port) = host.rsplit_once(':').with_context(|| format!("--store: {host:?} has no :port"))?;
                if name.is_empty() {
                    bail!("--store: {host:?} has no host");
                }
                port.parse::<u16>().with_context(|| format!("--store: {host:?}: bad port"))?;
                Ok(format!("http://{host}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if prefix.contains(char::is_whitespace) {
            bail!("--store: the key prefix {prefix:?} has spaces");
        }
        Ok(Self::Etcd { endpoints, prefix })
    }
}

/// This process's name in the store: the host's name and the process id.
pub fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    format!("{}-{}", if host.is_empty() { "host" } else { host }, std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_are_read_and_bad_ones_refused() -> anyhow::Result<()> {
        assert_eq!(StoreChoice::parse("redb")?, StoreChoice::Embedded);
        assert_eq!(
            StoreChoice::parse("etcd://10.0.0.1:2379,etcd-b:2379")?,
            StoreChoice::Etcd {
                endpoints: vec!["http://10.0.0.1:2379".into(), "http://etcd-b:2379".into()],
                prefix: "/ipshadow".into()
            }
        );
        assert_eq!(
            StoreChoice::parse("etcd://h:1/team/a/")?,
            StoreChoice::Etcd { endpoints: vec!["http://h:1".into()], prefix: "/team/a".into() }
        );
        for bad in ["etcd://", "etcd://h", "etcd://h:x", "etcd://:1", "postgres://h:1", "etcd://h:1/a b"] {
            assert!(StoreChoice::parse(bad).is_err(), "{bad}");
        }
        Ok(())
    }

    #[test]
    fn roles_default_to_all_and_an_empty_list_is_refused() -> anyhow::Result<()> {
        assert_eq!(Roles::from_args(None)?, Roles { api: true, manager: true, router: true, dhcp: true });
        let r = Roles::from_args(Some(&[Role::Router]))?;
        assert_eq!(r, Roles { api: false, manager: false, router: true, dhcp: false });
        assert!(Roles::from_args(Some(&[])).is_err());
        Ok(())
    }
}

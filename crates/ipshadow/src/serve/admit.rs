//! What `serve`'s API admits (issue 13): each tenant claims addresses only inside the prefixes
//! its `[[tenants]]` entry lists (none listed: no address; the admin claims anything), and with
//! `[dhcp]` or `[router]` in the configuration a request those parts could not take is refused
//! at the call, by their own rules ([`ipshadow_control::admission`]).

use anyhow::bail;
use ipshadow_control::admission::Admission;

use super::ServeConfig;

/// The admission rules of `config`; a prefix with host bits set is refused (`10.0.0.5/24` is
/// most likely a typo for an address or for `10.0.0.0/24`).
pub(super) fn admission(config: &ServeConfig) -> anyhow::Result<Admission> {
    let mut admission = Admission::new();
    for t in &config.tenants {
        for net in &t.prefixes {
            if *net != net.trunc() {
                bail!("tenant {}: prefix {net} has host bits set (did you mean {}?)", t.name, net.trunc());
            }
        }
        admission = admission.with_prefixes(t.name.clone(), t.prefixes.iter().copied());
    }
    if let Some(dhcp) = &config.dhcp {
        admission = admission.with_dhcp(dhcp.rules());
    }
    if let Some(router) = &config.router {
        admission = admission.with_router_ports(router.vms.iter().map(|v| v.id.clone()));
    }
    Ok(admission)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn rules(text: &str) -> anyhow::Result<Admission> {
        admission(&toml::from_str(text)?)
    }

    #[test]
    fn prefixes_come_from_the_tenants_entries() -> anyhow::Result<()> {
        let a = rules(
            "[[tenants]]\nname = \"acme\"\ntoken = \"t\"\nprefixes = [\"192.168.77.0/24\", \"10.1.0.0/16\"]\n\
             [[tenants]]\nname = \"bare\"\ntoken = \"u\"\n",
        )?;
        assert!(a.may_claim(Some("acme"), Ipv4Addr::new(10, 1, 2, 3)));
        assert!(a.may_claim(Some("acme"), Ipv4Addr::new(192, 168, 77, 7)));
        assert!(!a.may_claim(Some("acme"), Ipv4Addr::new(10, 2, 0, 1)));
        assert!(!a.may_claim(Some("bare"), Ipv4Addr::new(10, 1, 2, 3)), "no prefixes: nothing");
        assert!(a.may_claim(None, Ipv4Addr::new(10, 2, 0, 1)), "the admin: anything");
        let e = rules("[[tenants]]\nname = \"acme\"\ntoken = \"t\"\nprefixes = [\"10.0.0.5/24\"]\n")
            .expect_err("host bits")
            .to_string();
        assert!(e.contains("10.0.0.0/24"), "{e}");
        let e = rules("[[tenants]]\nname = \"acme\"\ntoken = \"t\"\nprefixes = [\"10.0.0/24\"]\n")
            .expect_err("not a prefix")
            .to_string();
        assert!(e.contains("prefixes"), "{e}");
        Ok(())
    }
}

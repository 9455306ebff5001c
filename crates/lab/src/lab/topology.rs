//! The lab's namespaces and links, made and removed with iproute2.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{Context, bail};

use super::{GATEWAY, GATEWAY_MAC, MAC_A, MAC_B, PROVIDER_MAC};

/// Runs `ip ARGS`; an error carries the command and what `ip` said.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip").args(args).output().context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip -n NS ARGS`.
pub fn ip_in(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all)
}

/// Sets a sysctl inside a namespace.
fn sysctl(ns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-q", "-w", &format!("{key}={value}")])
        .output()
        .context("running sysctl")?;
    if !out.status.success() {
        bail!("sysctl {key}={value} in {ns}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The lab's namespaces that exist now.
pub fn existing(prefix: &str) -> Vec<String> {
    let listed = ip(&["netns", "list"]).unwrap_or_default();
    let mine = format!("{prefix}-");
    listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&mine))
        .map(str::to_owned)
        .collect()
}

/// The address of client host `i` (1-based) on the provider segment.
pub fn client_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1, 10 + i)
}

pub(super) fn add_ns(ns: &str) -> anyhow::Result<()> {
    ip(&["netns", "add", ns])?;
    ip_in(ns, &["link", "set", "lo", "up"])?;
    // IPv6 would add router solicitations and neighbour discovery to every capture and counter.
    sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1")?;
    sysctl(ns, "net.ipv6.conf.default.disable_ipv6", "1")?;
    Ok(())
}

/// A veth pair with one end in each namespace, both ends up.
pub(super) fn veth(ns1: &str, name1: &str, ns2: &str, name2: &str) -> anyhow::Result<()> {
    ip_in(ns1, &["link", "add", name1, "type", "veth", "peer", "name", name2, "netns", ns2])?;
    ip_in(ns1, &["link", "set", name1, "up"])?;
    ip_in(ns2, &["link", "set", name2, "up"])?;
    Ok(())
}

/// Builds every namespace and link. The caller has removed any earlier lab of this prefix.
pub fn build(prefix: &str, clients: u8) -> anyhow::Result<()> {
    let ns = |name: &str| format!("{prefix}-{name}");
    let (sw, r, a, b) = (ns("sw"), ns("r"), ns("a"), ns("b"));
    for n in [&sw, &r, &a, &b] {
        add_ns(n)?;
    }
    // The provider segment: a bridge with the clients and the router's provider port.
    ip_in(&sw, &["link", "add", "br0", "type", "bridge"])?;
    // A switch forwards frames as they are. With br_netfilter loaded, the bridge would run the
    // host's IP checks and firewall on them and drop malformed ones before the router sees them.
    for family in ["iptables", "ip6tables", "arptables"] {
        let key = format!("net.bridge.bridge-nf-call-{family}");
        if std::path::Path::new(&format!("/proc/sys/{}", key.replace('.', "/"))).exists() {
            sysctl(&sw, &key, "0")?;
        }
    }
    ip_in(&sw, &["link", "set", "br0", "up"])?;
    veth(&sw, "r", &r, "prov")?;
    ip_in(&sw, &["link", "set", "r", "master", "br0"])?;
    ip_in(&r, &["link", "set", "prov", "address", PROVIDER_MAC])?;
    for i in 1..=clients {
        let c = ns(&format!("c{i}"));
        add_ns(&c)?;
        let port = format!("c{i}");
        veth(&sw, &port, &c, "eth0")?;
        ip_in(&sw, &["link", "set", &port, "master", "br0"])?;
        ip_in(&c, &["link", "set", "eth0", "address", &format!("02:1b:5d:01:00:{i:02x}")])?;
        // A /16 puts X (10.0.0.10) on-link: clients ARP for it and the router answers.
        ip_in(&c, &["addr", "add", &format!("{}/16", client_ip(i)), "dev", "eth0"])?;
    }
    // The VM segments, one per VM, each a veth from the router.
    for (vm, port, mac) in [(&a, "vma", MAC_A), (&b, "vmb", MAC_B)] {
        veth(&r, port, vm, "eth0")?;
        ip_in(vm, &["link", "set", "eth0", "address", mac])?;
        // One gateway MAC on both sides: the kernel's ARP answers (it holds the gateway
        // address for the DHCP server) and the router's agree.
        ip_in(&r, &["link", "set", port, "address", GATEWAY_MAC])?;
        ip_in(&r, &["addr", "add", &format!("{GATEWAY}/32"), "dev", port])?;
    }
    // The router's kernel must not forward anything itself: the data plane does.
    sysctl(&r, "net.ipv4.ip_forward", "0")?;
    Ok(())
}

/// Removes the namespaces (their links go with them).
pub fn remove(prefix: &str) -> anyhow::Result<()> {
    for ns in existing(prefix) {
        ip(&["netns", "del", &ns])?;
    }
    Ok(())
}

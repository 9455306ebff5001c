//! The lab's namespaces and links, made and removed with iproute2.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{Context, bail};

use super::{CONTROL_HOST, CONTROL_MAC, GATEWAY, GATEWAY_MAC, MAC_A, MAC_B, PROVIDER_MAC};

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

/// Sets offloads of an interface with `ethtool -K` inside a namespace.
fn offloads(ns: &str, dev: &str, settings: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ethtool", "-K", dev])
        .args(settings)
        .output()
        .context("running ethtool (Debian: ethtool)")?;
    if !out.status.success() {
        bail!("ethtool -K {dev} {} in {ns}: {}", settings.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A host's interface sends complete checksums, as a frame from a NIC has them: a veth leaves
/// TCP and UDP checksums to "hardware" otherwise, and the router's XDP fast path would hand every
/// such frame up to its AF_PACKET path to finish them.
fn complete_checksums(ns: &str, dev: &str) -> anyhow::Result<()> {
    offloads(ns, dev, &["tx", "off"])
}

/// The far end of a router's interface takes frames the router's XDP program redirects: a veth
/// accepts redirected frames only while its peer has NAPI, which GRO turns on (an XDP program
/// would too).
fn takes_redirects(ns: &str, dev: &str) -> anyhow::Result<()> {
    offloads(ns, dev, &["gro", "on"])
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

/// A veth pair whose first end (a router's) refuses an XDP program in driver mode: its peer
/// has more transmit queues than it has receive queues, as a multi-queue peer can (veth:
/// "XDP expects number of rx queues not less than peer tx queues"). The lab's way to show a
/// router falling back to AF_PACKET.
fn veth_refusing_xdp(ns1: &str, name1: &str, ns2: &str, name2: &str) -> anyhow::Result<()> {
    ip_in(
        ns1,
        &[
            "link",
            "add",
            name1,
            "numrxqueues",
            "1",
            "numtxqueues",
            "1",
            "type",
            "veth",
            "peer",
            "name",
            name2,
            "numrxqueues",
            "2",
            "numtxqueues",
            "2",
            "netns",
            ns2,
        ],
    )?;
    ip_in(ns1, &["link", "set", name1, "up"])?;
    ip_in(ns2, &["link", "set", name2, "up"])?;
    Ok(())
}

/// Builds every namespace and link. The caller has removed any earlier lab of this prefix.
/// `routers`: 1, the router in `r` with the VMs on veths of its own; 2 or more, a group of
/// router hosts on bridged segments (see [`build_segments`]). `refuse_xdp`: the routers' VM B
/// interface refuses XDP (see [`veth_refusing_xdp`]).
pub fn build(prefix: &str, clients: u8, routers: u8, refuse_xdp: bool) -> anyhow::Result<()> {
    let ns = |name: &str| format!("{prefix}-{name}");
    let (sw, r, a, b) = (ns("sw"), ns("r"), ns("a"), ns("b"));
    for n in [&sw, &r, &a, &b] {
        add_ns(n)?;
    }
    // The provider segment: a bridge with the clients and the router's provider port.
    add_bridge(&sw, "br0")?;
    for i in 1..=clients {
        let c = ns(&format!("c{i}"));
        add_ns(&c)?;
        let port = format!("c{i}");
        veth(&sw, &port, &c, "eth0")?;
        ip_in(&sw, &["link", "set", &port, "master", "br0"])?;
        ip_in(&c, &["link", "set", "eth0", "address", &format!("02:1b:5d:01:00:{i:02x}")])?;
        complete_checksums(&c, "eth0")?;
        // A /16 puts X (10.0.0.10) on-link: clients ARP for it and the router answers.
        ip_in(&c, &["addr", "add", &format!("{}/16", client_ip(i)), "dev", "eth0"])?;
    }
    if routers >= 2 {
        return build_segments(prefix, routers, refuse_xdp);
    }
    veth(&sw, "r", &r, "prov")?;
    ip_in(&sw, &["link", "set", "r", "master", "br0"])?;
    takes_redirects(&sw, "r")?;
    ip_in(&r, &["link", "set", "prov", "address", PROVIDER_MAC])?;
    // The VM segments, one per VM, each a veth from the router.
    for (vm, port, mac) in [(&a, "vma", MAC_A), (&b, "vmb", MAC_B)] {
        if refuse_xdp && port == "vmb" {
            veth_refusing_xdp(&r, port, vm, "eth0")?;
        } else {
            veth(&r, port, vm, "eth0")?;
        }
        ip_in(vm, &["link", "set", "eth0", "address", mac])?;
        complete_checksums(vm, "eth0")?;
        takes_redirects(vm, "eth0")?;
        // One gateway MAC on both sides: the kernel's ARP answers (it holds the gateway
        // address for the DHCP server) and the router's agree.
        ip_in(&r, &["link", "set", port, "address", GATEWAY_MAC])?;
        ip_in(&r, &["addr", "add", &format!("{GATEWAY}/32"), "dev", port])?;
    }
    // The router's kernel must not forward anything itself: the data plane does.
    sysctl(&r, "net.ipv4.ip_forward", "0")?;
    Ok(())
}

/// A bridge in the switch's namespace, up, that forwards frames as they are.
fn add_bridge(sw: &str, name: &str) -> anyhow::Result<()> {
    ip_in(sw, &["link", "add", name, "type", "bridge"])?;
    // A switch forwards frames as they are. With br_netfilter loaded, the bridge would run the
    // host's IP checks and firewall on them and drop malformed ones before the router sees them.
    for family in ["iptables", "ip6tables", "arptables"] {
        let key = format!("net.bridge.bridge-nf-call-{family}");
        if std::path::Path::new(&format!("/proc/sys/{}", key.replace('.', "/"))).exists() {
            sysctl(sw, &key, "0")?;
        }
    }
    ip_in(sw, &["link", "set", name, "up"])?;
    Ok(())
}

/// The VM segment bridges of a router group, by VM: (bridge, the VM's port, the interface in
/// the router hosts and the control host, the VM's MAC).
const SEGMENTS: [(&str, &str, &str, &str); 2] = [("bra", "a", "vma", MAC_A), ("brb", "b", "vmb", MAC_B)];

/// The ports of router host `i` (1-based) on the switch's bridges: provider, VM A's and VM B's
/// segments, the control segment (made with the lab on etcd).
pub fn router_ports(i: u8) -> [String; 4] {
    ["p", "a", "b", "c"].map(|side| format!("r{i}{side}"))
}

/// A router group's segments: router hosts `r1..rN` on the provider bridge and on one bridge
/// per VM segment, and the control host `r` (the DHCP server, no router) on the VM segments.
/// Every router host carries the group's MACs (keepalived's use_vmac): only the active one
/// transmits, so each bridge learns its port from its gratuitous ARP. The router hosts' kernels
/// hold no address on these segments: a standby's kernel must answer nothing either.
fn build_segments(prefix: &str, routers: u8, refuse_xdp: bool) -> anyhow::Result<()> {
    let ns = |name: &str| format!("{prefix}-{name}");
    let (sw, r) = (ns("sw"), ns("r"));
    for (bridge, vm, port, mac) in SEGMENTS {
        add_bridge(&sw, bridge)?;
        // Not `a`: `ip link add a` reads it as `address`.
        let vm_port = format!("vm-{vm}");
        veth(&sw, &vm_port, &ns(vm), "eth0")?;
        ip_in(&sw, &["link", "set", &vm_port, "master", bridge])?;
        ip_in(&ns(vm), &["link", "set", "eth0", "address", mac])?;
        complete_checksums(&ns(vm), "eth0")?;
        // The control host's port: the DHCP server's own MAC and address, not the gateway's
        // (the active router answers ARP for the gateway).
        let control = format!("r-{vm}");
        veth(&sw, &control, &r, port)?;
        ip_in(&sw, &["link", "set", &control, "master", bridge])?;
        ip_in(&r, &["link", "set", port, "address", CONTROL_MAC])?;
        ip_in(&r, &["addr", "add", &format!("{CONTROL_HOST}/32"), "dev", port])?;
    }
    sysctl(&r, "net.ipv4.ip_forward", "0")?;
    for i in 1..=routers {
        let host = ns(&format!("r{i}"));
        add_ns(&host)?;
        let [prov, vma, vmb, _] = router_ports(i);
        for (bridge, port, inside, mac) in
            [("br0", &prov, "prov", PROVIDER_MAC), ("bra", &vma, "vma", GATEWAY_MAC), ("brb", &vmb, "vmb", GATEWAY_MAC)]
        {
            if refuse_xdp && inside == "vmb" {
                veth_refusing_xdp(&host, inside, &sw, port)?;
            } else {
                veth(&sw, port, &host, inside)?;
            }
            ip_in(&sw, &["link", "set", port, "master", bridge])?;
            ip_in(&host, &["link", "set", inside, "address", mac])?;
            takes_redirects(&sw, port)?;
        }
        // The router host's kernel must not forward anything itself: the data plane does.
        sysctl(&host, "net.ipv4.ip_forward", "0")?;
    }
    Ok(())
}

/// Sets the links of a router host on the switch's side down (`cut`) or up; `store_only`: only
/// its control-segment link (cut off from etcd, still on the VM and provider segments).
pub fn cut_router(prefix: &str, i: u8, cut: bool, store_only: bool) -> anyhow::Result<()> {
    let sw = format!("{prefix}-sw");
    let ports = router_ports(i);
    let ports = if store_only { &ports[3..] } else { &ports[..] };
    for port in ports {
        ip_in(&sw, &["link", "set", port, if cut { "down" } else { "up" }])?;
    }
    Ok(())
}

/// Frames router host `i` transmitted on its provider and VM-side interfaces, as its kernel
/// counts them (an observer independent of the router process).
pub fn router_tx_packets(prefix: &str, i: u8) -> anyhow::Result<u64> {
    let out = ip_in(&format!("{prefix}-r{i}"), &["-s", "-j", "link", "show"])?;
    let links: serde_json::Value = serde_json::from_str(&out).context("reading `ip -s -j link show`")?;
    let mut total = 0;
    for link in links.as_array().map(Vec::as_slice).unwrap_or_default() {
        if matches!(link["ifname"].as_str(), Some("prov" | "vma" | "vmb")) {
            total += link["stats64"]["tx"]["packets"].as_u64().context("no tx packets in `ip -s -j link show`")?;
        }
    }
    Ok(total)
}

/// Removes the namespaces (their links go with them).
pub fn remove(prefix: &str) -> anyhow::Result<()> {
    for ns in existing(prefix) {
        ip(&["netns", "del", &ns])?;
    }
    Ok(())
}

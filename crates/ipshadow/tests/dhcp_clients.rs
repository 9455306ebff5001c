//! `ipshadow dhcp` with three real DHCP clients from Debian (ISC dhclient, busybox udhcpc,
//! dhcpcd) in network namespaces. VM A and VM B sit on isolated ports of a bridge in the
//! server's namespace (they reach the server, not each other, as the Shadow Router keeps VM
//! segments apart). Each client obtains, renews and releases A's reservation; then, during a
//! migration, both VMs hold X, each client's own hook sees the shadowing option with its role,
//! B's lease is the short one, and A is NAKed past the deadline. The server is killed with
//! SIGKILL and restarted between the phases: the leases come back from its store.
//!
//! Needs root. With `CI=true` these tests fail rather than skip when they cannot run.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::netns::{Netns, namespaces_available, sh, sh_any};

const X: &str = "10.77.0.10";
const MAC_A: &str = "02:77:00:00:00:0a";
const MAC_B: &str = "02:77:00:00:00:0b";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Client {
    Dhclient,
    Udhcpc,
    Dhcpcd,
}

struct Lab {
    ns: Netns,
    srv: String,
    vms: [String; 2],
    server: Option<Child>,
    daemons: [Option<Child>; 2],
    client: Client,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

impl Lab {
    fn new(tag: &str, client: Client) -> Self {
        let mut ns = Netns::new(tag);
        let srv = ns.add("s");
        let vms = [ns.add("a"), ns.add("b")];
        let p = ns.prefix.clone();
        sh(&format!(
            "ip -n {srv} link add {p}br type bridge && ip -n {srv} addr add 10.77.0.1/24 dev {p}br && ip -n {srv} link set {p}br up"
        ));
        for (i, (vm, mac)) in vms.iter().zip([MAC_A, MAC_B]).enumerate() {
            let side = ["a", "b"][i];
            sh(&format!(
                "ip -n {srv} link add {p}s{side} type veth peer name {p}{side}0 netns {vm} && \
                 ip -n {srv} link set {p}s{side} master {p}br up && \
                 bridge -n {srv} link set dev {p}s{side} isolated on && \
                 ip -n {vm} link set {p}{side}0 address {mac} up"
            ));
            let hook = ns.path(&format!("hook-{side}.sh"));
            let log = ns.path(&format!("hook-{side}.log"));
            std::fs::write(
                &hook,
                format!(
                    r#"#!/bin/sh
r="${{reason:-$1}}"
addr="${{ip:-$new_ip_address}}"
case "$r" in
  bound|renew|BOUND|RENEW|REBOOT|REBIND) [ -n "$interface" ] && [ -n "$addr" ] && ip addr replace "$addr/24" dev "$interface" ;;
  deconfig|nak|RELEASE|EXPIRE|NAK|STOP) [ -n "$interface" ] && ip addr flush dev "$interface" scope global ;;
esac
{{ printf 'event=%s ' "$r"; env | grep -E '^(new_ip_address|new_dhcp_lease_time|new_ipshadow|ip|lease|opt224)=' | sed 's/ /,/g' | tr '\n' ' '; echo; }} >> {log}
"#
                ),
            )
            .unwrap();
            sh(&format!("chmod +x {hook}"));
        }
        std::fs::write(
            ns.path("dhclient.conf"),
            "timeout 10;\nretry 1;\ninitial-interval 1;\noption ipshadow code 224 = array of unsigned integer 8;\nalso request ipshadow;\n",
        )
        .unwrap();
        std::fs::write(ns.path("dhcpcd.conf"), "define 224 binhex ipshadow\noption ipshadow\n").unwrap();
        Self { ns, srv, vms, server: None, daemons: [None, None], client }
    }

    fn iface(&self, vm: usize) -> String {
        format!("{}{}0", self.ns.prefix, ["a", "b"][vm])
    }

    /// (Re)starts the server; a running one is killed with SIGKILL first.
    fn start_server(&mut self, migration_deadline: Option<u64>) {
        if let Some(mut old) = self.server.take() {
            old.kill().unwrap();
            old.wait().unwrap();
        }
        let mut config = format!(
            "server_id = \"10.77.0.1\"\ninterface = \"{p}br\"\nlease_store = \"{store}\"\n\
             [[subnets]]\nnetwork = \"10.77.0.0\"\nprefix = 24\nrouters = [\"10.77.0.1\"]\nlease_secs = 600\n\
             [[reservations]]\nvm = \"vm-a\"\nmac = \"{MAC_A}\"\nip = \"{X}\"\n\
             [[reservations]]\nvm = \"vm-b\"\nmac = \"{MAC_B}\"\n",
            p = self.ns.prefix,
            store = self.ns.path("leases.redb"),
        );
        if let Some(deadline) = migration_deadline {
            config += &format!(
                "[[migrations]]\nid = 7\nip = \"{X}\"\nsource = \"vm-a\"\ndestination = \"vm-b\"\ndeadline = {deadline}\n"
            );
        }
        std::fs::write(self.ns.path("dhcp.toml"), config).unwrap();
        let events = std::fs::OpenOptions::new().create(true).append(true).open(self.ns.path("events.jsonl")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.srv, env!("CARGO_BIN_EXE_ipshadow"), "dhcp", "--config"])
            .arg(self.ns.path("dhcp.toml"))
            .stdout(events)
            .stderr(std::fs::File::create(self.ns.path("server.log")).unwrap())
            .spawn()
            .unwrap();
        self.server = Some(child);
        common::lab::wait_for("the DHCP server to listen", Duration::from_secs(10), |seen| {
            *seen = std::fs::read_to_string(self.ns.path("server.log")).unwrap_or_default();
            seen.contains("serving on").then_some(())
        });
    }

    fn events(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.ns.path("events.jsonl")).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    fn event_count(&self, kind: &str, vm: &str, role: Option<&str>) -> usize {
        self.events()
            .iter()
            .filter(|e| e["kind"] == kind && e["vm"] == vm)
            .filter(|e| role.is_none_or(|r| e["migration"][1] == r))
            .count()
    }

    fn hook_lines(&self, vm: usize) -> Vec<BTreeMap<String, String>> {
        let text = std::fs::read_to_string(self.ns.path(&format!("hook-{}.log", ["a", "b"][vm]))).unwrap_or_default();
        text.lines()
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
                    .collect()
            })
            .collect()
    }

    /// Waits until the hook reports one of `events` after line `since`; returns that line.
    fn wait_hook(&self, vm: usize, since: usize, events: &[&str]) -> BTreeMap<String, String> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            // A binding counts when it names its address (dhcpcd also reports some without one).
            let wanted = |l: &BTreeMap<String, String>| {
                let event = l.get("event").map_or("", String::as_str);
                let binding = matches!(event, "BOUND" | "bound" | "renew" | "RENEW" | "REBOOT" | "REBIND");
                events.contains(&event) && (!binding || l.contains_key("ip") || l.contains_key("new_ip_address"))
            };
            if let Some(line) = self.hook_lines(vm).into_iter().skip(since).find(wanted) {
                return line;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{:?}: no hook event {events:?} for VM {vm}: {:?}", self.client, self.hook_lines(vm));
    }

    fn run(&self, vm: usize, args: &str) -> String {
        sh_any(&format!("ip netns exec {} {args}", self.vms[vm]))
    }

    fn dhclient(&self, vm: usize, extra: &str) -> String {
        let side = ["a", "b"][vm];
        self.run(
            vm,
            &format!(
                "dhclient {extra} -v -cf {conf} -sf {hook} -pf {pid} -lf {leases} {iface}",
                conf = self.ns.path("dhclient.conf"),
                hook = self.ns.path(&format!("hook-{side}.sh")),
                pid = self.ns.path(&format!("dhclient-{side}.pid")),
                leases = self.ns.path(&format!("dhclient-{side}.leases")),
                iface = self.iface(vm),
            ),
        )
    }

    fn spawn_daemon(&mut self, vm: usize) {
        let side = ["a", "b"][vm];
        let hook = self.ns.path(&format!("hook-{side}.sh"));
        let iface = self.iface(vm);
        let args: Vec<String> = match self.client {
            Client::Udhcpc => {
                ["busybox", "udhcpc", "-f", "-i", &iface, "-s", &hook, "-O", "224", "-t", "5", "-T", "1", "-A", "1"]
                    .map(String::from)
                    .to_vec()
            }
            Client::Dhcpcd => {
                let conf = self.ns.path("dhcpcd.conf");
                ["dhcpcd", "-B", "-4", "--noipv4ll", "-f", &conf, "-c", &hook, &iface].map(String::from).to_vec()
            }
            Client::Dhclient => unreachable!("dhclient runs once per step"),
        };
        let log = std::fs::File::create(self.ns.path(&format!("daemon-{side}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.vms[vm]])
            .args(&args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemons[vm] = Some(child);
    }

    fn daemon_pid(&self, vm: usize) -> u32 {
        self.daemons[vm].as_ref().unwrap().id()
    }

    /// Obtains a lease; returns the hook's line for it.
    fn obtain(&mut self, vm: usize) -> BTreeMap<String, String> {
        let since = self.hook_lines(vm).len();
        match self.client {
            Client::Dhclient => {
                let out = self.dhclient(vm, "-1");
                assert!(out.contains("DHCPACK"), "{out}");
            }
            _ => self.spawn_daemon(vm),
        }
        self.wait_hook(vm, since, &["BOUND", "bound", "REBOOT"])
    }

    /// Asks to extend the lease; returns the hook's line for the answer (`nak` ones included).
    fn renew(&mut self, vm: usize) -> (BTreeMap<String, String>, String) {
        let since = self.hook_lines(vm).len();
        let out = match self.client {
            Client::Dhclient => self.dhclient(vm, "-1"),
            Client::Udhcpc => sh_any(&format!("kill -USR1 {}", self.daemon_pid(vm))),
            Client::Dhcpcd => self.run(vm, &format!("dhcpcd -4 -n {}", self.iface(vm))),
        };
        let line = self.wait_hook(
            vm,
            since,
            &["BOUND", "bound", "renew", "RENEW", "REBOOT", "REBIND", "nak", "NAK", "EXPIRE", "FAIL"],
        );
        (line, out)
    }

    fn release(&mut self, vm: usize) {
        let since = self.hook_lines(vm).len();
        match self.client {
            Client::Dhclient => {
                self.dhclient(vm, "-r");
            }
            Client::Udhcpc => {
                sh(&format!("kill -USR2 {}", self.daemon_pid(vm)));
                self.wait_hook(vm, since, &["deconfig"]);
            }
            Client::Dhcpcd => {
                self.run(vm, &format!("dhcpcd -4 -k {}", self.iface(vm)));
            }
        }
        if let Some(mut d) = self.daemons[vm].take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

impl Lab {
    /// dhcpcd keeps leases per interface name in /var/lib/dhcpcd; a stale one from an earlier
    /// run with the same name would make it reboot into that lease.
    fn forget_dhcpcd_leases(&self) {
        for vm in 0..2 {
            let _ = std::fs::remove_file(format!("/var/lib/dhcpcd/{}.lease", self.iface(vm)));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in self.daemons.iter_mut().flatten().chain(self.server.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.forget_dhcpcd_leases();
    }
}

/// The lease time and shadowing role (1 source, 2 destination) a client's hook saw.
fn lease_and_role(line: &BTreeMap<String, String>) -> (u64, Option<u8>) {
    let lease = line.get("lease").or(line.get("new_dhcp_lease_time")).and_then(|v| v.parse().ok()).unwrap_or(0);
    let role = line.get("opt224").or(line.get("new_ipshadow")).and_then(|v| {
        if v.contains(',') || v.contains(' ') {
            v.split([',', ' ']).nth(1)?.trim().parse().ok()
        } else {
            let hex: String = v.chars().filter(|c| *c != ':').collect();
            u8::from_str_radix(hex.get(2..4)?, 16).ok()
        }
    });
    (lease, role)
}

fn address(line: &BTreeMap<String, String>) -> &str {
    line.get("ip").or(line.get("new_ip_address")).map_or("", String::as_str)
}

fn client_story(tag: &str, client: Client) {
    if !namespaces_available(&format!("{client:?}")) {
        return;
    }
    let (tool, package) = match client {
        Client::Dhclient => ("dhclient", "isc-dhcp-client"),
        Client::Udhcpc => ("busybox", "busybox"),
        Client::Dhcpcd => ("dhcpcd", "dhcpcd-base"),
    };
    if !common::tools::require_tool(&format!("{client:?}"), tool, package) {
        return;
    }
    let mut lab = Lab::new(tag, client);
    lab.forget_dhcpcd_leases();
    lab.start_server(None);
    // A obtains, renews and releases its reservation.
    let bound = lab.obtain(0);
    assert_eq!((address(&bound), lease_and_role(&bound)), (X, (600, None)), "{client:?}: {bound:?}");
    let (renewed, out) = lab.renew(0);
    assert_eq!(address(&renewed), X, "{client:?}: {renewed:?} {out}");
    assert!(lab.event_count("renewed", "vm-a", None) + lab.event_count("bound", "vm-a", None) >= 2);
    lab.release(0);
    let start = Instant::now();
    while lab.event_count("released", "vm-a", None) == 0 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(lab.event_count("released", "vm-a", None), 1, "{client:?}: {:?}", lab.events());
    lab.obtain(0);

    // Migration of X from A to B; the server restarts (SIGKILL) with the plan and its leases.
    let deadline = unix_now() + 300;
    lab.start_server(Some(deadline));
    let (a, out) = lab.renew(0);
    let (lease, role) = lease_and_role(&a);
    assert_eq!((address(&a), role), (X, Some(1)), "{client:?}: A is the source: {a:?} {out}");
    assert!(lease <= 300, "{client:?}: A's lease is capped at the deadline: {lease}");
    let b = lab.obtain(1);
    assert_eq!((address(&b), lease_and_role(&b)), (X, (60, Some(2))), "{client:?}: B gets X, short lease: {b:?}");
    assert!(lab.event_count("bound", "vm-b", Some("destination")) >= 1, "{:?}", lab.events());
    assert!(lab.event_count("renewed", "vm-a", Some("source")) + lab.event_count("bound", "vm-a", Some("source")) >= 1);
    // The deadline is brought forward (as when A fails); past it, A's renewal is refused.
    let deadline = unix_now() + 2;
    lab.start_server(Some(deadline));
    while unix_now() <= deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (nak, out) = lab.renew(0);
    let refused = matches!(nak["event"].as_str(), "nak" | "NAK") || out.contains("DHCPNAK");
    assert!(refused, "{client:?}: A renewed past the deadline: {nak:?} {out}");
    assert!(lab.event_count("refused", "vm-a", Some("source")) >= 1, "{:?}", lab.events());
    assert_eq!(lab.event_count("refused", "vm-b", None), 0);
    lab.release(1);
}

#[test]
fn dhclient_obtains_renews_releases_and_sees_the_shadowing_option() {
    client_story("ipdc", Client::Dhclient);
}

#[test]
fn udhcpc_obtains_renews_releases_and_sees_the_shadowing_option() {
    client_story("ipdu", Client::Udhcpc);
}

#[test]
fn dhcpcd_obtains_renews_releases_and_sees_the_shadowing_option() {
    client_story("ipdd", Client::Dhcpcd);
}

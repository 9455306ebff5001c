//! `ipshadow dhcp` killed with SIGKILL 20 times under perfdhcp load and restarted each time:
//! every lease whose ACK perfdhcp saw is in the store afterwards, a client always gets the same
//! address, and no address is bound to two clients. (ACKs leave only after their lease is on
//! disk, so this holds across power loss too; the kill is the part a test can do.)
//!
//! Needs root (perfdhcp binds port 67 as a relay). With `CI=true` it fails rather than skips.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::netns::{Netns, namespaces_available, sh};
use ipshadow_dhcp::{ClientKey, LeaseStore};

const ROUNDS: u64 = 20;

/// The (client MAC, address) pairs perfdhcp printed for REQUEST-ACK exchanges (`-x l`).
fn acked_leases(output: &str) -> Vec<([u8; 6], Ipv4Addr)> {
    let Some(start) = output.find("***Leases for REQUEST-ACK***") else { return Vec::new() };
    output[start..]
        .lines()
        .skip(2)
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("***"))
        .filter_map(|l| {
            let mut parts = l.split(',');
            let id = parts.next()?;
            let ip: Ipv4Addr = parts.next()?.parse().ok()?;
            // perfdhcp prints the hardware type then the MAC.
            let hex = id.get(2..14)?;
            let mut mac = [0u8; 6];
            for (i, b) in mac.iter_mut().enumerate() {
                *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
            Some((mac, ip))
        })
        .collect()
}

#[test]
fn every_acked_lease_survives_twenty_kill_9_restarts_under_load() {
    if !namespaces_available("dhcp crash test") {
        return;
    }
    // The load comes from Kea's perfdhcp: without it the test would only see "0 ACKs".
    if !common::tools::require_tool("dhcp crash test", "perfdhcp", "kea-admin") {
        return;
    }
    let mut lab = Netns::new("ipdk");
    let ns = lab.add("p");
    sh(&format!("ip -n {ns} addr add 127.0.0.2/8 dev lo"));
    let store = lab.path("leases.redb");
    let config = lab.path("dhcp.toml");
    std::fs::write(
        &config,
        format!(
            "server_id = \"127.0.0.1\"\nlisten = \"127.0.0.1:67\"\nlease_store = \"{store}\"\n\
             [[subnets]]\nnetwork = \"10.0.0.0\"\nprefix = 8\nrelays = [\"127.0.0.2\"]\nlease_secs = 3600\n\
             pool = {{ start = \"10.0.0.1\", end = \"10.0.255.254\" }}\n"
        ),
    )
    .unwrap();
    let mut acked: BTreeMap<[u8; 6], BTreeSet<Ipv4Addr>> = BTreeMap::new();
    let mut total = 0;
    let log = lab.path("server.log");
    for round in 0..ROUNDS {
        let mut server = Command::new("ip")
            .args(["netns", "exec", &ns, env!("CARGO_BIN_EXE_ipshadow"), "dhcp", "--config", &config])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        common::lab::wait_for("the DHCP server to listen", Duration::from_secs(10), |seen| {
            *seen = std::fs::read_to_string(&log).unwrap_or_default();
            seen.contains("serving on").then_some(())
        });
        // 3,000 exchanges/s from 4,000 clients chosen at random (a new seed each round, so the
        // same clients come back in later rounds), for 2 s.
        let load = Command::new("ip")
            .args(["netns", "exec", &ns, "perfdhcp", "-4", "-l", "127.0.0.2", "-r", "3000", "-R", "4000"])
            .args(["-s", &(round + 1).to_string(), "-p", "2", "-W", "300000", "-x", "l", "127.0.0.1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Pacing, not waiting for anything: the kill lands at a different point of the load
        // in each round.
        std::thread::sleep(Duration::from_millis(400 + 60 * round));
        server.kill().unwrap(); // SIGKILL, mid-load
        server.wait().unwrap();
        let out = load.wait_with_output().unwrap();
        let leases = acked_leases(&String::from_utf8_lossy(&out.stdout));
        total += leases.len();
        for (mac, ip) in leases {
            acked.entry(mac).or_default().insert(ip);
        }
    }
    println!("{total} ACKs seen by perfdhcp over {ROUNDS} rounds, {} clients", acked.len());
    assert!(total > 5_000, "the load reached the server: {total} ACKs");
    for (mac, ips) in &acked {
        assert_eq!(ips.len(), 1, "client {mac:02x?} got different addresses: {ips:?}");
    }
    let stored = LeaseStore::open(std::path::Path::new(&store)).unwrap().load().unwrap();
    let mut by_client: BTreeMap<ClientKey, Ipv4Addr> = BTreeMap::new();
    let mut holders: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
    for lease in &stored {
        by_client.insert(lease.client.clone(), lease.ip);
        *holders.entry(lease.ip).or_default() += 1;
    }
    for (mac, ips) in &acked {
        let ip = ips.first().unwrap();
        let found = by_client.get(&ClientKey::Mac(*mac)).or_else(|| {
            let mut id = vec![1];
            id.extend_from_slice(mac);
            by_client.get(&ClientKey::ClientId(id))
        });
        assert_eq!(found, Some(ip), "ACKed lease of {mac:02x?} lost");
    }
    assert!(holders.values().all(|n| *n == 1), "an address bound to two clients");
}

//! The server's cost per request against the number of lease plans it holds (issue 14 item 5):
//! 1 plan, or 10,000 (ended migrations of other VMs, as the manager hands them over, and the one
//! active). Two requests: a renewal by a VM that takes part in no migration (most of them), and
//! one by A of the active migration (the oldest plan). Ignored by default (a measurement); run by
//! `bench/manager-scaling.sh`, which prints the `RESULT` line.

#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Encodable, Encoder, Message, MessageType};
use ipshadow_dhcp::{DhcpConfig, DhcpServer, MigrationPlan, PlanState};

const X: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const C: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 12);
const T0: u64 = 1_800_000_000;

fn server(plans: u64) -> DhcpServer {
    let config = DhcpConfig::from_toml(
        r#"
        server_id = "10.0.0.1"
        [[subnets]]
        network = "10.0.0.0"
        prefix = 16
        routers = ["10.0.0.1"]
        lease_secs = 3600
        [[reservations]]
        vm = "vm-a"
        mac = "02:00:00:00:00:0a"
        ip = "10.0.0.10"
        [[reservations]]
        vm = "vm-b"
        mac = "02:00:00:00:00:0b"
        [[reservations]]
        vm = "vm-c"
        mac = "02:00:00:00:00:0c"
        ip = "10.0.0.12"
    "#,
    )
    .unwrap();
    let mut server = DhcpServer::new(config).unwrap();
    server.add_plan(MigrationPlan::new(1, X, "vm-a", "vm-b", T0 + 600)).unwrap();
    for id in 2..=plans {
        let i = u32::try_from(id).unwrap();
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 100, 0)) + i);
        let mut plan = MigrationPlan::new(id, ip, &format!("vm-{i}"), &format!("vm-{}", i + 1), T0 - 600);
        plan.state = PlanState::Completed;
        server.restore_plan(plan);
    }
    server
}

fn renew(mac: u8, ip: Ipv4Addr) -> Vec<u8> {
    let mut m = Message::new_with_id(
        0x1234,
        ip,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &[2, 0, 0, 0, 0, mac],
    );
    m.opts_mut().insert(DhcpOption::MessageType(MessageType::Request));
    let mut buf = Vec::new();
    m.encode(&mut Encoder::new(&mut buf)).unwrap();
    buf
}

/// Median nanoseconds per request of `datagram`, over batches of 1,000.
fn per_request(server: &mut DhcpServer, datagram: &[u8]) -> f64 {
    assert!(server.handle(datagram, T0).reply.is_some(), "answered");
    let mut batches: Vec<Duration> = (0..21)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..1_000 {
                std::hint::black_box(server.handle(datagram, T0));
            }
            start.elapsed()
        })
        .collect();
    batches.sort();
    batches[batches.len() / 2].as_nanos() as f64 / 1_000.0
}

#[test]
#[ignore = "a measurement: bench/manager-scaling.sh runs it"]
fn dhcp_cost_per_request_against_plans() {
    let mut line = String::from("RESULT");
    for plans in [1u64, 10_000] {
        let mut server = server(plans);
        let bystander = per_request(&mut server, &renew(0xc, C));
        let migrating = per_request(&mut server, &renew(0xa, X));
        // The lookups a request makes, as the server made them before its index (a scan of every
        // plan for the client's VM, and for the address's active plan) and with it.
        let lookups = |f: &dyn Fn() -> bool| {
            let start = Instant::now();
            for _ in 0..1_000 {
                std::hint::black_box(f());
            }
            start.elapsed().as_nanos() as f64 / 1_000.0
        };
        let scan = lookups(&|| {
            server.plans().collect::<Vec<_>>().iter().rev().any(|p| p.source == "vm-c" || p.destination == "vm-c")
                || server.plans().any(|p| p.ip == C && p.is_active())
        });
        let index = lookups(&|| {
            server.indexed_plans().latest_of_vm("vm-c").is_some()
                || server.indexed_plans().active_of_ip(C).next().is_some()
        });
        println!(
            "plans={plans}: a renewal by a VM in no migration {bystander:.0} ns, by A of the active one \
             {migrating:.0} ns; its plan lookups by a scan {scan:.0} ns, by the index {index:.0} ns"
        );
        line.push_str(&format!(
            " dhcp_bystander_ns_{plans}={bystander:.0} dhcp_migrating_ns_{plans}={migrating:.0} \
             lookup_scan_ns_{plans}={scan:.0} lookup_index_ns_{plans}={index:.0}"
        ));
    }
    println!("{line}");
}

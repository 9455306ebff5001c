//! The service following the manager's lease plans (what `ipshadow serve` feeds it): a plan's
//! deadline that the manager moves (a lease extension for A's drain, an early finish) reaches the
//! server and its store, so A's next renewal and a restarted server both follow it.

#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;

use ipshadow_dhcp::service::Service;
use ipshadow_dhcp::{DhcpConfig, LeaseStore, MigrationPlan, PlanState};

const X: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const DEADLINE: u64 = 1_800_000_600;

fn config(dir: &std::path::Path) -> DhcpConfig {
    DhcpConfig::from_toml(&format!(
        r#"
        server_id = "10.0.0.1"
        listen = "127.0.0.1:0"
        lease_store = "{}"
        [[subnets]]
        network = "10.0.0.0"
        prefix = 24
        routers = ["10.0.0.1"]
        [[reservations]]
        vm = "vm-a"
        mac = "02:00:00:00:00:0a"
        ip = "10.0.0.10"
        [[reservations]]
        vm = "vm-b"
        mac = "02:00:00:00:00:0b"
    "#,
        dir.join("leases.redb").display()
    ))
    .unwrap()
}

fn plan(deadline: u64, state: PlanState) -> MigrationPlan {
    let mut plan = MigrationPlan::new(7, X, "vm-a", "vm-b", deadline);
    plan.state = state;
    plan
}

#[test]
fn a_moved_deadline_reaches_the_server_and_its_store() {
    let dir = std::env::temp_dir().join(format!("ipshadow-dhcp-service-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = config(&dir);
    let reservations = config.reservations.clone();
    let mut service = Service::start(config).unwrap();
    assert!(service.follow(reservations.clone(), &[plan(DEADLINE, PlanState::Active)]).unwrap().is_empty());
    // Extended for A's drain: the active plan takes the later deadline.
    service.follow(reservations.clone(), &[plan(DEADLINE + 300, PlanState::Active)]).unwrap();
    assert_eq!(service.server().plan(7).map(|p| p.deadline), Some(DEADLINE + 300));
    // Finished early: completed, A's end moved to the early end.
    service.follow(reservations, &[plan(DEADLINE - 200, PlanState::Completed)]).unwrap();
    let current = service.server().plan(7).cloned().unwrap();
    assert_eq!((current.state, current.deadline), (PlanState::Completed, DEADLINE - 200));
    drop(service);
    let stored = LeaseStore::open(&dir.join("leases.redb")).unwrap().load_plans().unwrap();
    assert_eq!(
        stored.iter().map(|p| (p.state.clone(), p.deadline)).collect::<Vec<_>>(),
        [(PlanState::Completed, DEADLINE - 200)]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

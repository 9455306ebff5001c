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

/// The server's plan indexes follow what `follow` does to its plans: a plan that ends no longer
/// makes its address or VMs busy, and the next migration of the address (back from B to A) is
/// the one its VMs' requests find.
#[test]
fn the_plan_indexes_follow_the_manager() {
    let dir = std::env::temp_dir().join(format!("ipshadow-dhcp-service-index-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = config(&dir);
    let mut reservations = config.reservations.clone();
    let mut service = Service::start(config).unwrap();
    let ids = |service: &Service, vm: &str| service.server().indexed_plans().latest_of_vm(vm).map(|p| p.id);
    let active = |service: &Service| service.server().indexed_plans().active_of_ip(X).map(|p| p.id).collect::<Vec<_>>();

    assert!(service.follow(reservations.clone(), &[plan(DEADLINE, PlanState::Active)]).unwrap().is_empty());
    assert_eq!((active(&service), ids(&service, "vm-a"), ids(&service, "vm-b")), (vec![7], Some(7), Some(7)));
    assert!(service.server().indexed_plans().vm_busy("vm-b"));

    service.follow(reservations.clone(), &[plan(DEADLINE, PlanState::Completed)]).unwrap();
    assert!(active(&service).is_empty());
    assert!(!service.server().indexed_plans().vm_busy("vm-a") && !service.server().indexed_plans().vm_busy("vm-b"));
    assert_eq!(ids(&service, "vm-b"), Some(7), "an ended plan still decides B's lease");

    // X is B's now; it moves back to A: accepted (nothing stale says X or a VM is busy).
    reservations[0].ip = None;
    reservations[1].ip = Some(X);
    let mut back = MigrationPlan::new(8, X, "vm-b", "vm-a", DEADLINE + 600);
    back.state = PlanState::Active;
    let refused = service.follow(reservations, &[plan(DEADLINE, PlanState::Completed), back]).unwrap();
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!((active(&service), ids(&service, "vm-a"), ids(&service, "vm-b")), (vec![8], Some(8), Some(8)));
    drop(service);
    std::fs::remove_dir_all(&dir).unwrap();
}

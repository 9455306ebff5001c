//! Reassignment through the inventory: the immediate move, a migration started with its
//! deadline chosen by the seed's rule, every refusal (unknown or foreign address or VM, A == B,
//! already migrating, a deadline outside policy, a ramp that does not fit it) leaving the store
//! unchanged, the plan fitted to the deadline, dry runs that change nothing, tenants isolated,
//! and two racing requests starting exactly one migration.

#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;

use ipshadow_control::inventory::{Inventory, InventoryError, Vm};
use ipshadow_control::migration::MigrationState;
use std::time::Duration;

use ipshadow_control::plan::RampSource;
use ipshadow_control::reassign::{DeadlinePolicy, DeadlineSource, ReassignRequest, Reassigned};
use ipshadow_control::{RedbStore, Store};
use ipshadow_core::{Ramp, RampStep};

const X: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const NOW: u64 = 1_800_000_000_000;

fn inventory(name: &str) -> Inventory<RedbStore> {
    let dir = tempfile::Builder::new().prefix(&format!("ipshadow-reassign-{name}-")).tempdir().unwrap();
    let inv = Inventory::new(RedbStore::open(&dir.path().join("store.redb")).unwrap());
    // The open store keeps its file: the folder can go now (Linux frees the file at its close).
    drop(dir);
    for (id, tenant, mac) in [
        ("vm-a", "acme", "02:00:00:00:00:0a"),
        ("vm-b", "acme", "02:00:00:00:00:0b"),
        ("vm-z", "zeta", "02:00:00:00:00:0c"),
    ] {
        inv.add_vm(&Vm { id: id.into(), tenant: tenant.into(), mac: mac.into(), segment: id.into() }).unwrap();
    }
    inv.add_address("acme", X, Some("vm-a")).unwrap();
    inv
}

fn request(to: &str, migrate: bool) -> ReassignRequest {
    ReassignRequest {
        to: to.into(),
        migrate,
        ramp: None,
        affinity: None,
        mode: None,
        strategy: None,
        deadline_ms: None,
        dry_run: false,
    }
}

#[test]
fn without_migrate_the_address_moves_at_once() {
    let inv = inventory("move");
    let r = inv.reassign(Some("acme"), X, &request("vm-b", false), NOW, None, DeadlinePolicy::default()).unwrap();
    assert_eq!(r, Reassigned::Moved);
    assert_eq!(inv.address(None, X).unwrap().value.vm.as_deref(), Some("vm-b"));
}

#[test]
fn with_migrate_a_migration_starts_and_the_deadline_follows_the_seed() {
    let inv = inventory("migrate");
    let lease_end = NOW + 600_000;
    let Reassigned::Migrating(m) =
        inv.reassign(Some("acme"), X, &request("vm-b", true), NOW, Some(lease_end), DeadlinePolicy::default()).unwrap()
    else {
        panic!("expected a migration")
    };
    assert_eq!((m.id, m.source.as_str(), m.destination.as_str()), (1, "vm-a", "vm-b"));
    assert_eq!((m.deadline_ms, m.deadline_source), (lease_end, DeadlineSource::SourceLeaseEnd));
    assert_eq!(m.lifecycle.state, MigrationState::Pending);
    let stored = inv.migration(Some("acme"), 1).unwrap();
    assert_eq!(stored, *m);
    // The address still belongs to A, marked as migrating.
    let a = inv.address(None, X).unwrap().value;
    assert_eq!((a.vm.as_deref(), a.migration), (Some("vm-a"), Some(1)));
    // A requested deadline within policy wins and is shown as requested.
    let inv = inventory("requested");
    let mut req = request("vm-b", true);
    req.deadline_ms = Some(NOW + 120_000);
    let Reassigned::Migrating(m) =
        inv.reassign(None, X, &req, NOW, Some(lease_end), DeadlinePolicy::default()).unwrap()
    else {
        panic!()
    };
    assert_eq!((m.deadline_ms, m.deadline_source), (NOW + 120_000, DeadlineSource::Requested));
}

#[test]
fn every_refusal_is_precise_and_changes_nothing() {
    let inv = inventory("refusals");
    let before = inv.store().range("/").unwrap();
    let policy = DeadlinePolicy::default();
    let cases: Vec<(Option<&str>, Ipv4Addr, ReassignRequest, &str)> = vec![
        (Some("acme"), Ipv4Addr::new(10, 0, 0, 99), request("vm-b", true), "not_found address"),
        (Some("zeta"), X, request("vm-z", true), "not_found address"),
        (Some("acme"), X, request("vm-nope", true), "not_found vm"),
        (Some("acme"), X, request("vm-z", true), "not_found vm"),
        (None, X, request("vm-z", true), "not_found vm"),
        (Some("acme"), X, request("vm-a", true), "conflict"),
        (Some("acme"), X, ReassignRequest { deadline_ms: Some(NOW + 1_000), ..request("vm-b", true) }, "invalid"),
        (
            Some("acme"),
            X,
            ReassignRequest { deadline_ms: Some(NOW + 1_000_000_000), ..request("vm-b", true) },
            "invalid",
        ),
        (Some("acme"), X, ReassignRequest { deadline_ms: Some(NOW + 60_000), ..request("vm-b", false) }, "invalid"),
        (
            Some("acme"),
            X,
            ReassignRequest { ramp: Some(ipshadow_core::Ramp::Linear { pct_per_sec: -1.0 }), ..request("vm-b", true) },
            "invalid",
        ),
        // The default ramp asked for explicitly: 120 s to 100 %, a deadline 60 s away.
        (
            Some("acme"),
            X,
            ReassignRequest { ramp: Some(Ramp::default()), deadline_ms: Some(NOW + 60_000), ..request("vm-b", true) },
            "ramp_does_not_fit",
        ),
        (
            Some("acme"),
            X,
            ReassignRequest { ramp: Some(steps(&[10.0, 50.0], 1_000)), ..request("vm-b", true) },
            "ramp_does_not_fit",
        ),
        // A dry run is refused as the real request is.
        (Some("acme"), X, ReassignRequest { dry_run: true, ..request("vm-a", true) }, "conflict"),
        (
            Some("acme"),
            X,
            ReassignRequest {
                dry_run: true,
                ramp: Some(Ramp::default()),
                deadline_ms: Some(NOW + 60_000),
                ..request("vm-b", true)
            },
            "ramp_does_not_fit",
        ),
    ];
    for (tenant, ip, req, expected) in cases {
        let err = inv.reassign(tenant, ip, &req, NOW, None, policy).unwrap_err();
        let kind = match &err {
            InventoryError::NotFound { kind, .. } => format!("not_found {kind}"),
            InventoryError::Conflict(_) => "conflict".into(),
            InventoryError::Invalid(_) => "invalid".into(),
            InventoryError::RampDoesNotFit(_) => "ramp_does_not_fit".into(),
            other => format!("{other:?}"),
        };
        assert_eq!(kind, expected, "{tenant:?} {ip} {req:?}: {err}");
        assert_eq!(inv.store().range("/").unwrap(), before, "a refusal changed the store: {err}");
    }
    // An address no VM holds has nothing to migrate.
    inv.add_address("acme", Ipv4Addr::new(10, 0, 0, 11), None).unwrap();
    let err = inv.reassign(Some("acme"), Ipv4Addr::new(10, 0, 0, 11), &request("vm-b", true), NOW, None, policy);
    assert!(matches!(err, Err(InventoryError::Conflict(ref m)) if m.contains("held by no VM")), "{err:?}");
    // Already migrating.
    inv.reassign(Some("acme"), X, &request("vm-b", true), NOW, None, policy).unwrap();
    let err = inv.reassign(Some("acme"), X, &request("vm-b", true), NOW, None, policy).unwrap_err();
    assert!(matches!(err, InventoryError::Conflict(ref m) if m.contains("already migrating")), "{err}");
    // Another tenant cannot see the migration either.
    assert!(matches!(inv.migration(Some("zeta"), 1), Err(InventoryError::NotFound { .. })));
}

#[test]
fn racing_requests_start_exactly_one_migration() {
    let inv = std::sync::Arc::new(inventory("race"));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let inv = std::sync::Arc::clone(&inv);
            std::thread::spawn(move || {
                inv.reassign(Some("acme"), X, &request("vm-b", true), NOW, None, DeadlinePolicy::default())
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let started = results.iter().filter(|r| matches!(r, Ok(Reassigned::Migrating(_)))).count();
    assert_eq!(started, 1, "{results:?}");
    for r in results.iter().filter(|r| r.is_err()) {
        assert!(matches!(r, Err(InventoryError::Raced | InventoryError::Conflict(_))), "{r:?}");
    }
    let (migrations, _) = inv.store().range("/v1/migrations/").unwrap();
    assert_eq!(migrations.len(), 1);
}

/// One racer's call; whether it succeeded.
type Attempt = dyn FnOnce(&Inventory<RedbStore>) -> bool + Send;

/// A VM removed while an address is given to it: one of the two wins, never both (the address
/// would be left on a VM that is gone).
#[test]
fn removing_a_vm_and_giving_it_an_address_never_both_succeed() {
    let y = Ipv4Addr::new(10, 0, 0, 11);
    for round in 0..100 {
        let inv = std::sync::Arc::new(inventory("remove-race"));
        inv.add_vm(&Vm {
            id: "vm-c".into(),
            tenant: "acme".into(),
            mac: "02:00:00:00:00:0d".into(),
            segment: "c".into(),
        })
        .unwrap();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(3));
        let spawn = |f: Box<Attempt>| {
            let (inv, barrier) = (std::sync::Arc::clone(&inv), std::sync::Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                f(&inv)
            })
        };
        let removed = spawn(Box::new(|inv| inv.remove_vm(Some("acme"), "vm-c").is_ok()));
        let moved = spawn(Box::new(move |inv| {
            inv.reassign(Some("acme"), X, &request("vm-c", round % 2 == 0), NOW, None, DeadlinePolicy::default())
                .is_ok()
        }));
        let added = spawn(Box::new(move |inv| inv.add_address("acme", y, Some("vm-c")).is_ok()));
        let (removed, moved, added) = (removed.join().unwrap(), moved.join().unwrap(), added.join().unwrap());
        assert!(!(removed && (moved || added)), "round {round}: vm-c removed, yet moved {moved}, added {added}");
        // Whatever won, no address and no migration names a VM that is gone.
        let vms: Vec<String> = inv.vms(None).unwrap().into_iter().map(|v| v.id).collect();
        for a in inv.addresses(None).unwrap() {
            assert!(a.vm.as_ref().is_none_or(|v| vms.contains(v)), "round {round}: {a:?} on a removed VM");
        }
        for m in inv.migrations(None).unwrap() {
            assert!(vms.contains(&m.destination), "round {round}: migration to a removed VM");
        }
    }
}

#[test]
fn the_end_of_a_migration_gives_the_address_to_the_winner() {
    use ipshadow_control::migration::MigrationEvent as E;
    for (last, winner) in [
        (E::CutOver { reason: "deadline".into() }, "vm-b"),
        (E::DestinationFailed { reason: "probes".into() }, "vm-a"),
        (E::Abort, "vm-a"),
    ] {
        let inv = inventory("advance");
        inv.reassign(Some("acme"), X, &request("vm-b", true), NOW, None, DeadlinePolicy::default()).unwrap();
        inv.advance(1, E::PlanWritten, NOW + 1).unwrap();
        inv.advance(1, E::DestinationLeaseBound, NOW + 2).unwrap();
        inv.advance(1, E::DestinationReady, NOW + 2).unwrap();
        inv.record_split(1, 25.0).unwrap();
        assert_eq!(inv.migration(None, 1).unwrap().split_pct, 25.0);
        let cut = matches!(last, E::CutOver { .. });
        inv.advance(1, last, NOW + 3).unwrap();
        if cut {
            // Still A's until the router confirms.
            assert_eq!(inv.address(None, X).unwrap().value.vm.as_deref(), Some("vm-a"));
            inv.advance(1, E::RouterCompleted, NOW + 4).unwrap();
        }
        let a = inv.address(None, X).unwrap().value;
        assert_eq!((a.vm.as_deref(), a.migration), (Some(winner), None));
        let m = inv.migration(None, 1).unwrap();
        assert!(m.lifecycle.state.is_final());
        // A final migration takes nothing more, and the refusal changes nothing.
        let before = inv.store().range("/").unwrap();
        assert!(matches!(inv.advance(1, E::Resume, NOW + 5), Err(InventoryError::Conflict(_))));
        assert_eq!(inv.store().range("/").unwrap(), before);
        // The address can migrate again.
        let back = if winner == "vm-b" { "vm-a" } else { "vm-b" };
        assert!(matches!(
            inv.reassign(Some("acme"), X, &request(back, true), NOW + 6, None, DeadlinePolicy::default()),
            Ok(Reassigned::Migrating(m)) if m.id == 2
        ));
    }
}

fn steps(pcts: &[f64], hold_ms: u64) -> Ramp {
    Ramp::Steps { steps: pcts.iter().map(|&pct| RampStep { pct, hold: Duration::from_millis(hold_ms) }).collect() }
}

fn migrating(r: Result<Reassigned, InventoryError>) -> ipshadow_control::reassign::Migration {
    match r {
        Ok(Reassigned::Migrating(m)) => *m,
        other => panic!("expected a migration, got {other:?}"),
    }
}

/// Issue 12's case: A's lease ends 48 s from now, no ramp requested. The default ramp (120 s to
/// 100 %) is shortened to reach 100 % by half of that: holds of 6 s, 24 s to 100 %; the router
/// is given that ramp. With a day-long lease the default is kept as it is.
#[test]
fn the_default_ramp_is_fitted_to_the_lease_end() {
    let inv = inventory("plan-48s");
    let m = migrating(inv.reassign(
        Some("acme"),
        X,
        &request("vm-b", true),
        NOW,
        Some(NOW + 48_000),
        DeadlinePolicy::default(),
    ));
    let plan = m.plan.clone().expect("a plan");
    assert_eq!(plan.ramp, steps(&[1.0, 5.0, 25.0, 50.0, 100.0], 6_000));
    assert_eq!((plan.ramp_source, plan.scaled, plan.share), (RampSource::DefaultScaled, true, Some(0.5)));
    assert_eq!((plan.ramp_to_100_ms, plan.ready_allowance_ms, plan.time_to_deadline_ms), (24_000, 10_000, 48_000));
    assert_eq!((plan.deadline_ms, plan.deadline_source), (NOW + 48_000, DeadlineSource::SourceLeaseEnd));
    // The top-level fields agree with the plan: the manager and the router read `ramp`.
    assert_eq!((&m.ramp, m.deadline_ms, m.deadline_source), (&plan.ramp, plan.deadline_ms, plan.deadline_source));
    let desired = ipshadow_control::project::router_desired(
        &inv.addresses(None).unwrap(),
        std::slice::from_ref(&m),
        NOW,
        &DeadlinePolicy::default(),
    );
    assert_eq!(desired.entries[0].entry.options.ramp, plan.ramp, "the router follows the fitted ramp");
    // The router closes A's last flows in the plan's closing window, and may close first at an
    // early finish only flows forecast to outlive the longest deadline.
    let options = &desired.entries[0].entry.options;
    assert_eq!(plan.close_grace_ms, 10_000);
    assert_eq!(options.close_grace, Duration::from_millis(plan.close_grace_ms));
    assert_eq!(options.outlive_limit, Duration::from_millis(DeadlinePolicy::default().max_ms));
    assert!(plan.ramp_to_100_ms + plan.ready_allowance_ms + plan.close_grace_ms <= plan.time_to_deadline_ms);
    assert_eq!(inv.migration(None, 1).unwrap(), m, "stored as answered");

    let inv = inventory("plan-day");
    let day = NOW + 24 * 3_600_000;
    let m = migrating(inv.reassign(Some("acme"), X, &request("vm-b", true), NOW, Some(day), DeadlinePolicy::default()));
    let plan = m.plan.expect("a plan");
    assert_eq!(
        (plan.ramp, plan.ramp_source, plan.scaled, plan.share),
        (Ramp::default(), RampSource::Default, false, None)
    );
    assert_eq!(plan.ramp_to_100_ms, 120_000);
    assert_eq!(m.ramp, Ramp::default());
}

#[test]
fn a_requested_ramp_that_fits_is_kept_and_one_that_does_not_is_refused_with_what_would() {
    let inv = inventory("plan-requested");
    let before = inv.store().range("/").unwrap();
    // The default ramp asked for explicitly against A's lease ending in 48 s.
    let req = ReassignRequest { ramp: Some(Ramp::default()), ..request("vm-b", true) };
    let err = inv.reassign(Some("acme"), X, &req, NOW, Some(NOW + 48_000), DeadlinePolicy::default()).unwrap_err();
    let InventoryError::RampDoesNotFit(misfit) = &err else { panic!("{err:?}") };
    assert_eq!((misfit.ramp_to_100_ms, misfit.available_ms()), (Some(120_000), 38_000));
    assert_eq!(misfit.fitting_steps, Some(steps(&[1.0, 5.0, 25.0, 50.0, 100.0], 6_000)));
    assert_eq!(misfit.earliest_deadline_ms, Some(NOW + 130_000));
    assert!(err.to_string().contains("linear at 4.17 %/s"), "{err}");
    assert_eq!(inv.store().range("/").unwrap(), before, "a refusal changed the store");
    // Its suggestion fits, and is followed as requested.
    let req = ReassignRequest { ramp: misfit.fitting_steps.clone(), ..request("vm-b", true) };
    let m = migrating(inv.reassign(Some("acme"), X, &req, NOW, Some(NOW + 48_000), DeadlinePolicy::default()));
    let plan = m.plan.expect("a plan");
    assert_eq!((plan.ramp_source, plan.scaled, plan.ramp_to_100_ms), (RampSource::Requested, false, 24_000));
    assert_eq!(Some(m.ramp), misfit.fitting_steps);
}

/// A dry run says what would happen and changes nothing: no migration, no mark on the address,
/// no id taken (the real request after it gets id 1, with the plan the dry run showed).
#[test]
fn a_dry_run_answers_the_plan_and_changes_nothing() {
    let inv = inventory("dry-run");
    let before = inv.store().range("/").unwrap();
    let dry = ReassignRequest { dry_run: true, ..request("vm-b", true) };
    let lease_end = Some(NOW + 48_000);
    let Reassigned::WouldMigrate(plan) =
        inv.reassign(Some("acme"), X, &dry, NOW, lease_end, DeadlinePolicy::default()).unwrap()
    else {
        panic!("expected a plan")
    };
    assert_eq!(plan.ramp, steps(&[1.0, 5.0, 25.0, 50.0, 100.0], 6_000));
    let moved = ReassignRequest { dry_run: true, ..request("vm-b", false) };
    assert_eq!(
        inv.reassign(Some("acme"), X, &moved, NOW, None, DeadlinePolicy::default()).unwrap(),
        Reassigned::WouldMove
    );
    assert_eq!(inv.store().range("/").unwrap(), before, "a dry run changed the store");
    let m = migrating(inv.reassign(Some("acme"), X, &request("vm-b", true), NOW, lease_end, DeadlinePolicy::default()));
    assert_eq!((m.id, m.plan), (1, Some(*plan)));
}

/// Ended migrations go after their age or beyond the count, newest kept; a migration that has
/// not ended is never removed, however old.
#[test]
fn retention_removes_ended_migrations_by_age_and_count_and_never_a_live_one() {
    use ipshadow_control::migration::MigrationEvent as E;
    use ipshadow_control::retention::{Retention, purge_ended};
    let inv = inventory("retention");
    // Five migrations to B, each aborted (X stays A's) a minute after the previous one.
    for i in 0..5u64 {
        let at = NOW + i * 60_000;
        inv.reassign(Some("acme"), X, &request("vm-b", true), at, None, DeadlinePolicy::default()).unwrap();
        inv.advance(i + 1, E::Abort, at + 1).unwrap();
    }
    // A sixth, still running.
    let live_at = NOW + 5 * 60_000;
    inv.reassign(Some("acme"), X, &request("vm-b", true), live_at, None, DeadlinePolicy::default()).unwrap();
    let ids = |inv: &Inventory<RedbStore>| inv.migrations(None).unwrap().iter().map(|m| m.id).collect::<Vec<_>>();
    assert_eq!(ids(&inv), [1, 2, 3, 4, 5, 6]);

    // At most three ended kept: the two oldest go.
    let keep3 = Retention { max_age: Duration::from_secs(3600), max_ended: 3 };
    assert_eq!(purge_ended(inv.store(), &keep3, live_at).unwrap(), 2);
    assert_eq!(ids(&inv), [3, 4, 5, 6]);
    assert_eq!(purge_ended(inv.store(), &keep3, live_at).unwrap(), 0, "nothing more to remove");

    // A day later every ended one is past its age; the live one stays.
    let day = Retention { max_age: Duration::from_secs(3600), max_ended: 10_000 };
    assert_eq!(purge_ended(inv.store(), &day, live_at + 86_400_000).unwrap(), 3);
    assert_eq!(ids(&inv), [6]);
}

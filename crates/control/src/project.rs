//! What the parts should be doing, derived from the store: the router's desired state and the
//! DHCP server's lease plans are pure functions of the addresses and migrations (and the time),
//! so a restarted manager, router or DHCP server converges on the same picture, and a part that
//! watches the store needs no commands.

use core::time::Duration;
use std::collections::BTreeMap;

use ipshadow_contracts::dhcp::{MigrationPlan, PlanState};
use ipshadow_contracts::router::{Desired, DesiredEntry};
use ipshadow_core::{CongestionControlParameters, EntryState, Instant, MigrationOptions, ShadowingEntry, VmId};

use crate::inventory::Address;
use crate::migration::MigrationState;
use crate::reassign::{DeadlinePolicy, Migration};

/// How long a rolled-back or aborted migration's entry stays (split 0, B's flows draining): B's
/// shadow lease, after which B has lost the address.
pub const ROLLBACK_DRAIN: Duration = Duration::from_secs(60);

/// Unix milliseconds as the router's clock (unix microseconds).
fn instant(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

/// When a final migration reached its final state (its last history entry).
fn ended_at(m: &Migration) -> u64 {
    m.lifecycle.history.last().map_or(m.created_ms, |h| h.at_ms)
}

/// The router's desired state: every held address with its VM, every migration that shadows
/// its address (or is about to: pending) as an entry in the matching state (a rolled-back or aborted one for
/// [`ROLLBACK_DRAIN`] after it ended, then the address is A's again). Each entry's closing
/// window is its plan's (the policy's for migrations stored before plans had one); the flows
/// early finish may close first are those forecast to outlive the policy's longest deadline.
pub fn router_desired(
    addresses: &[Address],
    migrations: &[Migration],
    now_ms: u64,
    policy: &DeadlinePolicy,
) -> Desired {
    let mut desired = Desired { addresses: BTreeMap::new(), entries: Vec::new() };
    for a in addresses {
        if let Some(vm) = &a.vm {
            desired.addresses.insert(a.ip, VmId::from(vm.as_str()));
        }
    }
    desired.entries.extend(
        migrations
            .iter()
            .filter(|m| drain_end(m).is_none_or(|end| now_ms < end))
            .filter_map(|m| router_entry(m, policy)),
    );
    desired
}

/// When a rolled-back or aborted migration's entry leaves the router (unix milliseconds):
/// [`ROLLBACK_DRAIN`] after it ended. `None` for a migration in any other state.
pub fn drain_end(m: &Migration) -> Option<u64> {
    matches!(m.lifecycle.state, MigrationState::RolledBack | MigrationState::Aborted)
        .then(|| ended_at(m).saturating_add(ROLLBACK_DRAIN.as_millis() as u64))
}

/// The router's entry of one migration, whatever the time: `None` when no state of it has one
/// (completed, failed); a rolled-back or aborted one has its entry until [`drain_end`], which
/// the caller checks (the only part of the router's projection that depends on the time).
pub fn router_entry(m: &Migration, policy: &DeadlinePolicy) -> Option<DesiredEntry> {
    let state = m.lifecycle.state;
    // A pending migration (created, its plan not yet written) is installed already,
    // waiting for B's lease: it changes no forwarding, and the router has it one store
    // transaction sooner.
    if !state.is_shadowing() && drain_end(m).is_none() && state != MigrationState::Pending {
        return None;
    }
    let options = MigrationOptions {
        strategy: m.strategy,
        mode: m.mode,
        affinity: m.affinity,
        ramp: m.ramp.clone(),
        deadline: Some(instant(m.deadline_ms)),
        salt: m.id,
        close_grace: Duration::from_millis(m.plan.as_ref().map_or(policy.close_grace_ms, |p| p.close_grace_ms)),
        outlive_limit: Duration::from_millis(policy.max_ms),
        ..MigrationOptions::default()
    };
    let mut entry = ShadowingEntry::new(
        m.ip,
        VmId::from(m.source.as_str()),
        VmId::from(m.destination.as_str()),
        instant(m.created_ms),
        CongestionControlParameters::default(),
        options,
    );
    entry.traffic_split_percentage = m.split_pct.clamp(0.0, 100.0);
    entry.state = match state {
        MigrationState::WaitingForDestinationLease | MigrationState::Pending => EntryState::WaitingForLease,
        MigrationState::Paused => EntryState::Paused,
        MigrationState::RolledBack | MigrationState::Aborted => EntryState::RollingBack,
        _ => EntryState::Ramping,
    };
    if entry.state == EntryState::WaitingForLease {
        entry.traffic_split_percentage = 0.0;
    }
    Some(DesiredEntry {
        lease_bound: entry.state != EntryState::WaitingForLease,
        // Only while the split is the router's to set: a rolling-back entry refuses promote.
        promote: m.lifecycle.promoted && matches!(state, MigrationState::Ramping | MigrationState::Paused),
        cut_over: state == MigrationState::CutOver,
        finish_rollback: false,
        entry,
    })
}

/// Why a failed migration failed, from its history.
fn failure_reason(m: &Migration) -> String {
    match m.lifecycle.history.last().map(|h| &h.event) {
        Some(crate::migration::MigrationEvent::Fail { reason }) => reason.clone(),
        _ => "failed".to_owned(),
    }
}

/// The DHCP server's lease plans: active while the address is shadowed, completed or rolled
/// back once the migration ended that way (so B gets the normal lease, or is refused), none for
/// migrations that never wrote a plan.
pub fn dhcp_plans(migrations: &[Migration]) -> Vec<MigrationPlan> {
    migrations.iter().filter_map(dhcp_plan).collect()
}

/// The DHCP server's lease plan of one migration (see [`dhcp_plans`]).
pub fn dhcp_plan(m: &Migration) -> Option<MigrationPlan> {
    let state = match m.lifecycle.state {
        MigrationState::Pending => return None,
        s if s.is_shadowing() => PlanState::Active,
        MigrationState::Completed => PlanState::Completed,
        MigrationState::Failed => PlanState::Failed(failure_reason(m)),
        _ => PlanState::RolledBack,
    };
    // A's lease ends at the deadline, or when the router finished early: the plan says
    // so (a completed plan refuses A's renewal either way).
    let end_ms = match (m.lifecycle.state, &m.cut_over) {
        (MigrationState::Completed, Some(c)) => c.at_ms.min(m.deadline_ms),
        _ => m.deadline_ms,
    };
    let mut plan = MigrationPlan::new(m.id, m.ip, &m.source, &m.destination, end_ms / 1000);
    plan.state = state;
    Some(plan)
}

/// The DHCP server's reservations: every VM by its MAC, with the address it holds (the lowest,
/// if it holds several: a DHCP client asks for one address per interface), bound to its
/// segment's interface (DHCP snooping: a message in its name from elsewhere is dropped). A
/// migration's destination holds nothing until the end; the plan leases it the address meanwhile.
pub fn dhcp_reservations(
    vms: &[crate::inventory::Vm],
    addresses: &[Address],
) -> Vec<ipshadow_contracts::dhcp::Reservation> {
    vms.iter()
        .map(|vm| {
            dhcp_reservation(
                vm,
                addresses.iter().filter(|a| a.vm.as_deref() == Some(vm.id.as_str())).map(|a| a.ip).min(),
            )
        })
        .collect()
}

/// The DHCP server's reservation of one VM holding `ip` (its lowest address, if any).
pub fn dhcp_reservation(
    vm: &crate::inventory::Vm,
    ip: Option<std::net::Ipv4Addr>,
) -> ipshadow_contracts::dhcp::Reservation {
    ipshadow_contracts::dhcp::Reservation {
        vm: vm.id.clone(),
        mac: Some(vm.mac.clone()),
        client_id: None,
        ip,
        interface: Some(vm.segment.clone()),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::migration::{Lifecycle, MigrationEvent};

    const X: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);

    fn migration(events: &[MigrationEvent], at_ms: u64) -> Migration {
        let mut lifecycle = Lifecycle::new();
        for e in events {
            lifecycle.apply(e.clone(), at_ms).expect("a legal path");
        }
        Migration {
            id: 7,
            ip: X,
            tenant: "acme".into(),
            source: "vm-a".into(),
            destination: "vm-b".into(),
            strategy: Default::default(),
            mode: Default::default(),
            affinity: Default::default(),
            ramp: Default::default(),
            deadline_ms: 2_000_000,
            deadline_source: crate::reassign::DeadlineSource::Requested,
            plan: None,
            created_ms: 1_000_000,
            split_pct: 25.0,
            lifecycle,
            cut_over: None,
        }
    }

    /// Events, then the router entry's state, whether it is cut over, and the DHCP plan's state.
    type Case<'a> = (&'a [MigrationEvent], Option<EntryState>, bool, Option<PlanState>);

    #[test]
    fn each_state_projects_to_the_router_and_the_dhcp_server() {
        use MigrationEvent as E;
        let held = [Address { ip: X, tenant: "acme".into(), vm: Some("vm-a".into()), migration: Some(7) }];
        let cases: [Case<'_>; 6] = [
            (&[], Some(EntryState::WaitingForLease), false, None),
            (&[E::PlanWritten], Some(EntryState::WaitingForLease), false, Some(PlanState::Active)),
            (
                &[E::PlanWritten, E::DestinationLeaseBound, E::DestinationReady],
                Some(EntryState::Ramping),
                false,
                Some(PlanState::Active),
            ),
            (
                &[E::PlanWritten, E::DestinationLeaseBound, E::DestinationReady, E::Pause],
                Some(EntryState::Paused),
                false,
                Some(PlanState::Active),
            ),
            (
                &[
                    E::PlanWritten,
                    E::DestinationLeaseBound,
                    E::DestinationReady,
                    E::CutOver { reason: "deadline".into() },
                ],
                Some(EntryState::Ramping),
                true,
                Some(PlanState::Active),
            ),
            (
                &[
                    E::PlanWritten,
                    E::DestinationLeaseBound,
                    E::DestinationReady,
                    E::DestinationFailed { reason: "probes".into() },
                ],
                Some(EntryState::RollingBack),
                false,
                Some(PlanState::RolledBack),
            ),
        ];
        for (events, entry_state, cut_over, plan) in cases {
            let m = migration(events, 1_500_000);
            let desired = router_desired(&held, std::slice::from_ref(&m), 1_500_000, &DeadlinePolicy::default());
            assert_eq!(desired.addresses.get(&X), Some(&VmId::from("vm-a")));
            assert_eq!(desired.entries.first().map(|d| d.entry.state), entry_state, "{events:?}");
            if let Some(d) = desired.entries.first() {
                assert_eq!(d.cut_over, cut_over);
                assert_eq!(d.entry.options.deadline, Some(Instant::from_millis(2_000_000)));
                assert_eq!(d.entry.migration_start_time, Instant::from_millis(1_000_000));
                assert_eq!(d.lease_bound, d.entry.state != EntryState::WaitingForLease);
            }
            assert_eq!(dhcp_plans(std::slice::from_ref(&m)).first().map(|p| p.state.clone()), plan, "{events:?}");
        }
        // A rolled-back migration drains for B's shadow lease, then leaves the router.
        let rolled = migration(&[E::PlanWritten, E::DestinationFailed { reason: "probes".into() }], 1_500_000);
        let later = 1_500_000 + ROLLBACK_DRAIN.as_millis() as u64;
        assert!(
            router_desired(&held, std::slice::from_ref(&rolled), later, &DeadlinePolicy::default()).entries.is_empty()
        );
        // Promote: requested of the router while ramping or paused, not once the migration rolls back.
        let promoted = migration(
            &[E::PlanWritten, E::DestinationLeaseBound, E::DestinationReady, E::Pause, E::Promote],
            1_500_000,
        );
        let desired = router_desired(&held, std::slice::from_ref(&promoted), 1_500_000, &DeadlinePolicy::default());
        assert_eq!(desired.entries.first().map(|d| (d.promote, d.entry.state)), Some((true, EntryState::Paused)));
        let aborted = migration(
            &[E::PlanWritten, E::DestinationLeaseBound, E::DestinationReady, E::Promote, E::Abort],
            1_500_000,
        );
        let desired = router_desired(&held, std::slice::from_ref(&aborted), 1_500_000, &DeadlinePolicy::default());
        assert_eq!(desired.entries.first().map(|d| (d.promote, d.entry.state)), Some((false, EntryState::RollingBack)));
        let failed = migration(&[E::PlanWritten, E::Fail { reason: "no lease for vm-b in 120 s".into() }], 0);
        assert_eq!(dhcp_plans(&[failed])[0].state, PlanState::Failed("no lease for vm-b in 120 s".into()));
    }
}

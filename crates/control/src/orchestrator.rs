//! The manager's decisions, sans-IO: what the DHCP server's lease events, the router's status
//! report, the health probes and the passing of time mean for each migration. The driver feeds
//! inputs and applies the decisions with [`crate::inventory::Inventory::advance`] and
//! `record_split`; the parts then follow the store through [`crate::project`].

use ipshadow_contracts::dhcp::Role;
use ipshadow_contracts::dhcp::{LeaseEvent, LeaseEventKind};
use ipshadow_contracts::router::Status;
use ipshadow_core::{Instant, Outcome};

use crate::extend::{Extension, drain_extension};
use crate::migration::{CutOverRecord, EndCause, MigrationEvent, MigrationState};
use crate::reassign::{DeadlinePolicy, Migration};

/// Limits the manager works with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// A migration whose destination has no bound lease this long after its plan was written
    /// fails cleanly.
    pub lease_timeout_ms: u64,
    /// A VM that has not answered the router's health probes for this long has failed.
    pub probe_timeout_ms: u64,
    /// A VM that has not answered at all since B's lease was bound (or the router started) has
    /// failed after this long: it may still be configuring the address. Also how long B may
    /// hold its bound lease without answering for X before the migration fails.
    pub startup_timeout_ms: u64,
    /// A router reports to the manager: B is ready for flows when it answers the router's probe
    /// for X. Without one, B's bound lease starts the ramp.
    pub router_reports: bool,
    /// The operator's policy: the closing window the router gets, the longest deadline and how
    /// far a deadline may be extended for A's forecast drain ([`crate::extend`]).
    pub policy: DeadlinePolicy,
}

impl Default for Limits {
    /// Two minutes for B's lease (a VM that boots), 3 s of silence for a failed VM, 30 s for a
    /// VM to answer at all; a router reports; the default policy.
    fn default() -> Self {
        Self {
            lease_timeout_ms: 120_000,
            probe_timeout_ms: 3_000,
            startup_timeout_ms: 30_000,
            router_reports: true,
            policy: DeadlinePolicy::default(),
        }
    }
}

/// What happened, as the manager hears of it.
#[derive(Clone, Debug)]
pub enum Input<'a> {
    /// The DHCP server reported a lease event.
    Lease(&'a LeaseEvent),
    /// The router reported its status.
    Router(&'a Status),
    /// Time passed (deadlines, timeouts).
    Tick,
}

/// What to do with one migration.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Apply this event to it.
    Event(MigrationEvent),
    /// Record the split the router reports.
    Split(f64),
    /// Move the deadline later for A's forecast drain (recorded as `deadline_extended`).
    ExtendDeadline(Extension),
    /// Record what the router's cut-over did (before its `router_completed`).
    RecordCutOver(CutOverRecord),
}

/// The decisions `input` calls for, at `now_ms`, over the migrations not yet final.
pub fn decide(migrations: &[Migration], input: &Input<'_>, now_ms: u64, limits: Limits) -> Vec<(u64, Decision)> {
    let mut out = Vec::new();
    for m in migrations.iter().filter(|m| !m.lifecycle.state.is_final()) {
        let state = m.lifecycle.state;
        let shadowing = matches!(
            state,
            MigrationState::WaitingForDestinationLease | MigrationState::Ramping | MigrationState::Paused
        );
        let mut event = |e: MigrationEvent| out.push((m.id, Decision::Event(e)));
        match input {
            Input::Lease(lease) if lease.ip == m.ip => {
                let role = lease.migration.filter(|(id, _)| *id == m.id).map(|(_, role)| role);
                let from_b = role == Some(Role::Destination) || lease.vm.as_deref() == Some(m.destination.as_str());
                let from_a = role == Some(Role::Source) || lease.vm.as_deref() == Some(m.source.as_str());
                match lease.kind {
                    LeaseEventKind::Bound | LeaseEventKind::Renewed
                        if from_b
                            && state == MigrationState::WaitingForDestinationLease
                            && m.lifecycle.destination_lease_bound_at().is_none() =>
                    {
                        event(MigrationEvent::DestinationLeaseBound);
                        if !limits.router_reports {
                            event(MigrationEvent::DestinationReady);
                        }
                    }
                    // RFC 2131 4.4.4: B found X in use (someone answered its ARP probe).
                    LeaseEventKind::Declined if from_b && shadowing => event(MigrationEvent::Fail {
                        reason: format!("{} declined {}: the address answered its ARP probe", m.destination, m.ip),
                    }),
                    // The seed: A's lease ends -> cut over.
                    LeaseEventKind::Released | LeaseEventKind::Expired if from_a && shadowing => {
                        event(MigrationEvent::CutOver { reason: format!("{}'s lease ended", m.source) });
                    }
                    _ => {}
                }
            }
            Input::Router(status) => router_decisions(m, status, now_ms, limits, &mut out),
            Input::Tick => {
                if state == MigrationState::WaitingForDestinationLease
                    && m.lifecycle.destination_lease_bound_at().is_none()
                    && now_ms >= plan_written(m) + limits.lease_timeout_ms
                {
                    event(MigrationEvent::Fail {
                        reason: format!(
                            "no bound lease for {} within {} s",
                            m.destination,
                            limits.lease_timeout_ms / 1000
                        ),
                    });
                } else if state == MigrationState::WaitingForDestinationLease
                    && let Some(bound) = m.lifecycle.destination_lease_bound_at()
                    && now_ms >= bound + limits.startup_timeout_ms
                    && now_ms < m.deadline_ms
                {
                    // Nothing went to B yet: failing leaves A serving X alone, as before.
                    event(MigrationEvent::Fail {
                        reason: format!(
                            "{} holds a lease on {} but did not answer ARP for it within {} s",
                            m.destination,
                            m.ip,
                            limits.startup_timeout_ms / 1000
                        ),
                    });
                } else if shadowing && now_ms >= m.deadline_ms {
                    event(MigrationEvent::CutOver { reason: "deadline".to_owned() });
                }
            }
            Input::Lease(_) => {}
        }
    }
    out
}

/// When the plan was written (the migration left `pending`).
fn plan_written(m: &Migration) -> u64 {
    m.lifecycle.history.iter().find(|h| h.from == MigrationState::Pending).map_or(m.created_ms, |h| h.at_ms)
}

fn router_decisions(m: &Migration, status: &Status, now_ms: u64, limits: Limits, out: &mut Vec<(u64, Decision)>) {
    let start = Instant::from_millis(m.created_ms);
    let state = m.lifecycle.state;
    let entry = status.entries.iter().find(|e| e.ip_address == m.ip && e.migration_start_time == start);
    if let Some(entry) = entry
        && entry.traffic_split_percentage != m.split_pct
    {
        out.push((m.id, Decision::Split(entry.traffic_split_percentage)));
    }
    if let Some(ended) = status.ended.iter().rev().find(|e| e.ip == m.ip && e.at >= start) {
        match ended.outcome {
            Outcome::Completed => {
                let record = CutOverRecord::new(&ended.report, ended.at.as_millis(), m.deadline_ms);
                // The router cuts over by itself at the deadline, or before it when A has
                // drained (early finish): the manager catches up.
                if state != MigrationState::CutOver {
                    let event = match (record.cause, record.early_by_ms) {
                        // `finished_early` only from where it is legal (B ready); the manager
                        // behind the router (still waiting for B) catches up with a cut-over.
                        (EndCause::Drained, Some(early_by_ms))
                            if matches!(state, MigrationState::Ramping | MigrationState::Paused) =>
                        {
                            MigrationEvent::FinishedEarly {
                                early_by_ms,
                                reason: format!(
                                    "{} had no open flow left at a split of 100 % (or only idle ones forecast to outlive \
                                     the longest deadline, closed first): {} s before the deadline",
                                    m.source,
                                    early_by_ms / 1000
                                ),
                            }
                        }
                        (EndCause::Drained, _) => MigrationEvent::CutOver { reason: "drained".to_owned() },
                        (EndCause::Requested, _) => MigrationEvent::CutOver { reason: "requested".to_owned() },
                        _ => MigrationEvent::CutOver { reason: "deadline".to_owned() },
                    };
                    out.push((m.id, Decision::Event(event)));
                }
                if m.cut_over.is_none() {
                    out.push((m.id, Decision::RecordCutOver(record)));
                }
                out.push((m.id, Decision::Event(MigrationEvent::RouterCompleted)));
            }
            Outcome::RolledBack => {}
        }
        return;
    }
    // The forecast of this migration's entry (not of an earlier one of the same address).
    if entry.is_some()
        && let Some(forecast) = status.patterns.get(&m.ip).and_then(|p| p.forecast.as_ref())
        && let Some(extension) = drain_extension(m, forecast, &limits.policy, now_ms)
    {
        out.push((m.id, Decision::ExtendDeadline(extension)));
    }
    if state == MigrationState::WaitingForDestinationLease
        && let Some(bound) = m.lifecycle.destination_lease_bound_at()
    {
        // B answers for X once its DHCP client has configured it: then it can take flows.
        let answered = status
            .probes
            .iter()
            .find(|p| p.vm.0 == m.destination)
            .and_then(|p| p.answered.get(&m.ip))
            .is_some_and(|at| at.as_millis() >= bound);
        if answered {
            out.push((m.id, Decision::Event(MigrationEvent::DestinationReady)));
        }
        return;
    }
    if state != MigrationState::Ramping && state != MigrationState::Paused {
        return;
    }
    // The canary analysis: B answered much worse than A on the same address for
    // `rollback_after_intervals` intervals in a row (this entry's patterns, not an earlier one's).
    if entry.is_some()
        && let Some(canary) = status.patterns.get(&m.ip).map(|p| p.measured.canary)
        && canary.rollback_recommended
    {
        let limits = [("handshakes", canary.handshake_limit_ms), ("first answer bytes", canary.first_byte_limit_ms)]
            .into_iter()
            .filter_map(|(what, ms)| ms.map(|ms| format!("{what} over {ms} ms")))
            .collect::<Vec<_>>()
            .join(", ");
        let reason = format!(
            "{} answered much worse than {} on {} for {} intervals in a row ({} slow answers{}{}): canary analysis",
            m.destination,
            m.source,
            m.ip,
            canary.troubled_intervals,
            canary.slow_answers,
            if limits.is_empty() { "" } else { ": " },
            limits
        );
        out.push((m.id, Decision::Event(MigrationEvent::DestinationFailed { reason })));
        return;
    }
    // Silence counts from the later of the router's start and B's bound lease: the router
    // probes a VM only while it shadows an address with it, and B answers for X only once its
    // DHCP client has configured it.
    let bound_at = m.lifecycle.destination_lease_bound_at().unwrap_or(m.created_ms);
    // A VM that has not answered since then is still coming up (dhcpcd probes X with ARP for
    // several seconds before it configures it, RFC 5227): it gets the longer start-up window.
    // A router of a group probes only while active: its silence counts from when it last
    // became active (what it heard before that, in an earlier term, is old news).
    let active_since = status.ha.as_ref().map_or(0, |h| h.since.as_millis());
    let watched_since = status.started.as_millis().max(bound_at).max(active_since);
    // Silence is measured as of the report's own time, not the manager's: a report that reached
    // the manager late (its write held up by an unreachable store member) says nothing about the
    // seconds after it was made, and the router's clock is the one its probe times are on.
    let as_of = match status.updated.as_millis() {
        0 => now_ms,
        made => made,
    };
    let silent = |vm: &str| {
        status.probes.iter().find(|p| p.vm.0 == vm).is_some_and(|p| match p.last_reply {
            Some(r) if r.as_millis() >= watched_since => as_of.saturating_sub(r.as_millis()) > limits.probe_timeout_ms,
            _ => as_of.saturating_sub(watched_since) > limits.startup_timeout_ms,
        })
    };
    if silent(&m.destination) {
        out.push((
            m.id,
            Decision::Event(MigrationEvent::DestinationFailed {
                reason: format!(
                    "{} did not answer health probes for {} s",
                    m.destination,
                    limits.probe_timeout_ms / 1000
                ),
            }),
        ));
    } else if silent(&m.source) {
        out.push((
            m.id,
            Decision::Event(MigrationEvent::CutOver {
                reason: format!("{} did not answer health probes: fast-forward", m.source),
            }),
        ));
    }
}

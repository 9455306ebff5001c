//! A migration as the manager records it: a persisted state machine with its whole history.
//!
//! ```text
//! pending -> waiting_for_destination_lease -> ramping <-> paused
//!                        |                      |  \
//!                        v                      v   `-> cut_over -> completed
//!                      failed            rolled_back / aborted
//! ```
//! `pending`: accepted, nothing written yet. `waiting_for_destination_lease`: the lease plan and
//! the shadowing entry are written; B has not bound its lease (a timeout fails the migration), or
//! has bound it but not yet answered the router's probe for X (its DHCP client is still checking
//! the address; 30 s without an answer fails the migration).
//! `ramping`: the split rises (the manager may move the deadline later, `deadline_extended`, so
//! that A's forecast drain fits). `paused`: frozen by the user. Promote (ramping or paused, once) changes no
//! state: it sets [`Lifecycle::promoted`] and the router sends every new flow to B from then on. `cut_over`: A's lease ended (or A
//! failed, or the user promoted and the deadline came): the router moves everything to B.
//! `finished_early` also leads to `cut_over`: the router ended the migration before the
//! deadline, A having no open flow left at 100 %.
//! `completed`: the router reported the cut-over; X is B's. `rolled_back`: B failed its health
//! checks; X stays A's. `aborted`: the user aborted; X stays A's. `failed`: B never bound its
//! lease, or the parts could not be told.

use serde::{Deserialize, Serialize};

/// Where a migration is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MigrationState {
    /// Accepted; nothing written to the DHCP server or the router yet.
    Pending,
    /// Lease plan and shadowing entry written; waiting for B's bound lease and B's first answer
    /// for X.
    WaitingForDestinationLease,
    /// The split rises.
    Ramping,
    /// The split is frozen by the user.
    Paused,
    /// Everything goes to B; waiting for the router to confirm.
    CutOver,
    /// X is B's. Final.
    Completed,
    /// B failed; X stays A's. Final.
    RolledBack,
    /// Aborted by the user; X stays A's. Final.
    Aborted,
    /// B never bound its lease, or the parts could not be told. Final.
    Failed,
}

impl MigrationState {
    /// The state as the API spells it (`waiting_for_destination_lease`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::WaitingForDestinationLease => "waiting_for_destination_lease",
            Self::Ramping => "ramping",
            Self::Paused => "paused",
            Self::CutOver => "cut_over",
            Self::Completed => "completed",
            Self::RolledBack => "rolled_back",
            Self::Aborted => "aborted",
            Self::Failed => "failed",
        }
    }

    /// Whether nothing more can happen to the migration.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::RolledBack | Self::Aborted | Self::Failed)
    }

    /// Whether the address is shadowed (both VMs may receive traffic) in this state.
    pub fn is_shadowing(self) -> bool {
        matches!(self, Self::WaitingForDestinationLease | Self::Ramping | Self::Paused | Self::CutOver)
    }
}

/// What moves a migration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum MigrationEvent {
    /// The lease plan and the shadowing entry were written.
    PlanWritten,
    /// The DHCP server reported B's lease on X bound. The migration still waits: B takes flows
    /// once it answers for X ([`MigrationEvent::DestinationReady`]).
    DestinationLeaseBound,
    /// B can take flows: it answered the router's ARP probe for X after its lease was bound (a
    /// DHCP client configures the address only after its own checks: dhcpcd probes it for
    /// seconds, RFC 5227). Without a router in the process, the bound lease itself. Starts the
    /// ramp.
    DestinationReady,
    /// The user paused the ramp.
    Pause,
    /// The user resumed the ramp.
    Resume,
    /// The user promoted B: every new flow goes to B from now on (the state does not change; the
    /// deadline still ends A's remaining flows).
    Promote,
    /// A's lease ended, A failed, or the deadline came: cut over now.
    CutOver {
        /// Why.
        reason: String,
    },
    /// Early finish: the router ended the migration before the deadline because A had no open
    /// flow left at a split of 100 % (or only idle ones forecast to outlive the longest
    /// deadline, closed first). Moves to `cut_over` like [`MigrationEvent::CutOver`]; A's lease
    /// ends then.
    FinishedEarly {
        /// Time saved: the deadline minus the end, milliseconds.
        early_by_ms: u64,
        /// Why.
        reason: String,
    },
    /// The manager moved the deadline (A's lease end) later so that A's forecast drain ends
    /// before the closing window. The state does not change.
    DeadlineExtended {
        /// The deadline before, unix milliseconds.
        from_ms: u64,
        /// The deadline after (later), unix milliseconds.
        to_ms: u64,
        /// The forecast and the limits that decided it.
        reason: String,
    },
    /// The router reported the cut-over done.
    RouterCompleted,
    /// B failed its health checks: roll back.
    DestinationFailed {
        /// What the checks saw.
        reason: String,
    },
    /// The user aborted.
    Abort,
    /// The migration cannot go on (no bound lease for B in time, a part that cannot be told).
    Fail {
        /// Why.
        reason: String,
    },
}

/// One step of a migration's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    /// When (unix milliseconds).
    pub at_ms: u64,
    /// State before.
    pub from: MigrationState,
    /// State after.
    pub to: MigrationState,
    /// What happened.
    pub event: MigrationEvent,
    /// Which manager recorded it, on a store shared by several (its `--name`); absent on the
    /// embedded store and for what the API recorded on a user's request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// An event the state does not accept (the migration is unchanged).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a migration in state {} cannot take {event}", state.as_str())]
pub struct TransitionError {
    /// The state.
    pub state: MigrationState,
    /// The refused event's name.
    pub event: &'static str,
}

impl MigrationEvent {
    /// The event's name (for errors and logs).
    pub fn name(&self) -> &'static str {
        match self {
            Self::PlanWritten => "plan_written",
            Self::DestinationLeaseBound => "destination_lease_bound",
            Self::DestinationReady => "destination_ready",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Promote => "promote",
            Self::CutOver { .. } => "cut_over",
            Self::FinishedEarly { .. } => "finished_early",
            Self::DeadlineExtended { .. } => "deadline_extended",
            Self::RouterCompleted => "router_completed",
            Self::DestinationFailed { .. } => "destination_failed",
            Self::Abort => "abort",
            Self::Fail { .. } => "fail",
        }
    }
}

/// The state after `event`, or why not.
pub fn next_state(state: MigrationState, event: &MigrationEvent) -> Result<MigrationState, TransitionError> {
    use MigrationEvent as E;
    use MigrationState as S;
    let next = match (state, event) {
        (S::Pending, E::PlanWritten) => S::WaitingForDestinationLease,
        (S::WaitingForDestinationLease, E::DestinationLeaseBound) => state,
        (S::WaitingForDestinationLease, E::DestinationReady) => S::Ramping,
        (S::Ramping, E::Pause) => S::Paused,
        (S::Paused, E::Resume) => S::Ramping,
        // A flag, not a state: a paused migration stays paused (its split frozen at B's 100 %).
        (S::Ramping | S::Paused, E::Promote) => state,
        // A's lease may end before B's is bound (the deadline is A's lease end): B then gets the
        // address alone as soon as it binds, which the router's cut-over already allows.
        (S::WaitingForDestinationLease | S::Ramping | S::Paused, E::CutOver { .. }) => S::CutOver,
        // Early finish needs the split at 100 %, so B is ready: never while waiting for it.
        (S::Ramping | S::Paused, E::FinishedEarly { .. }) => S::CutOver,
        // Only while A still holds the address and the cut-over has not begun.
        (S::WaitingForDestinationLease | S::Ramping | S::Paused, E::DeadlineExtended { .. }) => state,
        (S::CutOver, E::RouterCompleted) => S::Completed,
        (S::WaitingForDestinationLease | S::Ramping | S::Paused, E::DestinationFailed { .. }) => S::RolledBack,
        (S::Pending | S::WaitingForDestinationLease | S::Ramping | S::Paused, E::Abort) => S::Aborted,
        (s, E::Fail { .. }) if !s.is_final() && s != S::CutOver => S::Failed,
        (s, e) => return Err(TransitionError { state: s, event: e.name() }),
    };
    Ok(next)
}

/// The most steps a migration's history holds before a user's pause or resume is refused: a
/// tenant looping over pause and resume would otherwise grow the record (and every read of it)
/// without bound. The manager's own events are bounded by the lifecycle and always recorded.
pub const MAX_HISTORY: usize = 256;

/// A state with its history: every accepted event is recorded with its time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Lifecycle {
    /// Where the migration is.
    pub state: MigrationState,
    /// Every step so far, oldest first.
    pub history: Vec<HistoryEntry>,
    /// The user promoted B (a [`MigrationEvent::Promote`] is in the history): every new flow goes
    /// to B. Kept here rather than beside the lifecycle so that only [`Lifecycle::apply`] sets
    /// it, together with the history entry; records written before promote existed read `false`.
    #[serde(default)]
    pub promoted: bool,
}

impl Lifecycle {
    /// A new migration, pending.
    pub fn new() -> Self {
        Self { state: MigrationState::Pending, history: Vec::new(), promoted: false }
    }

    /// When B's lease was bound, if it was.
    pub fn destination_lease_bound_at(&self) -> Option<u64> {
        self.history.iter().find(|h| h.event == MigrationEvent::DestinationLeaseBound).map(|h| h.at_ms)
    }

    /// Applies `event` at `now_ms`; a refused event changes nothing. A second promote or bound
    /// lease is refused: it would change nothing but the history.
    pub fn apply(&mut self, event: MigrationEvent, now_ms: u64) -> Result<MigrationState, TransitionError> {
        let promote = event == MigrationEvent::Promote;
        if promote && self.promoted {
            return Err(TransitionError { state: self.state, event: "promote (already promoted)" });
        }
        if event == MigrationEvent::DestinationLeaseBound && self.destination_lease_bound_at().is_some() {
            return Err(TransitionError { state: self.state, event: "destination_lease_bound (already recorded)" });
        }
        if let MigrationEvent::DeadlineExtended { from_ms, to_ms, .. } = &event
            && to_ms <= from_ms
        {
            return Err(TransitionError { state: self.state, event: "deadline_extended (never shortened)" });
        }
        if matches!(event, MigrationEvent::Pause | MigrationEvent::Resume) && self.history.len() >= MAX_HISTORY {
            let event = if event == MigrationEvent::Pause { "pause" } else { "resume" };
            return Err(TransitionError { state: self.state, event: event_full(event) });
        }
        let to = next_state(self.state, &event)?;
        self.history.push(HistoryEntry { at_ms: now_ms, from: self.state, to, event, by: None });
        self.state = to;
        self.promoted |= promote;
        Ok(to)
    }
}

/// The event's name when the history is full (a static string: the error carries names).
fn event_full(event: &str) -> &'static str {
    const _: () = assert!(MAX_HISTORY == 256, "the messages below name the limit");
    if event == "pause" { "pause (history full: 256 steps)" } else { "resume (history full: 256 steps)" }
}

impl Lifecycle {
    /// The deadline the migration was created with: the first extension's `from_ms`, or
    /// `current_ms` (the migration's deadline) when it was never extended.
    pub fn original_deadline_ms(&self, current_ms: u64) -> u64 {
        self.extensions().next().map_or(current_ms, |(_, from_ms, _)| from_ms)
    }

    /// Every deadline extension: (when, from, to), oldest first.
    pub fn extensions(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.history.iter().filter_map(|h| match h.event {
            MigrationEvent::DeadlineExtended { from_ms, to_ms, .. } => Some((h.at_ms, from_ms, to_ms)),
            _ => None,
        })
    }
}

/// Why a migration ended when it did (the router's cut-over report).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndCause {
    /// A's deadline came.
    Deadline,
    /// Early finish: A had no open flow left at a split of 100 %.
    Drained,
    /// The manager asked for it (A failed, or an operator's cut-over).
    Requested,
}

impl From<ipshadow_core::EndCause> for EndCause {
    fn from(cause: ipshadow_core::EndCause) -> Self {
        match cause {
            ipshadow_core::EndCause::Deadline => Self::Deadline,
            ipshadow_core::EndCause::Drained => Self::Drained,
            ipshadow_core::EndCause::Requested => Self::Requested,
        }
    }
}

/// What the router's cut-over did to the flows still on A, as the migration records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CutOverRecord {
    /// When the router ended the migration, unix milliseconds.
    pub at_ms: u64,
    /// Why then.
    pub cause: EndCause,
    /// Time saved by an early finish: the deadline minus the end, milliseconds (absent when it
    /// ended at or after the deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_by_ms: Option<u64>,
    /// A's flows still open when the end began (the closing window, or the end itself).
    pub flows_open_on_losing_side: u64,
    /// Of those, handed to B (replica mode, connectionless flows).
    pub handed_over: u64,
    /// Of those, TCP flows closed towards the client with an orderly FIN at an idle moment.
    pub closed_gracefully: u64,
    /// Of those, TCP flows reset (never idle before the deadline).
    pub reset: u64,
}

impl CutOverRecord {
    /// The record of the router's `report` on an end at `at_ms`, for a migration whose deadline
    /// was `deadline_ms`.
    pub fn new(report: &ipshadow_core::CutOverReport, at_ms: u64, deadline_ms: u64) -> Self {
        Self {
            at_ms,
            cause: report.cause.into(),
            early_by_ms: (at_ms < deadline_ms).then(|| deadline_ms - at_ms),
            flows_open_on_losing_side: report.flows_open_on_losing_side,
            handed_over: report.handed_over,
            closed_gracefully: report.closed_gracefully,
            reset: report.reset,
        }
    }
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event() -> impl Strategy<Value = MigrationEvent> {
        prop_oneof![
            Just(MigrationEvent::PlanWritten),
            Just(MigrationEvent::DestinationLeaseBound),
            Just(MigrationEvent::DestinationReady),
            Just(MigrationEvent::Pause),
            Just(MigrationEvent::Resume),
            Just(MigrationEvent::Promote),
            Just(MigrationEvent::CutOver { reason: "deadline".into() }),
            Just(MigrationEvent::FinishedEarly { early_by_ms: 5_000, reason: "drained".into() }),
            Just(MigrationEvent::DeadlineExtended { from_ms: 10, to_ms: 20, reason: "drain".into() }),
            Just(MigrationEvent::DeadlineExtended { from_ms: 20, to_ms: 20, reason: "no gain".into() }),
            Just(MigrationEvent::RouterCompleted),
            Just(MigrationEvent::DestinationFailed { reason: "probes".into() }),
            Just(MigrationEvent::Abort),
            Just(MigrationEvent::Fail { reason: "timeout".into() }),
        ]
    }

    #[test]
    fn pause_and_resume_stop_at_a_full_history_while_the_lifecycle_goes_on() {
        let mut m = Lifecycle::new();
        for e in [MigrationEvent::PlanWritten, MigrationEvent::DestinationLeaseBound, MigrationEvent::DestinationReady]
        {
            m.apply(e, 1).expect("accepted");
        }
        let mut accepted = 0;
        for i in 0..1_000 {
            let e = if i % 2 == 0 { MigrationEvent::Pause } else { MigrationEvent::Resume };
            if m.apply(e, 2 + i).is_ok() {
                accepted += 1;
            }
        }
        assert_eq!(m.history.len(), MAX_HISTORY);
        assert_eq!(accepted, MAX_HISTORY - 3);
        let refused = m.apply(MigrationEvent::Pause, 5_000).expect_err("full");
        assert!(refused.to_string().contains("history full"), "{refused}");
        // The manager's events are still recorded: the migration can end.
        m.apply(MigrationEvent::CutOver { reason: "deadline".into() }, 6_000).expect("cut over");
        m.apply(MigrationEvent::RouterCompleted, 7_000).expect("completed");
        assert_eq!(m.state, MigrationState::Completed);
    }

    #[test]
    fn the_happy_path_and_its_history() {
        let mut m = Lifecycle::new();
        for (i, e) in [
            MigrationEvent::PlanWritten,
            MigrationEvent::DestinationLeaseBound,
            MigrationEvent::DestinationReady,
            MigrationEvent::Pause,
            MigrationEvent::Resume,
            MigrationEvent::CutOver { reason: "A's lease ended".into() },
            MigrationEvent::RouterCompleted,
        ]
        .into_iter()
        .enumerate()
        {
            m.apply(e, i as u64).unwrap();
        }
        assert_eq!(m.state, MigrationState::Completed);
        let path: Vec<_> = m.history.iter().map(|h| h.to).collect();
        use MigrationState as S;
        assert_eq!(
            path,
            [
                S::WaitingForDestinationLease,
                S::WaitingForDestinationLease,
                S::Ramping,
                S::Paused,
                S::Ramping,
                S::CutOver,
                S::Completed
            ]
        );
        assert_eq!(m.destination_lease_bound_at(), Some(1));
        let err = m.apply(MigrationEvent::Abort, 9).unwrap_err();
        assert_eq!(err, TransitionError { state: S::Completed, event: "abort" });
        assert_eq!(m.history.len(), 7, "a refused event is not recorded");
    }

    #[test]
    fn promote_keeps_the_state_is_recorded_once_and_only_while_ramping_or_paused() {
        use MigrationEvent as E;
        use MigrationState as S;
        let mut m = Lifecycle::new();
        assert_eq!(m.apply(E::Promote, 0).unwrap_err().state, S::Pending);
        m.apply(E::PlanWritten, 1).unwrap();
        assert!(m.apply(E::Promote, 2).is_err(), "not before B's lease is bound");
        m.apply(E::DestinationLeaseBound, 3).unwrap();
        assert!(m.apply(E::Promote, 3).is_err(), "not before B is ready");
        assert!(m.apply(E::DestinationLeaseBound, 3).is_err(), "a bound lease is recorded once");
        m.apply(E::DestinationReady, 3).unwrap();
        m.apply(E::Pause, 4).unwrap();
        assert_eq!(m.apply(E::Promote, 5), Ok(S::Paused));
        assert!(m.promoted);
        assert_eq!(m.history.last().map(|h| (h.from, h.to, &h.event)), Some((S::Paused, S::Paused, &E::Promote)));
        assert!(m.apply(E::Promote, 6).is_err(), "once");
        assert_eq!(m.history.len(), 5);
        // A record written before promote existed reads as not promoted.
        let old: Lifecycle = serde_json::from_str(r#"{"state":"ramping","history":[]}"#).unwrap();
        assert!(!old.promoted);
    }

    #[test]
    fn states_are_named_in_messages_as_the_api_spells_them() {
        use MigrationState as S;
        for s in [
            S::Pending,
            S::WaitingForDestinationLease,
            S::Ramping,
            S::Paused,
            S::CutOver,
            S::Completed,
            S::RolledBack,
            S::Aborted,
            S::Failed,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        let err = next_state(S::WaitingForDestinationLease, &MigrationEvent::Pause).unwrap_err();
        assert_eq!(err.to_string(), "a migration in state waiting_for_destination_lease cannot take pause");
    }

    proptest! {
        /// Whatever arrives: a final state never changes, every recorded step is a legal
        /// transition, and the history is exactly the accepted events.
        #[test]
        fn final_states_absorb_and_history_matches(events in proptest::collection::vec(event(), 0..40)) {
            let mut m = Lifecycle::new();
            let mut accepted = 0;
            for (i, e) in events.into_iter().enumerate() {
                let before = m.state;
                match m.apply(e.clone(), i as u64) {
                    Ok(to) => {
                        prop_assert!(!before.is_final(), "{before:?} moved to {to:?}");
                        prop_assert_eq!(next_state(before, &e), Ok(to));
                        accepted += 1;
                    }
                    Err(_) => prop_assert_eq!(m.state, before),
                }
            }
            prop_assert_eq!(m.history.len(), accepted);
            // The flag and the history never disagree.
            prop_assert_eq!(m.promoted, m.history.iter().any(|h| h.event == MigrationEvent::Promote));
            prop_assert!(m.history.iter().filter(|h| h.event == MigrationEvent::DestinationLeaseBound).count() <= 1);
            // A deadline is never shortened.
            prop_assert!(m.extensions().all(|(_, from, to)| to > from));
            for pair in m.history.windows(2) {
                prop_assert_eq!(pair[0].to, pair[1].from);
            }
        }
    }
}

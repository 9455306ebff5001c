//! Control operations on shadowing entries: what the manager calls.

use std::net::Ipv4Addr;

use super::ShadowRouter;
use crate::error::RouterError;
use crate::events::{EndCause, Event, Outcome};
use crate::shadow::{EntryState, Shadow, ShadowingEntry, SplitChange, SplitController};
use crate::time::Instant;

impl<S: crate::events::EventSink> ShadowRouter<S> {
    /// Starts shadowing `entry.ip_address` between its source and destination VMs. The entry
    /// waits for [`ShadowRouter::lease_bound`] (split 0) unless its recorded state says
    /// otherwise, in which case it resumes at its recorded split (router restart).
    pub fn add_entry(&mut self, entry: ShadowingEntry, now: Instant) -> Result<(), RouterError> {
        let ip = entry.ip_address;
        if self.shadows.contains_key(&ip) {
            return Err(RouterError::AlreadyShadowed(ip));
        }
        if entry.source_vm_id == entry.destination_vm_id {
            return Err(RouterError::SameVm);
        }
        entry.congestion_control_parameters.validate()?;
        entry.options.ramp.validate()?;
        if !(0.0..=100.0).contains(&entry.traffic_split_percentage) {
            return Err(RouterError::invalid("traffic_split_percentage", "must be within 0..=100"));
        }
        let params = entry.congestion_control_parameters;
        let ramp = entry.options.ramp.clone();
        let mut controller = match entry.state {
            EntryState::WaitingForLease => SplitController::new(params, ramp),
            _ => SplitController::resume_at(params, ramp, entry.traffic_split_percentage, now),
        };
        match entry.state {
            EntryState::Paused => controller.pause(now),
            EntryState::RollingBack => {
                controller.abort();
            }
            _ => {}
        }
        let source = self.vm_ref(&entry.source_vm_id);
        let destination = self.vm_ref(&entry.destination_vm_id);
        self.shadows.insert(ip, Shadow::new(entry, source, destination, controller, now));
        self.fast_path_generation += 1;
        self.schedule(ip);
        Ok(())
    }

    /// B's lease on the address is bound: the ramp starts.
    pub fn lease_bound(&mut self, ip: Ipv4Addr, now: Instant) -> Result<(), RouterError> {
        self.transition(ip, now, "start the ramp of", &[EntryState::WaitingForLease], EntryState::Ramping, |c, now| {
            c.start(now)
        })
    }

    /// Freezes the split.
    pub fn pause(&mut self, ip: Ipv4Addr, now: Instant) -> Result<(), RouterError> {
        self.transition(ip, now, "pause", &[EntryState::Ramping], EntryState::Paused, |c, now| {
            c.pause(now);
            None
        })
    }

    /// Unfreezes the split.
    pub fn resume(&mut self, ip: Ipv4Addr, now: Instant) -> Result<(), RouterError> {
        // Signals counted while paused belong to no interval.
        if let Some(shadow) = self.shadows.get_mut(&ip) {
            shadow.signals = Default::default();
        }
        self.transition(ip, now, "resume", &[EntryState::Paused], EntryState::Ramping, |c, now| {
            c.resume(now);
            c.poll(now)
        })
    }

    /// Sends every new flow to B from now on (the deadline still ends A's remaining flows).
    pub fn promote(&mut self, ip: Ipv4Addr, now: Instant) -> Result<(), RouterError> {
        let from = [EntryState::WaitingForLease, EntryState::Ramping, EntryState::Paused];
        self.transition(ip, now, "promote", &from, EntryState::Ramping, |c, _| c.promote())
    }

    /// Rolls back: split 0, new flows to A; B's flows drain until [`ShadowRouter::finish_rollback`].
    pub fn abort(&mut self, ip: Ipv4Addr, now: Instant) -> Result<(), RouterError> {
        let from = [EntryState::WaitingForLease, EntryState::Ramping, EntryState::Paused];
        self.transition(ip, now, "abort", &from, EntryState::RollingBack, |c, _| c.abort())?;
        if let Some(shadow) = self.shadows.get_mut(&ip) {
            shadow.entry.options.deadline = None;
        }
        self.schedule(ip);
        Ok(())
    }

    /// Sets (or clears) A's deadline, when cut-over happens.
    pub fn set_deadline(&mut self, ip: Ipv4Addr, deadline: Option<Instant>) -> Result<(), RouterError> {
        let shadow = self.shadows.get_mut(&ip).ok_or(RouterError::NotShadowed(ip))?;
        if shadow.entry.state == EntryState::RollingBack {
            return Err(RouterError::InvalidState { ip, state: shadow.entry.state, operation: "set the deadline of" });
        }
        shadow.entry.options.deadline = deadline;
        self.schedule(ip);
        Ok(())
    }

    /// Cuts over now: the address belongs to B alone (A's lease ended early, or A failed).
    pub fn cut_over(&mut self, ip: Ipv4Addr, now: Instant) -> Result<(), RouterError> {
        let shadow = self.shadows.get(&ip).ok_or(RouterError::NotShadowed(ip))?;
        if shadow.entry.state == EntryState::RollingBack {
            return Err(RouterError::InvalidState { ip, state: shadow.entry.state, operation: "cut over" });
        }
        self.end_migration(ip, Outcome::Completed, EndCause::Requested, now);
        Ok(())
    }

    /// Finishes a rollback (B's lease lapsed): the address belongs to A alone.
    pub fn finish_rollback(&mut self, ip: Ipv4Addr, now: Instant) -> Result<(), RouterError> {
        let shadow = self.shadows.get(&ip).ok_or(RouterError::NotShadowed(ip))?;
        if shadow.entry.state != EntryState::RollingBack {
            return Err(RouterError::InvalidState {
                ip,
                state: shadow.entry.state,
                operation: "finish the rollback of",
            });
        }
        self.end_migration(ip, Outcome::RolledBack, EndCause::Deadline, now);
        Ok(())
    }

    fn transition(
        &mut self,
        ip: Ipv4Addr,
        now: Instant,
        operation: &'static str,
        from: &[EntryState],
        to: EntryState,
        act: impl FnOnce(&mut SplitController, Instant) -> Option<SplitChange>,
    ) -> Result<(), RouterError> {
        let shadow = self.shadows.get_mut(&ip).ok_or(RouterError::NotShadowed(ip))?;
        let state = shadow.entry.state;
        if !from.contains(&state) {
            return Err(RouterError::InvalidState { ip, state, operation });
        }
        let change = act(&mut shadow.controller, now);
        self.fast_path_generation += 1; // the split or the state, or both, may change
        if let Some(change) = shadow.apply(change) {
            self.sink.event(Event::SplitChanged { ip, change, at: now });
        }
        if state != to {
            shadow.entry.state = to;
            self.sink.event(Event::StateChanged { ip, from: state, to, at: now });
        }
        self.schedule(ip);
        Ok(())
    }
}

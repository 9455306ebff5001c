//! A router's part in its group (issue 15): routers that serve the same VM segments form a
//! group; one is active and forwards, the others stand by, following the same desired state.
//! The group's lease in the store decides who is active; the segments tell the rest.
//!
//! This is the decision logic only, fed by the forwarding loop (`now`, announcements heard on
//! the segments) and by the lease keeper (news about the group's lease in etcd); it says
//! whether frames may be forwarded, when to announce, and what the keeper should do.
//!
//! - A standby forwards nothing and sends nothing. It becomes active only once the keeper holds
//!   the group's lease ([`LeaseNews::Acquired`]); it then announces itself at once (with
//!   gratuitous ARP, see the data plane) and every [`HEARTBEAT`] after.
//! - An active router stops forwarding as soon as it can know another took over: the store
//!   says its lease ended ([`LeaseNews::Lost`]), or it hears an announcement of the group with
//!   a newer term. An unreachable store changes nothing: forwarding never depends on it.
//! - A router that finds its own loop stalled (paused, or starved of CPU) for longer than
//!   [`STALL`] forwards nothing until the store confirms its lease, says it ended, or has been
//!   unreachable for [`UNCONFIRMED_RESUME`] with no newer announcement heard: frames it took
//!   in while paused may belong to flows another router serves now.
//! - A standby that heard the active go silent on every segment for [`SILENT`] asks the keeper
//!   to end that lease at once (the active died or lost its links) instead of waiting for it to
//!   expire; a resigning active's announcement does the same.

pub mod wire;

use core::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Instant;
pub use wire::{Announcement, AnnouncementError};

/// How often the active announces itself.
pub const HEARTBEAT: Duration = Duration::from_millis(100);
/// How long the active may go unheard on every segment before a standby ends its lease.
pub const SILENT: Duration = Duration::from_millis(500);
/// A turn of the forwarding loop this long after the last one means the router was paused:
/// shorter than [`SILENT`], so a router that a standby may have replaced always notices.
pub const STALL: Duration = Duration::from_millis(250);
/// After a stall, how long an unreachable store keeps the router from forwarding (while no
/// newer announcement is heard): the store cannot say, the segments have had time to.
pub const UNCONFIRMED_RESUME: Duration = Duration::from_millis(500);
/// Announcements at a takeover that carry gratuitous ARP (one a heartbeat): switches and
/// neighbours that missed the first hear a later one.
pub const GRATUITOUS_REPEATS: u8 = 3;

/// What a group member does now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Forwards nothing, sends nothing; follows the desired state.
    Standby,
    /// Holds the group's lease and forwards.
    Active,
    /// Was active and found its loop stalled: forwards nothing until the store confirms.
    Suspended,
}

/// News from the keeper of the group's lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseNews {
    /// The keeper holds the group's lease: `term` is the revision at which it took it.
    Acquired {
        /// The term.
        term: u64,
        /// The lease.
        lease: u64,
    },
    /// A renewal of the lease held was confirmed.
    Confirmed,
    /// The store says the lease held ended, and another holds the group.
    Lost,
    /// A renewal could not reach the store.
    Unreachable,
}

/// Why a router became active.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TakeoverCause {
    /// No active router was heard: the group formed.
    Started,
    /// The active stopped in order (its last announcement said so).
    Resigned,
    /// The active went silent on the segments (died, paused, lost its links).
    Silent,
    /// The active was still heard, but its lease ended: it lost the store.
    LostStore,
}

/// Why an active router stopped forwarding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepDownCause {
    /// The store said its lease ended.
    LeaseLost,
    /// Another router announced a newer term.
    HeardNewer,
    /// It stopped in order.
    Resigned,
}

/// The last takeover by this router.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Takeover {
    /// When it held the lease.
    pub at: Instant,
    /// Why.
    pub cause: TakeoverCause,
    /// The router active before, if one was heard.
    pub previous: Option<String>,
    /// When the previous active was last heard.
    pub previous_heard: Option<Instant>,
    /// The first frame forwarded after the takeover.
    pub first_forwarded: Option<Instant>,
    /// From the previous active's last announcement to that first frame, milliseconds.
    pub took_ms: Option<u64>,
}

/// The last time this router stopped being active.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepDown {
    /// When.
    pub at: Instant,
    /// Why.
    pub cause: StepDownCause,
    /// To whom, if heard.
    pub to: Option<String>,
}

/// Counters of a group member.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCounters {
    /// Times it became active.
    pub takeovers: u64,
    /// Times it stopped being active.
    pub step_downs: u64,
    /// Times it found its loop stalled while active.
    pub stalls: u64,
    /// Frames received while not active, dropped.
    pub frames_dropped: u64,
    /// Frames it would have sent while not active (its timers, frames of a stalled turn).
    pub frames_suppressed: u64,
    /// Announcements sent.
    pub announcements_sent: u64,
    /// Announcements heard from other members of the group.
    pub announcements_heard: u64,
    /// Announcements of other groups, or malformed.
    pub announcements_ignored: u64,
}

/// A group member's state, for status reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// The group.
    pub group: String,
    /// This router.
    pub name: String,
    /// What it does now.
    pub role: Role,
    /// Since when.
    pub since: Instant,
    /// Its term while active (0 before it ever was).
    pub term: u64,
    /// The router it knows active: itself, or the one it last heard announce (None if none for
    /// [`SILENT`]).
    pub active: Option<String>,
    /// Its last takeover.
    pub last_takeover: Option<Takeover>,
    /// The last time it stopped being active.
    pub last_step_down: Option<StepDown>,
    /// Counters.
    pub counters: GroupCounters,
}

/// What the keeper should know of the segments, as of the last turn.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupView {
    /// The member's role.
    pub role: Option<Role>,
    /// Another router announces itself active, heard within [`SILENT`]: a standby that finds
    /// the lease free gives it a moment to take the lease again before campaigning (the store
    /// was unreachable for everyone, not the active dead).
    pub hears_active: bool,
    /// The lease of an active that went silent on every segment, or resigned: end it now.
    pub end_lease: Option<u64>,
    /// Suspended: confirm the lease now.
    pub confirm_now: bool,
}

/// The announcement heard last from the active router of the group (another router).
#[derive(Clone, Debug)]
struct Heard {
    name: String,
    term: u64,
    lease: u64,
    resigning: bool,
    at: Instant,
}

/// One router's membership in its group.
#[derive(Clone, Debug)]
pub struct GroupMember {
    group: String,
    name: String,
    role: Role,
    since: Instant,
    term: u64,
    lease: u64,
    last_turn: Option<Instant>,
    /// Suspended at, and whether the store was found unreachable since.
    suspended: Option<(Instant, bool)>,
    heard: Option<Heard>,
    next_announcement: Instant,
    gratuitous_left: u8,
    last_takeover: Option<Takeover>,
    last_step_down: Option<StepDown>,
    counters: GroupCounters,
}

impl GroupMember {
    /// A member of `group` called `name`, standing by.
    pub fn new(group: &str, name: &str, now: Instant) -> Self {
        Self {
            group: group.to_owned(),
            name: name.to_owned(),
            role: Role::Standby,
            since: now,
            term: 0,
            lease: 0,
            last_turn: None,
            suspended: None,
            heard: None,
            next_announcement: now,
            gratuitous_left: 0,
            last_takeover: None,
            last_step_down: None,
            counters: GroupCounters::default(),
        }
    }

    /// Whether frames may be forwarded now.
    pub fn may_forward(&self) -> bool {
        self.role == Role::Active
    }

    /// What it does now.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Counts frames received while not active.
    pub fn dropped(&mut self, frames: u64) {
        self.counters.frames_dropped += frames;
    }

    /// Counts frames not sent because the member is not active (or its turn stalled).
    pub fn suppressed(&mut self, frames: u64) {
        self.counters.frames_suppressed += frames;
    }

    /// Counts a frame of the announcements' EtherType that did not parse.
    pub fn heard_malformed(&mut self) {
        self.counters.announcements_ignored += 1;
    }

    /// A turn of the forwarding loop begins.
    pub fn turn(&mut self, now: Instant) {
        if let Some(last) = self.last_turn {
            let gap = now - last;
            if gap > STALL && self.role == Role::Active {
                self.set_role(Role::Suspended, now);
                self.suspended = Some((now, false));
                self.counters.stalls += 1;
            }
            // A standby that was itself paused did not hear anything meanwhile: the active's
            // silence is counted from now, not from before the pause.
            if gap > HEARTBEAT
                && let Some(heard) = &mut self.heard
            {
                heard.at = heard.at.max(now - HEARTBEAT);
            }
        }
        self.last_turn = Some(now);
        if let Some((at, unreachable)) = self.suspended
            && unreachable
            && now - at >= UNCONFIRMED_RESUME
            && self.role == Role::Suspended
        {
            self.suspended = None;
            self.set_role(Role::Active, now);
        }
    }

    /// Checks whether `now` is still within the turn that began at the last [`turn`]: a turn
    /// that stalled must not send what it decided before the stall.
    ///
    /// [`turn`]: GroupMember::turn
    pub fn turn_stalled(&self, now: Instant) -> bool {
        self.last_turn.is_some_and(|last| now - last > STALL)
    }

    /// News from the lease keeper.
    pub fn lease(&mut self, news: LeaseNews, now: Instant) {
        match news {
            LeaseNews::Acquired { term, lease } => {
                let was_active = self.role != Role::Standby;
                self.term = term;
                self.lease = lease;
                self.suspended = None;
                if was_active {
                    // Taken again after the store lost it (everyone was cut off from it): the
                    // same router goes on forwarding, under a new term.
                    self.set_role(Role::Active, now);
                } else {
                    self.take_over(now);
                }
                self.next_announcement = now;
            }
            LeaseNews::Confirmed => {
                if self.role == Role::Suspended {
                    self.suspended = None;
                    self.set_role(Role::Active, now);
                }
            }
            LeaseNews::Lost => {
                if self.role != Role::Standby {
                    let to = self.heard.as_ref().filter(|h| h.term > self.term).map(|h| h.name.clone());
                    self.step_down(StepDownCause::LeaseLost, to, now);
                }
            }
            LeaseNews::Unreachable => {
                if let Some((_, unreachable)) = &mut self.suspended {
                    *unreachable = true;
                }
            }
        }
    }

    /// An announcement heard on a segment.
    pub fn heard(&mut self, announcement: &Announcement, now: Instant) {
        if announcement.group != self.group || announcement.name == self.name {
            self.counters.announcements_ignored += 1;
            return;
        }
        self.counters.announcements_heard += 1;
        // The newest term wins; an older one (a stale active that has not heard us yet) is
        // remembered only if nothing newer was heard.
        let newer = self.heard.as_ref().is_none_or(|h| announcement.term >= h.term);
        if newer {
            self.heard = Some(Heard {
                name: announcement.name.clone(),
                term: announcement.term,
                lease: announcement.lease,
                resigning: announcement.resigning,
                at: now,
            });
        }
        if self.role != Role::Standby && announcement.term > self.term && !announcement.resigning {
            self.step_down(StepDownCause::HeardNewer, Some(announcement.name.clone()), now);
        }
    }

    /// The announcement to send now on every segment, if one is due, and whether it goes with
    /// gratuitous ARP.
    pub fn announcement(&mut self, now: Instant) -> Option<(Announcement, bool)> {
        if self.role != Role::Active || now < self.next_announcement {
            return None;
        }
        self.next_announcement = now + HEARTBEAT;
        let gratuitous = self.gratuitous_left > 0;
        self.gratuitous_left = self.gratuitous_left.saturating_sub(1);
        self.counters.announcements_sent += 1;
        Some((self.announcement_now(false), gratuitous))
    }

    /// The last announcement of an active router that stops in order (a standby takes over at
    /// once); the member stands by after it.
    pub fn resign(&mut self, now: Instant) -> Option<Announcement> {
        if self.role == Role::Standby {
            return None;
        }
        self.step_down(StepDownCause::Resigned, None, now);
        self.counters.announcements_sent += 1;
        Some(self.announcement_now(true))
    }

    /// Frames were forwarded at `now`: the first after a takeover is its end.
    pub fn forwarded(&mut self, now: Instant) {
        if let Some(t) = &mut self.last_takeover
            && t.first_forwarded.is_none()
            && self.role == Role::Active
        {
            t.first_forwarded = Some(now);
            t.took_ms = t.previous_heard.map(|h| (now - h).as_millis() as u64);
        }
    }

    /// What the keeper should know.
    pub fn view(&self, now: Instant) -> GroupView {
        let fresh = self.heard.as_ref().filter(|h| now - h.at < SILENT && h.term > self.term);
        let end_lease = match (&self.heard, self.role) {
            (Some(h), Role::Standby) if h.lease != 0 && (h.resigning || now - h.at >= SILENT) => Some(h.lease),
            _ => None,
        };
        GroupView {
            role: Some(self.role),
            hears_active: fresh.is_some_and(|h| !h.resigning),
            end_lease,
            confirm_now: self.role == Role::Suspended,
        }
    }

    /// The member's state; `wall` converts the loop's times to the report's clock.
    pub fn status(&self, now: Instant, wall: impl Fn(Instant) -> Instant) -> GroupStatus {
        let active = match self.role {
            Role::Active => Some(self.name.clone()),
            _ => self.heard.as_ref().filter(|h| now - h.at < SILENT && !h.resigning).map(|h| h.name.clone()),
        };
        GroupStatus {
            group: self.group.clone(),
            name: self.name.clone(),
            role: self.role,
            since: wall(self.since),
            term: self.term,
            active,
            last_takeover: self.last_takeover.clone().map(|t| Takeover {
                at: wall(t.at),
                previous_heard: t.previous_heard.map(&wall),
                first_forwarded: t.first_forwarded.map(&wall),
                ..t
            }),
            last_step_down: self.last_step_down.clone().map(|s| StepDown { at: wall(s.at), ..s }),
            counters: self.counters.clone(),
        }
    }

    fn announcement_now(&self, resigning: bool) -> Announcement {
        Announcement {
            group: self.group.clone(),
            name: self.name.clone(),
            term: self.term,
            lease: self.lease,
            resigning,
        }
    }

    fn take_over(&mut self, now: Instant) {
        let (cause, previous, previous_heard) = match &self.heard {
            None => (TakeoverCause::Started, None, None),
            Some(h) => {
                let cause = if h.resigning {
                    TakeoverCause::Resigned
                } else if now - h.at >= SILENT {
                    TakeoverCause::Silent
                } else {
                    TakeoverCause::LostStore
                };
                (cause, Some(h.name.clone()), Some(h.at))
            }
        };
        self.last_takeover =
            Some(Takeover { at: now, cause, previous, previous_heard, first_forwarded: None, took_ms: None });
        self.counters.takeovers += 1;
        self.gratuitous_left = GRATUITOUS_REPEATS;
        self.set_role(Role::Active, now);
    }

    fn step_down(&mut self, cause: StepDownCause, to: Option<String>, now: Instant) {
        self.last_step_down = Some(StepDown { at: now, cause, to });
        self.counters.step_downs += 1;
        self.suspended = None;
        self.set_role(Role::Standby, now);
    }

    fn set_role(&mut self, role: Role, now: Instant) {
        if self.role != role {
            self.role = role;
            self.since = now;
        }
    }
}

#[cfg(test)]
mod tests;

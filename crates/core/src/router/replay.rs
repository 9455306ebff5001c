//! Replay: packets a fast path (the XDP program) already forwarded, run through the core so that
//! its state stays what it would be had the core forwarded them itself.
//!
//! The fast path forwards the steady state of flows whose owner it knows from the core (the
//! shadowed addresses' split, salt and sides, and the flows' owners, from the events: see
//! `router/fast_path.rs`) and reports each packet it forwarded. The core replays the report with its
//! normal logic: same counters, flow creation, sequence tracking, split signals, traffic patterns
//! and events. Its verdict is not sent anywhere: the packet is already gone. Where the core would
//! have decided otherwise, the packet's side wins (a TCP connection must never see two ends) and
//! the difference is counted ([`crate::RouterCounters::fast_path_disagreed`]).

use std::net::Ipv4Addr;

use super::{Deliver, DropReason, EgressVerdict, InboundVerdict, ShadowRouter, VmRef};
use crate::flow::{Owner, Side};
use crate::time::Instant;
use crate::wire::{Ipv4Info, Packet};

/// What the core made of a packet the fast path forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    /// The core would have done what the fast path did.
    Agreed,
    /// The core would have sent the packet to the other side (its flow was the other side's, or
    /// unknown, or new and the split had moved): the flow is the fast path's side's now, as its
    /// first packet decides. Counted as a disagreement.
    OwnerAdopted {
        /// The owner the core would have given or kept.
        from: Owner,
    },
    /// The core would have delivered the packet elsewhere and has no flow owner to move (a
    /// strategy other than `flow`, replica mode, a later fragment, a RST of an untracked flow).
    /// Counted as a disagreement.
    CoreWouldDeliver(Deliver),
    /// The core would have dropped the packet (table full, a flow the router closed, a conflict,
    /// ...): counted under its reason as a drop is, and as a disagreement. With `TableFull` the
    /// core does not track the flow: a fast path that added it to its own map should remove it.
    CoreWouldDrop(DropReason),
    /// The address is not shadowed: the core forwards such packets as without ipshadow. For an
    /// inbound packet the fast path delivered to a side, that means its copy of the shadowing
    /// table is stale: counted as a disagreement; for an egress packet it is not.
    NotShadowed,
}

/// A replayed inbound packet's side, and what its flow's owner was if the replay changed it.
pub(crate) struct Adoption {
    pub delivered: Side,
    pub from: Option<Owner>,
}

impl<S: crate::events::EventSink> ShadowRouter<S> {
    /// The fast path already delivered this provider-side IPv4 packet to `delivered`. Runs the
    /// core's inbound logic on it exactly as [`ShadowRouter::inbound`] would (counters, flow
    /// creation, tracking, signals, patterns, events) without a verdict to act on. If the flow's
    /// owner then differs from `delivered`, the flow becomes `delivered`'s: a new flow is started
    /// with that owner, a tracked one reported with `HandOff` (or `OwnerLearned` if its owner
    /// was unknown) and the entry's per-side flow counters moved.
    ///
    /// Meant for what the fast path forwards: TCP or UDP, not a fragment, to an address whose
    /// [`crate::FastPathShadow`] is not `slow`. Anything else is still replayed as the
    /// core would decide it, and counted as a disagreement if that differs.
    pub fn replay_inbound(&mut self, ip: &Ipv4Info, delivered: Side, now: Instant) -> Replay {
        self.counters.inbound_frames += 1;
        self.counters.fast_path_replayed += 1;
        let mut adoption = Adoption { delivered, from: None };
        let verdict = match self.shadows.locate(&ip.dst) {
            Some(located) => self.inbound_located(ip, located, now, None, Some(&mut adoption)),
            None => self.not_shadowed(ip, now),
        };
        let replay = match verdict {
            InboundVerdict::Deliver(d) if d == Deliver::from(delivered) => match adoption.from {
                Some(from) => Replay::OwnerAdopted { from },
                None => Replay::Agreed,
            },
            InboundVerdict::Deliver(d) => Replay::CoreWouldDeliver(d),
            InboundVerdict::Drop(reason) => Replay::CoreWouldDrop(reason),
            InboundVerdict::NotShadowed | InboundVerdict::Arp(_) => Replay::NotShadowed,
        };
        self.count_replay(replay, true);
        replay
    }

    /// The fast path already forwarded this IPv4 packet from VM `from` to the provider side (the
    /// VM owned its flow as far as the fast path knew). Runs the egress arbiter on it exactly as
    /// [`ShadowRouter::egress`] would; a drop verdict (a conflict, a flow the router closed, a
    /// spoofed source) is counted under its reason and as a disagreement.
    pub fn replay_egress(&mut self, from: VmRef, ip: &Ipv4Info, now: Instant) -> Replay {
        self.counters.egress_frames += 1;
        self.counters.fast_path_replayed += 1;
        let shadowed = self.shadows.contains_key(&ip.src);
        let replay = match self.egress_packet(from, &Packet::Ipv4(*ip), now) {
            EgressVerdict::Forward if shadowed => Replay::Agreed,
            EgressVerdict::Forward => Replay::NotShadowed,
            EgressVerdict::Drop(reason) => Replay::CoreWouldDrop(reason),
        };
        self.count_replay(replay, false);
        replay
    }

    fn count_replay(&mut self, replay: Replay, inbound: bool) {
        match replay {
            Replay::Agreed => {}
            Replay::NotShadowed if !inbound => {}
            Replay::CoreWouldDrop(_) => {
                self.counters.fast_path_disagreed += 1;
                self.counters.fast_path_would_drop += 1;
            }
            Replay::OwnerAdopted { .. } | Replay::CoreWouldDeliver(_) | Replay::NotShadowed => {
                self.counters.fast_path_disagreed += 1;
            }
        }
    }

    /// More datagrams of a flow the fast path forwarded than its record replayed: it reports a
    /// UDP flow's datagrams in batches (one record at most every few tens of milliseconds, with
    /// their count), and only the counters differ between one datagram and several of the same
    /// flow. `inbound`: `Some(side)` for datagrams to `ip` delivered to that side, `None` for
    /// datagrams from `ip` sent to the provider side.
    pub fn replayed_more(&mut self, ip: Ipv4Addr, inbound: Option<Side>, packets: u64) {
        self.counters.fast_path_replayed += packets;
        match inbound {
            Some(side) => {
                self.counters.inbound_frames += packets;
                if let Some(shadow) = self.shadows.get_mut(&ip) {
                    shadow.packets[Deliver::from(side).bits() as usize - 1] += packets;
                }
            }
            None => self.counters.egress_frames += packets,
        }
    }
}

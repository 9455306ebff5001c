//! Inbound: a frame from the provider side to a shadowed address.

use super::close::retired_inbound;
use super::observe::observe;
use super::replay::Adoption;
use super::{Deliver, DropReason, InboundVerdict, ShadowRouter, Tables, seq_le};
use crate::events::{Event, FlowEndReason, FlowOrigin};
use crate::flow::{Flow, FlowKey, Owner, Phase, Side, flags, marks};
use crate::fragments::FragmentRoute;
use crate::shadow::{EntryState, Located, Mode, Shadow, Signal, Strategy};
use crate::time::Instant;
use crate::wire::{Fragment, Ipv4Info, L4, PROTO_ICMP, PROTO_TCP, Packet, TcpInfo, parse_frame};

/// What the inbound packet is, for the flow logic.
#[derive(Clone, Copy)]
enum Kind {
    /// Opens a flow: TCP SYN, or any first datagram.
    Opening,
    /// A TCP segment of a connection the router may not know (no SYN).
    Midstream,
    /// Belongs to an existing flow but never opens one (RST, echo reply, ICMP error).
    FollowOnly,
}

/// A packet's flow key and table hash, computed ahead by the batch's first pass.
#[derive(Clone, Copy)]
pub(super) struct Prepared {
    key: FlowKey,
    kind: Kind,
    hash: u64,
}

/// A frame in the batch window: parsed, and what the first look learned.
#[derive(Clone, Copy)]
struct LookAhead {
    parsed: Result<Packet, crate::wire::ParseError>,
    ahead: Option<Ahead>,
}

impl LookAhead {
    /// Filler for window slots beyond the batch; every slot that is decided was filled first.
    const EMPTY: Self = Self { parsed: Err(crate::wire::ParseError::TooManyVlanTags), ahead: None };
}

/// What the batch's first pass learned about a frame.
#[derive(Clone, Copy)]
struct Ahead {
    shadow: Located,
    flow: Option<Prepared>,
}

impl<S: crate::events::EventSink> ShadowRouter<S> {
    /// Decides where a frame from the provider side goes.
    pub fn inbound(&mut self, frame: &[u8], now: Instant) -> InboundVerdict {
        self.inbound_parsed(&parse_frame(frame), now)
    }

    /// Decides for a frame the caller has already parsed (a layer-2 router that needs the
    /// addresses too parses once): counted exactly as [`ShadowRouter::inbound`] counts.
    pub fn inbound_parsed(&mut self, parsed: &Result<Packet, crate::wire::ParseError>, now: Instant) -> InboundVerdict {
        self.counters.inbound_frames += 1;
        match parsed {
            Ok(packet) => self.inbound_packet(packet, now),
            Err(e) => {
                self.counters.malformed.count(*e);
                InboundVerdict::Drop(DropReason::Malformed(*e))
            }
        }
    }

    /// Decides for a batch of frames, appending one verdict per frame to `out`. Same decisions as
    /// [`ShadowRouter::inbound`] one by one; faster on large flow tables because each frame is
    /// parsed and its entry and flow slot prefetched 16 frames before it is decided, so cache
    /// misses overlap instead of queueing.
    pub fn inbound_batch(&mut self, frames: &[&[u8]], now: Instant, out: &mut Vec<InboundVerdict>) {
        // A rolling window: frame i + AHEAD is parsed and its lines prefetched right after frame i
        // is decided, so misses stay in flight continuously instead of in bursts. Slots are
        // decided and refilled in place: copying them in and out cost more than the decision.
        const AHEAD: usize = 16;
        let mut window = [LookAhead::EMPTY; AHEAD];
        for (slot, frame) in window.iter_mut().zip(frames) {
            self.look_ahead(frame, slot);
        }
        out.reserve(frames.len());
        for i in 0..frames.len() {
            let slot = &mut window[i % AHEAD];
            self.counters.inbound_frames += 1;
            out.push(match (&slot.parsed, slot.ahead) {
                (Ok(Packet::Ipv4(ip)), Some(ahead)) => self.inbound_located(ip, ahead.shadow, now, ahead.flow, None),
                (Ok(Packet::Ipv4(ip)), None) => self.not_shadowed(ip, now),
                (Ok(packet), _) => self.inbound_packet(packet, now),
                (Err(e), _) => {
                    self.counters.malformed.count(*e);
                    InboundVerdict::Drop(DropReason::Malformed(*e))
                }
            });
            if let Some(next) = frames.get(i + AHEAD) {
                self.look_ahead(next, slot);
            }
        }
    }

    /// The batch's first look at a frame: parse, locate its entry, compute its flow key and
    /// prefetch the lines the decision will touch.
    #[inline]
    fn look_ahead(&self, frame: &[u8], slot: &mut LookAhead) {
        slot.parsed = parse_frame(frame);
        slot.ahead = None;
        if let Ok(Packet::Ipv4(ip)) = &slot.parsed
            && let Some(shadow) = self.shadows.locate(&ip.dst)
        {
            self.shadows.prefetch(shadow.slot);
            let mut flow = None;
            if shadow.strategy == Strategy::Flow
                && let Some((key, kind)) = inbound_key(ip)
            {
                let hash = self.flows.hash(&key);
                self.flows.prefetch(hash);
                flow = Some(Prepared { key, kind, hash });
            }
            slot.ahead = Some(Ahead { shadow, flow });
        }
    }

    /// Decides where an already parsed inbound packet goes.
    pub fn inbound_packet(&mut self, packet: &Packet, now: Instant) -> InboundVerdict {
        match packet {
            Packet::Ipv4(ip) => self.inbound_ipv4(ip, now, None),
            Packet::Arp(arp) => InboundVerdict::Arp(*arp),
            Packet::Other { .. } => InboundVerdict::NotShadowed,
        }
    }

    fn inbound_ipv4(&mut self, ip: &Ipv4Info, now: Instant, prepared: Option<Prepared>) -> InboundVerdict {
        match self.shadows.locate(&ip.dst) {
            Some(located) => self.inbound_located(ip, located, now, prepared, None),
            None => self.not_shadowed(ip, now),
        }
    }

    /// A packet to an address not shadowed (any more): forwarded as without ipshadow, except
    /// the segments of flows the router closed at a cut-over that ended less than a TCP closing
    /// timeout ago, which it still answers so their clients' late closes never meet B's RST.
    #[inline]
    pub(super) fn not_shadowed(&mut self, ip: &Ipv4Info, now: Instant) -> InboundVerdict {
        if self.retired_until.is_none_or(|t| now >= t) {
            return InboundVerdict::NotShadowed;
        }
        let L4::Tcp(tcp) = &ip.l4 else { return InboundVerdict::NotShadowed };
        let Some((key, _)) = inbound_key(ip) else { return InboundVerdict::NotShadowed };
        let Some(index) = self.flows.find(&key, self.flows.hash(&key)) else { return InboundVerdict::NotShadowed };
        if self.flows.flow(index).phase != Phase::Retired {
            return InboundVerdict::NotShadowed;
        }
        if tcp.flags.is_syn_only() {
            // The client reuses the port for a new connection, which is B's.
            self.end_flow(index, FlowEndReason::Reused, now);
            return InboundVerdict::NotShadowed;
        }
        let flow = self.flows.flow_mut(index);
        flow.last_seen_ms = now.millis_u32();
        retired_inbound(None, &mut self.transmit, &mut self.counters, &key, flow, tcp);
        InboundVerdict::Drop(DropReason::ClosedByRouter)
    }

    /// Decides for a packet to a shadowed address. `adopt`: a fast-path replay, whose packet
    /// already went to a side that its flow then takes (see `router/replay.rs`).
    pub(super) fn inbound_located(
        &mut self,
        ip: &Ipv4Info,
        located: Located,
        now: Instant,
        prepared: Option<Prepared>,
        adopt: Option<&mut Adoption>,
    ) -> InboundVerdict {
        let (shadows, mut tables) = self.split_borrow();
        let shadow = shadows.at_mut(located.slot);
        let deliver = match located.strategy {
            Strategy::Instant => Deliver::Destination,
            Strategy::Packet => shadow.decide_packet().into(),
            Strategy::Flow => match flow_inbound(shadow, &mut tables, ip, now, prepared, adopt) {
                Ok(d) => d,
                Err(reason) => {
                    self.settle(now);
                    return InboundVerdict::Drop(reason);
                }
            },
        };
        shadow.packets[deliver.bits() as usize - 1] += 1;
        self.settle(now);
        InboundVerdict::Deliver(deliver)
    }
}

fn flow_inbound<S: crate::events::EventSink>(
    shadow: &mut Shadow,
    t: &mut Tables<'_, S>,
    ip: &Ipv4Info,
    now: Instant,
    prepared: Option<Prepared>,
    adopt: Option<&mut Adoption>,
) -> Result<Deliver, DropReason> {
    let prepared =
        prepared.or_else(|| inbound_key(ip).map(|(key, kind)| Prepared { key, kind, hash: t.flows.hash(&key) }));
    let Some(Prepared { key, kind, hash }) = prepared else {
        // A later fragment: follow its first fragment, or go to both VMs (the one without
        // fragment zero discards the rest silently, RFC 1122 3.3.2).
        return Ok(match t.fragments.route(ip, now) {
            Some(FragmentRoute::Deliver(bits)) => Deliver::from_bits(bits),
            _ => {
                t.counters.fragments_mirrored += 1;
                Deliver::Both
            }
        });
    };
    let deliver = flow_decide(shadow, t, ip, &Prepared { key, kind, hash }, now, adopt)?;
    if ip.fragment == Fragment::First && !t.fragments.remember(ip, FragmentRoute::Deliver(deliver.bits()), now) {
        t.counters.fragment_table_full += 1;
    }
    Ok(deliver)
}

fn flow_decide<S: crate::events::EventSink>(
    shadow: &mut Shadow,
    t: &mut Tables<'_, S>,
    ip: &Ipv4Info,
    prepared: &Prepared,
    now: Instant,
    mut adopt: Option<&mut Adoption>,
) -> Result<Deliver, DropReason> {
    let Prepared { ref key, kind, hash } = *prepared;
    let now_ms = now.millis_u32();
    let mut found = t.flows.find(key, hash);
    if let Some(i) = found {
        // A SYN on a closed tuple, or on one the router closed at the cut-over, is a new connection.
        let reused = matches!(ip.l4, L4::Tcp(tcp) if tcp.flags.is_syn_only())
            && matches!(t.flows.flow(i).phase, Phase::Closed | Phase::Retired);
        if t.flows.is_expired(i, now_ms, t.timeouts) {
            t.counters.flows_expired += 1;
            t.end_flow(i, FlowEndReason::Idle, now);
            found = None;
        } else if reused {
            t.end_flow(i, FlowEndReason::Reused, now);
            found = None;
        }
    }
    let replica = shadow.mode == Mode::Replica;
    // A replayed packet already went to `delivered`: a flow it opens is that side's.
    let delivered = adopt.as_deref().filter(|_| !replica).map(|a| a.delivered);
    let index = match found {
        Some(i) => i,
        None => {
            let (mut owner, mut phase, origin) = match kind {
                Kind::FollowOnly => return Ok(Deliver::Both),
                Kind::Midstream if replica => {
                    (Owner::from(shadow.decide(key)), Phase::Established, FlowOrigin::Unknown)
                }
                // Before the ramp B holds no flow of X: an established flow the router has not
                // seen yet is A's, open since before the migration was requested. Known now, it
                // is counted in A's census and never mirrored to B.
                Kind::Midstream if shadow.entry.state == EntryState::WaitingForLease => {
                    (Owner::Source, Phase::Established, FlowOrigin::Unknown)
                }
                Kind::Midstream => (Owner::Unknown, Phase::Pending, FlowOrigin::Unknown),
                Kind::Opening => (Owner::from(shadow.decide(key)), Phase::Embryonic, FlowOrigin::Inbound),
            };
            if let (Some(side), Some(a)) = (delivered, adopt.as_deref_mut())
                && owner != Owner::from(side)
            {
                a.from = Some(owner);
                owner = side.into();
                if phase == Phase::Pending {
                    phase = Phase::Established; // its owner is known: the side that has it
                }
            }
            let mut flow = Flow::new(owner, phase, now);
            if origin == FlowOrigin::Unknown {
                flow.marks |= marks::UNKNOWN_START;
            } else if key.protocol == PROTO_TCP {
                shadow.patterns.arrival(now);
            }
            let Some(i) = t.admit(key, hash, flow, now) else { return Err(DropReason::TableFull) };
            match owner {
                Owner::Source => shadow.entry.counters.flows_to_source += 1,
                Owner::Destination => shadow.entry.counters.flows_to_destination += 1,
                Owner::Unknown => {}
            }
            t.sink.event(Event::FlowStarted { key: *key, owner, origin, at: now });
            i
        }
    };
    let flow = t.flows.flow_mut(index);
    flow.last_seen_ms = now_ms;
    if flow.phase == Phase::Retired {
        if let L4::Tcp(tcp) = &ip.l4 {
            retired_inbound(Some(&mut shadow.ending.retired_open), t.transmit, t.counters, key, flow, tcp);
        }
        return Err(DropReason::ClosedByRouter);
    }
    if let (Some(side), Some(a)) = (delivered, adopt)
        && flow.owner != Owner::from(side)
    {
        a.from = Some(flow.owner);
        adopt_owner(shadow, key, flow, side, t.sink, now);
    }
    if replica {
        hand_off(shadow, key, flow, t.sink, now);
    }
    if let L4::Tcp(tcp) = &ip.l4 {
        track_client_segment(shadow, flow, tcp, now);
        observe(&mut shadow.patterns, key, flow, now);
    } else if flow.is_outbound() {
        flow.flags |= flags::REPLIED;
    } else if flow.has(flags::REPLIED) && flow.phase == Phase::Embryonic {
        flow.phase = Phase::Established;
    }
    Ok(match flow.owner {
        _ if replica => Deliver::Both,
        Owner::Source => Deliver::Source,
        Owner::Destination => Deliver::Destination,
        Owner::Unknown => Deliver::Both,
    })
}

/// A replayed packet of a tracked flow went to `side`, not to the flow's owner (the fast path's
/// flow map and the core's table disagreed): the flow is `side`'s from now on, as the packet
/// already is. Reported as `OwnerLearned` when the owner was unknown, as a `HandOff` when it was
/// the other side, so that everything that follows owners through the events stays in step.
fn adopt_owner(
    shadow: &mut Shadow,
    key: &FlowKey,
    flow: &mut Flow,
    side: Side,
    sink: &mut impl crate::events::EventSink,
    now: Instant,
) {
    let counters = &mut shadow.entry.counters;
    match flow.owner {
        Owner::Source => counters.flows_to_source = counters.flows_to_source.saturating_sub(1),
        Owner::Destination => counters.flows_to_destination = counters.flows_to_destination.saturating_sub(1),
        Owner::Unknown => {}
    }
    match side {
        Side::Source => counters.flows_to_source += 1,
        Side::Destination => counters.flows_to_destination += 1,
    }
    match flow.owner.side() {
        Some(from) => sink.event(Event::HandOff { key: *key, from, to: side, at: now }),
        None => {
            if flow.phase == Phase::Pending {
                flow.phase = Phase::Established;
            }
            sink.event(Event::OwnerLearned { key: *key, owner: side, at: now });
        }
    }
    // The census follows at the packet's `observe`, which moves a counted flow to its new side.
    flow.owner = side.into();
}

/// Replica mode: the flow's primary is whatever the current split says; a change is a hand-off.
pub(super) fn hand_off(
    shadow: &mut Shadow,
    key: &FlowKey,
    flow: &mut Flow,
    sink: &mut impl crate::events::EventSink,
    now: Instant,
) {
    let primary = shadow.decide(key);
    if let Some(from) = flow.owner.side()
        && from != primary
    {
        shadow.entry.counters.handoffs += 1;
        sink.event(Event::HandOff { key: *key, from, to: primary, at: now });
    }
    flow.owner = primary.into();
}

/// Follows the client's half of a TCP connection: phase, sequence and acknowledgment, and the
/// signals about B (unanswered SYNs, retransmissions) for the split controller.
fn track_client_segment(shadow: &mut Shadow, flow: &mut Flow, tcp: &TcpInfo, now: Instant) {
    let to_b = flow.owner == Owner::Destination && shadow.mode == Mode::Independent;
    let owner = flow.owner.side();
    let f = tcp.flags;
    if f.rst() {
        flow.phase = Phase::Closed;
        return;
    }
    if f.is_syn_only() {
        let params = &shadow.entry.congestion_control_parameters;
        if let Some(side) = owner
            && flow.phase == Phase::Embryonic
            && !flow.has(flags::REPLIED)
            && !flow.has(flags::SYN_SIGNALLED)
            && now - flow.created >= params.syn_timeout
        {
            flow.flags |= flags::SYN_SIGNALLED;
            shadow.patterns.unanswered_syn(side);
            if to_b {
                shadow.signals.record(Signal::UnansweredSyn);
            }
        }
    } else if f.is_syn_ack() && flow.is_outbound() {
        // The remote end answered a connection a VM opened.
        flow.flags |= flags::REPLIED;
    } else if flow.phase == Phase::Embryonic && !flow.is_outbound() && flow.has(flags::REPLIED) && f.ack() {
        // The client's ACK of the SYN-ACK: the three-way handshake is complete.
        flow.phase = Phase::Established;
    }
    if f.fin() && flow.phase != Phase::Closed {
        flow.phase = if flow.phase == Phase::Closing { Phase::Closed } else { Phase::Closing };
    }
    let seq_len = tcp.seq_len();
    if seq_len == 0 && !flow.has(flags::CLIENT_SEQ) && f.ack() && !f.rst() {
        // A flow first seen by a pure ACK (one picked up mid-stream, or the last ACK of a
        // connection that closed as the router began to watch): its sequence number is the
        // client's SND.NXT, and nothing of the client's is known to wait for acknowledgment. So
        // the closing window can close it in order; otherwise a phantom flow that never sends
        // again would hold the early finish until the TCP idle timeout, hours away.
        flow.client_seq_max = tcp.seq;
        flow.flags |= flags::CLIENT_SEQ;
        flow.marks |= marks::OWNER_ACKED;
    }
    if seq_len > 0 {
        let end = tcp.seq.wrapping_add(seq_len);
        if tcp.payload_len > 0 && to_b {
            shadow.signals.record(Signal::DataSegment);
            if flow.has(flags::CLIENT_SEQ) && seq_le(end, flow.client_seq_max) {
                shadow.signals.record(Signal::Retransmission);
            }
        }
        if flow.raise_client_seq(end) {
            flow.marks &= !marks::OWNER_ACKED;
            // A request to answer (the closing window waits for its answer); its first byte's
            // delay is measured, except on flows being learned, whose stamp holds the learning.
            if tcp.payload_len > 0 && owner.is_some() && flow.marks & marks::AWAITING_ANSWER == 0 && !flow.is_outbound()
            {
                flow.marks |= marks::AWAITING_ANSWER;
                if flow.marks & marks::LEARNED == 0 {
                    flow.stamp_ms = now.millis_u32();
                }
            }
        }
    }
    if f.ack() {
        flow.raise_client_ack(tcp.ack);
    }
}

/// The flow key of an inbound packet and what it may do; `None` for a later fragment.
fn inbound_key(ip: &Ipv4Info) -> Option<(FlowKey, Kind)> {
    let flow = |client_port, shadow_port, protocol| FlowKey {
        client_ip: ip.src,
        client_port,
        shadow_ip: ip.dst,
        shadow_port,
        protocol,
    };
    Some(match ip.l4 {
        L4::Tcp(t) => {
            let kind = if t.flags.rst() {
                Kind::FollowOnly
            } else if t.flags.is_syn_only() {
                Kind::Opening
            } else {
                Kind::Midstream
            };
            (flow(t.src_port, t.dst_port, ip.protocol), kind)
        }
        L4::Udp { src_port, dst_port } => (flow(src_port, dst_port, ip.protocol), Kind::Opening),
        L4::IcmpEcho { id, reply } => (flow(id, 0, PROTO_ICMP), if reply { Kind::FollowOnly } else { Kind::Opening }),
        // An error about a datagram the shadowed address sent: it belongs to that datagram's flow
        // (path MTU discovery depends on it reaching the right VM).
        L4::IcmpError(q) if q.src == ip.dst => {
            let key = FlowKey {
                client_ip: q.dst,
                client_port: if q.protocol == PROTO_ICMP { q.src_port } else { q.dst_port },
                shadow_ip: q.src,
                shadow_port: if q.protocol == PROTO_ICMP { 0 } else { q.src_port },
                protocol: q.protocol,
            };
            (key, Kind::FollowOnly)
        }
        L4::IcmpError(_) | L4::IcmpOther | L4::Other => (flow(0, 0, ip.protocol), Kind::Opening),
        L4::LaterFragment => return None,
    })
}

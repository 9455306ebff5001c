//! Egress: a frame from a VM. Anti-spoofing, then the arbiter for shadowed addresses.

use super::close::retired_egress;
use super::inbound::hand_off;
use super::observe::observe;
use super::{DropReason, EgressVerdict, ShadowRouter, VmRef, seq_le};
use crate::events::{ConflictKind, Event, FlowEndReason, FlowOrigin};
use crate::flow::{Flow, FlowKey, Owner, Phase, Side, flags, marks};
use crate::fragments::FragmentRoute;
use crate::patterns::Answer;
use crate::shadow::{Mode, Shadow, Signal, Strategy};
use crate::time::Instant;
use crate::wire::{Fragment, Ipv4Info, L4, PROTO_ICMP, PROTO_UDP, Packet, TcpInfo, parse_frame};

impl<S: crate::events::EventSink> ShadowRouter<S> {
    /// Decides whether a frame from VM `from` may leave towards the provider side.
    pub fn egress(&mut self, from: VmRef, frame: &[u8], now: Instant) -> EgressVerdict {
        self.egress_parsed(from, &parse_frame(frame), now)
    }

    /// Decides on a frame from VM `from` the caller has already parsed: counted exactly as
    /// [`ShadowRouter::egress`] counts.
    pub fn egress_parsed(
        &mut self,
        from: VmRef,
        parsed: &Result<Packet, crate::wire::ParseError>,
        now: Instant,
    ) -> EgressVerdict {
        self.counters.egress_frames += 1;
        match parsed {
            Ok(packet) => self.egress_packet(from, packet, now),
            Err(e) => {
                self.counters.malformed.count(*e);
                EgressVerdict::Drop(DropReason::Malformed(*e))
            }
        }
    }

    /// Decides on an already parsed frame from VM `from`.
    pub fn egress_packet(&mut self, from: VmRef, packet: &Packet, now: Instant) -> EgressVerdict {
        let ip = match packet {
            Packet::Ipv4(ip) => ip,
            Packet::Arp(arp) => {
                // RFC 5227 probes carry sender 0.0.0.0; anything else must be the VM's own address.
                let ok = arp.sender_ip.is_unspecified() || self.holds(from, arp.sender_ip);
                return self.spoof_check(ok);
            }
            Packet::Other { .. } => return EgressVerdict::Forward,
        };
        let Some(located) = self.shadows.locate(&ip.src) else {
            let dhcp_client = ip.src.is_unspecified()
                && matches!(ip.l4, L4::Udp { src_port: 68, dst_port: 67 })
                && ip.protocol == PROTO_UDP;
            let ok = dhcp_client || self.addresses.get(&ip.src) == Some(&from);
            return self.spoof_check(ok);
        };
        // One lookup per packet: everything below reaches the entry through its arena slot.
        let slot = located.slot;
        let Some(side) = self.shadows.at(slot).side_of(from) else { return self.spoof_check(false) };
        match located.strategy {
            // The seed's per-packet split arbitrates nothing: both VMs' replies go out.
            Strategy::Packet => EgressVerdict::Forward,
            Strategy::Instant if side == Side::Source => {
                self.counters.source_released += 1;
                EgressVerdict::Drop(DropReason::SourceReleased)
            }
            Strategy::Instant => EgressVerdict::Forward,
            Strategy::Flow => self.arbitrate(slot, side, ip, now),
        }
    }

    fn holds(&self, vm: VmRef, ip: std::net::Ipv4Addr) -> bool {
        match self.shadows.get(&ip) {
            Some(shadow) => shadow.side_of(vm).is_some(),
            None => self.addresses.get(&ip) == Some(&vm),
        }
    }

    fn spoof_check(&mut self, ok: bool) -> EgressVerdict {
        if ok || !self.config.anti_spoofing {
            EgressVerdict::Forward
        } else {
            self.counters.spoofed += 1;
            EgressVerdict::Drop(DropReason::Spoofed)
        }
    }

    /// The egress arbiter: only a flow's owner answers it.
    fn arbitrate(&mut self, slot: u32, side: Side, ip: &Ipv4Info, now: Instant) -> EgressVerdict {
        let Some((key, opens)) = egress_key(ip) else {
            // A later fragment follows the verdict on its first fragment.
            return match self.fragments.route(ip, now) {
                Some(FragmentRoute::Pass) => EgressVerdict::Forward,
                _ => {
                    self.counters.fragments_orphaned += 1;
                    EgressVerdict::Drop(DropReason::FragmentOrphan)
                }
            };
        };
        let verdict = self.arbitrate_flow(slot, side, ip, &key, opens, now);
        if ip.fragment == Fragment::First {
            let route = if verdict == EgressVerdict::Forward { FragmentRoute::Pass } else { FragmentRoute::Drop };
            if !self.fragments.remember(ip, route, now) {
                self.counters.fragment_table_full += 1;
            }
        }
        verdict
    }

    #[allow(clippy::too_many_arguments)] // the packet's facts, computed once by the caller
    fn arbitrate_flow(
        &mut self,
        slot: u32,
        side: Side,
        ip: &Ipv4Info,
        key: &FlowKey,
        opens: bool,
        now: Instant,
    ) -> EgressVerdict {
        let tcp = match ip.l4 {
            L4::Tcp(t) => Some(t),
            _ => None,
        };
        let hash = self.flows.hash(key);
        let mut found = self.flows.find(key, hash);
        if let Some(i) = found
            && self.flows.is_expired(i, now.millis_u32(), &self.timeouts)
        {
            self.counters.flows_expired += 1;
            self.end_flow(i, FlowEndReason::Idle, now);
            found = None;
        }
        // A VM's connection attempt on a tuple the other VM claimed but the remote end has not
        // answered yet: the priority VM (per flow, A early, B later) wins the tuple.
        if let (Some(i), Some(t)) = (found, tcp)
            && t.flags.is_syn_only()
        {
            let shadow = self.shadows.at(slot);
            let flow = self.flows.flow(i);
            if shadow.mode == Mode::Independent
                && flow.owner != Owner::from(side)
                && flow.is_outbound()
                && flow.phase == Phase::Embryonic
                && !flow.has(flags::REPLIED)
                && shadow.decide(key) == side
            {
                self.end_flow(i, FlowEndReason::CollisionLost, now);
                found = None;
            }
        }
        let shadow = self.shadows.at_mut(slot);
        let replica = shadow.mode == Mode::Replica;
        let index = match found {
            Some(i) => i,
            None => {
                if tcp.is_some_and(|t| t.flags.rst()) {
                    // A RST for a tuple the router does not track answers nothing it delivered
                    // (unknown flows are tracked while learned). If the connection is real, the
                    // client's next segment is delivered to both VMs and the RST pair rule lets
                    // one RST through; a stray one never reaches a client.
                    self.counters.resets_suppressed += 1;
                    shadow.entry.counters.resets_suppressed += 1;
                    return EgressVerdict::Drop(DropReason::ResetSuppressed);
                }
                if !opens {
                    return EgressVerdict::Forward; // an echo reply or ICMP error: nothing to claim
                }
                let opening = tcp.is_none_or(|t| t.flags.is_syn_only());
                let owner = if replica { shadow.decide(key) } else { side };
                let (phase, origin) = if opening {
                    (Phase::Embryonic, FlowOrigin::Outbound)
                } else {
                    (Phase::Established, FlowOrigin::Unknown)
                };
                match owner {
                    Side::Source => shadow.entry.counters.flows_to_source += 1,
                    Side::Destination => shadow.entry.counters.flows_to_destination += 1,
                }
                let mut flow = Flow::new(owner.into(), phase, now);
                if opening {
                    flow.flags |= flags::OUTBOUND;
                } else {
                    flow.marks |= marks::UNKNOWN_START;
                }
                let Some(i) = self.admit(key, hash, flow, now) else {
                    return EgressVerdict::Drop(DropReason::TableFull);
                };
                self.sink.event(Event::FlowStarted { key: *key, owner: owner.into(), origin, at: now });
                i
            }
        };
        let shadow = self.shadows.at_mut(slot);
        let flow = self.flows.flow_mut(index);
        if replica {
            flow.last_seen_ms = now.millis_u32();
            hand_off(shadow, key, flow, &mut self.sink, now);
            let verdict = self.replica_egress(slot, side, index, tcp);
            observe(&mut self.shadows.at_mut(slot).patterns, key, self.flows.flow_mut(index), now);
            return verdict;
        }
        match flow.owner.side() {
            None => {
                let verdict = self.learn(slot, side, index, key, tcp, now);
                if let Some(i) = self.flows.find(key, hash) {
                    observe(&mut self.shadows.at_mut(slot).patterns, key, self.flows.flow_mut(i), now);
                }
                verdict
            }
            Some(owner) if owner == side => {
                flow.last_seen_ms = now.millis_u32();
                if flow.phase == Phase::Retired {
                    retired_egress(&mut self.transmit, &mut self.counters, key, flow, tcp, shadow.source);
                    return EgressVerdict::Drop(DropReason::ClosedByRouter);
                }
                track_owner(shadow, flow, side, tcp, now);
                observe(&mut shadow.patterns, key, flow, now);
                EgressVerdict::Forward
            }
            Some(_)
                if tcp.is_some_and(|t| t.flags.rst())
                    && flow.marks & marks::LEARNED != 0
                    && now.millis_u32().wrapping_sub(flow.stamp_ms)
                        <= self.config.rst_pair_window.as_millis() as u32 =>
            {
                // The other VM's RST to the segment that taught the router this flow's owner:
                // the expected answer of a VM without the connection, not trouble.
                self.counters.resets_suppressed += 1;
                shadow.entry.counters.resets_suppressed += 1;
                EgressVerdict::Drop(DropReason::ResetSuppressed)
            }
            Some(_) => {
                let kind = conflict_kind(flow, tcp);
                shadow.entry.counters.conflicts.count(kind);
                self.counters.conflicts.count(kind);
                if side == Side::Destination {
                    shadow.signals.record(Signal::Conflict);
                }
                self.sink.event(Event::Conflict { key: *key, from: side, kind, at: now });
                EgressVerdict::Drop(DropReason::Conflict(kind))
            }
        }
    }

    /// An unknown flow: the first VM to answer with anything but RST owns it. RSTs are held back
    /// unless both VMs reset it within the pair window (then nobody has it and one RST goes out).
    fn learn(
        &mut self,
        slot: u32,
        side: Side,
        index: usize,
        key: &FlowKey,
        tcp: Option<TcpInfo>,
        now: Instant,
    ) -> EgressVerdict {
        let window_ms = self.config.rst_pair_window.as_millis() as u32;
        let now_ms = now.millis_u32();
        let flow = self.flows.flow_mut(index);
        if tcp.is_some_and(|t| t.flags.rst()) {
            let (mine, theirs) = match side {
                Side::Source => (flags::RST_SOURCE, flags::RST_DESTINATION),
                Side::Destination => (flags::RST_DESTINATION, flags::RST_SOURCE),
            };
            let recent = now_ms.wrapping_sub(flow.stamp_ms) <= window_ms;
            if flow.has(theirs) && recent {
                self.end_flow(index, FlowEndReason::Reset, now);
                return EgressVerdict::Forward;
            }
            if !recent {
                flow.flags &= !(flags::RST_SOURCE | flags::RST_DESTINATION);
            }
            if !flow.has(mine) {
                flow.flags |= mine;
                flow.stamp_ms = now_ms;
            }
            self.counters.resets_suppressed += 1;
            self.shadows.at_mut(slot).entry.counters.resets_suppressed += 1;
            return EgressVerdict::Drop(DropReason::ResetSuppressed);
        }
        flow.owner = side.into();
        // A FIN the client sent while the flow was being learned, and the owner's own FIN in
        // the reply that taught it, are kept: a flow learned while closing must close, or it
        // would count as open on A for hours and hold back the early finish.
        if flow.phase == Phase::Pending {
            flow.phase = Phase::Established;
        }
        if tcp.is_some_and(|t| t.flags.fin()) {
            flow.phase = if flow.phase == Phase::Closing { Phase::Closed } else { Phase::Closing };
        }
        flow.flags = (flow.flags & !(flags::RST_SOURCE | flags::RST_DESTINATION)) | flags::REPLIED;
        flow.marks |= marks::LEARNED | marks::UNKNOWN_START;
        flow.stamp_ms = now_ms;
        flow.last_seen_ms = now_ms;
        let counters = &mut self.shadows.at_mut(slot).entry.counters;
        counters.flows_learned += 1;
        match side {
            Side::Source => counters.flows_to_source += 1,
            Side::Destination => counters.flows_to_destination += 1,
        }
        if let Some(t) = tcp {
            self.flows.flow_mut(index).raise_owner_seq(t.seq.wrapping_add(t.seq_len()));
        }
        self.sink.event(Event::OwnerLearned { key: *key, owner: side, at: now });
        EgressVerdict::Forward
    }

    /// Replica mode: the primary's replies go out, except data the client already acknowledged
    /// (a lagging copy after a hand-off); the secondary's are duplicates.
    fn replica_egress(&mut self, slot: u32, side: Side, index: usize, tcp: Option<TcpInfo>) -> EgressVerdict {
        let flow = self.flows.flow_mut(index);
        let primary = flow.owner.side() == Some(side);
        let acked_already = tcp.is_some_and(|t| {
            t.payload_len > 0
                && flow.has(flags::CLIENT_ACK)
                && seq_le(t.seq.wrapping_add(t.payload_len), flow.client_ack)
        });
        if primary && !acked_already {
            if let Some(t) = tcp {
                if t.flags.is_syn_ack() {
                    flow.flags |= flags::REPLIED;
                }
                flow.raise_owner_seq(t.seq.wrapping_add(t.seq_len()));
            }
            return EgressVerdict::Forward;
        }
        self.counters.replica_duplicates += 1;
        self.shadows.at_mut(slot).entry.counters.replica_duplicates += 1;
        EgressVerdict::Drop(DropReason::ReplicaDuplicate)
    }
}

/// Follows the owner's half: handshake, FIN/RST, sequence space; B's RSTs are a trouble signal.
/// Measures the owner's handshake and first-byte times and its resets.
fn track_owner(shadow: &mut Shadow, flow: &mut Flow, side: Side, tcp: Option<TcpInfo>, now: Instant) {
    let Some(t) = tcp else {
        // Connectionless: a reply to a client's datagram, or the VM's follow-up on its own flow.
        if flow.is_outbound() {
            if flow.has(flags::REPLIED) && flow.phase == Phase::Embryonic {
                flow.phase = Phase::Established;
            }
        } else {
            flow.flags |= flags::REPLIED;
        }
        return;
    };
    let f = t.flags;
    if f.rst() {
        flow.phase = Phase::Closed;
        shadow.patterns.reset(side);
        if side == Side::Destination {
            shadow.signals.record(Signal::Reset);
        }
        return;
    }
    if f.is_syn_ack() {
        if !flow.has(flags::REPLIED) && !flow.is_outbound() {
            let took = now.saturating_duration_since(flow.created);
            shadow.patterns.handshake(side, took);
            if side == Side::Destination && shadow.patterns.slow_answer(Answer::Handshake, took) {
                shadow.controller.record(Signal::SlowAnswer);
            }
        }
        flow.flags |= flags::REPLIED;
    }
    if f.ack() && (!flow.has(flags::CLIENT_SEQ) || seq_le(flow.client_seq_max, t.ack)) {
        flow.marks |= marks::OWNER_ACKED;
    }
    if t.payload_len > 0 && flow.marks & marks::AWAITING_ANSWER != 0 {
        flow.marks &= !marks::AWAITING_ANSWER;
        // A learned flow's stamp holds the learning, not the request.
        let waited = now.millis_u32().wrapping_sub(flow.stamp_ms);
        if flow.marks & marks::LEARNED == 0 && waited < u32::MAX / 2 {
            let took = core::time::Duration::from_millis(u64::from(waited));
            shadow.patterns.first_byte(side, took);
            if side == Side::Destination && shadow.patterns.slow_answer(Answer::FirstByte, took) {
                shadow.controller.record(Signal::SlowAnswer);
            }
        }
    } else if flow.is_outbound() && flow.phase == Phase::Embryonic && flow.has(flags::REPLIED) && f.ack() {
        flow.phase = Phase::Established; // the VM's ACK of the remote SYN-ACK
    }
    if f.fin() && flow.phase != Phase::Closed {
        flow.phase = if flow.phase == Phase::Closing { Phase::Closed } else { Phase::Closing };
    }
    flow.raise_owner_seq(t.seq.wrapping_add(t.seq_len()));
}

/// What a reply from the non-owner is.
fn conflict_kind(flow: &Flow, tcp: Option<TcpInfo>) -> ConflictKind {
    let Some(t) = tcp else { return ConflictKind::Other };
    let f = t.flags;
    if f.rst() {
        ConflictKind::Rst
    } else if f.is_syn_ack() {
        ConflictKind::SynAck
    } else if f.is_syn_only() {
        ConflictKind::Collision
    } else if t.payload_len > 0 {
        let end = t.seq.wrapping_add(t.payload_len);
        if flow.has(flags::OWNER_SEQ) && seq_le(end, flow.owner_seq_max) {
            ConflictKind::DuplicateSequence
        } else {
            ConflictKind::Data
        }
    } else {
        ConflictKind::Other
    }
}

/// The flow key of a packet a VM sends from the shadowed address, and whether such a packet may
/// open a flow (echo replies and ICMP errors only follow one); `None` for a later fragment.
fn egress_key(ip: &Ipv4Info) -> Option<(FlowKey, bool)> {
    let flow = |client_port, shadow_port, protocol| FlowKey {
        client_ip: ip.dst,
        client_port,
        shadow_ip: ip.src,
        shadow_port,
        protocol,
    };
    Some(match ip.l4 {
        L4::Tcp(t) => (flow(t.dst_port, t.src_port, ip.protocol), true),
        L4::Udp { src_port, dst_port } => (flow(dst_port, src_port, ip.protocol), true),
        L4::IcmpEcho { id, reply } => (flow(id, 0, PROTO_ICMP), !reply),
        // The VM reports an error about a client's datagram to the shadowed address.
        L4::IcmpError(q) if q.dst == ip.src => {
            let key = FlowKey {
                client_ip: q.src,
                client_port: q.src_port,
                shadow_ip: q.dst,
                shadow_port: if q.protocol == PROTO_ICMP { 0 } else { q.dst_port },
                protocol: q.protocol,
            };
            (key, false)
        }
        L4::IcmpError(_) | L4::IcmpOther | L4::Other => (flow(0, 0, ip.protocol), true),
        L4::LaterFragment => return None,
    })
}

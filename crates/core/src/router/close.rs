//! The graceful end of A's flows, and the early finish.
//!
//! A keep-alive HTTP connection, a connection pool or an SSH session on A may outlive any
//! deadline. A RST at the cut-over breaks whatever it was doing; an orderly close at a moment
//! when nothing is in flight is what every such client already handles (a server closing an idle
//! keep-alive connection, RFC 9112 9.3.1 and 9.6): it reconnects, and its new connection goes to
//! B. So in the **closing window** (`close_grace` before the deadline) every new flow goes to B
//! and each of A's TCP flows is closed at its next **quiet moment**: everything either side sent
//! acknowledged, no request of the client's waiting for its answer, and no segment either way
//! for [`QUIET`]. The last two keep the close out of work in progress: an answer being computed
//! (the request acknowledged, its answer not yet begun) and a transfer whose sender is only
//! momentarily caught up, which a FIN would cut short. Then
//!
//! - towards the client, a FIN|ACK in A's name at exactly the client's RCV.NXT (its last
//!   acknowledgment) acknowledging all it sent (RFC 9293 3.10.7: in-window, in order: accepted);
//! - towards A, a FIN|ACK in the client's name, so A's application sees an orderly end too;
//! - the flow is then `Retired`: the client's last segments (its ACK of the FIN, its own FIN,
//!   data that crossed the FIN) are answered by the router with an ACK and never reach B, which
//!   would answer a connection it does not know with a RST; A's are dropped, its FIN
//!   acknowledged.
//!
//! The closes are spread over the window's first half (at most `close_per_scan` per look, every
//! [`CLOSE_SCAN_EVERY`]), so that hundreds of clients do not reconnect to B in the same instant.
//! Flows never quiet by the deadline (a bulk transfer, a stream) are reset there, as before.
//! **Early finish**: once the split is 100 %, A has no open flow left (or only idle ones the
//! forecast says will outlive the operator's longest deadline, closed in order first) and the
//! router has watched the address for a while, the migration ends before its deadline.

use core::time::Duration;
use std::collections::VecDeque;
use std::net::Ipv4Addr;

use super::observe::{is_idle, leave};
use super::{ShadowRouter, Transmit, TransmitKind, seq_le};
use crate::counters::RouterCounters;
use crate::events::{EndCause, Outcome};
use crate::flow::{Flow, FlowKey, Owner, Phase, flags, marks};
use crate::shadow::{EntryState, Mode, Shadow};
use crate::time::Instant;
use crate::wire::{PROTO_TCP, SegmentSpec, TcpInfo, build_tcp_segment};

/// The early finish waits until the router has watched the address this long: an idle flow on A
/// is known only once it sends a segment, so a migration requested a moment ago may not know
/// all of A's flows yet.
const MIN_OBSERVATION: Duration = Duration::from_secs(30);

/// The shortest time A's flows must stay all idle, past their forecast drain, before the early
/// finish closes them as overdue.
const OVERDUE_FLOOR: Duration = Duration::from_secs(5);

/// How long the end waits for clients to finish closing flows the router closed.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// How often an entry is looked at while its end is near.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long a flow must have been without a segment either way, besides idle, to be closed.
/// Above the delayed-ACK timers (40 ms in Linux, 200 ms at most by RFC 9293 3.8.6.3) that keep an
/// exchange's last acknowledgment back, and below the think time of an interactive or keep-alive
/// client (a person, a pool's idle period), which is when a server would close it too.
pub(crate) const QUIET: Duration = Duration::from_millis(250);

/// How often the closing window looks for quiet flows to close.
const CLOSE_SCAN_EVERY: Duration = Duration::from_millis(250);

fn push(out: &mut VecDeque<Transmit>, to: Ipv4Addr, vm: Option<super::VmRef>, kind: TransmitKind, spec: &SegmentSpec) {
    out.push_back(Transmit { to, vm, kind, datagram: build_tcp_segment(spec) });
}

/// Whether `flow` is one of A's open flows, the ones the closing window closes.
fn open_on_a(flow: &Flow) -> bool {
    flow.owner == Owner::Source && matches!(flow.phase, Phase::Established | Phase::Closing)
}

/// Whether `flow`, marked to close, may be closed at `now`: both sequence spaces known, idle,
/// no request waiting for its answer (on a flow a client opened to A) and quiet for [`QUIET`].
fn quiet(flow: &Flow, now: Instant) -> bool {
    let quiet_ms = u32::try_from(QUIET.as_millis()).unwrap_or(u32::MAX);
    flow.has(flags::CLIENT_SEQ | flags::CLIENT_ACK)
        && is_idle(flow)
        && (flow.is_outbound() || flow.marks & marks::AWAITING_ANSWER == 0)
        && now.millis_u32().wrapping_sub(flow.last_seen_ms) >= quiet_ms
}

/// Closes `flow` in order: a FIN in A's name to the client and one in the client's name to A.
fn close(
    shadow: &mut Shadow,
    out: &mut VecDeque<Transmit>,
    counters: &mut RouterCounters,
    key: &FlowKey,
    flow: &mut Flow,
    now: Instant,
) {
    let (client, server) = ((key.client_ip, key.client_port), (key.shadow_ip, key.shadow_port));
    let (client_next, a_next) = (flow.client_seq_max, flow.client_ack);
    let to_client = SegmentSpec { from: server, to: client, seq: a_next, ack: client_next, fin: true };
    push(out, key.client_ip, None, TransmitKind::Close, &to_client);
    let to_a = SegmentSpec { from: client, to: server, seq: client_next, ack: a_next, fin: true };
    push(out, key.shadow_ip, Some(shadow.source), TransmitKind::Close, &to_a);
    counters.closes_sent += 2;
    leave(&mut shadow.patterns, flow, None);
    flow.phase = Phase::Retired;
    // Its idle clock starts at the close: the client has a whole closing timeout to answer it.
    flow.last_seen_ms = now.millis_u32();
    flow.marks &= !marks::CLOSE_AT_IDLE;
    flow.owner_seq_max = a_next.wrapping_add(1); // the FIN sent in A's name
    flow.stamp_ms = client_next; // what A was told the client sent
    let ending = &mut shadow.ending;
    ending.report.closed_gracefully += 1;
    ending.retired_open += 1;
    ending.last_close = Some(now);
}

/// A client's segment on a flow the router closed: acknowledged by the router, never delivered.
/// `retired_open` is the entry's count of such flows whose client has not closed yet (none once
/// the migration has ended).
pub(crate) fn retired_inbound(
    retired_open: Option<&mut u32>,
    out: &mut VecDeque<Transmit>,
    counters: &mut RouterCounters,
    key: &FlowKey,
    flow: &mut Flow,
    tcp: &TcpInfo,
) {
    counters.closed_absorbed += 1;
    let end = tcp.seq.wrapping_add(tcp.seq_len());
    if !tcp.flags.rst() {
        if tcp.payload_len > 0 && !seq_le(end, flow.client_seq_max) {
            // A request that crossed the FIN: the client reads the FIN before any answer and, as
            // after any server's close of an idle connection, retries on a new one (to B).
            counters.closed_crossed += 1;
        }
        flow.raise_client_seq(end);
        // A segment that shows the FIN missed is answered with it again (the router keeps no
        // retransmission timer; the client's next segment is its clock), or the client would
        // take the connection for open and wait for an answer forever.
        let fin_unacked = fin_missed(&mut flow.owner_seq_max, tcp, counters);
        if tcp.seq_len() > 0 || fin_unacked {
            let (client, server) = ((key.client_ip, key.client_port), (key.shadow_ip, key.shadow_port));
            let seq = flow.owner_seq_max.wrapping_sub(u32::from(fin_unacked));
            let spec = SegmentSpec { from: server, to: client, seq, ack: flow.client_seq_max, fin: fin_unacked };
            push(out, key.client_ip, None, if fin_unacked { TransmitKind::Close } else { TransmitKind::Ack }, &spec);
            counters.closes_sent += u64::from(fin_unacked);
        }
    }
    // The flow stays retired after the client's close, so that A's own FIN, still to come, is
    // absorbed too; its idle timeout removes it.
    if (tcp.flags.rst() || tcp.flags.fin()) && flow.marks & marks::CLIENT_CLOSED == 0 {
        flow.marks |= marks::CLIENT_CLOSED;
        if let Some(n) = retired_open {
            *n = n.saturating_sub(1);
        }
    }
}

/// Whether the peer's segment shows that it did not take the router's FIN, which ends at
/// `fin_end` (its sequence number + 1): lost or still on its way (not acknowledged), or behind
/// what the peer had already received (it acknowledges more: data the router had not seen yet,
/// still on its way through a fast path when it closed, so the peer ignored the FIN as old). A
/// FIN behind moves to the peer's acknowledgment (counted in `closes_behind`).
fn fin_missed(fin_end: &mut u32, tcp: &TcpInfo, counters: &mut RouterCounters) -> bool {
    if !tcp.flags.ack() {
        return true;
    }
    if !seq_le(tcp.ack, *fin_end) {
        *fin_end = tcp.ack.wrapping_add(1);
        counters.closes_behind += 1;
        return true;
    }
    !seq_le(*fin_end, tcp.ack)
}

/// A's segment on a flow the router closed: dropped. A's FIN is acknowledged in the client's
/// name; a segment that shows the FIN sent in the client's name did not arrive, or arrived
/// behind what A had already received, gets it again (at A's acknowledgment when behind), so
/// that A's application sees the end too.
pub(crate) fn retired_egress(
    out: &mut VecDeque<Transmit>,
    counters: &mut RouterCounters,
    key: &FlowKey,
    flow: &mut Flow,
    tcp: Option<TcpInfo>,
    a: super::VmRef,
) {
    counters.closed_absorbed += 1;
    let Some(t) = tcp else { return };
    if t.flags.rst() {
        return;
    }
    // `stamp_ms` holds the sequence number of the FIN sent to A in the client's name.
    let mut fin_end = flow.stamp_ms.wrapping_add(1);
    let fin_unacked = fin_missed(&mut fin_end, &t, counters);
    flow.stamp_ms = fin_end.wrapping_sub(1);
    if t.flags.fin() || fin_unacked {
        let (client, server) = ((key.client_ip, key.client_port), (key.shadow_ip, key.shadow_port));
        let spec = SegmentSpec {
            from: client,
            to: server,
            seq: flow.stamp_ms.wrapping_add(u32::from(!fin_unacked)),
            ack: t.seq.wrapping_add(t.seq_len()),
            fin: fin_unacked,
        };
        push(out, key.shadow_ip, Some(a), if fin_unacked { TransmitKind::Close } else { TransmitKind::Ack }, &spec);
        counters.closes_sent += u64::from(fin_unacked);
    }
}

impl<S: crate::events::EventSink> ShadowRouter<S> {
    /// Opens the closing window of `ip`: every new flow to B, each of A's TCP flows marked to
    /// close at its next quiet moment, from the first scan on.
    pub(crate) fn start_closing(&mut self, ip: Ipv4Addr, now: Instant) {
        let Some(shadow) = self.shadows.get_mut(&ip) else { return };
        if shadow.ending.closing_since.is_some() {
            return;
        }
        shadow.ending.closing_since = Some(now);
        self.fast_path_generation += 1; // the address is the slow path's from now on
        shadow.ending.check_at = Some(now + CLOSE_SCAN_EVERY);
        let change = shadow.controller.cut_over();
        if let Some(change) = shadow.apply(change) {
            self.sink.event(crate::events::Event::SplitChanged { ip, change, at: now });
        }
        if shadow.mode == Mode::Replica {
            return; // B holds a copy of every flow: they are handed over at the deadline
        }
        let keys = self.flows.keys_where(|k, f| k.shadow_ip == ip && k.protocol == PROTO_TCP && open_on_a(f));
        for key in &keys {
            if let Some(index) = self.flows.find(key, self.flows.hash(key)) {
                self.flows.flow_mut(index).marks |= marks::CLOSE_AT_IDLE;
            }
        }
        let Some(shadow) = self.shadows.get_mut(&ip) else { return };
        let ending = &mut shadow.ending;
        ending.report.flows_open_on_losing_side += keys.len() as u64;
        // Spread over the window's first half; all at once without a window (early finish with
        // `close_grace` 0).
        let scans = (shadow.entry.options.close_grace / 2).as_millis() / CLOSE_SCAN_EVERY.as_millis();
        let scans = u32::try_from(scans).unwrap_or(u32::MAX).max(1);
        ending.close_per_scan = u32::try_from(keys.len()).unwrap_or(u32::MAX).div_ceil(scans).max(1);
        ending.to_close = keys;
        // The first closes wait for the first scan, [`CLOSE_SCAN_EVERY`] from now, not this
        // instant: a fast path forwards A's flows until it has copied the new generation (at the
        // end of this turn) and reports what it forwarded a moment later. A flow closed now
        // could have had an exchange the core has not seen yet, and a FIN behind what the
        // client already received is ignored by the client (lab_http on XDP: a black-holed
        // keep-alive connection).
    }

    /// Closes the quiet ones among `ip`'s flows marked to close, at most `close_per_scan`, and
    /// forgets those that ended by themselves. Returns whether any remain to close.
    fn close_quiet(&mut self, ip: Ipv4Addr, now: Instant) -> bool {
        let Some(shadow) = self.shadows.get_mut(&ip) else { return false };
        let mut budget = shadow.ending.close_per_scan;
        let mut keys = core::mem::take(&mut shadow.ending.to_close);
        let (flows, out, counters, sink) = (&mut self.flows, &mut self.transmit, &mut self.counters, &mut self.sink);
        keys.retain(|key| {
            let Some(index) = flows.find(key, flows.hash(key)) else { return false };
            let flow = flows.flow_mut(index);
            if flow.marks & marks::CLOSE_AT_IDLE == 0 || !open_on_a(flow) {
                return false; // ended by itself, or a new flow on the same ports
            }
            if budget == 0 || !quiet(flow, now) {
                return true;
            }
            budget -= 1;
            close(shadow, out, counters, key, flow, now);
            sink.event(crate::events::Event::FlowRetired { key: *key, at: now });
            false
        });
        let left = !keys.is_empty();
        shadow.ending.to_close = keys;
        left
    }

    /// Looks at the end of `ip`'s migration: the deadline, the closing window, the early finish.
    /// Returns whether the migration ended.
    pub(crate) fn check_end(&mut self, ip: Ipv4Addr, now: Instant) -> bool {
        let Some(shadow) = self.shadows.get_mut(&ip) else { return true };
        shadow.ending.check_at = None;
        let options = &shadow.entry.options;
        let Some(deadline) = options.deadline else { return false };
        if deadline <= now {
            self.end_migration(ip, Outcome::Completed, EndCause::Deadline, now);
            return true;
        }
        let on_a = shadow.patterns.open_on(crate::flow::Side::Source);
        let ending = &shadow.ending;
        if ending.closing_since.is_some() {
            let lingered = ending.retired_open == 0 || ending.last_close.is_none_or(|t| now - t >= CLOSE_LINGER);
            if on_a == 0 && lingered {
                self.end_migration(ip, Outcome::Completed, EndCause::Drained, now);
                return true;
            }
            let more = self.close_quiet(ip, now);
            if let Some(shadow) = self.shadows.get_mut(&ip) {
                shadow.ending.check_at = Some(now + if more { CLOSE_SCAN_EVERY } else { CHECK_EVERY });
            }
            return false;
        }
        let window_opens = deadline - options.close_grace;
        if !options.close_grace.is_zero() && window_opens <= now {
            self.start_closing(ip, now);
            return false;
        }
        let ramped = shadow.entry.state == EntryState::Ramping && shadow.entry.traffic_split_percentage >= 100.0;
        if !(options.early_finish && ramped && now - shadow.patterns.since() >= MIN_OBSERVATION) {
            return false;
        }
        shadow.ending.check_at = Some(now + CHECK_EVERY);
        if on_a == 0 {
            self.end_migration(ip, Outcome::Completed, EndCause::Drained, now);
            return true;
        }
        if shadow.patterns.idle_on(crate::flow::Side::Source) < on_a {
            shadow.ending.overdue_at = None;
            return false;
        }
        // All idle: closed in order now if the forecast says they will outlive the longest
        // deadline, or once they are overdue: all idle still, twice the p90 drain forecast when
        // they were first all idle (at least `OVERDUE_FLOOR`) later. Flows the forecast says end
        // soon but that never do are clients that went away without a FIN or RST (a crash, a
        // lost last segment) or the last ACK of a connection that closed as the router began to
        // watch: nothing else would end them before the TCP idle timeout, hours away. A live
        // one among them only sees an orderly close, as it would at the deadline, and
        // reconnects, to B.
        let forecast = shadow.patterns.forecast(now, Some(deadline));
        let outlive = options.outlive_limit.as_secs_f64() * 1000.0;
        let outlives = forecast.as_ref().is_some_and(|f| f.p50_ms.is_none_or(|p50| p50 > outlive));
        let p90 = forecast.and_then(|f| f.p90_ms).and_then(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok());
        let p90 = p90.unwrap_or(Duration::ZERO).min(Duration::from_secs(86_400 * 365));
        let overdue_at = *shadow.ending.overdue_at.get_or_insert(now + (p90 * 2).max(OVERDUE_FLOOR));
        if outlives || now >= overdue_at {
            self.start_closing(ip, now);
        }
        false
    }
}

//! Feeds each shadowed address's traffic patterns from the flow state the packet path already
//! keeps: one call after a TCP packet's decision keeps the census of open flows (per VM, with
//! their start and whether each is idle) in step, without any per-flow record of its own.

use crate::flow::{Flow, FlowKey, Owner, Phase, Side, flags, marks};
use crate::patterns::TrafficPatterns;
use crate::time::Instant;
use crate::wire::PROTO_TCP;

/// Whether nothing is in flight either way: the client acknowledged all the owner sent, and the
/// owner all the client sent.
pub(crate) fn is_idle(flow: &Flow) -> bool {
    let client_done = !flow.has(flags::CLIENT_SEQ) || flow.marks & marks::OWNER_ACKED != 0;
    let owner_done =
        !flow.has(flags::OWNER_SEQ) || (flow.has(flags::CLIENT_ACK) && flow.client_ack == flow.owner_seq_max);
    client_done && owner_done
}

fn counted_side(flow: &Flow) -> Side {
    if flow.marks & marks::COUNTED_DESTINATION != 0 { Side::Destination } else { Side::Source }
}

/// Brings the census up to date with `flow` after one of its packets.
#[inline]
pub(crate) fn observe(patterns: &mut TrafficPatterns, key: &FlowKey, flow: &mut Flow, now: Instant) {
    if key.protocol != PROTO_TCP {
        return;
    }
    // The common case, a packet of an open flow already counted on its owner's side: only its
    // idle state can change.
    let dest_bit = if flow.owner == Owner::Destination { marks::COUNTED_DESTINATION } else { 0 };
    if flow.phase == Phase::Established
        && flow.marks & (marks::COUNTED | marks::COUNTED_DESTINATION) == marks::COUNTED | dest_bit
    {
        let idle = is_idle(flow);
        if idle != (flow.marks & marks::IDLE != 0) {
            flow.marks ^= marks::IDLE;
            patterns.idle_changed(if dest_bit == 0 { Side::Source } else { Side::Destination }, idle);
        }
        return;
    }
    let open_on = match (flow.owner, flow.phase) {
        (Owner::Source | Owner::Destination, Phase::Established | Phase::Closing) => flow.owner.side(),
        _ => None,
    };
    let known = flow.marks & marks::UNKNOWN_START == 0;
    let counted = flow.marks & marks::COUNTED != 0;
    match open_on {
        Some(side) => {
            if counted && counted_side(flow) != side {
                // Replica hand-off: the flow moves, it does not end.
                leave(patterns, flow, None);
            }
            if flow.marks & marks::COUNTED == 0 {
                patterns.open(side, known, flow.created);
                flow.marks |= marks::COUNTED;
                if side == Side::Destination {
                    flow.marks |= marks::COUNTED_DESTINATION;
                }
            }
            let idle = is_idle(flow);
            if idle != (flow.marks & marks::IDLE != 0) {
                flow.marks ^= marks::IDLE;
                patterns.idle_changed(side, idle);
            }
        }
        None if counted => leave(patterns, flow, Some(now)),
        None => {}
    }
}

/// Takes a counted flow out of the census; `ended_at` when it ended (its lifetime is recorded).
pub(crate) fn leave(patterns: &mut TrafficPatterns, flow: &mut Flow, ended_at: Option<Instant>) {
    if flow.marks & marks::COUNTED == 0 {
        return;
    }
    let known = flow.marks & marks::UNKNOWN_START == 0;
    let lifetime = ended_at.map(|t| t.saturating_duration_since(flow.created));
    patterns.close(counted_side(flow), known, flow.created, flow.marks & marks::IDLE != 0, lifetime);
    flow.marks &= !(marks::COUNTED | marks::COUNTED_DESTINATION | marks::IDLE);
}

/// The moment a flow removed from the table ended: its last packet.
pub(crate) fn last_packet(flow: &Flow, now: Instant) -> Instant {
    let idle_ms = now.millis_u32().wrapping_sub(flow.last_seen_ms);
    if idle_ms < u32::MAX / 2 {
        Instant::from_micros(now.as_micros().saturating_sub(u64::from(idle_ms) * 1000)).max(flow.created)
    } else {
        now
    }
}

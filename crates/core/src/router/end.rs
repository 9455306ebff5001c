//! The end of a migration: cut-over (the address goes to B) or rollback (it stays with A).

use core::time::Duration;
use std::net::Ipv4Addr;

use super::{ShadowRouter, Transmit, TransmitKind, ended};
use crate::events::{CutOverReport, EndCause, Event, FlowEndReason, Outcome};
use crate::flow::{Owner, Phase, Side, flags, marks};
use crate::shadow::Mode;
use crate::time::Instant;
use crate::wire::{PROTO_TCP, RstSpec, build_tcp_rst};

impl<S: crate::events::EventSink> ShadowRouter<S> {
    /// Ends the migration of `ip`. The losing side's flows still open are handed to the winner
    /// (replica mode, or connectionless flows: their next datagram simply goes there) or, for
    /// independent TCP, closed with a clean RST to the client, so no client waits on a dead
    /// socket. Then every flow of `ip` is forgotten, the entry removed, and the address
    /// recorded as the winner's alone.
    pub(crate) fn end_migration(&mut self, ip: Ipv4Addr, outcome: Outcome, cause: EndCause, now: Instant) {
        let Some(mut shadow) = self.shadows.remove(&ip) else { return };
        // The entry goes, the address gets one holder, `retired_until` may move.
        self.fast_path_generation += 1;
        let (winner, loser) = match outcome {
            Outcome::Completed => (Side::Destination, Side::Source),
            Outcome::RolledBack => (Side::Source, Side::Destination),
        };
        if outcome == Outcome::Completed {
            let change = shadow.controller.cut_over();
            if let Some(change) = shadow.apply(change) {
                self.sink.event(Event::SplitChanged { ip, change, at: now });
            }
        }
        // The closing window's flows were counted when it opened (and those closed in order).
        let mut report = CutOverReport { cause, ..shadow.ending.report };
        for key in self.flows.keys_where(|k, _| k.shadow_ip == ip) {
            let Some(index) = self.flows.find(&key, self.flows.hash(&key)) else { continue };
            let flow = *self.flows.flow(index);
            if flow.owner == Owner::from(loser) && !matches!(flow.phase, Phase::Closed | Phase::Retired) {
                if flow.marks & marks::CLOSE_AT_IDLE == 0 {
                    report.flows_open_on_losing_side += 1;
                }
                if shadow.mode == Mode::Replica || key.protocol != PROTO_TCP {
                    report.handed_over += 1;
                    if shadow.mode == Mode::Replica {
                        self.sink.event(Event::HandOff { key, from: loser, to: winner, at: now });
                    }
                } else if flow.has(flags::CLIENT_SEQ) {
                    // RFC 9293 3.10.7 / RFC 5961 3.2: a RST is accepted at once when its sequence
                    // number is exactly the receiver's RCV.NXT, i.e. the client's last ACK. A client
                    // still in SYN-SENT has sent no ACK; it accepts a RST|ACK acknowledging its SYN.
                    let seq = if flow.has(flags::CLIENT_ACK) { flow.client_ack } else { 0 };
                    let spec = RstSpec {
                        shadow_ip: ip,
                        shadow_port: key.shadow_port,
                        client_ip: key.client_ip,
                        client_port: key.client_port,
                        seq,
                        ack: flow.client_seq_max,
                    };
                    self.transmit.push_back(Transmit {
                        to: key.client_ip,
                        vm: None,
                        kind: TransmitKind::Reset,
                        datagram: build_tcp_rst(&spec),
                    });
                    // And to the VM, in the client's name, so that its application does not
                    // keep a connection nobody will use (at A's RCV.NXT when A acknowledged all
                    // the client sent; else in-window, answered with a challenge ACK at worst).
                    let to_vm = RstSpec {
                        shadow_ip: key.client_ip,
                        shadow_port: key.client_port,
                        client_ip: ip,
                        client_port: key.shadow_port,
                        seq: flow.client_seq_max,
                        ack: flow.owner_seq_max,
                    };
                    self.transmit.push_back(Transmit {
                        to: ip,
                        vm: Some(shadow.vm(loser)),
                        kind: TransmitKind::Reset,
                        datagram: build_tcp_rst(&to_vm),
                    });
                    self.counters.resets_sent += 1;
                    report.reset += 1;
                }
            }
            if flow.phase == Phase::Retired && flow.marks & marks::CLIENT_CLOSED == 0 {
                // Its client has not closed yet (an idle pool connection notices the FIN only at
                // its next request): kept, so that its late segments are answered, not reset by
                // B. Its idle timeout removes it.
                let until =
                    now + Duration::from_millis(u64::from(self.timeouts.idle_ms(PROTO_TCP, Phase::Retired, false)));
                self.retired_until = Some(self.retired_until.map_or(until, |t| t.max(until)));
                continue;
            }
            self.flows.remove(index);
            self.sink.event(ended(key, &flow, FlowEndReason::MigrationEnded, now));
        }
        self.addresses.insert(ip, shadow.vm(winner));
        self.sink.event(Event::MigrationEnded { ip, outcome, report, at: now });
    }
}

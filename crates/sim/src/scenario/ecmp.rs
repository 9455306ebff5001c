//! Two routers behind ECMP (docs/ecmp.md): an upstream hash puts each client flow on one of two
//! routers that follow the same desired state; the VMs' replies cross the same router, the
//! first one (one gateway MAC on the VM segments), or the other one. What it costs is measured
//! here: how long the two splits differ, the new flows decided meanwhile, the flows whose owner
//! the routers disagree on, and what each router's egress arbiter dropped.

use core::time::Duration;
use std::collections::BTreeSet;

use ipshadow_core::{CutOverReport, FlowKey, Instant, Owner, RouterCounters};
use serde::Serialize;

use crate::router::PortStats;

/// Which router a VM's reply crosses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyPath {
    /// The router the flow's requests cross (the VM's egress hashed like the upstream's).
    Symmetric,
    /// The first router for every reply: one gateway MAC on the VM segments, the group's
    /// active router; the flows hashed to the second router are asymmetric.
    Single,
    /// The other router: every flow asymmetric, the worst case.
    Crossed,
}

/// Two routers behind ECMP.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Ecmp {
    /// Which router the replies cross.
    pub replies: ReplyPath,
    /// The second router applies B's bound lease (the start of its ramp) this much after the
    /// first, as a slower watch of the desired state would.
    #[serde(rename = "skew_ms", serialize_with = "millis")]
    pub skew: Duration,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

/// One router's view, at the end of the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct RouterView {
    /// Frames from the provider side the core decided on.
    pub inbound_frames: u64,
    /// Frames from the VMs the core decided on.
    pub egress_frames: u64,
    /// Flows it tracked.
    pub flows_created: u64,
    /// Flows whose owner it learned from a reply (flows it had sent to both VMs).
    pub flows_learned: u64,
    /// Flows it forgot after their idle timeout.
    pub flows_expired: u64,
    /// RSTs and FINs it sent itself (cut-over, closing window).
    pub sent_by_router: u64,
    /// Replies its egress arbiter dropped as conflicts (from the VM not owning the flow).
    pub conflicts: u64,
    /// RSTs it held back (unknown flows, untracked tuples).
    pub resets_suppressed: u64,
    /// Frames from a VM it dropped as spoofed (an address the VM no longer holds).
    pub spoofed: u64,
    /// Frames it forwarded, to the VMs and to the provider side.
    pub frames_forwarded: u64,
    /// Frames it could not send for want of the client's MAC (it asked by ARP).
    pub no_route: u64,
    /// Multiplicative decreases of its split (its own AIMD, on its own signals).
    pub split_decreases: u64,
    /// Its split as it last changed (the cut-over's 100 % included).
    pub final_split_pct: f64,
    /// When its migration ended, seconds from the start.
    pub migration_end_s: Option<f64>,
    /// What the end did on this router (the first to end ends it on the other, as the
    /// manager would: its cause there is `requested`).
    pub cut_over: Option<CutOverReport>,
}

/// What two routers behind ECMP did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EcmpReport {
    /// Which router the replies crossed.
    pub replies: ReplyPath,
    /// The second router's delay in starting its ramp, milliseconds.
    pub skew_ms: f64,
    /// Each router's view.
    pub routers: [RouterView; 2],
    /// Total time the two routers' splits differed, milliseconds.
    pub split_differed_ms: f64,
    /// The largest difference of the two splits, percentage points.
    pub max_split_gap_pct: f64,
    /// New flows (opened by a client) either router decided while the splits differed.
    pub new_flows_while_split_differed: u64,
    /// Of those, how many the other router would have decided differently, expected: each
    /// flow counts the share of hashes between the two thresholds.
    pub expected_decided_differently: f64,
    /// Client TCP connections both routers tracked with a known owner at some sampling (once
    /// a second): the observer of `owner_disagreements`.
    pub flows_on_both: u64,
    /// Of those, the connections whose owner the two routers disagreed on at some sampling.
    pub owner_disagreements: u64,
    /// Client TCP connections found with no known owner on some router at some sampling: the
    /// router mirrors their segments to both VMs.
    pub flows_mirrored: u64,
}

/// The router an IPv4 frame's flow is hashed to, as an upstream ECMP would (5-tuple, seeded);
/// `None` for anything that is not IPv4 (ARP reaches both routers).
pub(crate) fn hash_router(frame: &[u8], from_client: bool, seed: u64) -> Option<usize> {
    let [client_ip, client_port, x_port, protocol] = flow_of(frame, from_client)?;
    let mut x = seed ^ (u64::from(client_ip) << 32 | u64::from(client_port) << 16 | u64::from(x_port));
    x ^= u64::from(protocol).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    Some((x & 1) as usize)
}

/// The router a VM's frame crosses; `None`: both (ARP).
pub(crate) fn reply_router(frame: &[u8], seed: u64, replies: ReplyPath) -> Option<usize> {
    let inbound = hash_router(frame, false, seed)?;
    Some(match replies {
        ReplyPath::Symmetric => inbound,
        ReplyPath::Single => 0,
        ReplyPath::Crossed => 1 - inbound,
    })
}

/// (client address, client port, X's port, protocol) of an untagged IPv4 frame; ICMP's
/// identifier stands for the client port.
fn flow_of(frame: &[u8], from_client: bool) -> Option<[u32; 4]> {
    if frame.get(12..14)? != [8, 0] {
        return None;
    }
    let ihl = usize::from(frame.get(14)? & 0x0f) * 4;
    let protocol = *frame.get(23)?;
    let addr = |at: usize| frame.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let (src, dst) = (addr(26)?, addr(30)?);
    let l4 = 14 + ihl;
    let word = |at: usize| frame.get(at..at + 2).map(|b| u32::from(u16::from_be_bytes([b[0], b[1]])));
    let (sport, dport) = match protocol {
        6 | 17 => (word(l4)?, word(l4 + 2)?),
        1 => (word(l4 + 4)?, 0),
        _ => (0, 0),
    };
    let protocol = u32::from(protocol);
    Some(if from_client { [src, sport, dport, protocol] } else { [dst, dport, sport, protocol] })
}

/// The client a broadcast ARP request from a router is for: the router asks where a client is
/// before it can send it a reply it has not seen the request of.
pub(crate) fn arp_target(frame: &[u8]) -> Option<std::net::Ipv4Addr> {
    if frame.get(0..6)? != [0xff; 6] || frame.get(12..14)? != [8, 6] {
        return None;
    }
    let b = frame.get(38..42)?;
    Some(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

/// The measurements kept while the run goes.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tracker {
    split: [f64; 2],
    since: Option<Instant>,
    differed: Duration,
    max_gap: f64,
    new_flows: u64,
    expected_different: f64,
    pub decreases: [u64; 2],
    pub learned: [u64; 2],
    pub ended: [Option<(Instant, CutOverReport)>; 2],
    on_both: BTreeSet<FlowKey>,
    disagreeing: BTreeSet<FlowKey>,
    mirrored: BTreeSet<FlowKey>,
}

impl Tracker {
    /// Router `i`'s split became `pct` at `at`.
    pub fn split_changed(&mut self, i: usize, pct: f64, at: Instant) {
        self.account(at);
        self.split[i] = pct;
        self.max_gap = self.max_gap.max((self.split[0] - self.split[1]).abs());
    }

    /// A router opened a flow a client started.
    pub fn new_flow(&mut self) {
        let gap = (self.split[0] - self.split[1]).abs();
        if gap > 0.0 {
            self.new_flows += 1;
            self.expected_different += gap / 100.0;
        }
    }

    fn account(&mut self, at: Instant) {
        if let Some(since) = self.since
            && self.split[0] != self.split[1]
        {
            self.differed += at.saturating_duration_since(since);
        }
        self.since = Some(at);
    }

    /// A client TCP connection's owner on each router, at a sampling.
    pub fn owners(&mut self, key: FlowKey, owners: [Option<Owner>; 2]) {
        if owners.contains(&Some(Owner::Unknown)) {
            self.mirrored.insert(key);
        }
        if let [Some(a), Some(b)] = owners
            && a != Owner::Unknown
            && b != Owner::Unknown
        {
            self.on_both.insert(key);
            if a != b {
                self.disagreeing.insert(key);
            }
        }
    }

    /// The report, with each router's counters and layer-2 figures.
    pub fn report(&mut self, ecmp: &Ecmp, end: Instant, routers: [(&RouterCounters, &PortStats); 2]) -> EcmpReport {
        self.account(end);
        let view = |i: usize| {
            let (c, ports) = routers[i];
            RouterView {
                inbound_frames: c.inbound_frames,
                egress_frames: c.egress_frames,
                flows_created: c.flows_created,
                flows_learned: self.learned[i],
                flows_expired: c.flows_expired,
                sent_by_router: c.resets_sent + c.closes_sent,
                conflicts: c.conflicts.total(),
                resets_suppressed: c.resets_suppressed,
                spoofed: c.spoofed,
                frames_forwarded: ports.to_vms + ports.to_provider,
                no_route: ports.no_route,
                split_decreases: self.decreases[i],
                final_split_pct: self.split[i],
                migration_end_s: self.ended[i].map(|(t, _)| t.as_micros() as f64 / 1e6),
                cut_over: self.ended[i].map(|(_, report)| report),
            }
        };
        EcmpReport {
            replies: ecmp.replies,
            skew_ms: ecmp.skew.as_secs_f64() * 1e3,
            routers: [view(0), view(1)],
            split_differed_ms: self.differed.as_secs_f64() * 1e3,
            max_split_gap_pct: self.max_gap,
            new_flows_while_split_differed: self.new_flows,
            expected_decided_differently: self.expected_different,
            flows_on_both: self.on_both.len() as u64,
            owner_disagreements: self.disagreeing.len() as u64,
            flows_mirrored: self.mirrored.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame and its reply hash to the same router (the tuple is read from the client's side
    /// both ways), and both routers get flows.
    #[test]
    fn a_reply_hashes_like_its_request() {
        let frame = |src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16| {
            let mut f = vec![0u8; 54];
            f[12..14].copy_from_slice(&[8, 0]);
            f[14] = 0x45;
            f[23] = 6;
            f[26..30].copy_from_slice(&src);
            f[30..34].copy_from_slice(&dst);
            f[34..36].copy_from_slice(&sport.to_be_bytes());
            f[36..38].copy_from_slice(&dport.to_be_bytes());
            f
        };
        let mut seen = [0; 2];
        for port in 40_000..40_064 {
            let request = frame([10, 0, 1, 1], [10, 0, 0, 10], port, 80);
            let reply = frame([10, 0, 0, 10], [10, 0, 1, 1], 80, port);
            let r = hash_router(&request, true, 7).expect("ipv4");
            assert_eq!(reply_router(&reply, 7, ReplyPath::Symmetric), Some(r));
            assert_eq!(reply_router(&reply, 7, ReplyPath::Crossed), Some(1 - r));
            assert_eq!(reply_router(&reply, 7, ReplyPath::Single), Some(0));
            seen[r] += 1;
        }
        assert!(seen[0] > 16 && seen[1] > 16, "{seen:?}");
        assert_eq!(hash_router(&[0u8; 60], true, 7), None, "not IPv4");
    }

    /// The time the splits differ is the skew after each step, and new flows meanwhile count
    /// the gap's share.
    #[test]
    fn the_tracker_measures_the_time_the_splits_differ() {
        let mut t = Tracker::default();
        let at = Instant::from_millis;
        t.split_changed(0, 25.0, at(1000));
        t.new_flow();
        t.split_changed(1, 25.0, at(1020));
        t.new_flow();
        let r = t.report(
            &Ecmp { replies: ReplyPath::Symmetric, skew: Duration::from_millis(20) },
            at(5000),
            [(&RouterCounters::default(), &PortStats::default()), (&RouterCounters::default(), &PortStats::default())],
        );
        assert_eq!(r.split_differed_ms, 20.0);
        assert_eq!(r.max_split_gap_pct, 25.0);
        assert_eq!(r.new_flows_while_split_differed, 1);
        assert_eq!(r.expected_decided_differently, 0.25);
    }
}

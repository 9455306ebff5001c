//! Faults the demo injects into the lab on etcd mid-migration: the leading manager killed
//! (`--kill-manager-at`), etcd's leader member killed (`--kill-etcd-leader-at`) or cut off its
//! segment (`--cut-etcd-leader-at`, for [`OUTAGE`]), every member down (`--etcd-down-at`, for
//! [`OUTAGE`]). Each says what was hit, who led after it and how soon, and how many verified
//! exchanges the clients made meanwhile (forwarding never waits for etcd). The router group's
//! faults are in [`super::router_faults`].

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use super::router_faults::{Pending, RouterFault};
use crate::lab::Lab;
use crate::lab::services::{alive, kill};

/// How long a new leader may take before the demo stops waiting (the report then says so).
const RECOVER_WITHIN: Duration = Duration::from_secs(20);
/// How long a member stays cut off, or every member down.
pub const OUTAGE: Duration = Duration::from_secs(10);

/// A fault to inject, or the end of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// SIGKILL the leading manager (started again afterwards, as a standby).
    KillManager,
    /// SIGKILL etcd's leader member (left down).
    KillEtcdLeader,
    /// Cut etcd's leader member off the control segment (its link down).
    CutEtcdLeader,
    /// Put member `n` back on the segment.
    Reconnect(u8),
    /// SIGKILL every etcd member.
    EtcdDown,
    /// Start every member again.
    EtcdUp,
    /// A fault of the router group.
    Router(RouterFault),
}

/// One injected fault, as the report shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Fault {
    /// When, seconds after the migration started.
    pub at_s: f64,
    /// `manager_killed`, `etcd_leader_killed`, `etcd_leader_cut_off`, `etcd_member_reconnected`,
    /// `etcd_down`, `etcd_up`; of a router group: `router_killed`, `standby_router_killed`,
    /// `router_cut_off`, `router_reconnected`, `router_store_cut_off`,
    /// `router_store_reconnected`, `router_paused`, `router_resumed`.
    pub kind: &'static str,
    /// What was hit (`m1`, `e2`, `all`, `r1`).
    pub target: String,
    /// Who leads after it (`m2`, `e3`), if anyone did within the wait.
    pub new_leader: Option<String>,
    /// From the fault to the new leader, seconds.
    pub recovered_after_s: Option<f64>,
    /// For the end of an outage: verified exchanges the clients made while it lasted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exchanges_during: Option<u64>,
    /// A router fault's wall time, unix milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_unix_ms: Option<u64>,
    /// The router active after a router fault (for a takeover: the one that took over and
    /// forwarded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_active: Option<String>,
    /// From the fault to the new active's first forwarded frame, milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub took_ms: Option<u64>,
    /// A paused router: frames its kernel had sent on its provider and VM-side interfaces by
    /// SIGSTOP (the observer of `tx_after_resume` saw it send while it was active).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_at_pause: Option<u64>,
    /// A paused router: frames its kernel sent on its provider and VM-side interfaces from the
    /// takeover (another router forwarding) to the demo's end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_after_resume: Option<u64>,
    /// A paused router at the demo's end, or a router cut off etcd when it was put back: the
    /// frames it dropped as not active (its report's counter).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frames_dropped: Option<u64>,
    /// A router cut off etcd: whether it stepped down since (its report's `last_step_down`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stepped_down: Option<bool>,
}

/// A manager's term as the demo saw it leading (on etcd): one entry per change of leader.
#[derive(Clone, Debug, Serialize)]
pub struct ManagerTerm {
    /// When the demo first saw it lead, seconds after the migration started.
    pub from_s: f64,
    /// The manager's name (`m1`): a manager killed and started again keeps its name.
    pub manager: String,
}

/// Notes who leads at `t` if that changed since the last term (the lab on etcd only).
pub fn note_leader(lab: &Lab, t: Duration, terms: &mut Vec<ManagerTerm>) {
    if lab.etcd_members() == 0 {
        return;
    }
    if let Some(manager) = lab.leading_manager()
        && terms.last().is_none_or(|term| term.manager != manager)
    {
        terms.push(ManagerTerm { from_s: t.as_secs_f64(), manager });
    }
}

/// The faults asked for, in the order they come (their ends are scheduled when they happen).
pub fn schedule(args: &super::DemoArgs) -> Vec<(Duration, FaultKind)> {
    let at = |secs: &[u64], kind| secs.iter().map(move |&s| (Duration::from_secs(s), kind)).collect::<Vec<_>>();
    let mut all = at(&args.kill_manager, FaultKind::KillManager);
    all.extend(at(&args.kill_etcd_leader, FaultKind::KillEtcdLeader));
    all.extend(at(&args.cut_etcd_leader, FaultKind::CutEtcdLeader));
    all.extend(at(&args.etcd_down, FaultKind::EtcdDown));
    all.extend(super::router_faults::schedule(args));
    all.sort_by_key(|(t, _)| *t);
    all
}

/// Verified exchanges of every client so far.
fn exchanges(lab: &Lab) -> u64 {
    (1..=50)
        .filter_map(|i| std::fs::read_to_string(lab.dir.join(format!("progress-c{i}.json"))).ok())
        .filter_map(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .filter_map(|v| v["exchanges"].as_u64())
        .sum()
}

/// Waits for a leader other than `not` (`None`: any), as `lead` says.
fn wait_for_leader(not: Option<&str>, lead: impl Fn() -> Option<String>) -> (Option<String>, Option<f64>) {
    let started = Instant::now();
    loop {
        if let Some(leader) = lead().filter(|l| Some(l.as_str()) != not) {
            let secs = started.elapsed().as_secs_f64();
            eprintln!("ipshadow demo: {leader} leads {:.0} ms later", secs * 1e3);
            return (Some(leader), Some(secs));
        }
        if started.elapsed() > RECOVER_WITHIN {
            eprintln!("ipshadow demo: no new leader within {RECOVER_WITHIN:?}");
            return (None, None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills a process the lab started and waits until it is gone.
pub(super) fn kill_process(lab: &Lab, process: &str) -> anyhow::Result<()> {
    let pid = lab.pid(process).with_context(|| format!("{process} has no recorded process id"))?;
    if !kill(pid, "KILL") {
        bail!("could not kill {process} (pid {pid})");
    }
    while alive(pid) {
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Where the outage began: (its verified exchanges then); the router faults' figures to come.
pub struct Outages {
    started: Vec<(FaultKind, u64)>,
    /// The router faults' figures to come.
    pub routers: Pending,
}

/// Injects `kind` at `t` after the migration started (`earlier`: the faults so far); returns
/// what happened and, for a fault that ends, when its end comes and what it is.
pub fn inject(
    lab: &Lab,
    kind: FaultKind,
    t: Duration,
    outages: &mut Outages,
    earlier: &mut [Fault],
) -> anyhow::Result<(Fault, Option<(Duration, FaultKind)>)> {
    let etcd_leader = || lab.etcd_leader().map(|i| format!("e{i}"));
    let fault = |kind, target: String, (new_leader, recovered_after_s)| Fault {
        at_s: t.as_secs_f64(),
        kind,
        target,
        new_leader,
        recovered_after_s,
        ..Fault::default()
    };
    let said = |what: &str| eprintln!("\nipshadow demo: {what} at {:.1} s", t.as_secs_f64());
    Ok(match kind {
        FaultKind::KillManager => {
            let leader = lab.leading_manager().context("no manager leads: nothing to kill")?;
            let process = format!("serve-{leader}");
            said(&format!("killing the leading manager {leader} (SIGKILL)"));
            kill_process(lab, &process)?;
            let recovered = wait_for_leader(Some(&leader), || lab.leading_manager());
            // Back as a standby: two managers again, as before the fault.
            lab.start_part(&process)?;
            (fault("manager_killed", leader, recovered), None)
        }
        FaultKind::KillEtcdLeader => {
            let leader = lab.etcd_leader().context("etcd's members name no leader")?;
            said(&format!("killing etcd's leader e{leader} (SIGKILL)"));
            kill_process(lab, &format!("etcd-{leader}"))?;
            let recovered = wait_for_leader(Some(&format!("e{leader}")), etcd_leader);
            (fault("etcd_leader_killed", format!("e{leader}"), recovered), None)
        }
        FaultKind::CutEtcdLeader => {
            let leader = lab.etcd_leader().context("etcd's members name no leader")?;
            said(&format!("cutting etcd's leader e{leader} off its segment for {OUTAGE:?}"));
            lab.cut_etcd_member(leader, true)?;
            outages.started.push((kind, exchanges(lab)));
            let recovered = wait_for_leader(Some(&format!("e{leader}")), etcd_leader);
            let end = (t + OUTAGE, FaultKind::Reconnect(leader));
            (fault("etcd_leader_cut_off", format!("e{leader}"), recovered), Some(end))
        }
        FaultKind::Reconnect(member) => {
            said(&format!("putting e{member} back on its segment"));
            lab.cut_etcd_member(member, false)?;
            let mut f = fault("etcd_member_reconnected", format!("e{member}"), (etcd_leader(), Some(0.0)));
            f.exchanges_during = outages.end(FaultKind::CutEtcdLeader, lab);
            (f, None)
        }
        FaultKind::EtcdDown => {
            said(&format!("killing every etcd member (SIGKILL) for {OUTAGE:?}"));
            for i in 1..=lab.etcd_members() {
                if lab.pid(&format!("etcd-{i}")).is_some_and(alive) {
                    kill_process(lab, &format!("etcd-{i}"))?;
                }
            }
            outages.started.push((kind, exchanges(lab)));
            (fault("etcd_down", "all".into(), (None, None)), Some((t + OUTAGE, FaultKind::EtcdUp)))
        }
        FaultKind::EtcdUp => {
            said("starting every etcd member again");
            for i in 1..=lab.etcd_members() {
                if !lab.pid(&format!("etcd-{i}")).is_some_and(alive) {
                    lab.start_etcd_member(i)?;
                }
            }
            let exchanges_during = outages.end(FaultKind::EtcdDown, lab);
            let mut f = fault("etcd_up", "all".into(), wait_for_leader(None, etcd_leader));
            f.exchanges_during = exchanges_during;
            (f, None)
        }
        FaultKind::Router(fault) => super::router_faults::inject(lab, fault, t, &mut outages.routers, earlier)?,
    })
}

impl Outages {
    /// None begun; router pauses last `pause_for`.
    pub fn new(pause_for: Duration) -> Self {
        Self { started: Vec::new(), routers: Pending::new(pause_for) }
    }

    /// The exchanges made since the outage of `kind` began.
    fn end(&mut self, kind: FaultKind, lab: &Lab) -> Option<u64> {
        let i = self.started.iter().position(|(k, _)| *k == kind)?;
        let (_, before) = self.started.remove(i);
        Some(exchanges(lab).saturating_sub(before))
    }
}

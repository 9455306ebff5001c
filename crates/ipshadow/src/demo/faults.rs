//! Faults the demo injects into the lab on etcd mid-migration (`--kill-manager-at`,
//! `--kill-etcd-leader-at`): which process was killed, and how long until the survivors had a
//! leader again.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::lab::Lab;
use crate::lab::services::{alive, kill};

/// How long a new leader may take before the demo gives up waiting (the report then says so).
const RECOVER_WITHIN: Duration = Duration::from_secs(20);

/// A fault to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// SIGKILL the leading manager (started again afterwards, as a standby).
    KillManager,
    /// SIGKILL etcd's leader member (left down).
    KillEtcdLeader,
}

/// One injected fault, as the report shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Fault {
    /// When, seconds after the migration started.
    pub at_s: f64,
    /// `manager_killed` or `etcd_leader_killed`.
    pub kind: &'static str,
    /// What was killed (`m1`, `e2`).
    pub target: String,
    /// Who leads after it (`m2`, `e3`), if anyone did within the wait.
    pub new_leader: Option<String>,
    /// From the kill to the new leader, seconds.
    pub recovered_after_s: Option<f64>,
}

/// The faults asked for, in the order they come.
pub fn schedule(kill_manager: &[u64], kill_etcd_leader: &[u64]) -> Vec<(u64, FaultKind)> {
    let mut all: Vec<_> = kill_manager
        .iter()
        .map(|&t| (t, FaultKind::KillManager))
        .chain(kill_etcd_leader.iter().map(|&t| (t, FaultKind::KillEtcdLeader)))
        .collect();
    all.sort_by_key(|(t, _)| *t);
    all
}

/// Injects `kind` at `t` after the migration started; returns once there is a new leader (or
/// the wait ran out).
pub fn inject(lab: &Lab, kind: FaultKind, t: Duration) -> anyhow::Result<Fault> {
    let (target, process) = match kind {
        FaultKind::KillManager => {
            let leader = lab.leading_manager().context("no manager leads: nothing to kill")?;
            (leader.clone(), format!("serve-{leader}"))
        }
        FaultKind::KillEtcdLeader => {
            let leader = lab.etcd_leader().context("etcd's members name no leader")?;
            (format!("e{leader}"), format!("etcd-{leader}"))
        }
    };
    let pid = lab.pid(&process).with_context(|| format!("{process} has no recorded process id"))?;
    eprintln!("\nipshadow demo: killing {target} ({process}, SIGKILL) at {:.1} s", t.as_secs_f64());
    if !kill(pid, "KILL") {
        bail!("could not kill {process} (pid {pid})");
    }
    while alive(pid) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed = Instant::now();
    let new_leader = loop {
        let leader = match kind {
            FaultKind::KillManager => lab.leading_manager(),
            FaultKind::KillEtcdLeader => lab.etcd_leader().map(|i| format!("e{i}")),
        };
        if let Some(leader) = leader.filter(|l| *l != target) {
            break Some(leader);
        }
        if killed.elapsed() > RECOVER_WITHIN {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let recovered_after_s = new_leader.as_ref().map(|_| killed.elapsed().as_secs_f64());
    match (&new_leader, recovered_after_s) {
        (Some(l), Some(s)) => eprintln!("ipshadow demo: {l} leads {:.0} ms after the kill", s * 1e3),
        _ => eprintln!("ipshadow demo: no new leader within {RECOVER_WITHIN:?}"),
    }
    if kind == FaultKind::KillManager {
        // Back as a standby: two managers again, as before the fault.
        lab.start_part(&process)?;
    }
    let kind = match kind {
        FaultKind::KillManager => "manager_killed",
        FaultKind::KillEtcdLeader => "etcd_leader_killed",
    };
    Ok(Fault { at_s: t.as_secs_f64(), kind, target, new_leader, recovered_after_s })
}

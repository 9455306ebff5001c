//! Faults the demo injects into the lab's router group (`--routers 2`, issue 15): the active
//! router killed (`--kill-router-at`), a standby killed (`--kill-standby-router-at`), the
//! active's links down (`--cut-router-at`) or only its link to etcd (`--cut-router-store-at`),
//! for [`OUTAGE`], the active paused (`--pause-router-at`, SIGSTOP for `--pause-for`).
//!
//! Each records the fault's wall time and who was active after it; a takeover is measured to
//! the new active's first forwarded frame (its report's `last_takeover.first_forwarded`). A
//! paused router is watched by its kernel's count of frames it sent, independent of the router
//! process: from SIGSTOP to the demo's end it must send nothing.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ipshadow_core::ha::Role;

use super::faults::{Fault, FaultKind, OUTAGE, kill_process};
use crate::lab::Lab;

/// How long a standby may take to forward before the demo stops waiting (the report then
/// says no router took over).
const TAKEOVER_WITHIN: Duration = Duration::from_secs(10);

/// A fault of the router group, or the end of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouterFault {
    /// SIGKILL the active router (started again as a standby once another took over).
    KillActive,
    /// SIGKILL a standby router (started again at once).
    KillStandby,
    /// Every link of the active router down on the switch's side.
    CutActive,
    /// Only the active router's link to the control segment (etcd) down.
    CutActiveStore,
    /// SIGSTOP the active router.
    PauseActive,
    /// Router host `host`'s links up again (`store_only`: its control-segment link).
    Reconnect {
        /// The router host (1-based).
        host: u8,
        /// Only its link to the control segment was down.
        store_only: bool,
    },
    /// SIGCONT router host `host`.
    Resume {
        /// The router host (1-based).
        host: u8,
    },
}

/// A paused router, watched until the demo's end.
struct Paused {
    /// `r1`...
    name: String,
    /// When the pause began, seconds after the migration started (finds its fault).
    at_s: f64,
    /// Frames its kernel had sent on `prov`, `vma` and `vmb` when another router took over
    /// (its XDP program forwards on for up to its 250 ms lease after the loop stopped: before
    /// any takeover, which waits for 500 ms of silence).
    tx_at_takeover: u64,
    /// Whether SIGCONT was sent.
    resumed: bool,
}

/// Router faults whose figures come later.
pub struct Pending {
    paused: Vec<Paused>,
    /// How long a pause lasts.
    pause_for: Duration,
}

impl Pending {
    /// None yet; pauses last `pause_for`.
    pub fn new(pause_for: Duration) -> Self {
        Self { paused: Vec::new(), pause_for }
    }
}

/// The router faults asked for.
pub fn schedule(args: &super::DemoArgs) -> Vec<(Duration, FaultKind)> {
    let at = |secs: &[u64], fault| {
        secs.iter().map(move |&s| (Duration::from_secs(s), FaultKind::Router(fault))).collect::<Vec<_>>()
    };
    let mut all = at(&args.kill_router, RouterFault::KillActive);
    all.extend(at(&args.kill_standby_router, RouterFault::KillStandby));
    all.extend(at(&args.cut_router, RouterFault::CutActive));
    all.extend(at(&args.cut_router_store, RouterFault::CutActiveStore));
    all.extend(at(&args.pause_router, RouterFault::PauseActive));
    all
}

/// Now, unix milliseconds.
fn wall_ms() -> u64 {
    ipshadow_dataplane::runtime::wall_now().as_micros() / 1000
}

/// `r2`: 2.
fn host(name: &str) -> anyhow::Result<u8> {
    name.strip_prefix('r').and_then(|i| i.parse().ok()).with_context(|| format!("{name} is no router host"))
}

/// Waits until a router other than `not` is active and has forwarded a frame since its
/// takeover, which came after `since_ms`: (its name, from `since_ms` to that frame in ms).
fn wait_for_takeover(lab: &Lab, not: &str, since_ms: u64) -> (Option<String>, Option<u64>) {
    let started = Instant::now();
    loop {
        let forwarding = lab.router_statuses().into_iter().filter(|r| r.name != not && r.is_active()).find_map(|r| {
            let takeover = r.ha?.last_takeover?;
            let first = takeover.first_forwarded?;
            (takeover.at.as_micros() / 1000 >= since_ms).then(|| (r.name, first.as_micros() / 1000))
        });
        if let Some((name, first_ms)) = forwarding {
            let took = first_ms.saturating_sub(since_ms);
            eprintln!("ipshadow demo: {name} took over and forwarded {took} ms after the fault");
            return (Some(name), Some(took));
        }
        if started.elapsed() > TAKEOVER_WITHIN {
            eprintln!("ipshadow demo: no router took over within {TAKEOVER_WITHIN:?}");
            return (None, None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Injects `fault` at `t` after the migration started; `earlier`: the faults so far (an
/// outage's end adds its figures to its start's). Returns what happened and, for a fault that
/// ends, when its end comes and what it is.
pub fn inject(
    lab: &Lab,
    fault: RouterFault,
    t: Duration,
    pending: &mut Pending,
    earlier: &mut [Fault],
) -> anyhow::Result<(Fault, Option<(Duration, FaultKind)>)> {
    let said = |what: &str| eprintln!("\nipshadow demo: {what} at {:.1} s", t.as_secs_f64());
    let active = || lab.active_router().context("no router is active: nothing to hit");
    let entry = |kind, target: &str, at_unix_ms| Fault {
        at_s: t.as_secs_f64(),
        kind,
        target: target.to_owned(),
        at_unix_ms: Some(at_unix_ms),
        ..Fault::default()
    };
    let end = |fault| Some((t + OUTAGE, FaultKind::Router(fault)));
    Ok(match fault {
        RouterFault::KillActive => {
            let name = active()?;
            said(&format!("killing the active router {name} (SIGKILL)"));
            let at = wall_ms();
            let process = lab.router_process_of(&name);
            kill_process(lab, &process)?;
            let (new_active, took_ms) = wait_for_takeover(lab, &name, at);
            // Back as a standby: a group of as many routers as before the fault.
            lab.start_part(&process)?;
            (Fault { new_active, took_ms, ..entry("router_killed", &name, at) }, None)
        }
        RouterFault::KillStandby => {
            let standby = lab.router_statuses().into_iter().find(|r| r.fresh && r.role() == Some(Role::Standby));
            let name = standby.context("no router stands by: nothing to kill")?.name;
            said(&format!("killing the standby router {name} (SIGKILL)"));
            let at = wall_ms();
            let process = lab.router_process_of(&name);
            kill_process(lab, &process)?;
            lab.start_part(&process)?;
            (Fault { new_active: lab.active_router(), ..entry("standby_router_killed", &name, at) }, None)
        }
        RouterFault::CutActive | RouterFault::CutActiveStore => {
            let store_only = fault == RouterFault::CutActiveStore;
            let name = active()?;
            let (kind, what) = if store_only {
                ("router_store_cut_off", "off etcd (its control link down)")
            } else {
                ("router_cut_off", "off every segment (its links down)")
            };
            said(&format!("cutting the active router {name} {what} for {OUTAGE:?}"));
            let at = wall_ms();
            lab.cut_router(&name, true, store_only)?;
            let (new_active, took_ms) = wait_for_takeover(lab, &name, at);
            let back = end(RouterFault::Reconnect { host: host(&name)?, store_only });
            (Fault { new_active, took_ms, ..entry(kind, &name, at) }, back)
        }
        RouterFault::Reconnect { host, store_only } => {
            let name = format!("r{host}");
            said(&format!(
                "putting {name} back on {}",
                if store_only { "the control segment" } else { "its segments" }
            ));
            lab.cut_router(&name, false, store_only)?;
            if store_only {
                // What the old active did while cut off from etcd but on the segments.
                let report = lab.router_report(&name);
                let cut = earlier.iter_mut().rev().find(|f| f.kind == "router_store_cut_off" && f.target == name);
                if let (Some(cut), Some(ha)) = (cut, report.ha) {
                    let since_us = cut.at_unix_ms.unwrap_or(0) * 1000;
                    cut.stepped_down = Some(ha.last_step_down.is_some_and(|s| s.at.as_micros() >= since_us));
                    cut.frames_dropped = Some(ha.counters.frames_dropped);
                }
            }
            let kind = if store_only { "router_store_reconnected" } else { "router_reconnected" };
            (Fault { new_active: lab.active_router(), ..entry(kind, &name, wall_ms()) }, None)
        }
        RouterFault::PauseActive => {
            let name = active()?;
            said(&format!("pausing the active router {name} (SIGSTOP)"));
            let at = wall_ms();
            if !lab.signal(&lab.router_process_of(&name), "STOP") {
                bail!("could not pause {name}");
            }
            // The kernel's count once the process stopped: frames already queued leave now.
            std::thread::sleep(Duration::from_millis(50));
            let tx_at_stop = lab.router_tx_packets(&name)?;
            let (new_active, took_ms) = wait_for_takeover(lab, &name, at);
            let tx_at_takeover = lab.router_tx_packets(&name)?;
            pending.paused.push(Paused { name: name.clone(), at_s: t.as_secs_f64(), tx_at_takeover, resumed: false });
            let resume = Some((t + pending.pause_for, FaultKind::Router(RouterFault::Resume { host: host(&name)? })));
            let fault =
                Fault { new_active, took_ms, tx_at_pause: Some(tx_at_stop), ..entry("router_paused", &name, at) };
            (fault, resume)
        }
        RouterFault::Resume { host } => {
            let name = format!("r{host}");
            said(&format!("resuming {name} (SIGCONT)"));
            resume(lab, pending, &name);
            (Fault { new_active: lab.active_router(), ..entry("router_resumed", &name, wall_ms()) }, None)
        }
    })
}

/// Resumes router `name` if it is paused.
fn resume(lab: &Lab, pending: &mut Pending, name: &str) {
    for paused in pending.paused.iter_mut().filter(|p| p.name == name && !p.resumed) {
        paused.resumed = lab.signal(&lab.router_process_of(name), "CONT");
    }
}

/// At the demo's end: resumes a router still paused, and adds to each pause's fault the frames
/// its router's kernel sent since another router took over (`tx_after_resume`: the router must
/// have sent none, having lost the group while paused) and the frames it dropped as not active.
pub fn finish(lab: &Lab, pending: &mut Pending, faults: &mut [Fault]) {
    // Not left stopped for `lab down`.
    let names: Vec<String> = pending.paused.iter().map(|p| p.name.clone()).collect();
    for name in names {
        resume(lab, pending, &name);
    }
    for paused in &pending.paused {
        let Some(fault) =
            faults.iter_mut().find(|f| f.kind == "router_paused" && f.target == paused.name && f.at_s == paused.at_s)
        else {
            continue;
        };
        match lab.router_tx_packets(&paused.name) {
            Ok(tx) => fault.tx_after_resume = Some(tx.saturating_sub(paused.tx_at_takeover)),
            Err(e) => eprintln!("ipshadow demo: {}'s frames sent: {e:#}", paused.name),
        }
        fault.frames_dropped = lab.router_report(&paused.name).ha.map(|ha| ha.counters.frames_dropped);
    }
}

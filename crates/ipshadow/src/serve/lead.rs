//! The manager on a shared store (etcd): every manager process campaigns, one leads. The leader
//! manages through a store fenced by its leadership (a write after it lost the lead, paused or
//! cut off past its lease, is refused by the store itself), and hears the parts through
//! followers started for its term: a new leader first reads every lease event not yet handled.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ipshadow_control::Store;
use ipshadow_control::bus;
use ipshadow_control::election::Candidate;
use ipshadow_control::inventory::Inventory;
use ipshadow_control::manager::Manager;
use ipshadow_control::orchestrator::Limits;
use ipshadow_control::retention::Retention;

use super::manage::{self, Outputs};
use super::{clock, remote};

/// The leader's lease: a standby leads at most this long (plus etcd's expiry check) after the
/// leader died. etcd's shortest lease with its default timing is 2 s; 3 s leaves a renewal
/// (every second) two chances on a busy machine before the lead is lost.
pub const MANAGER_TTL: Duration = Duration::from_secs(3);

/// After a failed campaign (the store unreachable), how long to wait before the next.
const RETRY: Duration = Duration::from_millis(500);

/// Campaigns and, while leading, manages; until `stop`.
pub fn campaign_and_manage<S: Store>(
    store: S,
    name: &str,
    limits: Limits,
    retention: &Retention,
    stop: &Arc<AtomicBool>,
) {
    let mut candidate = Candidate::new(store.clone(), bus::MANAGER_ELECTION, name, MANAGER_TTL);
    let mut said_standby = false;
    while !stop.load(Ordering::Relaxed) {
        if !said_standby {
            eprintln!("ipshadow serve: {name}: manager campaigns");
            said_standby = true;
        }
        let leadership = match candidate.campaign(stop) {
            Ok(Some(leadership)) => leadership,
            Ok(None) => return,
            Err(e) => {
                eprintln!("ipshadow serve: {name}: campaigning: {e}");
                std::thread::sleep(RETRY);
                continue;
            }
        };
        said_standby = false;
        eprintln!("ipshadow serve: {name}: manager leads");
        let fenced = leadership.fenced();
        let term_stop = Arc::new(AtomicBool::new(false));
        let (heard_tx, heard_rx) = std::sync::mpsc::channel();
        let started = manage::watch_store(&fenced, heard_tx.clone(), Arc::clone(&term_stop))
            .and_then(|()| remote::manager_hears(fenced.clone(), heard_tx, Arc::clone(&term_stop)));
        match started {
            Ok(hears) => {
                let manager = Manager::new(Inventory::new(fenced.clone()).with_writer(name), limits);
                let outputs = Outputs {
                    router: Some(Outputs::stored_router(fenced.clone())),
                    dhcp: Some(Outputs::stored_dhcp(fenced)),
                    router_status: Default::default(),
                };
                let keep_going = || !stop.load(Ordering::Relaxed) && leadership.is_leading();
                manage::manage(&manager, &heard_rx, &outputs, retention, &keep_going, clock::unix_ms);
                term_stop.store(true, Ordering::Relaxed);
                let _ = hears.join();
            }
            Err(e) => eprintln!("ipshadow serve: {name}: manager: {e:#}"),
        }
        term_stop.store(true, Ordering::Relaxed);
        if stop.load(Ordering::Relaxed) {
            // Stopping on purpose: a standby leads at once instead of after the lease.
            if let Err(e) = leadership.resign() {
                eprintln!("ipshadow serve: {name}: resigning: {e}");
            }
            return;
        }
        eprintln!("ipshadow serve: {name}: manager no longer leads");
    }
}

//! Leader election with fencing, on every store: one of two candidates leads; a resignation
//! hands over at once; a leader that stopped renewing (a paused process) is replaced within its
//! lease's time to live and can then write nothing, even through the store's own compare.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use ipshadow_control::election::{Candidate, FencedStore, Leadership, leader};
use ipshadow_control::{Compare, Store, StoreError, Txn, TxnOutcome};

use super::leases::TTL;

const KEY: &str = "/v1/leaders/manager";

/// `candidate` campaigning on a thread until it leads (or `stop`).
fn standby<S: Store>(
    mut candidate: Candidate<S>,
    stop: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<(Option<Leadership<S>>, Instant)> {
    let stop = Arc::clone(stop);
    std::thread::spawn(move || {
        let leadership = candidate.campaign(&stop).unwrap();
        (leadership, Instant::now())
    })
}

pub fn one_candidate_leads_and_a_resignation_hands_over_at_once<S: Store>(store: &S) {
    let mut a = Candidate::new(store.clone(), KEY, "a", TTL);
    let mut b = Candidate::new(store.clone(), KEY, "b", TTL);
    let leading = a.campaign_once().unwrap().expect("the first candidate leads");
    assert!(b.campaign_once().unwrap().is_none(), "only one leads");
    assert_eq!(leader(store, KEY).unwrap().as_deref(), Some("a"));
    assert!(leading.is_leading());

    let stop = Arc::new(AtomicBool::new(false));
    let waiting = standby(b, &stop);
    // Longer than the lease: renewals keep a leading.
    std::thread::sleep(TTL * 3);
    assert!(!waiting.is_finished(), "b does not lead while a renews");
    assert_eq!(leader(store, KEY).unwrap().as_deref(), Some("a"));
    let resigned = Instant::now();
    leading.resign().unwrap();
    let (b_leads, at) = waiting.join().unwrap();
    let b_leads = b_leads.expect("b leads");
    let took = at - resigned;
    println!("handover after a resignation: {took:?}");
    assert!(took < TTL, "at once, not after a time to live: {took:?}");
    assert_eq!(leader(store, KEY).unwrap().as_deref(), Some("b"));
    assert!(b_leads.is_leading());
}

pub fn a_leader_that_stopped_renewing_is_replaced_and_can_write_nothing<S: Store>(store: &S) {
    let a = Candidate::new(store.clone(), KEY, "a", TTL).campaign_once().unwrap().expect("a leads");
    let a_store = a.fenced();
    let Compare::ModRevision(key, revision) = a.fence() else { panic!("a fence is a revision compare") };
    let a_raw = FencedStore::new(store.clone(), &key, revision);
    // While leading, fenced writes land, and a failing compare of its own is still Failed.
    assert!(matches!(a_store.txn(Txn::new().put("/v1/x", b"a1".to_vec())), Ok(TxnOutcome::Committed(_))));
    let stale = Txn::new().when(Compare::Absent("/v1/x".into())).put("/v1/x", b"no".to_vec());
    assert!(matches!(a_store.txn(stale), Ok(TxnOutcome::Failed(_))), "a race, not a lost leadership");

    let stop = Arc::new(AtomicBool::new(false));
    let waiting = standby(Candidate::new(store.clone(), KEY, "b", TTL), &stop);
    // a is paused: no renewal from now on.
    a.pause_renewals();
    let paused = Instant::now();
    let (b_leads, at) = waiting.join().unwrap();
    let b_leads = b_leads.expect("b leads");
    let took = at - paused;
    println!("takeover after the leader stopped renewing (ttl {TTL:?} asked): {took:?}");
    // The lease (etcd: at least 2 s), etcd's 500 ms expiry check, and the campaign.
    assert!(took < TTL.max(Duration::from_secs(2)) + Duration::from_secs(2), "{took:?}");
    assert!(!a.is_leading(), "a knows it lost the lease");

    // Both of a's stores refuse: one by a's own clock, one by the store's compare.
    let write = || Txn::new().put("/v1/x", b"from a, too late".to_vec()).put("/v1/y", b"too late".to_vec());
    assert!(matches!(a_store.txn(write()), Err(StoreError::NotLeader { key }) if key == KEY));
    assert!(matches!(a_raw.txn(write()), Err(StoreError::NotLeader { .. })));
    assert_eq!(store.get("/v1/x").unwrap().unwrap().value, b"a1", "nothing of a's landed");
    assert!(store.get("/v1/y").unwrap().is_none());
    // b's fenced writes land.
    assert!(matches!(b_leads.fenced().txn(Txn::new().put("/v1/x", b"b1".to_vec())), Ok(TxnOutcome::Committed(_))));
    assert_eq!(leader(store, KEY).unwrap().as_deref(), Some("b"));
}

pub fn a_leader_whose_lease_was_revoked_knows_within_a_renewal<S: Store>(store: &S) {
    let a = Candidate::new(store.clone(), KEY, "a", TTL).campaign_once().unwrap().expect("a leads");
    store.revoke_lease(a.lease()).unwrap();
    let deadline = Instant::now() + TTL;
    while a.is_leading() {
        assert!(Instant::now() < deadline, "still leading a time to live after its lease ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    let fenced = a.fenced();
    assert!(matches!(fenced.txn(Txn::new().put("/v1/x", b"a".to_vec())), Err(StoreError::NotLeader { .. })));
    assert!(store.get("/v1/x").unwrap().is_none());
    // A candidate stopped while waiting gives up.
    let mut b = Candidate::new(store.clone(), KEY, "b", TTL);
    let held = b.campaign_once().unwrap().expect("b leads");
    let stop = AtomicBool::new(true);
    assert!(Candidate::new(store.clone(), KEY, "c", TTL).campaign(&stop).unwrap().is_none());
    drop(held);
}

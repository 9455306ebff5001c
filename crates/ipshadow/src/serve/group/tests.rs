//! The keeper on the embedded store (the same `Store` trait as etcd): who takes the group's key,
//! when a standby ends a silent active's lease, and the grace it leaves an active still heard.

use std::sync::mpsc::{Receiver, channel};

use ipshadow_control::RedbStore;

use super::*;

fn store() -> (tempfile::TempDir, RedbStore) {
    let dir = tempfile::tempdir().expect("temporary folder");
    let store = RedbStore::open(&dir.path().join("store.redb")).expect("store");
    (dir, store)
}

fn keeper(store: &RedbStore, name: &str) -> (Keeper<RedbStore>, Receiver<LeaseNews>) {
    let (tx, rx) = channel();
    // No ports: their links count as up.
    let keeper = Keeper::new(store.clone(), group_key("edge"), name.into(), Vec::new(), tx, GroupLink::default());
    (keeper, rx)
}

fn set_view(k: &Keeper<RedbStore>, view: GroupView) {
    *k.link.view.lock().expect("view") = view;
}

fn holder(store: &RedbStore) -> Option<String> {
    store.get(&group_key("edge")).expect("read").map(|kv| String::from_utf8(kv.value).expect("a name"))
}

#[test]
fn the_first_keeper_takes_the_free_key_and_another_leaves_it() {
    let (_dir, store) = store();
    let (mut r1, news1) = keeper(&store, "r1");
    let (mut r2, news2) = keeper(&store, "r2");
    r1.turn();
    let Ok(LeaseNews::Acquired { term, .. }) = news1.try_recv() else { panic!("r1 took nothing") };
    assert!(term > 0);
    assert_eq!(holder(&store).as_deref(), Some("r1"));
    assert!(matches!(*r1.link.held.lock().expect("held"), Some(LeaseNews::Acquired { .. })));
    r2.turn();
    assert!(news2.try_recv().is_err(), "the key is taken");
    // Active: renewals are confirmed (the loop asks at once after a stall).
    set_view(&r1, GroupView { role: Some(Role::Suspended), confirm_now: true, ..GroupView::default() });
    std::thread::sleep(CONFIRM_AT_MOST_EVERY);
    r1.turn();
    assert_eq!(news1.try_recv(), Ok(LeaseNews::Confirmed));
}

#[test]
fn a_standby_ends_the_lease_of_an_active_gone_silent_and_takes_over() {
    let (_dir, store) = store();
    let (mut r1, news1) = keeper(&store, "r1");
    let (mut r2, news2) = keeper(&store, "r2");
    r1.turn();
    let Ok(LeaseNews::Acquired { lease, term }) = news1.try_recv() else { panic!("r1 took nothing") };
    set_view(&r2, GroupView { role: Some(Role::Standby), end_lease: Some(lease), ..GroupView::default() });
    r2.turn();
    let Ok(LeaseNews::Acquired { term: term2, .. }) = news2.try_recv() else { panic!("r2 did not take over") };
    assert!(term2 > term, "a newer term");
    assert_eq!(holder(&store).as_deref(), Some("r2"));
    // r1 comes back: its lease is gone and the key is r2's: it is told it lost.
    std::thread::sleep(GROUP_TTL / 6);
    r1.turn();
    assert_eq!(news1.try_recv(), Ok(LeaseNews::Lost));
    assert_eq!(holder(&store).as_deref(), Some("r2"));
}

#[test]
fn a_free_key_waits_a_grace_for_an_active_still_heard_which_takes_it_again() {
    let (_dir, store) = store();
    let (mut r1, news1) = keeper(&store, "r1");
    let (mut r2, news2) = keeper(&store, "r2");
    r1.turn();
    let Ok(LeaseNews::Acquired { lease, term }) = news1.try_recv() else { panic!("r1 took nothing") };
    // The store lost r1's lease (it was away for everyone longer than the lease).
    store.revoke_lease(LeaseId(i64::try_from(lease).expect("a lease id"))).expect("revoked");
    set_view(&r2, GroupView { role: Some(Role::Standby), hears_active: true, ..GroupView::default() });
    r2.turn();
    assert!(news2.try_recv().is_err(), "r2 leaves r1 its grace");
    std::thread::sleep(GROUP_TTL / 6);
    r1.turn();
    let Ok(LeaseNews::Acquired { term: again, .. }) = news1.try_recv() else { panic!("r1 did not take it again") };
    assert!(again > term);
    r2.turn();
    assert!(news2.try_recv().is_err());
    assert_eq!(holder(&store).as_deref(), Some("r1"));
}

#[test]
fn an_active_that_heard_a_newer_term_gives_its_lease_up() {
    let (_dir, store) = store();
    let (mut r1, news1) = keeper(&store, "r1");
    r1.turn();
    assert!(matches!(news1.try_recv(), Ok(LeaseNews::Acquired { .. })));
    set_view(&r1, GroupView { role: Some(Role::Standby), ..GroupView::default() });
    r1.turn();
    assert_eq!(holder(&store), None, "its lease ended with the key");
    assert_eq!(*r1.link.held.lock().expect("held"), None);
}

use super::*;

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn from(name: &str, term: u64) -> Announcement {
    Announcement { group: "edge".into(), name: name.into(), term, lease: 100 + term, resigning: false }
}

/// A member that took the lease at `ms` with term 10, turning every 5 ms up to then.
fn active_at(ms: u64) -> GroupMember {
    let mut m = GroupMember::new("edge", "r1", at(0));
    m.turn(at(0));
    m.lease(LeaseNews::Acquired { term: 10, lease: 7 }, at(ms));
    m.turn(at(ms));
    m
}

#[test]
fn a_standby_forwards_nothing_until_it_holds_the_lease_then_announces_with_gratuitous_arp() {
    let mut m = GroupMember::new("edge", "r1", at(0));
    m.turn(at(0));
    assert!(!m.may_forward());
    assert_eq!(m.announcement(at(0)), None, "a standby sends nothing");
    m.lease(LeaseNews::Acquired { term: 10, lease: 7 }, at(50));
    assert!(m.may_forward());
    let (first, gratuitous) = m.announcement(at(50)).unwrap();
    assert_eq!((first.term, first.lease, first.resigning, gratuitous), (10, 7, false, true));
    assert_eq!(m.announcement(at(100)), None, "one a heartbeat");
    let sent: Vec<bool> = (1..=4).filter_map(|i| m.announcement(at(50 + i * 100))).map(|(_, g)| g).collect();
    assert_eq!(sent, [true, true, false, false], "gratuitous ARP with the first {GRATUITOUS_REPEATS} only");
    let status = m.status(at(500), |t| t);
    assert_eq!(status.last_takeover.unwrap().cause, TakeoverCause::Started);
    assert_eq!(status.active.as_deref(), Some("r1"));
}

#[test]
fn an_active_router_steps_down_when_it_hears_a_newer_term_and_ignores_older_ones() {
    let mut m = active_at(0);
    m.heard(&from("r2", 9), at(10));
    assert!(m.may_forward(), "an older term is a stale active that has not heard us yet");
    m.heard(&Announcement { group: "other".into(), ..from("r2", 99) }, at(20));
    m.heard(&from("r1", 99), at(20));
    assert!(m.may_forward(), "another group's announcement, or our own echoed, changes nothing");
    m.heard(&from("r2", 11), at(30));
    assert!(!m.may_forward());
    let status = m.status(at(30), |t| t);
    let step_down = status.last_step_down.unwrap();
    assert_eq!((step_down.cause, step_down.to.as_deref()), (StepDownCause::HeardNewer, Some("r2")));
    assert_eq!(status.active.as_deref(), Some("r2"));
    assert_eq!(status.counters.announcements_ignored, 2);
}

#[test]
fn an_unreachable_store_never_stops_an_active_router_but_a_lost_lease_does() {
    let mut m = active_at(0);
    for i in 1..100 {
        m.lease(LeaseNews::Unreachable, at(i * 5));
        m.turn(at(i * 5));
    }
    assert!(m.may_forward());
    m.lease(LeaseNews::Lost, at(600));
    assert!(!m.may_forward());
    assert_eq!(m.status(at(600), |t| t).last_step_down.unwrap().cause, StepDownCause::LeaseLost);
}

#[test]
fn a_lease_taken_again_after_the_store_lost_it_is_no_takeover() {
    let mut m = active_at(0);
    m.lease(LeaseNews::Acquired { term: 20, lease: 8 }, at(3_000));
    assert!(m.may_forward());
    let status = m.status(at(3_000), |t| t);
    assert_eq!((status.term, status.counters.takeovers), (20, 1));
}

#[test]
fn a_stalled_active_router_forwards_nothing_until_the_store_confirms_its_lease() {
    let mut m = active_at(0);
    assert!(!m.turn_stalled(at(200)));
    assert!(m.turn_stalled(at(300)), "a turn that took longer than a stall");
    m.turn(at(3_000));
    assert_eq!(m.role(), Role::Suspended);
    assert!(m.view(at(3_000)).confirm_now);
    m.turn(at(3_005));
    assert!(!m.may_forward());
    m.lease(LeaseNews::Confirmed, at(3_010));
    assert!(m.may_forward(), "the lease held: nobody took over");
    m.turn(at(9_000));
    m.lease(LeaseNews::Lost, at(9_010));
    assert_eq!(m.role(), Role::Standby);
    assert_eq!(m.status(at(9_010), |t| t).counters.stalls, 2);
}

#[test]
fn after_a_stall_an_unreachable_store_holds_forwarding_back_only_a_moment_and_a_newer_term_for_good() {
    let mut m = active_at(0);
    m.turn(at(3_000));
    m.lease(LeaseNews::Unreachable, at(3_010));
    m.turn(at(3_010 + UNCONFIRMED_RESUME.as_millis() as u64 - 20));
    assert!(!m.may_forward());
    m.turn(at(3_010 + UNCONFIRMED_RESUME.as_millis() as u64));
    assert!(m.may_forward(), "nobody announced a newer term: the store was away for everyone");

    let mut m = active_at(0);
    m.turn(at(3_000));
    m.lease(LeaseNews::Unreachable, at(3_010));
    m.heard(&from("r2", 11), at(3_020));
    m.turn(at(4_000));
    assert!(!m.may_forward(), "another took over while it was paused");
}

#[test]
fn a_standby_asks_to_end_the_lease_of_an_active_gone_silent_and_names_the_cause_when_it_takes_over() {
    let mut m = GroupMember::new("edge", "r2", at(0));
    for i in 0..=20 {
        m.turn(at(i * 5));
        if i % 20 == 0 {
            m.heard(&from("r1", 10), at(i * 5));
        }
    }
    let view = m.view(at(100));
    assert!(view.hears_active);
    assert_eq!(view.end_lease, None);
    let mut t = 100;
    while t < 100 + SILENT.as_millis() as u64 {
        t += 5;
        m.turn(at(t));
    }
    let view = m.view(at(t));
    assert!(!view.hears_active);
    assert_eq!(view.end_lease, Some(110), "the silent active's lease");
    m.lease(LeaseNews::Acquired { term: 12, lease: 9 }, at(t + 20));
    m.forwarded(at(t + 30));
    let takeover = m.status(at(t + 30), |w| w).last_takeover.unwrap();
    assert_eq!((takeover.cause, takeover.previous.as_deref()), (TakeoverCause::Silent, Some("r1")));
    assert_eq!(takeover.took_ms, Some(t + 30 - 100), "from the last announcement heard to the first frame");
    assert_eq!(m.view(at(t + 30)).end_lease, None, "active: nothing to end");
}

#[test]
fn a_standby_paused_itself_does_not_take_the_pause_for_the_active_s_silence() {
    let mut m = GroupMember::new("edge", "r2", at(0));
    m.turn(at(0));
    m.heard(&from("r1", 10), at(0));
    m.turn(at(2_000));
    assert_eq!(m.view(at(2_000)).end_lease, None);
    assert!(m.view(at(2_000)).hears_active);
}

#[test]
fn a_resigning_active_is_replaced_at_once_and_a_lost_store_is_named_as_the_cause() {
    let mut m = GroupMember::new("edge", "r2", at(0));
    m.turn(at(0));
    m.heard(&Announcement { resigning: true, ..from("r1", 10) }, at(10));
    assert_eq!(m.view(at(10)).end_lease, Some(110));
    assert!(!m.view(at(10)).hears_active);

    let mut m = GroupMember::new("edge", "r2", at(0));
    m.turn(at(0));
    m.heard(&from("r1", 10), at(10));
    m.lease(LeaseNews::Acquired { term: 12, lease: 9 }, at(20));
    let takeover = m.status(at(20), |w| w).last_takeover.unwrap();
    assert_eq!(takeover.cause, TakeoverCause::LostStore);
}

#[test]
fn resigning_sends_one_last_announcement_and_stands_by() {
    let mut m = active_at(0);
    let last = m.resign(at(50)).unwrap();
    assert!(last.resigning);
    assert!(!m.may_forward());
    assert_eq!(m.resign(at(60)), None);
}

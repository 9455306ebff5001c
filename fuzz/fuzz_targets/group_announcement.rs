//! Any byte string, alone and behind a valid announcement header: a router group's announcement
//! parses or is refused with a typed error, never panics; an accepted one reads back the same
//! from the frame it makes, and a group member hearing it keeps its invariants (a standby never
//! forwards because of what it heard).
#![no_main]

use ipshadow_core::Instant;
use ipshadow_core::ha::{Announcement, GroupMember};
use libfuzzer_sys::fuzz_target;

/// Ethernet header with the announcements' EtherType, the magic and the version: the fuzzer
/// spends its time in the fields behind them.
fn with_header(rest: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(&0x88B5u16.to_be_bytes());
    frame.extend_from_slice(b"IPSH");
    frame.push(1);
    frame.extend_from_slice(rest);
    frame
}

fn check(frame: &[u8]) {
    let Ok(announcement) = Announcement::parse(frame) else { return };
    assert_eq!(Announcement::parse(&announcement.frame([2, 0, 0, 0, 0, 1])).as_ref(), Ok(&announcement));
    let mut member = GroupMember::new(&announcement.group, "fuzz", Instant::ZERO);
    member.turn(Instant::ZERO);
    member.heard(&announcement, Instant::from_millis(1));
    assert!(!member.may_forward());
}

fuzz_target!(|data: &[u8]| {
    check(data);
    check(&with_header(data));
});

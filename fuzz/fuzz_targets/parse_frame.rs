//! Any byte string: the parser returns Ok or a typed error, never panics; an accepted IPv4
//! datagram's summary is consistent with the bytes.
#![no_main]

use ipshadow_core::wire::{parse_frame, Packet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Packet::Ipv4(ip)) = parse_frame(data) {
        assert!(usize::from(ip.l3_offset) + 20 <= data.len());
    }
});

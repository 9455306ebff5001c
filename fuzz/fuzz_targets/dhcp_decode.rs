//! Any byte string, alone and as the options behind a valid BOOTREQUEST header: the DHCP decoder
//! returns a request or a typed error, never panics; an accepted request encodes back without
//! panicking, padded, with its option 82 echoed right before END.
#![no_main]

use ipshadow_dhcp::wire::{MIN_LEN, MIN_REPLY_LEN, decode, encode};
use libfuzzer_sys::fuzz_target;

/// op BOOTREQUEST, Ethernet, hlen 6, zeroes, then the magic cookie. Putting the input behind it
/// lets the fuzzer spend its time in the options walk and dhcproto's option decoders instead of
/// rediscovering the cookie.
fn with_header(options: &[u8]) -> Vec<u8> {
    let mut datagram = vec![0u8; MIN_LEN];
    datagram[..3].copy_from_slice(&[1, 1, 6]);
    datagram[236..240].copy_from_slice(&[99, 130, 83, 99]);
    datagram.extend_from_slice(options);
    datagram
}

fn check(datagram: &[u8]) {
    let Ok(request) = decode(datagram) else { return };
    assert!(datagram.len() >= MIN_LEN);
    let relay_agent = request.relay_agent.as_deref();
    if let Ok(encoded) = encode(&request.message, relay_agent) {
        assert!(encoded.len() >= MIN_REPLY_LEN);
        if let Some(raw) = relay_agent {
            let mut tail = raw.to_vec();
            tail.push(255);
            assert!(encoded.windows(tail.len()).any(|w| w == tail.as_slice()));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    check(&with_header(data));
});

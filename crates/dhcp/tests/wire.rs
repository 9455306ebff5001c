//! The DHCP wire boundary: real DISCOVER/REQUEST datagrams round-trip, and each dhcproto trap
//! (wrong cookie, truncated options, re-sorted option 82, unpadded replies) is closed; arbitrary
//! bytes never panic the decoder.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::net::Ipv4Addr;

use dhcproto::v4::{Decodable, Decoder, DhcpOption, Encodable, Message, MessageType, Opcode, OptionCode};
use ipshadow_dhcp::wire::{DecodeError, MAX_LEN, MIN_LEN, MIN_REPLY_LEN, decode, encode};
use proptest::prelude::*;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const X: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 42);

/// Option 82 with its sub-options out of order: remote-id (2) before circuit-id (1). dhcproto
/// keeps sub-options in a sorted map, so re-encoding it would put circuit-id first.
const RELAY_AGENT: [u8; 13] = [82, 11, 2, 4, b'r', b'e', b'm', b'1', 1, 3, b'e', b't', b'h'];

fn discover_message() -> Message {
    let mut m = Message::new_with_id(0x1234_5678, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, SERVER, SERVER, &MAC);
    m.opts_mut().insert(DhcpOption::MessageType(MessageType::Discover));
    m.opts_mut().insert(DhcpOption::ClientIdentifier([&[1u8][..], &MAC].concat()));
    m.opts_mut().insert(DhcpOption::Hostname("vm-a".to_owned()));
    m.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
    ]));
    m
}

fn request_message() -> Message {
    let mut m = discover_message();
    m.opts_mut().insert(DhcpOption::MessageType(MessageType::Request));
    m.opts_mut().insert(DhcpOption::RequestedIpAddress(X));
    m.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    m
}

fn bytes(m: &Message) -> Vec<u8> {
    m.to_vec().unwrap()
}

/// Inserts raw option bytes just before END.
fn with_option_before_end(datagram: &[u8], option: &[u8]) -> Vec<u8> {
    let end = end_at(datagram);
    [&datagram[..end], option, &datagram[end..]].concat()
}

/// Index of the END option, found by walking the options (so data bytes of 255 don't fool it).
fn end_at(datagram: &[u8]) -> usize {
    let mut at = MIN_LEN;
    loop {
        match datagram[at] {
            0 => at += 1,
            255 => return at,
            _ => at += 2 + usize::from(datagram[at + 1]),
        }
    }
}

/// Options in wire order: (code, start offset, end offset), pads skipped, END excluded.
fn options_in_order(datagram: &[u8]) -> Vec<(u8, usize, usize)> {
    let mut found = Vec::new();
    let mut at = MIN_LEN;
    loop {
        match datagram[at] {
            0 => at += 1,
            255 => return found,
            code => {
                let end = at + 2 + usize::from(datagram[at + 1]);
                found.push((code, at, end));
                at = end;
            }
        }
    }
}

fn offer_for(request: &Message) -> Message {
    let mut m = Message::new_with_id(request.xid(), Ipv4Addr::UNSPECIFIED, X, SERVER, request.giaddr(), &MAC);
    m.set_opcode(Opcode::BootReply);
    m.opts_mut().insert(DhcpOption::MessageType(MessageType::Offer));
    m.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    m.opts_mut().insert(DhcpOption::AddressLeaseTime(3600));
    m.opts_mut().insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
    m
}

#[test]
fn discover_and_request_round_trip() {
    for (original, kind) in [(discover_message(), MessageType::Discover), (request_message(), MessageType::Request)] {
        let request = decode(&bytes(&original)).unwrap();
        assert_eq!(request.message, original);
        assert_eq!(request.message_type, kind);
        assert_eq!(request.relay_agent, None);

        // Our own encoder's output (padded, END before the padding) decodes to the same message.
        let encoded = encode(&request.message, None).unwrap();
        assert!(encoded.len() >= MIN_REPLY_LEN);
        assert_eq!(decode(&encoded).unwrap().message, original);
    }
}

#[test]
fn reply_round_trips_through_dhcproto() {
    let offer = offer_for(&discover_message());
    let encoded = encode(&offer, None).unwrap();
    assert_eq!(Message::decode(&mut Decoder::new(&encoded)).unwrap(), offer);
}

/// Trap (a): dhcproto decodes a datagram whose magic cookie is wrong.
#[test]
fn wrong_magic_cookie_is_refused() {
    for at in 236..240 {
        let mut datagram = bytes(&discover_message());
        datagram[at] ^= 0x01;
        assert!(Message::decode(&mut Decoder::new(&datagram)).is_ok(), "dhcproto still accepts it");
        assert_eq!(decode(&datagram), Err(DecodeError::BadMagic));
    }
}

/// Trap (b): every cut inside the options area is a typed error, never a silently shorter message.
#[test]
fn truncated_options_are_refused_at_every_cut() {
    let full = with_option_before_end(&with_option_before_end(&bytes(&request_message()), &[0, 0]), &RELAY_AGENT);
    assert!(decode(&full).is_ok());
    let options = options_in_order(&full);
    for cut in 0..full.len() {
        let got = decode(&full[..cut]);
        let inside = options.iter().find(|(_, start, end)| *start < cut && cut < *end);
        let want = match inside {
            _ if cut < MIN_LEN => DecodeError::TooShort,
            Some((code, _, _)) => DecodeError::TruncatedOption { code: *code },
            None => DecodeError::MissingEnd,
        };
        assert_eq!(got.as_ref().err(), Some(&want), "cut at {cut}");
    }
}

#[test]
fn option_length_past_the_datagram_is_refused() {
    let mut datagram = bytes(&discover_message());
    let end = end_at(&datagram);
    datagram.truncate(end);
    datagram.extend_from_slice(&[12, 40, b'x', b'y', 255]);
    assert_eq!(decode(&datagram), Err(DecodeError::TruncatedOption { code: 12 }));
}

/// Trap (c): option 82 comes back byte for byte, sub-options unsorted, as the last option.
#[test]
fn relay_agent_option_is_echoed_byte_identical_and_last() {
    let mut discover = discover_message();
    discover.set_giaddr(Ipv4Addr::new(10, 0, 0, 254));
    let datagram = with_option_before_end(&bytes(&discover), &RELAY_AGENT);
    let request = decode(&datagram).unwrap();
    assert_eq!(request.relay_agent.as_deref(), Some(&RELAY_AGENT[..]));
    // dhcproto decodes it too, which is why `encode` must keep it out of the reply's options.
    assert!(request.message.opts().get(OptionCode::RelayAgentInformation).is_some());

    let mut offer = offer_for(&request.message);
    // A careless server copies the request's option 82 into the reply; encode drops that copy.
    let copied = request.message.opts().get(OptionCode::RelayAgentInformation).unwrap().clone();
    offer.opts_mut().insert(copied);
    let reply = encode(&offer, request.relay_agent.as_deref()).unwrap();

    let options = options_in_order(&reply);
    let (code, start, end) = *options.last().unwrap();
    assert_eq!(code, 82);
    assert_eq!(&reply[start..end], &RELAY_AGENT[..]);
    assert_eq!(reply[end], 255, "END right after option 82");
    assert_eq!(options.iter().filter(|(code, _, _)| *code == 82).count(), 1);

    // What dhcproto alone would have sent: sub-options re-sorted.
    let resorted = bytes(&offer);
    let (_, start, end) = *options_in_order(&resorted).iter().find(|(code, _, _)| *code == 82).unwrap();
    assert_ne!(&resorted[start..end], &RELAY_AGENT[..]);
}

#[test]
fn relay_agent_bytes_must_be_one_option_82() {
    let offer = offer_for(&discover_message());
    assert!(encode(&offer, Some(&[82, 5, 1, 1])).is_err());
    assert!(encode(&offer, Some(&[12, 1, b'x'])).is_err());
    assert!(encode(&offer, Some(&[])).is_err());
    assert!(encode(&offer, Some(&[82, 0])).is_ok());
}

/// Trap (d): replies reach the 300-byte BOOTP minimum, zero-padded after END.
#[test]
fn reply_is_padded_to_bootp_minimum_with_end() {
    let offer = offer_for(&discover_message());
    assert!(bytes(&offer).len() < MIN_REPLY_LEN, "dhcproto alone sends a short reply");
    let reply = encode(&offer, None).unwrap();
    assert_eq!(reply.len(), MIN_REPLY_LEN);
    let end = end_at(&reply);
    assert!(reply[end + 1..].iter().all(|&b| b == 0));

    // Even a message with no options at all gets an END and the padding.
    let mut bare = offer.clone();
    bare.opts_mut().remove(OptionCode::MessageType);
    for (code, _) in offer.opts().iter() {
        bare.opts_mut().remove(*code);
    }
    let reply = encode(&bare, None).unwrap();
    assert_eq!(reply.len(), MIN_REPLY_LEN);
    assert_eq!(reply[MIN_LEN], 255);
}

#[test]
fn long_reply_is_not_padded_and_too_long_is_refused() {
    let mut offer = offer_for(&discover_message());
    offer.opts_mut().insert(DhcpOption::DomainName("a".repeat(200)));
    let reply = encode(&offer, None).unwrap();
    assert!(reply.len() > MIN_REPLY_LEN);
    assert_eq!(reply.last(), Some(&255));

    let routers: Vec<Ipv4Addr> = (0..=255u8).flat_map(|a| (0..2u8).map(move |b| Ipv4Addr::new(10, a, b, 1))).collect();
    offer.opts_mut().insert(DhcpOption::Router(routers));
    assert!(matches!(encode(&offer, None), Err(ipshadow_dhcp::wire::EncodeError::TooLong)));
}

#[test]
fn too_short_and_oversized_are_refused() {
    let datagram = bytes(&discover_message());
    assert_eq!(decode(&datagram[..MIN_LEN - 1]), Err(DecodeError::TooShort));
    assert_eq!(decode(&[]), Err(DecodeError::TooShort));

    // Zero padding after END is fine up to MAX_LEN, one byte more is not.
    let mut padded = datagram.clone();
    padded.resize(MAX_LEN, 0);
    assert!(decode(&padded).is_ok());
    padded.push(0);
    assert_eq!(decode(&padded), Err(DecodeError::Oversized));
}

#[test]
fn bootreply_is_refused() {
    let mut datagram = bytes(&discover_message());
    datagram[0] = 2;
    assert_eq!(decode(&datagram), Err(DecodeError::NotRequest));
    datagram[0] = 7;
    assert_eq!(decode(&datagram), Err(DecodeError::NotRequest));
}

#[test]
fn bad_hardware_address_length_is_refused() {
    let mut datagram = bytes(&discover_message());
    for hlen in [0, 5, 7, 16] {
        datagram[2] = hlen;
        assert_eq!(decode(&datagram), Err(DecodeError::BadHardware), "ethernet hlen {hlen}");
    }
    // Another hardware type may use any length that fits chaddr, but never more than 16.
    datagram[1] = 32;
    datagram[2] = 16;
    assert!(decode(&datagram).is_ok());
    datagram[2] = 17;
    assert_eq!(decode(&datagram), Err(DecodeError::BadHardware));
}

#[test]
fn missing_message_type_is_refused() {
    let mut bootp = discover_message();
    bootp.opts_mut().remove(OptionCode::MessageType);
    assert_eq!(decode(&bytes(&bootp)), Err(DecodeError::MissingMessageType));
}

#[test]
fn message_type_must_be_one_byte_and_once() {
    let datagram = bytes(&discover_message());
    assert_eq!(decode(&with_option_before_end(&datagram, &[53, 1, 3])), Err(DecodeError::BadOption { code: 53 }));
    assert_eq!(decode(&with_option_before_end(&datagram, &[53, 1, 1])), Err(DecodeError::BadOption { code: 53 }));

    let mut bootp = discover_message();
    bootp.opts_mut().remove(OptionCode::MessageType);
    let datagram = bytes(&bootp);
    assert_eq!(decode(&with_option_before_end(&datagram, &[53, 2, 1, 1])), Err(DecodeError::BadOption { code: 53 }));
    assert_eq!(decode(&with_option_before_end(&datagram, &[53, 0])), Err(DecodeError::BadOption { code: 53 }));
    assert_eq!(decode(&with_option_before_end(&datagram, &[53, 1, 3])).unwrap().message_type, MessageType::Request);
}

#[test]
fn relay_agent_option_must_appear_once() {
    let datagram = with_option_before_end(&bytes(&discover_message()), &RELAY_AGENT);
    assert_eq!(decode(&with_option_before_end(&datagram, &RELAY_AGENT)), Err(DecodeError::BadOption { code: 82 }));
}

/// dhcproto stops silently at a value it cannot read; we name the option instead.
#[test]
fn unreadable_option_value_is_refused_not_skipped() {
    let datagram = bytes(&discover_message());
    // A subnet mask of 3 bytes: dhcproto alone would drop it and every option after it.
    assert_eq!(
        decode(&with_option_before_end(&datagram, &[1, 3, 255, 255, 255])),
        Err(DecodeError::BadOption { code: 1 })
    );
    // Lengths that make dhcproto's decoders assert or underflow in a debug build.
    for option in [&[80u8, 1, 0][..], &[81, 1, 0], &[94, 2, 1, 2], &[151, 0], &[152, 3, 0, 0, 0]] {
        assert_eq!(decode(&with_option_before_end(&datagram, option)), Err(DecodeError::BadOption { code: option[0] }));
    }
}

/// RFC 3396: an option split over several instances is one value.
#[test]
fn split_option_instances_are_joined() {
    let mut discover = discover_message();
    discover.opts_mut().remove(OptionCode::Hostname);
    let datagram = with_option_before_end(&bytes(&discover), &[12, 2, b'v', b'm', 0, 12, 2, b'-', b'b']);
    let request = decode(&datagram).unwrap();
    assert_eq!(request.message.opts().get(OptionCode::Hostname), Some(&DhcpOption::Hostname("vm-b".to_owned())));
}

/// RFC 2132 9.3: under option overload, sname and file hold options we don't read, not names.
#[test]
fn overloaded_sname_and_file_are_cleared() {
    let mut discover = discover_message();
    discover.set_sname_str("server");
    discover.set_fname_str("boot");
    // Without overload they are kept (dhcproto keeps the terminating NUL, so compare the start).
    assert!(decode(&bytes(&discover)).unwrap().message.sname().unwrap().starts_with(b"server"));

    let datagram = with_option_before_end(&bytes(&discover), &[52, 1, 3]);
    let request = decode(&datagram).unwrap();
    assert_eq!(request.message.sname(), None);
    assert_eq!(request.message.fname(), None);
}

#[test]
fn error_names_are_snake_case_counter_names() {
    assert_eq!(DecodeError::TooShort.name(), "too_short");
    assert_eq!(DecodeError::TruncatedOption { code: 3 }.name(), "truncated_option");
    assert_eq!(DecodeError::BadOption { code: 53 }.name(), "bad_option");
    assert_eq!(DecodeError::MissingMessageType.name(), "missing_message_type");
}

/// A valid fixed header and cookie, as a prefix for random options.
fn header() -> Vec<u8> {
    bytes(&discover_message())[..MIN_LEN].to_vec()
}

/// Options with real codes and random values, always with a message type, so the random data
/// reaches dhcproto's option decoders instead of stopping at the walk.
fn structured_options() -> impl Strategy<Value = Vec<u8>> {
    let option = (1u8..=254, prop::collection::vec(any::<u8>(), 0..24), any::<bool>());
    (prop::collection::vec(option, 0..12), any::<u8>()).prop_map(|(options, kind)| {
        let mut out = vec![53, 1, kind];
        for (code, data, pad) in options {
            if pad {
                out.push(0);
            }
            out.push(code);
            out.push(u8::try_from(data.len()).unwrap());
            out.extend_from_slice(&data);
        }
        out.push(255);
        out
    })
}

fn check_accepted(datagram: &[u8]) {
    if let Ok(request) = decode(datagram) {
        if let Some(raw) = &request.relay_agent {
            assert_eq!(raw.first(), Some(&82));
        }
        // Whatever we accepted, encoding it back must not panic either.
        if let Ok(encoded) = encode(&request.message, request.relay_agent.as_deref()) {
            assert!(encoded.len() >= MIN_REPLY_LEN);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(datagram in prop::collection::vec(any::<u8>(), 0..1600)) {
        check_accepted(&datagram);
    }

    #[test]
    fn decode_never_panics_after_a_valid_header(tail in prop::collection::vec(any::<u8>(), 0..1300)) {
        check_accepted(&[header(), tail].concat());
    }

    #[test]
    fn decode_never_panics_on_random_option_values(options in structured_options()) {
        check_accepted(&[header(), options].concat());
    }
}

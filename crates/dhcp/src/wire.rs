//! The validated boundary between raw UDP payloads and [`dhcproto`].
//!
//! dhcproto is a convenient codec but a lenient one, and we measured four traps in 0.15 that a
//! server facing untrusted clients must not fall into:
//!
//! 1. it accepts any magic cookie, so a BOOTP or garbage payload decodes as DHCP;
//! 2. it stops silently at the first option it cannot read (a truncated length, or a value it
//!    rejects), so every option after it vanishes without an error;
//! 3. it keeps option 82 (relay agent information) as a map and re-sorts the sub-options, but a
//!    relay agent expects its option back byte for byte (RFC 3046 2.2);
//! 4. it does not pad replies to the 300-byte BOOTP minimum that some relays and clients still
//!    enforce (RFC 1542 2.1).
//!
//! Some of its option decoders also `debug_assert!` on, or subtract from, the option length, so
//! a crafted option panics a debug build. [`decode`] therefore walks the options area itself
//! first, checks every length against the datagram and against what dhcproto can take, and only
//! then hands single, complete options to dhcproto. [`encode`] does the reverse: dhcproto writes
//! the message, and we append the relay agent's raw bytes and the padding.
//!
//! Once [`decode`] returned a [`Request`], nothing on the server's path can panic on its content.

use std::collections::BTreeMap;

use dhcproto::v4::{Decodable, Decoder, DhcpOption, DhcpOptions, Encodable, Encoder, Message, MessageType, OptionCode};

/// The smallest datagram we read: the 236-byte fixed BOOTP header plus the 4-byte magic cookie
/// (RFC 2131 2). A DHCP message without a single option is useless, but this is the length below
/// which there is nothing to look at at all.
pub const MIN_LEN: usize = 240;

/// The largest datagram we read.
///
/// A DHCP message is at most 576 bytes unless the client announces more with option 57 (RFC 2132
/// 9.10), and no client announces more than its link MTU. 1500 bytes, an Ethernet MTU, is a
/// generous bound: anything larger is not a DHCP client's request and is refused before any work.
pub const MAX_LEN: usize = 1500;

/// The smallest reply we send: a BOOTP message is at least 300 bytes (RFC 1542 2.1, RFC 951), and
/// relays and old clients drop anything shorter, so replies are padded with zeros after END.
pub const MIN_REPLY_LEN: usize = 300;

/// Where the magic cookie starts: right after the fixed BOOTP header.
const COOKIE_AT: usize = 236;
/// The magic cookie that marks the options area as DHCP options (RFC 2131 3, RFC 2132 2).
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];

/// BOOTREQUEST, the only op a server reads (RFC 2131 2).
const OP_BOOTREQUEST: u8 = 1;
/// ARP hardware type of Ethernet (RFC 1700), whose addresses are 6 bytes.
const HTYPE_ETHERNET: u8 = 1;
/// Length of an Ethernet hardware address.
const HLEN_ETHERNET: u8 = 6;
/// Size of the `chaddr` field; a longer `hlen` cannot describe an address in it.
const CHADDR_LEN: u8 = 16;

/// Pad option: one byte, no length (RFC 2132 3.1).
const OPT_PAD: u8 = 0;
/// End option: one byte, no length, closes the options area (RFC 2132 3.2).
const OPT_END: u8 = 255;
/// Option overload (RFC 2132 9.3).
const OPT_OVERLOAD: u8 = 52;
/// DHCP message type (RFC 2132 9.6).
const OPT_MESSAGE_TYPE: u8 = 53;
/// Relay agent information (RFC 3046).
const OPT_RELAY_AGENT: u8 = 82;

/// The largest data length of one option instance; longer values are split (RFC 3396).
const MAX_OPTION_CHUNK: usize = 255;

/// Why a datagram was refused. Small and `Copy`: the server counts it under [`DecodeError::name`]
/// and drops the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Shorter than [`MIN_LEN`]: the fixed header or the magic cookie is cut.
    #[error("datagram shorter than {MIN_LEN} bytes")]
    TooShort,
    /// Longer than [`MAX_LEN`].
    #[error("datagram longer than {MAX_LEN} bytes")]
    Oversized,
    /// Bytes 236..240 are not the DHCP magic cookie 99.130.83.99: BOOTP or not DHCP at all.
    #[error("wrong magic cookie")]
    BadMagic,
    /// `op` is not BOOTREQUEST; a server never reads replies.
    #[error("op is not BOOTREQUEST")]
    NotRequest,
    /// `hlen` above 16, or an Ethernet `htype` whose `hlen` is not 6.
    #[error("hardware type and address length disagree")]
    BadHardware,
    /// An option's length byte, or its data, runs past the end of the datagram.
    #[error("option {code} runs past the end of the datagram")]
    TruncatedOption {
        /// The code of the cut option.
        code: u8,
    },
    /// The options area ends without an END option (255).
    #[error("options area has no END option")]
    MissingEnd,
    /// No message type option (53): BOOTP, not DHCP.
    #[error("no DHCP message type option")]
    MissingMessageType,
    /// An option whose value is invalid: a message type or relay agent option given twice, a
    /// message type not 1 byte long, or a value dhcproto cannot read.
    #[error("option {code} is invalid")]
    BadOption {
        /// The code of the invalid option.
        code: u8,
    },
    /// dhcproto refused the fixed header.
    #[error("dhcproto could not decode the header")]
    Malformed,
}

impl DecodeError {
    /// The snake_case name the server counts this error under, e.g. `too_short`.
    pub fn name(&self) -> &'static str {
        match self {
            DecodeError::TooShort => "too_short",
            DecodeError::Oversized => "oversized",
            DecodeError::BadMagic => "bad_magic",
            DecodeError::NotRequest => "not_request",
            DecodeError::BadHardware => "bad_hardware",
            DecodeError::TruncatedOption { .. } => "truncated_option",
            DecodeError::MissingEnd => "missing_end",
            DecodeError::MissingMessageType => "missing_message_type",
            DecodeError::BadOption { .. } => "bad_option",
            DecodeError::Malformed => "malformed",
        }
    }
}

/// A validated DHCP request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The decoded message. Its options are complete: every option of the datagram is in it, with
    /// repeated instances joined (RFC 3396). Under option overload `sname` and `file` are cleared
    /// (see [`decode`]).
    pub message: Message,
    /// The message type from option 53, present exactly once.
    pub message_type: MessageType,
    /// Option 82 exactly as received: code byte, length byte, data. Echo it with [`encode`].
    pub relay_agent: Option<Vec<u8>>,
}

/// Decodes and validates a request datagram (the UDP payload).
///
/// Checks, in order: length within [`MIN_LEN`]..=[`MAX_LEN`], the magic cookie, `op` BOOTREQUEST,
/// `hlen` at most 16 and exactly 6 for Ethernet; then walks the options area: PAD is skipped, END
/// closes it, every other option is code, length, data. An options area that reaches the end of
/// the datagram without END is refused ([`DecodeError::MissingEnd`]) rather than guessed at, since
/// a cut datagram and a sloppy client look the same; bytes after END are ignored.
///
/// Repeated instances of an option are joined into one value (RFC 3396 6), except the message
/// type (53) and the relay agent information (82), which must appear once.
///
/// Option overload (52, RFC 2132 9.3) moves more options into `sname` and `file`. We do not read
/// them there: the server needs nothing a client would put only there, and since those fields
/// then hold options, not names, `sname` and `file` are cleared in the returned message.
pub fn decode(datagram: &[u8]) -> Result<Request, DecodeError> {
    check_header(datagram)?;
    let options = walk_options(datagram)?;

    // dhcproto decodes the fixed header and cookie only; the options come from our own walk.
    let header = datagram.get(..MIN_LEN).ok_or(DecodeError::TooShort)?;
    let mut message = Message::decode(&mut Decoder::new(header)).map_err(|_| DecodeError::Malformed)?;

    let mut decoded = DhcpOptions::new();
    for (&code, data) in &options.values {
        decoded.insert(decode_option(code, data)?);
    }
    if options.values.contains_key(&OPT_OVERLOAD) {
        message.clear_sname();
        message.clear_fname();
    }
    message.set_opts(decoded);

    let message_type = options.message_type.ok_or(DecodeError::MissingMessageType)?;
    Ok(Request { message, message_type: MessageType::from(message_type), relay_agent: options.relay_agent })
}

/// The checks on the fixed header, before any option is read.
fn check_header(datagram: &[u8]) -> Result<(), DecodeError> {
    if datagram.len() < MIN_LEN {
        return Err(DecodeError::TooShort);
    }
    if datagram.len() > MAX_LEN {
        return Err(DecodeError::Oversized);
    }
    // Checked first among the fields: with a wrong cookie the other fields mean nothing to us.
    if datagram.get(COOKIE_AT..MIN_LEN) != Some(&MAGIC_COOKIE[..]) {
        return Err(DecodeError::BadMagic);
    }
    let (Some(&op), Some(&htype), Some(&hlen)) = (datagram.first(), datagram.get(1), datagram.get(2)) else {
        return Err(DecodeError::TooShort);
    };
    if op != OP_BOOTREQUEST {
        return Err(DecodeError::NotRequest);
    }
    // dhcproto slices `chaddr[..hlen]`, so an `hlen` above 16 would panic the server later.
    if hlen > CHADDR_LEN || (htype == HTYPE_ETHERNET && hlen != HLEN_ETHERNET) {
        return Err(DecodeError::BadHardware);
    }
    Ok(())
}

/// What the walk over the options area found.
struct WalkedOptions {
    /// Each option's data, repeated instances joined in order (RFC 3396 6).
    values: BTreeMap<u8, Vec<u8>>,
    /// The value of option 53.
    message_type: Option<u8>,
    /// Option 82 as received: code, length, data.
    relay_agent: Option<Vec<u8>>,
}

/// Walks the options area from the cookie to END (RFC 2132 2), checking every length.
fn walk_options(datagram: &[u8]) -> Result<WalkedOptions, DecodeError> {
    let mut walked = WalkedOptions { values: BTreeMap::new(), message_type: None, relay_agent: None };
    let mut at = MIN_LEN;
    loop {
        let code = *datagram.get(at).ok_or(DecodeError::MissingEnd)?;
        match code {
            OPT_PAD => at += 1,
            OPT_END => return Ok(walked),
            _ => {
                let len = usize::from(*datagram.get(at + 1).ok_or(DecodeError::TruncatedOption { code })?);
                let data = datagram.get(at + 2..at + 2 + len).ok_or(DecodeError::TruncatedOption { code })?;
                match code {
                    OPT_MESSAGE_TYPE => {
                        let ([value], None) = (data, walked.message_type) else {
                            return Err(DecodeError::BadOption { code });
                        };
                        walked.message_type = Some(*value);
                    }
                    OPT_RELAY_AGENT => {
                        if walked.relay_agent.is_some() {
                            return Err(DecodeError::BadOption { code });
                        }
                        // The range was checked just above; `get` keeps that proof local.
                        let raw = datagram.get(at..at + 2 + len).ok_or(DecodeError::TruncatedOption { code })?;
                        walked.relay_agent = Some(raw.to_vec());
                    }
                    _ => {}
                }
                walked.values.entry(code).or_default().extend_from_slice(data);
                at += 2 + len;
            }
        }
    }
}

/// Decodes one option's complete (joined) value with dhcproto.
fn decode_option(code: u8, data: &[u8]) -> Result<DhcpOption, DecodeError> {
    if !dhcproto_accepts_len(code, data.len()) {
        return Err(DecodeError::BadOption { code });
    }
    // Re-split into instances of at most 255 bytes; dhcproto joins adjacent ones (RFC 3396).
    let mut buf = Vec::with_capacity(data.len() + 2 * (data.len() / MAX_OPTION_CHUNK + 1));
    if data.is_empty() {
        buf.extend_from_slice(&[code, 0]);
    }
    for chunk in data.chunks(MAX_OPTION_CHUNK) {
        // `chunks(255)` yields at most 255 bytes, so the length always fits.
        let len = u8::try_from(chunk.len()).map_err(|_| DecodeError::BadOption { code })?;
        buf.extend_from_slice(&[code, len]);
        buf.extend_from_slice(chunk);
    }
    let option = DhcpOption::decode(&mut Decoder::new(&buf)).map_err(|_| DecodeError::BadOption { code })?;
    // dhcproto files the value under the code its variant maps to; a mismatch would misfile it.
    if u8::from(OptionCode::from(&option)) != code {
        return Err(DecodeError::BadOption { code });
    }
    Ok(option)
}

/// Whether dhcproto 0.15 can decode option `code` with `len` data bytes without panicking.
///
/// These decoders `debug_assert!` on the length or compute `len - n`; with any other length a
/// debug build panics and a release build reads garbage.
fn dhcproto_accepts_len(code: u8, len: usize) -> bool {
    match code {
        // Rapid commit (RFC 4039) carries no data.
        80 => len == 0,
        // Client FQDN (RFC 4702 2): flags, two rcodes, then the name.
        81 => len >= 3,
        // Client network interface identifier (RFC 4578 2.2): type, major, minor.
        94 => len == 3,
        // Bulk leasequery status code (RFC 6926 6.2.2): a code byte, then the message.
        151 => len >= 1,
        // Bulk leasequery times (RFC 6926 6.2.3 to 6.2.6): one u32 each.
        152..=155 => len == 4,
        _ => true,
    }
}

/// Why a reply could not be encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// dhcproto refused the message, or the relay agent bytes are not one option 82.
    #[error("cannot encode DHCP reply: {0}")]
    Encode(String),
    /// The encoded reply is longer than [`MAX_LEN`].
    #[error("encoded reply longer than {MAX_LEN} bytes")]
    TooLong,
}

/// Encodes a reply; `relay_agent` (raw option 82 bytes from the request) goes last, before END;
/// pads to [`MIN_REPLY_LEN`].
///
/// Option 82 in `reply`'s own options is dropped: the relay agent gets back only what it sent
/// (RFC 3046 2.2), and dhcproto would re-sort its sub-options. Replies longer than [`MAX_LEN`]
/// are refused; keeping within the client's option 57 size is the caller's choice of options.
pub fn encode(reply: &Message, relay_agent: Option<&[u8]>) -> Result<Vec<u8>, EncodeError> {
    if let Some(raw) = relay_agent {
        check_relay_agent(raw)?;
    }
    let mut out = Vec::with_capacity(MIN_REPLY_LEN);
    let mut encoder = Encoder::new(&mut out);
    let written = if reply.opts().get(OptionCode::RelayAgentInformation).is_some() {
        let mut own = reply.clone();
        own.opts_mut().remove(OptionCode::RelayAgentInformation);
        own.encode(&mut encoder)
    } else {
        reply.encode(&mut encoder)
    };
    written.map_err(|e| EncodeError::Encode(e.to_string()))?;

    // dhcproto ends a non-empty options area with END and writes nothing for an empty one; take
    // END off so option 82 can go after every other option, as RFC 3046 2.1 asks.
    if out.len() > MIN_LEN && out.pop() != Some(OPT_END) {
        return Err(EncodeError::Encode("dhcproto did not close the options with END".to_owned()));
    }
    if let Some(raw) = relay_agent {
        out.extend_from_slice(raw);
    }
    out.push(OPT_END);
    if out.len() > MAX_LEN {
        return Err(EncodeError::TooLong);
    }
    if out.len() < MIN_REPLY_LEN {
        out.resize(MIN_REPLY_LEN, OPT_PAD);
    }
    Ok(out)
}

/// Checks that `raw` is exactly one option 82: code, length, and that many data bytes.
fn check_relay_agent(raw: &[u8]) -> Result<(), EncodeError> {
    match raw {
        [OPT_RELAY_AGENT, len, data @ ..] if usize::from(*len) == data.len() => Ok(()),
        _ => Err(EncodeError::Encode("relay agent bytes are not one option 82".to_owned())),
    }
}

//! The announcement a group's active router sends on every segment it serves, a few times a
//! second (VRRP's advertisement, with the group's lease term in it): who is active, under which
//! term (the etcd revision of its lease key, which grows with every takeover) and lease. Other
//! members learn from it who to yield to and when the active went silent.
//!
//! ```text
//!  Ethernet: dst 03:1b:5d:48:41:00 (a locally administered multicast: bridges flood it, hosts
//!            drop it), src the router's MAC, EtherType 0x88B5 (IEEE 802 local experimental)
//!  payload:  "IPSH" | version 1 | flags (bit 0: resigning) | term u64 | lease u64
//!            | group length u8 | group | name length u8 | name | zero padding to 46 bytes
//! ```

use thiserror::Error;

/// EtherType of announcements (IEEE 802 local experimental 1).
pub const ETHER_TYPE: u16 = 0x88B5;
/// Destination MAC of announcements.
pub const MULTICAST_MAC: [u8; 6] = [0x03, 0x1b, 0x5d, 0x48, 0x41, 0x00];
/// Longest group or router name an announcement carries.
pub const MAX_NAME: usize = 64;

const MAGIC: &[u8; 4] = b"IPSH";
const VERSION: u8 = 1;
const RESIGNING: u8 = 1;
/// Ethernet header length.
const ETH: usize = 14;
/// The fixed part of the payload: magic, version, flags, term, lease.
const FIXED: usize = 4 + 1 + 1 + 8 + 8;
/// The shortest Ethernet payload (frames are padded to 60 bytes without the FCS).
const MIN_PAYLOAD: usize = 46;

/// What an active router says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// The group.
    pub group: String,
    /// The router's name.
    pub name: String,
    /// Its term: the revision at which it took the group's lease.
    pub term: u64,
    /// The lease it holds (a standby that hears it go silent may end the lease at once).
    pub lease: u64,
    /// It is stopping in order: a standby takes over at once.
    pub resigning: bool,
}

/// Why a frame of the announcements' EtherType is not a valid announcement.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum AnnouncementError {
    /// Shorter than its fields say.
    #[error("truncated announcement")]
    Truncated,
    /// Not ours (another protocol on the experimental EtherType) or a version we do not speak.
    #[error("not an ipshadow announcement of version {VERSION}")]
    Foreign,
    /// A name that is not UTF-8.
    #[error("announcement with a name that is not UTF-8")]
    BadName,
    /// A name longer than [`MAX_NAME`] bytes (no member sends one).
    #[error("announcement with a name longer than {MAX_NAME} bytes")]
    NameTooLong,
}

/// Whether `frame` carries the announcements' EtherType (cheap: checked on every frame).
pub fn is_announcement(frame: &[u8]) -> bool {
    frame.len() >= ETH && u16::from_be_bytes([frame[12], frame[13]]) == ETHER_TYPE
}

impl Announcement {
    /// The frame, sent from `source_mac`. Names longer than [`MAX_NAME`] bytes are cut (at a
    /// character boundary).
    pub fn frame(&self, source_mac: [u8; 6]) -> Vec<u8> {
        let mut frame = Vec::with_capacity(ETH + MIN_PAYLOAD + 2 * MAX_NAME);
        frame.extend_from_slice(&MULTICAST_MAC);
        frame.extend_from_slice(&source_mac);
        frame.extend_from_slice(&ETHER_TYPE.to_be_bytes());
        frame.extend_from_slice(MAGIC);
        frame.push(VERSION);
        frame.push(if self.resigning { RESIGNING } else { 0 });
        frame.extend_from_slice(&self.term.to_be_bytes());
        frame.extend_from_slice(&self.lease.to_be_bytes());
        for name in [&self.group, &self.name] {
            let name = cut(name);
            frame.push(name.len() as u8);
            frame.extend_from_slice(name.as_bytes());
        }
        if frame.len() < ETH + MIN_PAYLOAD {
            frame.resize(ETH + MIN_PAYLOAD, 0);
        }
        frame
    }

    /// Parses a frame that [`is_announcement`].
    pub fn parse(frame: &[u8]) -> Result<Self, AnnouncementError> {
        let payload = frame.get(ETH..).ok_or(AnnouncementError::Truncated)?;
        let fixed = payload.get(..FIXED).ok_or(AnnouncementError::Truncated)?;
        if &fixed[..4] != MAGIC || fixed[4] != VERSION {
            return Err(AnnouncementError::Foreign);
        }
        let u64_at = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&fixed[at..at + 8]);
            u64::from_be_bytes(bytes)
        };
        let (term, lease) = (u64_at(6), u64_at(14));
        let mut rest = &payload[FIXED..];
        let mut name = || -> Result<String, AnnouncementError> {
            let (&len, tail) = rest.split_first().ok_or(AnnouncementError::Truncated)?;
            if usize::from(len) > MAX_NAME {
                return Err(AnnouncementError::NameTooLong);
            }
            let bytes = tail.get(..usize::from(len)).ok_or(AnnouncementError::Truncated)?;
            rest = &tail[usize::from(len)..];
            String::from_utf8(bytes.to_vec()).map_err(|_| AnnouncementError::BadName)
        };
        let group = name()?;
        let name = name()?;
        Ok(Self { group, name, term, lease, resigning: fixed[5] & RESIGNING != 0 })
    }
}

/// `name` cut to at most [`MAX_NAME`] bytes at a character boundary.
fn cut(name: &str) -> &str {
    let mut end = name.len().min(MAX_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Announcement {
        Announcement { group: "edge".into(), name: "r2".into(), term: 4711, lease: 0x7a5e_0001, resigning: false }
    }

    #[test]
    fn an_announcement_reads_back_as_sent_and_is_a_minimum_size_frame() {
        let frame = sample().frame([2, 0, 0, 0, 0, 1]);
        assert_eq!(frame.len(), 60);
        assert!(is_announcement(&frame));
        assert_eq!(&frame[..6], &MULTICAST_MAC);
        assert_eq!(Announcement::parse(&frame), Ok(sample()));
        let resigning = Announcement { resigning: true, ..sample() };
        assert_eq!(Announcement::parse(&resigning.frame([0; 6])), Ok(resigning));
    }

    #[test]
    fn long_names_are_cut_at_a_character_boundary() {
        let long = Announcement { group: "é".repeat(40), name: "x".repeat(100), ..sample() };
        let parsed = Announcement::parse(&long.frame([0; 6])).unwrap();
        assert_eq!(parsed.group, "é".repeat(32));
        assert_eq!(parsed.name, "x".repeat(MAX_NAME));
    }

    #[test]
    fn other_protocols_and_short_frames_are_refused() {
        let mut frame = sample().frame([0; 6]);
        frame[ETH] = b'X';
        assert_eq!(Announcement::parse(&frame), Err(AnnouncementError::Foreign));
        let frame = sample().frame([0; 6]);
        assert_eq!(Announcement::parse(&frame[..ETH + 10]), Err(AnnouncementError::Truncated));
        assert!(!is_announcement(&frame[..13]));
        let mut bad = sample().frame([0; 6]);
        bad[ETH + FIXED + 1] = 0xff;
        assert_eq!(Announcement::parse(&bad), Err(AnnouncementError::BadName));
        let mut long = sample().frame([0; 6]);
        long[ETH + FIXED] = MAX_NAME as u8 + 1;
        long.resize(200, b'x');
        assert_eq!(Announcement::parse(&long), Err(AnnouncementError::NameTooLong));
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_are_refused_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Announcement::parse(&bytes);
        }

        #[test]
        fn any_announcement_round_trips(group in "[a-z0-9-]{0,64}", name in "[a-z0-9-]{0,64}", term: u64, lease: u64, resigning: bool) {
            let a = Announcement { group, name, term, lease, resigning };
            prop_assert_eq!(Announcement::parse(&a.frame([2; 6])), Ok(a));
        }
    }
}

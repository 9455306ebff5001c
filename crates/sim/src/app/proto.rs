//! The workload's wire protocol: requests and responses whose every byte is derived from the
//! connection id and the message number, so both ends can check every byte they receive.
//!
//! Request:  `b'Q'`, 0, payload length (u16), sequence (u32), connection id (u32), payload.
//! Response: `b'R'`, 0, payload length (u16), sequence (u32), FNV-1a of the request payload (u32),
//! payload. All integers big-endian.

/// TCP port of the request/response service in the VMs.
pub const TCP_PORT: u16 = 7000;
/// UDP port of the request/response service in the VMs.
pub const UDP_PORT: u16 = 7001;
/// Header length of both messages.
pub const HEADER: usize = 12;

/// Why a message was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtoError {
    /// Not a request/response header.
    BadHeader,
    /// A payload byte differs from the one its header implies.
    BadPayload,
}

/// Byte `i` of the payload of message `seq` on connection `conn`, in direction `salt`.
fn pattern(conn: u32, seq: u32, salt: u32, i: usize) -> u8 {
    let x =
        conn.wrapping_mul(0x9e37_79b1) ^ seq.wrapping_mul(0x85eb_ca6b) ^ salt ^ (i as u32).wrapping_mul(0xc2b2_ae35);
    (x ^ (x >> 15)) as u8
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

/// The request message `seq` of connection `conn` with `len` payload bytes.
pub fn request(conn: u32, seq: u32, len: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER + usize::from(len));
    m.extend_from_slice(&[b'Q', 0]);
    m.extend_from_slice(&len.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&conn.to_be_bytes());
    m.extend((0..usize::from(len)).map(|i| pattern(conn, seq, 0, i)));
    m
}

/// Length of the complete message at the start of `buf`, if it is all there.
pub fn message_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < HEADER {
        return None;
    }
    let len = HEADER + usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    (buf.len() >= len).then_some(len)
}

/// The server's answer to one complete request, after checking every byte of it.
pub fn respond(request: &[u8]) -> Result<Vec<u8>, ProtoError> {
    if request.len() < HEADER || request[0] != b'Q' || request[1] != 0 {
        return Err(ProtoError::BadHeader);
    }
    let len = u16::from_be_bytes([request[2], request[3]]);
    if request.len() != HEADER + usize::from(len) {
        return Err(ProtoError::BadHeader);
    }
    let seq = u32::from_be_bytes([request[4], request[5], request[6], request[7]]);
    let conn = u32::from_be_bytes([request[8], request[9], request[10], request[11]]);
    let payload = &request[HEADER..];
    if payload.iter().enumerate().any(|(i, b)| *b != pattern(conn, seq, 0, i)) {
        return Err(ProtoError::BadPayload);
    }
    // The response is longer than the request for small requests and shorter for large ones,
    // so both directions see segments of many sizes.
    let out_len = (u32::from(len) * 3 / 2 + 40) % 1400;
    let mut m = Vec::with_capacity(HEADER + out_len as usize);
    m.extend_from_slice(&[b'R', 0]);
    m.extend_from_slice(&(out_len as u16).to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&fnv1a(payload).to_be_bytes());
    m.extend((0..out_len as usize).map(|i| pattern(conn, seq, 0x5a5a_5a5a, i)));
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_response_round_trip_and_corruption_is_caught() {
        let req = request(7, 3, 100);
        assert_eq!(message_len(&req), Some(req.len()));
        assert_eq!(message_len(&req[..req.len() - 1]), None);
        let resp = respond(&req).unwrap();
        assert_eq!(message_len(&resp), Some(resp.len()));
        assert_eq!(resp, respond(&request(7, 3, 100)).unwrap(), "deterministic");
        assert_ne!(resp, respond(&request(7, 4, 100)).unwrap());
        let mut bad = req.clone();
        bad[HEADER + 50] ^= 1;
        assert_eq!(respond(&bad), Err(ProtoError::BadPayload));
        bad[0] = b'X';
        assert_eq!(respond(&bad), Err(ProtoError::BadHeader));
    }
}

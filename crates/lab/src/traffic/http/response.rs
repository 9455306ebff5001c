//! An HTTP/1.1 response as the keep-alive workload checks it (RFC 9112): the head parsed once
//! into what the client needs (status, `Content-Length`, `Connection: close`), then the body
//! compared with the bodies the servers serve. Pure functions of the bytes received; nothing here
//! can panic on what a server sends.

/// The longest response head accepted (status line and headers).
pub const MAX_HEAD: usize = 16 * 1024;

/// Why a response is not the one expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BadResponse {
    /// The head is longer than [`MAX_HEAD`] without its blank line.
    HeadTooLong,
    /// The status line is not `HTTP/1.1 <3 digits> ...`.
    StatusLine,
    /// The status is not 200.
    Status(u16),
    /// A header line has no colon, or a header name is empty.
    HeaderLine,
    /// No `Content-Length`, several that differ, or one that is not a number (RFC 9112 6.3:
    /// the workload's servers always send one for a static file).
    ContentLength,
    /// `Transfer-Encoding` is present (a static file is never chunked here).
    TransferEncoding,
    /// The body is none of the bodies served.
    Body,
}

/// A response head that was parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// The head's length in bytes, blank line included.
    pub len: usize,
    /// The body's length.
    pub content_length: u64,
    /// The server said `Connection: close`: it closes after this response (RFC 9112 9.6).
    pub close: bool,
}

/// Parses the head at the start of `buf`: `Ok(None)` while its blank line has not arrived yet.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, BadResponse> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD { Err(BadResponse::HeadTooLong) } else { Ok(None) };
    };
    if end > MAX_HEAD {
        return Err(BadResponse::HeadTooLong);
    }
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| BadResponse::HeaderLine)?;
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    // RFC 9112 4: status-line = HTTP-version SP status-code SP [ reason-phrase ]
    let code = match status.strip_prefix("HTTP/1.1 ").map(|rest| rest.split_at_checked(3)) {
        Some(Some((code, rest)))
            if code.bytes().all(|b| b.is_ascii_digit()) && (rest.is_empty() || rest.starts_with(' ')) =>
        {
            code.parse::<u16>().map_err(|_| BadResponse::StatusLine)?
        }
        _ => return Err(BadResponse::StatusLine),
    };
    if code != 200 {
        return Err(BadResponse::Status(code));
    }
    let mut content_length: Option<u64> = None;
    let mut close = false;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(BadResponse::HeaderLine)?;
        if name.is_empty() || name.ends_with([' ', '\t']) {
            return Err(BadResponse::HeaderLine);
        }
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("content-length") {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(BadResponse::ContentLength);
            }
            let n = value.parse::<u64>().map_err(|_| BadResponse::ContentLength)?;
            if content_length.is_some_and(|m| m != n) {
                return Err(BadResponse::ContentLength);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(BadResponse::TransferEncoding);
        } else if name.eq_ignore_ascii_case("connection") {
            close |= value.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"));
        }
    }
    let content_length = content_length.ok_or(BadResponse::ContentLength)?;
    Ok(Some(Head { len: end + 4, content_length, close }))
}

/// The bodies the servers serve, by the name of the server that serves each (`vm-a`, ...).
#[derive(Clone, Debug, Default)]
pub struct Bodies {
    bodies: Vec<(String, Vec<u8>)>,
}

impl Bodies {
    /// Adds the body server `name` serves; refused when empty or the same as another one (the
    /// report could not say which server answered).
    pub fn add(&mut self, name: &str, body: Vec<u8>) -> Result<(), String> {
        if body.is_empty() {
            return Err(format!("{name}: the body is empty"));
        }
        if let Some((other, _)) = self.bodies.iter().find(|(n, b)| *b == body || n == name) {
            return Err(format!("{name}: the same name or body as {other}"));
        }
        self.bodies.push((name.to_owned(), body));
        Ok(())
    }

    /// Whether a body of `len` bytes may be one of them.
    pub fn length_known(&self, len: u64) -> bool {
        self.bodies.iter().any(|(_, b)| b.len() as u64 == len)
    }

    /// The name of the server whose body `body` is.
    pub fn which(&self, body: &[u8]) -> Result<&str, BadResponse> {
        self.bodies.iter().find(|(_, b)| b == body).map(|(n, _)| n.as_str()).ok_or(BadResponse::Body)
    }

    /// The servers' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.bodies.iter().map(|(n, _)| n.as_str())
    }

    /// The longest body.
    pub fn max_len(&self) -> usize {
        self.bodies.iter().map(|(_, b)| b.len()).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_keep_alive_head_and_a_closing_one() {
        let ok =
            b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\nhello world\n";
        let head = parse_head(ok).unwrap().unwrap();
        assert_eq!(head, Head { len: ok.len() - 12, content_length: 12, close: false });
        let closing = b"HTTP/1.1 200 OK\r\ncontent-length:3\r\nConnection: Keep-Alive, Close\r\n\r\n";
        assert!(parse_head(closing).unwrap().unwrap().close);
        // Not all there yet.
        assert_eq!(parse_head(&ok[..20]), Ok(None));
    }

    #[test]
    fn what_the_workload_refuses() {
        for (bytes, why) in [
            (&b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n"[..], BadResponse::StatusLine),
            (b"HTTP/1.1 2000 OK\r\nContent-Length: 1\r\n\r\n", BadResponse::StatusLine),
            (b"HTTP/1.1 503 Busy\r\nContent-Length: 1\r\n\r\n", BadResponse::Status(503)),
            (b"HTTP/1.1 200 OK\r\n\r\n", BadResponse::ContentLength),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", BadResponse::ContentLength),
            (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", BadResponse::ContentLength),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n", BadResponse::ContentLength),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", BadResponse::TransferEncoding),
            (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", BadResponse::HeaderLine),
            (b"HTTP/1.1 200 OK\r\nContent-Length : 1\r\n\r\n", BadResponse::HeaderLine),
            (b"HTTP/1.1 200 OK\r\n\xff: 1\r\n\r\n", BadResponse::HeaderLine),
        ] {
            assert_eq!(parse_head(bytes), Err(why), "{}", String::from_utf8_lossy(bytes));
        }
        assert_eq!(parse_head(&vec![b'a'; MAX_HEAD + 1]), Err(BadResponse::HeadTooLong));
    }

    #[test]
    fn bodies_tell_which_server_answered() {
        let mut bodies = Bodies::default();
        bodies.add("vm-a", b"served by vm-a\n".to_vec()).unwrap();
        bodies.add("vm-b", b"served by vm-b\n".to_vec()).unwrap();
        assert!(bodies.add("vm-c", b"served by vm-a\n".to_vec()).is_err(), "ambiguous");
        assert!(bodies.add("vm-c", Vec::new()).is_err());
        assert_eq!(bodies.which(b"served by vm-b\n"), Ok("vm-b"));
        assert_eq!(bodies.which(b"served by vm-x\n"), Err(BadResponse::Body));
        assert!(bodies.length_known(15) && !bodies.length_known(16));
        assert_eq!(bodies.names().collect::<Vec<_>>(), ["vm-a", "vm-b"]);
    }
}

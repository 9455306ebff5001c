//! Why a client could not be made, and why a call failed.

use std::path::PathBuf;

use crate::DEFAULT_API;

/// Why [`Api::new`](crate::Api::new) refused its arguments.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The base URL is neither `http://...` nor `https://...`.
    #[error("{url}: the API's URL must start with http:// or https:// (e.g. {DEFAULT_API})")]
    BadUrl {
        /// The URL as given.
        url: String,
    },
    /// The CA file could not be read.
    #[error("reading the CA file {}: {io}", path.display())]
    ReadCaFile {
        /// The file.
        path: PathBuf,
        /// What the system said.
        io: std::io::Error,
    },
    /// The CA file is not PEM.
    #[error("the CA file {}: {cause}", path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        cause: String,
    },
    /// The CA file is PEM without a certificate in it.
    #[error("the CA file {} holds no PEM certificate", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The server answered with an error (the API's `{"error", "message"}` shape).
    #[error("{status} {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The server's message (or what came instead of one), on one line.
        message: String,
    },
    /// No answer: nothing listens there, or the connection broke (after one retry).
    #[error(
        "cannot reach the API at {base} ({cause}): start it with `ipshadow serve`, or point --api / IPSHADOW_API at it"
    )]
    Unreachable {
        /// The API's base URL.
        base: String,
        /// What the connection said.
        cause: String,
    },
    /// The TLS handshake failed: most often a certificate the client does not trust.
    #[error(
        "TLS with the API at {base} failed ({cause}): if a CA of your own signed its certificate, pass \
         --ca-file FILE or set IPSHADOW_CA_FILE"
    )]
    Tls {
        /// The API's base URL.
        base: String,
        /// What TLS said.
        cause: String,
    },
    /// The request could not be sent as asked: a path that is no URI, a header value with a
    /// line break.
    #[error("cannot send that request to {base}: {detail}")]
    Unsendable {
        /// The API's base URL.
        base: String,
        /// What was wrong with the request.
        detail: String,
    },
    /// The server answered something that is not the API's JSON.
    #[error("unexpected answer from {base}: {detail}")]
    Unexpected {
        /// The API's base URL.
        base: String,
        /// What was wrong with it.
        detail: String,
    },
}

/// The [`CallError::Refused`] for an answer with `status` and body `text`; `tokenless` adds how
/// to pass a token to a 401.
pub(crate) fn refused(status: u16, text: &str, tokenless: bool) -> CallError {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        message: String,
    }
    let message = match serde_json::from_str::<ErrorBody>(text) {
        Ok(body) => body.message,
        // Not the API's shape (a proxy, another server): its first line, shortened.
        Err(_) => text.lines().next().unwrap_or("").chars().take(200).collect(),
    };
    let message = if status == 401 && tokenless {
        format!("{message} (no token: pass --token, set IPSHADOW_TOKEN, or run where ipshadow-data/admin-token is)")
    } else {
        message
    };
    // One line whatever the server sent.
    CallError::Refused { status, message: message.replace(['\n', '\r'], " ") }
}

/// The error for a request that got no answer from `base`: TLS's or the connection's.
pub(crate) fn unreachable(base: &str, e: &ureq::Error) -> CallError {
    // rustls' refusals come as Rustls/Tls errors, or as I/O errors of kind InvalidData from the
    // handshake; on plain HTTP the latter is a garbled answer, not TLS.
    let tls = matches!(e, ureq::Error::Rustls(_) | ureq::Error::Tls(_))
        || (base.starts_with("https://")
            && matches!(e, ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData));
    if tls {
        CallError::Tls { base: base.to_owned(), cause: e.to_string() }
    } else {
        CallError::Unreachable { base: base.to_owned(), cause: e.to_string() }
    }
}

/// Whether `e` means the request may not have reached the server, or its answer was lost.
pub(crate) fn is_connection_error(e: &ureq::Error) -> bool {
    use std::io::ErrorKind as K;
    match e {
        ureq::Error::ConnectionFailed | ureq::Error::Timeout(_) => true,
        ureq::Error::Io(io) => matches!(
            io.kind(),
            K::ConnectionRefused
                | K::ConnectionReset
                | K::ConnectionAborted
                | K::BrokenPipe
                | K::UnexpectedEof
                | K::TimedOut
                | K::NotConnected
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_one_line_with_status_and_message() {
        let e = refused(404, r#"{"error":"not_found","message":"vm x not found"}"#, false);
        assert_eq!(e.to_string(), "404 vm x not found");
        assert_eq!(refused(502, "<html>\nbad gateway</html>", false).to_string(), "502 <html>");
        let multiline = refused(422, r#"{"error":"invalid","message":"a\nb"}"#, false);
        assert_eq!(multiline.to_string(), "422 a b");
        assert!(refused(401, "{}", true).to_string().contains("IPSHADOW_TOKEN"));
        assert!(!refused(401, "{}", false).to_string().contains("IPSHADOW_TOKEN"));
        let long = "x".repeat(1000);
        assert!(matches!(refused(500, &long, false), CallError::Refused { message, .. } if message.len() == 200));
    }

    #[test]
    fn connection_errors_are_unreachable_and_handshake_garbage_is_tls_only_on_https() {
        let refused_io = ureq::Error::Io(std::io::ErrorKind::ConnectionRefused.into());
        assert!(is_connection_error(&refused_io) && is_connection_error(&ureq::Error::ConnectionFailed));
        assert!(!is_connection_error(&ureq::Error::BadUri("x".into())));
        let e = unreachable("http://h:1", &refused_io);
        assert!(matches!(e, CallError::Unreachable { ref base, .. } if base == "http://h:1"), "{e}");
        let garbled = || ureq::Error::Io(std::io::ErrorKind::InvalidData.into());
        assert!(matches!(unreachable("https://h:1", &garbled()), CallError::Tls { .. }));
        assert!(matches!(unreachable("http://h:1", &garbled()), CallError::Unreachable { .. }));
    }
}

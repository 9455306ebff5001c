//! The API over HTTP: one bearer token, JSON in and out, the API's error shape turned into one
//! line (`404 vm vm-x not found`), POSTs made retry-safe with an `Idempotency-Key`, and the
//! event stream of a migration as lines to read.

use std::io::{BufRead, BufReader, Read as _};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

/// Where `ipshadow serve` listens by default.
pub const DEFAULT_API: &str = "http://127.0.0.1:7480";

/// How long a request and its answer may take (an event stream excepted).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest silence an event stream may keep: the server sends a comment every 15 s.
const STREAM_SILENCE: Duration = Duration::from_secs(60);

/// The largest answer read (ureq's default, 10 MB, is a few thousand migrations with history).
const MAX_ANSWER: u64 = 256 * 1024 * 1024;

/// Pause before the one retry after a connection error.
const RETRY_AFTER: Duration = Duration::from_millis(300);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The server answered with an error (the API's `{"error", "message"}` shape).
    #[error("{status} {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The server's message (or what came instead of one).
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
    /// The server answered something that is not the API's JSON.
    #[error("unexpected answer from {base}: {detail}")]
    Unexpected {
        /// The API's base URL.
        base: String,
        /// What was wrong with it.
        detail: String,
    },
}

/// A client of one API with one token.
pub struct Api {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
    stream_agent: ureq::Agent,
}

impl Api {
    /// A client of the API at `base` (`http://host:port` or `https://host:port`) sending
    /// `token`, if any. Over https, the server's certificate must chain to a CA in `ca_file` (PEM)
    /// when one is given, else to one of the public roots built in (Mozilla's).
    pub fn new(base: &str, token: Option<String>, ca_file: Option<&Path>) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            anyhow::bail!("{base}: the API's URL must start with http:// or https:// (e.g. {DEFAULT_API})");
        }
        let tls = match ca_file {
            Some(path) => TlsConfig::builder().root_certs(RootCerts::Specific(Arc::new(read_cas(path)?))).build(),
            None => TlsConfig::default(),
        };
        let config = || {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .user_agent("ipshadow-cli")
                .tls_config(tls.clone())
                // A token must never be sent in clear because the server redirected.
                .https_only(base.starts_with("https://"))
        };
        let agent = config().timeout_global(Some(CALL_TIMEOUT)).build().new_agent();
        // A stream is open as long as the migration runs: only silence is limited.
        let stream_agent = config().timeout_per_read(Some(STREAM_SILENCE)).build().new_agent();
        Ok(Self { base, token, agent, stream_agent })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Value, CallError> {
        self.call("GET", path, None)
    }

    /// `POST path` with `body` as JSON (none: an empty body), under a fresh idempotency key that
    /// the one retry reuses: a request that reached the server before the connection broke is
    /// answered again, not done twice.
    pub fn post(&self, path: &str, body: Option<&Value>) -> Result<Value, CallError> {
        self.call("POST", path, body)
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> Result<Value, CallError> {
        self.call("DELETE", path, None)
    }

    /// Opens the server-sent event stream at `path`; the lines as they arrive.
    pub fn stream(&self, path: &str) -> Result<Box<dyn BufRead + Send>, CallError> {
        let response = self.with_retry(|| {
            let request = self.request("GET", path, None).header("accept", "text/event-stream");
            self.stream_agent.run(request.body(Vec::new()).map_err(ureq::Error::Http)?)
        })?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let text = response.into_body().read_to_string().unwrap_or_default();
            return Err(self.refused(status, &text));
        }
        Ok(Box::new(BufReader::new(response.into_body().into_reader())))
    }

    fn request(&self, method: &str, path: &str, key: Option<&str>) -> ureq::http::request::Builder {
        let mut request = ureq::http::Request::builder().method(method).uri(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.header("accept", "application/json")
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, CallError> {
        let key = (method == "POST").then(idempotency_key);
        let bytes = body.map(Value::to_string).unwrap_or_default().into_bytes();
        let mut response = self.with_retry(|| {
            let mut request = self.request(method, path, key.as_deref());
            if body.is_some() {
                request = request.header("content-type", "application/json");
            }
            self.agent.run(request.body(bytes.clone()).map_err(ureq::Error::Http)?)
        })?;
        let status = response.status().as_u16();
        let text = match response.body_mut().with_config().limit(MAX_ANSWER).read_to_string() {
            Ok(text) => text,
            Err(e) if is_connection_error(&e) => return Err(self.unreachable(&e)),
            Err(e) => return Err(self.unexpected(format!("{status} with an unreadable body: {e}"))),
        };
        if !(200..300).contains(&status) {
            return Err(self.refused(status, &text));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| self.unexpected(format!("{status} with a body that is not JSON: {e}")))
    }

    /// Runs `send`, and once more after a connection error (a server restarting, a connection
    /// the server had just closed).
    fn with_retry<T>(&self, send: impl Fn() -> Result<T, ureq::Error>) -> Result<T, CallError> {
        match send() {
            Err(e) if is_connection_error(&e) => {
                std::thread::sleep(RETRY_AFTER);
                send().map_err(|e| self.unreachable(&e))
            }
            result => result.map_err(|e| self.unreachable(&e)),
        }
    }

    fn refused(&self, status: u16, text: &str) -> CallError {
        #[derive(serde::Deserialize)]
        struct ErrorBody {
            message: String,
        }
        let message = match serde_json::from_str::<ErrorBody>(text) {
            Ok(body) => body.message,
            // Not the API's shape (a proxy, another server): its first line, shortened.
            Err(_) => text.lines().next().unwrap_or("").chars().take(200).collect(),
        };
        let message = if status == 401 && self.token.is_none() {
            format!("{message} (no token: pass --token, set IPSHADOW_TOKEN, or run where ipshadow-data/admin-token is)")
        } else {
            message
        };
        // One line whatever the server sent.
        CallError::Refused { status, message: message.replace(['\n', '\r'], " ") }
    }

    fn unreachable(&self, e: &ureq::Error) -> CallError {
        // rustls' refusals come as Rustls/Tls errors, or as I/O errors of kind InvalidData from
        // the handshake; on plain HTTP the latter is a garbled answer, not TLS.
        let tls = matches!(e, ureq::Error::Rustls(_) | ureq::Error::Tls(_))
            || (self.base.starts_with("https://")
                && matches!(e, ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData));
        if tls {
            CallError::Tls { base: self.base.clone(), cause: e.to_string() }
        } else {
            CallError::Unreachable { base: self.base.clone(), cause: e.to_string() }
        }
    }

    fn unexpected(&self, detail: String) -> CallError {
        CallError::Unexpected { base: self.base.clone(), detail }
    }
}

/// The CA certificates in the PEM file at `path` (at least one).
fn read_cas(path: &Path) -> anyhow::Result<Vec<Certificate<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("reading the CA file {}", path.display()))?;
    let mut cas = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let PemItem::Certificate(cert) = item.with_context(|| format!("the CA file {}", path.display()))? {
            cas.push(cert);
        }
    }
    if cas.is_empty() {
        anyhow::bail!("the CA file {} holds no PEM certificate", path.display());
    }
    Ok(cas)
}

/// Whether `e` means the request may not have reached the server, or its answer was lost.
fn is_connection_error(e: &ureq::Error) -> bool {
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

/// A new key: 128 random bits (the time and the process id if the system has no randomness).
fn idempotency_key() -> String {
    let mut bytes = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        bytes = (nanos ^ (u128::from(std::process::id()) << 96)).to_be_bytes();
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("cli-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_one_line_with_status_and_message() {
        let api = Api::new("http://127.0.0.1:1/", None, None).expect("a valid URL");
        assert_eq!(api.base(), "http://127.0.0.1:1");
        let e = api.refused(404, r#"{"error":"not_found","message":"vm x not found"}"#);
        assert_eq!(e.to_string(), "404 vm x not found");
        let e = api.refused(502, "<html>\nbad gateway</html>");
        assert_eq!(e.to_string(), "502 <html>");
        assert!(api.refused(401, "{}").to_string().contains("IPSHADOW_TOKEN"));
        assert!(Api::new("https://x", None, None).is_ok() && Api::new("x:1", None, None).is_err());
        assert!(Api::new("https://x", None, Some(Path::new("/nonexistent/ca.pem"))).is_err());
    }

    #[test]
    fn keys_are_fresh_and_valid_headers() {
        let (a, b) = (idempotency_key(), idempotency_key());
        assert_ne!(a, b);
        assert!(a.len() <= 128 && a.bytes().all(|c| c.is_ascii_graphic()));
    }

    #[test]
    fn nothing_listening_is_unreachable_and_names_the_url() {
        // Port 1 on loopback: nothing listens there on a test machine.
        let api = Api::new("http://127.0.0.1:1", Some("t".into()), None).expect("a valid URL");
        let e = api.get("/v1/vms").expect_err("nothing listens");
        assert!(matches!(e, CallError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains("http://127.0.0.1:1") && e.to_string().contains("ipshadow serve"), "{e}");
    }
}

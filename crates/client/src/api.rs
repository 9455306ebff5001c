//! [`Api`]: one server, one token, one connection pool; the calls the CLI makes (JSON, retried
//! once, refusals as errors) and the ones a test makes (exactly what it asks, any status).

use std::io::{BufRead, BufReader, Read as _};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

use crate::error::{CallError, SetupError, is_connection_error, refused, unreachable};
use crate::request::{Auth, Reply, Request, Streaming};

/// Where `ipshadow serve` listens by default.
pub const DEFAULT_API: &str = "http://127.0.0.1:7480";

/// How long a request and its answer may take by default (an event stream excepted).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest silence an event stream may keep: the server sends a comment every 15 s.
const STREAM_SILENCE: Duration = Duration::from_secs(60);

/// The largest answer read (ureq's default, 10 MB, is a few thousand migrations with history).
const MAX_ANSWER: u64 = 256 * 1024 * 1024;

/// Pause before the one retry after a connection error.
const RETRY_AFTER: Duration = Duration::from_millis(300);

/// A client of one API with one token (cheap to clone: clones share their connections).
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    token: Option<String>,
    tls: TlsConfig,
    agent: ureq::Agent,
    stream_agent: ureq::Agent,
}

impl Api {
    /// A client of the API at `base` (`http://host:port` or `https://host:port`) sending
    /// `token`, if any. Over https, the server's certificate must chain to a CA in `ca_file` (PEM)
    /// when one is given, else to one of the public roots built in (Mozilla's).
    pub fn new(base: &str, token: Option<String>, ca_file: Option<&Path>) -> Result<Self, SetupError> {
        let base = base.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(SetupError::BadUrl { url: base });
        }
        let tls = match ca_file {
            Some(path) => TlsConfig::builder().root_certs(RootCerts::Specific(Arc::new(read_cas(path)?))).build(),
            None => TlsConfig::default(),
        };
        let agent = agent(&base, &tls, Some(CALL_TIMEOUT), None);
        // A stream is open as long as the migration runs: only silence is limited.
        let stream_agent = agent_for_streams(&base, &tls);
        Ok(Self { base, token, tls, agent, stream_agent })
    }

    /// The same client with calls (not streams) limited to `timeout` from start to answer,
    /// instead of 30 s.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.agent = agent(&self.base, &self.tls, Some(timeout), None);
        self
    }

    /// The base URL (without a trailing `/`).
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

    /// Opens the server-sent event stream at `path` (retried once after a connection error);
    /// its lines as they arrive, or [`CallError::Refused`] for an answer other than 2xx.
    pub fn stream(&self, path: &str) -> Result<Box<dyn BufRead + Send>, CallError> {
        let request = Request::get(path).header("accept", "text/event-stream");
        let response = self.with_retry(|| self.run(&self.stream_agent, &request))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let text = response.into_body().read_to_string().unwrap_or_default();
            return Err(refused(status, &text, self.token.is_none()));
        }
        Ok(Box::new(BufReader::new(response.into_body().into_reader())))
    }

    /// Sends `request` once, as built, and reads its reply whatever the status: only a request
    /// that cannot be sent, no answer or an unreadable one is an error.
    pub fn send(&self, request: &Request) -> Result<Reply, CallError> {
        let mut response = self.run(&self.agent, request).map_err(|e| self.failed(e))?;
        let (status, headers) = (response.status().as_u16(), headers(&response));
        let bytes = response.body_mut().with_config().limit(MAX_ANSWER).read_to_vec().map_err(|e| {
            if is_connection_error(&e) {
                unreachable(&self.base, &e)
            } else {
                self.unexpected(format!("{status} with an unreadable body: {e}"))
            }
        })?;
        Ok(Reply { status, headers, text: String::from_utf8_lossy(&bytes).into_owned() })
    }

    /// Sends `request` once, as built, and returns the response with its body unread, whatever
    /// the status (`Accept: text/event-stream` unless the request sets `Accept`): for event
    /// streams, which stay open as long as their migration runs.
    pub fn open(&self, request: &Request) -> Result<Streaming, CallError> {
        let request = if request.has_header("accept") {
            request.clone()
        } else {
            request.clone().header("accept", "text/event-stream")
        };
        let response = self.run(&self.stream_agent, &request).map_err(|e| self.failed(e))?;
        let (status, headers) = (response.status().as_u16(), headers(&response));
        Ok(Streaming { status, headers, body: Box::new(BufReader::new(response.into_body().into_reader())) })
    }

    /// A [`CallError::Unexpected`] from this API: a reply of another shape than the caller's.
    pub fn unexpected(&self, detail: String) -> CallError {
        CallError::Unexpected { base: self.base.clone(), detail }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, CallError> {
        let mut request = Request::new(method, path);
        if method == "POST" {
            request = request.idempotency_key(&idempotency_key());
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let mut response = self.with_retry(|| self.run(&self.agent, &request))?;
        let status = response.status().as_u16();
        let text = match response.body_mut().with_config().limit(MAX_ANSWER).read_to_string() {
            Ok(text) => text,
            Err(e) if is_connection_error(&e) => return Err(unreachable(&self.base, &e)),
            Err(e) => return Err(self.unexpected(format!("{status} with an unreadable body: {e}"))),
        };
        if !(200..300).contains(&status) {
            return Err(refused(status, &text, self.token.is_none()));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| self.unexpected(format!("{status} with a body that is not JSON: {e}")))
    }

    /// Sends `request` through `agent`.
    fn run(&self, agent: &ureq::Agent, request: &Request) -> Result<ureq::http::Response<ureq::Body>, Failure> {
        let mut builder =
            ureq::http::Request::builder().method(request.method.as_str()).uri(url(&self.base, &request.path));
        match (&request.auth, &self.token) {
            (Auth::Client, Some(token)) => builder = builder.header("authorization", format!("Bearer {token}")),
            (Auth::Header(value), _) => builder = builder.header("authorization", value.as_str()),
            (Auth::Client, None) | (Auth::Without, _) => {}
        }
        if !request.has_header("accept") {
            builder = builder.header("accept", "application/json");
        }
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let built = builder.body(request.body.clone()).map_err(|e| Failure::Build(e.to_string()))?;
        agent.run(built).map_err(Failure::Call)
    }

    /// Runs `send`, and once more after a connection error (a server restarting, a connection
    /// the server had just closed).
    fn with_retry<T>(&self, send: impl Fn() -> Result<T, Failure>) -> Result<T, CallError> {
        match send() {
            Err(Failure::Call(e)) if is_connection_error(&e) => {
                std::thread::sleep(RETRY_AFTER);
                send().map_err(|e| self.failed(e))
            }
            result => result.map_err(|e| self.failed(e)),
        }
    }

    fn failed(&self, failure: Failure) -> CallError {
        match failure {
            Failure::Build(detail) => CallError::Unsendable { base: self.base.clone(), detail },
            Failure::Call(e) => unreachable(&self.base, &e),
        }
    }
}

/// Why a request got no response.
enum Failure {
    /// It could not be built (a path that is no URI, a header value with a line break).
    Build(String),
    /// ureq's error: the connection, TLS, a timeout.
    Call(ureq::Error),
}

/// `path` under `base`: exactly one `/` between them; an empty path is `base` itself (a client
/// whose base is a whole URL, such as another service's health check).
fn url(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    match path {
        "" => base.to_owned(),
        _ if path.starts_with('/') => format!("{base}{path}"),
        _ => format!("{base}/{path}"),
    }
}

/// An agent for `base`: every status an answer, no redirect to plain HTTP from https.
fn agent(base: &str, tls: &TlsConfig, global: Option<Duration>, per_read: Option<Duration>) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .user_agent(concat!("ipshadow-client/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls.clone())
        // A token must never be sent in clear because the server redirected.
        .https_only(base.starts_with("https://"))
        .timeout_global(global)
        .timeout_per_read(per_read)
        .build()
        .new_agent()
}

fn agent_for_streams(base: &str, tls: &TlsConfig) -> ureq::Agent {
    agent(base, tls, None, Some(STREAM_SILENCE))
}

/// The headers of `response`, names in lower case.
fn headers<B>(response: &ureq::http::Response<B>) -> Vec<(String, String)> {
    let value = |v: &ureq::http::HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
    response.headers().iter().map(|(name, v)| (name.as_str().to_owned(), value(v))).collect()
}

/// The CA certificates in the PEM file at `path` (at least one).
fn read_cas(path: &Path) -> Result<Vec<Certificate<'static>>, SetupError> {
    let pem = std::fs::read(path).map_err(|io| SetupError::ReadCaFile { path: path.to_owned(), io })?;
    let mut cas = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        let item = item.map_err(|e| SetupError::BadPem { path: path.to_owned(), cause: e.to_string() })?;
        if let PemItem::Certificate(cert) = item {
            cas.push(cert);
        }
    }
    if cas.is_empty() {
        return Err(SetupError::NoCertificate { path: path.to_owned() });
    }
    Ok(cas)
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
    fn urls_must_be_http_and_ca_files_must_hold_certificates() {
        let api = Api::new("http://127.0.0.1:1/", None, None).expect("a valid URL");
        assert_eq!(api.base(), "http://127.0.0.1:1");
        assert!(Api::new("https://x", None, None).is_ok());
        assert!(matches!(Api::new("x:1", None, None), Err(SetupError::BadUrl { .. })));
        let missing = Api::new("https://x", None, Some(Path::new("/nonexistent/ca.pem")));
        assert!(matches!(missing, Err(SetupError::ReadCaFile { .. })));
        let empty = std::env::temp_dir().join(format!("ipshadow-client-empty-ca-{}", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").expect("a temporary file");
        let result = Api::new("https://x", None, Some(&empty));
        let _ = std::fs::remove_file(&empty);
        assert!(matches!(result, Err(SetupError::NoCertificate { .. })), "{result:?}");
    }

    #[test]
    fn paths_join_the_base_with_one_slash() {
        assert_eq!(url("http://h:1", "/v1/vms"), "http://h:1/v1/vms");
        assert_eq!(url("http://h:1/", "v1/vms"), "http://h:1/v1/vms");
        assert_eq!(url("http://h:1", "/"), "http://h:1/");
        assert_eq!(url("http://h:2379/health/", ""), "http://h:2379/health");
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
        let e = api.send(&Request::get("/healthz")).expect_err("nothing listens");
        assert!(matches!(e, CallError::Unreachable { .. }), "{e}");
    }

    #[test]
    fn a_request_that_is_no_http_is_unsendable_not_unreachable() {
        let api = Api::new("http://127.0.0.1:1", None, None).expect("a valid URL");
        let e = api.send(&Request::get("/v1/vms/a b")).expect_err("a space in a URI");
        assert!(matches!(e, CallError::Unsendable { .. }), "{e}");
        let e = api.send(&Request::get("/").header("x-bad", "a\nb")).expect_err("a line break in a header");
        assert!(matches!(e, CallError::Unsendable { .. }), "{e}");
    }
}

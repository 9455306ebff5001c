//! A request as a caller writes it, and the reply as it came, whatever its status.

use std::io::BufRead;
use std::io::Read as _;

use serde_json::Value;

use crate::sse::Events;

/// Whose token a [`Request`] carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Auth {
    /// The client's own (none if it has none).
    Client,
    /// None, even if the client has one.
    Without,
    /// This `Authorization` value, as is.
    Header(String),
}

/// One HTTP request to the API, sent exactly as built by [`Api::send`](crate::Api::send) or
/// [`Api::open`](crate::Api::open): no idempotency key, no retry, nothing added but the token
/// and `Accept: application/json` (unless set here).
#[derive(Debug, Clone)]
pub struct Request {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) auth: Auth,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Request {
    /// `method path`; `path` (`/v1/vms`) is appended to the client's base URL (empty: the base
    /// URL itself).
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.to_owned(),
            path: path.to_owned(),
            auth: Auth::Client,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// `GET path`.
    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    /// `POST path` (an empty body until one is set).
    pub fn post(path: &str) -> Self {
        Self::new("POST", path)
    }

    /// `DELETE path`.
    pub fn delete(path: &str) -> Self {
        Self::new("DELETE", path)
    }

    /// `body` as JSON, with `Content-Type: application/json`.
    #[must_use]
    pub fn json(self, body: &Value) -> Self {
        self.body(Some("application/json"), body.to_string())
    }

    /// `body` as is (malformed JSON too), with `content_type` if any (none: no `Content-Type`).
    #[must_use]
    pub fn body(mut self, content_type: Option<&str>, body: impl Into<Vec<u8>>) -> Self {
        if let Some(content_type) = content_type {
            self = self.header("content-type", content_type);
        }
        self.body = body.into();
        self
    }

    /// `Authorization: Bearer token` instead of the client's token.
    #[must_use]
    pub fn bearer(self, token: &str) -> Self {
        self.authorization(&format!("Bearer {token}"))
    }

    /// `Authorization: value` as is (another scheme, a malformed one) instead of the client's
    /// token.
    #[must_use]
    pub fn authorization(mut self, value: &str) -> Self {
        self.auth = Auth::Header(value.to_owned());
        self
    }

    /// No `Authorization` header, even if the client has a token.
    #[must_use]
    pub fn without_token(mut self) -> Self {
        self.auth = Auth::Without;
        self
    }

    /// `Idempotency-Key: key`.
    #[must_use]
    pub fn idempotency_key(self, key: &str) -> Self {
        self.header("idempotency-key", key)
    }

    /// Any other header (a later one of the same name is sent too).
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// Whether a header `name` is set here.
    pub(crate) fn has_header(&self, name: &str) -> bool {
        self.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    }
}

/// A response, whatever its status, with its body read.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The headers, names in lower case, values that are not UTF-8 made so lossily.
    pub headers: Vec<(String, String)>,
    /// The body as sent (made UTF-8 lossily).
    pub text: String,
}

impl Reply {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as JSON (`null` when empty).
    pub fn json(&self) -> Result<Value, serde_json::Error> {
        if self.text.trim().is_empty() { Ok(Value::Null) } else { serde_json::from_str(&self.text) }
    }
}

/// A response whose body is still to be read as it arrives: an event stream.
pub struct Streaming {
    /// The HTTP status.
    pub status: u16,
    /// The headers, as in [`Reply::headers`].
    pub headers: Vec<(String, String)>,
    /// The body's lines as the server sends them.
    pub body: Box<dyn BufRead + Send>,
}

impl Streaming {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The body read to its end as text: a refusal's JSON (on a stream still open, this waits
    /// for its end).
    pub fn text(mut self) -> std::io::Result<String> {
        let mut text = String::new();
        self.body.read_to_string(&mut text)?;
        Ok(text)
    }

    /// The body read as server-sent events.
    pub fn events(self) -> Events<Box<dyn BufRead + Send>> {
        Events::new(self.body)
    }
}

impl std::fmt::Debug for Streaming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streaming")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_carries_what_it_was_given() {
        let r = Request::post("/v1/vms").json(&serde_json::json!({"id": "vm-a"})).idempotency_key("k").bearer("t");
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/v1/vms"));
        assert_eq!(r.auth, Auth::Header("Bearer t".into()));
        assert!(r.has_header("Content-Type") && r.has_header("idempotency-key"));
        assert_eq!(r.body, br#"{"id":"vm-a"}"#);
        let raw = Request::new("PUT", "/x").body(None, "{\"to\": ").without_token();
        assert!(!raw.has_header("content-type") && raw.auth == Auth::Without);
    }

    #[test]
    fn a_reply_reads_headers_in_any_case_and_an_empty_body_as_null() {
        let reply = Reply { status: 204, headers: vec![("location".into(), "/v1/x".into())], text: String::new() };
        assert_eq!(reply.header("Location"), Some("/v1/x"));
        assert_eq!(reply.header("www-authenticate"), None);
        assert!(reply.is_success());
        assert_eq!(reply.json().ok(), Some(Value::Null));
        let garbled = Reply { status: 502, headers: Vec::new(), text: "<html>".into() };
        assert!(!garbled.is_success() && garbled.json().is_err());
    }
}

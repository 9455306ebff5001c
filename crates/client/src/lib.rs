//! A client of ipshadow's REST API, used by the `ipshadow` CLI and by the tests that call the API
//! over HTTP.
//!
//! One [`Api`] talks to one server (`http://` or `https://`, with a CA file of its own or the
//! public roots) with one bearer token, if any:
//!
//! - [`Api::get`], [`Api::post`], [`Api::delete`]: JSON in and out; an answer other than 2xx is
//!   [`CallError::Refused`] with the API's message on one line; a POST carries a fresh
//!   `Idempotency-Key` that the one retry after a connection error reuses;
//! - [`Api::send`]: exactly the [`Request`] given (any method, token, headers, bytes), its
//!   [`Reply`] whatever the status: what a test asserting on refusals needs;
//! - [`Api::stream`] and [`Api::open`]: a server-sent event stream, whose lines [`sse::Events`]
//!   reads as events.

mod api;
mod error;
mod request;
pub mod sse;

pub use api::{Api, DEFAULT_API};
pub use error::{CallError, SetupError};
pub use request::{Reply, Request, Streaming};

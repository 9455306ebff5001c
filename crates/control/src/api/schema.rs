//! The OpenAPI side of the API's types, and the parts of the document every operation shares.
//!
//! - Mirrors of the core crate's types that travel in the API (strategy, mode, affinity, ramp,
//!   congestion-control parameters): the core crate knows nothing of OpenAPI, so these describe
//!   the same JSON; the tests below check that every value of the real types reads back through
//!   its mirror, so a change in the core crate that the document does not follow fails here.
//! - The patterns of the identifiers the inventory accepts ([`ID_PATTERN`], [`MAC_PATTERN`]), so
//!   that the document refuses what the server refuses.
//! - [`SharedResponses`]: what a handler's `#[utoipa::path]` cannot forget because it is added to
//!   every operation in one place: 401 and 500 on every authenticated operation, the
//!   `Idempotency-Key` header (and the 400 and 422 it can cause) on every POST, 400 and 422 on
//!   every request body, 400 and 404 on every path with a parameter.

use std::borrow::Cow;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type,
};
use utoipa::openapi::{Content, Ref, RefOr, Required, Response, Schema};
use utoipa::{PartialSchema, ToSchema};

/// What the inventory accepts as a VM id, a tenant or a segment (`check_id`): 1-64 letters,
/// digits, `-`, `_`, `.`.
pub const ID_PATTERN: &str = "^[A-Za-z0-9._-]{1,64}$";

/// What the inventory accepts as a MAC address (`normalise_mac`): six pairs of hex digits
/// separated by `:` or by `-`, or twelve hex digits, in either case.
pub const MAC_PATTERN: &str =
    "^([0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}|[0-9A-Fa-f]{2}(-[0-9A-Fa-f]{2}){5}|[0-9A-Fa-f]{12})$";

/// What the idempotency layer accepts as a key: 1-128 visible ASCII characters.
pub const IDEMPOTENCY_KEY_PATTERN: &str = "^[!-~]{1,128}$";

/// How inbound traffic is divided: `flow` (what ipshadow does), `packet` (the seed's literal
/// per-packet split, to show why it breaks TCP), `instant` (the classic move).
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = Strategy)]
pub enum StrategySchema {
    /// Per flow.
    Flow,
    /// Per packet.
    Packet,
    /// Everything at once.
    Instant,
}

/// Whether B runs its own stack (`independent`) or is a state-synchronised copy of A (`replica`).
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = Mode)]
pub enum ModeSchema {
    /// B independent.
    Independent,
    /// B a replica of A.
    Replica,
}

/// What a split decision pins: each `flow`, or every flow of a `client` address.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = Affinity)]
pub enum AffinitySchema {
    /// Per flow.
    Flow,
    /// Per client address.
    Client,
}

/// How the split rises once B's lease is bound (`Ramp` in the document).
///
/// Its schema is written by hand ([`PartialSchema`] below): the derive cannot mark the variants
/// of an internally tagged enum as closed (`additionalProperties: false`), which the core type
/// is (`deny_unknown_fields`).
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RampSchema {
    /// Rises continuously from 0.
    Linear {
        /// Percentage points per second (positive).
        pct_per_sec: f64,
    },
    /// Holds each step's percentage for its duration; the last holds until cut-over.
    Steps {
        /// The steps; percentages must not decrease.
        steps: Vec<RampStepSchema>,
    },
}

impl PartialSchema for RampSchema {
    fn schema() -> RefOr<Schema> {
        let kind = |name: &str| ObjectBuilder::new().schema_type(Type::String).enum_values(Some([name.to_owned()]));
        let linear = ObjectBuilder::new()
            .description(Some("Rises continuously from 0."))
            .property("kind", kind("linear"))
            .required("kind")
            .property(
                "pct_per_sec",
                ObjectBuilder::new()
                    .schema_type(Type::Number)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Double)))
                    .exclusive_minimum(Some(0.0))
                    .description(Some("Percentage points per second (positive).")),
            )
            .required("pct_per_sec")
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        let steps = ObjectBuilder::new()
            .description(Some("Holds each step's percentage for its duration; the last holds until cut-over."))
            .property("kind", kind("steps"))
            .required("kind")
            .property(
                "steps",
                ArrayBuilder::new()
                    .items(Ref::from_schema_name(RampStepSchema::name()))
                    .min_items(Some(1))
                    .description(Some("The steps, at least one; percentages must not decrease.")),
            )
            .required("steps")
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        OneOfBuilder::new()
            .item(linear)
            .item(steps)
            .description(Some("How the split rises once B's lease is bound."))
            .into()
    }
}

impl ToSchema for RampSchema {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Ramp")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((RampStepSchema::name().into_owned(), RampStepSchema::schema()));
    }
}

/// One step of a stepped ramp.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RampStep)]
pub struct RampStepSchema {
    /// Split during this step, percent.
    #[schema(minimum = 0, maximum = 100)]
    pub pct: f64,
    /// How long the step lasts, milliseconds (above 0).
    #[schema(minimum = 1)]
    pub hold_ms: u64,
}

/// The seed's `congestion_control_parameters`: AIMD on the split, driven by trouble signals
/// from B that the router measures itself.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CongestionControlParameters)]
pub struct CongestionControlParametersSchema {
    /// Additive increase of the congestion window per healthy interval, percentage points.
    #[schema(exclusive_minimum = 0, maximum = 100)]
    pub additive_increase_pct: f64,
    /// Length of a measurement interval, milliseconds.
    #[schema(minimum = 10)]
    pub interval_ms: u64,
    /// Factor applied to the split on trouble (0.5 halves it).
    #[schema(exclusive_minimum = 0, exclusive_maximum = 1)]
    pub multiplicative_decrease: f64,
    /// The split never falls below this by congestion control, percent.
    #[schema(minimum = 0, maximum = 100)]
    pub floor_pct: f64,
    /// A SYN to B retransmitted at least this long after the first is unanswered, milliseconds.
    pub syn_timeout_ms: u64,
    /// RSTs from B on its own flows tolerated per interval.
    pub max_resets_per_interval: u32,
    /// Conflicting replies from B tolerated per interval.
    pub max_conflicts_per_interval: u32,
    /// Unanswered SYNs to B tolerated per interval.
    pub max_unanswered_syns_per_interval: u32,
    /// Share of inbound data segments to B that may be retransmissions before it is trouble.
    #[schema(minimum = 0, maximum = 1)]
    pub max_retransmit_ratio: f64,
    /// Fewest data segments to B in an interval before the retransmission ratio is judged.
    pub min_segments_for_ratio: u32,
    /// B's handshake or first-byte time above this multiple of A's median (plus the slack) is a
    /// slow answer (application-aware health).
    #[schema(minimum = 1)]
    pub max_answer_ratio: f64,
    /// Added to that limit, milliseconds.
    pub answer_slack_ms: u64,
    /// A's answers measured before B is compared with them.
    pub min_answer_samples: u32,
    /// Slow answers from B tolerated per interval.
    pub max_slow_answers_per_interval: u32,
    /// Intervals of trouble in a row after which a rollback is recommended; 0 never.
    pub rollback_after_intervals: u32,
}

/// A histogram summed up: count, median, 90th percentile (`Quantiles` in the document).
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Quantiles)]
pub struct QuantilesSchema {
    /// Values recorded.
    pub count: u64,
    /// Median, milliseconds (null: none recorded).
    pub p50_ms: Option<f64>,
    /// 90th percentile, milliseconds (null: none recorded).
    pub p90_ms: Option<f64>,
}

/// One VM's measurements (`SidePatterns` in the document).
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SidePatterns)]
pub struct SidePatternsSchema {
    /// TCP flows open now.
    pub open: u32,
    /// Of those, first seen mid-stream (open before the measurement began, or relearned).
    pub open_unknown_start: u32,
    /// Of those, idle: everything either side sent was acknowledged.
    pub idle: u32,
    /// Age of the oldest open flow, milliseconds (null: none open).
    pub oldest_open_ms: Option<u64>,
    /// Client SYN to this VM's SYN-ACK.
    pub handshake_ms: QuantilesSchema,
    /// A client's request to this VM's first byte of the answer.
    pub first_byte_ms: QuantilesSchema,
    /// RSTs this VM sent on its own flows.
    pub resets: u64,
    /// SYNs a client had to send again because this VM did not answer.
    pub unanswered_syns: u64,
}

/// What the router measured for a shadowed address since the migration was requested
/// (`Patterns` in the document; the router's `PatternsReport`).
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Patterns)]
pub struct PatternsSchema {
    /// How long the router has measured, milliseconds.
    pub measured_for_ms: u64,
    /// New inbound TCP flows since then.
    pub arrivals: u64,
    /// New inbound TCP flows per second, over the last 10 s.
    pub arrival_rate_per_s: f64,
    /// Lifetimes of ended flows whose start the router saw.
    pub lifetimes_ms: QuantilesSchema,
    /// VM A.
    pub source: SidePatternsSchema,
    /// VM B.
    pub destination: SidePatternsSchema,
    /// B compared with A (application-aware health).
    pub canary: CanarySchema,
}

/// B's answers compared with A's on the same address, like a canary analysis (`Canary` in the
/// document; the router's `CanaryReport`).
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Canary)]
pub struct CanarySchema {
    /// B's handshakes slower than this are slow (A's median x ratio + slack), milliseconds;
    /// absent until A has enough samples.
    pub handshake_limit_ms: Option<u64>,
    /// The same for the first byte of an answer, milliseconds.
    pub first_byte_limit_ms: Option<u64>,
    /// B's slow answers so far.
    pub slow_answers: u64,
    /// Intervals in a row judged trouble for B, as of the last one.
    pub troubled_intervals: u32,
    /// B stayed in trouble long enough that a rollback is recommended.
    pub rollback_recommended: bool,
}

/// How lifetimes past the longest observation are extrapolated (`Tail` in the document):
/// `none` (too few long flows ended: no end in sight), `exponential` (every flow observed ended:
/// an infinite rate), or the best fit by Schwarz's criterion of `weibull` (shape 1: a constant
/// hazard), `log_normal` and `lomax` (a power-law tail), each after a delay, and `pareto` (a
/// power law from the delay on: Pareto I).
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
#[schema(as = Tail)]
pub enum TailSchema {
    /// No end in sight.
    None,
    /// Constant hazard.
    Exponential {
        /// Hazard rate per second (null: infinite, every flow ended within the horizon).
        rate_per_s: Option<f64>,
    },
    /// Power law S(t) ∝ t^-alpha (a Pareto I fit).
    Pareto {
        /// Tail index.
        alpha: f64,
    },
    /// S(t) = exp(-((t - delay)/scale)^shape) past the delay.
    Weibull {
        /// Shape k (above 1: a rising hazard).
        shape: f64,
        /// Scale, seconds.
        scale_s: f64,
        /// Delay before which nothing ends, seconds.
        delay_s: f64,
    },
    /// ln(t - delay) normal past the delay.
    LogNormal {
        /// Median of t - delay, seconds.
        median_s: f64,
        /// Deviation of its logarithm.
        sigma: f64,
        /// Delay before which nothing ends, seconds.
        delay_s: f64,
    },
    /// S(t) = (1 + (t - delay)/scale)^-alpha past the delay (Pareto type II; Pareto I when the
    /// scale is the delay).
    Lomax {
        /// Tail index.
        alpha: f64,
        /// Scale, seconds.
        scale_s: f64,
        /// Delay before which nothing ends, seconds.
        delay_s: f64,
    },
}

/// When A's open flows will have ended (`DrainForecast` in the document): a life-table
/// (Kaplan-Meier) estimate of flow lifetimes with censoring, a fitted tail past the longest
/// observation, and the residual life of each open flow.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = DrainForecast)]
pub struct DrainForecastSchema {
    /// A's open flows now.
    pub open: u64,
    /// Median time from the report until the last of them has ended, milliseconds (null: not
    /// foreseeable within 30 days, nothing has been seen to end).
    pub p50_ms: Option<f64>,
    /// 90th percentile of the same, milliseconds (null: not foreseeable).
    pub p90_ms: Option<f64>,
    /// Flows expected still open at the deadline.
    pub expected_open_at_deadline: Option<f64>,
    /// The longest lifetime or age observed, milliseconds: past it the forecast rests on the tail.
    pub horizon_ms: f64,
    /// The tail fitted past the horizon (the lifetimes', or the cohort's when they have none).
    pub tail: TailSchema,
    /// Flows whose lifetime (ended) or age (open) the estimate rests on.
    pub observations: u64,
}

/// One server-sent event of `GET /v1/migrations/{id}/events` (`MigrationStreamEvent` in the
/// document): `event: migration` with the store revision as `id` and the whole migration as JSON
/// `data`, or a last `event: error` with the error shape as JSON `data`. A `text/event-stream`
/// response's schema describes each event (OpenAPI 3.2's `itemSchema`), with `contentSchema` for
/// what `data` holds.
pub struct MigrationStreamEventSchema;

impl PartialSchema for MigrationStreamEventSchema {
    fn schema() -> RefOr<Schema> {
        let event = |name: &str, description: &str, id: bool, data: &str| {
            let mut object = ObjectBuilder::new()
                .description(Some(description))
                .property("event", ObjectBuilder::new().schema_type(Type::String).enum_values(Some([name.to_owned()])))
                .required("event")
                .property("data", json_of(data))
                .required("data");
            if id {
                let revision = ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some("^[0-9]+$"))
                    .description(Some("The store revision of this version of the migration."));
                object = object.property("id", revision).required("id");
            }
            object
        };
        OneOfBuilder::new()
            .item(event("migration", "The migration as it is now (first) or after a change.", true, "Migration"))
            .item(event(
                "observation",
                "The router's newer measurements and drain forecast for the migration's address (at most one a \
                 second, while it is shadowed).",
                false,
                "Observation",
            ))
            .item(event("error", "The record cannot be read any more; the stream ends.", false, "ErrorBody"))
            .description(Some("One server-sent event of a migration's stream."))
            .into()
    }
}

impl ToSchema for MigrationStreamEventSchema {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("MigrationStreamEvent")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        // The `data` of an `observation` event refers to it: the document must hold it even if
        // no operation's body names it.
        schemas.push((
            crate::api::observed::Observation::name().into_owned(),
            crate::api::observed::Observation::schema(),
        ));
        <crate::api::observed::Observation as ToSchema>::schemas(schemas);
    }
}

/// A string holding JSON of the component `schema` (JSON Schema's `contentMediaType` and
/// `contentSchema`; utoipa has no field for the latter, so it rides in the extensions, which are
/// written as they are).
fn json_of(schema: &str) -> ObjectBuilder {
    let mut keywords = utoipa::openapi::extensions::Extensions::default();
    keywords
        .insert("contentSchema".to_owned(), serde_json::json!({ "$ref": format!("#/components/schemas/{schema}") }));
    ObjectBuilder::new().schema_type(Type::String).content_media_type("application/json").extensions(Some(keywords))
}

/// The machine-readable `error` of an [`ErrorBody`](super::ErrorBody).
#[derive(Serialize, Deserialize, ToSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
#[schema(as = ErrorCode)]
pub enum ErrorCodeSchema {
    /// 400: the request could not be read (malformed JSON, a body not declared as JSON, a bad
    /// path parameter or `Idempotency-Key`).
    BadRequest,
    /// 401: no bearer token, or one nobody issued.
    Unauthorized,
    /// 403: the caller may not do this.
    Forbidden,
    /// 403: the id, MAC or address is not this tenant's to claim: an address outside the
    /// prefixes the admin gave it, or an id, MAC or address another tenant's record has (the two
    /// are not told apart, and the record is not shown).
    NotAvailable,
    /// 404: no such record (or another tenant's), or no such endpoint.
    NotFound,
    /// 405: the endpoint does not serve this method.
    MethodNotAllowed,
    /// 409: it exists already.
    Exists,
    /// 409: the request contradicts the current state.
    Conflict,
    /// 409: changed concurrently: retry.
    Raced,
    /// 422: well-formed but wrong (a bad field value, an unknown or missing field).
    Invalid,
    /// 422: the requested ramp cannot reach 100 % before the deadline, or never reaches it; the
    /// message says what would fit (a ramp with shorter holds, a linear rate, a later deadline).
    RampDoesNotFit,
    /// 422: this `Idempotency-Key` was used for a different request.
    IdempotencyKeyReused,
    /// 503: the server is at a limit (open event streams): retry after `Retry-After` seconds.
    Unavailable,
    /// 500: the store failed.
    Internal,
}

/// Adds what every operation shares (see the module's documentation), and a description to
/// every response that has none.
pub struct SharedResponses;

impl utoipa::Modify for SharedResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let templated = path.contains('{');
            let operations = [
                (false, item.get.as_mut()),
                (false, item.put.as_mut()),
                (true, item.post.as_mut()),
                (false, item.delete.as_mut()),
                (false, item.patch.as_mut()),
            ];
            for (post, operation) in operations {
                if let Some(operation) = operation {
                    share(operation, templated, post);
                }
            }
        }
    }
}

fn share(operation: &mut Operation, templated: bool, post: bool) {
    let authenticated = operation.security.as_ref().is_some_and(|s| !s.is_empty());
    let mut statuses = Vec::new();
    if authenticated {
        statuses.extend([StatusCode::UNAUTHORIZED, StatusCode::INTERNAL_SERVER_ERROR]);
    }
    if templated {
        statuses.extend([StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND]);
    }
    if operation.request_body.is_some() {
        statuses.extend([StatusCode::BAD_REQUEST, StatusCode::UNPROCESSABLE_ENTITY]);
    }
    if post && authenticated {
        // The idempotency layer runs before every POST handler: a malformed key is 400, a key
        // reused for another request 422.
        statuses.extend([StatusCode::BAD_REQUEST, StatusCode::UNPROCESSABLE_ENTITY]);
        let parameters = operation.parameters.get_or_insert_with(Vec::new);
        parameters
            .retain(|p| !(p.parameter_in == ParameterIn::Header && p.name.eq_ignore_ascii_case("idempotency-key")));
        parameters.push(idempotency_key());
    }
    let responses = &mut operation.responses.responses;
    for status in statuses {
        responses.entry(status.as_str().to_owned()).or_insert_with(|| error_response(status).into());
    }
    for (status, response) in responses.iter_mut() {
        if let RefOr::T(response) = response
            && response.description.is_empty()
        {
            response.description = describe(status).to_owned();
        }
    }
}

/// The optional `Idempotency-Key` request header.
fn idempotency_key() -> Parameter {
    ParameterBuilder::new()
        .name(super::idempotency::HEADER_NAME)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "Retry-safe key, 1-128 visible ASCII: a retry with the same key and request gets the first \
             success again (with `Idempotent-Replayed: true`) for 24 h; the same key with another request is 422",
        ))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(128))
                .pattern(Some(IDEMPOTENCY_KEY_PATTERN)),
        ))
        .build()
}

/// A response with the error shape.
fn error_response(status: StatusCode) -> Response {
    let mut response = Response::new(describe(status.as_str()));
    let body: RefOr<Schema> = Ref::from_schema_name("ErrorBody").into();
    response.content.insert("application/json".to_owned(), Content::new(Some(body)));
    response
}

/// What a status means in this API.
fn describe(status: &str) -> &'static str {
    match status {
        "200" => "OK",
        "201" => "Created",
        "202" => "Accepted",
        "204" => "No content",
        "400" => {
            "The request could not be read: malformed JSON, a body not declared as JSON, a bad path \
                  parameter or Idempotency-Key"
        }
        "401" => "No bearer token, or an unknown one (`WWW-Authenticate: Bearer`)",
        "403" => "The caller may not do this",
        "404" => "No such record, or one of another tenant",
        "409" => "The request contradicts the current state (`exists`, `conflict`; `raced`: retry)",
        "422" => {
            "Well-formed but wrong: a bad value, an unknown or missing field, a ramp that does not fit \
                  the deadline (`ramp_does_not_fit`), or an Idempotency-Key reused for another request"
        }
        "500" => "The store failed",
        _ => "See the error code",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use ipshadow_core::{Affinity, CongestionControlParameters, Mode, Ramp, RampStep, Strategy};
    use serde::Serialize;
    use serde::de::DeserializeOwned;
    use serde_json::Value;

    use super::*;
    use crate::api::ApiError;
    use crate::inventory::InventoryError;

    /// `real` serialises to JSON its mirror reads, and the mirror writes the same JSON back.
    fn mirrors<R: Serialize, M: Serialize + DeserializeOwned>(real: R) {
        let json = serde_json::to_value(&real).unwrap();
        let mirror: M = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&mirror).unwrap(), json);
    }

    #[test]
    fn the_mirrors_describe_the_real_json() {
        for s in [Strategy::Flow, Strategy::Packet, Strategy::Instant] {
            mirrors::<_, StrategySchema>(s);
        }
        for m in [Mode::Independent, Mode::Replica] {
            mirrors::<_, ModeSchema>(m);
        }
        for a in [Affinity::Flow, Affinity::Client] {
            mirrors::<_, AffinitySchema>(a);
        }
        mirrors::<_, RampSchema>(Ramp::default());
        mirrors::<_, RampSchema>(Ramp::Linear { pct_per_sec: 2.5 });
        mirrors::<_, RampSchema>(Ramp::Steps {
            steps: vec![RampStep { pct: 50.0, hold: core::time::Duration::from_millis(1) }],
        });
        mirrors::<_, CongestionControlParametersSchema>(CongestionControlParameters::default());
        use ipshadow_core::patterns::{DrainForecast, PatternsReport, Quantiles, SidePatterns, Tail};
        let q = Quantiles { count: 3, p50_ms: Some(12.5), p90_ms: None };
        mirrors::<_, QuantilesSchema>(q);
        let side = SidePatterns { open: 4, idle: 2, oldest_open_ms: Some(9), handshake_ms: q, ..Default::default() };
        mirrors::<_, PatternsSchema>(PatternsReport { source: side, arrival_rate_per_s: 2.5, ..Default::default() });
        for tail in [
            Tail::None,
            Tail::Exponential { rate_per_s: 0.25 },
            Tail::Exponential { rate_per_s: f64::INFINITY },
            Tail::Pareto { alpha: 1.5 },
            Tail::Weibull { shape: 1.2, scale_s: 80.0, delay_s: 0.0 },
            Tail::Lomax { alpha: 1.5, scale_s: 20.0, delay_s: 20.0 },
            Tail::LogNormal { median_s: 40.0, sigma: 1.0, delay_s: 5.0 },
        ] {
            mirrors::<_, TailSchema>(tail);
            mirrors::<_, DrainForecastSchema>(DrainForecast {
                open: 7,
                p50_ms: Some(1_000.0),
                p90_ms: None,
                expected_open_at_deadline: Some(0.5),
                horizon_ms: 60_000.0,
                tail,
                observations: 40,
            });
        }
    }

    /// The closed variants of the hand-written `Ramp` schema refuse what the core type refuses.
    #[test]
    fn ramp_variants_are_closed_like_the_core_type() {
        let json = serde_json::to_value(RampSchema::schema()).unwrap();
        for variant in json["oneOf"].as_array().unwrap() {
            assert_eq!(variant["additionalProperties"], false, "{variant}");
        }
        let extra = serde_json::json!({"kind": "linear", "pct_per_sec": 1.0, "speed": 2});
        assert!(serde_json::from_value::<Ramp>(extra).is_err());
    }

    /// How a stream's operation uses it: `body =` the event schema under `text/event-stream`.
    #[utoipa::path(get, path = "/stream", responses((status = 200, content_type = "text/event-stream",
        body = MigrationStreamEventSchema)))]
    #[expect(dead_code, reason = "only its path attribute is used")]
    async fn stream() {}

    #[test]
    fn a_stream_event_says_what_its_data_holds() {
        #[derive(utoipa::OpenApi)]
        #[openapi(paths(stream))]
        struct Doc;
        let doc = serde_json::to_value(<Doc as utoipa::OpenApi>::openapi()).unwrap();
        let content = &doc["paths"]["/stream"]["get"]["responses"]["200"]["content"]["text/event-stream"];
        assert_eq!(content["schema"]["$ref"], "#/components/schemas/MigrationStreamEvent", "{doc}");
        assert!(doc["components"]["schemas"]["MigrationStreamEvent"]["oneOf"].is_array(), "{doc}");

        let json = serde_json::to_value(MigrationStreamEventSchema::schema()).unwrap();
        let data = &json["oneOf"][0]["properties"]["data"];
        assert_eq!(data["contentMediaType"], "application/json", "{json}");
        assert_eq!(data["contentSchema"]["$ref"], "#/components/schemas/Migration", "{json}");
        assert_eq!(json["oneOf"][1]["properties"]["data"]["contentSchema"]["$ref"], "#/components/schemas/Observation");
        assert_eq!(json["oneOf"][2]["properties"]["data"]["contentSchema"]["$ref"], "#/components/schemas/ErrorBody");
        // What an observation refers to is in the document.
        for schema in ["Observation", "Patterns", "SidePatterns", "Quantiles", "DrainForecast", "Tail"] {
            assert!(doc["components"]["schemas"][schema].is_object(), "{schema} missing: {doc}");
        }
    }

    /// What [`SharedResponses`] adds is in every operation, once; every link leads to an
    /// operation of the document.
    #[test]
    fn every_operation_has_the_shared_parts_and_links_lead_somewhere() {
        use utoipa::OpenApi;
        let json = serde_json::to_value(crate::api::ApiDoc::openapi()).unwrap();
        let mut ids = Vec::new();
        let mut links = Vec::new();
        for (path, item) in json["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                ids.push(op["operationId"].as_str().unwrap().to_owned());
                let responses = op["responses"].as_object().unwrap();
                for (status, response) in responses {
                    assert!(!response["description"].as_str().unwrap().is_empty(), "{method} {path} {status}");
                    for link in response["links"].as_object().into_iter().flat_map(|l| l.values()) {
                        // utoipa 5.5 writes a link's fields in snake case (`operation_id`), which no
                        // OpenAPI tool reads: links must be written some other way.
                        let target = link["operationId"].as_str();
                        links.push(target.unwrap_or_else(|| panic!("a link without operationId: {link}")).to_owned());
                    }
                }
                if op.get("security").is_none() {
                    continue;
                }
                for status in ["401", "500"] {
                    let schema = &responses[status]["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(schema, "#/components/schemas/ErrorBody", "{method} {path} {status}");
                }
                let keys: Vec<&Value> = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case("idempotency-key")))
                    .collect();
                if method == "post" {
                    assert_eq!(keys.len(), 1, "{method} {path}");
                    assert_eq!(keys[0]["schema"]["type"], "string", "{method} {path}: not nullable");
                    assert_eq!(keys[0]["schema"]["pattern"], IDEMPOTENCY_KEY_PATTERN);
                    assert!(responses.contains_key("400") && responses.contains_key("422"), "{method} {path}");
                } else {
                    assert!(keys.is_empty(), "{method} {path}");
                }
            }
        }
        for link in links {
            assert!(ids.contains(&link), "a link to {link}, which is no operation");
        }
        // The identifiers' patterns are the inventory's.
        let schemas = &json["components"]["schemas"];
        for (schema, field, pattern) in [
            ("CreateVm", "id", ID_PATTERN),
            ("CreateVm", "segment", ID_PATTERN),
            ("CreateVm", "tenant", ID_PATTERN),
            ("CreateVm", "mac", MAC_PATTERN),
            ("CreateAddress", "vm", ID_PATTERN),
            ("CreateAddress", "tenant", ID_PATTERN),
        ] {
            assert_eq!(schemas[schema]["properties"][field]["pattern"], pattern, "{schema}.{field}");
        }
        // A closed set a client can switch on.
        assert_eq!(
            schemas["DeadlineSource"]["enum"],
            serde_json::json!(["requested", "source_lease_end", "policy_default", "drain_forecast"])
        );
        assert_eq!(
            schemas["Migration"]["properties"]["deadline_source"]["$ref"],
            "#/components/schemas/DeadlineSource"
        );
    }

    /// Issue 12's plan in the document: the request's `dry_run`, the migration's `plan` with
    /// every field, the two `200` answers of a reassignment, the 422 `ramp_does_not_fit`.
    #[test]
    fn the_plan_and_the_dry_run_are_documented() {
        use utoipa::OpenApi;
        let json = serde_json::to_value(crate::api::ApiDoc::openapi()).unwrap();
        let schemas = &json["components"]["schemas"];
        assert_eq!(
            schemas["ReassignRequest"]["properties"]["dry_run"]["type"], "boolean",
            "{}",
            schemas["ReassignRequest"]
        );
        let plan_ref = serde_json::to_string(&schemas["Migration"]["properties"]["plan"]).unwrap();
        assert!(plan_ref.contains("#/components/schemas/Plan"), "{plan_ref}");
        let plan = &schemas["Plan"];
        for field in [
            "ramp",
            "ramp_source",
            "scaled",
            "share",
            "ramp_to_100_ms",
            "ready_allowance_ms",
            "deadline_ms",
            "deadline_source",
            "time_to_deadline_ms",
            "slack_ms",
        ] {
            assert!(plan["properties"][field].is_object(), "Plan.{field} missing: {plan}");
        }
        assert_eq!(schemas["RampSource"]["enum"], serde_json::json!(["requested", "default", "default_scaled"]));
        // Issue 12's closing window, observation, cut-over report and early finish.
        assert!(plan["properties"]["close_grace_ms"].is_object(), "{plan}");
        let view = serde_json::to_string(&schemas["MigrationView"]).unwrap();
        assert!(view.contains("#/components/schemas/Migration") && view.contains("observed"), "{view}");
        let migration = serde_json::to_string(&schemas["Migration"]["properties"]["cut_over"]).unwrap();
        assert!(migration.contains("#/components/schemas/CutOverRecord"), "{migration}");
        assert_eq!(schemas["EndCause"]["enum"], serde_json::json!(["deadline", "drained", "requested"]));
        for field in ["at_ms", "cause", "early_by_ms", "closed_gracefully", "reset", "handed_over"] {
            assert!(schemas["CutOverRecord"]["properties"][field].is_object(), "CutOverRecord.{field}");
        }
        let events = serde_json::to_string(&schemas["MigrationEvent"]).unwrap();
        assert!(events.contains("finished_early") && events.contains("deadline_extended"), "{events}");
        let get = &json["paths"]["/v1/migrations/{id}"]["get"]["responses"]["200"]["content"]["application/json"];
        assert_eq!(get["schema"]["$ref"], "#/components/schemas/MigrationView");
        assert_eq!(schemas["DryRunResult"]["enum"], serde_json::json!(["would_move", "would_migrate"]));
        let responses = &json["paths"]["/v1/addresses/{ip}/reassign"]["post"]["responses"];
        assert_eq!(
            responses["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ReassignOk"
        );
        assert_eq!(schemas["ReassignOk"]["oneOf"].as_array().map(Vec::len), Some(2), "{}", schemas["ReassignOk"]);
        assert!(responses["422"]["description"].as_str().unwrap().contains("ramp_does_not_fit"));
        assert!(schemas["ErrorCode"]["enum"].as_array().unwrap().contains(&serde_json::json!("ramp_does_not_fit")));
    }

    /// Every code the server sends is in the `ErrorCode` enum of the document.
    #[test]
    fn every_error_code_is_documented() {
        let errors = [
            ApiError::bad_request("x"),
            ApiError::unauthorized(),
            ApiError::forbidden("x"),
            ApiError::invalid("x"),
            ApiError::internal("x"),
            ApiError::unavailable("x"),
            InventoryError::NotFound { kind: "vm", id: "x".into() }.into(),
            InventoryError::Exists { kind: "vm", id: "x".into() }.into(),
            InventoryError::NotAvailable { kind: "vm", id: "x".into() }.into(),
            InventoryError::Taken { kind: "vm", id: "x".into(), owner: "t".into() }.into(),
            InventoryError::Conflict("x".into()).into(),
            InventoryError::Invalid("x".into()).into(),
            InventoryError::RampDoesNotFit(
                crate::plan::plan(
                    crate::plan::PlanInput {
                        requested: Some(&Ramp::default()),
                        now_ms: 0,
                        deadline_ms: 30_000,
                        deadline_source: crate::reassign::DeadlineSource::Requested,
                    },
                    &crate::reassign::DeadlinePolicy::default(),
                )
                .unwrap_err(),
            )
            .into(),
            InventoryError::Raced.into(),
            InventoryError::Corrupt { key: "k".into(), detail: "x".into() }.into(),
        ];
        let mut codes: Vec<&str> = errors.iter().map(|e| e.code).collect();
        // The 405 fallback's, and the idempotency layer's own.
        codes.extend(["method_not_allowed", crate::api::idempotency::KEY_REUSED]);
        for code in codes {
            let parsed: Result<ErrorCodeSchema, _> = serde_json::from_value(serde_json::json!(code));
            assert!(parsed.is_ok(), "{code} is not in ErrorCode");
        }
    }
}

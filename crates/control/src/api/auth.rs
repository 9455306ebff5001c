//! Bearer-token authentication: each token maps to one tenant, and one admin token sees and
//! manages every tenant. A handler takes a [`Caller`] and passes [`Caller::tenant`] to the
//! inventory, which hides other tenants' records (they read as not found).

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use super::ApiState;
use super::error::ApiError;
use crate::store::Store;

/// Who may call the API.
#[derive(Clone, Default)]
pub struct TokenTable {
    admin: Option<String>,
    tenants: Vec<(String, String)>,
}

impl core::fmt::Debug for TokenTable {
    // Tokens are secrets: never printed, not even in a debug log.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TokenTable").field("tenants", &self.tenants.len()).finish_non_exhaustive()
    }
}

impl TokenTable {
    /// A table with the admin's token and no tenant yet.
    pub fn new(admin_token: impl Into<String>) -> Self {
        Self { admin: Some(admin_token.into()), tenants: Vec::new() }
    }

    /// Adds a token for `tenant`.
    pub fn with_tenant(mut self, token: impl Into<String>, tenant: impl Into<String>) -> Self {
        self.tenants.push((token.into(), tenant.into()));
        self
    }

    /// Who `token` is, if anyone. Every entry is compared, each in constant time, so the time
    /// taken tells nothing about which token (or how much of one) matched; only the table's
    /// size and the tokens' lengths show.
    pub fn caller(&self, token: &str) -> Option<Caller> {
        let mut found = None;
        if self.admin.as_deref().is_some_and(|admin| constant_time_eq(admin.as_bytes(), token.as_bytes())) {
            found = Some(Caller::Admin);
        }
        for (t, tenant) in &self.tenants {
            if constant_time_eq(t.as_bytes(), token.as_bytes()) && found.is_none() {
                found = Some(Caller::Tenant(tenant.clone()));
            }
        }
        found
    }
}

/// Equal bytes, without an early exit on the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The authenticated caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The admin: every tenant.
    Admin,
    /// One tenant.
    Tenant(String),
}

impl Caller {
    /// The tenant to filter by (`None`: the admin sees everything).
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Caller::Admin => None,
            Caller::Tenant(t) => Some(t),
        }
    }

    /// The tenant a new record belongs to: a tenant's own (naming another is forbidden), or the
    /// one the admin names (which it must).
    pub fn owner(&self, named: Option<&str>) -> Result<String, ApiError> {
        match (self, named) {
            (Caller::Tenant(own), None) => Ok(own.clone()),
            (Caller::Tenant(own), Some(named)) if named == own => Ok(own.clone()),
            (Caller::Tenant(_), Some(_)) => Err(ApiError::forbidden("a tenant can only create its own records")),
            (Caller::Admin, Some(named)) => Ok(named.to_owned()),
            (Caller::Admin, None) => Err(ApiError::invalid("the admin must name the tenant")),
        }
    }

    /// The key under which this caller's idempotency records are kept (`@` cannot appear in a
    /// tenant id, so the admin's space never collides with a tenant's).
    pub(crate) fn idempotency_space(&self) -> &str {
        self.tenant().unwrap_or("@admin")
    }
}

/// The caller named by the request's `Authorization: Bearer` header (the scheme's name in any
/// case: RFC 9110 11.1).
pub(crate) fn authenticate(headers: &axum::http::HeaderMap, tokens: &TokenTable) -> Result<Caller, ApiError> {
    let value = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or_else(ApiError::unauthorized)?;
    let (scheme, token) = value.trim_start().split_once(' ').ok_or_else(ApiError::unauthorized)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::unauthorized());
    }
    tokens.caller(token.trim()).ok_or_else(ApiError::unauthorized)
}

impl<S: Store> FromRequestParts<ApiState<S>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState<S>) -> Result<Self, ApiError> {
        authenticate(&parts.headers, &state.tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_callers() {
        let table = TokenTable::new("root").with_tenant("t-acme", "acme").with_tenant("t-zeta", "zeta");
        assert_eq!(table.caller("root"), Some(Caller::Admin));
        assert_eq!(table.caller("t-zeta"), Some(Caller::Tenant("zeta".into())));
        assert_eq!(table.caller("t-acm"), None);
        assert_eq!(table.caller(""), None);
        assert!(!format!("{table:?}").contains("root"));
    }

    #[test]
    fn the_scheme_is_bearer_in_any_case() {
        let table = TokenTable::new("root").with_tenant("t-acme", "acme");
        let with = |value: &str| {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().expect("a header value"));
            authenticate(&headers, &table).ok()
        };
        assert_eq!(with("Bearer root"), Some(Caller::Admin));
        assert_eq!(with("bearer t-acme"), Some(Caller::Tenant("acme".into())));
        assert_eq!(with("BEARER  root "), Some(Caller::Admin));
        for refused in ["Basic root", "Bearer", "Bearerroot", "root", "Bearer t-acm"] {
            assert_eq!(with(refused), None, "{refused}");
        }
        assert_eq!(authenticate(&axum::http::HeaderMap::new(), &table).ok(), None);
    }
}

//! What every request passes before its handler: the URI length and header size caps, the
//! content encoding, the cap on concurrent requests, and authentication (who is calling) with
//! authorisation (may they call this route). Handlers find the [`Caller`] in the request's
//! extensions. What cannot reach a handler at all (a head too large for the server's buffer,
//! one that never completes) is refused in `http/server.rs` with the same errors.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::{ApiError, AppState, ErrorCode};
use crate::auth::ApiKeys;
use crate::config::resolved::RateLimit;
use crate::health::TokenBucket;

/// Who is calling: a configured key, or anyone when authentication is off.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's name; `None` when no keys are configured.
    pub key: Option<Arc<str>>,
    pub admin: bool,
}

impl Caller {
    /// Whether this caller may read a message created by `owner`.
    pub fn owns(&self, owner: Option<&str>) -> bool {
        self.key.is_none() || self.key.as_deref() == owner
    }
}

/// The most headers a request may have; more gets 431 (enforced while parsing the head).
pub const MAX_HEADERS: usize = 100;
/// The longest request target (path and query) accepted, in bytes; longer gets 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// Request limits, as configured (`switchboard serve` flags).
#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// `/metrics` without a key.
    pub metrics_public: bool,
    /// Sends per API key (requests/s and burst).
    pub per_key: RateLimit,
    /// Requests answered at once; more get 503 `overloaded`.
    pub max_concurrent: usize,
    /// Total size of a request's headers; more gets 431.
    pub max_header_bytes: usize,
    /// Longest a request body may take to arrive; longer gets 408.
    pub body_timeout: Duration,
    /// Longest a request's line and headers may take to arrive, and a kept-alive connection
    /// may stay idle; longer gets 408 (or, idle, is closed).
    pub header_timeout: Duration,
}

/// The keys and limits, fixed at start.
pub struct Guard {
    keys: ApiKeys,
    metrics_public: bool,
    /// Sends per key: refused with 429 beyond the bucket.
    send_limits: HashMap<String, TokenBucket>,
    concurrency: Arc<Semaphore>,
    max_header_bytes: usize,
    pub body_timeout: Duration,
}

impl Guard {
    pub fn new(keys: ApiKeys, limits: &RequestLimits) -> Guard {
        let send_limits =
            keys.names().map(|name| (name.to_owned(), TokenBucket::new(limits.per_key))).collect();
        Guard {
            keys,
            metrics_public: limits.metrics_public,
            send_limits,
            concurrency: Arc::new(Semaphore::new(limits.max_concurrent.max(1))),
            max_header_bytes: limits.max_header_bytes,
            body_timeout: limits.body_timeout,
        }
    }

    /// Counts one send against the caller's key; anonymous callers are not limited.
    pub fn take_send(&self, caller: &Caller) -> Result<(), ApiError> {
        let Some(bucket) = caller.key.as_deref().and_then(|key| self.send_limits.get(key)) else {
            return Ok(());
        };
        bucket.try_take(Instant::now()).map_err(|wait| ApiError::RateLimited { retry_after: wait })
    }
}

/// What a path needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    Public,
    /// A provider's own inbound URL: proven by the provider's signature or secret (checked by
    /// its kind), not by an API key; counted against the concurrency cap like any request.
    Provider,
    AnyKey,
    Admin,
}

pub(super) fn access(path: &str, metrics_public: bool) -> Access {
    match path {
        "/healthz" | "/readyz" | "/openapi.json" => Access::Public,
        // The console's page, script and style: no data (the page asks for an admin key).
        "/console" | "/console/console.js" | "/console/console.css" => Access::Public,
        "/metrics" if metrics_public => Access::Public,
        _ if path == "/admin" || path.starts_with("/admin/") => Access::Admin,
        _ if path == "/v1/opt-outs" || path.starts_with("/v1/opt-outs/") => Access::Admin,
        _ if path.starts_with("/v1/inbound/") || path.starts_with("/v1/receipts/") => Access::Provider,
        // /api, /v1, /metrics, and unknown paths (no probing for routes without a key).
        _ => Access::AnyKey,
    }
}

/// What [`check_head`] refuses on any path.
const HEAD_REFUSALS: &[ErrorCode] = &[
    ErrorCode::UriTooLong,
    ErrorCode::HeadersTooLarge,
    ErrorCode::UnsupportedContentEncoding,
    ErrorCode::InvalidField,
];

/// Every refusal the guard may answer on a path of `access`, before its handler runs (the
/// OpenAPI document adds them to every operation).
pub(super) fn refusals(access: Access) -> Vec<ErrorCode> {
    let mut codes = HEAD_REFUSALS.to_vec();
    if access != Access::Public {
        codes.push(ErrorCode::Overloaded);
    }
    if matches!(access, Access::AnyKey | Access::Admin) {
        codes.push(ErrorCode::Unauthorized);
    }
    if access == Access::Admin {
        codes.push(ErrorCode::Forbidden);
    }
    codes
}

pub async fn guard(State(state): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    let guard = &state.guard;
    if let Err(error) = check_head(&request, guard.max_header_bytes) {
        return error.into_response();
    }
    let access = access(request.uri().path(), guard.metrics_public);
    // Health checks are answered even when the service is saturated.
    let _permit = match access {
        Access::Public => None,
        _ => match Arc::clone(&guard.concurrency).try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => return ApiError::Overloaded.into_response(),
        },
    };
    let caller = match authenticate(&guard.keys, request.headers(), access) {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    request.extensions_mut().insert(caller);
    let mut response = next.run(request).await;
    // Shutdown began: every answer tells the client to reconnect (to this instance while it
    // drains, to another after), rather than reuse a connection about to be closed.
    if !state.ready.load(std::sync::atomic::Ordering::Relaxed) {
        response.headers_mut().insert(header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    }
    response
}

/// What is wrong with the request's head whatever the route: its size, an encoding we cannot
/// read, ambiguous credentials.
fn check_head(request: &Request, max_header_bytes: usize) -> Result<(), ApiError> {
    let uri = request.uri();
    let target = uri.path_and_query().map_or(uri.path().len(), |p| p.as_str().len());
    if target > MAX_URI_BYTES {
        return Err(ApiError::UriTooLong { limit: MAX_URI_BYTES });
    }
    let headers = request.headers();
    if header_bytes(headers) > max_header_bytes || headers.len() > MAX_HEADERS {
        return Err(ApiError::HeadersTooLarge { limit: max_header_bytes });
    }
    let identity = |value: &axum::http::HeaderValue| {
        value.to_str().is_ok_and(|v| {
            v.split(',')
                .all(|coding| coding.trim().is_empty() || coding.trim().eq_ignore_ascii_case("identity"))
        })
    };
    if !headers.get_all(header::CONTENT_ENCODING).iter().all(identity) {
        return Err(ApiError::UnsupportedEncoding);
    }
    if headers.get_all(header::AUTHORIZATION).iter().nth(1).is_some() {
        return Err(ApiError::invalid("Authorization", "send one `Authorization` header, not several"));
    }
    Ok(())
}

fn authenticate(keys: &ApiKeys, headers: &HeaderMap, access: Access) -> Result<Caller, ApiError> {
    if !keys.is_enabled() {
        return Ok(Caller { key: None, admin: true });
    }
    let token = bearer(headers);
    let key = token.and_then(|token| keys.authenticate(token));
    match (access, key) {
        (Access::Public, key) => Ok(Caller { key: key.map(|k| Arc::clone(&k.name)), admin: false }),
        (Access::Provider, _) => Ok(Caller { key: None, admin: false }),
        (_, None) => Err(ApiError::Unauthorized { missing: token.is_none() }),
        (Access::Admin, Some(key)) if !key.admin => Err(ApiError::Forbidden),
        (_, Some(key)) => Ok(Caller { key: Some(Arc::clone(&key.name)), admin: key.admin }),
    }
}

/// The token of `Authorization: Bearer <token>` (scheme in any case).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn header_bytes(headers: &HeaderMap) -> usize {
    headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;
    use crate::auth::hash_hex;

    fn check(path: &str, authorization: Option<&str>, expected: Result<(Option<&str>, bool), &str>) {
        let keys =
            ApiKeys::load(Some(&format!("app:{},ops:{}:admin", hash_hex("k-app"), hash_hex("k-ops"))), None)
                .unwrap_or_default();
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization.and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(header::AUTHORIZATION, value);
        }
        let got = authenticate(&keys, &headers, access(path, false));
        match (got, expected) {
            (Ok(caller), Ok((key, admin))) => {
                assert_eq!((caller.key.as_deref(), caller.admin), (key, admin), "{path}")
            }
            (Err(error), Err(code)) => assert_eq!(error.code(), code, "{path} {authorization:?}"),
            (got, expected) => panic!("{path} {authorization:?}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn who_may_call_what() {
        check("/healthz", None, Ok((None, false)));
        check("/readyz", Some("Bearer nope"), Ok((None, false)));
        check("/metrics", None, Err("unauthorized"));
        check("/v1/messages", None, Err("unauthorized"));
        check("/v1/messages", Some("Bearer k-app"), Ok((Some("app"), false)));
        check("/v1/messages", Some("bearer   k-app "), Ok((Some("app"), false)));
        check("/v1/messages", Some("Basic k-app"), Err("unauthorized"));
        check("/v1/messages", Some("Bearer"), Err("unauthorized"));
        check("/v1/messages", Some("Bearer k-wrong"), Err("unauthorized"));
        check("/api/messages/sms", Some("Bearer k-ops"), Ok((Some("ops"), true)));
        check("/admin/routes", Some("Bearer k-app"), Err("forbidden"));
        check("/admin/reload", Some("Bearer k-ops"), Ok((Some("ops"), true)));
        check("/admin/routes", None, Err("unauthorized"));
        // The console's page is public; what it shows is admin-only.
        check("/console", None, Ok((None, false)));
        check("/console/console.js", None, Ok((None, false)));
        check("/console/other.js", None, Err("unauthorized"));
        check("/admin/console", Some("Bearer k-app"), Err("forbidden"));
        check("/admin/console", None, Err("unauthorized"));
        check("/nowhere", None, Err("unauthorized"));
        check("/api/webhooks/sms", None, Err("unauthorized"));
        check("/api/webhooks/email", Some("Bearer k-app"), Ok((Some("app"), false)));
        check("/api/conversations", None, Err("unauthorized"));
        check("/api/conversations/1/messages", Some("Bearer k-app"), Ok((Some("app"), false)));
        check("/v1/opt-outs", Some("Bearer k-app"), Err("forbidden"));
        check("/v1/opt-outs/sms/+1555/+1666", Some("Bearer k-app"), Err("forbidden"));
        check("/v1/opt-outs", Some("Bearer k-ops"), Ok((Some("ops"), true)));
        check("/v1/opt-outsx", None, Err("unauthorized"));
        // A provider's inbound URL needs no key (its signature is checked) and gives none.
        check("/v1/inbound/twilio/tw", None, Ok((None, false)));
        check("/v1/inbound/twilio/tw", Some("Bearer k-ops"), Ok((None, false)));
        check("/v1/receipts/sendgrid/sg", None, Ok((None, false)));
    }

    fn check_request(uri: &str, headers: &[(&str, &str)], expected: Result<(), &str>) {
        let mut request = Request::new(axum::body::Body::empty());
        match uri.parse() {
            Ok(uri) => *request.uri_mut() = uri,
            Err(error) => panic!("{uri}: {error}"),
        }
        for (name, value) in headers {
            if let (Ok(name), Ok(value)) =
                (header::HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value))
            {
                request.headers_mut().append(name, value);
            }
        }
        let got = check_head(&request, 16 * 1024).map_err(|e| e.code());
        assert_eq!(got, expected, "{uri} {headers:?}");
    }

    #[test]
    fn heads() {
        let long = format!("/v1/messages?x={}", "a".repeat(MAX_URI_BYTES));
        let many: Vec<(String, String)> =
            (0..=MAX_HEADERS).map(|i| (format!("x-{i}"), String::new())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        check_request("/v1/messages", &[("content-type", "application/json")], Ok(()));
        check_request(&long, &[], Err("uri_too_long"));
        check_request(&long[..MAX_URI_BYTES], &[], Ok(()));
        check_request("/healthz", &[("x-big", &"a".repeat(16 * 1024))], Err("headers_too_large"));
        check_request("/healthz", &many, Err("headers_too_large"));
        check_request("/v1/messages", &[("content-encoding", "gzip")], Err("unsupported_content_encoding"));
        check_request(
            "/v1/messages",
            &[("content-encoding", "identity, gzip")],
            Err("unsupported_content_encoding"),
        );
        check_request("/v1/messages", &[("content-encoding", "Identity")], Ok(()));
        check_request(
            "/v1/messages",
            &[("content-encoding", "identity"), ("content-encoding", "br")],
            Err("unsupported_content_encoding"),
        );
        check_request(
            "/v1/messages",
            &[("authorization", "Bearer a"), ("authorization", "Bearer a")],
            Err("invalid_field"),
        );
        check_request("/v1/messages", &[("authorization", "Bearer a")], Ok(()));
    }

    #[test]
    fn no_keys_means_anyone() {
        let caller = authenticate(&ApiKeys::default(), &HeaderMap::new(), Access::Admin);
        assert!(caller.is_ok_and(|c| c.key.is_none() && c.owns(Some("x")) && c.owns(None)));
    }
}

//! API errors: `{"error":{"code","message","field"?}}` with the matching status. The only place
//! where failures become HTTP statuses.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::accept::{AcceptError, Refusal, RetryError};
use crate::dispatch::SubmitError;
use crate::http::guard::MAX_HEADERS;
use crate::reload::Outcome;
use crate::routing::NoRoute;
use crate::store::{Status, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    InvalidJson(String),
    /// The body could not be read as sent (a malformed chunked encoding, a cut connection).
    InvalidBody(String),
    /// A JSON object names the same key twice; `field` is its path (`to`, `extra.x`).
    DuplicateField {
        field: String,
    },
    InvalidField {
        field: String,
        message: String,
    },
    UnsupportedMediaType,
    /// A provider's inbound request not in the content type the provider sends.
    WrongMediaType {
        expected: &'static str,
    },
    /// A `Content-Encoding` other than `identity`: bodies are not decompressed.
    UnsupportedEncoding,
    PayloadTooLarge {
        limit: usize,
    },
    NotFound,
    MethodNotAllowed,
    NoRoute(NoRoute),
    QueueFull,
    StoreUnavailable,
    /// The idempotency key was used for a different request.
    KeyReused,
    /// A request with this idempotency key is still being answered.
    KeyInFlight,
    /// No API key, or one that is not configured.
    Unauthorized {
        missing: bool,
    },
    /// A valid key without the admin role on an admin route.
    Forbidden,
    /// The key's send rate is used up.
    RateLimited {
        retry_after: std::time::Duration,
    },
    /// A destination limit (country allow-list, per-recipient cap) refused the message.
    Refused(Refusal),
    /// The recipient opted out of messages from the sender.
    OptedOut,
    /// The recipient's address is on the suppression list.
    Suppressed,
    /// A provider's inbound request whose signature or secret is missing or wrong. Which check
    /// failed is logged, not answered: the caller is not authenticated.
    InvalidSignature,
    /// More headers than [`MAX_HEADERS`], or more than `limit` bytes of them.
    HeadersTooLarge {
        limit: usize,
    },
    /// The request target is longer than `limit` bytes.
    UriTooLong {
        limit: usize,
    },
    /// The request line or a header is not HTTP/1.1 (answered for hyper's own refusals).
    MalformedRequest,
    /// The request head (line and headers) did not arrive within `timeout`.
    HeaderTimeout {
        timeout: std::time::Duration,
    },
    /// Too many requests being answered at once.
    Overloaded,
    /// Shutdown began: no new message is accepted.
    ShuttingDown,
    /// The body did not arrive in time.
    RequestTimeout,
    /// Only a `failed` message can be retried: this one's status.
    NotRetryable(Status),
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    /// `not_retryable`: the message's status.
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
}

/// An `error.code`: each has one status. What an operation may answer is listed next to its
/// handler as these (the OpenAPI document's enum per status, `http/openapi.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorCode {
    InvalidJson,
    InvalidBody,
    DuplicateField,
    InvalidField,
    MalformedRequest,
    UnsupportedMediaType,
    UnsupportedContentEncoding,
    PayloadTooLarge,
    NotFound,
    MethodNotAllowed,
    NoRoute,
    QueueFull,
    StoreUnavailable,
    IdempotencyKeyReused,
    IdempotencyKeyInFlight,
    Unauthorized,
    Forbidden,
    RateLimited,
    CountryNotAllowed,
    RecipientRateLimited,
    RecipientOptedOut,
    RecipientSuppressed,
    InvalidSignature,
    HeadersTooLarge,
    UriTooLong,
    Overloaded,
    ShuttingDown,
    RequestTimeout,
    NotRetryable,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 29] = [
        ErrorCode::InvalidJson,
        ErrorCode::InvalidBody,
        ErrorCode::DuplicateField,
        ErrorCode::InvalidField,
        ErrorCode::MalformedRequest,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::UnsupportedContentEncoding,
        ErrorCode::PayloadTooLarge,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::NoRoute,
        ErrorCode::QueueFull,
        ErrorCode::StoreUnavailable,
        ErrorCode::IdempotencyKeyReused,
        ErrorCode::IdempotencyKeyInFlight,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::RateLimited,
        ErrorCode::CountryNotAllowed,
        ErrorCode::RecipientRateLimited,
        ErrorCode::RecipientOptedOut,
        ErrorCode::RecipientSuppressed,
        ErrorCode::InvalidSignature,
        ErrorCode::HeadersTooLarge,
        ErrorCode::UriTooLong,
        ErrorCode::Overloaded,
        ErrorCode::ShuttingDown,
        ErrorCode::RequestTimeout,
        ErrorCode::NotRetryable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidBody => "invalid_body",
            ErrorCode::DuplicateField => "duplicate_field",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::MalformedRequest => "malformed_request",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::UnsupportedContentEncoding => "unsupported_content_encoding",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::NoRoute => "no_route",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorCode::IdempotencyKeyInFlight => "idempotency_key_in_flight",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::CountryNotAllowed => "country_not_allowed",
            ErrorCode::RecipientRateLimited => "recipient_rate_limited",
            ErrorCode::RecipientOptedOut => "recipient_opted_out",
            ErrorCode::RecipientSuppressed => "recipient_suppressed",
            ErrorCode::InvalidSignature => "invalid_signature",
            ErrorCode::HeadersTooLarge => "headers_too_large",
            ErrorCode::UriTooLong => "uri_too_long",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::NotRetryable => "not_retryable",
        }
    }

    pub fn status(self) -> StatusCode {
        use ErrorCode as C;
        match self {
            C::InvalidJson | C::InvalidBody | C::DuplicateField | C::InvalidField | C::MalformedRequest => {
                StatusCode::BAD_REQUEST
            }
            C::UnsupportedMediaType | C::UnsupportedContentEncoding => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            C::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            C::NotFound => StatusCode::NOT_FOUND,
            C::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            C::NoRoute | C::QueueFull | C::StoreUnavailable | C::Overloaded | C::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            C::IdempotencyKeyReused | C::RecipientOptedOut | C::RecipientSuppressed => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            C::IdempotencyKeyInFlight | C::NotRetryable => StatusCode::CONFLICT,
            C::Unauthorized => StatusCode::UNAUTHORIZED,
            C::Forbidden | C::InvalidSignature | C::CountryNotAllowed => StatusCode::FORBIDDEN,
            C::RateLimited | C::RecipientRateLimited => StatusCode::TOO_MANY_REQUESTS,
            C::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            C::UriTooLong => StatusCode::URI_TOO_LONG,
            C::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }
}

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_NO_ROUTE: &str = "30";
const RETRY_AFTER_BUSY: &str = "1";

impl ApiError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        ApiError::InvalidField { field: field.to_owned(), message: message.into() }
    }

    /// A body that could not be read, saying why down to the first cause (`invalid chunk size`).
    pub fn invalid_body(error: &(dyn std::error::Error + 'static)) -> Self {
        let mut detail = error.to_string();
        let mut cause = error.source();
        while let Some(inner) = cause {
            let text = inner.to_string();
            // Wrappers often repeat their cause's text.
            if !detail.ends_with(&text) {
                detail = format!("{detail}: {text}");
            }
            cause = inner.source();
        }
        ApiError::InvalidBody(detail)
    }

    pub fn status(&self) -> StatusCode {
        self.error_code().status()
    }

    pub fn code(&self) -> &'static str {
        self.error_code().as_str()
    }

    /// Its `error.code`.
    pub fn error_code(&self) -> ErrorCode {
        use ErrorCode as C;
        match self {
            ApiError::InvalidJson(_) => C::InvalidJson,
            ApiError::InvalidBody(_) => C::InvalidBody,
            ApiError::DuplicateField { .. } => C::DuplicateField,
            ApiError::InvalidField { .. } => C::InvalidField,
            ApiError::UnsupportedMediaType | ApiError::WrongMediaType { .. } => C::UnsupportedMediaType,
            ApiError::UnsupportedEncoding => C::UnsupportedContentEncoding,
            ApiError::PayloadTooLarge { .. } => C::PayloadTooLarge,
            ApiError::NotFound => C::NotFound,
            ApiError::MethodNotAllowed => C::MethodNotAllowed,
            ApiError::NoRoute(_) => C::NoRoute,
            ApiError::QueueFull => C::QueueFull,
            ApiError::StoreUnavailable => C::StoreUnavailable,
            ApiError::KeyReused => C::IdempotencyKeyReused,
            ApiError::KeyInFlight => C::IdempotencyKeyInFlight,
            ApiError::Unauthorized { .. } => C::Unauthorized,
            ApiError::Forbidden => C::Forbidden,
            ApiError::RateLimited { .. } => C::RateLimited,
            ApiError::Refused(Refusal::CountryNotAllowed { .. }) => C::CountryNotAllowed,
            ApiError::Refused(Refusal::RecipientRateLimited { .. }) => C::RecipientRateLimited,
            ApiError::OptedOut => C::RecipientOptedOut,
            ApiError::Suppressed => C::RecipientSuppressed,
            ApiError::InvalidSignature => C::InvalidSignature,
            ApiError::HeadersTooLarge { .. } => C::HeadersTooLarge,
            ApiError::UriTooLong { .. } => C::UriTooLong,
            ApiError::MalformedRequest => C::MalformedRequest,
            ApiError::Overloaded => C::Overloaded,
            ApiError::ShuttingDown => C::ShuttingDown,
            ApiError::RequestTimeout | ApiError::HeaderTimeout { .. } => C::RequestTimeout,
            ApiError::NotRetryable(_) => C::NotRetryable,
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::InvalidJson(detail) => format!("the body is not valid JSON: {detail}"),
            ApiError::InvalidBody(detail) => format!("the body could not be read: {detail}"),
            ApiError::DuplicateField { field } => format!("`{field}` is given more than once"),
            ApiError::InvalidField { message, .. } => message.clone(),
            ApiError::UnsupportedMediaType => {
                "send the body as JSON with `Content-Type: application/json`".into()
            }
            ApiError::WrongMediaType { expected } => format!("expected a {expected} body"),
            ApiError::UnsupportedEncoding => {
                "send the body uncompressed: `Content-Encoding` may only be `identity`".into()
            }
            ApiError::PayloadTooLarge { limit } => {
                format!("the body is larger than the limit of {limit} bytes")
            }
            ApiError::NotFound => "not found".into(),
            ApiError::MethodNotAllowed => "method not allowed on this path".into(),
            ApiError::NoRoute(no_route) => no_route.to_string(),
            ApiError::QueueFull => "the dispatch queue is full; retry later".into(),
            ApiError::StoreUnavailable => {
                "the message store is unavailable; nothing was stored (retry)".into()
            }
            ApiError::KeyReused => {
                "this Idempotency-Key was already used with a different request in the last 24 hours".into()
            }
            ApiError::KeyInFlight => {
                "a request with this Idempotency-Key is still being answered; retry".into()
            }
            ApiError::Unauthorized { missing: true } => {
                "send an API key as `Authorization: Bearer <key>`".into()
            }
            ApiError::Unauthorized { missing: false } => "the API key is not valid".into(),
            ApiError::Forbidden => "this route needs an API key with the admin role".into(),
            ApiError::RateLimited { .. } => {
                "this API key's send rate is used up; retry after the pause".into()
            }
            ApiError::Refused(refusal) => refusal.to_string(),
            ApiError::OptedOut => AcceptError::OptedOut.to_string(),
            ApiError::Suppressed => AcceptError::Suppressed.to_string(),
            ApiError::InvalidSignature => {
                "the request's signature or credentials are missing or do not match this provider's".into()
            }
            ApiError::HeadersTooLarge { limit } => {
                format!("the request has more than {MAX_HEADERS} headers or more than {limit} bytes of them")
            }
            ApiError::UriTooLong { limit } => format!("the request URI is longer than {limit} bytes"),
            ApiError::MalformedRequest => "the request line or a header is not valid HTTP/1.1".into(),
            ApiError::Overloaded => "too many requests are being answered; retry".into(),
            ApiError::ShuttingDown => {
                "this instance is shutting down and accepts no new message; retry (another instance)".into()
            }
            ApiError::RequestTimeout => "the request body did not arrive in time".into(),
            ApiError::HeaderTimeout { timeout } => format!(
                "the request line and headers did not arrive within {}",
                humantime::format_duration(*timeout)
            ),
            ApiError::NotRetryable(status) => {
                format!("only a failed message can be retried; this one is {}", status.as_str())
            }
        }
    }
}

impl From<AcceptError> for ApiError {
    fn from(error: AcceptError) -> Self {
        match error {
            AcceptError::UnknownChannel(_) => ApiError::invalid("channel", error.to_string()),
            AcceptError::NoRoute(no_route) => ApiError::NoRoute(no_route),
            AcceptError::Refused(refusal) => ApiError::Refused(refusal),
            AcceptError::OptedOut => ApiError::OptedOut,
            AcceptError::Suppressed => ApiError::Suppressed,
            AcceptError::KeyInFlight => ApiError::KeyInFlight,
            AcceptError::Submit(error) => error.into(),
        }
    }
}

impl From<RetryError> for ApiError {
    fn from(error: RetryError) -> Self {
        match error {
            RetryError::NotFound => ApiError::NotFound,
            RetryError::NotRetryable(status) => ApiError::NotRetryable(status),
            RetryError::KeyReused => ApiError::KeyReused,
            RetryError::Store(error) => error.into(),
        }
    }
}

/// A store read or write outside sending failed: 503, the cause in the service log.
impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        tracing::error!(error = %error, "the message store failed a request");
        ApiError::StoreUnavailable
    }
}

impl From<SubmitError> for ApiError {
    fn from(error: SubmitError) -> Self {
        match error {
            SubmitError::ShuttingDown => ApiError::ShuttingDown,
            SubmitError::QueueFull => ApiError::QueueFull,
            SubmitError::KeyReused => ApiError::KeyReused,
            SubmitError::Store(error) => {
                tracing::error!(error = %error, "message not accepted: store unavailable");
                ApiError::StoreUnavailable
            }
        }
    }
}

impl ApiError {
    fn body(&self) -> Body<'_> {
        let field = match self {
            ApiError::InvalidField { field, .. } | ApiError::DuplicateField { field } => Some(field.as_str()),
            ApiError::Refused(_) | ApiError::OptedOut | ApiError::Suppressed => Some("to"),
            _ => None,
        };
        let status = match self {
            ApiError::NotRetryable(status) => Some(*status),
            _ => None,
        };
        Body { error: Detail { code: self.code(), message: self.message(), field, status } }
    }

    /// The whole HTTP/1.1 answer, closing the connection: for refusals made below the router
    /// (`http/server.rs`), where no `Response` can be sent.
    pub fn to_http1(&self) -> Vec<u8> {
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let status = self.status();
        let mut answer = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or_default(),
            body.len()
        )
        .into_bytes();
        answer.extend_from_slice(&body);
        answer
    }
}

/// The status of an accepted message's answer (and of a replay of it).
pub const ACCEPTED: StatusCode = StatusCode::ACCEPTED;

/// Why `/readyz` answers 503: `{"status":"not_ready"}`, with the store's error when it is the
/// store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// Shutdown has begun: load balancers stop sending here while messages in flight finish.
    ShuttingDown,
    /// The message store does not take writes.
    StoreUnavailable,
}

/// The body of `/readyz`'s 503.
#[derive(Serialize, utoipa::ToSchema)]
pub struct NotReadyBody {
    #[schema(schema_with = not_ready)]
    status: &'static str,
    /// Why, when it is the store.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<NotReadyDetail>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct NotReadyDetail {
    #[schema(schema_with = store_unavailable)]
    code: &'static str,
    message: &'static str,
}

fn not_ready() -> utoipa::openapi::schema::ObjectBuilder {
    crate::api_schema::string_enum(["not_ready"])
}

fn store_unavailable() -> utoipa::openapi::schema::ObjectBuilder {
    crate::api_schema::string_enum([ErrorCode::StoreUnavailable.as_str()])
}

impl IntoResponse for NotReady {
    fn into_response(self) -> Response {
        let error = match self {
            NotReady::ShuttingDown => None,
            NotReady::StoreUnavailable => Some(NotReadyDetail {
                code: ErrorCode::StoreUnavailable.as_str(),
                message: "the message store does not take writes; sends are refused until it does",
            }),
        };
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(NotReadyBody { status: "not_ready", error }))
            .into_response()
    }
}

/// `POST /admin/reload`: 200 with the new (or unchanged) version, 422 with the diagnostics of a
/// config that was refused.
impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        let status = match self {
            Outcome::Rejected { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::OK,
        };
        (status, axum::Json(self)).into_response()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        let retry_after = match self {
            ApiError::NoRoute(_) => Some(HeaderValue::from_static(RETRY_AFTER_NO_ROUTE)),
            ApiError::QueueFull
            | ApiError::StoreUnavailable
            | ApiError::KeyInFlight
            | ApiError::Overloaded
            | ApiError::ShuttingDown => Some(HeaderValue::from_static(RETRY_AFTER_BUSY)),
            // Whole seconds, rounded up: retrying at the advertised time must succeed.
            ApiError::RateLimited { retry_after }
            | ApiError::Refused(Refusal::RecipientRateLimited { retry_after }) => {
                Some(HeaderValue::from(retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)))
            }
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, seconds);
        }
        if let ApiError::Unauthorized { .. } = self {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

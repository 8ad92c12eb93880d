//! The HTTP API (contract: specs/http-api.md): send endpoints, message status, inbound webhooks
//! and conversations, opt-outs, health, metrics and the admin view of the active routing
//! snapshot.

mod console;
mod conversations;
mod error;
pub mod guard;
mod inbound;
pub mod messages;
pub mod openapi;
pub mod paging;
pub mod payload;
mod receipts;
pub mod server;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::{ApiError, ErrorCode, NotReady};
use payload::Endpoint;

use crate::accept::{Accepted, Acceptor, Submission};
use crate::dispatch::Dispatcher;
use crate::inbound::Receiver;
use crate::metrics::Metrics;
use crate::reload::{Reloader, Trigger};
use crate::routing::Snapshot;
use crate::store::{IdempotencyKey, MessageStore};
use guard::{Caller, Guard};
use sha2::{Digest, Sha256};

/// Why a send naming a `status_callback` is refused when no callback secret is configured.
const CALLBACKS_OFF: &str =
    "status callbacks are off on this server (it has no SWITCHBOARD_CALLBACK_SECRET to sign them with)";

/// What every handler shares.
pub struct AppState {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub acceptor: Acceptor,
    /// Stores what comes in (webhooks, providers' inbound URLs) and manages opt-outs.
    pub receiver: Receiver,
    pub dispatcher: Dispatcher,
    pub store: Arc<dyn MessageStore>,
    pub metrics: Arc<Metrics>,
    /// The console's recent per-provider series, sampled from `metrics`.
    pub stats: Arc<crate::stats::Stats>,
    pub reloader: Arc<Reloader>,
    /// False once shutdown has begun.
    pub ready: AtomicBool,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// Largest body of a provider's own inbound request (an email with its attachments).
    pub inbound_body_limit: usize,
    /// API keys and request limits.
    pub guard: Guard,
    /// `status_callback` URLs may be http to a loopback host (`--allow-loopback-callbacks`).
    pub allow_loopback_callbacks: bool,
    /// A callback secret is configured: status callbacks are sent.
    pub callbacks_on: bool,
}

/// Every route, each a handler with its `#[utoipa::path]`: the router serves these and the
/// OpenAPI document describes these, so neither can have a route the other lacks.
fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(legacy_sms))
        .routes(routes!(legacy_email))
        .routes(routes!(native))
        .routes(routes!(messages::search))
        .routes(routes!(get_message))
        .routes(routes!(messages::retry))
        .routes(routes!(inbound::webhook_sms))
        .routes(routes!(inbound::webhook_email))
        .routes(routes!(inbound::provider_inbound))
        .routes(routes!(receipts::provider_receipts))
        .routes(routes!(conversations::list))
        .routes(routes!(conversations::messages))
        .routes(routes!(conversations::opt_outs))
        .routes(routes!(conversations::remove_opt_out))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(admin_routes))
        .routes(routes!(admin_reload))
        .routes(routes!(admin_explain))
        .routes(routes!(console::console))
        .routes(routes!(console::admin_console))
        .routes(routes!(console::script))
        .routes(routes!(console::style))
}

/// The OpenAPI 3.1 document of [`router`]'s routes (`GET /openapi.json`, `switchboard openapi`).
pub fn document() -> utoipa::openapi::OpenApi {
    let mut api = routes().into_openapi();
    openapi::finish(&mut api);
    api
}

pub fn router(state: Arc<AppState>) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), guard::guard))
        .with_state(state)
}

openapi::errors!(
    /// What a send may be refused with (besides the guard's): the body, the payload, accepting.
    SendErrors = [
        UnsupportedMediaType,
        RateLimited,
        PayloadTooLarge,
        RequestTimeout,
        InvalidBody,
        InvalidJson,
        DuplicateField,
        InvalidField,
        NoRoute,
        CountryNotAllowed,
        RecipientRateLimited,
        RecipientOptedOut,
        RecipientSuppressed,
        IdempotencyKeyInFlight,
        IdempotencyKeyReused,
        QueueFull,
        StoreUnavailable,
        ShuttingDown,
    ]
);

/// The `Idempotency-Key` header of the send endpoints.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct SendHeaders {
    /// The same key with the same body within 24 h gets the first answer (202, same id,
    /// `Idempotency-Replayed: true`) and creates nothing; with a different body: 422
    /// `idempotency_key_reused`. 1 to 255 printable ASCII characters.
    #[param(rename = "Idempotency-Key", value_type = String, required = false, min_length = 1, max_length = 255, pattern = "^[!-~]+$")]
    idempotency_key: Option<String>,
}

/// The answer to an accepted (or replayed) message.
#[derive(Serialize, ToSchema)]
#[schema(as = Accepted)]
struct AcceptedBody<'a> {
    /// The message's id (`GET /v1/messages/{id}`).
    id: &'a str,
    /// Always `queued`.
    #[schema(schema_with = queued)]
    status: &'static str,
    channel: &'a str,
}

/// The `status` of an accepted message.
const QUEUED: &str = "queued";

fn queued() -> utoipa::openapi::schema::ObjectBuilder {
    crate::api_schema::string_enum([QUEUED])
}

#[utoipa::path(
    post,
    path = "/api/messages/sms",
    tag = "send",
    summary = "Send an SMS or MMS (the messaging-service contract)",
    params(SendHeaders),
    request_body(content = payload::LegacySms, example = json!({
        "from": "+12016661234", "to": "+18045551234", "type": "sms", "body": "Hello",
        "attachments": null, "timestamp": "2024-11-01T14:00:00Z"
    })),
    responses(
        (status = 202, description = "Stored and queued", body = AcceptedBody, headers(
            ("Idempotency-Replayed" = String, description = "`true` when this answers a retry with the same `Idempotency-Key`")
        ), example = json!({"id": "01a21b0b-e12f-757d-92cc-ade515dcfd46", "status": "queued", "channel": "sms"})),
        SendErrors,
    )
)]
async fn legacy_sms(State(state): State<Arc<AppState>>, request: Request) -> Response {
    send(&state, Endpoint::LegacySms, request).await.unwrap_or_else(IntoResponse::into_response)
}

#[utoipa::path(
    post,
    path = "/api/messages/email",
    tag = "send",
    summary = "Send an email (the messaging-service contract)",
    params(SendHeaders),
    request_body(content = payload::LegacyEmail, example = json!({
        "from": "user@usehatchapp.com", "to": "contact@gmail.com", "body": "<b>hi</b>",
        "attachments": [], "timestamp": "2024-11-01T14:00:00Z"
    })),
    responses(
        (status = 202, description = "Stored and queued", body = AcceptedBody, headers(
            ("Idempotency-Replayed" = String, description = "`true` when this answers a retry with the same `Idempotency-Key`")
        ), example = json!({"id": "01a21b0b-e12f-757d-92cc-ade515dcfd46", "status": "queued", "channel": "email"})),
        SendErrors,
    )
)]
async fn legacy_email(State(state): State<Arc<AppState>>, request: Request) -> Response {
    send(&state, Endpoint::LegacyEmail, request).await.unwrap_or_else(IntoResponse::into_response)
}

#[utoipa::path(
    post,
    path = "/v1/messages",
    tag = "send",
    summary = "Send a message on any channel (the native API)",
    params(SendHeaders),
    request_body(content = payload::Native, example = json!({
        "channel": "sms", "from": "+12016661234", "to": "+18045551234", "body": "Your code is 123456",
        "subject": null, "attachments": [], "tags": ["otp"]
    })),
    responses(
        (status = 202, description = "Stored and queued", body = AcceptedBody, headers(
            ("Location" = String, description = "`/v1/messages/{id}`"),
            ("Idempotency-Replayed" = String, description = "`true` when this answers a retry with the same `Idempotency-Key`")
        ), example = json!({"id": "01a21b0b-e12f-757d-92cc-ade515dcfd46", "status": "queued", "channel": "sms"})),
        SendErrors,
    )
)]
async fn native(State(state): State<Arc<AppState>>, request: Request) -> Response {
    send(&state, Endpoint::Native, request).await.unwrap_or_else(IntoResponse::into_response)
}

async fn send(state: &AppState, endpoint: Endpoint, request: Request) -> Result<Response, ApiError> {
    // Taking the request apart avoids copying its headers.
    let (parts, body) = request.into_parts();
    let caller = caller_of(&parts);
    if !is_json(&parts.headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    // Refused before the body is read: a flood costs as little as possible.
    state.guard.take_send(&caller)?;
    let bytes = read_body_in_time(state, body, &parts.headers, state.body_limit).await?;
    let idempotency_key = idempotency_key(&parts.headers, &format!("{endpoint:?}"), &bytes)?;
    let (message, status_callback) = payload::parse_send(endpoint, &bytes, uuid::Uuid::now_v7().to_string())?;
    let status_callback = match status_callback {
        Some(url) => Some(callback_url(state, &url)?),
        None => None,
    };
    let caller = caller.key.as_deref().map(str::to_owned);
    let submission = Submission { message, caller, idempotency_key, status_callback };
    let accepted = state.acceptor.accept(submission).await?;
    Ok(accepted_response(endpoint, &accepted))
}

/// A message's `status_callback`, checked (`crate::callbacks::check_url`) and as it will be
/// called (normalised: what is stored and shown is what is POSTed to).
fn callback_url(state: &AppState, url: &str) -> Result<String, ApiError> {
    let invalid = |message: String| ApiError::InvalidField { field: "status_callback".into(), message };
    if !state.callbacks_on {
        return Err(invalid(CALLBACKS_OFF.to_owned()));
    }
    // The URL parser would drop these silently: the URL called would not be the one given.
    if url.contains(|c: char| c.is_control() || c.is_whitespace() || c == '\u{ad}') {
        return Err(invalid("`status_callback` must not contain spaces or control characters".to_owned()));
    }
    let url = crate::callbacks::check_url(url, state.allow_loopback_callbacks)
        .map_err(|e| invalid(e.to_string()))?;
    Ok(url.to_string())
}

/// The 202 for an accepted (or replayed) message.
fn accepted_response(endpoint: Endpoint, accepted: &Accepted) -> Response {
    let (Accepted::New { id, channel } | Accepted::Replayed { id, channel }) = accepted;
    let replayed = matches!(accepted, Accepted::Replayed { .. });
    let mut response = (error::ACCEPTED, Json(AcceptedBody { id, status: QUEUED, channel })).into_response();
    if endpoint == Endpoint::Native {
        if let Ok(location) = HeaderValue::from_str(&format!("/v1/messages/{id}")) {
            response.headers_mut().insert(header::LOCATION, location);
        }
    }
    if replayed {
        response.headers_mut().insert("idempotency-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// The `Idempotency-Key` header, if any, with a digest of the request it came with: what it
/// asks (a send endpoint's name, `Retry`) and its body (a retry's: the message id).
fn idempotency_key(
    headers: &HeaderMap,
    request: &str,
    body: &[u8],
) -> Result<Option<IdempotencyKey>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(ApiError::invalid("Idempotency-Key", "send one Idempotency-Key header, not several"));
    }
    let key = value
        .to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::invalid(
                "Idempotency-Key",
                "the Idempotency-Key header must be 1 to 255 printable ASCII characters",
            )
        })?;
    let mut digest = Sha256::new();
    digest.update(format!("{request}\n").as_bytes());
    digest.update(body);
    let request_hash = digest.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(Some(IdempotencyKey { key: key.to_owned(), request_hash }))
}

/// `application/json`, with or without parameters (`; charset=utf-8`).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// Who is calling, as the guard found it (anyone, when it did not run).
fn caller_of(parts: &axum::http::request::Parts) -> Caller {
    parts.extensions.get::<Caller>().cloned().unwrap_or(Caller { key: None, admin: false })
}

/// The body, at most `limit` bytes, arrived within the request timeout.
async fn read_body_in_time(
    state: &AppState,
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, ApiError> {
    tokio::time::timeout(state.guard.body_timeout, read_body(body, headers, limit))
        .await
        .map_err(|_| ApiError::RequestTimeout)?
}

async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(ApiError::PayloadTooLarge { limit })
        }
        Err(error) => Err(ApiError::invalid_body(&*error)),
    }
}

openapi::errors!(
    /// What reading a message may answer besides it.
    GetMessageErrors = [NotFound, StoreUnavailable]
);

#[utoipa::path(
    get,
    path = "/v1/messages/{id}",
    tag = "messages",
    summary = "A message's status, attempts and timeline (never its body)",
    params(("id" = String, Path, description = "The id the send answered")),
    responses(
        (status = 200, description = "The message", body = crate::store::MessageView),
        GetMessageErrors,
    )
)]
async fn get_message(
    State(state): State<Arc<AppState>>,
    caller: Option<axum::Extension<Caller>>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let Ok(Path(id)) = id else { return ApiError::NotFound.into_response() };
    match state.store.get(&id).await {
        // Another key's message is not found: its existence is not confirmed either. An admin
        // key reads any (it searches and retries any).
        Ok(Some(view)) if caller.is_none_or(|c| c.admin || c.owns(view.owner.as_deref())) => {
            Json(view).into_response()
        }
        Ok(_) => ApiError::NotFound.into_response(),
        Err(error) => {
            tracing::error!(error = %error, "could not read a message");
            ApiError::StoreUnavailable.into_response()
        }
    }
}

/// `GET /healthz`.
#[derive(Serialize, ToSchema)]
struct Health {
    #[schema(schema_with = ok)]
    status: &'static str,
}

fn ok() -> utoipa::openapi::schema::ObjectBuilder {
    crate::api_schema::string_enum(["ok"])
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "The process runs",
    responses((status = 200, description = "Alive", body = Health, example = json!({"status": "ok"})))
)]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// How long `/readyz` waits for the store to show it takes writes.
const STORE_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `GET /readyz` when ready.
#[derive(Serialize, ToSchema)]
struct Ready<'a> {
    #[schema(schema_with = ready)]
    status: &'static str,
    /// The active config's version (content hash).
    config_version: &'a str,
}

fn ready() -> utoipa::openapi::schema::ObjectBuilder {
    crate::api_schema::string_enum(["ready"])
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Whether this instance takes messages",
    responses(
        (status = 200, description = "Config loaded, workers running, the store takes writes", body = Ready),
        (status = 503, description = "Shutting down, or the store refuses writes", body = error::NotReadyBody),
    )
)]
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if !state.ready.load(Ordering::Relaxed) {
        return NotReady::ShuttingDown.into_response();
    }
    let reason = match tokio::time::timeout(STORE_CHECK_TIMEOUT, state.store.check()).await {
        Ok(Ok(())) => {
            let version = &state.snapshot.load().version;
            return Json(Ready { status: "ready", config_version: version }).into_response();
        }
        Ok(Err(error)) => error.to_string(),
        Err(_) => format!("the message store did not answer within {}s", STORE_CHECK_TIMEOUT.as_secs()),
    };
    tracing::warn!(reason, "not ready: the message store does not take writes");
    NotReady::StoreUnavailable.into_response()
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String))
)]
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.set_queue_depth(state.dispatcher.queue_depth());
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.render(),
    )
        .into_response()
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    summary = "This document",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object))
)]
async fn openapi_json() -> Response {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let text = DOCUMENT.get_or_init(|| openapi::render(&document()));
    ([(header::CONTENT_TYPE, "application/json")], text.as_str()).into_response()
}

/// The active config and the last reload refused: the head of `/admin/routes` and
/// `/admin/console`.
#[derive(Serialize, ToSchema)]
struct ActiveConfig<'a> {
    /// The active config's content hash.
    version: &'a str,
    /// The file it came from.
    path: String,
    #[schema(schema_with = crate::api_schema::date_time)]
    loaded_at: String,
    loaded_by: Trigger,
    /// The last reload refused, with every diagnostic; `null` if none was.
    last_rejected: Option<crate::reload::Rejection>,
}

impl<'a> ActiveConfig<'a> {
    fn of(snapshot: &'a Snapshot, status: crate::reload::Status) -> ActiveConfig<'a> {
        ActiveConfig {
            version: &snapshot.version,
            path: status.active.path,
            loaded_at: humantime::format_rfc3339_millis(status.active.loaded_at).to_string(),
            loaded_by: status.active.trigger,
            last_rejected: status.last_rejected,
        }
    }
}

/// `GET /admin/routes`: the active snapshot.
#[derive(Serialize, ToSchema)]
struct AdminRoutes<'a> {
    #[serde(flatten)]
    active: ActiveConfig<'a>,
    routes: Vec<AdminRoute<'a>>,
    providers: Vec<AdminProvider<'a>>,
}

/// A route of the active config.
#[derive(Serialize, ToSchema)]
struct AdminRoute<'a> {
    #[schema(value_type = String)]
    channel: &'a switchboard_providers::Channel,
    strategy: crate::config::resolved::Strategy,
    max_attempts: u32,
    allowed_country_codes: &'a Option<Vec<String>>,
    max_per_recipient_per_hour: Option<u32>,
    providers: &'a [String],
    weights: &'a [u32],
    /// The route's `[[routes.C.rules]]`, resolved.
    #[schema(value_type = Vec<Object>)]
    rules: &'a [crate::config::resolved::ResolvedRule],
    /// Where each setting's value came from.
    #[schema(value_type = Object)]
    sources: &'a std::collections::BTreeMap<&'static str, crate::config::resolved::SettingSource>,
}

impl<'a> AdminRoute<'a> {
    fn of(route: &'a crate::routing::Route) -> Self {
        AdminRoute {
            channel: &route.config.channel,
            strategy: route.config.strategy,
            max_attempts: route.config.max_attempts,
            allowed_country_codes: &route.config.allowed_country_codes,
            max_per_recipient_per_hour: route.config.max_per_recipient_per_hour,
            providers: &route.config.providers,
            weights: &route.config.weights,
            rules: &route.config.rules,
            sources: &route.config.sources,
        }
    }
}

/// A provider of the active config.
#[derive(Serialize, ToSchema)]
struct AdminProvider<'a> {
    name: &'a str,
    kind: &'static str,
    #[schema(value_type = Vec<String>)]
    channels: &'a [switchboard_providers::Channel],
    /// The settings every provider has, resolved.
    #[schema(value_type = Object)]
    settings: &'a crate::config::resolved::ProviderSettings,
    /// The kind's own settings; credentials and values from `${VAR}` are `"<redacted>"`.
    #[schema(value_type = Object)]
    kind_settings: serde_json::Value,
    #[schema(value_type = Object)]
    sources: &'a std::collections::BTreeMap<&'static str, crate::config::resolved::SettingSource>,
    breaker: crate::health::BreakerState,
    paused: bool,
}

#[utoipa::path(
    get,
    path = "/admin/routes",
    tag = "admin",
    summary = "The active routing snapshot",
    responses((status = 200, description = "The active config", body = AdminRoutes))
)]
async fn admin_routes(State(state): State<Arc<AppState>>) -> Response {
    let snapshot = state.snapshot.load();
    let now = Instant::now();
    let routes = snapshot.routes().into_iter().map(AdminRoute::of).collect();
    let providers = snapshot
        .providers()
        .iter()
        .map(|p| AdminProvider {
            name: &p.config.name,
            kind: p.config.kind.kind,
            channels: &p.config.channels,
            settings: &p.config.settings,
            kind_settings: p.config.kind_settings_redacted(),
            sources: &p.config.sources,
            breaker: p.health().breaker.state(now),
            paused: p.health().pause.paused_until(now).is_some(),
        })
        .collect();
    Json(AdminRoutes { active: ActiveConfig::of(&snapshot, state.reloader.status()), routes, providers })
        .into_response()
}

openapi::errors!(
    /// What `/admin/explain` may answer besides the explanation.
    ExplainErrors = [InvalidField, CountryNotAllowed]
);

/// `GET /admin/explain?channel=…&to=…[&tag=a,b]`: `switchboard explain` against the active
/// snapshot, with each provider's live breaker state.
#[utoipa::path(
    get,
    path = "/admin/explain",
    tag = "admin",
    summary = "Which rule and providers a message would get",
    params(
        ("channel" = String, Query, description = "The message's channel"),
        ("to" = String, Query, description = "The recipient, URL-encoded (`%2B44…`)"),
        ("tag" = Option<String>, Query, description = "Tags, comma-separated"),
    ),
    responses(
        (status = 200, description = "The explanation", body = crate::routing::explain::Explanation),
        ExplainErrors,
    )
)]
async fn admin_explain(
    State(state): State<Arc<AppState>>,
    paging::Params(query): paging::Params,
) -> Response {
    let query = match query {
        Ok(query) => query,
        Err(error) => return error.into_response(),
    };
    let (Some(channel), Some(to)) = (query.get("channel"), query.get("to")) else {
        let missing = if query.contains_key("channel") { "to" } else { "channel" };
        return ApiError::invalid(
            missing,
            format!("`{missing}` is required: /admin/explain?channel=sms&to=%2B447700900123"),
        )
        .into_response();
    };
    let to = plus_restored(to);
    let to = to.as_str();
    let tags: Vec<String> = query
        .get("tag")
        .map(|t| t.split(',').filter(|t| !t.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    if let Some(refusal) = payload::recipient_refusal(channel, to, &tags) {
        return refusal.into_response();
    }
    let snapshot = state.snapshot.load();
    let route = match snapshot.route_for(channel) {
        Ok(route) => route,
        Err(no_route) => return ApiError::invalid("channel", no_route.to_string()).into_response(),
    };
    // What a send would be refused, explain refuses too.
    if let Err(refusal) = crate::accept::check_country(&route.config, to) {
        return ApiError::Refused(refusal).into_response();
    }
    let by_name = |name: &str| snapshot.provider(name).map(|p| &p.config);
    let mut explanation = crate::routing::explain::explain(&route.config, by_name, to, &tags);
    let now = Instant::now();
    for candidate in &mut explanation.providers {
        if let Some(handle) = snapshot.provider(&candidate.name) {
            candidate.breaker = Some(handle.health().breaker.state(now));
            candidate.paused = Some(handle.health().pause.paused_until(now).is_some());
        }
    }
    Json(explanation).into_response()
}

/// A query parameter whose leading `+` (a number's) was sent unencoded, which arrives as a space.
fn plus_restored(value: &str) -> String {
    match value.strip_prefix(' ') {
        Some(rest) => format!("+{rest}"),
        None => value.to_owned(),
    }
}

/// Reloads now; 200 with the new (or unchanged) version, 422 with the diagnostics.
#[utoipa::path(
    post,
    path = "/admin/reload",
    tag = "admin",
    summary = "Reload routes.toml now",
    responses(
        (status = 200, description = "Applied, or unchanged", body = crate::reload::Outcome),
        (status = 422, description = "The file was refused; the last good config keeps serving", body = crate::reload::Outcome),
    )
)]
async fn admin_reload(State(state): State<Arc<AppState>>) -> Response {
    state.reloader.reload(Trigger::Admin).await.into_response()
}

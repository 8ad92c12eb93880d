//! Messages coming in: the contract's generic webhooks (`POST /api/webhooks/sms|email`, JSON,
//! an API key when keys are on) and the providers' own inbound URLs
//! (`POST /v1/inbound/{kind}/{provider}`, in the provider's format, proven by its signature or
//! secret instead of an API key). Both hand what they parsed to [`crate::inbound::Receiver`].

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use switchboard_providers::inbound::{InboundError, InboundHead, InboundRequest};
use switchboard_providers::Provider;
use utoipa::ToSchema;

use crate::metrics::Metrics;

use super::openapi::errors;
use super::payload::{self, Webhook};
use super::{caller_of, is_json, read_body_in_time, ApiError, AppState};
use crate::store::Received;
use crate::store::Status;

/// The answer to a generic webhook.
#[derive(Serialize, ToSchema)]
#[schema(as = Received)]
struct ReceivedBody<'a> {
    /// The stored message's id (the first one's, for a redelivery).
    id: &'a str,
    conversation_id: i64,
    /// Always `received`.
    #[schema(schema_with = received)]
    status: &'static str,
    channel: &'a str,
}

fn received() -> utoipa::openapi::schema::ObjectBuilder {
    crate::api_schema::string_enum([Status::Received.as_str()])
}

errors!(
    /// What a generic webhook may answer besides 200.
    WebhookErrors = [
        UnsupportedMediaType,
        PayloadTooLarge,
        RequestTimeout,
        InvalidBody,
        InvalidJson,
        DuplicateField,
        InvalidField,
        StoreUnavailable,
    ]
);

errors!(
    /// What a provider's own URL (inbound or receipts) may answer besides 200.
    ProviderErrors = [
        NotFound,
        InvalidSignature,
        UnsupportedMediaType,
        PayloadTooLarge,
        RequestTimeout,
        InvalidBody,
        InvalidField,
        StoreUnavailable,
    ]
);

#[utoipa::path(
    post,
    path = "/api/webhooks/sms",
    tag = "conversations",
    summary = "An inbound SMS or MMS (the messaging-service contract's webhook)",
    request_body(content = payload::WebhookSms, example = json!({
        "from": "+18045551234", "to": "+12016661234", "type": "sms", "messaging_provider_id": "message-1",
        "body": "text message", "attachments": null, "timestamp": "2024-11-01T14:00:00Z"
    })),
    responses(
        (status = 200, description = "Stored (or, redelivered, already stored: the same id)", body = ReceivedBody,
            example = json!({"id": "019ad1c2-6f0e-7b3a-9d1e-2f4a5b6c7d8e", "conversation_id": 1, "status": "received", "channel": "sms"})),
        WebhookErrors,
    )
)]
pub async fn webhook_sms(State(state): State<Arc<AppState>>, request: Request) -> Response {
    webhook(&state, Webhook::Sms, request).await.unwrap_or_else(IntoResponse::into_response)
}

#[utoipa::path(
    post,
    path = "/api/webhooks/email",
    tag = "conversations",
    summary = "An inbound email (the messaging-service contract's webhook)",
    request_body(content = payload::WebhookEmail, example = json!({
        "from": "contact@gmail.com", "to": "user@usehatchapp.com", "xillio_id": "message-3",
        "body": "<html><body>html is <b>allowed</b> in inbound emails</body></html>",
        "attachments": ["https://example.com/received-document.pdf"], "timestamp": "2024-11-01T14:00:00Z"
    })),
    responses(
        (status = 200, description = "Stored (or, redelivered, already stored: the same id)", body = ReceivedBody,
            example = json!({"id": "019ad1c2-6f0e-7b3a-9d1e-2f4a5b6c7d8f", "conversation_id": 2, "status": "received", "channel": "email"})),
        WebhookErrors,
    )
)]
pub async fn webhook_email(State(state): State<Arc<AppState>>, request: Request) -> Response {
    webhook(&state, Webhook::Email, request).await.unwrap_or_else(IntoResponse::into_response)
}

/// 200 with the stored (or, for a redelivery, the first) message's id and its conversation.
async fn webhook(state: &AppState, webhook: Webhook, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let caller = caller_of(&parts);
    if !is_json(&parts.headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let bytes = read_body_in_time(state, body, &parts.headers, state.body_limit).await?;
    let incoming = payload::parse_webhook(webhook, &bytes)?;
    let channel = incoming.channel.clone();
    let Received { id, conversation_id, .. } =
        state.receiver.receive(incoming, None, caller.key.as_deref()).await?;
    let status = Status::Received.as_str();
    let body = ReceivedBody { id: &id, conversation_id, status, channel: channel.as_str() };
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// `POST /v1/inbound/{kind}/{provider}`: `provider` must be a provider of `kind` in the active
/// config (else 404); its kind verifies and parses the request, and says what to answer.
#[utoipa::path(
    post,
    path = "/v1/inbound/{kind}/{provider}",
    tag = "providers",
    summary = "A provider's own inbound messages, in its format",
    description = "`twilio`: form-encoded (`MessageSid`, `From`, `To`, `Body`, `NumMedia`, `MediaUrl0`…), \
signed with `X-Twilio-Signature`. `sendgrid`: Inbound Parse, `multipart/form-data`, HTTP Basic auth \
with the provider's `inbound_secret`. Any other kind, or a provider not of that kind in the active \
config: 404.",
    params(
        ("kind" = String, Path, description = "The provider's kind (`twilio`, `sendgrid`)"),
        ("provider" = String, Path, description = "The provider's name in routes.toml"),
    ),
    request_body(description = "The provider's own request", content(
        (Object = "application/x-www-form-urlencoded"),
        (Object = "multipart/form-data"),
    )),
    responses(
        (status = 200, description = "Stored; the body is what the provider expects", content(
            (String = "text/xml", example = "<Response></Response>"),
            (String = "text/plain"),
        )),
        ProviderErrors,
    )
)]
pub async fn provider_inbound(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
    request: Request,
) -> Response {
    let Ok(Path((kind, name))) = path else { return ApiError::NotFound.into_response() };
    receive(&state, &kind, &name, request).await.unwrap_or_else(IntoResponse::into_response)
}

async fn receive(state: &AppState, kind: &str, name: &str, request: Request) -> Result<Response, ApiError> {
    let refuse = |error| refused(state, name, error, Metrics::inbound_rejected);
    let read = read_provider_request(state, kind, name, request, |p, head| p.admit(head), refuse).await?;
    let inbound = read.instance.receive(read.request()).await.map_err(refuse)?;
    for message in &inbound.messages {
        if let Err(error) = payload::check_incoming(message) {
            state.metrics.inbound_rejected(name, "invalid_request");
            return Err(error);
        }
    }
    // Stored one by one: a redelivery of the whole request finds those stored and stores the rest.
    for message in inbound.messages {
        state.receiver.receive(message, Some(name), None).await?;
    }
    Ok(provider_answer(inbound.content_type, inbound.answer))
}

/// `200` with the body and content type a provider expects.
pub(super) fn provider_answer(content_type: &'static str, answer: String) -> Response {
    let mut response = (StatusCode::OK, answer).into_response();
    let content_type = HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("text/plain"));
    response.headers_mut().insert(header::CONTENT_TYPE, content_type);
    response
}

/// A request to one of a provider's own URLs (`/v1/inbound/…`, `/v1/receipts/…`): `name` must be
/// a provider of `kind` in the active config (else 404); `admit` (the kind's check of the
/// headers) runs before a byte of the body is read — these URLs take no API key — and the body
/// is read within the smaller of the service's and the kind's limit.
pub(super) async fn read_provider_request(
    state: &AppState,
    kind: &str,
    name: &str,
    request: Request,
    admit: impl FnOnce(&dyn Provider, InboundHead<'_>) -> Result<(), InboundError>,
    refuse: impl Fn(InboundError) -> ApiError,
) -> Result<ProviderRequest, ApiError> {
    let snapshot = state.snapshot.load_full();
    let handle = snapshot.provider(name).filter(|h| h.config.kind.kind == kind).ok_or(ApiError::NotFound)?;
    let instance = Arc::clone(handle.instance());
    let (parts, body) = request.into_parts();
    let path_and_query = parts.uri.path_and_query().map_or(parts.uri.path(), |p| p.as_str());
    admit(instance.as_ref(), InboundHead { path_and_query, headers: &parts.headers }).map_err(&refuse)?;
    let limit =
        instance.max_inbound_body().map_or(state.inbound_body_limit, |l| l.min(state.inbound_body_limit));
    let body = read_body_in_time(state, body, &parts.headers, limit).await?;
    Ok(ProviderRequest { instance, parts, body })
}

/// A provider's request, read: the provider instance it is for, and the request.
pub(super) struct ProviderRequest {
    pub(super) instance: Arc<dyn Provider>,
    parts: axum::http::request::Parts,
    body: Bytes,
}

impl ProviderRequest {
    /// The request as the kind is given it.
    pub(super) fn request(&self) -> InboundRequest<'_> {
        let uri = &self.parts.uri;
        let path_and_query = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        InboundRequest { path_and_query, headers: &self.parts.headers, body: &self.body }
    }
}

/// The answer to a refused request to a provider's URL, logged and counted with `count` (the
/// reason is logged, never answered: the caller is not authenticated).
pub(super) fn refused(
    state: &AppState,
    provider: &str,
    error: InboundError,
    count: fn(&Metrics, &str, &str),
) -> ApiError {
    let (reason, answer) = match error {
        InboundError::NotSupported => return ApiError::NotFound,
        InboundError::InvalidSignature(reason) => {
            tracing::info!(provider, reason, "request to a provider URL refused: signature");
            ("invalid_signature", ApiError::InvalidSignature)
        }
        InboundError::Invalid { field, message } => {
            tracing::info!(provider, field, "request to a provider URL refused: invalid field");
            ("invalid_request", ApiError::InvalidField { field, message })
        }
        InboundError::UnsupportedMediaType { expected } => {
            ("unsupported_media_type", ApiError::WrongMediaType { expected })
        }
    };
    count(&state.metrics, provider, reason);
    answer
}

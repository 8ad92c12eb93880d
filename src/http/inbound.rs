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

use crate::metrics::Metrics;

use super::payload::{self, Webhook};
use super::{caller_of, is_json, read_body_in_time, ApiError, AppState};
use crate::store::Received;

/// The answer to a generic webhook.
#[derive(Serialize)]
struct ReceivedBody<'a> {
    id: &'a str,
    conversation_id: i64,
    status: &'static str,
    channel: &'a str,
}

pub async fn webhook_sms(State(state): State<Arc<AppState>>, request: Request) -> Response {
    webhook(&state, Webhook::Sms, request).await.unwrap_or_else(IntoResponse::into_response)
}

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
    let body = ReceivedBody { id: &id, conversation_id, status: "received", channel: channel.as_str() };
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// `POST /v1/inbound/{kind}/{provider}`: `provider` must be a provider of `kind` in the active
/// config (else 404); its kind verifies and parses the request, and says what to answer.
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

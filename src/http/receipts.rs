//! Delivery receipts coming in: `POST /v1/receipts/{kind}/{provider}`, in the provider's own
//! format (Twilio's StatusCallback, SendGrid's signed Event Webhook, the `webhook` kind's JSON),
//! proven by its signature instead of an API key. The kind verifies and parses
//! ([`switchboard_providers::Provider::receipts`]); the receipts are recorded in one store write
//! before the answer (events, delivery status, suppressions, callbacks queued), so a `200` means
//! they are kept.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};

use super::inbound::{provider_answer, read_provider_request, refused, ProviderErrors};
use super::{ApiError, AppState};
use crate::metrics::Metrics;

/// `POST /v1/receipts/{kind}/{provider}`.
#[utoipa::path(
    post,
    path = "/v1/receipts/{kind}/{provider}",
    tag = "providers",
    summary = "A provider's delivery receipts, in its format",
    description = "`twilio`: StatusCallback, form-encoded, signed with `X-Twilio-Signature`. `sendgrid`: \
the Signed Event Webhook, a JSON array of events. `webhook`: JSON `{\"id\", \"status\", \"time\"}` \
or an array of them, signed with `X-Switchboard-Signature`. A signed time more than 5 minutes from \
now is refused. Any other kind, or a provider not of that kind in the active config: 404.",
    params(
        ("kind" = String, Path, description = "The provider's kind (`twilio`, `sendgrid`, `webhook`)"),
        ("provider" = String, Path, description = "The provider's name in routes.toml"),
    ),
    request_body(description = "The provider's own request", content(
        (Object = "application/x-www-form-urlencoded"),
        (Value = "application/json"),
    )),
    responses(
        (status = 200, description = "Recorded (also when no message matched)", content_type = "text/plain", body = String),
        ProviderErrors,
    )
)]
pub async fn provider_receipts(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
    request: Request,
) -> Response {
    let Ok(Path((kind, name))) = path else { return ApiError::NotFound.into_response() };
    receive(&state, &kind, &name, request).await.unwrap_or_else(IntoResponse::into_response)
}

async fn receive(state: &AppState, kind: &str, name: &str, request: Request) -> Result<Response, ApiError> {
    let refuse = |error| refused(state, name, error, Metrics::receipt_rejected);
    let read =
        read_provider_request(state, kind, name, request, |p, head| p.admit_receipts(head), refuse).await?;
    let now = SystemTime::now();
    let receipts = read.instance.receipts(read.request(), now).await.map_err(refuse)?;
    state.receiver.record_receipts(name, &receipts.receipts, now).await?;
    Ok(provider_answer(receipts.content_type, receipts.answer))
}

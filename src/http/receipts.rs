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

use super::inbound::{provider_answer, read_provider_request, refused};
use super::{ApiError, AppState};
use crate::metrics::Metrics;

/// `POST /v1/receipts/{kind}/{provider}`.
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

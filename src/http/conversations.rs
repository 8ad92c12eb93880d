//! Reading two-way messaging: `GET /api/conversations`, `GET /api/conversations/{id}/messages`,
//! and the opt-outs (`GET /v1/opt-outs`, `DELETE /v1/opt-outs/{channel}/{sender}/{recipient}`).
//! Pages as [`super::paging`] reads them.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;

use super::guard::Caller;
use super::openapi::errors;
use super::paging::{page, Cursor, PageQuery, Params};
use super::{ApiError, AppState};
use crate::store::conversation::{family, normalize, ConversationMessage, ConversationView, OptOut};
use crate::store::delivery::SUPPRESSED_SENDER;
use crate::store::OptOutKey;

/// `GET /api/conversations`.
#[derive(Serialize, ToSchema)]
struct ConversationsPage {
    /// Newest activity first.
    conversations: Vec<ConversationView>,
    /// The next page's `cursor`; `null` on the last page.
    next_cursor: Option<String>,
}

/// `GET /api/conversations/{id}/messages`.
#[derive(Serialize, ToSchema)]
struct MessagesPage {
    conversation_id: i64,
    /// Oldest first.
    messages: Vec<ConversationMessage>,
    /// The next page's `cursor`; `null` on the last page.
    next_cursor: Option<String>,
}

/// `GET /v1/opt-outs`.
#[derive(Serialize, ToSchema)]
struct OptOutsPage {
    /// By channel, sender, recipient.
    opt_outs: Vec<OptOut>,
    /// The next page's `cursor`; `null` on the last page.
    next_cursor: Option<String>,
}

errors!(
    /// What a page may answer besides itself.
    PageErrors = [InvalidField, StoreUnavailable]
);

errors!(
    /// What a conversation's page may answer besides itself.
    ConversationPageErrors = [NotFound, InvalidField, StoreUnavailable]
);

errors!(
    /// What removing an opt-out may answer besides 204.
    RemoveOptOutErrors = [NotFound, StoreUnavailable]
);

/// Who may see which conversations: `None` sees all (an admin key, or authentication off);
/// another key sees those holding a message it owns.
pub(super) fn viewer(caller: &Caller) -> Option<&str> {
    if caller.admin {
        None
    } else {
        caller.key.as_deref()
    }
}

#[utoipa::path(
    get,
    path = "/api/conversations",
    tag = "conversations",
    summary = "Conversations the caller may see, newest activity first",
    params(PageQuery),
    responses(
        (status = 200, description = "A page", body = ConversationsPage),
        PageErrors,
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Params(query): Params,
) -> Result<Response, ApiError> {
    let page = page(query, |c| match c {
        Cursor::Conversations(id) => Some(id),
        _ => None,
    })?;
    let listed = state.store.conversations(viewer(&caller), page).await?;
    let next = listed.next.map(|id| Cursor::Conversations(id).encode());
    Ok(Json(ConversationsPage { conversations: listed.items, next_cursor: next }).into_response())
}

#[utoipa::path(
    get,
    path = "/api/conversations/{id}/messages",
    tag = "conversations",
    summary = "A conversation's messages, oldest first",
    params(("id" = i64, Path, minimum = 1, description = "The conversation's id"), PageQuery),
    responses(
        (status = 200, description = "A page", body = MessagesPage),
        ConversationPageErrors,
    )
)]
pub async fn messages(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
    Params(query): Params,
) -> Result<Response, ApiError> {
    // Not a positive integer written plainly (no sign, no leading zero): no such conversation.
    let id = id
        .ok()
        .filter(|Path(id)| !id.starts_with('0') && id.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|Path(id)| id.parse::<i64>().ok())
        .filter(|id| *id > 0)
        .ok_or(ApiError::NotFound)?;
    let page = page(query, |c| match c {
        Cursor::Messages(id) => Some(id),
        _ => None,
    })?;
    // Another key's conversation is not found: its existence is not confirmed either.
    let listed =
        state.store.conversation_messages(id, viewer(&caller), page).await?.ok_or(ApiError::NotFound)?;
    let next = listed.next.map(|id| Cursor::Messages(id).encode());
    Ok(Json(MessagesPage { conversation_id: id, messages: listed.items, next_cursor: next }).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/opt-outs",
    tag = "conversations",
    summary = "Opt-outs and suppressed addresses",
    params(PageQuery),
    responses(
        (status = 200, description = "A page", body = OptOutsPage),
        PageErrors,
    )
)]
pub async fn opt_outs(
    State(state): State<Arc<AppState>>,
    Params(query): Params,
) -> Result<Response, ApiError> {
    let page = page(query, |c| match c {
        Cursor::OptOuts(key) => Some(key),
        _ => None,
    })?;
    let listed = state.store.opt_outs(page).await?;
    let next = listed.next.map(|key| Cursor::OptOuts(key).encode());
    Ok(Json(OptOutsPage { opt_outs: listed.items, next_cursor: next }).into_response())
}

/// `DELETE /v1/opt-outs/{channel}/{sender}/{recipient}`: 204 when one was removed, else 404. The
/// channel may be any of its family's (`mms` names the `sms` family's opt-out); the numbers are
/// compared normalised.
#[utoipa::path(
    delete,
    path = "/v1/opt-outs/{channel}/{sender}/{recipient}",
    tag = "conversations",
    summary = "Lift an opt-out (or, with sender `*`, a suppression)",
    params(
        ("channel" = String, Path, description = "Any channel of the family (`mms` names the `sms` family's)"),
        ("sender" = String, Path, description = "The number written to (URL-encode `+` as `%2B`), or `*` for a suppression"),
        ("recipient" = String, Path, description = "The recipient"),
    ),
    responses(
        (status = 204, description = "Removed"),
        RemoveOptOutErrors,
    )
)]
pub async fn remove_opt_out(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Ok(Path((channel, sender, recipient))) = path else { return Err(ApiError::NotFound) };
    // Normalising drops formatting characters: a control character or a space is not one, and a
    // path holding one names no opt-out.
    let odd = |part: &String| part.contains(|c: char| c.is_control() || c.is_whitespace());
    if [&channel, &sender, &recipient].into_iter().any(odd) {
        return Err(ApiError::NotFound);
    }
    let family = family(&channel);
    // `*`: a suppressed address (every sender).
    let key = if sender == SUPPRESSED_SENDER {
        OptOutKey::suppression(family, &recipient)
    } else {
        OptOutKey {
            family: family.to_owned(),
            sender: normalize(family, &sender),
            recipient: normalize(family, &recipient),
        }
    };
    if state.receiver.remove_opt_out(&key).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::NotFound)
    }
}

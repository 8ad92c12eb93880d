//! Reading two-way messaging: `GET /api/conversations`, `GET /api/conversations/{id}/messages`,
//! and the opt-outs (`GET /v1/opt-outs`, `DELETE /v1/opt-outs/{channel}/{sender}/{recipient}`).
//! Pages are `?limit=` (default 50, at most 200) and `?cursor=` (opaque: the `next_cursor` of the
//! page before).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;
use utoipa::ToSchema;

use super::guard::Caller;
use super::openapi::errors;
use super::{ApiError, AppState};
use crate::store::conversation::{family, normalize, ConversationMessage, ConversationView, OptOut};
use crate::store::delivery::SUPPRESSED_SENDER;
use crate::store::{OptOutKey, Page};

/// Items in a page when `limit` is not given.
pub const DEFAULT_LIMIT: u32 = 50;
/// The most items a page may have.
pub const MAX_LIMIT: u32 = 200;

type QueryResult = Result<Query<HashMap<String, String>>, QueryRejection>;

/// A page's query string.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct PageQuery {
    /// Items in the page: 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// The previous page's `next_cursor` (opaque).
    cursor: Option<String>,
}

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

/// What a cursor points after, tagged by the listing it came from: a cursor of one listing is
/// refused by another.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cursor {
    /// Conversations: the last one's `last_message_id`.
    Conversations(String),
    /// A conversation's messages: the last one's id.
    Messages(String),
    /// Opt-outs: the last one's key.
    OptOuts(OptOutKey),
}

impl Cursor {
    fn encode(&self) -> String {
        let text = match self {
            Cursor::Conversations(id) => format!("c\n{id}"),
            Cursor::Messages(id) => format!("m\n{id}"),
            Cursor::OptOuts(key) => format!("o\n{}\n{}\n{}", key.family, key.sender, key.recipient),
        };
        URL_SAFE_NO_PAD.encode(text)
    }

    fn decode(text: &str) -> Option<Cursor> {
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let mut parts = text.split('\n');
        // Message ids are UUIDs: a cursor naming anything else was not one this service made.
        let id = |id: &str| uuid::Uuid::try_parse(id).is_ok().then(|| id.to_owned());
        let cursor = match (parts.next()?, parts.next()?) {
            ("c", last) => Cursor::Conversations(id(last)?),
            ("m", last) => Cursor::Messages(id(last)?),
            ("o", family) => Cursor::OptOuts(OptOutKey {
                family: family.to_owned(),
                sender: parts.next()?.to_owned(),
                recipient: parts.next()?.to_owned(),
            }),
            _ => return None,
        };
        parts.next().is_none().then_some(cursor)
    }
}

/// `limit` and `cursor` from a query string; `pick` takes the cursor's value if it is of this
/// listing.
fn page<C>(query: QueryResult, pick: fn(Cursor) -> Option<C>) -> Result<Page<C>, ApiError> {
    let Ok(Query(query)) = query else {
        return Err(ApiError::invalid("query", "the query string is malformed"));
    };
    let limit = match query.get("limit") {
        None => DEFAULT_LIMIT,
        Some(text) => text.parse::<u32>().ok().filter(|n| (1..=MAX_LIMIT).contains(n)).ok_or_else(|| {
            ApiError::invalid("limit", format!("`limit` must be a whole number from 1 to {MAX_LIMIT}"))
        })?,
    };
    let after = match query.get("cursor").filter(|c| !c.is_empty()) {
        None => None,
        Some(text) => Some(Cursor::decode(text).and_then(pick).ok_or_else(|| {
            ApiError::invalid("cursor", "`cursor` must be a `next_cursor` this listing returned")
        })?),
    };
    Ok(Page { limit, after })
}

/// Who may see which conversations: `None` sees all (an admin key, or authentication off);
/// another key sees those holding a message it owns.
fn viewer(caller: &Caller) -> Option<&str> {
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
    query: QueryResult,
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
    query: QueryResult,
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
pub async fn opt_outs(State(state): State<Arc<AppState>>, query: QueryResult) -> Result<Response, ApiError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn check(cursor: Cursor) {
        let encoded = cursor.encode();
        assert!(encoded.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{encoded}");
        assert_eq!(Cursor::decode(&encoded), Some(cursor));
    }

    #[test]
    fn cursors_round_trip() {
        check(Cursor::Conversations("0190f0a0-0000-7000-8000-000000000000".into()));
        check(Cursor::Messages("0190f0a0-0000-7000-8000-000000000001".into()));
        check(Cursor::OptOuts(OptOutKey {
            family: "sms".into(),
            sender: "+15550001111".into(),
            recipient: "+15550002222".into(),
        }));
        for bad in [
            "",
            "!!",
            "eA",
            &URL_SAFE_NO_PAD.encode("c"),
            &URL_SAFE_NO_PAD.encode("c\n"),
            &URL_SAFE_NO_PAD.encode("c\nzzzz"),
            &URL_SAFE_NO_PAD.encode("o\nsms\n+1"),
            &URL_SAFE_NO_PAD.encode("m\na\nb"),
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }

    fn check_page(query: &str, expected: Result<(u32, Option<&str>), &str>) {
        let uri: axum::http::Uri = format!("/x?{query}").parse().unwrap_or_else(|e| panic!("{query}: {e}"));
        let got = page(Query::try_from_uri(&uri), |c| match c {
            Cursor::Messages(id) => Some(id),
            _ => None,
        });
        match (got, expected) {
            (Ok(page), Ok((limit, after))) => {
                assert_eq!((page.limit, page.after.as_deref()), (limit, after), "{query}")
            }
            (Err(ApiError::InvalidField { field, .. }), Err(expected)) => {
                assert_eq!(field, expected, "{query}")
            }
            (got, expected) => panic!("{query}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn pages() {
        const ID: &str = "0190f0a0-0000-7000-8000-000000000001";
        let m = Cursor::Messages(ID.into()).encode();
        let c = Cursor::Conversations(ID.into()).encode();
        check_page("", Ok((DEFAULT_LIMIT, None)));
        check_page("limit=1", Ok((1, None)));
        check_page("limit=200", Ok((200, None)));
        check_page("limit=201", Err("limit"));
        check_page("limit=0", Err("limit"));
        check_page("limit=-1", Err("limit"));
        check_page("limit=ten", Err("limit"));
        check_page(&format!("cursor={m}"), Ok((DEFAULT_LIMIT, Some(ID))));
        check_page("cursor=", Ok((DEFAULT_LIMIT, None)));
        check_page(&format!("cursor={c}"), Err("cursor"));
        check_page("cursor=garbage!", Err("cursor"));
    }
}

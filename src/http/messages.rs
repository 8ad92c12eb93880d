//! Finding and retrying messages: `GET /v1/messages` (a search, newest first, each message as
//! `GET /v1/messages/{id}` shows it) and `POST /v1/messages/{id}/retry`. `switchboard messages
//! list` reads its flags with [`search_request`] too.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use switchboard_providers::Channel;
use utoipa::openapi::schema::{AnyOfBuilder, KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::ToSchema;

use super::conversations::viewer;
use super::guard::Caller;
use super::openapi::errors;
use super::paging::{page_of, Cursor, PageQuery, Params};
use super::payload::{rfc3339, Endpoint};
use super::{accepted_response, idempotency_key, plus_restored, AcceptedBody, ApiError, AppState};
use crate::store::search::recipient_key;
use crate::store::{DeliveryStatus, MessageFilter, MessageView, Page, SearchPosition, Status};

/// The parameters a search takes; any other is refused (a misspelt filter would list every
/// message).
pub const PARAMETERS: [&str; 9] =
    ["status", "delivery_status", "channel", "provider", "to", "since", "until", "limit", "cursor"];

/// What the `Idempotency-Key` of a retry is recorded for (with the message id).
const RETRY: &str = "Retry";

/// A search's filters as the OpenAPI document shows them (read by [`search_request`]; the page's
/// `limit` and `cursor` are [`PageQuery`]). An empty value is no filter.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct SearchQuery {
    #[param(schema_with = status_filter)]
    status: Option<String>,
    #[param(schema_with = delivery_status_filter)]
    delivery_status: Option<String>,
    #[param(schema_with = channel_filter)]
    channel: Option<String>,
    /// The provider that sent the message or gave its final answer (an inbound message's: the
    /// provider it came through).
    provider: Option<String>,
    /// The exact recipient, normalised: a number by its digits (URL-encode `+` as `%2B`), an
    /// email address case-insensitively (ASCII), another channel's recipient exactly; with
    /// `channel`, by that channel's rule.
    to: Option<String>,
    #[param(schema_with = since_filter)]
    since: Option<String>,
    #[param(schema_with = until_filter)]
    until: Option<String>,
}

/// One of `values`, or empty (no filter).
fn one_of_or_empty<'a>(values: impl IntoIterator<Item = &'a str>, description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.into_iter().chain([""])))
        .description(Some(description))
}

fn status_filter() -> ObjectBuilder {
    one_of_or_empty(Status::ALL.iter().map(|s| s.as_str()), "The message's `status`; empty: any")
}

fn delivery_status_filter() -> ObjectBuilder {
    let all = DeliveryStatus::ALL.iter().map(|s| s.as_str());
    one_of_or_empty(all, "The message's `delivery_status` (what receipts say); empty: any")
}

fn channel_filter() -> ObjectBuilder {
    // `Channel::new`'s rule (the built-in channels follow it too), or empty.
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^([a-z][a-z0-9_]{0,31})?$"))
        .description(Some("The exact channel (`sms` does not match `mms`); empty: any"))
}

/// An RFC 3339 date-time, or empty (no filter).
fn time_filter(description: &str) -> Schema {
    let string = || ObjectBuilder::new().schema_type(Type::String);
    AnyOfBuilder::new()
        .item(string().format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))))
        .item(string().max_length(Some(0)))
        .description(Some(description))
        .into()
}

fn since_filter() -> Schema {
    time_filter("Created at or after this RFC 3339 date-time (from 1970 on)")
}

fn until_filter() -> Schema {
    time_filter("Created before this RFC 3339 date-time (from 1970 on)")
}

/// `GET /v1/messages`.
#[derive(Serialize, ToSchema)]
#[schema(as = MessagesSearchPage)]
pub struct SearchPage {
    /// Newest first (by creation time, then id), each as `GET /v1/messages/{id}` shows it. May
    /// hold fewer than `limit`, or none, while `next_cursor` is set: a page reads at most a
    /// bounded number of messages, and one whose filters match few of them ends where it stopped.
    pub messages: Vec<MessageView>,
    /// The next page's `cursor`; `null` on the last page (only `null` ends a search: follow it
    /// past short or empty pages).
    pub next_cursor: Option<String>,
}

errors!(
    /// What a search may answer besides its page.
    SearchErrors = [InvalidField, StoreUnavailable]
);

/// The `Idempotency-Key` header of a retry.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct RetryHeaders {
    /// The same retry again within 24 h gets the first answer (202, `Idempotency-Replayed:
    /// true`) and retries nothing; the key used for another request (a send, another message's
    /// retry): 422 `idempotency_key_reused`. 1 to 255 printable ASCII characters; per API key,
    /// shared with the send endpoints' keys.
    #[param(rename = "Idempotency-Key", value_type = String, required = false, min_length = 1, max_length = 255, pattern = "^[!-~]+$")]
    idempotency_key: Option<String>,
}

errors!(
    /// What a retry may answer besides 202.
    RetryErrors = [InvalidField, NotFound, NotRetryable, IdempotencyKeyReused, RateLimited, StoreUnavailable]
);

/// A search's filter (without its owner: the caller's) and page from its parameters. An empty
/// value is no filter. `to` is normalised ([`recipient_key`]), a `+` sent unencoded (a space)
/// taken back; `since` and `until` are RFC 3339 date-times.
pub fn search_request(
    query: &HashMap<String, String>,
) -> Result<(MessageFilter, Page<SearchPosition>), ApiError> {
    let mut unknown: Vec<&String> = query.keys().filter(|k| !PARAMETERS.contains(&k.as_str())).collect();
    unknown.sort();
    if let Some(name) = unknown.first() {
        let known = PARAMETERS.join(", ");
        return Err(ApiError::invalid(name, format!("`{name}` is not a search parameter (known: {known})")));
    }
    let given = |name: &str| query.get(name).filter(|value| !value.is_empty());
    let one_of = |name: &str, names: Vec<&str>| {
        ApiError::invalid(name, format!("`{name}` must be one of {}", names.join(", ")))
    };
    let status = given("status")
        .map(|text| {
            Status::parse(text)
                .ok_or_else(|| one_of("status", Status::ALL.iter().map(|s| s.as_str()).collect()))
        })
        .transpose()?;
    let delivery_status = given("delivery_status")
        .map(|text| {
            DeliveryStatus::parse(text).ok_or_else(|| {
                one_of("delivery_status", DeliveryStatus::ALL.iter().map(|s| s.as_str()).collect())
            })
        })
        .transpose()?;
    let channel = given("channel")
        .map(|text| {
            Channel::new(text)
                .map(|channel| channel.to_string())
                .map_err(|error| ApiError::invalid("channel", error.to_string()))
        })
        .transpose()?;
    let provider = given("provider").cloned();
    let to = given("to").map(|to| recipient_key(channel.as_deref(), &plus_restored(to)));
    let time = |name: &'static str| {
        given(name)
            .map(|text| {
                // A `+` offset sent unencoded arrives as a space.
                rfc3339(&text.replace(' ', "+"))
                    .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|since_epoch| i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
                    .ok_or_else(|| {
                        ApiError::invalid(
                            name,
                            format!("`{name}` must be an RFC 3339 date-time (2026-11-27T03:28:13Z)"),
                        )
                    })
            })
            .transpose()
    };
    let (since, until) = (time("since")?, time("until")?);
    let page = page_of(query, |cursor| match cursor {
        Cursor::Search(position) => Some(position),
        _ => None,
    })?;
    let filter = MessageFilter { status, delivery_status, channel, provider, to, since, until, owner: None };
    Ok((filter, page))
}

/// `GET /v1/messages`: an admin key (or any caller with authentication off) searches every
/// message, another key its own.
#[utoipa::path(
    get,
    path = "/v1/messages",
    tag = "messages",
    summary = "Find messages, newest first (an admin key: every key's; another key: its own)",
    params(SearchQuery, PageQuery),
    responses(
        (status = 200, description = "A page", body = SearchPage),
        SearchErrors,
    )
)]
pub async fn search(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Params(query): Params,
) -> Result<Response, ApiError> {
    let (mut filter, page) = search_request(&query?)?;
    filter.owner = viewer(&caller).map(str::to_owned);
    let listed = state.store.search(&filter, page).await?;
    let next = listed.next.map(|position| Cursor::Search(position).encode());
    Ok(Json(SearchPage { messages: listed.items, next_cursor: next }).into_response())
}

/// `POST /v1/messages/{id}/retry` (the message's key, or an admin key): 202 as a send answers
/// (a replay too, with `Idempotency-Replayed: true`); 409 `not_retryable` for a message that is
/// not `failed`; 404 for an unknown message or another key's. Counted against the key's send
/// rate, as a send is.
#[utoipa::path(
    post,
    path = "/v1/messages/{id}/retry",
    tag = "messages",
    summary = "Put a failed message back in the queue with a fresh budget of attempts",
    params(("id" = String, Path, description = "The id the send answered"), RetryHeaders),
    responses(
        (status = 202, description = "Queued again", body = AcceptedBody, headers(
            ("Location" = String, description = "`/v1/messages/{id}`"),
            ("Idempotency-Replayed" = String, description = "`true` when this answers a retry with the same `Idempotency-Key`")
        ), example = json!({"id": "01a21b0b-e12f-757d-92cc-ade515dcfd46", "status": "queued", "channel": "sms"})),
        RetryErrors,
    )
)]
pub async fn retry(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Ok(Path(id)) = id else { return Err(ApiError::NotFound) };
    state.guard.take_send(&caller)?;
    let key = idempotency_key(&headers, RETRY, id.as_bytes())?;
    let accepted = state.acceptor.retry(&id, caller.key.as_deref(), caller.admin, key).await?;
    Ok(accepted_response(Endpoint::Native, &accepted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::Query;

    fn check(query: &str, expected: Result<MessageFilter, &str>) {
        let uri: axum::http::Uri = format!("/v1/messages?{query}").parse().unwrap_or_else(|e| panic!("{e}"));
        let Ok(Query(map)) = Query::<HashMap<String, String>>::try_from_uri(&uri) else {
            panic!("{query}: malformed")
        };
        match (search_request(&map), expected) {
            (Ok((filter, _)), Ok(expected)) => assert_eq!(filter, expected, "{query}"),
            (Err(ApiError::InvalidField { field, .. }), Err(expected)) => {
                assert_eq!(field, expected, "{query}")
            }
            (got, expected) => panic!("{query}: got {got:?}, expected {expected:?}"),
        }
    }

    /// The document lists exactly the parameters a search reads.
    #[test]
    fn the_documented_parameters_are_those_read() {
        let api = crate::http::document();
        let operation = api.paths.paths.get("/v1/messages").and_then(|item| item.get.as_ref());
        let mut documented: Vec<String> = operation
            .and_then(|op| op.parameters.as_ref())
            .map(|parameters| parameters.iter().map(|p| p.name.clone()).collect())
            .unwrap_or_default();
        documented.sort();
        let mut read: Vec<String> = PARAMETERS.iter().map(|p| (*p).to_owned()).collect();
        read.sort();
        assert_eq!(documented, read);
    }

    #[test]
    fn search_parameters() {
        let none = MessageFilter::default();
        check("", Ok(none.clone()));
        check("status=&to=", Ok(none.clone()));
        check("status=failed", Ok(MessageFilter { status: Some(Status::Failed), ..none.clone() }));
        check("status=lost", Err("status"));
        check(
            "delivery_status=bounced",
            Ok(MessageFilter { delivery_status: Some(DeliveryStatus::Bounced), ..none.clone() }),
        );
        check("delivery_status=failed", Err("delivery_status"));
        check("channel=push", Ok(MessageFilter { channel: Some("push".into()), ..none.clone() }));
        check("channel=no%20such", Err("channel"));
        check("provider=tw", Ok(MessageFilter { provider: Some("tw".into()), ..none.clone() }));
        let to = |to: &str| MessageFilter { to: Some(to.into()), ..none.clone() };
        check("to=%2B15550001111", Ok(to("+15550001111")));
        check("to=+15550001111", Ok(to("+15550001111")));
        check("to=%2B1%20(555)%20000-1111", Ok(to("+15550001111")));
        check("to=Bob@Example.com", Ok(to("bob@example.com")));
        check(
            "since=2026-11-27T03:28:13.5Z&until=2026-11-27T04:28:13+01:00",
            Ok(MessageFilter {
                since: Some(1_795_750_093_500),
                until: Some(1_795_750_093_000),
                ..none.clone()
            }),
        );
        check("since=yesterday", Err("since"));
        check("until=2026-13-01T00:00:00Z", Err("until"));
        check("stauts=failed", Err("stauts"));
        // Values are taken as sent: only an empty one is no filter.
        check("status=%20", Err("status"));
        check("status=failed%20", Err("status"));
        check("delivery_status=%20bounced", Err("delivery_status"));
        check("channel=%20sms", Err("channel"));
        check("since=%202026-11-27T03:28:13Z", Err("since"));
        check("provider=%20tw", Ok(MessageFilter { provider: Some(" tw".into()), ..none.clone() }));
        check("limit=0", Err("limit"));
        check("cursor=bad", Err("cursor"));
        let conversations = Cursor::Messages("0190f0a0-0000-7000-8000-000000000001".into()).encode();
        check(&format!("cursor={conversations}"), Err("cursor"));
    }
}

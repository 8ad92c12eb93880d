//! Pages of a listing: `?limit=` (default 50, at most 200) and `?cursor=` (opaque: the
//! `next_cursor` of the page before, tagged by the listing that made it). Every listing of the
//! API, and `switchboard messages list`, reads and writes its cursors here.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::ApiError;
use crate::store::{OptOutKey, Page, SearchPosition};

/// Items in a page when `limit` is not given.
pub const DEFAULT_LIMIT: u32 = 50;
/// The most items a page may have.
pub const MAX_LIMIT: u32 = 200;

/// A query string's parameters, each named at most once, or why not: malformed, or a name given
/// twice (`status=failed&status=sent`, `limit=1&limit=200` — refused rather than read as the last
/// value, which would answer a different question than the one asked).
pub type QueryResult = Result<HashMap<String, String>, ApiError>;

/// Reads a [`QueryResult`] from the request: `Params(query)`.
pub struct Params(pub QueryResult);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let read = match Query::<Vec<(String, String)>>::from_request_parts(parts, state).await {
            Ok(Query(pairs)) => {
                let mut params = HashMap::with_capacity(pairs.len());
                let mut repeated = None;
                for (name, value) in pairs {
                    match params.entry(name) {
                        std::collections::hash_map::Entry::Occupied(entry) => {
                            repeated.get_or_insert_with(|| entry.key().clone());
                        }
                        std::collections::hash_map::Entry::Vacant(entry) => {
                            entry.insert(value);
                        }
                    }
                }
                match repeated {
                    Some(name) => Err(ApiError::invalid(&name, format!("`{name}` is given more than once"))),
                    None => Ok(params),
                }
            }
            Err(_) => Err(ApiError::invalid("query", "the query string is malformed")),
        };
        Ok(Params(read))
    }
}

/// A page's query string, as the OpenAPI document shows it (read by [`page`]).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PageQuery {
    /// Items in the page: 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// The previous page's `next_cursor` (opaque).
    cursor: Option<String>,
}

/// What a cursor points after, tagged by the listing it came from: a cursor of one listing is
/// refused by another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    /// Conversations: the last one's `last_message_id`.
    Conversations(String),
    /// A conversation's messages: the last one's id.
    Messages(String),
    /// Opt-outs: the last one's key.
    OptOuts(OptOutKey),
    /// A message search: the last message's creation time (Unix ms) and id.
    Search(SearchPosition),
}

impl Cursor {
    pub fn encode(&self) -> String {
        let text = match self {
            Cursor::Conversations(id) => format!("c\n{id}"),
            Cursor::Messages(id) => format!("m\n{id}"),
            Cursor::OptOuts(key) => format!("o\n{}\n{}\n{}", key.family, key.sender, key.recipient),
            Cursor::Search(position) => format!("s\n{}\n{}", position.created_at, position.id),
        };
        URL_SAFE_NO_PAD.encode(text)
    }

    pub fn decode(text: &str) -> Option<Cursor> {
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let mut parts = text.split('\n');
        // Message ids are UUIDs: a cursor naming anything else was not one this service made.
        // Only as this service writes them (lower-case, hyphenated): the same id written another
        // way would not compare equal with the stored one, and a page would repeat its anchor.
        let id = |id: &str| {
            uuid::Uuid::try_parse(id).ok().filter(|u| u.hyphenated().to_string() == id).map(|_| id.to_owned())
        };
        let cursor = match (parts.next()?, parts.next()?) {
            ("c", last) => Cursor::Conversations(id(last)?),
            ("m", last) => Cursor::Messages(id(last)?),
            ("o", family) => Cursor::OptOuts(OptOutKey {
                family: family.to_owned(),
                sender: parts.next()?.to_owned(),
                recipient: parts.next()?.to_owned(),
            }),
            ("s", created_at) => Cursor::Search(SearchPosition {
                created_at: Some(created_at)
                    .filter(|ms| !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|ms| ms.parse().ok())?,
                id: id(parts.next()?)?,
            }),
            _ => return None,
        };
        parts.next().is_none().then_some(cursor)
    }
}

/// `limit` and `cursor` from a query string; `pick` takes the cursor's value if it is of this
/// listing.
pub fn page<C>(query: QueryResult, pick: fn(Cursor) -> Option<C>) -> Result<Page<C>, ApiError> {
    page_of(&query?, pick)
}

/// [`page`] from a query string's parameters.
pub fn page_of<C>(
    query: &HashMap<String, String>,
    pick: fn(Cursor) -> Option<C>,
) -> Result<Page<C>, ApiError> {
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
        check(Cursor::Search(SearchPosition {
            created_at: 1_800_000_000_123,
            id: "0190f0a0-0000-7000-8000-000000000002".into(),
        }));
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
            &URL_SAFE_NO_PAD.encode("s\n12"),
            &URL_SAFE_NO_PAD.encode("s\n-1\n0190f0a0-0000-7000-8000-000000000002"),
            &URL_SAFE_NO_PAD.encode("s\nx\n0190f0a0-0000-7000-8000-000000000002"),
            // Ids and times only as this service writes them.
            &URL_SAFE_NO_PAD.encode("s\n12\n0190f0a0000070008000000000000002"),
            &URL_SAFE_NO_PAD.encode("s\n12\n0190F0A0-0000-7000-8000-000000000002"),
            &URL_SAFE_NO_PAD.encode("s\n12\n{0190f0a0-0000-7000-8000-000000000002}"),
            &URL_SAFE_NO_PAD.encode("s\n+12\n0190f0a0-0000-7000-8000-000000000002"),
            &URL_SAFE_NO_PAD.encode("m\n0190f0a0000070008000000000000002"),
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }

    async fn check_page(query: &str, expected: Result<(u32, Option<&str>), &str>) {
        let request = axum::http::Request::get(format!("/x?{query}")).body(());
        let (mut parts, ()) = request.unwrap_or_else(|e| panic!("{query}: {e}")).into_parts();
        let Ok(Params(read)) = Params::from_request_parts(&mut parts, &()).await;
        let got = page(read, |c| match c {
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

    #[tokio::test]
    async fn pages() {
        const ID: &str = "0190f0a0-0000-7000-8000-000000000001";
        let m = Cursor::Messages(ID.into()).encode();
        let c = Cursor::Conversations(ID.into()).encode();
        check_page("", Ok((DEFAULT_LIMIT, None))).await;
        check_page("limit=1", Ok((1, None))).await;
        check_page("limit=200", Ok((200, None))).await;
        check_page("limit=201", Err("limit")).await;
        check_page("limit=0", Err("limit")).await;
        check_page("limit=-1", Err("limit")).await;
        check_page("limit=ten", Err("limit")).await;
        check_page(&format!("cursor={m}"), Ok((DEFAULT_LIMIT, Some(ID)))).await;
        check_page("cursor=", Ok((DEFAULT_LIMIT, None))).await;
        check_page(&format!("cursor={c}"), Err("cursor")).await;
        check_page("cursor=garbage!", Err("cursor")).await;
        // A name given twice is refused, not read as its last value.
        check_page("limit=1&limit=200", Err("limit")).await;
        check_page(&format!("cursor={m}&cursor={m}"), Err("cursor")).await;
        check_page("limit=5&x=1&x=2", Err("x")).await;
    }
}

//! Pages of a listing: `?limit=` (default 50, at most 200) and `?cursor=` (opaque: the
//! `next_cursor` of the page before, tagged by the listing that made it). Every listing of the
//! API, and `switchboard messages list`, reads and writes its cursors here.

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::ApiError;
use crate::store::{OptOutKey, Page, SearchPosition};

/// Items in a page when `limit` is not given.
pub const DEFAULT_LIMIT: u32 = 50;
/// The most items a page may have.
pub const MAX_LIMIT: u32 = 200;

pub type QueryResult = Result<Query<HashMap<String, String>>, QueryRejection>;

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
        let id = |id: &str| uuid::Uuid::try_parse(id).is_ok().then(|| id.to_owned());
        let cursor = match (parts.next()?, parts.next()?) {
            ("c", last) => Cursor::Conversations(id(last)?),
            ("m", last) => Cursor::Messages(id(last)?),
            ("o", family) => Cursor::OptOuts(OptOutKey {
                family: family.to_owned(),
                sender: parts.next()?.to_owned(),
                recipient: parts.next()?.to_owned(),
            }),
            ("s", created_at) => Cursor::Search(SearchPosition {
                created_at: created_at.parse().ok().filter(|ms: &i64| *ms >= 0)?,
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
    let Ok(Query(query)) = query else {
        return Err(ApiError::invalid("query", "the query string is malformed"));
    };
    page_of(&query, pick)
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

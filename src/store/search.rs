//! Finding messages (`GET /v1/messages`, `switchboard messages list`) and putting a failed one
//! back in the queue (`POST /v1/messages/{id}/retry`, `switchboard messages retry`), as every
//! store does them: the filter, the order and cursor of a page, how a recipient is compared, and
//! what a retry changes.
//!
//! Pages are newest first, by `(created_at, id)` descending; a page's cursor is its last
//! message's pair, and the next page is what comes strictly after it in that order. Both stores
//! index every filter with `(created_at, id)` after it (migration 0006), so a page is an index
//! range however many messages are stored. A message inserted while a client pages sorts before
//! the pages already read (it is newer), so paging never repeats or skips one.

use super::codec::ms;
use super::conversation::{family, normalize};
use super::{DeliveryStatus, MessageView, Status};

/// What a search keeps: a message matching every field given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageFilter {
    pub status: Option<Status>,
    pub delivery_status: Option<DeliveryStatus>,
    /// The exact channel (`sms` does not match `mms`).
    pub channel: Option<String>,
    /// The provider that handled it (see [`MessageView::provider`]); for an inbound message,
    /// the provider it came through.
    pub provider: Option<String>,
    /// The recipient, as [`recipient_key`] gives it.
    pub to: Option<String>,
    /// Created at or after this time (Unix ms).
    pub since: Option<i64>,
    /// Created before this time (Unix ms).
    pub until: Option<i64>,
    /// Only the messages of this API key; `None`: every message (an admin key, the CLI, or
    /// authentication off).
    pub owner: Option<String>,
}

/// Where a page of a search ends: its last message's creation time (Unix ms) and id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SearchPosition {
    pub created_at: i64,
    pub id: String,
}

impl SearchPosition {
    /// The position of a message a search returned.
    pub fn of(view: &MessageView) -> SearchPosition {
        SearchPosition { created_at: ms(view.created_at), id: view.id.clone() }
    }
}

/// The SQL expression both stores index and compare `to` with: an email address lower-cased
/// (ASCII), every other recipient as stored. Migration 0006 indexes exactly this text (a test
/// holds them together). Numbers are stored normalised already: the API accepts `+` and digits
/// only.
pub const RECIPIENT_KEY_SQL: &str = "(CASE WHEN channel = 'email' THEN lower(recipient) ELSE recipient END)";

/// What [`RECIPIENT_KEY_SQL`] makes of a stored message's recipient (the memory store's side).
pub fn stored_recipient_key(channel: &str, recipient: &str) -> String {
    if channel == "email" {
        recipient.to_ascii_lowercase()
    } else {
        recipient.to_owned()
    }
}

/// A recipient to search for, normalised as conversations compare addresses: with a channel, as
/// its family does ([`normalize`]); without one, an address with `@` as an email address
/// (lower-cased), one of `+`, digits and phone punctuation (spaces, `-`, `.`, parentheses) as a
/// number (`+1 (555) 000-1111` is `+15550001111`), anything else as given, trimmed.
pub fn recipient_key(channel: Option<&str>, to: &str) -> String {
    let to = to.trim();
    let family = match channel {
        Some(channel) => family(channel),
        None if to.contains('@') => "email",
        None if !to.is_empty()
            && to.chars().any(|c| c.is_ascii_digit())
            && to.chars().all(|c| c.is_ascii_digit() || " +-.()".contains(c)) =>
        {
            "sms"
        }
        None => "",
    };
    match family {
        // ASCII only, as SQLite's `lower()` does.
        "email" => to.to_ascii_lowercase(),
        _ => normalize(family, to),
    }
}

/// What asking to retry a message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retried {
    /// It was `failed`: it is `queued` again, with a fresh budget of the route's `max_attempts`
    /// (its earlier attempts stay in its record), a `retried` event, its error, provider and
    /// delivery status cleared, and a callback queued when it has a `status_callback`.
    Queued,
    /// The idempotency key was used for this same retry within the window: nothing was done
    /// (the first answer again).
    Replay,
    /// The idempotency key was used for a different request within the window.
    KeyReused,
    /// Only a `failed` message can be retried: this is its status. Nothing was done.
    NotRetryable(Status),
    NotFound,
}

/// A parameter of a search statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Param {
    Text(String),
    Int(i64),
}

/// What follows `WHERE` in a SQL store's search over `messages m` — its conditions, order and
/// limit — and its parameters in order. `placeholder(n)` writes the n-th parameter (from 1);
/// `status(s)` is the condition for a status whose stored value is not its own (`None`: the
/// column holds it). The recipient is compared as [`RECIPIENT_KEY_SQL`] (unqualified: the index
/// is on that expression).
pub(super) fn search_clauses(
    filter: &MessageFilter,
    page: &super::Page<SearchPosition>,
    placeholder: fn(usize) -> String,
    status: fn(Status) -> Option<&'static str>,
) -> (String, Vec<Param>) {
    let mut sql = String::from("true");
    let mut params = Vec::new();
    let mut condition = |sql: &mut String, template: &str, values: Vec<Param>| {
        let mut parts = template.split('?');
        sql.push_str(" AND ");
        sql.push_str(parts.next().unwrap_or_default());
        for (part, value) in parts.zip(values) {
            params.push(value);
            sql.push_str(&placeholder(params.len()));
            sql.push_str(part);
        }
    };
    let text = |value: &str| vec![Param::Text(value.to_owned())];
    if let Some(owner) = &filter.owner {
        condition(&mut sql, "m.owner = ?", text(owner));
    }
    match filter.status.map(|s| (s, status(s))) {
        Some((_, Some(stored))) => condition(&mut sql, stored, Vec::new()),
        Some((s, None)) => condition(&mut sql, "m.status = ?", text(s.as_str())),
        None => {}
    }
    if let Some(delivery_status) = filter.delivery_status {
        condition(&mut sql, "m.delivery_status = ?", text(delivery_status.as_str()));
    }
    if let Some(channel) = &filter.channel {
        condition(&mut sql, "m.channel = ?", text(channel));
    }
    if let Some(provider) = &filter.provider {
        condition(&mut sql, "m.provider = ?", text(provider));
    }
    if let Some(to) = &filter.to {
        condition(&mut sql, &format!("{RECIPIENT_KEY_SQL} = ?"), text(to));
    }
    if let Some(since) = filter.since {
        condition(&mut sql, "m.created_at >= ?", vec![Param::Int(since)]);
    }
    if let Some(until) = filter.until {
        condition(&mut sql, "m.created_at < ?", vec![Param::Int(until)]);
    }
    if let Some(after) = &page.after {
        let values = vec![Param::Int(after.created_at), Param::Text(after.id.clone())];
        condition(&mut sql, "(m.created_at, m.id) < (?, ?)", values);
    }
    let limit = i64::try_from(page.fetch()).unwrap_or(i64::MAX);
    params.push(Param::Int(limit));
    sql.push_str(&format!(" ORDER BY m.created_at DESC, m.id DESC LIMIT {}", placeholder(params.len())));
    (sql, params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(channel: Option<&str>, to: &str, expected: &str) {
        assert_eq!(recipient_key(channel, to), expected, "{channel:?} {to:?}");
    }

    #[test]
    fn recipients_are_searched_normalised() {
        check(None, "+15550001111", "+15550001111");
        check(None, " +1 (555) 000-1111 ", "+15550001111");
        check(None, "12345", "12345");
        check(None, "User+Tag@Example.COM", "user+tag@example.com");
        check(None, "device-token-AbC", "device-token-AbC");
        check(None, "tok 12", "tok 12");
        check(Some("mms"), "+1 555 000 1111", "+15550001111");
        check(Some("email"), " Bob@Example.com", "bob@example.com");
        check(Some("push"), " Tok@En ", "Tok@En");
    }

    #[test]
    fn stored_keys_match_searched_ones() {
        assert_eq!(stored_recipient_key("email", "Bob@Example.com"), recipient_key(None, "bob@EXAMPLE.com"));
        assert_eq!(stored_recipient_key("push", "Tok@En"), "Tok@En");
    }

    /// Migration 0006 of each store indexes exactly [`RECIPIENT_KEY_SQL`]: a query's expression
    /// must be the index's, or the index is not used.
    #[test]
    fn the_migrations_index_the_recipient_key() {
        for migration in [
            include_str!("../../migrations/sqlite/0006_search.sql"),
            include_str!("../../migrations/postgres/0006_search.sql"),
        ] {
            assert!(migration.contains(RECIPIENT_KEY_SQL), "{migration}");
        }
    }
}

//! Finding messages (`GET /v1/messages`, `switchboard messages list`) and putting a failed one
//! back in the queue (`POST /v1/messages/{id}/retry`, `switchboard messages retry`), as every
//! store does them: the filter, the order and cursor of a page, how a recipient is compared, and
//! what a retry changes.
//!
//! Pages are newest first, by `(created_at, id)` descending; a page's cursor is its last
//! message's pair, and the next page is what comes strictly after it in that order. Both stores
//! index every filter with `(created_at, id)` after it (migration 0006), so a page reads one
//! index range — its driving filter's ([`Driving`]) — however many messages are stored, and at
//! most [`SEARCH_SCAN_LIMIT`] rows of it: the other filters are tested on those rows. When they
//! match fewer than a page, the page ends short (or empty) and its cursor is the last row read,
//! so the next page goes on from there: every row between two cursors was read, in the one order
//! all indexes share, and none is read twice. A message inserted while a client pages sorts
//! before the pages already read (it is newer), so paging never repeats or skips one.

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

/// How many messages of its driving range ([`Driving`]) a search page reads at most (see
/// [`rows_to_scan`]). A combination of filters is tested on those rows; one matching few of them
/// ends the page short, with the cursor of the last row read, rather than reading on. A row of a
/// sparse range costs about 10 µs on SQLite (its own table page; specs/performance.md): this
/// keeps such a page near 20 ms, under the 50 ms target (5,000 took 44–57 ms).
pub const SEARCH_SCAN_LIMIT: usize = 2_000;

/// How many rows of its driving range a page reads: `limit`, but never fewer than the page
/// fetches, so a page under one filter (every row read matches) is never cut short.
pub fn rows_to_scan<C>(limit: usize, page: &super::Page<C>) -> usize {
    limit.max(page.fetch())
}

/// The filter whose index range a search page reads, newest first (with the time window and the
/// cursor, which every index of migration 0006 serves: they all end in `created_at`, `id`); the
/// other filters are tested on the rows read.
///
/// Chosen by a fixed order of how few messages a value usually matches, with no statistics:
/// one recipient's messages (a handful); a status that is an exception or work in hand
/// (`failed`, `queued`, `sending`) or a delivery status that says something went wrong
/// (`deferred`, `undelivered`, `bounced`, `dropped`); one provider (of the few a deployment has);
/// one API key (of the few a deployment has; always given for a key that is not an admin); one
/// channel; and last the statuses most messages end in (`delivered`, `sent`, `opened`, `read`,
/// `received`), which are seldom narrower than anything else. A wrong guess costs pages, not
/// answers: each page still reads at most [`SEARCH_SCAN_LIMIT`] rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driving {
    Recipient,
    Status,
    DeliveryStatus,
    Provider,
    Owner,
    Channel,
    /// No filter but the time window: every message.
    Created,
}

impl Driving {
    /// The driving filter of a search.
    pub fn of(filter: &MessageFilter) -> Driving {
        let rare_status =
            filter.status.is_some_and(|s| matches!(s, Status::Failed | Status::Queued | Status::Sending));
        let rare_delivery = filter.delivery_status.is_some_and(|s| {
            matches!(
                s,
                DeliveryStatus::Deferred
                    | DeliveryStatus::Undelivered
                    | DeliveryStatus::Bounced
                    | DeliveryStatus::Dropped
            )
        });
        if filter.to.is_some() {
            Driving::Recipient
        } else if rare_status {
            Driving::Status
        } else if rare_delivery {
            Driving::DeliveryStatus
        } else if filter.provider.is_some() {
            Driving::Provider
        } else if filter.owner.is_some() {
            Driving::Owner
        } else if filter.channel.is_some() {
            Driving::Channel
        } else if filter.delivery_status.is_some() {
            Driving::DeliveryStatus
        } else if filter.status.is_some() {
            Driving::Status
        } else {
            Driving::Created
        }
    }

    /// Its index (migration 0006; the same name in both stores).
    pub fn index(self) -> &'static str {
        match self {
            Driving::Recipient => "messages_recipient_created",
            Driving::Status => "messages_status_created",
            Driving::DeliveryStatus => "messages_delivery_status_created",
            Driving::Provider => "messages_provider_created",
            Driving::Owner => "messages_owner_created",
            Driving::Channel => "messages_channel_created",
            Driving::Created => "messages_created",
        }
    }
}

/// A parameter of a search statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Param {
    Text(String),
    Int(i64),
}

/// A search statement (text and parameters) ready to run.
pub(super) fn bound<DB: sqlx::Database>(
    (sql, params): (String, Vec<Param>),
) -> sqlx::query::Query<'static, DB, DB::Arguments>
where
    String: for<'t> sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    i64: for<'t> sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for param in params {
        query = match param {
            Param::Text(text) => query.bind(text),
            Param::Int(n) => query.bind(n),
        };
    }
    query
}

/// The position a [`SearchStatements::last_scanned`] row holds.
pub(super) fn scanned_position<R: sqlx::Row>(row: &R) -> Result<SearchPosition, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(SearchPosition { created_at: row.try_get(0)?, id: row.try_get(1)? })
}

/// How a SQL store writes a search.
pub(super) struct Dialect {
    /// Writes the n-th parameter (from 1).
    pub placeholder: fn(usize) -> String,
    /// The condition for a status whose stored value is not its own (`None`: the column holds it).
    pub status: fn(Status) -> Option<&'static str>,
    /// Name the driving index to the planner (SQLite's `INDEXED BY`): a planner choosing another
    /// index would read another range than the one the bound counts.
    pub indexed_by: bool,
}

/// A search's statements over `messages m`, each with its parameters in order.
pub(super) struct SearchStatements {
    /// What follows a page's select list (columns of `m`): the driving range, newest first, cut at
    /// the scan limit, then the other filters on its rows, then the page's limit.
    pub rows: (String, Vec<Param>),
    /// `created_at`, `id` of the last row the page may read, when its driving range holds that
    /// many: the next cursor of a page that came back short. `None` when every filter is in the
    /// driving range (a short page then read the range to its end).
    pub last_scanned: Option<(String, Vec<Param>)>,
}

/// A statement's text and parameters, written one piece at a time.
struct Statement {
    sql: String,
    params: Vec<Param>,
    placeholder: fn(usize) -> String,
}

impl Statement {
    fn new(placeholder: fn(usize) -> String) -> Statement {
        Statement { sql: String::new(), params: Vec::new(), placeholder }
    }

    /// Appends `template`, each `?` in it a parameter.
    fn push(&mut self, template: &str, values: &[Param]) {
        let mut parts = template.split('?');
        self.sql.push_str(parts.next().unwrap_or_default());
        for (part, value) in parts.zip(values) {
            self.params.push(value.clone());
            self.sql.push_str(&(self.placeholder)(self.params.len()));
            self.sql.push_str(part);
        }
    }

    /// Appends `true` and each condition after ` AND `.
    fn conditions<'a>(&mut self, conditions: impl Iterator<Item = &'a Condition>) {
        self.sql.push_str("true");
        for condition in conditions {
            self.sql.push_str(" AND ");
            self.push(&condition.template, &condition.values);
        }
    }

    /// Appends the page order, then `template` with `count` as its parameter.
    fn newest_first(&mut self, template: &str, count: usize) {
        self.sql.push_str(" ORDER BY m.created_at DESC, m.id DESC ");
        self.push(template, &[Param::Int(i64::try_from(count).unwrap_or(i64::MAX))]);
    }
}

/// A condition of a search: of a filter's field, or (`None`) of the time window or cursor.
struct Condition {
    field: Option<Driving>,
    template: String,
    values: Vec<Param>,
}

/// The conditions of a search and its page, `?` for each parameter.
fn conditions(
    filter: &MessageFilter,
    page: &super::Page<SearchPosition>,
    dialect: &Dialect,
) -> Vec<Condition> {
    let mut all = Vec::new();
    let mut add = |field: Option<Driving>, template: &str, values: Vec<Param>| {
        all.push(Condition { field, template: template.to_owned(), values });
    };
    let text = |value: &str| vec![Param::Text(value.to_owned())];
    if let Some(owner) = &filter.owner {
        add(Some(Driving::Owner), "m.owner = ?", text(owner));
    }
    match filter.status.map(|s| (s, (dialect.status)(s))) {
        Some((_, Some(stored))) => add(Some(Driving::Status), stored, Vec::new()),
        Some((s, None)) => add(Some(Driving::Status), "m.status = ?", text(s.as_str())),
        None => {}
    }
    if let Some(delivery_status) = filter.delivery_status {
        add(Some(Driving::DeliveryStatus), "m.delivery_status = ?", text(delivery_status.as_str()));
    }
    if let Some(channel) = &filter.channel {
        add(Some(Driving::Channel), "m.channel = ?", text(channel));
    }
    if let Some(provider) = &filter.provider {
        add(Some(Driving::Provider), "m.provider = ?", text(provider));
    }
    if let Some(to) = &filter.to {
        add(Some(Driving::Recipient), &format!("{RECIPIENT_KEY_SQL} = ?"), text(to));
    }
    if let Some(since) = filter.since {
        add(None, "m.created_at >= ?", vec![Param::Int(since)]);
    }
    if let Some(until) = filter.until {
        add(None, "m.created_at < ?", vec![Param::Int(until)]);
    }
    if let Some(after) = &page.after {
        let values = vec![Param::Int(after.created_at), Param::Text(after.id.clone())];
        add(None, "(m.created_at, m.id) < (?, ?)", values);
    }
    all
}

/// A SQL store's search of `filter`'s page reading at most `scan_limit` rows of its driving range
/// (see [`rows_to_scan`]). The recipient is compared as [`RECIPIENT_KEY_SQL`] (unqualified: the
/// index is on that expression).
pub(super) fn search_statements(
    filter: &MessageFilter,
    page: &super::Page<SearchPosition>,
    scan_limit: usize,
    dialect: &Dialect,
) -> SearchStatements {
    let driving = Driving::of(filter);
    let scan = rows_to_scan(scan_limit, page);
    let all = conditions(filter, page, dialect);
    let in_range = |condition: &&Condition| condition.field.is_none_or(|field| field == driving);
    let hint = if dialect.indexed_by { format!(" INDEXED BY {}", driving.index()) } else { String::new() };
    let range = |statement: &mut Statement| {
        statement.sql.push_str(&format!("FROM messages m{hint} WHERE "));
        statement.conditions(all.iter().filter(in_range));
    };
    let mut rows = Statement::new(dialect.placeholder);
    rows.sql.push_str("FROM (SELECT * ");
    range(&mut rows);
    rows.newest_first("LIMIT ?", scan);
    rows.sql.push_str(") m WHERE ");
    rows.conditions(all.iter().filter(|c| !in_range(c)));
    rows.newest_first("LIMIT ?", page.fetch());
    let last_scanned = all.iter().any(|c| !in_range(&c)).then(|| {
        let mut last = Statement::new(dialect.placeholder);
        last.sql.push_str("SELECT m.created_at, m.id ");
        range(&mut last);
        last.newest_first("LIMIT 1 OFFSET ?", scan - 1);
        (last.sql, last.params)
    });
    SearchStatements { rows: (rows.sql, rows.params), last_scanned }
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

    /// The driving filter: the first given in the fixed order, a status by its value.
    #[test]
    fn the_driving_filter_is_the_narrowest_by_a_fixed_order() {
        let every = MessageFilter {
            status: Some(Status::Sent),
            delivery_status: Some(DeliveryStatus::Delivered),
            channel: Some("sms".into()),
            provider: Some("tw".into()),
            to: Some("+15550001111".into()),
            since: Some(1),
            until: Some(2),
            owner: Some("app".into()),
        };
        let mut filter = every.clone();
        let mut order = Vec::new();
        loop {
            let driving = Driving::of(&filter);
            order.push(driving);
            match driving {
                Driving::Recipient => filter.to = None,
                Driving::Status => filter.status = None,
                Driving::DeliveryStatus => filter.delivery_status = None,
                Driving::Provider => filter.provider = None,
                Driving::Owner => filter.owner = None,
                Driving::Channel => filter.channel = None,
                Driving::Created => break,
            }
        }
        let expected = [
            Driving::Recipient,
            Driving::Provider,
            Driving::Owner,
            Driving::Channel,
            Driving::DeliveryStatus,
            Driving::Status,
            Driving::Created,
        ];
        assert_eq!(order, expected);
        let rare = MessageFilter {
            status: Some(Status::Failed),
            delivery_status: Some(DeliveryStatus::Bounced),
            ..every.clone()
        };
        assert_eq!(Driving::of(&MessageFilter { to: None, ..rare.clone() }), Driving::Status);
        let rare = MessageFilter { to: None, status: Some(Status::Sent), ..rare };
        assert_eq!(Driving::of(&rare), Driving::DeliveryStatus);
        for status in [Status::Queued, Status::Sending] {
            let filter =
                MessageFilter { status: Some(status), owner: Some("app".into()), ..MessageFilter::default() };
            assert_eq!(Driving::of(&filter), Driving::Status, "{status:?}");
        }
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

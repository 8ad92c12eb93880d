//! Encoding of store values as database columns, shared by the SQL stores.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::{ColumnIndex, Decode, Row, Type};
use switchboard_providers::{Channel, ErrorClass};

use super::conversation::{preview, ConversationMessage, ConversationView, Direction, LastMessage, OptOut};
use super::delivery::{delivery_status_of, timeline, CallbackJob, Event, Source};
use super::{
    replay_or_reused, Attempt, Failure, FailureCode, IdempotencyKey, Inserted, MessageView, Outcome,
    QueuePosition, Status, StoreError, IDEMPOTENCY_WINDOW,
};

/// Whether message `m` has started an attempt since it was queued (or last retried): its
/// stored status stays `queued` while it is `sending` (no rewrite of its row per attempt, in
/// either SQL store).
macro_rules! started {
    () => {
        "EXISTS (SELECT 1 FROM attempts a WHERE a.message_id = m.id AND a.number > m.retried_after)"
    };
}

/// Message `m`'s status as shown.
macro_rules! shown_status {
    () => {
        concat!("CASE WHEN m.status = 'queued' AND ", started!(), " THEN 'sending' ELSE m.status END")
    };
}

/// The condition a status filter puts on message `m` (the stored `queued` stands for `queued`
/// and `sending`).
pub(super) fn status_condition(status: Status) -> Option<&'static str> {
    match status {
        Status::Queued => Some(concat!("m.status = 'queued' AND NOT ", started!())),
        Status::Sending => Some(concat!("m.status = 'queued' AND ", started!())),
        Status::Sent | Status::Failed | Status::Received => None,
    }
}

pub(super) fn unavailable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

/// The answer for an idempotency key on record, from its row (`request_hash, message_id, channel`).
pub(super) fn recorded_answer<R>(key: &IdempotencyKey, row: &R) -> Result<Inserted, sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    let hash: String = row.try_get(0)?;
    Ok(replay_or_reused(key, &hash, row.try_get(1)?, row.try_get(2)?))
}

/// Queue positions from rows of `(not_before, message_id)`, whatever the SQL database.
pub(super) fn positions_of<R>(rows: &[R]) -> Result<Vec<QueuePosition>, sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    rows.iter().map(|row| Ok(QueuePosition { not_before: row.try_get(0)?, id: row.try_get(1)? })).collect()
}

/// The oldest creation time (Unix ms) of an idempotency key still live at `now_ms`.
pub(super) fn idempotency_window_start(now_ms: i64) -> i64 {
    now_ms.saturating_sub(i64::try_from(IDEMPOTENCY_WINDOW.as_millis()).unwrap_or(i64::MAX))
}

pub(super) fn ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Callbacks created before this (Unix ms) are past [`crate::callbacks::MAX_AGE`]: retention's
/// purge deletes those still in the outbox.
pub(super) fn callbacks_expired_before() -> i64 {
    ms(SystemTime::now() - crate::callbacks::MAX_AGE)
}

pub(super) fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

pub(super) fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}

pub(super) fn parse_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

pub(super) fn status_of(text: &str) -> Status {
    Status::parse(text).unwrap_or(Status::Queued)
}

pub(super) fn outcome_of(text: &str) -> Outcome {
    match text {
        "success" => Outcome::Success,
        "rate_limited" => Outcome::RateLimited,
        "timeout" => Outcome::Timeout,
        "rejected" => Outcome::Rejected,
        "misconfigured" => Outcome::Misconfigured,
        _ => Outcome::Error,
    }
}

pub(super) fn class_name(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::NotSent => "not_sent",
        ErrorClass::Ambiguous => "ambiguous",
        ErrorClass::Rejected => "rejected",
        ErrorClass::Misconfigured => "misconfigured",
    }
}

pub(super) fn class_of(text: &str) -> Option<ErrorClass> {
    match text {
        "not_sent" => Some(ErrorClass::NotSent),
        "ambiguous" => Some(ErrorClass::Ambiguous),
        "rejected" => Some(ErrorClass::Rejected),
        "misconfigured" => Some(ErrorClass::Misconfigured),
        _ => None,
    }
}

pub(super) fn channel_of(text: &str) -> Channel {
    Channel::new(text).unwrap_or(Channel::SMS)
}

/// What `get` shows, from a `messages` row and its finished `attempts` rows, whatever the SQL
/// database (both stores select the same columns).
pub(super) fn view_of<R>(row: &R, attempts: &[R], events: &[R]) -> Result<MessageView, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    let delivery_status: Option<String> = row.try_get("delivery_status")?;
    let error_code: Option<String> = row.try_get("error_code")?;
    let error_message: Option<String> = row.try_get("error_message")?;
    let provider: Option<String> = row.try_get("provider")?;
    let tags: String = row.try_get("tags")?;
    let channel: String = row.try_get("channel")?;
    let status: String = row.try_get("status")?;
    let attachments: String = row.try_get("attachments")?;
    Ok(MessageView {
        id: row.try_get("id")?,
        channel: channel_of(&channel),
        from: row.try_get("sender")?,
        to: row.try_get("recipient")?,
        attachments: parse_list(&attachments),
        status: status_of(&status),
        provider: provider.map(Arc::from),
        provider_message_id: row.try_get("provider_message_id")?,
        attempts: attempts.iter().map(attempt_of).collect::<Result<_, sqlx::Error>>()?,
        error: error_code.map(|code| Failure {
            code: FailureCode::from_stored(&code),
            message: error_message.unwrap_or_default(),
        }),
        tags: parse_list(&tags),
        direction: Direction::from_stored(&row.try_get::<String, _>("direction")?),
        conversation_id: row.try_get("conversation_id")?,
        delivery_status: delivery_status_of(delivery_status.as_deref()),
        status_callback: row.try_get("status_callback")?,
        events: events.iter().map(event_of).collect::<Result<_, sqlx::Error>>()?,
        owner: row.try_get("owner")?,
        created_at: from_ms(row.try_get("created_at")?),
        updated_at: from_ms(row.try_get("updated_at")?),
    })
    .map(|mut view| {
        let receipts = std::mem::take(&mut view.events);
        view.events = timeline(&view, receipts);
        view
    })
}

/// What `search` shows, from `messages` rows (as [`view_of`] reads them) and the finished
/// `attempts` and `events` rows of all of them (with their `message_id`, each message's in
/// order), in the order of the messages.
pub(super) fn views_of<R>(
    rows: &[R],
    attempts: Vec<R>,
    events: Vec<R>,
) -> Result<Vec<MessageView>, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    let by_message = |rows: Vec<R>| -> Result<HashMap<String, Vec<R>>, sqlx::Error> {
        let mut grouped: HashMap<String, Vec<R>> = HashMap::new();
        for row in rows {
            grouped.entry(row.try_get("message_id")?).or_default().push(row);
        }
        Ok(grouped)
    };
    let (attempts, events) = (by_message(attempts)?, by_message(events)?);
    rows.iter()
        .map(|row| {
            let id: String = row.try_get("id")?;
            let attempts = attempts.get(&id).map_or(&[][..], Vec::as_slice);
            view_of(row, attempts, events.get(&id).map_or(&[][..], Vec::as_slice))
        })
        .collect()
}

/// A provider's receipt from an `events` row (`time, source, type, provider, detail`).
fn event_of<R>(row: &R) -> Result<Event, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let provider: Option<String> = row.try_get("provider")?;
    let detail: String = row.try_get("detail")?;
    let source: String = row.try_get("source")?;
    Ok(Event {
        time: from_ms(row.try_get("time")?),
        source: if source == "switchboard" { Source::Switchboard } else { Source::Provider },
        kind: row.try_get("type")?,
        provider: provider.map(Arc::from),
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
    })
}

/// A callback from a `callbacks` row (`id, webhook_id, message_id, url, status,
/// delivery_status, created_at, attempts`).
pub(super) fn callback_of<R>(row: &R) -> Result<CallbackJob, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let status: String = row.try_get("status")?;
    let delivery_status: Option<String> = row.try_get("delivery_status")?;
    let attempts: i64 = row.try_get("attempts")?;
    Ok(CallbackJob {
        id: row.try_get("id")?,
        webhook_id: row.try_get("webhook_id")?,
        message_id: row.try_get("message_id")?,
        url: row.try_get("url")?,
        status: status_of(&status),
        delivery_status: delivery_status_of(delivery_status.as_deref()),
        created_at: from_ms(row.try_get("created_at")?),
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
    })
}

fn attempt_of<R>(a: &R) -> Result<Attempt, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let provider: String = a.try_get("provider")?;
    let outcome: Option<String> = a.try_get("outcome")?;
    let class: Option<String> = a.try_get("error_class")?;
    let latency: Option<i64> = a.try_get("latency_ms")?;
    let finished: Option<i64> = a.try_get("finished_at")?;
    Ok(Attempt {
        provider: Arc::from(provider),
        outcome: outcome_of(outcome.as_deref().unwrap_or("")),
        error_class: class.as_deref().and_then(class_of),
        error_code: a.try_get("error_code")?,
        error_message: a.try_get("error_message")?,
        latency_ms: u64::try_from(latency.unwrap_or(0)).unwrap_or(0),
        time: from_ms(finished.unwrap_or(a.try_get("started_at")?)),
    })
}

/// A conversation from a row of `id, channel, participant_a, participant_b, message_count,
/// last_message_at, last_message_id` and, for its newest message still stored (all `NULL` when
/// none), `last_id, last_direction, last_body`.
pub(super) fn conversation_of<R>(row: &R) -> Result<ConversationView, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let last_id: Option<String> = row.try_get("last_id")?;
    let last_direction: Option<String> = row.try_get("last_direction")?;
    let last_body: Option<String> = row.try_get("last_body")?;
    let count: i64 = row.try_get("message_count")?;
    Ok(ConversationView {
        id: row.try_get("id")?,
        channel: row.try_get("channel")?,
        participants: [row.try_get("participant_a")?, row.try_get("participant_b")?],
        message_count: u64::try_from(count).unwrap_or(0),
        last_message_at: from_ms(row.try_get("last_message_at")?),
        last_message: last_id.map(|id| LastMessage {
            id,
            direction: Direction::from_stored(last_direction.as_deref().unwrap_or_default()),
            body_preview: preview(last_body.as_deref().unwrap_or_default()),
        }),
        last_message_id: row.try_get("last_message_id")?,
    })
}

/// A conversation's message from a `messages` row (`id, direction, channel, sender, recipient,
/// body, attachments, status, provider, occurred_at, created_at`).
pub(super) fn conversation_message_of<R>(row: &R) -> Result<ConversationMessage, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let channel: String = row.try_get("channel")?;
    let status: String = row.try_get("status")?;
    let attachments: String = row.try_get("attachments")?;
    let provider: Option<String> = row.try_get("provider")?;
    let created_at = from_ms(row.try_get("created_at")?);
    let occurred_at: Option<i64> = row.try_get("occurred_at")?;
    Ok(ConversationMessage {
        id: row.try_get("id")?,
        direction: Direction::from_stored(&row.try_get::<String, _>("direction")?),
        channel: channel_of(&channel),
        from: row.try_get("sender")?,
        to: row.try_get("recipient")?,
        body: row.try_get("body")?,
        attachments: parse_list(&attachments),
        status: status_of(&status),
        provider: provider.map(Arc::from),
        timestamp: occurred_at.map_or(created_at, from_ms),
        created_at,
    })
}

/// An opt-out from a row of `channel, sender, recipient, created_at`.
pub(super) fn opt_out_of<R>(row: &R) -> Result<OptOut, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(OptOut {
        channel: row.try_get("channel")?,
        sender: row.try_get("sender")?,
        recipient: row.try_get("recipient")?,
        created_at: from_ms(row.try_get("created_at")?),
    })
}

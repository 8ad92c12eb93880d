//! SQLite writes of a batch in one statement: plain inserts, inbound messages, receipts' events
//! and delivery statuses, attempt starts and finishes of all the batch's messages, and callbacks
//! leaving the outbox go, as JSON arrays, into one `INSERT` on a temporary view
//! whose `INSTEAD OF` trigger applies them to the tables (rows drawn with `jsonb_each`).
//!
//! Why a trigger: sqlx runs each statement on its connection thread and hands every statement's
//! result back to the async side as it comes, and each hand-off is a thread switch both ways —
//! on a small machine that was most of the cost of a write. One statement per batch is one
//! hand-off whatever the batch's size and mix, its text never changes (it stays prepared), and
//! a single statement is its own transaction: atomic, taking the write lock from its start.
//!
//! Every message joins its conversation in the same statement: an upsert on the conversation's
//! unique key (family, participants; computed in Rust with [`ConversationKey::of`]) counts it,
//! then the message row looks the conversation's id up by that key. SQLite applies an
//! `INSERT … SELECT … ON CONFLICT` row by row, so messages of one batch sharing a conversation
//! (a new one included) each count once.
//!
//! Inbound messages are written only when their (family, provider message id) is not in
//! `inbound_ids` yet; every statement of theirs tests that before the last one records them, so
//! a redelivery writes nothing. The caller must not put two inbound messages with the same
//! (family, provider message id), or two opt-out changes of one pair, in one group: their
//! statements would not see each other. [`Group::write`] then reads back, for each inbound
//! message, the id stored under its (family, provider message id) and its conversation.

use std::collections::HashMap;
use std::time::SystemTime;

use serde::Serialize;
use sqlx::{Row, SqliteConnection};
use switchboard_providers::OutboundMessage;

use crate::store::codec::{class_name, json_list, ms};
use crate::store::conversation::{family, ConversationKey, InboundMessage, OptChange};
use crate::store::delivery::ReceiptRecord;
use crate::store::{Attempt, DeliveryStatus, Final, Meta};

/// The conversation upsert for rows whose fields `F, L, H` (positions) are the family and the
/// two participants and whose field 0 is the message id; `$filter` limits the rows. Rows are
/// counted per conversation first: a conversation's row is written once per batch however many
/// of its messages the batch holds, and new conversations get their ids in the order of their
/// first message (ids are UUIDv7s: they sort by creation).
macro_rules! upsert_conversations {
    ($rows:literal, $f:literal, $l:literal, $h:literal, $($filter:tt)+) => {
        concat!(
            "INSERT INTO conversations (channel, participant_a, participant_b, created_at, last_message_at, \
             last_message_id, message_count) \
             SELECT value->>", $f, ", value->>", $l, ", value->>", $h, ", NEW.now, NEW.now, MAX(value->>0), COUNT(*) \
             FROM jsonb_each(NEW.", $rows, ") WHERE ", $($filter)+, " \
             GROUP BY value->>", $f, ", value->>", $l, ", value->>", $h, " ORDER BY MIN(value->>0) \
             ON CONFLICT (channel, participant_a, participant_b) DO UPDATE SET \
             message_count = message_count + excluded.message_count, last_message_at = excluded.last_message_at, \
             last_message_id = MAX(last_message_id, excluded.last_message_id); "
        )
    };
}

/// The id of the conversation a row's fields `F, L, H` name (upserted before).
macro_rules! conversation_id {
    ($f:literal, $l:literal, $h:literal) => {
        concat!(
            "(SELECT c.id FROM conversations c WHERE c.channel = value->>",
            $f,
            " AND c.participant_a = value->>",
            $l,
            " AND c.participant_b = value->>",
            $h,
            ")"
        )
    };
}

/// An inbound row not stored before (its family and provider message id not recorded).
macro_rules! inbound_is_new {
    () => {
        "NOT EXISTS (SELECT 1 FROM inbound_ids i WHERE i.channel = value->>11 AND i.provider_message_id = value->>8)"
    };
}

/// Queues a callback for each message of `$rows` (its id at position 0) that has a
/// `status_callback` and passes `$filter`, telling of status `$status` (an SQL expression over
/// the message `m`) and its delivery status.
macro_rules! queue_callbacks {
    ($status:literal, $rows:literal, $filter:literal) => {
        concat!(
            "INSERT INTO callbacks (webhook_id, message_id, url, status, delivery_status, created_at, next_at) \
             SELECT 'msg_' || lower(hex(randomblob(16))), m.id, m.status_callback, ",
            $status,
            ", m.delivery_status, NEW.now, NEW.now FROM jsonb_each(NEW.",
            $rows,
            ") AS r JOIN messages m ON m.id = r.value->>0 WHERE m.status_callback IS NOT NULL AND ",
            $filter,
            "; "
        )
    };
}

/// The view and trigger, created on the writer's connection (temporary objects: they are not
/// part of the schema and vanish with the connection). An empty array makes its statements
/// no-ops. `WHERE true` keeps `ON CONFLICT` from being read as a join constraint.
const SETUP: &str = concat!(
    "CREATE TEMP VIEW IF NOT EXISTS batch_writes (new_messages, inbound, attempt_starts, attempt_ends, endings, \
     callbacks_done, events, delivery_moves, delivery_statuses, now) \
     AS SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL; \
     CREATE TEMP TRIGGER IF NOT EXISTS batch_writes_apply INSTEAD OF INSERT ON batch_writes BEGIN ",
    // Receipts (worked out by `receipts::plan`; first, as they were read before the batch's
    // other writes): their events, each message's last delivery status, and a callback per
    // move telling of the status it moved to, in order.
    "INSERT INTO events (message_id, time, source, type, provider, detail) \
     SELECT value->>0, value->>1, 'provider', value->>2, value->>3, value->>4 FROM jsonb_each(NEW.events); \
     UPDATE messages SET delivery_status = v.value->>1, updated_at = NEW.now \
     FROM jsonb_each(NEW.delivery_statuses) AS v WHERE messages.id = v.value->>0; \
     INSERT INTO callbacks (webhook_id, message_id, url, status, delivery_status, created_at, next_at) \
     SELECT 'msg_' || lower(hex(randomblob(16))), m.id, m.status_callback, m.status, r.value->>1, NEW.now, NEW.now \
     FROM jsonb_each(NEW.delivery_moves) AS r JOIN messages m ON m.id = r.value->>0 \
     WHERE m.status_callback IS NOT NULL ORDER BY r.key; ",
    // Outbound messages: their conversations, rows and queue entries.
    upsert_conversations!("new_messages", "9", "10", "11", "true"),
    "INSERT INTO messages (id, channel, sender, recipient, subject, body, attachments, tags, status, \
     created_at, updated_at, owner, direction, conversation_id, status_callback) \
     SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, \
     value->>6, value->>7, 'queued', NEW.now, NEW.now, value->>8, 'outbound', ",
    conversation_id!("9", "10", "11"),
    ", value->>12",
    " FROM jsonb_each(NEW.new_messages); \
     INSERT INTO queue (message_id, not_before) SELECT value->>0, NEW.now FROM jsonb_each(NEW.new_messages); ",
    // Inbound messages not stored before: conversations, rows (finished at once, never
    // queued), opt-out changes, and last their de-duplication rows.
    upsert_conversations!("inbound", "11", "12", "13", inbound_is_new!()),
    "INSERT INTO messages (id, channel, sender, recipient, subject, body, attachments, tags, status, \
     provider, provider_message_id, created_at, updated_at, finished_at, owner, direction, \
     conversation_id, occurred_at) \
     SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6, '[]', \
     'received', value->>7, value->>8, NEW.now, NEW.now, NEW.now, value->>9, 'inbound', ",
    conversation_id!("11", "12", "13"),
    ", value->>10 FROM jsonb_each(NEW.inbound) WHERE ",
    inbound_is_new!(),
    "; INSERT INTO opt_outs (channel, sender, recipient, created_at) \
     SELECT value->>11, value->>15, value->>16, NEW.now FROM jsonb_each(NEW.inbound) \
     WHERE value->>14 = 'out' AND ",
    inbound_is_new!(),
    " ON CONFLICT (channel, sender, recipient) DO NOTHING; \
     DELETE FROM opt_outs WHERE (channel, sender, recipient) IN \
     (SELECT value->>11, value->>15, value->>16 FROM jsonb_each(NEW.inbound) WHERE value->>14 = 'in' AND ",
    inbound_is_new!(),
    "); INSERT INTO inbound_ids (channel, provider_message_id, message_id) \
     SELECT value->>11, value->>8, value->>0 FROM jsonb_each(NEW.inbound) WHERE ",
    inbound_is_new!(),
    "; ",
    // Attempts and endings. A first attempt (since it was queued or retried) makes its message
    // `sending`: a callback when it has a URL (before the attempt's row: a restarted first
    // attempt is no change).
    queue_callbacks!(
        "'sending'",
        "attempt_starts",
        "m.status = 'queued' AND NOT EXISTS (SELECT 1 FROM attempts a WHERE a.message_id = m.id \
         AND a.number > m.retried_after)"
    ),
    "INSERT INTO attempts (message_id, number, provider, started_at) \
     SELECT value->>0, value->>1, value->>2, NEW.now FROM jsonb_each(NEW.attempt_starts) WHERE true \
     ON CONFLICT (message_id, number) DO UPDATE SET provider = excluded.provider, \
     started_at = excluded.started_at, finished_at = NULL, outcome = NULL; \
     INSERT INTO attempts (message_id, number, provider, started_at, finished_at, outcome, error_class, error_code, error_message, latency_ms) \
     SELECT value->>0, value->>1, value->>2, value->>3, value->>4, \
     value->>5, value->>6, value->>7, value->>8, value->>9 \
     FROM jsonb_each(NEW.attempt_ends) WHERE true \
     ON CONFLICT (message_id, number) DO UPDATE SET finished_at = excluded.finished_at, outcome = excluded.outcome, \
     error_class = excluded.error_class, error_code = excluded.error_code, error_message = excluded.error_message, \
     latency_ms = excluded.latency_ms; \
     UPDATE messages SET status = v.value->>1, provider = v.value->>2, \
     provider_message_id = v.value->>3, error_code = v.value->>4, \
     error_message = v.value->>5, updated_at = NEW.now, finished_at = NEW.now \
     FROM jsonb_each(NEW.endings) AS v WHERE messages.id = v.value->>0; \
     DELETE FROM queue WHERE message_id IN (SELECT value->>0 FROM jsonb_each(NEW.endings)); ",
    queue_callbacks!("m.status", "endings", "true"),
    // Callbacks delivered (or given up on): out of the outbox.
    "DELETE FROM callbacks WHERE id IN (SELECT value FROM jsonb_each(NEW.callbacks_done)); ",
    "END;"
);

/// Creates the view and trigger [`Group::write`] needs on `conn` (once per connection).
pub(super) async fn prepare(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(SETUP).execute(conn).await.map(drop)
}

// Rows go as JSON arrays (tuple structs), read by position (`value->>N`): cheaper for SQLite
// than looking keys up. Each row's fields are in the order of the columns its statement writes.

/// `id, channel, sender, recipient, subject, body, attachments, tags, owner`, then its
/// conversation's `family, low, high`, then its `status_callback`; the lists carried as their
/// column's own JSON text, so they are stored exactly as written.
#[derive(Serialize)]
struct NewMessage<'a>(
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    Option<&'a str>,
    &'a str,
    String,
    String,
    Option<&'a str>,
    &'a str,
    String,
    String,
    Option<&'a str>,
);

/// `id, channel, sender, recipient, subject, body, attachments, provider, provider_message_id,
/// owner, occurred_at`, its conversation's `family, low, high` (the family also keys its
/// de-duplication and opt-out), and its opt-out change: `'out'`, `'in'` or none, with the
/// pair's `sender, recipient`.
#[derive(Serialize)]
struct NewInbound<'a>(
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    Option<&'a str>,
    &'a str,
    String,
    Option<&'a str>,
    &'a str,
    Option<&'a str>,
    i64,
    &'a str,
    String,
    String,
    Option<&'static str>,
    String,
    String,
);

/// Where an inbound message of a group is stored: the id under its (family, provider message
/// id) — its own, or the first delivery's — and that message's conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stored {
    pub(super) id: String,
    pub(super) conversation_id: i64,
}

/// `message_id, number, provider`.
#[derive(Serialize)]
struct Start<'a>(&'a str, u32, &'a str);

/// `message_id, number, provider, started_at, finished_at, outcome, error_class, error_code,
/// error_message, latency_ms`.
#[derive(Serialize)]
struct AttemptEnd<'a>(
    &'a str,
    u32,
    &'a str,
    i64,
    i64,
    &'static str,
    Option<&'static str>,
    Option<&'a str>,
    Option<&'a str>,
    i64,
);

/// `id, status, provider, provider_message_id, error_code, error_message`.
#[derive(Serialize)]
struct Ending<'a>(&'a str, &'static str, Option<&'a str>, Option<&'a str>, Option<&'a str>, Option<&'a str>);

/// `message_id, time, type, provider, detail` (the detail as its JSON text).
#[derive(Serialize)]
struct Event<'a>(String, i64, &'a str, &'a str, String);

/// `message_id, delivery_status`.
#[derive(Serialize)]
struct Delivery(String, &'static str);

/// The grouped writes of one batch.
#[derive(Default)]
pub(super) struct Group<'a> {
    inserts: Vec<NewMessage<'a>>,
    inbound: Vec<NewInbound<'a>>,
    starts: Vec<Start<'a>>,
    attempt_ends: Vec<AttemptEnd<'a>>,
    endings: Vec<Ending<'a>>,
    callbacks_done: Vec<i64>,
    events: Vec<Event<'a>>,
    /// Every move of a delivery status, in order (a callback each).
    delivery_moves: Vec<Delivery>,
    /// Each moved message's last delivery status, once; where each message's is.
    delivery_statuses: Vec<Delivery>,
    delivery_index: HashMap<String, usize>,
}

impl<'a> Group<'a> {
    /// A new message without an idempotency key, and its queue entry.
    pub(super) fn insert(&mut self, m: &'a OutboundMessage, meta: Meta<'a>) {
        let conversation = ConversationKey::of(m.channel.as_str(), &m.from, &m.to);
        self.inserts.push(NewMessage(
            &m.id,
            m.channel.as_str(),
            &m.from,
            &m.to,
            m.subject.as_deref(),
            &m.body,
            json_list(&m.attachments),
            json_list(&m.tags),
            meta.owner,
            family(m.channel.as_str()),
            conversation.low,
            conversation.high,
            meta.status_callback,
        ));
    }

    /// An inbound message, its conversation and its opt-out change, unless its (family,
    /// provider message id) is stored already.
    pub(super) fn inbound(&mut self, m: &'a InboundMessage) {
        let conversation = m.conversation_key();
        let opt_out = m.opt_out_key();
        let change = m.opt_change.map(|change| match change {
            OptChange::OptOut => "out",
            OptChange::OptIn => "in",
        });
        self.inbound.push(NewInbound(
            &m.id,
            m.channel.as_str(),
            &m.from,
            &m.to,
            m.subject.as_deref(),
            &m.body,
            json_list(&m.attachments),
            m.provider.as_deref(),
            &m.provider_message_id,
            m.owner.as_deref(),
            ms(m.timestamp),
            family(m.channel.as_str()),
            conversation.low,
            conversation.high,
            change,
            opt_out.sender,
            opt_out.recipient,
        ));
    }

    /// An attempt about to call a provider: its row (which makes its message `sending`: the
    /// status is read so, sparing a rewrite of the message's row per message).
    pub(super) fn start(&mut self, id: &'a str, number: u32, provider: &'a str) {
        self.starts.push(Start(id, number, provider));
    }

    /// How an attempt ended (creating its row if its start was not recorded).
    pub(super) fn attempt_end(&mut self, id: &'a str, number: u32, attempt: &'a Attempt) {
        let latency = i64::try_from(attempt.latency_ms).unwrap_or(i64::MAX);
        self.attempt_ends.push(AttemptEnd(
            id,
            number,
            &attempt.provider,
            ms(attempt.time).saturating_sub(latency),
            ms(attempt.time),
            attempt.outcome.as_str(),
            attempt.error_class.map(class_name),
            attempt.error_code.as_deref(),
            attempt.error_message.as_deref(),
            latency,
        ));
    }

    /// A message ending: its final attempt if it made one, its outcome, its queue entry gone.
    pub(super) fn finish(&mut self, id: &'a str, end: &'a Final, last_attempt: Option<&'a (u32, Attempt)>) {
        if let Some((number, attempt)) = last_attempt {
            self.attempt_end(id, *number, attempt);
        }
        let (status, provider, provider_message_id, failure) = match end {
            Final::Sent { provider, provider_message_id } => {
                ("sent", Some(&**provider), provider_message_id.as_deref(), None)
            }
            Final::Failed { provider, failure } => ("failed", provider.as_deref(), None, Some(failure)),
        };
        self.endings.push(Ending(
            id,
            status,
            provider,
            provider_message_id,
            failure.map(|f| f.code.as_str()),
            failure.map(|f| f.message.as_str()),
        ));
    }

    /// A receipt recorded as an event of message `id`.
    pub(super) fn event(&mut self, id: &str, receipt: &'a ReceiptRecord) {
        let detail = serde_json::Value::Object(receipt.detail.clone()).to_string();
        self.events.push(Event(id.to_owned(), ms(receipt.time), &receipt.event, &receipt.provider, detail));
    }

    /// Message `id`'s delivery status moving to `status` (after its moves already in the group).
    pub(super) fn delivery_move(&mut self, id: &str, status: DeliveryStatus) {
        self.delivery_moves.push(Delivery(id.to_owned(), status.as_str()));
        match self.delivery_index.get(id) {
            Some(&at) => {
                if let Some(last) = self.delivery_statuses.get_mut(at) {
                    last.1 = status.as_str();
                }
            }
            None => {
                self.delivery_index.insert(id.to_owned(), self.delivery_statuses.len());
                self.delivery_statuses.push(Delivery(id.to_owned(), status.as_str()));
            }
        }
    }

    /// A callback that left the outbox (delivered, dropped or expired).
    pub(super) fn callback_done(&mut self, id: i64) {
        self.callbacks_done.push(id);
    }

    /// Applies the writes in one statement: on its own, a transaction of its own; inside a
    /// transaction the caller began, part of it. With inbound messages, a second statement
    /// reads where each is stored (in the group's order): the caller runs both in one
    /// transaction.
    pub(super) async fn write(self, conn: &mut SqliteConnection) -> Result<Vec<Stored>, sqlx::Error> {
        let json =
            |rows: Result<String, serde_json::Error>| rows.map_err(|e| sqlx::Error::Encode(Box::new(e)));
        sqlx::query(
            "INSERT INTO batch_writes VALUES \
             (jsonb(?), jsonb(?), jsonb(?), jsonb(?), jsonb(?), jsonb(?), jsonb(?), jsonb(?), jsonb(?), ?)",
        )
        .bind(json(serde_json::to_string(&self.inserts))?)
        .bind(json(serde_json::to_string(&self.inbound))?)
        .bind(json(serde_json::to_string(&self.starts))?)
        .bind(json(serde_json::to_string(&self.attempt_ends))?)
        .bind(json(serde_json::to_string(&self.endings))?)
        .bind(json(serde_json::to_string(&self.callbacks_done))?)
        .bind(json(serde_json::to_string(&self.events))?)
        .bind(json(serde_json::to_string(&self.delivery_moves))?)
        .bind(json(serde_json::to_string(&self.delivery_statuses))?)
        .bind(ms(SystemTime::now()))
        .execute(&mut *conn)
        .await?;
        if self.inbound.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<(&str, &str)> = self.inbound.iter().map(|row| (row.11, row.8)).collect();
        let rows = sqlx::query(
            "SELECT i.message_id, m.conversation_id FROM json_each(?) j \
             LEFT JOIN inbound_ids i ON i.channel = j.value->>0 AND i.provider_message_id = j.value->>1 \
             LEFT JOIN messages m ON m.id = i.message_id ORDER BY j.key",
        )
        .bind(json(serde_json::to_string(&keys))?)
        .fetch_all(&mut *conn)
        .await?;
        if rows.len() != keys.len() {
            return Err(sqlx::Error::RowNotFound);
        }
        rows.iter()
            .map(|row| {
                let id: Option<String> = row.try_get(0)?;
                let conversation_id: Option<i64> = row.try_get(1)?;
                match (id, conversation_id) {
                    (Some(id), Some(conversation_id)) => Ok(Stored { id, conversation_id }),
                    _ => Err(sqlx::Error::RowNotFound),
                }
            })
            .collect()
    }
}

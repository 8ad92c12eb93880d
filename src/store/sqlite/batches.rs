//! SQLite writes of a batch in one statement: plain inserts, attempt starts and finishes of all
//! the batch's messages go, as JSON arrays, into one `INSERT` on a temporary view whose
//! `INSTEAD OF` trigger applies them to the tables (rows drawn with `jsonb_each`).
//!
//! Why a trigger: sqlx runs each statement on its connection thread and hands every statement's
//! result back to the async side as it comes, and each hand-off is a thread switch both ways —
//! on a small machine that was most of the cost of a write. One statement per batch is one
//! hand-off whatever the batch's size and mix, its text never changes (it stays prepared), and
//! a single statement is its own transaction: atomic, taking the write lock from its start.

use std::time::SystemTime;

use serde::Serialize;
use sqlx::SqliteConnection;
use switchboard_providers::OutboundMessage;

use crate::store::codec::{class_name, json_list, ms};
use crate::store::{Attempt, Final};

/// The view and trigger, created on the writer's connection (temporary objects: they are not
/// part of the schema and vanish with the connection). An empty array makes its statement a
/// no-op. `WHERE true` keeps `ON CONFLICT` from being read as a join constraint.
const SETUP: &str = "\
CREATE TEMP VIEW IF NOT EXISTS batch_writes (new_messages, attempt_starts, attempt_ends, endings, now) \
AS SELECT NULL, NULL, NULL, NULL, NULL; \
CREATE TEMP TRIGGER IF NOT EXISTS batch_writes_apply INSTEAD OF INSERT ON batch_writes BEGIN \
INSERT INTO messages (id, channel, sender, recipient, subject, body, attachments, tags, status, created_at, updated_at, owner) \
SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, \
value->>6, value->>7, 'queued', NEW.now, NEW.now, value->>8 FROM jsonb_each(NEW.new_messages); \
INSERT INTO queue (message_id, not_before) SELECT value->>0, NEW.now FROM jsonb_each(NEW.new_messages); \
INSERT INTO attempts (message_id, number, provider, started_at) \
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
DELETE FROM queue WHERE message_id IN (SELECT value->>0 FROM jsonb_each(NEW.endings)); \
END;";

/// Creates the view and trigger [`Group::write`] needs on `conn` (once per connection).
pub(super) async fn prepare(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(SETUP).execute(conn).await.map(drop)
}

// Rows go as JSON arrays (tuple structs), read by position (`value->>N`): cheaper for SQLite
// than looking keys up. Each row's fields are in the order of the columns its statement writes.

/// `id, channel, sender, recipient, subject, body, attachments, tags, owner`; the lists carried
/// as their column's own JSON text, so they are stored exactly as written.
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
);

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

/// The grouped writes of one batch.
#[derive(Default)]
pub(super) struct Group<'a> {
    inserts: Vec<NewMessage<'a>>,
    starts: Vec<Start<'a>>,
    attempt_ends: Vec<AttemptEnd<'a>>,
    endings: Vec<Ending<'a>>,
}

impl<'a> Group<'a> {
    /// A new message without an idempotency key, and its queue entry.
    pub(super) fn insert(&mut self, m: &'a OutboundMessage, owner: Option<&'a str>) {
        self.inserts.push(NewMessage(
            &m.id,
            m.channel.as_str(),
            &m.from,
            &m.to,
            m.subject.as_deref(),
            &m.body,
            json_list(&m.attachments),
            json_list(&m.tags),
            owner,
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

    /// Applies the writes in one statement: on its own, a transaction of its own; inside a
    /// transaction the caller began, part of it.
    pub(super) async fn write(self, conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
        let json =
            |rows: Result<String, serde_json::Error>| rows.map_err(|e| sqlx::Error::Encode(Box::new(e)));
        sqlx::query("INSERT INTO batch_writes VALUES (jsonb(?), jsonb(?), jsonb(?), jsonb(?), ?)")
            .bind(json(serde_json::to_string(&self.inserts))?)
            .bind(json(serde_json::to_string(&self.starts))?)
            .bind(json(serde_json::to_string(&self.attempt_ends))?)
            .bind(json(serde_json::to_string(&self.endings))?)
            .bind(ms(SystemTime::now()))
            .execute(conn)
            .await?;
        Ok(())
    }
}

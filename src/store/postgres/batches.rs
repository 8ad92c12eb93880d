//! Group commit on PostgreSQL: concurrent writes of one kind — plain inserts (no idempotency
//! key), attempt starts, message endings — go in one transaction per batch, rows passed as
//! arrays (`UNNEST`), so they share round trips and one commit instead of one each; for inserts
//! that is one wait for the WAL flush per batch. Starts and endings are one statement; inserts
//! are three (their conversations, the messages, their conversations' counts). A few batches of a kind may be in flight at
//! once (on separate connections); the next batch gathers while they commit.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sqlx::{PgConnection, PgPool};
use switchboard_providers::OutboundMessage;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::store::codec::{class_name, json_list, ms, unavailable};
use crate::store::conversation::ConversationKey;
use crate::store::{Attempt, Final, Meta, StoreError};

use super::conversations;

/// The most writes in one statement.
const MAX_BATCH: usize = 256;
/// Batches of one kind committing at once.
const IN_FLIGHT: usize = 4;

/// The lease new queue entries get, and that progress writes must still hold.
#[derive(Clone)]
pub(super) struct Lease {
    pub token: String,
    pub duration: Duration,
}

impl Lease {
    /// When a lease taken or renewed now runs out.
    pub(super) fn until(&self) -> i64 {
        ms(SystemTime::now() + self.duration)
    }
}

/// Each write's answer, in the batch's order: `Ok(false)` when the lease on its message was
/// taken over by another instance (nothing was written for it).
type Answers = Vec<Result<bool, StoreError>>;

type Reply = oneshot::Sender<Result<bool, StoreError>>;

/// Hands writes of one kind to a task that commits them in batches.
pub(super) struct Batcher<T> {
    writes: mpsc::Sender<(T, Reply)>,
}

/// A kind of write and its batch transaction.
pub(super) trait Statement: Sized + Send + Sync + 'static {
    /// Writes `rows` in one transaction; says, per row, whether it applied (`false`: the lease on
    /// its message is no longer ours).
    fn apply<'a>(
        pool: &'a PgPool,
        lease: &'a Lease,
        rows: &'a [Self],
    ) -> impl Future<Output = Result<Vec<bool>, sqlx::Error>> + Send + 'a;
}

impl<T: Statement> Batcher<T> {
    pub(super) fn start(pool: PgPool, lease: Lease) -> Batcher<T> {
        let (writes, queue) = mpsc::channel(MAX_BATCH * IN_FLIGHT);
        tokio::spawn(gather(pool, lease, queue));
        Batcher { writes }
    }

    /// Writes `item` with the batch it lands in; `Ok(false)`: the lease was lost.
    pub(super) async fn write(&self, item: T) -> Result<bool, StoreError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || unavailable("the database writer stopped");
        self.writes.send((item, reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Cuts batches: waits for a free commit slot, then takes every write waiting.
async fn gather<T: Statement>(pool: PgPool, lease: Lease, mut queue: mpsc::Receiver<(T, Reply)>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { return };
        let Some(first) = queue.recv().await else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        let (items, replies): (Vec<T>, Vec<Reply>) = batch.into_iter().unzip();
        let (pool, lease) = (pool.clone(), lease.clone());
        tokio::spawn(async move {
            for (reply, answer) in replies.into_iter().zip(each_or_alone(&pool, &lease, &items).await) {
                let _ = reply.send(answer);
            }
            drop(slot);
        });
    }
}

/// Runs a batch (which says, per write, whether it applied); if the database refuses it (one
/// bad row fails the batch), each write is tried alone, so only the bad one fails;
/// if the database is unreachable, every write gets that error.
async fn each_or_alone<T: Statement>(pool: &PgPool, lease: &Lease, items: &[T]) -> Answers {
    match T::apply(pool, lease, items).await {
        Ok(applied) => applied.into_iter().map(Ok).collect(),
        Err(sqlx::Error::Database(_)) if items.len() > 1 => {
            let mut answers = Vec::with_capacity(items.len());
            for item in items.chunks(1) {
                let applied = T::apply(pool, lease, item).await;
                answers.push(applied.map_err(unavailable).map(|a| a.first() == Some(&true)));
            }
            answers
        }
        Err(error) => {
            let error = unavailable(error);
            items.iter().map(|_| Err(error.clone())).collect()
        }
    }
}

/// Which of `ids` are in `held`, in order.
fn applied(ids: &[&str], held: &[String]) -> Vec<bool> {
    let held: std::collections::HashSet<&str> = held.iter().map(String::as_str).collect();
    ids.iter().map(|id| held.contains(id)).collect()
}

/// A new message without idempotency key, who created it, and where its changes are POSTed.
pub(super) struct NewMessage {
    pub message: OutboundMessage,
    pub owner: Option<String>,
    pub status_callback: Option<String>,
}

/// New messages with their queue entries, leased to this instance, in their conversations.
impl Statement for NewMessage {
    async fn apply(pool: &PgPool, lease: &Lease, rows: &[Self]) -> Result<Vec<bool>, sqlx::Error> {
        let refs: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    &r.message,
                    Meta { owner: r.owner.as_deref(), status_callback: r.status_callback.as_deref() },
                )
            })
            .collect();
        let mut tx = pool.begin().await?;
        insert_all(&mut tx, lease, &refs).await?;
        tx.commit().await?;
        Ok(vec![true; rows.len()])
    }
}

/// An attempt about to call a provider.
pub(super) struct Start {
    pub id: String,
    pub number: u32,
    pub provider: String,
}

/// For each attempt whose message this instance still holds: renews the lease and records the
/// attempt's row, which makes the message `sending` (read, not written: its row is not
/// rewritten, see `shown_status!`) — with a callback when that is a change (the message had no
/// attempt since it was queued or retried: a restarted first attempt is none) and the message
/// has a `status_callback`. Every part of the statement reads the rows as they were before it.
impl Statement for Start {
    async fn apply(pool: &PgPool, lease: &Lease, rows: &[Self]) -> Result<Vec<bool>, sqlx::Error> {
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        let held: Vec<String> = sqlx::query_scalar(
            "WITH input AS ( \
               SELECT * FROM UNNEST($1::TEXT[], $2::INTEGER[], $3::TEXT[]) AS i (id, number, provider)), \
             held AS ( \
               UPDATE queue SET lease_until = $4 FROM input \
               WHERE queue.message_id = input.id AND queue.lease_token = $5 RETURNING queue.message_id), \
             attempt AS ( \
               INSERT INTO attempts (message_id, number, provider, started_at) \
               SELECT input.id, input.number, input.provider, $6 FROM input JOIN held ON held.message_id = input.id \
               ON CONFLICT (message_id, number) DO UPDATE SET provider = excluded.provider, \
               started_at = excluded.started_at, finished_at = NULL, outcome = NULL RETURNING 1), \
             callback AS ( \
               INSERT INTO callbacks (message_id, url, status, delivery_status, created_at, next_at) \
               SELECT m.id, m.status_callback, 'sending', m.delivery_status, $6, $6 \
               FROM messages m JOIN held ON held.message_id = m.id \
               WHERE m.status_callback IS NOT NULL AND m.status = 'queued' \
               AND NOT EXISTS (SELECT 1 FROM attempts a WHERE a.message_id = m.id AND a.number > m.retried_after) \
               ORDER BY m.id RETURNING 1) \
             SELECT message_id FROM held",
        )
        .bind(&ids)
        .bind(rows.iter().map(|r| i32::try_from(r.number).unwrap_or(i32::MAX)).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.provider.as_str()).collect::<Vec<_>>())
        .bind(lease.until())
        .bind(&lease.token)
        .bind(ms(SystemTime::now()))
        .fetch_all(pool)
        .await?;
        Ok(applied(&ids, &held))
    }
}

/// A message ending, with its final attempt if it made one.
pub(super) struct Ending {
    pub id: String,
    pub outcome: Final,
    pub last_attempt: Option<(u32, Attempt)>,
}

/// For each message this instance still holds: takes it off the queue, records its final
/// attempt and its end, and queues a callback telling of it when the message has a
/// `status_callback`. A message whose lease was taken over is left to the new holder.
impl Statement for Ending {
    async fn apply(pool: &PgPool, lease: &Lease, rows: &[Self]) -> Result<Vec<bool>, sqlx::Error> {
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        let attempt = |f: fn(u32, &Attempt) -> Option<String>| {
            rows.iter().map(|r| r.last_attempt.as_ref().and_then(|(n, a)| f(*n, a))).collect::<Vec<_>>()
        };
        let number = |r: &Ending| r.last_attempt.as_ref().map(|(n, _)| i32::try_from(*n).unwrap_or(i32::MAX));
        let started = |a: &Attempt| ms(a.time) - i64::try_from(a.latency_ms).unwrap_or(0);
        fn end(r: &Ending) -> (&'static str, Option<String>, Option<String>, Option<&crate::store::Failure>) {
            match &r.outcome {
                Final::Sent { provider, provider_message_id } => {
                    ("sent", Some(provider.to_string()), provider_message_id.clone(), None)
                }
                Final::Failed { provider, failure } => {
                    ("failed", provider.as_ref().map(|p| p.to_string()), None, Some(failure))
                }
            }
        }
        let ends: Vec<_> = rows.iter().map(end).collect();
        let held: Vec<String> = sqlx::query_scalar(
            "WITH input AS ( \
               SELECT * FROM UNNEST($1::TEXT[], $2::INTEGER[], $3::TEXT[], $4::BIGINT[], $5::BIGINT[], $6::TEXT[], \
               $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::BIGINT[], $11::TEXT[], $12::TEXT[], $13::TEXT[], $14::TEXT[], $15::TEXT[]) \
               AS i (id, number, attempt_provider, started_at, finished_at, outcome, error_class, attempt_error_code, \
               attempt_error_message, latency_ms, status, provider, provider_message_id, error_code, error_message)), \
             held AS ( \
               DELETE FROM queue USING input WHERE queue.message_id = input.id AND queue.lease_token = $16 \
               RETURNING queue.message_id), \
             attempt AS ( \
               INSERT INTO attempts (message_id, number, provider, started_at, finished_at, outcome, error_class, \
               error_code, error_message, latency_ms) \
               SELECT i.id, i.number, i.attempt_provider, i.started_at, i.finished_at, i.outcome, i.error_class, \
               i.attempt_error_code, i.attempt_error_message, i.latency_ms \
               FROM input i JOIN held ON held.message_id = i.id WHERE i.number IS NOT NULL \
               ON CONFLICT (message_id, number) DO UPDATE SET finished_at = excluded.finished_at, outcome = excluded.outcome, \
               error_class = excluded.error_class, error_code = excluded.error_code, error_message = excluded.error_message, \
               latency_ms = excluded.latency_ms RETURNING 1), \
             ended AS ( \
               UPDATE messages SET status = i.status, provider = i.provider, provider_message_id = i.provider_message_id, \
               error_code = i.error_code, error_message = i.error_message, updated_at = $17, finished_at = $17 \
               FROM input i JOIN held ON held.message_id = i.id WHERE messages.id = i.id RETURNING 1), \
             callback AS ( \
               INSERT INTO callbacks (message_id, url, status, delivery_status, created_at, next_at) \
               SELECT m.id, m.status_callback, i.status, m.delivery_status, $17, $17 \
               FROM input i JOIN held ON held.message_id = i.id JOIN messages m ON m.id = i.id \
               WHERE m.status_callback IS NOT NULL ORDER BY m.id RETURNING 1) \
             SELECT message_id FROM held",
        )
        .bind(&ids)
        .bind(rows.iter().map(number).collect::<Vec<_>>())
        .bind(attempt(|_, a| Some(a.provider.to_string())))
        .bind(rows.iter().map(|r| r.last_attempt.as_ref().map(|(_, a)| started(a))).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.last_attempt.as_ref().map(|(_, a)| ms(a.time))).collect::<Vec<_>>())
        .bind(attempt(|_, a| Some(a.outcome.as_str().to_owned())))
        .bind(attempt(|_, a| a.error_class.map(|c| class_name(c).to_owned())))
        .bind(attempt(|_, a| a.error_code.clone()))
        .bind(attempt(|_, a| a.error_message.clone()))
        .bind(
            rows.iter()
                .map(|r| r.last_attempt.as_ref().map(|(_, a)| i64::try_from(a.latency_ms).unwrap_or(i64::MAX)))
                .collect::<Vec<_>>(),
        )
        .bind(ends.iter().map(|e| e.0).collect::<Vec<_>>())
        .bind(ends.iter().map(|e| e.1.clone()).collect::<Vec<_>>())
        .bind(ends.iter().map(|e| e.2.clone()).collect::<Vec<_>>())
        .bind(ends.iter().map(|e| e.3.map(|f| f.code.as_str())).collect::<Vec<_>>())
        .bind(ends.iter().map(|e| e.3.map(|f| f.message.clone())).collect::<Vec<_>>())
        .bind(&lease.token)
        .bind(ms(SystemTime::now()))
        .fetch_all(pool)
        .await?;
        Ok(applied(&ids, &held))
    }
}

/// The messages (with their owners and status callbacks), their queue entries and their
/// conversations (created when missing, counted otherwise), in the transaction `conn` is in
/// (see [`conversations`] for the steps and why).
pub(super) async fn insert_all(
    conn: &mut PgConnection,
    lease: &Lease,
    rows: &[(&OutboundMessage, Meta<'_>)],
) -> Result<(), sqlx::Error> {
    let column = |f: fn(&OutboundMessage) -> &str| rows.iter().map(|(m, _)| f(m)).collect::<Vec<_>>();
    let now = ms(SystemTime::now());
    let members: Vec<(ConversationKey, &str)> = rows
        .iter()
        .map(|(m, _)| (ConversationKey::of(m.channel.as_str(), &m.from, &m.to), m.id.as_str()))
        .collect();
    let joined = conversations::join(conn, &members, now).await?;
    // In id order: two batches holding the same id wait for each other in one order.
    sqlx::query(
        "WITH message AS ( \
           INSERT INTO messages (id, channel, sender, recipient, subject, body, attachments, tags, status, \
           created_at, updated_at, owner, conversation_id, status_callback) \
           SELECT id, channel, sender, recipient, subject, body, attachments, tags, 'queued', $10, $10, owner, \
           conversation_id, status_callback \
           FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::TEXT[], $8::TEXT[], \
             $9::TEXT[], $13::BIGINT[], $14::TEXT[]) \
             AS row (id, channel, sender, recipient, subject, body, attachments, tags, owner, conversation_id, \
             status_callback) \
           ORDER BY id \
           RETURNING id) \
         INSERT INTO queue (message_id, not_before, lease_token, lease_until) SELECT id, $10, $11, $12 FROM message",
    )
    .bind(column(|m| &m.id))
    .bind(column(|m| m.channel.as_str()))
    .bind(column(|m| &m.from))
    .bind(column(|m| &m.to))
    .bind(rows.iter().map(|(m, _)| m.subject.as_deref()).collect::<Vec<_>>())
    .bind(column(|m| &m.body))
    .bind(rows.iter().map(|(m, _)| json_list(&m.attachments)).collect::<Vec<_>>())
    .bind(rows.iter().map(|(m, _)| json_list(&m.tags)).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, meta)| meta.owner).collect::<Vec<_>>())
    .bind(now)
    .bind(&lease.token)
    .bind(ms(SystemTime::now() + lease.duration))
    .bind(joined.iter().map(|j| j.id).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, meta)| meta.status_callback).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    let counted: Vec<(conversations::Joined, &str)> =
        joined.into_iter().zip(members.iter().map(|(_, id)| *id)).collect();
    conversations::count(conn, &counted, now).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postgres::PostgresStore;
    use crate::store::test_support::concurrent_inserts_with_a_duplicate;
    use crate::store::MessageStore;
    use sqlx::{Connection, PgConnection};

    /// Concurrent plain inserts share statements; a duplicate id fails alone, every other
    /// message is stored with its queue entry.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
    async fn a_bad_insert_fails_alone_in_its_batch() -> Result<(), StoreError> {
        let admin = std::env::var("SWITCHBOARD_TEST_POSTGRES_URL").unwrap_or_default();
        assert!(!admin.trim().is_empty(), "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests");
        let database = format!("sb_batch_{}", uuid::Uuid::now_v7().simple());
        let mut conn = PgConnection::connect(&admin).await.map_err(unavailable)?;
        let create = format!("CREATE DATABASE {database}");
        sqlx::query(sqlx::AssertSqlSafe(create)).execute(&mut conn).await.map_err(unavailable)?;
        let url = format!("{}/{database}", admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base));
        let store: Arc<dyn MessageStore> = Arc::new(PostgresStore::open(&url).await?);
        concurrent_inserts_with_a_duplicate(Arc::clone(&store), 80).await?;
        let queued: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM queue")
            .fetch_one(&mut PgConnection::connect(&url).await.map_err(unavailable)?)
            .await
            .map_err(unavailable)?;
        assert_eq!(queued, 80, "each stored message has its queue entry");
        drop(store);
        let drop_db = format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)");
        sqlx::query(sqlx::AssertSqlSafe(drop_db)).execute(&mut conn).await.map_err(unavailable)?;
        Ok(())
    }
}

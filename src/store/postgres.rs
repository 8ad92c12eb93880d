//! The PostgreSQL store (`postgres://…`): several instances share one database and drain one
//! queue. Each queued message is leased to one worker at a time (`FOR UPDATE SKIP LOCKED` with
//! an expiry and this instance's token); every write of a dispatch names the token, so a worker
//! whose lease was taken over cannot overwrite the new holder's result.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::Row;
use switchboard_providers::OutboundMessage;

use super::codec::{
    channel_of, class_name, from_ms, idempotency_window_start, ms, parse_list, recorded_answer, unavailable,
    view_of,
};
use super::postgres_batches::{self as batches, Batcher, Lease};
use super::{Attempt, Final, IdempotencyKey, Inserted, MessageStore, MessageView, Pending, StoreError};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a lease lasts unless renewed (each attempt renews it).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

pub struct PostgresStore {
    /// Accepting messages and reading: commits wait for the WAL flush (a 202 is a promise).
    pool: PgPool,
    /// Dispatch progress (attempts, leases, retry times, ends): `synchronous_commit = off`.
    /// Only a crash of the database server itself can lose the last moments of these writes,
    /// and then a message is at worst sent again, never lost.
    progress: PgPool,
    shown: String,
    /// This instance's lease token and how long a lease lasts.
    lease: Lease,
    /// Plain inserts, attempt starts and message endings, committed in groups.
    inserts: Batcher<batches::NewMessage>,
    starts: Batcher<batches::Start>,
    endings: Batcher<batches::Ending>,
}

fn lease_lost(id: &str) -> StoreError {
    StoreError::Unavailable(format!("lease on message {id} was taken over by another instance"))
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl PostgresStore {
    pub async fn open(url: &str) -> Result<PostgresStore, StoreError> {
        let lease = std::env::var("SWITCHBOARD_LEASE")
            .ok()
            .and_then(|v| humantime::parse_duration(&v).ok())
            .unwrap_or(DEFAULT_LEASE);
        PostgresStore::open_with(url, lease).await
    }

    pub async fn open_with(url: &str, lease: Duration) -> Result<PostgresStore, StoreError> {
        let shown = redact(url);
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| unavailable(format!("bad database URL {shown}: {e}")))?;
        let connect = |options: PgConnectOptions, size: u32| {
            PgPoolOptions::new()
                .max_connections(size)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options)
        };
        let pool = connect(options.clone(), 20)
            .await
            .map_err(|e| unavailable(format!("cannot connect to {shown}: {e}")))?;
        MIGRATOR.run(&pool).await.map_err(|e| unavailable(format!("migrations on {shown} failed: {e}")))?;
        let progress = connect(options.options([("synchronous_commit", "off")]), 20)
            .await
            .map_err(|e| unavailable(format!("cannot connect to {shown}: {e}")))?;
        let lease = Lease { token: uuid::Uuid::now_v7().to_string(), duration: lease };
        let inserts = Batcher::start(pool.clone(), lease.clone());
        let starts = Batcher::start(progress.clone(), lease.clone());
        let endings = Batcher::start(progress.clone(), lease.clone());
        Ok(PostgresStore { pool, progress, shown, lease, inserts, starts, endings })
    }

    /// Runs the migrations only; returns the versions now applied.
    pub async fn migrate(url: &str) -> Result<Vec<i64>, StoreError> {
        let store = PostgresStore::open_with(url, DEFAULT_LEASE).await?;
        let rows = sqlx::query("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(&store.pool)
            .await
            .map_err(unavailable)?;
        Ok(rows.iter().filter_map(|row| row.try_get::<i64, _>(0).ok()).collect())
    }
}

fn pending_of(row: &PgRow) -> Result<Pending, sqlx::Error> {
    Ok(Pending {
        message: OutboundMessage {
            id: row.try_get("id")?,
            channel: channel_of(row.try_get("channel")?),
            from: row.try_get("sender")?,
            to: row.try_get("recipient")?,
            subject: row.try_get("subject")?,
            body: row.try_get("body")?,
            attachments: parse_list(row.try_get("attachments")?),
            tags: parse_list(row.try_get("tags")?),
        },
        attempts: u32::try_from(row.try_get::<i32, _>("attempts")?).unwrap_or(0),
        round: u32::try_from(row.try_get::<i32, _>("round")?).unwrap_or(0),
        not_before: from_ms(row.try_get("not_before")?),
        interrupted: row.try_get("interrupted")?,
    })
}

async fn write_attempt(
    conn: &mut sqlx::PgConnection,
    id: &str,
    number: u32,
    attempt: &Attempt,
) -> Result<(), StoreError> {
    let started = ms(attempt.time) - i64::try_from(attempt.latency_ms).unwrap_or(0);
    sqlx::query(
        "INSERT INTO attempts (message_id, number, provider, started_at, finished_at, outcome, error_class, error_code, error_message, latency_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (message_id, number) DO UPDATE SET finished_at = excluded.finished_at, outcome = excluded.outcome, \
         error_class = excluded.error_class, error_code = excluded.error_code, error_message = excluded.error_message, \
         latency_ms = excluded.latency_ms",
    )
    .bind(id)
    .bind(i32::try_from(number).unwrap_or(i32::MAX))
    .bind(&*attempt.provider)
    .bind(started)
    .bind(ms(attempt.time))
    .bind(attempt.outcome.as_str())
    .bind(attempt.error_class.map(class_name))
    .bind(&attempt.error_code)
    .bind(&attempt.error_message)
    .bind(i64::try_from(attempt.latency_ms).unwrap_or(i64::MAX))
    .execute(&mut *conn)
    .await
    .map_err(unavailable)?;
    Ok(())
}

#[async_trait]
impl MessageStore for PostgresStore {
    async fn insert_for(
        &self,
        message: &OutboundMessage,
        owner: Option<&str>,
        key: Option<&IdempotencyKey>,
    ) -> Result<Inserted, StoreError> {
        let now = ms(SystemTime::now());
        let Some(key) = key else {
            let new = batches::NewMessage { message: message.clone(), owner: owner.map(str::to_owned) };
            self.inserts.write(new).await?;
            return Ok(Inserted::New);
        };
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let window_start = idempotency_window_start(now);
        sqlx::query("DELETE FROM idempotency_keys WHERE key = $1 AND created_at < $2")
            .bind(&key.key)
            .bind(window_start)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        // Taking the key first: a concurrent request with it waits here for this one.
        let taken = sqlx::query(
            "INSERT INTO idempotency_keys (key, request_hash, message_id, channel, created_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key) DO NOTHING",
        )
        .bind(&key.key)
        .bind(&key.request_hash)
        .bind(&message.id)
        .bind(message.channel.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?
        .rows_affected();
        if taken == 0 {
            let row =
                sqlx::query("SELECT request_hash, message_id, channel FROM idempotency_keys WHERE key = $1")
                    .bind(&key.key)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            tx.commit().await.map_err(unavailable)?;
            return recorded_answer(key, &row).map_err(unavailable);
        }
        batches::insert_all(&mut *tx, &self.lease, &[(message, owner)]).await.map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(Inserted::New)
    }

    async fn attempt_started(&self, id: &str, number: u32, provider: &str) -> Result<(), StoreError> {
        // Renews the lease (nothing happens if another instance took the message over), then
        // the attempt's row and the `sending` status, atomically, with other starts.
        let start = batches::Start { id: id.to_owned(), number, provider: provider.to_owned() };
        match self.starts.write(start).await? {
            true => Ok(()),
            false => Err(lease_lost(id)),
        }
    }

    async fn record_attempt(&self, id: &str, number: u32, attempt: Attempt) -> Result<(), StoreError> {
        let mut tx = self.progress.begin().await.map_err(unavailable)?;
        let held = sqlx::query(
            "UPDATE queue SET attempts = GREATEST(attempts, $1) WHERE message_id = $2 AND lease_token = $3",
        )
        .bind(i32::try_from(number).unwrap_or(i32::MAX))
        .bind(id)
        .bind(&self.lease.token)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?
        .rows_affected();
        if held == 0 {
            return Err(lease_lost(id));
        }
        write_attempt(&mut tx, id, number, &attempt).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(())
    }

    async fn schedule(
        &self,
        id: &str,
        not_before: SystemTime,
        attempts: u32,
        round: u32,
    ) -> Result<(), StoreError> {
        // Lets go of the lease: whichever instance claims it when due carries on.
        let held = sqlx::query(
            "UPDATE queue SET not_before = $1, attempts = $2, round = $3, lease_token = NULL, lease_until = NULL \
             WHERE message_id = $4 AND lease_token = $5",
        )
        .bind(ms(not_before))
        .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
        .bind(i32::try_from(round).unwrap_or(i32::MAX))
        .bind(id)
        .bind(&self.lease.token)
        .execute(&self.progress)
        .await
        .map_err(unavailable)?
        .rows_affected();
        if held == 0 {
            return Err(lease_lost(id));
        }
        Ok(())
    }

    async fn finish(
        &self,
        id: &str,
        outcome: Final,
        last_attempt: Option<(u32, Attempt)>,
    ) -> Result<(), StoreError> {
        // Leaves the queue only if the lease is still ours (otherwise nothing changes and the
        // new holder's result stands), then the final attempt and the message's end,
        // atomically, with other endings.
        let ending = batches::Ending { id: id.to_owned(), outcome, last_attempt };
        match self.endings.write(ending).await? {
            true => Ok(()),
            false => Err(lease_lost(id)),
        }
    }

    async fn find_key(&self, key: &IdempotencyKey) -> Result<Option<Inserted>, StoreError> {
        let window_start = idempotency_window_start(ms(SystemTime::now()));
        let row = sqlx::query(
            "SELECT request_hash, message_id, channel FROM idempotency_keys WHERE key = $1 AND created_at >= $2",
        )
        .bind(&key.key)
        .bind(window_start)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.map(|row| recorded_answer(key, &row)).transpose().map_err(unavailable)
    }

    async fn get(&self, id: &str) -> Result<Option<MessageView>, StoreError> {
        let Some(row) = sqlx::query(
            "SELECT id, channel, status, provider, provider_message_id, error_code, error_message, tags, owner, created_at, updated_at \
             FROM messages WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let attempts = sqlx::query(
            "SELECT provider, outcome, error_class, error_code, error_message, latency_ms, started_at, finished_at \
             FROM attempts WHERE message_id = $1 AND finished_at IS NOT NULL ORDER BY number",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let view = view_of(&row, &attempts).map_err(unavailable)?;
        Ok(Some(view))
    }

    /// Nothing: with a shared queue, work is resumed by [`MessageStore::claim_due`], by
    /// whichever instance gets there first.
    async fn pending(&self) -> Result<Vec<Pending>, StoreError> {
        Ok(Vec::new())
    }

    async fn purge(&self, before: SystemTime, batch: u32) -> Result<u64, StoreError> {
        let purged = sqlx::query(
            "DELETE FROM messages WHERE id IN \
             (SELECT id FROM messages WHERE finished_at IS NOT NULL AND finished_at < $1 ORDER BY finished_at LIMIT $2)",
        )
        .bind(ms(before))
        .bind(i64::from(batch))
        .execute(&self.pool)
        .await
        .map_err(unavailable)?
        .rows_affected();
        let window_start = idempotency_window_start(ms(SystemTime::now()));
        sqlx::query("DELETE FROM idempotency_keys WHERE key IN (SELECT key FROM idempotency_keys WHERE created_at < $1 LIMIT $2)")
            .bind(window_start)
            .bind(i64::from(batch))
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(purged)
    }

    fn shared_queue(&self) -> bool {
        true
    }

    async fn claim(&self, id: &str) -> Result<bool, StoreError> {
        let now = ms(SystemTime::now());
        let claimed = sqlx::query(
            "UPDATE queue SET lease_token = $1, lease_until = $2 WHERE message_id = $3 AND not_before <= $4 \
             AND (lease_until IS NULL OR lease_until < $4 OR lease_token = $1)",
        )
        .bind(&self.lease.token)
        .bind(self.lease.until())
        .bind(id)
        .bind(now)
        .execute(&self.progress)
        .await
        .map_err(unavailable)?
        .rows_affected();
        Ok(claimed == 1)
    }

    async fn claim_due(&self, limit: u32) -> Result<Vec<Pending>, StoreError> {
        let now = ms(SystemTime::now());
        let rows = sqlx::query(
            "WITH claimed AS ( \
               UPDATE queue SET lease_token = $1, lease_until = $2 \
               WHERE message_id IN ( \
                 SELECT message_id FROM queue WHERE not_before <= $3 AND (lease_until IS NULL OR lease_until < $3) \
                 ORDER BY not_before LIMIT $4 FOR UPDATE SKIP LOCKED) \
               RETURNING message_id, attempts, round, not_before) \
             SELECT m.id, m.channel, m.sender, m.recipient, m.subject, m.body, m.attachments, m.tags, c.not_before, c.round, \
               GREATEST(c.attempts, COALESCE((SELECT MAX(a.number) FROM attempts a WHERE a.message_id = m.id), 0)) AS attempts, \
               EXISTS (SELECT 1 FROM attempts a WHERE a.message_id = m.id AND a.finished_at IS NULL) AS interrupted \
             FROM claimed c JOIN messages m ON m.id = c.message_id ORDER BY c.not_before",
        )
        .bind(&self.lease.token)
        .bind(self.lease.until())
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.progress)
        .await
        .map_err(unavailable)?;
        rows.iter().map(pending_of).collect::<Result<_, sqlx::Error>>().map_err(unavailable)
    }

    fn describe(&self) -> String {
        self.shown.clone()
    }

    fn is_durable(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        for (url, shown) in [
            ("postgres://sb:s3cret@db:5432/x", "postgres://sb:***@db:5432/x"),
            ("postgres://127.0.0.1/test", "postgres://127.0.0.1/test"),
            ("postgres://user@host/db", "postgres://user:***@host/db"),
        ] {
            assert_eq!(redact(url), shown);
        }
    }
}

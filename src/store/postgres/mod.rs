//! The PostgreSQL store (`postgres://…`): several instances share one database and drain one
//! queue. Each queued message is leased to one worker at a time (`FOR UPDATE SKIP LOCKED` with
//! an expiry and this instance's token); every write of a dispatch names the token, so a worker
//! whose lease was taken over cannot overwrite the new holder's result.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Row};
use switchboard_providers::OutboundMessage;

use crate::store::codec::{
    callbacks_expired_before, channel_of, class_name, from_ms, idempotency_window_start, ms, parse_list,
    positions_of, recorded_answer, status_condition, status_of, unavailable, views_of,
};
use crate::store::delivery::{retried_detail, RETRIED_EVENT};
use crate::store::search::{self, Dialect, Param, SearchStatements};
mod batches;
mod conversations;
#[cfg(test)]
mod delivery_tests;
mod receipts;

use crate::store::{
    Attempt, CallbackJob, ConversationMessage, ConversationView, Final, IdempotencyKey, InboundMessage,
    Inserted, Listed, MessageFilter, MessageStore, MessageView, Meta, OptOut, OptOutKey, Page, Pending,
    QueuePosition, ReceiptApplied, ReceiptRecord, Received, Retried, SearchPosition, Status, StoreError,
};
use batches::{Batcher, Lease};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a lease lasts unless renewed (each attempt renews it).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);
/// How long connecting to the server may take at start-up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
    StoreError::LeaseLost(id.to_owned())
}

/// The URL without its passwords (in the user info and any `password`-like query parameter),
/// for logs and errors.
pub fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut shown = match (base.find("://"), base.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &base[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &base[..scheme + 3], &base[at..])
        }
        _ => base.to_owned(),
    };
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if is_password_key(key) => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&pairs.join("&"));
    }
    shown
}

fn is_password_key(key: &str) -> bool {
    percent_decode(key).to_ascii_lowercase().contains("password")
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(high), Some(low)) => {
                out.push(u8::try_from(high * 16 + low).unwrap_or(b'?'));
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every password the URL carries, as written and decoded, to take out of error texts that
/// might quote them.
fn passwords_in(url: &str) -> Vec<String> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut found = Vec::new();
    if let (Some(scheme), Some(at)) = (base.find("://"), base.rfind('@')) {
        if let Some((_, password)) = base.get(scheme + 3..at).and_then(|c| c.split_once(':')) {
            found.push(password.to_owned());
        }
    }
    for pair in query.split('&') {
        if let Some((key, value)) = pair.split_once('=') {
            if is_password_key(key) {
                found.push(value.to_owned());
            }
        }
    }
    let decoded: Vec<String> = found.iter().map(|p| percent_decode(p)).collect();
    found.extend(decoded);
    found.retain(|p| !p.is_empty());
    found
}

/// An error text with the URL's passwords taken out.
fn scrubbed(error: impl std::fmt::Display, passwords: &[String]) -> String {
    passwords.iter().fold(error.to_string(), |text, password| text.replace(password.as_str(), "***"))
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
        let passwords = passwords_in(url);
        let failed = |what: &str, error: &dyn std::fmt::Display| {
            unavailable(format!("{what} {shown}: {}", scrubbed(error, &passwords)))
        };
        let options = PgConnectOptions::from_str(url).map_err(|e| failed("bad database URL", &e))?;
        // One connection first, on its own: its error says why (refused, authentication,
        // unknown database) at once, where a pool would only time out waiting.
        let first = tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await;
        match first {
            Ok(Ok(conn)) => drop(conn),
            Ok(Err(error)) => return Err(failed("cannot connect to", &error)),
            Err(_) => {
                return Err(failed(
                    "cannot connect to",
                    &format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
                ))
            }
        }
        let connect = |options: PgConnectOptions, size: u32| {
            PgPoolOptions::new().max_connections(size).acquire_timeout(CONNECT_TIMEOUT).connect_with(options)
        };
        let pool = connect(options.clone(), 20).await.map_err(|e| failed("cannot connect to", &e))?;
        MIGRATOR.run(&pool).await.map_err(|e| failed("migrations failed on", &e))?;
        // A read-only server (a standby, `default_transaction_read_only`) is refused now rather
        // than answering the first send with 503.
        probe(&pool).await.map_err(|e| failed("cannot write to", &e))?;
        let progress = connect(options.options([("synchronous_commit", "off")]), 20)
            .await
            .map_err(|e| failed("cannot connect to", &e))?;
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

/// The messages whose queue rows `$update` (an `UPDATE … RETURNING message_id, attempts, round,
/// not_before` that takes or renews leases) returns, with what dispatch needs to carry on.
macro_rules! leased_messages {
    ($update:literal) => {
        concat!(
            "WITH leased AS (",
            $update,
            ") SELECT m.id, m.channel, m.sender, m.recipient, m.subject, m.body, m.attachments, m.tags, \
             l.not_before, l.round, m.retried_after, \
             GREATEST(l.attempts, COALESCE((SELECT MAX(a.number) FROM attempts a WHERE a.message_id = m.id), 0)) AS attempts, \
             EXISTS (SELECT 1 FROM attempts a WHERE a.message_id = m.id AND a.finished_at IS NULL) AS interrupted \
             FROM leased l JOIN messages m ON m.id = l.message_id ORDER BY l.not_before"
        )
    };
}

/// A read-only transaction that sees one snapshot: messages and their attempts and events as of
/// one moment.
async fn snapshot(pool: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
    pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").await.map_err(unavailable)
}

/// The views of messages read with [`VIEW_COLUMNS`] in `tx`, with their finished attempts and
/// events read in the same snapshot; ends the transaction.
async fn with_history(
    mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
    rows: &[PgRow],
) -> Result<Vec<MessageView>, StoreError> {
    if rows.is_empty() {
        tx.commit().await.map_err(unavailable)?;
        return Ok(Vec::new());
    }
    let ids: Vec<String> =
        rows.iter().map(|row| row.try_get("id")).collect::<Result<_, _>>().map_err(unavailable)?;
    let attempts = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE message_id = ANY($1) AND finished_at IS NOT NULL \
         ORDER BY message_id, number"
    )))
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await
    .map_err(unavailable)?;
    let events = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE message_id = ANY($1) ORDER BY id"
    )))
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await
    .map_err(unavailable)?;
    tx.commit().await.map_err(unavailable)?;
    views_of(rows, attempts, events).map_err(unavailable)
}

/// Its status as shown, and `updated_at` moved by its latest attempt start.
const VIEW_COLUMNS: &str = concat!(
    "m.id, m.channel, m.sender, m.recipient, m.attachments, ",
    shown_status!(),
    " AS status, m.provider, m.provider_message_id, m.error_code, m.error_message, m.tags, m.owner, m.created_at, \
     GREATEST(m.updated_at, (SELECT MAX(started_at) FROM attempts a WHERE a.message_id = m.id)) AS updated_at, \
     m.direction, m.conversation_id, m.delivery_status, m.status_callback"
);
/// Finished attempts as [`view_of`] reads them, with their `message_id`.
const ATTEMPT_COLUMNS: &str =
    "message_id, provider, outcome, error_class, error_code, error_message, latency_ms, started_at, finished_at";
/// Recorded events as [`view_of`] reads them, with their `message_id`.
const EVENT_COLUMNS: &str = "message_id, time, source, type, provider, detail";

/// Puts a failed message back in the queue (see [`MessageStore::retry`]), in one transaction:
/// the message's row is locked first, so concurrent retries of it (from any instance) take
/// turns and only the first finds it `failed`.
/// A text PostgreSQL cannot hold (a NUL character): no stored value is equal to it, and a query
/// binding it fails instead of matching nothing. What a client names (a message id, a search's
/// `provider` or `to`) is checked with this before it is bound.
fn holds_nul(text: &str) -> bool {
    text.contains('\0')
}

async fn retry(pool: &PgPool, id: &str, key: Option<&IdempotencyKey>) -> Result<Retried, sqlx::Error> {
    let now = ms(SystemTime::now());
    let mut tx = pool.begin().await?;
    let Some(row) = sqlx::query(concat!(
        "SELECT ",
        shown_status!(),
        " AS status, m.channel, m.error_code, m.error_message FROM messages m WHERE m.id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(Retried::NotFound);
    };
    let read = |column: &str| row.try_get::<Option<String>, _>(column);
    if let Some(key) = key {
        sqlx::query("DELETE FROM idempotency_keys WHERE key = $1 AND created_at < $2")
            .bind(&key.key)
            .bind(idempotency_window_start(now))
            .execute(&mut *tx)
            .await?;
        // Taken here, given back by the rollback if the message is not retryable.
        let taken = sqlx::query(
            "INSERT INTO idempotency_keys (key, request_hash, message_id, channel, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key) DO NOTHING",
        )
        .bind(&key.key)
        .bind(&key.request_hash)
        .bind(id)
        .bind(read("channel")?)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if taken == 0 {
            let row =
                sqlx::query("SELECT request_hash, message_id, channel FROM idempotency_keys WHERE key = $1")
                    .bind(&key.key)
                    .fetch_one(&mut *tx)
                    .await?;
            tx.commit().await?;
            return Ok(match recorded_answer(key, &row)? {
                Inserted::Replay { .. } => Retried::Replay,
                Inserted::New | Inserted::KeyReused => Retried::KeyReused,
            });
        }
    }
    let status = status_of(&read("status")?.unwrap_or_default());
    if status != Status::Failed {
        return Ok(Retried::NotRetryable(status));
    }
    let detail = retried_detail(read("error_code")?.as_deref(), read("error_message")?.as_deref());
    let run = |statement: &'static str| sqlx::query(statement).bind(id).bind(now);
    run("UPDATE messages SET status = 'queued', provider = NULL, provider_message_id = NULL, error_code = NULL, \
         error_message = NULL, delivery_status = NULL, finished_at = NULL, updated_at = $2, \
         retried_after = (SELECT COALESCE(MAX(number), 0) FROM attempts WHERE message_id = $1) WHERE id = $1")
    .execute(&mut *tx)
    .await?;
    // Held by no instance: whichever claims due messages first takes it.
    run("INSERT INTO queue (message_id, not_before, attempts, round) \
         SELECT id, $2, retried_after, 0 FROM messages WHERE id = $1")
    .execute(&mut *tx)
    .await?;
    run("INSERT INTO events (message_id, time, source, type, provider, detail) \
         VALUES ($1, $2, 'switchboard', $3, NULL, $4)")
    .bind(RETRIED_EVENT)
    .bind(detail.to_string())
    .execute(&mut *tx)
    .await?;
    run("INSERT INTO callbacks (message_id, url, status, delivery_status, created_at, next_at) \
         SELECT id, status_callback, status, NULL, $2, $2 FROM messages WHERE id = $1 AND status_callback IS NOT NULL")
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Retried::Queued)
}

async fn probe(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO liveness (id, at) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
    )
    .bind(ms(SystemTime::now()))
    .execute(pool)
    .await
    .map(drop)
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
        retried_after: u32::try_from(row.try_get::<i32, _>("retried_after")?).unwrap_or(0),
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
        meta: Meta<'_>,
        key: Option<&IdempotencyKey>,
    ) -> Result<Inserted, StoreError> {
        let now = ms(SystemTime::now());
        let Some(key) = key else {
            let new = batches::NewMessage {
                message: message.clone(),
                owner: meta.owner.map(str::to_owned),
                status_callback: meta.status_callback.map(str::to_owned),
            };
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
        batches::insert_all(&mut tx, &self.lease, &[(message, meta)]).await.map_err(unavailable)?;
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
        Ok(self.views(&[id.to_owned()]).await?.pop())
    }

    async fn views(&self, ids: &[String]) -> Result<Vec<MessageView>, StoreError> {
        let ids: Vec<&String> = ids.iter().filter(|id| !holds_nul(id)).collect();
        let mut tx = snapshot(&self.pool).await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {VIEW_COLUMNS} FROM messages m WHERE m.id = ANY($1)"
        )))
        .bind(ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?;
        with_history(tx, &rows).await
    }

    async fn search_bounded(
        &self,
        filter: &MessageFilter,
        page: Page<SearchPosition>,
        scan_limit: usize,
    ) -> Result<Listed<MessageView, SearchPosition>, StoreError> {
        // `queued` and `sending` are told apart by the attempts (`status_condition`); the
        // planner takes the driving index (the one index serving both its condition and the order).
        let dialect =
            Dialect { placeholder: |n| format!("${n}"), status: status_condition, indexed_by: false };
        let SearchStatements { rows: (sql, params), last_scanned } =
            search::search_statements(filter, &page, scan_limit, &dialect);
        if params.iter().any(|param| matches!(param, Param::Text(text) if holds_nul(text))) {
            return Ok(Listed { items: Vec::new(), next: None });
        }
        let mut tx = snapshot(&self.pool).await?;
        let rows = search::bound((format!("SELECT {VIEW_COLUMNS} {sql}"), params))
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?;
        let stopped = match last_scanned {
            Some(statement) if rows.len() < page.fetch() => {
                let row = search::bound(statement).fetch_optional(&mut *tx).await.map_err(unavailable)?;
                row.as_ref().map(search::scanned_position).transpose().map_err(unavailable)?
            }
            _ => None,
        };
        let views = with_history(tx, &rows).await?;
        Ok(Listed::from_scan(views, page.limit, SearchPosition::of, stopped))
    }

    async fn retry(&self, id: &str, key: Option<&IdempotencyKey>) -> Result<Retried, StoreError> {
        if holds_nul(id) {
            return Ok(Retried::NotFound);
        }
        retry(&self.pool, id, key).await.map_err(unavailable)
    }

    /// Nothing: with a shared queue, work is resumed by [`MessageStore::claim_due`], by
    /// whichever instance gets there first.
    async fn pending(&self) -> Result<Vec<Pending>, StoreError> {
        Ok(Vec::new())
    }

    async fn purge(&self, before: SystemTime, batch: u32) -> Result<u64, StoreError> {
        let purged =
            conversations::purge_messages(&self.pool, ms(before), batch).await.map_err(unavailable)?;
        let window_start = idempotency_window_start(ms(SystemTime::now()));
        sqlx::query("DELETE FROM idempotency_keys WHERE key IN (SELECT key FROM idempotency_keys WHERE created_at < $1 LIMIT $2)")
            .bind(window_start)
            .bind(i64::from(batch))
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        // Callbacks past their 24 hours that no worker gave up on (none runs without a secret).
        sqlx::query(
            "DELETE FROM callbacks WHERE id IN (SELECT id FROM callbacks WHERE created_at < $1 LIMIT $2)",
        )
        .bind(callbacks_expired_before())
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
        let rows = sqlx::query(leased_messages!(
            "UPDATE queue SET lease_token = $1, lease_until = $2 \
             WHERE message_id IN ( \
               SELECT message_id FROM queue WHERE not_before <= $3 AND (lease_until IS NULL OR lease_until < $3) \
               ORDER BY not_before LIMIT $4 FOR UPDATE SKIP LOCKED) \
             RETURNING message_id, attempts, round, not_before"
        ))
        .bind(&self.lease.token)
        .bind(self.lease.until())
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.progress)
        .await
        .map_err(unavailable)?;
        rows.iter().map(pending_of).collect::<Result<_, sqlx::Error>>().map_err(unavailable)
    }

    async fn queued(&self) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM queue")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn due(&self, after: Option<&QueuePosition>, limit: u32) -> Result<Vec<QueuePosition>, StoreError> {
        let (not_before, id) = after.map_or((i64::MIN, ""), |p| (p.not_before, p.id.as_str()));
        let rows = sqlx::query(
            "SELECT not_before, message_id FROM queue WHERE lease_token = $1 AND not_before <= $2 \
             AND (not_before, message_id) > ($3, $4) ORDER BY not_before, message_id LIMIT $5",
        )
        .bind(&self.lease.token)
        .bind(ms(SystemTime::now()))
        .bind(not_before)
        .bind(id)
        .bind(i64::from(limit))
        .fetch_all(&self.progress)
        .await
        .map_err(unavailable)?;
        positions_of(&rows).map_err(unavailable)
    }

    async fn pending_of(&self, ids: &[String]) -> Result<Vec<Pending>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // Renews the lease on those still ours, as an attempt would.
        let rows = sqlx::query(leased_messages!(
            "UPDATE queue SET lease_until = $2 WHERE lease_token = $1 AND message_id = ANY($3) \
             RETURNING message_id, attempts, round, not_before"
        ))
        .bind(&self.lease.token)
        .bind(self.lease.until())
        .bind(ids)
        .fetch_all(&self.progress)
        .await
        .map_err(unavailable)?;
        rows.iter().map(pending_of).collect::<Result<_, sqlx::Error>>().map_err(unavailable)
    }

    async fn release_all(&self) -> Result<u64, StoreError> {
        sqlx::query("UPDATE queue SET lease_token = NULL, lease_until = NULL WHERE lease_token = $1")
            .bind(&self.lease.token)
            .execute(&self.pool)
            .await
            .map(|done| done.rows_affected())
            .map_err(unavailable)
    }

    async fn check(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map(drop).map_err(unavailable)
    }

    async fn insert_inbound(&self, message: &InboundMessage) -> Result<Received, StoreError> {
        // Another try only when the first delivery's message was purged between this one finding
        // its claim and reading it: the claim is free again.
        for _ in 0..3 {
            if let Some(received) = conversations::insert_inbound(&self.pool, message).await? {
                return Ok(received);
            }
        }
        Err(unavailable("an inbound message's first delivery vanished three times while being read"))
    }

    async fn conversations(
        &self,
        viewer: Option<&str>,
        page: Page<String>,
    ) -> Result<Listed<ConversationView, String>, StoreError> {
        conversations::conversations(&self.pool, viewer, page).await.map_err(unavailable)
    }

    async fn conversation_messages(
        &self,
        id: i64,
        viewer: Option<&str>,
        page: Page<String>,
    ) -> Result<Option<Listed<ConversationMessage, String>>, StoreError> {
        conversations::conversation_messages(&self.pool, id, viewer, page).await.map_err(unavailable)
    }

    /// A query each time: instances sharing the database record opt-outs in one table.
    async fn opted_out(&self, key: &OptOutKey) -> Result<bool, StoreError> {
        conversations::opted_out(&self.pool, key).await.map_err(unavailable)
    }

    async fn first_opted_out(&self, keys: &[OptOutKey]) -> Result<Option<usize>, StoreError> {
        conversations::first_opted_out(&self.pool, keys).await.map_err(unavailable)
    }

    async fn opt_outs(&self, page: Page<OptOutKey>) -> Result<Listed<OptOut, OptOutKey>, StoreError> {
        conversations::opt_outs(&self.pool, page).await.map_err(unavailable)
    }

    async fn remove_opt_out(&self, key: &OptOutKey) -> Result<bool, StoreError> {
        conversations::remove_opt_out(&self.pool, key).await.map_err(unavailable)
    }

    /// On the pool whose commits wait for the WAL flush: a receipt acknowledged is kept.
    async fn record_receipts(&self, receipts: &[ReceiptRecord]) -> Result<Vec<ReceiptApplied>, StoreError> {
        if receipts.is_empty() {
            return Ok(Vec::new());
        }
        receipts::record(&self.pool, receipts).await.map_err(unavailable)
    }

    /// Leased to this instance's token (see [`receipts::due_callbacks`]). The outbox's progress
    /// goes on the progress pool: a crash of the database server may at worst send a callback
    /// again (the same `webhook-id`), never lose one.
    async fn due_callbacks(&self, limit: u32) -> Result<Vec<CallbackJob>, StoreError> {
        receipts::due_callbacks(&self.progress, &self.lease, limit).await.map_err(unavailable)
    }

    async fn callback_done(&self, id: i64) -> Result<(), StoreError> {
        receipts::callback_done(&self.progress, id).await.map_err(unavailable)
    }

    async fn callback_retry(&self, id: i64, attempts: u32, next_at: SystemTime) -> Result<(), StoreError> {
        receipts::callback_retry(&self.progress, &self.lease, id, attempts, next_at)
            .await
            .map_err(unavailable)
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
    use std::sync::Arc;

    /// An attempt's start records the attempt and renews the lease but leaves the message's row
    /// as it is (one rewrite fewer per message, issue 19): `sending` is read from the attempts,
    /// by a read and by a search.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
    async fn an_attempt_start_leaves_the_message_row_alone() -> Result<(), StoreError> {
        let db = conversations::tests::TestDb::create().await?;
        let store = db.store().await?;
        let message = crate::store::test_support::sms(&uuid::Uuid::now_v7().to_string());
        store.insert_for(&message, Meta { owner: None, status_callback: None }, None).await?;
        // The row's version: a rewrite gives it another.
        let version = "SELECT xmin::TEXT::BIGINT FROM messages";
        let before = db.number(version).await?;
        let found = |status| {
            let store = Arc::clone(&store);
            async move {
                let filter = MessageFilter { status: Some(status), ..MessageFilter::default() };
                let listed = store.search(&filter, Page { limit: 10, after: None }).await?;
                Ok::<Vec<String>, StoreError>(listed.items.into_iter().map(|v| v.id).collect())
            }
        };
        assert_eq!(found(Status::Queued).await?, [message.id.as_str()]);
        store.attempt_started(&message.id, 1, "p").await?;
        assert_eq!(db.number(version).await?, before, "the message's row was rewritten");
        let view = store.get(&message.id).await?.ok_or_else(|| unavailable("the message is gone"))?;
        assert_eq!(view.status, Status::Sending);
        assert_eq!(found(Status::Sending).await?, [message.id.as_str()]);
        assert!(found(Status::Queued).await?.is_empty());
        store
            .finish(&message.id, Final::Sent { provider: Arc::from("p"), provider_message_id: None }, None)
            .await?;
        let view = store.get(&message.id).await?.ok_or_else(|| unavailable("the message is gone"))?;
        assert_eq!(view.status, Status::Sent);
        assert!(found(Status::Sending).await?.is_empty());
        Ok(())
    }

    /// A message an earlier version stored as `sending` (migrations up to 0006) is found by a
    /// search for `sending` once migration 0007 ran, as the messages started since are.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
    async fn messages_stored_sending_by_an_earlier_version_are_still_found() -> Result<(), StoreError> {
        let db = conversations::tests::TestDb::create().await?;
        let pool = PgPool::connect(&db.url).await.map_err(unavailable)?;
        MIGRATOR.run_to(6, &pool).await.map_err(unavailable)?;
        for statement in [
            "INSERT INTO messages (id, channel, sender, recipient, body, attachments, tags, status, created_at, \
             updated_at) VALUES ('m1', 'sms', '+15550001111', '+15550002222', 'hi', '[]', '[]', 'sending', 1, 1)",
            "INSERT INTO attempts (message_id, number, provider, started_at) VALUES ('m1', 1, 'p', 2)",
        ] {
            sqlx::query(statement).execute(&pool).await.map_err(unavailable)?;
        }
        pool.close().await;
        let store = db.store().await?;
        let filter = MessageFilter { status: Some(Status::Sending), ..MessageFilter::default() };
        let listed = store.search(&filter, Page { limit: 10, after: None }).await?;
        assert_eq!(listed.items.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(), ["m1"]);
        assert_eq!(store.get("m1").await?.map(|v| v.status), Some(Status::Sending));
        Ok(())
    }

    #[test]
    fn passwords_are_not_shown() {
        for (url, shown) in [
            ("postgres://sb:s3cret@db:5432/x", "postgres://sb:***@db:5432/x"),
            ("postgres://127.0.0.1/test", "postgres://127.0.0.1/test"),
            ("postgres://user@host/db", "postgres://user:***@host/db"),
            ("postgres://u@h/db?password=hunter2", "postgres://u:***@h/db?password=***"),
            (
                "postgres://h/db?sslmode=disable&password=p%40ss&user=a@b",
                "postgres://h/db?sslmode=disable&password=***&user=a@b",
            ),
            ("postgres://h/db?PassWord=x&pass%77ord=y", "postgres://h/db?PassWord=***&pass%77ord=***"),
            ("postgres://h/db?user=bob", "postgres://h/db?user=bob"),
        ] {
            assert_eq!(redact(url), shown);
        }
    }

    #[test]
    fn passwords_are_taken_out_of_errors() {
        let url = "postgres://u:s%21cret@h/db?password=hunter2";
        let passwords = passwords_in(url);
        let error = "password authentication failed (tried s!cret, s%21cret and hunter2)";
        assert_eq!(scrubbed(error, &passwords), "password authentication failed (tried ***, *** and ***)");
    }
}

//! The SQLite store (`sqlite://PATH`): durable on one machine. WAL mode; every write goes through
//! one connection, so write transactions never deadlock upgrading a read lock; reads use a pool of
//! their own. Migrations are embedded and run on open.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Row, SqliteConnection, SqlitePool};
use switchboard_providers::OutboundMessage;
use tokio::sync::{mpsc, oneshot};

use crate::store::codec::{
    channel_of, conversation_message_of, conversation_of, from_ms, idempotency_window_start, json_list, ms,
    opt_out_of, parse_list, positions_of, recorded_answer, status_condition, status_of, unavailable,
    views_of,
};
use crate::store::delivery::{retried_detail, RETRIED_EVENT};
use crate::store::search::{self, Dialect, SearchStatements};
mod batches;
mod receipts;
#[cfg(test)]
mod search_bench;
#[cfg(test)]
mod two_way_tests;

use crate::store::conversation::{family, Direction};
use crate::store::{
    Attempt, CallbackJob, ConversationMessage, ConversationView, Final, IdempotencyKey, InboundMessage,
    Inserted, Listed, MessageFilter, MessageStore, MessageView, Meta, OptChange, OptOut, OptOutKey, Page,
    Pending, QueuePosition, ReceiptApplied, ReceiptRecord, Received, Retried, SearchPosition, Status,
    StoreError,
};

/// The most writes committed in one transaction.
const MAX_BATCH: usize = 512;
/// How many times the writer lets ready tasks run before cutting a batch.
const GATHER_ROUNDS: usize = 4;

pub struct SqliteStore {
    path: String,
    writes: mpsc::Sender<Write>,
    reader: SqlitePool,
    file: Arc<DatabaseFile>,
    opt_outs: Arc<OptOuts>,
}

/// The `opt_outs` table's keys, kept in memory: [`MessageStore::opted_out`] is asked before
/// every accept and every dispatch attempt. Loaded at open; changed by the writer task only,
/// after the write that changed the table committed, in commit order (this process is the
/// database's only writer), so it is the committed state. The writer also reads it to tell
/// whether a `STOP` records a new opt-out.
struct OptOuts(RwLock<HashSet<OptOutKey>>);

impl OptOuts {
    fn contains(&self, key: &OptOutKey) -> bool {
        self.0.read().unwrap_or_else(PoisonError::into_inner).contains(key)
    }

    fn set(&self, key: &OptOutKey, opted_out: bool) {
        let mut keys = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if opted_out {
            keys.insert(key.clone());
        } else {
            keys.remove(key);
        }
    }
}

/// The database file the store opened, watched so that writes never go into a file that was
/// deleted or replaced while serving, and whether the last write failed.
struct DatabaseFile {
    path: PathBuf,
    /// Device and inode at open; `None` when the path is not a file (nothing to watch).
    identity: Option<(u64, u64)>,
    /// The last batch failed for a reason other than one bad write (disk full, I/O error, …).
    failing: AtomicBool,
}

impl DatabaseFile {
    fn identity(path: &Path) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }

    /// Fails when the file opened is no longer the one at its path.
    fn still_there(&self) -> Result<(), StoreError> {
        match self.identity {
            Some(opened) if Self::identity(&self.path) != Some(opened) => Err(unavailable(format!(
                "the database file {} was deleted or replaced while serving: nothing more is written to it; restart the service",
                self.path.display()
            ))),
            _ => Ok(()),
        }
    }
}

/// One write, waiting for its batch to commit.
struct Write {
    op: Op,
    reply: oneshot::Sender<Result<Applied, StoreError>>,
}

#[derive(Clone)]
enum Op {
    Insert {
        message: OutboundMessage,
        owner: Option<String>,
        status_callback: Option<String>,
        key: Option<IdempotencyKey>,
    },
    AttemptStarted {
        id: String,
        number: u32,
        provider: String,
    },
    RecordAttempt {
        id: String,
        number: u32,
        attempt: Attempt,
    },
    Schedule {
        id: String,
        not_before: SystemTime,
        attempts: u32,
        round: u32,
    },
    Finish {
        id: String,
        outcome: Final,
        last_attempt: Option<(u32, Attempt)>,
    },
    Purge {
        before: SystemTime,
        batch: u32,
    },
    /// Stores an inbound message (grouped with the batch's other grouped writes).
    Inbound {
        message: InboundMessage,
    },
    RemoveOptOut {
        key: OptOutKey,
    },
    /// Providers' receipts (see [`MessageStore::record_receipts`]).
    Receipts {
        receipts: Vec<ReceiptRecord>,
    },
    /// Leases the due callbacks.
    DueCallbacks {
        limit: u32,
    },
    CallbackDone {
        id: i64,
    },
    CallbackRetry {
        id: i64,
        attempts: u32,
        next_at: SystemTime,
    },
    /// Rewrites the `liveness` row: proves the database takes writes.
    Probe,
    /// Puts a failed message back in the queue (see [`MessageStore::retry`]).
    Retry {
        id: String,
        key: Option<IdempotencyKey>,
    },
}

impl Op {
    /// The message the write is for.
    fn message_id(&self) -> Option<&String> {
        match self {
            Op::Insert { message, .. } => Some(&message.id),
            Op::Inbound { message } => Some(&message.id),
            Op::AttemptStarted { id, .. }
            | Op::RecordAttempt { id, .. }
            | Op::Schedule { id, .. }
            | Op::Finish { id, .. }
            | Op::Retry { id, .. } => Some(id),
            Op::Purge { .. }
            | Op::RemoveOptOut { .. }
            | Op::Receipts { .. }
            | Op::DueCallbacks { .. }
            | Op::CallbackDone { .. }
            | Op::CallbackRetry { .. }
            | Op::Probe => None,
        }
    }
}

/// What a write came to.
enum Applied {
    Inserted(Inserted),
    Done,
    Purged(u64),
    /// An inbound message stored (or found stored); `opt`: the opt-out it set or removed.
    Received {
        received: Received,
        opt: Option<(OptOutKey, bool)>,
    },
    OptOutRemoved {
        removed: bool,
        key: OptOutKey,
    },
    /// Receipts recorded; `suppressed`: the suppressions they added.
    Receipts {
        applied: Vec<ReceiptApplied>,
        suppressed: Vec<OptOutKey>,
    },
    Callbacks(Vec<CallbackJob>),
    Retried(Retried),
}

impl Applied {
    /// The opt-outs the write set (`true`) or removed (`false`), for [`OptOuts`] once committed.
    fn opt_outs(&self) -> Vec<(&OptOutKey, bool)> {
        match self {
            Applied::Received { opt: Some((key, opted_out)), .. } => vec![(key, *opted_out)],
            Applied::OptOutRemoved { key, .. } => vec![(key, false)],
            Applied::Receipts { suppressed, .. } => suppressed.iter().map(|key| (key, true)).collect(),
            _ => Vec::new(),
        }
    }
}

/// The embedded migrations (also run alone by `switchboard migrate`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub async fn open(path: &str) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
            .map_err(unavailable)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        // The writer owns its connection (no pool to go through on every batch).
        let mut writer =
            options.connect().await.map_err(|e| unavailable(format!("cannot open {path}: {e}")))?;
        MIGRATOR
            .run(&mut writer)
            .await
            .map_err(|e| unavailable(format!("migrations on {path} failed: {e}")))?;
        batches::prepare(&mut writer).await.map_err(|e| unavailable(format!("cannot open {path}: {e}")))?;
        // Refuses a database that cannot be written (read-only file system, full disk) now,
        // rather than answering the first send with 503.
        probe(&mut writer).await.map_err(|e| unavailable(format!("cannot write to {path}: {e}")))?;
        let opt_outs = Arc::new(
            load_opt_outs(&mut writer).await.map_err(|e| unavailable(format!("cannot read {path}: {e}")))?,
        );
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await
            .map_err(|e| unavailable(format!("cannot open {path}: {e}")))?;
        let (writes, queue) = mpsc::channel(4 * MAX_BATCH);
        let file_path = std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path));
        let file = Arc::new(DatabaseFile {
            identity: DatabaseFile::identity(&file_path),
            path: file_path,
            failing: AtomicBool::new(false),
        });
        tokio::spawn(write_batches(writer, queue, Arc::clone(&file), Arc::clone(&opt_outs)));
        Ok(SqliteStore { path: path.to_owned(), writes, reader, file, opt_outs })
    }

    /// Hands a write to the writer task and waits for its batch to commit.
    async fn write(&self, op: Op) -> Result<Applied, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(Write { op, reply })
            .await
            .map_err(|_| unavailable("the database writer stopped"))?;
        answer.await.map_err(|_| unavailable("the database writer stopped"))?
    }

    /// Runs the migrations only; returns the versions now applied.
    pub async fn migrate(path: &str) -> Result<Vec<i64>, StoreError> {
        let store = SqliteStore::open(path).await?;
        let versions = sqlx::query("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(&store.reader)
            .await
            .map_err(unavailable)?
            .iter()
            .filter_map(|row| row.try_get::<i64, _>(0).ok())
            .collect();
        Ok(versions)
    }
}

async fn load_opt_outs(conn: &mut SqliteConnection) -> Result<OptOuts, sqlx::Error> {
    let rows = sqlx::query("SELECT channel, sender, recipient FROM opt_outs").fetch_all(&mut *conn).await?;
    let keys = rows
        .iter()
        .map(|row| {
            Ok(OptOutKey { family: row.try_get(0)?, sender: row.try_get(1)?, recipient: row.try_get(2)? })
        })
        .collect::<Result<HashSet<_>, sqlx::Error>>()?;
    Ok(OptOuts(RwLock::new(keys)))
}

/// Queued messages with what dispatch needs to carry on (filtered and ordered by the caller).
macro_rules! pending_select {
    () => {
        "SELECT m.id, m.channel, m.sender, m.recipient, m.subject, m.body, m.attachments, m.tags, \
     q.not_before, q.round, m.retried_after, \
     MAX(q.attempts, COALESCE((SELECT MAX(number) FROM attempts a WHERE a.message_id = m.id), 0)) AS attempts, \
     EXISTS (SELECT 1 FROM attempts a WHERE a.message_id = m.id AND a.finished_at IS NULL) AS interrupted \
     FROM queue q JOIN messages m ON m.id = q.message_id"
    };
}

/// The columns of message `m` [`view_of`] reads: its status as shown, and `updated_at` moved by
/// its latest attempt start.
macro_rules! view_columns {
    () => {
        concat!(
            "m.id, m.channel, ",
            shown_status!(),
            " AS status, m.sender, m.recipient, m.attachments, m.provider, m.provider_message_id, \
             m.error_code, m.error_message, m.tags, m.owner, m.created_at, m.direction, m.conversation_id, \
             m.delivery_status, m.status_callback, \
             MAX(m.updated_at, COALESCE((SELECT MAX(started_at) FROM attempts a WHERE a.message_id = m.id), 0)) \
             AS updated_at"
        )
    };
}

/// Finished attempts as [`view_of`] reads them, with their `message_id`.
const ATTEMPT_COLUMNS: &str =
    "message_id, provider, outcome, error_class, error_code, error_message, latency_ms, started_at, finished_at";
/// Recorded events as [`view_of`] reads them, with their `message_id`.
const EVENT_COLUMNS: &str = "message_id, time, source, type, provider, detail";

/// The views of messages read with [`view_columns`], with their finished attempts and events
/// read in the same transaction (`conn`): three statements however many messages.
async fn with_history(
    conn: &mut SqliteConnection,
    rows: &[SqliteRow],
) -> Result<Vec<MessageView>, StoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> =
        rows.iter().map(|row| row.try_get("id")).collect::<Result<_, _>>().map_err(unavailable)?;
    let ids = json_list(&ids);
    let attempts = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE message_id IN (SELECT value FROM json_each(?)) \
         AND finished_at IS NOT NULL ORDER BY message_id, number"
    )))
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(unavailable)?;
    let events = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE message_id IN (SELECT value FROM json_each(?)) ORDER BY id"
    )))
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(unavailable)?;
    views_of(rows, attempts, events).map_err(unavailable)
}

/// A search's statements (see [`SearchStatements`]): its messages' rows as [`view_of`] reads
/// them, from its driving index, named (`INDEXED BY`).
fn search_statements(
    filter: &MessageFilter,
    page: &Page<SearchPosition>,
    scan_limit: usize,
) -> SearchStatements {
    let dialect = Dialect { placeholder: |_| "?".to_owned(), status: status_condition, indexed_by: true };
    let mut statements = search::search_statements(filter, page, scan_limit, &dialect);
    statements.rows.0 = format!(concat!("SELECT ", view_columns!(), " {}"), statements.rows.0);
    statements
}

/// Whether the viewer bound as `?2` may see conversation `c`: anyone when `NULL`, else a key
/// that sent a message in it (an inbound message it posted grants no view).
macro_rules! visible_to {
    () => {
        "(?2 IS NULL OR EXISTS (SELECT 1 FROM messages o WHERE o.owner = ?2 AND o.conversation_id = c.id \
         AND o.direction = 'outbound'))"
    };
}

/// Conversations with their newest stored message, newest activity first: `?1` the cursor (as
/// `$after` uses it), `?2` the viewer, `?3` how many.
macro_rules! conversations_select {
    ($after:literal) => {
        concat!(
            "SELECT c.id, c.channel, c.participant_a, c.participant_b, c.message_count, c.last_message_at, \
             c.last_message_id, l.id AS last_id, l.direction AS last_direction, l.body AS last_body \
             FROM conversations c \
             LEFT JOIN messages l ON l.id = (SELECT MAX(n.id) FROM messages n WHERE n.conversation_id = c.id) \
             WHERE ",
            $after,
            " AND ",
            visible_to!(),
            " ORDER BY c.last_message_id DESC LIMIT ?3"
        )
    };
}

fn pending_rows(rows: &[SqliteRow]) -> Result<Vec<Pending>, StoreError> {
    rows.iter()
        .map(|row| {
            Ok(Pending {
                message: message_of(row)?,
                attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(0),
                round: u32::try_from(row.try_get::<i64, _>("round")?).unwrap_or(0),
                not_before: from_ms(row.try_get("not_before")?),
                interrupted: row.try_get::<bool, _>("interrupted")?,
                retried_after: u32::try_from(row.try_get::<i64, _>("retried_after")?).unwrap_or(0),
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(unavailable)
}

fn message_of(row: &SqliteRow) -> Result<OutboundMessage, sqlx::Error> {
    Ok(OutboundMessage {
        id: row.try_get("id")?,
        channel: channel_of(row.try_get("channel")?),
        from: row.try_get("sender")?,
        to: row.try_get("recipient")?,
        subject: row.try_get("subject")?,
        body: row.try_get("body")?,
        attachments: parse_list(row.try_get("attachments")?),
        tags: parse_list(row.try_get("tags")?),
    })
}

/// The only writer: takes every write waiting (up to `MAX_BATCH`), applies them all in one
/// transaction and commits once, then answers them all: concurrent requests share one commit
/// (group commit), and no write transaction ever waits on another. If a write of a batch fails,
/// the batch is rolled back and its writes are applied again one transaction each, so one bad
/// write never takes others down with it; a database that is locked or failing fails the batch.
///
/// [`OptOuts`] follows each committed write that changed an opt-out, before its answer goes.
async fn write_batches(
    mut conn: SqliteConnection,
    mut queue: mpsc::Receiver<Write>,
    file: Arc<DatabaseFile>,
    opt_outs: Arc<OptOuts>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = queue.recv().await {
        batch.push(first);
        // Let the tasks that are ready run first (a few rounds): requests and dispatches in
        // flight add their writes, so they share this batch's statement and commit. On an idle
        // service each round finds nothing else to run and costs microseconds.
        for _ in 0..GATHER_ROUNDS {
            tokio::task::yield_now().await;
        }
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        // A deleted or replaced file would take writes and lose them: refuse the batch.
        if let Err(error) = file.still_there() {
            file.failing.store(true, Ordering::Relaxed);
            for write in batch.drain(..) {
                let _ = write.reply.send(Err(error.clone()));
            }
            continue;
        }
        match apply_together(&mut conn, &batch, &opt_outs).await {
            Ok(results) => {
                file.failing.store(false, Ordering::Relaxed);
                for (key, opted_out) in results.iter().flat_map(Applied::opt_outs) {
                    opt_outs.set(key, opted_out);
                }
                for (write, result) in batch.drain(..).zip(results) {
                    let _ = write.reply.send(Ok(result));
                }
            }
            Err(failed) => {
                rollback(&mut conn).await;
                let alone = failed.by_a_write && batch.len() > 1;
                let mut any_applied = false;
                for write in batch.drain(..) {
                    let result = if alone {
                        apply_alone(&mut conn, &write.op, &opt_outs).await
                    } else {
                        Err(failed.error.clone())
                    };
                    for (key, opted_out) in result.as_ref().map(Applied::opt_outs).unwrap_or_default() {
                        opt_outs.set(key, opted_out);
                    }
                    any_applied |= result.is_ok();
                    let _ = write.reply.send(result);
                }
                file.failing.store(!any_applied, Ordering::Relaxed);
            }
        }
    }
}

/// Why a batch failed: by one of its writes (which may fail alone), or by the database.
struct BatchFailed {
    error: StoreError,
    by_a_write: bool,
}

impl From<StoreError> for BatchFailed {
    fn from(error: StoreError) -> Self {
        BatchFailed { error, by_a_write: true }
    }
}

impl From<sqlx::Error> for BatchFailed {
    fn from(error: sqlx::Error) -> Self {
        BatchFailed { by_a_write: !is_busy(&error), error: unavailable(error) }
    }
}

/// The database is locked by someone else (after the busy timeout) or failing: no write of the
/// batch would do better alone.
fn is_busy(error: &sqlx::Error) -> bool {
    match error {
        // Primary result codes SQLITE_BUSY (5) and SQLITE_LOCKED (6), under any extended code.
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(|code| matches!(code & 0xff, 5 | 6)),
        sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed | sqlx::Error::PoolClosed => true,
        _ => false,
    }
}

/// Ends whatever transaction a failed write left open (an error if none is: ignored).
async fn rollback(conn: &mut SqliteConnection) {
    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
}

/// Applies a batch in one transaction. Plain inserts, attempt starts and finishes go in one
/// statement ([`grouped`]), which is a transaction of its own: a batch of only those (the usual
/// case) is one round trip to the connection thread. A batch never holds two writes for one
/// message (each write of a message waits for the one before), so grouping by kind changes
/// nothing but the number of statements. Should two writes for one id meet anyway, the batch
/// is refused and applied one write at a time.
///
/// Inbound messages go in the same statement, followed by a read of where each is stored, in
/// one transaction (a batch of inbound messages only needs none: see below). Redeliveries of one (family, provider message id), or two opt-out changes
/// of one pair, do meet in a batch (webhooks are retried, `STOP` is resent): such a batch is
/// applied one write at a time too, so each sees the one before.
async fn apply_together(
    conn: &mut SqliteConnection,
    batch: &[Write],
    opt_outs: &OptOuts,
) -> Result<Vec<Applied>, BatchFailed> {
    let mut group = batches::Group::default();
    let mut results: Vec<Option<Applied>> = Vec::with_capacity(batch.len());
    let mut ids = HashSet::with_capacity(batch.len());
    // What the grouped statement's rows must not share besides a message: an inbound
    // (family, provider message id) or an opt-out pair (they would not see each other).
    let mut inbound_keys = HashSet::new();
    let mut opt_keys = HashSet::new();
    // The batch's inbound messages, by position, in the group's order.
    let mut inbound = Vec::new();
    // The batch's receipts, in order, and the writes holding them (position, how many).
    let mut all_receipts: Vec<&ReceiptRecord> = Vec::new();
    let mut receipt_writes = Vec::new();
    for (position, write) in batch.iter().enumerate() {
        let mut shares_a_row = false;
        let (id, result) = match &write.op {
            Op::Insert { message, owner, status_callback, key: None } => {
                group.insert(
                    message,
                    Meta { owner: owner.as_deref(), status_callback: status_callback.as_deref() },
                );
                (Some(&message.id), Some(Applied::Inserted(Inserted::New)))
            }
            Op::AttemptStarted { id, number, provider } => {
                group.start(id, *number, provider);
                (Some(id), Some(Applied::Done))
            }
            Op::Finish { id, outcome, last_attempt } => {
                group.finish(id, outcome, last_attempt.as_ref());
                (Some(id), Some(Applied::Done))
            }
            Op::CallbackDone { id } => {
                group.callback_done(*id);
                (None, Some(Applied::Done))
            }
            Op::Inbound { message } => {
                let family = family(message.channel.as_str());
                shares_a_row = !inbound_keys.insert((family, message.provider_message_id.as_str()))
                    || (message.opt_change.is_some() && !opt_keys.insert(message.opt_out_key()));
                group.inbound(message);
                inbound.push(position);
                (Some(&message.id), None)
            }
            Op::RemoveOptOut { key } => {
                shares_a_row = !opt_keys.insert(key.clone());
                (None, None)
            }
            Op::Receipts { receipts } => {
                receipt_writes.push((position, receipts.len()));
                all_receipts.extend(receipts);
                (None, None)
            }
            op => (op.message_id(), None),
        };
        if shares_a_row || id.is_some_and(|id| !ids.insert(id.as_str())) {
            return Err(unavailable("two writes of a batch for one message, inbound id or opt-out").into());
        }
        results.push(result);
    }
    if inbound.is_empty() && results.iter().all(Option::is_some) {
        group.write(conn).await?;
    } else if inbound.len() == batch.len() {
        // Inbound messages only: the statement commits on its own and the read of where each
        // is stored follows outside a transaction — nothing else writes between the two (this
        // task is the only writer), and should the read fail, writing them again one by one
        // stores nothing twice (a redelivery writes nothing). Two round trips instead of four.
        let stored = group.write(conn).await?;
        for (position, stored) in inbound.into_iter().zip(stored) {
            if let Op::Inbound { message } = &batch[position].op {
                results[position] = Some(received(message, stored, opt_outs));
            }
        }
    } else {
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        for (write, result) in batch.iter().zip(&mut results) {
            if result.is_none() && !matches!(write.op, Op::Inbound { .. } | Op::Receipts { .. }) {
                *result = Some(apply(conn, &write.op, opt_outs).await?);
            }
        }
        // Every receipt of the batch: one read, then a share of the group's statement.
        let mut planned = receipts::plan(conn, &all_receipts, &mut group).await?.into_iter();
        let mut added = receipts::suppress(conn, planned.as_slice()).await?;
        for (position, count) in receipt_writes {
            let share = planned.by_ref().take(count).collect();
            results[position] = Some(receipts::applied(share, &mut added));
        }
        let stored = group.write(conn).await?;
        for (position, stored) in inbound.into_iter().zip(stored) {
            if let Op::Inbound { message } = &batch[position].op {
                results[position] = Some(received(message, stored, opt_outs));
            }
        }
        sqlx::query("COMMIT").execute(&mut *conn).await?;
    }
    Ok(results.into_iter().map(|result| result.unwrap_or(Applied::Done)).collect())
}

async fn apply_alone(
    conn: &mut SqliteConnection,
    op: &Op,
    opt_outs: &OptOuts,
) -> Result<Applied, StoreError> {
    let begun = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await.map_err(unavailable);
    let result = match begun {
        Ok(_) => apply(conn, op, opt_outs).await,
        Err(error) => Err(error),
    };
    let committed = match result {
        Ok(applied) => sqlx::query("COMMIT").execute(&mut *conn).await.map(|_| applied).map_err(unavailable),
        Err(error) => Err(error),
    };
    if committed.is_err() {
        rollback(conn).await;
    }
    committed
}

async fn apply(conn: &mut SqliteConnection, op: &Op, opt_outs: &OptOuts) -> Result<Applied, StoreError> {
    let mut group = batches::Group::default();
    match op {
        Op::Insert { message, owner, status_callback, key } => {
            let meta = Meta { owner: owner.as_deref(), status_callback: status_callback.as_deref() };
            return Ok(Applied::Inserted(insert(conn, message, meta, key.as_ref()).await?));
        }
        Op::Receipts { receipts } => {
            let receipts: Vec<&ReceiptRecord> = receipts.iter().collect();
            let planned = receipts::plan(conn, &receipts, &mut group).await.map_err(unavailable)?;
            let mut added = receipts::suppress(conn, &planned).await.map_err(unavailable)?;
            group.write(conn).await.map_err(unavailable)?;
            return Ok(receipts::applied(planned, &mut added));
        }
        Op::DueCallbacks { limit } => {
            return receipts::due_callbacks(conn, *limit).await.map(Applied::Callbacks).map_err(unavailable)
        }
        Op::CallbackDone { id } => group.callback_done(*id),
        Op::CallbackRetry { id, attempts, next_at } => {
            sqlx::query("UPDATE callbacks SET attempts = ?, next_at = ?, leased_until = NULL WHERE id = ?")
                .bind(i64::from(*attempts))
                .bind(ms(*next_at))
                .bind(id)
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            return Ok(Applied::Done);
        }
        Op::AttemptStarted { id, number, provider } => group.start(id, *number, provider),
        Op::RecordAttempt { id, number, attempt } => record_attempt(conn, id, *number, attempt).await?,
        Op::Schedule { id, not_before, attempts, round } => {
            schedule(conn, id, *not_before, *attempts, *round).await?
        }
        Op::Finish { id, outcome, last_attempt } => group.finish(id, outcome, last_attempt.as_ref()),
        Op::Purge { before, batch } => return Ok(Applied::Purged(purge(conn, *before, *batch).await?)),
        Op::Inbound { message } => {
            group.inbound(message);
            let stored = group.write(conn).await.map_err(unavailable)?.into_iter().next();
            let stored =
                stored.ok_or_else(|| unavailable("an inbound message was not found after its write"))?;
            return Ok(received(message, stored, opt_outs));
        }
        Op::RemoveOptOut { key } => {
            let removed =
                sqlx::query("DELETE FROM opt_outs WHERE channel = ? AND sender = ? AND recipient = ?")
                    .bind(&key.family)
                    .bind(&key.sender)
                    .bind(&key.recipient)
                    .execute(&mut *conn)
                    .await
                    .map_err(unavailable)?
                    .rows_affected();
            return Ok(Applied::OptOutRemoved { removed: removed > 0, key: key.clone() });
        }
        Op::Probe => {
            probe(conn).await.map_err(unavailable)?;
            return Ok(Applied::Done);
        }
        Op::Retry { id, key } => return retry(conn, id, key.as_ref()).await.map(Applied::Retried),
    }
    group.write(conn).await.map_err(unavailable)?;
    Ok(Applied::Done)
}

/// The answer for an inbound message from where its write found or put it. `opt_outs` is the
/// state before the write (no other write of its statement touched its pair): a `STOP` records
/// a new opt-out only if its pair was not opted out.
fn received(message: &InboundMessage, stored: batches::Stored, opt_outs: &OptOuts) -> Applied {
    let duplicate = stored.id != message.id;
    let opt = match message.opt_change {
        Some(change) if !duplicate => Some((message.opt_out_key(), change == OptChange::OptOut)),
        _ => None,
    };
    let opted_out = matches!(&opt, Some((key, true)) if !opt_outs.contains(key));
    Applied::Received {
        received: Received { id: stored.id, conversation_id: stored.conversation_id, duplicate, opted_out },
        opt,
    }
}

async fn probe(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO liveness (id, at) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET at = excluded.at")
        .bind(ms(SystemTime::now()))
        .execute(&mut *conn)
        .await
        .map(drop)
}

/// What a write with idempotency `key` answers if the key is live (recorded within the window;
/// an expired record is deleted first): `Replay` or `KeyReused`; `None`: the write goes ahead.
async fn live_key(
    conn: &mut SqliteConnection,
    key: &IdempotencyKey,
    now: i64,
) -> Result<Option<Inserted>, StoreError> {
    sqlx::query("DELETE FROM idempotency_keys WHERE key = ? AND created_at < ?")
        .bind(&key.key)
        .bind(idempotency_window_start(now))
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    let existing =
        sqlx::query("SELECT request_hash, message_id, channel FROM idempotency_keys WHERE key = ?")
            .bind(&key.key)
            .fetch_optional(&mut *conn)
            .await
            .map_err(unavailable)?;
    existing.map(|row| recorded_answer(key, &row)).transpose().map_err(unavailable)
}

async fn insert(
    conn: &mut SqliteConnection,
    message: &OutboundMessage,
    meta: Meta<'_>,
    key: Option<&IdempotencyKey>,
) -> Result<Inserted, StoreError> {
    let now = ms(SystemTime::now());
    if let Some(key) = key {
        if let Some(answer) = live_key(conn, key, now).await? {
            return Ok(answer);
        }
    }
    let mut group = batches::Group::default();
    group.insert(message, meta);
    group.write(conn).await.map_err(unavailable)?;
    if let Some(key) = key {
        sqlx::query("INSERT INTO idempotency_keys (key, request_hash, message_id, channel, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(&key.key)
            .bind(&key.request_hash)
            .bind(&message.id)
            .bind(message.channel.as_str())
            .bind(now)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
    }
    Ok(Inserted::New)
}

async fn record_attempt(
    conn: &mut SqliteConnection,
    id: &str,
    number: u32,
    attempt: &Attempt,
) -> Result<(), StoreError> {
    let mut group = batches::Group::default();
    group.attempt_end(id, number, attempt);
    group.write(conn).await.map_err(unavailable)?;
    sqlx::query("UPDATE queue SET attempts = MAX(attempts, ?) WHERE message_id = ?")
        .bind(i64::from(number))
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    Ok(())
}

async fn schedule(
    conn: &mut SqliteConnection,
    id: &str,
    not_before: SystemTime,
    attempts: u32,
    round: u32,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE queue SET not_before = ?, attempts = ?, round = ? WHERE message_id = ?")
        .bind(ms(not_before))
        .bind(i64::from(attempts))
        .bind(i64::from(round))
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// Puts a failed message back in the queue (see [`MessageStore::retry`]), in the writer's
/// transaction.
async fn retry(
    conn: &mut SqliteConnection,
    id: &str,
    key: Option<&IdempotencyKey>,
) -> Result<Retried, StoreError> {
    let now = ms(SystemTime::now());
    if let Some(key) = key {
        if let Some(answer) = live_key(conn, key, now).await? {
            return Ok(match answer {
                Inserted::Replay { .. } => Retried::Replay,
                Inserted::New | Inserted::KeyReused => Retried::KeyReused,
            });
        }
    }
    let Some(row) = sqlx::query(concat!(
        "SELECT ",
        shown_status!(),
        " AS status, m.channel, m.error_code, m.error_message FROM messages m WHERE m.id = ?"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(unavailable)?
    else {
        return Ok(Retried::NotFound);
    };
    let read = |column: &str| row.try_get::<Option<String>, _>(column).map_err(unavailable);
    let status = status_of(&read("status")?.unwrap_or_default());
    if status != Status::Failed {
        return Ok(Retried::NotRetryable(status));
    }
    let detail = retried_detail(read("error_code")?.as_deref(), read("error_message")?.as_deref());
    let run = |statement: &'static str| sqlx::query(statement).bind(id).bind(now);
    run("UPDATE messages SET status = 'queued', provider = NULL, provider_message_id = NULL, error_code = NULL, \
         error_message = NULL, delivery_status = NULL, finished_at = NULL, updated_at = ?2, \
         retried_after = (SELECT COALESCE(MAX(number), 0) FROM attempts WHERE message_id = ?1) WHERE id = ?1")
    .execute(&mut *conn)
    .await
    .map_err(unavailable)?;
    run("INSERT INTO queue (message_id, not_before, attempts, round) \
         SELECT id, ?2, retried_after, 0 FROM messages WHERE id = ?1")
    .execute(&mut *conn)
    .await
    .map_err(unavailable)?;
    run("INSERT INTO events (message_id, time, source, type, provider, detail) \
         VALUES (?1, ?2, 'switchboard', ?3, NULL, ?4)")
    .bind(RETRIED_EVENT)
    .bind(detail.to_string())
    .execute(&mut *conn)
    .await
    .map_err(unavailable)?;
    run("INSERT INTO callbacks (webhook_id, message_id, url, status, delivery_status, created_at, next_at) \
         SELECT 'msg_' || lower(hex(randomblob(16))), id, status_callback, status, NULL, ?2, ?2 \
         FROM messages WHERE id = ?1 AND status_callback IS NOT NULL")
    .execute(&mut *conn)
    .await
    .map_err(unavailable)?;
    if let Some(key) = key {
        sqlx::query("INSERT INTO idempotency_keys (key, request_hash, message_id, channel, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(&key.key)
            .bind(&key.request_hash)
            .bind(id)
            .bind(read("channel")?.unwrap_or_default())
            .bind(now)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
    }
    Ok(Retried::Queued)
}

/// Deletes finished messages (their attempts and inbound ids go by cascade) and takes them off
/// their conversations' counts, then forgets expired idempotency keys.
async fn purge(conn: &mut SqliteConnection, before: SystemTime, batch: u32) -> Result<u64, StoreError> {
    let rows = sqlx::query(
        "DELETE FROM messages WHERE id IN \
         (SELECT id FROM messages WHERE finished_at IS NOT NULL AND finished_at < ? ORDER BY finished_at LIMIT ?) \
         RETURNING conversation_id, direction, channel, provider_message_id",
    )
    .bind(ms(before))
    .bind(i64::from(batch))
    .fetch_all(&mut *conn)
    .await
    .map_err(unavailable)?;
    let purged = u64::try_from(rows.len()).unwrap_or(u64::MAX);
    let mut counts = std::collections::BTreeMap::<i64, i64>::new();
    // The de-duplication keys of purged inbound messages go with them (`inbound_ids` has no
    // foreign key to cascade).
    let mut inbound_keys = Vec::new();
    for row in &rows {
        if let Some(id) = row.try_get::<Option<i64>, _>(0).map_err(unavailable)? {
            *counts.entry(id).or_default() += 1;
        }
        let direction: String = row.try_get(1).map_err(unavailable)?;
        let provider_message_id: Option<String> = row.try_get(3).map_err(unavailable)?;
        if let (Direction::Inbound, Some(provider_message_id)) =
            (Direction::from_stored(&direction), provider_message_id)
        {
            let channel: String = row.try_get(2).map_err(unavailable)?;
            inbound_keys.push((family(&channel).to_owned(), provider_message_id));
        }
    }
    if !inbound_keys.is_empty() {
        sqlx::query(
            "DELETE FROM inbound_ids WHERE (channel, provider_message_id) IN \
             (SELECT value->>0, value->>1 FROM json_each(?))",
        )
        .bind(serde_json::to_string(&inbound_keys).map_err(unavailable)?)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    }
    if !counts.is_empty() {
        let counts: Vec<(i64, i64)> = counts.into_iter().collect();
        sqlx::query(
            "UPDATE conversations SET message_count = message_count - (d.value->>1) \
             FROM json_each(?) AS d WHERE conversations.id = (d.value->>0)",
        )
        .bind(serde_json::to_string(&counts).map_err(unavailable)?)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    }
    let window_start = idempotency_window_start(ms(SystemTime::now()));
    sqlx::query("DELETE FROM idempotency_keys WHERE rowid IN (SELECT rowid FROM idempotency_keys WHERE created_at < ? LIMIT ?)")
        .bind(window_start)
        .bind(i64::from(batch))
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    // Callbacks past their 24 hours that no worker gave up on (none runs without a secret).
    sqlx::query("DELETE FROM callbacks WHERE id IN (SELECT id FROM callbacks WHERE created_at < ? LIMIT ?)")
        .bind(crate::store::codec::callbacks_expired_before())
        .bind(i64::from(batch))
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    Ok(purged)
}

#[async_trait]
impl MessageStore for SqliteStore {
    async fn insert_for(
        &self,
        message: &OutboundMessage,
        meta: Meta<'_>,
        key: Option<&IdempotencyKey>,
    ) -> Result<Inserted, StoreError> {
        let op = Op::Insert {
            message: message.clone(),
            owner: meta.owner.map(str::to_owned),
            status_callback: meta.status_callback.map(str::to_owned),
            key: key.cloned(),
        };
        match self.write(op).await? {
            Applied::Inserted(inserted) => Ok(inserted),
            _ => Err(unavailable("unexpected answer from the database writer")),
        }
    }

    async fn attempt_started(&self, id: &str, number: u32, provider: &str) -> Result<(), StoreError> {
        self.write(Op::AttemptStarted { id: id.to_owned(), number, provider: provider.to_owned() })
            .await
            .map(drop)
    }

    async fn record_attempt(&self, id: &str, number: u32, attempt: Attempt) -> Result<(), StoreError> {
        self.write(Op::RecordAttempt { id: id.to_owned(), number, attempt }).await.map(drop)
    }

    async fn schedule(
        &self,
        id: &str,
        not_before: SystemTime,
        attempts: u32,
        round: u32,
    ) -> Result<(), StoreError> {
        self.write(Op::Schedule { id: id.to_owned(), not_before, attempts, round }).await.map(drop)
    }

    async fn finish(
        &self,
        id: &str,
        outcome: Final,
        last_attempt: Option<(u32, Attempt)>,
    ) -> Result<(), StoreError> {
        self.write(Op::Finish { id: id.to_owned(), outcome, last_attempt }).await.map(drop)
    }

    async fn purge(&self, before: SystemTime, batch: u32) -> Result<u64, StoreError> {
        match self.write(Op::Purge { before, batch }).await? {
            Applied::Purged(count) => Ok(count),
            _ => Err(unavailable("unexpected answer from the database writer")),
        }
    }

    async fn find_key(&self, key: &IdempotencyKey) -> Result<Option<Inserted>, StoreError> {
        let window_start = idempotency_window_start(ms(SystemTime::now()));
        let row = sqlx::query(
            "SELECT request_hash, message_id, channel FROM idempotency_keys WHERE key = ? AND created_at >= ?",
        )
        .bind(&key.key)
        .bind(window_start)
        .fetch_optional(&self.reader)
        .await
        .map_err(unavailable)?;
        row.map(|row| recorded_answer(key, &row)).transpose().map_err(unavailable)
    }

    async fn get(&self, id: &str) -> Result<Option<MessageView>, StoreError> {
        Ok(self.views(&[id.to_owned()]).await?.pop())
    }

    async fn views(&self, ids: &[String]) -> Result<Vec<MessageView>, StoreError> {
        // One read transaction: the messages and their attempts and events as of one moment.
        let mut conn = self.reader.begin().await.map_err(unavailable)?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            view_columns!(),
            " FROM messages m WHERE m.id IN (SELECT value FROM json_each(?))"
        ))
        .bind(json_list(ids))
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?;
        with_history(&mut conn, &rows).await
    }

    async fn search_bounded(
        &self,
        filter: &MessageFilter,
        page: Page<SearchPosition>,
        scan_limit: usize,
    ) -> Result<Listed<MessageView, SearchPosition>, StoreError> {
        let SearchStatements { rows, last_scanned } = search_statements(filter, &page, scan_limit);
        // One read transaction: the messages, where the page stopped reading, and the messages'
        // attempts and events as of one moment.
        let mut conn = self.reader.begin().await.map_err(unavailable)?;
        let rows = search::bound(rows).fetch_all(&mut *conn).await.map_err(unavailable)?;
        let stopped = match last_scanned {
            Some(statement) if rows.len() < page.fetch() => {
                let row = search::bound(statement).fetch_optional(&mut *conn).await.map_err(unavailable)?;
                row.as_ref().map(search::scanned_position).transpose().map_err(unavailable)?
            }
            _ => None,
        };
        let views = with_history(&mut conn, &rows).await?;
        Ok(Listed::from_scan(views, page.limit, SearchPosition::of, stopped))
    }

    async fn retry(&self, id: &str, key: Option<&IdempotencyKey>) -> Result<Retried, StoreError> {
        match self.write(Op::Retry { id: id.to_owned(), key: key.cloned() }).await? {
            Applied::Retried(retried) => Ok(retried),
            _ => Err(unavailable("unexpected answer from the database writer")),
        }
    }

    async fn pending(&self) -> Result<Vec<Pending>, StoreError> {
        let rows = sqlx::query(concat!(pending_select!(), " ORDER BY q.not_before"))
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?;
        pending_rows(&rows)
    }

    async fn due(&self, after: Option<&QueuePosition>, limit: u32) -> Result<Vec<QueuePosition>, StoreError> {
        let (not_before, id) = after.map_or((i64::MIN, ""), |p| (p.not_before, p.id.as_str()));
        let rows = sqlx::query(
            "SELECT not_before, message_id FROM queue WHERE not_before <= ? AND (not_before, message_id) > (?, ?) \
             ORDER BY not_before, message_id LIMIT ?",
        )
        .bind(ms(SystemTime::now()))
        .bind(not_before)
        .bind(id)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(unavailable)?;
        positions_of(&rows).map_err(unavailable)
    }

    async fn pending_of(&self, ids: &[String]) -> Result<Vec<Pending>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(concat!(
            pending_select!(),
            " WHERE q.message_id IN (SELECT value FROM json_each(?))"
        ))
        .bind(json_list(ids))
        .fetch_all(&self.reader)
        .await
        .map_err(unavailable)?;
        pending_rows(&rows)
    }

    async fn queued(&self) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM queue")
            .fetch_one(&self.reader)
            .await
            .map_err(unavailable)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.file.still_there()?;
        if self.file.failing.load(Ordering::Relaxed) {
            self.write(Op::Probe).await?;
        }
        Ok(())
    }

    async fn insert_inbound(&self, message: &InboundMessage) -> Result<Received, StoreError> {
        match self.write(Op::Inbound { message: message.clone() }).await? {
            Applied::Received { received, .. } => Ok(received),
            _ => Err(unavailable("unexpected answer from the database writer")),
        }
    }

    async fn conversations(
        &self,
        viewer: Option<&str>,
        page: Page<String>,
    ) -> Result<Listed<ConversationView, String>, StoreError> {
        let query = match page.after {
            Some(_) => sqlx::query(conversations_select!("c.last_message_id < ?1")),
            None => sqlx::query(conversations_select!("?1 IS NULL")),
        };
        let rows = query
            .bind(page.after.as_deref())
            .bind(viewer)
            .bind(i64::try_from(page.fetch()).unwrap_or(i64::MAX))
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?;
        let items = rows.iter().map(conversation_of).collect::<Result<_, _>>().map_err(unavailable)?;
        Ok(Listed::from_rows(items, page.limit, |c: &ConversationView| c.last_message_id.clone()))
    }

    async fn conversation_messages(
        &self,
        id: i64,
        viewer: Option<&str>,
        page: Page<String>,
    ) -> Result<Option<Listed<ConversationMessage, String>>, StoreError> {
        let mut conn = self.reader.acquire().await.map_err(unavailable)?;
        let visible: bool = sqlx::query_scalar(concat!(
            "SELECT EXISTS (SELECT 1 FROM conversations c WHERE c.id = ?1 AND ",
            visible_to!(),
            ")"
        ))
        .bind(id)
        .bind(viewer)
        .fetch_one(&mut *conn)
        .await
        .map_err(unavailable)?;
        if !visible {
            return Ok(None);
        }
        let rows = sqlx::query(concat!(
            "SELECT id, direction, channel, sender, recipient, body, attachments, ",
            shown_status!(),
            " AS status, provider, occurred_at, created_at \
             FROM messages m WHERE conversation_id = ? AND id > ? ORDER BY id LIMIT ?",
        ))
        .bind(id)
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(i64::try_from(page.fetch()).unwrap_or(i64::MAX))
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?;
        let items =
            rows.iter().map(conversation_message_of).collect::<Result<_, _>>().map_err(unavailable)?;
        Ok(Some(Listed::from_rows(items, page.limit, |m: &ConversationMessage| m.id.clone())))
    }

    async fn opted_out(&self, key: &OptOutKey) -> Result<bool, StoreError> {
        Ok(self.opt_outs.contains(key))
    }

    async fn opt_outs(&self, page: Page<OptOutKey>) -> Result<Listed<OptOut, OptOutKey>, StoreError> {
        let limit = i64::try_from(page.fetch()).unwrap_or(i64::MAX);
        let rows = match &page.after {
            Some(after) => sqlx::query(
                "SELECT channel, sender, recipient, created_at FROM opt_outs \
                 WHERE (channel, sender, recipient) > (?, ?, ?) ORDER BY channel, sender, recipient LIMIT ?",
            )
            .bind(&after.family)
            .bind(&after.sender)
            .bind(&after.recipient)
            .bind(limit),
            None => sqlx::query(
                "SELECT channel, sender, recipient, created_at FROM opt_outs \
                 ORDER BY channel, sender, recipient LIMIT ?",
            )
            .bind(limit),
        }
        .fetch_all(&self.reader)
        .await
        .map_err(unavailable)?;
        let items = rows.iter().map(opt_out_of).collect::<Result<_, _>>().map_err(unavailable)?;
        Ok(Listed::from_rows(items, page.limit, OptOut::key))
    }

    async fn remove_opt_out(&self, key: &OptOutKey) -> Result<bool, StoreError> {
        match self.write(Op::RemoveOptOut { key: key.clone() }).await? {
            Applied::OptOutRemoved { removed, .. } => Ok(removed),
            _ => Err(unavailable("unexpected answer from the database writer")),
        }
    }

    async fn record_receipts(&self, receipts: &[ReceiptRecord]) -> Result<Vec<ReceiptApplied>, StoreError> {
        match self.write(Op::Receipts { receipts: receipts.to_vec() }).await? {
            Applied::Receipts { applied, .. } => Ok(applied),
            _ => Err(unavailable("unexpected answer from the database writer")),
        }
    }

    async fn due_callbacks(&self, limit: u32) -> Result<Vec<CallbackJob>, StoreError> {
        match self.write(Op::DueCallbacks { limit }).await? {
            Applied::Callbacks(jobs) => Ok(jobs),
            _ => Err(unavailable("unexpected answer from the database writer")),
        }
    }

    async fn callback_done(&self, id: i64) -> Result<(), StoreError> {
        self.write(Op::CallbackDone { id }).await.map(drop)
    }

    async fn callback_retry(&self, id: i64, attempts: u32, next_at: SystemTime) -> Result<(), StoreError> {
        self.write(Op::CallbackRetry { id, attempts, next_at }).await.map(drop)
    }

    fn describe(&self) -> String {
        format!("sqlite://{}", self.path)
    }

    fn is_durable(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Outcome, Status};
    use std::sync::Arc;
    use switchboard_providers::{Channel, ErrorClass};

    fn message(tags: &[&str]) -> OutboundMessage {
        OutboundMessage {
            id: uuid::Uuid::now_v7().to_string(),
            channel: Channel::EMAIL,
            from: "a@example.com".into(),
            to: "b@example.com".into(),
            subject: Some("Hi".into()),
            body: "<b>hello</b>".into(),
            attachments: vec!["https://example.com/a.pdf".into()],
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    fn attempt(provider: &str, outcome: Outcome) -> Attempt {
        Attempt {
            provider: Arc::from(provider),
            outcome,
            error_class: (outcome != Outcome::Success).then_some(ErrorClass::Ambiguous),
            error_code: (outcome != Outcome::Success).then(|| "500".to_owned()),
            error_message: None,
            latency_ms: 3,
            time: SystemTime::now(),
        }
    }

    fn key(key: &str, hash: &str) -> IdempotencyKey {
        IdempotencyKey { key: key.into(), request_hash: hash.into() }
    }

    #[tokio::test]
    async fn lifecycle_survives_reopening() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(unavailable)?;
        let path = dir.path().join("t.db").to_string_lossy().into_owned();
        let store = SqliteStore::open(&path).await?;
        let (done, waiting, interrupted) = (message(&["otp"]), message(&[]), message(&[]));
        for m in [&done, &waiting, &interrupted] {
            assert_eq!(store.insert(m, None).await?, Inserted::New);
        }
        store.attempt_started(&done.id, 1, "p1").await?;
        store.record_attempt(&done.id, 1, attempt("p1", Outcome::Error)).await?;
        store.attempt_started(&done.id, 2, "p2").await?;
        let sent = Final::Sent { provider: Arc::from("p2"), provider_message_id: Some("x1".into()) };
        store.finish(&done.id, sent, Some((2, attempt("p2", Outcome::Success)))).await?;
        let later = SystemTime::now() + Duration::from_secs(60);
        store.schedule(&waiting.id, later, 1, 1).await?;
        store.attempt_started(&interrupted.id, 1, "p1").await?;
        drop(store);

        let store = SqliteStore::open(&path).await?;
        let view = store.get(&done.id).await?.ok_or_else(|| unavailable("gone"))?;
        assert_eq!(
            (view.status, view.provider.as_deref(), view.provider_message_id.as_deref()),
            (Status::Sent, Some("p2"), Some("x1"))
        );
        assert_eq!(
            view.attempts.iter().map(|a| (&*a.provider, a.outcome)).collect::<Vec<_>>(),
            [("p1", Outcome::Error), ("p2", Outcome::Success)]
        );
        assert_eq!(view.attempts[0].error_class, Some(ErrorClass::Ambiguous));
        assert_eq!(view.tags, ["otp"]);
        // `sending` is read from the attempts: started and unfinished → sending; none → queued.
        let status = |view: Option<MessageView>| view.map(|v| v.status);
        assert_eq!(status(store.get(&interrupted.id).await?), Some(Status::Sending));
        assert_eq!(status(store.get(&waiting.id).await?), Some(Status::Queued));

        let pending = store.pending().await?;
        let summary: Vec<(String, u32, u32, bool)> =
            pending.iter().map(|p| (p.message.id.clone(), p.attempts, p.round, p.interrupted)).collect();
        assert_eq!(summary, [(interrupted.id.clone(), 1, 0, true), (waiting.id.clone(), 1, 1, false)]);
        let resumed = pending.iter().find(|p| p.message.id == waiting.id).map(|p| p.message.clone());
        assert_eq!(
            resumed.map(|m| (m.body, m.subject, m.attachments)),
            Some((waiting.body, waiting.subject, waiting.attachments))
        );
        assert!(pending
            .iter()
            .any(|p| p.message.id == waiting.id && p.not_before >= later - Duration::from_millis(1)));
        Ok(())
    }

    #[tokio::test]
    async fn idempotency_keys_replay_refuse_and_expire() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(unavailable)?;
        let store = SqliteStore::open(&dir.path().join("t.db").to_string_lossy()).await?;
        let first = message(&[]);
        assert_eq!(store.insert(&first, Some(&key("k1", "h1"))).await?, Inserted::New);
        let again = message(&[]);
        assert_eq!(
            store.insert(&again, Some(&key("k1", "h1"))).await?,
            Inserted::Replay { id: first.id.clone(), channel: "email".into() }
        );
        assert!(store.get(&again.id).await?.is_none(), "a replay creates nothing");
        assert_eq!(store.insert(&message(&[]), Some(&key("k1", "h2"))).await?, Inserted::KeyReused);
        assert_eq!(store.insert(&message(&[]), Some(&key("k2", "h1"))).await?, Inserted::New);
        let found = store.find_key(&key("k1", "h1")).await?;
        assert_eq!(found, Some(Inserted::Replay { id: first.id.clone(), channel: "email".into() }));
        assert_eq!(store.find_key(&key("k1", "h2")).await?, Some(Inserted::KeyReused));
        assert_eq!(store.find_key(&key("k3", "h1")).await?, None);

        // A key older than the window is forgotten.
        let old = idempotency_window_start(ms(SystemTime::now())) - 1;
        sqlx::query("UPDATE idempotency_keys SET created_at = ? WHERE key = 'k1'")
            .bind(old)
            .execute(&SqlitePool::connect(&format!("sqlite://{}", store.path)).await.map_err(unavailable)?)
            .await
            .map_err(unavailable)?;
        assert!(store.find_key(&key("k2", "h1")).await?.is_some());
        assert_eq!(store.insert(&message(&[]), Some(&key("k1", "h9"))).await?, Inserted::New);
        Ok(())
    }

    #[tokio::test]
    async fn purge_removes_old_finished_messages_only() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(unavailable)?;
        let store = SqliteStore::open(&dir.path().join("t.db").to_string_lossy()).await?;
        let ids: Vec<String> = (0..5).map(|_| message(&[])).map(|m| m.id.clone()).collect();
        for id in &ids {
            let mut m = message(&[]);
            m.id = id.clone();
            store.insert(&m, None).await?;
        }
        for id in &ids[..4] {
            store.attempt_started(id, 1, "p").await?;
            let sent = Final::Sent { provider: Arc::from("p"), provider_message_id: None };
            store.finish(id, sent, Some((1, attempt("p", Outcome::Success)))).await?;
        }
        let future = SystemTime::now() + Duration::from_secs(1);
        assert_eq!(store.purge(future, 3).await?, 3);
        assert_eq!(store.purge(future, 3).await?, 1);
        assert_eq!(store.purge(future, 3).await?, 0);
        assert!(store.get(&ids[0]).await?.is_none());
        assert!(store.get(&ids[4]).await?.is_some(), "an unfinished message is never purged");
        let orphans: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM attempts")
            .fetch_one(&store.reader)
            .await
            .map_err(unavailable)?;
        assert_eq!(orphans, 0, "attempts go with their message");
        Ok(())
    }

    /// Callbacks no worker sends (no secret configured) leave the outbox once 24 hours old.
    #[tokio::test]
    async fn purge_removes_callbacks_past_their_24_hours() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(unavailable)?;
        let store = SqliteStore::open(&dir.path().join("t.db").to_string_lossy()).await?;
        for age in [crate::callbacks::MAX_AGE + Duration::from_secs(60), Duration::from_secs(60)] {
            let m = message(&[]);
            let meta = Meta { owner: None, status_callback: Some("https://example.com/cb") };
            store.insert_for(&m, meta, None).await?;
            store.attempt_started(&m.id, 1, "p").await?;
            let created = ms(SystemTime::now() - age);
            let rewrite = sqlx::query("UPDATE callbacks SET created_at = ? WHERE message_id = ?")
                .bind(created)
                .bind(&m.id);
            let mut conn =
                SqliteConnectOptions::from_str(&format!("sqlite://{}", dir.path().join("t.db").display()))
                    .map_err(unavailable)?
                    .connect()
                    .await
                    .map_err(unavailable)?;
            rewrite.execute(&mut conn).await.map_err(unavailable)?;
        }
        store.purge(SystemTime::now(), 100).await?;
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM callbacks")
            .fetch_one(&store.reader)
            .await
            .map_err(unavailable)?;
        assert_eq!(left, 1, "the 24-hour-old callback is gone, the fresh one stays");
        Ok(())
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;
    use crate::store::DeliveryStatus;
    use std::sync::Arc;

    fn sms(id: String, to: String) -> OutboundMessage {
        OutboundMessage { to, ..crate::store::test_support::sms(&id) }
    }

    /// Concurrent writes share commits; one that fails (a duplicate id) fails alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_write_does_not_take_its_batch_down() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(unavailable)?;
        let store = SqliteStore::open(&dir.path().join("t.db").to_string_lossy()).await?;
        crate::store::test_support::concurrent_inserts_with_a_duplicate(Arc::new(store), 50).await.map(drop)
    }

    /// Many messages going through start and finish at once (grouped statements) end exactly
    /// as one at a time would: each sent by its provider, its attempt recorded, none pending.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grouped_writes_end_each_message_as_alone() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(unavailable)?;
        let store = Arc::new(SqliteStore::open(&dir.path().join("t.db").to_string_lossy()).await?);
        let ids: Vec<String> = (0..70).map(|_| uuid::Uuid::now_v7().to_string()).collect();
        type Write = fn(Arc<SqliteStore>, usize, String) -> tokio::task::JoinHandle<Result<(), StoreError>>;
        let each = |f: Write| {
            ids.iter().enumerate().map(|(i, id)| f(Arc::clone(&store), i, id.clone())).collect::<Vec<_>>()
        };
        let insert = |store: Arc<SqliteStore>, i: usize, id: String| {
            tokio::spawn(
                async move { store.insert(&sms(id, format!("+1555000{i:04}")), None).await.map(drop) },
            )
        };
        let start = |store: Arc<SqliteStore>, i: usize, id: String| {
            tokio::spawn(async move { store.attempt_started(&id, 1, &format!("p{}", i % 3)).await })
        };
        let end = |store: Arc<SqliteStore>, i: usize, id: String| {
            tokio::spawn(async move {
                let provider: Arc<str> = Arc::from(format!("p{}", i % 3));
                let attempt = Attempt {
                    provider: Arc::clone(&provider),
                    outcome: crate::store::Outcome::Success,
                    error_class: None,
                    error_code: None,
                    error_message: None,
                    latency_ms: 3,
                    time: SystemTime::now(),
                };
                let outcome = Final::Sent { provider, provider_message_id: Some(format!("pm-{i}")) };
                store.finish(&id, outcome, Some((1, attempt))).await
            })
        };
        // One phase after the other (as dispatch does), each phase's writes all at once.
        let phases: [Write; 3] = [insert, start, end];
        for phase in phases {
            for task in each(phase) {
                task.await.map_err(unavailable)??;
            }
        }
        for (i, id) in ids.iter().enumerate() {
            let view = store.get(id).await?.ok_or_else(|| unavailable("missing"))?;
            assert_eq!(view.status, crate::store::Status::Sent, "{i}");
            assert_eq!(view.provider.as_deref(), Some(format!("p{}", i % 3).as_str()));
            assert_eq!(view.provider_message_id, Some(format!("pm-{i}")));
            assert_eq!(view.attempts.len(), 1, "{i}");
        }
        assert!(store.pending().await?.is_empty(), "finished messages leave the queue");
        Ok(())
    }

    /// A receipt from provider `tw` about the message it knows as `provider_id`.
    fn receipt(
        provider_id: &str,
        status: Option<DeliveryStatus>,
        suppress: Option<&OptOutKey>,
    ) -> ReceiptRecord {
        ReceiptRecord {
            provider: "tw".to_owned(),
            message_id: None,
            provider_message_id: Some(provider_id.to_owned()),
            event: status.map_or("queued", DeliveryStatus::as_str).to_owned(),
            status,
            time: SystemTime::now(),
            suppress: suppress.cloned(),
            detail: serde_json::Map::new(),
        }
    }

    /// Several writes of receipts in one batch (one read, one statement) end as one at a time
    /// would: each receipt sees the ones before it — in its write and in earlier writes — for
    /// the delivery status, the events cap and the suppressions; a callback per move, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_of_receipts_applies_them_in_order() -> Result<(), StoreError> {
        use crate::store::delivery::MAX_EVENTS;
        let dir = tempfile::tempdir().map_err(unavailable)?;
        let path = dir.path().join("t.db").to_string_lossy().into_owned();
        let store = SqliteStore::open(&path).await?;
        let mut ids = Vec::new();
        for (i, provider_id) in ["SM-a", "SM-b"].into_iter().enumerate() {
            let message = sms(uuid::Uuid::now_v7().to_string(), format!("+1555000000{i}"));
            let meta = Meta { owner: None, status_callback: Some("https://example.com/cb") };
            store.insert_for(&message, meta, None).await?;
            store.attempt_started(&message.id, 1, "tw").await?;
            let sent =
                Final::Sent { provider: Arc::from("tw"), provider_message_id: Some(provider_id.into()) };
            store.finish(&message.id, sent, None).await?;
            ids.push(message.id);
        }
        // `SM-b` two events short of the cap.
        let filler: Vec<ReceiptRecord> = (0..MAX_EVENTS - 2).map(|_| receipt("SM-b", None, None)).collect();
        store.record_receipts(&filler).await?;
        let bounced = OptOutKey::suppression("sms", "+15550000009");
        // The batch, as the writer would cut it, on a connection of its own (the store's writer
        // is idle).
        let mut conn = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
            .map_err(unavailable)?
            .connect()
            .await
            .map_err(unavailable)?;
        batches::prepare(&mut conn).await.map_err(unavailable)?;
        use DeliveryStatus::{Delivered, Read, Sent};
        let writes = [
            vec![receipt("SM-a", Some(Delivered), None), receipt("SM-b", Some(Sent), Some(&bounced))],
            vec![receipt("SM-unknown", Some(Delivered), Some(&bounced)), receipt("SM-a", Some(Read), None)],
            vec![
                receipt("SM-a", Some(Delivered), None),
                receipt("SM-b", Some(Delivered), Some(&bounced)),
                receipt("SM-b", Some(Read), None),
            ],
        ];
        let batch: Vec<Write> = writes
            .into_iter()
            .map(|receipts| Write { op: Op::Receipts { receipts }, reply: oneshot::channel().0 })
            .collect();
        let opt_outs = OptOuts(RwLock::new(HashSet::new()));
        let results = apply_together(&mut conn, &batch, &opt_outs).await.map_err(|failed| failed.error)?;
        let recorded = |i: usize, moved| ReceiptApplied::Recorded { message_id: ids[i].clone(), moved };
        let answers: Vec<_> = results
            .into_iter()
            .map(|applied| match applied {
                Applied::Receipts { applied, suppressed } => (applied, suppressed),
                _ => (Vec::new(), Vec::new()),
            })
            .collect();
        assert_eq!(
            answers,
            [
                (vec![recorded(0, true), recorded(1, true)], vec![bounced.clone()]),
                (vec![ReceiptApplied::Unknown, recorded(0, true)], vec![]),
                (vec![recorded(0, false), recorded(1, true), recorded(1, true)], vec![]),
            ],
            "each receipt sees the ones before it; a suppression is new once, and only for a known message"
        );
        drop(conn);
        let a = store.get(&ids[0]).await?.ok_or_else(|| unavailable("a"))?;
        let b = store.get(&ids[1]).await?.ok_or_else(|| unavailable("b"))?;
        assert_eq!((a.delivery_status, b.delivery_status), (Some(Read), Some(Read)));
        let provider_events = |view: &MessageView| {
            view.events.iter().filter(|e| e.source == crate::store::delivery::Source::Provider).count()
        };
        assert_eq!(provider_events(&a), 3, "every receipt an event");
        assert_eq!(provider_events(&b), MAX_EVENTS, "up to the cap, counting the batch's own");
        let callbacks: Vec<(String, String)> = sqlx::query_as(
            "SELECT message_id, delivery_status FROM callbacks WHERE delivery_status IS NOT NULL ORDER BY id",
        )
        .fetch_all(&store.reader)
        .await
        .map_err(unavailable)?;
        let expected: Vec<(String, String)> =
            [(0, "delivered"), (1, "sent"), (0, "read"), (1, "delivered"), (1, "read")]
                .into_iter()
                .map(|(i, status)| (ids[i].clone(), status.to_owned()))
                .collect();
        assert_eq!(callbacks, expected, "a callback per move, in the receipts' order");
        Ok(())
    }
}

//! Receipts and the callback outbox on PostgreSQL, shared by every instance using the database.
//!
//! A batch of receipts is one transaction of a fixed number of statements whatever its size:
//! its suppressions, then which message each receipt is about, then those messages' rows locked
//! (`FOR UPDATE`, in id order, so two batches never wait for each other in a circle) with their
//! delivery status as committed, then — worked out in order here — its events, the moves of
//! delivery status and their callbacks, written in one statement. The lock makes concurrent
//! batches about one message (from several instances) take turns: each reads the status the
//! other left, so none moves it back and no move is lost.
//!
//! Callbacks are leased like queued messages: [`due_callbacks`] takes rows with
//! `FOR UPDATE SKIP LOCKED` and marks them this instance's (`leased_by`) until the lease ends,
//! so two instances never deliver one callback at once.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use sqlx::{PgConnection, PgPool, Row};

use super::batches::Lease;
use crate::store::codec::{callback_of, ms};
use crate::store::delivery::{delivery_status_of, ReceiptApplied, ReceiptRecord, MAX_EVENTS};
use crate::store::{CallbackJob, DeliveryStatus, CALLBACK_LEASE};

/// Records `receipts` in order, in one transaction (see
/// [`crate::store::MessageStore::record_receipts`]).
pub(super) async fn record(
    pool: &PgPool,
    receipts: &[ReceiptRecord],
) -> Result<Vec<ReceiptApplied>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let found = find(&mut tx, receipts).await?;
    let mut current = lock(&mut tx, &found).await?;
    let mut kept = event_counts(&mut tx, &current).await?;
    // Suppressions only from receipts about a message of their provider.
    let matched: Vec<&ReceiptRecord> = receipts
        .iter()
        .zip(&found)
        .filter(|(_, id)| id.as_deref().is_some_and(|id| current.contains_key(id)))
        .map(|(receipt, _)| receipt)
        .collect();
    suppress(&mut tx, &matched).await?;
    let now = ms(SystemTime::now());
    let mut events = Events::default();
    let mut moves: Vec<(&str, DeliveryStatus)> = Vec::new();
    let mut applied = Vec::with_capacity(receipts.len());
    for (receipt, id) in receipts.iter().zip(&found) {
        // A message purged since it was found is unknown now.
        let Some((id, status)) = id.as_deref().and_then(|id| current.get_mut(id).map(|status| (id, status)))
        else {
            applied.push(ReceiptApplied::Unknown);
            continue;
        };
        let count = kept.entry(id.to_owned()).or_default();
        if *count < MAX_EVENTS as i64 {
            *count += 1;
            events.push(id, receipt);
        }
        let moved = receipt.status.filter(|next| next.may_follow(*status));
        if let Some(next) = moved {
            *status = Some(next);
            moves.push((id, next));
        }
        applied.push(ReceiptApplied::Recorded { message_id: id.to_owned(), moved: moved.is_some() });
    }
    if !events.message_ids.is_empty() || !moves.is_empty() {
        write(&mut tx, &events, &moves, &current, now).await?;
    }
    tx.commit().await?;
    Ok(applied)
}

/// The receipts' suppressions, each address once (the first receipt's time), inserted in key
/// order: two batches adding the same addresses wait for each other in one order.
async fn suppress(conn: &mut PgConnection, receipts: &[&ReceiptRecord]) -> Result<(), sqlx::Error> {
    let mut keys = BTreeMap::new();
    for receipt in receipts {
        if let Some(key) = &receipt.suppress {
            keys.entry((key.family.as_str(), key.sender.as_str(), key.recipient.as_str()))
                .or_insert_with(|| ms(receipt.time));
        }
    }
    if keys.is_empty() {
        return Ok(());
    }
    let channels: Vec<&str> = keys.keys().map(|k| k.0).collect();
    let senders: Vec<&str> = keys.keys().map(|k| k.1).collect();
    let recipients: Vec<&str> = keys.keys().map(|k| k.2).collect();
    sqlx::query(
        "INSERT INTO opt_outs (channel, sender, recipient, created_at) \
         SELECT channel, sender, recipient, created_at \
         FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[]) AS s (channel, sender, recipient, created_at) \
         ORDER BY channel, sender, recipient \
         ON CONFLICT (channel, sender, recipient) DO NOTHING",
    )
    .bind(channels)
    .bind(senders)
    .bind(recipients)
    .bind(keys.values().copied().collect::<Vec<i64>>())
    .execute(&mut *conn)
    .await
    .map(drop)
}

/// The message each receipt is about, in order: by our id when the receipt carries it (and it
/// is an outbound message this provider handled), else by the provider's id for it. What a
/// receipt matches does not depend on the receipts before it (they change neither).
async fn find(
    conn: &mut PgConnection,
    receipts: &[ReceiptRecord],
) -> Result<Vec<Option<String>>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT COALESCE( \
           (SELECT m.id FROM messages m WHERE m.id = i.message_id AND m.direction = 'outbound' \
            AND (m.provider = i.provider OR EXISTS \
              (SELECT 1 FROM attempts a WHERE a.message_id = m.id AND a.provider = i.provider))), \
           (SELECT m.id FROM messages m WHERE m.provider_message_id = i.provider_message_id \
            AND m.provider = i.provider AND m.direction = 'outbound' ORDER BY m.id LIMIT 1)) \
         FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[]) WITH ORDINALITY \
           AS i (message_id, provider_message_id, provider, n) \
         ORDER BY i.n",
    )
    .bind(receipts.iter().map(|r| r.message_id.as_deref()).collect::<Vec<_>>())
    .bind(receipts.iter().map(|r| r.provider_message_id.as_deref()).collect::<Vec<_>>())
    .bind(receipts.iter().map(|r| r.provider.as_str()).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    if rows.len() != receipts.len() {
        return Err(sqlx::Error::RowNotFound);
    }
    rows.iter().map(|row| row.try_get(0)).collect()
}

/// Locks the rows of the messages found (in id order) and reads their delivery status as last
/// committed; a message purged meanwhile is missing.
async fn lock(
    conn: &mut PgConnection,
    found: &[Option<String>],
) -> Result<HashMap<String, Option<DeliveryStatus>>, sqlx::Error> {
    let mut ids: Vec<&str> = found.iter().flatten().map(String::as_str).collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    ids.sort_unstable();
    ids.dedup();
    let rows =
        sqlx::query("SELECT id, delivery_status FROM messages WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?;
    rows.iter()
        .map(|row| {
            let status: Option<String> = row.try_get(1)?;
            Ok((row.try_get(0)?, delivery_status_of(status.as_deref())))
        })
        .collect()
}

/// How many provider events each locked message has (at most [`MAX_EVENTS`] are kept).
async fn event_counts(
    conn: &mut PgConnection,
    messages: &HashMap<String, Option<DeliveryStatus>>,
) -> Result<HashMap<String, i64>, sqlx::Error> {
    if messages.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<&str> = messages.keys().map(String::as_str).collect();
    let rows =
        sqlx::query("SELECT message_id, COUNT(*) FROM events WHERE message_id = ANY($1) GROUP BY message_id")
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?;
    rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?))).collect()
}

/// The receipts recorded as events, in order, as columns.
#[derive(Default)]
struct Events<'a> {
    message_ids: Vec<&'a str>,
    times: Vec<i64>,
    kinds: Vec<&'a str>,
    providers: Vec<&'a str>,
    details: Vec<String>,
}

impl<'a> Events<'a> {
    fn push(&mut self, id: &'a str, receipt: &'a ReceiptRecord) {
        self.message_ids.push(id);
        self.times.push(ms(receipt.time));
        self.kinds.push(&receipt.event);
        self.providers.push(&receipt.provider);
        self.details.push(serde_json::Value::Object(receipt.detail.clone()).to_string());
    }
}

/// The events, each message's last delivery status, and a callback per move (in order) for the
/// messages with a `status_callback`: one statement. Rows are inserted in order, so ids (and
/// with them the timeline and the callbacks' order) follow the receipts'.
async fn write(
    conn: &mut PgConnection,
    events: &Events<'_>,
    moves: &[(&str, DeliveryStatus)],
    last: &HashMap<String, Option<DeliveryStatus>>,
    now: i64,
) -> Result<(), sqlx::Error> {
    let mut moved: Vec<&str> = moves.iter().map(|(id, _)| *id).collect();
    moved.sort_unstable();
    moved.dedup();
    let moved_to: Vec<Option<&str>> =
        moved.iter().map(|id| last.get(*id).copied().flatten().map(DeliveryStatus::as_str)).collect();
    sqlx::query(concat!(
        "WITH event AS ( \
           INSERT INTO events (message_id, time, source, type, provider, detail) \
           SELECT message_id, time, 'provider', type, provider, detail \
           FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[]) WITH ORDINALITY \
             AS e (message_id, time, type, provider, detail, n) \
           ORDER BY e.n RETURNING 1), \
         moved AS ( \
           UPDATE messages m SET delivery_status = d.status, updated_at = $8 \
           FROM UNNEST($6::TEXT[], $7::TEXT[]) AS d (id, status) WHERE m.id = d.id RETURNING 1), \
         callback AS ( \
           INSERT INTO callbacks (message_id, url, status, delivery_status, created_at, next_at) \
           SELECT m.id, m.status_callback, ",
        shown_status!(),
        ", c.delivery_status, $8, $8 \
           FROM UNNEST($9::TEXT[], $10::TEXT[]) WITH ORDINALITY AS c (id, delivery_status, n) \
           JOIN messages m ON m.id = c.id WHERE m.status_callback IS NOT NULL \
           ORDER BY c.n RETURNING 1) \
         SELECT (SELECT COUNT(*) FROM event), (SELECT COUNT(*) FROM moved), (SELECT COUNT(*) FROM callback)",
    ))
    .bind(&events.message_ids)
    .bind(&events.times)
    .bind(&events.kinds)
    .bind(&events.providers)
    .bind(&events.details)
    .bind(&moved)
    .bind(&moved_to)
    .bind(now)
    .bind(moves.iter().map(|(id, _)| *id).collect::<Vec<_>>())
    .bind(moves.iter().map(|(_, status)| status.as_str()).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await
    .map(drop)
}

/// Leases up to `limit` due callbacks to this instance, the oldest of each message only; rows
/// another instance is taking at the same moment are skipped, not waited for.
pub(super) async fn due_callbacks(
    pool: &PgPool,
    lease: &Lease,
    limit: u32,
) -> Result<Vec<CallbackJob>, sqlx::Error> {
    let now = ms(SystemTime::now());
    let until = now.saturating_add(i64::try_from(CALLBACK_LEASE.as_millis()).unwrap_or(i64::MAX));
    let rows = sqlx::query(
        "UPDATE callbacks SET leased_until = $2, leased_by = $3 WHERE id IN ( \
           SELECT c.id FROM callbacks c WHERE c.next_at <= $1 AND (c.leased_until IS NULL OR c.leased_until <= $1) \
           AND NOT EXISTS (SELECT 1 FROM callbacks e WHERE e.message_id = c.message_id AND e.id < c.id) \
           ORDER BY c.next_at, c.id LIMIT $4 FOR UPDATE SKIP LOCKED) \
         RETURNING id, webhook_id, message_id, url, status, delivery_status, created_at, attempts",
    )
    .bind(now)
    .bind(until)
    .bind(&lease.token)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    let mut jobs = rows.iter().map(callback_of).collect::<Result<Vec<_>, _>>()?;
    jobs.sort_by_key(|job| job.id);
    Ok(jobs)
}

/// A callback delivered or given up on leaves the outbox (whoever holds it now: it was told).
pub(super) async fn callback_done(pool: &PgPool, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM callbacks WHERE id = $1").bind(id).execute(pool).await.map(drop)
}

/// A failed delivery is tried again at `next_at`, unless another instance took the callback
/// over since this one's lease ran out: then its delivery stands and nothing changes.
pub(super) async fn callback_retry(
    pool: &PgPool,
    lease: &Lease,
    id: i64,
    attempts: u32,
    next_at: SystemTime,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE callbacks SET attempts = $2, next_at = $3, leased_until = NULL, leased_by = NULL \
         WHERE id = $1 AND (leased_by IS NULL OR leased_by = $4)",
    )
    .bind(id)
    .bind(i64::from(attempts))
    .bind(ms(next_at))
    .bind(&lease.token)
    .execute(pool)
    .await
    .map(drop)
}

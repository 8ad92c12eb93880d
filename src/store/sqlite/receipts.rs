//! SQLite writes of receipts and the callback outbox, run by the writer inside its batch's
//! transaction.

use std::time::SystemTime;

use sqlx::{Row, SqliteConnection};

use super::Applied;
use crate::store::codec::{callback_of, ms};
use crate::store::delivery::{delivery_status_of, ReceiptApplied, ReceiptRecord, MAX_EVENTS};
use crate::store::{CallbackJob, CALLBACK_LEASE};

/// Records `receipts` in order (see [`crate::store::MessageStore::record_receipts`]).
pub(super) async fn record(
    conn: &mut SqliteConnection,
    receipts: &[ReceiptRecord],
) -> Result<Applied, sqlx::Error> {
    let mut applied = Vec::with_capacity(receipts.len());
    let mut suppressed = Vec::new();
    let now = ms(SystemTime::now());
    for receipt in receipts {
        let Some((id, current)) = find(conn, receipt).await? else {
            applied.push(ReceiptApplied::Unknown);
            continue;
        };
        if let Some(key) = &receipt.suppress {
            let added = sqlx::query(
                "INSERT INTO opt_outs (channel, sender, recipient, created_at) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (channel, sender, recipient) DO NOTHING",
            )
            .bind(&key.family)
            .bind(&key.sender)
            .bind(&key.recipient)
            .bind(ms(receipt.time))
            .execute(&mut *conn)
            .await?;
            if added.rows_affected() > 0 {
                suppressed.push(key.clone());
            }
        }
        let detail = serde_json::Value::Object(receipt.detail.clone()).to_string();
        sqlx::query(
            "INSERT INTO events (message_id, time, source, type, provider, detail) \
             SELECT ?1, ?2, 'provider', ?3, ?4, ?5 \
             WHERE (SELECT COUNT(*) FROM events WHERE message_id = ?1) < ?6",
        )
        .bind(&id)
        .bind(ms(receipt.time))
        .bind(&receipt.event)
        .bind(&receipt.provider)
        .bind(detail)
        .bind(i64::try_from(MAX_EVENTS).unwrap_or(i64::MAX))
        .execute(&mut *conn)
        .await?;
        let moved = receipt.status.filter(|status| status.may_follow(delivery_status_of(current.as_deref())));
        if let Some(status) = moved {
            sqlx::query("UPDATE messages SET delivery_status = ?, updated_at = ? WHERE id = ?")
                .bind(status.as_str())
                .bind(now)
                .bind(&id)
                .execute(&mut *conn)
                .await?;
            sqlx::query(
                "INSERT INTO callbacks (webhook_id, message_id, url, status, delivery_status, created_at, next_at) \
                 SELECT 'msg_' || lower(hex(randomblob(16))), id, status_callback, status, delivery_status, ?1, ?1 \
                 FROM messages WHERE id = ?2 AND status_callback IS NOT NULL",
            )
            .bind(now)
            .bind(&id)
            .execute(&mut *conn)
            .await?;
        }
        applied.push(ReceiptApplied::Recorded { message_id: id, moved: moved.is_some() });
    }
    Ok(Applied::Receipts { applied, suppressed })
}

/// The message a receipt is about, and its delivery status: by our id when the receipt carries
/// it (and it is a message this provider handled or is trying: a receipt may come before the
/// send's answer is recorded), else by the provider's id for it.
async fn find(
    conn: &mut SqliteConnection,
    receipt: &ReceiptRecord,
) -> Result<Option<(String, Option<String>)>, sqlx::Error> {
    if let Some(id) = &receipt.message_id {
        let row = sqlx::query(
            "SELECT id, delivery_status FROM messages m WHERE id = ?1 AND direction = 'outbound' \
             AND (provider = ?2 OR EXISTS (SELECT 1 FROM attempts a WHERE a.message_id = m.id AND a.provider = ?2))",
        )
        .bind(id)
        .bind(&receipt.provider)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = row {
            return Ok(Some((row.try_get(0)?, row.try_get(1)?)));
        }
    }
    let Some(provider_id) = &receipt.provider_message_id else { return Ok(None) };
    let row = sqlx::query(
        "SELECT id, delivery_status FROM messages WHERE provider_message_id = ? AND provider = ? \
         AND direction = 'outbound' ORDER BY id LIMIT 1",
    )
    .bind(provider_id)
    .bind(&receipt.provider)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|row| Ok((row.try_get(0)?, row.try_get(1)?))).transpose()
}

/// Leases up to `limit` due callbacks, the oldest of each message only.
pub(super) async fn due_callbacks(
    conn: &mut SqliteConnection,
    limit: u32,
) -> Result<Vec<CallbackJob>, sqlx::Error> {
    let now = ms(SystemTime::now());
    let lease = i64::try_from(CALLBACK_LEASE.as_millis()).unwrap_or(i64::MAX);
    let rows = sqlx::query(
        "UPDATE callbacks SET leased_until = ?1 + ?2 WHERE id IN \
         (SELECT c.id FROM callbacks c WHERE c.next_at <= ?1 AND (c.leased_until IS NULL OR c.leased_until <= ?1) \
          AND NOT EXISTS (SELECT 1 FROM callbacks e WHERE e.message_id = c.message_id AND e.id < c.id) \
          ORDER BY c.next_at, c.id LIMIT ?3) \
         RETURNING id, webhook_id, message_id, url, status, delivery_status, created_at, attempts",
    )
    .bind(now)
    .bind(lease)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    let mut jobs = rows.iter().map(callback_of).collect::<Result<Vec<_>, _>>()?;
    jobs.sort_by_key(|job| job.id);
    Ok(jobs)
}

//! SQLite writes of receipts and the callback outbox, run by the writer inside its batch's
//! transaction.
//!
//! The receipts of a whole batch cost one read and a share of the batch's one statement
//! ([`super::batches::Group`]), whatever their number: [`plan`] finds every receipt's message,
//! its delivery status and how many events it has in one statement, works out in order what
//! each receipt does (an event up to [`MAX_EVENTS`], a move of the delivery status, a callback
//! per move), and hands the rows to the group. sqlx runs each statement on its connection
//! thread, and every statement is a thread switch both ways: four statements per receipt were
//! most of a receipt's cost.

use std::collections::HashMap;
use std::time::SystemTime;

use sqlx::{Row, SqliteConnection};

use super::batches::Group;
use super::Applied;
use crate::store::codec::{callback_of, ms};
use crate::store::conversation::OptOutKey;
use crate::store::delivery::{delivery_status_of, ReceiptApplied, ReceiptRecord, MAX_EVENTS};
use crate::store::{CallbackJob, DeliveryStatus, CALLBACK_LEASE};

/// What [`plan`] worked out for one receipt: its answer, and the suppression it asks for (with
/// the receipt's time) when it matched a message, to be added by [`suppress`].
pub(super) struct Planned<'r> {
    applied: ReceiptApplied,
    suppress: Option<(&'r OptOutKey, SystemTime)>,
}

/// Works out, in order, what `receipts` do (see [`crate::store::MessageStore::record_receipts`])
/// from one read, and puts their events, delivery statuses and callbacks into `group`. Nothing
/// is written until the group is; the suppressions are left to [`suppress`].
pub(super) async fn plan<'r>(
    conn: &mut SqliteConnection,
    receipts: &[&'r ReceiptRecord],
    group: &mut Group<'r>,
) -> Result<Vec<Planned<'r>>, sqlx::Error> {
    if receipts.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<(Option<&str>, Option<&str>, &str)> = receipts
        .iter()
        .map(|r| (r.message_id.as_deref(), r.provider_message_id.as_deref(), r.provider.as_str()))
        .collect();
    let keys = serde_json::to_string(&keys).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    // A receipt's message: by our id when it carries it (and it is a message this provider
    // handled or is trying: a receipt may come before the send's answer is recorded), else by
    // the provider's id for it.
    let rows = sqlx::query(
        "WITH r AS (SELECT j.key AS k, COALESCE(\
           (SELECT m.id FROM messages m WHERE m.id = j.value->>0 AND m.direction = 'outbound' \
             AND (m.provider = j.value->>2 OR EXISTS \
               (SELECT 1 FROM attempts a WHERE a.message_id = m.id AND a.provider = j.value->>2))), \
           (SELECT m.id FROM messages m WHERE m.provider_message_id = j.value->>1 \
             AND m.provider = j.value->>2 AND m.direction = 'outbound' ORDER BY m.id LIMIT 1)) AS id \
         FROM json_each(?) j) \
         SELECT r.id, m.delivery_status, (SELECT COUNT(*) FROM events e WHERE e.message_id = r.id) \
         FROM r LEFT JOIN messages m ON m.id = r.id ORDER BY r.k",
    )
    .bind(keys)
    .fetch_all(&mut *conn)
    .await?;
    if rows.len() != receipts.len() {
        return Err(sqlx::Error::RowNotFound);
    }
    // Each message's delivery status and number of events as the batch's receipts leave them.
    let mut messages: HashMap<String, (Option<DeliveryStatus>, i64)> = HashMap::new();
    let mut planned = Vec::with_capacity(receipts.len());
    let cap = i64::try_from(MAX_EVENTS).unwrap_or(i64::MAX);
    for (receipt, row) in receipts.iter().zip(&rows) {
        let Some(id) = row.try_get::<Option<String>, _>(0)? else {
            planned.push(Planned { applied: ReceiptApplied::Unknown, suppress: None });
            continue;
        };
        let stored: Option<String> = row.try_get(1)?;
        let events: i64 = row.try_get(2)?;
        let (current, events) =
            messages.entry(id.clone()).or_insert_with(|| (delivery_status_of(stored.as_deref()), events));
        if *events < cap {
            *events += 1;
            group.event(&id, receipt);
        }
        let moved = receipt.status.filter(|status| status.may_follow(*current));
        if let Some(status) = moved {
            *current = Some(status);
            group.delivery_move(&id, status);
        }
        planned.push(Planned {
            applied: ReceiptApplied::Recorded { message_id: id, moved: moved.is_some() },
            suppress: receipt.suppress.as_ref().map(|key| (key, receipt.time)),
        });
    }
    Ok(planned)
}

/// Adds the suppressions `planned` asks for (with the time of the receipt that asked); the
/// ones not on the list before, each once (the order is the database's: [`applied`] hands them out).
pub(super) async fn suppress(
    conn: &mut SqliteConnection,
    planned: &[Planned<'_>],
) -> Result<Vec<OptOutKey>, sqlx::Error> {
    let rows: Vec<(&str, &str, &str, i64)> = planned
        .iter()
        .filter_map(|p| p.suppress)
        .map(|(key, time)| (key.family.as_str(), key.sender.as_str(), key.recipient.as_str(), ms(time)))
        .collect();
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let json = serde_json::to_string(&rows).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let added = sqlx::query(
        "INSERT INTO opt_outs (channel, sender, recipient, created_at) \
         SELECT value->>0, value->>1, value->>2, value->>3 FROM json_each(?) WHERE true ORDER BY key \
         ON CONFLICT (channel, sender, recipient) DO NOTHING RETURNING channel, sender, recipient",
    )
    .bind(json)
    .fetch_all(&mut *conn)
    .await?;
    // Each key the insert added, once (a key asked twice conflicts with its first row).
    added
        .iter()
        .map(|row| {
            Ok(OptOutKey { family: row.try_get(0)?, sender: row.try_get(1)?, recipient: row.try_get(2)? })
        })
        .collect()
}

/// The answer to one write of receipts, from its share of the plan: the suppressions in
/// `added` that its receipts asked for (each reported by the first write that asked).
pub(super) fn applied(planned: Vec<Planned<'_>>, added: &mut Vec<OptOutKey>) -> Applied {
    let mut suppressed = Vec::new();
    for (key, _) in planned.iter().filter_map(|p| p.suppress) {
        if let Some(position) = added.iter().position(|k| k == key) {
            suppressed.push(added.swap_remove(position));
        }
    }
    Applied::Receipts { applied: planned.into_iter().map(|p| p.applied).collect(), suppressed }
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

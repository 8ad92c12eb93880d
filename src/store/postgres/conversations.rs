//! Two-way messaging on PostgreSQL: how new messages join their conversations (shared by the
//! batched inserts, the keyed inserts and inbound messages), inbound messages, opt-outs, and
//! the conversation reads.
//!
//! Several transactions write conversation rows at once: up to four insert batches per
//! instance, on separate connections, and every instance sharing the database. A write that
//! joins messages to conversations therefore goes in three steps, in one transaction:
//!
//! 1. [`join`] creates the conversations that do not exist yet, in key order, and finds the
//!    others' ids. It inserts only keys no committed row has, so a sequence value is drawn only
//!    for a conversation that is really new: `INSERT … ON CONFLICT DO UPDATE` on every key
//!    would draw one per message (PostgreSQL evaluates the id's default before it detects the
//!    conflict), and conversation ids would jump by the number of messages sent in between.
//!    Ids stay dense in practice; a value is lost only when two transactions create the same
//!    conversation at the same moment, or a transaction that created one rolls back.
//! 2. The caller writes its messages, with their conversation ids.
//! 3. [`count`] adds the messages to the conversations that existed before, last of all so the
//!    rows stay locked for as short a time as possible, taking the row locks in key order.
//!
//! Every transaction that waits on another's conversation rows does so in key order: on keys
//! being created (step 1, ordered) or on row locks (step 3 and purge, ordered, and a
//! transaction holding those never waits for anything else before it commits), so two writers
//! never wait for each other (no deadlock). Messages are counted per conversation before any
//! row is written, so no statement touches a row twice.

use std::collections::HashMap;

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use crate::store::codec::{conversation_message_of, conversation_of, json_list, ms, opt_out_of, unavailable};
use crate::store::conversation::{
    family, ConversationKey, ConversationMessage, ConversationView, InboundMessage, Listed, OptChange,
    OptOut, OptOutKey, Page, Received, PREVIEW_CHARS,
};
use crate::store::StoreError;

/// The conversation a message joins: its id, and whether this transaction created it (its
/// counters then already count the transaction's messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Joined {
    pub id: i64,
    pub created: bool,
}

type Key = (String, String, String);

fn key_of(row: &PgRow) -> Result<Key, sqlx::Error> {
    Ok((row.try_get("channel")?, row.try_get("participant_a")?, row.try_get("participant_b")?))
}

/// Step 1: the conversation of each `(key, message id)`, in order, created (counting its
/// messages here) when missing.
pub(super) async fn join(
    conn: &mut PgConnection,
    members: &[(ConversationKey, &str)],
    now: i64,
) -> Result<Vec<Joined>, sqlx::Error> {
    let column = |f: fn(&ConversationKey) -> &str| members.iter().map(|(k, _)| f(k)).collect::<Vec<_>>();
    let (channels, lows, highs) = (column(|k| &k.family), column(|k| &k.low), column(|k| &k.high));
    let ids: Vec<&str> = members.iter().map(|(_, id)| *id).collect();
    // The insert and the select read one snapshot: a row is either created here or found, never
    // both. A key another transaction creates meanwhile is neither (the insert waits for it, then
    // skips it); it is read below, once committed.
    let rows = sqlx::query(
        "WITH wanted AS ( \
           SELECT channel, participant_a, participant_b, COUNT(*) AS n, MAX(message_id) AS last_id \
           FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[]) \
             AS i (channel, participant_a, participant_b, message_id) \
           GROUP BY channel, participant_a, participant_b), \
         created AS ( \
           INSERT INTO conversations (channel, participant_a, participant_b, created_at, last_message_at, \
           last_message_id, message_count) \
           SELECT w.channel, w.participant_a, w.participant_b, $5, $5, w.last_id, w.n FROM wanted w \
           WHERE NOT EXISTS (SELECT 1 FROM conversations c WHERE c.channel = w.channel \
             AND c.participant_a = w.participant_a AND c.participant_b = w.participant_b) \
           ORDER BY w.channel, w.participant_a, w.participant_b \
           ON CONFLICT (channel, participant_a, participant_b) DO NOTHING \
           RETURNING id, channel, participant_a, participant_b) \
         SELECT id, channel, participant_a, participant_b, TRUE AS created FROM created \
         UNION ALL \
         SELECT c.id, c.channel, c.participant_a, c.participant_b, FALSE FROM conversations c \
         JOIN wanted w ON c.channel = w.channel AND c.participant_a = w.participant_a \
           AND c.participant_b = w.participant_b",
    )
    .bind(&channels)
    .bind(&lows)
    .bind(&highs)
    .bind(&ids)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    let mut found = HashMap::with_capacity(rows.len());
    for row in &rows {
        found.insert(key_of(row)?, Joined { id: row.try_get("id")?, created: row.try_get("created")? });
    }
    let wanted = |k: &ConversationKey| (k.family.clone(), k.low.clone(), k.high.clone());
    if members.iter().any(|(k, _)| !found.contains_key(&wanted(k))) {
        let rows = sqlx::query(
            "SELECT c.id, c.channel, c.participant_a, c.participant_b FROM conversations c \
             JOIN UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[]) AS w (channel, participant_a, participant_b) \
             ON c.channel = w.channel AND c.participant_a = w.participant_a AND c.participant_b = w.participant_b",
        )
        .bind(&channels)
        .bind(&lows)
        .bind(&highs)
        .fetch_all(&mut *conn)
        .await?;
        for row in &rows {
            found.entry(key_of(row)?).or_insert(Joined { id: row.try_get("id")?, created: false });
        }
    }
    members.iter().map(|(k, _)| found.get(&wanted(k)).copied().ok_or(sqlx::Error::RowNotFound)).collect()
}

/// Step 3: adds each `(conversation, message id)` to a conversation this transaction did not
/// create: one more message, the newest activity now.
pub(super) async fn count(
    conn: &mut PgConnection,
    members: &[(Joined, &str)],
    now: i64,
) -> Result<(), sqlx::Error> {
    let existing: Vec<&(Joined, &str)> = members.iter().filter(|(joined, _)| !joined.created).collect();
    if existing.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "WITH added AS ( \
           SELECT id, COUNT(*) AS n, MAX(message_id) AS last_id \
           FROM UNNEST($1::BIGINT[], $2::TEXT[]) AS i (id, message_id) GROUP BY id), \
         locked AS ( \
           SELECT c.id FROM conversations c WHERE c.id IN (SELECT id FROM added) \
           ORDER BY c.channel, c.participant_a, c.participant_b FOR UPDATE) \
         UPDATE conversations c SET message_count = c.message_count + a.n, last_message_at = $3, \
           last_message_id = GREATEST(c.last_message_id, a.last_id) \
         FROM added a JOIN locked l ON l.id = a.id WHERE c.id = a.id",
    )
    .bind(existing.iter().map(|(joined, _)| joined.id).collect::<Vec<_>>())
    .bind(existing.iter().map(|(_, id)| *id).collect::<Vec<_>>())
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Deletes up to `batch` messages finished before `before` and takes them off their
/// conversations' counts, in one statement; returns how many went. Conversation rows are locked
/// in key order, as inserts lock them.
pub(super) async fn purge_messages(pool: &PgPool, before: i64, batch: u32) -> Result<u64, sqlx::Error> {
    let purged: i64 = sqlx::query_scalar(
        "WITH doomed AS ( \
           SELECT id FROM messages WHERE finished_at IS NOT NULL AND finished_at < $1 \
           ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED), \
         gone AS (DELETE FROM messages m USING doomed d WHERE m.id = d.id RETURNING m.conversation_id), \
         taken AS ( \
           SELECT conversation_id AS id, COUNT(*) AS n FROM gone WHERE conversation_id IS NOT NULL \
           GROUP BY conversation_id), \
         locked AS ( \
           SELECT c.id FROM conversations c WHERE c.id IN (SELECT id FROM taken) \
           ORDER BY c.channel, c.participant_a, c.participant_b FOR UPDATE), \
         counted AS ( \
           UPDATE conversations c SET message_count = GREATEST(c.message_count - t.n, 0) \
           FROM taken t JOIN locked l ON l.id = t.id WHERE c.id = t.id RETURNING 1) \
         SELECT COUNT(*) FROM gone",
    )
    .bind(before)
    .bind(i64::from(batch))
    .fetch_one(pool)
    .await?;
    Ok(u64::try_from(purged).unwrap_or(0))
}

/// Stores an inbound message (see [`crate::store::MessageStore::insert_inbound`]). `None`: its
/// (family, provider message id) was taken by a message that was purged before it could be
/// read; try again.
pub(super) async fn insert_inbound(
    pool: &PgPool,
    message: &InboundMessage,
) -> Result<Option<Received>, StoreError> {
    let family = family(message.channel.as_str());
    let mut tx = pool.begin().await.map_err(unavailable)?;
    // Claiming the (family, provider message id) first: a concurrent delivery of the same
    // message, from this instance or another, waits here until this one commits, then finds the
    // claim taken (the reference to the message is checked at commit).
    let claimed = sqlx::query(
        "INSERT INTO inbound_ids (channel, provider_message_id, message_id) VALUES ($1, $2, $3) \
         ON CONFLICT (channel, provider_message_id) DO NOTHING",
    )
    .bind(family)
    .bind(&message.provider_message_id)
    .bind(&message.id)
    .execute(&mut *tx)
    .await
    .map_err(unavailable)?
    .rows_affected();
    if claimed == 0 {
        let first = sqlx::query(
            "SELECT i.message_id, m.conversation_id FROM inbound_ids i JOIN messages m ON m.id = i.message_id \
             WHERE i.channel = $1 AND i.provider_message_id = $2",
        )
        .bind(family)
        .bind(&message.provider_message_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.rollback().await.map_err(unavailable)?;
        let Some(first) = first else { return Ok(None) };
        let conversation_id: Option<i64> = first.try_get("conversation_id").map_err(unavailable)?;
        return Ok(Some(Received {
            id: first.try_get("message_id").map_err(unavailable)?,
            conversation_id: conversation_id
                .ok_or_else(|| unavailable("a stored inbound message has no conversation"))?,
            duplicate: true,
            opted_out: false,
        }));
    }
    let now = ms(std::time::SystemTime::now());
    let joined = join(&mut tx, &[(message.conversation_key(), message.id.as_str())], now)
        .await
        .map_err(unavailable)?;
    let joined = *joined.first().ok_or_else(|| unavailable("no conversation for an inbound message"))?;
    sqlx::query(
        "INSERT INTO messages (id, channel, sender, recipient, subject, body, attachments, tags, status, provider, \
         provider_message_id, owner, direction, conversation_id, occurred_at, created_at, updated_at, finished_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, '[]', 'received', $8, $9, $10, 'inbound', $11, $12, $13, $13, $13)",
    )
    .bind(&message.id)
    .bind(message.channel.as_str())
    .bind(&message.from)
    .bind(&message.to)
    .bind(&message.subject)
    .bind(&message.body)
    .bind(json_list(&message.attachments))
    .bind(&message.provider)
    .bind(&message.provider_message_id)
    .bind(&message.owner)
    .bind(joined.id)
    .bind(ms(message.timestamp))
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(unavailable)?;
    count(&mut tx, &[(joined, message.id.as_str())], now).await.map_err(unavailable)?;
    let key = message.opt_out_key();
    let opted_out = match message.opt_change {
        Some(OptChange::OptOut) => {
            sqlx::query(
                "INSERT INTO opt_outs (channel, sender, recipient, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (channel, sender, recipient) DO NOTHING",
            )
            .bind(&key.family)
            .bind(&key.sender)
            .bind(&key.recipient)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?
            .rows_affected()
                == 1
        }
        Some(OptChange::OptIn) => {
            remove_opt_out(&mut *tx, &key).await.map_err(unavailable)?;
            false
        }
        None => false,
    };
    tx.commit().await.map_err(unavailable)?;
    Ok(Some(Received { id: message.id.clone(), conversation_id: joined.id, duplicate: false, opted_out }))
}

/// The conversation list's query, with `$cursor_filter` narrowing it to a page after a cursor.
macro_rules! conversations_query {
    ($cursor_filter:literal) => {
        concat!(
            "SELECT c.id, c.channel, c.participant_a, c.participant_b, c.message_count, c.last_message_at, \
             c.last_message_id, l.id AS last_id, l.direction AS last_direction, l.body AS last_body \
             FROM conversations c \
             LEFT JOIN LATERAL ( \
               SELECT m.id, m.direction, left(m.body, $4) AS body FROM messages m \
               WHERE m.conversation_id = c.id ORDER BY m.id DESC LIMIT 1) l ON TRUE \
             WHERE ($2::TEXT IS NULL OR EXISTS ( \
               SELECT 1 FROM messages o WHERE o.owner = $2 AND o.conversation_id = c.id \
               AND o.direction = 'outbound')) ",
            $cursor_filter,
            " ORDER BY c.last_message_id DESC LIMIT $3"
        )
    };
}

pub(super) async fn conversations(
    pool: &PgPool,
    viewer: Option<&str>,
    page: Page<String>,
) -> Result<Listed<ConversationView, String>, sqlx::Error> {
    // Two texts rather than `$1 IS NULL OR …`, so a page after a cursor starts from the index.
    let query = match &page.after {
        Some(after) => sqlx::query(conversations_query!("AND c.last_message_id < $1")).bind(after.as_str()),
        None => sqlx::query(conversations_query!("AND $1::TEXT IS NULL")).bind(None::<&str>),
    };
    let rows = query
        .bind(viewer)
        .bind(i64::try_from(page.fetch()).unwrap_or(i64::MAX))
        .bind(i32::try_from(PREVIEW_CHARS).unwrap_or(i32::MAX))
        .fetch_all(pool)
        .await?;
    let items = rows.iter().map(conversation_of).collect::<Result<Vec<_>, _>>()?;
    Ok(Listed::from_rows(items, page.limit, |c| c.last_message_id.clone()))
}

pub(super) async fn conversation_messages(
    pool: &PgPool,
    id: i64,
    viewer: Option<&str>,
    page: Page<String>,
) -> Result<Option<Listed<ConversationMessage, String>>, sqlx::Error> {
    let visible: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM conversations WHERE id = $1) \
         AND ($2::TEXT IS NULL OR EXISTS (SELECT 1 FROM messages WHERE owner = $2 AND conversation_id = $1 \
         AND direction = 'outbound'))",
    )
    .bind(id)
    .bind(viewer)
    .fetch_one(pool)
    .await?;
    if !visible {
        return Ok(None);
    }
    // `''` sorts before every id: without a cursor, the page starts at the first message.
    let rows = sqlx::query(concat!(
        "SELECT m.id, m.direction, m.channel, m.sender, m.recipient, m.body, m.attachments, ",
        shown_status!(),
        " AS status, m.provider, m.occurred_at, m.created_at FROM messages m \
         WHERE m.conversation_id = $1 AND m.id > COALESCE($2, '') ORDER BY m.id LIMIT $3",
    ))
    .bind(id)
    .bind(page.after.as_deref())
    .bind(i64::try_from(page.fetch()).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await?;
    let items = rows.iter().map(conversation_message_of).collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Listed::from_rows(items, page.limit, |m| m.id.clone())))
}

pub(super) async fn opted_out(pool: &PgPool, key: &OptOutKey) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM opt_outs WHERE channel = $1 AND sender = $2 AND recipient = $3)",
    )
    .bind(&key.family)
    .bind(&key.sender)
    .bind(&key.recipient)
    .fetch_one(pool)
    .await
}

/// The first of `keys` (by position) that is opted out: one query, however many keys (the
/// suppression and every sender a message could come from are asked before each attempt).
pub(super) async fn first_opted_out(pool: &PgPool, keys: &[OptOutKey]) -> Result<Option<usize>, sqlx::Error> {
    let position: Option<i64> = sqlx::query_scalar(
        "SELECT MIN(k.n) FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[]) WITH ORDINALITY AS k (channel, sender, recipient, n) \
         WHERE EXISTS (SELECT 1 FROM opt_outs o WHERE o.channel = k.channel AND o.sender = k.sender AND o.recipient = k.recipient)",
    )
    .bind(keys.iter().map(|k| k.family.as_str()).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.sender.as_str()).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.recipient.as_str()).collect::<Vec<_>>())
    .fetch_one(pool)
    .await?;
    // ORDINALITY counts from 1.
    Ok(position.and_then(|n| usize::try_from(n - 1).ok()))
}

/// Opt-outs in byte order of (channel, sender, recipient), as the other stores list them,
/// whatever the database's collation.
pub(super) async fn opt_outs(
    pool: &PgPool,
    page: Page<OptOutKey>,
) -> Result<Listed<OptOut, OptOutKey>, sqlx::Error> {
    let after = page.after.as_ref();
    let rows = sqlx::query(
        "SELECT channel, sender, recipient, created_at FROM opt_outs \
         WHERE $1::TEXT IS NULL \
           OR (channel COLLATE \"C\", sender COLLATE \"C\", recipient COLLATE \"C\") > ($1, $2, $3) \
         ORDER BY channel COLLATE \"C\", sender COLLATE \"C\", recipient COLLATE \"C\" LIMIT $4",
    )
    .bind(after.map(|k| k.family.as_str()))
    .bind(after.map(|k| k.sender.as_str()))
    .bind(after.map(|k| k.recipient.as_str()))
    .bind(i64::try_from(page.fetch()).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await?;
    let items = rows.iter().map(opt_out_of).collect::<Result<Vec<_>, _>>()?;
    Ok(Listed::from_rows(items, page.limit, OptOut::key))
}

pub(super) async fn remove_opt_out<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    key: &OptOutKey,
) -> Result<bool, sqlx::Error> {
    let removed = sqlx::query("DELETE FROM opt_outs WHERE channel = $1 AND sender = $2 AND recipient = $3")
        .bind(&key.family)
        .bind(&key.sender)
        .bind(&key.recipient)
        .execute(executor)
        .await?
        .rows_affected();
    Ok(removed > 0)
}

#[cfg(test)]
#[path = "conversations_tests.rs"]
pub(super) mod tests;

//! SQLite writes of one kind, many messages per statement: the writer's batches group plain
//! inserts, attempt starts and finishes into multi-row statements. Each statement costs a round
//! trip to sqlx's connection thread; with a statement per group instead of per message the
//! writer spends its time in SQLite, not in thread hand-offs.
//!
//! Groups are cut into chunks of fixed sizes (32, 8, 1), so that only a few distinct statement
//! texts exist and each stays prepared.

use std::time::SystemTime;

use sqlx::{QueryBuilder, Sqlite, SqliteConnection};
use switchboard_providers::OutboundMessage;

use super::codec::{class_name, json_list, ms, unavailable};
use super::{Attempt, Final, StoreError};

const CHUNKS: [usize; 3] = [32, 8, 1];

/// `items` cut into runs of the chunk sizes, largest first.
fn chunks<T>(mut items: &[T]) -> Vec<&[T]> {
    let mut out = Vec::new();
    for size in CHUNKS {
        while items.len() >= size {
            let (chunk, rest) = items.split_at(size);
            out.push(chunk);
            items = rest;
        }
    }
    out
}

async fn run(query: &mut QueryBuilder<Sqlite>, conn: &mut SqliteConnection) -> Result<(), StoreError> {
    query.build().execute(&mut *conn).await.map_err(unavailable)?;
    Ok(())
}

/// New messages without idempotency keys, and their queue entries.
pub(super) async fn insert(
    conn: &mut SqliteConnection,
    rows: &[(&OutboundMessage, Option<&str>)],
) -> Result<(), StoreError> {
    let now = ms(SystemTime::now());
    for chunk in chunks(rows) {
        let mut messages = QueryBuilder::new(
            "INSERT INTO messages (id, channel, sender, recipient, subject, body, attachments, tags, status, created_at, updated_at, owner) ",
        );
        messages.push_values(chunk, |mut row, (m, owner)| {
            row.push_bind(m.id.as_str())
                .push_bind(m.channel.as_str())
                .push_bind(m.from.as_str())
                .push_bind(m.to.as_str())
                .push_bind(m.subject.as_deref())
                .push_bind(m.body.as_str())
                .push_bind(json_list(&m.attachments))
                .push_bind(json_list(&m.tags))
                .push_bind("queued")
                .push_bind(now)
                .push_bind(now)
                .push_bind(*owner);
        });
        run(&mut messages, conn).await?;
        let mut queue = QueryBuilder::new("INSERT INTO queue (message_id, not_before) ");
        queue.push_values(chunk, |mut row, (m, _)| {
            row.push_bind(m.id.as_str()).push_bind(now);
        });
        run(&mut queue, conn).await?;
    }
    Ok(())
}

/// Attempts about to call a provider: their rows, and their messages `sending`.
pub(super) async fn attempts_started(
    conn: &mut SqliteConnection,
    rows: &[(&str, u32, &str)],
) -> Result<(), StoreError> {
    let now = ms(SystemTime::now());
    for chunk in chunks(rows) {
        let mut attempts =
            QueryBuilder::new("INSERT INTO attempts (message_id, number, provider, started_at) ");
        attempts.push_values(chunk, |mut row, (id, number, provider)| {
            row.push_bind(*id).push_bind(i64::from(*number)).push_bind(*provider).push_bind(now);
        });
        attempts.push(
            " ON CONFLICT (message_id, number) DO UPDATE SET provider = excluded.provider, \
             started_at = excluded.started_at, finished_at = NULL, outcome = NULL",
        );
        run(&mut attempts, conn).await?;
        let mut sending = QueryBuilder::new("UPDATE messages SET status = 'sending', updated_at = ");
        sending.push_bind(now).push(" WHERE status = 'queued' AND id IN (");
        let mut ids = sending.separated(", ");
        for (id, _, _) in chunk {
            ids.push_bind(*id);
        }
        sending.push(")");
        run(&mut sending, conn).await?;
    }
    Ok(())
}

/// How attempts ended (creating rows whose start was not recorded).
pub(super) async fn write_attempts(
    conn: &mut SqliteConnection,
    rows: &[(&str, u32, &Attempt)],
) -> Result<(), StoreError> {
    for chunk in chunks(rows) {
        let mut attempts = QueryBuilder::new(
            "INSERT INTO attempts (message_id, number, provider, started_at, finished_at, outcome, error_class, error_code, error_message, latency_ms) ",
        );
        attempts.push_values(chunk, |mut row, (id, number, attempt)| {
            let latency = i64::try_from(attempt.latency_ms).unwrap_or(i64::MAX);
            row.push_bind(*id)
                .push_bind(i64::from(*number))
                .push_bind(&*attempt.provider)
                .push_bind(ms(attempt.time).saturating_sub(latency))
                .push_bind(ms(attempt.time))
                .push_bind(attempt.outcome.as_str())
                .push_bind(attempt.error_class.map(class_name))
                .push_bind(attempt.error_code.as_deref())
                .push_bind(attempt.error_message.as_deref())
                .push_bind(latency);
        });
        attempts.push(
            " ON CONFLICT (message_id, number) DO UPDATE SET finished_at = excluded.finished_at, outcome = excluded.outcome, \
             error_class = excluded.error_class, error_code = excluded.error_code, error_message = excluded.error_message, \
             latency_ms = excluded.latency_ms",
        );
        run(&mut attempts, conn).await?;
    }
    Ok(())
}

/// A message ending: its id, how, and its final attempt if it made one.
pub(super) type Ending<'a> = (&'a str, &'a Final, Option<&'a (u32, Attempt)>);

/// Messages ending: their final attempts, their outcome, and their queue entries gone.
pub(super) async fn finish(conn: &mut SqliteConnection, rows: &[Ending<'_>]) -> Result<(), StoreError> {
    let last: Vec<(&str, u32, &Attempt)> = rows
        .iter()
        .filter_map(|(id, _, last)| last.map(|(number, attempt)| (*id, *number, attempt)))
        .collect();
    write_attempts(conn, &last).await?;
    let now = ms(SystemTime::now());
    for chunk in chunks(rows) {
        let mut outcome = QueryBuilder::new(
            "WITH v (id, status, provider, provider_message_id, error_code, error_message) AS (",
        );
        outcome.push_values(chunk, |mut row, (id, end, _)| {
            let (status, provider, provider_message_id, error) = match end {
                Final::Sent { provider, provider_message_id } => {
                    ("sent", Some(provider), provider_message_id.as_deref(), None)
                }
                Final::Failed { provider, failure } => ("failed", provider.as_ref(), None, Some(failure)),
            };
            row.push_bind(*id)
                .push_bind(status)
                .push_bind(provider.map(|p| &**p))
                .push_bind(provider_message_id)
                .push_bind(error.map(|e| e.code.as_str()))
                .push_bind(error.map(|e| e.message.as_str()));
        });
        outcome.push(
            ") UPDATE messages SET status = v.status, provider = v.provider, provider_message_id = v.provider_message_id, \
             error_code = v.error_code, error_message = v.error_message, updated_at = ",
        );
        outcome
            .push_bind(now)
            .push(", finished_at = ")
            .push_bind(now)
            .push(" FROM v WHERE messages.id = v.id");
        run(&mut outcome, conn).await?;
        let mut dequeue = QueryBuilder::new("DELETE FROM queue WHERE message_id IN (");
        let mut ids = dequeue.separated(", ");
        for (id, _, _) in chunk {
            ids.push_bind(*id);
        }
        dequeue.push(")");
        run(&mut dequeue, conn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes() {
        let sizes = |n: usize| chunks(&vec![0u8; n]).iter().map(|c| c.len()).collect::<Vec<_>>();
        assert_eq!(sizes(0), Vec::<usize>::new());
        assert_eq!(sizes(3), [1, 1, 1]);
        assert_eq!(sizes(8), [8]);
        assert_eq!(sizes(43), [32, 8, 1, 1, 1]);
        assert_eq!(sizes(64), [32, 32]);
    }
}

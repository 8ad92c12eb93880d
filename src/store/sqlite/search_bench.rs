//! The search benchmark (issue 17): a SQLite store of 1,000,000 messages, filled in bulk, and
//! the time of a page of 50 under each filter (first page and one deep in), with the query plan
//! of each, which must read one index range: no full scan of `messages`, no sort. Ignored: run
//! it on purpose (figures in specs/performance.md):
//!
//! ```sh
//! cargo test --lib search_benchmark -- --ignored --nocapture
//! ```
//!
//! `SEARCH_BENCH_MESSAGES` sets another count.

use std::time::{Duration, Instant};

use super::*;
use crate::store::search::recipient_key;
use crate::store::DeliveryStatus;

/// Messages are 10 ms apart from this time on (Unix ms).
const T0: i64 = 1_800_000_000_000;

/// Fills the store with `count` messages in one statement (and one attempt each): ids in
/// creation order, 70 % SMS, 20 % email, 10 % `push`; 2 % failed, 0.1 % queued, the rest sent;
/// receipts on most sent ones (some bounced); 20 API keys, one of them (`tiny`) with a
/// message in 100,000; provider `rare` on one message in 100,000; each recipient 5 messages.
async fn fill(path: &str, count: i64) -> Result<(), sqlx::Error> {
    let mut conn = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))?
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Off)
        .connect()
        .await?;
    let rows = "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?1 - 1) ";
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "{rows} INSERT INTO messages (id, channel, sender, recipient, subject, body, attachments, tags, status, \
         provider, provider_message_id, error_code, error_message, created_at, updated_at, finished_at, owner, \
         direction, conversation_id, delivery_status) \
         SELECT printf('01900000-0000-7000-8000-%012x', i), \
           CASE WHEN i % 10 < 7 THEN 'sms' WHEN i % 10 < 9 THEN 'email' ELSE 'push' END, \
           CASE WHEN i % 10 < 7 THEN '+15550000000' ELSE 'news@example.com' END, \
           CASE WHEN i % 10 < 7 THEN printf('+1555%07d', i % 200000) \
                WHEN i % 10 < 9 THEN printf('User%d@Example.com', i % 200000) ELSE printf('token-%d', i % 200000) END, \
           NULL, 'Your code is 123456', '[]', '[\"otp\"]', \
           CASE WHEN i % 1000 = 1 THEN 'queued' WHEN i % 50 = 0 THEN 'failed' ELSE 'sent' END, \
           CASE WHEN i % 1000 = 1 THEN NULL WHEN i % 100000 = 5 THEN 'rare' ELSE 'p' || (i % 3) END, \
           CASE WHEN i % 50 = 0 OR i % 1000 = 1 THEN NULL ELSE printf('pm-%d', i) END, \
           CASE WHEN i % 50 = 0 THEN 'attempts_exhausted' END, CASE WHEN i % 50 = 0 THEN 'gave up' END, \
           ?2 + i * 10, ?2 + i * 10 + 5, CASE WHEN i % 1000 = 1 THEN NULL ELSE ?2 + i * 10 + 5 END, \
           CASE WHEN i % 100000 = 7 THEN 'tiny' ELSE 'key-' || (i % 20) END, 'outbound', NULL, \
           CASE WHEN i % 50 = 0 OR i % 1000 = 1 OR i % 5 = 4 THEN NULL WHEN i % 97 = 0 THEN 'bounced' \
                ELSE 'delivered' END \
         FROM n"
    )))
    .bind(count)
    .bind(T0)
    .execute(&mut conn)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "{rows} INSERT INTO attempts (message_id, number, provider, started_at, finished_at, outcome, latency_ms) \
         SELECT printf('01900000-0000-7000-8000-%012x', i), 1, 'p' || (i % 3), ?2 + i * 10, ?2 + i * 10 + 5, \
           CASE WHEN i % 50 = 0 THEN 'error' ELSE 'success' END, 5 \
         FROM n WHERE i % 1000 <> 1"
    )))
    .bind(count)
    .bind(T0)
    .execute(&mut conn)
    .await?;
    sqlx::query("ANALYZE").execute(&mut conn).await?;
    Ok(())
}

/// The query plan's lines (`EXPLAIN QUERY PLAN`).
async fn plan(store: &SqliteStore, filter: &MessageFilter, page: &Page<SearchPosition>) -> Vec<String> {
    let (sql, params) = search_statement(filter, page);
    let mut query = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")));
    for param in params {
        query = match param {
            Param::Text(text) => query.bind(text),
            Param::Int(n) => query.bind(n),
        };
    }
    let rows = query.fetch_all(&store.reader).await.unwrap_or_else(|e| panic!("plan: {e}"));
    rows.iter().map(|row| row.try_get::<String, _>("detail").unwrap_or_default()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: 1,000,000 messages (about 1 GB, a few minutes); run with --ignored --nocapture"]
async fn search_benchmark() -> Result<(), StoreError> {
    let count: i64 =
        std::env::var("SEARCH_BENCH_MESSAGES").ok().and_then(|n| n.parse().ok()).unwrap_or(1_000_000);
    let dir = tempfile::tempdir().map_err(unavailable)?;
    let path = dir.path().join("bench.db").to_string_lossy().into_owned();
    drop(SqliteStore::open(&path).await?);
    let started = Instant::now();
    fill(&path, count).await.map_err(unavailable)?;
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!("filled {count} messages in {:.1} s ({} MB)", started.elapsed().as_secs_f64(), size / 1_000_000);
    let store = SqliteStore::open(&path).await?;

    let all = MessageFilter::default();
    let with = |f: fn(&mut MessageFilter)| {
        let mut filter = MessageFilter::default();
        f(&mut filter);
        filter
    };
    let middle = T0 + count / 2 * 10;
    let cases: Vec<(&str, MessageFilter)> = vec![
        ("no filter (admin)", all.clone()),
        ("owner (a key's own)", with(|f| f.owner = Some("key-3".into()))),
        ("owner with 10 messages", with(|f| f.owner = Some("tiny".into()))),
        ("status=failed", with(|f| f.status = Some(Status::Failed))),
        ("status=queued", with(|f| f.status = Some(Status::Queued))),
        ("status=sending (none)", with(|f| f.status = Some(Status::Sending))),
        ("delivery_status=bounced", with(|f| f.delivery_status = Some(DeliveryStatus::Bounced))),
        ("channel=push", with(|f| f.channel = Some("push".into()))),
        ("provider=rare (10 messages)", with(|f| f.provider = Some("rare".into()))),
        ("to=+15550001234 (5 messages)", with(|f| f.to = Some(recipient_key(None, "+1 555 000 1234")))),
        ("to=email, other case", with(|f| f.to = Some(recipient_key(None, "user1237@EXAMPLE.com")))),
        (
            "since+until (1,000 in the middle)",
            MessageFilter { since: Some(middle), until: Some(middle + 10_000), ..all.clone() },
        ),
        (
            "owner + status=failed",
            with(|f| {
                f.owner = Some("key-10".into());
                f.status = Some(Status::Failed);
            }),
        ),
        (
            "owner + channel=email + delivery_status=delivered",
            with(|f| {
                f.owner = Some("key-4".into());
                f.channel = Some("email".into());
                f.delivery_status = Some(DeliveryStatus::Delivered);
            }),
        ),
    ];
    println!("{:<52} {:>6} {:>11} {:>11}  plan", "filter", "found", "page 1 ms", "page 20 ms");
    for (name, filter) in cases {
        let first = Page { limit: 50, after: None };
        let lines = plan(&store, &filter, &first).await;
        let messages_plan: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains(" m ") || l.ends_with(" m") || l.contains("TEMP B-TREE"))
            .collect();
        assert!(
            messages_plan.iter().all(|l| l.contains("INDEX") && !l.contains("TEMP B-TREE")),
            "{name}: not one index range: {lines:?}"
        );
        // Median of 5 runs of the first page, and of a page 20 pages deep.
        let mut times = (Vec::new(), Vec::new());
        let mut found = 0;
        let mut deep: Option<SearchPosition> = None;
        for run in 0..5 {
            let t = Instant::now();
            let listed = store.search(&filter, first.clone()).await?;
            times.0.push(t.elapsed());
            found = listed.items.len();
            if run == 0 {
                let mut after = listed.next;
                for _ in 0..18 {
                    let Some(position) = after else { break };
                    after = store.search(&filter, Page { limit: 50, after: Some(position) }).await?.next;
                }
                deep = after;
            }
            if let Some(position) = &deep {
                let t = Instant::now();
                store.search(&filter, Page { limit: 50, after: Some(position.clone()) }).await?;
                times.1.push(t.elapsed());
            }
        }
        let median = |times: &mut Vec<Duration>| {
            times.sort();
            times.get(times.len() / 2).map_or("-".to_owned(), |d| format!("{:.2}", d.as_secs_f64() * 1000.0))
        };
        let mut index = messages_plan.first().map_or(String::new(), |l| (*l).clone());
        if let Some(position) = &deep {
            let deep_plan = plan(&store, &filter, &Page { limit: 50, after: Some(position.clone()) }).await;
            let line = deep_plan.iter().find(|l| l.contains(" m ")).cloned().unwrap_or_default();
            assert!(
                line.contains("INDEX") && !deep_plan.iter().any(|l| l.contains("TEMP B-TREE")),
                "{name}: {deep_plan:?}"
            );
            index = format!(
                "{index}; page 20: {}",
                line.split_once(" (").map_or("", |(_, range)| range).trim_end_matches(')')
            );
        }
        println!("{name:<52} {found:>6} {:>11} {:>11}  {index}", median(&mut times.0), median(&mut times.1));
    }
    Ok(())
}

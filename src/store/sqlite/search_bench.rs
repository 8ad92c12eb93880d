//! The search benchmark (issue 17): a SQLite store of 1,000,000 messages, filled in bulk, and
//! the time of a page of 50 under each filter (first page and one deep in), with the query plan
//! of each, which must read one range of the driving index: no full scan of `messages`, no
//! sort. Ignored: run it on purpose (figures in specs/performance.md):
//!
//! ```sh
//! cargo test --lib search_benchmark -- --ignored --nocapture
//! ```
//!
//! `SEARCH_BENCH_MESSAGES` sets another count. The plans alone are checked on an empty store by
//! an ordinary test.

use std::time::{Duration, Instant};

use super::*;
use crate::store::search::{self, recipient_key};
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

/// A statement's query plan (`EXPLAIN QUERY PLAN`): each line's id, parent and text.
async fn plan(store: &SqliteStore, (sql, params): (String, Vec<search::Param>)) -> Vec<(i64, i64, String)> {
    let rows = search::bound((format!("EXPLAIN QUERY PLAN {sql}"), params))
        .fetch_all(&store.reader)
        .await
        .unwrap_or_else(|e| panic!("plan: {e}"));
    rows.iter()
        .map(|row| {
            let get = |name: &str| row.try_get::<i64, _>(name).unwrap_or_default();
            (get("id"), get("parent"), row.try_get::<String, _>("detail").unwrap_or_default())
        })
        .collect()
}

/// The plan's reads of `messages` (as `m`), checked to be one range of the driving index, newest
/// first, with no sort: a page's rows read under a co-routine whose output the page scans in
/// order, the last-scanned position read directly. Returns the driving read's line.
async fn checked_plan(
    store: &SqliteStore,
    name: &str,
    filter: &MessageFilter,
    page: &Page<SearchPosition>,
) -> String {
    let index = format!("INDEX {}", search::Driving::of(filter).index());
    let statements = search_statements(filter, page, search::SEARCH_SCAN_LIMIT);
    let rows = plan(store, statements.rows).await;
    let coroutine = rows.iter().find(|(_, _, line)| line == "CO-ROUTINE m");
    let Some((coroutine, _, _)) = coroutine else { panic!("{name}: no co-routine: {rows:?}") };
    let reads: Vec<&(i64, i64, String)> = rows
        .iter()
        .filter(|(_, _, line)| line.starts_with("SEARCH m ") || line.starts_with("SCAN m"))
        .collect();
    let (inner, outer): (Vec<_>, Vec<_>) = reads.into_iter().partition(|(_, parent, _)| parent == coroutine);
    assert!(
        inner.len() == 1 && inner[0].2.contains(&index) && outer.iter().all(|(_, _, line)| line == "SCAN m"),
        "{name}: not one range of {index} under the co-routine: {rows:?}"
    );
    assert!(!rows.iter().any(|(_, _, line)| line.contains("TEMP B-TREE")), "{name}: a sort: {rows:?}");
    if let Some(statement) = statements.last_scanned {
        let last = plan(store, statement).await;
        let reads: Vec<_> = last.iter().filter(|(_, _, line)| line.contains(" m ")).collect();
        assert!(
            reads.len() == 1
                && reads[0].2.contains(&index)
                && !last.iter().any(|(_, _, l)| l.contains("TEMP B-TREE")),
            "{name}: the last scanned row not read from {index}: {last:?}"
        );
    }
    inner[0].2.clone()
}

/// Each driving filter's page, first and after a cursor, reads its index as [`checked_plan`]
/// wants it, alone and with other filters tested on its rows (the benchmark checks the same
/// with 1,000,000 messages and their statistics).
#[tokio::test]
async fn search_plans_read_the_driving_index() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(unavailable)?;
    let store = SqliteStore::open(&dir.path().join("t.db").to_string_lossy()).await?;
    let filter = |f: fn(&mut MessageFilter)| {
        let mut filter = MessageFilter::default();
        f(&mut filter);
        filter
    };
    let filters = [
        MessageFilter::default(),
        filter(|f| f.since = Some(T0)),
        filter(|f| f.owner = Some("app".into())),
        filter(|f| f.to = Some("+15550001111".into())),
        filter(|f| f.status = Some(Status::Failed)),
        filter(|f| f.status = Some(Status::Queued)),
        filter(|f| f.status = Some(Status::Sending)),
        filter(|f| f.delivery_status = Some(DeliveryStatus::Delivered)),
        filter(|f| f.channel = Some("sms".into())),
        filter(|f| f.provider = Some("tw".into())),
        filter(|f| {
            f.to = Some("+15550001111".into());
            f.status = Some(Status::Sending);
            f.owner = Some("app".into());
        }),
        filter(|f| {
            f.status = Some(Status::Queued);
            f.channel = Some("sms".into());
            f.until = Some(T0);
        }),
        filter(|f| {
            f.delivery_status = Some(DeliveryStatus::Bounced);
            f.provider = Some("tw".into());
        }),
        filter(|f| {
            f.owner = Some("app".into());
            f.channel = Some("email".into());
            f.delivery_status = Some(DeliveryStatus::Delivered);
        }),
        filter(|f| {
            f.channel = Some("push".into());
            f.status = Some(Status::Sent);
        }),
    ];
    let after = SearchPosition { created_at: T0, id: "01900000-0000-7000-8000-000000000000".into() };
    for filter in filters {
        for page in [Page { limit: 50, after: None }, Page { limit: 50, after: Some(after.clone()) }] {
            checked_plan(&store, &format!("{filter:?}"), &filter, &page).await;
        }
    }
    Ok(())
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
        (
            "status=failed + channel=email (none of 20,000)",
            with(|f| {
                f.status = Some(Status::Failed);
                f.channel = Some("email".into());
            }),
        ),
        (
            "channel=push + delivery_status=delivered (none)",
            with(|f| {
                f.channel = Some("push".into());
                f.delivery_status = Some(DeliveryStatus::Delivered);
            }),
        ),
        (
            "delivery_status=bounced + provider=p1 (a third)",
            with(|f| {
                f.delivery_status = Some(DeliveryStatus::Bounced);
                f.provider = Some("p1".into());
            }),
        ),
    ];
    println!(
        "{:<52} {:>6} {:>11} {:>11} {:>16}  plan",
        "filter", "found", "page 1 ms", "page 20 ms", "to the end"
    );
    for (name, filter) in cases {
        let first = Page { limit: 50, after: None };
        let mut index = checked_plan(&store, name, &filter, &first).await;
        // Median of 5 runs of the first page, and of a page 20 pages deep.
        let mut times = (Vec::new(), Vec::new());
        let mut found = String::new();
        let mut deep: Option<SearchPosition> = None;
        let mut short_with_cursor = None;
        for run in 0..5 {
            let t = Instant::now();
            let listed = store.search(&filter, first.clone()).await?;
            times.0.push(t.elapsed());
            // `+`: a page short of its limit with a cursor (it stopped at the scan limit).
            let short = listed.items.len() < 50 && listed.next.is_some();
            found = format!("{}{}", listed.items.len(), if short { "+" } else { "" });
            if run == 0 {
                if short {
                    short_with_cursor = listed.next.clone();
                }
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
        // A first page cut short by the scan limit: the pages to follow to the end (at most
        // 1,000), and their time in all.
        let mut to_the_end = "-".to_owned();
        if short_with_cursor.is_some() {
            let (mut after, mut pages, mut listed_all) = (None, 0, 0);
            let t = Instant::now();
            while pages < 1_000 {
                let listed = store.search(&filter, Page { limit: 50, after }).await?;
                pages += 1;
                listed_all += listed.items.len();
                after = listed.next;
                if after.is_none() {
                    break;
                }
            }
            to_the_end = format!("{pages} p, {listed_all}, {:.0} ms", t.elapsed().as_secs_f64() * 1000.0);
        }
        if let Some(position) = &deep {
            let line =
                checked_plan(&store, name, &filter, &Page { limit: 50, after: Some(position.clone()) }).await;
            index = format!(
                "{index}; page 20: {}",
                line.split_once(" (").map_or("", |(_, range)| range).trim_end_matches(')')
            );
        }
        println!(
            "{name:<52} {found:>6} {:>11} {:>11} {to_the_end:>16}  {index}",
            median(&mut times.0),
            median(&mut times.1)
        );
    }
    Ok(())
}

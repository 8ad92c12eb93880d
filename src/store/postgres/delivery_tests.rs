//! Receipts and the callback outbox with two instances sharing one PostgreSQL database: each
//! test creates a database of its own (`SWITCHBOARD_TEST_POSTGRES_URL` names the server).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sqlx::{Connection, PgConnection, Row};
use switchboard_providers::{Channel, OutboundMessage};

use super::conversations::tests::TestDb;
use super::PostgresStore;
use crate::store::codec::unavailable;
use crate::store::{
    DeliveryStatus, Final, IdempotencyKey, MessageStore, Meta, ReceiptApplied, ReceiptRecord, Status,
    StoreError,
};

/// The way the receipts of the tests go, in order: each may follow every one before it.
const CHAIN: [DeliveryStatus; 4] =
    [DeliveryStatus::Sent, DeliveryStatus::Deferred, DeliveryStatus::Delivered, DeliveryStatus::Read];

/// The provider's id for message `n` of a test.
fn provider_id(n: usize) -> String {
    format!("SM{n:04}")
}

/// Sends `count` messages with a callback URL through `store`, concurrently (their starts and
/// ends share batches); message `n` is sent by provider `tw` as [`provider_id`]`(n)`.
async fn sent(store: &Arc<PostgresStore>, count: usize) -> Result<Vec<String>, StoreError> {
    let tasks: Vec<_> = (0..count)
        .map(|n| {
            let store = Arc::clone(store);
            tokio::spawn(async move {
                let message = OutboundMessage {
                    id: uuid::Uuid::now_v7().to_string(),
                    channel: Channel::SMS,
                    from: "+15550001111".into(),
                    to: format!("+1555300{n:04}"),
                    subject: None,
                    body: "hi".into(),
                    attachments: vec![],
                    tags: vec![],
                };
                let meta = Meta { owner: None, status_callback: Some("https://example.com/cb") };
                store.insert_for(&message, meta, None).await?;
                store.attempt_started(&message.id, 1, "tw").await?;
                let end =
                    Final::Sent { provider: Arc::from("tw"), provider_message_id: Some(provider_id(n)) };
                store.finish(&message.id, end, None).await?;
                Ok::<String, StoreError>(message.id)
            })
        })
        .collect();
    let mut ids = Vec::with_capacity(count);
    for task in tasks {
        ids.push(task.await.map_err(unavailable)??);
    }
    Ok(ids)
}

/// A message's `status_callback` is stored by both ways in (batched, and with an idempotency
/// key), and is none when not given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
async fn status_callbacks_are_stored_with_or_without_a_key() -> Result<(), StoreError> {
    let db = TestDb::create().await?;
    let store = db.store().await?;
    let check = |keyed: bool, url: Option<&'static str>| {
        let store = Arc::clone(&store);
        async move {
            let message = OutboundMessage {
                id: uuid::Uuid::now_v7().to_string(),
                channel: Channel::SMS,
                from: "+15550001111".into(),
                to: "+15550002222".into(),
                subject: None,
                body: "hi".into(),
                attachments: vec![],
                tags: vec![],
            };
            let key = IdempotencyKey { key: message.id.clone(), request_hash: "h".into() };
            let meta = Meta { owner: None, status_callback: url };
            store.insert_for(&message, meta, keyed.then_some(&key)).await?;
            let view = store.get(&message.id).await?;
            assert_eq!(
                view.map(|v| v.status_callback),
                Some(url.map(str::to_owned)),
                "keyed {keyed}, {url:?}"
            );
            Ok::<(), StoreError>(())
        }
    };
    for keyed in [false, true] {
        check(keyed, Some("https://example.com/a")).await?;
        check(keyed, None).await?;
    }
    Ok(())
}

/// Four workers, two on each instance, take and deliver callbacks at once: none is taken twice,
/// every one is taken, each message's in order. A callback one instance holds is not due to the
/// other, and the other cannot hand it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
async fn two_instances_never_take_one_callback() -> Result<(), StoreError> {
    let db = TestDb::create().await?;
    let (a, b) = (db.store().await?, db.store().await?);
    let ids = sent(&a, 40).await?;
    // A start (`sending`) and an end (`sent`) each.
    let total = ids.len() * 2;
    assert_eq!(usize::try_from(db.number("SELECT COUNT(*) FROM callbacks").await?).ok(), Some(total));
    let taken = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = [&a, &a, &b, &b]
        .into_iter()
        .map(|store| {
            let (store, taken, done) = (Arc::clone(store), Arc::clone(&taken), Arc::clone(&done));
            tokio::spawn(async move {
                for _ in 0..10_000 {
                    if done.load(Ordering::SeqCst) >= total {
                        break;
                    }
                    let due = store.due_callbacks(3).await?;
                    if due.is_empty() {
                        tokio::task::yield_now().await;
                    }
                    for job in due {
                        if let Ok(mut taken) = taken.lock() {
                            taken.push((job.id, job.message_id.clone(), job.status));
                        }
                        tokio::task::yield_now().await;
                        store.callback_done(job.id).await?;
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                }
                Ok::<(), StoreError>(())
            })
        })
        .collect();
    for worker in workers {
        worker.await.map_err(unavailable)??;
    }
    let taken = taken.lock().map(|taken| taken.clone()).map_err(unavailable)?;
    assert_eq!(taken.len(), total, "every callback delivered once");
    let unique: HashSet<i64> = taken.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(unique.len(), total, "no callback taken twice");
    let mut told: HashMap<&str, Vec<Status>> = HashMap::new();
    for (_, message, status) in &taken {
        told.entry(message.as_str()).or_default().push(*status);
    }
    for id in &ids {
        assert_eq!(
            told.get(id.as_str()).map(Vec::as_slice),
            Some(&[Status::Sending, Status::Sent][..]),
            "{id}"
        );
    }
    assert_eq!(db.number("SELECT COUNT(*) FROM callbacks").await?, 0);

    // One more message's callback: held by `a`, it is not due to `b`, which cannot hand it back.
    sent(&a, 1).await?;
    let job = a.due_callbacks(10).await?;
    assert_eq!(job.iter().map(|j| j.status).collect::<Vec<_>>(), [Status::Sending]);
    let Some(job) = job.into_iter().next() else { return Ok(()) };
    assert!(b.due_callbacks(10).await?.is_empty(), "leased to a");
    b.callback_retry(job.id, 5, SystemTime::now()).await?;
    assert!(b.due_callbacks(10).await?.is_empty(), "still leased to a");
    a.callback_retry(job.id, 1, SystemTime::now()).await?;
    let again = b.due_callbacks(10).await?;
    assert_eq!(again.iter().map(|j| (j.id, j.attempts)).collect::<Vec<_>>(), [(job.id, 1)]);
    Ok(())
}

/// A receipt of message `n` from `tw` reporting `status`.
fn receipt(n: usize, status: DeliveryStatus) -> ReceiptRecord {
    ReceiptRecord {
        provider: "tw".into(),
        message_id: None,
        provider_message_id: Some(provider_id(n)),
        event: status.as_str().into(),
        status: Some(status),
        time: SystemTime::now(),
        suppress: None,
        detail: serde_json::Map::new(),
    }
}

/// Eight batches, four on each instance, each with a receipt for every one of ten messages (in
/// opposite orders: no deadlock), all at once: every message ends at the furthest status, every
/// receipt is an event, and each message's moves — one callback each — only go forward.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
async fn concurrent_receipts_end_at_the_furthest_status() -> Result<(), StoreError> {
    const MESSAGES: usize = 10;
    const BATCHES: usize = 8;
    let db = TestDb::create().await?;
    let (a, b) = (db.store().await?, db.store().await?);
    let ids = sent(&a, MESSAGES).await?;
    let batches: Vec<_> = (0..BATCHES)
        .map(|t| {
            let store = Arc::clone(if t % 2 == 0 { &a } else { &b });
            let mut order: Vec<usize> = (0..MESSAGES).collect();
            if t % 4 >= 2 {
                order.reverse();
            }
            let receipts: Vec<_> = order.iter().map(|&n| receipt(n, CHAIN[(t + n) % CHAIN.len()])).collect();
            tokio::spawn(async move {
                let applied = store.record_receipts(&receipts).await?;
                Ok::<_, StoreError>(applied)
            })
        })
        .collect();
    let mut moves: HashMap<String, usize> = HashMap::new();
    for batch in batches {
        let applied = batch.await.map_err(unavailable)??;
        assert_eq!(applied.len(), MESSAGES);
        for answer in applied {
            match answer {
                ReceiptApplied::Recorded { message_id, moved } => {
                    *moves.entry(message_id).or_default() += usize::from(moved);
                }
                ReceiptApplied::Unknown => panic!("every receipt names a message"),
            }
        }
    }
    for id in &ids {
        for store in [&a, &b] {
            let view = store.get(id).await?;
            assert_eq!(view.and_then(|v| v.delivery_status), Some(DeliveryStatus::Read), "{id}");
        }
    }
    let events = db.number("SELECT COUNT(*) FROM events").await?;
    assert_eq!(usize::try_from(events).ok(), Some(MESSAGES * BATCHES));
    let mut conn = PgConnection::connect(&db.url).await.map_err(unavailable)?;
    let rows = sqlx::query(
        "SELECT message_id, delivery_status FROM callbacks WHERE delivery_status IS NOT NULL ORDER BY id",
    )
    .fetch_all(&mut conn)
    .await
    .map_err(unavailable)?;
    let mut told: HashMap<String, Vec<usize>> = HashMap::new();
    for row in &rows {
        let id: String = row.try_get(0).map_err(unavailable)?;
        let status: String = row.try_get(1).map_err(unavailable)?;
        let step = CHAIN.iter().position(|s| s.as_str() == status);
        told.entry(id).or_default().push(step.unwrap_or(usize::MAX));
    }
    for id in &ids {
        let steps = told.get(id).cloned().unwrap_or_default();
        assert!(steps.windows(2).all(|w| w[0] < w[1]), "{id}: only forward: {steps:?}");
        assert_eq!(steps.last(), Some(&(CHAIN.len() - 1)), "{id}: told of the last");
        assert_eq!(moves.get(id), Some(&steps.len()), "{id}: one callback per move");
    }
    Ok(())
}

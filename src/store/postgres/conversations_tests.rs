//! Two-way messaging on a real PostgreSQL server: each test creates a database of its own
//! (`SWITCHBOARD_TEST_POSTGRES_URL` names the server) and drops it when it ends.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::{Connection, PgConnection};
use switchboard_providers::{Channel, OutboundMessage};

use super::*;
use crate::store::postgres::batches::{insert_all, Lease};
use crate::store::postgres::{PostgresStore, MIGRATOR};
use crate::store::{Direction, Final, IdempotencyKey, Inserted, MessageStore, Meta, Status};

/// Our number, and the people it writes to.
const US: &str = "+15550001111";
const THEM: &str = "+15550002222";

fn failed(what: &str) -> impl Fn(sqlx::Error) -> StoreError + '_ {
    move |e| unavailable(format!("{what}: {e}"))
}

/// A database for one test, dropped when the test ends (also when it fails).
pub(in crate::store::postgres) struct TestDb {
    admin: String,
    name: String,
    pub(in crate::store::postgres) url: String,
}

impl TestDb {
    pub(in crate::store::postgres) async fn create() -> Result<TestDb, StoreError> {
        let admin = std::env::var("SWITCHBOARD_TEST_POSTGRES_URL").unwrap_or_default();
        assert!(!admin.trim().is_empty(), "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests");
        let name = format!("sb_conv_{}", uuid::Uuid::now_v7().simple());
        let mut conn = PgConnection::connect(&admin).await.map_err(failed("connect"))?;
        let create = format!("CREATE DATABASE {name}");
        sqlx::query(sqlx::AssertSqlSafe(create)).execute(&mut conn).await.map_err(failed("create"))?;
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base).to_owned();
        Ok(TestDb { url: format!("{base}/{name}"), admin, name })
    }

    pub(in crate::store::postgres) async fn store(&self) -> Result<Arc<PostgresStore>, StoreError> {
        Ok(Arc::new(PostgresStore::open(&self.url).await?))
    }

    /// One number the query answers.
    pub(in crate::store::postgres) async fn number(&self, query: &'static str) -> Result<i64, StoreError> {
        let mut conn = PgConnection::connect(&self.url).await.map_err(failed("connect"))?;
        sqlx::query_scalar(query).fetch_one(&mut conn).await.map_err(failed(query))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // On a thread of its own: the test's runtime cannot wait for the drop itself.
        let dropping = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut conn).await;
                }
            });
        });
        let _ = dropping.join();
    }
}

fn outbound(channel: Channel, from: &str, to: &str) -> OutboundMessage {
    OutboundMessage {
        id: uuid::Uuid::now_v7().to_string(),
        channel,
        from: from.to_owned(),
        to: to.to_owned(),
        subject: None,
        body: format!("to {to}"),
        attachments: vec![],
        tags: vec![],
    }
}

fn inbound(channel: Channel, from: &str, to: &str, provider_id: &str) -> InboundMessage {
    InboundMessage {
        id: uuid::Uuid::now_v7().to_string(),
        channel,
        from: from.to_owned(),
        to: to.to_owned(),
        subject: None,
        body: "hello".to_owned(),
        attachments: vec!["https://example.com/a.png".to_owned()],
        provider: None,
        provider_message_id: provider_id.to_owned(),
        timestamp: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        owner: None,
        opt_change: None,
    }
}

fn page<C>(limit: u32, after: Option<C>) -> Page<C> {
    Page { limit, after }
}

/// Stores an outbound message and checks the conversation it joined.
async fn check(store: &PostgresStore, message: OutboundMessage, conversation: i64) -> Result<(), StoreError> {
    assert_eq!(store.insert(&message, None).await?, Inserted::New);
    let view = store.get(&message.id).await?;
    let joined = view.map(|v| (v.direction, v.conversation_id));
    assert_eq!(
        joined,
        Some((Direction::Outbound, Some(conversation))),
        "{} {} → {}",
        message.channel,
        message.from,
        message.to
    );
    Ok(())
}

/// Every page of the conversation list, as ids.
async fn conversation_pages(
    store: &PostgresStore,
    viewer: Option<&str>,
    limit: u32,
) -> Result<Vec<Vec<i64>>, StoreError> {
    let (mut pages, mut after) = (Vec::new(), None);
    loop {
        let listed = store.conversations(viewer, page(limit, after)).await?;
        pages.push(listed.items.iter().map(|c| c.id).collect());
        match listed.next {
            Some(next) => after = Some(next),
            None => return Ok(pages),
        }
    }
}

/// Every conversation's stored count and newest message match its messages (none purged).
async fn assert_counts_match(db: &TestDb) -> Result<(), StoreError> {
    let wrong = db
        .number(
            "SELECT COUNT(*) FROM conversations c WHERE c.message_count <> \
             (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id) \
             OR c.last_message_id IS DISTINCT FROM (SELECT MAX(m.id) FROM messages m WHERE m.conversation_id = c.id)",
        )
        .await?;
    assert_eq!(wrong, 0, "conversations whose count or newest message is wrong");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
async fn outbound_messages_create_and_join_conversations() -> Result<(), StoreError> {
    let db = TestDb::create().await?;
    let store = db.store().await?;
    check(&store, outbound(Channel::SMS, US, THEM), 1).await?;
    // The other way, as MMS, formatted otherwise: the same conversation.
    check(&store, outbound(Channel::MMS, "+1 (555) 000-2222", US), 1).await?;
    // Many more in it, concurrently (in shared batches), draw no conversation id.
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let store = Arc::clone(&store);
            let message =
                if i % 2 == 0 { outbound(Channel::SMS, US, THEM) } else { outbound(Channel::MMS, THEM, US) };
            tokio::spawn(async move { store.insert(&message, None).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.map_err(unavailable)??, Inserted::New);
    }
    check(&store, outbound(Channel::EMAIL, "Us@Example.com", "them@example.com"), 2).await?;
    check(&store, outbound(Channel::EMAIL, "THEM@example.com", "us@example.com"), 2).await?;
    check(&store, outbound(Channel::SMS, US, "+15550003333"), 3).await?;
    check(&store, outbound(Channel::SMS, "+15550003333", US), 3).await?;
    check(&store, outbound(Channel::SMS, US, THEM), 1).await?;

    let listed = store.conversations(None, page(10, None)).await?;
    let shown: Vec<_> = listed
        .items
        .iter()
        .map(|c| (c.id, c.channel.as_str(), c.participants.clone(), c.message_count))
        .collect();
    let (us, them) = (US.to_owned(), THEM.to_owned());
    let email = ["them@example.com".to_owned(), "us@example.com".to_owned()];
    assert_eq!(
        shown,
        [
            (1, "sms", [us.clone(), them], 33),
            (3, "sms", [us, "+15550003333".to_owned()], 2),
            (2, "email", email, 2),
        ]
    );
    assert_eq!(listed.next, None);
    let newest: String = sqlx::query_scalar("SELECT MAX(id) FROM messages WHERE conversation_id = 1")
        .fetch_one(&store.pool)
        .await
        .map_err(unavailable)?;
    let last =
        listed.items[0].last_message.as_ref().map(|m| (m.id.clone(), m.direction, m.body_preview.clone()));
    assert_eq!(last, Some((newest, Direction::Outbound, format!("to {THEM}"))));
    assert_counts_match(&db).await
}

/// Plain inserts from two instances, over many pairs at once, some new and some not: every
/// message is counted once in its conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
async fn concurrent_batches_over_many_pairs_count_every_message() -> Result<(), StoreError> {
    let db = TestDb::create().await?;
    let stores = [db.store().await?, db.store().await?];
    for pairs in [0..40, 20..60] {
        let mut tasks = Vec::new();
        for round in 0..6 {
            for pair in pairs.clone() {
                // Both directions, in an order that differs per round.
                let pair = if round % 2 == 0 { pair } else { pairs.end - 1 - (pair - pairs.start) };
                let them = format!("+1555100{pair:04}");
                let message = if round % 2 == 0 {
                    outbound(Channel::SMS, US, &them)
                } else {
                    outbound(Channel::MMS, &them, US)
                };
                let store = Arc::clone(&stores[pair % 2]);
                tasks.push(tokio::spawn(async move { store.insert(&message, None).await }));
            }
        }
        for task in tasks {
            assert_eq!(task.await.map_err(unavailable)??, Inserted::New);
        }
    }
    assert_eq!(db.number("SELECT COUNT(*) FROM conversations").await?, 60);
    assert_eq!(db.number("SELECT COUNT(*) FROM messages WHERE conversation_id IS NULL").await?, 0);
    assert_eq!(db.number("SELECT SUM(message_count)::BIGINT FROM conversations").await?, 480);
    assert_eq!(db.number("SELECT COUNT(*) FROM conversations WHERE message_count = 12").await?, 20);
    assert_counts_match(&db).await
}

/// Batch transactions taking overlapping conversations in different orders, some of them new to
/// all at once, never wait for each other in a circle: none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
async fn batches_taking_conversations_in_any_order_never_deadlock() -> Result<(), StoreError> {
    let db = TestDb::create().await?;
    let store = db.store().await?;
    let lease = Lease { token: "t".to_owned(), duration: Duration::from_secs(60) };
    let tasks: Vec<_> = (0..8usize)
        .map(|task| {
            let (pool, lease) = (store.pool.clone(), lease.clone());
            tokio::spawn(async move {
                for iteration in 0..6usize {
                    // Half the pairs of the previous iteration, half new ones.
                    let mut pairs: Vec<usize> = (iteration * 12..iteration * 12 + 24).collect();
                    if task % 2 == 1 {
                        pairs.reverse();
                    }
                    pairs.rotate_left(task * 3 % 24);
                    let messages: Vec<_> = pairs
                        .iter()
                        .map(|p| outbound(Channel::SMS, US, &format!("+1555200{p:04}")))
                        .collect();
                    let rows: Vec<_> = messages.iter().map(|m| (m, Meta::default())).collect();
                    let mut tx = pool.begin().await?;
                    insert_all(&mut tx, &lease, &rows).await?;
                    tx.commit().await?;
                }
                Ok::<(), sqlx::Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.map_err(unavailable)?.map_err(failed("a batch failed"))?;
    }
    assert_eq!(db.number("SELECT COUNT(*) FROM conversations").await?, 84);
    assert_eq!(db.number("SELECT SUM(message_count)::BIGINT FROM conversations").await?, 8 * 6 * 24);
    assert_counts_match(&db).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
async fn keyed_inserts_join_conversations_and_replays_touch_none() -> Result<(), StoreError> {
    let db = TestDb::create().await?;
    let store = db.store().await?;
    let key = |key: &str, hash: &str| IdempotencyKey { key: key.to_owned(), request_hash: hash.to_owned() };
    let first = outbound(Channel::SMS, US, THEM);
    let cases = [
        (first.clone(), key("k1", "h1"), Inserted::New, 1),
        (
            outbound(Channel::SMS, US, THEM),
            key("k1", "h1"),
            Inserted::Replay { id: first.id.clone(), channel: "sms".into() },
            1,
        ),
        (outbound(Channel::SMS, US, THEM), key("k1", "h2"), Inserted::KeyReused, 1),
        (outbound(Channel::MMS, THEM, US), key("k2", "h1"), Inserted::New, 2),
        (outbound(Channel::EMAIL, "a@example.com", "b@example.com"), key("k3", "h1"), Inserted::New, 2),
    ];
    for (message, key, expected, count) in cases {
        assert_eq!(
            store.insert_for(&message, Meta::owned_by("owner"), Some(&key)).await?,
            expected,
            "{}",
            key.key
        );
        let listed = store.conversations(None, page(10, None)).await?;
        let phones = listed.items.iter().find(|c| c.channel == "sms").map(|c| (c.id, c.message_count));
        assert_eq!(phones, Some((1, count)), "after {}", key.key);
    }
    let view = store.get(&first.id).await?;
    assert_eq!(view.map(|v| v.conversation_id), Some(Some(1)));
    assert_eq!(db.number("SELECT COUNT(*) FROM messages").await?, 3);
    assert_counts_match(&db).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
async fn inbound_messages_are_stored_once_per_provider_id() -> Result<(), StoreError> {
    let db = TestDb::create().await?;
    let store = db.store().await?;
    let first = inbound(Channel::SMS, THEM, US, "SM1");
    let received = |id: &str, conversation_id, duplicate| Received {
        id: id.to_owned(),
        conversation_id,
        duplicate,
        opted_out: false,
    };
    let email = inbound(Channel::EMAIL, "them@example.com", "us@example.com", "SM1");
    let other = inbound(Channel::SMS, THEM, US, "SM2");
    let cases = [
        (first.clone(), received(&first.id, 1, false)),
        // A redelivery, even as MMS (the same family): the first one's id.
        (inbound(Channel::SMS, THEM, US, "SM1"), received(&first.id, 1, true)),
        (inbound(Channel::MMS, THEM, US, "SM1"), received(&first.id, 1, true)),
        // The same provider id on another family is another message.
        (email.clone(), received(&email.id, 2, false)),
        (other.clone(), received(&other.id, 1, false)),
    ];
    for (message, expected) in cases {
        assert_eq!(
            store.insert_inbound(&message).await?,
            expected,
            "{} {}",
            message.channel,
            message.provider_message_id
        );
    }
    check(&store, outbound(Channel::SMS, US, THEM), 1).await?;

    let view = store.get(&first.id).await?.ok_or_else(|| unavailable("the inbound message is missing"))?;
    let shown =
        (view.direction, view.status, view.conversation_id, view.provider_message_id.as_deref(), view.tags);
    assert_eq!(shown, (Direction::Inbound, Status::Received, Some(1), Some("SM1"), vec![]));
    // Only the outbound message is queued: inbound ones are never dispatched.
    assert_eq!(store.queued().await?, 1);
    assert_eq!(store.claim_due(100).await?.len(), 0);
    assert_eq!(db.number("SELECT COUNT(*) FROM messages").await?, 4);
    assert_eq!(db.number("SELECT COUNT(*) FROM inbound_ids").await?, 3);
    assert_eq!(
        db.number("SELECT COUNT(*) FROM messages WHERE direction = 'inbound' AND finished_at IS NULL")
            .await?,
        0
    );
    assert_counts_match(&db).await
}

/// The same inbound message delivered at once through two instances: one is stored, every
/// answer names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
async fn concurrent_redeliveries_through_two_instances_store_one_message() -> Result<(), StoreError> {
    let db = TestDb::create().await?;
    let stores = [db.store().await?, db.store().await?];
    for round in 0..5 {
        let provider_id = format!("SM-race-{round}");
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let store = Arc::clone(&stores[i % 2]);
                let message = inbound(Channel::SMS, THEM, US, &provider_id);
                tokio::spawn(async move { store.insert_inbound(&message).await })
            })
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.map_err(unavailable)??);
        }
        let stored: Vec<_> = answers.iter().filter(|r| !r.duplicate).collect();
        assert_eq!(stored.len(), 1, "round {round}: {answers:?}");
        assert!(
            answers.iter().all(|r| r.id == stored[0].id && r.conversation_id == 1),
            "round {round}: {answers:?}"
        );
    }
    assert_eq!(db.number("SELECT COUNT(*) FROM messages").await?, 5);
    assert_eq!(db.number("SELECT message_count FROM conversations WHERE id = 1").await?, 5);
    // The losers drew no conversation id.
    check(&stores[0], outbound(Channel::SMS, US, "+15550003333"), 2).await?;
    assert_counts_match(&db).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
async fn stop_and_start_record_and_remove_the_opt_out() -> Result<(), StoreError> {
    let db = TestDb::create().await?;
    let store = db.store().await?;
    // They write to us: STOP opts them out of our messages to them.
    let ours = OptOutKey::of("sms", US, THEM);
    let steps = [
        (Some(OptChange::OptOut), true, true),
        (Some(OptChange::OptOut), false, true),
        (None, false, true),
        (Some(OptChange::OptIn), false, false),
        (Some(OptChange::OptIn), false, false),
        (Some(OptChange::OptOut), true, true),
    ];
    for (i, (change, newly, after)) in steps.into_iter().enumerate() {
        let mut message = inbound(Channel::SMS, "+1 555 000 2222", US, &format!("SM{i}"));
        message.opt_change = change;
        let received = store.insert_inbound(&message).await?;
        assert_eq!((received.opted_out, received.duplicate), (newly, false), "step {i}");
        assert_eq!(store.opted_out(&ours).await?, after, "step {i}");
        assert_eq!(store.opted_out(&OptOutKey::of("mms", US, THEM)).await?, after, "step {i}: the family");
        assert!(!store.opted_out(&OptOutKey::of("sms", THEM, US)).await?, "step {i}: the other way");
    }
    // Every one of them is stored in the conversation.
    assert_eq!(db.number("SELECT message_count FROM conversations WHERE id = 1").await?, 6);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
async fn opt_outs_are_listed_by_key_in_pages_and_removed() -> Result<(), StoreError> {
    let db = TestDb::create().await?;
    let store = db.store().await?;
    let senders = [US, "12345", "+15550009999"];
    let mut expected = Vec::new();
    for (i, (sender, recipient)) in
        senders.iter().flat_map(|s| ["+15550002222", "+15550001234"].map(|r| (*s, r))).enumerate()
    {
        let mut message = inbound(Channel::SMS, recipient, sender, &format!("STOP{i}"));
        message.opt_change = Some(OptChange::OptOut);
        store.insert_inbound(&message).await?;
        expected.push(OptOutKey::of("sms", sender, recipient));
    }
    let mut message = inbound(Channel::EMAIL, "Them@Example.com", "us@example.com", "STOP-email");
    message.opt_change = Some(OptChange::OptOut);
    store.insert_inbound(&message).await?;
    expected.push(OptOutKey::of("email", "us@example.com", "them@example.com"));
    expected.sort();

    let (mut listed, mut pages, mut after) = (Vec::new(), 0, None);
    loop {
        let page = store.opt_outs(page(3, after)).await?;
        pages += 1;
        assert!(page.items.len() <= 3);
        listed.extend(page.items.iter().map(OptOut::key));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!((listed, pages), (expected.clone(), 3));

    let removed = &expected[2];
    assert!(store.remove_opt_out(removed).await?);
    assert!(!store.remove_opt_out(removed).await?);
    assert!(!store.opted_out(removed).await?);
    assert!(store.opted_out(&expected[3]).await?);
    let left = store.opt_outs(page(100, None)).await?;
    assert_eq!((left.items.len(), left.next), (6, None));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
async fn conversations_are_listed_newest_activity_first_in_pages() -> Result<(), StoreError> {
    let db = TestDb::create().await?;
    let store = db.store().await?;
    for i in 1..=7 {
        check(&store, outbound(Channel::SMS, US, &format!("+155530000{i:02}")), i).await?;
    }
    assert_eq!(conversation_pages(&store, None, 3).await?, [vec![7, 6, 5], vec![4, 3, 2], vec![1]]);
    assert_eq!(conversation_pages(&store, None, 7).await?, [vec![7, 6, 5, 4, 3, 2, 1]]);
    // New activity in the oldest one (an inbound message) brings it first.
    store.insert_inbound(&inbound(Channel::SMS, "+15553000001", US, "SM1")).await?;
    assert_eq!(conversation_pages(&store, None, 3).await?, [vec![1, 7, 6], vec![5, 4, 3], vec![2]]);
    let first = store.conversations(None, page(1, None)).await?;
    let last = first.items.first().and_then(|c| c.last_message.as_ref()).map(|m| m.direction);
    assert_eq!(last, Some(Direction::Inbound));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
async fn a_key_sees_only_conversations_it_sent_messages_in() -> Result<(), StoreError> {
    let db = TestDb::create().await?;
    let store = db.store().await?;
    store.insert_for(&outbound(Channel::SMS, US, "+15550000001"), Meta::owned_by("k1"), None).await?;
    store.insert_for(&outbound(Channel::SMS, US, "+15550000002"), Meta::owned_by("k2"), None).await?;
    let mut posted = inbound(Channel::SMS, "+15550000002", US, "SM1");
    posted.owner = Some("k1".to_owned());
    store.insert_inbound(&posted).await?;
    store.insert_inbound(&inbound(Channel::SMS, "+15550000003", US, "SM2")).await?;
    for (viewer, expected) in
        // k1 posted an inbound message into conversation 2: that grants it no view.
        [(None, vec![3, 2, 1]), (Some("k1"), vec![1]), (Some("k2"), vec![2]), (Some("k3"), vec![])]
    {
        assert_eq!(conversation_pages(&store, viewer, 1).await?.concat(), expected, "{viewer:?}");
        for id in 1..=3 {
            let shown = store.conversation_messages(id, viewer, page(10, None)).await?.is_some();
            assert_eq!(shown, expected.contains(&id), "{viewer:?} reading {id}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
async fn a_conversations_messages_are_read_oldest_first_in_pages() -> Result<(), StoreError> {
    let db = TestDb::create().await?;
    let store = db.store().await?;
    let mut ids = Vec::new();
    for i in 0..5 {
        if i % 2 == 0 {
            let message = outbound(Channel::SMS, US, THEM);
            store.insert(&message, None).await?;
            ids.push(message.id);
        } else {
            let message = inbound(Channel::MMS, THEM, US, &format!("MM{i}"));
            store.insert_inbound(&message).await?;
            ids.push(message.id);
        }
    }
    store.attempt_started(&ids[0], 1, "p").await?;
    store.finish(&ids[2], Final::Sent { provider: Arc::from("p"), provider_message_id: None }, None).await?;

    let (mut pages, mut after) = (Vec::new(), None);
    loop {
        let listed = store.conversation_messages(1, None, page(2, after)).await?;
        let listed = listed.ok_or_else(|| unavailable("conversation 1 is missing"))?;
        pages.push(listed.items.iter().map(|m| (m.id.clone(), m.direction, m.status)).collect::<Vec<_>>());
        match listed.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let (out, inb) = (Direction::Outbound, Direction::Inbound);
    assert_eq!(
        pages,
        [
            vec![(ids[0].clone(), out, Status::Sending), (ids[1].clone(), inb, Status::Received)],
            vec![(ids[2].clone(), out, Status::Sent), (ids[3].clone(), inb, Status::Received)],
            vec![(ids[4].clone(), out, Status::Queued)],
        ]
    );
    let all = store.conversation_messages(1, None, page(10, None)).await?;
    let received = all.as_ref().and_then(|l| l.items.get(1)).ok_or_else(|| unavailable("no message 2"))?;
    let shown =
        (received.channel.clone(), received.from.as_str(), received.to.as_str(), received.body.as_str());
    assert_eq!(shown, (Channel::MMS, THEM, US, "hello"));
    assert_eq!(received.attachments, ["https://example.com/a.png"]);
    assert_eq!(received.timestamp, UNIX_EPOCH + Duration::from_millis(1_700_000_000_123));
    assert!(received.created_at > received.timestamp);
    assert_eq!(all.map(|l| l.next), Some(None));
    for missing in [0, 2, 999] {
        assert!(store.conversation_messages(missing, None, page(10, None)).await?.is_none(), "{missing}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
async fn purged_messages_leave_their_conversations_counts() -> Result<(), StoreError> {
    let db = TestDb::create().await?;
    let store = db.store().await?;
    let sent: Vec<_> = (0..2).map(|_| outbound(Channel::SMS, US, THEM)).collect();
    let queued = outbound(Channel::SMS, THEM, US);
    for message in sent.iter().chain([&queued]) {
        store.insert(message, None).await?;
    }
    for message in &sent {
        store
            .finish(&message.id, Final::Sent { provider: Arc::from("p"), provider_message_id: None }, None)
            .await?;
    }
    store.insert_inbound(&inbound(Channel::SMS, THEM, US, "SM1")).await?;
    let only = inbound(Channel::SMS, "+15550003333", US, "SM2");
    store.insert_inbound(&only).await?;
    let later = SystemTime::now() + Duration::from_secs(1);

    let counts = |listed: &Listed<ConversationView, String>| -> Vec<(i64, u64, Option<String>)> {
        listed
            .items
            .iter()
            .map(|c| (c.id, c.message_count, c.last_message.as_ref().map(|m| m.id.clone())))
            .collect()
    };
    let before = store.conversations(None, page(10, None)).await?;
    assert_eq!(counts(&before)[0], (2, 1, Some(only.id.clone())));
    assert_eq!(store.purge(later, 1).await?, 1);
    assert_eq!(store.purge(later, 100).await?, 3);
    assert_eq!(store.purge(later, 100).await?, 0);
    let after = store.conversations(None, page(10, None)).await?;
    assert_eq!(counts(&after), [(2, 0, None), (1, 1, Some(queued.id.clone()))]);
    assert_eq!(db.number("SELECT COUNT(*) FROM inbound_ids").await?, 0);
    // The newest activity stays where it was (the list's order), the count follows the messages.
    let wrong = db
        .number(
            "SELECT COUNT(*) FROM conversations c WHERE c.message_count <> \
             (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id)",
        )
        .await?;
    assert_eq!(wrong, 0);
    Ok(())
}

/// A database at schema 0003 (before two-way messaging) keeps its messages: they belong to no
/// conversation and are still dispatched and purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
async fn migrating_from_schema_3_keeps_every_message() -> Result<(), StoreError> {
    let db = TestDb::create().await?;
    let mut conn = PgConnection::connect(&db.url).await.map_err(failed("connect"))?;
    MIGRATOR.run_to(3, &mut conn).await.map_err(|e| unavailable(format!("migrations to 3: {e}")))?;
    let old = ["0190a0a0-0000-7000-8000-000000000001", "0190a0a0-0000-7000-8000-000000000002"];
    for (id, status, finished_at) in [(old[0], "queued", None), (old[1], "sent", Some(1_000_i64))] {
        sqlx::query(
            "INSERT INTO messages (id, channel, sender, recipient, body, attachments, tags, status, created_at, \
             updated_at, finished_at, owner) VALUES ($1, 'sms', $2, $3, 'old', '[]', '[]', $4, 1, 1, $5, 'k1')",
        )
        .bind(id)
        .bind(US)
        .bind(THEM)
        .bind(status)
        .bind(finished_at)
        .execute(&mut conn)
        .await
        .map_err(failed("old message"))?;
    }
    sqlx::query("INSERT INTO queue (message_id, not_before) VALUES ($1, 1)")
        .bind(old[0])
        .execute(&mut conn)
        .await
        .map_err(failed("old queue row"))?;
    conn.close().await.map_err(failed("close"))?;

    let store = db.store().await?;
    let view = store.get(old[0]).await?.ok_or_else(|| unavailable("the old message is gone"))?;
    assert_eq!(
        (view.direction, view.conversation_id, view.status),
        (Direction::Outbound, None, Status::Queued)
    );
    assert_eq!(store.queued().await?, 1);
    let claimed: Vec<_> = store.claim_due(10).await?.into_iter().map(|p| p.message.id).collect();
    assert_eq!(claimed, [old[0]]);
    check(&store, outbound(Channel::SMS, US, THEM), 1).await?;
    let messages = store.conversation_messages(1, None, page(10, None)).await?;
    assert_eq!(messages.map(|l| l.items.len()), Some(1), "old messages belong to no conversation");
    assert_eq!(store.purge(SystemTime::now(), 10).await?, 1);
    assert_eq!(store.get(old[1]).await?, None);
    assert_counts_match(&db).await
}

/// The checks every store passes (`store/conformance.rs`), on a fresh database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
async fn conformance() -> Result<(), StoreError> {
    let db = TestDb::create().await?;
    let store: Arc<dyn MessageStore> = db.store().await?;
    crate::store::conformance::run_all(store).await;
    Ok(())
}

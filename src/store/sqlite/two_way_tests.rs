//! Two-way messaging in the SQLite store: conversations, inbound messages, opt-outs, and what
//! purges and migrations do to them.

use crate::store::Meta;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchboard_providers::{Channel, OutboundMessage};

use super::{SqliteStore, MIGRATOR};
use crate::store::codec::unavailable;
use crate::store::{
    Direction, Final, IdempotencyKey, InboundMessage, Inserted, MessageStore, OptChange, OptOutKey, Page,
    Received, Status, StoreError,
};

const US: &str = "+15550001111";
const THEM: &str = "+15550002222";

async fn open(dir: &tempfile::TempDir) -> Result<SqliteStore, StoreError> {
    SqliteStore::open(&path(dir)).await
}

fn path(dir: &tempfile::TempDir) -> String {
    dir.path().join("t.db").to_string_lossy().into_owned()
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn channel(name: &str) -> Channel {
    Channel::new(name).unwrap_or_else(|e| panic!("channel {name}: {e:?}"))
}

fn out(channel_name: &str, from: &str, to: &str) -> OutboundMessage {
    OutboundMessage {
        id: new_id(),
        channel: channel(channel_name),
        from: from.into(),
        to: to.into(),
        subject: None,
        body: format!("out {from} → {to}"),
        attachments: vec![],
        tags: vec![],
    }
}

/// An SMS from `THEM` to `US` with provider id `pmid`.
fn inbound(pmid: &str, body: &str, opt_change: Option<OptChange>) -> InboundMessage {
    InboundMessage {
        id: new_id(),
        channel: Channel::SMS,
        from: THEM.into(),
        to: US.into(),
        subject: None,
        body: body.into(),
        attachments: vec!["https://example.com/a.png".into()],
        provider: Some("twilio".into()),
        provider_message_id: pmid.into(),
        timestamp: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        owner: None,
        opt_change,
    }
}

fn page<C>(limit: u32, after: Option<C>) -> Page<C> {
    Page { limit, after }
}

fn all() -> Page<String> {
    page(200, None)
}

async fn count(store: &SqliteStore, sql: &'static str) -> Result<i64, StoreError> {
    sqlx::query_scalar(sql).fetch_one(&store.reader).await.map_err(unavailable)
}

/// Sends `(channel, from, to)` one after the other; each must join the conversation id given,
/// and the conversations must end with the counts given (by id, from 1).
async fn check(sends: &[(&str, &str, &str)], expected: &[i64], counts: &[u64]) -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(unavailable)?;
    let store = open(&dir).await?;
    let mut last = std::collections::BTreeMap::new();
    for (i, (channel_name, from, to)) in sends.iter().enumerate() {
        let message = out(channel_name, from, to);
        assert_eq!(store.insert(&message, None).await?, Inserted::New);
        let view = store.get(&message.id).await?.ok_or_else(|| unavailable("missing"))?;
        assert_eq!(
            (view.direction, view.conversation_id),
            (Direction::Outbound, Some(expected[i])),
            "{sends:?} #{i}"
        );
        last.insert(expected[i], message);
    }
    let mut listed = store.conversations(None, all()).await?.items;
    listed.sort_by_key(|c| c.id);
    let got: Vec<(i64, u64)> = listed.iter().map(|c| (c.id, c.message_count)).collect();
    let want: Vec<(i64, u64)> = counts.iter().enumerate().map(|(i, n)| (i as i64 + 1, *n)).collect();
    assert_eq!(got, want, "{sends:?}");
    for conversation in &listed {
        let newest = &last[&conversation.id];
        let shown =
            conversation.last_message.as_ref().map(|m| (m.id.as_str(), m.direction, m.body_preview.as_str()));
        assert_eq!(shown, Some((newest.id.as_str(), Direction::Outbound, newest.body.as_str())));
        assert_eq!(conversation.last_message_id, newest.id);
    }
    Ok(())
}

#[tokio::test]
async fn outbound_messages_join_their_conversation() -> Result<(), StoreError> {
    check(&[("sms", US, THEM)], &[1], &[1]).await?;
    check(&[("sms", US, THEM), ("sms", THEM, US)], &[1, 1], &[2]).await?;
    check(&[("sms", US, THEM), ("mms", THEM, US), ("email", "a@x.com", "b@y.com")], &[1, 1, 2], &[2, 1])
        .await?;
    check(&[("email", "a@x.com", "b@y.com"), ("sms", US, THEM)], &[1, 2], &[1, 1]).await?;
    check(&[("sms", "+1 (555) 000-1111", THEM), ("sms", THEM, US)], &[1, 1], &[2]).await?;
    check(&[("email", "A@X.com", "b@y.com"), ("email", "b@y.com", "a@x.com")], &[1, 1], &[2]).await?;
    check(&[("sms", US, THEM), ("sms", US, "+15550003333"), ("sms", THEM, US)], &[1, 2, 1], &[2, 1]).await?;
    check(&[("email", US, THEM), ("sms", US, THEM)], &[1, 2], &[1, 1]).await?;
    Ok(())
}

/// Messages of one conversation (a new one) and of several, inserted at once (one grouped
/// statement), each count once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_count_once_each() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(unavailable)?;
    let store = Arc::new(open(&dir).await?);
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let store = Arc::clone(&store);
            let to = format!("+1555000{:04}", i % 3);
            tokio::spawn(async move { store.insert(&out("sms", US, &to), None).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.map_err(unavailable)??, Inserted::New);
    }
    let listed = store.conversations(None, all()).await?.items;
    let mut counts: Vec<u64> = listed.iter().map(|c| c.message_count).collect();
    counts.sort_unstable();
    assert_eq!(counts, [20, 20, 20]);
    let mut ids: Vec<i64> = listed.iter().map(|c| c.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3], "no id skipped");
    Ok(())
}

#[tokio::test]
async fn keyed_inserts_and_replays_touch_conversations_once() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(unavailable)?;
    let store = open(&dir).await?;
    let key = |hash: &str| IdempotencyKey { key: "k1".into(), request_hash: hash.into() };
    let first = out("sms", US, THEM);
    assert_eq!(store.insert(&first, Some(&key("h1"))).await?, Inserted::New);
    let replay = store.insert(&out("sms", US, THEM), Some(&key("h1"))).await?;
    assert_eq!(replay, Inserted::Replay { id: first.id.clone(), channel: "sms".into() });
    assert_eq!(store.insert(&out("sms", US, "+15550009999"), Some(&key("h2"))).await?, Inserted::KeyReused);
    let listed = store.conversations(None, all()).await?.items;
    assert_eq!(listed.iter().map(|c| (c.id, c.message_count)).collect::<Vec<_>>(), [(1, 1)]);
    assert_eq!(store.get(&first.id).await?.and_then(|v| v.conversation_id), Some(1));
    Ok(())
}

#[tokio::test]
async fn inbound_messages_are_stored_once() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(unavailable)?;
    let store = open(&dir).await?;
    let sent = out("sms", US, THEM);
    store.insert(&sent, None).await?;
    let first = inbound("SM1", "hello", None);
    let received = store.insert_inbound(&first).await?;
    assert_eq!(
        received,
        Received { id: first.id.clone(), conversation_id: 1, duplicate: false, opted_out: false }
    );
    // A redelivery (a new id, the same provider id) names the first and stores nothing.
    let again = inbound("SM1", "hello", None);
    let duplicate = store.insert_inbound(&again).await?;
    assert_eq!(
        duplicate,
        Received { id: first.id.clone(), conversation_id: 1, duplicate: true, opted_out: false }
    );
    assert!(store.get(&again.id).await?.is_none());
    // The same provider id in another family is another message.
    let mut email = inbound("SM1", "hello", None);
    (email.channel, email.from, email.to) = (Channel::EMAIL, "x@y.com".into(), "us@y.com".into());
    assert_eq!(store.insert_inbound(&email).await?.conversation_id, 2);

    let view = store.get(&first.id).await?.ok_or_else(|| unavailable("missing"))?;
    assert_eq!(
        (
            view.status,
            view.direction,
            view.conversation_id,
            view.provider.as_deref(),
            view.provider_message_id.as_deref()
        ),
        (Status::Received, Direction::Inbound, Some(1), Some("twilio"), Some("SM1"))
    );
    assert_eq!((view.from.as_str(), view.to.as_str(), view.tags.len()), (THEM, US, 0));
    let listed = store.conversations(None, all()).await?.items;
    let phone = listed.iter().find(|c| c.id == 1).ok_or_else(|| unavailable("no conversation 1"))?;
    assert_eq!(phone.message_count, 2);
    assert_eq!(
        phone.last_message.as_ref().map(|m| (m.id.as_str(), m.direction)),
        Some((first.id.as_str(), Direction::Inbound))
    );
    assert_eq!(phone.participants, [US.to_owned(), THEM.to_owned()]);
    // Inbound messages are never queued.
    assert_eq!(store.queued().await?, 1);
    let pending: Vec<String> = store.pending().await?.into_iter().map(|p| p.message.id).collect();
    assert_eq!(pending, std::slice::from_ref(&sent.id));
    let due: Vec<String> = store.due(None, 10).await?.into_iter().map(|p| p.id).collect();
    assert_eq!(due, [sent.id]);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM inbound_ids").await?, 2);
    Ok(())
}

/// Redeliveries arriving together (one batch, or several) end as one stored message; every
/// answer names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_redeliveries_store_one_message() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(unavailable)?;
    let store = Arc::new(open(&dir).await?);
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let store = Arc::clone(&store);
            // Two provider ids, twenty deliveries each, and other messages around them.
            let pmid = if i % 4 == 3 { format!("other-{i}") } else { format!("SM{}", i % 2) };
            tokio::spawn(async move { store.insert_inbound(&inbound(&pmid, "hi", None)).await })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.map_err(unavailable)??);
    }
    for parity in 0..2 {
        let same: Vec<&Received> = answers
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 4 != 3 && i % 2 == parity)
            .map(|(_, r)| r)
            .collect();
        assert_eq!(same.iter().filter(|r| !r.duplicate).count(), 1, "one stored per provider id");
        assert!(same.iter().all(|r| r.id == same[0].id && r.conversation_id == 1));
    }
    assert_eq!(count(&store, "SELECT COUNT(*) FROM messages").await?, 12);
    let listed = store.conversations(None, all()).await?.items;
    assert_eq!(listed.iter().map(|c| c.message_count).collect::<Vec<_>>(), [12]);
    Ok(())
}

#[tokio::test]
async fn stop_and_start_change_the_opt_out() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(unavailable)?;
    let store = open(&dir).await?;
    // Our number may no longer message theirs; the pair is directed and per family.
    let key = OptOutKey::of("sms", US, THEM);
    let steps = [
        ("SM1", Some(OptChange::OptOut), false, true, true),
        ("SM2", Some(OptChange::OptOut), false, false, true),
        ("SM1", Some(OptChange::OptIn), true, false, true), // a redelivery changes nothing
        ("SM3", Some(OptChange::OptIn), false, false, false),
        ("SM4", Some(OptChange::OptIn), false, false, false),
        ("SM5", None, false, false, false),
        ("SM6", Some(OptChange::OptOut), false, true, true),
    ];
    for (pmid, change, duplicate, newly, after) in steps {
        let mut message = inbound(pmid, "STOP", change);
        if pmid == "SM6" {
            message.channel = Channel::MMS;
        }
        let received = store.insert_inbound(&message).await?;
        assert_eq!((received.duplicate, received.opted_out), (duplicate, newly), "{pmid}");
        assert_eq!(store.opted_out(&key).await?, after, "{pmid}");
        assert!(!store.opted_out(&OptOutKey::of("sms", THEM, US)).await?, "{pmid}: directed");
        assert!(!store.opted_out(&OptOutKey::of("email", US, THEM)).await?, "{pmid}: per family");
        let stored = count(&store, "SELECT COUNT(*) FROM opt_outs").await?;
        assert_eq!(stored, i64::from(after), "{pmid}: the table agrees");
    }
    Ok(())
}

/// STOPs arriving together: one per pair records it; START of another pair in the same batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_stops_record_one_opt_out_per_pair() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(unavailable)?;
    let store = Arc::new(open(&dir).await?);
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let store = Arc::clone(&store);
            let mut message = inbound(&format!("SM{i}"), "STOP", Some(OptChange::OptOut));
            message.from = format!("+1555100{:04}", i % 5);
            tokio::spawn(async move { store.insert_inbound(&message).await })
        })
        .collect();
    let mut newly = 0;
    for task in tasks {
        newly += usize::from(task.await.map_err(unavailable)??.opted_out);
    }
    assert_eq!(newly, 5);
    for i in 0..5 {
        assert!(store.opted_out(&OptOutKey::of("sms", US, &format!("+1555100{i:04}"))).await?);
    }
    Ok(())
}

#[tokio::test]
async fn opt_outs_are_listed_by_page_and_removed() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(unavailable)?;
    let store = open(&dir).await?;
    for i in [3, 1, 4, 0, 2] {
        let mut message = inbound(&format!("SM{i}"), "STOP", Some(OptChange::OptOut));
        message.from = format!("+1555200000{i}");
        store.insert_inbound(&message).await?;
    }
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let listed = store.opt_outs(page(2, after)).await?;
        pages.push(listed.items.iter().map(|o| o.recipient.clone()).collect::<Vec<_>>());
        assert!(listed.items.iter().all(|o| (o.channel.as_str(), o.sender.as_str()) == ("sms", US)));
        match listed.next {
            Some(next) => {
                assert_eq!(listed.items.last().map(|o| o.key()), Some(next.clone()));
                after = Some(next);
            }
            None => break,
        }
    }
    let r = |i: u8| format!("+1555200000{i}");
    assert_eq!(pages, [vec![r(0), r(1)], vec![r(2), r(3)], vec![r(4)]]);

    let key = OptOutKey::of("sms", US, &r(2));
    assert!(store.opted_out(&key).await?);
    assert!(store.remove_opt_out(&key).await?);
    assert!(!store.opted_out(&key).await?);
    assert!(!store.remove_opt_out(&key).await?, "removed already");
    let left = store.opt_outs(page(10, None)).await?;
    assert_eq!(left.items.iter().map(|o| o.recipient.clone()).collect::<Vec<_>>(), [r(0), r(1), r(3), r(4)]);
    assert_eq!(left.next, None);
    Ok(())
}

#[tokio::test]
async fn opt_outs_survive_reopening() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(unavailable)?;
    let key = OptOutKey::of("sms", US, THEM);
    {
        let store = open(&dir).await?;
        store.insert_inbound(&inbound("SM1", "STOP", Some(OptChange::OptOut))).await?;
        let mut other = inbound("SM2", "STOP", Some(OptChange::OptOut));
        other.from = "+15550003333".into();
        store.insert_inbound(&other).await?;
        assert!(store.remove_opt_out(&OptOutKey::of("sms", US, "+15550003333")).await?);
    }
    // The writer lets go of the file once the store is dropped.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let store = open(&dir).await?;
    assert!(store.opted_out(&key).await?);
    assert!(!store.opted_out(&OptOutKey::of("sms", US, "+15550003333")).await?);
    Ok(())
}

#[tokio::test]
async fn conversations_are_listed_newest_first_by_page() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(unavailable)?;
    let store = open(&dir).await?;
    for i in 0..5 {
        store.insert(&out("sms", US, &format!("+1555300000{i}")), None).await?;
    }
    // New activity moves conversation 2 to the front.
    store.insert(&out("sms", "+15553000001", US), None).await?;
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let listed = store.conversations(None, page(2, after)).await?;
        pages.push(listed.items.iter().map(|c| c.id).collect::<Vec<_>>());
        match listed.next {
            Some(next) => {
                assert_eq!(listed.items.last().map(|c| c.last_message_id.clone()), Some(next.clone()));
                after = Some(next);
            }
            None => break,
        }
    }
    assert_eq!(pages, [vec![2, 5], vec![4, 3], vec![1]]);
    // Exactly a page's worth left: no next page.
    let four = store.conversations(None, page(4, None)).await?;
    let rest = store.conversations(None, page(1, four.next)).await?;
    assert_eq!((rest.items.len(), rest.next), (1, None));
    Ok(())
}

#[tokio::test]
async fn viewers_see_the_conversations_they_sent_in() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(unavailable)?;
    let store = open(&dir).await?;
    store.insert_for(&out("sms", US, THEM), Meta::owned_by("k1"), None).await?;
    store.insert_for(&out("email", "a@x.com", "b@y.com"), Meta::owned_by("k2"), None).await?;
    store.insert_inbound(&inbound("SM1", "hi", None)).await?;
    let mut stranger = inbound("SM2", "hi", None);
    stranger.from = "+15550004444".into();
    store.insert_inbound(&stranger).await?;
    let ids = |viewer: Option<&'static str>| {
        let store = &store;
        async move {
            let listed = store.conversations(viewer, all()).await?;
            Ok::<_, StoreError>(listed.items.iter().map(|c| c.id).collect::<Vec<_>>())
        }
    };
    assert_eq!(ids(None).await?, [3, 1, 2], "the reply made conversation 1 newer than 2");
    assert_eq!(ids(Some("k1")).await?, [1]);
    assert_eq!(ids(Some("k2")).await?, [2]);
    assert_eq!(ids(Some("k3")).await?, Vec::<i64>::new());
    let read = |id: i64, viewer: Option<&'static str>| {
        let store = &store;
        async move {
            Ok::<_, StoreError>(store.conversation_messages(id, viewer, all()).await?.map(|l| l.items.len()))
        }
    };
    assert_eq!(read(1, Some("k1")).await?, Some(2));
    assert_eq!(read(1, Some("k2")).await?, None, "k2 sent nothing in it");
    assert_eq!(read(1, None).await?, Some(2));
    assert_eq!(read(3, None).await?, Some(1));
    assert_eq!(read(3, Some("k1")).await?, None);
    assert_eq!(read(99, None).await?, None, "no such conversation");
    // Sending in a conversation makes it visible.
    store.insert_for(&out("sms", THEM, US), Meta::owned_by("k2"), None).await?;
    assert_eq!(ids(Some("k2")).await?, [1, 2]);
    assert_eq!(read(1, Some("k2")).await?, Some(3));
    Ok(())
}

#[tokio::test]
async fn conversation_messages_oldest_first_by_page() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(unavailable)?;
    let store = open(&dir).await?;
    let (queued, sending, sent) = (out("sms", US, THEM), out("mms", US, THEM), out("sms", US, THEM));
    for m in [&queued, &sending, &sent] {
        store.insert(m, None).await?;
    }
    let reply = inbound("SM1", "reply", None);
    store.insert_inbound(&reply).await?;
    let failed = out("sms", THEM, US);
    store.insert(&failed, None).await?;
    store.attempt_started(&sending.id, 1, "p").await?;
    store.attempt_started(&sent.id, 1, "p").await?;
    let done = Final::Sent { provider: Arc::from("p"), provider_message_id: Some("x".into()) };
    store.finish(&sent.id, done, None).await?;
    let failure =
        crate::store::Failure { code: crate::store::FailureCode::OptedOut, message: "opted out".into() };
    store.finish(&failed.id, Final::Failed { provider: None, failure }, None).await?;

    let mut seen = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let listed =
            store.conversation_messages(1, None, page(2, after)).await?.ok_or_else(|| unavailable("gone"))?;
        pages += 1;
        seen.extend(listed.items.iter().map(|m| (m.id.clone(), m.direction, m.status)));
        assert!(listed.items.len() <= 2);
        match listed.next {
            Some(next) => {
                assert_eq!(listed.items.last().map(|m| m.id.clone()), Some(next.clone()));
                after = Some(next);
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        [
            (queued.id.clone(), Direction::Outbound, Status::Queued),
            (sending.id.clone(), Direction::Outbound, Status::Sending),
            (sent.id.clone(), Direction::Outbound, Status::Sent),
            (reply.id.clone(), Direction::Inbound, Status::Received),
            (failed.id.clone(), Direction::Outbound, Status::Failed),
        ]
    );
    let all_of = store.conversation_messages(1, None, all()).await?.ok_or_else(|| unavailable("gone"))?;
    let shown = all_of.items.iter().find(|m| m.id == reply.id).ok_or_else(|| unavailable("no reply"))?;
    assert_eq!(
        (shown.from.as_str(), shown.to.as_str(), shown.body.as_str(), shown.provider.as_deref()),
        (THEM, US, "reply", Some("twilio"))
    );
    assert_eq!((shown.timestamp, shown.attachments.len()), (reply.timestamp, 1));
    assert!(shown.created_at > reply.timestamp);
    let first = &all_of.items[0];
    assert_eq!((first.timestamp, first.channel.as_str()), (first.created_at, "sms"));
    assert_eq!(all_of.items[1].channel.as_str(), "mms");
    Ok(())
}

#[tokio::test]
async fn purge_takes_messages_off_their_conversations() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(unavailable)?;
    let store = open(&dir).await?;
    let (old, kept) = (out("sms", US, THEM), out("sms", US, THEM));
    store.insert(&old, None).await?;
    store.insert(&kept, None).await?;
    let reply = inbound("SM1", "hi", None);
    store.insert_inbound(&reply).await?;
    store.insert(&out("email", "a@x.com", "b@y.com"), None).await?;
    let done = Final::Sent { provider: Arc::from("p"), provider_message_id: None };
    store.finish(&old.id, done, None).await?;
    // The sent one and the inbound one (finished at arrival) go; the queued one stays.
    assert_eq!(store.purge(SystemTime::now() + Duration::from_secs(1), 10).await?, 2);
    let listed = store.conversations(None, all()).await?.items;
    let counts: Vec<(i64, u64)> = listed.iter().map(|c| (c.id, c.message_count)).collect();
    assert_eq!(counts, [(2, 1), (1, 1)]);
    let phone = listed.iter().find(|c| c.id == 1).ok_or_else(|| unavailable("gone"))?;
    assert_eq!(
        phone.last_message.as_ref().map(|m| m.id.clone()),
        Some(kept.id.clone()),
        "the newest still stored"
    );
    assert_eq!(count(&store, "SELECT COUNT(*) FROM inbound_ids").await?, 0);
    // With every message gone, the conversation stays, empty.
    store.finish(&kept.id, Final::Sent { provider: Arc::from("p"), provider_message_id: None }, None).await?;
    assert_eq!(store.purge(SystemTime::now() + Duration::from_secs(1), 10).await?, 1);
    let listed = store.conversations(None, all()).await?.items;
    let phone = listed.iter().find(|c| c.id == 1).ok_or_else(|| unavailable("gone"))?;
    assert_eq!((phone.message_count, phone.last_message.is_none()), (0, true));
    Ok(())
}

/// A database from before two-way messaging keeps its messages: they belong to no
/// conversation, and new ones start at conversation 1.
#[tokio::test]
async fn migrating_a_0003_database_keeps_its_messages() -> Result<(), StoreError> {
    use sqlx::ConnectOptions;
    let dir = tempfile::tempdir().map_err(unavailable)?;
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path(&dir)).create_if_missing(true);
    let mut conn = options.connect().await.map_err(unavailable)?;
    let old = sqlx::migrate::Migrator::with_migrations(
        MIGRATOR.iter().filter(|m| m.version <= 3).cloned().collect(),
    );
    old.run(&mut conn).await.map_err(unavailable)?;
    sqlx::query(
        "INSERT INTO messages (id, channel, sender, recipient, body, attachments, tags, status, created_at, updated_at, owner) \
         VALUES ('old-1', 'sms', ?, ?, 'before', '[]', '[\"otp\"]', 'sent', 1, 2, 'k1')",
    )
    .bind(US)
    .bind(THEM)
    .execute(&mut conn)
    .await
    .map_err(unavailable)?;
    drop(conn);

    let store = open(&dir).await?;
    let view = store.get("old-1").await?.ok_or_else(|| unavailable("the old message is gone"))?;
    assert_eq!(
        (view.status, view.direction, view.conversation_id, view.tags, view.owner.as_deref()),
        (Status::Sent, Direction::Outbound, None, vec!["otp".to_owned()], Some("k1"))
    );
    assert!(store.conversations(None, all()).await?.items.is_empty());
    store.insert(&out("sms", US, THEM), None).await?;
    let listed = store.conversations(None, all()).await?.items;
    assert_eq!(listed.iter().map(|c| (c.id, c.message_count)).collect::<Vec<_>>(), [(1, 1)]);
    Ok(())
}

/// The checks every store passes (`store/conformance.rs`), on a fresh database file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(unavailable)?;
    crate::store::conformance::run_all(Arc::new(open(&dir).await?)).await;
    Ok(())
}

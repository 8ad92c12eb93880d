//! The dispatcher against in-memory snapshots: routing happens when a message is picked up.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use switchboard_providers::{Channel, OutboundMessage};

use super::{DispatchConfig, Dispatcher, Submitted};
use crate::config::{load_bytes, Environment};
use crate::metrics::Metrics;
use crate::routing::Snapshot;
use crate::store::Meta;
use crate::store::{Inserted, MemoryStore, MessageStore, MessageView, Status, StoreError};

fn snapshot(config: &str) -> Snapshot {
    let loaded = load_bytes("t.toml", config.as_bytes(), &Environment::default());
    let Some(resolved) = loaded.config else { panic!("{:#?}", loaded.diagnostics) };
    match Snapshot::build(resolved, loaded.version, None) {
        Ok(snapshot) => snapshot,
        Err(error) => panic!("{error}"),
    }
}

fn message(channel: Channel) -> OutboundMessage {
    OutboundMessage {
        id: uuid::Uuid::now_v7().to_string(),
        channel,
        from: "+15550001111".into(),
        to: "+15550002222".into(),
        subject: None,
        body: "hi".into(),
        attachments: vec![],
        tags: vec![],
    }
}

async fn wait_final(store: &MemoryStore, id: &str) -> MessageView {
    for _ in 0..500 {
        if let Ok(Some(view)) = store.get(id).await {
            if matches!(view.status, Status::Sent | Status::Failed) {
                return view;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("message {id} never finished")
}

const SLOW_SMS: &str =
    "[providers.slow]\nkind = \"mock\"\nlatency_ms = 200\n[routes.sms]\nproviders = [\"slow\"]\n";

#[tokio::test]
async fn a_route_gone_by_dispatch_time_fails_the_message_with_no_route() {
    let current = Arc::new(ArcSwap::from_pointee(snapshot(SLOW_SMS)));
    let store = Arc::new(MemoryStore::new(100));
    let config = DispatchConfig { queue_capacity: 10, workers: 1 };
    let (dispatcher, workers) =
        Dispatcher::start(Arc::clone(&current), store.clone(), Arc::new(Metrics::new()), config);

    // The first message holds the only worker while the second waits in the queue.
    let first = message(Channel::SMS);
    let second = message(Channel::SMS);
    let (first_id, second_id) = (first.id.clone(), second.id.clone());
    assert!(dispatcher.submit(first, Meta::default(), None).await.is_ok());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(dispatcher.submit(second, Meta::default(), None).await.is_ok());
    current.store(Arc::new(snapshot(
        "[providers.mail]\nkind = \"mock\"\n[routes.email]\nproviders = [\"mail\"]\n",
    )));

    assert_eq!(wait_final(&store, &first_id).await.status, Status::Sent);
    let view = wait_final(&store, &second_id).await;
    assert_eq!(view.status, Status::Failed);
    assert_eq!(view.error.map(|e| e.code), Some(crate::store::FailureCode::NoRoute));
    assert!(view.attempts.is_empty());

    assert_eq!(workers.shutdown(Duration::from_secs(1)).await, 0);
}

#[tokio::test]
async fn shutdown_reports_what_was_still_queued() {
    let current = Arc::new(ArcSwap::from_pointee(snapshot(SLOW_SMS)));
    let store = Arc::new(MemoryStore::new(100));
    let config = DispatchConfig { queue_capacity: 10, workers: 1 };
    let (dispatcher, workers) = Dispatcher::start(current, store.clone(), Arc::new(Metrics::new()), config);
    let ids: Vec<String> = (0..4).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    for id in &ids {
        let mut m = message(Channel::SMS);
        m.id = id.clone();
        assert!(dispatcher.submit(m, Meta::default(), None).await.is_ok());
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(dispatcher.queue_depth(), 3);
    // The message in flight finishes within the grace period; three never started.
    assert_eq!(workers.shutdown(Duration::from_secs(2)).await, 3);
    assert_eq!(store.get(&ids[0]).await.ok().flatten().map(|v| v.status), Some(Status::Sent));
    assert_eq!(store.get(&ids[3]).await.ok().flatten().map(|v| v.status), Some(Status::Queued));
}

use crate::store::test_support::Faulty;

const FAST_SMS: &str = "[providers.fast]\nkind = \"mock\"\n[routes.sms]\nproviders = [\"fast\"]\n";

fn start(config: &str, store: Arc<dyn MessageStore>) -> (Dispatcher, super::Workers) {
    let current = Arc::new(ArcSwap::from_pointee(snapshot(config)));
    let config = DispatchConfig { queue_capacity: 100, workers: 4 };
    Dispatcher::start(current, store, Arc::new(Metrics::new()), config)
}

async fn wait_final_in(store: &dyn MessageStore, id: &str) -> MessageView {
    // The sweep runs every 2 s: allow a few rounds.
    for _ in 0..1000 {
        if let Ok(Some(view)) = store.get(id).await {
            if matches!(view.status, Status::Sent | Status::Failed) {
                return view;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("message {id} never finished")
}

#[tokio::test]
async fn a_caller_that_goes_away_once_the_message_is_stored_still_gets_it_sent() {
    let store = Arc::new(Faulty { insert_ack_delay: Duration::from_millis(100), ..Faulty::new() });
    let (dispatcher, workers) = start(FAST_SMS, store.clone());
    let m = message(Channel::SMS);
    let id = m.id.clone();
    // The caller (an HTTP handler whose client hung up) is dropped while the store acknowledges.
    let gave_up =
        tokio::time::timeout(Duration::from_millis(20), dispatcher.submit(m, Meta::default(), None)).await;
    assert!(gave_up.is_err(), "the submit was still waiting for the store");
    assert_eq!(wait_final_in(store.as_ref(), &id).await.status, Status::Sent);
    assert_eq!(workers.shutdown(Duration::from_secs(1)).await, 0);
}

#[tokio::test]
async fn queued_messages_no_worker_holds_are_picked_up() {
    let store = Arc::new(MemoryStore::new(100));
    // Stored and queued, but never handed to the dispatcher (as if its job had been lost).
    let orphan = message(Channel::SMS);
    assert_eq!(store.insert(&orphan, None).await.ok(), Some(Inserted::New));
    let (dispatcher, workers) = start(FAST_SMS, store.clone());
    let view = wait_final_in(store.as_ref(), &orphan.id).await;
    assert_eq!((view.status, view.attempts.len()), (Status::Sent, 1), "sent once");
    // Messages the dispatcher holds are left alone: each is sent exactly once.
    let ids: Vec<String> = (0..20).map(|_| message(Channel::SMS)).map(|m| m.id).collect();
    for id in &ids {
        let mut m = message(Channel::SMS);
        m.id = id.clone();
        assert_eq!(dispatcher.submit(m, Meta::default(), None).await.ok(), Some(Submitted::Accepted));
    }
    for id in &ids {
        assert_eq!(wait_final_in(store.as_ref(), id).await.attempts.len(), 1);
    }
    assert_eq!(workers.shutdown(Duration::from_secs(1)).await, 0);
}

#[tokio::test]
async fn queued_messages_no_worker_holds_are_picked_up_from_sqlite() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let path = dir.path().join("s.db");
    let store = crate::store::open(&format!("sqlite://{}", path.display()), 10).await?;
    let orphan = message(Channel::SMS);
    assert_eq!(store.insert(&orphan, None).await?, Inserted::New);
    let (_dispatcher, workers) = start(FAST_SMS, Arc::clone(&store));
    let view = wait_final_in(store.as_ref(), &orphan.id).await;
    assert_eq!((view.status, view.attempts.len()), (Status::Sent, 1));
    assert_eq!(workers.shutdown(Duration::from_secs(1)).await, 0);
    Ok(())
}

#[tokio::test]
async fn shutdown_counts_the_stores_queue_not_memory() {
    let store = Arc::new(MemoryStore::new(100));
    for _ in 0..3 {
        assert!(store.insert(&message(Channel::SMS), None).await.is_ok());
    }
    let (_dispatcher, workers) = start(FAST_SMS, store.clone());
    // Nothing was submitted to this process, yet three messages wait in the store.
    assert_eq!(workers.shutdown(Duration::from_secs(1)).await, 3);
}

#[tokio::test]
async fn progress_the_store_refused_is_written_again_until_it_takes_it() {
    let store = Arc::new(Faulty::new());
    let (dispatcher, workers) = start(FAST_SMS, store.clone());
    // The attempt's start and then its end are refused a few times (a full disk).
    store.refuse_writes.store(4, Ordering::SeqCst);
    let m = message(Channel::SMS);
    let id = m.id.clone();
    assert_eq!(dispatcher.submit(m, Meta::default(), None).await.ok(), Some(Submitted::Accepted));
    let view = wait_final_in(store.as_ref(), &id).await;
    assert_eq!((view.status, view.attempts.len()), (Status::Sent, 1));
    assert_eq!(store.refused.load(Ordering::SeqCst), 4);
    assert_eq!(workers.shutdown(Duration::from_secs(1)).await, 0);
}

/// A kind whose provider panics on every send: only this test binary has it.
mod panicking {
    use std::sync::Arc;

    use switchboard_providers::{
        BuildContext, Kind, OutboundMessage, Provider, Receipt, Registration, SendError, SettingsError,
    };

    #[derive(Debug, Default, serde::Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct NoSettings {}

    struct PanicKind;

    impl Kind for PanicKind {
        const NAME: &'static str = "test_panics";
        const CHANNELS: &'static [&'static str] = &["sms"];
        const DESCRIPTION: &'static str = "panics on every send (dispatch tests only)";
        type Settings = NoSettings;

        fn build(_: NoSettings, _: &BuildContext<'_>) -> Result<Arc<dyn Provider>, SettingsError> {
            Ok(Arc::new(Panics))
        }
    }

    struct Panics;

    #[async_trait::async_trait]
    impl Provider for Panics {
        async fn send(&self, _message: &OutboundMessage) -> Result<Receipt, SendError> {
            panic!("a provider bug")
        }
    }

    inventory::submit! { Registration::of::<PanicKind>() }
}

#[tokio::test]
async fn a_dispatch_that_panics_finishes_its_message_as_failed() {
    let store = Arc::new(MemoryStore::new(100));
    let config = "[providers.broken]\nkind = \"test_panics\"\n[routes.sms]\nproviders = [\"broken\"]\n";
    let (dispatcher, workers) = start(config, store.clone());
    let m = message(Channel::SMS);
    let id = m.id.clone();
    assert_eq!(dispatcher.submit(m, Meta::default(), None).await.ok(), Some(Submitted::Accepted));
    let view = wait_final_in(store.as_ref(), &id).await;
    assert_eq!(view.status, Status::Failed);
    assert_eq!(view.error.map(|e| e.code), Some(crate::store::FailureCode::InternalError));
    // The worker slot came back: the next message is dispatched too.
    let next = message(Channel::SMS);
    let next_id = next.id.clone();
    assert!(dispatcher.submit(next, Meta::default(), None).await.is_ok());
    assert_eq!(wait_final_in(store.as_ref(), &next_id).await.status, Status::Failed);
    assert_eq!(workers.shutdown(Duration::from_secs(1)).await, 0);
}

/// An opt-out recorded while a message waits for its provider's rate-limit token is seen when
/// the token comes: the message ends `opted_out` with no attempt made.
#[tokio::test]
async fn an_opt_out_recorded_during_a_rate_limit_wait_stops_the_attempt() {
    use crate::store::{FailureCode, InboundMessage, OptChange};
    let config = "[providers.slow]\nkind = \"mock\"\nrate_limit.per_second = 2\nrate_limit.burst = 1\n\
                  [routes.sms]\nproviders = [\"slow\"]\n";
    let current = Arc::new(ArcSwap::from_pointee(snapshot(config)));
    let store = Arc::new(MemoryStore::new(100));
    let (dispatcher, workers) = Dispatcher::start(
        current,
        store.clone(),
        Arc::new(Metrics::new()),
        DispatchConfig { queue_capacity: 10, workers: 4 },
    );
    let (first, second) = (message(Channel::SMS), message(Channel::SMS));
    let (first_id, second_id) = (first.id.clone(), second.id.clone());
    assert!(dispatcher.submit(first, Meta::default(), None).await.is_ok());
    assert_eq!(wait_final(&store, &first_id).await.status, Status::Sent, "the first takes the only token");
    assert!(dispatcher.submit(second, Meta::default(), None).await.is_ok());
    // The second waits about 500 ms for a token; the STOP comes meanwhile.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stop = InboundMessage {
        id: uuid::Uuid::now_v7().to_string(),
        channel: Channel::SMS,
        from: "+15550002222".into(),
        to: "+15550001111".into(),
        subject: None,
        body: "STOP".into(),
        attachments: vec![],
        provider: None,
        provider_message_id: "stop-during-wait".into(),
        timestamp: std::time::SystemTime::now(),
        owner: None,
        opt_change: Some(OptChange::OptOut),
    };
    assert!(store.insert_inbound(&stop).await.is_ok_and(|r| r.opted_out));
    let view = wait_final(&store, &second_id).await;
    assert_eq!((view.status, view.error.map(|e| e.code)), (Status::Failed, Some(FailureCode::OptedOut)));
    assert!(view.attempts.is_empty(), "no attempt after the opt-out: {:?}", view.attempts);
    assert_eq!(workers.shutdown(Duration::from_secs(1)).await, 0);
}

/// Provider `a` (sms) allows 10 sends a second, one at a time; `b` (email, another route) has
/// no limit.
const LIMITED_AND_FREE: &str = "[providers.a]\nkind = \"mock\"\nrate_limit.per_second = 10\nrate_limit.burst = 1\n\
     [providers.b]\nkind = \"mock\"\n[routes.sms]\nproviders = [\"a\"]\n[routes.email]\nproviders = [\"b\"]\n";

/// A message to `channel` with a recipient that suits it.
fn message_to(channel: Channel) -> OutboundMessage {
    let mut m = message(channel.clone());
    if channel == Channel::EMAIL {
        (m.from, m.to, m.subject) = ("app@example.com".into(), "user@example.org".into(), Some("Hi".into()));
    }
    m
}

async fn submit_all(dispatcher: &Dispatcher, channel: Channel, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let m = message_to(channel.clone());
        ids.push(m.id.clone());
        assert_eq!(dispatcher.submit(m, Meta::default(), None).await.ok(), Some(Submitted::Accepted));
    }
    ids
}

/// The messages among `ids` in each status: (sent, failed, still queued or sending).
async fn tally(store: &dyn MessageStore, ids: &[String]) -> (usize, usize, usize) {
    let mut counts = (0, 0, 0);
    for id in ids {
        match store.get(id).await.ok().flatten().map(|view| (view.status, view.attempts.len())) {
            Some((Status::Sent, 1)) => counts.0 += 1,
            Some((Status::Failed, _)) => counts.1 += 1,
            Some((Status::Queued | Status::Sending, 0)) => counts.2 += 1,
            other => panic!("message {id}: {other:?}"),
        }
    }
    counts
}

/// With 500 messages queued for a provider limited to 10/s, messages for another route do not
/// wait behind them: the rate-limited ones wait for their tokens out of the worker slots. All
/// of `b`'s are sent while nearly all of `a`'s still wait (sending them takes 50 s); none of
/// `a`'s is lost or sent twice: at shutdown each is sent once or still in the store's queue.
/// (When a token wait held a worker, the 4 workers sat on `a`'s tokens and `b`'s messages
/// waited behind all 500.)
#[tokio::test]
async fn a_rate_limited_backlog_holds_no_worker_from_other_routes() {
    let store = Arc::new(MemoryStore::new(10_000));
    let current = Arc::new(ArcSwap::from_pointee(snapshot(LIMITED_AND_FREE)));
    let config = DispatchConfig { queue_capacity: 1000, workers: 4 };
    let (dispatcher, workers) = Dispatcher::start(current, store.clone(), Arc::new(Metrics::new()), config);

    let limited = submit_all(&dispatcher, Channel::SMS, 500).await;
    let free = submit_all(&dispatcher, Channel::EMAIL, 50).await;
    for id in &free {
        let view = wait_final(&store, id).await;
        assert_eq!((view.status, view.attempts.len()), (Status::Sent, 1), "{id}");
    }
    let (sent, failed, waiting) = tally(store.as_ref(), &limited).await;
    assert_eq!(failed, 0);
    assert!(sent < 250, "{sent} of the rate-limited messages went before the other route's 50");
    assert_eq!(sent + waiting, 500);

    let left = workers.shutdown(Duration::from_secs(1)).await;
    let (sent, failed, waiting) = tally(store.as_ref(), &limited).await;
    assert_eq!((failed, sent + waiting), (0, 500));
    assert!(sent >= 1, "the limited provider sent nothing");
    assert_eq!(left, waiting, "every message not sent is still in the store's queue");
}

/// A message that waits for its provider's token is still sent by that provider: the wait
/// changes where the message waits, not the provider its route's strategy chose (no failover
/// to `b` because `a` is rate-limited).
#[tokio::test]
async fn a_message_waiting_for_a_token_keeps_its_provider() {
    let config = "[providers.a]\nkind = \"mock\"\nrate_limit.per_second = 20\nrate_limit.burst = 1\n\
                  [providers.b]\nkind = \"mock\"\n[routes.sms]\nproviders = [\"a\", \"b\"]\n";
    let store = Arc::new(MemoryStore::new(100));
    let (dispatcher, workers) = start(config, store.clone());
    let ids = submit_all(&dispatcher, Channel::SMS, 6).await;
    for id in &ids {
        let view = wait_final(&store, id).await;
        let providers: Vec<&str> = view.attempts.iter().map(|a| &*a.provider).collect();
        assert_eq!((view.status, providers), (Status::Sent, vec!["a"]), "{id}");
    }
    assert_eq!(workers.shutdown(Duration::from_secs(1)).await, 0);
}

/// When each attempt of `view` started, in milliseconds since the epoch (`time` is its end).
fn attempt_starts(view: &MessageView) -> Vec<u128> {
    view.attempts
        .iter()
        .map(|a| {
            let end = a.time.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
            end - u128::from(a.latency_ms)
        })
        .collect()
}

/// Messages waiting for their tokens are in the store's queue with their due time: a shutdown
/// counts them and a restart sends them, each once, and never faster than the rate (20/s, one
/// at a time), as their recorded attempts show.
#[tokio::test]
async fn messages_waiting_for_tokens_survive_a_restart_and_keep_the_rate() -> Result<(), StoreError> {
    let config = "[providers.a]\nkind = \"mock\"\nrate_limit.per_second = 20\nrate_limit.burst = 1\n\
                  [routes.sms]\nproviders = [\"a\"]\n";
    let dir = tempfile::tempdir().map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let store = crate::store::open(&url, 10).await?;
    let (dispatcher, workers) = start(config, Arc::clone(&store));
    let ids = submit_all(&dispatcher, Channel::SMS, 30).await;
    wait_final_in(store.as_ref(), &ids[2]).await;
    let left = workers.shutdown(Duration::from_secs(1)).await;
    let (sent, failed, waiting) = tally(store.as_ref(), &ids).await;
    assert_eq!((failed, sent + waiting, left), (0, 30, waiting));
    assert!(waiting > 0, "all sent before the shutdown");
    drop((dispatcher, store));

    let store = crate::store::open(&url, 10).await?;
    let (dispatcher, workers) = start(config, Arc::clone(&store));
    dispatcher.resume(store.pending().await?);
    let mut starts = Vec::new();
    for id in &ids {
        let view = wait_final_in(store.as_ref(), id).await;
        assert_eq!((view.status, view.attempts.len()), (Status::Sent, 1), "sent once: {id}");
        starts.extend(attempt_starts(&view));
    }
    assert_eq!(workers.shutdown(Duration::from_secs(1)).await, 0);
    // Within each run, k tokens later an attempt is at least (k - 1) × 50 ms later: one token
    // of slack for a message that came back late to use its token, 1 ms for rounding.
    starts.sort_unstable();
    let (first_run, second_run) = starts.split_at(sent);
    for run in [first_run, second_run] {
        for (i, earlier) in run.iter().enumerate() {
            for (k, later) in run[i + 1..].iter().enumerate() {
                let least = 50 * k as u128;
                assert!(later - earlier + 1 >= least, "{} tokens in {} ms: {run:?}", k + 1, later - earlier);
            }
        }
    }
    Ok(())
}

/// A token reserved ahead and dropped unused goes back to the bucket: the next message's wait
/// is as if it had never been taken. A spent one stays spent.
#[test]
fn a_reserved_token_is_used_or_given_back() {
    let snapshot = snapshot(LIMITED_AND_FREE);
    let Some(a) = snapshot.provider("a") else { panic!("no provider a") };
    let now = std::time::Instant::now();
    let due = |r: &Option<super::Reservation>| r.as_ref().map(|r| r.due.duration_since(now).as_millis());
    let first = super::Reservation::take(a, now);
    assert_eq!(due(&first), Some(0));
    let second = super::Reservation::take(a, now);
    assert_eq!(due(&second), Some(100));
    drop(second);
    let third = super::Reservation::take(a, now);
    assert_eq!(due(&third), Some(100), "the dropped token was given back");
    if let Some(third) = third {
        third.spend();
    }
    assert_eq!(due(&super::Reservation::take(a, now)), Some(200), "the spent token stays spent");
    let Some(b) = snapshot.provider("b") else { panic!("no provider b") };
    assert!(super::Reservation::take(b, now).is_none(), "no bucket, no token");
    drop(first);
}

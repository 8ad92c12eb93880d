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

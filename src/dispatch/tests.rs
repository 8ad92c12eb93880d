//! The dispatcher against in-memory snapshots: routing happens when a message is picked up.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use switchboard_providers::{Channel, OutboundMessage};

use super::{DispatchConfig, Dispatcher, Submitted};
use crate::config::{load_bytes, Environment};
use crate::metrics::Metrics;
use crate::routing::Snapshot;
use crate::store::{
    Attempt, Final, IdempotencyKey, Inserted, MemoryStore, MessageStore, MessageView, Pending, QueuePosition,
    Status, StoreError,
};

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
    assert!(dispatcher.submit(first, None, None).await.is_ok());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(dispatcher.submit(second, None, None).await.is_ok());
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
        assert!(dispatcher.submit(m, None, None).await.is_ok());
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(dispatcher.queue_depth(), 3);
    // The message in flight finishes within the grace period; three never started.
    assert_eq!(workers.shutdown(Duration::from_secs(2)).await, 3);
    assert_eq!(store.get(&ids[0]).await.ok().flatten().map(|v| v.status), Some(Status::Sent));
    assert_eq!(store.get(&ids[3]).await.ok().flatten().map(|v| v.status), Some(Status::Queued));
}

/// A store that delegates to a [`MemoryStore`] and misbehaves on demand: it acknowledges
/// inserts late (after committing them), or refuses a number of progress writes.
struct Faulty {
    inner: MemoryStore,
    /// Wait after committing an insert before answering.
    insert_ack_delay: Duration,
    /// Progress writes (attempt start, attempt, retry time, end) still to refuse.
    refuse_writes: AtomicU32,
    refused: AtomicU32,
}

impl Faulty {
    fn new() -> Faulty {
        Faulty {
            inner: MemoryStore::new(100),
            insert_ack_delay: Duration::ZERO,
            refuse_writes: AtomicU32::new(0),
            refused: AtomicU32::new(0),
        }
    }

    fn progress(&self) -> Result<(), StoreError> {
        let refuse =
            self.refuse_writes.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if refuse.is_ok() {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Unavailable("disk full".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl MessageStore for Faulty {
    async fn insert_for(
        &self,
        message: &OutboundMessage,
        owner: Option<&str>,
        key: Option<&IdempotencyKey>,
    ) -> Result<Inserted, StoreError> {
        let inserted = self.inner.insert_for(message, owner, key).await;
        tokio::time::sleep(self.insert_ack_delay).await;
        inserted
    }
    async fn find_key(&self, key: &IdempotencyKey) -> Result<Option<Inserted>, StoreError> {
        self.inner.find_key(key).await
    }
    async fn attempt_started(&self, id: &str, number: u32, provider: &str) -> Result<(), StoreError> {
        self.progress()?;
        self.inner.attempt_started(id, number, provider).await
    }
    async fn record_attempt(&self, id: &str, number: u32, attempt: Attempt) -> Result<(), StoreError> {
        self.progress()?;
        self.inner.record_attempt(id, number, attempt).await
    }
    async fn schedule(
        &self,
        id: &str,
        not_before: SystemTime,
        attempts: u32,
        round: u32,
    ) -> Result<(), StoreError> {
        self.progress()?;
        self.inner.schedule(id, not_before, attempts, round).await
    }
    async fn finish(&self, id: &str, outcome: Final, last: Option<(u32, Attempt)>) -> Result<(), StoreError> {
        self.progress()?;
        self.inner.finish(id, outcome, last).await
    }
    async fn get(&self, id: &str) -> Result<Option<MessageView>, StoreError> {
        self.inner.get(id).await
    }
    async fn pending(&self) -> Result<Vec<Pending>, StoreError> {
        self.inner.pending().await
    }
    async fn purge(&self, before: SystemTime, batch: u32) -> Result<u64, StoreError> {
        self.inner.purge(before, batch).await
    }
    async fn due(&self, after: Option<&QueuePosition>, limit: u32) -> Result<Vec<QueuePosition>, StoreError> {
        self.inner.due(after, limit).await
    }
    async fn pending_of(&self, ids: &[String]) -> Result<Vec<Pending>, StoreError> {
        self.inner.pending_of(ids).await
    }
    async fn queued(&self) -> Result<u64, StoreError> {
        self.inner.queued().await
    }
    fn describe(&self) -> String {
        "faulty://".into()
    }
    fn is_durable(&self) -> bool {
        false
    }
}

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
    let gave_up = tokio::time::timeout(Duration::from_millis(20), dispatcher.submit(m, None, None)).await;
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
        assert_eq!(dispatcher.submit(m, None, None).await.ok(), Some(Submitted::Accepted));
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
    assert_eq!(dispatcher.submit(m, None, None).await.ok(), Some(Submitted::Accepted));
    let view = wait_final_in(store.as_ref(), &id).await;
    assert_eq!((view.status, view.attempts.len()), (Status::Sent, 1));
    assert_eq!(store.refused.load(Ordering::SeqCst), 4);
    assert_eq!(workers.shutdown(Duration::from_secs(1)).await, 0);
}

/// A kind whose provider panics on every send: only this test binary has it.
mod panicking {
    use std::sync::Arc;

    use async_trait::async_trait;
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

    #[async_trait]
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
    assert_eq!(dispatcher.submit(m, None, None).await.ok(), Some(Submitted::Accepted));
    let view = wait_final_in(store.as_ref(), &id).await;
    assert_eq!(view.status, Status::Failed);
    assert_eq!(view.error.map(|e| e.code), Some(crate::store::FailureCode::InternalError));
    // The worker slot came back: the next message is dispatched too.
    let next = message(Channel::SMS);
    let next_id = next.id.clone();
    assert!(dispatcher.submit(next, None, None).await.is_ok());
    assert_eq!(wait_final_in(store.as_ref(), &next_id).await.status, Status::Failed);
    assert_eq!(workers.shutdown(Duration::from_secs(1)).await, 0);
}

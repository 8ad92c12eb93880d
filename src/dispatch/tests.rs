//! The dispatcher against in-memory snapshots: routing happens when a message is picked up.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use switchboard_providers::{Channel, OutboundMessage};

use super::{DispatchConfig, Dispatcher, SubmitError};
use crate::config::{load_bytes, Environment, Snapshot};
use crate::metrics::Metrics;
use crate::store::{MemoryStore, MessageStore, MessageView, Status};

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
    assert_eq!(view.error.map(|e| e.code), Some("no_route".to_owned()));
    assert!(view.attempts.is_empty());

    // New sends for the vanished channel are refused up front and not stored.
    assert!(matches!(
        dispatcher.submit(message(Channel::SMS), None, None).await,
        Err(SubmitError::NoRoute(_))
    ));
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

//! The in-memory store: nothing survives a restart. Sharded so that concurrent requests and
//! dispatches rarely wait on each other; finished messages beyond a retention count are
//! forgotten, oldest first, so memory stays bounded.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;

use super::{Attempt, Final, MessageStore, MessageView, NewMessage, Status, StoreError};

const SHARDS: usize = 32;

struct Record {
    view: MessageView,
}

pub struct MemoryStore {
    shards: Vec<Mutex<HashMap<String, Record>>>,
    finished: Mutex<VecDeque<String>>,
    retain_finished: usize,
}

impl MemoryStore {
    /// Keeps at most `retain_finished` finished messages (queued and in-flight ones are always
    /// kept).
    pub fn new(retain_finished: usize) -> Self {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            finished: Mutex::new(VecDeque::new()),
            retain_finished,
        }
    }

    fn shard(&self, id: &str) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        // Ids end in random hex: their last bytes spread evenly.
        let index = id.bytes().rev().take(2).fold(0usize, |acc, b| acc * 31 + usize::from(b)) % SHARDS;
        self.shards[index].lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn update(&self, id: &str, change: impl FnOnce(&mut MessageView)) -> Result<(), StoreError> {
        if let Some(record) = self.shard(id).get_mut(id) {
            change(&mut record.view);
            record.view.updated_at = SystemTime::now();
        }
        Ok(())
    }
}

#[async_trait]
impl MessageStore for MemoryStore {
    async fn insert(&self, message: NewMessage) -> Result<(), StoreError> {
        let now = SystemTime::now();
        let view = MessageView {
            id: message.id.clone(),
            channel: message.channel,
            status: Status::Queued,
            provider: None,
            provider_message_id: None,
            attempts: Vec::new(),
            error: None,
            tags: message.tags,
            created_at: now,
            updated_at: now,
        };
        self.shard(&message.id).insert(message.id, Record { view });
        Ok(())
    }

    async fn mark_sending(&self, id: &str) -> Result<(), StoreError> {
        self.update(id, |view| view.status = Status::Sending)
    }

    async fn record_attempt(&self, id: &str, attempt: Attempt) -> Result<(), StoreError> {
        self.update(id, |view| view.attempts.push(attempt))
    }

    async fn finish(&self, id: &str, outcome: Final) -> Result<(), StoreError> {
        self.update(id, |view| match outcome {
            Final::Sent { provider, provider_message_id } => {
                view.status = Status::Sent;
                view.provider = Some(provider);
                view.provider_message_id = provider_message_id;
            }
            Final::Failed { provider, failure } => {
                view.status = Status::Failed;
                view.provider = provider;
                view.error = Some(failure);
            }
        })?;
        let evicted = {
            let mut finished = self.finished.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            finished.push_back(id.to_owned());
            if finished.len() > self.retain_finished {
                finished.pop_front()
            } else {
                None
            }
        };
        if let Some(old) = evicted {
            self.shard(&old).remove(&old);
        }
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<MessageView>, StoreError> {
        Ok(self.shard(id).get(id).map(|record| record.view.clone()))
    }

    fn describe(&self) -> String {
        "memory://".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Failure;
    use switchboard_providers::Channel;

    fn message(id: &str) -> NewMessage {
        NewMessage {
            id: id.to_owned(),
            channel: Channel::SMS,
            from: "+15550001111".into(),
            to: "+15550002222".into(),
            subject: None,
            body: "hi".into(),
            attachments: vec![],
            tags: vec![],
        }
    }

    #[tokio::test]
    async fn lifecycle_and_retention() -> Result<(), StoreError> {
        let store = MemoryStore::new(2);
        for id in ["a1", "b2", "c3"] {
            store.insert(message(id)).await?;
        }
        assert_eq!(store.get("a1").await?.map(|v| v.status), Some(Status::Queued));
        store.mark_sending("a1").await?;
        assert_eq!(store.get("a1").await?.map(|v| v.status), Some(Status::Sending));
        store
            .finish("a1", Final::Sent { provider: "p".into(), provider_message_id: Some("x".into()) })
            .await?;
        let view = store.get("a1").await?;
        assert_eq!(view.as_ref().map(|v| (v.status, v.provider.as_deref())), Some((Status::Sent, Some("p"))));

        let failure = Failure { code: "rejected".into(), message: "no".into() };
        store.finish("b2", Final::Failed { provider: None, failure: failure.clone() }).await?;
        store.finish("c3", Final::Failed { provider: None, failure }).await?;
        // Two finished messages are retained: the oldest is forgotten.
        assert!(store.get("a1").await?.is_none());
        assert!(store.get("b2").await?.is_some() && store.get("c3").await?.is_some());
        assert!(store.get("zz").await?.is_none());
        Ok(())
    }
}

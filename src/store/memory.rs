//! The in-memory store: nothing survives a restart. Sharded so that concurrent requests and
//! dispatches rarely wait on each other; records are compact and keyed by the id's 128 bits;
//! finished messages beyond a retention count are forgotten, oldest first, so memory stays
//! bounded.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use switchboard_providers::{Channel, OutboundMessage};

use super::codec::ms as codec_ms;
use super::{
    replay_or_reused, Attempt, Failure, Final, IdempotencyKey, Inserted, MessageStore, MessageView, Pending,
    QueuePosition, Status, StoreError, IDEMPOTENCY_WINDOW,
};

const SHARDS: usize = 32;

/// Ids are UUIDs: their bits are already well spread, so one multiply mixes them enough.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(word)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u128(&mut self, key: u128) {
        self.0 = mix(key);
    }
}

fn mix(key: u128) -> u64 {
    ((key as u64) ^ ((key >> 64) as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

type Shard = HashMap<u128, Record, BuildHasherDefault<IdHasher>>;

struct Record {
    channel: Channel,
    from: Box<str>,
    to: Box<str>,
    attachments: Box<[String]>,
    /// Until the message is finished: what dispatch needs to carry on (the sweep and shutdown
    /// read it; the body is dropped once the message ends).
    unfinished: Option<Box<Unfinished>>,
    status: Status,
    provider: Option<Arc<str>>,
    provider_message_id: Option<Box<str>>,
    attempts: Vec<Attempt>,
    error: Option<Box<Failure>>,
    tags: Box<[String]>,
    owner: Option<Box<str>>,
    created_at: SystemTime,
    updated_at: SystemTime,
}

struct Unfinished {
    subject: Option<String>,
    body: String,
    not_before: SystemTime,
    attempts: u32,
    round: u32,
}

pub struct MemoryStore {
    shards: Vec<Mutex<Shard>>,
    finished: Mutex<VecDeque<u128>>,
    retain_finished: usize,
    /// Idempotency key → (request hash, message id, channel, when).
    keys: Mutex<HashMap<String, (String, String, String, SystemTime)>>,
}

fn key(id: &str) -> Option<u128> {
    uuid::Uuid::try_parse(id).ok().map(|uuid| uuid.as_u128())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the map consistent: a panic elsewhere cannot poison it.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MemoryStore {
    /// Keeps at most `retain_finished` finished messages (queued and in-flight ones are always
    /// kept).
    pub fn new(retain_finished: usize) -> Self {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            finished: Mutex::new(VecDeque::new()),
            retain_finished,
            keys: Mutex::new(HashMap::new()),
        }
    }

    fn shard(&self, key: u128) -> MutexGuard<'_, Shard> {
        lock(&self.shards[(mix(key) >> 59) as usize % SHARDS])
    }

    fn update(&self, id: &str, change: impl FnOnce(&mut Record)) -> Result<(), StoreError> {
        if let Some(key) = key(id) {
            if let Some(record) = self.shard(key).get_mut(&key) {
                change(record);
                record.updated_at = SystemTime::now();
            }
        }
        Ok(())
    }
}

#[async_trait]
impl MessageStore for MemoryStore {
    async fn insert_for(
        &self,
        message: &OutboundMessage,
        owner: Option<&str>,
        key: Option<&IdempotencyKey>,
    ) -> Result<Inserted, StoreError> {
        let Some(id) = self::key(&message.id) else {
            return Err(StoreError::Unavailable(format!("message id {:?} is not a UUID", message.id)));
        };
        let now = SystemTime::now();
        // The key is checked and taken under one lock, before the message is stored.
        let mut keys = key.map(|_| lock(&self.keys));
        if let (Some(keys), Some(key)) = (keys.as_mut(), key) {
            keys.retain(|_, (_, _, _, at)| now.duration_since(*at).unwrap_or_default() < IDEMPOTENCY_WINDOW);
            if let Some((hash, original, channel, _)) = keys.get(&key.key) {
                return Ok(replay_or_reused(key, hash, original.clone(), channel.clone()));
            }
        }
        let record = Record {
            channel: message.channel.clone(),
            from: message.from.as_str().into(),
            to: message.to.as_str().into(),
            attachments: message.attachments.clone().into_boxed_slice(),
            unfinished: Some(Box::new(Unfinished {
                subject: message.subject.clone(),
                body: message.body.clone(),
                not_before: now,
                attempts: 0,
                round: 0,
            })),
            status: Status::Queued,
            provider: None,
            provider_message_id: None,
            attempts: Vec::new(),
            error: None,
            tags: message.tags.clone().into_boxed_slice(),
            owner: owner.map(Box::from),
            created_at: now,
            updated_at: now,
        };
        self.shard(id).insert(id, record);
        if let (Some(keys), Some(key)) = (keys.as_mut(), key) {
            let entry = (key.request_hash.clone(), message.id.clone(), message.channel.to_string(), now);
            keys.insert(key.key.clone(), entry);
        }
        Ok(Inserted::New)
    }

    async fn attempt_started(&self, id: &str, _number: u32, _provider: &str) -> Result<(), StoreError> {
        // Only the status: nothing here survives a crash, so there is nothing to reconcile.
        self.update(id, |record| {
            if record.status == Status::Queued {
                record.status = Status::Sending;
            }
        })
    }

    async fn record_attempt(&self, id: &str, _number: u32, attempt: Attempt) -> Result<(), StoreError> {
        self.update(id, |record| record.attempts.push(attempt))
    }

    async fn schedule(
        &self,
        id: &str,
        not_before: SystemTime,
        attempts: u32,
        round: u32,
    ) -> Result<(), StoreError> {
        self.update(id, |record| {
            if let Some(unfinished) = record.unfinished.as_mut() {
                (unfinished.not_before, unfinished.attempts, unfinished.round) =
                    (not_before, attempts, round);
            }
        })
    }

    async fn finish(
        &self,
        id: &str,
        outcome: Final,
        last_attempt: Option<(u32, Attempt)>,
    ) -> Result<(), StoreError> {
        self.update(id, |record| {
            record.attempts.extend(last_attempt.map(|(_, attempt)| attempt));
            record.unfinished = None;
            match outcome {
                Final::Sent { provider, provider_message_id } => {
                    record.status = Status::Sent;
                    record.provider = Some(provider);
                    record.provider_message_id = provider_message_id.map(String::into_boxed_str);
                }
                Final::Failed { provider, failure } => {
                    record.status = Status::Failed;
                    record.provider = provider;
                    record.error = Some(Box::new(failure));
                }
            }
        })?;
        let Some(finished_key) = key(id) else { return Ok(()) };
        let evicted = {
            let mut finished = lock(&self.finished);
            finished.push_back(finished_key);
            if finished.len() > self.retain_finished {
                finished.pop_front()
            } else {
                None
            }
        };
        if let Some(old) = evicted {
            self.shard(old).remove(&old);
        }
        Ok(())
    }

    async fn find_key(&self, key: &IdempotencyKey) -> Result<Option<Inserted>, StoreError> {
        let keys = lock(&self.keys);
        Ok(keys
            .get(&key.key)
            .filter(|(_, _, _, at)| at.elapsed().unwrap_or_default() < IDEMPOTENCY_WINDOW)
            .map(|(hash, id, channel, _)| replay_or_reused(key, hash, id.clone(), channel.clone())))
    }

    async fn get(&self, id: &str) -> Result<Option<MessageView>, StoreError> {
        let Some(key) = key(id) else { return Ok(None) };
        Ok(self.shard(key).get(&key).map(|r| MessageView {
            id: id.to_owned(),
            channel: r.channel.clone(),
            from: r.from.to_string(),
            to: r.to.to_string(),
            attachments: r.attachments.to_vec(),
            status: r.status,
            provider: r.provider.clone(),
            provider_message_id: r.provider_message_id.as_deref().map(str::to_owned),
            attempts: r.attempts.clone(),
            error: r.error.as_deref().cloned(),
            tags: r.tags.to_vec(),
            direction: super::Direction::Outbound,
            conversation_id: None,
            owner: r.owner.as_deref().map(str::to_owned),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }))
    }

    async fn pending(&self) -> Result<Vec<Pending>, StoreError> {
        Ok(Vec::new())
    }

    async fn due(&self, after: Option<&QueuePosition>, limit: u32) -> Result<Vec<QueuePosition>, StoreError> {
        let now = codec_ms(SystemTime::now());
        let mut due: Vec<QueuePosition> = Vec::new();
        for shard in &self.shards {
            let shard = lock(shard);
            due.extend(shard.iter().filter_map(|(key, record)| {
                let not_before = codec_ms(record.unfinished.as_ref()?.not_before);
                let position = QueuePosition { not_before, id: uuid::Uuid::from_u128(*key).to_string() };
                (not_before <= now && after.is_none_or(|after| &position > after)).then_some(position)
            }));
        }
        due.sort_unstable();
        due.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok(due)
    }

    async fn pending_of(&self, ids: &[String]) -> Result<Vec<Pending>, StoreError> {
        Ok(ids
            .iter()
            .filter_map(|id| {
                let key = key(id)?;
                let shard = self.shard(key);
                let record = shard.get(&key)?;
                let unfinished = record.unfinished.as_ref()?;
                Some(Pending {
                    message: OutboundMessage {
                        id: id.clone(),
                        channel: record.channel.clone(),
                        from: record.from.to_string(),
                        to: record.to.to_string(),
                        subject: unfinished.subject.clone(),
                        body: unfinished.body.clone(),
                        attachments: record.attachments.to_vec(),
                        tags: record.tags.to_vec(),
                    },
                    attempts: unfinished.attempts,
                    round: unfinished.round,
                    not_before: unfinished.not_before,
                    interrupted: false,
                })
            })
            .collect())
    }

    async fn queued(&self) -> Result<u64, StoreError> {
        let count: usize = self
            .shards
            .iter()
            .map(|shard| lock(shard).values().filter(|record| record.unfinished.is_some()).count())
            .sum();
        Ok(u64::try_from(count).unwrap_or(u64::MAX))
    }

    async fn purge(&self, _before: SystemTime, _batch: u32) -> Result<u64, StoreError> {
        // Finished messages are bounded by count (`retain_finished`) instead.
        Ok(0)
    }

    fn describe(&self) -> String {
        "memory://".to_owned()
    }

    fn is_durable(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: &str) -> OutboundMessage {
        crate::store::test_support::sms(id)
    }

    #[tokio::test]
    async fn idempotency_keys_replay_or_refuse() -> Result<(), StoreError> {
        let store = MemoryStore::new(10);
        let key = |hash: &str| IdempotencyKey { key: "k".into(), request_hash: hash.into() };
        let first = message(&uuid::Uuid::now_v7().to_string());
        assert_eq!(store.insert(&first, Some(&key("h1"))).await?, Inserted::New);
        let again = message(&uuid::Uuid::now_v7().to_string());
        let replay = Inserted::Replay { id: first.id.clone(), channel: "sms".into() };
        assert_eq!(store.insert(&again, Some(&key("h1"))).await?, replay);
        assert!(store.get(&again.id).await?.is_none(), "a replay creates nothing");
        let other = message(&uuid::Uuid::now_v7().to_string());
        assert_eq!(store.insert(&other, Some(&key("h2"))).await?, Inserted::KeyReused);
        assert_eq!(store.find_key(&key("h1")).await?, Some(replay));
        assert_eq!(store.find_key(&key("h2")).await?, Some(Inserted::KeyReused));
        let unknown = IdempotencyKey { key: "other".into(), request_hash: "h1".into() };
        assert_eq!(store.find_key(&unknown).await?, None);
        Ok(())
    }

    #[tokio::test]
    async fn lifecycle_and_retention() -> Result<(), StoreError> {
        let store = MemoryStore::new(2);
        let ids: Vec<String> = (0..3).map(|_| uuid::Uuid::now_v7().to_string()).collect();
        for id in &ids {
            assert_eq!(store.insert(&message(id), None).await?, Inserted::New);
        }
        let status = |view: Option<MessageView>| view.map(|v| v.status);
        assert_eq!(status(store.get(&ids[0]).await?), Some(Status::Queued));
        store.attempt_started(&ids[0], 1, "p").await?;
        assert_eq!(status(store.get(&ids[0]).await?), Some(Status::Sending));
        let sent = Final::Sent { provider: Arc::from("p"), provider_message_id: Some("x".into()) };
        store.finish(&ids[0], sent, None).await?;
        let view = store.get(&ids[0]).await?;
        assert_eq!(
            view.as_ref().map(|v| (v.status, v.provider.as_deref(), v.tags.clone())),
            Some((Status::Sent, Some("p"), vec!["otp".to_owned()]))
        );

        let failure = Failure { code: crate::store::FailureCode::Rejected, message: "no".into() };
        store.finish(&ids[1], Final::Failed { provider: None, failure: failure.clone() }, None).await?;
        store.finish(&ids[2], Final::Failed { provider: None, failure }, None).await?;
        // Two finished messages are retained: the oldest is forgotten.
        assert!(store.get(&ids[0]).await?.is_none());
        assert!(store.get(&ids[1]).await?.is_some() && store.get(&ids[2]).await?.is_some());
        assert!(store.get("not-a-uuid").await?.is_none());
        assert!(store.insert(&message("not-a-uuid"), None).await.is_err());
        Ok(())
    }
}

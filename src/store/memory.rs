//! The in-memory store: nothing survives a restart. Sharded so that concurrent requests and
//! dispatches rarely wait on each other; records are compact and keyed by the id's 128 bits;
//! finished messages beyond a retention count are forgotten, oldest first, so memory stays
//! bounded. Inbound messages are finished when stored; a forgotten message leaves its
//! conversation, and a conversation left with no message is forgotten too.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::SystemTime;

use async_trait::async_trait;
use switchboard_providers::{Channel, OutboundMessage};

use super::codec::ms as codec_ms;
use super::conversation::{family, preview, LastMessage};
use super::delivery::{retried_detail, RETRIED_EVENT};
use super::delivery::{timeline, CallbackJob, Event, ReceiptApplied, ReceiptRecord, Source, MAX_EVENTS};
use super::search::{rows_to_scan, stored_recipient_key, Driving};
use super::{
    replay_or_reused, Attempt, ConversationKey, ConversationMessage, ConversationView, DeliveryStatus,
    Direction, Failure, Final, IdempotencyKey, InboundMessage, Inserted, Listed, MessageFilter, MessageStore,
    MessageView, Meta, OptChange, OptOut, OptOutKey, Page, Pending, QueuePosition, Received, Retried,
    SearchPosition, Status, StoreError, CALLBACK_LEASE, IDEMPOTENCY_WINDOW,
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
    /// Kept for the message's whole life: conversation reads show it (and a retry sends it).
    body: Box<str>,
    /// Outbound: kept for a retry.
    subject: Option<Box<str>>,
    attachments: Box<[String]>,
    /// Until the message is finished: what else dispatch needs to carry on (the sweep and
    /// shutdown read it).
    unfinished: Option<Box<Unfinished>>,
    status: Status,
    direction: Direction,
    conversation_id: i64,
    provider: Option<Arc<str>>,
    provider_message_id: Option<Box<str>>,
    attempts: Vec<Attempt>,
    error: Option<Box<Failure>>,
    tags: Box<[String]>,
    owner: Option<Box<str>>,
    delivery_status: Option<DeliveryStatus>,
    status_callback: Option<Box<str>>,
    /// The provider of its latest attempt start: a receipt naming the message may come from it
    /// before the send's answer is recorded.
    trying: Option<Arc<str>>,
    /// Providers' receipts, as recorded.
    events: Vec<Event>,
    /// Inbound: when the provider says it was sent; outbound: `created_at`.
    occurred_at: SystemTime,
    created_at: SystemTime,
    updated_at: SystemTime,
}

impl Record {
    /// The key this message lets see its conversation: the owner of a message it sent. An
    /// inbound message grants no one a view (a key posting a webhook into someone else's
    /// conversation must not read it).
    fn viewer_owner(&self) -> Option<&str> {
        match self.direction {
            Direction::Outbound => self.owner.as_deref(),
            Direction::Inbound => None,
        }
    }
}

struct Unfinished {
    not_before: SystemTime,
    attempts: u32,
    round: u32,
    /// Attempts made before it was last retried.
    retried_after: u32,
}

/// A conversation and the messages of it the store still holds.
struct Conversation {
    key: ConversationKey,
    last_message_at: SystemTime,
    /// The newest message it ever had (the listing order and cursor); it may have been
    /// forgotten since.
    last_message_id: u128,
    messages: BTreeSet<u128>,
    /// How many of `messages` each API key owns: who may see the conversation.
    owners: HashMap<Box<str>, u32>,
}

/// Conversations and inbound de-duplication, changed together under one lock.
#[derive(Default)]
struct Conversations {
    last_id: i64,
    ids: HashMap<ConversationKey, i64>,
    by_id: HashMap<i64, Conversation>,
    /// `last_message_id` → conversation id: newest activity last.
    activity: BTreeMap<u128, i64>,
    /// Channel family → provider message id → (message id, conversation id).
    inbound: HashMap<String, HashMap<Box<str>, (u128, i64)>>,
}

impl Conversations {
    /// Adds message `id` to the conversation of `key`, created if missing; returns its id.
    fn join(&mut self, key: ConversationKey, id: u128, owner: Option<&str>, now: SystemTime) -> i64 {
        let conversation_id = match self.ids.get(&key) {
            Some(&existing) => existing,
            None => {
                self.last_id += 1;
                self.ids.insert(key.clone(), self.last_id);
                self.last_id
            }
        };
        let conversation = self.by_id.entry(conversation_id).or_insert_with(|| Conversation {
            key,
            last_message_at: now,
            last_message_id: id,
            messages: BTreeSet::new(),
            owners: HashMap::new(),
        });
        conversation.last_message_at = now;
        self.activity.remove(&conversation.last_message_id);
        conversation.last_message_id = conversation.last_message_id.max(id);
        self.activity.insert(conversation.last_message_id, conversation_id);
        conversation.messages.insert(id);
        if let Some(owner) = owner {
            match conversation.owners.get_mut(owner) {
                Some(count) => *count += 1,
                None => {
                    conversation.owners.insert(owner.into(), 1);
                }
            }
        }
        conversation_id
    }

    /// Takes a forgotten message out of its conversation, and the conversation out of the
    /// store once it holds no message.
    fn leave(&mut self, conversation_id: i64, id: u128, owner: Option<&str>) {
        let Some(conversation) = self.by_id.get_mut(&conversation_id) else { return };
        if !conversation.messages.remove(&id) {
            return;
        }
        if let Some(owner) = owner {
            if let Some(count) = conversation.owners.get_mut(owner) {
                *count -= 1;
                if *count == 0 {
                    conversation.owners.remove(owner);
                }
            }
        }
        if conversation.messages.is_empty() {
            if let Some(gone) = self.by_id.remove(&conversation_id) {
                self.ids.remove(&gone.key);
                self.activity.remove(&gone.last_message_id);
            }
        }
    }

    fn inbound_of(&self, family: &str, provider_message_id: &str) -> Option<(u128, i64)> {
        self.inbound.get(family)?.get(provider_message_id).copied()
    }

    /// Forgets the de-duplication entry of inbound message `id`.
    fn forget_inbound(&mut self, family: &str, provider_message_id: &str, id: u128) {
        if let Some(ids) = self.inbound.get_mut(family) {
            if ids.get(provider_message_id).is_some_and(|(message, _)| *message == id) {
                ids.remove(provider_message_id);
            }
            if ids.is_empty() {
                self.inbound.remove(family);
            }
        }
    }

    /// Whether `viewer` may see the conversation.
    fn visible(conversation: &Conversation, viewer: Option<&str>) -> bool {
        viewer.is_none_or(|viewer| conversation.owners.contains_key(viewer))
    }
}

pub struct MemoryStore {
    shards: Vec<Mutex<Shard>>,
    finished: Mutex<VecDeque<u128>>,
    retain_finished: usize,
    /// Idempotency key → (request hash, message id, channel, when).
    keys: Mutex<HashMap<String, (String, String, String, SystemTime)>>,
    /// Locked before a shard when both are held.
    conversations: Mutex<Conversations>,
    /// Opt-outs and when they were recorded; read before every accept and attempt.
    opt_outs: RwLock<BTreeMap<OptOutKey, SystemTime>>,
    /// (provider, provider message id) → message: how receipts find the messages they are about.
    sent_ids: Mutex<HashMap<SentId, u128>>,
    outbox: Mutex<Outbox>,
}

/// (provider, provider message id) of a sent message.
type SentId = (Arc<str>, Box<str>);

/// Callbacks to deliver, by outbox id (the order they were queued in).
#[derive(Default)]
struct Outbox {
    last_id: i64,
    rows: BTreeMap<i64, OutboxRow>,
}

struct OutboxRow {
    job: CallbackJob,
    next_at: SystemTime,
    leased_until: Option<SystemTime>,
}

impl Outbox {
    /// Queues a callback telling of `record`'s state now, if it has a callback URL.
    fn push(&mut self, id: u128, record: &Record, now: SystemTime) {
        let Some(url) = &record.status_callback else { return };
        self.last_id += 1;
        let job = CallbackJob {
            id: self.last_id,
            webhook_id: format!("msg_{}", uuid::Uuid::now_v7().simple()),
            message_id: id_of(id),
            url: url.to_string(),
            status: record.status,
            delivery_status: record.delivery_status,
            created_at: now,
            attempts: 0,
        };
        self.rows.insert(self.last_id, OutboxRow { job, next_at: now, leased_until: None });
    }
}

fn key(id: &str) -> Option<u128> {
    uuid::Uuid::try_parse(id).ok().map(|uuid| uuid.as_u128())
}

fn id_of(key: u128) -> String {
    uuid::Uuid::from_u128(key).to_string()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the map consistent: a panic elsewhere cannot poison it.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn not_a_uuid(id: &str) -> StoreError {
    StoreError::Unavailable(format!("message id {id:?} is not a UUID"))
}

fn taken(id: &str) -> StoreError {
    StoreError::Unavailable(format!("message id {id:?} is already stored"))
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
            conversations: Mutex::new(Conversations::default()),
            opt_outs: RwLock::new(BTreeMap::new()),
            sent_ids: Mutex::new(HashMap::new()),
            outbox: Mutex::new(Outbox::default()),
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

    /// Stores `record` as message `id` in the conversation of `conversation`; the caller holds
    /// the conversations.
    fn store(
        &self,
        conversations: &mut Conversations,
        conversation: ConversationKey,
        id: u128,
        mut record: Record,
    ) -> Result<i64, StoreError> {
        let mut shard = self.shard(id);
        if shard.contains_key(&id) {
            return Err(taken(&id_of(id)));
        }
        record.conversation_id =
            conversations.join(conversation, id, record.viewer_owner(), record.created_at);
        let conversation_id = record.conversation_id;
        shard.insert(id, record);
        Ok(conversation_id)
    }

    /// Counts message `id` as finished, and forgets the oldest finished message beyond the
    /// retention count.
    fn retire(&self, id: u128) {
        let evicted = {
            let mut finished = lock(&self.finished);
            finished.push_back(id);
            if finished.len() > self.retain_finished {
                finished.pop_front()
            } else {
                None
            }
        };
        let Some(old) = evicted else { return };
        let Some(record) = self.shard(old).remove(&old) else { return };
        if let (Some(provider), Some(provider_id)) = (&record.provider, &record.provider_message_id) {
            lock(&self.sent_ids).remove(&(Arc::clone(provider), provider_id.clone()));
        }
        let mut conversations = lock(&self.conversations);
        conversations.leave(record.conversation_id, old, record.viewer_owner());
        if let (Direction::Inbound, Some(provider_id)) = (record.direction, &record.provider_message_id) {
            conversations.forget_inbound(family(record.channel.as_str()), provider_id, old);
        }
    }

    fn opt_outs_read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<OptOutKey, SystemTime>> {
        self.opt_outs.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn opt_outs_write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<OptOutKey, SystemTime>> {
        self.opt_outs.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether message `id` is stored and was handled by `provider` (a receipt naming our id
    /// must come from the provider that sent it).
    fn handled_by(&self, id: u128, provider: &str) -> bool {
        self.shard(id).get(&id).is_some_and(|record| {
            record.direction == Direction::Outbound
                && (record.provider.as_deref() == Some(provider)
                    || record.trying.as_deref() == Some(provider))
        })
    }

    /// The newest message of `conversation` still stored, as the listing shows it.
    fn last_message(&self, conversation: &Conversation) -> Option<LastMessage> {
        conversation.messages.iter().rev().find_map(|&id| {
            let shard = self.shard(id);
            let record = shard.get(&id)?;
            Some(LastMessage {
                id: id_of(id),
                direction: record.direction,
                body_preview: preview(&record.body),
            })
        })
    }
}

/// What `get` shows of message `id`.
fn view(id: String, r: &Record) -> MessageView {
    let mut view = MessageView {
        id,
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
        direction: r.direction,
        conversation_id: Some(r.conversation_id),
        delivery_status: r.delivery_status,
        status_callback: r.status_callback.as_deref().map(str::to_owned),
        events: Vec::new(),
        owner: r.owner.as_deref().map(str::to_owned),
        created_at: r.created_at,
        updated_at: r.updated_at,
    };
    view.events = timeline(&view, r.events.clone());
    view
}

/// Every filter of a search but the time window.
const FILTERS: [Driving; 6] = [
    Driving::Recipient,
    Driving::Status,
    Driving::DeliveryStatus,
    Driving::Provider,
    Driving::Owner,
    Driving::Channel,
];

/// Whether a message matches `filter`'s `field` (any message when it is not given).
fn holds(filter: &MessageFilter, field: Driving, record: &Record) -> bool {
    let wanted = |want: &Option<String>, have: Option<&str>| want.as_deref().is_none_or(|w| have == Some(w));
    match field {
        Driving::Recipient => filter
            .to
            .as_deref()
            .is_none_or(|to| stored_recipient_key(record.channel.as_str(), &record.to) == to),
        Driving::Status => filter.status.is_none_or(|status| status == record.status),
        Driving::DeliveryStatus => {
            filter.delivery_status.is_none_or(|status| Some(status) == record.delivery_status)
        }
        Driving::Provider => wanted(&filter.provider, record.provider.as_deref()),
        Driving::Owner => wanted(&filter.owner, record.owner.as_deref()),
        Driving::Channel => wanted(&filter.channel, Some(record.channel.as_str())),
        Driving::Created => true,
    }
}

#[async_trait]
impl MessageStore for MemoryStore {
    async fn insert_for(
        &self,
        message: &OutboundMessage,
        meta: Meta<'_>,
        key: Option<&IdempotencyKey>,
    ) -> Result<Inserted, StoreError> {
        let Some(id) = self::key(&message.id) else { return Err(not_a_uuid(&message.id)) };
        let owner = meta.owner;
        let now = SystemTime::now();
        let conversation = ConversationKey::of(message.channel.as_str(), &message.from, &message.to);
        let record = Record {
            channel: message.channel.clone(),
            from: message.from.as_str().into(),
            to: message.to.as_str().into(),
            body: message.body.as_str().into(),
            attachments: message.attachments.clone().into_boxed_slice(),
            subject: message.subject.as_deref().map(Box::from),
            unfinished: Some(Box::new(Unfinished {
                not_before: now,
                attempts: 0,
                round: 0,
                retried_after: 0,
            })),
            status: Status::Queued,
            direction: Direction::Outbound,
            conversation_id: 0,
            provider: None,
            provider_message_id: None,
            attempts: Vec::new(),
            error: None,
            tags: message.tags.clone().into_boxed_slice(),
            owner: owner.map(Box::from),
            delivery_status: None,
            trying: None,
            status_callback: meta.status_callback.map(Box::from),
            events: Vec::new(),
            occurred_at: now,
            created_at: now,
            updated_at: now,
        };
        // The key is checked and taken under one lock, before the message is stored.
        let mut keys = key.map(|_| lock(&self.keys));
        if let (Some(keys), Some(key)) = (keys.as_mut(), key) {
            keys.retain(|_, (_, _, _, at)| now.duration_since(*at).unwrap_or_default() < IDEMPOTENCY_WINDOW);
            if let Some((hash, original, channel, _)) = keys.get(&key.key) {
                return Ok(replay_or_reused(key, hash, original.clone(), channel.clone()));
            }
        }
        self.store(&mut lock(&self.conversations), conversation, id, record)?;
        if let (Some(keys), Some(key)) = (keys.as_mut(), key) {
            let entry = (key.request_hash.clone(), message.id.clone(), message.channel.to_string(), now);
            keys.insert(key.key.clone(), entry);
        }
        Ok(Inserted::New)
    }

    async fn attempt_started(&self, id: &str, _number: u32, provider: &str) -> Result<(), StoreError> {
        // Only the status: nothing here survives a crash, so there is nothing to reconcile.
        let Some(key) = key(id) else { return Ok(()) };
        let mut outbox = lock(&self.outbox);
        if let Some(record) = self.shard(key).get_mut(&key) {
            record.trying = Some(Arc::from(provider));
            if record.status == Status::Queued {
                record.status = Status::Sending;
                record.updated_at = SystemTime::now();
                outbox.push(key, record, record.updated_at);
            }
        }
        Ok(())
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
        let Some(finished) = key(id) else { return Ok(()) };
        {
            let mut outbox = lock(&self.outbox);
            let mut shard = self.shard(finished);
            let Some(record) = shard.get_mut(&finished) else { return Ok(()) };
            record.attempts.extend(last_attempt.map(|(_, attempt)| attempt));
            record.unfinished = None;
            record.updated_at = SystemTime::now();
            match outcome {
                Final::Sent { provider, provider_message_id } => {
                    record.status = Status::Sent;
                    if let Some(provider_id) = &provider_message_id {
                        lock(&self.sent_ids)
                            .insert((Arc::clone(&provider), provider_id.as_str().into()), finished);
                    }
                    record.provider = Some(provider);
                    record.provider_message_id = provider_message_id.map(String::into_boxed_str);
                }
                Final::Failed { provider, failure } => {
                    record.status = Status::Failed;
                    record.provider = provider;
                    record.error = Some(Box::new(failure));
                }
            }
            outbox.push(finished, record, record.updated_at);
        }
        self.retire(finished);
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
        Ok(self.shard(key).get(&key).map(|record| view(id.to_owned(), record)))
    }

    /// Every stored message is looked at: this store holds at most its retention count of
    /// finished messages (20,000 by default) and those still queued. A page reads its driving
    /// range as the SQL stores do, so that every store pages alike.
    async fn search_bounded(
        &self,
        filter: &MessageFilter,
        page: Page<SearchPosition>,
        scan_limit: usize,
    ) -> Result<Listed<MessageView, SearchPosition>, StoreError> {
        let driving = Driving::of(filter);
        let in_window = |position: &SearchPosition| {
            filter.since.is_none_or(|since| position.created_at >= since)
                && filter.until.is_none_or(|until| position.created_at < until)
                && page.after.as_ref().is_none_or(|after| position < after)
        };
        // The driving range (position, key, whether every filter matches).
        let mut range: Vec<(SearchPosition, u128, bool)> = Vec::new();
        for shard in &self.shards {
            let shard = lock(shard);
            range.extend(shard.iter().filter_map(|(key, record)| {
                let position = SearchPosition { created_at: codec_ms(record.created_at), id: id_of(*key) };
                (in_window(&position) && holds(filter, driving, record)).then(|| {
                    let matches = FILTERS.iter().all(|field| holds(filter, *field, record));
                    (position, *key, matches)
                })
            }));
        }
        let newest_first = |a: &(SearchPosition, u128, bool), b: &(SearchPosition, u128, bool)| b.0.cmp(&a.0);
        let scan = rows_to_scan(scan_limit, &page);
        if range.len() > scan {
            range.select_nth_unstable_by(scan - 1, newest_first);
            range.truncate(scan);
        }
        range.sort_unstable_by(newest_first);
        let stopped =
            if range.len() == scan { range.last().map(|(position, _, _)| position.clone()) } else { None };
        let views = range
            .into_iter()
            .filter(|(_, _, matches)| *matches)
            .take(page.fetch())
            .filter_map(|(position, key, _)| {
                self.shard(key).get(&key).map(|record| view(position.id, record))
            })
            .collect();
        Ok(Listed::from_scan(views, page.limit, SearchPosition::of, stopped))
    }

    async fn retry(&self, id: &str, key: Option<&IdempotencyKey>) -> Result<Retried, StoreError> {
        let Some(message) = self::key(id) else { return Ok(Retried::NotFound) };
        let now = SystemTime::now();
        // The key is checked and taken under one lock, as for an insert.
        let mut keys = key.map(|_| lock(&self.keys));
        if let (Some(keys), Some(key)) = (keys.as_mut(), key) {
            keys.retain(|_, (_, _, _, at)| now.duration_since(*at).unwrap_or_default() < IDEMPOTENCY_WINDOW);
            if let Some((hash, original, channel, _)) = keys.get(&key.key) {
                return Ok(match replay_or_reused(key, hash, original.clone(), channel.clone()) {
                    Inserted::Replay { .. } => Retried::Replay,
                    Inserted::New | Inserted::KeyReused => Retried::KeyReused,
                });
            }
        }
        let channel = {
            let mut outbox = lock(&self.outbox);
            let mut shard = self.shard(message);
            let Some(record) = shard.get_mut(&message) else { return Ok(Retried::NotFound) };
            if record.status != Status::Failed {
                return Ok(Retried::NotRetryable(record.status));
            }
            let failure = record.error.take();
            record.events.push(Event {
                time: now,
                source: Source::Switchboard,
                kind: RETRIED_EVENT.to_owned(),
                provider: None,
                detail: retried_detail(
                    failure.as_ref().map(|f| f.code.as_str()),
                    failure.as_ref().map(|f| f.message.as_str()),
                ),
            });
            let made = u32::try_from(record.attempts.len()).unwrap_or(u32::MAX);
            record.unfinished =
                Some(Box::new(Unfinished { not_before: now, attempts: made, round: 0, retried_after: made }));
            record.status = Status::Queued;
            record.provider = None;
            record.provider_message_id = None;
            record.delivery_status = None;
            record.trying = None;
            record.updated_at = now;
            outbox.push(message, record, now);
            record.channel.to_string()
        };
        // Queued again: not among the finished messages retention forgets.
        lock(&self.finished).retain(|finished| *finished != message);
        if let (Some(keys), Some(key)) = (keys.as_mut(), key) {
            keys.insert(key.key.clone(), (key.request_hash.clone(), id.to_owned(), channel, now));
        }
        Ok(Retried::Queued)
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
                let position = QueuePosition { not_before, id: id_of(*key) };
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
                        subject: record.subject.as_deref().map(str::to_owned),
                        body: record.body.to_string(),
                        attachments: record.attachments.to_vec(),
                        tags: record.tags.to_vec(),
                    },
                    attempts: unfinished.attempts,
                    round: unfinished.round,
                    not_before: unfinished.not_before,
                    interrupted: false,
                    retried_after: unfinished.retried_after,
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

    async fn insert_inbound(&self, message: &InboundMessage) -> Result<Received, StoreError> {
        let Some(id) = key(&message.id) else { return Err(not_a_uuid(&message.id)) };
        let family = family(message.channel.as_str());
        let now = SystemTime::now();
        // The subject is not kept: nothing this store answers shows it.
        let record = Record {
            subject: None,
            channel: message.channel.clone(),
            from: message.from.as_str().into(),
            to: message.to.as_str().into(),
            body: message.body.as_str().into(),
            attachments: message.attachments.clone().into_boxed_slice(),
            unfinished: None,
            status: Status::Received,
            direction: Direction::Inbound,
            conversation_id: 0,
            provider: message.provider.as_deref().map(Arc::from),
            provider_message_id: Some(message.provider_message_id.as_str().into()),
            attempts: Vec::new(),
            error: None,
            tags: Box::new([]),
            owner: message.owner.as_deref().map(Box::from),
            delivery_status: None,
            trying: None,
            status_callback: None,
            events: Vec::new(),
            occurred_at: message.timestamp,
            created_at: now,
            updated_at: now,
        };
        let received = {
            let mut conversations = lock(&self.conversations);
            if let Some((first, conversation_id)) =
                conversations.inbound_of(family, &message.provider_message_id)
            {
                return Ok(Received { id: id_of(first), conversation_id, duplicate: true, opted_out: false });
            }
            let conversation_id = self.store(&mut conversations, message.conversation_key(), id, record)?;
            conversations
                .inbound
                .entry(family.to_owned())
                .or_default()
                .insert(message.provider_message_id.as_str().into(), (id, conversation_id));
            let opted_out = match message.opt_change {
                Some(OptChange::OptOut) => {
                    let mut opt_outs = self.opt_outs_write();
                    match opt_outs.entry(message.opt_out_key()) {
                        std::collections::btree_map::Entry::Vacant(entry) => {
                            entry.insert(now);
                            true
                        }
                        std::collections::btree_map::Entry::Occupied(_) => false,
                    }
                }
                Some(OptChange::OptIn) => {
                    self.opt_outs_write().remove(&message.opt_out_key());
                    false
                }
                None => false,
            };
            Received { id: message.id.clone(), conversation_id, duplicate: false, opted_out }
        };
        self.retire(id);
        Ok(received)
    }

    async fn conversations(
        &self,
        viewer: Option<&str>,
        page: Page<String>,
    ) -> Result<Listed<ConversationView, String>, StoreError> {
        let fetch = page.fetch();
        let before = match page.after.as_deref() {
            None => Bound::Unbounded,
            Some(after) => match key(after) {
                Some(after) => Bound::Excluded(after),
                // Cursors are message ids: anything else comes after every conversation.
                None => return Ok(Listed { items: Vec::new(), next: None }),
            },
        };
        let conversations = lock(&self.conversations);
        let items: Vec<ConversationView> = conversations
            .activity
            .range((Bound::Unbounded, before))
            .rev()
            .filter_map(|(_, id)| Some((*id, conversations.by_id.get(id)?)))
            .filter(|(_, conversation)| Conversations::visible(conversation, viewer))
            .take(fetch)
            .map(|(id, conversation)| ConversationView {
                id,
                channel: conversation.key.family.clone(),
                participants: [conversation.key.low.clone(), conversation.key.high.clone()],
                message_count: u64::try_from(conversation.messages.len()).unwrap_or(u64::MAX),
                last_message_at: conversation.last_message_at,
                last_message: self.last_message(conversation),
                last_message_id: id_of(conversation.last_message_id),
            })
            .collect();
        drop(conversations);
        Ok(Listed::from_rows(items, page.limit, |item| item.last_message_id.clone()))
    }

    async fn conversation_messages(
        &self,
        id: i64,
        viewer: Option<&str>,
        page: Page<String>,
    ) -> Result<Option<Listed<ConversationMessage, String>>, StoreError> {
        let (fetch, limit) = (page.fetch(), usize::try_from(page.limit).unwrap_or(usize::MAX));
        let ids: Vec<u128> = {
            let conversations = lock(&self.conversations);
            let Some(conversation) = conversations.by_id.get(&id) else { return Ok(None) };
            if !Conversations::visible(conversation, viewer) {
                return Ok(None);
            }
            let after = match page.after.as_deref() {
                None => Bound::Unbounded,
                Some(after) => match key(after) {
                    Some(after) => Bound::Excluded(after),
                    // Cursors are message ids: anything else comes after every message.
                    None => return Ok(Some(Listed { items: Vec::new(), next: None })),
                },
            };
            conversation.messages.range((after, Bound::Unbounded)).take(fetch).copied().collect()
        };
        // Read outside the conversations' lock: bodies may be long. A message forgotten
        // meanwhile is left out.
        let next = (ids.len() > limit).then(|| ids[..limit].last().copied().map(id_of)).flatten();
        let items = ids
            .iter()
            .take(limit)
            .filter_map(|&key| {
                let shard = self.shard(key);
                let record = shard.get(&key)?;
                Some(ConversationMessage {
                    id: id_of(key),
                    direction: record.direction,
                    channel: record.channel.clone(),
                    from: record.from.to_string(),
                    to: record.to.to_string(),
                    body: record.body.to_string(),
                    attachments: record.attachments.to_vec(),
                    status: record.status,
                    provider: record.provider.clone(),
                    timestamp: record.occurred_at,
                    created_at: record.created_at,
                })
            })
            .collect();
        Ok(Some(Listed { items, next }))
    }

    async fn opted_out(&self, key: &OptOutKey) -> Result<bool, StoreError> {
        Ok(self.opt_outs_read().contains_key(key))
    }

    async fn opt_outs(&self, page: Page<OptOutKey>) -> Result<Listed<OptOut, OptOutKey>, StoreError> {
        let fetch = page.fetch();
        let after = page.after.map_or(Bound::Unbounded, Bound::Excluded);
        let items = self
            .opt_outs_read()
            .range((after, Bound::Unbounded))
            .take(fetch)
            .map(|(key, created_at)| OptOut {
                channel: key.family.clone(),
                sender: key.sender.clone(),
                recipient: key.recipient.clone(),
                created_at: *created_at,
            })
            .collect();
        Ok(Listed::from_rows(items, page.limit, OptOut::key))
    }

    async fn remove_opt_out(&self, key: &OptOutKey) -> Result<bool, StoreError> {
        Ok(self.opt_outs_write().remove(key).is_some())
    }

    async fn record_receipts(&self, receipts: &[ReceiptRecord]) -> Result<Vec<ReceiptApplied>, StoreError> {
        let mut applied = Vec::with_capacity(receipts.len());
        for receipt in receipts {
            let by_id = receipt.message_id.as_deref().and_then(key);
            let by_provider = || {
                let provider_id = receipt.provider_message_id.as_deref()?;
                lock(&self.sent_ids)
                    .get(&(Arc::from(receipt.provider.as_str()), Box::from(provider_id)))
                    .copied()
            };
            let found = by_id.filter(|&id| self.handled_by(id, &receipt.provider)).or_else(by_provider);
            let Some(id) = found else {
                applied.push(ReceiptApplied::Unknown);
                continue;
            };
            let mut outbox = lock(&self.outbox);
            let mut shard = self.shard(id);
            let Some(record) = shard.get_mut(&id) else {
                applied.push(ReceiptApplied::Unknown);
                continue;
            };
            if let Some(suppress) = &receipt.suppress {
                self.opt_outs_write().entry(suppress.clone()).or_insert(receipt.time);
            }
            if record.events.len() < MAX_EVENTS {
                record.events.push(Event {
                    time: receipt.time,
                    source: Source::Provider,
                    kind: receipt.event.clone(),
                    provider: Some(Arc::from(receipt.provider.as_str())),
                    detail: serde_json::Value::Object(receipt.detail.clone()),
                });
            }
            let moved = receipt.status.filter(|status| status.may_follow(record.delivery_status));
            if let Some(status) = moved {
                record.delivery_status = Some(status);
                record.updated_at = SystemTime::now();
                outbox.push(id, record, record.updated_at);
            }
            applied.push(ReceiptApplied::Recorded { message_id: id_of(id), moved: moved.is_some() });
        }
        Ok(applied)
    }

    async fn due_callbacks(&self, limit: u32) -> Result<Vec<CallbackJob>, StoreError> {
        let now = SystemTime::now();
        let mut outbox = lock(&self.outbox);
        let mut seen = std::collections::HashSet::new();
        let mut due = Vec::new();
        for row in outbox.rows.values_mut() {
            if due.len() >= usize::try_from(limit).unwrap_or(usize::MAX) {
                break;
            }
            // Only each message's oldest: a later one waits until it is done.
            if !seen.insert(row.job.message_id.clone()) {
                continue;
            }
            if row.next_at <= now && row.leased_until.is_none_or(|until| until <= now) {
                row.leased_until = Some(now + CALLBACK_LEASE);
                due.push(row.job.clone());
            }
        }
        Ok(due)
    }

    async fn callback_done(&self, id: i64) -> Result<(), StoreError> {
        lock(&self.outbox).rows.remove(&id);
        Ok(())
    }

    async fn callback_retry(&self, id: i64, attempts: u32, next_at: SystemTime) -> Result<(), StoreError> {
        if let Some(row) = lock(&self.outbox).rows.get_mut(&id) {
            (row.job.attempts, row.next_at, row.leased_until) = (attempts, next_at, None);
        }
        Ok(())
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
    async fn conformance() {
        crate::store::conformance::run_all(Arc::new(MemoryStore::new(10_000))).await;
    }

    fn new_id() -> String {
        uuid::Uuid::now_v7().to_string()
    }

    /// An inbound SMS from `from` to `+15550001111`, owned by `owner`.
    fn inbound(from: &str, provider_id: &str, owner: Option<&str>) -> InboundMessage {
        InboundMessage {
            id: new_id(),
            channel: Channel::SMS,
            from: from.into(),
            to: "+15550001111".into(),
            subject: None,
            body: format!("from {from}"),
            attachments: vec![],
            provider: None,
            provider_message_id: provider_id.into(),
            timestamp: SystemTime::now(),
            owner: owner.map(str::to_owned),
            opt_change: None,
        }
    }

    /// Checks what `viewer` reads of conversation `id`: its message ids (`None`: not shown),
    /// and how the listing shows it (message count and last message id; `None`: not listed).
    async fn check(
        store: &MemoryStore,
        id: i64,
        viewer: Option<&str>,
        expected: Option<&[&String]>,
        listed: Option<(u64, Option<&String>)>,
    ) -> Result<(), StoreError> {
        let page = || Page { limit: 100, after: None };
        let messages = store.conversation_messages(id, viewer, page()).await?;
        let ids = messages.map(|m| m.items.into_iter().map(|m| m.id).collect::<Vec<_>>());
        let expected_ids = expected.map(|ids| ids.iter().map(|id| (*id).clone()).collect::<Vec<_>>());
        assert_eq!(ids, expected_ids, "messages of conversation {id} read by {viewer:?}");
        let conversations = store.conversations(viewer, page()).await?.items;
        let shown = conversations
            .into_iter()
            .find(|c| c.id == id)
            .map(|c| (c.message_count, c.last_message.map(|m| m.id)));
        let listed = listed.map(|(count, last)| (count, last.cloned()));
        assert_eq!(shown, listed, "conversation {id} as {viewer:?} lists it");
        Ok(())
    }

    #[tokio::test]
    async fn forgotten_messages_leave_their_conversation() -> Result<(), StoreError> {
        let store = MemoryStore::new(2);
        let queued = message(&new_id());
        store.insert(&queued, None).await?;
        let conversation = store.get(&queued.id).await?.and_then(|v| v.conversation_id).unwrap_or_default();
        let first = inbound("+15550002222", "p1", None);
        let second = inbound("+15550002222", "p2", None);
        for m in [&first, &second] {
            store.insert_inbound(m).await?;
        }
        check(
            &store,
            conversation,
            None,
            Some(&[&queued.id, &first.id, &second.id]),
            Some((3, Some(&second.id))),
        )
        .await?;

        // Inbound messages are finished when stored: a third forgets the first, and with it
        // its redelivery record.
        let third = inbound("+15550002222", "p3", None);
        store.insert_inbound(&third).await?;
        assert!(store.get(&first.id).await?.is_none());
        check(
            &store,
            conversation,
            None,
            Some(&[&queued.id, &second.id, &third.id]),
            Some((3, Some(&third.id))),
        )
        .await?;
        let again = inbound("+15550002222", "p1", None);
        let received = store.insert_inbound(&again).await?;
        assert_eq!((received.id.as_str(), received.duplicate), (again.id.as_str(), false));
        let redelivered = store.insert_inbound(&inbound("+15550002222", "p3", None)).await?;
        assert_eq!((redelivered.id.as_str(), redelivered.duplicate), (third.id.as_str(), true));

        // The last message is the newest one still stored.
        let sent = Final::Sent { provider: Arc::from("p"), provider_message_id: None };
        store.finish(&queued.id, sent, None).await?;
        check(&store, conversation, None, Some(&[&queued.id, &again.id]), Some((2, Some(&again.id)))).await?;
        Ok(())
    }

    #[tokio::test]
    async fn forgotten_owners_and_conversations() -> Result<(), StoreError> {
        let store = MemoryStore::new(1);
        let owned = message(&new_id());
        store.insert_for(&owned, Meta::owned_by("k"), None).await?;
        let shared = store.get(&owned.id).await?.and_then(|v| v.conversation_id).unwrap_or_default();
        check(&store, shared, Some("k"), Some(&[&owned.id]), Some((1, Some(&owned.id)))).await?;
        let sent = Final::Sent { provider: Arc::from("p"), provider_message_id: None };
        store.finish(&owned.id, sent, None).await?;
        // An inbound message a key posted grants it no view.
        let posted = inbound("+15550002222", "p0", Some("posting-key"));
        store.insert_inbound(&posted).await?;
        check(&store, shared, Some("posting-key"), None, None).await?;
        // The owner's only message is forgotten: the conversation is no longer theirs.
        let unowned = inbound("+15550002222", "p2", None);
        store.insert_inbound(&unowned).await?;
        check(&store, shared, Some("k"), None, None).await?;
        check(&store, shared, None, Some(&[&unowned.id]), Some((1, Some(&unowned.id)))).await?;
        // A conversation left with no message is forgotten; the pair's next one is new.
        let other = inbound("+15550003333", "p3", None);
        let other_conversation = store.insert_inbound(&other).await?.conversation_id;
        check(&store, shared, None, None, None).await?;
        check(&store, other_conversation, None, Some(&[&other.id]), Some((1, Some(&other.id)))).await?;
        let back = inbound("+15550002222", "p4", None);
        assert_eq!(store.insert_inbound(&back).await?.conversation_id, other_conversation + 1);
        Ok(())
    }

    #[tokio::test]
    async fn a_stored_id_is_refused() -> Result<(), StoreError> {
        let store = MemoryStore::new(10);
        let sent = message(&new_id());
        store.insert(&sent, None).await?;
        assert!(store.insert(&sent, None).await.is_err(), "an outbound id twice");
        let mut received = inbound("+15550002222", "p1", None);
        received.id = sent.id.clone();
        assert!(store.insert_inbound(&received).await.is_err(), "an inbound id already stored");
        let listed = store.conversations(None, Page { limit: 10, after: None }).await?.items;
        assert_eq!(listed.iter().map(|c| c.message_count).collect::<Vec<_>>(), [1], "nothing joined twice");
        Ok(())
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

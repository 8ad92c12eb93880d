//! Where accepted messages, their attempts and the dispatch queue are kept: the
//! [`MessageStore`] trait, the in-memory store (`memory://`) and the SQLite store
//! (`sqlite://PATH`, the default).

#[macro_use]
mod codec;
#[cfg(test)]
pub(crate) mod conformance;
pub mod conversation;
pub mod delivery;
mod memory;
mod postgres;
pub mod search;
mod sqlite;

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use serde::Serialize;
use switchboard_providers::{Channel, ErrorClass, OutboundMessage, SendError};

pub use conversation::{
    ConversationKey, ConversationMessage, ConversationView, Direction, InboundMessage, Listed, OptChange,
    OptOut, OptOutKey, Page, Received,
};
pub use delivery::{CallbackJob, Event, ReceiptApplied, ReceiptRecord, Source};
pub use memory::MemoryStore;
pub use postgres::{redact as redact_url, PostgresStore};
pub use search::{MessageFilter, Retried, SearchPosition};
pub use sqlite::SqliteStore;
pub use switchboard_providers::receipt::DeliveryStatus;

/// How long an `Idempotency-Key` is remembered.
pub const IDEMPOTENCY_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The answer to a request whose idempotency key is on record for `recorded_hash`.
pub fn replay_or_reused(key: &IdempotencyKey, recorded_hash: &str, id: String, channel: String) -> Inserted {
    if key.request_hash == recorded_hash {
        Inserted::Replay { id, channel }
    } else {
        Inserted::KeyReused
    }
}

/// A message's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Accepted; no attempt started yet.
    Queued,
    /// Attempts under way or a retry scheduled.
    Sending,
    /// A provider accepted it.
    Sent,
    /// Given up on: rejected, out of attempts, no route, or opted out.
    Failed,
    /// An inbound message: stored as it came.
    Received,
}

impl Status {
    pub const ALL: [Status; 5] =
        [Status::Queued, Status::Sending, Status::Sent, Status::Failed, Status::Received];

    /// The status a name (as [`Status::as_str`] writes it) stands for.
    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|status| status.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Sending => "sending",
            Status::Sent => "sent",
            Status::Failed => "failed",
            Status::Received => "received",
        }
    }
}

/// How one attempt ended; also the `outcome` label of `switchboard_dispatch_attempts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = AttemptOutcome)]
pub enum Outcome {
    Success,
    RateLimited,
    Error,
    Timeout,
    Rejected,
    Misconfigured,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Success,
        Outcome::RateLimited,
        Outcome::Error,
        Outcome::Timeout,
        Outcome::Rejected,
        Outcome::Misconfigured,
    ];

    /// The outcome of an attempt that failed with `error`, or succeeded (`None`).
    pub fn of(error: Option<&SendError>) -> Outcome {
        match error {
            None => Outcome::Success,
            Some(SendError::RateLimited { .. }) => Outcome::RateLimited,
            Some(SendError::Timeout) => Outcome::Timeout,
            Some(SendError::Rejected { .. }) => Outcome::Rejected,
            Some(SendError::Misconfigured { .. }) => Outcome::Misconfigured,
            Some(SendError::NotSent { .. } | SendError::Ambiguous { .. }) => Outcome::Error,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::RateLimited => "rate_limited",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
            Outcome::Rejected => "rejected",
            Outcome::Misconfigured => "misconfigured",
        }
    }
}

/// One attempt to hand a message to a provider.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Attempt {
    #[schema(value_type = String)]
    pub provider: Arc<str>,
    pub outcome: Outcome,
    #[schema(schema_with = crate::api_schema::error_class)]
    pub error_class: Option<ErrorClass>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub latency_ms: u64,
    #[serde(serialize_with = "rfc3339")]
    #[schema(schema_with = crate::api_schema::date_time)]
    pub time: SystemTime,
}

/// Why a message failed for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Failure {
    pub code: FailureCode,
    pub message: String,
}

/// A failed message's `error.code`: what kind of end it had. Written and shown as
/// [`FailureCode::as_str`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCode {
    /// A provider refused the message for good (a permanent error).
    Rejected,
    /// Every attempt the route allows was used.
    AttemptsExhausted,
    /// The active config had no route for its channel when it was picked up.
    NoRoute,
    /// Dispatching it failed unexpectedly (the service log has the cause).
    InternalError,
    /// Its recipient opted out of messages from its sender after it was accepted.
    OptedOut,
    /// Its recipient's address was suppressed (a bounce, a spam report) after it was accepted.
    Suppressed,
}

impl FailureCode {
    pub const ALL: [FailureCode; 6] = [
        FailureCode::Rejected,
        FailureCode::AttemptsExhausted,
        FailureCode::NoRoute,
        FailureCode::InternalError,
        FailureCode::OptedOut,
        FailureCode::Suppressed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureCode::Rejected => "rejected",
            FailureCode::AttemptsExhausted => "attempts_exhausted",
            FailureCode::NoRoute => "no_route",
            FailureCode::InternalError => "internal_error",
            FailureCode::OptedOut => "opted_out",
            FailureCode::Suppressed => "suppressed",
        }
    }

    /// The code a store column holds. A text this version does not know (written by a newer
    /// one, sharing a PostgreSQL store) reads as `internal_error`, with a warning, never as a
    /// failure of the whole read.
    pub fn from_stored(text: &str) -> FailureCode {
        FailureCode::ALL.into_iter().find(|code| code.as_str() == text).unwrap_or_else(|| {
            tracing::warn!(
                code = text,
                "a stored failure code this version does not know; shown as internal_error"
            );
            FailureCode::InternalError
        })
    }
}

impl utoipa::PartialSchema for FailureCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::api_schema::string_enum(FailureCode::ALL.map(FailureCode::as_str)).into()
    }
}

impl utoipa::ToSchema for FailureCode {}

impl Serialize for FailureCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// What `GET /v1/messages/{id}` shows: never the body.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct MessageView {
    pub id: String,
    #[schema(value_type = String)]
    pub channel: Channel,
    pub from: String,
    /// The recipient; shown in full only to the message's owner (see `http::get_message`).
    pub to: String,
    pub attachments: Vec<String>,
    pub status: Status,
    /// The provider that finally handled it (sent it, or gave the final answer).
    #[schema(value_type = Option<String>)]
    pub provider: Option<Arc<str>>,
    pub provider_message_id: Option<String>,
    pub attempts: Vec<Attempt>,
    pub error: Option<Failure>,
    pub tags: Vec<String>,
    pub direction: Direction,
    /// The conversation it belongs to; `null` for messages accepted before two-way messaging.
    pub conversation_id: Option<i64>,
    /// What the providers' receipts say became of it; `None` until the first one.
    #[schema(schema_with = crate::api_schema::delivery_status)]
    pub delivery_status: Option<DeliveryStatus>,
    /// Where changes of `status` and `delivery_status` are POSTed.
    pub status_callback: Option<String>,
    /// Its timeline, oldest first (made by `delivery::timeline`).
    pub events: Vec<Event>,
    /// The API key (by name) that created it; only that key may read it.
    #[serde(skip)]
    pub owner: Option<String>,
    #[serde(serialize_with = "rfc3339")]
    #[schema(schema_with = crate::api_schema::date_time)]
    pub created_at: SystemTime,
    #[serde(serialize_with = "rfc3339")]
    #[schema(schema_with = crate::api_schema::date_time)]
    pub updated_at: SystemTime,
}

/// How a message ended.
#[derive(Debug, Clone)]
pub enum Final {
    Sent { provider: Arc<str>, provider_message_id: Option<String> },
    Failed { provider: Option<Arc<str>>, failure: Failure },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the message store is unavailable: {0}")]
    Unavailable(String),
    /// On a shared queue: another instance holds the message now; it is theirs to finish.
    #[error("the lease on message {0} was taken over by another instance")]
    LeaseLost(String),
    #[error("unsupported store URL {0:?}: use sqlite://PATH, postgres://… or memory://")]
    UnsupportedUrl(String),
}

/// What a new message carries besides what its provider is given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meta<'a> {
    /// The API key (by name) that sent it; `None` with authentication off.
    pub owner: Option<&'a str>,
    /// Where its changes of status are POSTed (checked by the caller).
    pub status_callback: Option<&'a str>,
}

impl<'a> Meta<'a> {
    /// A message sent by `owner`, without a callback.
    pub fn owned_by(owner: &'a str) -> Meta<'a> {
        Meta { owner: Some(owner), status_callback: None }
    }
}

/// An `Idempotency-Key` and a digest of the request that came with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    pub request_hash: String,
}

/// What inserting a message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// Stored and queued.
    New,
    /// The key was used within the window for the same request: nothing was created; this was
    /// the original answer's message.
    Replay { id: String, channel: String },
    /// The key was used within the window for a different request.
    KeyReused,
}

/// A queued message's place in the queue: when it is due, then its id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueuePosition {
    /// Unix milliseconds.
    pub not_before: i64,
    pub id: String,
}

/// A message still to be dispatched, as found in a store at start-up.
#[derive(Debug, Clone)]
pub struct Pending {
    pub message: OutboundMessage,
    pub attempts: u32,
    pub round: u32,
    pub not_before: SystemTime,
    /// An attempt was started and never recorded: the provider may have sent it already.
    pub interrupted: bool,
    /// Attempts made before the message was last retried: they do not count against its
    /// route's `max_attempts` (0: never retried).
    pub retried_after: u32,
}

#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Stores a new message as `queued` together with its queue entry and its idempotency key,
    /// all or nothing.
    ///
    /// The message joins its conversation ([`ConversationKey::of`] its channel, `from` and
    /// `to`), which it creates if it is the pair's first message, in the same write.
    async fn insert_for(
        &self,
        message: &OutboundMessage,
        meta: Meta<'_>,
        key: Option<&IdempotencyKey>,
    ) -> Result<Inserted, StoreError>;
    /// What an insert with this idempotency key would answer without inserting: `Replay` or
    /// `KeyReused` while the key is live, `None` when it is unknown or expired.
    async fn find_key(&self, key: &IdempotencyKey) -> Result<Option<Inserted>, StoreError>;
    /// [`MessageStore::insert_for`] with no owner (authentication off) and no callback.
    async fn insert(
        &self,
        message: &OutboundMessage,
        key: Option<&IdempotencyKey>,
    ) -> Result<Inserted, StoreError> {
        self.insert_for(message, Meta::default(), key).await
    }
    /// Records that attempt `number` (from 1) is about to call `provider`; the message is
    /// `sending` from its first attempt on.
    async fn attempt_started(&self, id: &str, number: u32, provider: &str) -> Result<(), StoreError>;
    /// Records how attempt `number` ended.
    async fn record_attempt(&self, id: &str, number: u32, attempt: Attempt) -> Result<(), StoreError>;
    /// Stores when a message may next be tried, so a restart resumes the wait.
    async fn schedule(
        &self,
        id: &str,
        not_before: SystemTime,
        attempts: u32,
        round: u32,
    ) -> Result<(), StoreError>;
    /// Ends a message: `sent` or `failed`; it leaves the queue. `last_attempt` (number and
    /// record), when given, is stored in the same write.
    async fn finish(
        &self,
        id: &str,
        outcome: Final,
        last_attempt: Option<(u32, Attempt)>,
    ) -> Result<(), StoreError>;
    async fn get(&self, id: &str) -> Result<Option<MessageView>, StoreError>;
    /// The stored messages among `ids` as [`MessageStore::get`] shows them, in no particular
    /// order (an id not stored is left out), read as of one moment: one read for many (the
    /// callback outbox reads a batch's messages so).
    async fn views(&self, ids: &[String]) -> Result<Vec<MessageView>, StoreError> {
        let mut views = Vec::with_capacity(ids.len());
        for id in ids {
            views.extend(self.get(id).await?);
        }
        Ok(views)
    }
    /// The messages matching `filter`, newest first (by creation time, then id), as
    /// [`MessageStore::get`] shows them; the cursor is the last one's [`SearchPosition`], or where
    /// the page stopped reading (see [`search`]): a page may be short, even empty, with a cursor.
    /// Reads at most [`search::SEARCH_SCAN_LIMIT`] rows.
    async fn search(
        &self,
        filter: &MessageFilter,
        page: Page<SearchPosition>,
    ) -> Result<Listed<MessageView, SearchPosition>, StoreError> {
        self.search_bounded(filter, page, search::SEARCH_SCAN_LIMIT).await
    }
    /// [`MessageStore::search`], reading at most `scan_limit` rows of the page's driving range
    /// ([`search::rows_to_scan`]; tests page with a small one).
    async fn search_bounded(
        &self,
        filter: &MessageFilter,
        page: Page<SearchPosition>,
        scan_limit: usize,
    ) -> Result<Listed<MessageView, SearchPosition>, StoreError>;
    /// Puts a `failed` message back in the queue (see [`Retried::Queued`]), due now and held by
    /// no instance, so whichever dispatcher looks first takes it. With `key`, the key is recorded
    /// in the same write; a key already recorded answers [`Retried::Replay`] (same request) or
    /// [`Retried::KeyReused`] and changes nothing.
    async fn retry(&self, id: &str, key: Option<&IdempotencyKey>) -> Result<Retried, StoreError>;
    /// Every message still queued, for the dispatcher to resume after a restart.
    async fn pending(&self) -> Result<Vec<Pending>, StoreError>;
    /// Deletes up to `batch` messages finished before `before` (with their attempts) and
    /// expired idempotency keys; returns how many messages went.
    async fn purge(&self, before: SystemTime, batch: u32) -> Result<u64, StoreError>;
    /// Whether several instances may share this store's queue. Such a store leases each message
    /// to one worker: new messages are leased to the instance that accepted them, others are
    /// taken with [`MessageStore::claim`] and [`MessageStore::claim_due`].
    fn shared_queue(&self) -> bool {
        false
    }

    /// Takes the lease on a message this instance scheduled, now due. `false`: another
    /// instance holds it, or it is finished.
    async fn claim(&self, _id: &str) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Takes the lease on up to `limit` due messages nobody holds: new or scheduled ones whose
    /// instance let go, and those of an instance that died (its leases expired).
    async fn claim_due(&self, _limit: u32) -> Result<Vec<Pending>, StoreError> {
        Ok(Vec::new())
    }

    /// Ids of the due messages in the queue this instance answers for (every queued message; on a
    /// shared queue, those leased to it), ordered by `(not_before, id)`, after `after`, at most
    /// `limit`. The dispatcher compares them with what it holds: the store's queue is the truth.
    async fn due(
        &self,
        _after: Option<&QueuePosition>,
        _limit: u32,
    ) -> Result<Vec<QueuePosition>, StoreError> {
        Ok(Vec::new())
    }

    /// The messages among `ids` still in the queue (on a shared queue: still leased to this
    /// instance), to be dispatched again.
    async fn pending_of(&self, _ids: &[String]) -> Result<Vec<Pending>, StoreError> {
        Ok(Vec::new())
    }

    /// Lets go of every message this instance holds on a shared queue, once its workers
    /// stopped (a graceful stop): other instances may take them at once instead of waiting for
    /// the leases to run out. Returns how many were let go.
    async fn release_all(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// How many messages the queue holds (on a shared queue: all instances' together).
    async fn queued(&self) -> Result<u64, StoreError>;

    /// Whether the store takes writes now: `/readyz` asks. Cheap while nothing failed; after a
    /// failed write it tries a real one.
    async fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Stores an inbound message in its conversation (created by it if new) together with the
    /// opt-out change its body makes, all or nothing. The same (channel family, provider
    /// message id) stored before — by this instance or another sharing the store — writes
    /// nothing and answers the first message's id and conversation with `duplicate: true`.
    async fn insert_inbound(&self, message: &InboundMessage) -> Result<Received, StoreError>;

    /// Conversations, newest activity first (see [`ConversationView`]). `viewer`: `None` sees
    /// every conversation; `Some(key)` only those holding an outbound message that key sent
    /// (an inbound message a key posted grants no view).
    async fn conversations(
        &self,
        viewer: Option<&str>,
        page: Page<String>,
    ) -> Result<Listed<ConversationView, String>, StoreError>;

    /// A conversation's messages, oldest first (see [`ConversationMessage`]). `None` when there
    /// is no such conversation or `viewer` may not see it (the same rule as
    /// [`MessageStore::conversations`]).
    async fn conversation_messages(
        &self,
        id: i64,
        viewer: Option<&str>,
        page: Page<String>,
    ) -> Result<Option<Listed<ConversationMessage, String>>, StoreError>;

    /// Whether the pair is opted out (asked before a message is accepted and before each of its
    /// attempts).
    async fn opted_out(&self, key: &OptOutKey) -> Result<bool, StoreError>;

    /// The first of `keys` that is opted out, by position. Default: [`MessageStore::opted_out`]
    /// for each in turn; a store that asks a server answers them in one query.
    async fn first_opted_out(&self, keys: &[OptOutKey]) -> Result<Option<usize>, StoreError> {
        for (position, key) in keys.iter().enumerate() {
            if self.opted_out(key).await? {
                return Ok(Some(position));
            }
        }
        Ok(None)
    }

    /// Recorded opt-outs, ordered by (channel, sender, recipient); the cursor is the last key.
    async fn opt_outs(&self, page: Page<OptOutKey>) -> Result<Listed<OptOut, OptOutKey>, StoreError>;

    /// Removes an opt-out; `false` when there was none.
    async fn remove_opt_out(&self, key: &OptOutKey) -> Result<bool, StoreError>;

    /// Records providers' receipts, in order, all or nothing: each is matched to its message
    /// (by Switchboard's id, else by the provider's message id among the messages that provider
    /// handled), recorded as an event, and moves the message's delivery status when
    /// [`DeliveryStatus::may_follow`] allows — which queues a callback when the message has a
    /// `status_callback`. A receipt's suppression is recorded when its message was found. At
    /// most [`delivery::MAX_EVENTS`] provider events are kept per message.
    async fn record_receipts(&self, receipts: &[ReceiptRecord]) -> Result<Vec<ReceiptApplied>, StoreError>;

    /// Takes up to `limit` callbacks due now, the oldest of each message only (callbacks of one
    /// message go out in order), leased to this instance for [`CALLBACK_LEASE`]: another instance
    /// sharing the store does not take them meanwhile.
    async fn due_callbacks(&self, limit: u32) -> Result<Vec<CallbackJob>, StoreError>;

    /// A callback was delivered, or given up on: it leaves the outbox.
    async fn callback_done(&self, id: i64) -> Result<(), StoreError>;

    /// A delivery failed: tried again at `next_at` (the lease ends).
    async fn callback_retry(&self, id: i64, attempts: u32, next_at: SystemTime) -> Result<(), StoreError>;

    /// A short description for logs (`memory://`, `sqlite://…`); never a password.
    fn describe(&self) -> String;
    /// Whether accepted messages survive a restart.
    fn is_durable(&self) -> bool;
}

/// How long a callback taken with [`MessageStore::due_callbacks`] is this instance's to deliver.
pub const CALLBACK_LEASE: std::time::Duration = std::time::Duration::from_secs(60);

/// Why a message may not go to its recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// The recipient opted out of one of the senders (STOP).
    OptedOut,
    /// The address is on the suppression list (a bounce, a spam report).
    Suppressed,
}

/// Whether `to` may not get messages on `channel` from any of `senders` (a route's
/// `Route::senders` for the message): suppressed, or opted out of one of them. Asked before a
/// message is accepted and before each attempt.
pub async fn blocked(
    store: &dyn MessageStore,
    channel: &str,
    senders: &[&str],
    to: &str,
) -> Result<Option<Blocked>, StoreError> {
    let mut keys = Vec::with_capacity(senders.len() + 1);
    keys.push(OptOutKey::suppression(channel, to));
    keys.extend(senders.iter().map(|sender| OptOutKey::of(channel, sender, to)));
    Ok(store.first_opted_out(&keys).await?.map(|position| match position {
        0 => Blocked::Suppressed,
        _ => Blocked::OptedOut,
    }))
}

impl Blocked {
    /// How a message already accepted ends when it is blocked before an attempt.
    pub fn failure(self) -> Failure {
        match self {
            Blocked::OptedOut => {
                Failure { code: FailureCode::OptedOut, message: conversation::OPTED_OUT.to_owned() }
            }
            Blocked::Suppressed => {
                Failure { code: FailureCode::Suppressed, message: delivery::SUPPRESSED.to_owned() }
            }
        }
    }
}

/// Opens the store a URL names: `memory://`, `sqlite://PATH` (created if missing) or
/// `postgres://…`; migrations run.
pub async fn open(
    url: &str,
    memory_retention: usize,
) -> Result<std::sync::Arc<dyn MessageStore>, StoreError> {
    if url == "memory://" || url == "memory:" {
        return Ok(std::sync::Arc::new(MemoryStore::new(memory_retention)));
    }
    if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
        if path.is_empty() {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        }
        return Ok(std::sync::Arc::new(SqliteStore::open(path).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(std::sync::Arc::new(PostgresStore::open(url).await?));
    }
    Err(StoreError::UnsupportedUrl(redact_url(url)))
}

pub(crate) fn rfc3339<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*time))
}

#[cfg(test)]
mod failure_code_tests {
    use super::FailureCode;

    #[test]
    fn codes_read_back_as_written() {
        for code in FailureCode::ALL {
            // Every variant is listed (the match fails to compile when one is added)…
            match code {
                FailureCode::Rejected
                | FailureCode::AttemptsExhausted
                | FailureCode::NoRoute
                | FailureCode::InternalError
                | FailureCode::OptedOut
                | FailureCode::Suppressed => {}
            }
            // …and reads back as itself, shown as stored.
            assert_eq!(FailureCode::from_stored(code.as_str()), code);
            assert_eq!(serde_json::to_value(code).ok(), Some(serde_json::json!(code.as_str())));
        }
        let names: Vec<&str> = FailureCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            ["rejected", "attempts_exhausted", "no_route", "internal_error", "opted_out", "suppressed"]
        );
        assert_eq!(FailureCode::from_stored("from_a_newer_version"), FailureCode::InternalError);
    }
}

/// Helpers for the stores' tests.
#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::Arc;

    use switchboard_providers::{Channel, OutboundMessage};

    use super::codec::unavailable;
    use super::{MessageStore, StoreError};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, SystemTime};

    use async_trait::async_trait;

    use super::{
        Attempt, CallbackJob, ConversationMessage, ConversationView, Final, IdempotencyKey, InboundMessage,
        Inserted, Listed, MemoryStore, MessageFilter, MessageView, Meta, OptOut, OptOutKey, Page, Pending,
        QueuePosition, ReceiptApplied, ReceiptRecord, Received, Retried, SearchPosition,
    };

    /// An SMS with the given id, tagged `otp`.
    pub(crate) fn sms(id: &str) -> OutboundMessage {
        OutboundMessage {
            id: id.to_owned(),
            channel: Channel::SMS,
            from: "+15550001111".into(),
            to: "+15550002222".into(),
            subject: None,
            body: "hi".into(),
            attachments: vec![],
            tags: vec!["otp".into()],
        }
    }

    /// Inserts `count` messages at once, the middle one reusing an id already stored: it must
    /// fail alone (a batch refused for one bad row is retried row by row), every other message
    /// must be stored. Returns the ids inserted.
    pub(crate) async fn concurrent_inserts_with_a_duplicate(
        store: Arc<dyn MessageStore>,
        count: usize,
    ) -> Result<Vec<String>, StoreError> {
        let taken = uuid::Uuid::now_v7().to_string();
        store.insert(&sms(&taken), None).await?;
        let duplicate = count / 2;
        let ids: Vec<String> = (0..count)
            .map(|i| if i == duplicate { taken.clone() } else { uuid::Uuid::now_v7().to_string() })
            .collect();
        let tasks: Vec<_> = ids
            .iter()
            .map(|id| {
                let (store, message) = (Arc::clone(&store), sms(id));
                tokio::spawn(async move { store.insert(&message, None).await })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.map_err(unavailable)?);
        }
        assert!(results[duplicate].is_err(), "the duplicate must fail");
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), count - 1);
        for (i, id) in ids.iter().enumerate() {
            let view = store.get(id).await?;
            assert_eq!(view.map(|v| v.tags), Some(vec!["otp".to_owned()]), "message {i}");
        }
        Ok(ids)
    }

    /// A store that delegates to a [`MemoryStore`] and misbehaves on demand: it acknowledges
    /// inserts late (after committing them), or refuses a number of progress writes.
    pub(crate) struct Faulty {
        pub(crate) inner: MemoryStore,
        /// Wait after committing an insert before answering.
        pub(crate) insert_ack_delay: Duration,
        /// Progress writes (attempt start, attempt, retry time, end) still to refuse.
        pub(crate) refuse_writes: AtomicU32,
        pub(crate) refused: AtomicU32,
        /// Callback outcomes (done, retry) still to refuse.
        pub(crate) refuse_callback_writes: AtomicU32,
    }

    impl Faulty {
        pub(crate) fn new() -> Faulty {
            Faulty {
                inner: MemoryStore::new(100),
                insert_ack_delay: Duration::ZERO,
                refuse_writes: AtomicU32::new(0),
                refused: AtomicU32::new(0),
                refuse_callback_writes: AtomicU32::new(0),
            }
        }

        fn callback_write(&self) -> Result<(), StoreError> {
            let refuse = self
                .refuse_callback_writes
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            match refuse {
                Ok(_) => Err(StoreError::Unavailable("disk full".into())),
                Err(_) => Ok(()),
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
            meta: Meta<'_>,
            key: Option<&IdempotencyKey>,
        ) -> Result<Inserted, StoreError> {
            let inserted = self.inner.insert_for(message, meta, key).await;
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
        async fn finish(
            &self,
            id: &str,
            outcome: Final,
            last: Option<(u32, Attempt)>,
        ) -> Result<(), StoreError> {
            self.progress()?;
            self.inner.finish(id, outcome, last).await
        }
        async fn get(&self, id: &str) -> Result<Option<MessageView>, StoreError> {
            self.inner.get(id).await
        }
        async fn search_bounded(
            &self,
            filter: &MessageFilter,
            page: Page<SearchPosition>,
            scan_limit: usize,
        ) -> Result<Listed<MessageView, SearchPosition>, StoreError> {
            self.inner.search_bounded(filter, page, scan_limit).await
        }
        async fn retry(&self, id: &str, key: Option<&IdempotencyKey>) -> Result<Retried, StoreError> {
            self.inner.retry(id, key).await
        }
        async fn pending(&self) -> Result<Vec<Pending>, StoreError> {
            self.inner.pending().await
        }
        async fn purge(&self, before: SystemTime, batch: u32) -> Result<u64, StoreError> {
            self.inner.purge(before, batch).await
        }
        async fn due(
            &self,
            after: Option<&QueuePosition>,
            limit: u32,
        ) -> Result<Vec<QueuePosition>, StoreError> {
            self.inner.due(after, limit).await
        }
        async fn pending_of(&self, ids: &[String]) -> Result<Vec<Pending>, StoreError> {
            self.inner.pending_of(ids).await
        }
        async fn queued(&self) -> Result<u64, StoreError> {
            self.inner.queued().await
        }
        async fn insert_inbound(&self, message: &InboundMessage) -> Result<Received, StoreError> {
            self.inner.insert_inbound(message).await
        }
        async fn conversations(
            &self,
            viewer: Option<&str>,
            page: Page<String>,
        ) -> Result<Listed<ConversationView, String>, StoreError> {
            self.inner.conversations(viewer, page).await
        }
        async fn conversation_messages(
            &self,
            id: i64,
            viewer: Option<&str>,
            page: Page<String>,
        ) -> Result<Option<Listed<ConversationMessage, String>>, StoreError> {
            self.inner.conversation_messages(id, viewer, page).await
        }
        async fn opted_out(&self, key: &OptOutKey) -> Result<bool, StoreError> {
            self.inner.opted_out(key).await
        }
        async fn opt_outs(&self, page: Page<OptOutKey>) -> Result<Listed<OptOut, OptOutKey>, StoreError> {
            self.inner.opt_outs(page).await
        }
        async fn remove_opt_out(&self, key: &OptOutKey) -> Result<bool, StoreError> {
            self.inner.remove_opt_out(key).await
        }
        async fn record_receipts(
            &self,
            receipts: &[ReceiptRecord],
        ) -> Result<Vec<ReceiptApplied>, StoreError> {
            self.inner.record_receipts(receipts).await
        }
        async fn due_callbacks(&self, limit: u32) -> Result<Vec<CallbackJob>, StoreError> {
            self.inner.due_callbacks(limit).await
        }
        async fn callback_done(&self, id: i64) -> Result<(), StoreError> {
            self.callback_write()?;
            self.inner.callback_done(id).await
        }
        async fn callback_retry(
            &self,
            id: i64,
            attempts: u32,
            next_at: SystemTime,
        ) -> Result<(), StoreError> {
            self.callback_write()?;
            self.inner.callback_retry(id, attempts, next_at).await
        }
        fn describe(&self) -> String {
            "faulty://".into()
        }
        fn is_durable(&self) -> bool {
            false
        }
    }
}

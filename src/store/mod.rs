//! Where accepted messages and their attempts are kept: the [`MessageStore`] trait and its
//! in-memory implementation. A durable store implements the same trait.

mod memory;

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use serde::Serialize;
use switchboard_providers::{Channel, ErrorClass, OutboundMessage, SendError};

pub use memory::MemoryStore;

/// A message's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Accepted; no attempt started yet.
    Queued,
    /// Attempts under way or a retry scheduled.
    Sending,
    /// A provider accepted it.
    Sent,
    /// Given up on: rejected, out of attempts, or no route.
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Sending => "sending",
            Status::Sent => "sent",
            Status::Failed => "failed",
        }
    }
}

/// How one attempt ended; also the `outcome` label of `switchboard_dispatch_attempts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    RateLimited,
    Error,
    Timeout,
    Rejected,
    Misconfigured,
}

impl Outcome {
    pub fn of(result: &Result<(), &SendError>) -> Outcome {
        match result {
            Ok(()) => Outcome::Success,
            Err(SendError::RateLimited { .. }) => Outcome::RateLimited,
            Err(SendError::Timeout) => Outcome::Timeout,
            Err(SendError::Rejected { .. }) => Outcome::Rejected,
            Err(SendError::Misconfigured { .. }) => Outcome::Misconfigured,
            Err(SendError::NotSent { .. } | SendError::Ambiguous { .. }) => Outcome::Error,
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
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempt {
    pub provider: Arc<str>,
    pub outcome: Outcome,
    pub error_class: Option<ErrorClass>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub latency_ms: u64,
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
}

/// Why a message failed for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// `rejected`, `attempts_exhausted` or `no_route`.
    pub code: String,
    pub message: String,
}

/// What `GET /v1/messages/{id}` shows: never the body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MessageView {
    pub id: String,
    pub channel: Channel,
    pub status: Status,
    /// The provider that finally handled it (sent it, or gave the final answer).
    pub provider: Option<Arc<str>>,
    pub provider_message_id: Option<String>,
    pub attempts: Vec<Attempt>,
    pub error: Option<Failure>,
    pub tags: Vec<String>,
    #[serde(serialize_with = "rfc3339")]
    pub created_at: SystemTime,
    #[serde(serialize_with = "rfc3339")]
    pub updated_at: SystemTime,
}

/// How a message ended.
#[derive(Debug, Clone)]
pub enum Final {
    Sent { provider: Arc<str>, provider_message_id: Option<String> },
    Failed { provider: Option<Arc<str>>, failure: Failure },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the message store is unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Stores a new message as `queued`.
    async fn insert(&self, message: &OutboundMessage) -> Result<(), StoreError>;
    /// Marks a message `sending` (its first attempt is about to start).
    async fn mark_sending(&self, id: &str) -> Result<(), StoreError>;
    async fn record_attempt(&self, id: &str, attempt: Attempt) -> Result<(), StoreError>;
    async fn finish(&self, id: &str, outcome: Final) -> Result<(), StoreError>;
    async fn get(&self, id: &str) -> Result<Option<MessageView>, StoreError>;
    /// A short description for logs (`memory`, `sqlite://…`).
    fn describe(&self) -> String;
}

fn rfc3339<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*time))
}

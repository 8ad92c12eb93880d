//! Accepting a message: the one operation every way in goes through (the send endpoints today,
//! inbound messages next). Against one snapshot of the active config it runs, in order:
//! route → destination limits → opt-outs → idempotency → insert → queue, and says what it did or why not
//! with a typed [`AcceptError`]. The HTTP layer only parses before it and maps its answer to a
//! status after it.

mod destination;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use switchboard_providers::{registry, Channel, OutboundMessage};

pub use destination::{check_country, RecipientCounts, Refusal};

use crate::dispatch::{Dispatcher, SubmitError, Submitted};
use crate::metrics::Metrics;
use crate::routing::{NoRoute, Snapshot};
use crate::store::{
    blocked, Blocked, IdempotencyKey, Inserted, MessageStore, Meta, Retried, Status, StoreError,
};

/// A message to accept, with who sends it and the idempotency key it came with.
#[derive(Debug)]
pub struct Submission {
    pub message: OutboundMessage,
    /// The API key's name, when keys are on: the message's owner, and the scope of its
    /// idempotency key (one caller's key can neither replay nor block another's request).
    pub caller: Option<String>,
    pub idempotency_key: Option<IdempotencyKey>,
    /// The message's own `status_callback` (checked by the caller); without one, its route's
    /// default applies.
    pub status_callback: Option<String>,
}

/// What accepting did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Stored and queued under the message's own id.
    New { id: String, channel: String },
    /// An earlier request with the same idempotency key and body was accepted as this message:
    /// its first answer again.
    Replayed { id: String, channel: String },
}

/// Why a message was not accepted. Nothing was stored.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// Not a built-in channel, not one a provider kind names, not one the config routes.
    #[error("unknown channel {0:?}")]
    UnknownChannel(String),
    #[error(transparent)]
    NoRoute(#[from] NoRoute),
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The recipient opted out of messages from this sender (an inbound `STOP`).
    #[error("{}", crate::store::conversation::OPTED_OUT)]
    OptedOut,
    /// The recipient's address is on the suppression list (a bounce, a spam report).
    #[error("{}", crate::store::delivery::SUPPRESSED)]
    Suppressed,
    /// A request with the same idempotency key is being answered right now.
    #[error("a request with this idempotency key is still being answered")]
    KeyInFlight,
    /// The queue is full, the key was used for another request, or the store failed.
    #[error(transparent)]
    Submit(#[from] SubmitError),
}

/// Accepts messages: owns the limits that span requests (recipient caps, idempotency keys in
/// flight) and hands accepted messages to the dispatcher.
pub struct Acceptor {
    snapshot: Arc<ArcSwap<Snapshot>>,
    dispatcher: Dispatcher,
    store: Arc<dyn MessageStore>,
    metrics: Arc<Metrics>,
    recipients: RecipientCounts,
    /// Idempotency keys whose first request is being answered right now.
    in_flight: Mutex<HashSet<String>>,
}

impl Acceptor {
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        dispatcher: Dispatcher,
        store: Arc<dyn MessageStore>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Acceptor {
            snapshot,
            dispatcher,
            store,
            metrics,
            recipients: RecipientCounts::default(),
            in_flight: Mutex::default(),
        }
    }

    /// Accepts one message (see the module's docs for the steps). A retry of a request that was
    /// accepted gets its first answer even where the request would now be refused for a reason
    /// that changed since — its channel's route gone in a reload, the recipient's hourly cap — or
    /// while another retry of it is being answered. A country the route does not allow is
    /// refused whatever the key.
    pub async fn accept(&self, submission: Submission) -> Result<Accepted, AcceptError> {
        let Submission { message, caller, idempotency_key, status_callback } = submission;
        let key = scoped(idempotency_key, caller.as_deref());
        let snapshot = self.snapshot.load();
        let channel = message.channel.as_str();
        let route = match snapshot.route_for(channel) {
            Ok(route) => route,
            Err(no_route) => {
                let refusal = if is_known_channel(&snapshot, channel) {
                    self.metrics.routing_error(channel, "no_route");
                    AcceptError::NoRoute(no_route)
                } else {
                    AcceptError::UnknownChannel(channel.to_owned())
                };
                return self.replay_or(key.as_ref(), refusal).await;
            }
        };
        // A second request with a key whose first request is still being answered gets 409.
        let _in_flight = match &key {
            Some(key) => match InFlight::claim(&self.in_flight, &key.key) {
                Ok(claimed) => Some(claimed),
                Err(busy) => return self.replay_or(Some(key), busy).await,
            },
            None => None,
        };
        destination::check_country(&route.config, &message.to)?;
        // The message's sender and every sender its route's providers would use instead: a
        // recipient who replied STOP to any number this message could come from is not sent it.
        let senders = route.senders(&message);
        match blocked(self.store.as_ref(), channel, &senders, &message.to).await {
            Ok(None) => {}
            Ok(Some(Blocked::OptedOut)) => return self.replay_or(key.as_ref(), AcceptError::OptedOut).await,
            Ok(Some(Blocked::Suppressed)) => {
                return self.replay_or(key.as_ref(), AcceptError::Suppressed).await
            }
            Err(error) => return Err(SubmitError::Store(error).into()),
        }
        let reserved = match self.recipients.reserve(&route.config, &message.to, SystemTime::now()) {
            Ok(reserved) => reserved,
            Err(refusal) => return self.replay_or(key.as_ref(), refusal).await,
        };
        let (id, channel) = (message.id.clone(), channel.to_owned());
        let status_callback = status_callback.or_else(|| route.config.status_callback.clone());
        let meta = Meta { owner: caller.as_deref(), status_callback: status_callback.as_deref() };
        match self.dispatcher.submit(message, meta, key.as_ref()).await {
            Ok(Submitted::Accepted) => Ok(Accepted::New { id, channel }),
            Ok(Submitted::Replayed { id, channel }) => {
                self.recipients.give_back(reserved);
                Ok(Accepted::Replayed { id, channel })
            }
            Err(error) => {
                self.recipients.give_back(reserved);
                Err(error.into())
            }
        }
    }

    /// Puts a `failed` message back in the queue with a fresh budget of attempts
    /// ([`MessageStore::retry`]) and dispatches it at once when the queue has room (else the
    /// sweep does). `caller`: the API key's name (`None`: authentication off); unless `admin`, only
    /// its own messages are found. An idempotency key is the caller's, as for sends: the same
    /// retry again gets the first answer.
    pub async fn retry(
        &self,
        id: &str,
        caller: Option<&str>,
        admin: bool,
        idempotency_key: Option<IdempotencyKey>,
    ) -> Result<Accepted, RetryError> {
        let view = self.store.get(id).await?.ok_or(RetryError::NotFound)?;
        // Another key's message is not found: its existence is not confirmed either.
        if !admin && caller.is_some() && view.owner.as_deref() != caller {
            return Err(RetryError::NotFound);
        }
        let (id, channel) = (view.id, view.channel.to_string());
        match self.store.retry(&id, scoped(idempotency_key, caller).as_ref()).await? {
            Retried::Queued => {
                tracing::info!(message_id = %id, channel, "failed message retried");
                self.dispatcher.pick_up(&id).await;
                Ok(Accepted::New { id, channel })
            }
            Retried::Replay => Ok(Accepted::Replayed { id, channel }),
            Retried::KeyReused => Err(RetryError::KeyReused),
            Retried::NotRetryable(status) => Err(RetryError::NotRetryable(status)),
            Retried::NotFound => Err(RetryError::NotFound),
        }
    }

    /// A request refused for a reason that may have changed since its key was first used: if
    /// the key names a message accepted before, that message's answer; else the refusal.
    async fn replay_or(
        &self,
        key: Option<&IdempotencyKey>,
        refusal: impl Into<AcceptError>,
    ) -> Result<Accepted, AcceptError> {
        let Some(key) = key else { return Err(refusal.into()) };
        match self.store.find_key(key).await {
            Ok(Some(Inserted::Replay { id, channel })) => Ok(Accepted::Replayed { id, channel }),
            Ok(Some(Inserted::KeyReused)) => Err(SubmitError::KeyReused.into()),
            Ok(Some(Inserted::New) | None) | Err(_) => Err(refusal.into()),
        }
    }
}

/// Why a message was not retried. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    /// No such message, or another key's.
    #[error("no such message")]
    NotFound,
    /// Only a `failed` message can be retried.
    #[error("the message is {}, not failed", .0.as_str())]
    NotRetryable(Status),
    #[error("the idempotency key was already used for a different request")]
    KeyReused,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An idempotency key as its caller's: one caller's key can neither replay nor block another's
/// request.
fn scoped(key: Option<IdempotencyKey>, caller: Option<&str>) -> Option<IdempotencyKey> {
    key.map(|mut key| {
        if let Some(owner) = caller {
            key.key = format!("{owner}/{}", key.key);
        }
        key
    })
}

/// Built-in channels, those a kind names, and those a provider of the active config serves (a
/// `webhook` provider can carry a channel no kind names). A known channel without a route is
/// refused `no_route`, as `validate` warns; any other is the client's mistake.
fn is_known_channel(snapshot: &Snapshot, name: &str) -> bool {
    Channel::BUILT_IN_NAMES.contains(&name)
        || registry().iter().any(|kind| kind.channels.contains(&name))
        || snapshot.providers().iter().any(|p| p.config.channels.iter().any(|c| c.as_str() == name))
}

/// Marks an idempotency key as being answered by this process, until dropped.
struct InFlight<'a> {
    keys: &'a Mutex<HashSet<String>>,
    key: String,
}

impl<'a> InFlight<'a> {
    fn claim(keys: &'a Mutex<HashSet<String>>, key: &str) -> Result<Self, AcceptError> {
        let mut set = keys.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !set.insert(key.to_owned()) {
            return Err(AcceptError::KeyInFlight);
        }
        Ok(InFlight { keys, key: key.to_owned() })
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.keys.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&self.key);
    }
}

#[cfg(test)]
mod tests;

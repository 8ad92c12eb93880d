//! The callback outbox's worker: takes due callbacks from the store
//! ([`MessageStore::due_callbacks`], leased so that instances sharing a store never send one
//! twice at once), POSTs each signed ([`Callbacks::deliver`]), and records the outcome —
//! delivered: it leaves the outbox; failed: tried again after a jittered exponential backoff;
//! older than [`MAX_AGE`]: given up on with a log line and `switchboard_callbacks_total{result="expired"}`.
//! A message's callbacks go out one at a time, in order (the store gives only its oldest).
//!
//! The body is `{"type":"message.status","message":{…}}`: the message as `GET /v1/messages/{id}`
//! shows it when the callback is sent, with `status` and `delivery_status` as of the change the
//! callback tells of.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tokio::sync::watch;

use crate::callbacks::{backoff, Callbacks, DeliveryError, MAX_AGE};
use crate::dispatch::backoff::jitter;
use crate::metrics::Metrics;
use crate::store::{CallbackJob, MessageStore, StoreError};

/// How many callbacks are sent at once.
const BATCH: u32 = 32;
/// How often the outbox is looked at when it had nothing due.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// How long to wait after the store failed.
const STORE_RETRY: Duration = Duration::from_secs(2);

/// Runs until `stop` turns true (a callback being sent then is finished first).
pub async fn run(
    store: Arc<dyn MessageStore>,
    callbacks: Arc<Callbacks>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        let pause = match store.due_callbacks(BATCH).await {
            Ok(jobs) if jobs.is_empty() => IDLE_POLL,
            Ok(jobs) => {
                let sends = jobs.into_iter().map(|job| send(store.as_ref(), &callbacks, &metrics, job));
                futures_util::future::join_all(sends).await;
                Duration::ZERO
            }
            Err(error) => {
                tracing::warn!(error = %error, "could not read the callback outbox; trying again");
                STORE_RETRY
            }
        };
        if !pause.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// Sends one callback and records how it went.
async fn send(store: &dyn MessageStore, callbacks: &Callbacks, metrics: &Metrics, job: CallbackJob) {
    if let Err(error) = try_send(store, callbacks, metrics, &job).await {
        // The outcome was not recorded: the lease runs out and the callback is sent again.
        tracing::warn!(error = %error, message_id = %job.message_id, "could not record a callback's outcome");
    }
}

async fn try_send(
    store: &dyn MessageStore,
    callbacks: &Callbacks,
    metrics: &Metrics,
    job: &CallbackJob,
) -> Result<(), StoreError> {
    let now = SystemTime::now();
    if expired(job, now) {
        return expire(store, metrics, job, "its 24 hours ran out").await;
    }
    let Some(mut view) = store.get(&job.message_id).await? else {
        tracing::info!(message_id = %job.message_id, "callback dropped: its message is no longer stored");
        metrics.callback("dropped");
        return store.callback_done(job.id).await;
    };
    view.status = job.status;
    view.delivery_status = job.delivery_status;
    let body = json!({"type": "message.status", "message": view}).to_string();
    let timestamp =
        now.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    match callbacks.deliver(&job.url, &job.webhook_id, timestamp, body.as_bytes()).await {
        Ok(()) => {
            metrics.callback("delivered");
            tracing::debug!(message_id = %job.message_id, webhook_id = %job.webhook_id, "callback delivered");
            store.callback_done(job.id).await
        }
        Err(error) => retry(store, metrics, job, &error).await,
    }
}

/// A failed delivery: tried again after the backoff, or given up on when that would be past
/// [`MAX_AGE`].
async fn retry(
    store: &dyn MessageStore,
    metrics: &Metrics,
    job: &CallbackJob,
    error: &DeliveryError,
) -> Result<(), StoreError> {
    let attempts = job.attempts.saturating_add(1);
    let next_at = SystemTime::now() + backoff(attempts, jitter());
    if expired(job, next_at) {
        return expire(store, metrics, job, &error.to_string()).await;
    }
    metrics.callback("failed");
    tracing::info!(
        message_id = %job.message_id, webhook_id = %job.webhook_id, attempts, error = %error,
        "callback not delivered; retrying"
    );
    store.callback_retry(job.id, attempts, next_at).await
}

fn expired(job: &CallbackJob, at: SystemTime) -> bool {
    at.duration_since(job.created_at).is_ok_and(|age| age > MAX_AGE)
}

async fn expire(
    store: &dyn MessageStore,
    metrics: &Metrics,
    job: &CallbackJob,
    why: &str,
) -> Result<(), StoreError> {
    tracing::warn!(
        message_id = %job.message_id, webhook_id = %job.webhook_id, attempts = job.attempts, last_error = why,
        "callback given up on after 24 hours of failed deliveries"
    );
    metrics.callback("expired");
    store.callback_done(job.id).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(age: Duration) -> CallbackJob {
        CallbackJob {
            id: 1,
            webhook_id: "msg_1".into(),
            message_id: "m".into(),
            url: "https://example.com/".into(),
            status: crate::store::Status::Sent,
            delivery_status: None,
            created_at: SystemTime::now() - age,
            attempts: 0,
        }
    }

    #[test]
    fn callbacks_expire_after_24_hours() {
        let now = SystemTime::now();
        assert!(!expired(&job(Duration::from_secs(60)), now));
        assert!(!expired(&job(MAX_AGE - Duration::from_secs(60)), now));
        assert!(expired(&job(MAX_AGE + Duration::from_secs(60)), now));
        assert!(expired(&job(MAX_AGE - Duration::from_secs(60)), now + Duration::from_secs(120)));
    }
}

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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::callbacks::{backoff, Callbacks, DeliveryError, CONCURRENCY, MAX_AGE};
use crate::dispatch::backoff::jitter;
use crate::metrics::Metrics;
use crate::store::{CallbackJob, MessageStore, MessageView, StoreError};

/// The most callbacks taken from the store at once.
const BATCH: usize = 32;
/// How often the outbox is looked at when it had nothing due.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// How long to wait after the store failed.
const STORE_RETRY: Duration = Duration::from_secs(2);

/// The callbacks being sent: outbox id → tries so far (their leases are given back on stop).
type InFlight = Arc<std::sync::Mutex<HashMap<i64, u32>>>;

/// Runs until `stop` turns true. Each callback is sent in a task of its own (at most
/// [`CONCURRENCY`] at once); on stop, those still being sent are abandoned and their leases given
/// back, so that they go out (with the same `webhook-id`) as soon as an instance runs again
/// rather than holding shutdown up for a receiver's timeout.
pub async fn run(
    store: Arc<dyn MessageStore>,
    callbacks: Arc<Callbacks>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut sending = tokio::task::JoinSet::new();
    let in_flight: InFlight = Arc::default();
    let mut last_take = tokio::time::Instant::now();
    while !*stop.borrow() {
        while sending.try_join_next().is_some() {}
        let free = CONCURRENCY.saturating_sub(sending.len()).min(BATCH);
        // Taking callbacks is a store write: with a backlog, take them a batch at a time, not one
        // per slot that frees — but at least every IDLE_POLL whatever is free (slow receivers
        // holding most slots hold up nobody else).
        let batch_ready = free >= BATCH || sending.is_empty() || last_take.elapsed() >= IDLE_POLL;
        let pause = if free == 0 || !batch_ready {
            // Too few slots free: wait for more to free (or for the stop).
            IDLE_POLL
        } else {
            last_take = tokio::time::Instant::now();
            match store.due_callbacks(u32::try_from(free).unwrap_or(u32::MAX)).await {
                Ok(jobs) if jobs.is_empty() => IDLE_POLL,
                Ok(jobs) => match messages_of(store.as_ref(), &jobs).await {
                    Ok(messages) => {
                        for job in jobs {
                            let (store, callbacks, metrics) =
                                (Arc::clone(&store), Arc::clone(&callbacks), Arc::clone(&metrics));
                            let in_flight = Arc::clone(&in_flight);
                            let message = messages.get(&job.message_id).cloned();
                            lock(&in_flight).insert(job.id, job.attempts);
                            sending.spawn(async move {
                                send(store.as_ref(), &callbacks, &metrics, &job, message).await;
                                lock(&in_flight).remove(&job.id);
                            });
                        }
                        Duration::ZERO
                    }
                    Err(error) => {
                        // The leases run out and the callbacks are taken again.
                        tracing::warn!(error = %error, "could not read the callbacks' messages; trying again");
                        STORE_RETRY
                    }
                },
                Err(error) => {
                    tracing::warn!(error = %error, "could not read the callback outbox; trying again");
                    STORE_RETRY
                }
            }
        };
        if !pause.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = sending.join_next(), if !sending.is_empty() => {}
                _ = stop.changed() => {}
            }
        }
    }
    sending.abort_all();
    while sending.join_next().await.is_some() {}
    let abandoned: Vec<(i64, u32)> = lock(&in_flight).drain().collect();
    for (id, attempts) in abandoned {
        if let Err(error) = store.callback_retry(id, attempts, SystemTime::now()).await {
            tracing::warn!(error = %error, "could not give a callback back on stop; it goes out when its lease ends");
        }
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A callback's body: `{"type":"message.status","message":{…}}`, written straight from the view.
#[derive(serde::Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a MessageView,
}

/// The messages the callbacks tell of, by id, read at once (one read for the batch, not one
/// per callback).
async fn messages_of(
    store: &dyn MessageStore,
    jobs: &[CallbackJob],
) -> Result<HashMap<String, MessageView>, StoreError> {
    let mut ids: Vec<String> = jobs.iter().map(|job| job.message_id.clone()).collect();
    ids.sort_unstable();
    ids.dedup();
    Ok(store.views(&ids).await?.into_iter().map(|view| (view.id.clone(), view)).collect())
}

/// Sends one callback about `message` (`None`: no longer stored) and records how it went.
async fn send(
    store: &dyn MessageStore,
    callbacks: &Callbacks,
    metrics: &Metrics,
    job: &CallbackJob,
    message: Option<MessageView>,
) {
    if let Err(error) = try_send(store, callbacks, metrics, job, message).await {
        // The outcome was not recorded: the lease runs out and the callback is sent again.
        tracing::warn!(error = %error, message_id = %job.message_id, "could not record a callback's outcome");
    }
}

async fn try_send(
    store: &dyn MessageStore,
    callbacks: &Callbacks,
    metrics: &Metrics,
    job: &CallbackJob,
    message: Option<MessageView>,
) -> Result<(), StoreError> {
    let now = SystemTime::now();
    if expired(job, now) {
        return expire(store, metrics, job, "its 24 hours ran out").await;
    }
    let Some(mut view) = message else {
        tracing::info!(message_id = %job.message_id, "callback dropped: its message is no longer stored");
        store.callback_done(job.id).await?;
        metrics.callback("dropped");
        return Ok(());
    };
    view.status = job.status;
    view.delivery_status = job.delivery_status;
    let body = serde_json::to_vec(&Body { kind: "message.status", message: &view })
        .map_err(|error| StoreError::Unavailable(format!("cannot write a callback's body: {error}")))?;
    let timestamp =
        now.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    match callbacks.deliver(&job.url, &job.webhook_id, timestamp, &body).await {
        Ok(()) => {
            tracing::debug!(message_id = %job.message_id, webhook_id = %job.webhook_id, "callback delivered");
            // Counted once recorded: a scrape that sees it also sees the outbox without it.
            store.callback_done(job.id).await?;
            metrics.callback("delivered");
            Ok(())
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
    tracing::info!(
        message_id = %job.message_id, webhook_id = %job.webhook_id, attempts, error = %error,
        "callback not delivered; retrying"
    );
    store.callback_retry(job.id, attempts, next_at).await?;
    metrics.callback("failed");
    Ok(())
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
    store.callback_done(job.id).await?;
    metrics.callback("expired");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callbacks::CallbackSecret;
    use crate::store::{MemoryStore, Meta};

    /// A receiver on 127.0.0.1: `/hang` answers only once `release` is notified, `/fast` at
    /// once, each request's path sent on `seen`.
    async fn receiver(
        release: Arc<tokio::sync::Notify>,
    ) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let (seen, paths) = tokio::sync::mpsc::unbounded_channel();
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let (seen, release) = (seen.clone(), Arc::clone(&release));
            async move {
                let _ = seen.send(uri.path().to_owned());
                if uri.path() == "/hang" {
                    release.notified().await;
                }
                axum::http::StatusCode::OK
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{address}"), paths)
    }

    /// A message whose first attempt started: one callback (`sending`) to `url`.
    async fn with_callback(store: &MemoryStore, url: &str) {
        let message = crate::store::test_support::sms(&uuid::Uuid::now_v7().to_string());
        let meta = Meta { owner: None, status_callback: Some(url) };
        store.insert_for(&message, meta, None).await.unwrap_or_else(|e| panic!("{e}"));
        store.attempt_started(&message.id, 1, "p").await.unwrap_or_else(|e| panic!("{e}"));
    }

    fn client() -> Arc<Callbacks> {
        let secret =
            CallbackSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_or_else(|e| panic!("{e}"));
        Arc::new(
            Callbacks::with_timeout(secret, true, Duration::from_secs(600)).unwrap_or_else(|e| panic!("{e}")),
        )
    }

    /// A receiver that hangs holds up no other message's callbacks, and a stop abandons it at
    /// once, giving its lease back (it is due again, not after the lease).
    #[tokio::test]
    async fn a_hanging_receiver_holds_up_neither_others_nor_the_stop() {
        let release = Arc::new(tokio::sync::Notify::new());
        let (base, mut paths) = receiver(Arc::clone(&release)).await;
        let store = Arc::new(MemoryStore::new(100));
        with_callback(&store, &format!("{base}/hang")).await;
        let (stop, stopped) = watch::channel(false);
        let worker = tokio::spawn(run(store.clone(), client(), Arc::new(Metrics::new()), stopped));
        // The hanging callback is being sent; then another message's goes out meanwhile.
        let first = tokio::time::timeout(Duration::from_secs(60), paths.recv()).await;
        assert_eq!(first.ok().flatten().as_deref(), Some("/hang"));
        with_callback(&store, &format!("{base}/fast")).await;
        let second = tokio::time::timeout(Duration::from_secs(60), paths.recv()).await;
        assert_eq!(second.ok().flatten().as_deref(), Some("/fast"), "not held up by /hang");
        let _ = stop.send(true);
        let ended = tokio::time::timeout(Duration::from_secs(60), worker).await;
        assert!(ended.is_ok(), "the stop waited for the hanging receiver");
        let due = store.due_callbacks(10).await.unwrap_or_else(|e| panic!("{e}"));
        // (`/fast`'s may be given back too, if the stop came before its answer was recorded.)
        assert!(due.iter().any(|job| job.url.ends_with("/hang")), "given back: {due:?}");
        release.notify_waiters();
    }

    /// An outcome is counted only once it is recorded: a scrape that counts a callback
    /// delivered (or failed) never finds the outbox still holding it as before.
    #[tokio::test]
    async fn outcomes_are_counted_once_recorded() {
        let (base, _paths) = receiver(Arc::new(tokio::sync::Notify::new())).await;
        let store = crate::store::test_support::Faulty::new();
        with_callback(&store.inner, &format!("{base}/fast")).await;
        let (callbacks, metrics) = (client(), Metrics::new());
        let count = |result: &str| {
            let line = format!("switchboard_callbacks_total{{result=\"{result}\"}} ");
            metrics.render().lines().find_map(|l| l.strip_prefix(line.as_str()).map(str::to_owned))
        };
        let jobs = store.inner.due_callbacks(10).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(jobs.len(), 1);
        let view = store.get(&jobs[0].message_id).await.unwrap_or_else(|e| panic!("{e}"));
        // Delivered, but the outbox cannot be told: not counted, and sent again later.
        store.refuse_callback_writes.store(1, std::sync::atomic::Ordering::SeqCst);
        send(&store, &callbacks, &metrics, &jobs[0], view.clone()).await;
        assert_eq!(count("delivered"), None, "counted though still in the outbox");
        // Recorded: counted.
        send(&store, &callbacks, &metrics, &jobs[0], view).await;
        assert_eq!(count("delivered").as_deref(), Some("1"));
        // A callback whose message is gone, dropped but not recorded: not counted either.
        store.refuse_callback_writes.store(1, std::sync::atomic::Ordering::SeqCst);
        send(&store, &callbacks, &metrics, &jobs[0], None).await;
        assert_eq!(count("dropped"), None, "counted though still in the outbox");
    }

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

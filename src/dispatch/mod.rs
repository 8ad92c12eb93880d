//! Dispatch: a bounded queue of accepted messages drained by a pool of concurrent workers. Each
//! message is routed when it is picked up, from the snapshot current at that moment, and tried
//! on its route's providers in failover order, within its route's `max_attempts`.

pub mod backoff;

use std::collections::HashSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use switchboard_providers::{mask_recipient, OutboundMessage, SendError};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::health::{BreakerState, Verdict};
use crate::metrics::Metrics;
use crate::routing::{NoRoute, ProviderHandle, Snapshot};
use crate::store::{
    blocked, Attempt, Failure, FailureCode, Final, IdempotencyKey, Inserted, MessageStore, Meta, Outcome,
    Pending, QueuePosition, Status, StoreError,
};

/// How long a provider that answered 429 without Retry-After is left alone.
const DEFAULT_RATE_LIMIT_PAUSE: Duration = Duration::from_secs(1);
/// How often an instance on a shared queue looks for due messages nobody holds.
const CLAIM_INTERVAL: Duration = Duration::from_millis(200);
/// The most messages claimed at once.
const CLAIM_BATCH: usize = 256;
/// A rate-limit token due within this long is waited for in the worker slot: less than what
/// requeueing the message costs (a store write and a trip through the queue). A later one is
/// waited for out of the slots (see [`Resume`]).
const TOKEN_WAIT_IN_SLOT: Duration = Duration::from_millis(1);
/// How soon to look again when every half-open probe slot is taken.
const PROBE_RECHECK: Duration = Duration::from_millis(50);
/// How soon a message whose opt-out could not be checked (the store failing) is tried again.
const OPT_OUT_RECHECK: Duration = Duration::from_secs(1);
/// How often the store's queue is compared with what this process holds.
const SWEEP_INTERVAL: Duration = Duration::from_secs(2);
/// Queue entries read per page of a sweep, and pages per sweep at most.
const SWEEP_PAGE: u32 = 1000;
const SWEEP_PAGES: usize = 100;
/// The first wait before writing dispatch progress again after the store refused it, and the
/// longest.
const PERSIST_FIRST_RETRY: Duration = Duration::from_millis(50);
const PERSIST_MAX_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
pub struct DispatchConfig {
    /// Messages that may wait for a worker; beyond it, sends are refused with `queue_full`.
    pub queue_capacity: usize,
    /// Messages dispatched at once.
    pub workers: usize,
}

/// Why a message was not stored and queued.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Shutdown began: messages in flight are finishing and no new one is taken.
    #[error("shutting down: no new message is taken")]
    ShuttingDown,
    #[error("the dispatch queue is full")]
    QueueFull,
    #[error("the idempotency key was already used for a different request")]
    KeyReused,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a submit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// Stored and queued under the message's own id.
    Accepted,
    /// An earlier request with the same idempotency key and body was accepted as this message.
    Replayed { id: String, channel: String },
}

/// A message on its way through the queue, with what its earlier rounds learned.
struct Job {
    message: Arc<OutboundMessage>,
    /// Attempts made, from its first (numbering its attempts).
    attempts: u32,
    round: u32,
    last_error: Option<(Arc<str>, SendError)>,
    /// Attempts made before it was last retried: not counted against `max_attempts`.
    retried_after: u32,
    /// The round it is in the middle of, while it waits for a provider's rate-limit token.
    resume: Option<Resume>,
}

/// A round cut short to wait for a provider's rate-limit token outside the worker slots, and
/// where to carry on: with the same plan (the providers a strategy chose are not drawn again),
/// at the provider the token is for. Kept in memory only: after a restart the message starts its
/// round again, at the due time stored with it.
struct Resume {
    /// The snapshot the round was planned in; after a reload the round is planned again.
    snapshot: Arc<Snapshot>,
    plan: Vec<Arc<ProviderHandle>>,
    /// Where in `plan` the round stopped: the provider whose token is reserved.
    next: usize,
    attempted: bool,
    next_available: Option<Instant>,
    token: Reservation,
}

/// A rate-limit token reserved ahead for one message: used by that message's attempt on its
/// provider, or given back to the bucket when dropped unused (the message went to another
/// provider, ended, was taken over by another instance, or the service stopped), so that no
/// token is lost.
struct Reservation {
    handle: Arc<ProviderHandle>,
    due: Instant,
    used: bool,
}

impl Reservation {
    /// The next token of `handle`'s bucket, due at the returned reservation's `due`.
    fn take(handle: &Arc<ProviderHandle>, now: Instant) -> Option<Reservation> {
        let bucket = handle.health().bucket.as_ref()?;
        let due = now.checked_add(bucket.reserve(now)).unwrap_or(now);
        Some(Reservation { handle: Arc::clone(handle), due, used: false })
    }

    /// Whether it is a token of `handle`'s bucket (the same provider, unchanged by any reload).
    fn serves(&self, handle: &ProviderHandle) -> bool {
        Snapshot::shares_runtime(&self.handle, handle)
    }

    fn spend(mut self) {
        self.used = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.used {
            if let Some(bucket) = &self.handle.health().bucket {
                bucket.refund();
            }
        }
    }
}

impl Job {
    /// Attempts counted against its route's `max_attempts`: those since it was last retried.
    fn counted(&self) -> u32 {
        self.attempts.saturating_sub(self.retried_after)
    }
}

struct Shared {
    snapshot: Arc<ArcSwap<Snapshot>>,
    store: Arc<dyn MessageStore>,
    metrics: Arc<Metrics>,
    tx: mpsc::Sender<Job>,
    /// Jobs waiting out a backoff, a pause or an open breaker.
    scheduled: AtomicUsize,
    held: Held,
    /// Set when shutdown begins: no submit starts after it.
    closing: AtomicBool,
    /// Submits under way (counted before `closing` is checked, until their message is stored
    /// and queued or refused, even when their caller went away); shutdown waits for none.
    submitting: AtomicUsize,
    submits_done: Notify,
}

/// One submit under way, uncounted when dropped.
struct Submitting(Arc<Shared>);

impl Submitting {
    fn start(shared: &Arc<Shared>) -> Submitting {
        shared.submitting.fetch_add(1, Ordering::SeqCst);
        Submitting(Arc::clone(shared))
    }
}

impl Drop for Submitting {
    fn drop(&mut self) {
        if self.0.submitting.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.submits_done.notify_waiters();
        }
    }
}

/// The messages this process holds: being accepted, in the queue, in flight or waiting out a
/// retry. The store's queue is the truth and this the cache: a queued message that is not here
/// belongs to no worker, and the sweep picks it up. A message is held before it is stored and
/// let go only after its end is stored (or another instance took it over), so a message that
/// is in the store's queue and not here is never one a worker is about to finish.
#[derive(Default)]
struct Held(Mutex<HashSet<String>>);

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // Every critical section leaves the set whole: a panic elsewhere cannot poison it.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks a message held; `false` if it already was.
    fn hold(&self, id: &str) -> bool {
        self.lock().insert(id.to_owned())
    }

    fn release(&self, id: &str) {
        self.lock().remove(id);
    }
}

/// Another instance holds the message now (shared queue): it is theirs to finish.
struct Lost;

/// The handle the HTTP layer submits to.
#[derive(Clone)]
pub struct Dispatcher {
    shared: Arc<Shared>,
}

/// The running worker pool, to stop on shutdown.
pub struct Workers {
    stop: watch::Sender<bool>,
    receiver: JoinHandle<mpsc::Receiver<Job>>,
    slots: Arc<Semaphore>,
    workers: u32,
    shared: Arc<Shared>,
}

impl Dispatcher {
    pub fn start(
        snapshot: Arc<ArcSwap<Snapshot>>,
        store: Arc<dyn MessageStore>,
        metrics: Arc<Metrics>,
        config: DispatchConfig,
    ) -> (Dispatcher, Workers) {
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let shared = Arc::new(Shared {
            snapshot,
            store,
            metrics,
            tx,
            scheduled: AtomicUsize::new(0),
            held: Held::default(),
            closing: AtomicBool::new(false),
            submitting: AtomicUsize::new(0),
            submits_done: Notify::new(),
        });
        let workers = u32::try_from(config.workers.max(1)).unwrap_or(u32::MAX);
        let slots = Arc::new(Semaphore::new(workers as usize));
        let (stop, stopped) = watch::channel(false);
        if shared.store.shared_queue() {
            tokio::spawn(claim_due_work(Arc::clone(&shared), stopped.clone()));
        }
        tokio::spawn(sweep(Arc::clone(&shared), stopped.clone()));
        let receiver = tokio::spawn(receive(Arc::clone(&shared), rx, Arc::clone(&slots), stopped));
        (Dispatcher { shared: Arc::clone(&shared) }, Workers { stop, receiver, slots, workers, shared })
    }

    /// Takes a queue slot for an accepted message (`crate::accept` checked its route and
    /// limits), stores it (with its idempotency key, in one transaction) and queues it. Nothing
    /// is stored unless all of that succeeds.
    ///
    /// Cancel-safe: storing and queueing run in a task of their own, so a caller that goes away
    /// (a client that hangs up) cannot leave a stored message unqueued.
    pub async fn submit(
        &self,
        message: OutboundMessage,
        meta: Meta<'_>,
        key: Option<&IdempotencyKey>,
    ) -> Result<Submitted, SubmitError> {
        let shared = Arc::clone(&self.shared);
        // Counted before the check: shutdown either sees this submit or refuses it.
        let submitting = Submitting::start(&shared);
        if shared.closing.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        let slot = shared.tx.clone().try_reserve_owned().map_err(|_| SubmitError::QueueFull)?;
        let (owner, key) = (meta.owner.map(str::to_owned), key.cloned());
        let status_callback = meta.status_callback.map(str::to_owned);
        let accept = tokio::spawn(async move {
            let _submitting = submitting;
            // Held before it is stored: the sweep never mistakes it for an orphan.
            shared.held.hold(&message.id);
            let meta = Meta { owner: owner.as_deref(), status_callback: status_callback.as_deref() };
            let inserted = shared.store.insert_for(&message, meta, key.as_ref()).await;
            if !matches!(inserted, Ok(Inserted::New)) {
                shared.held.release(&message.id);
            }
            match inserted? {
                Inserted::New => {}
                Inserted::Replay { id, channel } => return Ok(Submitted::Replayed { id, channel }),
                Inserted::KeyReused => return Err(SubmitError::KeyReused),
            }
            shared.metrics.accepted(message.channel.as_str());
            slot.send(Job {
                message: Arc::new(message),
                attempts: 0,
                round: 0,
                last_error: None,
                retried_after: 0,
                resume: None,
            });
            Ok(Submitted::Accepted)
        });
        match accept.await {
            Ok(result) => result,
            Err(error) => {
                Err(SubmitError::Store(StoreError::Unavailable(format!("accepting failed: {error}"))))
            }
        }
    }

    /// Resumes messages a durable store still holds from before a restart: due ones now, the
    /// rest when their stored retry time comes.
    pub fn resume(&self, pending: Vec<Pending>) {
        let now = SystemTime::now();
        for item in pending {
            if !self.shared.held.hold(&item.message.id) {
                continue;
            }
            let delay = item.not_before.duration_since(now).unwrap_or_default();
            schedule_local(&self.shared, job_of(&self.shared, item), delay);
        }
    }
    /// Dispatches a message just put back in the store's queue (a retry) now, if the queue has
    /// room; otherwise it waits in the store for the sweep. On a shared queue it is left to
    /// whichever instance claims it first (every instance looks every 200 ms).
    pub async fn pick_up(&self, id: &str) {
        let shared = &self.shared;
        if shared.store.shared_queue() || shared.closing.load(Ordering::SeqCst) || !shared.held.hold(id) {
            return;
        }
        let found = match shared.store.pending_of(&[id.to_owned()]).await {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(message_id = id, error = %error, "could not load a retried message; the sweep will pick it up");
                Vec::new()
            }
        };
        let mut sent = false;
        if let Some(item) = found.into_iter().next() {
            sent = shared.tx.try_send(job_of(shared, item)).is_ok();
        }
        if !sent {
            shared.held.release(id);
        }
    }

    /// Messages waiting: in the queue or scheduled for a retry.
    pub fn queue_depth(&self) -> usize {
        self.shared.depth()
    }
}

impl Shared {
    fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity() + self.scheduled.load(Ordering::Relaxed)
    }
}

impl Workers {
    /// Stops taking messages, waits up to `grace` for dispatches in flight, and returns how
    /// many messages were still waiting: as the store's queue counts them (it also holds what no
    /// worker had; on a shared queue, other instances' too), else as this process knew them.
    pub async fn shutdown(self, grace: Duration) -> usize {
        let store = Arc::clone(&self.shared.store);
        // No new message from here on; those being stored get queued before the workers stop.
        self.shared.closing.store(true, Ordering::SeqCst);
        let shared = Arc::clone(&self.shared);
        let submits_done = async move {
            loop {
                let done = shared.submits_done.notified();
                let mut done = std::pin::pin!(done);
                done.as_mut().enable();
                if shared.submitting.load(Ordering::SeqCst) == 0 {
                    break;
                }
                done.await;
            }
        };
        if tokio::time::timeout(grace, submits_done).await.is_err() {
            tracing::warn!("messages still being stored after the grace period; stopping the workers anyway");
        }
        let (known, unfinished) = self.stop_workers(grace).await;
        // Nothing of ours is being sent any more: on a shared queue, others may take the rest at
        // once. (With a dispatch still in flight the leases stay, to run out: another instance
        // sending that message now would send it twice.)
        if store.shared_queue() && unfinished == 0 {
            match store.release_all().await {
                Ok(released) => tracing::debug!(released, "let go of the messages this instance held"),
                Err(error) => {
                    tracing::warn!(error = %error, "could not let go of the held messages; their leases run out")
                }
            }
        }
        match store.queued().await {
            Ok(count) => usize::try_from(count).unwrap_or(usize::MAX),
            Err(error) => {
                tracing::warn!(error = %error, "could not count the store's queue at shutdown");
                known
            }
        }
    }

    /// Stops the workers: how many messages were still waiting, and how many dispatches had not
    /// finished within `grace`.
    async fn stop_workers(self, grace: Duration) -> (usize, usize) {
        let _ = self.stop.send(true);
        let queued = match self.receiver.await {
            Ok(rx) => rx.len(),
            Err(_) => 0,
        };
        let in_flight = self.workers as usize - self.slots.available_permits();
        let finished = tokio::time::timeout(grace, self.slots.acquire_many(self.workers)).await;
        let unfinished =
            if finished.is_ok() { 0 } else { self.workers as usize - self.slots.available_permits() };
        tracing::debug!(in_flight, unfinished, "dispatch workers stopped");
        (queued + self.shared.scheduled.load(Ordering::Relaxed) + unfinished, unfinished)
    }
}

/// Takes jobs off the queue while a worker slot is free, one task per job.
async fn receive(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Job>,
    slots: Arc<Semaphore>,
    mut stopped: watch::Receiver<bool>,
) -> mpsc::Receiver<Job> {
    loop {
        let slot = tokio::select! {
            biased;
            _ = stopped.changed() => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot { Ok(slot) => slot, Err(_) => break },
        };
        let job = tokio::select! {
            biased;
            _ = stopped.changed() => break,
            job = rx.recv() => match job { Some(job) => job, None => break },
        };
        tokio::spawn(work(Arc::clone(&shared), job, slot));
    }
    rx
}

/// Dispatches one job. A dispatch that fails for any reason (a panic included) still ends its
/// message: `failed` with code `internal_error`, never left `sending`.
async fn work(shared: Arc<Shared>, job: Job, slot: OwnedSemaphorePermit) {
    let message = Arc::clone(&job.message);
    if let Err(panic) = AssertUnwindSafe(dispatch(&shared, job)).catch_unwind().await {
        let reason = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(message_id = %message.id, reason, "dispatch failed unexpectedly; the message is finished as failed");
        let failure = Failure {
            code: FailureCode::InternalError,
            message: "dispatch failed unexpectedly (the service log has the cause); not retried".into(),
        };
        let failed = Final::Failed { provider: None, failure };
        if finish_message(&shared, &message, 0, failed, None).await.is_ok() {
            shared.held.release(&message.id);
        }
    }
    drop(slot);
}

/// What one round over the route's providers came to.
enum Round {
    Done,
    /// Try again after this long.
    Retry(Duration),
    /// The round waits for a rate-limit token out of the worker slots, to carry on from here.
    Wait(Resume),
}

async fn dispatch(shared: &Arc<Shared>, mut job: Job) {
    let (delay, what) = match round(shared, &mut job).await {
        Round::Done => {
            shared.held.release(&job.message.id);
            return;
        }
        Round::Retry(delay) => {
            job.round += 1;
            (delay, "retry time")
        }
        // Requeued like a retry, stored like one (a restart resumes it then; on a shared queue
        // the lease goes meanwhile), but the same round carries on when the token is due.
        Round::Wait(resume) => {
            let delay = resume.token.due.saturating_duration_since(Instant::now());
            job.resume = Some(resume);
            (delay, "rate-limit wait")
        }
    };
    let not_before = SystemTime::now().checked_add(delay).unwrap_or_else(SystemTime::now);
    let (id, attempts, round) = (&job.message.id, job.attempts, job.round);
    let stored = persist(shared, id, what, || shared.store.schedule(id, not_before, attempts, round));
    match stored.await {
        Ok(()) => {
            // Counted from now: the write took some of the wait.
            let delay = match &job.resume {
                Some(resume) => resume.token.due.saturating_duration_since(Instant::now()),
                None => delay,
            };
            schedule_local(shared, job, delay)
        }
        Err(Lost) => shared.held.release(&job.message.id),
    }
}

/// Writes dispatch progress, again and again until the store takes it (disk full, I/O error,
/// database restarting): progress that is not recorded would leave the message behind or send it
/// twice after a restart. `Err` only when another instance holds the message now.
async fn persist<F, Fut>(shared: &Shared, id: &str, what: &'static str, write: F) -> Result<(), Lost>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    let mut wait = PERSIST_FIRST_RETRY;
    let mut failures: u32 = 0;
    loop {
        match write().await {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(
                        message_id = id,
                        what,
                        failures,
                        "dispatch progress recorded after the store recovered"
                    );
                }
                return Ok(());
            }
            Err(StoreError::LeaseLost(_)) => {
                tracing::warn!(
                    message_id = id,
                    what,
                    "leaving the message to the instance that holds it now"
                );
                return Err(Lost);
            }
            Err(error) => {
                failures += 1;
                shared.metrics.store_write_failed();
                if failures.is_power_of_two() {
                    tracing::error!(message_id = id, what, failures, error = %error, "could not record dispatch progress; retrying until the store takes it");
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(PERSIST_MAX_RETRY);
            }
        }
    }
}

/// A resumed or claimed message as a job. An attempt that was started and never recorded may
/// have reached the provider: it is counted and logged as a possible duplicate.
fn job_of(shared: &Shared, item: Pending) -> Job {
    if item.interrupted {
        shared.metrics.possible_duplicate();
        tracing::warn!(
            message_id = %item.message.id,
            attempts = item.attempts,
            "resuming a message whose last attempt was interrupted: the provider may already have it (possible duplicate)"
        );
    }
    Job {
        message: Arc::new(item.message),
        attempts: item.attempts,
        round: item.round,
        last_error: None,
        retried_after: item.retried_after,
        resume: None,
    }
}

/// Puts a job back on the queue after `delay`, waiting for room: an accepted message is never
/// dropped for a full queue. With a shared queue the lease is taken again first; if another
/// instance has the message by then, it carries on there.
fn schedule_local(shared: &Arc<Shared>, job: Job, delay: Duration) {
    shared.scheduled.fetch_add(1, Ordering::Relaxed);
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let ours = !shared.store.shared_queue() || shared.store.claim(&job.message.id).await.unwrap_or(false);
        if !ours {
            shared.held.release(&job.message.id);
        }
        let requeued = if ours { shared.tx.send(job).await.map_err(|unsent| unsent.0) } else { Ok(()) };
        shared.scheduled.fetch_sub(1, Ordering::Relaxed);
        if let Err(unsent) = requeued {
            let id = &unsent.message.id;
            tracing::warn!(message_id = %id, "service stopping: a scheduled retry was not requeued");
        }
    });
}

/// With a shared queue: takes due messages nobody holds (scheduled by any instance, or left by
/// one that died) as room frees up.
async fn claim_due_work(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(CLAIM_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            _ = every.tick() => {}
        }
        let room = u32::try_from(shared.tx.capacity().min(CLAIM_BATCH)).unwrap_or(0);
        if room == 0 {
            continue;
        }
        match shared.store.claim_due(room).await {
            Ok(items) => {
                for item in items {
                    // One of ours already (a retry whose timer is about to requeue it).
                    if !shared.held.hold(&item.message.id) {
                        continue;
                    }
                    let job = job_of(&shared, item);
                    if shared.tx.send(job).await.is_err() {
                        return;
                    }
                }
            }
            Err(error) => tracing::warn!(error = %error, "could not claim due messages"),
        }
    }
}

/// Compares the store's queue with what this process holds, every few seconds: a due message
/// that no worker holds (its request went away at the wrong moment, its job was lost) is
/// dispatched. On a shared queue, only the messages leased to this instance are looked at;
/// those nobody holds are [`claim_due_work`]'s.
async fn sweep(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let mut every = tokio::time::interval_at(tokio::time::Instant::now() + SWEEP_INTERVAL, SWEEP_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            _ = every.tick() => {}
        }
        let mut after: Option<QueuePosition> = None;
        for _ in 0..SWEEP_PAGES {
            let page = match shared.store.due(after.as_ref(), SWEEP_PAGE).await {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(error = %error, "could not read the queue to pick up messages no worker holds");
                    break;
                }
            };
            let orphans: Vec<String> = {
                let mut held = shared.held.lock();
                page.iter().filter(|p| held.insert(p.id.clone())).map(|p| p.id.clone()).collect()
            };
            if !orphans.is_empty() && !adopt(&shared, orphans).await {
                return;
            }
            let full = page.len() == SWEEP_PAGE as usize;
            after = page.into_iter().last();
            if !full {
                break;
            }
        }
    }
}

/// Dispatches the queued messages among `ids`, which were just marked held; lets go of the rest
/// (finished meanwhile). `false` once the queue is closed (shutting down).
async fn adopt(shared: &Arc<Shared>, ids: Vec<String>) -> bool {
    let found = match shared.store.pending_of(&ids).await {
        Ok(found) => found,
        Err(error) => {
            tracing::warn!(error = %error, "could not load queued messages no worker holds");
            Vec::new()
        }
    };
    let adopted: HashSet<&str> = found.iter().map(|item| item.message.id.as_str()).collect();
    for id in ids.iter().filter(|id| !adopted.contains(id.as_str())) {
        shared.held.release(id);
    }
    for item in found {
        tracing::warn!(message_id = %item.message.id, "picking up a queued message no worker held");
        shared.metrics.orphan_picked_up();
        if shared.tx.send(job_of(shared, item)).await.is_err() {
            return false;
        }
    }
    true
}

async fn round(shared: &Shared, job: &mut Job) -> Round {
    let snapshot = shared.snapshot.load_full();
    let channel = job.message.channel.clone();
    let Some(route) = snapshot.route(channel.as_str()) else {
        shared.metrics.routing_error(channel.as_str(), "no_route");
        let failure = Failure {
            code: FailureCode::NoRoute,
            message: NoRoute { channel: channel.to_string() }.to_string(),
        };
        finish(shared, job, Final::Failed { provider: None, failure }, None).await;
        return Round::Done;
    };
    let max_attempts = route.config.max_attempts;
    // Carries on a round cut short for a rate-limit token; after a reload meanwhile, plans the
    // round again (its token still serves its provider if that one is unchanged).
    let (plan, start, mut attempted, mut next_available, mut token) = match job.resume.take() {
        Some(resume) if Arc::ptr_eq(&resume.snapshot, &snapshot) => {
            (resume.plan, resume.next, resume.attempted, resume.next_available, Some(resume.token))
        }
        resume => {
            let plan = route.plan(&job.message, job.round, Instant::now());
            match resume {
                Some(resume) => (plan, 0, resume.attempted, resume.next_available, Some(resume.token)),
                None => (plan, 0, false, None, None),
            }
        }
    };
    let senders = route.senders(&job.message);
    for index in start..plan.len() {
        let handle = &plan[index];
        if job.counted() >= max_attempts {
            break;
        }
        let now = Instant::now();
        if let Some(until) = handle.health().pause.paused_until(now) {
            next_available = earliest(next_available, until);
            continue;
        }
        let Some(permit) = handle.health().breaker.try_acquire(now) else {
            let until = handle.health().breaker.open_until(now).unwrap_or(now + PROBE_RECHECK);
            next_available = earliest(next_available, until);
            continue;
        };
        // The provider's rate-limit token: the one this message reserved before, else the next.
        // One not due yet is waited for out of the worker slots: the message is requeued for
        // when it is due, with the rest of its round, and the slot serves other messages.
        let reserved = match token.take_if(|t| t.serves(handle)) {
            Some(reserved) => Some(reserved),
            None => Reservation::take(handle, now),
        };
        if let Some(reserved) = reserved {
            let wait = reserved.due.saturating_duration_since(now);
            if wait > TOKEN_WAIT_IN_SLOT {
                let _ = handle.health().breaker.record(permit, Verdict::Neutral, now);
                tracing::debug!(message_id = %job.message.id, provider = &*handle.label, wait_ms = wait.as_millis(), "waiting for a rate-limit token out of the worker slots");
                let snapshot = Arc::clone(&snapshot);
                return Round::Wait(Resume {
                    snapshot,
                    plan,
                    next: index,
                    attempted,
                    next_available,
                    token: reserved,
                });
            }
            reserved.spend();
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        // Asked right before every attempt (after any rate-limit wait), failovers included: an
        // opt-out recorded while the message waited, or between two providers, ends it unsent.
        match blocked(shared.store.as_ref(), channel.as_str(), &senders, &job.message.to).await {
            Ok(None) => {}
            Ok(Some(why)) => {
                let _ = handle.health().breaker.record(permit, Verdict::Neutral, Instant::now());
                finish(shared, job, Final::Failed { provider: None, failure: why.failure() }, None).await;
                return Round::Done;
            }
            Err(error) => {
                // Not known to be allowed: not sent now, asked again after a pause.
                let _ = handle.health().breaker.record(permit, Verdict::Neutral, Instant::now());
                tracing::warn!(message_id = %job.message.id, error = %error, "could not check the recipient's opt-out; retrying later");
                return Round::Retry(OPT_OUT_RECHECK);
            }
        }
        attempted = true;
        job.attempts += 1;
        // Recorded before the call: after a crash, an attempt with no outcome is a possible
        // duplicate. On a shared queue this also renews the lease, and refuses if another
        // instance took the message over: then it is theirs to send.
        let (id, number, label) = (&job.message.id, job.attempts, &handle.label);
        let started =
            persist(shared, id, "attempt start", || shared.store.attempt_started(id, number, label));
        if started.await.is_err() {
            let _ = handle.health().breaker.record(permit, Verdict::Neutral, Instant::now());
            return Round::Done;
        }
        let (result, record) = attempt(shared, handle, job).await;
        let verdict = match &result {
            Ok(_) => Verdict::Success,
            Err(SendError::RateLimited { .. } | SendError::Rejected { .. }) => Verdict::Neutral,
            Err(_) => Verdict::Failure,
        };
        if let Some(state) = handle.health().breaker.record(permit, verdict, Instant::now()) {
            breaker_changed(shared, handle, state);
        }
        let provider = Arc::clone(&handle.label);
        match result {
            // The final attempt is stored with the message's end, in one write: a crash cannot
            // leave a recorded success on a message still queued (to be sent again).
            Ok(provider_message_id) => {
                finish(shared, job, Final::Sent { provider, provider_message_id }, Some(record)).await;
                return Round::Done;
            }
            Err(error @ SendError::Rejected { .. }) => {
                let failure = Failure { code: FailureCode::Rejected, message: error.to_string() };
                finish(shared, job, Final::Failed { provider: Some(provider), failure }, Some(record)).await;
                return Round::Done;
            }
            Err(error) => {
                let (id, number) = (&job.message.id, job.attempts);
                let recorded = persist(shared, id, "attempt", || {
                    shared.store.record_attempt(id, number, record.clone())
                });
                if recorded.await.is_err() {
                    return Round::Done;
                }
                if let SendError::RateLimited { retry_after } = &error {
                    // A provider-given delay is capped (`max_retry_after_ms`), and adding it to
                    // the clock cannot overflow.
                    let cap = handle.config.settings.max_retry_after;
                    let pause = retry_after.map(|d| d.min(cap)).unwrap_or(DEFAULT_RATE_LIMIT_PAUSE.min(cap));
                    let now = Instant::now();
                    let until = now.checked_add(pause).unwrap_or(now);
                    handle.health().pause.pause_until(until);
                    next_available = earliest(next_available, until);
                }
                job.last_error = Some((provider, error));
            }
        }
    }
    if job.counted() >= max_attempts {
        let (provider, message) = match &job.last_error {
            Some((provider, error)) => (
                Some(provider.clone()),
                format!("gave up after {} attempts; last error: {error}", job.counted()),
            ),
            None => (None, format!("gave up after {} attempts", job.counted())),
        };
        let failure = Failure { code: FailureCode::AttemptsExhausted, message };
        finish(shared, job, Final::Failed { provider, failure }, None).await;
        return Round::Done;
    }
    let now = Instant::now();
    let wait_for_provider = next_available.map(|until| until.saturating_duration_since(now));
    let delay = match (attempted, plan.first()) {
        // The backoff of the route's first provider (in this message's order).
        (true, Some(first)) => backoff::delay(&first.config.settings.retry, job.round + 1, backoff::jitter()),
        // Every provider is paused or open: come back when the first one is usable again.
        _ => wait_for_provider.unwrap_or(PROBE_RECHECK),
    };
    Round::Retry(delay.max(Duration::from_millis(1)))
}

fn earliest(current: Option<Instant>, candidate: Instant) -> Option<Instant> {
    Some(current.map_or(candidate, |c| c.min(candidate)))
}

/// One attempt: send within the provider's timeout, log and count it.
/// Returns the outcome and its record, for the caller to store with what it decides.
async fn attempt(
    shared: &Shared,
    handle: &ProviderHandle,
    job: &Job,
) -> (Result<Option<String>, SendError>, Attempt) {
    let message = &job.message;
    let instance = handle.instance();
    let started = Instant::now();
    let result = match tokio::time::timeout(handle.config.settings.timeout, instance.send(message)).await {
        Ok(result) => result.map(|receipt| receipt.provider_message_id),
        Err(_) => Err(SendError::Timeout),
    };
    let latency = started.elapsed();
    // What the provider said is hostile input: cleaned here, the one place, of the credentials
    // it was sent, of recipients, of HTML and excess length, before any log line, record,
    // `last_error` or final failure sees it.
    let sent = instance.credentials_sent();
    let result = match result {
        Ok(provider_message_id) => Ok(sent.clean_message_id(provider_message_id, &message.to)),
        Err(error) => Err(sent.clean_error(error, message)),
    };
    let error = result.as_ref().err();
    let outcome = Outcome::of(error);
    let provider = &*handle.label;
    let channel = message.channel.as_str();
    shared.metrics.attempt(provider, channel, outcome, latency);
    let latency_ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
    match error {
        None => {
            tracing::debug!(message_id = %message.id, channel, provider, attempt = job.attempts, outcome = outcome.as_str(), latency_ms, to = %mask_recipient(&message.to), "dispatch attempt")
        }
        Some(error) => {
            tracing::info!(message_id = %message.id, channel, provider, attempt = job.attempts, outcome = outcome.as_str(), latency_ms, to = %mask_recipient(&message.to), error = %error, "dispatch attempt failed")
        }
    }
    let record = Attempt {
        provider: Arc::clone(&handle.label),
        outcome,
        error_class: error.map(SendError::class),
        error_code: error.and_then(|e| e.code().map(str::to_owned)),
        error_message: error.map(ToString::to_string),
        latency_ms,
        time: SystemTime::now(),
    };
    (result, record)
}

async fn finish(shared: &Shared, job: &Job, outcome: Final, last_attempt: Option<Attempt>) {
    // The held mark goes when the job ends (`dispatch`), after this.
    let _ = finish_message(shared, &job.message, job.attempts, outcome, last_attempt).await;
}

/// Ends a message: logs and counts it, and stores its end (retried until the store takes it).
async fn finish_message(
    shared: &Shared,
    message: &OutboundMessage,
    attempts: u32,
    outcome: Final,
    last_attempt: Option<Attempt>,
) -> Result<(), Lost> {
    let status = match &outcome {
        Final::Sent { .. } => Status::Sent,
        Final::Failed { .. } => Status::Failed,
    };
    match &outcome {
        Final::Sent { provider, .. } => {
            tracing::debug!(message_id = %message.id, channel = message.channel.as_str(), provider = &**provider, attempts, "message sent");
        }
        Final::Failed { provider, failure } => {
            tracing::warn!(message_id = %message.id, channel = message.channel.as_str(), provider = provider.as_deref().unwrap_or("-"), attempts, reason = failure.code.as_str(), error = failure.message.as_str(), "message failed");
        }
    }
    shared.metrics.completed(message.channel.as_str(), status);
    let last_attempt = last_attempt.map(|record| (attempts, record));
    let id = &message.id;
    persist(shared, id, "end", || shared.store.finish(id, outcome.clone(), last_attempt.clone())).await
}

fn breaker_changed(shared: &Shared, handle: &ProviderHandle, state: BreakerState) {
    let provider = handle.config.name.as_str();
    shared.metrics.breaker_transition(provider, state);
    match state {
        BreakerState::Open => tracing::warn!(provider, "circuit breaker opened"),
        _ => tracing::info!(provider, state = state.as_str(), "circuit breaker changed"),
    }
}

#[cfg(test)]
mod tests;

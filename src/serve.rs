//! `switchboard serve`: load and validate the config, build the snapshot, start the dispatch
//! workers and the HTTP server; on SIGTERM/SIGINT stop accepting, let dispatches in flight
//! finish within the grace period, and report what was still queued.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::accept::Acceptor;
use crate::auth::ApiKeys;
use crate::config::{self, render_human, Environment, Severity};
use crate::dispatch::{DispatchConfig, Dispatcher};
use crate::http::guard::{Guard, RequestLimits};
use crate::http::{router, AppState};
use crate::inbound::Receiver;
use crate::metrics::Metrics;
use crate::reload::{spawn_watchers, Reloader, WatchOptions};
use crate::routing::{self, Snapshot};
use crate::store::MessageStore;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub config: PathBuf,
    pub listen: String,
    pub dispatch: DispatchConfig,
    pub grace_period: Duration,
    pub body_limit: usize,
    pub inbound_body_limit: usize,
    /// `status_callback` URLs may be http to a loopback host.
    pub allow_loopback_callbacks: bool,
    /// Signs status callbacks (`SWITCHBOARD_CALLBACK_SECRET`); without it none is sent.
    pub callback_secret: Option<crate::callbacks::CallbackSecret>,
    pub memory_retention: usize,
    pub reload: WatchOptions,
    /// `sqlite://PATH` or `memory://`.
    pub store: String,
    /// How long finished messages are kept in a durable store.
    pub retention: Duration,
    /// API keys; none: authentication off (loopback only).
    pub api_keys: ApiKeys,
    pub limits: RequestLimits,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Load(#[from] config::LoadError),
    /// The config has errors; the diagnostics were printed.
    #[error("{path}: invalid: {errors} error(s); not starting")]
    Invalid { path: String, errors: usize },
    #[error("cannot build the providers: {0}")]
    Build(#[from] routing::BuildError),
    #[error("cannot listen on {address}: {source}")]
    Listen { address: String, source: std::io::Error },
    #[error("cannot send status callbacks: {0}")]
    Callbacks(String),
    #[error("the HTTP server failed: {0}")]
    Server(std::io::Error),
    #[error(
        "refusing to listen on {address} without API keys: anyone who can reach it could send messages at your \
         expense. Configure keys (SWITCHBOARD_API_KEYS or --api-keys-file; `switchboard keys new NAME` makes one) \
         or listen on a loopback address such as 127.0.0.1"
    )]
    Unprotected { address: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

pub async fn serve(options: ServeOptions) -> Result<(), ServeError> {
    // Checked before anything starts: without keys, only this machine may reach the API.
    if !options.api_keys.is_enabled() && !resolves_to_loopback(&options.listen).await {
        return Err(ServeError::Unprotected { address: options.listen.clone() });
    }
    let loaded = config::load_file(&options.config, &Environment::from_process())?;
    for diagnostic in &loaded.diagnostics {
        match diagnostic.severity {
            Severity::Error => eprintln!("{}", render_human(&loaded.source, diagnostic)),
            Severity::Warning => {
                let located = config::diagnostic::locate(&loaded.source, diagnostic);
                tracing::warn!(
                    code = located.code,
                    line = located.line,
                    column = located.column,
                    "config: {}",
                    located.message
                );
            }
        }
    }
    let Some(resolved) = loaded.config else {
        return Err(ServeError::Invalid { path: loaded.source.name.clone(), errors: loaded.errors() });
    };
    let snapshot = Snapshot::build(resolved, loaded.version.clone(), None)?;
    tracing::info!(
        version = %snapshot.version,
        providers = snapshot.providers().len(),
        routes = snapshot.routes().len(),
        "config {} loaded",
        loaded.source.name
    );
    let metrics = Arc::new(Metrics::new());
    for provider in snapshot.providers() {
        metrics.breaker_state(&provider.config.name, crate::health::BreakerState::Closed);
    }
    let snapshot = Arc::new(ArcSwap::from_pointee(snapshot));

    let store: Arc<dyn MessageStore> = crate::store::open(&options.store, options.memory_retention).await?;
    if store.is_durable() {
        tracing::info!(store = %store.describe(), "message store opened");
    } else {
        tracing::warn!(store = %store.describe(), "messages are kept in memory: nothing survives a restart");
    }
    // A shared queue (PostgreSQL) is resumed by claiming due messages, by any instance.
    let pending = if store.shared_queue() { Vec::new() } else { store.pending().await? };
    let durable = store.is_durable();

    let reloader =
        Arc::new(Reloader::new(options.config.clone(), Arc::clone(&snapshot), Arc::clone(&metrics)));
    let (stop_watching, watching) = tokio::sync::watch::channel(false);
    let watchers = spawn_watchers(Arc::clone(&reloader), options.reload, watching);

    let (dispatcher, workers) =
        Dispatcher::start(Arc::clone(&snapshot), Arc::clone(&store), Arc::clone(&metrics), options.dispatch);
    if !pending.is_empty() {
        tracing::info!(messages = pending.len(), "resuming messages accepted before the last stop");
    }
    dispatcher.resume(pending);
    let purger =
        tokio::spawn(purge_finished(Arc::clone(&store), options.retention, stop_watching.subscribe()));
    let stats = Arc::new(crate::stats::Stats::new());
    let sampler = {
        let queued = dispatcher.clone();
        tokio::spawn(crate::stats::run(
            Arc::clone(&stats),
            Arc::clone(&snapshot),
            Arc::clone(&metrics),
            move || queued.queue_depth(),
            stop_watching.subscribe(),
        ))
    };
    let callbacks = match options.callback_secret.clone() {
        Some(secret) => {
            let client = crate::callbacks::Callbacks::new(secret, options.allow_loopback_callbacks)
                .map_err(|error| ServeError::Callbacks(error.to_string()))?;
            let worker = crate::outbox::run(
                Arc::clone(&store),
                Arc::new(client),
                Arc::clone(&metrics),
                stop_watching.subscribe(),
            );
            Some(tokio::spawn(worker))
        }
        None => {
            tracing::info!(
                "status callbacks are off: SWITCHBOARD_CALLBACK_SECRET is not set (sends naming a status_callback are refused; callbacks a route's default queues wait for it)"
            );
            None
        }
    };
    let acceptor =
        Acceptor::new(Arc::clone(&snapshot), dispatcher.clone(), Arc::clone(&store), Arc::clone(&metrics));
    let state = Arc::new(AppState {
        snapshot,
        acceptor,
        receiver: Receiver::new(Arc::clone(&store), Arc::clone(&metrics)),
        dispatcher: dispatcher.clone(),
        store: Arc::clone(&store),
        metrics,
        stats,
        reloader,
        ready: AtomicBool::new(true),
        body_limit: options.body_limit,
        inbound_body_limit: options.inbound_body_limit,
        allow_loopback_callbacks: options.allow_loopback_callbacks,
        callbacks_on: options.callback_secret.is_some(),
        guard: Guard::new(options.api_keys.clone(), &options.limits),
    });

    let signals = ShutdownSignals::install();
    let listener = tokio::net::TcpListener::bind(&options.listen)
        .await
        .map_err(|source| ServeError::Listen { address: options.listen.clone(), source })?;
    let address: SocketAddr = listener
        .local_addr()
        .map_err(|source| ServeError::Listen { address: options.listen.clone(), source })?;
    if !options.api_keys.is_enabled() {
        tracing::warn!("authentication is off: no API keys configured (SWITCHBOARD_API_KEYS, --api-keys-file); listening on loopback only");
    }
    tracing::info!(%address, "listening on http://{address}");

    // Shutdown, in order: not ready (`/readyz` 503, sends refused 503 `shutting_down`) while
    // the listener stays open and messages in flight finish; then the listener closes and
    // requests being answered get the grace period.
    let (stop_accepting, accepting_stopped) = tokio::sync::oneshot::channel::<()>();
    let server =
        crate::http::server::serve(listener, router(Arc::clone(&state)), &options.limits, async move {
            let _ = accepting_stopped.await;
        });
    // The server ends by itself only on an error; the messages in flight are finished then too.
    let (server_ended, server_ended_rx) = tokio::sync::oneshot::channel::<()>();
    let drain = async {
        tokio::select! {
            () = signals.received() => {}
            _ = server_ended_rx => {}
        }
        state.ready.store(false, Ordering::Relaxed);
        tracing::info!(grace_period = ?options.grace_period, "shutting down: not ready, refusing sends, finishing messages in flight");
        let remaining = workers.shutdown(options.grace_period).await;
        let _ = stop_watching.send(true);
        for task in watchers {
            let _ = task.await;
        }
        let _ = purger.await;
        let _ = sampler.await;
        if let Some(worker) = callbacks {
            let _ = worker.await;
        }
        remaining
    };
    let mut server = std::pin::pin!(server);
    let mut drain = std::pin::pin!(drain);
    let (remaining, ended) = tokio::select! {
        result = &mut server => {
            let _ = server_ended.send(());
            (drain.await, Some(result))
        }
        remaining = &mut drain => (remaining, None),
    };
    let served = match ended {
        Some(result) => result,
        None => {
            let _ = stop_accepting.send(());
            tracing::info!("no longer accepting connections");
            match tokio::time::timeout(options.grace_period, &mut server).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!("open HTTP connections did not finish within the grace period");
                    Ok(())
                }
            }
        }
    };
    if remaining > 0 && store.shared_queue() {
        tracing::info!(
            queued = remaining,
            "stopped with {remaining} messages still queued in the shared store (any instance carries them on)"
        );
    } else if remaining > 0 && durable {
        tracing::info!(
            queued = remaining,
            "stopped with {remaining} messages still queued (stored: they resume at the next start)"
        );
    } else if remaining > 0 {
        tracing::warn!(
            queued = remaining,
            "stopped with {remaining} messages still queued (memory store: they are lost)"
        );
    } else {
        tracing::info!(queued = 0, "stopped with no message left queued");
    }
    served.map_err(ServeError::Server)
}

/// Deletes finished messages older than `retention`, in small batches so sends never wait long.
async fn purge_finished(
    store: Arc<dyn MessageStore>,
    retention: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    const BATCH: u32 = 500;
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = every.tick() => {
                let before = std::time::SystemTime::now() - retention;
                let mut purged = 0;
                loop {
                    match store.purge(before, BATCH).await {
                        Ok(n) => {
                            purged += n;
                            if n < u64::from(BATCH) {
                                break;
                            }
                            tokio::task::yield_now().await;
                        }
                        Err(error) => {
                            tracing::warn!(error = %error, "retention purge failed");
                            break;
                        }
                    }
                }
                if purged > 0 {
                    tracing::info!(purged, "purged finished messages past retention");
                }
            }
        }
    }
}

/// Whether every address `listen` names is a loopback one. An address that does not resolve
/// passes: binding it fails with its own error.
async fn resolves_to_loopback(listen: &str) -> bool {
    match tokio::net::lookup_host(listen).await {
        Ok(addresses) => addresses.into_iter().all(|address| address.ip().is_loopback()),
        Err(_) => true,
    }
}

/// SIGTERM and SIGINT, listened for from before the service says it is listening, so a signal
/// sent right after that line is never missed (its default action would kill the process).
struct ShutdownSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            ShutdownSignals {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            ShutdownSignals {}
        }
    }

    async fn received(self) {
        #[cfg(unix)]
        {
            match (self.term, self.int) {
                (Some(mut term), Some(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => tracing::info!("SIGTERM received"),
                        _ = int.recv() => tracing::info!("SIGINT received"),
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

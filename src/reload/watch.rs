//! What triggers a reload: a `notify` watch on the config file's directory (so in-place writes,
//! write-then-rename, `sed -i` and `..data` symlink swaps are all seen), a periodic content
//! check as a backstop, and SIGHUP.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{Reloader, Trigger};

#[derive(Debug, Clone, Copy)]
pub struct WatchOptions {
    /// Quiet time after a change before reloading, so a burst of writes reloads once.
    pub debounce: Duration,
    /// How often the content hash is checked even without events.
    pub poll_interval: Duration,
}

/// The directory to watch: the config path's parent (`.` for a bare file name).
fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Identifies the directory itself, to notice when it is replaced.
fn identity(dir: &Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        std::fs::metadata(dir).ok().map(|_| (0, 0))
    }
}

struct Armed {
    _watcher: notify::RecommendedWatcher,
    identity: Option<(u64, u64)>,
}

/// Whether an event may concern the config: it names the config file, a `..`-prefixed entry
/// (the `..data` symlink of a mounted config directory), or no path at all (errors, rescans).
/// Other files in the directory (logs, editors' swap files) are ignored.
fn concerns(event: &notify::Event, file_name: &std::ffi::OsStr) -> bool {
    event.paths.is_empty()
        || event.paths.iter().any(|path| match path.file_name() {
            Some(name) => name == file_name || name.to_string_lossy().starts_with(".."),
            None => true,
        })
}

fn arm(dir: &Path, file_name: &std::ffi::OsStr, events: &mpsc::UnboundedSender<()>) -> Option<Armed> {
    let sender = events.clone();
    let file_name = file_name.to_owned();
    let handler = move |event: notify::Result<notify::Event>| match event {
        // Reading the file must not trigger a reload.
        Ok(event) if matches!(event.kind, EventKind::Access(_)) => {}
        Ok(event) if !concerns(&event, &file_name) => {}
        // Errors (e.g. the directory vanished) prompt a check too.
        other => {
            tracing::trace!(event = ?other, "config directory event");
            let _ = sender.send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::warn!(error = %error, "cannot create a file watcher; relying on the periodic check");
            return None;
        }
    };
    if let Err(error) = watcher.watch(dir, RecursiveMode::NonRecursive) {
        tracing::warn!(directory = %dir.display(), error = %error, "cannot watch the config directory; relying on the periodic check");
        return None;
    }
    tracing::debug!(directory = %dir.display(), "watching the config directory");
    Some(Armed { _watcher: watcher, identity: identity(dir) })
}

/// Starts the watcher, the periodic check and the SIGHUP handler; they stop when `stop` turns
/// true. The directory is watched before this returns, so no change after it is missed.
pub fn spawn_watchers(
    reloader: Arc<Reloader>,
    options: WatchOptions,
    stop: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let dir = directory_of(reloader.path());
    let file_name = reloader.path().file_name().map(ToOwned::to_owned).unwrap_or_default();
    let (events_tx, events) = mpsc::unbounded_channel();
    let armed = arm(&dir, &file_name, &events_tx);
    let watched = Watched { dir, file_name, events_tx, events, armed };
    let mut tasks =
        vec![tokio::spawn(watch_directory(Arc::clone(&reloader), watched, options, stop.clone()))];
    // Listened for before this returns (before the service says it is listening): a SIGHUP
    // sent at once is a reload, never the default action (the process ending).
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangups) => tasks.push(tokio::spawn(on_sighup(reloader, hangups, stop))),
        Err(_) => tracing::warn!("cannot listen for SIGHUP"),
    }
    tasks
}

/// The config directory under watch.
struct Watched {
    dir: PathBuf,
    file_name: std::ffi::OsString,
    events_tx: mpsc::UnboundedSender<()>,
    events: mpsc::UnboundedReceiver<()>,
    armed: Option<Armed>,
}

async fn watch_directory(
    reloader: Arc<Reloader>,
    watched: Watched,
    options: WatchOptions,
    mut stop: watch::Receiver<bool>,
) {
    let Watched { dir, file_name, events_tx, mut events, mut armed } = watched;
    let mut poll = tokio::time::interval(options.poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    poll.tick().await;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(()) = events.recv() => {
                tokio::time::sleep(options.debounce).await;
                while events.try_recv().is_ok() {}
                rearm_if_replaced(&dir, &file_name, &mut armed, &events_tx);
                if unless_stopped(reloader.reload(Trigger::Watch), &mut stop).await.is_none() {
                    break;
                }
            }
            _ = poll.tick() => {
                rearm_if_replaced(&dir, &file_name, &mut armed, &events_tx);
                let check = async {
                    if reloader.file_changed().await {
                        reloader.reload(Trigger::Poll).await;
                    }
                };
                if unless_stopped(check, &mut stop).await.is_none() {
                    break;
                }
            }
        }
    }
}

/// Runs `work` unless `stop` turns true first (`None`): shutdown never waits for a reload. A
/// reload given up this way leaves at most a read in its blocking thread; the config it would
/// have swapped in is of no use to a stopping service.
async fn unless_stopped<T>(
    work: impl std::future::Future<Output = T>,
    stop: &mut watch::Receiver<bool>,
) -> Option<T> {
    tokio::select! {
        done = work => Some(done),
        _ = stop.changed() => None,
    }
}

/// A replaced (or recreated) directory no longer delivers events to the old watch: watch anew.
fn rearm_if_replaced(
    dir: &Path,
    file_name: &std::ffi::OsStr,
    armed: &mut Option<Armed>,
    events: &mpsc::UnboundedSender<()>,
) {
    let now = identity(dir);
    let stale = match armed {
        Some(current) => current.identity != now,
        None => true,
    };
    if stale && now.is_some() {
        tracing::info!(directory = %dir.display(), "config directory replaced: watching it again");
        *armed = arm(dir, file_name, events);
    }
}

#[cfg(unix)]
async fn on_sighup(
    reloader: Arc<Reloader>,
    mut hangups: tokio::signal::unix::Signal,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(()) = hangups.recv() => {
                tracing::info!("SIGHUP received: reloading the config");
                if unless_stopped(reloader.reload(Trigger::Signal), &mut stop).await.is_none() {
                    break;
                }
            }
        }
    }
}

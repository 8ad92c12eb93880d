//! Hot reload of routes.toml: load and validate the whole file exactly like `validate`, build
//! the new snapshot (carrying over unchanged providers), and only then swap it in. A bad file
//! leaves the last good snapshot serving.

mod watch;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use serde::Serialize;

pub use watch::{spawn_watchers, WatchOptions};

use crate::config::diagnostic::{locate, Located};
use crate::config::{self, Environment, Severity};
use crate::metrics::{Metrics, ReloadResult};
use crate::routing::Snapshot;

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The service started with this config.
    Start,
    /// A change in the config file's directory.
    Watch,
    /// The periodic content check.
    Poll,
    /// SIGHUP.
    Signal,
    /// `POST /admin/reload`.
    Admin,
}

/// What changed between two snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Changes {
    pub providers_added: Vec<String>,
    pub providers_removed: Vec<String>,
    /// Providers whose kind or resolved settings changed: they start fresh.
    pub providers_changed: Vec<String>,
    /// Channels whose route was added, removed or changed.
    pub routes_changed: Vec<String>,
}

impl Changes {
    fn between(old: &Snapshot, new: &Snapshot) -> Changes {
        let mut changes = Changes::default();
        for provider in new.providers() {
            match old.provider(&provider.config.name) {
                None => changes.providers_added.push(provider.config.name.clone()),
                Some(before) if !Snapshot::shares_runtime(before, provider) => {
                    changes.providers_changed.push(provider.config.name.clone());
                }
                Some(_) => {}
            }
        }
        for provider in old.providers() {
            if new.provider(&provider.config.name).is_none() {
                changes.providers_removed.push(provider.config.name.clone());
            }
        }
        let channels: BTreeSet<String> =
            old.routes().iter().chain(new.routes().iter()).map(|r| r.config.channel.to_string()).collect();
        for channel in channels {
            let same = match (old.route(&channel), new.route(&channel)) {
                (Some(a), Some(b)) => {
                    a.config.providers == b.config.providers
                        && a.config.strategy == b.config.strategy
                        && a.config.max_attempts == b.config.max_attempts
                }
                (None, None) => true,
                _ => false,
            };
            if !same {
                changes.routes_changed.push(channel);
            }
        }
        changes
    }

    fn describe(&self) -> String {
        let list = |items: &[String]| if items.is_empty() { "-".to_owned() } else { items.join(",") };
        format!(
            "providers added: {}; removed: {}; changed: {}; routes changed: {}",
            list(&self.providers_added),
            list(&self.providers_removed),
            list(&self.providers_changed),
            list(&self.routes_changed)
        )
    }
}

/// The result of one reload.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(tag = "result", rename_all = "snake_case")]
#[schema(as = ReloadOutcome)]
pub enum Outcome {
    Applied { previous_version: String, version: String, changes: Changes },
    Unchanged { version: String },
    Rejected { rejected: Rejection },
}

/// A reload that was refused, kept for `/admin/routes`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Rejection {
    #[serde(serialize_with = "rfc3339")]
    #[schema(schema_with = crate::api_schema::date_time)]
    pub at: SystemTime,
    pub path: String,
    /// Content hash of the rejected file; `null` when it could not be read.
    pub version: Option<String>,
    /// Why, when there are no diagnostics (unreadable file, provider build failure).
    pub error: Option<String>,
    pub diagnostics: Vec<Located>,
    /// The version that kept serving.
    pub active_version: String,
}

/// The active config, for `/admin/routes`.
#[derive(Debug, Clone, Serialize)]
pub struct Active {
    pub version: String,
    pub path: String,
    #[serde(serialize_with = "rfc3339")]
    pub loaded_at: SystemTime,
    pub trigger: Trigger,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub active: Active,
    pub last_rejected: Option<Rejection>,
}

fn rfc3339<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*time))
}

/// What `last_seen` holds while the file cannot be read: the reason, so that the same reason is
/// reported once but a different one (deleted, then replaced by a FIFO) again.
fn unreadable(error: &str) -> String {
    format!("<unreadable: {error}>")
}

/// Serializes reloads and swaps snapshots.
pub struct Reloader {
    path: PathBuf,
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    /// Held for the whole of a reload; holds the content hash last looked at.
    running: tokio::sync::Mutex<String>,
    status: Mutex<Status>,
}

impl Reloader {
    /// `snapshot` holds the config loaded at start from `path`.
    pub fn new(path: PathBuf, snapshot: Arc<ArcSwap<Snapshot>>, metrics: Arc<Metrics>) -> Self {
        let version = snapshot.load().version.clone();
        metrics.config_active(None, &version);
        let active = Active {
            version: version.clone(),
            path: path.display().to_string(),
            loaded_at: SystemTime::now(),
            trigger: Trigger::Start,
        };
        Reloader {
            path,
            snapshot,
            metrics,
            running: tokio::sync::Mutex::new(version),
            status: Mutex::new(Status { active, last_rejected: None }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn status(&self) -> Status {
        self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Whether the file's content differs from what was last looked at (applied or rejected).
    pub async fn file_changed(&self) -> bool {
        let last_seen = self.running.lock().await.clone();
        match self.read().await {
            Ok(bytes) => config::content_version(&bytes) != last_seen,
            Err(error) => last_seen != unreadable(&error),
        }
    }

    /// Reads the file off the async workers, as `validate` does (a regular file, size-capped).
    async fn read(&self) -> Result<Vec<u8>, String> {
        let path = self.path.clone();
        match tokio::task::spawn_blocking(move || config::read_file(&path)).await {
            Ok(read) => read.map_err(|error| error.to_string()),
            Err(join) => Err(format!("reading the config failed: {join}")),
        }
    }

    /// Loads the file and, if it is valid and differs, swaps the new snapshot in.
    pub async fn reload(&self, trigger: Trigger) -> Outcome {
        let mut last_seen = self.running.lock().await;
        let current = self.snapshot.load_full();
        let shown = self.path.display().to_string();
        let passive = matches!(trigger, Trigger::Watch | Trigger::Poll);
        let bytes = match self.read().await {
            Ok(bytes) => bytes,
            Err(error) => {
                // A file still missing is reported once, not at every event in its directory.
                if passive && *last_seen == unreadable(&error) {
                    return Outcome::Unchanged { version: current.version.clone() };
                }
                *last_seen = unreadable(&error);
                return self.reject(trigger, None, Some(error), Vec::new(), &current.version);
            }
        };
        let version = config::content_version(&bytes);
        if passive && version == *last_seen {
            // A file event that changed no byte (touch, a second event of one save): nothing
            // was attempted, so nothing is counted.
            return Outcome::Unchanged { version: current.version.clone() };
        }
        *last_seen = version.clone();

        // Parsing and building a large config is CPU work: keep it off the async workers.
        let previous = Arc::clone(&current);
        let name = shown.clone();
        let built = tokio::task::spawn_blocking(move || {
            let loaded = config::load_bytes(&name, &bytes, &Environment::from_process());
            let diagnostics: Vec<Located> =
                loaded.diagnostics.iter().map(|d| locate(&loaded.source, d)).collect();
            let warnings = loaded.diagnostics.iter().filter(|d| d.severity == Severity::Warning).count();
            match loaded.config {
                None => Err((diagnostics, None)),
                Some(resolved) => Snapshot::build(resolved, loaded.version, Some(&previous))
                    .map(|snapshot| (snapshot, warnings))
                    .map_err(|error| (diagnostics, Some(error.to_string()))),
            }
        })
        .await;
        let (snapshot, warnings) = match built {
            Ok(Ok(built)) => built,
            Ok(Err((diagnostics, error))) => {
                return self.reject(trigger, Some(version), error, diagnostics, &current.version);
            }
            Err(join) => {
                let error = Some(format!("reload task failed: {join}"));
                return self.reject(trigger, Some(version), error, Vec::new(), &current.version);
            }
        };

        let changes = Changes::between(&current, &snapshot);
        if snapshot.version == current.version && changes == Changes::default() {
            self.metrics.reload(ReloadResult::Unchanged);
            tracing::info!(version = %current.version, trigger = ?trigger, "config reload: unchanged");
            return Outcome::Unchanged { version: current.version.clone() };
        }
        let snapshot = Arc::new(snapshot);
        self.snapshot.store(Arc::clone(&snapshot));
        for removed in &changes.providers_removed {
            self.metrics.forget_provider(removed);
        }
        let now = std::time::Instant::now();
        for provider in snapshot.providers() {
            self.metrics.breaker_state(&provider.config.name, provider.health().breaker.state(now));
        }
        self.metrics.config_active(Some(&current.version), &snapshot.version);
        self.metrics.reload(ReloadResult::Applied);
        tracing::info!(
            previous_version = %current.version,
            version = %snapshot.version,
            trigger = ?trigger,
            warnings,
            "config reloaded: {} -> {}; {}",
            current.version,
            snapshot.version,
            changes.describe()
        );
        let mut status = self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        status.active =
            Active { version: snapshot.version.clone(), path: shown, loaded_at: SystemTime::now(), trigger };
        Outcome::Applied {
            previous_version: current.version.clone(),
            version: snapshot.version.clone(),
            changes,
        }
    }

    fn reject(
        &self,
        trigger: Trigger,
        version: Option<String>,
        error: Option<String>,
        diagnostics: Vec<Located>,
        active: &str,
    ) -> Outcome {
        self.metrics.reload(ReloadResult::Rejected);
        let errors = diagnostics.iter().filter(|d| d.severity == Severity::Error).count();
        tracing::warn!(
            version = version.as_deref().unwrap_or("-"),
            active_version = active,
            trigger = ?trigger,
            errors,
            "config reload rejected; version {active} keeps serving{}",
            error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
        );
        for d in diagnostics.iter().filter(|d| d.severity == Severity::Error) {
            let at = match (d.line, d.column, &d.env) {
                (Some(line), Some(column), _) => format!("{}:{line}:{column}", d.file),
                (_, _, Some(var)) => format!("environment variable {var}"),
                _ => d.file.clone(),
            };
            // The fix validate would suggest (did-you-mean) belongs in the log too.
            let help = d.help.as_deref().map(|help| format!("; help: {help}")).unwrap_or_default();
            tracing::warn!(code = d.code, "error[{}]: {} --> {at}{help}", d.code, d.message);
        }
        let rejection = Rejection {
            at: SystemTime::now(),
            path: self.path.display().to_string(),
            version,
            error,
            diagnostics,
            active_version: active.to_owned(),
        };
        self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).last_rejected =
            Some(rejection.clone());
        Outcome::Rejected { rejected: rejection }
    }
}

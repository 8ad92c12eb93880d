//! The validated, fully resolved configuration: every setting of every provider and route
//! computed once, with where each value came from.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;
use switchboard_providers::{Channel, Registration};

/// Where a resolved setting's value came from, most specific first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "layer", content = "name", rename_all = "snake_case")]
pub enum SettingSource {
    /// `[providers.NAME]`
    Provider(String),
    /// `[kinds.KIND]`
    Kind(String),
    /// `[routes.CHANNEL]`
    Route(String),
    /// `[defaults]`
    Defaults,
    /// A `SWITCHBOARD_…` environment variable.
    Env(String),
    /// Switchboard's own default.
    BuiltIn,
}

impl fmt::Display for SettingSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SettingSource::Provider(name) => write!(f, "providers.{name}"),
            SettingSource::Kind(kind) => write!(f, "kinds.{kind}"),
            SettingSource::Route(channel) => write!(f, "routes.{channel}"),
            SettingSource::Defaults => f.write_str("defaults"),
            SettingSource::Env(var) => write!(f, "environment variable {var}"),
            SettingSource::BuiltIn => f.write_str("built-in default"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    #[serde(rename = "initial_backoff_ms", serialize_with = "as_ms")]
    pub initial_backoff: Duration,
    #[serde(rename = "max_backoff_ms", serialize_with = "as_ms")]
    pub max_backoff: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BreakerPolicy {
    pub failure_threshold: u32,
    #[serde(rename = "open_ms", serialize_with = "as_ms")]
    pub open: Duration,
    pub half_open_probes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

/// The settings every provider has, whatever its kind.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ProviderSettings {
    #[serde(rename = "timeout_ms", serialize_with = "as_ms")]
    pub timeout: Duration,
    /// The longest a 429 pauses the provider, whatever it asked for.
    #[serde(rename = "max_retry_after_ms", serialize_with = "as_ms")]
    pub max_retry_after: Duration,
    pub retry: RetryPolicy,
    pub breaker: BreakerPolicy,
    /// `None`: unlimited.
    pub rate_limit: Option<RateLimit>,
}

fn as_ms<S: serde::Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u128(duration.as_millis())
}

/// One `[providers.NAME]`, resolved.
#[derive(Clone, Serialize)]
pub struct ResolvedProvider {
    pub name: String,
    #[serde(serialize_with = "kind_name")]
    pub kind: &'static Registration,
    pub channels: Vec<Channel>,
    pub settings: ProviderSettings,
    /// The kind's own settings as given to its factory. May hold secrets: never print it; use
    /// [`ResolvedProvider::kind_settings_redacted`].
    #[serde(skip)]
    pub kind_settings: serde_json::Value,
    /// Kind settings whose value came from a `${VAR}` reference.
    #[serde(skip)]
    pub secret_settings: Vec<String>,
    /// Where each common setting (dotted key) came from.
    pub sources: BTreeMap<&'static str, SettingSource>,
    /// Where each kind setting that was set came from (unset ones: the kind's default).
    #[serde(skip)]
    pub kind_sources: BTreeMap<String, SettingSource>,
}

fn kind_name<S: serde::Serializer>(kind: &&'static Registration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(kind.kind)
}

impl ResolvedProvider {
    /// The kind settings with every value that came from `${VAR}` replaced by `"<redacted>"`.
    pub fn kind_settings_redacted(&self) -> serde_json::Value {
        let mut shown = self.kind_settings.clone();
        if let Some(object) = shown.as_object_mut() {
            for key in &self.secret_settings {
                if let Some(value) = object.get_mut(key) {
                    *value = serde_json::Value::String("<redacted>".into());
                }
            }
        }
        shown
    }
}

impl fmt::Debug for ResolvedProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolvedProvider")
            .field("name", &self.name)
            .field("kind", &self.kind.kind)
            .field("channels", &self.channels)
            .field("settings", &self.settings)
            .field("kind_settings", &self.kind_settings_redacted())
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Providers in route order; the next one when one fails.
    Failover,
    /// Each message starts at the next provider in turn, then goes round the list.
    RoundRobin,
    /// The first provider is drawn by weight among those usable now; then the rest in weight
    /// order.
    Weighted,
}

impl Strategy {
    /// A route's strategy when none is set.
    pub const DEFAULT: Strategy = Strategy::Failover;

    pub const NAMES: [&'static str; 3] = ["failover", "round_robin", "weighted"];

    pub fn from_name(name: &str) -> Option<Strategy> {
        match name {
            "failover" => Some(Strategy::Failover),
            "round_robin" => Some(Strategy::RoundRobin),
            "weighted" => Some(Strategy::Weighted),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Failover => "failover",
            Strategy::RoundRobin => "round_robin",
            Strategy::Weighted => "weighted",
        }
    }
}

/// What a rule matches on; a message matches when every matcher given matches (each one: any
/// of its values).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Matchers {
    /// E.164 prefixes such as `+44`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub to_prefix: Vec<String>,
    /// Recipient email domains: exact (`example.org`) or subdomains (`*.example.org`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub to_domain: Vec<String>,
    /// Message tags.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// One `[[routes.C.rules]]`, resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResolvedRule {
    pub matchers: Matchers,
    pub strategy: Strategy,
    pub providers: Vec<String>,
    /// One per provider (1 when not given).
    pub weights: Vec<u32>,
}

/// One `[routes.CHANNEL]`, resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResolvedRoute {
    pub channel: Channel,
    /// Provider names in list order.
    pub providers: Vec<String>,
    /// One per provider (1 when not given); used by `weighted`.
    pub weights: Vec<u32>,
    /// Tried first to last; the first that matches picks the providers.
    pub rules: Vec<ResolvedRule>,
    pub strategy: Strategy,
    pub max_attempts: u32,
    /// Country calling codes E.164 recipients must start with; `None`: any.
    pub allowed_country_codes: Option<Vec<String>>,
    /// Messages accepted per recipient per clock hour; `None`: unlimited.
    pub max_per_recipient_per_hour: Option<u32>,
    /// Where changes of its messages' status are POSTed when a message names no URL of its own.
    pub status_callback: Option<String>,
    pub sources: BTreeMap<&'static str, SettingSource>,
}

/// A config that passed validation: providers sorted by name, routes by channel.
#[derive(Debug, Clone, Serialize)]
pub struct ResolvedConfig {
    pub providers: Vec<ResolvedProvider>,
    pub routes: Vec<ResolvedRoute>,
}

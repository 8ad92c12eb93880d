//! The common settings: their specs (type, range, built-in default), reading them from one
//! layer (`[defaults]`, `[kinds.K]`, `[providers.X]`, `[routes.C]`) and resolving them through
//! the layers, most specific first.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::diagnostic::{Code, Diagnostic, Origin};
use super::resolved::{
    BreakerPolicy, ProviderSettings, RateLimit, ResolvedRoute, RetryPolicy, SettingSource, Strategy,
};
use super::suggest::did_you_mean;
use super::tree::{Entry, Node, Table, Value};

#[derive(Debug, Clone, Copy)]
pub enum Ty {
    /// An integer in `min..=max`.
    Int { min: i64, max: i64 },
    /// A number (integer or float) above zero.
    Positive,
    /// One of [`Strategy::NAMES`].
    Strategy,
    /// A non-empty list of country calling codes: strings of 1–3 digits not starting with 0.
    CountryCodes,
    /// A callback URL: https, or http to a loopback host (see `crate::callbacks::check_url`).
    Url,
}

impl Ty {
    /// The type's name in `switchboard providers`.
    pub fn name(self) -> &'static str {
        match self {
            Ty::Int { .. } => "integer",
            Ty::Positive => "number",
            Ty::Strategy => "string",
            Ty::CountryCodes => "array",
            Ty::Url => "string",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Dotted key, e.g. `breaker.open_ms`.
    pub key: &'static str,
    pub ty: Ty,
    /// The built-in default: the one place it is written. The resolver, `switchboard providers`
    /// and `explain` all read it here. `None`: absent unless set.
    pub default: Option<BuiltIn>,
    pub doc: &'static str,
}

/// A setting's built-in default value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltIn {
    Int(i64),
    Strategy(Strategy),
}

impl BuiltIn {
    /// As the setting would be written in JSON (and TOML).
    pub fn to_json(self) -> serde_json::Value {
        match self {
            BuiltIn::Int(n) => n.into(),
            BuiltIn::Strategy(strategy) => strategy.name().into(),
        }
    }
}

impl std::fmt::Display for BuiltIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuiltIn::Int(n) => write!(f, "{n}"),
            BuiltIn::Strategy(strategy) => f.write_str(strategy.name()),
        }
    }
}

const U32: i64 = u32::MAX as i64;
const MS_MAX: i64 = 365 * 24 * 3600 * 1000; // a year: anything longer is a typo

/// Settings of every provider; `[defaults]` and `[kinds.K]` may set them too.
pub const PROVIDER_SPECS: &[Spec] = &[
    Spec {
        key: "timeout_ms",
        ty: Ty::Int { min: 1, max: MS_MAX },
        default: Some(BuiltIn::Int(10000)),
        doc: "Per-attempt timeout, in milliseconds.",
    },
    Spec {
        key: "max_retry_after_ms",
        ty: Ty::Int { min: 0, max: MS_MAX },
        default: Some(BuiltIn::Int(3600000)),
        doc: "The longest a provider's 429 may pause it (its Retry-After or rate-limit reset), in \
              milliseconds; longer asks are cut to this.",
    },
    Spec {
        key: "retry.initial_backoff_ms",
        ty: Ty::Int { min: 0, max: MS_MAX },
        default: Some(BuiltIn::Int(200)),
        doc: "First backoff between retry rounds (exponential, full jitter).",
    },
    Spec {
        key: "retry.max_backoff_ms",
        ty: Ty::Int { min: 0, max: MS_MAX },
        default: Some(BuiltIn::Int(30000)),
        doc: "Cap of the backoff; at least initial_backoff_ms.",
    },
    Spec {
        key: "breaker.failure_threshold",
        ty: Ty::Int { min: 1, max: U32 },
        default: Some(BuiltIn::Int(5)),
        doc: "Consecutive counted failures that open the breaker.",
    },
    Spec {
        key: "breaker.open_ms",
        ty: Ty::Int { min: 1, max: MS_MAX },
        default: Some(BuiltIn::Int(30000)),
        doc: "How long an open breaker stays open before probing.",
    },
    Spec {
        key: "breaker.half_open_probes",
        ty: Ty::Int { min: 1, max: U32 },
        default: Some(BuiltIn::Int(1)),
        doc: "Probes let through while half-open.",
    },
    Spec {
        key: "rate_limit.per_second",
        ty: Ty::Positive,
        default: None,
        doc: "Sends per second (token bucket); absent: unlimited.",
    },
    Spec {
        key: "rate_limit.burst",
        ty: Ty::Int { min: 1, max: U32 },
        default: None,
        doc: "Bucket size; default: per_second rounded up.",
    },
];

/// Settings of routes; `[defaults]` may set them too. Never on a provider or kind.
pub const ROUTE_SPECS: &[Spec] = &[
    Spec {
        key: "max_attempts",
        ty: Ty::Int { min: 1, max: 1000 },
        default: Some(BuiltIn::Int(3)),
        doc: "Attempts per message in total, across the route's providers.",
    },
    Spec {
        key: "strategy",
        ty: Ty::Strategy,
        default: Some(BuiltIn::Strategy(Strategy::DEFAULT)),
        doc: "How providers are picked: `failover` (list order), `round_robin` (each message starts at the \
              next one), `weighted` (first drawn by weight, then weight order).",
    },
    Spec {
        key: "allowed_country_codes",
        ty: Ty::CountryCodes,
        default: None,
        doc: "Country calling codes (e.g. [\"1\", \"44\"]) that E.164 recipients must start with; \
              others are refused with 403 `country_not_allowed`. Absent: every country.",
    },
    Spec {
        key: "max_per_recipient_per_hour",
        ty: Ty::Int { min: 1, max: U32 },
        default: None,
        doc: "Messages accepted per recipient per clock hour on this channel; more are refused with \
              429 `recipient_rate_limited`. Absent: unlimited.",
    },
    Spec {
        key: "status_callback",
        ty: Ty::Url,
        default: None,
        doc: "Where every change of a message's `status` or `delivery_status` is POSTed (signed, \
              Standard Webhooks) when the message names no `status_callback` of its own. https, or \
              http to loopback with `serve --allow-loopback-callbacks`. Absent: no callbacks.",
    },
];

const GROUPS: &[&str] = &["retry", "breaker", "rate_limit"];

/// A checked value of a setting.
#[derive(Debug, Clone, PartialEq)]
pub enum Checked {
    Int(i64),
    Number(f64),
    Strategy(Strategy),
    CountryCodes(Vec<String>),
    Url(String),
}

#[derive(Debug, Clone)]
pub struct Setting {
    pub value: Checked,
    pub origin: Origin,
    pub source: SettingSource,
}

/// Which table a layer is, deciding what it may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    Defaults,
    Kind,
    Provider,
    Route,
}

/// The common settings one table sets, checked.
#[derive(Debug, Default)]
pub struct Layer {
    pub settings: HashMap<&'static str, Setting>,
}

/// Reads the common settings of `table` into a [`Layer`] and returns the entries it does not
/// know, for the caller (provider-only keys, kind settings, unknown keys).
pub fn read_layer<'t>(
    table: &'t Table,
    kind: LayerKind,
    source: &SettingSource,
    diagnostics: &mut Vec<Diagnostic>,
) -> (Layer, Vec<&'t Entry>) {
    let mut layer = Layer::default();
    let mut rest = Vec::new();
    for entry in &table.entries {
        if GROUPS.contains(&entry.key.as_str()) {
            if kind == LayerKind::Route {
                diagnostics.push(provider_setting_on_route(entry));
                continue;
            }
            let Some(group) = entry.node.as_table() else {
                diagnostics.push(wrong_type(&entry.key, &entry.node, "a table"));
                continue;
            };
            for sub in &group.entries {
                let dotted = format!("{}.{}", entry.key, sub.key);
                match PROVIDER_SPECS.iter().find(|s| s.key == dotted) {
                    Some(spec) => check_into(spec, sub, source, &mut layer, diagnostics),
                    None => {
                        let known = PROVIDER_SPECS
                            .iter()
                            .filter_map(|s| s.key.strip_prefix(&format!("{}.", entry.key)));
                        diagnostics.push(
                            Diagnostic::error(
                                Code::UnknownKey,
                                sub.key_origin.clone(),
                                format!("unknown key `{dotted}`"),
                            )
                            .with_help(did_you_mean(&sub.key, known)),
                        );
                    }
                }
            }
        } else if let Some(spec) = PROVIDER_SPECS.iter().find(|s| s.key == entry.key) {
            if kind == LayerKind::Route {
                diagnostics.push(provider_setting_on_route(entry));
            } else {
                check_into(spec, entry, source, &mut layer, diagnostics);
            }
        } else if let Some(spec) = ROUTE_SPECS.iter().find(|s| s.key == entry.key) {
            if matches!(kind, LayerKind::Kind | LayerKind::Provider) {
                diagnostics.push(
                    Diagnostic::error(
                        Code::RouteOnlySetting,
                        entry.key_origin.clone(),
                        format!(
                            "`{}` is a route setting and cannot be set on a {}",
                            entry.key,
                            if kind == LayerKind::Kind { "kind" } else { "provider" }
                        ),
                    )
                    .with_help(Some(format!("set `{}` in [routes.<channel>] or [defaults]", spec.key))),
                );
            } else {
                check_into(spec, entry, source, &mut layer, diagnostics);
            }
        } else {
            rest.push(entry);
        }
    }
    (layer, rest)
}

fn provider_setting_on_route(entry: &Entry) -> Diagnostic {
    Diagnostic::error(
        Code::UnknownKey,
        entry.key_origin.clone(),
        format!("`{}` is a provider setting, not a route setting", entry.key),
    )
    .with_help(Some("set it in [providers.<name>], [kinds.<kind>] or [defaults]".into()))
}

pub fn wrong_type(key: &str, node: &Node, expected: &str) -> Diagnostic {
    Diagnostic::error(
        Code::WrongType,
        node.origin.clone(),
        format!("`{key}` must be {expected}, found {}", node.type_name()),
    )
}

/// An unknown key in `table`, with the nearest known one as help.
pub fn unknown_key<'a>(entry: &Entry, table: &str, known: impl IntoIterator<Item = &'a str>) -> Diagnostic {
    Diagnostic::error(
        Code::UnknownKey,
        entry.key_origin.clone(),
        format!("unknown key `{}` in {table}", entry.key),
    )
    .with_help(did_you_mean(&entry.key, known))
}

fn check_into(
    spec: &Spec,
    entry: &Entry,
    source: &SettingSource,
    layer: &mut Layer,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let node = &entry.node;
    let value = match (spec.ty, &node.value) {
        (Ty::Int { min, max }, Value::Int(n)) => {
            if *n < min || *n > max {
                let bound = if *n < min {
                    if min == 1 {
                        "greater than 0".to_owned()
                    } else {
                        format!("at least {min}")
                    }
                } else {
                    format!("at most {max}")
                };
                diagnostics.push(Diagnostic::error(
                    Code::OutOfRange,
                    node.origin.clone(),
                    format!("`{}` must be {bound}, got {}", spec.key, node.shown()),
                ));
                return;
            }
            Checked::Int(*n)
        }
        (Ty::Int { .. }, _) => {
            diagnostics.push(wrong_type(spec.key, node, "an integer"));
            return;
        }
        (Ty::Positive, Value::Int(_) | Value::Float(_)) => {
            let n = match node.value {
                Value::Int(i) => i as f64,
                Value::Float(f) => f,
                _ => 0.0,
            };
            if !(n > 0.0 && n.is_finite()) {
                diagnostics.push(Diagnostic::error(
                    Code::OutOfRange,
                    node.origin.clone(),
                    format!("`{}` must be a number greater than 0, got {}", spec.key, node.shown()),
                ));
                return;
            }
            Checked::Number(n)
        }
        (Ty::Positive, _) => {
            diagnostics.push(wrong_type(spec.key, node, "a number"));
            return;
        }
        (Ty::Strategy, Value::Str(name)) => match Strategy::from_name(name) {
            Some(strategy) => Checked::Strategy(strategy),
            None => {
                diagnostics.push(
                    Diagnostic::error(
                        Code::UnknownStrategy,
                        node.origin.clone(),
                        format!("unknown strategy {}", node.shown()),
                    )
                    .with_help(
                        did_you_mean(name, Strategy::NAMES.iter().copied())
                            .or_else(|| Some(format!("strategies: {}", Strategy::NAMES.join(", ")))),
                    ),
                );
                return;
            }
        },
        (Ty::Strategy, _) => {
            diagnostics.push(wrong_type(spec.key, node, "a string"));
            return;
        }
        (Ty::CountryCodes, Value::Array(items)) => match country_codes(spec.key, node, items) {
            Ok(codes) => Checked::CountryCodes(codes),
            Err(diagnostic) => {
                diagnostics.push(diagnostic);
                return;
            }
        },
        (Ty::CountryCodes, _) => {
            diagnostics.push(wrong_type(spec.key, node, "an array of strings such as [\"1\", \"44\"]"));
            return;
        }
        // Loopback allowed here: whether it may be used is the server's `--allow-loopback-callbacks`,
        // checked again when a callback connects.
        (Ty::Url, Value::Str(url)) => match crate::callbacks::check_url(url, true) {
            Ok(_) => Checked::Url(url.clone()),
            Err(error) => {
                diagnostics.push(Diagnostic::error(
                    Code::OutOfRange,
                    node.origin.clone(),
                    format!("`{}`: {error}", spec.key),
                ));
                return;
            }
        },
        (Ty::Url, _) => {
            diagnostics.push(wrong_type(
                spec.key,
                node,
                "a URL string such as \"https://example.com/hooks\"",
            ));
            return;
        }
    };
    let source = match &node.origin {
        Origin::Env(var) => SettingSource::Env(var.clone()),
        Origin::File(_) => source.clone(),
    };
    layer.settings.insert(spec.key, Setting { value, origin: node.origin.clone(), source });
}

/// A checked list of country calling codes (1–3 digits, no leading 0, no duplicates).
fn country_codes(key: &str, node: &Node, items: &[Node]) -> Result<Vec<String>, Diagnostic> {
    if items.is_empty() {
        return Err(Diagnostic::error(
            Code::EmptyList,
            node.origin.clone(),
            format!("`{key}` is empty: every recipient would be refused"),
        )
        .with_help(Some(format!("remove `{key}` to allow every country"))));
    }
    let mut codes = Vec::with_capacity(items.len());
    for item in items {
        let Some(code) = item.as_str() else {
            return Err(wrong_type(key, item, "a string of digits such as \"44\""));
        };
        let code = code.strip_prefix('+').unwrap_or(code);
        if !(1..=3).contains(&code.len())
            || !code.bytes().all(|b| b.is_ascii_digit())
            || code.starts_with('0')
        {
            return Err(Diagnostic::error(
                Code::OutOfRange,
                item.origin.clone(),
                format!(
                    "`{key}`: {} is not a country calling code (1 to 3 digits, not starting with 0)",
                    item.shown()
                ),
            ));
        }
        if codes.iter().any(|c| c == code) {
            return Err(Diagnostic::error(
                Code::DuplicateEntry,
                item.origin.clone(),
                format!("`{key}`: code {code} is listed twice"),
            ));
        }
        codes.push(code.to_owned());
    }
    Ok(codes)
}

/// Looks a setting up through the layers, most specific first.
struct Lookup<'a> {
    layers: &'a [&'a Layer],
    sources: BTreeMap<&'static str, SettingSource>,
}

impl<'a> Lookup<'a> {
    fn find(&mut self, key: &'static str) -> Option<&'a Setting> {
        let found = self.layers.iter().find_map(|layer| layer.settings.get(key));
        self.sources.insert(key, found.map_or(SettingSource::BuiltIn, |s| s.source.clone()));
        found
    }

    /// An integer setting: as set, else its spec's built-in default.
    fn int(&mut self, key: &'static str) -> i64 {
        match self.find(key).map(|s| &s.value) {
            Some(Checked::Int(n)) => *n,
            _ => match built_in(key) {
                Some(BuiltIn::Int(n)) => n,
                _ => 0,
            },
        }
    }

    fn ms(&mut self, key: &'static str) -> Duration {
        Duration::from_millis(u64::try_from(self.int(key)).unwrap_or(0))
    }

    fn u32(&mut self, key: &'static str) -> u32 {
        u32::try_from(self.int(key)).unwrap_or(u32::MAX)
    }
}

/// A setting's built-in default, as its spec states it.
fn built_in(key: &str) -> Option<BuiltIn> {
    PROVIDER_SPECS.iter().chain(ROUTE_SPECS).find(|spec| spec.key == key).and_then(|spec| spec.default)
}

/// Resolves a provider's common settings from its layers (provider, kind, defaults).
pub fn resolve_provider(
    layers: &[&Layer],
    diagnostics: &mut Vec<Diagnostic>,
) -> (ProviderSettings, BTreeMap<&'static str, SettingSource>) {
    let mut lookup = Lookup { layers, sources: BTreeMap::new() };
    let retry = RetryPolicy {
        initial_backoff: lookup.ms("retry.initial_backoff_ms"),
        max_backoff: lookup.ms("retry.max_backoff_ms"),
    };
    if retry.max_backoff < retry.initial_backoff {
        let culprit = lookup.find("retry.max_backoff_ms").or_else(|| lookup.find("retry.initial_backoff_ms"));
        if let Some(setting) = culprit {
            diagnostics.push(Diagnostic::error(
                Code::OutOfRange,
                setting.origin.clone(),
                format!(
                    "retry.max_backoff_ms ({} ms) is below retry.initial_backoff_ms ({} ms)",
                    retry.max_backoff.as_millis(),
                    retry.initial_backoff.as_millis()
                ),
            ));
        }
    }
    let breaker = BreakerPolicy {
        failure_threshold: lookup.u32("breaker.failure_threshold"),
        open: lookup.ms("breaker.open_ms"),
        half_open_probes: lookup.u32("breaker.half_open_probes"),
    };
    let per_second = match lookup.find("rate_limit.per_second").map(|s| &s.value) {
        Some(Checked::Number(n)) => Some(*n),
        _ => None,
    };
    let burst = lookup.find("rate_limit.burst");
    let rate_limit = match (per_second, burst) {
        (Some(per_second), Some(Setting { value: Checked::Int(b), .. })) => {
            Some(RateLimit { per_second, burst: u32::try_from(*b).unwrap_or(u32::MAX) })
        }
        (Some(per_second), _) => {
            Some(RateLimit { per_second, burst: per_second.ceil().clamp(1.0, f64::from(u32::MAX)) as u32 })
        }
        (None, Some(setting)) => {
            diagnostics.push(Diagnostic::warning(
                Code::NoEffect,
                setting.origin.clone(),
                "`rate_limit.burst` has no effect without `rate_limit.per_second`",
            ));
            None
        }
        (None, None) => None,
    };
    let settings = ProviderSettings {
        timeout: lookup.ms("timeout_ms"),
        max_retry_after: lookup.ms("max_retry_after_ms"),
        retry,
        breaker,
        rate_limit,
    };
    (settings, lookup.sources)
}

/// Resolves a route's settings from its layers (route, defaults).
pub fn resolve_route(
    layers: &[&Layer],
    channel: switchboard_providers::Channel,
    providers: Vec<String>,
) -> ResolvedRoute {
    let mut lookup = Lookup { layers, sources: BTreeMap::new() };
    let strategy = match lookup.find("strategy").map(|s| &s.value) {
        Some(Checked::Strategy(strategy)) => *strategy,
        _ => Strategy::DEFAULT,
    };
    let max_attempts = lookup.u32("max_attempts");
    let allowed_country_codes = match lookup.find("allowed_country_codes").map(|s| &s.value) {
        Some(Checked::CountryCodes(codes)) => Some(codes.clone()),
        _ => None,
    };
    let max_per_recipient_per_hour = match lookup.find("max_per_recipient_per_hour").map(|s| &s.value) {
        Some(Checked::Int(n)) => u32::try_from(*n).ok(),
        _ => None,
    };
    let status_callback = match lookup.find("status_callback").map(|s| &s.value) {
        Some(Checked::Url(url)) => Some(url.clone()),
        _ => None,
    };
    let weights = vec![1; providers.len()];
    ResolvedRoute {
        channel,
        providers,
        weights,
        rules: Vec::new(),
        strategy,
        max_attempts,
        allowed_country_codes,
        max_per_recipient_per_hour,
        status_callback,
        sources: lookup.sources,
    }
}

/// Every key a provider table may hold besides its kind's own settings.
pub fn provider_keys() -> impl Iterator<Item = &'static str> {
    ["kind", "channels"]
        .into_iter()
        .chain(GROUPS.iter().copied())
        .chain(PROVIDER_SPECS.iter().filter(|s| !s.key.contains('.')).map(|s| s.key))
}

/// Every key `[defaults]` may hold.
pub fn defaults_keys() -> impl Iterator<Item = &'static str> {
    GROUPS
        .iter()
        .copied()
        .chain(PROVIDER_SPECS.iter().chain(ROUTE_SPECS).filter(|s| !s.key.contains('.')).map(|s| s.key))
}

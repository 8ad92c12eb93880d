//! Walks the merged tree, reports every problem with its position, and resolves what is valid.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use switchboard_providers::{registry, Channel, Registration};

use super::diagnostic::{Code, Diagnostic, Origin};
use super::members::{listed_names, RouteMembers};
use super::resolved::{ResolvedConfig, ResolvedProvider, ResolvedRoute, SettingSource};
use super::rules;
use super::settings::{self, read_layer, unknown_key, wrong_type, Layer, LayerKind};
use super::suggest::did_you_mean;
use super::tree::{Entry, Node, Table, Value};

const TOP_LEVEL: &[&str] = &["defaults", "kinds", "providers", "routes"];

/// A `[kinds.K]` table, read once for all providers of kind K.
struct KindLayer<'t> {
    layer: Layer,
    /// The kind's own settings set here.
    kind_settings: Vec<&'t Entry>,
    channels: Option<&'t Entry>,
}

/// Validates and resolves. The config is `Some` only when no error was found.
pub fn validate(root: &Node, diagnostics: &mut Vec<Diagnostic>) -> Option<ResolvedConfig> {
    let errors_before = count_errors(diagnostics);
    let empty = Table::default();
    let Some(root_table) = root.as_table() else {
        diagnostics.push(wrong_type("the config", root, "a table"));
        return None;
    };
    let mut section = |name: &str| -> &Table {
        match root_table.get(name) {
            Some(entry) => match entry.node.as_table() {
                Some(table) => table,
                None => {
                    diagnostics.push(wrong_type(name, &entry.node, "a table"));
                    &empty
                }
            },
            None => &empty,
        }
    };
    let defaults_table = section("defaults");
    let kinds_table = section("kinds");
    let providers_table = section("providers");
    let routes_table = section("routes");
    for entry in &root_table.entries {
        if !TOP_LEVEL.contains(&entry.key.as_str()) {
            diagnostics.push(
                Diagnostic::error(
                    Code::UnknownKey,
                    entry.key_origin.clone(),
                    format!("unknown top-level key `{}`", entry.key),
                )
                .with_help(
                    did_you_mean(&entry.key, TOP_LEVEL.iter().copied())
                        .or_else(|| Some(format!("the top-level tables are {}", TOP_LEVEL.join(", ")))),
                ),
            );
        }
    }

    let (defaults, rest) =
        read_layer(defaults_table, LayerKind::Defaults, &SettingSource::Defaults, diagnostics);
    for entry in rest {
        diagnostics.push(unknown_key(entry, "[defaults]", settings::defaults_keys()));
    }

    let mut schema_cache: HashMap<&'static str, Vec<String>> = HashMap::new();
    let mut kind_fields = |registration: &'static Registration| -> Vec<String> {
        schema_cache
            .entry(registration.kind)
            .or_insert_with(|| registration.settings().into_iter().map(|doc| doc.name).collect())
            .clone()
    };

    let mut kinds: HashMap<&'static str, KindLayer<'_>> = HashMap::new();
    for entry in &kinds_table.entries {
        let Some(registration) = find_kind(&entry.key, entry.key_origin.clone(), "", diagnostics) else {
            continue;
        };
        let Some(table) = entry.node.as_table() else {
            diagnostics.push(wrong_type(&format!("kinds.{}", entry.key), &entry.node, "a table"));
            continue;
        };
        let source = SettingSource::Kind(registration.kind.to_owned());
        let (layer, rest) = read_layer(table, LayerKind::Kind, &source, diagnostics);
        let fields = kind_fields(registration);
        let mut kind_layer = KindLayer { layer, kind_settings: Vec::new(), channels: None };
        for item in rest {
            if item.key == "channels" {
                check_channels(item, registration, diagnostics);
                kind_layer.channels = Some(item);
            } else if fields.contains(&item.key) {
                kind_layer.kind_settings.push(item);
            } else {
                let known = known_keys(&fields, settings::provider_keys().filter(|k| *k != "kind"));
                diagnostics.push(unknown_key(item, &format!("[kinds.{}]", entry.key), known));
            }
        }
        kinds.insert(registration.kind, kind_layer);
    }

    let mut providers = Vec::with_capacity(providers_table.entries.len());
    for entry in &providers_table.entries {
        if let Some(provider) = validate_provider(entry, &defaults, &kinds, &mut kind_fields, diagnostics) {
            providers.push(provider);
        }
    }
    let by_name: HashMap<&str, &ResolvedProvider> = providers.iter().map(|p| (p.name.as_str(), p)).collect();
    let defined: Vec<&str> = providers_table.entries.iter().map(|e| e.key.as_str()).collect();

    let mut routes = Vec::new();
    for entry in &routes_table.entries {
        if let Some(route) = validate_route(entry, &defaults, &by_name, &defined, diagnostics) {
            routes.push(route);
        }
    }
    // Named by any route, valid or not: an invalid route is reported on its own.
    let used: HashSet<&str> = routes_table
        .entries
        .iter()
        .filter_map(|e| e.node.as_table())
        .flat_map(|route| {
            let rules = match route.get("rules").map(|r| &r.node.value) {
                Some(Value::Array(rules)) => rules.iter().filter_map(Node::as_table).collect(),
                _ => Vec::new(),
            };
            std::iter::once(route)
                .chain(rules)
                .filter_map(|t| t.get("providers"))
                .flat_map(|l| listed_names(&l.node))
        })
        .collect();

    warn_unused(providers_table, &used, diagnostics);
    warn_unrouted(root_table, &providers, routes_table, diagnostics);

    if count_errors(diagnostics) > errors_before {
        return None;
    }
    Some(ResolvedConfig { providers, routes })
}

fn count_errors(diagnostics: &[Diagnostic]) -> usize {
    diagnostics.iter().filter(|d| d.severity == super::diagnostic::Severity::Error).count()
}

/// A kind's own setting names and the common keys, for did-you-mean.
fn known_keys(fields: &[String], common: impl Iterator<Item = &'static str>) -> Vec<&str> {
    let mut known: Vec<&str> = fields.iter().map(String::as_str).collect();
    for key in common {
        known.push(key);
    }
    known
}

fn find_kind(
    name: &str,
    origin: Origin,
    context: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<&'static Registration> {
    if let Some(registration) = switchboard_providers::find(name) {
        return Some(registration);
    }
    let names: Vec<&str> = registry().iter().map(|r| r.kind).collect();
    let help = did_you_mean(name, names.iter().copied())
        .unwrap_or_else(|| format!("registered kinds: {}", names.join(", ")));
    diagnostics.push(
        Diagnostic::error(Code::UnknownKind, origin, format!("unknown provider kind `{name}`{context}"))
            .with_help(Some(help)),
    );
    None
}

fn is_valid_provider_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn suggested_name(name: &str) -> String {
    let mut out: String = name
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' { c } else { '-' })
        .collect();
    while out.starts_with(['-', '_']) {
        out.remove(0);
    }
    out
}

/// Checks a `channels` list against what the kind serves; returns the valid ones.
fn check_channels(
    entry: &Entry,
    registration: &Registration,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<Vec<Channel>> {
    let Value::Array(items) = &entry.node.value else {
        diagnostics.push(wrong_type("channels", &entry.node, "an array of channel names"));
        return None;
    };
    if items.is_empty() {
        diagnostics.push(
            Diagnostic::error(
                Code::EmptyList,
                entry.node.origin.clone(),
                "`channels` is empty: the provider would serve nothing",
            )
            .with_help(Some(format!(
                "remove `channels` to serve everything kind `{}` serves",
                registration.kind
            ))),
        );
        return None;
    }
    let mut channels = Vec::new();
    let mut ok = true;
    for item in items {
        let Some(name) = item.as_str() else {
            diagnostics.push(wrong_type("channels", item, "a string"));
            ok = false;
            continue;
        };
        if !registration.serves(name) {
            let served = registration.channels.join(", ");
            diagnostics.push(
                Diagnostic::error(
                    Code::UnsupportedChannel,
                    item.origin.clone(),
                    format!("kind `{}` does not serve channel {}", registration.kind, item.shown()),
                )
                .with_help(
                    did_you_mean(name, registration.channels.iter().copied())
                        .or(Some(format!("kind `{}` serves {served}", registration.kind))),
                ),
            );
            ok = false;
            continue;
        }
        match Channel::new(name) {
            Ok(channel) if channels.contains(&channel) => {
                diagnostics.push(Diagnostic::error(
                    Code::DuplicateEntry,
                    item.origin.clone(),
                    format!("channel `{name}` is listed twice"),
                ));
                ok = false;
            }
            Ok(channel) => channels.push(channel),
            Err(error) => {
                diagnostics.push(Diagnostic::error(
                    Code::UnsupportedChannel,
                    item.origin.clone(),
                    error.to_string(),
                ));
                ok = false;
            }
        }
    }
    ok.then_some(channels)
}

fn validate_provider(
    entry: &Entry,
    defaults: &Layer,
    kinds: &HashMap<&'static str, KindLayer<'_>>,
    kind_fields: &mut impl FnMut(&'static Registration) -> Vec<String>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<ResolvedProvider> {
    let name = &entry.key;
    if !is_valid_provider_name(name) {
        diagnostics.push(
            Diagnostic::error(Code::InvalidName, entry.key_origin.clone(), format!("invalid provider name {name:?}: use lowercase letters, digits, `-` and `_`, starting with a letter or digit"))
                .with_help(Some(format!("rename it, e.g. `{}`", suggested_name(name)))),
        );
    }
    let Some(table) = entry.node.as_table() else {
        diagnostics.push(wrong_type(&format!("providers.{name}"), &entry.node, "a table"));
        return None;
    };
    let (layer, rest) =
        read_layer(table, LayerKind::Provider, &SettingSource::Provider(name.clone()), diagnostics);

    let registration = match table.get("kind") {
        None => {
            let kinds: Vec<&str> = registry().iter().map(|r| r.kind).collect();
            diagnostics.push(
                Diagnostic::error(
                    Code::MissingKind,
                    entry.key_origin.clone(),
                    format!("provider `{name}` has no `kind`"),
                )
                .with_help(Some(format!("add `kind = \"…\"`; registered kinds: {}", kinds.join(", ")))),
            );
            None
        }
        Some(kind) => match kind.node.as_str() {
            Some(kind_name) => find_kind(
                kind_name,
                kind.node.origin.clone(),
                &format!(" for provider `{name}`"),
                diagnostics,
            ),
            None => {
                diagnostics.push(wrong_type("kind", &kind.node, "a string"));
                None
            }
        },
    };
    let registration = registration?;
    let kind_layer = kinds.get(registration.kind);
    let fields = kind_fields(registration);

    let mut channels_entry = kind_layer.and_then(|k| k.channels);
    let mut own_settings = Vec::new();
    for item in rest {
        match item.key.as_str() {
            "kind" => {}
            "channels" => channels_entry = Some(item),
            key if fields.iter().any(|f| f == key) => own_settings.push(item),
            _ => {
                let known = known_keys(&fields, settings::provider_keys());
                diagnostics.push(unknown_key(item, &format!("provider `{name}`"), known));
            }
        }
    }
    // A list from [kinds.K] was checked when that table was read. An invalid list was reported:
    // go on with what the kind serves, so that routes naming this provider are still checked.
    let checked = match channels_entry {
        Some(item) if kind_layer.and_then(|k| k.channels).is_some_and(|k| std::ptr::eq(k, item)) => {
            check_channels(item, registration, &mut Vec::new())
        }
        Some(item) => check_channels(item, registration, diagnostics),
        None => None,
    };
    let channels = checked.unwrap_or_else(|| {
        if registration.serves_any() {
            Channel::BUILT_IN.to_vec()
        } else {
            registration.channels.iter().filter_map(|c| Channel::new(c).ok()).collect()
        }
    });

    let mut layers = vec![&layer];
    if let Some(kind_layer) = kind_layer {
        layers.push(&kind_layer.layer);
    }
    layers.push(defaults);
    let (settings, sources) = settings::resolve_provider(&layers, diagnostics);

    let (kind_settings, secret_settings, kind_sources) =
        merge_kind_settings(entry, registration, kind_layer, &own_settings, diagnostics);
    Some(ResolvedProvider {
        name: name.clone(),
        kind: registration,
        channels,
        settings,
        kind_settings,
        secret_settings,
        sources,
        kind_sources,
    })
}

/// Merges the kind's own settings (`[kinds.K]`, then the provider's) and lets the kind check
/// them; each problem points at the layer that set the value. The merged settings are returned
/// either way (an error already makes the whole config invalid).
fn merge_kind_settings(
    provider: &Entry,
    registration: &Registration,
    kind_layer: Option<&KindLayer<'_>>,
    own: &[&Entry],
    diagnostics: &mut Vec<Diagnostic>,
) -> (serde_json::Value, Vec<String>, BTreeMap<String, SettingSource>) {
    let mut merged: BTreeMap<&str, &Entry> = BTreeMap::new();
    for item in kind_layer.map(|k| k.kind_settings.as_slice()).unwrap_or_default() {
        merged.insert(&item.key, item);
    }
    for item in own {
        merged.insert(&item.key, item);
    }
    let json =
        serde_json::Value::Object(merged.iter().map(|(k, e)| ((*k).to_owned(), e.node.to_json())).collect());
    let from_environment = |e: &Entry| e.node.secret || matches!(e.node.origin, Origin::Env(_));
    let secrets: Vec<String> = merged
        .iter()
        .filter(|(k, e)| e.node.secret || registration.is_secret(k))
        .map(|(k, _)| (*k).to_owned())
        .collect();
    for (key, entry) in &merged {
        if registration.is_secret(key) && !from_environment(entry) {
            let variable = format!("{}_{}", provider.key, key).to_ascii_uppercase().replace('-', "_");
            diagnostics.push(
                Diagnostic::error(
                    Code::LiteralSecret,
                    entry.node.origin.clone(),
                    format!(
                        "provider `{}`: `{key}` is a credential and must come from the environment, not the file",
                        provider.key
                    ),
                )
                .with_help(Some(format!(
                    "write {key} = \"${{{variable}}}\" and set {variable} where Switchboard runs"
                ))),
            );
        }
    }
    for issue in registration.check(json.clone()) {
        let at = issue.field.as_deref().and_then(|f| merged.get(f));
        let from_kind_table = at.is_some_and(|e| !own.iter().any(|o| std::ptr::eq(*o, *e)));
        let origin = at.map_or_else(|| provider.key_origin.clone(), |e| e.node.origin.clone());
        let message = if at.is_some_and(|e| from_environment(e)) {
            format!(
                "invalid `{}` (value from an environment variable, not shown)",
                issue.field.as_deref().unwrap_or_default()
            )
        } else {
            issue.message
        };
        let context = if from_kind_table {
            format!("kind `{}`", registration.kind)
        } else {
            format!("provider `{}`", provider.key)
        };
        diagnostics.push(
            Diagnostic::error(Code::InvalidSetting, origin, format!("{context}: {message}"))
                .with_help(issue.help),
        );
    }
    let sources = merged
        .iter()
        .map(|(key, entry)| {
            let from_kind_table = !own.iter().any(|o| std::ptr::eq(*o, *entry));
            let source = match &entry.node.origin {
                Origin::Env(var) => SettingSource::Env(var.clone()),
                Origin::File(_) if from_kind_table => SettingSource::Kind(registration.kind.to_owned()),
                Origin::File(_) => SettingSource::Provider(provider.key.clone()),
            };
            ((*key).to_owned(), source)
        })
        .collect();
    (json, secrets, sources)
}

/// Channels that a route may name: built-in ones and those some registered kind serves.
fn known_channels() -> BTreeSet<&'static str> {
    Channel::BUILT_IN_NAMES
        .into_iter()
        .chain(registry().iter().flat_map(|r| r.channels.iter().copied()).filter(|c| *c != "*"))
        .collect()
}

fn validate_route(
    entry: &Entry,
    defaults: &Layer,
    providers: &HashMap<&str, &ResolvedProvider>,
    defined: &[&str],
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<ResolvedRoute> {
    let channel_name = &entry.key;
    let known = known_channels();
    // A kind that carries any channel (webhook) makes a channel known by listing it.
    let listed = |name: &str| providers.values().any(|p| p.channels.iter().any(|c| c.as_str() == name));
    let channel = match Channel::new(channel_name) {
        Ok(channel) if known.contains(channel_name.as_str()) || listed(channel_name) => Some(channel),
        _ => {
            let help = did_you_mean(channel_name, known.iter().copied()).unwrap_or_else(|| {
                format!("known channels: {}", known.iter().copied().collect::<Vec<_>>().join(", "))
            });
            diagnostics.push(
                Diagnostic::error(
                    Code::UnknownChannel,
                    entry.key_origin.clone(),
                    format!("route for unknown channel `{channel_name}`"),
                )
                .with_help(Some(help)),
            );
            None
        }
    };
    let Some(table) = entry.node.as_table() else {
        diagnostics.push(wrong_type(&format!("routes.{channel_name}"), &entry.node, "a table"));
        return None;
    };
    let source = SettingSource::Route(channel_name.clone());
    let (layer, rest) = read_layer(table, LayerKind::Route, &source, diagnostics);
    let mut list = None;
    let mut rules = None;
    for item in rest {
        match item.key.as_str() {
            "providers" => list = Some(item),
            "rules" => rules = Some(item),
            _ => {
                let known = [
                    "providers",
                    "rules",
                    "strategy",
                    "max_attempts",
                    "allowed_country_codes",
                    "max_per_recipient_per_hour",
                    "status_callback",
                ];
                diagnostics.push(unknown_key(item, &format!("[routes.{channel_name}]"), known));
            }
        }
    }
    let Some(list) = list else {
        diagnostics.push(
            Diagnostic::error(
                Code::MissingKey,
                entry.key_origin.clone(),
                format!("route `{channel_name}` has no `providers` list"),
            )
            .with_help(Some("add `providers = [\"…\"]`, in failover order".into())),
        );
        return None;
    };
    let members = RouteMembers { channel_name, channel: channel.as_ref(), providers, defined };
    let listed = members.check_list(&list.node, &format!("route `{channel_name}`"), diagnostics);
    let mut route = settings::resolve_route(&[&layer, defaults], channel.clone()?, Vec::new());
    let (names, weights) = rules::weigh(listed?, route.strategy, &list.node.origin, diagnostics)?;
    route.providers = names;
    route.weights = weights;
    if let Some(rules) = rules {
        route.rules = rules::read(rules, route.strategy, &members, diagnostics)?;
    }
    Some(route)
}

fn warn_unused(providers: &Table, used: &HashSet<&str>, diagnostics: &mut Vec<Diagnostic>) {
    for entry in &providers.entries {
        if !used.contains(entry.key.as_str()) {
            diagnostics.push(Diagnostic::warning(
                Code::UnusedProvider,
                entry.key_origin.clone(),
                format!("provider `{}` is used by no route", entry.key),
            ));
        }
    }
}

fn warn_unrouted(
    root: &Table,
    providers: &[ResolvedProvider],
    routes: &Table,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let mut channels: BTreeSet<&str> = Channel::BUILT_IN_NAMES.into_iter().collect();
    channels.extend(providers.iter().flat_map(|p| p.channels.iter().map(Channel::as_str)));
    let origin = root.get("routes").map_or(Origin::File(0..0), |e| e.key_origin.clone());
    for channel in channels {
        if routes.get(channel).is_none() {
            diagnostics.push(
                Diagnostic::warning(
                    Code::UnroutedChannel,
                    origin.clone(),
                    format!("channel `{channel}` has no route: its messages will be refused with `no_route`"),
                )
                .with_help(Some(format!("add [routes.{channel}] with a `providers` list"))),
            );
        }
    }
}

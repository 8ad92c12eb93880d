//! From text to a merged [`Node`] tree: parse the TOML keeping spans, lay the `SWITCHBOARD_…`
//! environment overrides over it with figment, then resolve `${VAR}` references.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use figment::value::{Dict, Num, Value as FValue};
use figment::{Figment, Metadata, Profile, Provider, Source};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::diagnostic::{Code, Diagnostic, Origin, SourceFile};
use super::tree::{Entry, Node, Table, Value};

/// The prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "SWITCHBOARD_";

/// The environment the config is read with: overrides and `${VAR}` values.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    vars: BTreeMap<String, String>,
}

impl Environment {
    /// The process environment (variables that are not valid UTF-8 are skipped).
    pub fn from_process() -> Self {
        Environment {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        }
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Environment { vars: pairs.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect() }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }
}

/// Parses and merges; `None` when the text is not TOML (the diagnostics say why).
pub fn read(source: &SourceFile, env: &Environment) -> (Option<Node>, Vec<Diagnostic>) {
    let (document, errors) = DeTable::parse_recoverable(&source.text);
    if !errors.is_empty() {
        let diagnostics = errors
            .iter()
            .map(|error| {
                let span = error.span().unwrap_or(0..0);
                let at = source.text.get(span.clone()).unwrap_or_default();
                Diagnostic::error(Code::Syntax, Origin::File(span), syntax_message(error.message(), at))
            })
            .collect();
        return (None, diagnostics);
    }

    let mut diagnostics = Vec::new();
    let mut spans = SpanIndex::default();
    let file_dict = table_to_dict(document.get_ref(), &mut Vec::new(), &mut spans, &mut diagnostics);
    let provider_names: Vec<String> = match file_dict.get("providers") {
        Some(FValue::Dict(_, providers)) => providers.keys().cloned().collect(),
        _ => Vec::new(),
    };

    let mut figment = Figment::from(FileLayer { name: source.name.clone(), dict: file_dict });
    for (var, value) in env.vars.range(ENV_PREFIX.to_owned()..) {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else { break };
        if !rest.contains("__") {
            continue; // SWITCHBOARD_CONFIG, SWITCHBOARD_LISTEN, …: not config keys.
        }
        match env_path(rest, &provider_names) {
            Some(path) => figment = figment.merge(EnvLayer { var: var.clone(), path, value: value.clone() }),
            None => diagnostics.push(
                Diagnostic::error(
                    Code::UnknownKey,
                    Origin::Env(var.clone()),
                    format!("environment variable {var} does not name a config key"),
                )
                .with_help(Some(
                    "use SWITCHBOARD_<TABLE>__<KEY>__…, e.g. SWITCHBOARD_DEFAULTS__TIMEOUT_MS".into(),
                )),
            ),
        }
    }

    let merged = match figment.find_value("") {
        Ok(value) => value,
        Err(error) => {
            // Merging plain data cannot fail; report rather than panic if it ever does.
            diagnostics.push(Diagnostic::error(Code::Syntax, Origin::File(0..0), error.to_string()));
            return (None, diagnostics);
        }
    };
    let mut root = to_node(&merged, &mut Vec::new(), &figment, &spans);
    interpolate(&mut root, env, &mut Vec::new(), &mut diagnostics);
    (Some(root), diagnostics)
}

/// The toml crate says "invalid X" or "expected Y"; keep its words, trimmed to one line, and
/// name the key it means when it does not.
fn syntax_message(message: &str, at: &str) -> String {
    let first = message.lines().next().unwrap_or("invalid TOML").trim();
    if first == "duplicate key" && !at.is_empty() && !at.contains('\n') {
        return format!("TOML syntax: duplicate key `{at}`: a key or table may be defined only once");
    }
    format!("TOML syntax: {first}")
}

/// `DEFAULTS__RETRY__MAX_BACKOFF_MS` → `defaults.retry.max_backoff_ms`. A provider segment
/// written with `_` for `-` maps to the provider of that name in the file.
fn env_path(rest: &str, provider_names: &[String]) -> Option<String> {
    let mut segments: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
    if segments.iter().any(String::is_empty) {
        return None;
    }
    if segments[0] == "providers" && segments.len() > 1 && !provider_names.contains(&segments[1]) {
        if let Some(name) = provider_names.iter().find(|n| n.replace('-', "_") == segments[1]) {
            segments[1] = name.clone();
        }
    }
    Some(segments.join("."))
}

/// Spans of every key and value of the file, by path.
#[derive(Default)]
struct SpanIndex {
    map: HashMap<String, (Option<Range<usize>>, Range<usize>)>,
}

fn path_key(path: &[String]) -> String {
    path.join("\u{1f}")
}

impl SpanIndex {
    fn key(&self, path: &[String]) -> Option<Range<usize>> {
        self.map.get(&path_key(path)).and_then(|(key, _)| key.clone())
    }
    fn value(&self, path: &[String]) -> Option<Range<usize>> {
        self.map.get(&path_key(path)).map(|(_, value)| value.clone())
    }
}

fn table_to_dict(
    table: &DeTable<'_>,
    path: &mut Vec<String>,
    spans: &mut SpanIndex,
    diagnostics: &mut Vec<Diagnostic>,
) -> Dict {
    let mut dict = Dict::new();
    for (key, value) in table.iter() {
        path.push(key.get_ref().to_string());
        spans.map.insert(path_key(path), (Some(key.span()), value.span()));
        if let Some(converted) = value_to_figment(value, path, spans, diagnostics) {
            dict.insert(key.get_ref().to_string(), converted);
        }
        path.pop();
    }
    dict
}

fn value_to_figment(
    value: &Spanned<DeValue<'_>>,
    path: &mut Vec<String>,
    spans: &mut SpanIndex,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<FValue> {
    Some(match value.get_ref() {
        DeValue::String(s) => FValue::from(s.to_string()),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => FValue::from(n),
            Err(_) => {
                diagnostics.push(Diagnostic::error(
                    Code::OutOfRange,
                    Origin::File(value.span()),
                    format!("integer {i} does not fit in 64 bits"),
                ));
                return None;
            }
        },
        DeValue::Float(f) => FValue::from(f.as_str().parse::<f64>().unwrap_or(f64::NAN)),
        DeValue::Boolean(b) => FValue::from(*b),
        DeValue::Datetime(dt) => FValue::from(dt.to_string()),
        DeValue::Array(items) => {
            let mut converted = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                path.push(i.to_string());
                spans.map.insert(path_key(path), (None, item.span()));
                if let Some(v) = value_to_figment(item, path, spans, diagnostics) {
                    converted.push(v);
                }
                path.pop();
            }
            FValue::from(converted)
        }
        DeValue::Table(table) => FValue::from(table_to_dict(table, path, spans, diagnostics)),
    })
}

struct FileLayer {
    name: String,
    dict: Dict,
}

impl Provider for FileLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named("config file").source(Source::File(self.name.clone().into()))
    }
    fn data(&self) -> Result<figment::value::Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// One `SWITCHBOARD_…` variable, as a figment layer of its own so that every value it sets
/// remembers the variable's name.
struct EnvLayer {
    var: String,
    path: String,
    value: String,
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment variable").source(Source::Custom(self.var.clone()))
    }
    fn data(&self) -> Result<figment::value::Map<Profile, Dict>, figment::Error> {
        let value: FValue = self.value.parse().unwrap_or_else(|_| FValue::from(self.value.clone()));
        let dict = figment::util::nest(&self.path, value).into_dict().unwrap_or_default();
        Ok(Profile::Default.collect(dict))
    }
}

/// A value set by a variable points at the variable; a table the file defines points at the
/// file even when variables add keys to it.
fn origin_of(value: &FValue, path: &[String], figment: &Figment, spans: &SpanIndex) -> Origin {
    let file_span = spans.value(path);
    if let (FValue::Dict(..), Some(span)) = (value, &file_span) {
        return Origin::File(span.clone());
    }
    if let Some(Source::Custom(var)) = figment.get_metadata(value.tag()).and_then(|m| m.source.as_ref()) {
        return Origin::Env(var.clone());
    }
    Origin::File(file_span.unwrap_or(0..0))
}

fn to_node(value: &FValue, path: &mut Vec<String>, figment: &Figment, spans: &SpanIndex) -> Node {
    let origin = origin_of(value, path, figment, spans);
    let value = match value {
        FValue::String(_, s) => Value::Str(s.clone()),
        FValue::Char(_, c) => Value::Str(c.to_string()),
        FValue::Bool(_, b) => Value::Bool(*b),
        FValue::Num(_, n) => num_value(*n),
        FValue::Empty(..) => Value::Str(String::new()),
        FValue::Array(_, items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    path.push(i.to_string());
                    let node = to_node(item, path, figment, spans);
                    path.pop();
                    node
                })
                .collect(),
        ),
        FValue::Dict(_, dict) => Value::Table(Table {
            entries: dict
                .iter()
                .map(|(key, item)| {
                    path.push(key.clone());
                    let node = to_node(item, path, figment, spans);
                    let key_origin = match (spans.key(path), &node.origin) {
                        (Some(span), _) => Origin::File(span),
                        (None, origin) => origin.clone(),
                    };
                    path.pop();
                    Entry { key: key.clone(), key_origin, node }
                })
                .collect(),
        }),
    };
    Node { value, origin, secret: false }
}

fn num_value(n: Num) -> Value {
    match n {
        Num::F32(f) => Value::Float(f64::from(f)),
        Num::F64(f) => Value::Float(f),
        other => match other
            .to_i128()
            .or_else(|| other.to_u128().and_then(|u| i128::try_from(u).ok()))
            .and_then(|i| i64::try_from(i).ok())
        {
            Some(i) => Value::Int(i),
            None => Value::Float(other.to_f64().unwrap_or(f64::NAN)),
        },
    }
}

/// Replaces `${VAR}` in every string with the variable's value (`$${` is a literal `${`).
fn interpolate(
    node: &mut Node,
    env: &Environment,
    path: &mut Vec<String>,
    diagnostics: &mut Vec<Diagnostic>,
) {
    match &mut node.value {
        Value::Str(text) if text.contains('$') => match expand(text, env) {
            Ok((expanded, substituted)) => {
                *text = expanded;
                node.secret = substituted;
            }
            Err(problem) => {
                let key = path.join(".");
                diagnostics.push(match problem {
                    Expand::Missing(var) => Diagnostic::error(
                        Code::MissingEnv,
                        node.origin.clone(),
                        format!("`{key}` refers to environment variable {var}, which is not set"),
                    )
                    .with_help(Some(format!("set {var} in the service's environment, or write `$${{` for a literal `${{`"))),
                    Expand::Malformed(detail) => Diagnostic::error(
                        Code::BadInterpolation,
                        node.origin.clone(),
                        format!("`{key}`: {detail}"),
                    )
                    .with_help(Some("write `${NAME}` with NAME made of letters, digits and `_`, or `$${` for a literal `${`".into())),
                });
            }
        },
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(i.to_string());
                interpolate(item, env, path, diagnostics);
                path.pop();
            }
        }
        Value::Table(table) => {
            for entry in &mut table.entries {
                path.push(entry.key.clone());
                interpolate(&mut entry.node, env, path, diagnostics);
                path.pop();
            }
        }
        _ => {}
    }
}

enum Expand {
    Missing(String),
    Malformed(&'static str),
}

/// The expanded text, and whether any variable was substituted.
fn expand(text: &str, env: &Environment) -> Result<(String, bool), Expand> {
    let mut out = String::with_capacity(text.len());
    let mut substituted = false;
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let Some(end) = tail.find('}') else {
                return Err(Expand::Malformed("`${` without a closing `}`"));
            };
            let name = &tail[..end];
            let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(Expand::Malformed("`${…}` must name an environment variable"));
            }
            match env.get(name) {
                Some(value) => out.push_str(value),
                None => return Err(Expand::Missing(name.to_owned())),
            }
            substituted = true;
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok((out, substituted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_expand(text: &str, expected: Result<&str, &str>) {
        let env = Environment::from_pairs([("TOKEN", "s3cr3t"), ("EMPTY", "")]);
        let got = match expand(text, &env) {
            Ok((s, _)) => Ok(s),
            Err(Expand::Missing(var)) => Err(format!("missing {var}")),
            Err(Expand::Malformed(detail)) => Err(detail.to_owned()),
        };
        assert_eq!(got, expected.map(str::to_owned).map_err(str::to_owned), "{text:?}");
    }

    #[test]
    fn expansion() {
        check_expand("plain", Ok("plain"));
        check_expand("${TOKEN}", Ok("s3cr3t"));
        check_expand("Bearer ${TOKEN}!", Ok("Bearer s3cr3t!"));
        check_expand("$${TOKEN}", Ok("${TOKEN}"));
        check_expand("cost $5", Ok("cost $5"));
        check_expand("${EMPTY}x", Ok("x"));
        check_expand("${NOPE}", Err("missing NOPE"));
        check_expand("${TOKEN", Err("`${` without a closing `}`"));
        check_expand("${}", Err("`${…}` must name an environment variable"));
        check_expand("${A-B}", Err("`${…}` must name an environment variable"));
    }

    fn check_env_path(var: &str, expected: Option<&str>) {
        let providers = ["sms-primary".to_owned(), "email_main".to_owned()];
        assert_eq!(env_path(var, &providers).as_deref(), expected, "{var}");
    }

    #[test]
    fn env_paths() {
        check_env_path("DEFAULTS__TIMEOUT_MS", Some("defaults.timeout_ms"));
        check_env_path("PROVIDERS__SMS_PRIMARY__TIMEOUT_MS", Some("providers.sms-primary.timeout_ms"));
        check_env_path(
            "PROVIDERS__EMAIL_MAIN__BREAKER__OPEN_MS",
            Some("providers.email_main.breaker.open_ms"),
        );
        check_env_path("PROVIDERS__NEW_ONE__KIND", Some("providers.new_one.kind"));
        check_env_path("ROUTES__SMS__MAX_ATTEMPTS", Some("routes.sms.max_attempts"));
        check_env_path("DEFAULTS____X", None);
    }
}

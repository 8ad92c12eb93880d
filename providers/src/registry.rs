//! The plugin contract: the [`Provider`] trait a kind's instances implement, the [`Kind`] trait
//! a kind implements once, and the [`Registration`] each kind submits to the registry.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::inbound::{Inbound, InboundError, InboundHead, InboundRequest};
use crate::receipt::Receipts;
use crate::secret::is_secret;
use crate::{OutboundMessage, Receipt, SendError, SentCredentials};

/// One configured provider instance, able to send messages. Object-safe: the service holds
/// `Arc<dyn Provider>`.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Sends one message. The caller enforces the attempt's timeout; implementations need not.
    ///
    /// Error texts and the receipt's message id may quote whatever the provider answered: the
    /// caller cleans them (credentials, recipients, HTML, length; see [`crate::scrub`]) before
    /// anything logs, stores or returns them. Implementations do not scrub.
    async fn send(&self, message: &OutboundMessage) -> Result<Receipt, SendError>;

    /// The sender this provider sends `message` from: its own configured sender when it replaces
    /// the message's (`from` settings), else the message's `from`. Opt-outs are checked against
    /// it before every attempt: a recipient who replied STOP to the number they actually got
    /// messages from is not messaged from it again. Default: the message's `from`.
    fn sender<'a>(&'a self, message: &'a OutboundMessage) -> &'a str {
        &message.from
    }

    /// Every string this provider puts on the wire that carries a credential, exactly as sent
    /// (a token, the `user:password` of a Basic header, a SASL payload, a secret-bearing URL),
    /// made into [`SentCredentials`] once when the provider is built. Its answers are cleaned of
    /// each of them in every encoding. Default: none.
    fn credentials_sent(&self) -> &SentCredentials {
        SentCredentials::none()
    }

    /// Takes in what the provider posts to `POST /v1/inbound/{kind}/{name}`: verifies the request
    /// came from it, then parses its messages (see [`crate::inbound`]). Default: this kind takes
    /// nothing in.
    async fn receive(&self, _request: InboundRequest<'_>) -> Result<Inbound, InboundError> {
        Err(InboundError::NotSupported)
    }

    /// Checks what can be checked before the body is read (content type, a credential header's
    /// presence or value): the service calls it first and reads no body when it refuses. An early
    /// filter only: [`Provider::receive`] repeats every check, so it is safe without this.
    /// Default: `NotSupported`, as `receive`'s default — a kind that takes inbound messages
    /// implements both (so that a provider without inbound support never has a body read).
    fn admit(&self, _head: InboundHead<'_>) -> Result<(), InboundError> {
        Err(InboundError::NotSupported)
    }

    /// The largest inbound body this kind takes; the service reads at most the smaller of this
    /// and its own limit. Default: `None` (the service's limit alone).
    fn max_inbound_body(&self) -> Option<usize> {
        None
    }

    /// Checks what can be checked of a receipt request (`POST /v1/receipts/{kind}/{name}`) before
    /// its body is read, as [`Provider::admit`] does for inbound messages. Default:
    /// `NotSupported` (the service answers 404 and reads nothing).
    fn admit_receipts(&self, _head: InboundHead<'_>) -> Result<(), InboundError> {
        Err(InboundError::NotSupported)
    }

    /// Takes in the provider's delivery receipts posted to `POST /v1/receipts/{kind}/{name}`:
    /// verifies the request (its signature; a signed time older than
    /// [`crate::receipt::MAX_SIGNATURE_AGE`] than `now` is refused as a replay with
    /// [`InboundError::InvalidSignature`]), then parses its events (see [`crate::receipt`]).
    /// Default: this kind takes no receipts.
    async fn receipts(
        &self,
        _request: InboundRequest<'_>,
        _now: SystemTime,
    ) -> Result<Receipts, InboundError> {
        Err(InboundError::NotSupported)
    }
}

/// What a factory knows about the provider it builds besides the kind's own settings.
#[derive(Debug, Clone)]
pub struct BuildContext<'a> {
    /// The provider's name in routes.toml.
    pub name: &'a str,
    /// The resolved per-attempt timeout.
    pub timeout: Duration,
}

/// A problem with a kind's settings, found by the kind itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingIssue {
    /// The offending setting (top-level field name), or `None` for the settings as a whole.
    pub field: Option<String>,
    pub message: String,
    pub help: Option<String>,
}

impl SettingIssue {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        SettingIssue { field: Some(field.to_owned()), message: message.into(), help: None }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// A kind could not build a provider from the settings it was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid settings: {}", .issues.iter().map(|i| i.message.as_str()).collect::<Vec<_>>().join("; "))]
pub struct SettingsError {
    pub issues: Vec<SettingIssue>,
}

impl SettingsError {
    /// A problem with the settings as a whole (e.g. a client that cannot be set up).
    pub fn other(message: impl Into<String>) -> Self {
        SettingsError { issues: vec![SettingIssue { field: None, message: message.into(), help: None }] }
    }
}

/// One setting of a kind, for `switchboard providers` and the docs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SettingDoc {
    pub name: String,
    /// A short type name: `u64`, `string`, `boolean`, …
    #[serde(rename = "type")]
    pub type_name: String,
    pub required: bool,
    /// The default as JSON, when the setting has one.
    pub default: Option<Value>,
    /// The field's doc comment.
    pub doc: String,
}

/// A provider kind. Implement it in the kind's own file, next to its settings struct, then
/// register it there with `inventory::submit! { Registration::of::<MyKind>() }`.
pub trait Kind: 'static {
    /// The name operators write as `kind = "…"`: `[a-z][a-z0-9_]*`.
    const NAME: &'static str;
    /// Channels this kind can serve; `["*"]` for a kind that can carry any channel (a provider
    /// of such a kind serves the built-in channels unless its `channels` list says otherwise).
    const CHANNELS: &'static [&'static str];
    /// One line for `switchboard providers`.
    const DESCRIPTION: &'static str;
    /// The kind's own settings: a serde struct with `deny_unknown_fields` whose doc comments
    /// document each setting. A setting holding a credential has the type [`crate::Secret`]
    /// (or contains one): that alone makes it a secret ([`Registration::secrets`]).
    type Settings: DeserializeOwned + schemars::JsonSchema;

    /// Checks what serde cannot (ranges, combinations). Empty when the settings are valid.
    fn validate(_settings: &Self::Settings) -> Vec<SettingIssue> {
        Vec::new()
    }

    /// Builds an instance from settings that passed [`Kind::validate`]. Fails only for what
    /// cannot be checked statically (e.g. a TLS setup the machine cannot provide).
    fn build(
        settings: Self::Settings,
        context: &BuildContext<'_>,
    ) -> Result<Arc<dyn Provider>, SettingsError>;
}

/// A kind's type-erased factory.
type BuildFn = fn(Value, &BuildContext<'_>) -> Result<Arc<dyn Provider>, SettingsError>;

/// A kind's entry in the registry.
pub struct Registration {
    pub kind: &'static str,
    pub channels: &'static [&'static str],
    pub description: &'static str,
    settings: fn() -> Vec<SettingDoc>,
    secrets: fn() -> Vec<String>,
    parse_and_check: fn(Value) -> Vec<SettingIssue>,
    build: BuildFn,
}

inventory::collect!(Registration);

impl Registration {
    pub const fn of<K: Kind>() -> Registration {
        Registration {
            kind: K::NAME,
            channels: K::CHANNELS,
            description: K::DESCRIPTION,
            settings: settings_doc::<K::Settings>,
            secrets: secret_settings::<K::Settings>,
            parse_and_check: parse_and_check::<K>,
            build: build::<K>,
        }
    }

    /// The kind's settings, in declaration order.
    pub fn settings(&self) -> Vec<SettingDoc> {
        (self.settings)()
    }

    /// The settings holding credentials, sorted by name: those whose schema holds a
    /// [`crate::Secret`]. The config loader accepts them only from the environment (`${VAR}`
    /// or an override variable) and redacts them in every view.
    pub fn secrets(&self) -> Vec<String> {
        self.registered_secrets().map_or_else(self.secrets, <[String]>::to_vec)
    }

    /// Whether the setting `name` holds a credential (see [`Registration::secrets`]).
    pub fn is_secret(&self, name: &str) -> bool {
        match self.registered_secrets() {
            Some(secrets) => secrets.iter().any(|secret| secret == name),
            None => (self.secrets)().iter().any(|secret| secret == name),
        }
    }

    /// [`Registration::secrets`] of a registered kind, found once for every registered kind
    /// (each needs its schema built); `None` for a registration that was never submitted.
    fn registered_secrets(&self) -> Option<&'static [String]> {
        static SECRETS: OnceLock<HashMap<usize, Vec<String>>> = OnceLock::new();
        let address = |registration: &Registration| std::ptr::from_ref(registration) as usize;
        let known = SECRETS.get_or_init(|| {
            inventory::iter::<Registration>.into_iter().map(|r| (address(r), (r.secrets)())).collect()
        });
        known.get(&address(self)).map(Vec::as_slice)
    }

    /// Validates the kind's settings (given as a JSON object) without building anything.
    pub fn check(&self, settings: Value) -> Vec<SettingIssue> {
        (self.parse_and_check)(settings)
    }

    /// Builds a provider instance.
    pub fn build(
        &self,
        settings: Value,
        context: &BuildContext<'_>,
    ) -> Result<Arc<dyn Provider>, SettingsError> {
        (self.build)(settings, context)
    }

    pub fn serves(&self, channel: &str) -> bool {
        self.serves_any() || self.channels.contains(&channel)
    }

    /// Whether the kind can carry any channel (`CHANNELS = ["*"]`).
    pub fn serves_any(&self) -> bool {
        self.channels.contains(&"*")
    }
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("kind", &self.kind)
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

/// Every registered kind, sorted by name (inventory's own order is unspecified).
pub fn registry() -> Vec<&'static Registration> {
    let mut kinds: Vec<_> = inventory::iter::<Registration>.into_iter().collect();
    kinds.sort_by_key(|r| r.kind);
    kinds
}

/// The registered kind with this name.
pub fn find(kind: &str) -> Option<&'static Registration> {
    inventory::iter::<Registration>.into_iter().find(|r| r.kind == kind)
}

fn parse<K: Kind>(settings: Value) -> Result<K::Settings, Vec<SettingIssue>> {
    let parsed: K::Settings = serde_path_to_error::deserialize(settings)
        .map_err(|error| vec![deserialize_issue(&error.path().to_string(), &error.inner().to_string())])?;
    let issues = K::validate(&parsed);
    if issues.is_empty() {
        Ok(parsed)
    } else {
        Err(issues)
    }
}

/// A settings value serde refused, as an issue naming the setting by its path (`seed`,
/// `headers.X-Api`) the way the common settings' diagnostics do: `` `seed` must be u64, found
/// string "one" `` rather than serde's bare `invalid type: string "one", expected u64`. `path` is
/// serde_path_to_error's (`.` for the settings as a whole, e.g. a missing field).
fn deserialize_issue(path: &str, message: &str) -> SettingIssue {
    if path == "." {
        return SettingIssue { field: None, message: message.to_owned(), help: None };
    }
    let field = path.split(['.', '[']).next().unwrap_or(path).to_owned();
    let split = |prefix: &str| message.strip_prefix(prefix).and_then(|rest| rest.split_once(", expected "));
    let message = if let Some((found, expected)) = split("invalid type: ") {
        format!("`{path}` must be {expected}, found {found}")
    } else if let Some((got, expected)) = split("invalid value: ").or_else(|| split("invalid length ")) {
        format!("`{path}` must be {expected}, got {got}")
    } else {
        format!("`{path}`: {message}")
    };
    SettingIssue { field: Some(field), message, help: None }
}

fn parse_and_check<K: Kind>(settings: Value) -> Vec<SettingIssue> {
    parse::<K>(settings).err().unwrap_or_default()
}

fn build<K: Kind>(settings: Value, context: &BuildContext<'_>) -> Result<Arc<dyn Provider>, SettingsError> {
    let settings = parse::<K>(settings).map_err(|issues| SettingsError { issues })?;
    K::build(settings, context)
}

fn settings_doc<S: schemars::JsonSchema>() -> Vec<SettingDoc> {
    let schema = settings_schema::<S>();
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    properties
        .iter()
        .map(|(name, property)| SettingDoc {
            name: name.clone(),
            type_name: type_name(property, schema.get("$defs")),
            required: required.contains(&name.as_str()),
            default: property.get("default").cloned(),
            // Doc comments wrap at the source's width: one line per setting reads better.
            doc: property
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        })
        .collect()
}

fn settings_schema<S: schemars::JsonSchema>() -> schemars::Schema {
    schemars::SchemaGenerator::default().into_root_schema_for::<S>()
}

/// The top-level settings whose schema holds a credential, sorted by name.
fn secret_settings<S: schemars::JsonSchema>() -> Vec<String> {
    let schema = settings_schema::<S>();
    let defs = schema.get("$defs");
    let properties = schema.get("properties").and_then(Value::as_object).into_iter().flatten();
    properties.filter(|(_, property)| is_secret(property, defs)).map(|(name, _)| name.clone()).collect()
}

/// `uint64` → `u64`, `["string","null"]` → `string?`, a credential → `secret`, an enum of
/// strings → `a|b|c`, plain JSON types as they are.
fn type_name(property: &Value, defs: Option<&Value>) -> String {
    if property.get("anyOf").is_none() && is_secret(property, defs) {
        return "secret".to_owned();
    }
    if let Some(reference) = property.get("$ref").and_then(Value::as_str) {
        let name = reference.rsplit('/').next().unwrap_or_default();
        return match defs.and_then(|d| d.get(name)) {
            Some(def) => type_name(def, defs),
            None => "any".to_owned(),
        };
    }
    if let Some(variants) = property.get("anyOf").and_then(Value::as_array) {
        let shown: Vec<String> = variants
            .iter()
            .filter(|v| v.get("type") != Some(&Value::from("null")))
            .map(|v| type_name(v, defs))
            .collect();
        let nullable = shown.len() < variants.len();
        return format!("{}{}", shown.join(" | "), if nullable { "?" } else { "" });
    }
    if let Some(variants) = property.get("oneOf").and_then(Value::as_array) {
        let names: Option<Vec<&str>> =
            variants.iter().map(|v| v.get("const").and_then(Value::as_str)).collect();
        if let Some(names) = names {
            return names.join("|");
        }
    }
    let base = match property.get("format").and_then(Value::as_str) {
        Some(format) => format.replace("uint", "u").replace("int", "i").replace("double", "f64"),
        None => match property.get("type") {
            Some(Value::String(name)) => name.clone(),
            Some(Value::Array(names)) => names
                .iter()
                .filter_map(Value::as_str)
                .filter(|name| *name != "null")
                .collect::<Vec<_>>()
                .join(" | "),
            _ => "any".to_owned(),
        },
    };
    let nullable =
        matches!(property.get("type"), Some(Value::Array(names)) if names.iter().any(|n| n == "null"));
    if nullable {
        format!("{base}?")
    } else {
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(path: &str, serde_message: &str, expected: (Option<&str>, &str)) {
        let issue = deserialize_issue(path, serde_message);
        assert_eq!((issue.field.as_deref(), issue.message.as_str()), expected, "{path}: {serde_message}");
    }

    #[test]
    fn serde_errors_name_the_setting() {
        check(
            "seed",
            "invalid type: string \"one\", expected u64",
            (Some("seed"), "`seed` must be u64, found string \"one\""),
        );
        check(
            "latency_ms",
            "invalid value: integer `-5`, expected u64",
            (Some("latency_ms"), "`latency_ms` must be u64, got integer `-5`"),
        );
        check(
            "headers.X-Api",
            "invalid type: integer `5`, expected a string",
            (Some("headers"), "`headers.X-Api` must be a string, found integer `5`"),
        );
        check(
            "channels[1]",
            "invalid type: integer `5`, expected a string",
            (Some("channels"), "`channels[1]` must be a string, found integer `5`"),
        );
        check(
            "security",
            "unknown variant `ssl`, expected one of `tls`, `starttls`",
            (Some("security"), "`security`: unknown variant `ssl`, expected one of `tls`, `starttls`"),
        );
        check(".", "missing field `account_sid`", (None, "missing field `account_sid`"));
    }
}

/// Secret settings found from the kinds' schemas.
#[cfg(test)]
mod secret_settings_tests {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde_json::json;

    use super::*;
    use crate::scrub::{MAX_TEXT_BYTES, REDACTED};
    use crate::Secret;

    /// `kind`'s secret settings are `expected`, for every reader: the list, the per-setting
    /// question the config loader asks, and the `secret` type `switchboard providers` shows.
    fn check(kind: &str, expected: &[&str]) {
        let Some(registration) = find(kind) else { panic!("{kind} is not registered") };
        assert_eq!(registration.secrets(), expected, "{kind}");
        let settings = registration.settings();
        for name in expected {
            assert!(settings.iter().any(|s| s.name == *name), "{kind}: no setting {name}");
        }
        for setting in settings {
            let secret = expected.contains(&setting.name.as_str());
            assert_eq!(registration.is_secret(&setting.name), secret, "{kind}: {}", setting.name);
            assert_eq!(setting.type_name.starts_with("secret"), secret, "{kind}: {setting:?}");
        }
        assert!(!registration.is_secret("no_such_setting"), "{kind}");
    }

    #[test]
    fn built_in_kinds() {
        check("mock", &[]);
        check("sendgrid", &["api_key", "inbound_secret"]);
        check("smtp", &["password"]);
        check("twilio", &["auth_token"]);
        check("webhook", &["secret"]);
    }

    /// A settings struct a kind could add to: credentials in every shape a field can hold one.
    #[allow(dead_code)]
    #[derive(serde::Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct NewSettings {
        /// Plain.
        api_key: Secret,
        /// Optional.
        #[serde(default)]
        password: Option<Secret>,
        /// Several.
        #[serde(default)]
        keys: Vec<Secret>,
        /// Inside a table of its own.
        oauth: OAuth,
        /// Not credentials.
        name: String,
        #[serde(default)]
        label: Option<String>,
        #[serde(default)]
        mode: crate::TlsMode,
        #[serde(default)]
        table: std::collections::BTreeMap<String, String>,
    }

    #[allow(dead_code)]
    #[derive(serde::Deserialize, schemars::JsonSchema)]
    struct OAuth {
        client_id: String,
        /// Named like a schema keyword.
        #[serde(rename = "default")]
        client_secret: Secret,
    }

    struct NewKind;

    impl Kind for NewKind {
        const NAME: &'static str = "test_new_secrets";
        const CHANNELS: &'static [&'static str] = &["sms"];
        const DESCRIPTION: &'static str = "secret settings in every shape (registry tests only)";
        type Settings = NewSettings;

        fn build(_: NewSettings, _: &BuildContext<'_>) -> Result<Arc<dyn Provider>, SettingsError> {
            Err(SettingsError::other("never built"))
        }
    }

    inventory::submit! { Registration::of::<NewKind>() }

    #[test]
    fn a_new_secret_field_is_found_without_any_list() {
        let expected = ["api_key", "keys", "oauth", "password"];
        check("test_new_secrets", &expected);
        // A registration that was never submitted: found all the same.
        let unregistered = Registration::of::<NewKind>();
        assert_eq!(unregistered.secrets(), expected);
        assert!(unregistered.is_secret("oauth") && !unregistered.is_secret("name"));
        let types: Vec<(String, String)> =
            unregistered.settings().into_iter().map(|s| (s.name, s.type_name)).collect();
        assert!(types.contains(&("password".into(), "secret?".into())), "{types:?}");
        assert!(types.contains(&("api_key".into(), "secret".into())), "{types:?}");
    }

    /// Each built-in kind's provider declares the value of each of its secret settings (as
    /// found from its schema) among the credentials it sends: the dispatcher's one scrubbing
    /// place removes it, as sent and base64-encoded, from whatever the provider answers.
    #[tokio::test]
    async fn every_secret_setting_is_scrubbed_from_answers() {
        const MARKER: &str = "marker-secret-0123456789";
        let samples = [
            ("sendgrid", json!({"api_key": MARKER, "inbound_secret": MARKER})),
            ("smtp", json!({"host": "smtp.example.com", "username": "mailer", "password": MARKER})),
            ("twilio", json!({"account_sid": "AC1", "auth_token": MARKER})),
            ("webhook", json!({"url": "https://gw.example.com/send", "secret": MARKER})),
        ];
        for registration in registry() {
            let has_sample = samples.iter().any(|(kind, _)| *kind == registration.kind);
            let built_in = !registration.kind.starts_with("test_");
            assert_eq!(
                has_sample,
                built_in && !registration.secrets().is_empty(),
                "{}: a built-in kind with secret settings needs a sample here",
                registration.kind
            );
        }
        let context = BuildContext { name: "under-test", timeout: Duration::from_secs(1) };
        for (kind, settings) in samples {
            let Some(registration) = find(kind) else { panic!("{kind} is not registered") };
            for secret in registration.secrets() {
                assert_eq!(settings[&secret], MARKER, "{kind}: set {secret} to the marker");
            }
            let provider = registration.build(settings, &context).unwrap_or_else(|e| panic!("{kind}: {e}"));
            let answer = format!("bad key {MARKER}, {}", STANDARD.encode(MARKER));
            let cleaned = provider.credentials_sent().clean_text(&answer, "", MAX_TEXT_BYTES, false);
            assert_eq!(cleaned, format!("bad key {REDACTED}, {REDACTED}"), "{kind}");
        }
    }
}

//! `sendgrid`: email through SendGrid's v3 Mail Send API.
//!
//! `POST {base_url}/v3/mail/send` with `Authorization: Bearer {api_key}` and the v3 JSON body:
//! one personalization with the recipient, `from`, `subject`, `content` (`text/html` when the
//! body is HTML, else `text/plain`) and Switchboard's message id in
//! `custom_args.switchboard_message_id`. The `X-Message-Id` response header is the provider
//! message id. Attachment URLs are not fetched: they are appended to the body as links.
//!
//! Inbound: SendGrid Inbound Parse posts each email received at the parse domain as
//! multipart/form-data (`from`, `to`, `subject`, `text`, `html`, `headers`, `envelope`,
//! `charsets`, one file part per attachment). SendGrid signs nothing: the Parse URL carries a
//! basic-auth password (`https://parse:SECRET@sb.example.com/v1/inbound/sendgrid/{name}`) that
//! must equal the `inbound_secret` setting. Attachments arrive as files, not URLs: they are not
//! stored (the message keeps its text). The "POST the raw, full MIME message" option must be off.
//!
//! Delivery receipts: SendGrid's Event Webhook posts batches of events to
//! `/v1/receipts/sendgrid/{name}` as a JSON array (`application/json`). Only the Signed Event
//! Webhook is taken: `X-Twilio-Email-Event-Webhook-Signature` is the base64 of a DER ECDSA
//! P-256/SHA-256 signature, by the key whose public half is the `event_webhook_public_key`
//! setting, of the `X-Twilio-Email-Event-Webhook-Timestamp` header (Unix seconds) as sent followed
//! by the raw body. A timestamp more than 5 minutes from now, either way, is refused as a replay;
//! without the setting every post is refused. Each event becomes one receipt: `processed` → sent,
//! `deferred` → deferred, `delivered` → delivered, `bounce` → bounced, `dropped` → dropped,
//! `open` → opened; any other (`click`, `spamreport`, `unsubscribe`, `group_unsubscribe`, …) is an
//! event of its own name. The message is found by `sg_message_id` up to its first `.` (the
//! `X-Message-Id` the send recorded) or by `switchboard_message_id` (the send's `custom_args`, which
//! SendGrid copies into each event); an event with neither is still returned, for the service to
//! count as unknown. `timestamp` is the event's time. The address (`email`) is suppressed after a
//! `bounce` (not a `blocked` one: that is about the sender), a `spamreport`, or a `dropped` whose
//! `reason` names the address (`Bounced Address`, `Unsubscribed Address`, `Spam Reporting
//! Address`, `Invalid`). The event's detail holds `event`, `reason`, `status`, `type`, `response`
//! and `attempt` when sent (each at most 200 characters, the address masked in them), never the
//! address itself. An element that is not an object, or has no usable `event`, is skipped. A post
//! may carry at most 5,000 events; the answer is an empty `text/plain` body.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use p256::ecdsa::signature::MultipartVerifier;
use p256::ecdsa::{DerSignature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::address::is_email;
use crate::email::{looks_like_html, with_attachment_links};
use crate::http::{self, check_url, Answer};
use crate::inbound::{Inbound, InboundError, InboundHead, InboundRequest, Incoming};
use crate::receipt::{
    check_signed_time, detail_text, json_array, signed_json_head, single_header, unix_time, DeliveryStatus,
    ProviderReceipt, Receipts,
};
use crate::{
    mask_recipient, BuildContext, Channel, Kind, OutboundMessage, Provider, Receipt, Registration, Secret,
    SendError, SentCredentials, SettingIssue, SettingsError,
};

/// Settings of a `sendgrid` provider.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendgridSettings {
    /// API key with the Mail Send permission, sent as a bearer token. Only from the
    /// environment: `"${SENDGRID_API_KEY}"`.
    pub api_key: Secret,
    /// Sender address (a verified sender of the account). When set it is used instead of the
    /// message's `from`.
    #[serde(default)]
    pub from: Option<String>,
    /// Password Inbound Parse must send: put it in the Parse URL's basic auth
    /// (`https://parse:SECRET@sb.example.com/v1/inbound/sendgrid/{name}`, any user name). Without
    /// it inbound requests are refused. Only from the environment: `"${SENDGRID_INBOUND_SECRET}"`.
    #[serde(default)]
    pub inbound_secret: Option<Secret>,
    /// The Verification Key of SendGrid's Signed Event Webhook (Mail Settings → Event Webhook →
    /// Signed Event Webhook Requests): the base64 of an ECDSA P-256 public key (DER
    /// SubjectPublicKeyInfo; it starts `MFkw`). Event Webhook posts to
    /// `/v1/receipts/sendgrid/{name}` are checked against it; without it they are refused. A
    /// public key, not a secret: it may be written here as it is.
    #[serde(default)]
    pub event_webhook_public_key: Option<String>,
    /// API endpoint. https only, except for loopback hosts (local test servers).
    #[serde(default = "default_base_url")]
    #[schemars(default = "default_base_url")]
    pub base_url: String,
}

fn default_base_url() -> String {
    "https://api.sendgrid.com".to_owned()
}

struct SendgridKind;

impl Kind for SendgridKind {
    const NAME: &'static str = "sendgrid";
    const CHANNELS: &'static [&'static str] = &["email"];
    const DESCRIPTION: &'static str = "SendGrid v3 Mail Send API (bearer API key)";
    type Settings = SendgridSettings;

    fn validate(settings: &SendgridSettings) -> Vec<SettingIssue> {
        let mut issues = Vec::new();
        if settings.api_key.is_blank() {
            issues.push(SettingIssue::new("api_key", "`api_key` is empty"));
        }
        if let Some(from) = &settings.from {
            if !is_email(from) {
                issues.push(SettingIssue::new(
                    "from",
                    format!("`from` must be an email address like name@example.com, got {from:?}"),
                ));
            }
        }
        if settings.inbound_secret.as_ref().is_some_and(Secret::is_blank) {
            issues.push(SettingIssue::new("inbound_secret", "`inbound_secret` is empty"));
        }
        if let Some(Err(problem)) = settings.event_webhook_public_key.as_deref().map(event_webhook_key) {
            issues.push(
                SettingIssue::new(
                    "event_webhook_public_key",
                    format!("`event_webhook_public_key` {problem}"),
                )
                .with_help(
                    "copy the Verification Key SendGrid shows under Mail Settings → Event Webhook → \
                         Signed Event Webhook Requests: one base64 line starting with MFkw",
                ),
            );
        }
        issues.extend(check_url("base_url", &settings.base_url));
        issues
    }

    fn build(
        settings: SendgridSettings,
        context: &BuildContext<'_>,
    ) -> Result<Arc<dyn Provider>, SettingsError> {
        let endpoint = http::join(&settings.base_url, "/v3/mail/send");
        // The inbound secret is never sent, but an answer quoting it is cleaned all the same.
        let secrets = [Some(&settings.api_key), settings.inbound_secret.as_ref()];
        let credentials = SentCredentials::new(secrets.into_iter().flatten().map(Secret::expose));
        let event_key = match settings.event_webhook_public_key.as_deref().map(event_webhook_key) {
            Some(Err(problem)) => {
                return Err(SettingsError::other(format!("`event_webhook_public_key` {problem}")))
            }
            Some(Ok(key)) => Some(key),
            None => None,
        };
        Ok(Arc::new(SendgridProvider {
            client: http::client(context.timeout)?,
            endpoint,
            settings,
            credentials,
            event_key,
        }))
    }
}

inventory::submit! { Registration::of::<SendgridKind>() }

#[derive(Debug)]
struct SendgridProvider {
    client: reqwest::Client,
    endpoint: String,
    settings: SendgridSettings,
    /// The API key and the inbound secret.
    credentials: SentCredentials,
    /// `event_webhook_public_key`, parsed.
    event_key: Option<VerifyingKey>,
}

/// SendGrid rejects a message without a subject; one without is sent with this.
const NO_SUBJECT: &str = "(no subject)";

/// The v3 request body for one message.
fn mail_send_body(message: &OutboundMessage, from: &str) -> serde_json::Value {
    let html = looks_like_html(&message.body);
    let body = with_attachment_links(&message.body, &message.attachments, html);
    let content = if html {
        // SendGrid derives the plain-text part of an HTML-only message itself.
        json!([{"type": "text/html", "value": body}])
    } else {
        json!([{"type": "text/plain", "value": body}])
    };
    let subject = message.subject.as_deref().filter(|s| !s.is_empty()).unwrap_or(NO_SUBJECT);
    json!({
        "personalizations": [{"to": [{"email": message.to}]}],
        "from": {"email": from},
        "subject": subject,
        "content": content,
        "custom_args": {"switchboard_message_id": message.id},
    })
}

/// SendGrid's error body: `{"errors": [{"message": "…", "field": "…"}]}`.
#[derive(Deserialize)]
struct ErrorBody {
    errors: Vec<ErrorItem>,
}

#[derive(Deserialize)]
struct ErrorItem {
    message: Option<String>,
    field: Option<String>,
}

fn error_detail(answer: &Answer) -> Option<(String, String)> {
    let body: ErrorBody = serde_json::from_slice(&answer.body).ok()?;
    let messages: Vec<String> = body
        .errors
        .into_iter()
        .filter_map(|e| match (e.field, e.message) {
            (Some(field), Some(message)) => Some(format!("{field}: {message}")),
            (None, message) => message,
            (Some(field), None) => Some(field),
        })
        .collect();
    (!messages.is_empty()).then(|| (answer.status.as_u16().to_string(), messages.join("; ")))
}

/// `X-RateLimit-Reset` (a Unix time in seconds) as a wait, when `Retry-After` is absent.
fn rate_limit_reset(answer: &Answer, now: SystemTime) -> Option<Duration> {
    let reset: u64 = http::header(answer, "x-ratelimit-reset")?.parse().ok()?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(reset.saturating_sub(now)))
}

#[async_trait]
impl Provider for SendgridProvider {
    fn sender<'a>(&'a self, message: &'a OutboundMessage) -> &'a str {
        self.settings.from.as_deref().unwrap_or(&message.from)
    }

    async fn send(&self, message: &OutboundMessage) -> Result<Receipt, SendError> {
        let from = self.sender(message);
        let request = self
            .client
            .post(&self.endpoint)
            .bearer_auth(self.settings.api_key.expose())
            .json(&mail_send_body(message, from));
        let answer = http::execute(request).await?;
        if answer.status.is_success() {
            return Ok(Receipt {
                provider_message_id: http::header(&answer, "x-message-id").map(str::to_owned),
            });
        }
        match http::status_error(&answer, error_detail(&answer)) {
            SendError::RateLimited { retry_after: None } => {
                Err(SendError::RateLimited { retry_after: rate_limit_reset(&answer, SystemTime::now()) })
            }
            error => Err(error),
        }
    }

    fn credentials_sent(&self) -> &SentCredentials {
        &self.credentials
    }

    async fn receive(&self, request: InboundRequest<'_>) -> Result<Inbound, InboundError> {
        let boundary = admit(self.settings.inbound_secret.as_ref(), request.head())?;
        let fields = read_form(request.body, boundary).await?;
        let message = parse_email(&fields)?;
        Ok(Inbound { messages: vec![message], content_type: "text/plain", answer: String::new() })
    }

    fn admit(&self, head: InboundHead<'_>) -> Result<(), InboundError> {
        admit(self.settings.inbound_secret.as_ref(), head).map(|_| ())
    }

    fn admit_receipts(&self, head: InboundHead<'_>) -> Result<(), InboundError> {
        admit_events(self.event_key.as_ref(), head).map(|_| ())
    }

    async fn receipts(&self, request: InboundRequest<'_>, now: SystemTime) -> Result<Receipts, InboundError> {
        receipts(self.event_key.as_ref(), request, now)
    }
}

/// The key of `event_webhook_public_key`: the base64 of a DER SubjectPublicKeyInfo holding an
/// ECDSA P-256 key (PEM armor and line breaks around it are taken too). The error completes
/// "`event_webhook_public_key` …".
fn event_webhook_key(text: &str) -> Result<VerifyingKey, &'static str> {
    /// Far more than the 124 characters of a P-256 key's base64 SubjectPublicKeyInfo.
    const MAX_KEY_TEXT: usize = 1024;
    if text.len() > MAX_KEY_TEXT {
        return Err("is too long for an ECDSA P-256 public key");
    }
    let base64: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("-----"))
        .flat_map(str::split_whitespace)
        .collect();
    if base64.is_empty() {
        return Err("is empty");
    }
    let der = STANDARD.decode(base64).map_err(|_| "is not base64")?;
    VerifyingKey::from_public_key_der(&der)
        .map_err(|_| "is not an ECDSA P-256 public key (base64 of a DER SubjectPublicKeyInfo)")
}

const SIGNATURE_HEADER: &str = "x-twilio-email-event-webhook-signature";
const TIMESTAMP_HEADER: &str = "x-twilio-email-event-webhook-timestamp";
/// The headers' names as SendGrid writes them, for errors.
const SIGNATURE_SHOWN: &str = "X-Twilio-Email-Event-Webhook-Signature";
const TIMESTAMP_SHOWN: &str = "X-Twilio-Email-Event-Webhook-Timestamp";

/// The longest signature header taken: the base64 of the longest DER ECDSA P-256 signature
/// (72 bytes).
const MAX_SIGNATURE_TEXT: usize = 96;

/// The most events one post may carry. SendGrid posts a batch when it reaches 768 KB (or every
/// 30 seconds): even events of 160 bytes, smaller than any it sends, stay below this.
const MAX_EVENTS: usize = 5000;

/// The longest message id taken from an event (`sg_message_id`'s first part, SendGrid's
/// `X-Message-Id`, is 22 characters; Switchboard's ids 36).
const MAX_ID_LEN: usize = 128;

/// The longest event name taken (SendGrid's longest is `group_resubscribe`).
const MAX_EVENT_NAME_LEN: usize = 32;

/// What the head of an Event Webhook post gives [`receipts`] once [`admit_events`] let it through.
struct SignedEvents<'a> {
    key: &'a VerifyingKey,
    signature: DerSignature,
    /// The timestamp header as sent: what is signed.
    timestamp: &'a str,
    signed_at: u64,
}

/// The checks made before the body is read, authentication first: a configured key, one
/// well-formed signature header and one timestamp header, then a JSON content type.
/// [`receipts`] starts with them.
fn admit_events<'a>(
    key: Option<&'a VerifyingKey>,
    head: InboundHead<'a>,
) -> Result<SignedEvents<'a>, InboundError> {
    let Some(key) = key else {
        return Err(InboundError::InvalidSignature(
            "provider has no `event_webhook_public_key`: its events' signatures cannot be checked; set \
             it to the Verification Key of SendGrid's Signed Event Webhook"
                .to_owned(),
        ));
    };
    let text = single_header(head.headers, SIGNATURE_HEADER, SIGNATURE_SHOWN)?;
    let signature = Some(text)
        .filter(|text| text.len() <= MAX_SIGNATURE_TEXT)
        .and_then(|text| STANDARD.decode(text).ok())
        .and_then(|der| DerSignature::try_from(der.as_slice()).ok())
        .ok_or_else(|| {
            InboundError::InvalidSignature(format!(
                "malformed {SIGNATURE_SHOWN} header: expected the base64 of a DER ECDSA signature"
            ))
        })?;
    let (timestamp, signed_at) = signed_json_head(head, TIMESTAMP_HEADER, TIMESTAMP_SHOWN)?;
    Ok(SignedEvents { key, signature, timestamp, signed_at })
}

/// Checks one Event Webhook post (every check of [`admit_events`], the timestamp's age against
/// `now`, the signature over the timestamp and the raw body), then reads its events.
fn receipts(
    key: Option<&VerifyingKey>,
    request: InboundRequest<'_>,
    now: SystemTime,
) -> Result<Receipts, InboundError> {
    let signed = admit_events(key, request.head())?;
    check_signed_time(TIMESTAMP_SHOWN, signed.signed_at, now)?;
    let parts = [signed.timestamp.as_bytes(), request.body];
    if signed.key.multipart_verify(&parts, &signed.signature).is_err() {
        return Err(InboundError::InvalidSignature(format!(
            "{SIGNATURE_SHOWN} does not match the request (check `event_webhook_public_key`)"
        )));
    }
    let events = json_array(request.body, MAX_EVENTS)
        .map_err(|_| InboundError::invalid("events", "must be a JSON array of event objects"))?
        .ok_or_else(|| InboundError::invalid("events", format!("has more than {MAX_EVENTS} events")))?;
    let receipts = events.iter().filter_map(event_receipt).collect();
    Ok(Receipts { receipts, content_type: "text/plain", answer: String::new() })
}

/// The receipt of one event; `None` when it is not an object or has no usable `event` name.
/// Every other field is optional and taken only when of the expected type.
fn event_receipt(event: &Value) -> Option<ProviderReceipt> {
    let event = event.as_object()?;
    let text = |name: &str| event.get(name).and_then(Value::as_str).map(str::trim);
    let raw_name = text("event")?;
    let is_name = (1..=MAX_EVENT_NAME_LEN).contains(&raw_name.len())
        && raw_name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if !is_name {
        return None;
    }
    let name = raw_name.to_ascii_lowercase();
    let status = match name.as_str() {
        "processed" => Some(DeliveryStatus::Sent),
        "deferred" => Some(DeliveryStatus::Deferred),
        "delivered" => Some(DeliveryStatus::Delivered),
        "bounce" => Some(DeliveryStatus::Bounced),
        "dropped" => Some(DeliveryStatus::Dropped),
        "open" => Some(DeliveryStatus::Opened),
        _ => None,
    };
    let an_id = |id: &str| {
        ((1..=MAX_ID_LEN).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic()))
            .then(|| id.to_owned())
    };
    let provider_message_id = text("sg_message_id").and_then(|id| id.split('.').next()).and_then(an_id);
    // Custom arguments are copied into each event; older events carry them in `unique_args`.
    let legacy = event.get("unique_args").and_then(|args| args.get("switchboard_message_id"));
    let message_id =
        event.get("switchboard_message_id").or(legacy).and_then(Value::as_str).map(str::trim).and_then(an_id);
    let address = text("email").filter(|address| is_email(address));
    let reason = text("reason").unwrap_or_default().to_ascii_lowercase();
    let suppressed = match name.as_str() {
        "bounce" => !text("type").is_some_and(|kind| kind.eq_ignore_ascii_case("blocked")),
        "spamreport" => true,
        "dropped" => {
            ["bounce", "unsubscribe", "address"].iter().any(|word| reason.contains(word))
                || reason == "invalid"
        }
        _ => false,
    };
    let mut detail = Map::new();
    detail.insert("event".to_owned(), Value::String(name.clone()));
    for field in ["reason", "status", "type", "response", "attempt"] {
        let value = match event.get(field) {
            Some(Value::String(value)) => Value::String(detail_text(&without_address(value, address))),
            Some(Value::Number(number)) => Value::Number(number.clone()),
            _ => continue,
        };
        detail.insert(field.to_owned(), value);
    }
    Some(ProviderReceipt {
        message_id,
        provider_message_id,
        event: status.map_or(name, |status| status.as_str().to_owned()),
        status,
        time: event.get("timestamp").and_then(unix_time),
        suppress: address.filter(|_| suppressed).map(|address| (Channel::EMAIL, address.to_owned())),
        detail,
    })
}

/// `text` with every occurrence of `address` (ASCII case ignored) masked: a bounce's `reason`
/// often quotes the recipient.
fn without_address(text: &str, address: Option<&str>) -> String {
    let Some(address) = address.filter(|address| !address.is_empty()) else { return text.to_owned() };
    // ASCII lower-casing keeps every byte where it was: positions found in the copy hold in `text`.
    let (lower, wanted) = (text.to_ascii_lowercase(), address.to_ascii_lowercase());
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (start, found) in lower.match_indices(&wanted) {
        out.push_str(&text[last..start]);
        out.push_str(&mask_recipient(address));
        last = start + found.len();
    }
    out.push_str(&text[last..]);
    out
}

/// The checks made before the body is read, authentication first (an unauthenticated request
/// learns nothing of what its body should be): the basic-auth password, then a
/// `multipart/form-data` content type with a boundary, which is returned. [`Provider::receive`]
/// starts with them.
fn admit(secret: Option<&Secret>, head: InboundHead<'_>) -> Result<String, InboundError> {
    check_basic_auth(secret, head.headers)?;
    let content_type = head.headers.get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    content_type
        .and_then(|content_type| multer::parse_boundary(content_type).ok())
        .ok_or(InboundError::UnsupportedMediaType { expected: MULTIPART })
}

const MULTIPART: &str = "multipart/form-data";

/// The most parts one post may have (an email's fields and its attachments).
const MAX_PARTS: usize = 100;

/// The longest text field taken.
const MAX_FIELD_BYTES: usize = 1 << 20;

/// How much of the body the multipart parser is given at a time.
const READ_CHUNK: usize = 16 * 1024;

/// The fields read; every other part (attachments, spam report, DKIM and SPF results) is skipped.
const FIELDS: [&str; 9] =
    ["from", "to", "subject", "text", "html", "headers", "envelope", "charsets", "email"];

/// The longest `Message-ID` taken as the provider message id; a longer one is replaced by a hash.
const MAX_MESSAGE_ID_LEN: usize = 256;

/// The request's basic-auth password equals `secret` (compared in constant time; the user name is
/// not checked).
fn check_basic_auth(
    secret: Option<&Secret>,
    headers: &reqwest::header::HeaderMap,
) -> Result<(), InboundError> {
    let refused = |message: &str| Err(InboundError::InvalidSignature(message.to_owned()));
    let Some(secret) = secret else {
        return refused(
            "provider has no `inbound_secret`: set it and put it in the Parse URL as its basic-auth \
             password (https://parse:SECRET@host/v1/inbound/sendgrid/NAME)",
        );
    };
    let Some(header) = headers.get(reqwest::header::AUTHORIZATION) else {
        return refused(
            "missing basic auth: put `inbound_secret` in the Parse URL (https://parse:SECRET@host/…)",
        );
    };
    let credentials = header
        .to_str()
        .ok()
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, encoded)| STANDARD.decode(encoded.trim()).ok());
    let Some(credentials) = credentials else {
        return refused("the Authorization header is not basic auth");
    };
    let password = match credentials.iter().position(|b| *b == b':') {
        Some(colon) => &credentials[colon + 1..],
        None => return refused("the Authorization header is not basic auth"),
    };
    // Equal-length digests: the comparison takes the same time whatever the lengths.
    let matches = Sha256::digest(password).as_slice().ct_eq(Sha256::digest(secret.expose()).as_slice());
    if bool::from(matches) {
        Ok(())
    } else {
        refused("the basic-auth password does not match `inbound_secret`")
    }
}

/// The form's fields of [`FIELDS`], as sent (each at most [`MAX_FIELD_BYTES`]). Other parts are
/// skipped unread; more than [`MAX_PARTS`] parts, or a field twice, is refused.
async fn read_form(body: &[u8], boundary: String) -> Result<BTreeMap<&'static str, Vec<u8>>, InboundError> {
    let malformed = |_| InboundError::invalid("form", "the multipart/form-data body is malformed");
    // Fed in chunks, each copied only when the parser asks for it: the body is never copied
    // whole, and parts skipped unread are dropped as they pass.
    let chunks =
        body.chunks(READ_CHUNK).map(|chunk| Ok::<_, Infallible>(bytes::Bytes::copy_from_slice(chunk)));
    let stream = futures_util::stream::iter(chunks);
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut fields = BTreeMap::new();
    let mut parts = 0;
    while let Some(mut field) = multipart.next_field().await.map_err(malformed)? {
        parts += 1;
        if parts > MAX_PARTS {
            return Err(InboundError::invalid("form", format!("has more than {MAX_PARTS} parts")));
        }
        let known = field.name().and_then(|name| FIELDS.into_iter().find(|known| *known == name));
        let Some(name) = known.filter(|_| field.file_name().is_none()) else { continue };
        if fields.contains_key(name) {
            return Err(InboundError::invalid(name, "appears more than once"));
        }
        let mut value = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(malformed)? {
            if value.len() + chunk.len() > MAX_FIELD_BYTES {
                return Err(InboundError::invalid(name, format!("is longer than {MAX_FIELD_BYTES} bytes")));
            }
            value.extend_from_slice(&chunk);
        }
        fields.insert(name, value);
    }
    Ok(fields)
}

/// The email in Inbound Parse's fields.
fn parse_email(fields: &BTreeMap<&'static str, Vec<u8>>) -> Result<Incoming, InboundError> {
    if fields.contains_key("email") {
        return Err(InboundError::invalid(
            "email",
            "raw MIME posts are not supported: turn off \"POST the raw, full MIME message\" in the Parse settings",
        ));
    }
    // `charsets` (JSON) names each field's character set; UTF-8 when it names none.
    let charsets: BTreeMap<String, String> =
        fields.get("charsets").and_then(|raw| serde_json::from_slice(raw).ok()).unwrap_or_default();
    let text = |name: &str| -> String {
        let Some(raw) = fields.get(name) else { return String::new() };
        let label = charsets.get(name).map_or("utf-8", String::as_str);
        let encoding = encoding_rs::Encoding::for_label(label.as_bytes()).unwrap_or(encoding_rs::UTF_8);
        // The named set decides: a byte-order mark in the text does not switch it (`\xff\xfe`
        // in a UTF-8 field is two bad bytes, not UTF-16).
        encoding.decode_without_bom_handling(raw).0.into_owned()
    };
    let envelope = match fields.get("envelope") {
        Some(raw) => Some(
            serde_json::from_slice::<Value>(raw)
                .map_err(|_| InboundError::invalid("envelope", "is not JSON"))?,
        ),
        None => None,
    };
    let envelope_from = envelope.as_ref().and_then(|e| e.get("from")).and_then(Value::as_str);
    let envelope_to = envelope.as_ref().and_then(|e| e.get("to")).and_then(Value::as_array);
    // The From header names who wrote (and gets the replies); the envelope sender is often a
    // bounce address, so it only stands in when the header has no address.
    let from = first_address(&text("from"))
        .or_else(|| envelope_from.and_then(first_address))
        .ok_or_else(|| InboundError::invalid("from", "has no email address"))?;
    // The envelope names the recipient that is ours; the To header may list others first.
    let to = envelope_to
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(first_address)
        .or_else(|| first_address(&text("to")))
        .ok_or_else(|| InboundError::invalid("to", "has no email address"))?;
    let subject = Some(text("subject")).filter(|subject| !subject.is_empty());
    let plain = text("text");
    let body = if plain.trim().is_empty() { text("html") } else { plain };
    let provider_message_id = header_value(&text("headers"), "message-id")
        .filter(|id| id.len() <= MAX_MESSAGE_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| content_id(&from, &to, subject.as_deref(), &body));
    Ok(Incoming {
        channel: Channel::EMAIL,
        from,
        to,
        subject,
        body,
        attachments: Vec::new(),
        provider_message_id,
        timestamp: None,
    })
}

/// The first email address in an address list (`a@b.com, "Doe, J" <c@d.com>`): the part inside
/// `<…>`, or the bare address; entries without a valid address are passed over.
fn first_address(list: &str) -> Option<String> {
    let mut entries = Vec::new();
    let (mut start, mut quoted, mut angled) = (0, false, false);
    for (index, c) in list.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted => angled = true,
            '>' if !quoted => angled = false,
            ',' if !quoted && !angled => {
                entries.push(&list[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    entries.push(&list[start..]);
    entries.into_iter().find_map(|entry| {
        let address = match (entry.rfind('<'), entry.rfind('>')) {
            (Some(open), Some(close)) if open < close => &entry[open + 1..close],
            _ => entry.split_whitespace().find(|word| word.contains('@')).unwrap_or_default(),
        };
        let address = address.trim();
        is_email(address).then(|| address.to_owned())
    })
}

/// A header's value in a raw header block (folded lines joined), the first if it repeats.
fn header_value(headers: &str, name: &str) -> Option<String> {
    let mut found: Option<String> = None;
    for line in headers.lines() {
        if let Some(value) = &mut found {
            if !line.starts_with([' ', '\t']) {
                break;
            }
            value.push(' ');
            value.push_str(line.trim());
        } else if line.trim().is_empty() {
            break;
        } else if let Some((key, value)) = line.split_once(':') {
            if key.eq_ignore_ascii_case(name) {
                found = Some(value.trim().to_owned());
            }
        }
    }
    found.map(|value| value.trim().to_owned()).filter(|value| !value.is_empty())
}

/// An id for an email without a usable `Message-ID`: the SHA-256 of what it says, so that a
/// redelivery gets the same one.
fn content_id(from: &str, to: &str, subject: Option<&str>, body: &str) -> String {
    let mut hash = Sha256::new();
    for part in [from, to, subject.unwrap_or_default(), body] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let mut id = String::from("sha256:");
    for byte in hash.finalize() {
        let _ = write!(id, "{byte:02x}");
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{check_settings, email};

    #[test]
    fn settings() {
        let check = |settings, expected: &[&str]| check_settings("sendgrid", settings, expected);
        check(json!({"api_key": "SG.x"}), &[]);
        check(json!({"api_key": "SG.x", "from": "noreply@example.com"}), &[]);
        check(json!({}), &["missing"]);
        check(json!({"api_key": ""}), &["api_key"]);
        check(json!({"api_key": "SG.x", "from": "Example <noreply@example.com>"}), &["from"]);
        check(json!({"api_key": "SG.x", "base_url": "https://api.sendgrid.com/?x=1"}), &["base_url"]);
        check(json!({"api_key": "SG.x", "inbound_secret": "parse-secret"}), &[]);
        check(json!({"api_key": "SG.x", "inbound_secret": null}), &[]);
        check(json!({"api_key": "SG.x", "inbound_secret": " "}), &["inbound_secret"]);
        check(json!({"api_key": "SG.x", "inbound_secret": 5}), &["inbound_secret"]);
    }

    #[test]
    fn request_bodies() {
        let plain = mail_send_body(&email("user@example.org", Some("Hello"), "Hi", &[]), "app@example.com");
        assert_eq!(
            plain,
            json!({
                "personalizations": [{"to": [{"email": "user@example.org"}]}],
                "from": {"email": "app@example.com"},
                "subject": "Hello",
                "content": [{"type": "text/plain", "value": "Hi"}],
                "custom_args": {"switchboard_message_id": "0190abcd"},
            })
        );
        let html = mail_send_body(
            &email("user@example.org", None, "<p>Hi</p>", &["https://x.org/a.pdf"]),
            "other@example.com",
        );
        assert_eq!(html["subject"], NO_SUBJECT);
        assert_eq!(html["from"]["email"], "other@example.com");
        assert_eq!(html["content"].as_array().map(Vec::len), Some(1));
        assert_eq!(html["content"][0]["type"], "text/html");
        let text = html["content"][0]["value"].as_str().unwrap_or_default();
        assert!(text.starts_with("<p>Hi</p>") && text.contains("<a href=\"https://x.org/a.pdf\">"), "{text}");
    }

    #[test]
    fn rate_limit_reset_header() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let mut answer = Answer {
            status: reqwest::StatusCode::TOO_MANY_REQUESTS,
            headers: reqwest::header::HeaderMap::new(),
            body: Vec::new(),
            truncated: false,
        };
        assert_eq!(rate_limit_reset(&answer, now), None);
        answer.headers.insert("x-ratelimit-reset", reqwest::header::HeaderValue::from_static("1030"));
        assert_eq!(rate_limit_reset(&answer, now), Some(Duration::from_secs(30)));
        answer.headers.insert("x-ratelimit-reset", reqwest::header::HeaderValue::from_static("900"));
        assert_eq!(rate_limit_reset(&answer, now), Some(Duration::ZERO));
    }
}

#[cfg(test)]
mod inbound_tests {
    use super::*;

    const SECRET: &str = "parse-secret";
    const BOUNDARY: &str = "xYzZY";

    /// One inbound post to a provider whose `inbound_secret` is `secret`.
    struct Post {
        secret: Option<&'static str>,
        authorization: Option<String>,
        content_type: Option<String>,
        body: Vec<u8>,
    }

    /// A form part: name, file name, value.
    type Part<'a> = (&'a str, Option<&'a str>, &'a [u8]);

    fn basic(user_and_password: &str) -> Option<String> {
        Some(format!("Basic {}", STANDARD.encode(user_and_password)))
    }

    /// A rightly authenticated post of these parts.
    fn post(parts: &[Part<'_>]) -> Post {
        let mut body = Vec::new();
        for (name, file, value) in parts {
            body.extend_from_slice(
                format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes(),
            );
            if let Some(file) = file {
                body.extend_from_slice(
                    format!("; filename=\"{file}\"\r\nContent-Type: image/png").as_bytes(),
                );
            }
            body.extend_from_slice(b"\r\n\r\n");
            body.extend_from_slice(value);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
        Post {
            secret: Some(SECRET),
            authorization: basic(&format!("parse:{SECRET}")),
            content_type: Some(format!("multipart/form-data; boundary={BOUNDARY}")),
            body,
        }
    }

    /// The fields of a simple email, with `changes` replacing (or, with `None`, dropping) some.
    fn fields<'a>(changes: &[(&'a str, Option<&'a str>)]) -> Vec<Part<'a>> {
        let base: [(&str, &str); 5] = [
            ("from", "Ann Example <ann@example.org>"),
            ("to", "support@in.example.com"),
            ("subject", "Hello"),
            ("text", "Hi there"),
            ("headers", "Received: by mx.example.com\r\nMessage-ID: <m1@example.org>\r\nSubject: Hello\r\n"),
        ];
        let mut parts: Vec<Part<'a>> = base
            .iter()
            .filter(|(name, _)| !changes.iter().any(|(n, _)| n == name))
            .map(|(name, value)| (*name, None, value.as_bytes()))
            .collect();
        parts.extend(changes.iter().filter_map(|(name, value)| value.map(|v| (*name, None, v.as_bytes()))));
        parts
    }

    fn provider(secret: Option<&str>) -> Arc<dyn Provider> {
        let settings = json!({"api_key": "SG.x", "inbound_secret": secret});
        let context = BuildContext { name: "sg", timeout: Duration::from_secs(1) };
        crate::find("sendgrid")
            .map(|kind| kind.build(settings, &context))
            .unwrap_or_else(|| panic!("sendgrid is not registered"))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// What `admit` says of the post's head, and what `receive` (called without `admit`) says
    /// of the whole post.
    fn run(post: Post) -> (Result<(), InboundError>, Result<Inbound, InboundError>) {
        let provider = provider(post.secret);
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in [("authorization", post.authorization), ("content-type", post.content_type)] {
            if let Some(value) = value {
                headers.insert(name, value.parse().unwrap_or_else(|e| panic!("{e}")));
            }
        }
        let request =
            InboundRequest { path_and_query: "/v1/inbound/sendgrid/sg", headers: &headers, body: &post.body };
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap_or_else(|e| panic!("{e}"));
        (provider.admit(request.head()), runtime.block_on(provider.receive(request)))
    }

    /// The email of [`fields`] unchanged.
    fn mail() -> Incoming {
        Incoming {
            channel: Channel::EMAIL,
            from: "ann@example.org".into(),
            to: "support@in.example.com".into(),
            subject: Some("Hello".into()),
            body: "Hi there".into(),
            attachments: Vec::new(),
            provider_message_id: "<m1@example.org>".into(),
            timestamp: None,
        }
    }

    /// Why a test request is refused: the error's variant, its field and a part of its text.
    /// `Secret` and `MediaType` are refused by `admit` already (with the same error), `Invalid`
    /// only by `receive`.
    #[derive(Debug)]
    enum Refused {
        Secret(&'static str),
        Invalid(&'static str, &'static str),
        MediaType,
    }

    /// `expected`: the message taken, or why the request is refused.
    fn check(post: Post, expected: Result<Incoming, Refused>) {
        let what = format!("{:?} {:?}", post.authorization, String::from_utf8_lossy(&post.body));
        let (admitted, received) = run(post);
        let refused_by_head = matches!(expected, Err(Refused::Secret(_) | Refused::MediaType));
        match (&admitted, &received) {
            (Err(early), Err(late)) if refused_by_head => assert_eq!(early, late, "{what}"),
            (Ok(()), _) if !refused_by_head => {}
            _ => panic!("{what}: admit said {admitted:?}, receive {received:?}; expected {expected:?}"),
        }
        match (received, expected) {
            (Ok(inbound), Ok(message)) => {
                assert_eq!(inbound.messages, vec![message], "{what}");
                assert_eq!((inbound.content_type, inbound.answer.as_str()), ("text/plain", ""));
            }
            (Err(InboundError::InvalidSignature(text)), Err(Refused::Secret(part))) => {
                assert!(text.contains(part) && !text.contains(SECRET), "{what}: {text}");
            }
            (Err(InboundError::Invalid { field, message }), Err(Refused::Invalid(name, part))) => {
                assert_eq!(field, name, "{what}: {message}");
                assert!(message.contains(part), "{what}: {message}");
            }
            (Err(InboundError::UnsupportedMediaType { expected }), Err(Refused::MediaType)) => {
                assert_eq!(expected, MULTIPART);
            }
            (got, expected) => panic!("{what}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn basic_auth() {
        let with_auth = |authorization: Option<String>| Post { authorization, ..post(&fields(&[])) };
        check(post(&fields(&[])), Ok(mail()));
        // The user name is not checked; the password is everything after the first `:`.
        check(with_auth(basic(&format!(":{SECRET}"))), Ok(mail()));
        check(with_auth(Some(format!("basic  {}", STANDARD.encode(format!("x:{SECRET}"))))), Ok(mail()));
        let colon = Post { secret: Some("pa:ss"), ..with_auth(basic("parse:pa:ss")) };
        check(colon, Ok(mail()));
        let mismatch = "password does not match `inbound_secret`";
        check(with_auth(basic("parse:wrong")), Err(Refused::Secret(mismatch)));
        check(with_auth(basic(&format!("parse:{SECRET}x"))), Err(Refused::Secret(mismatch)));
        check(with_auth(basic("parse:")), Err(Refused::Secret(mismatch)));
        check(with_auth(basic(&format!("{SECRET}:parse"))), Err(Refused::Secret(mismatch)));
        check(with_auth(None), Err(Refused::Secret("missing basic auth")));
        check(with_auth(basic(SECRET)), Err(Refused::Secret("not basic auth")));
        check(with_auth(Some(format!("Bearer {SECRET}"))), Err(Refused::Secret("not basic auth")));
        check(with_auth(Some("Basic %%%".into())), Err(Refused::Secret("not basic auth")));
        let unconfigured = Post { secret: None, ..post(&fields(&[])) };
        check(unconfigured, Err(Refused::Secret("provider has no `inbound_secret`")));
        // Authentication comes first: an unauthenticated post learns nothing of its body.
        let unauthenticated = Post { content_type: Some("application/json".into()), ..with_auth(None) };
        check(unauthenticated, Err(Refused::Secret("missing basic auth")));
    }

    #[test]
    fn inbound_body_limit() {
        // The service's own limit applies: an email's size is its business, not Inbound Parse's.
        assert_eq!(provider(Some(SECRET)).max_inbound_body(), None);
    }

    #[test]
    fn content_types() {
        let typed = |content_type: Option<&str>| Post {
            content_type: content_type.map(str::to_owned),
            ..post(&fields(&[]))
        };
        check(typed(Some("Multipart/Form-Data; boundary=\"xYzZY\"")), Ok(mail()));
        check(typed(None), Err(Refused::MediaType));
        check(typed(Some("application/x-www-form-urlencoded")), Err(Refused::MediaType));
        check(typed(Some("multipart/form-data")), Err(Refused::MediaType));
        check(typed(Some("multipart/mixed; boundary=xYzZY")), Err(Refused::MediaType));
        check(typed(Some("multipart/form-data; boundary=other")), Err(Refused::Invalid("form", "malformed")));
        let mut cut = post(&fields(&[]));
        cut.body.truncate(cut.body.len() - 12);
        check(cut, Err(Refused::Invalid("form", "malformed")));
    }

    #[test]
    fn addresses() {
        let sent = |changes: &[(&str, Option<&str>)]| post(&fields(changes));
        let from = |address: &str| Ok(Incoming { from: address.into(), ..mail() });
        let to = |address: &str| Ok(Incoming { to: address.into(), ..mail() });
        check(sent(&[("from", Some("ann@example.org"))]), from("ann@example.org"));
        check(sent(&[("from", Some("\"Example, Ann\" <Ann@Example.org>"))]), from("Ann@Example.org"));
        check(sent(&[("from", Some("<ann@example.org>"))]), from("ann@example.org"));
        check(sent(&[("from", Some("ann@example.org (Ann)"))]), from("ann@example.org"));
        check(sent(&[("from", Some("Ann"))]), Err(Refused::Invalid("from", "no email address")));
        check(sent(&[("from", None)]), Err(Refused::Invalid("from", "no email address")));
        check(
            sent(&[("to", Some("Support <support@in.example.com>, bob@example.net"))]),
            to("support@in.example.com"),
        );
        check(
            sent(&[("to", Some("\"Help, Desk\" <help@in.example.com>, b@x.org"))]),
            to("help@in.example.com"),
        );
        check(sent(&[("to", Some("undisclosed-recipients:;, b@x.org"))]), to("b@x.org"));
        check(sent(&[("to", Some("nobody"))]), Err(Refused::Invalid("to", "no email address")));
        // The envelope's recipient is ours: it wins over the To header.
        let envelope = r#"{"to":["desk@in.example.com"],"from":"bounce+1@lists.example.org"}"#;
        check(sent(&[("envelope", Some(envelope))]), to("desk@in.example.com"));
        check(sent(&[("envelope", Some(envelope)), ("to", Some("x"))]), to("desk@in.example.com"));
        // Its sender only stands in for a From header without an address.
        let bounce = Incoming {
            from: "bounce+1@lists.example.org".into(),
            to: "desk@in.example.com".into(),
            ..mail()
        };
        check(sent(&[("envelope", Some(envelope)), ("from", Some("Ann"))]), Ok(bounce));
        check(sent(&[("envelope", Some(r#"{"to":[],"from":""}"#))]), Ok(mail()));
        check(sent(&[("envelope", Some(r#"{}"#))]), Ok(mail()));
        check(sent(&[("envelope", Some("{not json"))]), Err(Refused::Invalid("envelope", "not JSON")));
    }

    #[test]
    fn bodies_and_ids() {
        let sent = |changes: &[(&str, Option<&str>)]| post(&fields(changes));
        let body = |text: &str| Ok(Incoming { body: text.into(), ..mail() });
        check(sent(&[("html", Some("<p>Hi</p>"))]), body("Hi there"));
        check(sent(&[("text", Some("")), ("html", Some("<p>Hi</p>"))]), body("<p>Hi</p>"));
        check(sent(&[("text", Some(" \r\n")), ("html", Some("<p>Hi</p>"))]), body("<p>Hi</p>"));
        check(sent(&[("text", None), ("html", Some("<p>Hi</p>"))]), body("<p>Hi</p>"));
        check(sent(&[("subject", None)]), Ok(Incoming { subject: None, ..mail() }));
        check(sent(&[("subject", Some(""))]), Ok(Incoming { subject: None, ..mail() }));
        // Each field in the character set `charsets` names for it.
        let latin = post(&[
            ("from", None, b"ann@example.org"),
            ("to", None, b"support@in.example.com"),
            ("subject", None, b"Hello"),
            ("text", None, b"caf\xe9"),
            ("headers", None, b"Message-ID: <m1@example.org>"),
            ("charsets", None, br#"{"text":"iso-8859-1","subject":"UTF-8"}"#),
        ]);
        check(latin, body("café"));
        check(
            post(&[
                ("text", None, b"caf\xe9"),
                ("from", None, b"ann@example.org"),
                ("to", None, b"support@in.example.com"),
                ("subject", None, b"Hello"),
                ("headers", None, b"Message-ID: <m1@example.org>"),
            ]),
            body("caf\u{fffd}"),
        );
        check(
            post(&[
                ("text", None, b"\xff\xfeSTOP"),
                ("from", None, b"ann@example.org"),
                ("to", None, b"support@in.example.com"),
                ("subject", None, b"Hello"),
                ("headers", None, b"Message-ID: <m1@example.org>"),
            ]),
            body("\u{fffd}\u{fffd}STOP"),
        );

        let id = |headers: &str, expected: &str| {
            check(
                sent(&[("headers", Some(headers))]),
                Ok(Incoming { provider_message_id: expected.into(), ..mail() }),
            );
        };
        id("message-id: <lower@x.org>\n", "<lower@x.org>");
        id(
            "Subject: a\r\n continued Message-ID: <no@x.org>\r\nMessage-Id:\r\n <folded@x.org>\r\nTo: b\r\n",
            "<folded@x.org>",
        );
        id("Message-ID: <first@x.org>\r\nMessage-ID: <second@x.org>", "<first@x.org>");
        // Without a usable one: a hash of what the email says, the same for a redelivery.
        let hashed = content_id("ann@example.org", "support@in.example.com", Some("Hello"), "Hi there");
        assert!(hashed.starts_with("sha256:") && hashed.len() == 7 + 64, "{hashed}");
        id("Subject: Hello\r\n", &hashed);
        id("", &hashed);
        id("X-Body: x\r\n\r\nMessage-ID: <after-the-headers@x.org>", &hashed);
        id("Message-ID: <has space@x.org>", &hashed);
        id(&format!("Message-ID: <{}@x.org>", "a".repeat(300)), &hashed);
        let no_headers = Post { ..sent(&[("headers", None)]) };
        check(no_headers, Ok(Incoming { provider_message_id: hashed.clone(), ..mail() }));
        let other = content_id("ann@example.org", "support@in.example.com", Some("Hello"), "Hi there!");
        assert_ne!(other, hashed);
        assert_ne!(
            content_id("a@x.org", "b@x.org", Some("c"), "d"),
            content_id("a@x.org", "b@x.org", None, "cd")
        );
    }

    #[test]
    fn parts() {
        let png = [0x89_u8, b'P', b'N', b'G', 0, 1, 2];
        let mut parts = fields(&[]);
        parts.push(("attachment1", Some("a.png"), &png));
        parts.push(("attachment-info", None, br#"{"attachment1":{"filename":"a.png"}}"#));
        parts.push(("spam_score", None, b"0.1"));
        // A file is skipped whatever its name.
        parts.push(("text", Some("text.png"), &png));
        check(post(&parts), Ok(mail()));
        // Attachments are skipped unread, however large.
        let big = vec![b'x'; 3 * MAX_FIELD_BYTES];
        let mut large = fields(&[]);
        large.push(("attachment1", Some("big.bin"), &big));
        check(post(&large), Ok(mail()));

        let at_most = vec![b'x'; MAX_FIELD_BYTES];
        let long_text = String::from_utf8(at_most.clone()).unwrap_or_default();
        check(
            post(&fields(&[("text", Some(&long_text))])),
            Ok(Incoming { body: long_text.clone(), ..mail() }),
        );
        let too_long = format!("{long_text}x");
        check(
            post(&fields(&[("text", Some(&too_long))])),
            Err(Refused::Invalid("text", "longer than 1048576")),
        );
        check(post(&fields(&[("html", Some(&too_long))])), Err(Refused::Invalid("html", "longer than")));

        let mut hundred = fields(&[]);
        let filler = vec![("spam_report", None, b"-".as_slice()); MAX_PARTS - hundred.len()];
        hundred.extend(filler);
        check(post(&hundred), Ok(mail()));
        hundred.push(("spam_report", None, b"-"));
        check(post(&hundred), Err(Refused::Invalid("form", "more than 100 parts")));

        let mut twice = fields(&[]);
        twice.push(("subject", None, b"Again"));
        check(post(&twice), Err(Refused::Invalid("subject", "more than once")));
        let raw =
            [("email", None, b"From: a@b.org\r\n\r\nHi".as_slice()), ("to", None, b"support@in.example.com")];
        check(post(&raw), Err(Refused::Invalid("email", "raw MIME")));
    }
}

/// Event Webhook posts (`receipts`) and the `event_webhook_public_key` setting.
#[cfg(test)]
mod receipt_tests {
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::{Signature, SigningKey};
    use serde_json::json;

    use super::*;
    use crate::find;
    use crate::test_support::{build, check_receipts, check_settings, headers, take_receipts, Refused};

    /// SendGrid's own example of a signed post (as its client libraries test it): this key, this
    /// timestamp and this body give this signature.
    const DOC_KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw+2fNNRaINXvVpiglSI8eNEc6wEA3F+g==";
    const DOC_TIMESTAMP: &str = "1600112502";
    const DOC_SIGNATURE: &str =
        "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM+uOe5W0JuG+luQAbPIqHh89M15TluLtEZtM=";
    /// A signature of another body by the same key.
    const DOC_OTHER_SIGNATURE: &str =
        "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH3j/0=";
    const DOC_BODY: &str = concat!(
        r#"[{"email":"hello@world.com","event":"dropped","reason":"Bounced Address","#,
        r#""sg_event_id":"ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA","#,
        r#""sg_message_id":"LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0","#,
        r#""smtp-id":"<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>","timestamp":1600112492}]"#,
        "\r\n"
    );

    /// The DER SubjectPublicKeyInfo of a P-256 key, up to the point: every such key starts so
    /// (base64 `MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE`).
    const SPKI_PREFIX: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
        0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];

    /// A test signing key made from `seed` (the keys the tests sign with, as SendGrid signs).
    fn signing_key(seed: u8) -> SigningKey {
        SigningKey::from_slice(&[seed; 32]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `key`'s public half as SendGrid's dashboard shows it.
    fn public_der(key: &SigningKey) -> Vec<u8> {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(key.verifying_key().to_sec1_point(false).as_bytes());
        der
    }

    fn public_key(key: &SigningKey) -> String {
        STANDARD.encode(public_der(key))
    }

    /// The signature header SendGrid would send for `timestamp` and `body`.
    fn sign(key: &SigningKey, timestamp: &str, body: &[u8]) -> String {
        let mut signed = timestamp.as_bytes().to_vec();
        signed.extend_from_slice(body);
        let signature: Signature = key.sign(&signed);
        STANDARD.encode(signature.to_der().as_bytes())
    }

    #[test]
    fn settings() {
        let check = |key: &str, expected: &[&str]| {
            check_settings("sendgrid", json!({"api_key": "SG.x", "event_webhook_public_key": key}), expected);
        };
        check(DOC_KEY, &[]);
        check(&public_key(&signing_key(7)), &[]);
        check(&format!("  {DOC_KEY}\n"), &[]);
        check(
            &format!(
                "-----BEGIN PUBLIC KEY-----\n{}\n{}\n-----END PUBLIC KEY-----\n",
                &DOC_KEY[..64],
                &DOC_KEY[64..]
            ),
            &[],
        );
        check_settings("sendgrid", json!({"api_key": "SG.x", "event_webhook_public_key": null}), &[]);
        let field = ["event_webhook_public_key"];
        check("", &field);
        check("foo", &field);
        check("not base64!", &field);
        check(&DOC_KEY[..DOC_KEY.len() - 4], &field);
        check(&"A".repeat(2000), &field);
        // Well-formed base64 of something else: a bare point, another curve, a point off the curve.
        let point = signing_key(7).verifying_key().to_sec1_point(false);
        check(&STANDARD.encode(point.as_bytes()), &field);
        let mut other_curve = public_der(&signing_key(7));
        other_curve[22] = 0x08;
        check(&STANDARD.encode(&other_curve), &field);
        let mut off_curve = public_der(&signing_key(7));
        off_curve[90] ^= 1;
        check(&STANDARD.encode(&off_curve), &field);
        let issues = find("sendgrid")
            .map(|kind| kind.check(json!({"api_key": "x", "event_webhook_public_key": "foo"})));
        let issue = issues.into_iter().flatten().next().unwrap_or_else(|| panic!("no issue"));
        assert_eq!(issue.message, "`event_webhook_public_key` is not base64");
        assert!(issue.help.is_some_and(|help| help.contains("Verification Key")));
    }

    /// One Event Webhook post to a provider whose key is `configured`.
    struct Post {
        configured: Option<String>,
        content_type: Option<&'static str>,
        /// `None`: no header; several values separated by `|` are sent as several headers.
        timestamp: Option<String>,
        signature: Option<String>,
        body: Vec<u8>,
        /// Seconds since the epoch the post is received at.
        now: u64,
    }

    const NOW: u64 = 1_700_000_000;

    /// `body` signed now by `signing_key(1)`, posted to a provider configured with its key.
    fn post(body: &str) -> Post {
        let key = signing_key(1);
        let timestamp = NOW.to_string();
        Post {
            configured: Some(public_key(&key)),
            content_type: Some("application/json"),
            signature: Some(sign(&key, &timestamp, body.as_bytes())),
            timestamp: Some(timestamp),
            body: body.as_bytes().to_vec(),
            now: NOW,
        }
    }

    /// What `admit_receipts` says of the post's head, and what `receipts` (called without it)
    /// says of the whole post.
    fn run(post: Post) -> (Result<(), InboundError>, Result<Receipts, InboundError>) {
        let settings = json!({"api_key": "SG.x", "event_webhook_public_key": post.configured});
        let provider = build("sendgrid", "sg", settings);
        let headers = headers([
            ("content-type", post.content_type.map(str::to_owned)),
            (SIGNATURE_HEADER, post.signature),
            (TIMESTAMP_HEADER, post.timestamp),
        ]);
        let request = InboundRequest {
            path_and_query: "/v1/receipts/sendgrid/sg",
            headers: &headers,
            body: &post.body,
        };
        take_receipts(&*provider, request, UNIX_EPOCH + Duration::from_secs(post.now))
    }

    /// `expected`: the receipts taken, or why the post is refused.
    fn check(post: Post, expected: Result<Vec<ProviderReceipt>, Refused>) {
        let what =
            format!("{:?} {:?} {:?}", post.timestamp, post.signature, String::from_utf8_lossy(&post.body));
        let (admitted, taken) = run(post);
        check_receipts(&what, admitted, taken, expected, crate::receipt::JSON);
    }

    /// A receipt of event `event` with no ids, no time and no suppression.
    fn receipt(event: &str, status: Option<DeliveryStatus>, detail: Value) -> ProviderReceipt {
        ProviderReceipt {
            message_id: None,
            provider_message_id: None,
            event: event.into(),
            status,
            time: None,
            suppress: None,
            detail: detail.as_object().cloned().unwrap_or_default(),
        }
    }

    fn at(seconds: u64) -> Option<SystemTime> {
        Some(UNIX_EPOCH + Duration::from_secs(seconds))
    }

    #[test]
    fn documented_post() {
        let documented = |signature: &str, now: u64| Post {
            configured: Some(DOC_KEY.into()),
            timestamp: Some(DOC_TIMESTAMP.into()),
            signature: Some(signature.into()),
            body: DOC_BODY.as_bytes().to_vec(),
            now,
            ..post("[]")
        };
        let dropped = ProviderReceipt {
            provider_message_id: Some("LRzXl_NHStOGhQ4kofSm_A".into()),
            time: at(1_600_112_492),
            suppress: Some((Channel::EMAIL, "hello@world.com".into())),
            ..receipt(
                "dropped",
                Some(DeliveryStatus::Dropped),
                json!({"event": "dropped", "reason": "Bounced Address"}),
            )
        };
        check(documented(DOC_SIGNATURE, 1_600_112_502), Ok(vec![dropped.clone()]));
        check(documented(DOC_SIGNATURE, 1_600_112_502 + 300), Ok(vec![dropped]));
        check(documented(DOC_SIGNATURE, 1_600_112_502 + 301), Err(Refused::Signature("stale")));
        check(documented(DOC_OTHER_SIGNATURE, 1_600_112_502), Err(Refused::Signature("does not match")));
    }

    #[test]
    fn a_batch_of_several_messages() {
        let body = json!([
            {"email": "ann@example.org", "timestamp": 1_700_000_001, "event": "processed",
             "sg_message_id": "msgA.filter0001.1.0", "switchboard_message_id": "0190-a", "sg_event_id": "e1"},
            {"email": "bob@example.org", "timestamp": 1_700_000_002, "event": "bounce", "type": "bounce",
             "status": "5.1.1", "reason": "550 5.1.1 <Bob@Example.org>: user unknown",
             "sg_message_id": "msgB.filter0001.2.0", "switchboard_message_id": "0190-b"},
            {"email": "ann@example.org", "timestamp": 1_700_000_003, "event": "delivered", "response": "250 OK",
             "sg_message_id": "msgA.filter0001.1.0", "switchboard_message_id": "0190-a"},
            {"email": "cy@example.org", "timestamp": 1_700_000_004, "event": "open", "sg_message_id": "msgC"},
            {"email": "dee@example.org", "timestamp": 1_700_000_005, "event": "delivered"},
            "not an event",
            {"event": 5},
        ])
        .to_string();
        let ann = |event: &str, status, detail, time| ProviderReceipt {
            message_id: Some("0190-a".into()),
            provider_message_id: Some("msgA".into()),
            time: at(time),
            ..receipt(event, Some(status), detail)
        };
        let expected = vec![
            ann("sent", DeliveryStatus::Sent, json!({"event": "processed"}), 1_700_000_001),
            ProviderReceipt {
                message_id: Some("0190-b".into()),
                provider_message_id: Some("msgB".into()),
                time: at(1_700_000_002),
                suppress: Some((Channel::EMAIL, "bob@example.org".into())),
                ..receipt(
                    "bounced",
                    Some(DeliveryStatus::Bounced),
                    json!({"event": "bounce", "type": "bounce", "status": "5.1.1",
                           "reason": "550 5.1.1 <b***@example.org>: user unknown"}),
                )
            },
            ann(
                "delivered",
                DeliveryStatus::Delivered,
                json!({"event": "delivered", "response": "250 OK"}),
                1_700_000_003,
            ),
            ProviderReceipt {
                provider_message_id: Some("msgC".into()),
                time: at(1_700_000_004),
                ..receipt("opened", Some(DeliveryStatus::Opened), json!({"event": "open"}))
            },
            // No id at all: still a receipt, for the service to count as unknown.
            ProviderReceipt {
                time: at(1_700_000_005),
                ..receipt("delivered", Some(DeliveryStatus::Delivered), json!({"event": "delivered"}))
            },
        ];
        check(post(&body), Ok(expected));
        check(post("[]"), Ok(vec![]));
        check(post(" [ ] "), Ok(vec![]));
    }

    #[test]
    fn refused_signatures() {
        let mismatch = || Err(Refused::Signature("X-Twilio-Email-Event-Webhook-Signature does not match"));
        let body = r#"[{"event":"delivered","sg_message_id":"msgA"}]"#;
        // Another key signed it.
        let other = signing_key(2);
        check(
            Post { signature: Some(sign(&other, &NOW.to_string(), body.as_bytes())), ..post(body) },
            mismatch(),
        );
        check(Post { configured: Some(public_key(&other)), ..post(body) }, mismatch());
        // Something else was signed: another body, another timestamp, the body alone.
        let mut tampered = post(body);
        tampered.body = body.replace("delivered", "bounce").into_bytes();
        check(tampered, mismatch());
        check(Post { timestamp: Some((NOW + 1).to_string()), ..post(body) }, mismatch());
        check(Post { timestamp: Some(format!("0{NOW}")), ..post(body) }, mismatch());
        let key = signing_key(1);
        check(Post { signature: Some(sign(&key, "", body.as_bytes())), ..post(body) }, mismatch());
        // The signed text is the timestamp as sent: a leading zero signed is a leading zero checked.
        let padded = format!("0{NOW}");
        check(
            Post {
                signature: Some(sign(&key, &padded, body.as_bytes())),
                timestamp: Some(padded),
                ..post(body)
            },
            Ok(vec![ProviderReceipt {
                provider_message_id: Some("msgA".into()),
                ..receipt("delivered", Some(DeliveryStatus::Delivered), json!({"event": "delivered"}))
            }]),
        );

        // Replays: at most 5 minutes either way.
        let stale = || Err(Refused::Signature("stale X-Twilio-Email-Event-Webhook-Timestamp"));
        let taken = || {
            Ok(vec![ProviderReceipt {
                provider_message_id: Some("msgA".into()),
                ..receipt("delivered", Some(DeliveryStatus::Delivered), json!({"event": "delivered"}))
            }])
        };
        check(Post { now: NOW + 300, ..post(body) }, taken());
        check(Post { now: NOW - 300, ..post(body) }, taken());
        check(Post { now: NOW + 301, ..post(body) }, stale());
        check(Post { now: NOW - 301, ..post(body) }, stale());
        check(Post { now: NOW + 86_400 * 365, ..post(body) }, stale());
        let far = u64::MAX.to_string();
        check(
            Post { signature: Some(sign(&key, &far, body.as_bytes())), timestamp: Some(far), ..post(body) },
            stale(),
        );

        // Refused from the headers alone.
        let head = |part| Err(Refused::Head(part));
        let malformed_signature = "malformed X-Twilio-Email-Event-Webhook-Signature header";
        check(Post { signature: None, ..post(body) }, head("missing X-Twilio-Email-Event-Webhook-Signature"));
        check(
            Post { signature: Some(String::new()), ..post(body) },
            head("missing X-Twilio-Email-Event-Webhook-Signature"),
        );
        check(Post { signature: Some("not base64!".into()), ..post(body) }, head(malformed_signature));
        check(Post { signature: Some(STANDARD.encode([7_u8; 70])), ..post(body) }, head(malformed_signature));
        check(Post { signature: Some(STANDARD.encode([0_u8; 64])), ..post(body) }, head(malformed_signature));
        let long = format!("{}AAAA", sign(&key, &NOW.to_string(), body.as_bytes()));
        check(Post { signature: Some(long), ..post(body) }, head(malformed_signature));
        let twice = post(body).signature.map(|signature| format!("{signature}|{signature}"));
        check(Post { signature: twice, ..post(body) }, head("sent more than once"));
        let malformed_timestamp = "malformed X-Twilio-Email-Event-Webhook-Timestamp header";
        check(Post { timestamp: None, ..post(body) }, head("missing X-Twilio-Email-Event-Webhook-Timestamp"));
        for timestamp in ["12a", "-5", "1.5", "+1700000000", "999999999999999999999"] {
            check(Post { timestamp: Some(timestamp.into()), ..post(body) }, head(malformed_timestamp));
        }
        check(Post { timestamp: Some(format!("{NOW}|{NOW}")), ..post(body) }, head("sent more than once"));
        check(Post { configured: None, ..post(body) }, head("provider has no `event_webhook_public_key`"));
    }

    #[test]
    fn content_types_and_bodies() {
        let typed = |content_type| Post { content_type, ..post("[]") };
        check(typed(Some("application/json; charset=utf-8")), Ok(vec![]));
        check(typed(Some("Application/JSON")), Ok(vec![]));
        check(typed(Some("text/plain")), Err(Refused::MediaType));
        check(typed(Some("application/x-www-form-urlencoded")), Err(Refused::MediaType));
        check(typed(None), Err(Refused::MediaType));
        // Authentication comes first: an unsigned post learns nothing of what its body should be.
        check(
            Post { signature: None, content_type: Some("text/plain"), ..post("[]") },
            Err(Refused::Head("missing X-Twilio-Email-Event-Webhook-Signature")),
        );

        let not_events = Err(Refused::Invalid("events", "must be a JSON array of event objects"));
        for body in ["", "{}", r#"{"event":"open"}"#, "[", "[{}", "[] []", "null", "\"x\"", "[1,]"] {
            check(post(body), not_events.clone());
        }
        // Every element is looked at on its own: whatever is not a usable event is skipped.
        let odd = r#"[1, "x", null, [], {}, {"event": null}, {"event": ["open"]}, {"event": ""},
            {"event": "not an event name"}, {"event": "an_event_name_longer_than_32_chars"}]"#;
        check(post(odd), Ok(vec![]));
        let most = format!("[{}]", vec![r#"{"event":"click"}"#; MAX_EVENTS].join(","));
        let taken = check_count(post(&most));
        assert_eq!(taken, MAX_EVENTS);
        let too_many = format!("[{}]", vec!["{}"; MAX_EVENTS + 1].join(","));
        check(post(&too_many), Err(Refused::Invalid("events", "more than 5000 events")));
    }

    /// How many receipts a post that must be taken gives.
    fn check_count(post: Post) -> usize {
        match run(post) {
            (Ok(()), Ok(receipts)) => receipts.receipts.len(),
            other => panic!("{other:?}"),
        }
    }

    /// One event's receipt, or `None` when it is skipped.
    fn check_event(event: Value, expected: Option<ProviderReceipt>) {
        assert_eq!(event_receipt(&event), expected, "{event}");
    }

    #[test]
    fn event_names() {
        use DeliveryStatus::*;
        let cases = [
            ("processed", Some(Sent), "sent"),
            ("deferred", Some(Deferred), "deferred"),
            ("delivered", Some(Delivered), "delivered"),
            ("bounce", Some(Bounced), "bounced"),
            ("dropped", Some(Dropped), "dropped"),
            ("open", Some(Opened), "opened"),
            ("Delivered", Some(Delivered), "delivered"),
            ("click", None, "click"),
            ("unsubscribe", None, "unsubscribe"),
            ("group_unsubscribe", None, "group_unsubscribe"),
            ("group_resubscribe", None, "group_resubscribe"),
            ("SpamReport", None, "spamreport"),
            ("account_status_change", None, "account_status_change"),
        ];
        for (name, status, event) in cases {
            let detail = json!({"event": name.to_ascii_lowercase()});
            check_event(json!({"event": name}), Some(receipt(event, status, detail)));
        }
        for odd in [
            json!(null),
            json!(1),
            json!("open"),
            json!(["open"]),
            json!({}),
            json!({"event": 1}),
            json!({"event": "op en"}),
            json!({"event": "ouvert\u{e9}"}),
            json!({"event": "x".repeat(33)}),
        ] {
            check_event(odd, None);
        }
    }

    #[test]
    fn event_ids_and_times() {
        let delivered = |changes: Value| {
            let mut event = json!({"event": "delivered"});
            if let (Some(event), Some(changes)) = (event.as_object_mut(), changes.as_object()) {
                event.extend(changes.clone());
            }
            event
        };
        let base = receipt("delivered", Some(DeliveryStatus::Delivered), json!({"event": "delivered"}));
        let provider_id = |id: Option<&str>| {
            Some(ProviderReceipt { provider_message_id: id.map(str::to_owned), ..base.clone() })
        };
        check_event(
            delivered(json!({"sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0"})),
            provider_id(Some("14c5d75ce93")),
        );
        check_event(
            delivered(json!({"sg_message_id": "LRzXl_NHStOGhQ4kofSm_A"})),
            provider_id(Some("LRzXl_NHStOGhQ4kofSm_A")),
        );
        check_event(delivered(json!({"sg_message_id": " abc .x"})), provider_id(None));
        check_event(delivered(json!({"sg_message_id": ".abc"})), provider_id(None));
        check_event(delivered(json!({"sg_message_id": ""})), provider_id(None));
        check_event(delivered(json!({"sg_message_id": 5})), provider_id(None));
        check_event(
            delivered(json!({"sg_message_id": "a".repeat(128)})),
            provider_id(Some(&"a".repeat(128))),
        );
        check_event(delivered(json!({"sg_message_id": "a".repeat(129)})), provider_id(None));
        check_event(delivered(json!({"sg_message_id": "é.x"})), provider_id(None));

        let message_id =
            |id: Option<&str>| Some(ProviderReceipt { message_id: id.map(str::to_owned), ..base.clone() });
        check_event(delivered(json!({"switchboard_message_id": "0190abcd"})), message_id(Some("0190abcd")));
        check_event(delivered(json!({"switchboard_message_id": " 0190abcd "})), message_id(Some("0190abcd")));
        check_event(
            delivered(json!({"unique_args": {"switchboard_message_id": "0190abcd"}})),
            message_id(Some("0190abcd")),
        );
        check_event(
            delivered(
                json!({"switchboard_message_id": "top", "unique_args": {"switchboard_message_id": "legacy"}}),
            ),
            message_id(Some("top")),
        );
        check_event(delivered(json!({"switchboard_message_id": 190})), message_id(None));
        check_event(delivered(json!({"switchboard_message_id": "a b"})), message_id(None));
        check_event(delivered(json!({"unique_args": "0190abcd"})), message_id(None));

        let time = |time: Option<SystemTime>| Some(ProviderReceipt { time, ..base.clone() });
        check_event(delivered(json!({"timestamp": 1_513_299_569})), time(at(1_513_299_569)));
        check_event(delivered(json!({"timestamp": 0})), time(at(0)));
        check_event(
            delivered(json!({"timestamp": 1_513_299_569.5})),
            time(Some(UNIX_EPOCH + Duration::from_millis(1_513_299_569_500))),
        );
        check_event(delivered(json!({"timestamp": 253_402_300_799_u64})), time(at(253_402_300_799)));
        for odd in [
            json!(253_402_300_800_u64),
            json!(u64::MAX),
            json!(-1),
            json!(-0.5),
            json!("1513299569"),
            json!(null),
            json!(1e300),
        ] {
            check_event(delivered(json!({"timestamp": odd})), time(None));
        }
    }

    #[test]
    fn suppressions() {
        let check = |event: Value, suppressed: Option<&str>| {
            let taken = event_receipt(&event).unwrap_or_else(|| panic!("{event}: skipped"));
            let expected = suppressed.map(|address| (Channel::EMAIL, address.to_owned()));
            assert_eq!(taken.suppress, expected, "{event}");
        };
        let address = Some("ann@example.org");
        check(json!({"event": "bounce", "email": "ann@example.org", "type": "bounce"}), address);
        check(json!({"event": "bounce", "email": "ann@example.org"}), address);
        check(json!({"event": "bounce", "email": " ann@example.org ", "type": 5}), address);
        // A block is about the sender (its IP, its content), not the address.
        check(json!({"event": "bounce", "email": "ann@example.org", "type": "blocked"}), None);
        check(json!({"event": "bounce", "email": "ann@example.org", "type": "Blocked"}), None);
        check(json!({"event": "spamreport", "email": "ann@example.org"}), address);
        for reason in
            ["Bounced Address", "Unsubscribed Address", "Spam Reporting Address", "Invalid", "invalid "]
        {
            check(json!({"event": "dropped", "email": "ann@example.org", "reason": reason}), address);
        }
        for reason in [
            "Invalid SMTPAPI header",
            "Spam Content (if spam checker app is enabled)",
            "Recipient List over Package Quota",
            "",
        ] {
            check(json!({"event": "dropped", "email": "ann@example.org", "reason": reason}), None);
        }
        check(json!({"event": "dropped", "email": "ann@example.org"}), None);
        for event in
            ["processed", "deferred", "delivered", "open", "click", "unsubscribe", "group_unsubscribe"]
        {
            check(json!({"event": event, "email": "ann@example.org", "reason": "Bounced Address"}), None);
        }
        // Only a usable address.
        for email in [
            json!("Ann <ann@example.org>"),
            json!("nobody"),
            json!(""),
            json!(["ann@example.org"]),
            json!(null),
        ] {
            check(json!({"event": "bounce", "email": email}), None);
        }
        check(json!({"event": "bounce"}), None);
    }

    #[test]
    fn details() {
        let check = |event: Value, expected: Value| {
            let taken = event_receipt(&event).unwrap_or_else(|| panic!("{event}: skipped"));
            assert_eq!(Value::Object(taken.detail), expected, "{event}");
        };
        check(
            json!({"event": "deferred", "email": "ann@example.org", "response": "400 try again later", "attempt": "5",
                   "ip": "168.1.1.1", "category": "cat facts", "sg_event_id": "e1", "useragent": "Mozilla"}),
            json!({"event": "deferred", "response": "400 try again later", "attempt": "5"}),
        );
        check(json!({"event": "deferred", "attempt": 5}), json!({"event": "deferred", "attempt": 5}));
        check(
            json!({"event": "bounce", "reason": {"x": 1}, "status": ["5.1.1"], "type": true, "response": null}),
            json!({"event": "bounce"}),
        );
        // The address never shows, in any case; other text is kept, cleaned and cut.
        check(
            json!({"event": "bounce", "email": "Ann@Example.org",
                   "reason": "550 <ann@example.org> unknown; ANN@EXAMPLE.ORG again", "status": "5.1.1\u{0}\u{1b}"}),
            json!({"event": "bounce", "reason": "550 <A***@Example.org> unknown; A***@Example.org again",
                   "status": "5.1.1"}),
        );
        let long = "é".repeat(500);
        check(
            json!({"event": "bounce", "reason": long}),
            json!({"event": "bounce", "reason": "é".repeat(200)}),
        );
        let detail = event_receipt(
            &json!({"event": "bounce", "email": "ann@example.org", "reason": "ann@example.org"}),
        )
        .map(|receipt| Value::Object(receipt.detail).to_string())
        .unwrap_or_default();
        assert!(!detail.contains("ann@example.org"), "{detail}");
    }
}

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

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::address::is_email;
use crate::email::{looks_like_html, with_attachment_links};
use crate::http::{self, check_url, Answer};
use crate::inbound::{Inbound, InboundError, InboundHead, InboundRequest, Incoming};
use crate::{
    BuildContext, Channel, Kind, OutboundMessage, Provider, Receipt, Registration, Secret, SendError,
    SentCredentials, SettingIssue, SettingsError,
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
        Ok(Arc::new(SendgridProvider {
            client: http::client(context.timeout)?,
            endpoint,
            settings,
            credentials,
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

//! `webhook`: any channel, POSTed as JSON to an operator's own gateway and signed so the
//! gateway can tell Switchboard's requests from anyone else's.
//!
//! Body: `{"id", "channel", "from", "to", "subject", "body", "attachments", "tags"}`. Headers:
//! `X-Switchboard-Timestamp` (Unix seconds), `X-Switchboard-Signature: sha256=HEX` where HEX is
//! the HMAC-SHA256, keyed with `secret`, of `"{timestamp}.{body}"`, and
//! `X-Switchboard-Message-Id`. A receiver recomputes the HMAC over the raw body, compares in
//! constant time and refuses timestamps more than a few minutes old (replays). A 2xx answer whose
//! JSON has a string `id` records it as the provider message id.
//!
//! Delivery receipts: the gateway reports what became of a message by posting
//! `{"id", "status", "time"}` (`application/json`) to `/v1/receipts/webhook/{name}`: `id` is
//! Switchboard's message id (the `id` it was sent), `status` one of `sent`, `deferred`,
//! `delivered`, `undelivered`, `bounced`, `dropped`, `opened`, `read`, and the optional `time` when
//! it happened, as RFC 3339 (`2024-05-01T12:00:00Z`) or Unix seconds. An array of up to 1,000 such
//! objects is taken too (every one must be valid). The post is signed the way sends are, with the
//! same `secret`: `X-Switchboard-Timestamp` (Unix seconds) and `X-Switchboard-Signature:
//! sha256=HEX`, the HMAC-SHA256 of `"{timestamp}.{body}"`; it is compared in constant time, and a
//! timestamp more than 5 minutes from now, either way, is refused as a replay. The body may be at
//! most 256 KiB; the answer is an empty `text/plain` body.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Sha256;

use crate::http::{self, check_url};
use crate::inbound::{InboundError, InboundHead, InboundRequest};
use crate::receipt::{
    check_signed_time, json_array, signed_json_head, single_header, unix_time, DeliveryStatus,
    ProviderReceipt, Receipts,
};
use crate::{
    BuildContext, Kind, OutboundMessage, Provider, Receipt, Registration, Secret, SendError, SentCredentials,
    SettingIssue, SettingsError,
};

/// The signed time of a send or a receipt (Unix seconds).
pub const TIMESTAMP_HEADER: &str = "x-switchboard-timestamp";
/// The signature of a send or a receipt: `sha256=` and the hex HMAC-SHA256 (see [`signature`]).
pub const SIGNATURE_HEADER: &str = "x-switchboard-signature";
/// The message id of a send.
pub const MESSAGE_ID_HEADER: &str = "x-switchboard-message-id";

/// Settings of a `webhook` provider. Which channels it carries is the common `channels` list
/// (any channel names; without it, the built-in ones).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// The gateway's URL. https only, except for loopback hosts.
    pub url: String,
    /// HMAC-SHA256 key of the `X-Switchboard-Signature` header. Only from the environment:
    /// `"${GATEWAY_WEBHOOK_SECRET}"`; at least 16 bytes.
    pub secret: Secret,
}

/// A signing key shorter than this is refused: it could be guessed.
const MIN_SECRET_BYTES: usize = 16;

struct WebhookKind;

impl Kind for WebhookKind {
    const NAME: &'static str = "webhook";
    const CHANNELS: &'static [&'static str] = &["*"];
    const DESCRIPTION: &'static str =
        "POSTs the message as JSON to your own gateway, signed with HMAC-SHA256 (any channel)";
    type Settings = WebhookSettings;

    fn validate(settings: &WebhookSettings) -> Vec<SettingIssue> {
        let mut issues: Vec<SettingIssue> = check_url("url", &settings.url).into_iter().collect();
        if settings.secret.expose().len() < MIN_SECRET_BYTES {
            issues.push(
                SettingIssue::new("secret", format!("`secret` must be at least {MIN_SECRET_BYTES} bytes"))
                    .with_help("generate one with: openssl rand -hex 32"),
            );
        }
        issues
    }

    fn build(
        settings: WebhookSettings,
        context: &BuildContext<'_>,
    ) -> Result<Arc<dyn Provider>, SettingsError> {
        let credentials = SentCredentials::new(credentials_in(&settings));
        Ok(Arc::new(WebhookProvider { client: http::client(context.timeout)?, settings, credentials }))
    }
}

inventory::submit! { Registration::of::<WebhookKind>() }

#[derive(Debug)]
struct WebhookProvider {
    client: reqwest::Client,
    settings: WebhookSettings,
    credentials: SentCredentials,
}

/// Query values shorter than this are not taken for credentials (`?format=json`).
const MIN_QUERY_SECRET_BYTES: usize = 8;
/// Path segments this long are taken for credentials (`/services/T0/B0/<token>`).
const MIN_PATH_SECRET_BYTES: usize = 16;

/// What a webhook request carries that may be a credential: the signing secret (never sent
/// itself, listed all the same) and the URL, which usually comes from the environment whole
/// and often holds the gateway's token (`?token=…`, a long path segment): the URL as given and
/// as sent, its path and query, each query value of 8 bytes or more (as written and decoded),
/// each path segment of 16 bytes or more.
fn credentials_in(settings: &WebhookSettings) -> Vec<String> {
    let mut sent = vec![settings.secret.expose().to_owned(), settings.url.clone()];
    let Ok(url) = reqwest::Url::parse(&settings.url) else { return sent };
    sent.push(url.as_str().to_owned());
    sent.push(match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    });
    let written = url
        .query()
        .into_iter()
        .flat_map(|query| query.split('&'))
        .map(|pair| pair.split_once('=').map_or(pair, |(_, value)| value).to_owned());
    let decoded = url.query_pairs().map(|(_, value)| value.into_owned());
    sent.extend(written.chain(decoded).filter(|value| value.len() >= MIN_QUERY_SECRET_BYTES));
    let segments = url.path_segments().into_iter().flatten();
    sent.extend(segments.filter(|segment| segment.len() >= MIN_PATH_SECRET_BYTES).map(str::to_owned));
    sent
}

#[derive(Serialize)]
struct Payload<'a> {
    id: &'a str,
    channel: &'a str,
    from: &'a str,
    to: &'a str,
    subject: Option<&'a str>,
    body: &'a str,
    attachments: &'a [String],
    tags: &'a [String],
}

/// `sha256=` and the hex HMAC-SHA256 of `"{timestamp}.{body}"`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    // HMAC accepts keys of any length: this cannot fail.
    let Some(mac) = signing_mac(secret, timestamp.to_string().as_bytes(), body) else {
        return String::new();
    };
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// HMAC-SHA256 keyed with `secret` over `timestamp` (as sent), `.` and `body`. `None` only if the
/// key were refused, which HMAC never does.
fn signing_mac(secret: &[u8], timestamp: &[u8], body: &[u8]) -> Option<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    mac.update(timestamp);
    mac.update(b".");
    mac.update(body);
    Some(mac)
}

#[derive(Deserialize)]
struct GatewayAnswer {
    id: Option<String>,
}

#[async_trait]
impl Provider for WebhookProvider {
    async fn send(&self, message: &OutboundMessage) -> Result<Receipt, SendError> {
        let payload = Payload {
            id: &message.id,
            channel: message.channel.as_str(),
            from: &message.from,
            to: &message.to,
            subject: message.subject.as_deref(),
            body: &message.body,
            attachments: &message.attachments,
            tags: &message.tags,
        };
        let body = serde_json::to_vec(&payload)
            .map_err(|error| SendError::Rejected { code: "encoding".into(), reason: error.to_string() })?;
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        let request = self
            .client
            .post(&self.settings.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, timestamp)
            .header(SIGNATURE_HEADER, signature(self.settings.secret.expose().as_bytes(), timestamp, &body))
            .header(MESSAGE_ID_HEADER, &message.id)
            .body(body);
        let answer = http::execute(request).await?;
        if answer.status.is_success() {
            let id = serde_json::from_slice::<GatewayAnswer>(&answer.body).ok().and_then(|a| a.id);
            return Ok(Receipt { provider_message_id: id });
        }
        Err(http::status_error(&answer, None))
    }

    fn credentials_sent(&self) -> &SentCredentials {
        &self.credentials
    }

    fn admit_receipts(&self, head: InboundHead<'_>) -> Result<(), InboundError> {
        admit_receipts(head).map(|_| ())
    }

    async fn receipts(&self, request: InboundRequest<'_>, now: SystemTime) -> Result<Receipts, InboundError> {
        receipts(self.settings.secret.expose().as_bytes(), request, now)
    }

    /// Receipts only: this kind takes no inbound messages.
    fn max_inbound_body(&self) -> Option<usize> {
        Some(MAX_RECEIPTS_BODY)
    }
}

/// The headers' names as errors show them.
const TIMESTAMP_SHOWN: &str = "X-Switchboard-Timestamp";
const SIGNATURE_SHOWN: &str = "X-Switchboard-Signature";

/// The largest receipts body taken: 1,000 receipts of some 250 bytes.
const MAX_RECEIPTS_BODY: usize = 256 * 1024;

/// The most receipts one post may carry (as an array).
const MAX_RECEIPTS: usize = 1000;

/// The longest message id taken (Switchboard's are 36 characters).
const MAX_ID_LEN: usize = 128;

/// What the head of a receipts post gives [`receipts`] once [`admit_receipts`] let it through.
struct Signed<'a> {
    /// The decoded HMAC of `X-Switchboard-Signature`.
    signature: [u8; 32],
    /// The timestamp header as sent: what is signed.
    timestamp: &'a str,
    signed_at: u64,
}

/// The checks made before the body is read, authentication first: one well-formed signature
/// header and one timestamp header, then a JSON content type. [`receipts`] starts with them.
fn admit_receipts(head: InboundHead<'_>) -> Result<Signed<'_>, InboundError> {
    let text = single_header(head.headers, SIGNATURE_HEADER, SIGNATURE_SHOWN)?;
    let signature = text.strip_prefix("sha256=").and_then(hex_digest).ok_or_else(|| {
        InboundError::InvalidSignature(format!(
            "malformed {SIGNATURE_SHOWN} header: expected `sha256=` and 64 hex digits"
        ))
    })?;
    let (timestamp, signed_at) = signed_json_head(head, TIMESTAMP_HEADER, TIMESTAMP_SHOWN)?;
    Ok(Signed { signature, timestamp, signed_at })
}

/// 64 hex digits (either case) as the 32 bytes of an HMAC-SHA256.
fn hex_digest(hex: &str) -> Option<[u8; 32]> {
    let digit = |b: u8| char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut digest = [0_u8; 32];
    for (out, pair) in digest.iter_mut().zip(bytes.chunks_exact(2)) {
        *out = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(digest)
}

/// Checks one receipts post (every check of [`admit_receipts`], the timestamp's age against `now`,
/// the HMAC keyed with `secret`), then reads its receipts.
fn receipts(secret: &[u8], request: InboundRequest<'_>, now: SystemTime) -> Result<Receipts, InboundError> {
    let signed = admit_receipts(request.head())?;
    check_signed_time(TIMESTAMP_SHOWN, signed.signed_at, now)?;
    let matches = signing_mac(secret, signed.timestamp.as_bytes(), request.body)
        .is_some_and(|mac| mac.verify_slice(&signed.signature).is_ok());
    if !matches {
        return Err(InboundError::InvalidSignature(format!(
            "{SIGNATURE_SHOWN} does not match the request (check the provider's `secret`)"
        )));
    }
    let receipts = parse_receipts(request.body)?;
    Ok(Receipts { receipts, content_type: "text/plain", answer: String::new() })
}

/// The receipts of a body: one object, or an array of at most [`MAX_RECEIPTS`] of them.
fn parse_receipts(body: &[u8]) -> Result<Vec<ProviderReceipt>, InboundError> {
    let not_json = || {
        InboundError::invalid("body", r#"must be a JSON object {"id", "status", "time"} or an array of them"#)
    };
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        let items = json_array(body, MAX_RECEIPTS)
            .map_err(|_| not_json())?
            .ok_or_else(|| InboundError::invalid("body", format!("has more than {MAX_RECEIPTS} receipts")))?;
        return items.iter().enumerate().map(|(index, item)| receipt(item, &format!("[{index}]"))).collect();
    }
    let item: Value = serde_json::from_slice(body).map_err(|_| not_json())?;
    receipt(&item, "").map(|receipt| vec![receipt])
}

/// The receipt `{"id", "status", "time"}`; `at` names it in errors (`[2]` in an array), other
/// fields are ignored.
fn receipt(item: &Value, at: &str) -> Result<ProviderReceipt, InboundError> {
    let field = |name: &str| if at.is_empty() { name.to_owned() } else { format!("{at}.{name}") };
    let invalid = |name: &str, message: &str| InboundError::invalid(&field(name), message);
    let Some(item) = item.as_object() else {
        return Err(InboundError::invalid(if at.is_empty() { "body" } else { at }, "must be a JSON object"));
    };
    let present = |name: &str| item.get(name).filter(|value| !value.is_null());
    let id = match present("id") {
        None => return Err(invalid("id", "is missing")),
        Some(id) => id
            .as_str()
            .map(str::trim)
            .filter(|id| (1..=MAX_ID_LEN).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())),
    };
    let Some(id) = id else {
        return Err(invalid(
            "id",
            &format!("must be the message's id: a string of at most {MAX_ID_LEN} printable ASCII characters"),
        ));
    };
    let status = match present("status") {
        None => return Err(invalid("status", "is missing")),
        Some(status) => status.as_str().and_then(DeliveryStatus::parse),
    };
    let Some(status) = status else {
        let names: Vec<&str> = DeliveryStatus::ALL.iter().map(|status| status.as_str()).collect();
        return Err(invalid("status", &format!("must be one of {}", names.join(", "))));
    };
    let time = match present("time") {
        None => None,
        Some(Value::String(text)) => parse_rfc3339(text),
        Some(number @ Value::Number(_)) => unix_time(number),
        Some(_) => None,
    };
    if present("time").is_some() && time.is_none() {
        return Err(invalid(
            "time",
            "must be an RFC 3339 time (2024-05-01T12:00:00Z) or Unix seconds, from 1970 to 9999",
        ));
    }
    let mut detail = Map::new();
    detail.insert("status".to_owned(), Value::String(status.as_str().to_owned()));
    Ok(ProviderReceipt {
        message_id: Some(id.to_owned()),
        provider_message_id: None,
        event: status.as_str().to_owned(),
        status: Some(status),
        time,
        suppress: None,
        detail,
    })
}

/// An RFC 3339 time: `2024-05-01T12:00:00Z`, with an optional fraction of a second (nanoseconds
/// kept) and `Z` or an offset `±hh:mm`; `t`, `z` and a space for `T` are taken. From 1970 to
/// 9999; a leap second counts as the next one.
fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let bytes = text.as_bytes();
    if !(20..=64).contains(&bytes.len()) {
        return None;
    }
    let number = |from: usize, to: usize| -> Option<i64> {
        let digits = bytes.get(from..to)?;
        digits
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| digits.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if separators.iter().any(|(at, separator)| bytes[*at] != *separator)
        || !matches!(bytes[10], b'T' | b't' | b' ')
    {
        return None;
    }
    let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // The first 19 bytes are ASCII: the rest starts on a character boundary.
    let mut rest = &bytes[19..];
    let mut nanos = 0_u32;
    if let Some(fraction) = rest.strip_prefix(b".") {
        let digits = fraction.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let mut scale = 100_000_000;
        for digit in &fraction[..digits.min(9)] {
            nanos += u32::from(digit - b'0') * scale;
            scale /= 10;
        }
        rest = &fraction[digits..];
    }
    let offset = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |a: u8, b: u8| {
                (a.is_ascii_digit() && b.is_ascii_digit()).then(|| i64::from((a - b'0') * 10 + (b - b'0')))
            };
            let (hours, minutes) = (two(*h1, *h2)?, two(*m1, *m2)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let seconds = (hours * 60 + minutes) * 60;
            if *sign == b'-' {
                -seconds
            } else {
                seconds
            }
        }
        _ => return None,
    };
    let seconds = days_since_epoch(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    let seconds = u64::try_from(seconds).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(seconds, nanos))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to this date of the proleptic Gregorian calendar (Howard Hinnant's
/// `days_from_civil`).
fn days_since_epoch(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::test_support::check_settings;

    #[test]
    fn settings() {
        let check = |settings, expected: &[&str]| check_settings("webhook", settings, expected);
        let secret = "0123456789abcdef";
        check(json!({"url": "https://gw.example.com/send?x=1", "secret": secret}), &[]);
        check(json!({"url": "http://127.0.0.1:8080/hook", "secret": secret}), &[]);
        check(json!({"url": "https://gw.example.com"}), &["missing"]);
        check(json!({"url": "http://gw.example.com", "secret": secret}), &["url"]);
        check(json!({"url": "https://gw.example.com", "secret": "short"}), &["secret"]);
    }

    #[test]
    fn credentials_in_the_url() {
        let check = |url: &str, expected: &[&str]| {
            let settings = WebhookSettings { url: url.into(), secret: Secret::new("0123456789abcdef") };
            let mut expected: Vec<&str> = expected.to_vec();
            expected.insert(0, "0123456789abcdef");
            assert_eq!(credentials_in(&settings), expected, "{url}");
        };
        check(
            "https://gw.example.com/send",
            &["https://gw.example.com/send", "https://gw.example.com/send", "/send"],
        );
        check(
            "https://gw.example.com/send?token=a%2Bb-12345&v=2",
            &[
                "https://gw.example.com/send?token=a%2Bb-12345&v=2",
                "https://gw.example.com/send?token=a%2Bb-12345&v=2",
                "/send?token=a%2Bb-12345&v=2",
                "a%2Bb-12345",
                "a+b-12345",
            ],
        );
        check(
            "https://hooks.example.com/services/T0/XXXXXXXXXXXXXXXXXXXXXXXX",
            &[
                "https://hooks.example.com/services/T0/XXXXXXXXXXXXXXXXXXXXXXXX",
                "https://hooks.example.com/services/T0/XXXXXXXXXXXXXXXXXXXXXXXX",
                "/services/T0/XXXXXXXXXXXXXXXXXXXXXXXX",
                "XXXXXXXXXXXXXXXXXXXXXXXX",
            ],
        );
    }

    #[test]
    fn signature_matches_a_known_vector() {
        // echo -n '1700000000.{"a":1}' | openssl dgst -sha256 -hmac 'key-of-sixteen-b'
        assert_eq!(
            signature(b"key-of-sixteen-b", 1_700_000_000, br#"{"a":1}"#),
            "sha256=784063fa0e7c8fe4ad424eea010a42eeef36656a8716a7f72d8eba5bb0c1eca4"
        );
    }
}

/// Receipts posted by the gateway (`receipts`).
#[cfg(test)]
mod receipt_tests {
    use serde_json::json;

    use super::*;
    use crate::test_support::{build, check_receipts, headers, take_receipts, Refused};

    const SECRET: &str = "0123456789abcdef";
    const NOW: u64 = 1_700_000_000;

    /// One receipts post to a provider whose secret is [`SECRET`].
    #[derive(Clone)]
    struct Post {
        content_type: Option<&'static str>,
        /// `None`: no header; several values separated by `|` are sent as several headers.
        timestamp: Option<String>,
        /// `None`: no header; `Some("")`: the right one, as sends sign (see [`signature`]).
        signature: Option<String>,
        /// The key the right signature is made with.
        key: &'static str,
        body: String,
        /// Seconds since the epoch the post is received at.
        now: u64,
    }

    /// `body`, signed now with the provider's secret.
    fn post(body: &str) -> Post {
        Post {
            content_type: Some("application/json"),
            timestamp: Some(NOW.to_string()),
            signature: Some(String::new()),
            key: SECRET,
            body: body.to_owned(),
            now: NOW,
        }
    }

    /// What `admit_receipts` says of the post's head, and what `receipts` (called without it)
    /// says of the whole post.
    fn run(post: Post) -> (Result<(), InboundError>, Result<Receipts, InboundError>) {
        let provider =
            build("webhook", "gw", json!({"url": "https://gw.example.com/send", "secret": SECRET}));
        let signature = match post.signature {
            Some(signature) if signature.is_empty() => {
                let timestamp = post.timestamp.as_deref().and_then(|t| t.parse().ok()).unwrap_or_default();
                Some(super::signature(post.key.as_bytes(), timestamp, post.body.as_bytes()))
            }
            other => other,
        };
        let headers = headers([
            ("content-type", post.content_type.map(str::to_owned)),
            (SIGNATURE_HEADER, signature),
            (TIMESTAMP_HEADER, post.timestamp),
        ]);
        let request = InboundRequest {
            path_and_query: "/v1/receipts/webhook/gw",
            headers: &headers,
            body: post.body.as_bytes(),
        };
        take_receipts(&*provider, request, UNIX_EPOCH + Duration::from_secs(post.now))
    }

    /// `expected`: the receipts taken, or why the post is refused (a refusal never quotes the
    /// secret).
    fn check(post: Post, expected: Result<Vec<ProviderReceipt>, Refused>) {
        let what = format!("{:?} {:?} {}", post.timestamp, post.signature, post.body);
        let (admitted, taken) = run(post);
        if let Some(InboundError::InvalidSignature(text)) =
            check_receipts(&what, admitted, taken, expected, crate::receipt::JSON)
        {
            assert!(!text.contains(SECRET), "{what}: {text}");
        }
    }

    /// The receipt of message `id` with this status, at `time` (Unix seconds).
    fn receipt(id: &str, status: DeliveryStatus, time: Option<u64>) -> ProviderReceipt {
        ProviderReceipt {
            message_id: Some(id.to_owned()),
            provider_message_id: None,
            event: status.as_str().to_owned(),
            status: Some(status),
            time: time.map(|seconds| UNIX_EPOCH + Duration::from_secs(seconds)),
            suppress: None,
            detail: json!({"status": status.as_str()}).as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn receipts_taken() {
        use DeliveryStatus::*;
        let one = |body: Value| post(&body.to_string());
        check(
            one(json!({"id": "0190abcd", "status": "delivered"})),
            Ok(vec![receipt("0190abcd", Delivered, None)]),
        );
        for status in DeliveryStatus::ALL {
            check(one(json!({"id": "m1", "status": status.as_str()})), Ok(vec![receipt("m1", status, None)]));
        }
        check(
            one(json!({"id": "m1", "status": "read", "time": "2024-02-29T12:34:56Z"})),
            Ok(vec![receipt("m1", Read, Some(1_709_210_096))]),
        );
        check(
            one(json!({"id": "m1", "status": "read", "time": 1_709_210_096})),
            Ok(vec![receipt("m1", Read, Some(1_709_210_096))]),
        );
        check(one(json!({"id": "m1", "status": "read", "time": null})), Ok(vec![receipt("m1", Read, None)]));
        // Other fields are the gateway's own business.
        check(
            one(json!({"id": " m1 ", "status": "bounced", "reason": "550", "to": "ann@example.org"})),
            Ok(vec![receipt("m1", Bounced, None)]),
        );
        let array = json!([
            {"id": "m1", "status": "sent", "time": "2024-02-29T12:34:56+01:00"},
            {"id": "m2", "status": "undelivered"},
            {"id": "m1", "status": "delivered", "time": 1_709_210_100},
        ]);
        check(
            one(array),
            Ok(vec![
                receipt("m1", Sent, Some(1_709_206_496)),
                receipt("m2", Undelivered, None),
                receipt("m1", Delivered, Some(1_709_210_100)),
            ]),
        );
        check(post("[]"), Ok(vec![]));
        let most = format!("[{}]", vec![r#"{"id":"m","status":"sent"}"#; MAX_RECEIPTS].join(","));
        match run(post(&most)) {
            (Ok(()), Ok(receipts)) => assert_eq!(receipts.receipts.len(), MAX_RECEIPTS),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refused_bodies() {
        let one = |body: Value| post(&body.to_string());
        let invalid = |field, part| Err(Refused::Invalid(field, part));
        let names = "must be one of sent, deferred, delivered, undelivered, bounced, dropped, opened, read";
        check(one(json!({"id": "m1", "status": "bounce"})), invalid("status", names));
        check(one(json!({"id": "m1", "status": "Delivered"})), invalid("status", names));
        check(one(json!({"id": "m1", "status": 3})), invalid("status", names));
        check(one(json!({"id": "m1"})), invalid("status", "is missing"));
        check(one(json!({"id": "m1", "status": null})), invalid("status", "is missing"));
        check(one(json!({"status": "sent"})), invalid("id", "is missing"));
        check(one(json!({"id": 5, "status": "sent"})), invalid("id", "must be the message's id"));
        check(one(json!({"id": "", "status": "sent"})), invalid("id", "must be the message's id"));
        check(one(json!({"id": "m 1", "status": "sent"})), invalid("id", "must be the message's id"));
        check(one(json!({"id": "m".repeat(129), "status": "sent"})), invalid("id", "at most 128"));
        for time in [
            json!("yesterday"),
            json!("2024-02-30T00:00:00Z"),
            json!(-1),
            json!(true),
            json!({}),
            json!(1e300),
        ] {
            check(one(json!({"id": "m1", "status": "sent", "time": time})), invalid("time", "RFC 3339"));
        }
        check(
            one(json!([{"id": "m1", "status": "sent"}, {"id": "m2", "status": "lost"}])),
            invalid("[1].status", names),
        );
        check(one(json!([{"id": "m1", "status": "sent"}, "m2"])), invalid("[1]", "must be a JSON object"));
        check(one(json!("m1")), invalid("body", "must be a JSON object"));
        for body in ["", "{", "null", "[{}", r#"{"id":"m1","status":"sent"} x"#] {
            check(post(body), invalid("body", "must be a JSON object"));
        }
        let too_many = format!("[{}]", vec!["{}"; MAX_RECEIPTS + 1].join(","));
        check(post(&too_many), invalid("body", "more than 1000 receipts"));
    }

    #[test]
    fn signatures() {
        let body = r#"{"id":"m1","status":"delivered"}"#;
        let taken = || Ok(vec![receipt("m1", DeliveryStatus::Delivered, None)]);
        check(post(body), taken());
        let upper = signature(SECRET.as_bytes(), NOW, body.as_bytes())
            .to_ascii_uppercase()
            .replace("SHA256=", "sha256=");
        check(Post { signature: Some(upper), ..post(body) }, taken());
        let mismatch = || Err(Refused::Signature("X-Switchboard-Signature does not match"));
        check(Post { key: "another-secret-of-16", ..post(body) }, mismatch());
        let mut tampered = post(body);
        tampered.signature = Some(signature(SECRET.as_bytes(), NOW, body.as_bytes()));
        tampered.body = body.replace("delivered", "bounced");
        check(tampered, mismatch());
        check(
            Post { signature: Some(signature(SECRET.as_bytes(), NOW + 1, body.as_bytes())), ..post(body) },
            mismatch(),
        );
        // What is signed is the timestamp header as sent.
        let padded = Post {
            timestamp: Some(format!("0{NOW}")),
            signature: Some(signature(SECRET.as_bytes(), NOW, body.as_bytes())),
            ..post(body)
        };
        check(padded, mismatch());
        check(Post { signature: Some(format!("sha256={}", "0".repeat(64))), ..post(body) }, mismatch());

        // Replays: at most 5 minutes either way.
        let stale = || Err(Refused::Signature("stale X-Switchboard-Timestamp"));
        check(Post { now: NOW + 300, ..post(body) }, taken());
        check(Post { now: NOW - 300, ..post(body) }, taken());
        check(Post { now: NOW + 301, ..post(body) }, stale());
        check(Post { now: NOW - 301, ..post(body) }, stale());
        check(Post { timestamp: Some("0".into()), ..post(body) }, stale());

        // Refused from the headers alone; authentication before the content type.
        let head = |part| Err(Refused::Head(part));
        let malformed = "malformed X-Switchboard-Signature header";
        let good = signature(SECRET.as_bytes(), NOW, body.as_bytes());
        for odd in [
            &good[7..],
            &good[..70],
            "sha1=abc",
            &format!("{good}0"),
            &good.replace("sha256=", "sha256:"),
            &format!("sha256={}", "g".repeat(64)),
            &format!("sha256= {}", &good[8..]),
        ] {
            check(Post { signature: Some(odd.to_owned()), ..post(body) }, head(malformed));
        }
        check(Post { signature: None, ..post(body) }, head("missing X-Switchboard-Signature header"));
        check(Post { signature: Some(format!("{good}|{good}")), ..post(body) }, head("sent more than once"));
        check(
            Post { timestamp: None, signature: Some(good.clone()), ..post(body) },
            head("missing X-Switchboard-Timestamp header"),
        );
        for timestamp in ["now", "-1", "1.5", "99999999999999999999999"] {
            check(
                Post { timestamp: Some(timestamp.into()), signature: Some(good.clone()), ..post(body) },
                head("malformed X-Switchboard-Timestamp header"),
            );
        }
        check(Post { content_type: Some("text/plain"), ..post(body) }, Err(Refused::MediaType));
        check(Post { content_type: None, ..post(body) }, Err(Refused::MediaType));
        check(Post { content_type: Some("application/json; charset=utf-8"), ..post(body) }, taken());
        check(
            Post { content_type: Some("text/plain"), signature: None, ..post(body) },
            head("missing X-Switchboard-Signature"),
        );
    }

    #[test]
    fn receipts_body_limit() {
        let provider =
            build("webhook", "gw", json!({"url": "https://gw.example.com/send", "secret": SECRET}));
        assert_eq!(provider.max_inbound_body(), Some(256 * 1024));
    }

    fn check_time(text: &str, expected: Option<(u64, u32)>) {
        let expected = expected.map(|(seconds, nanos)| UNIX_EPOCH + Duration::new(seconds, nanos));
        assert_eq!(parse_rfc3339(text), expected, "{text}");
    }

    #[test]
    fn rfc3339_times() {
        check_time("1970-01-01T00:00:00Z", Some((0, 0)));
        check_time("2024-02-29T12:34:56Z", Some((1_709_210_096, 0)));
        check_time("2024-02-29t12:34:56z", Some((1_709_210_096, 0)));
        check_time("2024-02-29 12:34:56Z", Some((1_709_210_096, 0)));
        check_time("2024-02-29T14:34:56+02:00", Some((1_709_210_096, 0)));
        check_time("2024-02-29T02:04:56-10:30", Some((1_709_210_096, 0)));
        check_time("2024-02-29T12:34:56.5Z", Some((1_709_210_096, 500_000_000)));
        check_time("2024-02-29T12:34:56.123456789987Z", Some((1_709_210_096, 123_456_789)));
        check_time("2000-03-01T00:00:00Z", Some((951_868_800, 0)));
        check_time("1999-12-31T23:00:00-00:00", Some((946_681_200, 0)));
        check_time("2016-12-31T23:59:60Z", Some((1_483_228_800, 0)));
        check_time("9999-12-31T23:59:59Z", Some((253_402_300_799, 0)));
        check_time("1970-01-01T01:00:00+01:00", Some((0, 0)));
        for odd in [
            "",
            "2024-02-29",
            "2024-02-29T12:34:56",
            "2024-02-29T12:34:56+0200",
            "2024-02-29T12:34:56+02",
            "2024-02-29T12:34:56.Z",
            "2024-02-29T12:34:56 Z",
            "2024-02-29T12:34:56ZZ",
            "2023-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-00-01T00:00:00Z",
            "2024-01-00T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T12:60:00Z",
            "2024-01-01T12:00:61Z",
            "2024-01-01T12:00:00+24:00",
            "2024-01-01T12:00:00+01:60",
            "2024/01/01T12:00:00Z",
            "+2024-01-01T12:00:00Z",
            "２024-01-01T12:00:00Z",
            "1969-12-31T23:59:59Z",
            "1970-01-01T00:30:00+01:00",
            "0000-01-01T00:00:00Z",
        ] {
            check_time(odd, None);
        }
        check_time(&format!("2024-01-01T12:00:00.{}Z", "1".repeat(60)), None);
    }
}

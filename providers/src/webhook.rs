//! `webhook`: any channel, POSTed as JSON to an operator's own gateway and signed so the
//! gateway can tell Switchboard's requests from anyone else's.
//!
//! Body: `{"id", "channel", "from", "to", "subject", "body", "attachments", "tags"}`. Headers:
//! `X-Switchboard-Timestamp` (Unix seconds), `X-Switchboard-Signature: sha256=HEX` where HEX is
//! the HMAC-SHA256, keyed with `secret`, of `"{timestamp}.{body}"`, and
//! `X-Switchboard-Message-Id`. A receiver recomputes the HMAC over the raw body, compares in
//! constant time and refuses timestamps more than a few minutes old (replays). A 2xx answer whose
//! JSON has a string `id` records it as the provider message id.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::http::{self, check_url};
use crate::{
    BuildContext, Kind, OutboundMessage, Provider, Receipt, Registration, Secret, SendError, SentCredentials,
    SettingIssue, SettingsError,
};

pub const TIMESTAMP_HEADER: &str = "x-switchboard-timestamp";
pub const SIGNATURE_HEADER: &str = "x-switchboard-signature";
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
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
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

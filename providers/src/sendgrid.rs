//! `sendgrid`: email through SendGrid's v3 Mail Send API.
//!
//! `POST {base_url}/v3/mail/send` with `Authorization: Bearer {api_key}` and the v3 JSON body:
//! one personalization with the recipient, `from`, `subject`, `content` (`text/html` when the
//! body is HTML, else `text/plain`) and Switchboard's message id in
//! `custom_args.switchboard_message_id`. The `X-Message-Id` response header is the provider
//! message id. Attachment URLs are not fetched: they are appended to the body as links.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;

use crate::address::is_email;
use crate::email::{looks_like_html, with_attachment_links};
use crate::http::{self, check_url, Answer};
use crate::{
    BuildContext, Kind, OutboundMessage, Provider, Receipt, Registration, Secret, SendError, SentCredentials,
    SettingIssue, SettingsError,
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
        issues.extend(check_url("base_url", &settings.base_url));
        issues
    }

    fn build(
        settings: SendgridSettings,
        context: &BuildContext<'_>,
    ) -> Result<Arc<dyn Provider>, SettingsError> {
        let endpoint = http::join(&settings.base_url, "/v3/mail/send");
        let credentials = SentCredentials::new([settings.api_key.expose()]);
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
    /// The API key.
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
    async fn send(&self, message: &OutboundMessage) -> Result<Receipt, SendError> {
        let from = self.settings.from.as_deref().unwrap_or(&message.from);
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

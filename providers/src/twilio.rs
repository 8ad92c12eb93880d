//! `twilio`: SMS and MMS through Twilio's Programmable Messaging REST API.
//!
//! `POST {base_url}/2010-04-01/Accounts/{account_sid}/Messages.json`, form-encoded `To`, `From`
//! (or `MessagingServiceSid`), `Body`, one `MediaUrl` per attachment and `StatusCallback`, with
//! HTTP Basic auth (account SID, auth token). The returned `sid` is the provider message id.
//! Twilio's error body `{"code": 21211, "message": "…"}` is recorded on the attempt.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use crate::address::{is_alphanumeric_sender, is_phone};
use crate::http::{self, check_url};
use crate::{
    BuildContext, Kind, OutboundMessage, Provider, Receipt, Registration, Secret, SendError, SentCredentials,
    SettingIssue, SettingsError,
};

/// Settings of a `twilio` provider.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TwilioSettings {
    /// Account SID (`AC…`): the HTTP Basic user name and part of the request path.
    pub account_sid: String,
    /// Auth token, the HTTP Basic password. Only from the environment: `"${TWILIO_AUTH_TOKEN}"`.
    pub auth_token: Secret,
    /// Sender: an E.164 number, a short code or an alphanumeric sender ID. When set it is used
    /// instead of the message's `from` (an account can only send from its own senders).
    #[serde(default)]
    pub from: Option<String>,
    /// Messaging Service SID (`MG…`). When set, Twilio picks the sender from the service and
    /// `From` is not sent.
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    /// URL Twilio calls with the message's delivery status (sent as `StatusCallback`).
    #[serde(default)]
    pub status_callback: Option<String>,
    /// API endpoint. https only, except for loopback hosts (local test servers).
    #[serde(default = "default_base_url")]
    #[schemars(default = "default_base_url")]
    pub base_url: String,
}

fn default_base_url() -> String {
    "https://api.twilio.com".to_owned()
}

struct TwilioKind;

impl Kind for TwilioKind {
    const NAME: &'static str = "twilio";
    const CHANNELS: &'static [&'static str] = &["sms", "mms"];
    const DESCRIPTION: &'static str = "Twilio Programmable Messaging (REST API, HTTP Basic auth)";
    type Settings = TwilioSettings;

    fn validate(settings: &TwilioSettings) -> Vec<SettingIssue> {
        let mut issues = Vec::new();
        let sid = &settings.account_sid;
        if !(sid.starts_with("AC") && sid.len() > 2 && sid.bytes().all(|b| b.is_ascii_alphanumeric())) {
            issues.push(
                SettingIssue::new(
                    "account_sid",
                    "`account_sid` must be a Twilio account SID (`AC` and letters/digits)",
                )
                .with_help("find it on the Twilio console's dashboard"),
            );
        }
        if settings.auth_token.is_blank() {
            issues.push(SettingIssue::new("auth_token", "`auth_token` is empty"));
        }
        if let Some(from) = &settings.from {
            if !is_phone(from) && !is_alphanumeric_sender(from) {
                issues.push(
                    SettingIssue::new(
                        "from",
                        format!("`from` must be an E.164 number, a short code or an alphanumeric sender ID, got {from:?}"),
                    )
                    .with_help("for example \"+15005550006\""),
                );
            }
        }
        if let Some(service) = &settings.messaging_service_sid {
            if !(service.starts_with("MG")
                && service.len() > 2
                && service.bytes().all(|b| b.is_ascii_alphanumeric()))
            {
                issues.push(SettingIssue::new(
                    "messaging_service_sid",
                    "`messaging_service_sid` must be a Messaging Service SID (`MG` and letters/digits)",
                ));
            }
        }
        if let Some(callback) = &settings.status_callback {
            issues.extend(check_url("status_callback", callback));
        }
        issues.extend(check_url("base_url", &settings.base_url));
        issues
    }

    fn build(
        settings: TwilioSettings,
        context: &BuildContext<'_>,
    ) -> Result<Arc<dyn Provider>, SettingsError> {
        let endpoint = http::join(
            &settings.base_url,
            &format!("/2010-04-01/Accounts/{}/Messages.json", settings.account_sid),
        );
        let token = settings.auth_token.expose();
        let credentials =
            SentCredentials::new([token.to_owned(), format!("{}:{token}", settings.account_sid)]);
        Ok(Arc::new(TwilioProvider {
            client: http::client(context.timeout)?,
            endpoint,
            settings,
            credentials,
        }))
    }
}

inventory::submit! { Registration::of::<TwilioKind>() }

#[derive(Debug)]
struct TwilioProvider {
    client: reqwest::Client,
    endpoint: String,
    settings: TwilioSettings,
    /// The auth token and the Basic pair.
    credentials: SentCredentials,
}

/// The fields of Twilio's Message resource and error body that matter here.
#[derive(Deserialize)]
struct TwilioAnswer {
    sid: Option<String>,
    code: Option<u64>,
    message: Option<String>,
}

#[async_trait]
impl Provider for TwilioProvider {
    async fn send(&self, message: &OutboundMessage) -> Result<Receipt, SendError> {
        let s = &self.settings;
        let mut form: Vec<(&str, &str)> = vec![("To", &message.to)];
        match (&s.messaging_service_sid, &s.from) {
            (Some(service), _) => form.push(("MessagingServiceSid", service)),
            (None, Some(from)) => form.push(("From", from)),
            (None, None) => form.push(("From", &message.from)),
        }
        form.push(("Body", &message.body));
        form.extend(message.attachments.iter().map(|url| ("MediaUrl", url.as_str())));
        if let Some(callback) = &s.status_callback {
            form.push(("StatusCallback", callback));
        }
        let request = self
            .client
            .post(&self.endpoint)
            .basic_auth(&s.account_sid, Some(s.auth_token.expose()))
            .form(&form);
        let answer = http::execute(request).await?;
        let parsed: Option<TwilioAnswer> = serde_json::from_slice(&answer.body).ok();
        if answer.status.is_success() {
            return Ok(Receipt { provider_message_id: parsed.and_then(|p| p.sid) });
        }
        let detail = parsed.and_then(|p| Some((p.code?.to_string(), p.message.unwrap_or_default())));
        Err(http::status_error(&answer, detail))
    }

    fn credentials_sent(&self) -> &SentCredentials {
        &self.credentials
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::test_support::check_settings;

    #[test]
    fn settings() {
        let check = |settings, expected: &[&str]| check_settings("twilio", settings, expected);
        let ok = json!({"account_sid": "AC0123456789abcdef0123456789abcdef", "auth_token": "t"});
        check(ok, &[]);
        check(json!({"account_sid": "AC1", "auth_token": "t", "from": "+15005550006"}), &[]);
        check(json!({"account_sid": "AC1", "auth_token": "t", "from": "Switchboard"}), &[]);
        check(json!({"account_sid": "AC1", "auth_token": "t", "from": "12345"}), &[]);
        check(json!({"account_sid": "AC1", "auth_token": "t", "base_url": "http://127.0.0.1:9"}), &[]);
        check(json!({"account_sid": "AC1"}), &["missing"]);
        check(json!({"auth_token": "t"}), &["missing"]);
        check(json!({"account_sid": "AC1", "auth_token": " "}), &["auth_token"]);
        check(json!({"account_sid": "SK1", "auth_token": "t"}), &["account_sid"]);
        check(json!({"account_sid": "AC1", "auth_token": "t", "from": "+1 500"}), &["from"]);
        check(json!({"account_sid": "AC1", "auth_token": "t", "from": "Far too long a name"}), &["from"]);
        check(
            json!({"account_sid": "AC1", "auth_token": "t", "messaging_service_sid": "XX1"}),
            &["messaging_service_sid"],
        );
        check(
            json!({"account_sid": "AC1", "auth_token": "t", "base_url": "http://api.twilio.com"}),
            &["base_url"],
        );
        check(
            json!({"account_sid": "AC1", "auth_token": "t", "status_callback": "nope"}),
            &["status_callback"],
        );
    }
}

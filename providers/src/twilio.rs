//! `twilio`: SMS and MMS through Twilio's Programmable Messaging REST API.
//!
//! `POST {base_url}/2010-04-01/Accounts/{account_sid}/Messages.json`, form-encoded `To`, `From`
//! (or `MessagingServiceSid`), `Body`, one `MediaUrl` per attachment and `StatusCallback`, with
//! HTTP Basic auth (account SID, auth token). The returned `sid` is the provider message id.
//! Twilio's error body `{"code": 21211, "message": "…"}` is recorded on the attempt.
//!
//! Inbound: Twilio posts each message a number receives to the number's messaging webhook,
//! form-encoded (`MessageSid`, `From`, `To`, `Body`, `NumMedia`, `MediaUrl0`…), signed in
//! `X-Twilio-Signature`: base64(HMAC-SHA1(auth token, URL + every parameter's name and value,
//! sorted by name)). The URL is the one Twilio was told, which a proxy in front of Switchboard
//! may hide: it is the `public_url` setting joined to the request's path and query. The answer is
//! an empty TwiML document (no reply message).

use std::sync::Arc;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha1::Sha1;
use url::Url;

use crate::address::{is_alphanumeric_sender, is_phone};
use crate::http::{self, check_url};
use crate::inbound::{Inbound, InboundError, InboundRequest, Incoming};
use crate::{
    BuildContext, Channel, Kind, OutboundMessage, Provider, Receipt, Registration, Secret, SendError,
    SentCredentials, SettingIssue, SettingsError,
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
    /// Base URL Twilio was told for inbound messages, e.g. `https://sb.example.com`: the number's
    /// messaging webhook is this + `/v1/inbound/twilio/{name}`. Twilio signs the URL it calls, so
    /// the signature is checked against this (trailing `/` trimmed) + the request's path and
    /// query. Without it inbound requests are refused. https only, except for loopback hosts.
    #[serde(default)]
    pub public_url: Option<String>,
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
        if let Some(public) = &settings.public_url {
            issues.extend(check_public_url(public));
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
        let public_url = settings.public_url.as_deref().map(|url| url.trim_end_matches('/').to_owned());
        Ok(Arc::new(TwilioProvider {
            client: http::client(context.timeout)?,
            endpoint,
            public_url,
            settings,
            credentials,
        }))
    }
}

/// `public_url` is an absolute http(s) URL (https unless loopback) without credentials, query or
/// fragment: the request's path and query are appended to it.
fn check_public_url(value: &str) -> Option<SettingIssue> {
    let help = "the scheme, host and any path prefix Twilio calls, e.g. https://sb.example.com";
    if let Some(issue) = check_url("public_url", value) {
        return Some(issue.with_help(help));
    }
    let has_query = Url::parse(value).is_ok_and(|url| url.query().is_some());
    has_query.then(|| {
        SettingIssue::new("public_url", "`public_url` must not have a query or fragment").with_help(help)
    })
}

inventory::submit! { Registration::of::<TwilioKind>() }

#[derive(Debug)]
struct TwilioProvider {
    client: reqwest::Client,
    endpoint: String,
    /// `public_url` without its trailing `/`.
    public_url: Option<String>,
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

    async fn receive(&self, request: InboundRequest<'_>) -> Result<Inbound, InboundError> {
        receive(self.settings.auth_token.expose(), self.public_url.as_deref(), request)
    }
}

const FORM: &str = "application/x-www-form-urlencoded";

/// The answer Twilio expects: TwiML that does nothing (no reply is sent).
const EMPTY_TWIML: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response></Response>"#;

/// The most media Twilio attaches to one message.
const MAX_MEDIA: usize = 10;

/// The longest `MessageSid` taken (Twilio's are 34 characters).
const MAX_SID_LEN: usize = 64;

/// Checks one inbound request's signature against `auth_token` and `public_url` (trailing `/`
/// trimmed), then reads its message.
fn receive(
    auth_token: &str,
    public_url: Option<&str>,
    request: InboundRequest<'_>,
) -> Result<Inbound, InboundError> {
    if !has_media_type(request.headers, FORM) {
        return Err(InboundError::UnsupportedMediaType { expected: FORM });
    }
    let Some(public_url) = public_url else {
        return Err(InboundError::InvalidSignature(
            "provider has no `public_url`: its signature cannot be checked; set it to the base URL \
             Twilio calls (e.g. https://sb.example.com)"
                .to_owned(),
        ));
    };
    let signature = request
        .headers
        .get("x-twilio-signature")
        .map(|value| value.as_bytes())
        .filter(|value| !value.is_empty())
        .ok_or_else(|| InboundError::InvalidSignature("missing X-Twilio-Signature header".to_owned()))?;
    let params: Vec<(String, String)> = url::form_urlencoded::parse(request.body).into_owned().collect();
    let url = format!("{public_url}{}", request.path_and_query);
    let mac = signing_mac(auth_token.as_bytes(), &url, &params);
    let decoded = STANDARD.decode(signature).ok();
    let matches = match (mac, decoded) {
        (Some(mac), Some(signature)) => mac.verify_slice(&signature).is_ok(),
        _ => false,
    };
    if !matches {
        return Err(InboundError::InvalidSignature(
            "X-Twilio-Signature does not match the request (check `auth_token` and `public_url`)".to_owned(),
        ));
    }
    let message = incoming(&params)?;
    Ok(Inbound { messages: vec![message], content_type: "text/xml", answer: EMPTY_TWIML.to_owned() })
}

/// Whether the request's `Content-Type` is `expected` (parameters such as `charset` aside).
fn has_media_type(headers: &reqwest::header::HeaderMap, expected: &str) -> bool {
    let value = headers.get(reqwest::header::CONTENT_TYPE).and_then(|value| value.to_str().ok());
    value.is_some_and(|value| {
        value.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case(expected)
    })
}

/// HMAC-SHA1 keyed with the auth token over `url` and every parameter's name and value, sorted by
/// name (and by value for a repeated name, so that the check fails only on the signature).
/// `None` only if the key were refused, which HMAC never does.
fn signing_mac(auth_token: &[u8], url: &str, params: &[(String, String)]) -> Option<Hmac<Sha1>> {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token).ok()?;
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    Some(mac)
}

/// The message in a signed request's parameters.
fn incoming(params: &[(String, String)]) -> Result<Incoming, InboundError> {
    for (index, (name, _)) in params.iter().enumerate() {
        if params[..index].iter().any(|(earlier, _)| earlier == name) {
            return Err(InboundError::invalid(name, "appears more than once"));
        }
    }
    let get = |name: &str| params.iter().find(|(n, _)| n == name).map(|(_, value)| value.as_str());
    let required = |name: &str| match get(name) {
        Some(value) if !value.trim().is_empty() => Ok(value.trim().to_owned()),
        _ => Err(InboundError::invalid(name, "is missing")),
    };
    let sid = required("MessageSid")?;
    if sid.len() > MAX_SID_LEN || !sid.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(InboundError::invalid(
            "MessageSid",
            format!("must be at most {MAX_SID_LEN} printable ASCII characters"),
        ));
    }
    let from = required("From")?;
    let to = required("To")?;
    let media = match get("NumMedia").map(str::trim) {
        None | Some("") => 0,
        Some(count) => count.parse::<usize>().ok().filter(|count| *count <= MAX_MEDIA).ok_or_else(|| {
            InboundError::invalid("NumMedia", format!("must be a number from 0 to {MAX_MEDIA}"))
        })?,
    };
    let mut attachments = Vec::with_capacity(media);
    for index in 0..media {
        let name = format!("MediaUrl{index}");
        let url = required(&name)?;
        if !Url::parse(&url).is_ok_and(|url| matches!(url.scheme(), "http" | "https")) {
            return Err(InboundError::invalid(&name, "must be an http(s) URL"));
        }
        attachments.push(url);
    }
    Ok(Incoming {
        channel: if media > 0 { Channel::MMS } else { Channel::SMS },
        from,
        to,
        subject: None,
        body: get("Body").unwrap_or_default().to_owned(),
        attachments,
        provider_message_id: sid,
        timestamp: None,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
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
        let public = |url: &str| json!({"account_sid": "AC1", "auth_token": "t", "public_url": url});
        check(public("https://sb.example.com"), &[]);
        check(public("https://sb.example.com/"), &[]);
        check(public("https://example.com/switchboard/"), &[]);
        check(public("http://127.0.0.1:8080"), &[]);
        check(public("http://sb.example.com"), &["public_url"]);
        check(public("sb.example.com"), &["public_url"]);
        check(public("ftp://sb.example.com"), &["public_url"]);
        check(public("https://user:pw@sb.example.com"), &["public_url"]);
        check(public("https://sb.example.com/?x=1"), &["public_url"]);
        check(public("https://sb.example.com/?"), &["public_url"]);
        check(public("https://sb.example.com/#top"), &["public_url"]);
    }

    /// Twilio's documented example: this URL and these parameters, signed with the auth token
    /// `12345`, give `0/KCTR6DLpKmkAf8muzZqo1nDgQ=`.
    const DOC_URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
    const DOC_PARAMS: [(&str, &str); 5] = [
        ("CallSid", "CA1234567890ABCDE"),
        ("Caller", "+12349013030"),
        ("Digits", "1234"),
        ("From", "+12349013030"),
        ("To", "+18005551212"),
    ];
    const DOC_SIGNATURE: &str = "0/KCTR6DLpKmkAf8muzZqo1nDgQ=";

    const TOKEN: &str = "12345";
    const PUBLIC: &str = "https://sb.example.com";
    const PATH: &str = "/v1/inbound/twilio/tw";

    fn owned(params: &[(&str, &str)]) -> Vec<(String, String)> {
        params.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect()
    }

    /// What Twilio would send in `X-Twilio-Signature` for `url` and `params`.
    fn sign(token: &str, url: &str, params: &[(&str, &str)]) -> String {
        let mac = signing_mac(token.as_bytes(), url, &owned(params));
        mac.map(|mac| STANDARD.encode(mac.finalize().into_bytes())).unwrap_or_default()
    }

    #[test]
    fn documented_signature() {
        assert_eq!(sign(TOKEN, DOC_URL, &DOC_PARAMS), DOC_SIGNATURE);
        // The parameters are sorted before signing: their order in the body does not matter.
        let mut reversed = DOC_PARAMS;
        reversed.reverse();
        assert_eq!(sign(TOKEN, DOC_URL, &reversed), DOC_SIGNATURE);
    }

    /// One inbound request to a provider with `public_url` (or none).
    struct Post {
        public_url: Option<&'static str>,
        path: &'static str,
        content_type: Option<&'static str>,
        /// `None`: no header; `Some("")`: the right signature for `signed` (or the body).
        signature: Option<String>,
        /// The parameters the signature is computed over, when not those sent.
        signed: Option<Vec<(&'static str, &'static str)>>,
        params: Vec<(&'static str, &'static str)>,
    }

    /// A correctly signed post of `params` to `PATH` (`public_url` = `PUBLIC` with a trailing `/`).
    fn post(params: &[(&'static str, &'static str)]) -> Post {
        Post {
            public_url: Some("https://sb.example.com/"),
            path: PATH,
            content_type: Some("application/x-www-form-urlencoded; charset=utf-8"),
            signature: Some(String::new()),
            signed: None,
            params: params.to_vec(),
        }
    }

    fn run(post: Post) -> Result<Inbound, InboundError> {
        let settings = json!({"account_sid": "AC1", "auth_token": TOKEN, "public_url": post.public_url});
        let context = BuildContext { name: "tw", timeout: std::time::Duration::from_secs(1) };
        let provider = crate::find("twilio")
            .map(|kind| kind.build(settings, &context))
            .unwrap_or_else(|| panic!("twilio is not registered"))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(content_type) = post.content_type {
            headers.insert("content-type", content_type.parse().unwrap_or_else(|e| panic!("{e}")));
        }
        let signature = match post.signature {
            Some(signature) if signature.is_empty() => {
                let signed = post.signed.as_deref().unwrap_or(&post.params);
                Some(sign(TOKEN, &format!("{PUBLIC}{}", post.path), signed))
            }
            other => other,
        };
        if let Some(signature) = signature {
            headers.insert("x-twilio-signature", signature.parse().unwrap_or_else(|e| panic!("{e}")));
        }
        let body: String =
            url::form_urlencoded::Serializer::new(String::new()).extend_pairs(&post.params).finish();
        let request = InboundRequest { path_and_query: post.path, headers: &headers, body: body.as_bytes() };
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap_or_else(|e| panic!("{e}"));
        runtime.block_on(provider.receive(request))
    }

    /// An SMS or MMS from +15551230001 to +15559870002 with id `SM1`.
    fn message(body: &str, attachments: &[&str]) -> Incoming {
        Incoming {
            channel: if attachments.is_empty() { Channel::SMS } else { Channel::MMS },
            from: "+15551230001".into(),
            to: "+15559870002".into(),
            subject: None,
            body: body.into(),
            attachments: attachments.iter().map(|a| (*a).to_owned()).collect(),
            provider_message_id: "SM1".into(),
            timestamp: None,
        }
    }

    /// Why a test request is refused: the error's variant, its field and a part of its text.
    #[derive(Debug)]
    enum Refused {
        Signature(&'static str),
        Invalid(&'static str, &'static str),
        MediaType,
    }

    /// `expected`: the message taken, or why the request is refused.
    fn check(post: Post, expected: Result<Incoming, Refused>) {
        let what = format!("{:?} {:?} {:?}", post.params, post.signature, post.content_type);
        match (run(post), expected) {
            (Ok(inbound), Ok(message)) => {
                assert_eq!(inbound.messages, vec![message], "{what}");
                assert_eq!((inbound.content_type, inbound.answer.as_str()), ("text/xml", EMPTY_TWIML));
            }
            (Err(InboundError::InvalidSignature(text)), Err(Refused::Signature(part))) => {
                assert!(text.contains(part), "{what}: {text}");
                // The expected signature is never told.
                assert!(!text.contains(&sign(TOKEN, &format!("{PUBLIC}{PATH}"), &SMS)), "{what}");
            }
            (Err(InboundError::Invalid { field, message }), Err(Refused::Invalid(name, part))) => {
                assert_eq!(field, name, "{what}: {message}");
                assert!(message.contains(part), "{what}: {message}");
            }
            (Err(InboundError::UnsupportedMediaType { expected }), Err(Refused::MediaType)) => {
                assert_eq!(expected, FORM);
            }
            (got, expected) => panic!("{what}: got {got:?}, expected {expected:?}"),
        }
    }

    const SMS: [(&str, &str); 5] = [
        ("MessageSid", "SM1"),
        ("From", "+15551230001"),
        ("To", "+15559870002"),
        ("Body", "Hello there"),
        ("NumMedia", "0"),
    ];

    fn with(
        base: &[(&'static str, &'static str)],
        extra: &[(&'static str, &'static str)],
    ) -> Vec<(&'static str, &'static str)> {
        let mut params: Vec<_> =
            base.iter().filter(|(name, _)| !extra.iter().any(|(n, _)| n == name)).copied().collect();
        params.extend(extra.iter().filter(|(_, value)| *value != "<none>"));
        params
    }

    #[test]
    fn signed_messages() {
        check(post(&SMS), Ok(message("Hello there", &[])));
        check(post(&with(&SMS, &[("Body", "STOP"), ("SmsStatus", "received")])), Ok(message("STOP", &[])));
        check(post(&with(&SMS, &[("Body", "")])), Ok(message("", &[])));
        check(post(&with(&SMS, &[("Body", "<none>")])), Ok(message("", &[])));
        check(post(&with(&SMS, &[("NumMedia", "<none>")])), Ok(message("Hello there", &[])));
        check(post(&with(&SMS, &[("Body", "a&b=c+d é")])), Ok(message("a&b=c+d é", &[])));
        let mms = with(
            &SMS,
            &[
                ("NumMedia", "2"),
                ("MediaUrl0", "https://api.twilio.com/m/0"),
                ("MediaUrl1", "http://x.org/1.png"),
            ],
        );
        check(post(&mms), Ok(message("Hello there", &["https://api.twilio.com/m/0", "http://x.org/1.png"])));
        // The path and query Twilio called are part of what is signed.
        let mut query = post(&SMS);
        query.path = "/v1/inbound/twilio/tw?tag=a%20b";
        check(query, Ok(message("Hello there", &[])));
        // Twilio's own example, checked through `receive`: the signature holds, the message
        // (a call's parameters, no `MessageSid`) does not.
        let mut documented = post(&DOC_PARAMS);
        documented.public_url = Some("https://mycompany.com");
        documented.path = "/myapp.php?foo=1&bar=2";
        documented.signature = Some(DOC_SIGNATURE.to_owned());
        check(documented, Err(Refused::Invalid("MessageSid", "is missing")));
    }

    #[test]
    fn refused_signatures() {
        let refused = |part| Err(Refused::Signature(part));
        let mismatch = "X-Twilio-Signature does not match";
        let mut changed = post(&with(&SMS, &[("Body", "Changed")]));
        changed.signed = Some(SMS.to_vec());
        check(changed, refused(mismatch));
        let mut added = post(&with(&SMS, &[("Extra", "1")]));
        added.signed = Some(SMS.to_vec());
        check(added, refused(mismatch));
        let mut other_path = post(&SMS);
        other_path.signed = Some(SMS.to_vec());
        other_path.path = "/v1/inbound/twilio/other";
        other_path.signature = Some(sign(TOKEN, &format!("{PUBLIC}{PATH}"), &SMS));
        check(other_path, refused(mismatch));
        let mut other_token = post(&SMS);
        other_token.signature = Some(sign("54321", &format!("{PUBLIC}{PATH}"), &SMS));
        check(other_token, refused(mismatch));
        let mut other_host = post(&SMS);
        other_host.signature = Some(sign(TOKEN, &format!("https://other.example.com{PATH}"), &SMS));
        check(other_host, refused(mismatch));
        let mut garbage = post(&SMS);
        garbage.signature = Some("not base64!".to_owned());
        check(garbage, refused(mismatch));
        let mut missing = post(&SMS);
        missing.signature = None;
        check(missing, refused("missing X-Twilio-Signature"));
        let mut unconfigured = post(&SMS);
        unconfigured.public_url = None;
        check(unconfigured, refused("provider has no `public_url`"));
    }

    #[test]
    fn refused_requests() {
        let mut json_body = post(&SMS);
        json_body.content_type = Some("application/json");
        check(json_body, Err(Refused::MediaType));
        let mut untyped = post(&SMS);
        untyped.content_type = None;
        check(untyped, Err(Refused::MediaType));
        let invalid = |field, part| Err(Refused::Invalid(field, part));
        check(post(&with(&SMS, &[("MessageSid", "<none>")])), invalid("MessageSid", "is missing"));
        check(post(&with(&SMS, &[("MessageSid", "SM 1")])), invalid("MessageSid", "printable"));
        const LONG_SID: &str = "SM3456789012345678901234567890123456789012345678901234567890123456";
        check(
            post(&with(&SMS, &[("MessageSid", &LONG_SID[..64])])),
            Ok(Incoming { provider_message_id: LONG_SID[..64].to_owned(), ..message("Hello there", &[]) }),
        );
        check(post(&with(&SMS, &[("MessageSid", LONG_SID)])), invalid("MessageSid", "at most 64"));
        check(post(&with(&SMS, &[("From", "<none>")])), invalid("From", "is missing"));
        check(post(&with(&SMS, &[("To", " ")])), invalid("To", "is missing"));
        for count in ["-1", "11", "1.5", "two", "99999999999999999999999"] {
            check(post(&with(&SMS, &[("NumMedia", count)])), invalid("NumMedia", "from 0 to 10"));
        }
        check(post(&with(&SMS, &[("NumMedia", "1")])), invalid("MediaUrl0", "is missing"));
        check(
            post(&with(&SMS, &[("NumMedia", "1"), ("MediaUrl0", "ftp://x.org/a")])),
            invalid("MediaUrl0", "http(s)"),
        );
        check(
            post(&with(&SMS, &[("NumMedia", "1"), ("MediaUrl0", "x.org/a")])),
            invalid("MediaUrl0", "http(s)"),
        );
        let mut repeated = SMS.to_vec();
        repeated.push(("Body", "again"));
        check(post(&repeated), invalid("Body", "more than once"));
    }
}

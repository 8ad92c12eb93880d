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
//! an empty TwiML document (no reply message). Only SMS/MMS numbers are taken (`From`/`To` E.164 or
//! a short code); a post may have at most 200 parameters, and the service reads at most 64 KiB.
//!
//! Delivery receipts: Twilio posts each change of a sent message's status to the message's
//! `StatusCallback` URL, form-encoded (`MessageSid`, `MessageStatus`, `ErrorCode`, `ErrorMessage`,
//! `To`, `From`, `AccountSid`, …) and signed in `X-Twilio-Signature` exactly as inbound messages
//! are (same checks, same limits). With `public_url` set and no `status_callback`, every send asks
//! for them at `{public_url}/v1/receipts/twilio/{name}`. `MessageStatus` is mapped to a delivery
//! status: `sent` → sent, `delivered` → delivered, `undelivered` and `failed` → undelivered,
//! `read` → read, `canceled` → dropped; any other (`queued`, `accepted`, `scheduled`, `sending`,
//! …) is recorded as an event of its own (lower-cased) name. The event's detail holds
//! `MessageStatus` and, when sent, `ErrorCode` and `ErrorMessage`. The answer is an empty
//! `text/plain` body. Twilio signs no time, so a replayed receipt cannot be told from a late
//! one: it is taken, and the message's delivery status only ever moves forward.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha1::Sha1;
use url::Url;

use crate::address::{is_alphanumeric_sender, is_phone};
use crate::http::{self, check_url};
use crate::inbound::{has_media_type, Inbound, InboundError, InboundHead, InboundRequest, Incoming};
use crate::receipt::{detail_text, DeliveryStatus, ProviderReceipt, Receipts};
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
    /// URL Twilio calls with the message's delivery status (sent as `StatusCallback`). Default,
    /// when `public_url` is set: Switchboard's own receipts URL,
    /// `{public_url}/v1/receipts/twilio/{name}`; set this only to send the statuses elsewhere.
    #[serde(default)]
    pub status_callback: Option<String>,
    /// Base URL at which Twilio reaches Switchboard, e.g. `https://sb.example.com`: the number's
    /// messaging webhook is this + `/v1/inbound/twilio/{name}`, and sends ask for delivery
    /// receipts at this + `/v1/receipts/twilio/{name}`. Twilio signs the URL it calls, so the
    /// signature is checked against this (trailing `/` trimmed) + the request's path and query.
    /// Without it inbound messages and receipts are refused. https only, except for loopback
    /// hosts.
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
        Ok(Arc::new(TwilioProvider::new(settings, context)?))
    }
}

impl TwilioProvider {
    fn new(settings: TwilioSettings, context: &BuildContext<'_>) -> Result<TwilioProvider, SettingsError> {
        let endpoint = http::join(
            &settings.base_url,
            &format!("/2010-04-01/Accounts/{}/Messages.json", settings.account_sid),
        );
        let token = settings.auth_token.expose();
        let credentials =
            SentCredentials::new([token.to_owned(), format!("{}:{token}", settings.account_sid)]);
        let public_url = settings.public_url.as_deref().map(|url| url.trim_end_matches('/').to_owned());
        let status_callback = settings.status_callback.clone().or_else(|| {
            public_url.as_deref().map(|public| format!("{public}{}", receipts_path(context.name)))
        });
        let callback_carries_id = settings.status_callback.is_none() && status_callback.is_some();
        Ok(TwilioProvider {
            client: http::client(context.timeout)?,
            endpoint,
            public_url,
            status_callback,
            callback_carries_id,
            settings,
            credentials,
        })
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

/// The path of the provider `name`'s receipts URL: `/v1/receipts/twilio/{name}`, the name
/// percent-encoded (provider names need none; a name from elsewhere stays one path segment).
fn receipts_path(name: &str) -> String {
    let mut path = String::from("/v1/receipts/twilio/");
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            path.push(char::from(byte));
        } else {
            path.push_str(&format!("%{byte:02X}"));
        }
    }
    path
}

inventory::submit! { Registration::of::<TwilioKind>() }

#[derive(Debug)]
struct TwilioProvider {
    client: reqwest::Client,
    endpoint: String,
    /// `public_url` without its trailing `/`.
    public_url: Option<String>,
    /// The `StatusCallback` every send carries: `status_callback`, else the receipts URL under
    /// `public_url` (then with `?message_id=` Switchboard's id: see `callback_carries_id`).
    status_callback: Option<String>,
    /// The `StatusCallback` is our own receipts URL: each send adds its message's id to it.
    callback_carries_id: bool,
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
    /// The `from` setting, else the message's `from`. With a Messaging Service Twilio picks the
    /// number from its pool: the message's `from` stands for it.
    fn sender<'a>(&'a self, message: &'a OutboundMessage) -> &'a str {
        self.settings.from.as_deref().unwrap_or(&message.from)
    }

    async fn send(&self, message: &OutboundMessage) -> Result<Receipt, SendError> {
        let s = &self.settings;
        let request = self
            .client
            .post(&self.endpoint)
            .basic_auth(&s.account_sid, Some(s.auth_token.expose()))
            .form(&self.send_form(message));
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

    fn admit(&self, head: InboundHead<'_>) -> Result<(), InboundError> {
        admit(self.public_url.as_deref(), head).map(|_| ())
    }

    fn max_inbound_body(&self) -> Option<usize> {
        Some(MAX_INBOUND_BODY)
    }

    fn admit_receipts(&self, head: InboundHead<'_>) -> Result<(), InboundError> {
        admit(self.public_url.as_deref(), head).map(|_| ())
    }

    /// Twilio signs no time: `now` is not used (see the module's documentation).
    async fn receipts(
        &self,
        request: InboundRequest<'_>,
        _now: SystemTime,
    ) -> Result<Receipts, InboundError> {
        receipts(self.settings.auth_token.expose(), self.public_url.as_deref(), request)
    }
}

impl TwilioProvider {
    /// The form a send posts: `To`, `MessagingServiceSid` or `From`, `Body`, one `MediaUrl` per
    /// attachment, and `StatusCallback` when there is one.
    fn send_form<'a>(&'a self, message: &'a OutboundMessage) -> Vec<(&'static str, Cow<'a, str>)> {
        let mut form = vec![("To", Cow::from(message.to.as_str()))];
        match &self.settings.messaging_service_sid {
            Some(service) => form.push(("MessagingServiceSid", Cow::from(service.as_str()))),
            None => form.push(("From", Cow::from(self.sender(message)))),
        }
        form.push(("Body", Cow::from(message.body.as_str())));
        form.extend(message.attachments.iter().map(|url| ("MediaUrl", Cow::from(url.as_str()))));
        match &self.status_callback {
            // Our own receipts URL names the message: a receipt that arrives before the send's
            // answer was recorded (Twilio calls back within milliseconds) still finds it.
            Some(callback) if self.callback_carries_id => {
                form.push((
                    "StatusCallback",
                    Cow::from(format!("{callback}?{MESSAGE_ID_PARAM}={}", message.id)),
                ));
            }
            Some(callback) => form.push(("StatusCallback", Cow::from(callback.as_str()))),
            None => {}
        }
        form
    }
}

const FORM: &str = "application/x-www-form-urlencoded";

/// The query parameter of our own `StatusCallback` URL naming Switchboard's message id.
const MESSAGE_ID_PARAM: &str = "message_id";

/// Switchboard's message id from a receipt URL's query (`?message_id=…`; it is under the
/// signature like the rest of the URL): a UUID's characters only, else none.
fn message_id_in(path_and_query: &str) -> Option<String> {
    let (_, query) = path_and_query.split_once('?')?;
    let id = query.split('&').find_map(|pair| pair.strip_prefix(MESSAGE_ID_PARAM)?.strip_prefix('='))?;
    let uuid_like = (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    uuid_like.then(|| id.to_owned())
}

/// The answer Twilio expects: TwiML that does nothing (no reply is sent).
const EMPTY_TWIML: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response></Response>"#;

/// The largest inbound body taken. Twilio's form posts are small: a `Body` of at most 1600
/// characters (19,200 bytes even if every character is 4 UTF-8 bytes, each percent-encoded), up
/// to 10 media URLs and some 40 short parameters.
const MAX_INBOUND_BODY: usize = 64 * 1024;

/// The most parameters one post may have. Twilio sends some 40 (more with media); the cap is
/// checked while parsing, before anything is sorted or hashed, so that a body of many tiny
/// parameters costs no more than a few hundred.
const MAX_PARAMS: usize = 200;

/// The most media Twilio attaches to one message.
const MAX_MEDIA: usize = 10;

/// The longest `MessageSid` taken (Twilio's are 34 characters).
const MAX_SID_LEN: usize = 64;

/// The longest `MessageStatus` taken (Twilio's longest is `partially_delivered`).
const MAX_STATUS_LEN: usize = 32;

/// The longest `Body` taken, in characters: Twilio's own limit, and the service's for an SMS.
const MAX_BODY_CHARS: usize = 1600;

/// The length of an HMAC-SHA1, in bytes.
const SIGNATURE_BYTES: usize = 20;

/// The length of `X-Twilio-Signature`: base64 (padded) of [`SIGNATURE_BYTES`] bytes.
const SIGNATURE_LEN: usize = SIGNATURE_BYTES.div_ceil(3) * 4;

/// What the head of a request gives [`receive`] once [`admit`] let it through.
struct Admitted<'a> {
    public_url: &'a str,
    /// The decoded `X-Twilio-Signature`.
    signature: Vec<u8>,
}

/// The checks made before the body is read: the content type, a configured `public_url`, and one
/// `X-Twilio-Signature` shaped like an HMAC-SHA1 in base64. [`receive`] starts with them.
fn admit<'a>(public_url: Option<&'a str>, head: InboundHead<'_>) -> Result<Admitted<'a>, InboundError> {
    if !has_media_type(head.headers, FORM) {
        return Err(InboundError::UnsupportedMediaType { expected: FORM });
    }
    let Some(public_url) = public_url else {
        return Err(InboundError::InvalidSignature(
            "provider has no `public_url`: its signature cannot be checked; set it to the base URL \
             Twilio calls (e.g. https://sb.example.com)"
                .to_owned(),
        ));
    };
    let refused = |message: &str| InboundError::InvalidSignature(message.to_owned());
    let mut values = head.headers.get_all("x-twilio-signature").iter();
    let signature = match (values.next(), values.next()) {
        (Some(value), None) if !value.is_empty() => value.as_bytes(),
        (_, None) => return Err(refused("missing X-Twilio-Signature header")),
        (_, Some(_)) => return Err(refused("malformed X-Twilio-Signature header: sent more than once")),
    };
    let decoded = Some(signature)
        .filter(|signature| signature.len() == SIGNATURE_LEN)
        .and_then(|signature| STANDARD.decode(signature).ok())
        .filter(|decoded| decoded.len() == SIGNATURE_BYTES);
    let Some(signature) = decoded else {
        return Err(refused(
            "malformed X-Twilio-Signature header: expected the base64 of a 20-byte HMAC-SHA1",
        ));
    };
    Ok(Admitted { public_url, signature })
}

/// Checks one inbound request's signature against `auth_token` and `public_url` (trailing `/`
/// trimmed), then reads its message. Makes every check of [`admit`] first.
fn receive(
    auth_token: &str,
    public_url: Option<&str>,
    request: InboundRequest<'_>,
) -> Result<Inbound, InboundError> {
    let params = signed_params(auth_token, public_url, request)?;
    let message = incoming(&params)?;
    Ok(Inbound { messages: vec![message], content_type: "text/xml", answer: EMPTY_TWIML.to_owned() })
}

/// Checks one status callback's signature as [`receive`] does, then reads its receipt.
fn receipts(
    auth_token: &str,
    public_url: Option<&str>,
    request: InboundRequest<'_>,
) -> Result<Receipts, InboundError> {
    let params = signed_params(auth_token, public_url, request)?;
    let mut receipt = status_receipt(&params)?;
    receipt.message_id = message_id_in(request.path_and_query);
    Ok(Receipts { receipts: vec![receipt], content_type: "text/plain", answer: String::new() })
}

/// The parameters of a request signed by Twilio: every check of [`admit`], the parameter count,
/// then `X-Twilio-Signature` against `auth_token` and `public_url` + the request's path and query.
fn signed_params(
    auth_token: &str,
    public_url: Option<&str>,
    request: InboundRequest<'_>,
) -> Result<Vec<(String, String)>, InboundError> {
    let Admitted { public_url, signature } = admit(public_url, request.head())?;
    let params = parse_params(request.body)?;
    let url = format!("{public_url}{}", request.path_and_query);
    let matches = signing_mac(auth_token.as_bytes(), &url, &params)
        .is_some_and(|mac| mac.verify_slice(&signature).is_ok());
    if !matches {
        return Err(InboundError::InvalidSignature(
            "X-Twilio-Signature does not match the request (check `auth_token` and `public_url`)".to_owned(),
        ));
    }
    Ok(params)
}

/// The form's parameters, in order; more than [`MAX_PARAMS`] is refused as soon as the parser
/// reaches one more (the rest of the body is not parsed).
fn parse_params(body: &[u8]) -> Result<Vec<(String, String)>, InboundError> {
    let mut params = Vec::new();
    for (name, value) in url::form_urlencoded::parse(body) {
        if params.len() == MAX_PARAMS {
            return Err(InboundError::invalid("form", format!("has more than {MAX_PARAMS} parameters")));
        }
        params.push((name.into_owned(), value.into_owned()));
    }
    Ok(params)
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

/// A signed request's parameters by name; a name sent twice is refused.
struct Params<'a>(HashMap<&'a str, &'a str>);

impl<'a> Params<'a> {
    fn new(params: &'a [(String, String)]) -> Result<Params<'a>, InboundError> {
        let mut by_name = HashMap::with_capacity(params.len());
        for (name, value) in params {
            if by_name.insert(name.as_str(), value.as_str()).is_some() {
                return Err(InboundError::invalid(name, "appears more than once"));
            }
        }
        Ok(Params(by_name))
    }

    fn get(&self, name: &str) -> Option<&'a str> {
        self.0.get(name).copied()
    }

    /// The parameter, trimmed: missing or blank is refused.
    fn required(&self, name: &str) -> Result<String, InboundError> {
        match self.get(name) {
            Some(value) if !value.trim().is_empty() => Ok(value.trim().to_owned()),
            _ => Err(InboundError::invalid(name, "is missing")),
        }
    }

    /// `MessageSid`: at most [`MAX_SID_LEN`] printable ASCII characters.
    fn message_sid(&self) -> Result<String, InboundError> {
        let sid = self.required("MessageSid")?;
        if sid.len() > MAX_SID_LEN || !sid.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InboundError::invalid(
                "MessageSid",
                format!("must be at most {MAX_SID_LEN} printable ASCII characters"),
            ));
        }
        Ok(sid)
    }
}

/// The message in a signed request's parameters.
fn incoming(params: &[(String, String)]) -> Result<Incoming, InboundError> {
    let params = Params::new(params)?;
    let get = |name: &str| params.get(name);
    let required = |name: &str| params.required(name);
    let sid = params.message_sid()?;
    let from = phone_number("From", required("From")?)?;
    let to = phone_number("To", required("To")?)?;
    let body = message_body(get("Body").unwrap_or_default())?;
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
        body,
        attachments,
        provider_message_id: sid,
        timestamp: None,
    })
}

/// The receipt in a signed status callback's parameters.
fn status_receipt(params: &[(String, String)]) -> Result<ProviderReceipt, InboundError> {
    let params = Params::new(params)?;
    let sid = params.message_sid()?;
    let raw = params.required("MessageStatus")?;
    let is_name = raw.len() <= MAX_STATUS_LEN
        && raw.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if !is_name {
        return Err(InboundError::invalid(
            "MessageStatus",
            format!("must be a status name: at most {MAX_STATUS_LEN} letters, digits, `_` or `-`"),
        ));
    }
    let name = raw.to_ascii_lowercase();
    let status = delivery_status(&name);
    let mut detail = Map::new();
    detail.insert("MessageStatus".to_owned(), Value::String(raw));
    for field in ["ErrorCode", "ErrorMessage"] {
        let value = params.get(field).map(str::trim).filter(|value| !value.is_empty());
        if let Some(value) = value {
            detail.insert(field.to_owned(), Value::String(detail_text(value)));
        }
    }
    Ok(ProviderReceipt {
        message_id: None,
        provider_message_id: Some(sid),
        event: status.map_or(name, |status| status.as_str().to_owned()),
        status,
        time: None,
        suppress: None,
        detail,
    })
}

/// The delivery status a `MessageStatus` (lower-cased) reports; `None` for the steps before
/// Twilio sends the message on (`queued`, `accepted`, `scheduled`, `sending`) and any other.
fn delivery_status(name: &str) -> Option<DeliveryStatus> {
    match name {
        "sent" => Some(DeliveryStatus::Sent),
        "delivered" => Some(DeliveryStatus::Delivered),
        "undelivered" | "failed" => Some(DeliveryStatus::Undelivered),
        "read" => Some(DeliveryStatus::Read),
        "canceled" => Some(DeliveryStatus::Dropped),
        _ => None,
    }
}

/// `From` or `To` as the send API takes a number: E.164 or a short code. The same webhook carries
/// other channels' addresses (`whatsapp:+1…`, `messenger:…`), which are refused: this kind takes
/// SMS and MMS only. The value itself is not quoted back (it is a phone number).
fn phone_number(field: &str, value: String) -> Result<String, InboundError> {
    if is_phone(&value) {
        return Ok(value);
    }
    let channel = value.split_once(':').map(|(prefix, _)| prefix).filter(|prefix| {
        (1..=20).contains(&prefix.len()) && prefix.bytes().all(|b| b.is_ascii_alphanumeric())
    });
    let message = match channel {
        Some(channel) => {
            format!("is a `{channel}:` address: only SMS/MMS numbers are taken (E.164 or a short code)")
        }
        None => "must be an E.164 number (+ and 2 to 15 digits) or a short code: only SMS/MMS numbers \
                 are taken"
            .to_owned(),
    };
    Err(InboundError::invalid(field, message))
}

/// `Body` without control characters other than line breaks and tabs (a carrier may deliver
/// them; the send API refuses them, so they are dropped rather than stored), at most
/// [`MAX_BODY_CHARS`] characters.
fn message_body(raw: &str) -> Result<String, InboundError> {
    let body: String = raw.chars().filter(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t')).collect();
    if body.chars().count() > MAX_BODY_CHARS {
        return Err(InboundError::invalid("Body", format!("may have at most {MAX_BODY_CHARS} characters")));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::test_support::{block_on, build, check_inbound, check_settings, headers, Refused};

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

    pub(super) const TOKEN: &str = "12345";
    pub(super) const PUBLIC: &str = "https://sb.example.com";
    const PATH: &str = "/v1/inbound/twilio/tw";

    fn owned(params: &[(&str, &str)]) -> Vec<(String, String)> {
        params.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect()
    }

    /// What Twilio would send in `X-Twilio-Signature` for `url` and `params`.
    pub(super) fn sign(token: &str, url: &str, params: &[(&str, &str)]) -> String {
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
    pub(super) struct Post<'a> {
        pub(super) public_url: Option<&'a str>,
        pub(super) path: &'a str,
        pub(super) content_type: Option<&'a str>,
        /// `None`: no header; `Some("")`: the right signature for `signed` (or the body); several
        /// values separated by `|` are sent as several headers, `<empty>` as an empty value.
        pub(super) signature: Option<String>,
        /// The parameters the signature is computed over, when not those sent.
        pub(super) signed: Option<Vec<(&'a str, &'a str)>>,
        pub(super) params: Vec<(&'a str, &'a str)>,
    }

    /// A correctly signed post of `params` to `PATH` (`public_url` = `PUBLIC` with a trailing `/`).
    pub(super) fn post<'a>(params: &[(&'a str, &'a str)]) -> Post<'a> {
        Post {
            public_url: Some("https://sb.example.com/"),
            path: PATH,
            content_type: Some("application/x-www-form-urlencoded; charset=utf-8"),
            signature: Some(String::new()),
            signed: None,
            params: params.to_vec(),
        }
    }

    pub(super) fn provider(public_url: Option<&str>) -> Arc<dyn Provider> {
        build("twilio", "tw", json!({"account_sid": "AC1", "auth_token": TOKEN, "public_url": public_url}))
    }

    /// What `admit` says of the post's head, and what `receive` (called without `admit`) says
    /// of the whole post.
    fn run(post: Post<'_>) -> (Result<(), InboundError>, Result<Inbound, InboundError>) {
        let provider = provider(post.public_url);
        let (headers, body) = request_parts(&post);
        let request = InboundRequest { path_and_query: post.path, headers: &headers, body: body.as_bytes() };
        (provider.admit(request.head()), block_on(provider.receive(request)))
    }

    /// The post's headers (its signature computed as [`Post::signature`] says) and form body.
    pub(super) fn request_parts(post: &Post<'_>) -> (reqwest::header::HeaderMap, String) {
        let signature = match &post.signature {
            Some(signature) if signature.is_empty() => {
                let signed = post.signed.as_deref().unwrap_or(&post.params);
                Some(sign(TOKEN, &format!("{PUBLIC}{}", post.path), signed))
            }
            other => other.clone(),
        };
        // Several signatures, `|`-separated, are sent as several headers; `<empty>` as an empty one.
        let headers = headers([
            ("content-type", post.content_type.map(str::to_owned)),
            ("x-twilio-signature", signature.map(|signature| signature.replace("<empty>", ""))),
        ]);
        let body: String =
            url::form_urlencoded::Serializer::new(String::new()).extend_pairs(&post.params).finish();
        (headers, body)
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

    /// `expected`: the message taken, or why the request is refused.
    fn check(post: Post<'_>, expected: Result<Incoming, Refused>) {
        let what = format!("{:?} {:?} {:?}", post.params, post.signature, post.content_type);
        let (admitted, received) = run(post);
        match check_inbound(&what, admitted, received, expected, FORM) {
            Ok((inbound, message)) => {
                assert_eq!(inbound.messages, vec![message], "{what}");
                assert_eq!((inbound.content_type, inbound.answer.as_str()), ("text/xml", EMPTY_TWIML));
            }
            // The expected signature is never told.
            Err(InboundError::InvalidSignature(text)) => {
                assert!(!text.contains(&sign(TOKEN, &format!("{PUBLIC}{PATH}"), &SMS)), "{what}");
            }
            // A refused number is not quoted back.
            Err(InboundError::Invalid { message, .. }) => {
                assert!(!message.contains("555"), "{what}: {message}")
            }
            Err(_) => {}
        }
    }

    const SMS: [(&str, &str); 5] = [
        ("MessageSid", "SM1"),
        ("From", "+15551230001"),
        ("To", "+15559870002"),
        ("Body", "Hello there"),
        ("NumMedia", "0"),
    ];

    pub(super) fn with<'a>(
        base: &[(&'a str, &'a str)],
        extra: &[(&'a str, &'a str)],
    ) -> Vec<(&'a str, &'a str)> {
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
        // Well-formed but wrong: only `receive` can tell.
        let mut zeros = post(&SMS);
        zeros.signature = Some(STANDARD.encode([0_u8; 20]));
        check(zeros, refused(mismatch));

        // Refused from the headers alone, by `admit` and `receive` alike.
        let head = |part| Err(Refused::Head(part));
        let signed = |signature: &str| Post { signature: Some(signature.to_owned()), ..post(&SMS) };
        let good = sign(TOKEN, &format!("{PUBLIC}{PATH}"), &SMS);
        let malformed = "malformed X-Twilio-Signature";
        check(signed("not base64!"), head(malformed));
        check(signed("not base64, but 28 chars long"), head(malformed));
        check(signed(&good[..27]), head(malformed));
        check(signed(&format!("{good}A")), head(malformed));
        check(signed(&good.replace('=', "A")), head(malformed));
        check(signed(&STANDARD.encode([0_u8; 21])), head(malformed));
        check(signed(&STANDARD.encode([0_u8; 32])), head(malformed));
        check(signed(&format!("{good}|{good}")), head("sent more than once"));
        check(signed(&format!("|{good}")), head("sent more than once"));
        let mut missing = post(&SMS);
        missing.signature = None;
        check(missing, head("missing X-Twilio-Signature"));
        check(signed("<empty>"), head("missing X-Twilio-Signature"));
        check(signed("<empty>|<empty>"), head("sent more than once"));
        check(signed("x"), head(malformed));
        let mut unconfigured = post(&SMS);
        unconfigured.public_url = None;
        check(unconfigured, head("provider has no `public_url`"));
        // The content type is checked first, then `public_url`, then the signature.
        let untyped = Post { content_type: None, public_url: None, signature: None, ..post(&SMS) };
        check(untyped, Err(Refused::MediaType));
        check(Post { public_url: None, signature: None, ..post(&SMS) }, head("no `public_url`"));
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
        let mut last = SMS.to_vec();
        last.extend([("NumSegments", "1"), ("ApiVersion", "2010-04-01"), ("MessageSid", "SM2")]);
        check(post(&last), invalid("MessageSid", "more than once"));
    }

    #[test]
    fn numbers() {
        let sent = |field, value| post(&with(&SMS, &[(field, value)]));
        let from = |value: &str| Ok(Incoming { from: value.into(), ..message("Hello there", &[]) });
        let to = |value: &str| Ok(Incoming { to: value.into(), ..message("Hello there", &[]) });
        check(sent("From", "+15551230001"), from("+15551230001"));
        check(sent("From", " +15551230001 "), from("+15551230001"));
        check(sent("From", "+12"), from("+12"));
        check(sent("To", "12345"), to("12345"));
        check(sent("To", "555"), to("555"));
        let invalid = |field, part| Err(Refused::Invalid(field, part));
        let e164 = "must be an E.164 number (+ and 2 to 15 digits) or a short code";
        check(sent("From", "whatsapp:+15551230001"), invalid("From", "a `whatsapp:` address: only SMS/MMS"));
        check(sent("To", "whatsapp:+15559870002"), invalid("To", "a `whatsapp:` address: only SMS/MMS"));
        check(sent("From", "messenger:5551230001"), invalid("From", "a `messenger:` address"));
        check(sent("From", "15551230001"), invalid("From", e164));
        check(sent("From", "+1 5551230001"), invalid("From", e164));
        check(sent("From", "+1555123000123456"), invalid("From", e164));
        check(sent("From", "Switchboard"), invalid("From", "only SMS/MMS numbers are taken"));
        check(sent("To", "tel:+15559870002"), invalid("To", "a `tel:` address"));
        check(sent("To", ":+15559870002"), invalid("To", e164));
        check(sent("To", "sip:x@example.org"), invalid("To", "a `sip:` address"));
        check(sent("To", "ann@example.org"), invalid("To", e164));
    }

    #[test]
    fn bodies() {
        let sent = |body| post(&with(&SMS, &[("Body", body)]));
        let taken = |body: &str| Ok(message(body, &[]));
        let longest = "é".repeat(MAX_BODY_CHARS);
        check(sent(&longest), taken(&longest));
        let too_long = format!("{longest}x");
        check(sent(&too_long), Err(Refused::Invalid("Body", "at most 1600 characters")));
        // Control characters other than line breaks and tabs are dropped, not refused, and are
        // not counted.
        check(sent("a\u{0}b\u{7}c\u{1b}[0m\n\r\td\u{7f}\u{85}e\u{9f}"), taken("abc[0m\n\r\tde"));
        let with_controls = format!("{longest}\u{0}\u{1}");
        check(sent(&with_controls), taken(&longest));
        check(sent("\u{0}"), taken(""));
        check(sent("line\r\nbreaks\tand tabs"), taken("line\r\nbreaks\tand tabs"));
    }

    #[test]
    fn parameter_count() {
        // Distinct names: `z`, `zz`, `zzz`, …
        let names = "z".repeat(MAX_PARAMS);
        let filler = |count: usize| -> Vec<(&str, &str)> { (1..=count).map(|n| (&names[..n], "")).collect() };
        let mut most = SMS.to_vec();
        most.extend(filler(MAX_PARAMS - SMS.len()));
        check(post(&most), Ok(message("Hello there", &[])));
        let mut too_many = SMS.to_vec();
        too_many.extend(filler(MAX_PARAMS - SMS.len() + 1));
        check(post(&too_many), Err(Refused::Invalid("form", "more than 200 parameters")));
        // Counted before anything else of the body is looked at: even repeated names.
        let repeated = vec![("z", ""); MAX_PARAMS + 1];
        check(post(&repeated), Err(Refused::Invalid("form", "more than 200 parameters")));
    }

    /// A body of tiny parameters (the service reads up to 4 MiB when the kind's limit is not
    /// applied) is refused after a few hundred of them, before any sorting or hashing.
    #[test]
    fn many_parameters_are_refused_early() {
        let headers = headers([
            ("content-type", Some(FORM.to_owned())),
            ("x-twilio-signature", Some(STANDARD.encode([0_u8; 20]))),
        ]);
        for pairs in [100_000, 2 * 1024 * 1024] {
            let body = "a&".repeat(pairs);
            let request = InboundRequest { path_and_query: PATH, headers: &headers, body: body.as_bytes() };
            let started = std::time::Instant::now();
            let result = receive(TOKEN, Some(PUBLIC), request);
            let elapsed = started.elapsed();
            match result {
                Err(InboundError::Invalid { field, message }) => {
                    assert_eq!(field, "form");
                    assert!(message.contains("more than 200 parameters"), "{message}");
                }
                other => panic!("{pairs} pairs: {other:?}"),
            }
            assert!(elapsed < std::time::Duration::from_secs(1), "{pairs} pairs took {elapsed:?}");
        }
    }

    #[test]
    fn inbound_body_limit() {
        assert_eq!(provider(Some(PUBLIC)).max_inbound_body(), Some(64 * 1024));
        assert_eq!(provider(None).max_inbound_body(), Some(MAX_INBOUND_BODY));
    }
}

/// Status callbacks (`receipts`) and the `StatusCallback` sends carry.
#[cfg(test)]
mod receipt_tests {
    use std::time::{Duration, UNIX_EPOCH};

    use serde_json::json;

    use super::tests::{post, provider, request_parts, sign, with, Post, PUBLIC, TOKEN};
    use super::*;
    use crate::test_support::{check_receipts, email, take_receipts, Refused};

    const RECEIPTS_PATH: &str = "/v1/receipts/twilio/tw";

    /// A status callback as Twilio posts it: `MessageSid` `SM1`, `MessageStatus` `delivered`.
    const DELIVERED: [(&str, &str); 8] = [
        ("MessageSid", "SM1"),
        ("SmsSid", "SM1"),
        ("MessageStatus", "delivered"),
        ("SmsStatus", "delivered"),
        ("AccountSid", "AC1"),
        ("From", "+15559870002"),
        ("To", "+15551230001"),
        ("ApiVersion", "2010-04-01"),
    ];

    /// A rightly signed status callback of `params` to the receipts path.
    fn callback<'a>(params: &[(&'a str, &'a str)]) -> Post<'a> {
        Post { path: RECEIPTS_PATH, ..post(params) }
    }

    /// The receipt of message `SM1` with this delivery status and event name.
    fn receipt(status: Option<DeliveryStatus>, event: &str, detail: serde_json::Value) -> ProviderReceipt {
        ProviderReceipt {
            message_id: None,
            provider_message_id: Some("SM1".into()),
            event: event.into(),
            status,
            time: None,
            suppress: None,
            detail: detail.as_object().cloned().unwrap_or_default(),
        }
    }

    /// `expected`: the receipt taken, or why the callback is refused (`Head` and `MediaType` by
    /// `admit_receipts` already, with the same error). Twilio signs no time: `now` changes nothing.
    fn check(post: Post<'_>, expected: Result<ProviderReceipt, Refused>) {
        let what = format!("{:?} {:?} {:?}", post.params, post.signature, post.content_type);
        let provider = provider(post.public_url);
        let (headers, body) = request_parts(&post);
        let request = InboundRequest { path_and_query: post.path, headers: &headers, body: body.as_bytes() };
        let (admitted, taken) = take_receipts(&*provider, request, SystemTime::now());
        for now in [UNIX_EPOCH, UNIX_EPOCH + Duration::from_secs(4_000_000_000)] {
            assert_eq!(take_receipts(&*provider, request, now).1, taken, "{what}");
        }
        check_receipts(&what, admitted, taken, expected.map(|receipt| vec![receipt]), FORM);
    }

    #[test]
    fn statuses() {
        use DeliveryStatus::*;
        let cases = [
            ("sent", Some(Sent), "sent"),
            ("delivered", Some(Delivered), "delivered"),
            ("undelivered", Some(Undelivered), "undelivered"),
            ("failed", Some(Undelivered), "undelivered"),
            ("read", Some(Read), "read"),
            ("canceled", Some(Dropped), "dropped"),
            ("DELIVERED", Some(Delivered), "delivered"),
            ("queued", None, "queued"),
            ("accepted", None, "accepted"),
            ("scheduled", None, "scheduled"),
            ("sending", None, "sending"),
            ("Partially_Delivered", None, "partially_delivered"),
            ("receiving", None, "receiving"),
        ];
        for (sent, status, event) in cases {
            let params = with(&DELIVERED, &[("MessageStatus", sent)]);
            check(callback(&params), Ok(receipt(status, event, json!({"MessageStatus": sent}))));
        }
    }

    #[test]
    fn error_details() {
        let failed = with(
            &DELIVERED,
            &[
                ("MessageStatus", "undelivered"),
                ("ErrorCode", "30003"),
                ("ErrorMessage", "Unreachable handset"),
            ],
        );
        let detail = json!({"MessageStatus": "undelivered", "ErrorCode": "30003", "ErrorMessage": "Unreachable handset"});
        check(callback(&failed), Ok(receipt(Some(DeliveryStatus::Undelivered), "undelivered", detail)));
        // Blank error fields are left out; long or odd ones are cut and cleaned.
        let blank = with(&DELIVERED, &[("ErrorCode", ""), ("ErrorMessage", " ")]);
        check(
            callback(&blank),
            Ok(receipt(Some(DeliveryStatus::Delivered), "delivered", json!({"MessageStatus": "delivered"}))),
        );
        let long = "é".repeat(300);
        let odd = with(&DELIVERED, &[("ErrorCode", " 30008\u{1b}[0m "), ("ErrorMessage", &long)]);
        let detail =
            json!({"MessageStatus": "delivered", "ErrorCode": "30008[0m", "ErrorMessage": "é".repeat(200)});
        check(callback(&odd), Ok(receipt(Some(DeliveryStatus::Delivered), "delivered", detail)));
    }

    #[test]
    fn refused_callbacks() {
        let invalid = |field, part| Err(Refused::Invalid(field, part));
        check(callback(&with(&DELIVERED, &[("MessageSid", "<none>")])), invalid("MessageSid", "is missing"));
        check(callback(&with(&DELIVERED, &[("MessageSid", "SM 1")])), invalid("MessageSid", "printable"));
        check(
            callback(&with(&DELIVERED, &[("MessageSid", &"S".repeat(65))])),
            invalid("MessageSid", "at most 64"),
        );
        check(
            callback(&with(&DELIVERED, &[("MessageStatus", "<none>")])),
            invalid("MessageStatus", "is missing"),
        );
        check(callback(&with(&DELIVERED, &[("MessageStatus", "")])), invalid("MessageStatus", "is missing"));
        for odd in ["de livered", "délivré", "<b>sent</b>", &"s".repeat(33)] {
            check(
                callback(&with(&DELIVERED, &[("MessageStatus", odd)])),
                invalid("MessageStatus", "status name"),
            );
        }
        let mut twice = DELIVERED.to_vec();
        twice.push(("MessageStatus", "read"));
        check(callback(&twice), invalid("MessageStatus", "more than once"));

        // Signed as inbound messages are: the same checks, the same texts.
        let mismatch = Err(Refused::Signature("X-Twilio-Signature does not match"));
        let mut changed = callback(&with(&DELIVERED, &[("MessageStatus", "read")]));
        changed.signed = Some(DELIVERED.to_vec());
        check(changed, mismatch);
        // A signature for another URL (the inbound one) does not hold here.
        let mut elsewhere = callback(&DELIVERED);
        elsewhere.signature = Some(sign(TOKEN, &format!("{PUBLIC}/v1/inbound/twilio/tw"), &DELIVERED));
        check(elsewhere, Err(Refused::Signature("does not match")));
        check(
            Post { signature: None, ..callback(&DELIVERED) },
            Err(Refused::Head("missing X-Twilio-Signature")),
        );
        check(Post { public_url: None, ..callback(&DELIVERED) }, Err(Refused::Head("no `public_url`")));
        check(
            Post { content_type: Some("application/json"), ..callback(&DELIVERED) },
            Err(Refused::MediaType),
        );
    }

    /// `public_url` and `status_callback` set as given, to a provider named `name`: the
    /// `StatusCallback` its sends carry.
    fn check_callback(
        public_url: Option<&str>,
        status_callback: Option<&str>,
        name: &str,
        expected: Option<&str>,
    ) {
        let settings = json!({
            "account_sid": "AC1", "auth_token": "t", "public_url": public_url, "status_callback": status_callback,
        });
        let issues = crate::find("twilio").map(|kind| kind.check(settings.clone()));
        assert_eq!(issues, Some(vec![]), "{settings}");
        let settings: TwilioSettings = serde_json::from_value(settings).unwrap_or_else(|e| panic!("{e}"));
        let context = BuildContext { name, timeout: Duration::from_secs(1) };
        let provider = TwilioProvider::new(settings, &context).unwrap_or_else(|e| panic!("{e}"));
        let message = OutboundMessage {
            to: "+15551230001".into(),
            from: "+15559870002".into(),
            ..email("x", None, "Hi", &[])
        };
        let form = provider.send_form(&message);
        let callbacks: Vec<&str> = form
            .iter()
            .filter(|(field, _)| *field == "StatusCallback")
            .map(|(_, value)| value.as_ref())
            .collect();
        assert_eq!(
            callbacks,
            expected.into_iter().collect::<Vec<_>>(),
            "{public_url:?} {status_callback:?} {name}"
        );
    }

    #[test]
    fn the_message_id_in_a_receipt_url() {
        let check = |path: &str, expected: Option<&str>| {
            assert_eq!(message_id_in(path).as_deref(), expected, "{path}")
        };
        check(
            "/v1/receipts/twilio/tw?message_id=0190abcd-0000-7000-8000-000000000001",
            Some("0190abcd-0000-7000-8000-000000000001"),
        );
        check("/v1/receipts/twilio/tw?x=1&message_id=0190abcd", Some("0190abcd"));
        check("/v1/receipts/twilio/tw", None);
        check("/v1/receipts/twilio/tw?message_id=", None);
        check("/v1/receipts/twilio/tw?message_id=../etc", None);
        check("/v1/receipts/twilio/tw?message_ids=0190abcd", None);
    }

    #[test]
    fn status_callback_on_sends() {
        check_callback(None, None, "tw", None);
        check_callback(
            Some("https://sb.example.com"),
            None,
            "tw",
            Some("https://sb.example.com/v1/receipts/twilio/tw?message_id=0190abcd"),
        );
        check_callback(
            Some("https://sb.example.com/"),
            None,
            "tw-us_2",
            Some("https://sb.example.com/v1/receipts/twilio/tw-us_2?message_id=0190abcd"),
        );
        check_callback(
            Some("https://example.com/switchboard/"),
            None,
            "tw",
            Some("https://example.com/switchboard/v1/receipts/twilio/tw?message_id=0190abcd"),
        );
        check_callback(
            Some("http://127.0.0.1:8080"),
            None,
            "a b/c",
            Some("http://127.0.0.1:8080/v1/receipts/twilio/a%20b%2Fc?message_id=0190abcd"),
        );
        // An explicit `status_callback` wins, with or without `public_url`.
        check_callback(
            None,
            Some("https://hooks.example.com/tw"),
            "tw",
            Some("https://hooks.example.com/tw"),
        );
        check_callback(
            Some("https://sb.example.com"),
            Some("https://hooks.example.com/tw"),
            "tw",
            Some("https://hooks.example.com/tw"),
        );
    }
}

//! Request bodies of the send endpoints: parsed strictly (wrong types and repeated keys are
//! rejected, unknown fields ignored) and validated field by field, each problem naming its field.

use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::time::SystemTime;
use switchboard_providers::address::{is_email, is_phone};
use utoipa::ToSchema;

use switchboard_providers::inbound::Incoming;
use switchboard_providers::{Channel, OutboundMessage};

use super::error::ApiError;
use crate::accept::AcceptError;
use crate::store::conversation::family;

/// The most characters an SMS body may have (ten concatenated segments).
pub const SMS_MAX_CHARS: usize = 1600;
const MAX_ATTACHMENTS: usize = 10;
const MAX_URL_LEN: usize = 2048;
const MAX_TAGS: usize = 20;
const MAX_TAG_LEN: usize = 64;
const MAX_SUBJECT_CHARS: usize = 998;
/// The longest provider message id (`messaging_provider_id`, `xillio_id`) accepted.
const MAX_PROVIDER_ID_CHARS: usize = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /api/messages/sms`
    LegacySms,
    /// `POST /api/messages/email`
    LegacyEmail,
    /// `POST /v1/messages`
    Native,
}

/// `POST /api/messages/sms`: the messaging-service contract's SMS or MMS.
#[derive(Deserialize, ToSchema)]
#[schema(as = LegacySmsRequest)]
pub struct LegacySms {
    #[schema(schema_with = schema::phone, required = true)]
    from: Option<String>,
    #[schema(schema_with = schema::phone, required = true)]
    to: Option<String>,
    #[serde(rename = "type")]
    #[schema(schema_with = schema::sms_type)]
    kind: Option<String>,
    #[schema(schema_with = schema::body, required = true)]
    body: Option<String>,
    #[schema(schema_with = schema::attachments)]
    attachments: Option<Vec<String>>,
    #[schema(schema_with = schema::timestamp)]
    timestamp: Option<String>,
}

/// `POST /api/messages/email`: the messaging-service contract's email.
#[derive(Deserialize, ToSchema)]
#[schema(as = LegacyEmailRequest)]
pub struct LegacyEmail {
    #[schema(schema_with = schema::email, required = true)]
    from: Option<String>,
    #[schema(schema_with = schema::email, required = true)]
    to: Option<String>,
    #[schema(schema_with = schema::subject)]
    subject: Option<String>,
    #[schema(schema_with = schema::body, required = true)]
    body: Option<String>,
    #[schema(schema_with = schema::attachments)]
    attachments: Option<Vec<String>>,
    #[schema(schema_with = schema::timestamp)]
    timestamp: Option<String>,
}

/// `POST /v1/messages`: the native API.
#[derive(Deserialize, ToSchema)]
#[schema(as = SendRequest)]
pub struct Native {
    /// `sms`, `mms`, `email`, a channel a registered provider kind names, or one the active
    /// config routes.
    #[schema(schema_with = schema::channel, required = true)]
    channel: Option<String>,
    #[schema(schema_with = schema::address, required = true)]
    from: Option<String>,
    #[schema(schema_with = schema::address, required = true)]
    to: Option<String>,
    #[schema(schema_with = schema::subject)]
    subject: Option<String>,
    #[schema(schema_with = schema::body, required = true)]
    body: Option<String>,
    #[schema(schema_with = schema::attachments)]
    attachments: Option<Vec<String>>,
    #[schema(schema_with = schema::tags)]
    tags: Option<Vec<String>>,
    #[schema(schema_with = schema::status_callback)]
    status_callback: Option<String>,
}

/// The generic inbound webhooks of the messaging-service contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Webhook {
    /// `POST /api/webhooks/sms`
    Sms,
    /// `POST /api/webhooks/email`
    Email,
}

/// `POST /api/webhooks/sms`: an inbound SMS or MMS, in the messaging-service contract's form.
#[derive(Deserialize, ToSchema)]
#[schema(as = WebhookSmsRequest)]
pub struct WebhookSms {
    #[schema(schema_with = schema::phone, required = true)]
    from: Option<String>,
    #[schema(schema_with = schema::phone, required = true)]
    to: Option<String>,
    #[serde(rename = "type")]
    #[schema(schema_with = schema::sms_type)]
    kind: Option<String>,
    #[schema(schema_with = schema::provider_id, required = true)]
    messaging_provider_id: Option<String>,
    #[schema(schema_with = schema::body, required = true)]
    body: Option<String>,
    #[schema(schema_with = schema::attachments)]
    attachments: Option<Vec<String>>,
    #[schema(schema_with = schema::timestamp)]
    timestamp: Option<String>,
}

/// `POST /api/webhooks/email`: an inbound email, in the messaging-service contract's form.
#[derive(Deserialize, ToSchema)]
#[schema(as = WebhookEmailRequest)]
pub struct WebhookEmail {
    #[schema(schema_with = schema::email, required = true)]
    from: Option<String>,
    #[schema(schema_with = schema::email, required = true)]
    to: Option<String>,
    #[schema(schema_with = schema::provider_id, required = true)]
    xillio_id: Option<String>,
    #[schema(schema_with = schema::subject)]
    subject: Option<String>,
    #[schema(schema_with = schema::body, required = true)]
    body: Option<String>,
    #[schema(schema_with = schema::attachments)]
    attachments: Option<Vec<String>>,
    #[schema(schema_with = schema::timestamp)]
    timestamp: Option<String>,
}

/// The fields' schemas: what every send (and webhook) refuses, from the limits above. Only what
/// the server refuses for every channel is a constraint (a request the schema calls invalid is
/// always refused); the rest is said in descriptions.
mod schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type};
    use utoipa::openapi::RefOr;

    use super::{
        Channel, MAX_ATTACHMENTS, MAX_PROVIDER_ID_CHARS, MAX_SUBJECT_CHARS, MAX_TAGS, MAX_TAG_LEN,
        SMS_MAX_CHARS,
    };
    use crate::api_schema::nullable_string;

    fn string(description: impl Into<String>) -> ObjectBuilder {
        ObjectBuilder::new().schema_type(Type::String).description(Some(description))
    }

    fn nullable_array(items: ObjectBuilder, max: usize, description: &str) -> RefOr<Schema> {
        ArrayBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
            .items(items)
            .max_items(Some(max))
            .description(Some(description))
            .into()
    }

    pub fn phone() -> ObjectBuilder {
        string("An E.164 number (`+` and 2 to 15 digits) or a short code (3 to 8 digits)")
            .min_length(Some(1))
            .examples(["+12016661234"])
    }

    pub fn email() -> ObjectBuilder {
        string("A plain address `local@domain.tld` (no display name)").min_length(Some(1))
    }

    pub fn address() -> ObjectBuilder {
        string("Of the channel's form: a phone number for `sms` and `mms`, an email address for `email`, not blank for another channel; no control characters")
            .min_length(Some(1))
    }

    pub fn channel() -> ObjectBuilder {
        string("The channel: `sms`, `mms`, `email`, or a channel a provider kind or the active config serves")
            .min_length(Some(1))
    }

    pub fn sms_type() -> ObjectBuilder {
        nullable_string()
            .enum_values(Some([Some(Channel::SMS.as_str()), Some(Channel::MMS.as_str()), None]))
            .description(Some("`sms` (the default) or `mms`"))
    }

    pub fn body() -> ObjectBuilder {
        string(format!(
            "Not blank; no control characters but line breaks and tabs; an SMS at most {SMS_MAX_CHARS} characters; an email's may be HTML"
        ))
            .min_length(Some(1))
    }

    pub fn subject() -> ObjectBuilder {
        nullable_string().max_length(Some(MAX_SUBJECT_CHARS)).description(Some("No control characters"))
    }

    pub fn attachments() -> RefOr<Schema> {
        let url = string("An `http://` or `https://` URL with a host").min_length(Some(1));
        nullable_array(url, MAX_ATTACHMENTS, "An MMS needs at least one; an SMS none")
    }

    pub fn tags() -> RefOr<Schema> {
        let tag = string("Printable characters").min_length(Some(1)).max_length(Some(MAX_TAG_LEN));
        nullable_array(tag, MAX_TAGS, "Tags routing rules may match on")
    }

    pub fn timestamp() -> ObjectBuilder {
        nullable_string().description(Some("An RFC 3339 date-time (UTC or with an offset) from 1970 on"))
    }

    pub fn provider_id() -> ObjectBuilder {
        string(format!(
            "The provider's id for the message: 1 to {MAX_PROVIDER_ID_CHARS} printable characters; a redelivery carries the same"
        ))
            .min_length(Some(1))
            .max_length(Some(MAX_PROVIDER_ID_CHARS))
    }

    pub fn status_callback() -> ObjectBuilder {
        nullable_string().description(Some(
            "An `https://` URL to a public host every change of the message's `status` and `delivery_status` is POSTed to, signed; refused when the server has no callback secret",
        ))
    }
}

/// Parses and validates an inbound webhook's body: the same field rules as a send (addresses,
/// body, attachments, sizes), plus the provider's message id, which makes a redelivery the same
/// message.
pub fn parse_webhook(webhook: Webhook, body: &[u8]) -> Result<Incoming, ApiError> {
    if let Some(field) = repeated_key(body) {
        return Err(ApiError::DuplicateField { field });
    }
    let (message, id_field, provider_id, timestamp) = match webhook {
        Webhook::Sms => {
            let p: WebhookSms = from_json(body)?;
            let message = OutboundMessage {
                id: String::new(),
                channel: sms_type(p.kind.as_deref())?,
                from: required("from", p.from)?,
                to: required("to", p.to)?,
                subject: None,
                body: required("body", p.body)?,
                attachments: p.attachments.unwrap_or_default(),
                tags: Vec::new(),
            };
            (message, "messaging_provider_id", p.messaging_provider_id, p.timestamp)
        }
        Webhook::Email => {
            let p: WebhookEmail = from_json(body)?;
            let message = OutboundMessage {
                id: String::new(),
                channel: Channel::EMAIL,
                from: required("from", p.from)?,
                to: required("to", p.to)?,
                subject: p.subject,
                body: required("body", p.body)?,
                attachments: p.attachments.unwrap_or_default(),
                tags: Vec::new(),
            };
            (message, "xillio_id", p.xillio_id, p.timestamp)
        }
    };
    let timestamp = check_timestamp(timestamp.as_deref())?;
    validate(&message)?;
    let provider_message_id = required(id_field, provider_id)?;
    if provider_message_id.trim().is_empty()
        || provider_message_id.chars().count() > MAX_PROVIDER_ID_CHARS
        || provider_message_id.contains(char::is_control)
    {
        return Err(ApiError::invalid(
            id_field,
            format!("`{id_field}` must be 1 to {MAX_PROVIDER_ID_CHARS} printable characters"),
        ));
    }
    Ok(Incoming {
        channel: message.channel,
        from: message.from,
        to: message.to,
        subject: message.subject,
        body: message.body,
        attachments: message.attachments,
        provider_message_id,
        timestamp,
    })
}

/// Checks a message a provider's kind parsed from its own inbound format (`/v1/inbound/…`) by
/// the rules sends follow where they apply to what a carrier delivers: addresses of the
/// channel's form, no control characters in them or the subject, an SMS body within
/// [`SMS_MAX_CHARS`], at most [`MAX_ATTACHMENTS`] http(s) attachment URLs. The body may be
/// empty (a picture message). A kind's parsing is not trusted to have done it.
pub fn check_incoming(m: &Incoming) -> Result<(), ApiError> {
    for (field, value) in [("from", Some(&m.from)), ("to", Some(&m.to)), ("subject", m.subject.as_ref())] {
        if value.is_some_and(|v| v.contains(char::is_control)) {
            return Err(ApiError::invalid(field, format!("`{field}` must not contain control characters")));
        }
    }
    check_addresses(m.channel.as_str(), &m.from, &m.to)?;
    if family(m.channel.as_str()) == "sms" {
        check_sms_length(&m.body)?;
    }
    check_attachment_urls(&m.attachments)
}

/// The channel a messaging-service `type` names: `sms` (the default) or `mms`.
fn sms_type(kind: Option<&str>) -> Result<Channel, ApiError> {
    match kind {
        None | Some("sms") => Ok(Channel::SMS),
        Some("mms") => Ok(Channel::MMS),
        Some(other) => {
            Err(ApiError::invalid("type", format!("`type` must be \"sms\" or \"mms\", got {other:?}")))
        }
    }
}

/// Parses and validates a body for `endpoint` into the message to accept under `id`. Whether
/// the channel is one anything serves is for accepting to say (`crate::accept`).
pub fn parse(endpoint: Endpoint, body: &[u8], id: String) -> Result<OutboundMessage, ApiError> {
    parse_send(endpoint, body, id).map(|(message, _)| message)
}

/// [`parse`], and the native API's `status_callback` (as given: whether it may be used is the
/// caller's check, `crate::callbacks::check_url`).
pub fn parse_send(
    endpoint: Endpoint,
    body: &[u8],
    id: String,
) -> Result<(OutboundMessage, Option<String>), ApiError> {
    if let Some(field) = repeated_key(body) {
        return Err(ApiError::DuplicateField { field });
    }
    let mut status_callback = None;
    let parsed = match endpoint {
        Endpoint::LegacySms => {
            let p: LegacySms = from_json(body)?;
            check_timestamp(p.timestamp.as_deref())?;
            OutboundMessage {
                id,
                channel: sms_type(p.kind.as_deref())?,
                from: required("from", p.from)?,
                to: required("to", p.to)?,
                subject: None,
                body: required("body", p.body)?,
                attachments: p.attachments.unwrap_or_default(),
                tags: Vec::new(),
            }
        }
        Endpoint::LegacyEmail => {
            let p: LegacyEmail = from_json(body)?;
            check_timestamp(p.timestamp.as_deref())?;
            OutboundMessage {
                id,
                channel: Channel::EMAIL,
                from: required("from", p.from)?,
                to: required("to", p.to)?,
                subject: p.subject,
                body: required("body", p.body)?,
                attachments: p.attachments.unwrap_or_default(),
                tags: Vec::new(),
            }
        }
        Endpoint::Native => {
            let p: Native = from_json(body)?;
            status_callback = p.status_callback;
            let name = required("channel", p.channel)?;
            let channel = Channel::new(&name).map_err(|_| AcceptError::UnknownChannel(name.clone()))?;
            OutboundMessage {
                id,
                channel,
                from: required("from", p.from)?,
                to: required("to", p.to)?,
                subject: p.subject,
                body: required("body", p.body)?,
                attachments: p.attachments.unwrap_or_default(),
                tags: p.tags.unwrap_or_default(),
            }
        }
    };
    validate(&parsed)?;
    Ok((parsed, status_callback))
}

fn from_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        // The top-level field the error is in; none when the body itself is not an object.
        let field = path
            .split(['.', '['])
            .next()
            .filter(|f| !f.is_empty() && *f != "?")
            .unwrap_or_default()
            .to_owned();
        match inner.classify() {
            serde_json::error::Category::Data if !field.is_empty() => {
                let detail = inner.to_string();
                let detail = detail.split(" at line ").next().unwrap_or_default();
                ApiError::InvalidField { message: format!("`{field}`: {detail}"), field }
            }
            serde_json::error::Category::Data => {
                ApiError::InvalidJson("the body must be a JSON object".into())
            }
            _ => ApiError::InvalidJson(inner.to_string()),
        }
    })?;
    deserializer.end().map_err(|error| ApiError::InvalidJson(error.to_string()))?;
    Ok(value)
}

/// The path (`to`, `extra.x`, `list[2].y`) of the first key an object in `body` repeats. `None`
/// also when `body` is not JSON: parsing it says why.
fn repeated_key(body: &[u8]) -> Option<String> {
    let mut found = None;
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let _ = Walk { path: &JsonPath::Root, found: &mut found }.deserialize(&mut deserializer);
    found
}

/// Where a value is in the body; rendered only when a repeated key is found.
enum JsonPath<'a> {
    Root,
    Key(&'a JsonPath<'a>, &'a str),
    Index(&'a JsonPath<'a>, usize),
}

impl fmt::Display for JsonPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonPath::Root => Ok(()),
            JsonPath::Key(JsonPath::Root, key) => write!(f, "{key}"),
            JsonPath::Key(parent, key) => write!(f, "{parent}.{key}"),
            JsonPath::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// Visits a JSON value, stopping (with an error) at the first repeated key.
struct Walk<'p, 'f> {
    path: &'p JsonPath<'p>,
    found: &'f mut Option<String>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_, '_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        loop {
            let path = JsonPath::Index(self.path, i);
            if seq.next_element_seed(Walk { path: &path, found: &mut *self.found })?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                *self.found = Some(JsonPath::Key(self.path, &key).to_string());
                return Err(serde::de::Error::custom("repeated key"));
            }
            map.next_value_seed(Walk { path: &JsonPath::Key(self.path, &key), found: &mut *self.found })?;
            seen.insert(key);
        }
        Ok(())
    }
}

fn required(field: &str, value: Option<String>) -> Result<String, ApiError> {
    value.ok_or_else(|| ApiError::invalid(field, format!("`{field}` is required")))
}

/// The contract's `timestamp`, when given: an RFC 3339 date-time.
fn check_timestamp(timestamp: Option<&str>) -> Result<Option<SystemTime>, ApiError> {
    timestamp
        .map(|t| {
            rfc3339(t).ok_or_else(|| {
                ApiError::invalid(
                    "timestamp",
                    format!("`timestamp` must be an RFC 3339 date-time, got {t:?}"),
                )
            })
        })
        .transpose()
}

/// An RFC 3339 date-time in UTC (`Z`, either case) or with a numeric offset (`+01:00`), from
/// 1970 on.
pub fn rfc3339(text: &str) -> Option<SystemTime> {
    let text = text.replace('t', "T").replace('z', "Z");
    if text.ends_with('Z') {
        return humantime::parse_rfc3339_weak(&text).ok();
    }
    let split = text.len().checked_sub(6)?;
    let (local, offset) = (text.get(..split)?, text.get(split..)?.as_bytes());
    let sign = match offset[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digit = |b: u8| b.is_ascii_digit().then(|| u64::from(b - b'0'));
    if offset[3] != b':' {
        return None;
    }
    let (hours, minutes) =
        (digit(offset[1])? * 10 + digit(offset[2])?, digit(offset[4])? * 10 + digit(offset[5])?);
    if hours > 23 || minutes > 59 {
        return None;
    }
    let utc_as_local = humantime::parse_rfc3339_weak(&format!("{local}Z")).ok()?;
    // Local time = UTC + offset, so UTC = local − offset.
    let shift = std::time::Duration::from_secs((hours * 60 + minutes) * 60);
    if sign > 0 {
        utc_as_local.checked_sub(shift)
    } else {
        utc_as_local.checked_add(shift)
    }
}

fn validate(p: &OutboundMessage) -> Result<(), ApiError> {
    check_control_characters(p)?;
    check_addresses(p.channel.as_str(), &p.from, &p.to)?;
    if p.body.trim().is_empty() {
        return Err(ApiError::invalid("body", "`body` must not be empty"));
    }
    if p.channel == Channel::SMS {
        check_sms_length(&p.body)?;
    }
    if let Some(subject) = &p.subject {
        if subject.chars().count() > MAX_SUBJECT_CHARS {
            return Err(ApiError::invalid(
                "subject",
                format!("`subject` may have at most {MAX_SUBJECT_CHARS} characters"),
            ));
        }
    }
    if p.channel == Channel::MMS && p.attachments.is_empty() {
        return Err(ApiError::invalid("attachments", "an MMS needs at least one attachment"));
    }
    if p.channel == Channel::SMS && !p.attachments.is_empty() {
        return Err(ApiError::invalid(
            "attachments",
            "an SMS cannot carry attachments: send it as type \"mms\"",
        ));
    }
    check_attachment_urls(&p.attachments)?;
    if p.tags.len() > MAX_TAGS {
        return Err(ApiError::invalid("tags", format!("at most {MAX_TAGS} tags")));
    }
    for tag in &p.tags {
        if tag.is_empty() || tag.chars().count() > MAX_TAG_LEN || tag.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "tags",
                format!("tags are 1 to {MAX_TAG_LEN} printable characters"),
            ));
        }
    }
    Ok(())
}

/// `from` and `to` of the channel's form: phone numbers for SMS and MMS, email addresses for
/// email, anything not blank for another channel.
fn check_addresses(channel: &str, from: &str, to: &str) -> Result<(), ApiError> {
    for (field, value) in [("from", from), ("to", to)] {
        match channel {
            "sms" | "mms" => check_phone(field, value)?,
            "email" => check_email(field, value)?,
            _ if value.trim().is_empty() => {
                return Err(ApiError::invalid(field, format!("`{field}` must not be empty")));
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_sms_length(body: &str) -> Result<(), ApiError> {
    if body.chars().count() > SMS_MAX_CHARS {
        return Err(ApiError::invalid(
            "body",
            format!("an SMS body may have at most {SMS_MAX_CHARS} characters"),
        ));
    }
    Ok(())
}

/// At most [`MAX_ATTACHMENTS`], each an http(s) URL.
fn check_attachment_urls(attachments: &[String]) -> Result<(), ApiError> {
    if attachments.len() > MAX_ATTACHMENTS {
        return Err(ApiError::invalid("attachments", format!("at most {MAX_ATTACHMENTS} attachments")));
    }
    for (i, url) in attachments.iter().enumerate() {
        if !is_http_url(url) {
            return Err(ApiError::invalid("attachments", format!("attachment {i} is not an http(s) URL")));
        }
    }
    Ok(())
}

/// Control characters (C0, DEL, C1: NUL and U+0085 included) are refused in every field; only
/// `body` may hold line breaks and tabs. Tags and attachment URLs have their own checks.
fn check_control_characters(p: &OutboundMessage) -> Result<(), ApiError> {
    if p.body.contains(|c: char| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
        return Err(ApiError::invalid(
            "body",
            "`body` must not contain control characters other than line breaks and tabs",
        ));
    }
    for (field, value) in [("from", Some(&p.from)), ("to", Some(&p.to)), ("subject", p.subject.as_ref())] {
        if value.is_some_and(|v| v.contains(char::is_control)) {
            return Err(ApiError::invalid(
                field,
                format!("`{field}` must not contain control characters (line breaks and tabs included)"),
            ));
        }
    }
    Ok(())
}

fn check_phone(field: &str, value: &str) -> Result<(), ApiError> {
    if is_phone(value) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            format!("`{field}` must be an E.164 number (+ and 2 to 15 digits) or a short code"),
        ))
    }
}

fn check_email(field: &str, value: &str) -> Result<(), ApiError> {
    if is_email(value) {
        Ok(())
    } else {
        Err(ApiError::invalid(field, format!("`{field}` must be an email address like name@example.com")))
    }
}

/// `http://` or `https://`, a host, no whitespace or control characters.
pub fn is_http_url(value: &str) -> bool {
    let lower = value.get(..8).unwrap_or(value).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &value[8..]
    } else if lower.starts_with("http://") {
        &value[7..]
    } else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = host.rsplit('@').next().unwrap_or_default();
    value.len() <= MAX_URL_LEN
        && !host.is_empty()
        && !host.starts_with(':')
        && !value.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// How the send API would refuse a message to `to` on `channel` with `tags`, whatever its sender,
/// body and attachments: `explain` (CLI and `/admin/explain`) judges recipients as sends do.
pub fn recipient_refusal(channel: &str, to: &str, tags: &[String]) -> Option<ApiError> {
    const SENDERS: [&str; 2] = ["+15005550006", "explain@example.com"];
    const ATTACHMENTS: [&[&str]; 2] = [&[], &["https://example.com/explain.png"]];
    let mut refusal = None;
    for from in SENDERS {
        for attachments in ATTACHMENTS {
            let message = serde_json::json!({
                "channel": channel, "from": from, "to": to, "body": "explain", "attachments": attachments, "tags": tags,
            });
            match parse(Endpoint::Native, message.to_string().as_bytes(), String::new()) {
                Ok(_) => return None,
                Err(ApiError::InvalidField { field, .. }) if field == "from" || field == "attachments" => {}
                Err(other) => refusal = refusal.or(Some(other)),
            }
        }
    }
    refusal
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(validator: fn(&str) -> bool, cases: &[(&str, bool)]) {
        for (input, expected) in cases {
            assert_eq!(validator(input), *expected, "{input:?}");
        }
    }

    #[test]
    fn phones() {
        check(
            is_phone,
            &[
                ("+12016661234", true),
                ("+44", true),
                ("+123456789012345", true),
                ("+1234567890123456", false),
                ("+1", false),
                ("12345", true),
                ("12", false),
                ("123456789", false),
                ("+1 201 666 1234", false),
                ("", false),
                ("+", false),
                ("+1201666123a", false),
            ],
        );
    }

    #[test]
    fn emails() {
        check(
            is_email,
            &[
                ("contact@gmail.com", true),
                ("first.last+tag@mail.example.co.uk", true),
                ("user@localhost", false),
                ("@gmail.com", false),
                ("a@b", false),
                ("a b@c.com", false),
                ("a@b..com", false),
                ("a@-b.com", false),
                ("Name <a@b.com>", false),
                (".a@b.com", false),
                ("a@b.com\r\nBcc: x@y.com", false),
            ],
        );
    }

    #[test]
    fn urls() {
        check(
            is_http_url,
            &[
                ("https://example.com/a.png", true),
                ("HTTP://example.com", true),
                ("http://127.0.0.1:8080/x?y#z", true),
                ("ftp://example.com/a", false),
                ("https://", false),
                ("https:///path", false),
                ("https://exa mple.com", false),
                ("javascript:alert(1)", false),
                ("", false),
            ],
        );
    }

    /// An error as the cases write it: its code and the field it names.
    fn shape(error: ApiError) -> (&'static str, Option<String>) {
        match error {
            ApiError::InvalidField { field, .. } => ("invalid_field", Some(field)),
            ApiError::DuplicateField { field } => ("duplicate_field", Some(field)),
            other => (other.code(), None),
        }
    }

    fn check_body(endpoint: Endpoint, body: &str, expected: Result<(), (&str, Option<&str>)>) {
        let got = parse(endpoint, body.as_bytes(), "id".into()).map(|_| ()).map_err(shape);
        let expected = expected.map_err(|(code, field)| (code, field.map(str::to_owned)));
        assert_eq!(got, expected, "{body}");
    }

    #[test]
    fn bodies() {
        use Endpoint::*;
        let sms = r#"{"from":"+12016661234","to":"+18045551234","type":"sms","body":"Hello","attachments":null,"timestamp":"2024-11-01T14:00:00Z"}"#;
        check_body(LegacySms, sms, Ok(()));
        check_body(LegacySms, &sms.replace("\"Hello\"", "\"\""), Err(("invalid_field", Some("body"))));
        check_body(LegacySms, &sms.replace("\"sms\"", "\"fax\""), Err(("invalid_field", Some("type"))));
        check_body(
            LegacySms,
            &sms.replace("\"sms\"", "\"mms\""),
            Err(("invalid_field", Some("attachments"))),
        );
        check_body(
            LegacySms,
            &sms.replace("2024-11-01T14:00:00Z", "yesterday"),
            Err(("invalid_field", Some("timestamp"))),
        );
        check_body(LegacySms, &sms.replace("\"Hello\"", "5"), Err(("invalid_field", Some("body"))));
        check_body(LegacySms, &sms.replace("\"sms\",", "\"sms\",\"extra\":{\"x\":1},"), Ok(()));
        check_body(LegacySms, "[1]", Err(("invalid_json", None)));
        check_body(LegacySms, "{", Err(("invalid_json", None)));
        check_body(LegacySms, &format!("{sms} x"), Err(("invalid_json", None)));
        let email = r#"{"from":"user@usehatchapp.com","to":"contact@gmail.com","body":"<b>hi</b>","attachments":[],"timestamp":"2024-11-01T14:00:00Z"}"#;
        check_body(LegacyEmail, email, Ok(()));
        check_body(
            LegacyEmail,
            &email.replace("contact@gmail.com", "contact"),
            Err(("invalid_field", Some("to"))),
        );
        let native =
            r#"{"channel":"email","from":"a@b.com","to":"c@d.com","subject":"Hi","body":"x","tags":["otp"]}"#;
        check_body(Native, native, Ok(()));
        check_body(
            Native,
            &native.replace("\"Hi\"", "\"Hi\\r\\nBcc: e@f.com\""),
            Err(("invalid_field", Some("subject"))),
        );
        // A well-formed name is the parser's to accept; whether anything serves it is accepting's.
        check_body(Native, &native.replace("\"email\"", "\"pager\""), Ok(()));
        check_body(
            Native,
            &native.replace("\"email\"", "\"Pager!\""),
            Err(("invalid_field", Some("channel"))),
        );
        check_body(Native, &native.replace("[\"otp\"]", "[\"\"]"), Err(("invalid_field", Some("tags"))));
    }

    fn check_webhook(webhook: Webhook, body: &str, expected: Result<(&str, &str), (&str, Option<&str>)>) {
        let got = parse_webhook(webhook, body.as_bytes()).map_err(shape);
        let got = got
            .as_ref()
            .map(|m| (m.channel.as_str(), m.provider_message_id.as_str()))
            .map_err(|(c, f)| (*c, f.as_deref()));
        assert_eq!(got, expected, "{body}");
    }

    #[test]
    fn webhooks() {
        use Webhook::*;
        let sms = r#"{"from":"+18045551234","to":"+12016661234","type":"sms","messaging_provider_id":"message-1","body":"text message","attachments":null,"timestamp":"2024-11-01T14:00:00Z"}"#;
        check_webhook(Sms, sms, Ok(("sms", "message-1")));
        let mms = sms.replace("\"sms\"", "\"mms\"").replace("null", "[\"https://example.com/a.png\"]");
        check_webhook(Sms, &mms, Ok(("mms", "message-1")));
        check_webhook(Sms, &sms.replace("\"sms\"", "\"mms\""), Err(("invalid_field", Some("attachments"))));
        check_webhook(
            Sms,
            &sms.replace("\"message-1\"", "\"\""),
            Err(("invalid_field", Some("messaging_provider_id"))),
        );
        check_webhook(
            Sms,
            &sms.replace("\"message-1\"", "7"),
            Err(("invalid_field", Some("messaging_provider_id"))),
        );
        check_webhook(
            Sms,
            &sms.replace("\"messaging_provider_id\":\"message-1\",", ""),
            Err(("invalid_field", Some("messaging_provider_id"))),
        );
        check_webhook(
            Sms,
            &sms.replace("message-1", &"x".repeat(256)),
            Err(("invalid_field", Some("messaging_provider_id"))),
        );
        check_webhook(
            Sms,
            &sms.replace("+18045551234", "not-a-number"),
            Err(("invalid_field", Some("from"))),
        );
        check_webhook(
            Sms,
            &sms.replace("2024-11-01T14:00:00Z", "soon"),
            Err(("invalid_field", Some("timestamp"))),
        );
        check_webhook(Sms, &sms.replace("\"sms\"", "\"fax\""), Err(("invalid_field", Some("type"))));
        check_webhook(Sms, &sms.replace("\"text message\"", "\"\""), Err(("invalid_field", Some("body"))));
        check_webhook(
            Sms,
            &sms.replace("\"to\":", "\"from\":\"+1\",\"to\":"),
            Err(("duplicate_field", Some("from"))),
        );
        check_webhook(Sms, "[]", Err(("invalid_json", None)));
        let email = r#"{"from":"contact@gmail.com","to":"user@usehatchapp.com","xillio_id":"message-2","body":"<html><body>html is <b>allowed</b> here </body></html>","attachments":["https://example.com/a.pdf"],"timestamp":"2024-11-01T14:00:00Z"}"#;
        check_webhook(Email, email, Ok(("email", "message-2")));
        check_webhook(
            Email,
            &email.replace("contact@gmail.com", "contact"),
            Err(("invalid_field", Some("from"))),
        );
        check_webhook(
            Email,
            &email.replace("\"message-2\"", "null"),
            Err(("invalid_field", Some("xillio_id"))),
        );
        check_webhook(
            Email,
            &email.replace("https://example.com/a.pdf", "ftp://x/a"),
            Err(("invalid_field", Some("attachments"))),
        );
        let parsed = parse_webhook(Sms, sms.as_bytes()).ok().and_then(|m| m.timestamp);
        assert_eq!(parsed, humantime::parse_rfc3339_weak("2024-11-01T14:00:00Z").ok());
    }

    fn check_provider_message(from: &str, body: &str, attachments: &[&str], expected: Result<(), &str>) {
        let incoming = Incoming {
            channel: if attachments.is_empty() { Channel::SMS } else { Channel::MMS },
            from: from.into(),
            to: "+12016661234".into(),
            subject: None,
            body: body.into(),
            attachments: attachments.iter().map(|a| (*a).to_owned()).collect(),
            provider_message_id: "SM1".into(),
            timestamp: None,
        };
        let got = check_incoming(&incoming).map_err(|e| match e {
            ApiError::InvalidField { field, .. } => field,
            other => other.code().to_owned(),
        });
        assert_eq!(got, expected.map_err(str::to_owned), "{from} {body:?} {attachments:?}");
    }

    #[test]
    fn provider_messages() {
        check_provider_message("+18045551234", "hi", &[], Ok(()));
        check_provider_message("+18045551234", "", &["https://api.twilio.com/m/1"], Ok(()));
        check_provider_message("+18045551234", "line\nbreak", &[], Ok(()));
        check_provider_message("whatsapp:+18045551234", "hi", &[], Err("from"));
        check_provider_message("+1804555\u{0}1234", "hi", &[], Err("from"));
        check_provider_message("+18045551234", &"x".repeat(SMS_MAX_CHARS + 1), &[], Err("body"));
        check_provider_message("+18045551234", "", &["javascript:alert(1)"], Err("attachments"));
        check_provider_message("+18045551234", "", &["https://a.example/x"; 11], Err("attachments"));
    }

    #[test]
    fn timestamps() {
        let utc = humantime::parse_rfc3339_weak("2024-11-01T14:00:00Z").ok();
        for (text, expected) in [
            ("2024-11-01T14:00:00Z", utc),
            ("2024-11-01t14:00:00z", utc),
            ("2024-11-01T15:00:00+01:00", utc),
            ("2024-11-01T09:00:00-05:00", utc),
            ("2024-11-01T14:00:00+00:00", utc),
            ("2024-11-01T14:00:00.250Z", utc.map(|t| t + std::time::Duration::from_millis(250))),
            ("2024-11-01T14:00:00+24:00", None),
            ("2024-11-01T14:00:00+0100", None),
            ("2024-11-01T14:00:00", None),
            ("2024-11-01T14:00:00+01:0é", None),
            ("yesterday", None),
            ("", None),
            ("+01:00", None),
        ] {
            assert_eq!(rfc3339(text), expected, "{text}");
        }
    }

    #[test]
    fn repeated_keys() {
        for (body, expected) in [
            (r#"{"to":"a","to":"b"}"#, Some("to")),
            (r#"{"to":"a","t\u006f":"b"}"#, Some("to")),
            (r#"{"x":1,"extra":{"y":[1,{"z":2,"z":3}]}}"#, Some("extra.y[1].z")),
            (r#"{"a":{"k":1},"b":{"k":1}}"#, None),
            (r#"[{"k":1},{"k":1}]"#, None),
            (r#"{"to":"a","#, None),
            ("", None),
        ] {
            assert_eq!(repeated_key(body.as_bytes()).as_deref(), expected, "{body}");
        }
    }

    #[test]
    fn control_characters() {
        use Endpoint::*;
        let native = r#"{"channel":"email","from":"a@b.com","to":"c@d.com","subject":"Hi","body":"x"}"#;
        let with = |field: &str, value: &str| {
            native.replace(&format!(r#""{field}":"#), &format!(r#""{field}":{value},"_{field}":"#))
        };
        for (body, expected) in [
            (with("body", r#""line\r\nbreak\tand tab""#), Ok(())),
            (with("body", r#""nul\u0000""#), Err(("invalid_field", Some("body")))),
            (with("body", r#""nel\u0085""#), Err(("invalid_field", Some("body")))),
            (with("body", r#""esc\u001b[31m""#), Err(("invalid_field", Some("body")))),
            (with("body", r#""del\u007f""#), Err(("invalid_field", Some("body")))),
            (with("subject", r#""tab\there""#), Err(("invalid_field", Some("subject")))),
            (with("subject", r#""nul\u0000""#), Err(("invalid_field", Some("subject")))),
            (with("subject", r#""nel\u0085""#), Err(("invalid_field", Some("subject")))),
            (with("subject", r#""Grüße, ☃""#), Ok(())),
            (with("to", r#""c@d.com\u0000""#), Err(("invalid_field", Some("to")))),
            (
                r#"{"channel":"email","from":"a@b.com","to":"c@d.com","body":"x","to":"e@f.com"}"#.to_owned(),
                Err(("duplicate_field", Some("to"))),
            ),
        ] {
            check_body(Native, &body, expected);
        }
    }
}

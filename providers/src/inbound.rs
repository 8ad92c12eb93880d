//! What providers post back to Switchboard: the plugin side of `POST /v1/inbound/{kind}/{provider}`.
//! A kind that takes inbound messages implements [`crate::Provider::receive`]: it checks that the
//! request came from the provider (its signature or shared secret), parses the provider's own
//! format into [`Incoming`] messages and says what to answer. The service stores the messages
//! (conversations, de-duplication, opt-outs); the kind never sees the store.
//!
//! These URLs need no API key, so a kind also filters what it can before the body is read:
//! [`crate::Provider::admit`] sees only the [`InboundHead`] (content type, credential headers),
//! and [`crate::Provider::max_inbound_body`] bounds how much the service reads. `receive` still
//! does every check itself: it is safe to call without `admit`.

use std::time::SystemTime;

use crate::Channel;

/// What the service knows of a request before it reads the body.
#[derive(Debug, Clone, Copy)]
pub struct InboundHead<'a> {
    /// The request target as received: path and query (`/v1/inbound/twilio/tw?x=1`).
    pub path_and_query: &'a str,
    /// Every header; names are lower-case.
    pub headers: &'a reqwest::header::HeaderMap,
}

/// One request as the service received it. Its body was read in full, within the service's
/// inbound size limit and the kind's [`crate::Provider::max_inbound_body`].
#[derive(Debug, Clone, Copy)]
pub struct InboundRequest<'a> {
    /// The request target as received: path and query (`/v1/inbound/twilio/tw?x=1`). A kind that
    /// signs URLs joins it to its own public base URL setting.
    pub path_and_query: &'a str,
    /// Every header; names are lower-case.
    pub headers: &'a reqwest::header::HeaderMap,
    pub body: &'a [u8],
}

impl<'a> InboundRequest<'a> {
    /// The request without its body: what [`crate::Provider::admit`] is given.
    pub fn head(&self) -> InboundHead<'a> {
        InboundHead { path_and_query: self.path_and_query, headers: self.headers }
    }
}

/// A message the provider delivered to one of our numbers or addresses.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub channel: Channel,
    /// The other party.
    pub from: String,
    /// Our number or address it was sent to.
    pub to: String,
    pub subject: Option<String>,
    pub body: String,
    /// http(s) URLs of its media.
    pub attachments: Vec<String>,
    /// The provider's id for it (Twilio's `MessageSid`, an email's `Message-ID`): a redelivery
    /// carries the same one.
    pub provider_message_id: String,
    /// When the provider says it was sent, if it says.
    pub timestamp: Option<SystemTime>,
}

/// What the kind accepted, and the answer the provider expects (`200` with this body).
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    pub messages: Vec<Incoming>,
    /// `Content-Type` of the answer (`text/xml` for Twilio's empty TwiML).
    pub content_type: &'static str,
    pub answer: String,
}

/// Why an inbound request was refused. Nothing of it is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboundError {
    /// This kind takes no inbound messages (the service answers 404).
    #[error("this provider kind takes no inbound messages")]
    NotSupported,
    /// The request's signature or secret is missing or wrong (403 `invalid_signature`). The
    /// text says which check failed, never the expected value.
    #[error("{0}")]
    InvalidSignature(String),
    /// The request is not in the provider's format or a field is unusable (400, naming the
    /// provider's field).
    #[error("`{field}`: {message}")]
    Invalid { field: String, message: String },
    /// The content type is not the one the provider sends (415).
    #[error("expected a {expected} body")]
    UnsupportedMediaType { expected: &'static str },
}

impl InboundError {
    pub fn invalid(field: &str, message: impl Into<String>) -> InboundError {
        InboundError::Invalid { field: field.to_owned(), message: message.into() }
    }
}

/// Whether the request's `Content-Type` is `expected` (parameters such as `charset` aside).
pub(crate) fn has_media_type(headers: &reqwest::header::HeaderMap, expected: &str) -> bool {
    let value = headers.get(reqwest::header::CONTENT_TYPE).and_then(|value| value.to_str().ok());
    value.is_some_and(|value| {
        value.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case(expected)
    })
}

//! What a provider is given (an [`OutboundMessage`]) and what it answers: a [`Receipt`] or a
//! [`SendError`] whose [`ErrorClass`] tells the dispatcher whether to retry, fail over or stop.

use std::fmt;
use std::time::Duration;

use crate::Channel;

/// One message to hand to a provider.
///
/// `Debug` masks the recipient and leaves the body out: messages may be logged, bodies never.
#[derive(Clone)]
pub struct OutboundMessage {
    /// Switchboard's own id; providers that can carry a reference should pass it on.
    pub id: String,
    pub channel: Channel,
    pub from: String,
    pub to: String,
    pub subject: Option<String>,
    pub body: String,
    /// http(s) URLs.
    pub attachments: Vec<String>,
    pub tags: Vec<String>,
}

impl fmt::Debug for OutboundMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundMessage")
            .field("id", &self.id)
            .field("channel", &self.channel)
            .field("to", &mask_recipient(&self.to))
            .field("body_bytes", &self.body.len())
            .field("attachments", &self.attachments.len())
            .field("tags", &self.tags)
            .finish_non_exhaustive()
    }
}

/// A provider accepted the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The provider's own id for the message, when it returns one.
    pub provider_message_id: Option<String>,
}

/// How a failed send must be treated. Retries and circuit breakers are driven by this alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Nothing reached the provider (or it refused with 429): safe to retry.
    NotSent,
    /// The request was written but the outcome is unknown (timeout, 5xx): may have been sent.
    Ambiguous,
    /// The provider refused this message (4xx): retrying cannot help.
    Rejected,
    /// The provider refused our credentials (401/403): the provider's config is wrong.
    Misconfigured,
}

/// Why a provider did not send a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Could not reach the provider (connect, DNS or TLS failure before anything was written).
    #[error("not sent: {reason}")]
    NotSent { reason: String },
    /// The provider answered 429.
    #[error("rate limited by the provider")]
    RateLimited { retry_after: Option<Duration> },
    /// No answer within the attempt's timeout.
    #[error("timed out waiting for the provider")]
    Timeout,
    /// A 5xx, or the connection broke after the request was written.
    #[error("provider error {code}: {reason}")]
    Ambiguous { code: String, reason: String },
    /// A 4xx other than 401/403/429.
    #[error("rejected by the provider ({code}): {reason}")]
    Rejected { code: String, reason: String },
    /// 401 or 403: credentials are wrong or lack permission.
    #[error("provider refused the credentials ({code}): {reason}")]
    Misconfigured { code: String, reason: String },
}

impl SendError {
    pub fn class(&self) -> ErrorClass {
        match self {
            SendError::NotSent { .. } | SendError::RateLimited { .. } => ErrorClass::NotSent,
            SendError::Timeout | SendError::Ambiguous { .. } => ErrorClass::Ambiguous,
            SendError::Rejected { .. } => ErrorClass::Rejected,
            SendError::Misconfigured { .. } => ErrorClass::Misconfigured,
        }
    }

    /// The provider's error code, if it gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            SendError::Ambiguous { code, .. }
            | SendError::Rejected { code, .. }
            | SendError::Misconfigured { code, .. } => Some(code),
            SendError::RateLimited { .. } => Some("429"),
            SendError::NotSent { .. } | SendError::Timeout => None,
        }
    }

    /// How long the provider asked us to wait, for a 429 that said so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SendError::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }
}

/// A recipient fit for logs: `+12016661234` → `+1201****234`, `contact@gmail.com` →
/// `c***@gmail.com`. Short values keep only their first character.
pub fn mask_recipient(recipient: &str) -> String {
    if let Some((local, domain)) = recipient.rsplit_once('@') {
        let first: String = local.chars().take(1).collect();
        return format!("{first}***@{domain}");
    }
    let chars: Vec<char> = recipient.chars().collect();
    if chars.len() > 8 {
        let head: String = chars[..5].iter().collect();
        let tail: String = chars[chars.len() - 3..].iter().collect();
        format!("{head}{}{tail}", "*".repeat(chars.len() - 8))
    } else {
        let first: String = chars.iter().take(1).collect();
        format!("{first}***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(recipient: &str, expected: &str) {
        assert_eq!(mask_recipient(recipient), expected, "{recipient:?}");
    }

    #[test]
    fn masks() {
        check("+12016661234", "+1201****234");
        check("+447700900123", "+4477*****123");
        check("contact@gmail.com", "c***@gmail.com");
        check("a@b", "a***@b");
        check("@b", "***@b");
        check("12345", "1***");
        check("", "***");
        check("+12é45678901", "+12é4****901");
    }

    #[test]
    fn classes() {
        let cases = [
            (SendError::NotSent { reason: "refused".into() }, ErrorClass::NotSent),
            (SendError::RateLimited { retry_after: None }, ErrorClass::NotSent),
            (SendError::Timeout, ErrorClass::Ambiguous),
            (SendError::Ambiguous { code: "503".into(), reason: String::new() }, ErrorClass::Ambiguous),
            (SendError::Rejected { code: "400".into(), reason: String::new() }, ErrorClass::Rejected),
            (
                SendError::Misconfigured { code: "401".into(), reason: String::new() },
                ErrorClass::Misconfigured,
            ),
        ];
        for (error, class) in cases {
            assert_eq!(error.class(), class, "{error:?}");
        }
    }

    #[test]
    fn debug_hides_body_and_recipient() {
        let message = OutboundMessage {
            id: "m1".into(),
            channel: Channel::SMS,
            from: "+15550001111".into(),
            to: "+12016661234".into(),
            subject: None,
            body: "secret body".into(),
            attachments: vec![],
            tags: vec![],
        };
        let shown = format!("{message:?}");
        assert!(!shown.contains("secret body"), "{shown}");
        assert!(!shown.contains("+12016661234"), "{shown}");
        assert!(shown.contains("+1201****234"), "{shown}");
    }
}

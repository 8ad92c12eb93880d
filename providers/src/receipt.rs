//! What providers report about messages already sent: the plugin side of
//! `POST /v1/receipts/{kind}/{provider}` (delivery receipts, status callbacks, event webhooks).
//!
//! A kind that takes receipts implements [`crate::Provider::admit_receipts`] (what the headers
//! alone can refuse) and [`crate::Provider::receipts`]: it checks the request came from the
//! provider (signature, and its age where the provider signs a time), parses the provider's
//! events into [`ProviderReceipt`]s in Switchboard's words ([`DeliveryStatus`]) and says what to
//! answer. The service finds each receipt's message, records the event, moves the message's
//! delivery status forward and adds suppressed addresses; the kind never sees the store.

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use crate::Channel;

/// How old a signed timestamp may be (either way) before the request is refused as a replay.
pub const MAX_SIGNATURE_AGE: Duration = Duration::from_secs(5 * 60);

/// Where a message is after a provider took it, as the provider reported it. Only moves forward
/// (see [`DeliveryStatus::may_follow`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// The provider sent it on (Twilio `sent`, SendGrid `processed`).
    Sent,
    /// The provider keeps trying (SendGrid `deferred`).
    Deferred,
    /// The recipient's carrier or mail server took it.
    Delivered,
    /// The carrier failed it after the provider took it (Twilio `undelivered`, `failed`).
    Undelivered,
    /// The recipient's mail server refused it.
    Bounced,
    /// The provider did not send it (SendGrid `dropped`).
    Dropped,
    /// An email was opened.
    Opened,
    /// An SMS was read (where the provider reports it).
    Read,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 8] = [
        DeliveryStatus::Sent,
        DeliveryStatus::Deferred,
        DeliveryStatus::Delivered,
        DeliveryStatus::Undelivered,
        DeliveryStatus::Bounced,
        DeliveryStatus::Dropped,
        DeliveryStatus::Opened,
        DeliveryStatus::Read,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Deferred => "deferred",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Undelivered => "undelivered",
            DeliveryStatus::Bounced => "bounced",
            DeliveryStatus::Dropped => "dropped",
            DeliveryStatus::Opened => "opened",
            DeliveryStatus::Read => "read",
        }
    }

    /// The status named `text` (as [`DeliveryStatus::as_str`] writes it).
    pub fn parse(text: &str) -> Option<DeliveryStatus> {
        DeliveryStatus::ALL.into_iter().find(|status| status.as_str() == text)
    }

    /// How far along the way it is: sent < deferred < an outcome < opened/read.
    fn rank(self) -> u8 {
        match self {
            DeliveryStatus::Sent => 1,
            DeliveryStatus::Deferred => 2,
            DeliveryStatus::Delivered
            | DeliveryStatus::Undelivered
            | DeliveryStatus::Bounced
            | DeliveryStatus::Dropped => 3,
            DeliveryStatus::Opened | DeliveryStatus::Read => 4,
        }
    }

    /// Whether it is a failure: nothing follows it.
    pub fn is_failure(self) -> bool {
        matches!(self, DeliveryStatus::Undelivered | DeliveryStatus::Bounced | DeliveryStatus::Dropped)
    }

    /// Whether a message whose delivery status is `current` moves to `self`: only forward
    /// (`deferred` → `delivered`, `delivered` → `opened`), never out of a failure, never back —
    /// a late `delivered` after `opened` is an event only.
    pub fn may_follow(self, current: Option<DeliveryStatus>) -> bool {
        match current {
            None => true,
            Some(current) => !current.is_failure() && self.rank() > current.rank(),
        }
    }
}

/// One event a provider reported about one message.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderReceipt {
    /// Switchboard's message id, when the provider echoes it (SendGrid `custom_args`, the
    /// `webhook` kind's `id`).
    pub message_id: Option<String>,
    /// The provider's id for the message as the send recorded it (Twilio's `MessageSid`;
    /// SendGrid's `X-Message-Id`, the part of `sg_message_id` before its first `.`).
    pub provider_message_id: Option<String>,
    /// The event's name in the timeline: the delivery status it reports, else the provider's own
    /// name for it (`spamreport`, `click`, `queued`).
    pub event: String,
    /// The delivery status it reports; `None`: recorded as an event only.
    pub status: Option<DeliveryStatus>,
    /// When the provider says it happened; else the time it was received.
    pub time: Option<SystemTime>,
    /// An address to add to the suppression list (a bounce, a drop for an invalid or bounced
    /// address, a spam report), on `channel`.
    pub suppress: Option<(Channel, String)>,
    /// The provider's raw status fields (status, error code, reason): shown as the event's
    /// `detail`. Never credentials; the service masks recipients before storing it.
    pub detail: Map<String, Value>,
}

/// What the kind accepted, and the answer the provider expects (`200` with this body).
#[derive(Debug, Clone, PartialEq)]
pub struct Receipts {
    pub receipts: Vec<ProviderReceipt>,
    /// `Content-Type` of the answer.
    pub content_type: &'static str,
    pub answer: String,
}

#[cfg(test)]
mod tests {
    use super::DeliveryStatus::{self, *};

    fn check(current: Option<DeliveryStatus>, next: DeliveryStatus, moves: bool) {
        assert_eq!(next.may_follow(current), moves, "{current:?} → {next:?}");
    }

    #[test]
    fn delivery_status_only_moves_forward() {
        for status in DeliveryStatus::ALL {
            check(None, status, true);
            check(Some(status), status, false);
            assert_eq!(DeliveryStatus::parse(status.as_str()), Some(status));
        }
        check(Some(Sent), Deferred, true);
        check(Some(Sent), Delivered, true);
        check(Some(Deferred), Delivered, true);
        check(Some(Deferred), Bounced, true);
        check(Some(Deferred), Dropped, true);
        check(Some(Delivered), Opened, true);
        check(Some(Delivered), Read, true);
        check(Some(Delivered), Sent, false);
        check(Some(Delivered), Deferred, false);
        check(Some(Delivered), Bounced, false);
        check(Some(Opened), Delivered, false);
        check(Some(Bounced), Delivered, false);
        check(Some(Bounced), Opened, false);
        check(Some(Undelivered), Read, false);
        check(Some(Deferred), Sent, false);
        assert_eq!(DeliveryStatus::parse("bounce"), None);
    }
}

//! What happens to a message after a provider took it: providers' receipts (recorded as
//! [`Event`]s, moving its forward-only [`DeliveryStatus`]), the suppression list (addresses that
//! bounced or complained, kept with the opt-outs under the sender [`SUPPRESSED_SENDER`]) and the
//! callback outbox ([`CallbackJob`]: one row per change of a message's `status` or
//! `delivery_status` that its caller asked to be told of).

use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::{Map, Value};
use switchboard_providers::receipt::DeliveryStatus;

use super::conversation::{family, mailbox, normalize, OptOutKey};
use super::{rfc3339, MessageView, Status};

/// The opt-out "sender" of a suppressed address: it gets no message on its channel family from
/// any sender. Shown as such by `GET /v1/opt-outs` and removed by
/// `DELETE /v1/opt-outs/{channel}/*/{recipient}`.
pub const SUPPRESSED_SENDER: &str = "*";

/// Why a send to a suppressed address is refused (422 `recipient_suppressed`) or ends failed.
pub const SUPPRESSED: &str =
    "the recipient's address is on the suppression list (it bounced, was dropped as invalid, or reported spam)";

impl OptOutKey {
    /// The suppression of `address` on `channel`'s family (every sender).
    pub fn suppression(channel: &str, address: &str) -> OptOutKey {
        let family = family(channel);
        let recipient = match family {
            "email" => mailbox(address),
            _ => normalize(family, address),
        };
        OptOutKey { family: family.to_owned(), sender: SUPPRESSED_SENDER.to_owned(), recipient }
    }

    /// Whether this is a suppression rather than one recipient's opt-out from one sender.
    pub fn is_suppression(&self) -> bool {
        self.sender == SUPPRESSED_SENDER
    }
}

/// The most provider events kept per message: a replayed receipt (Twilio signs no time, so a
/// captured one stays valid) cannot grow a message's timeline, its `GET` or its callbacks without
/// bound. Receipts beyond it still move the delivery status; they are only counted.
pub const MAX_EVENTS: usize = 100;

/// The `type` of the event a retry adds to a message's timeline; its `detail` is the error the
/// message had failed with (`{"code", "message"}`).
pub const RETRIED_EVENT: &str = "retried";

/// The `detail` of a [`RETRIED_EVENT`]: the failure it ended.
pub fn retried_detail(code: Option<&str>, message: Option<&str>) -> serde_json::Value {
    serde_json::json!({"code": code, "message": message})
}

/// Who an event is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A provider's receipt.
    Provider,
    /// Switchboard itself (accepted, attempts started, sent or failed).
    Switchboard,
}

/// One entry of a message's timeline (`events` of `GET /v1/messages/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Event {
    #[serde(serialize_with = "rfc3339")]
    #[schema(schema_with = crate::api_schema::date_time)]
    pub time: SystemTime,
    pub source: Source,
    /// A delivery status, a `status`, or the provider's own event name.
    #[serde(rename = "type")]
    pub kind: String,
    #[schema(value_type = Option<String>)]
    pub provider: Option<Arc<str>>,
    /// The provider's raw status fields, or Switchboard's error code.
    #[schema(schema_with = crate::api_schema::any_value)]
    pub detail: Value,
}

/// A provider's receipt as the store records it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiptRecord {
    /// The provider (by name) that posted it: only messages it handled are matched by
    /// `provider_message_id`.
    pub provider: String,
    pub message_id: Option<String>,
    pub provider_message_id: Option<String>,
    pub event: String,
    pub status: Option<DeliveryStatus>,
    pub time: SystemTime,
    /// Recorded only when the receipt matched a message of its provider: a provider cannot
    /// suppress an address for messages it did not handle.
    pub suppress: Option<OptOutKey>,
    /// Recipients already masked.
    pub detail: Map<String, Value>,
}

/// What recording one receipt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptApplied {
    /// No message of this provider matches: acknowledged and counted, nothing recorded.
    Unknown,
    /// Recorded as an event of `message_id`; `moved`: its delivery status became the receipt's.
    Recorded { message_id: String, moved: bool },
}

/// One callback to deliver: the change of `status` / `delivery_status` it tells of. Delivered
/// in order per message ([`crate::store::MessageStore::due_callbacks`] gives only each
/// message's oldest).
#[derive(Debug, Clone, PartialEq)]
pub struct CallbackJob {
    /// The outbox row.
    pub id: i64,
    /// The Standard Webhooks `webhook-id`: the same on every retry.
    pub webhook_id: String,
    pub message_id: String,
    pub url: String,
    pub status: Status,
    pub delivery_status: Option<DeliveryStatus>,
    /// When the change happened: the callback is dropped 24 h after.
    pub created_at: SystemTime,
    /// Deliveries tried so far.
    pub attempts: u32,
}

/// The timeline `GET /v1/messages/{id}` shows: Switchboard's own events, drawn from the message
/// (accepted, first attempt, how it ended), and the recorded ones — providers' receipts and
/// Switchboard's `retried` — oldest first.
pub fn timeline(view: &MessageView, receipts: Vec<Event>) -> Vec<Event> {
    let switchboard = |time, kind: &str, provider: Option<Arc<str>>, detail| Event {
        time,
        source: Source::Switchboard,
        kind: kind.to_owned(),
        provider,
        detail,
    };
    let mut events = Vec::with_capacity(receipts.len() + 3);
    if view.status == Status::Received {
        events.push(switchboard(view.created_at, "received", None, Value::Null));
    } else {
        events.push(switchboard(view.created_at, "queued", None, Value::Null));
    }
    if let Some(first) = view.attempts.first() {
        let started = first.time.checked_sub(std::time::Duration::from_millis(first.latency_ms));
        events.push(switchboard(
            started.unwrap_or(first.time),
            "sending",
            Some(first.provider.clone()),
            Value::Null,
        ));
    }
    // When it ended: its last attempt's end (`updated_at` moves with every receipt since), and
    // never before it was last retried (a retry that failed before any attempt of its own).
    let ended = view.attempts.last().map_or(view.updated_at, |attempt| attempt.time);
    let retried = receipts
        .iter()
        .filter(|event| event.source == Source::Switchboard && event.kind == RETRIED_EVENT)
        .map(|event| event.time)
        .max();
    let ended = retried.map_or(ended, |retried| ended.max(retried));
    match view.status {
        Status::Sent => events.push(switchboard(ended, "sent", view.provider.clone(), Value::Null)),
        Status::Failed => {
            let detail = view
                .error
                .as_ref()
                .map_or(Value::Null, |failure| serde_json::json!({"code": failure.code.as_str()}));
            events.push(switchboard(ended, "failed", view.provider.clone(), detail));
        }
        Status::Queued | Status::Sending | Status::Received => {}
    }
    events.extend(receipts);
    // Stable: events of one time keep their order (Switchboard's first, receipts as recorded).
    events.sort_by_key(|event| event.time);
    events
}

/// A delivery status as stored; an unknown text (written by a newer version) reads as none.
pub fn delivery_status_of(text: Option<&str>) -> Option<DeliveryStatus> {
    text.and_then(DeliveryStatus::parse)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Attempt, Direction, Outcome};
    use std::time::Duration;

    /// A sent message whose only attempt ended at `t + 1s` and whose `updated_at` is `t + 9s`
    /// (a receipt moved it since).
    fn sent_view(t: SystemTime) -> MessageView {
        MessageView {
            id: "m".into(),
            channel: switchboard_providers::Channel::SMS,
            from: "+15550001111".into(),
            to: "+15550002222".into(),
            attachments: vec![],
            status: Status::Sent,
            provider: Some(Arc::from("tw")),
            provider_message_id: Some("SM1".into()),
            attempts: vec![Attempt {
                provider: Arc::from("tw"),
                outcome: Outcome::Success,
                error_class: None,
                error_code: None,
                error_message: None,
                latency_ms: 500,
                time: t + Duration::from_secs(1),
            }],
            error: None,
            tags: vec![],
            direction: Direction::Outbound,
            conversation_id: Some(1),
            delivery_status: Some(DeliveryStatus::Delivered),
            status_callback: None,
            events: vec![],
            owner: None,
            created_at: t,
            updated_at: t + Duration::from_secs(9),
        }
    }

    #[test]
    fn the_timeline_is_oldest_first_and_ends_a_send_when_its_last_attempt_ended() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let delivered = Event {
            time: t + Duration::from_secs(5),
            source: Source::Provider,
            kind: "delivered".into(),
            provider: Some(Arc::from("tw")),
            detail: Value::Null,
        };
        let events = timeline(&sent_view(t), vec![delivered]);
        let got: Vec<(&str, u64)> = events
            .iter()
            .map(|e| (e.kind.as_str(), e.time.duration_since(t).map_or(99, |d| d.as_millis() as u64)))
            .collect();
        assert_eq!(got, [("queued", 0), ("sending", 500), ("sent", 1000), ("delivered", 5000)]);
    }

    #[test]
    fn suppressions_are_opt_outs_from_every_sender() {
        let key = OptOutKey::suppression("email", " Bob@Example.COM ");
        assert_eq!(key.recipient, "bob@example.com");
        assert_eq!(OptOutKey::suppression("email", "Bob+news@Example.com").recipient, "bob@example.com");
        assert!(key.is_suppression());
        assert_eq!(OptOutKey::suppression("mms", "+1 (555) 000-1111").family, "sms");
        assert!(!OptOutKey::of("sms", "+15550001111", "+15550002222").is_suppression());
    }
}

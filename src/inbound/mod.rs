//! Taking messages in: what the generic webhooks (`/api/webhooks/sms|email`) and the providers'
//! own inbound URLs (`/v1/inbound/{kind}/{provider}`) received, after the HTTP layer parsed and
//! verified it. One operation, [`Receiver::receive`]: read the body for an opt-out keyword, then
//! store the message in its conversation with that opt-out change, all in one write (a
//! redelivery stores nothing and answers the first delivery's id).

use std::sync::Arc;
use std::time::SystemTime;

use switchboard_providers::inbound::Incoming;
use switchboard_providers::mask_recipient;
use switchboard_providers::receipt::ProviderReceipt;

use crate::metrics::Metrics;
use crate::store::conversation::family;
use crate::store::{
    InboundMessage, MessageStore, OptChange, OptOutKey, ReceiptApplied, ReceiptRecord, Received, StoreError,
};

/// The longest event name kept (a provider's own names are short).
const MAX_EVENT_CHARS: usize = 64;

/// Bodies that opt the sender out of messages from the number it wrote to (whole body, trimmed,
/// any case).
pub const OPT_OUT_KEYWORDS: [&str; 6] = ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"];
/// Bodies that remove that opt-out.
pub const OPT_IN_KEYWORDS: [&str; 3] = ["START", "YES", "UNSTOP"];

/// The opt-out change an inbound message on `channel` with `body` makes: only SMS and MMS
/// carry keywords.
pub fn opt_change(channel: &str, body: &str) -> Option<OptChange> {
    if family(channel) != "sms" {
        return None;
    }
    let word = body.trim();
    let is = |keywords: &[&str]| keywords.iter().any(|k| k.eq_ignore_ascii_case(word));
    if is(&OPT_OUT_KEYWORDS) {
        Some(OptChange::OptOut)
    } else if is(&OPT_IN_KEYWORDS) {
        Some(OptChange::OptIn)
    } else {
        None
    }
}

/// What the store records of a provider's receipt.
fn record(provider: &str, receipt: &ProviderReceipt, now: SystemTime) -> ReceiptRecord {
    ReceiptRecord {
        provider: provider.to_owned(),
        message_id: receipt.message_id.clone(),
        provider_message_id: receipt.provider_message_id.clone(),
        event: receipt.event.chars().take(MAX_EVENT_CHARS).collect(),
        status: receipt.status,
        time: receipt.time.unwrap_or(now),
        suppress: receipt
            .suppress
            .as_ref()
            .map(|(channel, address)| OptOutKey::suppression(channel.as_str(), address)),
        detail: receipt.detail.clone(),
    }
}

/// Stores inbound messages and receipts, and counts them.
pub struct Receiver {
    store: Arc<dyn MessageStore>,
    metrics: Arc<Metrics>,
}

impl Receiver {
    pub fn new(store: Arc<dyn MessageStore>, metrics: Arc<Metrics>) -> Receiver {
        Receiver { store, metrics }
    }

    /// Records the receipts one request from `provider` carried, in one store write (events,
    /// delivery statuses, suppressions, callbacks queued), and counts them
    /// (`switchboard_receipts_total`). A receipt without a time gets `now`.
    pub async fn record_receipts(
        &self,
        provider: &str,
        receipts: &[ProviderReceipt],
        now: SystemTime,
    ) -> Result<(), StoreError> {
        if receipts.is_empty() {
            return Ok(());
        }
        let records: Vec<ReceiptRecord> = receipts.iter().map(|r| record(provider, r, now)).collect();
        let applied = self.store.record_receipts(&records).await?;
        for (record, applied) in records.iter().zip(&applied) {
            let status = match applied {
                ReceiptApplied::Unknown => "unknown",
                ReceiptApplied::Recorded { .. } => record.status.map_or("none", |s| s.as_str()),
            };
            self.metrics.receipt(provider, status);
        }
        let unknown = applied.iter().filter(|a| matches!(a, ReceiptApplied::Unknown)).count();
        tracing::debug!(provider, receipts = records.len(), unknown, "receipts recorded");
        Ok(())
    }

    /// Stores one message that came through `provider` (`None`: a generic webhook, posted by
    /// the API key `owner`).
    pub async fn receive(
        &self,
        incoming: Incoming,
        provider: Option<&str>,
        owner: Option<&str>,
    ) -> Result<Received, StoreError> {
        let opt_change = opt_change(incoming.channel.as_str(), &incoming.body);
        let message = InboundMessage {
            id: uuid::Uuid::now_v7().to_string(),
            channel: incoming.channel,
            from: incoming.from,
            to: incoming.to,
            subject: incoming.subject,
            body: incoming.body,
            attachments: incoming.attachments,
            provider: provider.map(str::to_owned),
            provider_message_id: incoming.provider_message_id,
            timestamp: incoming.timestamp.unwrap_or_else(SystemTime::now),
            owner: owner.map(str::to_owned),
            opt_change,
        };
        let received = self.store.insert_inbound(&message).await?;
        let channel = message.channel.as_str();
        self.metrics.inbound(channel, received.duplicate);
        if received.opted_out {
            self.metrics.opted_out(family(channel));
        }
        // At debug, like a successful attempt: a line per message would cost more than storing it.
        tracing::debug!(
            message_id = %received.id,
            conversation_id = received.conversation_id,
            channel,
            provider = provider.unwrap_or("-"),
            from = %mask_recipient(&message.from),
            duplicate = received.duplicate,
            opt_change = ?opt_change.filter(|_| !received.duplicate),
            "inbound message"
        );
        Ok(received)
    }

    /// Lifts an opt-out (an operator's decision: `DELETE /v1/opt-outs/…`); `false` when there was
    /// none.
    pub async fn remove_opt_out(&self, key: &OptOutKey) -> Result<bool, StoreError> {
        let removed = self.store.remove_opt_out(key).await?;
        if removed {
            tracing::info!(channel = key.family, recipient = %mask_recipient(&key.recipient), "opt-out removed by an operator");
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(channel: &str, body: &str, expected: Option<OptChange>) {
        assert_eq!(opt_change(channel, body), expected, "{channel} {body:?}");
    }

    #[test]
    fn keywords() {
        use OptChange::*;
        for word in OPT_OUT_KEYWORDS {
            check("sms", word, Some(OptOut));
            check("mms", &format!("  {}\n", word.to_lowercase()), Some(OptOut));
        }
        for word in OPT_IN_KEYWORDS {
            check("sms", word, Some(OptIn));
        }
        check("sms", "Stop", Some(OptOut));
        check("sms", "unStop", Some(OptIn));
        check("sms", "STOP please", None);
        check("sms", "STOP.", None);
        check("sms", "", None);
        check("sms", "STAHP", None);
        check("email", "STOP", None);
        check("pager", "STOP", None);
    }
}

//! Two-way messaging as every store keeps it: which conversation a message belongs to, inbound
//! messages, opt-outs, and the pages the conversation reads return. The rules that decide
//! membership (channel families, address normalisation) are stated here once; the stores only
//! apply them.

use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use switchboard_providers::Channel;

use super::{rfc3339, Status};

/// Which way a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Accepted through a send endpoint and dispatched to a provider.
    Outbound,
    /// Received through a webhook (generic or a provider's own).
    Inbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }

    /// The direction a store column holds (anything but `inbound` is outbound: rows from before
    /// two-way messaging are all outbound).
    pub fn from_stored(text: &str) -> Direction {
        if text == Direction::Inbound.as_str() {
            Direction::Inbound
        } else {
            Direction::Outbound
        }
    }
}

/// A channel's family: `sms` and `mms` share one (`sms`); every other channel is its own.
/// Conversations, inbound de-duplication and opt-outs are per family.
pub fn family(channel: &str) -> &str {
    if channel == "mms" {
        "sms"
    } else {
        channel
    }
}

/// An address as conversations and opt-outs compare it: phone numbers as their E.164 digits
/// (`+` and digits; a short code's digits) with formatting characters dropped, email addresses
/// lower-cased, any other channel's addresses trimmed.
pub fn normalize(family: &str, address: &str) -> String {
    let address = address.trim();
    match family {
        "sms" => {
            let digits: String = address.chars().filter(char::is_ascii_digit).collect();
            if address.starts_with('+') {
                format!("+{digits}")
            } else {
                digits
            }
        }
        "email" => address.to_lowercase(),
        _ => address.to_owned(),
    }
}

/// The mailbox an address reaches. An email address is lower-cased whole (domains are
/// case-insensitive, and mail systems treat local parts so in practice) and loses a `+tag`
/// sub-address (`name+x@` reaches `name@`). Numbers are digits after an optional `+` with no
/// other spelling the API accepts: kept as given, as is any other channel's recipient. The
/// per-recipient cap counts by it, and the suppression list keys by it (a bounced mailbox
/// bounces whatever tag is added).
pub fn mailbox(to: &str) -> String {
    match to.trim().rsplit_once('@') {
        Some((local, domain)) => {
            let mailbox = match local.split_once('+') {
                Some((base, _)) if !base.is_empty() => base,
                _ => local,
            };
            format!("{}@{}", mailbox.to_ascii_lowercase(), domain.to_ascii_lowercase())
        }
        None => to.to_owned(),
    }
}

/// The conversation a message belongs to: its channel family and its two participants,
/// normalised and unordered (`low <= high`), so A→B and B→A are one conversation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConversationKey {
    pub family: String,
    pub low: String,
    pub high: String,
}

impl ConversationKey {
    pub fn of(channel: &str, from: &str, to: &str) -> ConversationKey {
        let family = family(channel);
        let (a, b) = (normalize(family, from), normalize(family, to));
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        ConversationKey { family: family.to_owned(), low, high }
    }
}

/// An opt-out: `recipient` asked not to get messages from `sender` on a channel family. All
/// three normalised.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OptOutKey {
    pub family: String,
    pub sender: String,
    pub recipient: String,
}

impl OptOutKey {
    /// The pair a message from `from` to `to` on `channel` is checked against.
    pub fn of(channel: &str, from: &str, to: &str) -> OptOutKey {
        let family = family(channel);
        OptOutKey {
            family: family.to_owned(),
            sender: normalize(family, from),
            recipient: normalize(family, to),
        }
    }
}

/// Why a message to an opted-out pair is refused (422 `recipient_opted_out`) or ends failed
/// (`opted_out`).
pub const OPTED_OUT: &str =
    "the recipient opted out of messages from this sender (they replied STOP; a START from them lifts it)";

/// What an inbound message's body does to the opt-out of its pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptChange {
    /// `STOP` and its synonyms: the message's sender opts out of messages from its recipient.
    OptOut,
    /// `START` and its synonyms: that opt-out is removed.
    OptIn,
}

/// An inbound message to store.
#[derive(Debug, Clone)]
pub struct InboundMessage {
    /// Switchboard's id for it (a UUIDv7, as outbound messages have).
    pub id: String,
    pub channel: Channel,
    /// Who sent it (the other party).
    pub from: String,
    /// Who it was sent to (our number or address).
    pub to: String,
    pub subject: Option<String>,
    pub body: String,
    pub attachments: Vec<String>,
    /// The configured provider it came through; `None` for the generic webhooks.
    pub provider: Option<String>,
    /// The provider's id for it: with the channel family, what makes a redelivery the same
    /// message.
    pub provider_message_id: String,
    /// When the provider says it was sent (its `timestamp`), else when it was received.
    pub timestamp: SystemTime,
    /// The API key (by name) that posted it through a generic webhook.
    pub owner: Option<String>,
    /// The opt-out change its body makes, applied in the same write.
    pub opt_change: Option<OptChange>,
}

impl InboundMessage {
    /// The opt-out pair the message's body speaks for: its sender opting out of messages from
    /// the number it wrote to.
    pub fn opt_out_key(&self) -> OptOutKey {
        OptOutKey::of(self.channel.as_str(), &self.to, &self.from)
    }

    pub fn conversation_key(&self) -> ConversationKey {
        ConversationKey::of(self.channel.as_str(), &self.from, &self.to)
    }
}

/// What storing an inbound message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The stored message's id: on a redelivery, the first delivery's.
    pub id: String,
    pub conversation_id: i64,
    /// The same (family, provider message id) was stored before: nothing was written.
    pub duplicate: bool,
    /// A new opt-out was recorded (a `STOP` from a pair not opted out yet).
    pub opted_out: bool,
}

/// A page request: at most `limit` items after the cursor `after` (none: from the start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<C> {
    pub limit: u32,
    pub after: Option<C>,
}

impl<C> Page<C> {
    /// How many rows a store fetches for this page: one more than it holds, to know whether
    /// more follow.
    pub fn fetch(&self) -> usize {
        usize::try_from(self.limit).unwrap_or(usize::MAX).saturating_add(1)
    }
}

/// A page of items, and the cursor of its last item when more may follow (`None`: this was the
/// last page). Stores fetch [`Page::fetch`] rows to know.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed<T, C> {
    pub items: Vec<T>,
    pub next: Option<C>,
}

impl<T, C> Listed<T, C> {
    /// A page from rows fetched with [`Page::fetch`]: the first `limit`, and the cursor after
    /// the last of them when the extra row says more follow.
    pub fn from_rows(mut items: Vec<T>, limit: u32, cursor: impl Fn(&T) -> C) -> Listed<T, C> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let more = items.len() > limit;
        items.truncate(limit);
        let next = if more { items.last().map(cursor) } else { None };
        Listed { items, next }
    }

    /// A page from rows fetched with [`Page::fetch`] out of a scan that reads at most a bounded
    /// number of rows: as [`Listed::from_rows`], but a page the rows do not fill has `stopped` as
    /// its cursor — where the scan stopped at its bound (`None`: it read to the end), so the next
    /// page goes on from there.
    pub fn from_scan(
        items: Vec<T>,
        limit: u32,
        cursor: impl Fn(&T) -> C,
        stopped: Option<C>,
    ) -> Listed<T, C> {
        let mut listed = Listed::from_rows(items, limit, cursor);
        if listed.next.is_none() {
            listed.next = stopped;
        }
        listed
    }
}

/// The longest `body_preview`, in characters.
pub const PREVIEW_CHARS: usize = 100;

/// The first [`PREVIEW_CHARS`] characters of a body.
pub fn preview(body: &str) -> String {
    body.chars().take(PREVIEW_CHARS).collect()
}

/// A conversation as `GET /api/conversations` lists it. Conversations are listed newest
/// activity first: by `last_message_id` (UUIDv7s sort by creation), descending; a page's cursor
/// is its last item's `last_message_id`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ConversationView {
    pub id: i64,
    /// The channel family (`sms` for SMS and MMS).
    pub channel: String,
    /// The two normalised participants, in ascending order.
    #[schema(value_type = Vec<String>, min_items = 2, max_items = 2)]
    pub participants: [String; 2],
    /// Messages of it the store keeps (retention purges old ones).
    pub message_count: u64,
    #[serde(serialize_with = "rfc3339")]
    #[schema(schema_with = crate::api_schema::date_time)]
    pub last_message_at: SystemTime,
    /// The newest message it still holds.
    pub last_message: Option<LastMessage>,
    /// Not shown: the cursor after this item.
    #[serde(skip)]
    pub last_message_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LastMessage {
    pub id: String,
    pub direction: Direction,
    pub body_preview: String,
}

/// A message as `GET /api/conversations/{id}/messages` shows it. Oldest first: by id (UUIDv7s
/// sort by creation); a page's cursor is its last item's id.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ConversationMessage {
    pub id: String,
    pub direction: Direction,
    #[schema(value_type = String)]
    pub channel: Channel,
    pub from: String,
    pub to: String,
    pub body: String,
    pub attachments: Vec<String>,
    pub status: Status,
    #[schema(value_type = Option<String>)]
    pub provider: Option<Arc<str>>,
    /// Inbound: when the provider says it was sent; outbound: when it was accepted.
    #[serde(serialize_with = "rfc3339")]
    #[schema(schema_with = crate::api_schema::date_time)]
    pub timestamp: SystemTime,
    #[serde(serialize_with = "rfc3339")]
    #[schema(schema_with = crate::api_schema::date_time)]
    pub created_at: SystemTime,
}

/// A recorded opt-out, as `GET /v1/opt-outs` lists them: by (channel, sender, recipient).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct OptOut {
    /// The channel family.
    pub channel: String,
    /// The number written to, or `*` for a suppressed address (every sender).
    pub sender: String,
    pub recipient: String,
    #[serde(serialize_with = "rfc3339")]
    #[schema(schema_with = crate::api_schema::date_time)]
    pub created_at: SystemTime,
}

impl OptOut {
    pub fn key(&self) -> OptOutKey {
        OptOutKey {
            family: self.channel.clone(),
            sender: self.sender.clone(),
            recipient: self.recipient.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(channel: &str, from: &str, to: &str, expected: (&str, &str, &str)) {
        let key = ConversationKey::of(channel, from, to);
        assert_eq!(
            (key.family.as_str(), key.low.as_str(), key.high.as_str()),
            expected,
            "{channel} {from} {to}"
        );
        assert_eq!(ConversationKey::of(channel, to, from), key, "unordered: {channel} {to} {from}");
    }

    #[test]
    fn conversation_keys() {
        check("sms", "+12016661234", "+18045551234", ("sms", "+12016661234", "+18045551234"));
        check("mms", "+18045551234", "+12016661234", ("sms", "+12016661234", "+18045551234"));
        check("sms", " +1 (201) 666-1234 ", "12345", ("sms", "+12016661234", "12345"));
        check(
            "email",
            "User@UseHatchApp.com",
            "contact@gmail.com",
            ("email", "contact@gmail.com", "user@usehatchapp.com"),
        );
        check("pager", " a ", "B", ("pager", "B", "a"));
        assert_ne!(ConversationKey::of("sms", "+1", "+2"), ConversationKey::of("email", "+1", "+2"));
    }

    #[test]
    fn opt_out_keys_are_directed() {
        let key = OptOutKey::of("mms", "+15550001111", "+15550002222");
        assert_eq!(
            (key.family.as_str(), key.sender.as_str(), key.recipient.as_str()),
            ("sms", "+15550001111", "+15550002222")
        );
        assert_ne!(key, OptOutKey::of("sms", "+15550002222", "+15550001111"));
    }

    #[test]
    fn previews() {
        assert_eq!(preview("short"), "short");
        assert_eq!(preview(&"é".repeat(150)).chars().count(), PREVIEW_CHARS);
    }
}

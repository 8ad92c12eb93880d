//! What providers report about messages already sent: the plugin side of
//! `POST /v1/receipts/{kind}/{provider}` (delivery receipts, status callbacks, event webhooks).
//!
//! A kind that takes receipts implements [`crate::Provider::admit_receipts`] (what the headers
//! alone can refuse) and [`crate::Provider::receipts`]: it checks the request came from the
//! provider (signature, and its age where the provider signs a time), parses the provider's
//! events into [`ProviderReceipt`]s in Switchboard's words ([`DeliveryStatus`]) and says what to
//! answer. The service finds each receipt's message, records the event, moves the message's
//! delivery status forward and adds suppressed addresses; the kind never sees the store.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::inbound::InboundError;
use crate::Channel;

/// How old a signed timestamp may be (either way) before the request is refused as a replay.
pub const MAX_SIGNATURE_AGE: Duration = Duration::from_secs(5 * 60);

/// The longest string a kind puts in a receipt's `detail`, in characters: longer ones are cut.
pub const MAX_DETAIL_CHARS: usize = 200;

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
    /// Every delivery status, in the order of the way a message goes.
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

    /// The status's name in the API (`delivery_status`) and in the events' timeline.
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
    /// The post's receipts, in the order the provider listed them (possibly none: a batch of
    /// events none of which is usable is still acknowledged).
    pub receipts: Vec<ProviderReceipt>,
    /// `Content-Type` of the answer.
    pub content_type: &'static str,
    /// The answer's body (the built-in kinds answer an empty `text/plain` one).
    pub answer: String,
}

/// `text` as a receipt's `detail` shows it: without control characters, at most
/// [`MAX_DETAIL_CHARS`] characters.
pub(crate) fn detail_text(text: &str) -> String {
    let clean: String = text.chars().filter(|c| !c.is_control()).take(MAX_DETAIL_CHARS).collect();
    mask_numbers(&clean)
}

/// `text` with every run of [`PHONE_DIGITS`] or more digits (a `+` before it included) masked as
/// recipients are ([`crate::mask_recipient`]): a provider's error text may quote the number it
/// could not reach (Twilio: `Unreachable destination handset +18045550102`).
fn mask_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.chars().filter(char::is_ascii_digit).count() >= PHONE_DIGITS {
            out.push_str(&crate::mask_recipient(run));
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() || (c == '+' && run.is_empty()) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// The fewest digits a run must have to be masked as a phone number (E.164 numbers of the
/// smallest countries have 7 after the country code… and error codes such as `30003` fewer).
const PHONE_DIGITS: usize = 7;

/// The rest of a signed JSON receipt request's head, after its signature header: one timestamp
/// header `name` (shown as `shown`) holding Unix seconds — the text as sent (it is signed) and its
/// value — then a JSON content type.
pub(crate) fn signed_json_head<'a>(
    head: crate::inbound::InboundHead<'a>,
    name: &str,
    shown: &str,
) -> Result<(&'a str, u64), InboundError> {
    let timestamp = single_header(head.headers, name, shown)?;
    let signed_at = unix_seconds(timestamp).ok_or_else(|| {
        InboundError::InvalidSignature(format!("malformed {shown} header: expected Unix seconds"))
    })?;
    if !crate::inbound::has_media_type(head.headers, JSON) {
        return Err(InboundError::UnsupportedMediaType { expected: JSON });
    }
    Ok((timestamp, signed_at))
}

/// The content type of signed JSON receipts.
pub(crate) const JSON: &str = "application/json";

/// The one value of the header `name` (lower-case), named `shown` in the errors: missing or
/// empty, sent more than once, or not visible ASCII is refused as a bad signature.
pub(crate) fn single_header<'a>(
    headers: &'a reqwest::header::HeaderMap,
    name: &str,
    shown: &str,
) -> Result<&'a str, InboundError> {
    let refused = |problem: &str| InboundError::InvalidSignature(format!("{problem} {shown} header"));
    let mut values = headers.get_all(name).iter();
    let value = match (values.next(), values.next()) {
        (Some(value), None) if !value.is_empty() => value,
        (_, None) => return Err(refused("missing")),
        (_, Some(_)) => {
            return Err(InboundError::InvalidSignature(format!(
                "malformed {shown} header: sent more than once"
            )))
        }
    };
    value.to_str().ok().filter(|text| text.bytes().all(|b| b.is_ascii_graphic())).ok_or_else(|| {
        InboundError::InvalidSignature(format!("malformed {shown} header: not printable ASCII"))
    })
}

/// A signed time header's Unix seconds: 1 to 20 ASCII digits. The signature covers the header's
/// text as sent, not this number.
pub(crate) fn unix_seconds(text: &str) -> Option<u64> {
    let digits = (1..=20).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| text.parse().ok()).flatten()
}

/// Refuses a signed time (Unix seconds, from the header named `shown`) more than
/// [`MAX_SIGNATURE_AGE`] before or after `now`: a replayed request, or a clock far off.
pub(crate) fn check_signed_time(shown: &str, signed: u64, now: SystemTime) -> Result<(), InboundError> {
    let signed_at = UNIX_EPOCH.checked_add(Duration::from_secs(signed));
    let age = signed_at.map(|at| now.duration_since(at).unwrap_or_else(|later| later.duration()));
    match age {
        Some(age) if age <= MAX_SIGNATURE_AGE => Ok(()),
        _ => Err(InboundError::InvalidSignature(format!(
            "stale {shown}: the request was signed more than {} minutes before or after now \
             (a replay, or a clock that is off)",
            MAX_SIGNATURE_AGE.as_secs() / 60
        ))),
    }
}

/// Unix seconds (an integer, or a number with a fraction) as a time, from 1970 to the year 9999.
pub(crate) fn unix_time(value: &Value) -> Option<SystemTime> {
    /// 9999-12-31T23:59:59Z.
    const LAST: f64 = 253_402_300_799.0;
    let seconds = value.as_f64()?;
    if !(0.0..=LAST).contains(&seconds) {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::from_secs_f64(seconds))
}

/// The items of a JSON array body, when it has at most `max` of them; `Ok(None)`: more (the rest
/// is parsed without being kept). Not an array, or not JSON: the parser's error.
pub(crate) fn json_array(body: &[u8], max: usize) -> Result<Option<Vec<Value>>, serde_json::Error> {
    let mut parser = serde_json::Deserializer::from_slice(body);
    let items = BoundedArray(max).deserialize(&mut parser)?;
    parser.end()?;
    Ok(items)
}

/// Reads a JSON array, keeping at most `.0` items.
struct BoundedArray(usize);

impl<'de> DeserializeSeed<'de> for BoundedArray {
    type Value = Option<Vec<Value>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for BoundedArray {
    type Value = Option<Vec<Value>>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Self::Value, A::Error> {
        let mut kept = Vec::new();
        loop {
            if kept.len() == self.0 {
                if items.next_element::<IgnoredAny>()?.is_none() {
                    return Ok(Some(kept));
                }
                while items.next_element::<IgnoredAny>()?.is_some() {}
                return Ok(None);
            }
            match items.next_element::<Value>()? {
                Some(item) => kept.push(item),
                None => return Ok(Some(kept)),
            }
        }
    }
}

#[cfg(test)]
mod detail_tests {
    use super::detail_text;

    fn check(text: &str, expected: &str) {
        assert_eq!(detail_text(text), expected, "{text:?}");
    }

    #[test]
    fn numbers_in_provider_texts_are_masked() {
        check(
            "Unreachable destination handset +18045550102 (18045550102)",
            "Unreachable destination handset +1804****102 (18045***102)",
        );
        check("30003", "30003");
        check("550 5.1.1 user unknown", "550 5.1.1 user unknown");
        check("queue 1234567", "queue 1***");
        check("a+b", "a+b");
    }
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

/// The helpers the kinds share to take receipts in.
#[cfg(test)]
mod helper_tests {
    use std::time::{Duration, UNIX_EPOCH};

    use serde_json::{json, Value};

    use super::*;

    #[test]
    fn detail_texts() {
        let check = |text: &str, expected: &str| assert_eq!(detail_text(text), expected, "{text:?}");
        check("550 5.1.1 user unknown", "550 5.1.1 user unknown");
        check("a\u{0}b\nc\u{1b}[0m\u{85}", "abc[0m");
        check(&"é".repeat(MAX_DETAIL_CHARS + 1), &"é".repeat(MAX_DETAIL_CHARS));
        check("", "");
    }

    #[test]
    fn single_headers() {
        let check = |values: &[&[u8]], expected: Result<&str, &str>| {
            let mut headers = reqwest::header::HeaderMap::new();
            for value in values {
                let value = reqwest::header::HeaderValue::from_bytes(value).unwrap_or_else(|e| panic!("{e}"));
                headers.append("x-signed", value);
            }
            match (single_header(&headers, "x-signed", "X-Signed"), expected) {
                (Ok(value), Ok(expected)) => assert_eq!(value, expected),
                (Err(InboundError::InvalidSignature(text)), Err(expected)) => assert_eq!(text, expected),
                (got, expected) => panic!("{values:?}: got {got:?}, expected {expected:?}"),
            }
        };
        check(&[b"abc=="], Ok("abc=="));
        check(&[], Err("missing X-Signed header"));
        check(&[b""], Err("missing X-Signed header"));
        check(&[b"a", b"a"], Err("malformed X-Signed header: sent more than once"));
        check(&[b"", b""], Err("malformed X-Signed header: sent more than once"));
        check(&[b"a b"], Err("malformed X-Signed header: not printable ASCII"));
        check(&[b"caf\xe9"], Err("malformed X-Signed header: not printable ASCII"));
    }

    #[test]
    fn signed_times() {
        let check = |text: &str, now: u64, expected: Result<(), &str>| {
            let now = UNIX_EPOCH + Duration::from_secs(now);
            let checked = unix_seconds(text)
                .ok_or("malformed")
                .and_then(|signed| check_signed_time("X-Signed", signed, now).map_err(|_| "stale"));
            assert_eq!(checked, expected, "{text} at {now:?}");
        };
        check("1700000000", 1_700_000_000, Ok(()));
        check("1700000000", 1_700_000_300, Ok(()));
        check("1700000300", 1_700_000_000, Ok(()));
        check("01700000000", 1_700_000_000, Ok(()));
        check("1700000000", 1_700_000_301, Err("stale"));
        check("1700000301", 1_700_000_000, Err("stale"));
        check("0", 1_700_000_000, Err("stale"));
        check("18446744073709551615", 1_700_000_000, Err("stale"));
        for odd in ["", "-1", "+1", "1.0", "1e9", " 1", "18446744073709551616", "123456789012345678901"] {
            check(odd, 1_700_000_000, Err("malformed"));
        }
        let stale = check_signed_time("X-Signed", 0, UNIX_EPOCH + Duration::from_secs(1_000));
        let Err(InboundError::InvalidSignature(text)) = stale else { panic!("{stale:?}") };
        assert!(text.starts_with("stale X-Signed: ") && text.contains("5 minutes"), "{text}");
    }

    #[test]
    fn unix_times() {
        let check = |value: Value, expected: Option<Duration>| {
            assert_eq!(unix_time(&value), expected.map(|since| UNIX_EPOCH + since), "{value}");
        };
        check(json!(0), Some(Duration::ZERO));
        check(json!(1_513_299_569), Some(Duration::from_secs(1_513_299_569)));
        check(json!(1.25), Some(Duration::from_millis(1250)));
        check(json!(253_402_300_799_u64), Some(Duration::from_secs(253_402_300_799)));
        for odd in
            [json!(253_402_300_800_u64), json!(-1), json!(u64::MAX), json!(1e300), json!("1"), json!(null)]
        {
            check(odd, None);
        }
    }

    #[test]
    fn json_arrays() {
        let check = |body: &str, max: usize, expected: Result<Option<usize>, ()>| {
            let parsed =
                json_array(body.as_bytes(), max).map(|items| items.map(|items| items.len())).map_err(|_| ());
            assert_eq!(parsed, expected, "{body} (at most {max})");
        };
        check("[]", 2, Ok(Some(0)));
        check("[1, {\"a\": [2]}]", 2, Ok(Some(2)));
        check(" [1, 2] \n", 2, Ok(Some(2)));
        check("[1, 2, 3]", 2, Ok(None));
        check("[1, 2, {\"deep\": [[[]]]}, 4]", 2, Ok(None));
        check("[]", 0, Ok(Some(0)));
        check("[1]", 0, Ok(None));
        for odd in ["", "{}", "1", "[1,]", "[1", "[1, 2, 3", "[] []", "[1, 2, 3] x"] {
            check(odd, 2, Err(()));
        }
        let items = json_array(b"[{\"event\": \"open\"}, 5]", 10).ok().flatten();
        assert_eq!(items, Some(vec![json!({"event": "open"}), json!(5)]));
    }
}

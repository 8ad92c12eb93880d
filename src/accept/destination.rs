//! Limits on where messages go, against SMS pumping: a route's allow-list of country calling
//! codes, and a cap on messages per recipient per clock hour, counted per mailbox or number
//! however its address is spelled.

use crate::store::conversation::mailbox;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::resolved::ResolvedRoute;

/// Why a destination limit refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The recipient's country is not on the route's allow-list.
    #[error("the recipient's country calling code is not allowed for channel `{channel}`")]
    CountryNotAllowed { channel: String },
    /// The recipient had its messages for this hour; the next hour starts in `retry_after`.
    #[error("this recipient has had as many messages as allowed this hour")]
    RecipientRateLimited { retry_after: Duration },
}

/// Checks an E.164 recipient against the route's allow-list. Short codes (no `+`) are
/// national and never cross a border: they pass.
pub fn check_country(route: &ResolvedRoute, to: &str) -> Result<(), Refusal> {
    let (Some(codes), Some(digits)) = (&route.allowed_country_codes, to.strip_prefix('+')) else {
        return Ok(());
    };
    // Calling codes are prefix-free: at most one can match.
    if codes.iter().any(|code| digits.starts_with(code.as_str())) {
        Ok(())
    } else {
        Err(Refusal::CountryNotAllowed { channel: route.channel.to_string() })
    }
}

/// (channel, recipient) → messages accepted.
type Counts = HashMap<(String, String), u32>;

/// Messages accepted per (channel, recipient) in the current clock hour.
#[derive(Debug, Default)]
pub struct RecipientCounts {
    /// The hour (since the epoch) the counts are for, and the counts.
    state: Mutex<(u64, Counts)>,
}

/// One message counted against a recipient's cap. Counted it stays — also when the request
/// that reserved it goes away mid-way (a client that hangs up after its message was stored must
/// not free a slot) — unless [`RecipientCounts::give_back`] says the message was refused after all.
#[must_use = "a reservation is kept unless given back"]
pub struct Reserved {
    key: Option<(u64, (String, String))>,
}

impl RecipientCounts {
    /// Counts one message to `to` against the route's per-recipient cap, or refuses it.
    pub fn reserve(&self, route: &ResolvedRoute, to: &str, now: SystemTime) -> Result<Reserved, Refusal> {
        let Some(max) = route.max_per_recipient_per_hour else {
            return Ok(Reserved { key: None });
        };
        let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let hour = since_epoch.as_secs() / 3600;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.0 != hour {
            // A new hour: the old counts are over (and memory stays bounded by one hour's traffic).
            *state = (hour, HashMap::new());
        }
        let key = (route.channel.to_string(), recipient_key(to));
        let count = state.1.entry(key.clone()).or_insert(0);
        if *count >= max {
            let retry_after = Duration::from_secs((hour + 1) * 3600).saturating_sub(since_epoch);
            return Err(Refusal::RecipientRateLimited { retry_after });
        }
        *count += 1;
        Ok(Reserved { key: Some((hour, key)) })
    }

    /// Messages counted for a recipient this hour.
    #[cfg(test)]
    pub fn counted(&self, channel: &str, to: &str) -> u32 {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.1.get(&(channel.to_owned(), recipient_key(to))).copied().unwrap_or(0)
    }

    /// Uncounts a message that was not accepted after all.
    pub fn give_back(&self, reserved: Reserved) {
        let Some((hour, key)) = reserved.key else { return };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.0 == hour {
            if let Some(count) = state.1.get_mut(&key) {
                *count = count.saturating_sub(1);
            }
        }
    }
}

/// The recipient as the cap counts it: its mailbox ([`mailbox`]).
fn recipient_key(to: &str) -> String {
    mailbox(to)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use switchboard_providers::Channel;

    use super::*;
    use crate::config::resolved::Strategy;

    fn route(codes: Option<&[&str]>, max: Option<u32>) -> ResolvedRoute {
        ResolvedRoute {
            channel: Channel::SMS,
            providers: vec![],
            weights: vec![],
            rules: vec![],
            strategy: Strategy::Failover,
            max_attempts: 1,
            allowed_country_codes: codes.map(|c| c.iter().map(|s| (*s).to_owned()).collect()),
            max_per_recipient_per_hour: max,
            status_callback: None,
            sources: BTreeMap::new(),
        }
    }

    #[test]
    fn countries() {
        let uk_us = route(Some(&["1", "44"]), None);
        for (to, allowed) in [
            ("+12016661234", true),
            ("+447700900123", true),
            ("+33612345678", false),
            ("+4915112345678", false),
            ("12345", true),
        ] {
            assert_eq!(check_country(&uk_us, to).is_ok(), allowed, "{to}");
        }
        assert!(check_country(&route(None, None), "+33612345678").is_ok());
    }

    #[test]
    fn recipients_as_counted() {
        for (to, expected) in [
            ("Victim@Example.COM", "victim@example.com"),
            ("victim+1@example.com", "victim@example.com"),
            ("VICTIM+promo+x@EXAMPLE.com", "victim@example.com"),
            ("+tag@example.com", "+tag@example.com"),
            ("+12016661234", "+12016661234"),
            ("12345", "12345"),
            ("device-Token", "device-Token"),
        ] {
            assert_eq!(recipient_key(to), expected, "{to}");
        }
    }

    #[test]
    fn spellings_of_one_address_share_a_cap() {
        let counts = RecipientCounts::default();
        let capped = route(None, Some(2));
        let now = UNIX_EPOCH + Duration::from_secs(3600);
        for to in ["victim@example.com", "Victim@EXAMPLE.com"] {
            let _ = counts.reserve(&capped, to, now).unwrap_or_else(|e| panic!("{e:?}"));
        }
        assert!(counts.reserve(&capped, "VICTIM+x@example.com", now).is_err());
    }

    #[test]
    fn per_recipient_cap() {
        let counts = RecipientCounts::default();
        let capped = route(None, Some(2));
        let now = UNIX_EPOCH + Duration::from_secs(10 * 3600 + 600);
        let _ = counts.reserve(&capped, "+1", now).unwrap_or_else(|e| panic!("{e:?}"));
        // Refused after all (say the store refused): given back.
        let refused = counts.reserve(&capped, "+1", now).unwrap_or_else(|e| panic!("{e:?}"));
        counts.give_back(refused);
        // Dropped without a word (the request went away): still counted.
        drop(counts.reserve(&capped, "+1", now));
        match counts.reserve(&capped, "+1", now) {
            Err(Refusal::RecipientRateLimited { retry_after }) => {
                assert_eq!(retry_after, Duration::from_secs(3000))
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert!(counts.reserve(&capped, "+2", now).is_ok());
        assert!(counts.reserve(&capped, "+1", now + Duration::from_secs(3000)).is_ok(), "a new hour");
        assert!(counts.reserve(&route(None, None), "+1", now).is_ok());
    }
}

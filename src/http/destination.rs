//! Limits on where messages go, against SMS pumping: a route's allow-list of country calling
//! codes, and a cap on messages per recipient per clock hour, counted per mailbox or number
//! however its address is spelled.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::ApiError;
use crate::config::resolved::ResolvedRoute;

/// Checks an E.164 recipient against the route's allow-list. Short codes (no `+`) are
/// national and never cross a border: they pass.
pub fn check_country(route: &ResolvedRoute, to: &str) -> Result<(), ApiError> {
    let (Some(codes), Some(digits)) = (&route.allowed_country_codes, to.strip_prefix('+')) else {
        return Ok(());
    };
    // Calling codes are prefix-free: at most one can match.
    if codes.iter().any(|code| digits.starts_with(code.as_str())) {
        Ok(())
    } else {
        Err(ApiError::CountryNotAllowed { channel: route.channel.to_string() })
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

/// A reservation of one message for a recipient: given back unless [`Reserved::keep`] is
/// called (the message was not accepted after all).
pub struct Reserved<'a> {
    counts: &'a RecipientCounts,
    key: Option<(u64, (String, String))>,
}

impl Reserved<'_> {
    pub fn keep(mut self) {
        self.key = None;
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if let Some((hour, key)) = self.key.take() {
            let mut state = self.counts.state.lock().unwrap_or_else(|p| p.into_inner());
            if state.0 == hour {
                if let Some(count) = state.1.get_mut(&key) {
                    *count = count.saturating_sub(1);
                }
            }
        }
    }
}

impl RecipientCounts {
    /// Counts one message to `to` against the route's per-recipient cap, or refuses it.
    pub fn reserve(
        &self,
        route: &ResolvedRoute,
        to: &str,
        now: SystemTime,
    ) -> Result<Reserved<'_>, ApiError> {
        let Some(max) = route.max_per_recipient_per_hour else {
            return Ok(Reserved { counts: self, key: None });
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
            return Err(ApiError::RecipientRateLimited { retry_after });
        }
        *count += 1;
        Ok(Reserved { counts: self, key: Some((hour, key)) })
    }
}

/// The recipient as the cap counts it. An email address is lower-cased whole (domains are
/// case-insensitive, and mail systems treat local parts so in practice) and loses a `+tag`
/// sub-address (`name+x@` reaches `name@`). Numbers are digits after an optional `+` with no
/// other spelling the API accepts: kept as given, as is any other channel's recipient.
fn recipient_key(to: &str) -> String {
    match to.rsplit_once('@') {
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
            counts.reserve(&capped, to, now).map(Reserved::keep).unwrap_or_else(|e| panic!("{e:?}"));
        }
        assert!(counts.reserve(&capped, "VICTIM+x@example.com", now).is_err());
    }

    #[test]
    fn per_recipient_cap() {
        let counts = RecipientCounts::default();
        let capped = route(None, Some(2));
        let now = UNIX_EPOCH + Duration::from_secs(10 * 3600 + 600);
        counts.reserve(&capped, "+1", now).map(Reserved::keep).unwrap_or_else(|e| panic!("{e:?}"));
        // Not kept (say the store refused): given back.
        drop(counts.reserve(&capped, "+1", now));
        counts.reserve(&capped, "+1", now).map(Reserved::keep).unwrap_or_else(|e| panic!("{e:?}"));
        match counts.reserve(&capped, "+1", now) {
            Err(ApiError::RecipientRateLimited { retry_after }) => {
                assert_eq!(retry_after, Duration::from_secs(3000))
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert!(counts.reserve(&capped, "+2", now).is_ok());
        assert!(counts.reserve(&capped, "+1", now + Duration::from_secs(3000)).is_ok(), "a new hour");
        assert!(counts.reserve(&route(None, None), "+1", now).is_ok());
    }
}

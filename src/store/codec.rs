//! Encoding of store values as database columns, shared by the SQL stores.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchboard_providers::{Channel, ErrorClass};

use super::{Outcome, Status, StoreError};

pub(super) fn unavailable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

pub(super) fn ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(super) fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

pub(super) fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}

pub(super) fn parse_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

pub(super) fn status_of(text: &str) -> Status {
    match text {
        "sending" => Status::Sending,
        "sent" => Status::Sent,
        "failed" => Status::Failed,
        _ => Status::Queued,
    }
}

pub(super) fn outcome_of(text: &str) -> Outcome {
    match text {
        "success" => Outcome::Success,
        "rate_limited" => Outcome::RateLimited,
        "timeout" => Outcome::Timeout,
        "rejected" => Outcome::Rejected,
        "misconfigured" => Outcome::Misconfigured,
        _ => Outcome::Error,
    }
}

pub(super) fn class_name(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::NotSent => "not_sent",
        ErrorClass::Ambiguous => "ambiguous",
        ErrorClass::Rejected => "rejected",
        ErrorClass::Misconfigured => "misconfigured",
    }
}

pub(super) fn class_of(text: &str) -> Option<ErrorClass> {
    match text {
        "not_sent" => Some(ErrorClass::NotSent),
        "ambiguous" => Some(ErrorClass::Ambiguous),
        "rejected" => Some(ErrorClass::Rejected),
        "misconfigured" => Some(ErrorClass::Misconfigured),
        _ => None,
    }
}

pub(super) fn channel_of(text: &str) -> Channel {
    Channel::new(text).unwrap_or(Channel::SMS)
}

//! Helpers for the kinds' unit tests.

use crate::{find, Channel, OutboundMessage};

/// The settings fields a kind's check complains about, in order; `missing` stands for serde's
/// "missing field" error (which names no field of its own).
pub(crate) fn setting_issue_fields(kind: &str, settings: &serde_json::Value) -> Vec<String> {
    let issues = find(kind).map(|kind| kind.check(settings.clone())).unwrap_or_default();
    issues
        .iter()
        .map(|issue| match issue.field.as_deref() {
            Some(field) => field.to_owned(),
            None if issue.message.contains("missing field") => "missing".to_owned(),
            None => format!("?{}", issue.message),
        })
        .collect()
}

/// Asserts the fields `kind`'s check complains about for `settings`.
pub(crate) fn check_settings(kind: &str, settings: serde_json::Value, expected: &[&str]) {
    assert_eq!(setting_issue_fields(kind, &settings), expected, "{kind}: {settings}");
}

/// An email from app@example.com with id `0190abcd`.
pub(crate) fn email(to: &str, subject: Option<&str>, body: &str, attachments: &[&str]) -> OutboundMessage {
    OutboundMessage {
        id: "0190abcd".into(),
        channel: Channel::EMAIL,
        from: "app@example.com".into(),
        to: to.into(),
        subject: subject.map(str::to_owned),
        body: body.into(),
        attachments: attachments.iter().map(|a| (*a).to_owned()).collect(),
        tags: vec![],
    }
}

//! Helpers for the kinds' unit tests.

use crate::find;

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

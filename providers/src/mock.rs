//! `mock`: a provider that sends nothing and answers with seeded, reproducible outcomes.
//! For local runs, demos and tests; the repo's default routes.toml uses it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{
    BuildContext, Kind, OutboundMessage, Provider, Receipt, Registration, SendError, SettingIssue,
    SettingsError,
};

/// Settings of a `mock` provider. Outcome percentages are drawn per send; whatever they leave
/// over is the share of successful sends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MockSettings {
    /// Seed of this provider's own outcome stream: the same seed and the same sequence of sends
    /// give the same sequence of outcomes.
    pub seed: u64,
    /// Percentage (0–100) of sends that fail with a provider 500 (ambiguous: may have been sent).
    pub error_pct: u32,
    /// Percentage (0–100) of sends refused with a 429 (not sent, safe to retry).
    pub rate_limited_pct: u32,
    /// Percentage (0–100) of sends that hang until the attempt's timeout.
    pub timeout_pct: u32,
    /// Percentage (0–100) of sends refused with a 400 (rejected: never retried).
    pub rejected_pct: u32,
    /// Retry-After sent with each 429, in milliseconds; absent: no Retry-After.
    pub retry_after_ms: Option<u64>,
    /// Delay before every answer, in milliseconds.
    pub latency_ms: u64,
}

struct MockKind;

impl Kind for MockKind {
    const NAME: &'static str = "mock";
    const CHANNELS: &'static [&'static str] = &["sms", "mms", "email"];
    const DESCRIPTION: &'static str =
        "Sends nothing; answers with seeded, reproducible outcomes (for local runs and tests)";
    type Settings = MockSettings;

    fn validate(settings: &MockSettings) -> Vec<SettingIssue> {
        let pcts = [
            ("error_pct", settings.error_pct),
            ("rate_limited_pct", settings.rate_limited_pct),
            ("timeout_pct", settings.timeout_pct),
            ("rejected_pct", settings.rejected_pct),
        ];
        let mut issues: Vec<SettingIssue> = pcts
            .iter()
            .filter(|(_, pct)| *pct > 100)
            .map(|(name, pct)| {
                SettingIssue::new(name, format!("`{name}` must be between 0 and 100, got {pct}"))
            })
            .collect();
        let sum: u32 = pcts.iter().map(|(_, pct)| pct).sum();
        if issues.is_empty() && sum > 100 {
            // Point at the last percentage set: it is the one that tips the sum over.
            let (last, _) = pcts.iter().rev().find(|(_, pct)| *pct > 0).unwrap_or(&pcts[0]);
            issues.push(
                SettingIssue::new(last, format!("outcome percentages add up to {sum}, over 100")).with_help(
                    "error_pct + rate_limited_pct + timeout_pct + rejected_pct must be at most 100",
                ),
            );
        }
        issues
    }

    fn build(
        settings: MockSettings,
        _context: &BuildContext<'_>,
    ) -> Result<Arc<dyn Provider>, SettingsError> {
        Ok(Arc::new(MockProvider::new(settings)))
    }
}

inventory::submit! { Registration::of::<MockKind>() }

/// One `mock` instance: its own outcome stream, shared with nobody.
pub struct MockProvider {
    settings: MockSettings,
    draws: AtomicU64,
}

impl MockProvider {
    pub fn new(settings: MockSettings) -> Self {
        MockProvider { settings, draws: AtomicU64::new(0) }
    }

    /// The next outcome of this instance's stream, without waiting.
    fn next_outcome(&self) -> (u64, Outcome) {
        let n = self.draws.fetch_add(1, Ordering::Relaxed);
        let roll = (splitmix64(self.settings.seed, n) % 100) as u32;
        let s = &self.settings;
        let bands = [
            (s.error_pct, Outcome::Error),
            (s.rate_limited_pct, Outcome::RateLimited),
            (s.timeout_pct, Outcome::Timeout),
            (s.rejected_pct, Outcome::Rejected),
        ];
        let mut upper = 0;
        for (pct, outcome) in bands {
            upper += pct;
            if roll < upper {
                return (n, outcome);
            }
        }
        (n, Outcome::Sent)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Sent,
    Error,
    RateLimited,
    Timeout,
    Rejected,
}

#[async_trait]
impl Provider for MockProvider {
    async fn send(&self, _message: &OutboundMessage) -> Result<Receipt, SendError> {
        let (n, outcome) = self.next_outcome();
        if self.settings.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.settings.latency_ms)).await;
        }
        match outcome {
            Outcome::Sent => {
                Ok(Receipt { provider_message_id: Some(format!("mock-{:x}-{n}", self.settings.seed)) })
            }
            Outcome::Error => {
                Err(SendError::Ambiguous { code: "500".into(), reason: "mock provider error".into() })
            }
            Outcome::RateLimited => Err(SendError::RateLimited {
                retry_after: self.settings.retry_after_ms.map(Duration::from_millis),
            }),
            Outcome::Rejected => Err(SendError::Rejected {
                code: "400".into(),
                reason: "mock provider rejected the message".into(),
            }),
            // Hangs like a provider that never answers: only the caller's attempt timeout
            // (the dispatcher's) ends it, so that timeout is what tests of it exercise.
            Outcome::Timeout => match std::future::pending::<std::convert::Infallible>().await {},
        }
    }
}

/// The `n`th output of a SplitMix64 stream started at `seed`: counter-based, so draws need only
/// an atomic counter and the stream is fixed by the seed alone.
fn splitmix64(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_add((n + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::find;
    use serde_json::json;

    fn outcomes(settings: &MockSettings, count: usize) -> Vec<Outcome> {
        let provider = MockProvider::new(settings.clone());
        (0..count).map(|_| provider.next_outcome().1).collect()
    }

    fn check(settings: serde_json::Value, expected: &[&str]) {
        let Some(mock) = find("mock") else { panic!("mock kind not registered") };
        let issues: Vec<String> = mock.check(settings).into_iter().map(|i| i.message).collect();
        assert_eq!(issues, expected);
    }

    #[test]
    fn settings_checks() {
        check(json!({}), &[]);
        check(json!({"seed": 42, "error_pct": 10, "latency_ms": 5}), &[]);
        check(json!({"error_pct": 60, "rate_limited_pct": 40}), &[]);
        check(json!({"error_pct": 101}), &["`error_pct` must be between 0 and 100, got 101"]);
        check(json!({"error_pct": 60, "timeout_pct": 50}), &["outcome percentages add up to 110, over 100"]);
        check(json!({"error_pct": -1}), &["`error_pct` must be u32, got integer `-1`"]);
        check(json!({"seed": "x"}), &["`seed` must be u64, found string \"x\""]);
    }

    #[test]
    fn same_seed_same_stream_and_instances_do_not_share() {
        let settings = MockSettings { seed: 42, error_pct: 30, rate_limited_pct: 20, ..Default::default() };
        let a = outcomes(&settings, 200);
        assert_eq!(a, outcomes(&settings, 200));
        let other = MockSettings { seed: 43, ..settings.clone() };
        assert_ne!(a, outcomes(&other, 200));

        // Two live instances: drawing from one does not advance the other.
        let first = MockProvider::new(settings.clone());
        let second = MockProvider::new(settings);
        let from_first: Vec<_> = (0..10).map(|_| first.next_outcome().1).collect();
        let from_second: Vec<_> = (0..10).map(|_| second.next_outcome().1).collect();
        assert_eq!(from_first, from_second);
    }

    #[test]
    fn percentages_are_honoured() {
        let settings = MockSettings {
            seed: 1,
            error_pct: 25,
            rate_limited_pct: 25,
            timeout_pct: 10,
            rejected_pct: 5,
            ..Default::default()
        };
        let drawn = outcomes(&settings, 10_000);
        let share = |o: Outcome| drawn.iter().filter(|d| **d == o).count() as f64 / 100.0;
        for (outcome, pct) in [
            (Outcome::Error, 25.0),
            (Outcome::RateLimited, 25.0),
            (Outcome::Timeout, 10.0),
            (Outcome::Rejected, 5.0),
            (Outcome::Sent, 35.0),
        ] {
            assert!((share(outcome) - pct).abs() < 2.0, "{outcome:?}: {} vs {pct}", share(outcome));
        }
    }

    #[tokio::test]
    async fn sends_report_their_outcome() {
        let settings = MockSettings { seed: 5, error_pct: 100, ..Default::default() };
        let provider = MockProvider::new(settings);
        let message = OutboundMessage {
            id: "m".into(),
            channel: crate::Channel::SMS,
            from: "+15550001111".into(),
            to: "+15550002222".into(),
            subject: None,
            body: "hi".into(),
            attachments: vec![],
            tags: vec![],
        };
        let result = provider.send(&message).await;
        assert!(matches!(result, Err(SendError::Ambiguous { ref code, .. }) if code == "500"), "{result:?}");

        let ok = MockProvider::new(MockSettings::default()).send(&message).await;
        assert_eq!(ok.map(|r| r.provider_message_id), Ok(Some("mock-0-0".into())));
    }

    #[test]
    fn settings_are_documented() {
        let Some(mock) = find("mock") else { panic!("mock kind not registered") };
        let docs = mock.settings();
        let names: Vec<&str> = docs.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "error_pct",
                "latency_ms",
                "rate_limited_pct",
                "rejected_pct",
                "retry_after_ms",
                "seed",
                "timeout_pct"
            ]
        );
        assert!(docs.iter().all(|d| !d.doc.is_empty() && !d.required));
        let retry_after = docs.iter().find(|d| d.name == "retry_after_ms");
        assert_eq!(
            retry_after.map(|d| (d.type_name.as_str(), d.default.clone())),
            Some(("u64?", Some(json!(null))))
        );
        let seed = docs.iter().find(|d| d.name == "seed");
        assert_eq!(seed.map(|d| (d.type_name.as_str(), d.default.clone())), Some(("u64", Some(json!(0)))));
    }
}

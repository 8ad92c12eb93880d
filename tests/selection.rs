//! Provider selection through the binary: weighted shares, an open breaker's share going to
//! the others, round-robin fairness, rule precedence, and each provider's own sender.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::fake_http::{FakeHttp, Reply};
use common::{client, send_native, wait_final, Server};
use serde_json::json;

/// First attempts per provider (every message here succeeds at its first attempt unless the
/// provider fails), from the attempts counter.
fn attempts(server: &Server) -> HashMap<String, u64> {
    let metrics = client().get(server.url("/metrics")).send().and_then(|r| r.text()).unwrap_or_default();
    let mut counts = HashMap::new();
    for line in metrics.lines().filter(|l| l.starts_with("switchboard_dispatch_attempts_total{")) {
        let provider =
            line.split("provider=\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap_or_default();
        let value: u64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0);
        *counts.entry(provider.to_owned()).or_insert(0) += value;
    }
    counts
}

fn completed(server: &Server) -> u64 {
    let metrics = client().get(server.url("/metrics")).send().and_then(|r| r.text()).unwrap_or_default();
    metrics
        .lines()
        .filter(|l| l.starts_with("switchboard_messages_completed_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Sends `count` SMS from 4 threads and waits until all are finished.
fn send_many(server: &Server, count: u32) {
    switchboard_providers::http::install_crypto_provider();
    let before = completed(server);
    std::thread::scope(|scope| {
        for t in 0..4 {
            scope.spawn(move || {
                // One client per thread: a blocking client per request would start a runtime each.
                let http = reqwest::blocking::Client::new();
                for n in (t..count).step_by(4) {
                    let message = json!({"channel": "sms", "from": "+12016661234", "to": format!("+1804555{:04}", n % 10_000), "body": "x"});
                    let status = http.post(server.url("/v1/messages")).json(&message).send().map(|r| r.status().as_u16());
                    assert_eq!(status.ok(), Some(202), "message {n} not accepted");
                }
            });
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while completed(server) < before + u64::from(count) {
        assert!(Instant::now() < deadline, "messages never finished:\n{}", server.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn share(counts: &HashMap<String, u64>, name: &str, total: u64) -> f64 {
    100.0 * counts.get(name).copied().unwrap_or(0) as f64 / total as f64
}

const SERVE: &[&str] = &["--store", "memory://", "--queue-capacity", "20000"];

#[test]
fn weighted_shares_within_two_percent() {
    let config = r#"
[providers.main]
kind = "mock"
[providers.canary]
kind = "mock"
[routes.sms]
strategy = "weighted"
providers = [{ name = "main", weight = 95 }, { name = "canary", weight = 5 }]
"#;
    let server = Server::start(config, SERVE, &[]);
    send_many(&server, 10_000);
    let counts = attempts(&server);
    let (main, canary) = (share(&counts, "main", 10_000), share(&counts, "canary", 10_000));
    assert!((main - 95.0).abs() <= 2.0 && (canary - 5.0).abs() <= 2.0, "{counts:?}");
}

#[test]
fn an_open_breaker_leaves_its_share_to_the_others() {
    let config = r#"
[providers.broken]
kind = "mock"
error_pct = 100
breaker.failure_threshold = 1
breaker.open_ms = 600000
[providers.b]
kind = "mock"
[providers.c]
kind = "mock"
[routes.sms]
strategy = "weighted"
max_attempts = 3
providers = [{ name = "broken", weight = 50 }, { name = "b", weight = 25 }, { name = "c", weight = 25 }]
"#;
    let server = Server::start(config, SERVE, &[]);
    // Until `broken` was drawn once: its failure opens its breaker (the message fails over).
    let deadline = Instant::now() + Duration::from_secs(30);
    while attempts(&server).get("broken").copied().unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "broken never drawn");
        send_many(&server, 10);
    }
    let before = attempts(&server);
    send_many(&server, 2_000);
    let after = attempts(&server);
    let grew = |name: &str| after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
    assert_eq!(grew("broken"), 0, "an open breaker is never tried: {after:?}");
    let (b, c) = (grew("b") as f64 / 20.0, grew("c") as f64 / 20.0);
    assert!((b - 50.0).abs() <= 4.0 && (c - 50.0).abs() <= 4.0, "b {b} % c {c} %");
}

#[test]
fn round_robin_takes_turns() {
    let config = r#"
[providers.a]
kind = "mock"
[providers.b]
kind = "mock"
[providers.c]
kind = "mock"
[routes.sms]
strategy = "round_robin"
providers = ["a", "b", "c"]
"#;
    let server = Server::start(config, SERVE, &[]);
    send_many(&server, 300);
    let counts = attempts(&server);
    assert_eq!(
        (counts.get("a"), counts.get("b"), counts.get("c")),
        (Some(&100), Some(&100), Some(&100)),
        "{counts:?}"
    );
}

#[test]
fn rules_pick_providers_first_match_wins() {
    let config = r#"
[providers.main]
kind = "mock"
[providers.uk]
kind = "mock"
[providers.otp]
kind = "mock"
[providers.mailer]
kind = "mock"
[providers.internal]
kind = "mock"
[routes.sms]
providers = ["main"]
[[routes.sms.rules]]
to_prefix = ["+44"]
providers = ["uk", "main"]
[[routes.sms.rules]]
tags = ["otp"]
providers = ["otp"]
[routes.email]
providers = ["mailer"]
[[routes.email.rules]]
to_domain = ["*.example.org"]
providers = ["internal"]
"#;
    let server = Server::start(config, SERVE, &[]);
    let cases = [
        (
            json!({"channel": "sms", "from": "+12016661234", "to": "+447700900123", "body": "x", "tags": ["otp"]}),
            "uk",
        ),
        (
            json!({"channel": "sms", "from": "+12016661234", "to": "+12025550123", "body": "x", "tags": ["otp"]}),
            "otp",
        ),
        (json!({"channel": "sms", "from": "+12016661234", "to": "+12025550123", "body": "x"}), "main"),
        (
            json!({"channel": "email", "from": "a@b.com", "to": "ops@mail.example.org", "body": "x"}),
            "internal",
        ),
        (json!({"channel": "email", "from": "a@b.com", "to": "ops@example.org", "body": "x"}), "mailer"),
    ];
    for (message, provider) in cases {
        let Some(id) = send_native(&server, &message) else { panic!("not accepted: {message}") };
        assert_eq!(wait_final(&server, &id)["provider"], provider, "{message}");
    }
}

#[test]
fn each_provider_sends_with_its_own_sender() {
    let down = FakeHttp::start(Reply::new(503, "down"));
    let up = FakeHttp::start(Reply::json(201, json!({"sid": "SM-up"})));
    let config = format!(
        r#"
[kinds.twilio]
account_sid = "AC0123456789abcdef0123456789abcdef"
auth_token = "${{TWILIO_AUTH_TOKEN}}"
[providers.first]
kind = "twilio"
from = "+15005550001"
base_url = "{}"
[providers.second]
kind = "twilio"
messaging_service_sid = "MG0123456789abcdef0123456789abcdef"
base_url = "{}"
[routes.sms]
providers = ["first", "second"]
"#,
        down.base, up.base
    );
    let server = Server::start(&config, SERVE, &[("TWILIO_AUTH_TOKEN", "t")]);
    let message = json!({"channel": "sms", "from": "+12016661234", "to": "+12025550123", "body": "x"});
    let Some(id) = send_native(&server, &message) else { panic!("not accepted") };
    let view = wait_final(&server, &id);
    assert_eq!(
        (view["status"].as_str(), view["provider"].as_str()),
        (Some("sent"), Some("second")),
        "{view}"
    );
    assert_eq!(down.last().form_values("From"), ["+15005550001"]);
    let sent = up.last();
    assert_eq!(sent.form_values("MessagingServiceSid"), ["MG0123456789abcdef0123456789abcdef"]);
    assert!(sent.form_values("From").is_empty(), "the message's own sender is never used");
}

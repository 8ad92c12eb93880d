//! Property test over the HTTP layer of the real binary: arbitrary JSON bodies (and near-valid
//! messages with random fields) and arbitrary headers, to every endpoint, never get a 5xx or
//! kill the server, every refusal carries the JSON error body, and nothing is stored unless the
//! answer was 202. Seeded: every run sends the same requests.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use common::{client, Server};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

const KEY: &str = "sb_props_key";

const CONFIG: &str = "[providers.p]\nkind = \"mock\"\n\n[routes.sms]\nproviders = [\"p\"]\n\n\
                      [routes.mms]\nproviders = [\"p\"]\n\n[routes.email]\nproviders = [\"p\"]\n";

const PATHS: &[(&str, &str)] = &[
    ("POST", "/api/messages/sms"),
    ("POST", "/api/messages/email"),
    ("POST", "/v1/messages"),
    ("GET", "/v1/messages/01a21b0b-e12f-757d-92cc-ade515dcfd46"),
    ("GET", "/v1/messages/%00..%2F"),
    ("GET", "/admin/routes"),
    ("GET", "/metrics"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("PUT", "/v1/messages"),
    ("POST", "/nowhere"),
];

/// Values a field of a message might hold: valid ones, near misses and junk.
fn field_value() -> impl Strategy<Value = Value> {
    let text = prop_oneof![
        Just("+12016661234".to_owned()),
        Just("+447700900123".to_owned()),
        Just("12345".to_owned()),
        Just("contact@gmail.com".to_owned()),
        Just("a@b".to_owned()),
        Just("https://x.org/a.png".to_owned()),
        Just("javascript:alert(1)".to_owned()),
        Just("sms".to_owned()),
        Just("mms".to_owned()),
        Just("email".to_owned()),
        Just("push".to_owned()),
        Just("2024-11-01T14:00:00Z".to_owned()),
        Just("x".repeat(2000)),
        Just("line\r\nBcc: x@y.z".to_owned()),
        Just("nul\u{0}x".to_owned()),
        Just("nel\u{85}x".to_owned()),
        Just("tab\tx".to_owned()),
        "\\PC{0,40}",
    ];
    let leaf = prop_oneof![
        text.prop_map(Value::String),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,8}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: &[&str] =
    &["channel", "from", "to", "body", "subject", "attachments", "tags", "type", "timestamp", "extra"];

/// A valid body of one of the shapes, with up to two fields replaced by random values.
fn mutated_valid() -> impl Strategy<Value = Vec<u8>> {
    let valid = prop::sample::select(vec![
        json!({"channel": "sms", "from": "+12016661234", "to": "+18045551234", "body": "hi"}),
        json!({"channel": "email", "from": "a@example.com", "to": "b@example.org", "subject": "s", "body": "<b>x</b>"}),
        json!({"channel": "mms", "from": "+12016661234", "to": "+18045551234", "body": "x", "attachments": ["https://x.org/a.png"]}),
        json!({"from": "+12016661234", "to": "+18045551234", "type": "sms", "body": "hi", "attachments": null, "timestamp": "2024-11-01T14:00:00Z"}),
        json!({"from": "a@example.com", "to": "b@example.org", "body": "hi", "attachments": [], "timestamp": "2024-11-01T14:00:00Z"}),
    ]);
    let mutations = prop::collection::vec((prop::sample::select(FIELDS), field_value()), 0..3);
    (valid, mutations, 0..3u8).prop_map(|(mut message, mutations, roll)| {
        // A third of the bodies stay valid.
        if roll > 0 {
            for (field, value) in mutations {
                message[field] = value;
            }
        }
        message.to_string().into_bytes()
    })
}

/// A body: a valid message slightly changed, arbitrary JSON, a message-shaped object with
/// random fields, or raw bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let message =
        prop::collection::btree_map(prop::sample::select(FIELDS), field_value(), 0..9).prop_map(|m| {
            let object: Map<String, Value> = m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            Value::Object(object).to_string().into_bytes()
        });
    prop_oneof![
        4 => mutated_valid(),
        3 => message,
        2 => field_value().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..200),
    ]
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    let content_type = prop_oneof![
        Just(Some("application/json")),
        Just(Some("application/json; charset=utf-8")),
        Just(Some("text/plain")),
        Just(None),
    ];
    let auth = prop_oneof![
        3 => Just(Some(format!("Bearer {KEY}"))),
        1 => Just(None),
        1 => "[ -~]{0,30}".prop_map(Some),
    ];
    let idempotency =
        prop_oneof![Just(None), "[ -~]{0,300}".prop_map(Some), Just(Some("fixed-key".to_owned()))];
    let extra = prop::collection::vec(("x-[a-z]{1,10}", "[ -~]{0,50}"), 0..3);
    // Sometimes more headers than allowed (100), or more bytes of them (16 KiB).
    let filler = prop_oneof![8 => Just((0usize, 0usize)), 1 => (90..130usize, 1..10usize), 1 => (1..3usize, 10_000..20_000usize)];
    let encoding = prop_oneof![6 => Just(None), 1 => Just(Some("gzip")), 1 => Just(Some("identity"))];
    let second_auth = prop::bool::weighted(0.1);
    (content_type, auth, idempotency, extra, filler, encoding, second_auth).prop_map(
        |(content_type, auth, idempotency, extra, (count, size), encoding, second_auth)| {
            let mut headers = extra;
            headers.extend((0..count).map(|i| (format!("x-fill-{i}"), "f".repeat(size))));
            if let Some(value) = encoding {
                headers.push(("content-encoding".into(), value.into()));
            }
            if second_auth {
                headers.push(("authorization".into(), format!("Bearer {KEY}")));
            }
            if let Some(value) = content_type {
                headers.push(("content-type".into(), value.into()));
            }
            if let Some(value) = auth {
                headers.push(("authorization".into(), value));
            }
            if let Some(value) = idempotency {
                headers.push(("idempotency-key".into(), value));
            }
            headers
        },
    )
}

fn accepted_total(server: &Server) -> u64 {
    let metrics = client()
        .get(server.url("/metrics"))
        .bearer_auth(KEY)
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default();
    metrics
        .lines()
        .filter(|l| l.starts_with("switchboard_messages_accepted_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn no_request_gets_a_5xx_or_stores_without_a_202() {
    let hash: String = Sha256::digest(KEY.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let keys = format!("props:{hash}:admin");
    // The SQLite store, so what was stored can be counted in it.
    let server = Server::start(CONFIG, &[], &[("SWITCHBOARD_API_KEYS", &keys)]);
    let new_messages = AtomicU64::new(0);
    let config = Config {
        cases: 300,
        rng_seed: RngSeed::Fixed(0x0ddba11),
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let strategy = (prop::sample::select(PATHS), body(), headers());
    let outcome = runner.run(&strategy, |((method, path), body, headers)| {
        let mut request = client().request(method.parse().unwrap_or_default(), server.url(path)).body(body);
        for (name, value) in &headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = request.send();
        let Ok(response) = response else {
            return Err(TestCaseError::fail(format!("no answer to {method} {path}:\n{}", server.logs())));
        };
        let status = response.status().as_u16();
        let replayed = response.headers().contains_key("idempotency-replayed");
        let text = response.text().unwrap_or_default();
        prop_assert!(status < 500, "{} {} answered {}: {}", method, path, status, text);
        if status >= 400 {
            let code = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
            prop_assert!(
                code.is_some_and(|c| !c.is_empty()),
                "{} {} answered {} without the JSON error: {:?}",
                method,
                path,
                status,
                text
            );
        }
        if status == 202 && !replayed {
            new_messages.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    if let Err(error) = outcome {
        panic!("{error}");
    }
    let new = new_messages.load(Ordering::Relaxed);
    assert_eq!(accepted_total(&server), new, "counted as accepted without a 202");
    let stored = common::stored_messages(&server.dir().join("switchboard.db"));
    assert_eq!(u64::try_from(stored).ok(), Some(new), "stored without a 202");
    assert!(new_messages.load(Ordering::Relaxed) > 0, "the generator never reached an accepted message");
}

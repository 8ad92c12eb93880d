//! API keys, limits and abuse controls through the real binary.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{client, Server};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const CONFIG: &str = r#"
[providers.p]
kind = "mock"

[routes.sms]
providers = ["p"]
allowed_country_codes = ["1", "44"]
max_per_recipient_per_hour = 2

[routes.mms]
providers = ["p"]

[routes.email]
providers = ["p"]
"#;

/// The clients' keys: marker values that must never show up in logs or answers.
const APP: &str = "sb_MARKER_app_5d2c8e";
const OTHER: &str = "sb_MARKER_other_77ab10";
const OPS: &str = "sb_MARKER_ops_0f93c4";

fn hex_sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn keys_env() -> String {
    format!("app:{},other:{}, ops:{}:admin", hex_sha256(APP), hex_sha256(OTHER), hex_sha256(OPS))
}

/// (status, body, headers) of a request with an optional bearer key.
fn call(
    server: &Server,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value, String) {
    let mut request = client().request(method.parse().unwrap_or_default(), server.url(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let Ok(response) = request.send() else { return (0, Value::Null, String::new()) };
    let status = response.status().as_u16();
    let headers = format!("{:?}", response.headers());
    let text = response.text().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)), headers)
}

fn sms(to: &str) -> Value {
    json!({"channel": "sms", "from": "+12016661234", "to": to, "body": "hi"})
}

#[test]
fn keys_decide_who_may_do_what() {
    let env = [("SWITCHBOARD_API_KEYS", keys_env()), ("RUST_LOG", "debug".to_owned())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut server = Server::start(CONFIG, &[], &env);
    let mut answers = String::new();
    let mut expect =
        |method: &str, path: &str, key: Option<&str>, body: Option<&Value>, status: u16, code: &str| {
            let (got, answer, headers) = call(&server, method, path, key, body);
            assert_eq!(got, status, "{method} {path} with {key:?}: {answer}");
            if !code.is_empty() {
                assert_eq!(answer["error"]["code"], code, "{method} {path}: {answer}");
            }
            if status == 401 {
                assert!(headers.contains("\"www-authenticate\": \"Bearer\""), "{headers}");
            }
            answers.push_str(&format!("{answer} {headers}\n"));
            answer
        };
    expect("GET", "/healthz", None, None, 200, "");
    expect("GET", "/readyz", None, None, 200, "");
    expect("POST", "/v1/messages", None, Some(&sms("+18045551234")), 401, "unauthorized");
    expect("POST", "/v1/messages", Some("sb_wrong"), Some(&sms("+18045551234")), 401, "unauthorized");
    expect("POST", "/api/messages/sms", None, Some(&sms("+18045551234")), 401, "unauthorized");
    expect("GET", "/metrics", None, None, 401, "unauthorized");
    expect("GET", "/admin/routes", None, None, 401, "unauthorized");
    expect("GET", "/nowhere", None, None, 401, "unauthorized");
    let accepted = expect("POST", "/v1/messages", Some(APP), Some(&sms("+18045551234")), 202, "");
    let id = accepted["id"].as_str().unwrap_or_default().to_owned();
    expect("GET", &format!("/v1/messages/{id}"), Some(APP), None, 200, "");
    expect("GET", &format!("/v1/messages/{id}"), Some(OTHER), None, 404, "not_found");
    // An admin key reads any key's message (as it searches and retries them).
    expect("GET", &format!("/v1/messages/{id}"), Some(OPS), None, 200, "");
    expect("GET", &format!("/v1/messages/{id}"), None, None, 401, "unauthorized");
    expect("GET", "/admin/routes", Some(APP), None, 403, "forbidden");
    expect("POST", "/admin/reload", Some(APP), None, 403, "forbidden");
    expect("GET", "/admin/routes", Some(OPS), None, 200, "");
    expect("GET", "/metrics", Some(OTHER), None, 200, "");

    // Idempotency keys are per API key: the same key from two clients makes two messages.
    let send_with = |key: &str| {
        let response = client()
            .post(server.url("/v1/messages"))
            .bearer_auth(key)
            .header("Idempotency-Key", "order-1")
            .json(&sms("+18045550001"))
            .send();
        response.and_then(|r| r.json::<Value>()).unwrap_or_default()["id"].as_str().map(str::to_owned)
    };
    let (mine, theirs) = (send_with(APP), send_with(OTHER));
    assert!(mine.is_some() && theirs.is_some() && mine != theirs, "{mine:?} {theirs:?}");
    assert_eq!(send_with(APP), mine, "a replay for the same key");

    assert_eq!(server.terminate(), Some(0));
    let logs = server.whole_log();
    for marker in [APP, OTHER, OPS, &hex_sha256(APP)] {
        assert!(!answers.contains(marker), "an answer shows {marker}");
        assert!(!logs.contains(marker), "the log shows {marker}:\n{logs}");
    }
}

/// With keys configured, `--metrics-public` (or `SWITCHBOARD_METRICS_PUBLIC=true`) serves
/// `/metrics` without a key, and nothing else; without it `/metrics` is 401
/// (`keys_decide_who_may_do_what`).
#[test]
fn metrics_public_opens_metrics_and_nothing_else() {
    let keys = keys_env();
    let by_flag = Server::start(CONFIG, &["--metrics-public"], &[("SWITCHBOARD_API_KEYS", &keys)]);
    let by_env = Server::start(
        CONFIG,
        &[],
        &[("SWITCHBOARD_API_KEYS", &keys), ("SWITCHBOARD_METRICS_PUBLIC", "true")],
    );
    for server in [&by_flag, &by_env] {
        let (status, metrics, _) = call(server, "GET", "/metrics", None, None);
        assert_eq!(status, 200, "{metrics}");
        assert!(metrics.as_str().is_some_and(|m| m.contains("switchboard_")), "{metrics}");
        for (method, path) in [("GET", "/admin/routes"), ("POST", "/v1/messages"), ("GET", "/v1/messages/x")]
        {
            let (status, answer, _) = call(server, method, path, None, Some(&sms("+18045551234")));
            assert_eq!((status, &answer["error"]["code"]), (401, &json!("unauthorized")), "{method} {path}");
        }
    }
}

/// Whole seconds, rounded up, from `time` to the next clock hour.
fn seconds_to_next_hour(time: std::time::SystemTime) -> u64 {
    let since = time.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let left = Duration::from_secs((since.as_secs() / 3600 + 1) * 3600) - since;
    left.as_secs() + u64::from(left.subsec_nanos() > 0)
}

#[test]
fn limits_per_key_country_and_recipient() {
    let env = [("SWITCHBOARD_API_KEYS", keys_env())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start(CONFIG, &["--key-rate-limit", "0.5", "--key-rate-burst", "3"], &env);
    // Country allow-list: +1 and +44 pass, +33 does not (its request still counts for the key).
    let (status, answer, _) = call(&server, "POST", "/v1/messages", Some(APP), Some(&sms("+33612345678")));
    assert_eq!((status, &answer["error"]["code"]), (403, &json!("country_not_allowed")), "{answer}");
    assert_eq!(answer["error"]["field"], "to");
    for to in ["+447700900123", "+12025550123"] {
        assert_eq!(call(&server, "POST", "/v1/messages", Some(APP), Some(&sms(to))).0, 202);
    }
    // The burst of 3 is spent: the next send of this key waits, another key's does not.
    let (status, answer, headers) =
        call(&server, "POST", "/v1/messages", Some(APP), Some(&sms("+18045551234")));
    assert_eq!((status, &answer["error"]["code"]), (429, &json!("rate_limited")), "{answer}");
    assert!(headers.contains("\"retry-after\": \"2\""), "{headers}");
    // Per recipient: two an hour, whoever sends them.
    for key in [OTHER, OPS] {
        let (status, answer, _) =
            call(&server, "POST", "/v1/messages", Some(key), Some(&sms("+18045559999")));
        assert_eq!(status, 202, "{answer}");
    }
    let before = std::time::SystemTime::now();
    let (status, answer, headers) =
        call(&server, "POST", "/v1/messages", Some(OTHER), Some(&sms("+18045559999")));
    let after = std::time::SystemTime::now();
    assert_eq!((status, &answer["error"]["code"]), (429, &json!("recipient_rate_limited")), "{answer}");
    // Until the next clock hour, in whole seconds rounded up, as of the moment it was answered.
    let seconds: u64 = headers
        .split("\"retry-after\": \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no numeric Retry-After: {headers}"));
    let (latest, earliest) = (seconds_to_next_hour(before), seconds_to_next_hour(after));
    if earliest <= latest {
        assert!(
            (earliest..=latest).contains(&seconds),
            "Retry-After {seconds}, expected {earliest}..={latest}"
        );
    } else {
        // The hour turned during the request.
        assert!((1..=3600).contains(&seconds), "Retry-After {seconds}");
    }
    let (status, _, _) = call(&server, "POST", "/v1/messages", Some(OTHER), Some(&sms("+18045558888")));
    assert_eq!(status, 202);
}

#[test]
fn the_recipient_cap_counts_a_mailbox_however_its_address_is_spelled() {
    let config = "[providers.p]\nkind = \"mock\"\n\n[routes.email]\nproviders = [\"p\"]\nmax_per_recipient_per_hour = 2\n";
    let server = Server::start(config, &["--store", "memory://"], &[]);
    let email = |to: &str| json!({"channel": "email", "from": "a@example.com", "to": to, "body": "hi"});
    for to in ["victim@example.com", "Victim@EXAMPLE.com"] {
        assert_eq!(call(&server, "POST", "/v1/messages", None, Some(&email(to))).0, 202, "{to}");
    }
    for to in ["VICTIM@example.com", "victim@Example.Com", "victim+promo@example.com"] {
        let (status, answer, _) = call(&server, "POST", "/v1/messages", None, Some(&email(to)));
        assert_eq!(
            (status, &answer["error"]["code"]),
            (429, &json!("recipient_rate_limited")),
            "{to}: {answer}"
        );
    }
    assert_eq!(call(&server, "POST", "/v1/messages", None, Some(&email("other@example.com"))).0, 202);
}

#[test]
fn without_keys_only_loopback() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("routes.toml"), CONFIG).unwrap_or_else(|e| panic!("{e}"));
    let refused =
        common::switchboard(dir.path(), &["serve", "--listen", "0.0.0.0:0", "--store", "memory://"], &[]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = common::stderr(&refused);
    assert!(stderr.contains("refusing to listen on 0.0.0.0:0 without API keys"), "{stderr}");
    // Loopback without keys: runs, and says authentication is off.
    let server = Server::start(CONFIG, &["--store", "memory://"], &[]);
    assert!(server.logs().contains("authentication is off"), "{}", server.logs());
    assert!(common::send_sms(&server, 1).is_some());
}

#[test]
fn keys_new_prints_a_key_and_its_entry() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let output = common::switchboard(dir.path(), &["keys", "new", "billing", "--admin"], &[]);
    assert_eq!(output.status.code(), Some(0), "{}", common::stderr(&output));
    let stdout = common::stdout(&output);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let (key, entry) = (lines[0], lines[1]);
    assert!(key.starts_with("sb_") && key.len() == 67, "{key}");
    assert_eq!(entry, format!("billing:{}:admin", hex_sha256(key)));
    let again = common::stdout(&common::switchboard(dir.path(), &["keys", "new", "billing"], &[]));
    assert!(!again.contains(key), "keys must be fresh");
    let bad = common::switchboard(dir.path(), &["keys", "new", "bad name"], &[]);
    assert_eq!(bad.status.code(), Some(2));

    // The entry works from a keys file, comments and blank lines allowed.
    std::fs::write(dir.path().join("keys"), format!("# billing team\n\n{entry}\n"))
        .unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("keys").display().to_string();
    let server = Server::start(CONFIG, &["--api-keys-file", &file, "--store", "memory://"], &[]);
    assert_eq!(call(&server, "GET", "/admin/routes", Some(key), None).0, 200);
    assert_eq!(call(&server, "GET", "/admin/routes", None, None).0, 401);
    // A broken keys file: exit 2, naming the entry, not echoing it.
    std::fs::write(dir.path().join("keys"), "billing:not-a-hash-sb_MARKER\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let broken = common::switchboard(dir.path(), &["serve", "--api-keys-file", &file], &[]);
    assert_eq!(broken.status.code(), Some(2));
    let stderr = common::stderr(&broken);
    assert!(stderr.contains("entry 1") && !stderr.contains("sb_MARKER"), "{stderr}");
}

/// Raw HTTP for what a well-behaved client cannot send: huge headers, a body that never comes.
fn raw(server: &Server, request: &str, wait: Duration) -> String {
    let address = server.base.trim_start_matches("http://");
    let Ok(mut stream) = std::net::TcpStream::connect(address) else { return String::new() };
    let _ = stream.set_read_timeout(Some(wait));
    let _ = stream.write_all(request.as_bytes());
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[test]
fn header_size_body_time_and_concurrency_limits() {
    let args = ["--max-header-bytes", "2048", "--request-timeout", "500ms", "--max-concurrent-requests", "1"];
    let server = Server::start(CONFIG, &args, &[]);
    let big = "x".repeat(4096);
    let answer = raw(
        &server,
        &format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"),
        Duration::from_secs(5),
    );
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(answer.contains("headers_too_large"), "{answer}");

    // A body that never arrives holds the one request slot: others are told to come back.
    let address = server.base.trim_start_matches("http://").to_owned();
    let slow = std::thread::spawn(move || {
        let Ok(mut stream) = std::net::TcpStream::connect(&address) else { return String::new() };
        let head = "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{";
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    });
    std::thread::sleep(Duration::from_millis(150));
    let (status, answer, headers) = call(&server, "POST", "/v1/messages", None, Some(&sms("+18045551234")));
    assert_eq!((status, &answer["error"]["code"]), (503, &json!("overloaded")), "{answer}");
    assert!(headers.contains("\"retry-after\": \"1\""), "{headers}");
    assert_eq!(call(&server, "GET", "/healthz", None, None).0, 200, "health checks are exempt");
    let slow = slow.join().unwrap_or_default();
    assert!(slow.starts_with("HTTP/1.1 408") && slow.contains("request_timeout"), "{slow}");
    assert_eq!(call(&server, "POST", "/v1/messages", None, Some(&sms("+18045551234"))).0, 202);
}

/// What a send would be refused, `explain` refuses too: a country the route does not allow
/// (CLI: exit 2 with the API's reason; `/admin/explain`: the API's 403).
#[test]
fn explain_refuses_a_country_the_route_does_not_allow() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("routes.toml"), CONFIG).unwrap_or_else(|e| panic!("{e}"));
    let refused =
        common::switchboard(dir.path(), &["explain", "--channel", "sms", "--to", "+33612345678"], &[]);
    assert_eq!(refused.status.code(), Some(2), "{}", common::stderr(&refused));
    assert!(
        common::stderr(&refused).contains("country calling code is not allowed for channel `sms`"),
        "{}",
        common::stderr(&refused)
    );
    let allowed =
        common::switchboard(dir.path(), &["explain", "--channel", "sms", "--to", "+447700900123"], &[]);
    assert_eq!(allowed.status.code(), Some(0), "{}", common::stderr(&allowed));

    let server = Server::start(CONFIG, &[], &[]);
    let (status, answer, _) =
        call(&server, "GET", "/admin/explain?channel=sms&to=%2B33612345678", None, None);
    assert_eq!((status, &answer["error"]["code"]), (403, &json!("country_not_allowed")), "{answer}");
    let (status, answer, _) =
        call(&server, "GET", "/admin/explain?channel=sms&to=%2B447700900123", None, None);
    assert_eq!(status, 200, "{answer}");
}

/// Two `Idempotency-Key` headers are ambiguous: refused, not one of them picked.
#[test]
fn two_idempotency_keys_are_refused() {
    let server = Server::start(CONFIG, &[], &[]);
    let response = client()
        .post(server.url("/v1/messages"))
        .header("idempotency-key", "k1")
        .header("idempotency-key", "k2")
        .json(&sms("+447700900123"))
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status().as_u16(), 400);
    let answer: Value = response.json().unwrap_or_default();
    assert_eq!(
        (&answer["error"]["code"], &answer["error"]["field"]),
        (&json!("invalid_field"), &json!("Idempotency-Key")),
        "{answer}"
    );
}

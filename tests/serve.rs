//! `switchboard serve` end to end: a real server on an ephemeral port, driven over HTTP.

mod common;

use std::time::Duration;

use common::{client, wait_final, Server};
use serde_json::{json, Value};

/// POSTs JSON; returns status, headers and the parsed body.
fn post(server: &Server, path: &str, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = match client().post(server.url(path)).json(body).send() {
        Ok(response) => response,
        Err(error) => panic!("POST {path}: {error}"),
    };
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.json().unwrap_or(Value::Null))
}

fn get(server: &Server, path: &str) -> (u16, String) {
    match client().get(server.url(path)).send() {
        Ok(response) => (response.status().as_u16(), response.text().unwrap_or_default()),
        Err(error) => panic!("GET {path}: {error}"),
    }
}

fn sms(to: &str) -> Value {
    json!({"from": "+12016661234", "to": to, "type": "sms", "body": "Hello", "attachments": null, "timestamp": "2024-11-01T14:00:00Z"})
}

fn email() -> Value {
    json!({"from": "user@usehatchapp.com", "to": "contact@gmail.com", "body": "<b>hi</b>", "attachments": [], "timestamp": "2024-11-01T14:00:00Z"})
}

/// Sends and returns the message id, asserting 202.
fn send(server: &Server, path: &str, body: &Value) -> String {
    let (status, _, answer) = post(server, path, body);
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["status"], "queued");
    answer["id"].as_str().map(str::to_owned).unwrap_or_default()
}

fn outcomes(view: &Value) -> Vec<(String, String)> {
    view["attempts"]
        .as_array()
        .map(|attempts| {
            attempts
                .iter()
                .map(|a| {
                    (
                        a["provider"].as_str().unwrap_or("").to_owned(),
                        a["outcome"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
}

/// Fast retries so tests do not wait out production backoffs.
const FAST: &str = "[defaults]\nretry.initial_backoff_ms = 1\nretry.max_backoff_ms = 5\n";

fn config(providers: &str, routes: &str) -> String {
    format!("{FAST}\n{providers}\n{routes}")
}

#[test]
fn sms_and_email_go_to_their_own_providers() {
    let server = Server::start(
        &config(
            "[providers.sms-p]\nkind = \"mock\"\nchannels = [\"sms\"]\n[providers.email-p]\nkind = \"mock\"\nchannels = [\"email\"]\n",
            "[routes.sms]\nproviders = [\"sms-p\"]\n[routes.email]\nproviders = [\"email-p\"]\n",
        ),
        &[],
        &[],
    );
    let sms_id = send(&server, "/api/messages/sms", &sms("+18045551234"));
    let email_id = send(&server, "/api/messages/email", &email());
    let sms_view = wait_final(&server, &sms_id);
    let email_view = wait_final(&server, &email_id);
    assert_eq!((sms_view["status"].as_str(), sms_view["provider"].as_str()), (Some("sent"), Some("sms-p")));
    assert_eq!(
        (email_view["status"].as_str(), email_view["provider"].as_str()),
        (Some("sent"), Some("email-p"))
    );
    assert_eq!(sms_view["channel"], "sms");
    assert_eq!(email_view["channel"], "email");
    assert!(sms_view["provider_message_id"].as_str().is_some_and(|id| id.starts_with("mock-")));

    // The native API answers with a Location to poll.
    let (status, headers, answer) = post(
        &server,
        "/v1/messages",
        &json!({"channel": "sms", "from": "+12016661234", "to": "+18045551234", "body": "x", "tags": ["otp"]}),
    );
    assert_eq!(status, 202);
    let id = answer["id"].as_str().unwrap_or_default();
    let location = headers.get("location").and_then(|v| v.to_str().ok());
    assert_eq!(location, Some(format!("/v1/messages/{id}").as_str()));
    assert_eq!(wait_final(&server, id)["tags"], json!(["otp"]));
    assert_eq!(get(&server, "/v1/messages/00000000-0000-0000-0000-000000000000").0, 404);
}

/// Sends 10 sms and 10 email one at a time; returns each message's final status and attempts.
fn seeded_run() -> Vec<(String, Vec<(String, String)>)> {
    let server = Server::start(
        &config(
            "[providers.sms-a]\nkind = \"mock\"\nchannels = [\"sms\"]\nseed = 11\nerror_pct = 40\n\
             [providers.sms-b]\nkind = \"mock\"\nchannels = [\"sms\"]\nseed = 12\nerror_pct = 30\n\
             [providers.email-a]\nkind = \"mock\"\nchannels = [\"email\"]\nseed = 21\nerror_pct = 50\nrejected_pct = 10\n",
            "[routes.sms]\nproviders = [\"sms-a\", \"sms-b\"]\n[routes.email]\nproviders = [\"email-a\"]\nmax_attempts = 2\n",
        ),
        &[],
        &[],
    );
    let mut results = Vec::new();
    for i in 0..10 {
        for (path, body) in
            [("/api/messages/sms", sms(&format!("+1804555{i:04}"))), ("/api/messages/email", email())]
        {
            let view = wait_final(&server, &send(&server, path, &body));
            results.push((view["status"].as_str().unwrap_or("").to_owned(), outcomes(&view)));
        }
    }
    results
}

#[test]
fn the_same_seeds_give_the_same_outcomes() {
    let first = seeded_run();
    assert_eq!(first, seeded_run());
    // Not a trivial stream: both endings and several outcomes occur.
    let statuses: std::collections::HashSet<&str> = first.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(statuses.len(), 2, "{first:?}");
    let kinds: std::collections::HashSet<&str> =
        first.iter().flat_map(|(_, o)| o.iter().map(|(_, k)| k.as_str())).collect();
    assert!(kinds.contains("error") && kinds.contains("success"), "{kinds:?}");
}

#[test]
fn a_failing_sms_provider_opens_only_its_own_breaker() {
    let server = Server::start(
        &config(
            "[providers.sms-bad]\nkind = \"mock\"\nchannels = [\"sms\"]\nerror_pct = 100\nbreaker.failure_threshold = 2\nbreaker.open_ms = 60000\n\
             [providers.email-p]\nkind = \"mock\"\nchannels = [\"email\"]\nbreaker.failure_threshold = 2\n",
            "[routes.sms]\nproviders = [\"sms-bad\"]\nmax_attempts = 1\n[routes.email]\nproviders = [\"email-p\"]\n",
        ),
        &[],
        &[],
    );
    for _ in 0..2 {
        let view = wait_final(&server, &send(&server, "/api/messages/sms", &sms("+18045551234")));
        assert_eq!(view["status"], "failed");
    }
    // The breaker is open now: the next sms waits for it, still `queued`: no attempt made.
    let waiting = send(&server, "/api/messages/sms", &sms("+18045551234"));
    for _ in 0..3 {
        let view = wait_final(&server, &send(&server, "/api/messages/email", &email()));
        assert_eq!((view["status"].as_str(), view["provider"].as_str()), (Some("sent"), Some("email-p")));
    }
    let (_, admin) = get(&server, "/admin/routes");
    let admin: Value = serde_json::from_str(&admin).unwrap_or(Value::Null);
    let breaker = |name: &str| {
        admin["providers"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .map(|p| p["breaker"].clone())
    };
    assert_eq!(breaker("sms-bad"), Some(json!("open")));
    assert_eq!(breaker("email-p"), Some(json!("closed")));
    let (_, metrics) = get(&server, "/metrics");
    assert!(metrics.contains("switchboard_breaker_state{provider=\"sms-bad\"} 2"), "{metrics}");
    assert!(metrics.contains("switchboard_breaker_state{provider=\"email-p\"} 0"), "{metrics}");
    assert!(
        metrics.contains("switchboard_breaker_transitions_total{provider=\"sms-bad\",to=\"open\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "switchboard_dispatch_attempts_total{provider=\"sms-bad\",channel=\"sms\",outcome=\"error\"} 2"
        ),
        "{metrics}"
    );
    let (_, view) = get(&server, &format!("/v1/messages/{waiting}"));
    let view: Value = serde_json::from_str(&view).unwrap_or(Value::Null);
    assert_eq!(
        (view["status"].as_str(), view["attempts"].as_array().map(Vec::len)),
        (Some("queued"), Some(0)),
        "{view}"
    );
}

#[test]
fn failover_to_the_backup_when_the_primary_fails() {
    let server = Server::start(
        &config(
            "[providers.primary]\nkind = \"mock\"\nerror_pct = 100\n[providers.backup]\nkind = \"mock\"\n",
            "[routes.sms]\nproviders = [\"primary\", \"backup\"]\n[routes.mms]\nproviders = [\"primary\", \"backup\"]\n[routes.email]\nproviders = [\"backup\"]\n",
        ),
        &[],
        &[],
    );
    for _ in 0..3 {
        let view = wait_final(&server, &send(&server, "/api/messages/sms", &sms("+18045551234")));
        assert_eq!((view["status"].as_str(), view["provider"].as_str()), (Some("sent"), Some("backup")));
        assert_eq!(outcomes(&view), pairs(&[("primary", "error"), ("backup", "success")]));
        assert_eq!(view["attempts"][0]["error_class"], "ambiguous");
        assert_eq!(view["attempts"][0]["error_code"], "500");
    }
}

#[test]
fn a_429_pauses_the_provider_for_its_retry_after() {
    // Seed 0 at 50 % draws 429, 429, then success.
    let server = Server::start(
        &config(
            "[providers.limited]\nkind = \"mock\"\nseed = 0\nrate_limited_pct = 50\nretry_after_ms = 400\n",
            "[routes.sms]\nproviders = [\"limited\"]\nmax_attempts = 5\n",
        ),
        &[],
        &[],
    );
    let view = wait_final(&server, &send(&server, "/api/messages/sms", &sms("+18045551234")));
    assert_eq!(view["status"], "sent", "{view}");
    assert_eq!(
        outcomes(&view),
        pairs(&[("limited", "rate_limited"), ("limited", "rate_limited"), ("limited", "success")])
    );
    let times: Vec<Duration> = view["attempts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["time"].as_str())
        .filter_map(|t| humantime::parse_rfc3339(t).ok())
        .filter_map(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .collect();
    assert_eq!(times.len(), 3);
    for pair in times.windows(2) {
        // Recorded when each attempt ended; the next may start no sooner than Retry-After.
        assert!(pair[1] - pair[0] >= Duration::from_millis(399), "retried after {:?}", pair[1] - pair[0]);
    }
}

#[test]
fn timeouts_fail_over_then_give_up() {
    let server = Server::start(
        &config(
            "[providers.slow]\nkind = \"mock\"\ntimeout_pct = 100\ntimeout_ms = 50\n",
            "[routes.sms]\nproviders = [\"slow\"]\nmax_attempts = 2\n",
        ),
        &[],
        &[],
    );
    let view = wait_final(&server, &send(&server, "/api/messages/sms", &sms("+18045551234")));
    assert_eq!(view["status"], "failed");
    assert_eq!(outcomes(&view), pairs(&[("slow", "timeout"), ("slow", "timeout")]));
    assert_eq!(view["attempts"][0]["error_class"], "ambiguous");
    assert_eq!(view["error"]["code"], "attempts_exhausted");
}

#[test]
fn a_rejection_fails_at_once_without_failover() {
    let server = Server::start(
        &config(
            "[providers.strict]\nkind = \"mock\"\nrejected_pct = 100\n[providers.backup]\nkind = \"mock\"\n",
            "[routes.sms]\nproviders = [\"strict\", \"backup\"]\n",
        ),
        &[],
        &[],
    );
    let view = wait_final(&server, &send(&server, "/api/messages/sms", &sms("+18045551234")));
    assert_eq!(view["status"], "failed");
    assert_eq!(outcomes(&view), pairs(&[("strict", "rejected")]));
    assert_eq!(
        (view["error"]["code"].as_str(), view["provider"].as_str()),
        (Some("rejected"), Some("strict"))
    );
    assert_eq!(view["attempts"][0]["error_class"], "rejected");
}

#[test]
fn a_channel_without_a_route_is_refused_with_no_route() {
    let server = Server::start(
        &config("[providers.p]\nkind = \"mock\"\n", "[routes.sms]\nproviders = [\"p\"]\n"),
        &[],
        &[],
    );
    let (status, headers, body) = post(&server, "/api/messages/email", &email());
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "no_route");
    assert_eq!(headers.get("retry-after").map(|v| v.as_bytes()), Some(&b"30"[..]), "{headers:?}");
    let (_, metrics) = get(&server, "/metrics");
    assert!(
        metrics.contains("switchboard_routing_errors_total{channel=\"email\",reason=\"no_route\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("switchboard_messages_accepted_total{channel=\"email\"}"), "{metrics}");
    assert_eq!(
        common::stored_messages(&server.dir().join("switchboard.db")),
        0,
        "a refused message was stored"
    );
}

#[test]
fn the_service_refuses_an_invalid_config() {
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(error) => panic!("{error}"),
    };
    let _ = std::fs::write(dir.path().join("routes.toml"), "[providers.p]\nkind = \"mokc\"\n");
    let output = common::switchboard(dir.path(), &["serve", "--listen", "127.0.0.1:0"], &[]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = common::stderr(&output);
    assert!(stderr.contains("error[unknown-kind]") && stderr.contains("routes.toml:2:8"), "{stderr}");
    let missing = common::switchboard(dir.path(), &["serve", "--config", "nope.toml"], &[]);
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn graceful_shutdown_finishes_in_flight_dispatches() {
    let mut server = Server::start(
        &config(
            "[providers.slowish]\nkind = \"mock\"\nlatency_ms = 300\n",
            "[routes.sms]\nproviders = [\"slowish\"]\n",
        ),
        &["--grace-period", "5s"],
        &[],
    );
    for _ in 0..3 {
        send(&server, "/api/messages/sms", &sms("+18045551234"));
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(server.terminate(), Some(0), "{}", server.logs());
    let logs = server.logs();
    assert!(logs.contains("SIGTERM received"), "{logs}");
    assert!(logs.contains("stopped with no message left queued"), "{logs}");
    assert_eq!(logs.matches("message failed").count(), 0, "{logs}");
}

#[test]
fn logs_mask_recipients_and_never_show_bodies() {
    let mut server = Server::start(
        &config(
            "[providers.flaky]\nkind = \"mock\"\nerror_pct = 100\n",
            "[routes.sms]\nproviders = [\"flaky\"]\nmax_attempts = 1\n",
        ),
        &[],
        &[("SWITCHBOARD_LOG_FORMAT", "json"), ("RUST_LOG", "debug")],
    );
    let body =
        json!({"from": "+12016661234", "to": "+18045559876", "type": "sms", "body": "TOP-SECRET-BODY"});
    wait_final(&server, &send(&server, "/api/messages/sms", &body));
    let logs = server.whole_log();
    assert!(!logs.contains("TOP-SECRET-BODY") && !logs.contains("+18045559876"), "{logs}");
    let attempt = logs.lines().find(|l| l.contains("dispatch attempt failed")).unwrap_or_default();
    let event: Value = serde_json::from_str(attempt).unwrap_or(Value::Null);
    for field in ["message_id", "channel", "provider", "attempt", "outcome", "latency_ms"] {
        assert!(!event[field].is_null(), "{field} missing in {attempt}");
    }
    assert_eq!(event["to"], "+1804****876");
}

#[test]
fn a_full_queue_refuses_with_queue_full_and_stores_nothing() {
    let server = Server::start(
        &config(
            // Slow enough that the worker's first message is still out when the sixth is posted,
            // however loaded the machine (the test never waits for it).
            "[providers.slow]\nkind = \"mock\"\nlatency_ms = 5000\n",
            "[routes.sms]\nproviders = [\"slow\"]\n",
        ),
        &["--queue-capacity", "1", "--workers", "1"],
        &[],
    );
    // One message in the worker, one in the queue: the rest are refused.
    let mut accepted = 0;
    let mut refused = 0;
    for _ in 0..6 {
        let (status, headers, body) = post(&server, "/api/messages/sms", &sms("+18045551234"));
        match status {
            202 => accepted += 1,
            503 => {
                assert_eq!(body["error"]["code"], "queue_full");
                assert_eq!(headers.get("retry-after").map(|v| v.as_bytes()), Some(&b"1"[..]), "{headers:?}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(refused >= 3 && accepted >= 2, "accepted {accepted}, refused {refused}");
    let (_, metrics) = get(&server, "/metrics");
    assert!(
        metrics.contains(&format!("switchboard_messages_accepted_total{{channel=\"sms\"}} {accepted}")),
        "{metrics}"
    );
    // In the store itself: the accepted ones and nothing else.
    assert_eq!(common::stored_messages(&server.dir().join("switchboard.db")), accepted);
}

#[test]
fn sends_wait_for_the_providers_rate_limit() {
    let server = Server::start(
        &config(
            "[providers.metered]\nkind = \"mock\"\nrate_limit.per_second = 10\nrate_limit.burst = 1\n",
            "[routes.sms]\nproviders = [\"metered\"]\n",
        ),
        &[],
        &[],
    );
    let ids: Vec<String> = (0..6).map(|_| send(&server, "/api/messages/sms", &sms("+18045551234"))).collect();
    let mut times: Vec<Duration> = ids
        .iter()
        .map(|id| wait_final(&server, id))
        .inspect(|view| assert_eq!(view["status"], "sent", "{view}"))
        .filter_map(|view| {
            view["attempts"][0]["time"].as_str().and_then(|t| humantime::parse_rfc3339(t).ok())
        })
        .filter_map(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .collect();
    times.sort();
    assert_eq!(times.len(), 6);
    // One token up front, then one every 100 ms: nothing dropped, nothing sent early.
    assert!(times[5] - times[0] >= Duration::from_millis(480), "spread {:?}", times[5] - times[0]);
}

/// Once shutdown began (SIGTERM logged), while a slow provider still holds a message, the
/// instance stays reachable but out of rotation: `/readyz` answers 503 `not_ready` and sends are
/// refused 503 `shutting_down` (Retry-After 1), until the message went out and the process exits.
#[test]
fn readyz_is_503_and_sends_are_refused_once_shutdown_began() {
    let mut server = Server::start(
        &config(
            "[providers.slow]\nkind = \"mock\"\nlatency_ms = 1500\n",
            "[routes.sms]\nproviders = [\"slow\"]\n",
        ),
        &["--grace-period", "20s"],
        &[],
    );
    assert_eq!(get(&server, "/readyz").0, 200);
    send(&server, "/api/messages/sms", &sms("+18045551234"));
    server.signal("TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // Logged once the instance is out of rotation.
    while !server.logs().contains("shutting down: not ready") {
        assert!(std::time::Instant::now() < deadline, "{}", server.logs());
        std::thread::sleep(Duration::from_millis(5));
    }
    let (status, headers, body) = post(&server, "/api/messages/sms", &sms("+18045559999"));
    assert_eq!((status, &body["error"]["code"]), (503, &json!("shutting_down")), "{body}");
    assert_eq!(headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    // Clients are told to reconnect rather than reuse a connection about to be closed.
    assert_eq!(headers.get("connection").and_then(|v| v.to_str().ok()), Some("close"));
    let mut not_ready = 0;
    while !server.logs().contains("stopped with") {
        match client().get(server.url("/readyz")).send() {
            Ok(answer) => {
                let status = answer.status().as_u16();
                let body: serde_json::Value = answer.json().unwrap_or_default();
                assert_eq!((status, &body), (503, &json!({"status": "not_ready"})), "{}", server.logs());
                not_ready += 1;
            }
            // The listener closes once the message went out.
            Err(_) => break,
        }
        assert!(std::time::Instant::now() < deadline, "{}", server.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(not_ready > 1, "no probe was answered 503 during shutdown:\n{}", server.logs());
    assert_eq!(server.terminate(), Some(0));
    let logs = server.whole_log();
    assert!(logs.contains("stopped with no message left queued"), "{logs}");
    assert!(!logs.contains("message failed"), "{logs}");
}

/// A send whose body was still arriving when shutdown began is refused (503 `shutting_down`),
/// never accepted after the workers stopped: with the memory store such a 202 would be a lost
/// message. The slow provider keeps the drain going while the body is finished.
#[test]
fn a_send_still_arriving_when_shutdown_begins_is_refused_not_lost() {
    use std::io::{Read, Write};
    let mut server = Server::start(
        &config(
            "[providers.slow]\nkind = \"mock\"\nlatency_ms = 1500\n",
            "[routes.sms]\nproviders = [\"slow\"]\n",
        ),
        &["--grace-period", "20s", "--store", "memory://"],
        &[],
    );
    let held = send(&server, "/api/messages/sms", &sms("+18045551234"));
    let body = sms("+18045550000").to_string();
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&address).unwrap_or_else(|e| panic!("connect: {e}"));
    let head = format!(
        "POST /api/messages/sms HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap_or_else(|e| panic!("write: {e}"));
    stream.write_all(&body.as_bytes()[..10]).unwrap_or_else(|e| panic!("write: {e}"));
    std::thread::sleep(Duration::from_millis(100));
    server.signal("TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !server.logs().contains("shutting down: not ready") {
        assert!(std::time::Instant::now() < deadline, "{}", server.logs());
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    stream.write_all(&body.as_bytes()[10..]).unwrap_or_else(|e| panic!("write: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap_or_else(|e| panic!("{e}"));
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("\r\n\r\n{") || !answer.ends_with(b"}") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}\n{}", server.logs());
    assert!(answer.contains("\"code\":\"shutting_down\""), "{answer}");
    assert_eq!(server.terminate(), Some(0));
    let logs = server.whole_log();
    assert!(logs.contains("stopped with no message left queued"), "{logs}");
    // The message held by the slow provider went out; the refused one was never taken.
    assert!(!logs.contains("message failed"), "{logs}");
    assert!(!held.is_empty());
}

/// A connection that sent half a request head when the server stops is answered 503
/// `shutting_down` and closed at once, not left to its header timeout (which would hold the
/// exit): the client learns to go elsewhere.
#[test]
fn a_half_sent_head_at_shutdown_is_answered_and_closed() {
    use std::io::{Read, Write};
    let mut server = Server::start(
        &config("[providers.p]\nkind = \"mock\"\n", "[routes.sms]\nproviders = [\"p\"]\n"),
        &["--grace-period", "30s", "--header-timeout", "25s"],
        &[],
    );
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&address).unwrap_or_else(|e| panic!("connect: {e}"));
    stream
        .write_all(b"POST /api/messages/sms HTTP/1.1\r\nhost: x\r\n")
        .unwrap_or_else(|e| panic!("write: {e}"));
    std::thread::sleep(Duration::from_millis(200));
    server.signal("TERM");
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap_or_else(|e| panic!("{e}"));
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}\n{}", server.logs());
    assert!(answer.contains("\"code\":\"shutting_down\""), "{answer}");
    assert_eq!(server.terminate(), Some(0));
    let logs = server.whole_log();
    assert!(!logs.contains("did not finish within the grace period"), "{logs}");
}

//! Providers that stall, through the real binary and the `webhook` kind: a gateway that accepts
//! connections and never answers (the attempt's timeout ends each attempt), and one that
//! answers 429 without `Retry-After` (the provider is paused 1 s); and a provider whose rate
//! limit is far below its traffic, which must not hold up another route's messages. Times are
//! read from the attempts the service recorded, never from how long the test took.

mod common;
#[path = "common/e2e.rs"]
mod e2e;
#[path = "common/stores.rs"]
mod stores;

use std::net::TcpListener;
use std::time::{Duration, SystemTime};

use common::fake_http::{FakeHttp, Reply};
use common::{send_native, wait_final, Server};
use e2e::Backend;
use serde_json::{json, Value};

/// A gateway that accepts every connection and never sends a byte: the listener and every
/// connection are kept open for as long as the value lives.
struct Silent {
    address: std::net::SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Silent {
    fn start() -> Silent {
        let listener = match TcpListener::bind("127.0.0.1:0") {
            Ok(listener) => listener,
            Err(error) => panic!("bind: {error}"),
        };
        let address = match listener.local_addr() {
            Ok(address) => address,
            Err(error) => panic!("local_addr: {error}"),
        };
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = std::sync::Arc::clone(&accepted);
        // Lives until the test process ends: the connections it holds never get an answer.
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().map_while(Result::ok) {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(stream);
            }
        });
        Silent { address, accepted }
    }

    fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn sms(to: &str) -> Value {
    json!({"channel": "sms", "from": "+12016661234", "to": to, "body": "hi"})
}

/// When each attempt started and ended, from its record (`time` is its end, `latency_ms` its
/// length), in milliseconds since the epoch.
fn attempt_spans(view: &Value) -> Vec<(u128, u128)> {
    view["attempts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|attempt| {
            let end = attempt["time"]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_millis());
            let latency = attempt["latency_ms"].as_u64().map(u128::from);
            match (end, latency) {
                (Some(end), Some(latency)) => (end - latency, end),
                _ => panic!("attempt without time or latency: {attempt}"),
            }
        })
        .collect()
}

fn outcomes(view: &Value) -> Vec<(String, String)> {
    view["attempts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (a["provider"].as_str().unwrap_or("").to_owned(), a["outcome"].as_str().unwrap_or("").to_owned())
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(p, o)| ((*p).to_owned(), (*o).to_owned())).collect()
}

/// Each attempt on a gateway that never answers ends as a timeout after `timeout_ms`; the
/// message is retried up to `max_attempts` and then fails, or fails over to the next provider.
/// Without the attempt's timeout the attempts never end and `wait_final` gives up.
#[test]
fn a_gateway_that_never_answers_times_out_each_attempt() {
    let silent = Silent::start();
    let config = format!(
        r#"
[providers.silent]
kind = "webhook"
url = "http://{address}/send"
secret = "${{GATEWAY_SECRET}}"
channels = ["sms", "email"]
timeout_ms = 300
retry.initial_backoff_ms = 1
retry.max_backoff_ms = 5

[providers.backup]
kind = "mock"

[routes.sms]
providers = ["silent"]
max_attempts = 2

[routes.email]
providers = ["silent", "backup"]
"#,
        address = silent.address
    );
    let server = Server::start(
        &config,
        &["--workers", "2"],
        &[("GATEWAY_SECRET", "MARKER-gateway-secret-0123456789abcdef")],
    );

    let Some(id) = send_native(&server, &sms("+18045551234")) else {
        panic!("not accepted:\n{}", server.logs())
    };
    let view = wait_final(&server, &id);
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(outcomes(&view), pairs(&[("silent", "timeout"), ("silent", "timeout")]), "{view}");
    assert_eq!(view["error"]["code"], "attempts_exhausted", "{view}");
    for attempt in view["attempts"].as_array().into_iter().flatten() {
        assert_eq!(attempt["error_class"], "ambiguous", "{attempt}");
        // The request was sent and waited on for the whole timeout, not refused.
        // …and no longer: `timeout_ms` (300) ended it, not something else much later.
        assert!(attempt["latency_ms"].as_u64().is_some_and(|ms| (299..5000).contains(&ms)), "{attempt}");
    }
    assert!(silent.connections() >= 1, "the gateway saw no connection");

    let email = json!({"channel": "email", "from": "app@example.com", "to": "user@example.org", "subject": "Hi", "body": "hi"});
    let Some(id) = send_native(&server, &email) else { panic!("not accepted:\n{}", server.logs()) };
    let view = wait_final(&server, &id);
    assert_eq!(
        (view["status"].as_str(), view["provider"].as_str()),
        (Some("sent"), Some("backup")),
        "{view}"
    );
    assert_eq!(outcomes(&view), pairs(&[("silent", "timeout"), ("backup", "success")]), "{view}");
}

/// A 429 without `Retry-After` pauses the provider for 1 s: with a backoff of a millisecond,
/// the next attempt on it still starts at least a second after the 429 was recorded.
#[test]
fn a_429_without_retry_after_pauses_the_provider_one_second() {
    let gateway = FakeHttp::start(Reply::json(200, json!({"id": "gw-after-429"})));
    gateway.script([Reply::json(429, json!({"error": "slow down"}))]);
    let config = format!(
        r#"
[providers.gateway]
kind = "webhook"
url = "{base}/send"
secret = "${{GATEWAY_SECRET}}"
channels = ["sms"]
retry.initial_backoff_ms = 1
retry.max_backoff_ms = 1

[routes.sms]
providers = ["gateway"]
max_attempts = 3
"#,
        base = gateway.base
    );
    let server = Server::start(&config, &[], &[("GATEWAY_SECRET", "MARKER-gateway-secret-0123456789abcdef")]);
    let Some(id) = send_native(&server, &sms("+18045551234")) else {
        panic!("not accepted:\n{}", server.logs())
    };
    let view = wait_final(&server, &id);
    assert_eq!(view["status"], "sent", "{view}");
    assert_eq!(outcomes(&view), pairs(&[("gateway", "rate_limited"), ("gateway", "success")]), "{view}");
    let spans = attempt_spans(&view);
    // Milliseconds on both ends: a 1 ms allowance for rounding.
    let gap = Duration::from_millis(u64::try_from(spans[1].0.saturating_sub(spans[0].1)).unwrap_or(0));
    assert!(gap >= Duration::from_millis(999), "retried {gap:?} after the 429: {view}");
    // One second, not some other pause (a generous bound: the retry also waits for a worker).
    assert!(gap < Duration::from_secs(5), "retried {gap:?} after the 429: {view}");
}

/// `slow` (sms) may send 4 messages a second, one at a time; `fast` (email, another route) has
/// no limit. 4 workers: when a rate-limit wait held a worker, all four sat on `slow`'s tokens.
const SLOW_AND_FAST: &str = r#"
[providers.slow]
kind = "mock"
rate_limit.per_second = 4
rate_limit.burst = 1

[providers.fast]
kind = "mock"

[routes.sms]
providers = ["slow"]

[routes.email]
providers = ["fast"]
"#;

/// When a message's first attempt started, in milliseconds since the epoch.
fn first_attempt_start(view: &Value) -> u128 {
    match attempt_spans(view).first() {
        Some((start, _)) => *start,
        None => panic!("no attempt: {view}"),
    }
}

/// 40 messages queued for `slow` (10 s of its rate), then 20 for `fast`: `fast`'s are all
/// attempted while most of `slow`'s still wait for their tokens — out of the worker slots —
/// as the recorded attempts show (how long the test itself takes does not matter); `slow`'s
/// then go at its rate (k tokens apart, at least (k − 1) × 250 ms: one token of slack for a
/// message that came back late to use its token), each once, and none is lost meanwhile.
fn a_rate_limited_backlog_holds_up_no_other_route(backend: &Backend) {
    let server = backend.start_with_args(SLOW_AND_FAST, &["--workers", "4"], &[]);
    // One connection kept open: the 40 arrive much faster than `slow` sends them.
    switchboard_providers::http::install_crypto_provider();
    let client = reqwest::blocking::Client::new();
    let call = |request: reqwest::blocking::RequestBuilder| -> Value {
        match request.send().and_then(|r| r.error_for_status()).and_then(|r| r.json()) {
            Ok(answer) => answer,
            Err(error) => panic!("{error}\n{}", server.logs()),
        }
    };
    let send = |message: Value| {
        let answer = call(client.post(server.url("/v1/messages")).json(&message));
        answer["id"].as_str().map(str::to_owned).unwrap_or_else(|| panic!("no id: {answer}"))
    };
    // `slow`'s messages in a status, from one listing.
    let slow_in = |status: &str| -> Vec<Value> {
        let page =
            call(client.get(server.url(&format!("/v1/messages?channel=sms&status={status}&limit=200"))));
        page["messages"].as_array().cloned().unwrap_or_default()
    };
    let slow: Vec<String> = (0..40).map(|n| send(sms(&format!("+1804555{n:04}")))).collect();
    let email = json!({"channel": "email", "from": "app@example.com", "to": "user@example.org", "subject": "Hi", "body": "hi"});
    let fast: Vec<String> = (0..20).map(|_| send(email.clone())).collect();
    let mut last_fast = 0;
    for id in &fast {
        let view = wait_final(&server, id);
        assert_eq!(outcomes(&view), pairs(&[("fast", "success")]), "{view}");
        last_fast = last_fast.max(first_attempt_start(&view));
    }
    // Every `slow` attempt that started before `fast`'s last one has ended by now (the mock
    // answers at once).
    let before = slow_in("sent").iter().filter(|view| first_attempt_start(view) <= last_fast).count();
    assert!(before < 20, "{before} of the 40 rate-limited messages went before the other route's last");

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let sent = loop {
        let sent = slow_in("sent");
        if sent.len() >= 12 {
            break sent;
        }
        assert!(std::time::Instant::now() < deadline, "{} sent:\n{}", sent.len(), server.logs());
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut starts: Vec<u128> = sent
        .iter()
        .map(|view| {
            assert_eq!(outcomes(view), pairs(&[("slow", "success")]), "{view}");
            first_attempt_start(view)
        })
        .collect();
    starts.sort_unstable();
    for (i, earlier) in starts.iter().enumerate() {
        for (k, later) in starts[i + 1..].iter().enumerate() {
            // Milliseconds on both ends: a 1 ms allowance for rounding.
            assert!(
                later - earlier + 1 >= 250 * k as u128,
                "{} tokens in {} ms: {starts:?}",
                k + 1,
                later - earlier
            );
        }
    }
    // None lost, none failed: every one is sent or still waiting (the waiting counted first: a
    // message moves from waiting to sent, never back, so none slips between the two listings).
    let waiting = slow_in("queued").len() + slow_in("sending").len();
    let sent = slow_in("sent").len();
    assert!(sent + waiting >= slow.len(), "{sent} sent, {waiting} waiting");
    assert!(slow_in("failed").is_empty());
}

#[test]
fn a_rate_limited_backlog_holds_up_no_other_route_on_sqlite() {
    a_rate_limited_backlog_holds_up_no_other_route(&Backend::sqlite());
}

/// On a shared queue a message waiting for its token lets go of its lease (stored like a
/// retry) and is claimed again when the token is due.
#[test]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
fn a_rate_limited_backlog_holds_up_no_other_route_on_postgres() {
    a_rate_limited_backlog_holds_up_no_other_route(&Backend::postgres("ratelimit"));
}

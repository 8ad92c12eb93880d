//! Message search and retry (issue 17), through the real binary on SQLite and PostgreSQL:
//! `GET /v1/messages` with each filter and who sees what, paging while messages arrive,
//! `POST /v1/messages/{id}/retry` of a failed message (sent again by the running service, once
//! its provider recovers) and of a sent one, its `Idempotency-Key` replay, and
//! `switchboard messages list|show|retry` on the store of a running service; what schemathesis
//! found (odd input).

mod common;
#[path = "common/e2e.rs"]
mod e2e;
#[path = "common/stores.rs"]
mod stores;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::fake_http::{FakeHttp, Reply};
use common::{client, json as stdout_json, stderr, stdout, switchboard, Server};
use e2e::Backend;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const APP: &str = "sb_app_key_for_message_tests_1";
const OTHER: &str = "sb_other_key_for_message_tests_2";
const OPS: &str = "sb_ops_key_for_message_tests_3";
/// The `webhook` provider's signing secret.
const GW_SECRET: (&str, &str) = ("GW_SECRET", "gateway-secret-for-message-tests-83d1");

fn keys_env() -> String {
    let hash = |k: &str| Sha256::digest(k.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>();
    format!("app:{},other:{},ops:{}:admin", hash(APP), hash(OTHER), hash(OPS))
}

/// A `webhook` provider at `gateway`; two attempts per message, retried at once.
fn config(gateway: &FakeHttp) -> String {
    format!(
        r#"
[providers.gw]
kind = "webhook"
url = "{}/send"
secret = "${{GW_SECRET}}"
retry.initial_backoff_ms = 1
retry.max_backoff_ms = 1

[routes.sms]
providers = ["gw"]
max_attempts = 2
"#,
        gateway.base
    )
}

fn down() -> Reply {
    Reply::json(503, json!({"error": "down for maintenance"}))
}

fn up() -> Reply {
    Reply::json(200, json!({"id": "gw-1"}))
}

fn get(server: &Server, path: &str, key: &str) -> (u16, Value) {
    let response =
        client().get(server.url(path)).bearer_auth(key).send().unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (response.status().as_u16(), response.json().unwrap_or_default())
}

/// `POST /v1/messages/{id}/retry`: status, body and whether it was a replay.
fn retry(server: &Server, id: &str, key: &str, idempotency_key: Option<&str>) -> (u16, Value, bool) {
    let mut request = client().post(server.url(&format!("/v1/messages/{id}/retry"))).bearer_auth(key);
    if let Some(idempotency_key) = idempotency_key {
        request = request.header("idempotency-key", idempotency_key);
    }
    let response = request.send().unwrap_or_else(|e| panic!("retry: {e}"));
    let replayed = response.headers().get("idempotency-replayed").is_some_and(|v| v == "true");
    (response.status().as_u16(), response.json().unwrap_or_default(), replayed)
}

fn send(server: &Server, key: &str, to: &str) -> String {
    let body = json!({"channel": "sms", "from": "+12016661234", "to": to, "body": "hi"});
    let response = client()
        .post(server.url("/v1/messages"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status().as_u16(), 202, "{}", server.logs());
    let answer: Value = response.json().unwrap_or_default();
    answer["id"].as_str().unwrap_or_else(|| panic!("no id: {answer}")).to_owned()
}

/// Polls the message until `done` says so (the deadline only guards against a hang).
fn wait(server: &Server, id: &str, key: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, view) = get(server, &format!("/v1/messages/{id}"), key);
        if done(&view) {
            return view;
        }
        assert!(Instant::now() < deadline, "message {id}: {view}\n{}", server.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status_is(status: &'static str) -> impl Fn(&Value) -> bool {
    move |view| view["status"] == status
}

/// The ids a search lists (one page).
fn listed(server: &Server, query: &str, key: &str) -> Vec<String> {
    let (status, page) = get(server, &format!("/v1/messages?{query}"), key);
    assert_eq!(status, 200, "{query}: {page}");
    page["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect()
}

fn event_types(view: &Value) -> Vec<String> {
    view["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["type"].as_str().map(str::to_owned))
        .collect()
}

/// Search filters and who sees what; retry of a failed message (sent by the running service
/// once the provider is back), of a sent one, by another key and by an admin; its
/// `Idempotency-Key` replayed.
fn search_and_retry(backend: &Backend) {
    let gateway = FakeHttp::start(down());
    let keys = keys_env();
    let server = backend.start(&config(&gateway), &[("SWITCHBOARD_API_KEYS", keys.as_str()), GW_SECRET]);
    let failed = send(&server, APP, "+18045550001");
    let view = wait(&server, &failed, APP, status_is("failed"));
    assert_eq!(view["error"]["code"], "attempts_exhausted", "{view}");
    gateway.set_default(up());
    let sent = send(&server, APP, "+18045550002");
    wait(&server, &sent, APP, status_is("sent"));
    let theirs = send(&server, OTHER, "+18045550002");
    wait(&server, &theirs, OTHER, status_is("sent"));

    // Who sees what, newest first, each message as GET /v1/messages/{id} shows it.
    assert_eq!(listed(&server, "", APP), [sent.as_str(), failed.as_str()]);
    assert_eq!(listed(&server, "", OTHER), [theirs.as_str()]);
    assert_eq!(
        listed(&server, "", OPS),
        [theirs.as_str(), sent.as_str(), failed.as_str()],
        "an admin key sees all"
    );
    // By id: a key reads its own, an admin key any (as it searches them), another key none.
    let (status, mine) = get(&server, &format!("/v1/messages/{theirs}"), OTHER);
    assert_eq!(status, 200, "{mine}");
    assert_eq!(get(&server, &format!("/v1/messages/{theirs}"), OPS), (200, mine));
    assert_eq!(get(&server, &format!("/v1/messages/{theirs}"), APP).0, 404);
    let (_, page) = get(&server, "/v1/messages?status=failed", APP);
    let (_, one) = get(&server, &format!("/v1/messages/{failed}"), APP);
    assert_eq!(page, json!({"messages": [one], "next_cursor": null}));
    // Each filter.
    assert_eq!(listed(&server, "status=sent", APP), [sent.as_str()]);
    assert_eq!(listed(&server, "status=queued", APP), Vec::<String>::new());
    assert_eq!(listed(&server, "channel=sms&provider=gw", APP), [sent.as_str(), failed.as_str()]);
    assert_eq!(listed(&server, "channel=mms", APP), Vec::<String>::new());
    assert_eq!(listed(&server, "provider=other", APP), Vec::<String>::new());
    assert_eq!(listed(&server, "to=%2B1%20(804)%20555-0002", OPS), [theirs.as_str(), sent.as_str()]);
    assert_eq!(listed(&server, "to=%2B18045550001", OTHER), Vec::<String>::new(), "not their message");
    assert_eq!(listed(&server, "delivery_status=delivered", OPS), Vec::<String>::new());
    let created = one["created_at"].as_str().unwrap_or_default().to_owned();
    assert_eq!(listed(&server, &format!("until={created}"), APP), Vec::<String>::new(), "until is exclusive");
    assert_eq!(listed(&server, &format!("since={created}&status=failed"), APP), [failed.as_str()]);
    for (query, field) in [("status=lost", "status"), ("stauts=failed", "stauts"), ("since=today", "since")] {
        let (status, body) = get(&server, &format!("/v1/messages?{query}"), APP);
        assert_eq!((status, &body["error"]["field"]), (400, &json!(field)), "{query}: {body}");
    }

    // Only a failed message is retryable; another key's is not found.
    let (status, body, _) = retry(&server, &sent, APP, None);
    assert_eq!(
        (status, &body["error"]["code"], &body["error"]["status"]),
        (409, &json!("not_retryable"), &json!("sent"))
    );
    assert_eq!(retry(&server, &failed, OTHER, None).0, 404);
    assert_eq!(retry(&server, "0190a0b0-0000-7000-8000-000000000000", APP, None).0, 404);
    let (status, body, replayed) = retry(&server, &failed, APP, Some("retry-1"));
    assert_eq!((status, replayed), (202, false), "{body}");
    assert_eq!(body, json!({"id": failed, "status": "queued", "channel": "sms"}));
    let view = wait(&server, &failed, APP, status_is("sent"));
    assert_eq!(view["attempts"].as_array().map(Vec::len), Some(3), "two failed, then a fresh budget: {view}");
    assert!(view["error"].is_null(), "{view}");
    assert_eq!(event_types(&view), ["queued", "sending", "retried", "sent"], "{view}");
    let retried = view["events"].as_array().into_iter().flatten().find(|e| e["type"] == "retried").cloned();
    assert_eq!(retried.map(|e| e["detail"]["code"].clone()), Some(json!("attempts_exhausted")));
    // The same retry again is the first answer, and retries nothing.
    let (status, again, replayed) = retry(&server, &failed, APP, Some("retry-1"));
    assert_eq!((status, replayed, &again), (202, true, &body));
    assert_eq!(event_types(&wait(&server, &failed, APP, status_is("sent"))).len(), 4, "retried once");
    assert_eq!(retry(&server, &sent, APP, Some("retry-1")).0, 422, "the key named another retry");
    assert_eq!(retry(&server, &sent, OTHER, Some("retry-1")).0, 404, "keys are per API key, and not theirs");

    // An admin key may retry any key's message.
    gateway.set_default(down());
    let again = send(&server, APP, "+18045550003");
    wait(&server, &again, APP, status_is("failed"));
    gateway.set_default(up());
    assert_eq!(retry(&server, &again, OPS, None).0, 202);
    wait(&server, &again, APP, status_is("sent"));
    assert_eq!(listed(&server, "status=failed", OPS), Vec::<String>::new());
}

#[test]
fn search_and_retry_on_sqlite() {
    search_and_retry(&Backend::sqlite());
}

#[test]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
fn search_and_retry_on_postgres() {
    search_and_retry(&Backend::postgres("search"));
}

/// What schemathesis sent (tests/openapi.rs): a NUL (`%00`) in a filter or a message id is
/// nothing found (PostgreSQL text cannot hold one: it was 503 `store_unavailable`); an empty
/// value is no filter, one with spaces around it is taken as sent (the document's enums).
fn odd_input(backend: &Backend) {
    let gateway = FakeHttp::start(up());
    let keys = keys_env();
    let server = backend.start(&config(&gateway), &[("SWITCHBOARD_API_KEYS", keys.as_str()), GW_SECRET]);
    let sent = send(&server, APP, "+18045550004");
    wait(&server, &sent, APP, status_is("sent"));
    for query in ["provider=%00", "to=%00", "to=a%00b&channel=push", "provider=gw%00&status=sent"] {
        assert_eq!(listed(&server, query, APP), Vec::<String>::new(), "{query}");
    }
    for query in ["until=", "since=&status=&delivery_status=&channel=&provider=&to="] {
        assert_eq!(listed(&server, query, APP), [sent.as_str()], "{query}");
    }
    for (query, field) in [
        ("status=%20", "status"),
        ("status=sent%20", "status"),
        ("channel=%20sms", "channel"),
        // A name given twice is refused, not read as its last value.
        ("status=failed&status=sent", "status"),
        ("limit=1&limit=200", "limit"),
    ] {
        let (status, body) = get(&server, &format!("/v1/messages?{query}"), APP);
        assert_eq!((status, &body["error"]["field"]), (400, &json!(field)), "{query}: {body}");
    }
    let odd = format!("{sent}%00");
    assert_eq!(get(&server, &format!("/v1/messages/{odd}"), APP).0, 404);
    assert_eq!(retry(&server, &odd, APP, None).0, 404);
    assert_eq!(retry(&server, &odd, APP, Some("odd-1")).0, 404);
    assert_eq!(retry(&server, &sent, APP, Some("odd-1")).0, 409, "a refused retry records no key");
}

#[test]
fn odd_input_on_sqlite() {
    odd_input(&Backend::sqlite());
}

#[test]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
fn odd_input_on_postgres() {
    odd_input(&Backend::postgres("odd_input"));
}

/// Pages of one message while messages keep arriving: every message there was at the start is
/// listed once, none twice.
#[test]
fn pages_under_concurrent_sends() {
    let gateway = FakeHttp::start(up());
    let backend = Backend::sqlite();
    let keys = keys_env();
    let server = backend.start(&config(&gateway), &[("SWITCHBOARD_API_KEYS", keys.as_str()), GW_SECRET]);
    let before: Vec<String> = (0..7).map(|i| send(&server, APP, &format!("+1804555010{i}"))).collect();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = cursor.as_ref().map_or("limit=2".to_owned(), |c| format!("limit=2&cursor={c}"));
        let (status, page) = get(&server, &format!("/v1/messages?{query}"), APP);
        assert_eq!(status, 200, "{page}");
        pages += 1;
        seen.extend(
            page["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["id"].as_str().map(str::to_owned)),
        );
        send(&server, APP, "+18045550199");
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert!(pages > 3, "{pages} pages");
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a message listed twice: {seen:?}");
    for id in &before {
        assert!(unique.contains(id), "{id} skipped");
    }
}

/// `switchboard messages list|show|retry` on the store of a running service: a retried message
/// goes back to the store's queue and the service sends it.
fn cli_on_a_running_service(backend: &Backend) {
    let gateway = FakeHttp::start(down());
    let server = backend.start(&config(&gateway), &[GW_SECRET]);
    let body = json!({"channel": "sms", "from": "+12016661234", "to": "+18045550777", "body": "hi"});
    let response =
        client().post(server.url("/v1/messages")).json(&body).send().unwrap_or_else(|e| panic!("{e}"));
    let id = response.json::<Value>().unwrap_or_default()["id"].as_str().unwrap_or_default().to_owned();
    let failed = wait(&server, &id, "", status_is("failed"));
    let url = backend.url();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cli = |args: &[&str]| {
        let mut all = vec!["messages"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--store", url.as_str()]);
        switchboard(dir.path(), &all, &[])
    };

    let output = cli(&["list", "--status", "failed", "--format", "json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout_json(&output), json!({"messages": [failed], "next_cursor": null}));
    let output = cli(&["list", "--to", "+1 804 555 0777"]);
    let table = stdout(&output);
    assert!(table.starts_with("ID") && table.contains(&id) && table.contains("failed"), "{table}");
    assert!(!table.contains("+18045550777") && table.contains("+1804****777"), "masked: {table}");
    let output = cli(&["show", &id, "--format", "json"]);
    assert_eq!(stdout_json(&output)["to"], "+18045550777", "json shows it whole");
    let output = cli(&["show", &id]);
    assert!(stdout(&output).contains("attempts_exhausted") && !stdout(&output).contains("+18045550777"));
    let output = cli(&["list", "--status", "lost"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("--status"), "{}", stderr(&output));
    assert_eq!(cli(&["show", "0190a0b0-0000-7000-8000-000000000000"]).status.code(), Some(1));

    gateway.set_default(up());
    let output = cli(&["retry", &id, "--format", "json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout_json(&output), json!({"id": id, "status": "queued", "channel": "sms"}));
    let view = wait(&server, &id, "", status_is("sent"));
    assert_eq!(event_types(&view), ["queued", "sending", "retried", "sent"], "{view}");
    let output = cli(&["retry", &id]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("is sent: only a failed message can be retried"), "{}", stderr(&output));
}

#[test]
fn cli_on_a_running_service_on_sqlite() {
    cli_on_a_running_service(&Backend::sqlite());
}

#[test]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
fn cli_on_a_running_service_on_postgres() {
    cli_on_a_running_service(&Backend::postgres("cli"));
}

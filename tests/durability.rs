//! The durable store through the binary: what was answered 202 survives crashes, and
//! `Idempotency-Key` makes retries safe.

mod common;
#[path = "common/stores.rs"]
mod stores;

use std::collections::HashSet;

use common::{client, Server};
use serde_json::{json, Value};

const CONFIG: &str = "[providers.slow]\nkind = \"mock\"\nlatency_ms = 50\n\
                      [routes.sms]\nproviders = [\"slow\"]\n[routes.mms]\nproviders = [\"slow\"]\n[routes.email]\nproviders = [\"slow\"]\n";

#[test]
fn messages_answered_202_survive_repeated_crashes() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("routes.toml"), CONFIG).unwrap_or_default();
    common::crash_repeatedly(dir.path(), &["--workers", "4"], &[]);
}

/// `switchboard migrate` on a new SQLite file creates the schema; again, it changes nothing;
/// a store it cannot open or does not know exits 2 with the reason and prints nothing.
#[test]
fn migrate_creates_the_sqlite_schema_once() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let url = format!("sqlite://{}", dir.path().join("fresh.db").display());
    stores::migrate_creates_the_schema_once(&url, &url, "sqlite");

    for (store, reason) in [
        (format!("sqlite://{}/no/such/dir/x.db", dir.path().display()), "cannot open"),
        ("mysql://db/x".to_owned(), "unsupported store URL"),
    ] {
        let output = common::switchboard(dir.path(), &["migrate", "--store", &store], &[]);
        assert_eq!(output.status.code(), Some(2), "{store}");
        assert!(common::stderr(&output).contains(reason), "{store}: {}", common::stderr(&output));
        assert_eq!(common::stdout(&output), "", "{store}");
    }
}

#[test]
fn retention_purges_old_messages_and_keys_on_sqlite() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    stores::retention_purges_old_messages_and_keys(&format!(
        "sqlite://{}",
        dir.path().join("r.db").display()
    ));
}

#[test]
fn backoff_due_times_survive_a_restart_on_sqlite() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let url = format!("sqlite://{}", dir.path().join("b.db").display());
    stores::backoff_due_times_survive_a_restart(&url, dir.path());
}

#[test]
fn an_idempotency_key_replays_refuses_or_waits() {
    let server = Server::start(CONFIG, &[], &[]);
    let client = client();
    let post = |key: &str, body: &Value| {
        let response =
            client.post(server.url("/v1/messages")).header("Idempotency-Key", key).json(body).send();
        match response {
            Ok(r) => {
                let replayed =
                    r.headers().get("idempotency-replayed").and_then(|v| v.to_str().ok()).map(str::to_owned);
                (r.status().as_u16(), replayed, r.json::<Value>().unwrap_or(Value::Null))
            }
            Err(error) => panic!("{error}"),
        }
    };
    let body = json!({"channel": "sms", "from": "+12016661234", "to": "+18045551234", "body": "once"});
    let (status, replayed, first) = post("order-42", &body);
    assert_eq!((status, replayed), (202, None));
    let (status, replayed, again) = post("order-42", &body);
    assert_eq!((status, replayed.as_deref()), (202, Some("true")));
    assert_eq!(again, first, "the original answer");

    let (status, _, refused) = post(
        "order-42",
        &json!({"channel": "sms", "from": "+12016661234", "to": "+18045551234", "body": "twice"}),
    );
    assert_eq!((status, refused["error"]["code"].as_str()), (422, Some("idempotency_key_reused")));
    let (status, _, bad) = post("", &body);
    assert_eq!((status, bad["error"]["field"].as_str()), (400, Some("Idempotency-Key")));

    // Concurrent requests with one new key create one message.
    let answers = common::same_key_concurrently(std::slice::from_ref(&server.base), &body, 8);
    let ids: HashSet<&str> =
        answers.iter().filter(|(s, _, _)| *s == 202).filter_map(|(_, v, _)| v["id"].as_str()).collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert!(
        answers.iter().all(|(s, v, after)| *s == 202
            || (*s == 409
                && v["error"]["code"] == "idempotency_key_in_flight"
                && after.as_deref() == Some("1"))),
        "{answers:?}"
    );
    let metrics = client.get(server.url("/metrics")).send().and_then(|r| r.text()).unwrap_or_default();
    assert!(metrics.contains("switchboard_messages_accepted_total{channel=\"sms\"} 2"), "{metrics}");
}

#[test]
fn the_memory_store_is_an_explicit_choice() {
    let mut server = Server::start(CONFIG, &["--store", "memory://"], &[]);
    assert!(server.logs().contains("nothing survives a restart"), "{}", server.logs());
    assert!(!server.dir().join("switchboard.db").exists());
    assert_eq!(server.terminate(), Some(0));
    let bad = common::switchboard(&common::repo_root(), &["serve", "--store", "mysql://nowhere"], &[]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(common::stderr(&bad).contains("unsupported store URL"), "{}", common::stderr(&bad));
    // An unreachable database: refused at start, exit 2, password not shown.
    let unreachable = ["serve", "--store", "postgres://sb:hunter2@127.0.0.1:1/db"];
    let down = common::switchboard(&common::repo_root(), &unreachable, &[]);
    assert_eq!(down.status.code(), Some(2));
    let stderr = common::stderr(&down);
    assert!(stderr.contains("cannot connect") && !stderr.contains("hunter2"), "{stderr}");
}

/// SQLite locked by another process for longer than the busy timeout: the send is answered 503
/// `store_unavailable`, never 202, and the service accepts again once the lock is gone.
#[test]
fn a_locked_sqlite_store_answers_503_then_recovers() {
    use sqlx::{Connection, Executor};
    let server = Server::start(CONFIG, &[], &[]);
    assert!(common::send_sms(&server, 1).is_some(), "{}", server.logs());
    let url = format!("sqlite://{}", server.dir().join("switchboard.db").display());
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
    let mut locker = runtime
        .block_on(sqlx::SqliteConnection::connect(&url))
        .unwrap_or_else(|error| panic!("open {url}: {error}"));
    runtime.block_on(locker.execute("BEGIN EXCLUSIVE")).unwrap_or_else(|error| panic!("lock: {error}"));

    let body = json!({"from": "+12016661234", "to": "+18045550002", "type": "sms", "body": "hi"});
    let response = client().post(server.url("/api/messages/sms")).json(&body).send();
    let Ok(response) = response else { panic!("no answer while locked") };
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers().get("retry-after").map(|v| v.as_bytes()), Some(&b"1"[..]));
    let answer: Value = response.json().unwrap_or_default();
    assert_eq!(answer["error"]["code"], "store_unavailable", "{answer}");

    runtime.block_on(locker.execute("ROLLBACK")).unwrap_or_else(|error| panic!("unlock: {error}"));
    drop(locker);
    assert!(common::send_sms(&server, 3).is_some(), "{}", server.logs());
}

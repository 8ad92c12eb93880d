//! The PostgreSQL store against a real server. Set `SWITCHBOARD_TEST_POSTGRES_URL` (e.g.
//! `postgres://postgres@127.0.0.1:5432/postgres`); each test creates a database of its own.
//! Without the variable the tests say so and pass, so `cargo test` works without PostgreSQL.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use common::{client, message_view, same_key_concurrently, send_sms, Server};
use serde_json::json;
use sqlx::Connection;

/// A database created for one test, dropped (with its connections) when the test ends.
struct TestDatabase {
    admin: String,
    name: String,
    url: String,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        runtime.block_on(async {
            if let Ok(mut conn) = sqlx::PgConnection::connect(&self.admin).await {
                let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
                let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut conn).await;
            }
        });
    }
}

/// A fresh database on the test server, or `None` (with a note) when there is no server.
fn fresh_database(name: &str) -> Option<TestDatabase> {
    let Ok(admin) = std::env::var("SWITCHBOARD_TEST_POSTGRES_URL") else {
        eprintln!("skipped: set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests");
        return None;
    };
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let database = format!("sb_{name}_{}_{}", std::process::id(), nanos % 1_000_000_000);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    runtime.block_on(async {
        let mut conn =
            sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| panic!("cannot reach {admin}: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("create database: {e}"));
    });
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base).to_owned();
    Some(TestDatabase { url: format!("{base}/{database}"), admin, name: database })
}

const CONFIG: &str = "[providers.p]\nkind = \"mock\"\nlatency_ms = 20\n\
                      [routes.sms]\nproviders = [\"p\"]\n[routes.mms]\nproviders = [\"p\"]\n[routes.email]\nproviders = [\"p\"]\n";

fn wait_all_sent(server: &Server, ids: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut left: HashSet<&String> = ids.iter().collect();
    while !left.is_empty() {
        assert!(Instant::now() < deadline, "{} messages never sent:\n{}", left.len(), server.logs());
        left.retain(|id| message_view(server, id)["status"] != "sent");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The sum of a counter over all its label sets.
fn metric_total(server: &Server, name: &str) -> u64 {
    let metrics = client().get(server.url("/metrics")).send().and_then(|r| r.text()).unwrap_or_default();
    metrics
        .lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn attempts_total(server: &Server) -> u64 {
    metric_total(server, "switchboard_dispatch_attempts_total")
}

#[test]
fn two_instances_drain_one_queue_sending_each_message_once() {
    let Some(db) = fresh_database("two") else { return };
    let store = ["--store", db.url.as_str()];
    let a = Server::start(CONFIG, &store, &[]);
    let b = Server::start(CONFIG, &store, &[]);
    let ids: Vec<String> = (0..100).filter_map(|n| send_sms(if n % 2 == 0 { &a } else { &b }, n)).collect();
    assert_eq!(ids.len(), 100);
    wait_all_sent(&a, &ids);
    for id in &ids {
        let attempts = message_view(&b, id)["attempts"].as_array().map_or(0, Vec::len);
        assert_eq!(attempts, 1, "message {id} was attempted {attempts} times");
    }
    assert_eq!(attempts_total(&a) + attempts_total(&b), 100, "a message was sent by both instances");
}

#[test]
fn an_instance_that_dies_leaves_its_messages_to_the_others() {
    let Some(db) = fresh_database("crash") else { return };
    let store = ["--store", db.url.as_str()];
    let lease = [("SWITCHBOARD_LEASE", "2s")];
    let survivor = Server::start(CONFIG, &store, &lease);
    let mut victim = Server::start(CONFIG, &[&store[..], &["--workers", "2"]].concat(), &lease);
    let mut ids: Vec<String> = (0..60).filter_map(|n| send_sms(&victim, n)).collect();
    victim.kill();
    ids.extend((60..80).filter_map(|n| send_sms(&survivor, n)));
    wait_all_sent(&survivor, &ids);
    let repeated: usize =
        ids.iter().map(|id| message_view(&survivor, id)["attempts"].as_array().map_or(0, Vec::len) - 1).sum();
    assert!(repeated <= 2, "{repeated} repeated attempts, more than the 2 in flight at the kill");
}

#[test]
fn one_idempotency_key_across_instances_creates_one_message() {
    let Some(db) = fresh_database("idem") else { return };
    let store = ["--store", db.url.as_str()];
    let (a, b) = (Server::start(CONFIG, &store, &[]), Server::start(CONFIG, &store, &[]));
    let body = json!({"channel": "sms", "from": "+12016661234", "to": "+18045551234", "body": "once"});
    let answers = same_key_concurrently(&[a.base.clone(), b.base.clone()], &body, 8);
    let ids: HashSet<&str> =
        answers.iter().filter(|(s, _, _)| *s == 202).filter_map(|(_, v, _)| v["id"].as_str()).collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert!(
        answers.iter().all(|(s, _, after)| *s == 202 || (*s == 409 && after.as_deref() == Some("1"))),
        "{answers:?}"
    );
}

#[test]
fn messages_answered_202_survive_repeated_crashes_on_postgres() {
    let Some(db) = fresh_database("crashes") else { return };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("routes.toml"), CONFIG).unwrap_or_default();
    // Short leases: a restarted instance takes over its predecessor's work within a second.
    common::crash_repeatedly(
        dir.path(),
        &["--store", &db.url, "--workers", "4"],
        &[("SWITCHBOARD_LEASE", "1s")],
    );
}

fn admin_sql(admin: &str, statements: &[String]) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
    runtime.block_on(async {
        let mut conn =
            sqlx::PgConnection::connect(admin).await.unwrap_or_else(|e| panic!("cannot reach {admin}: {e}"));
        for statement in statements {
            sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
    });
}

/// The database going away under a running instance: sends are answered 503
/// `store_unavailable` (never 202), and the instance serves again once the database is back.
#[test]
fn a_store_lost_while_running_answers_503_then_recovers() {
    let Some(db) = fresh_database("outage") else { return };
    let server = Server::start(CONFIG, &["--store", &db.url], &[]);
    let Some(first) = send_sms(&server, 1) else { panic!("not accepted:\n{}", server.logs()) };
    wait_all_sent(&server, std::slice::from_ref(&first));
    let accepted = metric_total(&server, "switchboard_messages_accepted_total");

    admin_sql(
        &db.admin,
        &[
            format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", db.name),
            format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'", db.name),
        ],
    );
    let body = json!({"from": "+12016661234", "to": "+18045550002", "type": "sms", "body": "hi"});
    for _ in 0..3 {
        let response = client().post(server.url("/api/messages/sms")).json(&body).send();
        let Ok(response) = response else { panic!("no answer during the outage") };
        assert_eq!(response.status().as_u16(), 503);
        assert_eq!(response.headers().get("retry-after").map(|v| v.as_bytes()), Some(&b"1"[..]));
        let answer: serde_json::Value = response.json().unwrap_or_default();
        assert_eq!(answer["error"]["code"], "store_unavailable", "{answer}");
    }
    assert_eq!(
        metric_total(&server, "switchboard_messages_accepted_total"),
        accepted,
        "nothing may count as accepted during the outage"
    );

    admin_sql(&db.admin, &[format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", db.name)]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let again = loop {
        if let Some(id) = send_sms(&server, 3) {
            break id;
        }
        assert!(Instant::now() < deadline, "never recovered:\n{}", server.logs());
        std::thread::sleep(Duration::from_millis(200));
    };
    wait_all_sent(&server, std::slice::from_ref(&again));
    // In the store itself: the two messages answered 202, none of the refused ones.
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        panic!("runtime")
    };
    let mut stored: Vec<String> = runtime.block_on(async {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap_or_else(|e| panic!("{e}"));
        sqlx::query_scalar("SELECT id FROM messages")
            .fetch_all(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    });
    stored.sort();
    let mut expected = vec![first, again];
    expected.sort();
    assert_eq!(stored, expected, "only the messages answered 202 are stored");
}

/// Ownership and per-key idempotency on PostgreSQL: the owner column, and a retry past the
/// recipient cap answered from the stored key.
#[test]
fn messages_belong_to_their_key_on_postgres() {
    let Some(db) = fresh_database("owner") else { return };
    let hash = |key: &str| -> String {
        use sha2::Digest;
        sha2::Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    };
    let keys = format!("app:{},other:{}", hash("k-app"), hash("k-other"));
    let config = format!("{CONFIG}\n").replace(
        "[routes.sms]\nproviders = [\"p\"]\n",
        "[routes.sms]\nproviders = [\"p\"]\nmax_per_recipient_per_hour = 1\n",
    );
    let server = Server::start(&config, &["--store", &db.url], &[("SWITCHBOARD_API_KEYS", &keys)]);
    let body = json!({"channel": "sms", "from": "+12016661234", "to": "+18045550042", "body": "hi"});
    let send = |key: &str| {
        let response = client()
            .post(server.url("/v1/messages"))
            .bearer_auth(key)
            .header("Idempotency-Key", "k1")
            .json(&body)
            .send()
            .unwrap_or_else(|e| panic!("{e}"));
        let replayed = response.headers().contains_key("idempotency-replayed");
        (response.status().as_u16(), replayed, response.json::<serde_json::Value>().unwrap_or_default())
    };
    let (status, replayed, first) = send("k-app");
    assert_eq!((status, replayed), (202, false), "{first}");
    let (status, replayed, again) = send("k-app");
    assert_eq!((status, replayed, &again["id"]), (202, true, &first["id"]), "{again}");
    let (status, _, refused) = send("k-other");
    assert_eq!((status, &refused["error"]["code"]), (429, &json!("recipient_rate_limited")), "{refused}");
    let id = first["id"].as_str().unwrap_or_default();
    let get = |key: &str| {
        let response = client().get(server.url(&format!("/v1/messages/{id}"))).bearer_auth(key).send();
        response.map(|r| r.status().as_u16()).unwrap_or(0)
    };
    assert_eq!((get("k-app"), get("k-other")), (200, 404));
}

#[test]
fn store_url_passwords_are_never_shown_and_start_up_errors_say_why() {
    let Some(db) = fresh_database("secret") else { return };
    // Trust authentication ignores the password: the server starts and must not print it.
    let with_password = format!("{}?sslmode=disable&password=hunter2secret", db.url);
    let mut server = Server::start(CONFIG, &["--store", &with_password], &[]);
    assert_eq!(server.terminate(), Some(0));
    let logs = server.whole_log();
    assert!(logs.contains("password=***") && !logs.contains("hunter2secret"), "{logs}");

    let base = db.url.rsplit_once('/').map_or(db.url.as_str(), |(base, _)| base).to_owned();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for (url, cause) in [
        (format!("{base}/sb_no_such_database?password=hunter2secret"), "does not exist"),
        ("postgres://postgres:hunter2secret@127.0.0.1:1/x".to_owned(), "refused"),
    ] {
        let output = common::switchboard(dir.path(), &["migrate", "--store", &url], &[]);
        let stderr = common::stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.to_lowercase().contains(cause), "{url}: the cause, at once: {stderr}");
        assert!(!stderr.contains("hunter2secret") && !stderr.contains("timed out"), "{stderr}");
    }
}

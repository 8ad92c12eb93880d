//! The PostgreSQL store against a real server. Set `SWITCHBOARD_TEST_POSTGRES_URL` (e.g.
//! `postgres://postgres@127.0.0.1:5432/postgres`); each test creates a database of its own.
//! Without the variable at build time the tests are ignored (`build.rs` sets `cfg(no_postgres)`)
//! and counted so by the runner; run with `--include-ignored` but no variable, they fail.

mod common;
#[path = "common/stores.rs"]
mod stores;

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use common::{client, message_view, same_key_concurrently, send_sms, Server};
use serde_json::json;
use sqlx::Connection;
use stores::fresh_database;

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
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
fn two_instances_drain_one_queue_sending_each_message_once() {
    let db = fresh_database("two");
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
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
fn an_instance_that_dies_leaves_its_messages_to_the_others() {
    let db = fresh_database("crash");
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
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
fn one_idempotency_key_across_instances_creates_one_message() {
    let db = fresh_database("idem");
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
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
fn messages_answered_202_survive_repeated_crashes_on_postgres() {
    let db = fresh_database("crashes");
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
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
fn a_store_lost_while_running_answers_503_then_recovers() {
    let db = fresh_database("outage");
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
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
fn messages_belong_to_their_key_on_postgres() {
    let db = fresh_database("owner");
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
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
fn store_url_passwords_are_never_shown_and_start_up_errors_say_why() {
    let db = fresh_database("secret");
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

/// `switchboard migrate` on a new PostgreSQL database creates the schema (its line shows the URL
/// without its password); again, it changes nothing.
#[test]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
fn migrate_creates_the_postgres_schema_once() {
    let db = fresh_database("migrate");
    // Trust authentication ignores the password; it must not be shown.
    let url = format!("{}?password=hunter2secret", db.url);
    let shown = format!("{}?password=***", db.url.replacen("postgres@", "postgres:***@", 1));
    assert!(shown.contains(":***@") && !shown.contains("hunter2secret"), "{shown}");
    stores::migrate_creates_the_schema_once(&url, &shown, "postgres");
}

#[test]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
fn retention_purges_old_messages_and_keys_on_postgres() {
    let db = fresh_database("retention");
    stores::retention_purges_old_messages_and_keys(&db.url);
}

#[test]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
fn backoff_due_times_survive_a_restart_on_postgres() {
    let db = fresh_database("backoff");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    stores::backoff_due_times_survive_a_restart(&db.url, dir.path());
}

/// Lease fencing in the store: once another instance holds a message, every dispatch write of
/// the old holder is refused with `LeaseLost` and changes nothing; the new holder's result stands.
#[test]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
fn a_taken_over_lease_refuses_every_write_of_its_old_holder() {
    use switchboard::store::{
        Attempt, Final, Inserted, MessageStore, Outcome, PostgresStore, Status, StoreError,
    };
    use switchboard_providers::{Channel, OutboundMessage};

    let db = fresh_database("fence");
    let attempt = |provider: &str, outcome: Outcome| Attempt {
        provider: provider.into(),
        outcome,
        error_class: None,
        error_code: None,
        error_message: None,
        latency_ms: 1,
        time: SystemTime::now(),
    };
    let lost = |what: &str, result: Result<(), StoreError>| {
        assert!(matches!(result, Err(StoreError::LeaseLost(_))), "{what}: {result:?}");
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    runtime.block_on(async {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap_or_else(|e| panic!("{e}"));
        let open = || PostgresStore::open_with(&db.url, Duration::from_secs(60));
        let (a, b) =
            (open().await.unwrap_or_else(|e| panic!("{e}")), open().await.unwrap_or_else(|e| panic!("{e}")));
        let message = OutboundMessage {
            id: uuid_like(),
            channel: Channel::SMS,
            from: "+12016661234".into(),
            to: "+18045550001".into(),
            subject: None,
            body: "hi".into(),
            attachments: vec![],
            tags: vec![],
        };
        let id = message.id.clone();
        assert_eq!(a.insert(&message, None).await.ok(), Some(Inserted::New));
        a.attempt_started(&id, 1, "pa").await.unwrap_or_else(|e| panic!("{e}"));
        assert!(b.claim_due(10).await.unwrap_or_else(|e| panic!("{e}")).is_empty(), "leased to a");

        // A's lease runs out (as if it hung past it): B takes the message over.
        let expire = format!("UPDATE queue SET lease_until = 0 WHERE message_id = '{id}'");
        let expired = sqlx::query(sqlx::AssertSqlSafe(expire)).execute(&mut conn).await;
        assert_eq!(expired.map(|r| r.rows_affected()).ok(), Some(1));
        let claimed = b.claim_due(10).await.unwrap_or_else(|e| panic!("{e}"));
        let claimed: Vec<_> =
            claimed.iter().map(|p| (p.message.id.clone(), p.attempts, p.interrupted)).collect();
        assert_eq!(claimed, [(id.clone(), 1, true)]);

        lost("attempt start", a.attempt_started(&id, 2, "pa").await);
        lost("attempt", a.record_attempt(&id, 1, attempt("pa", Outcome::Error)).await);
        lost("retry time", a.schedule(&id, SystemTime::now(), 1, 1).await);
        let sent_by_a = Final::Sent { provider: "pa".into(), provider_message_id: Some("from-a".into()) };
        lost("end", a.finish(&id, sent_by_a, Some((1, attempt("pa", Outcome::Success)))).await);
        assert!(!a.claim(&id).await.unwrap_or(true), "a cannot take it back");
        assert!(a.due(None, 10).await.unwrap_or_else(|e| panic!("{e}")).is_empty(), "not a's any more");
        assert!(a.pending_of(std::slice::from_ref(&id)).await.unwrap_or_else(|e| panic!("{e}")).is_empty());
        let finished =
            format!("SELECT COUNT(*) FROM attempts WHERE message_id = '{id}' AND finished_at IS NOT NULL");
        let finished = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(finished)).fetch_one(&mut conn).await;
        assert_eq!(finished.ok(), Some(0), "nothing of a's was recorded");
        let queued = format!("SELECT COUNT(*) FROM queue WHERE message_id = '{id}'");
        let queued = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(queued)).fetch_one(&mut conn).await;
        assert_eq!(queued.ok(), Some(1), "still queued, for b");

        b.attempt_started(&id, 2, "pb").await.unwrap_or_else(|e| panic!("{e}"));
        let sent_by_b = Final::Sent { provider: "pb".into(), provider_message_id: Some("from-b".into()) };
        b.finish(&id, sent_by_b, Some((2, attempt("pb", Outcome::Success))))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let view = a.get(&id).await.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|| panic!("gone"));
        assert_eq!(
            (view.status, view.provider.as_deref(), view.provider_message_id.as_deref()),
            (Status::Sent, Some("pb"), Some("from-b"))
        );
        let attempts: Vec<_> = view.attempts.iter().map(|a| (a.provider.to_string(), a.outcome)).collect();
        assert_eq!(attempts, [("pb".to_owned(), Outcome::Success)]);
    });
}

fn uuid_like() -> String {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("fence-{}-{nanos}", std::process::id())
}

/// The value of an unlabelled counter.
fn counter(server: &Server, name: &str) -> Option<u64> {
    let metrics = client().get(server.url("/metrics")).send().and_then(|r| r.text()).unwrap_or_default();
    metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// A worker whose lease is taken over while its provider call is under way finds its write
/// refused, says so, and stops: no retry, no further provider call, nothing written over the
/// new holder's row, and no write retried as if the store had failed.
#[test]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
fn a_worker_whose_lease_was_taken_over_stops() {
    let db = fresh_database("takeover");
    // Each attempt takes 3 s and fails; retries would follow within 10 ms.
    let config = "[providers.p]\nkind = \"mock\"\nerror_pct = 100\nlatency_ms = 3000\n\
                  retry.initial_backoff_ms = 10\nretry.max_backoff_ms = 10\n\
                  [routes.sms]\nproviders = [\"p\"]\nmax_attempts = 5\n";
    let server = Server::start(config, &["--store", &db.url], &[]);
    let Some(id) = send_sms(&server, 1) else { panic!("not accepted:\n{}", server.logs()) };
    let mut sql = stores::Db::open(&db.url);
    let started = format!("SELECT COUNT(*) FROM attempts WHERE message_id = '{id}'");
    let deadline = Instant::now() + Duration::from_secs(30);
    while sql.count(&started) == 0 {
        assert!(Instant::now() < deadline, "no attempt started:\n{}", server.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Another instance takes the message over while the provider call is under way.
    let take_over = format!(
        "UPDATE queue SET lease_token = 'another-instance', lease_until = {} WHERE message_id = '{id}' \
         AND lease_token IS NOT NULL AND lease_token <> 'another-instance'",
        stores::now_ms() + 3_600_000
    );
    assert_eq!(sql.execute(&take_over), 1, "the message was leased to the server");
    assert_eq!(sql.count(&format!("{started} AND finished_at IS NOT NULL")), 0, "taken over mid-call");

    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.logs().contains("leaving the message to the instance that holds it now") {
        assert!(Instant::now() < deadline, "the worker never let go:\n{}", server.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    // A worker that carried on would retry within 10 ms: give it ample time to show.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(attempts_total(&server), 1, "no provider call after the lease was lost");
    assert_eq!(
        counter(&server, "switchboard_store_write_failures_total"),
        Some(0),
        "a lost lease is no store failure"
    );
    assert_eq!(sql.count(&started), 1, "no attempt started after the lease was lost");
    assert_eq!(sql.count(&format!("{started} AND finished_at IS NOT NULL")), 0, "its outcome was refused");
    let holder = sql.texts(&format!("SELECT lease_token FROM queue WHERE message_id = '{id}'"));
    assert_eq!(holder, [Some("another-instance".to_owned())], "the new holder keeps it");
    let ended =
        sql.count(&format!("SELECT COUNT(*) FROM messages WHERE id = '{id}' AND finished_at IS NOT NULL"));
    assert_eq!(ended, 0, "the message is the new holder's to finish");
}

/// A graceful stop lets go of the messages the instance still held: another instance takes them
/// at once, not when their leases (two minutes here) run out.
#[test]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
fn a_graceful_stop_lets_go_of_its_messages_at_once() {
    let db = fresh_database("release");
    let store = ["--store", db.url.as_str()];
    let lease = [("SWITCHBOARD_LEASE", "120s")];
    let slow = CONFIG.replace("latency_ms = 20", "latency_ms = 300");
    let mut stopping =
        Server::start(&slow, &[&store[..], &["--workers", "2", "--grace-period", "5s"]].concat(), &lease);
    let ids: Vec<String> = (0..30).filter_map(|n| send_sms(&stopping, n)).collect();
    assert_eq!(ids.len(), 30);
    assert_eq!(stopping.terminate(), Some(0));
    let logs = stopping.whole_log();
    assert!(logs.contains("still queued in the shared store"), "{logs}");
    let mut sql = stores::Db::open(&db.url);
    assert!(sql.count("SELECT count(*) FROM queue") > 0, "nothing was left to take over");
    assert_eq!(sql.count("SELECT count(*) FROM queue WHERE lease_token IS NOT NULL"), 0, "leases kept");
    let taker = Server::start(CONFIG, &store, &lease);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut left: HashSet<&String> = ids.iter().collect();
    while !left.is_empty() {
        assert!(Instant::now() < deadline, "{} messages not taken over:\n{}", left.len(), taker.logs());
        left.retain(|id| message_view(&taker, id)["status"] != "sent");
        std::thread::sleep(Duration::from_millis(50));
    }
}

//! Store claims checked through the binary on either durable store (`sqlite://…` or
//! `postgres://…`), reading and writing the database directly to see what is really kept.
//! Included by the test files that use it (`#[path = "common/stores.rs"] mod stores;`), beside
//! `mod common;`.

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use sqlx::Connection;

use crate::common::{
    client, message_view, repo_root, send_sms, stderr, stdout, switchboard, wait_final, Server,
};

/// Unix milliseconds now, as the stores write times.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0))
}

enum Conn {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

/// A plain connection to a store's database, beside the service.
pub struct Db {
    runtime: tokio::runtime::Runtime,
    conn: Conn,
}

impl Db {
    pub fn open(url: &str) -> Db {
        Db::try_open(url).unwrap_or_else(|e| panic!("cannot open {url}: {e}"))
    }

    /// Connects without creating anything (a missing SQLite file is an error).
    pub fn try_open(url: &str) -> Result<Db, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        let conn = runtime.block_on(async {
            if url.starts_with("sqlite:") {
                sqlx::SqliteConnection::connect(url).await.map(Conn::Sqlite)
            } else {
                sqlx::PgConnection::connect(url).await.map(Conn::Postgres)
            }
        });
        Ok(Db { conn: conn.map_err(|e| e.to_string())?, runtime })
    }

    /// Runs one statement; the rows it changed, or the database's error.
    pub fn try_execute(&mut self, sql: &str) -> Result<u64, String> {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        let done = match &mut self.conn {
            Conn::Sqlite(conn) => {
                self.runtime.block_on(sqlx::query(sql).execute(conn)).map(|r| r.rows_affected())
            }
            Conn::Postgres(conn) => {
                self.runtime.block_on(sqlx::query(sql).execute(conn)).map(|r| r.rows_affected())
            }
        };
        done.map_err(|e| e.to_string())
    }

    pub fn execute(&mut self, sql: &str) -> u64 {
        self.try_execute(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The first column (of type `T`, or `NULL`) of every row `sql` returns, on either database.
    fn column<T>(&mut self, sql: &str) -> Vec<Option<T>>
    where
        T: Send
            + Unpin
            + for<'r> sqlx::Decode<'r, sqlx::Sqlite>
            + sqlx::Type<sqlx::Sqlite>
            + for<'r> sqlx::Decode<'r, sqlx::Postgres>
            + sqlx::Type<sqlx::Postgres>,
    {
        let text = || sqlx::AssertSqlSafe(sql.to_owned());
        let found = match &mut self.conn {
            Conn::Sqlite(conn) => self.runtime.block_on(sqlx::query_scalar(text()).fetch_all(conn)),
            Conn::Postgres(conn) => self.runtime.block_on(sqlx::query_scalar(text()).fetch_all(conn)),
        };
        found.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The first column (a `BIGINT`, or `NULL`) of every row `sql` returns.
    pub fn integers(&mut self, sql: &str) -> Vec<Option<i64>> {
        self.column(sql)
    }

    /// The one integer `sql` returns (a count).
    pub fn count(&mut self, sql: &str) -> i64 {
        match self.integers(sql).as_slice() {
            [Some(n)] => *n,
            other => panic!("{sql}: expected one number, got {other:?}"),
        }
    }

    /// The first column (text, or `NULL`) of every row `sql` returns.
    pub fn texts(&mut self, sql: &str) -> Vec<Option<String>> {
        self.column(sql)
    }
}

/// The migration versions in `migrations/<backend>/` (`0001_initial.sql` → 1), in order.
fn migration_versions(backend: &str) -> Vec<i64> {
    let dir = repo_root().join("migrations").join(backend);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut versions: Vec<i64> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.split('_').next()?.parse().ok())
        .collect();
    versions.sort_unstable();
    assert!(!versions.is_empty(), "no migrations in {}", dir.display());
    versions
}

/// The tables every store's schema has.
const TABLES: [&str; 5] = ["messages", "attempts", "queue", "idempotency_keys", "liveness"];

/// `switchboard migrate --store URL` on a database without the schema: creates it (every table,
/// every migration recorded), exits 0 with the line naming the store (`shown`: the URL without
/// passwords) and the versions; run again it changes nothing (rows kept, migrations not re-run)
/// and prints the same line.
pub fn migrate_creates_the_schema_once(url: &str, shown: &str, backend: &str) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let before = Db::try_open(url).and_then(|mut db| db.try_execute("SELECT COUNT(*) FROM messages"));
    assert!(before.is_err(), "{url} must start without the schema");
    let versions = migration_versions(backend);
    let expected = format!("{shown}: schema up to date (migrations applied: {versions:?})\n");

    let first = switchboard(dir.path(), &["migrate", "--store", url], &[]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert_eq!(stdout(&first), expected);

    let mut db = Db::open(url);
    for table in TABLES {
        assert_eq!(db.count(&format!("SELECT COUNT(*) FROM {table} WHERE 1 = 0")), 0, "{table}");
    }
    let applied = "SELECT CAST(version AS BIGINT) FROM _sqlx_migrations WHERE success ORDER BY version";
    assert_eq!(db.integers(applied), versions.iter().map(|v| Some(*v)).collect::<Vec<_>>());
    let installed = "SELECT CAST(COUNT(DISTINCT installed_on) AS BIGINT) FROM _sqlx_migrations";
    let installed_before = db.count(installed);
    db.execute(
        "INSERT INTO messages (id, channel, sender, recipient, body, attachments, tags, status, created_at, updated_at) \
         VALUES ('kept', 'sms', '+12016661234', '+18045550001', 'hi', '[]', '[]', 'queued', 1, 1)",
    );

    // Again, named by the environment this time: the same line, nothing changed.
    let again = switchboard(dir.path(), &["migrate"], &[("SWITCHBOARD_STORE", url)]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(stdout(&again), expected);
    assert_eq!(db.count("SELECT COUNT(*) FROM messages WHERE id = 'kept'"), 1, "a second run keeps the data");
    assert_eq!(db.integers(applied).len(), versions.len(), "no migration recorded twice");
    assert_eq!(db.count(installed), installed_before, "no migration run again");
}

const RETENTION_CONFIG: &str = "[providers.p]\nkind = \"mock\"\n\
                                [routes.sms]\nproviders = [\"p\"]\n";

/// The retention purge (`--retention`, run at start and every minute): finished messages older
/// than the retention go with their attempts, idempotency keys older than 24 h go; a message
/// finished within the retention, a fresh key and an unfinished message, however old, stay.
pub fn retention_purges_old_messages_and_keys(url: &str) {
    let mut server = Server::start(RETENTION_CONFIG, &["--store", url], &[]);
    let send = |to: &str, key: Option<&str>| -> String {
        let body = json!({"channel": "sms", "from": "+12016661234", "to": to, "body": "hi"});
        let mut request = client().post(server.url("/v1/messages")).json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let answer: serde_json::Value =
            request.send().and_then(|r| r.json()).unwrap_or_else(|e| panic!("send: {e}"));
        answer["id"].as_str().unwrap_or_else(|| panic!("not accepted: {answer}")).to_owned()
    };
    let old_keyed = send("+18045550001", Some("old-key"));
    let old = send("+18045550002", None);
    let recent_keyed = send("+18045550003", Some("fresh-key"));
    for id in [&old_keyed, &old, &recent_keyed] {
        assert_eq!(wait_final(&server, id)["status"], "sent");
    }
    assert_eq!(server.terminate(), Some(0), "{}", server.logs());

    // Age the rows as if the service had been running for a while.
    let mut db = Db::open(url);
    let now = now_ms();
    let (hours_ago, half_hour_ago) = (now - 2 * 3_600_000, now - 1_800_000);
    for id in [&old_keyed, &old] {
        db.execute(&format!(
            "UPDATE messages SET created_at = {hours_ago}, updated_at = {hours_ago}, finished_at = {hours_ago} WHERE id = '{id}'"
        ));
    }
    db.execute(&format!("UPDATE messages SET finished_at = {half_hour_ago} WHERE id = '{recent_keyed}'"));
    let day_ago = now - 25 * 3_600_000;
    assert_eq!(
        db.execute(&format!(
            "UPDATE idempotency_keys SET created_at = {day_ago} WHERE message_id = '{old_keyed}'"
        )),
        1
    );
    // Queued, never finished, and old: waiting a day for its retry.
    db.execute(&format!(
        "INSERT INTO messages (id, channel, sender, recipient, body, attachments, tags, status, created_at, updated_at) \
         VALUES ('unfinished', 'sms', '+12016661234', '+18045550004', 'hi', '[]', '[]', 'queued', {day_ago}, {day_ago})"
    ));
    db.execute(&format!(
        "INSERT INTO queue (message_id, not_before, attempts, round) VALUES ('unfinished', {}, 0, 0)",
        now + 86_400_000
    ));
    let attempts_of =
        |db: &mut Db, id: &str| db.count(&format!("SELECT COUNT(*) FROM attempts WHERE message_id = '{id}'"));
    assert_eq!(attempts_of(&mut db, &old), 1);

    let server = Server::start(RETENTION_CONFIG, &["--store", url, "--retention", "1h"], &[]);
    let messages =
        |db: &mut Db, id: &str| db.count(&format!("SELECT COUNT(*) FROM messages WHERE id = '{id}'"));
    let keys = |db: &mut Db, id: &str| {
        db.count(&format!("SELECT COUNT(*) FROM idempotency_keys WHERE message_id = '{id}'"))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while messages(&mut db, &old_keyed) + messages(&mut db, &old) + keys(&mut db, &old_keyed) > 0 {
        assert!(
            Instant::now() < deadline,
            "past retention yet kept: messages {} and {}, key {}\n{}",
            messages(&mut db, &old_keyed),
            messages(&mut db, &old),
            keys(&mut db, &old_keyed),
            server.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        attempts_of(&mut db, &old) + attempts_of(&mut db, &old_keyed),
        0,
        "attempts go with their message"
    );
    assert_eq!(messages(&mut db, &recent_keyed), 1, "finished within the retention: kept");
    assert_eq!(attempts_of(&mut db, &recent_keyed), 1);
    assert_eq!(keys(&mut db, &recent_keyed), 1, "a key younger than 24 h is kept");
    assert_eq!(messages(&mut db, "unfinished"), 1, "an unfinished message is never purged");
    assert_eq!(db.count("SELECT COUNT(*) FROM queue WHERE message_id = 'unfinished'"), 1);
    let gone = client().get(server.url(&format!("/v1/messages/{old}"))).send().map(|r| r.status().as_u16());
    assert_eq!(gone.ok(), Some(404), "a purged message reads as unknown");
    assert_eq!(message_view(&server, &recent_keyed)["status"], "sent");
}

fn backoff_config(error_pct: u32) -> String {
    format!(
        "[providers.p]\nkind = \"mock\"\nerror_pct = {error_pct}\n\
         retry.initial_backoff_ms = 600000\nretry.max_backoff_ms = 600000\n\
         [routes.sms]\nproviders = [\"p\"]\nmax_attempts = 5\n"
    )
}

/// A retry's due time is stored and kept across a crash: after a failed attempt the queue holds
/// the retry round and its time; the service killed and started again (the provider now
/// working) attempts the message again at that time, not before, and sends it.
pub fn backoff_due_times_survive_a_restart(url: &str, dir: &Path) {
    let routes = dir.join("routes.toml");
    std::fs::write(&routes, backoff_config(100)).unwrap_or_else(|e| panic!("{e}"));
    let args = ["--store", url];
    let mut server = Server::start_in(dir, &args, &[]);
    let id = send_sms(&server, 7).unwrap_or_else(|| panic!("not accepted:\n{}", server.logs()));

    let mut db = Db::open(url);
    let round = format!("SELECT CAST(round AS BIGINT) FROM queue WHERE message_id = '{id}'");
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.integers(&round).first().copied().flatten().unwrap_or(0) < 1 {
        assert!(Instant::now() < deadline, "no retry was scheduled:\n{}", server.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill();

    let numbers = format!("SELECT CAST(MAX(number) AS BIGINT) FROM attempts WHERE message_id = '{id}'");
    let tried = db.count(&numbers);
    let last_failure = db.count(&format!(
        "SELECT MAX(finished_at) FROM attempts WHERE message_id = '{id}' AND outcome = 'error'"
    ));
    let stored = db.count(&format!("SELECT not_before FROM queue WHERE message_id = '{id}'"));
    assert!(
        (last_failure..=last_failure + 600_000 + 5_000).contains(&stored),
        "the retry time is the failure plus the backoff (at most 600 s): failed at {last_failure}, due at {stored}"
    );

    // Due in a few seconds: the restarted service must wait for it, then send.
    let due = now_ms() + 8_000;
    db.execute(&format!("UPDATE queue SET not_before = {due} WHERE message_id = '{id}'"));
    std::fs::write(&routes, backoff_config(0)).unwrap_or_else(|e| panic!("{e}"));
    let server = Server::start_in(dir, &args, &[]);
    assert!(now_ms() < due, "the restart took longer than the wait: nothing can be told");
    let view = wait_final_within(&server, &id, Duration::from_secs(60));
    assert_eq!(view["status"], "sent", "{view}");
    let first_retry = db.integers(&format!(
        "SELECT MIN(started_at) FROM attempts WHERE message_id = '{id}' AND number > {tried}"
    ));
    let Some(Some(retried)) = first_retry.first().copied() else {
        panic!("no attempt after the restart: {view}")
    };
    assert!(retried >= due, "retried {} ms before its stored due time", due - retried);
    assert_eq!(db.count(&numbers), tried + 1, "one attempt after the restart, which sent it: {view}");
}

/// [`wait_final`] with a longer deadline.
fn wait_final_within(server: &Server, id: &str, limit: Duration) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let view = message_view(server, id);
        if view["status"] == "sent" || view["status"] == "failed" {
            return view;
        }
        assert!(Instant::now() < deadline, "message {id} never finished: {view}\n{}", server.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A database created for one test, dropped (with its connections) when the test ends.
pub struct TestDatabase {
    pub admin: String,
    pub name: String,
    pub url: String,
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

/// A fresh database on the test server; panics without one (a PostgreSQL test never passes
/// without having run).
pub fn fresh_database(name: &str) -> TestDatabase {
    let admin = std::env::var("SWITCHBOARD_TEST_POSTGRES_URL").unwrap_or_default();
    assert!(!admin.trim().is_empty(), "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests");
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let database = format!("sb_{name}_{}_{}", std::process::id(), nanos % 1_000_000_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    runtime.block_on(async {
        let mut conn =
            sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| panic!("cannot reach {admin}: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("create database: {e}"));
    });
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base).to_owned();
    TestDatabase { url: format!("{base}/{database}"), admin, name: database }
}

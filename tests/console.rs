//! The operator console through the binary (specs/console.md): `/console` is public and locked
//! down (CSP), `/admin/console` is admin-only and shows the live breakers, the series sampled
//! from the metrics and the last rejected reload; and the page itself in a real browser
//! (`tests/support/console/console.mjs`: playwright-core driving Debian's chromium), ignored
//! (build.rs `no_browser`) unless `SWITCHBOARD_TEST_BROWSER` names the directory holding its
//! `node_modules` (`.ci/run` installs them and chromium).

mod common;

use std::time::{Duration, Instant};

use common::{client, Server};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// An admin key and a key without the admin role.
const ADMIN: &str = "sb_console_admin_5d1e0b";
const APP: &str = "sb_console_app_a37c42";

fn keys() -> String {
    let hash =
        |key: &str| Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>();
    format!("ops:{}:admin,app:{}", hash(ADMIN), hash(APP))
}

/// `bad` fails every attempt (two failures open its breaker for 10 minutes); `good` sends.
/// sms fails over from bad to good; email has only bad.
const CONFIG: &str = r#"[defaults]
retry.initial_backoff_ms = 1
retry.max_backoff_ms = 5

[providers.bad]
kind = "mock"
channels = ["sms", "email"]
error_pct = 100
breaker.failure_threshold = 2
breaker.open_ms = 600000

[providers.good]
kind = "mock"
channels = ["sms"]

[routes.sms]
providers = ["bad", "good"]

[routes.email]
providers = ["bad"]
max_attempts = 1
"#;

fn start() -> Server {
    Server::start(CONFIG, &["--store", "memory://"], &[("SWITCHBOARD_API_KEYS", &keys())])
}

/// (status, JSON body) of a GET with an optional key.
fn get(server: &Server, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut request = client().get(server.url(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

fn send(server: &Server, message: &Value) -> String {
    let response = client()
        .post(server.url("/v1/messages"))
        .bearer_auth(ADMIN)
        .json(message)
        .send()
        .unwrap_or_else(|e| panic!("send: {e}"));
    assert_eq!(response.status().as_u16(), 202);
    let body: Value = response.json().unwrap_or_else(|e| panic!("{e}"));
    body["id"].as_str().unwrap_or_else(|| panic!("no id: {body}")).to_owned()
}

/// Polls `GET path` until `done` holds; panics after a minute (a hang, not a speed check).
fn until(server: &Server, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get(server, path, Some(ADMIN));
        if status == 200 && done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "GET {path} never got there: {status} {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn fail_and_fail_over(server: &Server) -> (String, String) {
    let email = send(
        server,
        &json!({"channel": "email", "from": "ops@example.com", "to": "a@example.com", "body": "x"}),
    );
    until(server, &format!("/v1/messages/{email}"), |m| m["status"] == "failed");
    let sms =
        send(server, &json!({"channel": "sms", "from": "+12016661234", "to": "+18045551234", "body": "x"}));
    until(server, &format!("/v1/messages/{sms}"), |m| m["status"] == "sent");
    (email, sms)
}

#[test]
fn the_page_is_public_and_locked_down_and_its_data_admin_only() {
    let server = start();
    for (path, content_type) in [
        ("/console", "text/html; charset=utf-8"),
        ("/console/console.js", "text/javascript; charset=utf-8"),
        ("/console/console.css", "text/css; charset=utf-8"),
    ] {
        let response = client().get(server.url(path)).send().unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let header = |name: &str| {
            response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
        };
        assert_eq!(header("content-type"), content_type, "{path}");
        assert!(header("content-security-policy").starts_with("default-src 'self';"), "{path}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("x-frame-options"), "DENY", "{path}");
        let text = response.text().unwrap_or_default();
        // Nothing from elsewhere (the script names SVG's namespace, which is not fetched) and
        // nothing inline (the policy would block it).
        let other = text.replace("http://www.w3.org/2000/svg", "");
        assert!(!other.contains("http:") && !other.contains("https:"), "{path}");
        if path == "/console" {
            assert!(!text.contains("<script>") && !text.contains("style="), "nothing inline in the page");
        }
    }
    assert_eq!(get(&server, "/admin/console", None).0, 401);
    assert_eq!(get(&server, "/admin/console", Some(APP)).0, 403);
    assert_eq!(get(&server, "/admin/console", Some(ADMIN)).0, 200);
}

#[test]
fn the_snapshot_shows_breakers_series_queue_and_rejections() {
    let server = start();
    let (status, first) = get(&server, "/admin/console", Some(ADMIN));
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["loaded_by"], "start");
    assert_eq!(first["last_rejected"], Value::Null);
    assert_eq!((first["sample_every_s"].as_u64(), first["window_s"].as_u64()), (Some(5), Some(300)));
    assert_eq!(first["totals"], json!({"providers": 2, "closed": 2, "half_open": 0, "open": 0, "paused": 0}));
    let names = |body: &Value| -> Vec<String> {
        body["providers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(names(&first), ["bad", "good"]);
    assert_eq!(first["routes"][0]["channel"], "email");
    assert_eq!(first["routes"][1]["providers"], json!(["bad", "good"]));
    assert_eq!(first["queue_depth"], 0);

    fail_and_fail_over(&server);
    let open = until(&server, "/admin/console?state=open", |c| c["matching"] == 1);
    let bad = &open["providers"][0];
    assert_eq!((bad["name"].as_str(), bad["breaker"].as_str()), (Some("bad"), Some("open")));
    let retry_in = bad["retry_in_ms"].as_u64().unwrap_or_default();
    assert!(retry_in > 0 && retry_in <= 600_000, "{bad}");
    assert_eq!(open["totals"]["open"], 1);

    // The series: a sample holding the three attempts (bad: 2 errors; good: 1 success) comes
    // within a sample period or two.
    let sampled = until(&server, "/admin/console", |c| {
        c["providers"][0]["recent"]["outcomes"] == json!({"error": 2})
            && c["providers"][1]["recent"]["outcomes"] == json!({"success": 1})
    });
    let good = &sampled["providers"][1]["recent"];
    let points = |field: &str| good[field].as_array().cloned().unwrap_or_default();
    assert!(points("attempts_per_s").iter().any(|v| v.as_f64() == Some(0.2)), "{good}");
    assert!(points("success_pct").iter().any(|v| v.as_f64() == Some(100.0)), "{good}");
    assert!(points("p50_ms").iter().any(Value::is_number), "{good}");
    assert_eq!(points("p99_ms").len(), points("attempts_per_s").len());
    assert!(sampled["queue_depth_recent"].as_array().is_some_and(|q| !q.is_empty()));

    // Filters and pages.
    for (query, expected) in [
        ("?filter=GOO", vec!["good"]),
        ("?filter=email", vec!["bad"]),
        ("?state=closed", vec!["good"]),
        ("?state=paused", vec![]),
        ("?limit=1", vec!["bad"]),
        ("?limit=1&offset=1", vec!["good"]),
        ("?offset=5", vec![]),
    ] {
        let (status, body) = get(&server, &format!("/admin/console{query}"), Some(ADMIN));
        assert_eq!(
            (status, names(&body)),
            (200, expected.iter().map(|s| (*s).to_owned()).collect()),
            "{query}"
        );
    }
    for (query, field) in [
        ("?limit=0", "limit"),
        ("?state=broken", "state"),
        ("?filter=a&filter=b", "filter"),
        ("?provider=bad", "provider"),
    ] {
        let (status, body) = get(&server, &format!("/admin/console{query}"), Some(ADMIN));
        assert_eq!(
            (status, body["error"]["code"].as_str(), body["error"]["field"].as_str()),
            (400, Some("invalid_field"), Some(field)),
            "{query}"
        );
    }

    // A rejected reload, with its diagnostic's position; the last good config keeps serving.
    let path = server.dir().join("routes.toml");
    std::fs::write(&path, format!("{CONFIG}\n[providers.typo]\nkind = \"mokc\"\n"))
        .unwrap_or_else(|e| panic!("{e}"));
    let line = CONFIG.lines().count() + 3;
    let rejected = until(&server, "/admin/console", |c| !c["last_rejected"].is_null());
    let diagnostics = rejected["last_rejected"]["diagnostics"].as_array().cloned().unwrap_or_default();
    let Some(diagnostic) = diagnostics.iter().find(|d| d["severity"] == "error") else {
        panic!("no error among {diagnostics:?}")
    };
    assert_eq!(
        (diagnostic["line"].as_u64(), diagnostic["column"].as_u64()),
        (Some(line as u64), Some(8)),
        "{diagnostic}"
    );
    assert_eq!(rejected["version"], first["version"]);
}

/// Where `.ci/run` installed playwright-core (`node_modules` inside).
#[cfg(not(no_browser))]
fn browser_tools() -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var_os("SWITCHBOARD_TEST_BROWSER").unwrap_or_default())
}

#[test]
#[cfg_attr(
    no_browser,
    ignore = "SWITCHBOARD_TEST_BROWSER is unset: .ci/run installs chromium and playwright-core"
)]
fn the_console_in_a_real_browser() {
    #[cfg(not(no_browser))]
    {
        let server = start();
        let shots = common::repo_root().join("target/console-shots");
        let script = common::repo_root().join("tests/support/console/console.mjs");
        let output = std::process::Command::new("node")
            .arg(&script)
            .env("SWITCHBOARD_TEST_BROWSER", browser_tools())
            .env("CONSOLE_BASE", &server.base)
            .env("CONSOLE_ADMIN_KEY", ADMIN)
            .env("CONSOLE_APP_KEY", APP)
            .env("CONSOLE_ROUTES", server.dir().join("routes.toml"))
            .env("CONSOLE_SHOTS", &shots)
            .output()
            .unwrap_or_else(|e| panic!("cannot run node {}: {e}", script.display()));
        let printed =
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(
            output.status.success(),
            "the browser test failed:\n{printed}\nserver log:\n{}",
            server.logs()
        );
        assert!(printed.contains("console: every step passed"), "{printed}");
    }
}

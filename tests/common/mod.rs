//! Helpers shared by the end-to-end tests: run the real `switchboard` binary in a clean
//! environment.

#![allow(dead_code)]

pub mod fake_http;
pub mod smtp_sink;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures")
}

/// Runs the binary in `dir` with only `PATH` and the given variables set.
pub fn switchboard(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command.args(args).current_dir(dir).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    match command.output() {
        Ok(output) => output,
        Err(error) => panic!("cannot run switchboard: {error}"),
    }
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn json(output: &Output) -> serde_json::Value {
    match serde_json::from_slice(&output.stdout) {
        Ok(value) => value,
        Err(error) => panic!("stdout is not JSON ({error}): {}", stdout(output)),
    }
}

/// A `switchboard serve` process on an ephemeral port, killed when dropped.
pub struct Server {
    pub base: String,
    child: std::process::Child,
    logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The thread reading the server's stderr: joined once the server exited, so that every
    /// line it wrote is in `logs`.
    reader: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts the binary with `config` as its routes.toml in a fresh temp dir; panics if it
    /// does not come up.
    pub fn start(config: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        let dir = match tempfile::tempdir() {
            Ok(dir) => dir,
            Err(error) => panic!("tempdir: {error}"),
        };
        if let Err(error) = std::fs::write(dir.path().join("routes.toml"), config) {
            panic!("write config: {error}");
        }
        Self::spawn(dir, None, args, env)
    }

    /// Starts the binary in `cwd`, which the caller prepared (and keeps).
    pub fn start_in(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let dir = match tempfile::tempdir() {
            Ok(dir) => dir,
            Err(error) => panic!("tempdir: {error}"),
        };
        Self::spawn(dir, Some(cwd), args, env)
    }

    fn spawn(dir: tempfile::TempDir, cwd: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Server {
        use std::io::BufRead;
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .current_dir(cwd.unwrap_or(dir.path()))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(error) => panic!("cannot start switchboard: {error}"),
        };
        let Some(stderr) = child.stderr.take() else { panic!("no stderr") };
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let sink = std::sync::Arc::clone(&logs);
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("listening on http://") {
                    let rest = &line[at + "listening on http://".len()..];
                    let address: String =
                        rest.chars().take_while(|c| !c.is_whitespace() && *c != '"').collect();
                    let _ = address_tx.send(address);
                }
                if let Ok(mut logs) = sink.lock() {
                    logs.push(line);
                }
            }
        });
        let address = match address_rx.recv_timeout(std::time::Duration::from_secs(20)) {
            Ok(address) => address,
            Err(_) => {
                let _ = child.kill();
                let logs = logs.lock().map(|l| l.join("\n")).unwrap_or_default();
                panic!("switchboard did not start:\n{logs}");
            }
        };
        Server { base: format!("http://{address}"), child, logs, reader: Some(reader), _dir: dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The temp dir the server runs in (holding its routes.toml, unless started with `start_in`).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// SIGKILL: no shutdown, no flush: a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal (`HUP`, `TERM`, …) to the server.
    pub fn signal(&mut self, name: &str) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args([&format!("-{name}"), &pid]).status();
    }

    /// The log so far (the server may still be writing: for diagnostics and for what must be
    /// in it; what must *not* be in it is checked on [`Server::whole_log`]).
    pub fn logs(&self) -> String {
        self.logs.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit code; then waits for the log reader to have read
    /// the last line, so [`Server::logs`] holds the whole log.
    pub fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.join_reader();
                return status.code();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }

    /// The whole log, for asserting what it must not contain: stops the server (SIGTERM, then
    /// SIGKILL if it does not exit) and joins the log reader first, so no line is still unread.
    pub fn whole_log(&mut self) -> String {
        if self.reader.is_some() && self.terminate().is_none() {
            self.kill();
            self.join_reader();
        }
        assert!(self.reader.is_none(), "the log reader was not joined");
        self.logs()
    }

    /// The reader ends at the end of the pipe, once the process exited.
    fn join_reader(&mut self) {
        if let Some(reader) = self.reader.take() {
            if reader.join().is_err() {
                panic!("the log reader panicked");
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client without connection reuse: a server may close a connection after refusing a
/// body it did not read (413), or die (crash tests).
pub fn client() -> reqwest::blocking::Client {
    switchboard_providers::http::install_crypto_provider();
    reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap_or_default()
}

/// Sends sms number `n` through the legacy endpoint; its id when answered 202.
pub fn send_sms(server: &Server, n: u32) -> Option<String> {
    let body = serde_json::json!({"from": "+12016661234", "to": format!("+1804555{n:04}"), "type": "sms", "body": "hi"});
    let response = client().post(server.url("/api/messages/sms")).json(&body).send().ok()?;
    if response.status().as_u16() != 202 {
        return None;
    }
    response.json::<serde_json::Value>().ok()?["id"].as_str().map(str::to_owned)
}

/// POSTs a native message to `/v1/messages`; its id when answered 202.
pub fn send_native(server: &Server, message: &serde_json::Value) -> Option<String> {
    let response = client().post(server.url("/v1/messages")).json(message).send().ok()?;
    if response.status().as_u16() != 202 {
        return None;
    }
    response.json::<serde_json::Value>().ok()?["id"].as_str().map(str::to_owned)
}

/// `GET /v1/messages/{id}`, `null` when it cannot be read.
pub fn message_view(server: &Server, id: &str) -> serde_json::Value {
    client().get(server.url(&format!("/v1/messages/{id}"))).send().and_then(|r| r.json()).unwrap_or_default()
}

/// Polls until the message is sent or failed (the deadline only guards against a hang).
pub fn wait_final(server: &Server, id: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let view = message_view(server, id);
        if view["status"] == "sent" || view["status"] == "failed" {
            return view;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "message {id} never finished: {view}\n{}",
            server.logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// `count` requests at once with one `Idempotency-Key`, spread over the servers at `bases`;
/// their statuses, bodies and `Retry-After` headers.
pub fn same_key_concurrently(
    bases: &[String],
    body: &serde_json::Value,
    count: usize,
) -> Vec<(u16, serde_json::Value, Option<String>)> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count)
            .map(|i| {
                let base = &bases[i % bases.len()];
                scope.spawn(move || {
                    let response = client()
                        .post(format!("{base}/v1/messages"))
                        .header("Idempotency-Key", "race")
                        .json(body)
                        .send();
                    response
                        .map(|r| {
                            let retry_after = r
                                .headers()
                                .get("retry-after")
                                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                            (
                                r.status().as_u16(),
                                r.json::<serde_json::Value>().unwrap_or_default(),
                                retry_after,
                            )
                        })
                        .unwrap_or((0, serde_json::Value::Null, None))
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    })
}

/// Sends `count` sms as fast as it can; returns the ids answered 202 (a dying server may refuse
/// or drop the rest: only 202s are promises).
pub fn send_until_dead(server: &Server, count: u32, start: u32) -> Vec<String> {
    (start..start + count).filter_map(|n| send_sms(server, n)).collect()
}

/// The crash test: 4 rounds of sending under load then SIGKILL at a seeded moment, a restart,
/// and then every message answered 202 must end `sent` with exactly one recorded success;
/// repeated attempts are bounded by the work in flight at each kill (4 × `--workers`).
pub fn crash_repeatedly(dir: &Path, args: &[&str], env: &[(&str, &str)]) {
    let workers: usize =
        args.windows(2).find(|w| w[0] == "--workers").and_then(|w| w[1].parse().ok()).unwrap_or(64);
    let mut accepted = Vec::new();
    let mut seed = 0x2545_f491_u64;
    for round in 0..4u32 {
        let mut server = Server::start_in(dir, args, env);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let burst = 20 + (seed % 30) as u32;
        accepted.extend(send_until_dead(&server, burst, round * 100));
        std::thread::sleep(std::time::Duration::from_millis(seed % 80));
        server.kill();
    }
    let server = Server::start_in(dir, args, env);
    let view = |id: &str| message_view(&server, id);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut unfinished: std::collections::HashSet<String> = accepted.iter().cloned().collect();
    while !unfinished.is_empty() && std::time::Instant::now() < deadline {
        unfinished.retain(|id| view(id)["status"] != "sent");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        unfinished.is_empty(),
        "{} of {} accepted messages were lost: {unfinished:?}\n{}",
        unfinished.len(),
        accepted.len(),
        server.logs()
    );
    let mut repeated = 0;
    for id in &accepted {
        let message = view(id);
        let attempts = message["attempts"].as_array().cloned().unwrap_or_default();
        let successes = attempts.iter().filter(|a| a["outcome"] == "success").count();
        assert_eq!(successes, 1, "{message}");
        repeated += attempts.len() - 1;
    }
    assert!(repeated <= 4 * workers, "{repeated} repeated attempts");
    let metrics = client().get(server.url("/metrics")).send().and_then(|r| r.text()).unwrap_or_default();
    assert!(metrics.contains("switchboard_possible_duplicates_total"), "{metrics}");
}

/// How many messages the SQLite store at `database` holds (its `messages` table), read from the
/// file itself: "nothing stored" is checked in the store, not only through a metric.
pub fn stored_messages(database: &Path) -> i64 {
    use sqlx::ConnectOptions;
    assert!(database.exists(), "no database at {}", database.display());
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => panic!("runtime: {error}"),
    };
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(database).read_only(true);
    let counted = runtime.block_on(async {
        let mut connection = options.connect().await?;
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM messages").fetch_one(&mut connection).await
    });
    match counted {
        Ok(count) => count,
        Err(error) => panic!("cannot count the messages in {}: {error}", database.display()),
    }
}

/// Whether golden files are to be rewritten (`BLESS=1`). Refused under `CI=true`: a CI run that
/// re-blessed its golden files would pass whatever the output became.
pub fn bless() -> bool {
    let bless = std::env::var_os("BLESS").is_some_and(|v| !v.is_empty());
    let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    assert!(
        !(bless && ci),
        "BLESS is set under CI=true: golden files are re-blessed only by hand, never in CI \
         (unset BLESS, run the test locally with BLESS=1 and review the diff)"
    );
    bless
}

/// A loopback TCP address that refuses connections, reserved for as long as the socket lives:
/// bound but not listening, so nothing else can take the port meanwhile (unlike binding a
/// listener and dropping it).
pub fn refusing_address() -> (socket2::Socket, std::net::SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let socket = match Socket::new(Domain::IPV4, Type::STREAM, None) {
        Ok(socket) => socket,
        Err(error) => panic!("socket: {error}"),
    };
    let any: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
    if let Err(error) = socket.bind(&any.into()) {
        panic!("bind: {error}");
    }
    let address = socket.local_addr().ok().and_then(|a| a.as_socket());
    match address {
        Some(address) => (socket, address),
        None => panic!("no local address"),
    }
}

/// Runs the golden-file test `test` of the current test binary again with `BLESS=1` and
/// `CI=true`: it must fail, saying why, before rewriting anything.
pub fn assert_bless_refused_under_ci(test: &str) {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(error) => panic!("current_exe: {error}"),
    };
    let output = match Command::new(exe)
        .args([test, "--exact", "--test-threads=1"])
        .env("BLESS", "1")
        .env("CI", "true")
        .output()
    {
        Ok(output) => output,
        Err(error) => panic!("cannot run the test binary: {error}"),
    };
    let text = format!("{}{}", stdout(&output), stderr(&output));
    assert!(!output.status.success(), "{test} passed with BLESS=1 under CI=true:\n{text}");
    assert!(text.contains("1 failed"), "{test} did not run:\n{text}");
    assert!(text.contains("golden files are re-blessed only by hand"), "{text}");
}

/// Standard base64, for the forms a credential takes on the wire.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
        out.push_str(&"=".repeat(3 - chunk.len()));
    }
    out
}

//! Slow and idle clients through the real binary: a request head that does not arrive in
//! `--header-timeout` gets 408 (a connection that sent nothing, or is idle between requests, is
//! closed), and thousands of such connections never keep `/healthz` from answering, even with
//! the process out of file descriptors.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::Server;
use serde_json::Value;

const CONFIG: &str = "[providers.p]\nkind = \"mock\"\n\n[routes.sms]\nproviders = [\"p\"]\n";

/// Guards reads against a hang; no test waits for it to pass.
const HANG: Duration = Duration::from_secs(30);

fn connect(base: &str) -> TcpStream {
    let stream =
        TcpStream::connect(base.trim_start_matches("http://")).unwrap_or_else(|e| panic!("connect: {e}"));
    let _ = stream.set_read_timeout(Some(HANG));
    stream
}

/// Everything the server sends until it closes the connection.
fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    if let Err(error) = stream.read_to_end(&mut answer) {
        panic!("the connection was not closed: {error}; got {:?}", String::from_utf8_lossy(&answer));
    }
    String::from_utf8_lossy(&answer).into_owned()
}

fn error_code(answer: &str) -> Value {
    let body = answer.split_once("\r\n\r\n").map(|(_, body)| body).unwrap_or_default();
    serde_json::from_str::<Value>(body).unwrap_or_default()["error"]["code"].clone()
}

#[test]
fn heads_that_do_not_arrive_in_time_get_408_and_idle_connections_are_closed() {
    let mut server = Server::start(CONFIG, &["--store", "memory://", "--header-timeout", "1s"], &[]);

    // A head sent byte by byte, never finished: 408 with the JSON error body, then closed.
    let mut slow = connect(&server.base);
    let mut writer = slow.try_clone().unwrap_or_else(|e| panic!("{e}"));
    let trickle = std::thread::spawn(move || {
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().cycle() {
            if writer.write_all(&[*byte]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let answer = read_until_closed(&mut slow);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert_eq!(error_code(&answer), "request_timeout", "{answer}");
    let _ = slow.shutdown(std::net::Shutdown::Both);
    let _ = trickle.join();

    // Nothing sent at all: closed without an answer.
    let mut silent = connect(&server.base);
    assert_eq!(read_until_closed(&mut silent), "");

    // Kept alive after an answer, then idle: closed without another answer.
    let mut idle = connect(&server.base);
    let _ = idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut reader = BufReader::new(idle);
    let mut length = 0;
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap_or(0);
        }
        line.clear();
    }
    let mut body = vec![0; length];
    assert!(reader.read_exact(&mut body).is_ok() && body == br#"{"status":"ok"}"#, "{body:?}");
    let mut rest = String::new();
    assert!(reader.read_to_string(&mut rest).is_ok(), "the idle connection was not closed");
    assert_eq!(rest, "");
    let logs = server.whole_log();
    assert!(!logs.contains("panicked"), "{logs}");
}

/// Opens up to `count` connections; every other one sends the start of a head and stops.
fn open_partial(base: &str, count: usize) -> Vec<TcpStream> {
    let address = base.trim_start_matches("http://");
    let mut streams = Vec::new();
    for i in 0..count {
        // The test process's own descriptors may run out first: what was opened is enough.
        let Ok(mut stream) = TcpStream::connect(address) else { break };
        if i % 2 == 1 {
            let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-");
        }
        streams.push(stream);
    }
    streams
}

fn healthz(base: &str) -> u16 {
    common::client().get(format!("{base}/healthz")).send().map(|r| r.status().as_u16()).unwrap_or(0)
}

#[test]
fn healthz_answers_while_two_thousand_heads_are_incomplete() {
    let server = Server::start(CONFIG, &["--store", "memory://"], &[]);
    let t = std::time::Instant::now();
    let streams = open_partial(&server.base, 2000);
    eprintln!("opened {:?}", t.elapsed());
    assert!(streams.len() >= 500, "only {} connections opened", streams.len());
    assert_eq!(healthz(&server.base), 200, "{}", server.logs());
    eprintln!("healthz {:?}", t.elapsed());
    drop(streams);
    assert_eq!(healthz(&server.base), 200);
}

/// `switchboard serve` with at most `files` open file descriptors (soft and hard limit).
struct Limited {
    child: std::process::Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Limited {
    fn start(files: u32) -> Limited {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("routes.toml"), CONFIG).unwrap_or_else(|e| panic!("{e}"));
        let mut child = std::process::Command::new("sh")
            .args(["-c", &format!("ulimit -n {files} && exec \"$0\" \"$@\"")])
            .arg(env!("CARGO_BIN_EXE_switchboard"))
            .args(["serve", "--listen", "127.0.0.1:0", "--store", "memory://"])
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start switchboard: {e}"));
        let Some(stderr) = child.stderr.take() else { panic!("no stderr") };
        let mut lines = BufReader::new(stderr).lines();
        let base = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|line| {
                let at = line.find("listening on http://")?;
                let rest = &line[at + "listening on ".len()..];
                Some(rest.split_whitespace().next()?.to_owned())
            })
            .unwrap_or_else(|| panic!("switchboard did not start"));
        // Keep reading the log so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Limited { child, base, _dir: dir }
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn healthz_answers_with_the_process_out_of_file_descriptors() {
    let server = Limited::start(256);
    let streams = open_partial(&server.base, 1000);
    assert!(streams.len() >= 500, "only {} connections opened", streams.len());
    assert_eq!(healthz(&server.base), 200);
    drop(streams);
}

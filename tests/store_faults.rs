//! The store failing under a running service, through the binary: a client that hangs up, a
//! full disk, a deleted database file, a store that cannot be written at start. Every message
//! answered 202 is sent without a restart; readiness follows the store.
//!
//! The disk tests mount a small tmpfs of their own (this project's CI runs as root); they fail,
//! saying so, where mounting is not allowed.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{client, message_view, Server};
use serde_json::{json, Value};

const SLOW: &str = "[providers.slow]\nkind = \"mock\"\nlatency_ms = 2000\n\
                    [routes.sms]\nproviders = [\"slow\"]\n";
const FAST: &str =
    "[providers.fast]\nkind = \"mock\"\n[routes.sms]\nproviders = [\"fast\"]\n[routes.mms]\nproviders = [\"fast\"]\n";

/// A tmpfs of `size` mounted on a fresh temp dir, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status();
        assert!(
            mounted.is_ok_and(|s| s.success()),
            "this test needs to mount a tmpfs (run as root, as CI does): `mount -t tmpfs` failed"
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount(&self, options: &str) -> bool {
        Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(self.path())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Writes a file until the file system is full; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{e}"));
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.flush();
        // Whatever is left, byte by byte-ish.
        while file.write_all(&chunk[..512]).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

fn sms(n: u32) -> Value {
    json!({"channel": "sms", "from": "+12016661234", "to": format!("+1804555{n:04}"), "body": "hi"})
}

fn post(server: &Server, body: &Value) -> (u16, Value) {
    match client().post(server.url("/v1/messages")).json(body).send() {
        Ok(r) => (r.status().as_u16(), r.json().unwrap_or_default()),
        Err(error) => panic!("{error}"),
    }
}

fn readyz(server: &Server) -> (u16, Value) {
    match client().get(server.url("/readyz")).send() {
        Ok(r) => (r.status().as_u16(), r.json().unwrap_or_default()),
        Err(error) => panic!("{error}"),
    }
}

/// Polls until `check` holds (the deadline only guards against a hang).
fn eventually(what: &str, server: &Server, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "{what} never happened\n{}", server.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn clients_that_hang_up_right_after_sending_still_get_their_messages_sent() {
    let server = Server::start(FAST, &[], &[]);
    let address = server.base.trim_start_matches("http://").to_owned();
    let body = sms(1).to_string();
    let keys: Vec<String> = (0..60).map(|i| format!("hangup-{i}")).collect();
    for key in &keys {
        let Ok(mut stream) = TcpStream::connect(&address) else { panic!("connect") };
        let request = format!(
            "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nIdempotency-Key: {key}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(request.as_bytes());
        // Hang up at once, with a reset: the handler is dropped wherever it is.
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        drop(stream);
    }
    for key in &keys {
        // The retry with the same key is answered (first time, or replayed) ...
        let response = client()
            .post(server.url("/v1/messages"))
            .header("Idempotency-Key", key)
            .header("Content-Type", "application/json")
            .body(body.clone())
            .send();
        let (status, answer) = match response {
            Ok(r) => (r.status().as_u16(), r.json::<Value>().unwrap_or_default()),
            Err(error) => panic!("{error}"),
        };
        assert_eq!(status, 202, "{answer}");
        let Some(id) = answer["id"].as_str() else { panic!("{answer}") };
        // ... and the message is sent, without a restart.
        assert_eq!(common::wait_final(&server, id)["status"], "sent");
    }
    let mut stopping = server;
    assert_eq!(stopping.terminate(), Some(0));
    assert!(stopping.logs().contains("stopped with no message left queued"), "{}", stopping.logs());
}

#[test]
fn a_database_file_deleted_while_serving_is_detected() {
    let server = Server::start(FAST, &[], &[]);
    assert_eq!(post(&server, &sms(1)).0, 202);
    for name in ["switchboard.db", "switchboard.db-wal", "switchboard.db-shm"] {
        let _ = std::fs::remove_file(server.dir().join(name));
    }
    let (status, answer) = post(&server, &sms(2));
    assert_eq!((status, answer["error"]["code"].as_str()), (503, Some("store_unavailable")), "{answer}");
    let (status, ready) = readyz(&server);
    assert_eq!((status, ready["error"]["code"].as_str()), (503, Some("store_unavailable")), "{ready}");
    assert!(server.logs().contains("was deleted or replaced"), "{}", server.logs());
}

#[test]
fn progress_refused_by_a_full_disk_is_written_once_there_is_room() {
    let disk = Tmpfs::mount("8m");
    let store = format!("sqlite://{}", disk.path().join("s.db").display());
    let server = Server::start(SLOW, &["--store", &store], &[]);
    // Accepted while there is room; their attempts end (2 s later: room to fill the disk first,
    // however loaded the machine) on a full disk.
    let ids: Vec<String> = (0..40)
        .map(|n| {
            let (status, answer) = post(&server, &sms(n));
            assert_eq!(status, 202, "{answer}");
            answer["id"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    let filler = disk.fill();
    eventually("a refused write", &server, || server.logs().contains("could not record dispatch progress"));
    let (status, ready) = readyz(&server);
    assert_eq!((status, ready["error"]["code"].as_str()), (503, Some("store_unavailable")), "{ready}");
    let (status, refused) = post(&server, &sms(99));
    assert_eq!((status, refused["error"]["code"].as_str()), (503, Some("store_unavailable")), "{refused}");

    std::fs::remove_file(filler).unwrap_or_else(|e| panic!("{e}"));
    for id in &ids {
        eventually("the message's end stored", &server, || message_view(&server, id)["status"] == "sent");
    }
    eventually("ready again", &server, || readyz(&server).0 == 200);
}

#[test]
fn a_store_that_cannot_be_written_refuses_to_start() {
    let disk = Tmpfs::mount("8m");
    let db = disk.path().join("s.db");
    let store = format!("sqlite://{}", db.display());
    let migrated = common::switchboard(disk.path(), &["migrate", "--store", &store], &[]);
    assert!(migrated.status.success(), "{}", common::stderr(&migrated));
    assert!(disk.remount("ro"), "remount read-only");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("routes.toml"), FAST).unwrap_or_else(|e| panic!("{e}"));
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--listen", "127.0.0.1:0", "--store", &store])
        .current_dir(dir.path())
        .env_clear()
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&db.display().to_string()) && stderr.contains("write"), "{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
}

#[test]
fn the_owner_reads_from_to_and_attachments() {
    let server = Server::start(FAST, &[], &[]);
    let mms = json!({"channel": "mms", "from": "+12016661234", "to": "+18045551234", "body": "pic",
                     "attachments": ["https://example.com/a.png"]});
    for (body, attachments) in [(mms, json!(["https://example.com/a.png"])), (sms(7), json!([]))] {
        let (status, answer) = post(&server, &body);
        assert_eq!(status, 202, "{answer}");
        let Some(id) = answer["id"].as_str() else { panic!("{answer}") };
        let view = message_view(&server, id);
        let shown = (&view["from"], &view["to"], &view["attachments"]);
        assert_eq!(shown, (&body["from"], &body["to"], &attachments), "{view}");
        assert!(view.get("body").is_none(), "never the body: {view}");
    }
}

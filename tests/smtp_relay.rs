//! The `smtp` kind against a relay the project did not write: aiosmtpd (PyPI) run by
//! `tests/support/aiosmtpd_relay.py` with the python `.ci/run` sets up (`SWITCHBOARD_TEST_PYTHON`),
//! behind a test CA made here. Through the real binary: plain, STARTTLS and implicit TLS trusted
//! via `ca_file`, AUTH LOGIN with the right and a wrong password, a certificate nothing trusts.
//! Built without `SWITCHBOARD_TEST_PYTHON`, the relay tests are ignored (build.rs), never passed.

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{send_native, stderr, stdout, switchboard, wait_final, Server};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use serde_json::{json, Value};

/// The password the relay accepts for `mailer`.
const PASSWORD: &str = "MARKER-relay-pw-71c3a9";
/// A password the relay refuses.
const WRONG_PASSWORD: &str = "MARKER-wrong-pw-5d2e80";

/// A test CA and a certificate for `127.0.0.1` it signed, as PEM files in a temp dir.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("tempdir: {error}"));
        let ca_key = KeyPair::generate().unwrap_or_else(|error| panic!("{error}"));
        let mut ca_params =
            CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|error| panic!("{error}"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "Switchboard test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap_or_else(|error| panic!("{error}"));
        let key = KeyPair::generate().unwrap_or_else(|error| panic!("{error}"));
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap_or_else(|error| panic!("{error}"));
        params.distinguished_name.push(DnType::CommonName, "relay.test");
        let cert = params.signed_by(&key, &ca).unwrap_or_else(|error| panic!("{error}"));
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap_or_else(|error| panic!("write {name}: {error}"));
            path
        };
        let ca = write("ca.pem", &ca.pem());
        let cert = write("relay.pem", &cert.pem());
        let key = write("relay.key", &key.serialize_pem());
        Pki { _dir: dir, ca, cert, key }
    }
}

/// An aiosmtpd relay on 127.0.0.1 (the port it bound itself, read from its first line), killed
/// when dropped. `mode` is `plain`, `starttls` or `tls`; with `auth`, it requires AUTH LOGIN as
/// `mailer` with [`PASSWORD`].
struct Relay {
    port: u16,
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
    errors: Arc<Mutex<String>>,
}

impl Relay {
    fn start(mode: &str, pki: Option<&Pki>, auth: bool) -> Relay {
        let Some(python) = std::env::var_os("SWITCHBOARD_TEST_PYTHON") else {
            panic!("SWITCHBOARD_TEST_PYTHON is not set: run .ci/run, which installs aiosmtpd and sets it")
        };
        let mut command = Command::new(python);
        command
            .arg(common::repo_root().join("tests/support/aiosmtpd_relay.py"))
            .args(["--mode", mode])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(pki) = pki {
            command.arg("--cert").arg(&pki.cert).arg("--key").arg(&pki.key);
        }
        if auth {
            command
                .args(["--login", "mailer", "--password-env", "RELAY_PASSWORD"])
                .env("RELAY_PASSWORD", PASSWORD);
        }
        let mut child = command.spawn().unwrap_or_else(|error| panic!("cannot start aiosmtpd: {error}"));
        let events: Arc<Mutex<Vec<Value>>> = Arc::default();
        let errors: Arc<Mutex<String>> = Arc::default();
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        if let Some(out) = child.stdout.take() {
            let events = Arc::clone(&events);
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    let Ok(event) = serde_json::from_str::<Value>(&line) else { continue };
                    if event["event"] == "listening" {
                        let _ = port_tx.send(event["port"].as_u64().unwrap_or_default() as u16);
                    } else if let Ok(mut events) = events.lock() {
                        events.push(event);
                    }
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            let errors = Arc::clone(&errors);
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                    if let Ok(mut errors) = errors.lock() {
                        errors.push_str(&line);
                        errors.push('\n');
                    }
                }
            });
        }
        let port = port_rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let mut relay = Relay { port, child, events, errors };
        if port == 0 {
            relay.stop();
            panic!("aiosmtpd did not start:\n{}", relay.errors());
        }
        relay
    }

    fn events(&self, kind: &str) -> Vec<Value> {
        let events = self.events.lock().map(|e| e.clone()).unwrap_or_default();
        events.into_iter().filter(|e| e["event"] == kind).collect()
    }

    /// The messages the relay accepted, once `count` have arrived (its stdout is read by a
    /// thread that may trail the SMTP reply a little).
    fn wait_messages(&self, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let messages = self.events("message");
            if messages.len() >= count || Instant::now() > deadline {
                return messages;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn errors(&self) -> String {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A config whose only email provider is the relay, with one attempt per message.
fn config(relay: &Relay, tls: &str, ca_file: Option<&Path>, auth: bool) -> String {
    let mut provider =
        format!("kind = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"{tls}\"\n", relay.port);
    if let Some(ca_file) = ca_file {
        provider.push_str(&format!("ca_file = {}\n", toml_string(&ca_file.to_string_lossy())));
    }
    if auth {
        provider.push_str("username = \"mailer\"\npassword = \"${SMTP_PASSWORD}\"\n");
    }
    format!("[providers.relay]\n{provider}\n[routes.email]\nproviders = [\"relay\"]\nmax_attempts = 1\n")
}

fn toml_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

fn email() -> Value {
    json!({
        "channel": "email",
        "from": "app@example.com",
        "to": "user@example.org",
        "subject": "Relay check",
        "body": "Hello through a relay we did not write",
    })
}

/// Sends one email through a switchboard using `relay`; the final message view and the
/// server's logs (read after it stopped).
fn send_through(
    relay: &Relay,
    tls: &str,
    ca_file: Option<&Path>,
    password: Option<&str>,
) -> (String, Value, String) {
    let env: Vec<(&str, &str)> = match password {
        Some(password) => vec![("SMTP_PASSWORD", password), ("RUST_LOG", "debug")],
        None => vec![("RUST_LOG", "debug")],
    };
    let mut server = Server::start(&config(relay, tls, ca_file, password.is_some()), &[], &env);
    let Some(id) = send_native(&server, &email()) else { panic!("email not accepted:\n{}", server.logs()) };
    let view = wait_final(&server, &id);
    server.terminate();
    let logs = server.logs();
    (id, view, logs)
}

/// The relay got exactly the email sent as `id`: envelope, headers and body, over TLS or not,
/// after AUTH LOGIN as `mailer` when `auth`.
fn assert_delivered(relay: &Relay, id: &str, view: &Value, tls: bool, auth: bool) {
    assert_eq!(view["status"], "sent", "{view}\n{}", relay.errors());
    assert_eq!(view["provider"], "relay", "{view}");
    assert_eq!(view["provider_message_id"], format!("<{id}@example.com>"), "{view}");
    let messages = relay.wait_messages(1);
    assert_eq!(messages.len(), 1, "{messages:?}");
    let message = &messages[0];
    assert_eq!(message["mail_from"], "app@example.com", "{message}");
    assert_eq!(message["rcpt_tos"], json!(["user@example.org"]), "{message}");
    assert_eq!(message["tls"], tls, "{message}");
    let data = message["data"].as_str().unwrap_or_default();
    for line in [
        "From: app@example.com".to_owned(),
        "To: user@example.org".to_owned(),
        "Subject: Relay check".to_owned(),
        format!("Message-ID: <{id}@example.com>"),
        "Content-Type: text/plain".to_owned(),
    ] {
        assert!(data.lines().any(|l| l.starts_with(&line)), "no {line:?} in:\n{data}");
    }
    assert!(data.contains("\r\n\r\nHello through a relay we did not write"), "{data}");
    if auth {
        assert_eq!(message["auth"], "LOGIN:mailer", "{message}");
        assert_eq!(
            relay.events("auth"),
            [json!({"event": "auth", "mechanism": "LOGIN", "login": "mailer", "ok": true})]
        );
    } else {
        assert!(relay.events("auth").is_empty(), "{:?}", relay.events("auth"));
    }
}

#[test]
#[cfg_attr(no_python, ignore = "SWITCHBOARD_TEST_PYTHON is unset: .ci/run installs aiosmtpd")]
fn starttls_with_private_ca_and_auth_login_delivers() {
    let pki = Pki::new();
    let relay = Relay::start("starttls", Some(&pki), true);
    let (id, view, _) = send_through(&relay, "starttls", Some(&pki.ca), Some(PASSWORD));
    assert_delivered(&relay, &id, &view, true, true);
}

#[test]
#[cfg_attr(no_python, ignore = "SWITCHBOARD_TEST_PYTHON is unset: .ci/run installs aiosmtpd")]
fn implicit_tls_with_private_ca_and_auth_login_delivers() {
    let pki = Pki::new();
    let relay = Relay::start("tls", Some(&pki), true);
    let (id, view, _) = send_through(&relay, "tls", Some(&pki.ca), Some(PASSWORD));
    assert_delivered(&relay, &id, &view, true, true);
}

#[test]
#[cfg_attr(no_python, ignore = "SWITCHBOARD_TEST_PYTHON is unset: .ci/run installs aiosmtpd")]
fn plain_relay_on_loopback_delivers() {
    let relay = Relay::start("plain", None, true);
    let (id, view, _) = send_through(&relay, "none", None, Some(PASSWORD));
    assert_delivered(&relay, &id, &view, false, true);
}

#[test]
#[cfg_attr(no_python, ignore = "SWITCHBOARD_TEST_PYTHON is unset: .ci/run installs aiosmtpd")]
fn wrong_password_fails_clearly_and_is_never_shown() {
    let pki = Pki::new();
    let relay = Relay::start("starttls", Some(&pki), true);
    let (_, view, logs) = send_through(&relay, "starttls", Some(&pki.ca), Some(WRONG_PASSWORD));
    assert_eq!(view["status"], "failed", "{view}");
    let attempt = &view["attempts"][0];
    assert_eq!(attempt["error_class"], "misconfigured", "{view}");
    assert_eq!(attempt["error_code"], "535", "{view}");
    let reason = attempt["error_message"].as_str().unwrap_or_default();
    assert!(reason.contains("Authentication credentials invalid"), "{view}");
    assert_eq!(
        relay.events("auth"),
        [json!({"event": "auth", "mechanism": "LOGIN", "login": "mailer", "ok": false})]
    );
    assert!(relay.wait_messages(0).is_empty());
    // AUTH LOGIN sends the password base64-encoded (compared without its padding).
    let encoded = common::base64(WRONG_PASSWORD.as_bytes());
    let encoded = encoded.trim_end_matches('=');
    for text in [view.to_string(), logs] {
        for secret in [WRONG_PASSWORD, encoded, PASSWORD] {
            assert!(!text.contains(secret), "{secret} shown in:\n{text}");
        }
    }
}

#[test]
#[cfg_attr(no_python, ignore = "SWITCHBOARD_TEST_PYTHON is unset: .ci/run installs aiosmtpd")]
fn certificate_of_an_untrusted_ca_is_refused() {
    let pki = Pki::new();
    for (relay_mode, tls) in [("starttls", "starttls"), ("tls", "tls")] {
        let relay = Relay::start(relay_mode, Some(&pki), true);
        let (_, view, _) = send_through(&relay, tls, None, Some(PASSWORD));
        assert_eq!(view["status"], "failed", "{tls}: {view}");
        let attempt = &view["attempts"][0];
        assert_eq!(attempt["error_class"], "not_sent", "{tls}: {view}");
        let reason = attempt["error_message"].as_str().unwrap_or_default();
        assert!(reason.contains("certificate"), "{tls}: {view}");
        assert!(relay.events("auth").is_empty(), "{tls}: AUTH before the certificate was checked");
        assert!(relay.wait_messages(0).is_empty(), "{tls}");
    }
}

/// `ca_file` is checked when the config is loaded: `validate` names the setting and the file.
#[test]
fn unusable_ca_file_is_reported_at_load() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("tempdir: {error}"));
    let not_pem = dir.path().join("not-a-ca.txt");
    std::fs::write(&not_pem, "just text\n").unwrap_or_else(|error| panic!("{error}"));
    let missing = dir.path().join("missing.pem");
    let routes = |ca_file: &Path| {
        format!(
            "[providers.relay]\nkind = \"smtp\"\nhost = \"relay.internal\"\nca_file = {}\n\n[routes.email]\nproviders = [\"relay\"]\n",
            toml_string(&ca_file.to_string_lossy())
        )
    };
    let validate = |ca_file: &Path| {
        std::fs::write(dir.path().join("routes.toml"), routes(ca_file))
            .unwrap_or_else(|error| panic!("{error}"));
        let output = switchboard(dir.path(), &["validate"], &[]);
        (output.status.success(), format!("{}{}", stdout(&output), stderr(&output)))
    };
    let (ok, text) = validate(&pki.ca);
    assert!(ok, "{text}");
    for (path, says) in [(&not_pem, "holds no PEM certificate"), (&missing, "cannot be read")] {
        let (ok, text) = validate(path);
        assert!(!ok, "{text}");
        assert!(text.contains("ca_file") && text.contains(says), "{text}");
        assert!(text.contains(&*path.to_string_lossy()), "{text}");
    }
}

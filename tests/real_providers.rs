//! The service with the real provider kinds, each pointed at a local server that speaks its
//! protocol: messages go out through Twilio, SendGrid fails over to SMTP, and no credential
//! (set to a marker value) shows up in logs, admin views, API answers or attempt records.

mod common;

use common::fake_http::{FakeHttp, Reply};
use common::smtp_sink::{SinkBehaviour, SmtpSink};
use common::{client, send_native, wait_final, Server};
use serde_json::json;

const MARKERS: [(&str, &str); 4] = [
    ("TWILIO_AUTH_TOKEN", "MARKER-twilio-6f1c2b"),
    ("SENDGRID_API_KEY", "MARKER-sendgrid-9a7d3e"),
    ("SMTP_PASSWORD", "MARKER-smtp-4b8e0f"),
    ("GATEWAY_SECRET", "MARKER-gateway-2c5a71"),
];

fn config(twilio: &FakeHttp, sendgrid: &FakeHttp, gateway: &FakeHttp, smtp: &SmtpSink) -> String {
    config_of(
        &twilio.base,
        &sendgrid.base,
        smtp.port,
        &format!("{}/send", gateway.base),
        &["mms", "push"],
        "",
    )
}

/// Every real kind, the gateway (webhook) at `gateway_url` carrying `gateway_channels` (each
/// routed to it, `push_settings` added to the push route).
fn config_of(
    twilio: &str,
    sendgrid: &str,
    smtp_port: u16,
    gateway_url: &str,
    gateway_channels: &[&str],
    push_settings: &str,
) -> String {
    let channels = gateway_channels.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", ");
    let gateway_routes: String = gateway_channels
        .iter()
        .map(|c| {
            let extra = if *c == "push" { push_settings } else { "" };
            format!("\n[routes.{c}]\nproviders = [\"gateway\"]\n{extra}")
        })
        .collect();
    format!(
        r#"
[providers.twilio-main]
kind = "twilio"
account_sid = "AC0123456789abcdef0123456789abcdef"
auth_token = "${{TWILIO_AUTH_TOKEN}}"
base_url = "{twilio}"

[providers.sms-backup]
kind = "mock"

[providers.sendgrid-main]
kind = "sendgrid"
api_key = "${{SENDGRID_API_KEY}}"
base_url = "{sendgrid}"

[providers.smtp-backup]
kind = "smtp"
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
username = "mailer"
password = "${{SMTP_PASSWORD}}"

[providers.gateway]
kind = "webhook"
url = "{gateway_url}"
secret = "${{GATEWAY_SECRET}}"
channels = [{channels}]

[routes.sms]
providers = ["twilio-main", "sms-backup"]

[routes.email]
providers = ["sendgrid-main", "smtp-backup"]
{gateway_routes}"#
    )
}

fn assert_no_marker(what: &str, text: &str) {
    for (_, marker) in MARKERS {
        assert!(!text.contains(marker), "{what} shows the secret {marker}:\n{text}");
    }
}

#[test]
fn messages_go_through_real_kinds_and_no_secret_leaks() {
    let twilio = FakeHttp::start(Reply::json(201, json!({"sid": "SM-e2e-1", "status": "queued"})));
    // SendGrid refuses the key, echoing it back; the email fails over to SMTP.
    let sendgrid = FakeHttp::start(Reply::json(
        401,
        json!({"errors": [{"message": "authorization grant MARKER-sendgrid-9a7d3e is invalid"}]}),
    ));
    let gateway = FakeHttp::start(Reply::json(200, json!({"id": "gw-1"})));
    let smtp = SmtpSink::start(SinkBehaviour {
        credentials: Some(("mailer".into(), "MARKER-smtp-4b8e0f".into())),
        ..SinkBehaviour::default()
    });
    let mut env: Vec<(&str, &str)> = MARKERS.to_vec();
    env.push(("RUST_LOG", "debug"));
    let mut server = Server::start(&config(&twilio, &sendgrid, &gateway, &smtp), &[], &env);
    let mut answers = String::new();

    let sms = json!({"channel": "sms", "from": "+12016661234", "to": "+18045551234", "body": "code 1234"});
    let Some(id) = send_native(&server, &sms) else { panic!("sms not accepted:\n{}", server.logs()) };
    let view = wait_final(&server, &id);
    assert_eq!(
        (view["status"].as_str(), view["provider"].as_str()),
        (Some("sent"), Some("twilio-main")),
        "{view}"
    );
    assert_eq!(view["provider_message_id"], "SM-e2e-1");
    assert_eq!(twilio.last().form_values("Body"), ["code 1234"]);
    answers.push_str(&view.to_string());

    let email = json!({"channel": "email", "from": "app@example.com", "to": "user@example.org", "subject": "Hi", "body": "<p>Hello</p>"});
    let Some(id) = send_native(&server, &email) else { panic!("email not accepted:\n{}", server.logs()) };
    let view = wait_final(&server, &id);
    assert_eq!(
        (view["status"].as_str(), view["provider"].as_str()),
        (Some("sent"), Some("smtp-backup")),
        "{view}"
    );
    assert_eq!(view["attempts"][0]["provider"], "sendgrid-main", "{view}");
    assert_eq!(view["attempts"][0]["error_class"], "misconfigured", "{view}");
    assert_eq!(sendgrid.last().header("authorization"), Some("Bearer MARKER-sendgrid-9a7d3e"));
    let delivered = smtp.received();
    assert_eq!(delivered.len(), 1);
    assert!(delivered[0].data.contains(&format!("Message-ID: <{id}@example.com>")), "{}", delivered[0].data);
    answers.push_str(&view.to_string());

    let mms = json!({"channel": "mms", "from": "+12016661234", "to": "+18045551234", "body": "pic", "attachments": ["https://x.org/a.png"]});
    let Some(id) = send_native(&server, &mms) else { panic!("mms not accepted:\n{}", server.logs()) };
    let view = wait_final(&server, &id);
    assert_eq!(view["provider_message_id"], "gw-1", "{view}");
    answers.push_str(&view.to_string());

    // A channel no kind names, carried by the webhook because the config routes it.
    let push = json!({"channel": "push", "from": "app", "to": "device-token-1", "body": "ping"});
    let Some(id) = send_native(&server, &push) else { panic!("push not accepted:\n{}", server.logs()) };
    let view = wait_final(&server, &id);
    assert_eq!(view["status"], "sent", "{view}");
    assert_eq!(gateway.last().json()["channel"], "push");

    // Every other answer a client or operator can get.
    let get = |path: &str| client().get(server.url(path)).send().and_then(|r| r.text()).unwrap_or_default();
    let admin = get("/admin/routes");
    assert!(admin.contains("<redacted>"), "{admin}");
    answers.push_str(&admin);
    answers.push_str(&get("/metrics"));
    answers.push_str(&get("/readyz"));
    answers.push_str(&get("/v1/messages/nope"));
    for body in ["{", r#"{"channel":"sms"}"#, r#"{"channel":"fax","from":"a","to":"b","body":"c"}"#] {
        let response = client()
            .post(server.url("/v1/messages"))
            .body(body)
            .header("content-type", "application/json")
            .send();
        answers.push_str(&response.and_then(|r| r.text()).unwrap_or_default());
    }
    let reload = client().post(server.url("/admin/reload")).send().and_then(|r| r.text()).unwrap_or_default();
    answers.push_str(&reload);
    assert_no_marker("an API answer", &answers);

    assert_eq!(server.terminate(), Some(0));
    let logs = server.whole_log();
    assert!(logs.contains("sendgrid-main"), "debug logs should mention the failed attempt:\n{logs}");
    assert_no_marker("the log", &logs);
}

#[test]
fn validate_refuses_a_literal_credential_without_echoing_it() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = "[providers.t]\nkind = \"twilio\"\naccount_sid = \"AC1\"\nauth_token = \"MARKER-literal-77\"\n\n[routes.sms]\nproviders = [\"t\"]\n";
    std::fs::write(dir.path().join("routes.toml"), config).unwrap_or_else(|e| panic!("{e}"));
    let output = common::switchboard(dir.path(), &["validate"], &[]);
    assert_eq!(output.status.code(), Some(1));
    let text = format!("{}{}", common::stdout(&output), common::stderr(&output));
    assert!(text.contains("literal-secret"), "{text}");
    // The diagnostic quotes the file's line, which the operator wrote; the message itself and
    // the JSON report's message do not repeat the value.
    let json_out = common::switchboard(dir.path(), &["validate", "--format", "json"], &[]);
    let report = common::json(&json_out);
    assert!(!report["diagnostics"][0]["message"].as_str().unwrap_or("MARKER").contains("MARKER"), "{report}");
}

/// A base64 text in its other spellings: without padding, URL-safe (with and without).
fn base64_forms(standard: &str) -> Vec<String> {
    let url_safe = standard.replace('+', "-").replace('/', "_");
    vec![
        standard.to_owned(),
        standard.trim_end_matches('=').to_owned(),
        url_safe.trim_end_matches('=').to_owned(),
        url_safe,
    ]
}

/// Every database file of a server's SQLite store, as (lossy) text.
fn database_text(server: &Server) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(server.dir()).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with("switchboard.db") {
            text.push_str(&String::from_utf8_lossy(&std::fs::read(entry.path()).unwrap_or_default()));
        }
    }
    assert!(!text.is_empty(), "no database file in {:?}", server.dir());
    text
}

const TO_NUMBER: &str = "+18005550400";
const TO_EMAIL: &str = "User.Name@example.org";
const GATEWAY_TOKEN: &str = "MARKER-gwtoken-5e9d13";

/// Gateways that echo the request — credentials, URL, recipient — in their error bodies (JSON,
/// plain text, an HTML page, an SMTP reply): no credential in any encoding and no full
/// recipient reaches an API answer, a log line or the database; error texts are short and
/// HTML-free.
#[test]
fn provider_echoes_leak_no_credential_and_no_recipient() {
    // Twilio: first a 400 whose JSON message quotes the number and the whole request, then a
    // 501 HTML page with the request in it (the message fails over to the mock).
    let twilio = FakeHttp::start(Reply::new(500, ""));
    twilio.script([
        Reply::echo(400, |request| {
            json!({
                "code": 21211,
                "message": format!("The 'To' number {TO_NUMBER} is not a valid phone number. Request: {}", request.as_text()),
            })
            .to_string()
        })
        .header("content-type", "application/json"),
        Reply::echo(501, |request| {
            format!(
                "<!DOCTYPE html><html><head><style>pre {{ color: red }}</style><script>var leak = 1;</script></head>\
                 <body><h1>501 Not&nbsp;Implemented</h1><pre>{}</pre>{}</body></html>",
                request.as_text().replace('&', "&amp;").replace('<', "&lt;"),
                "<p>padding</p>".repeat(200),
            )
        })
        .header("content-type", "text/html"),
    ]);
    // SendGrid: a 500 quoting the Authorization header and the recipient (upper-cased).
    let sendgrid = FakeHttp::start(Reply::echo(500, |request| {
        let auth = request.header("authorization").unwrap_or_default().to_owned();
        json!({"errors": [{"message": format!("{auth} cannot send to {}", TO_EMAIL.to_uppercase())}]})
            .to_string()
    }));
    // The SMTP relay refuses the recipient, quoting the AUTH PLAIN payload.
    let plain = common::base64(b"\0mailer\0MARKER-smtp-4b8e0f");
    let smtp = SmtpSink::start(SinkBehaviour {
        credentials: Some(("mailer".into(), "MARKER-smtp-4b8e0f".into())),
        rcpt_reply: Some(format!("550 5.1.1 <{TO_EMAIL}> unknown (authenticated as {plain})")),
        ..SinkBehaviour::default()
    });
    // The gateway's URL holds its token; it answers with the URL as text, JSON and encoded.
    let gateway = FakeHttp::start(Reply::echo(502, |request| {
        let url = format!("http://gateway.invalid{}", request.uri);
        let encoded: String = url
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() { char::from(b).to_string() } else { format!("%{b:02X}") })
            .collect();
        format!(
            "Cannot POST {}; {}; next={encoded}; got: {}",
            request.uri,
            json!({"url": url}),
            request.as_text()
        )
    }));
    let gateway_url = format!("{}/send?token={GATEWAY_TOKEN}&v=2", gateway.base);
    let config =
        config_of(&twilio.base, &sendgrid.base, smtp.port, "${GATEWAY_URL}", &["push"], "max_attempts = 1\n");
    let mut env: Vec<(&str, &str)> = MARKERS.to_vec();
    env.push(("GATEWAY_URL", &gateway_url));
    env.push(("RUST_LOG", "debug"));
    let mut server = Server::start(&config, &[], &env);

    let send = |message: serde_json::Value| -> serde_json::Value {
        let Some(id) = send_native(&server, &message) else {
            panic!("not accepted: {message}\n{}", server.logs())
        };
        wait_final(&server, &id)
    };
    let rejected = send(json!({"channel": "sms", "from": "+12016661234", "to": TO_NUMBER, "body": "code 1"}));
    assert_eq!(
        (rejected["status"].as_str(), rejected["attempts"][0]["error_code"].as_str()),
        (Some("failed"), Some("21211")),
        "{rejected}"
    );
    let html = send(json!({"channel": "sms", "from": "+12016661234", "to": TO_NUMBER, "body": "code 2"}));
    assert_eq!(html["status"], "sent", "{html}");
    let email = send(
        json!({"channel": "email", "from": "app@example.com", "to": TO_EMAIL, "subject": "Hi", "body": "Hi"}),
    );
    assert_eq!(email["status"], "failed", "{email}");
    let push = send(json!({"channel": "push", "from": "app", "to": "device-token-1", "body": "ping"}));
    assert_eq!(push["status"], "failed", "{push}");
    assert_eq!(gateway.last().uri, format!("/send?token={GATEWAY_TOKEN}&v=2"));

    // What must show up nowhere.
    let basic = twilio.requests()[0]
        .header("authorization")
        .unwrap_or_default()
        .trim_start_matches("Basic ")
        .to_owned();
    assert_eq!(basic, common::base64(b"AC0123456789abcdef0123456789abcdef:MARKER-twilio-6f1c2b"));
    let mut secrets: Vec<String> = MARKERS.iter().map(|(_, marker)| (*marker).to_owned()).collect();
    secrets.push(GATEWAY_TOKEN.to_owned());
    secrets.extend(base64_forms(&basic));
    secrets.extend(base64_forms(&plain));
    for (_, marker) in MARKERS {
        secrets.extend(base64_forms(&common::base64(marker.as_bytes())));
    }
    secrets.push(gateway_url.replace(':', "%3A").replace('/', "%2F"));
    let recipients = [TO_NUMBER.to_owned(), TO_NUMBER[1..].to_owned(), TO_EMAIL.to_lowercase()];
    let assert_clean = |what: &str, text: &str, recipients: &[String]| {
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "{what} shows {secret}:\n{text}");
        }
        for recipient in recipients {
            assert!(!text.to_lowercase().contains(recipient.as_str()), "{what} shows {recipient}:\n{text}");
        }
    };

    let mut errors = Vec::new();
    for view in [&rejected, &html, &email, &push] {
        // The whole view: no credential. Its own `to` may be shown to its owner; the provider
        // texts in it: no recipient either.
        assert_clean("a message view", &view.to_string(), &[]);
        let attempts = view["attempts"].as_array().cloned().unwrap_or_default();
        let texts: Vec<String> = attempts
            .iter()
            .map(|a| a["error_message"].as_str().unwrap_or_default().to_owned())
            .chain([view["error"].to_string(), view["failure"].to_string()])
            .collect();
        for text in texts {
            assert_clean("a provider error text", &text, &recipients);
            assert!(text.len() <= 640, "{} bytes: {text}", text.len());
            assert!(
                !text.contains("<script") && !text.contains("<pre") && !text.contains("var leak"),
                "{text}"
            );
            errors.push(text);
        }
    }
    let errors = errors.join("\n");
    // Masked, not dropped: the operator still sees which number the provider refused.
    assert!(errors.contains("The 'To' number +1800****400 is not a valid phone number"), "{errors}");
    assert!(errors.contains("501 Not Implemented"), "{errors}");
    assert!(errors.contains("Cannot POST <redacted>"), "{errors}");

    assert_eq!(server.terminate(), Some(0));
    let logs = server.whole_log();
    assert!(!logs.contains("panicked"), "{logs}");
    assert_clean("the log", &logs, &recipients);
    // The database holds each message's own recipient; provider texts quoting it must not.
    let database = database_text(&server);
    assert_clean("the database", &database, &[]);
    for quoted in [
        format!("number {TO_NUMBER}"),
        format!("To=%2B{}", &TO_NUMBER[1..]),
        TO_EMAIL.to_uppercase(),
        format!("<{TO_EMAIL}>"),
    ] {
        assert!(!database.contains(&quoted), "the database quotes {quoted}");
    }
    assert!(!database.contains("var leak"), "the database holds the HTML page");
}

/// A 429 whose Retry-After is beyond any clock (u64::MAX seconds, 10^17 seconds) neither
/// panics the dispatch task nor parks the message: the pause is cut to `max_retry_after_ms`
/// and the message is sent; without a small cap, the message fails over at once.
#[test]
fn a_retry_after_beyond_any_clock_is_capped() {
    let limited = |after: &str| {
        Reply::json(429, json!({"code": 20429, "message": "Too Many Requests"})).header("Retry-After", after)
    };
    let capped = FakeHttp::start(Reply::json(201, json!({"sid": "SM-after-429"})));
    capped.script([limited("18446744073709551615"), limited("100000000000000000")]);
    let unbounded = FakeHttp::start(limited("18446744073709551615"));
    let config = format!(
        r#"
[providers.twilio-capped]
kind = "twilio"
account_sid = "AC0123456789abcdef0123456789abcdef"
auth_token = "${{TWILIO_AUTH_TOKEN}}"
base_url = "{capped}"
max_retry_after_ms = 20

[providers.twilio-default-cap]
kind = "twilio"
account_sid = "AC0123456789abcdef0123456789abcdef"
auth_token = "${{TWILIO_AUTH_TOKEN}}"
base_url = "{unbounded}"

[providers.mms-backup]
kind = "mock"

[routes.sms]
providers = ["twilio-capped"]

[routes.mms]
providers = ["twilio-default-cap", "mms-backup"]
"#,
        capped = capped.base,
        unbounded = unbounded.base,
    );
    let mut server = Server::start(&config, &[], &MARKERS);
    let sms = json!({"channel": "sms", "from": "+12016661234", "to": "+18045551234", "body": "hi"});
    let Some(id) = send_native(&server, &sms) else { panic!("sms not accepted:\n{}", server.logs()) };
    let view = wait_final(&server, &id);
    assert_eq!(view["status"], "sent", "{view}\n{}", server.logs());
    let outcomes: Vec<&str> =
        view["attempts"].as_array().into_iter().flatten().filter_map(|a| a["outcome"].as_str()).collect();
    assert_eq!(outcomes.len(), 3, "{view}");
    assert_eq!(outcomes[2], "success", "{view}");

    let mms = json!({"channel": "mms", "from": "+12016661234", "to": "+18045551234", "body": "hi", "attachments": ["https://x.org/a.png"]});
    let Some(id) = send_native(&server, &mms) else { panic!("mms not accepted:\n{}", server.logs()) };
    let view = wait_final(&server, &id);
    assert_eq!(
        (view["status"].as_str(), view["provider"].as_str()),
        (Some("sent"), Some("mms-backup")),
        "{view}"
    );
    let logs = server.whole_log();
    assert!(!logs.contains("panicked"), "{logs}");
}

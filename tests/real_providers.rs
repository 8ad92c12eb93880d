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
port = {port}
tls = "none"
username = "mailer"
password = "${{SMTP_PASSWORD}}"

[providers.gateway]
kind = "webhook"
url = "{gateway}/send"
secret = "${{GATEWAY_SECRET}}"
channels = ["mms", "push"]

[routes.sms]
providers = ["twilio-main", "sms-backup"]

[routes.mms]
providers = ["gateway"]

[routes.email]
providers = ["sendgrid-main", "smtp-backup"]

[routes.push]
providers = ["gateway"]
"#,
        twilio = twilio.base,
        sendgrid = sendgrid.base,
        gateway = gateway.base,
        port = smtp.port,
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
    let logs = server.logs();
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

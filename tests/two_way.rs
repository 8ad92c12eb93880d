//! Two-way messaging through the real binary: the messaging-service client flow (sends, inbound
//! webhooks, conversations), redelivery, Twilio's and SendGrid's own inbound formats with their
//! signatures, opt-outs (STOP/START, while queued, operators' removal) and who may read which
//! conversation — each on SQLite and on PostgreSQL (the memory store runs the client flow).

mod common;
#[path = "common/e2e.rs"]
mod e2e;
#[path = "common/stores.rs"]
mod stores;

use std::time::{Duration, Instant};

use common::{base64, client, message_view, Server};
use e2e::{form, twilio_signature, Backend};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const CONFIG: &str = r#"
[providers.p]
kind = "mock"

[routes.sms]
providers = ["p"]

[routes.mms]
providers = ["p"]

[routes.email]
providers = ["p"]
"#;

/// The auth token of the Twilio provider `tw` (from the environment, as the kind requires).
const TWILIO_TOKEN: &str = "twilio-token-for-tests-4f1c";
/// What `tw` was told to call: the signed URLs start with it.
const PUBLIC_URL: &str = "https://sb.example.com";
const SENDGRID_SECRET: &str = "sendgrid-inbound-secret-9d2e";

fn with_providers(base: &str) -> String {
    format!(
        r#"{base}
[providers.tw]
kind = "twilio"
channels = ["sms", "mms"]
account_sid = "AC0123456789abcdef"
auth_token = "${{TW_TOKEN}}"
public_url = "{PUBLIC_URL}"
base_url = "http://127.0.0.1:9"

[providers.sg]
kind = "sendgrid"
api_key = "${{SG_KEY}}"
inbound_secret = "${{SG_INBOUND}}"
base_url = "http://127.0.0.1:9"
"#
    )
}

const PROVIDER_ENV: [(&str, &str); 3] =
    [("TW_TOKEN", TWILIO_TOKEN), ("SG_KEY", "SG.unused"), ("SG_INBOUND", SENDGRID_SECRET)];

fn post(server: &Server, path: &str, body: &Value, key: Option<&str>) -> (u16, Value) {
    let mut request = client().post(server.url(path)).json(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = response.status().as_u16();
    (status, response.json().unwrap_or_default())
}

fn get(server: &Server, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut request = client().get(server.url(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.status().as_u16();
    (status, response.json().unwrap_or_default())
}

// The messaging-service contract's own example calls.
fn send_sms() -> Value {
    json!({"from": "+12016661234", "to": "+18045551234", "type": "sms", "body": "text message", "attachments": null, "timestamp": "2024-11-01T14:00:00Z"})
}
fn send_mms() -> Value {
    json!({"from": "+12016661234", "to": "+18045551234", "type": "mms", "body": "text message", "attachments": ["https://example.com/image.jpg"], "timestamp": "2024-11-01T14:00:00Z"})
}
fn send_email() -> Value {
    json!({"from": "user@usehatchapp.com", "to": "contact@gmail.com", "body": "text message with or without html", "attachments": ["https://example.com/document.pdf"], "timestamp": "2024-11-01T14:00:00Z"})
}
fn inbound_sms() -> Value {
    json!({"from": "+18045551234", "to": "+12016661234", "type": "sms", "messaging_provider_id": "message-1", "body": "text message", "attachments": null, "timestamp": "2024-11-01T14:00:00Z"})
}
fn inbound_mms() -> Value {
    json!({"from": "+18045551234", "to": "+12016661234", "type": "mms", "messaging_provider_id": "message-2", "body": "text message", "attachments": ["https://example.com/received-image.jpg"], "timestamp": "2024-11-01T14:00:00Z"})
}
fn inbound_email() -> Value {
    json!({"from": "contact@gmail.com", "to": "user@usehatchapp.com", "xillio_id": "message-3", "body": "<html><body>html is <b>allowed</b> in inbound emails</body></html>", "attachments": ["https://example.com/received-document.pdf"], "timestamp": "2024-11-01T14:00:00Z"})
}

/// The contract's eight calls on a fresh server: every call 2xx, conversation 1 holds the four
/// phone messages in order, the email conversation two; the inbound calls again store nothing.
fn client_flow(backend: &Backend) {
    let server = backend.start(CONFIG, &[]);
    for (path, body) in [
        ("/api/messages/sms", send_sms()),
        ("/api/messages/sms", send_mms()),
        ("/api/messages/email", send_email()),
    ] {
        let (status, answer) = post(&server, path, &body, None);
        assert_eq!(status, 202, "{path}: {answer}");
    }
    let mut inbound_ids = Vec::new();
    for (path, body, channel) in [
        ("/api/webhooks/sms", inbound_sms(), "sms"),
        ("/api/webhooks/sms", inbound_mms(), "mms"),
        ("/api/webhooks/email", inbound_email(), "email"),
    ] {
        let (status, answer) = post(&server, path, &body, None);
        assert_eq!(status, 200, "{path}: {answer}");
        assert_eq!(
            (answer["status"].as_str(), answer["channel"].as_str()),
            (Some("received"), Some(channel))
        );
        assert!(answer["conversation_id"].as_i64().is_some_and(|id| id > 0), "{answer}");
        inbound_ids.push(answer);
    }
    assert_eq!(inbound_ids[0]["conversation_id"], 1, "the SMS pair's conversation is the first");
    assert_eq!(inbound_ids[1]["conversation_id"], 1, "SMS and MMS share one");
    assert_eq!(inbound_ids[2]["conversation_id"], 2, "email has its own");

    let (status, list) = get(&server, "/api/conversations", None);
    assert_eq!(status, 200, "{list}");
    let conversations = list["conversations"].as_array().cloned().unwrap_or_default();
    assert_eq!(conversations.len(), 2, "{list}");
    // Newest activity first: the inbound email came last.
    assert_eq!(conversations[0]["id"], 2, "{list}");
    assert_eq!(conversations[0]["channel"], "email");
    assert_eq!(conversations[0]["participants"], json!(["contact@gmail.com", "user@usehatchapp.com"]));
    assert_eq!(conversations[0]["message_count"], 2);
    assert_eq!(conversations[0]["last_message"]["direction"], "inbound");
    assert_eq!(conversations[0]["last_message"]["id"], inbound_ids[2]["id"]);
    assert_eq!(conversations[1]["id"], 1);
    assert_eq!(conversations[1]["channel"], "sms");
    assert_eq!(conversations[1]["participants"], json!(["+12016661234", "+18045551234"]));
    assert_eq!(conversations[1]["message_count"], 4);
    assert!(list["next_cursor"].is_null(), "{list}");

    let (status, thread) = get(&server, "/api/conversations/1/messages", None);
    assert_eq!(status, 200, "{thread}");
    assert_eq!(thread["conversation_id"], 1);
    let messages = thread["messages"].as_array().cloned().unwrap_or_default();
    let shape: Vec<(&str, &str, &str)> = messages
        .iter()
        .map(|m| {
            (
                m["direction"].as_str().unwrap_or("?"),
                m["channel"].as_str().unwrap_or("?"),
                m["from"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("outbound", "sms", "+12016661234"),
            ("outbound", "mms", "+12016661234"),
            ("inbound", "sms", "+18045551234"),
            ("inbound", "mms", "+18045551234"),
        ],
        "{thread}"
    );
    assert_eq!(messages[2]["status"], "received");
    assert_eq!(messages[2]["body"], "text message");
    assert_eq!(messages[3]["attachments"], json!(["https://example.com/received-image.jpg"]));
    assert_eq!(messages[2]["timestamp"], "2024-11-01T14:00:00.000Z", "the provider's time");
    for m in &messages {
        for field in [
            "id",
            "direction",
            "channel",
            "from",
            "to",
            "body",
            "attachments",
            "status",
            "provider",
            "timestamp",
            "created_at",
        ] {
            assert!(m.get(field).is_some(), "`{field}` missing in {m}");
        }
    }
    let (_, email_thread) = get(&server, "/api/conversations/2/messages", None);
    assert_eq!(email_thread["messages"].as_array().map(Vec::len), Some(2), "{email_thread}");

    // Providers redeliver: the same ids again store nothing and answer the first ids.
    for (path, body, first) in [
        ("/api/webhooks/sms", inbound_sms(), &inbound_ids[0]),
        ("/api/webhooks/sms", inbound_mms(), &inbound_ids[1]),
        ("/api/webhooks/email", inbound_email(), &inbound_ids[2]),
    ] {
        let (status, answer) = post(&server, path, &body, None);
        assert_eq!(
            (status, &answer["id"], &answer["conversation_id"]),
            (200, &first["id"], &first["conversation_id"])
        );
    }
    let (_, list) = get(&server, "/api/conversations", None);
    let counts: Vec<&Value> =
        list["conversations"].as_array().into_iter().flatten().map(|c| &c["message_count"]).collect();
    assert_eq!(counts, [&json!(2), &json!(4)], "{list}");
    assert_eq!(get(&server, "/api/conversations/3/messages", None).0, 404);
    assert_eq!(get(&server, "/api/conversations/abc/messages", None).0, 404);
    for odd in ["+1", "01", "0", "-1", "99999999999999999999"] {
        assert_eq!(get(&server, &format!("/api/conversations/{odd}/messages"), None).0, 404, "{odd}");
    }
    // An inbound message reads like any other.
    let view = message_view(&server, inbound_ids[0]["id"].as_str().unwrap_or_default());
    assert_eq!(
        (view["status"].as_str(), view["direction"].as_str()),
        (Some("received"), Some("inbound")),
        "{view}"
    );
}

#[test]
fn client_flow_on_memory() {
    client_flow(&Backend::Memory);
}

#[test]
fn client_flow_on_sqlite() {
    client_flow(&Backend::sqlite());
}

#[test]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
fn client_flow_on_postgres() {
    client_flow(&Backend::postgres("flow"));
}

fn post_twilio(
    server: &Server,
    provider: &str,
    params: &[(&str, &str)],
    signature: Option<&str>,
) -> (u16, String, String) {
    let path = format!("/v1/inbound/twilio/{provider}");
    let mut request = client()
        .post(server.url(&path))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(params));
    if let Some(signature) = signature {
        request = request.header("x-twilio-signature", signature);
    }
    let response = request.send().unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = response.status().as_u16();
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    (status, content_type, response.text().unwrap_or_default())
}

fn conversation_count(server: &Server) -> usize {
    get(server, "/api/conversations", None).1["conversations"].as_array().map_or(0, Vec::len)
}

/// A right signature → 200 with empty TwiML and the message stored; one changed parameter, a
/// missing signature, a provider of another kind or none → refused, nothing stored.
fn twilio_inbound(backend: &Backend) {
    let server = backend.start(&with_providers(CONFIG), &PROVIDER_ENV);
    let params = [
        ("MessageSid", "SM0123456789abcdef0123456789abcdef"),
        ("AccountSid", "AC0123456789abcdef"),
        ("From", "+18045550101"),
        ("To", "+12016661234"),
        ("Body", "Hello from Twilio"),
        ("NumMedia", "0"),
    ];
    let url = format!("{PUBLIC_URL}/v1/inbound/twilio/tw");
    let signature = twilio_signature(TWILIO_TOKEN, &url, &params);
    let mut tampered = params;
    tampered[4] = ("Body", "Hello from someone else");
    let (status, _, body) = post_twilio(&server, "tw", &tampered, Some(&signature));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("invalid_signature"), "{body}");
    let (status, _, body) = post_twilio(&server, "tw", &params, None);
    assert_eq!((status, body.contains("invalid_signature")), (403, true), "{body}");
    assert_eq!(conversation_count(&server), 0, "nothing stored for a refused request");

    let (status, content_type, body) = post_twilio(&server, "tw", &params, Some(&signature));
    assert_eq!(status, 200, "{body}");
    assert!(content_type.starts_with("text/xml"), "{content_type}");
    assert!(body.contains("<Response></Response>") || body.contains("<Response/>"), "{body}");
    let (_, list) = get(&server, "/api/conversations", None);
    assert_eq!(list["conversations"][0]["participants"], json!(["+12016661234", "+18045550101"]), "{list}");
    let (_, thread) = get(&server, "/api/conversations/1/messages", None);
    let message = &thread["messages"][0];
    assert_eq!(
        (message["provider"].as_str(), message["body"].as_str()),
        (Some("tw"), Some("Hello from Twilio"))
    );
    // Twilio retries: the same MessageSid again is the same message.
    assert_eq!(post_twilio(&server, "tw", &params, Some(&signature)).0, 200);
    assert_eq!(get(&server, "/api/conversations", None).1["conversations"][0]["message_count"], 1);

    // A picture message: NumMedia and MediaUrl0 make it an MMS in the same conversation.
    let mms = [
        ("MessageSid", "MM0123456789abcdef0123456789abcdef"),
        ("From", "+18045550101"),
        ("To", "+12016661234"),
        ("Body", ""),
        ("NumMedia", "1"),
        ("MediaUrl0", "https://api.twilio.com/2010-04-01/Accounts/AC0/Messages/MM0/Media/ME0"),
    ];
    let (status, _, body) =
        post_twilio(&server, "tw", &mms, Some(&twilio_signature(TWILIO_TOKEN, &url, &mms)));
    assert_eq!(status, 200, "{body}");
    let (_, thread) = get(&server, "/api/conversations/1/messages", None);
    assert_eq!(thread["messages"][1]["channel"], "mms", "{thread}");

    // Only a configured provider of that kind has an inbound URL.
    assert_eq!(post_twilio(&server, "nobody", &params, Some(&signature)).0, 404);
    let (status, _, _) = {
        let response = client()
            .post(server.url("/v1/inbound/sendgrid/tw"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&params))
            .send()
            .unwrap_or_else(|e| panic!("{e}"));
        (response.status().as_u16(), String::new(), String::new())
    };
    assert_eq!(status, 404, "tw is not a sendgrid provider");
    assert_eq!(
        post_twilio(&server, "p", &params, Some(&signature)).0,
        404,
        "a mock provider takes nothing in"
    );
}

#[test]
fn twilio_inbound_on_sqlite() {
    twilio_inbound(&Backend::sqlite());
}

#[test]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
fn twilio_inbound_on_postgres() {
    twilio_inbound(&Backend::postgres("twilio"));
}

/// A provider added by a reload gets its inbound URL at once.
#[test]
fn a_reload_added_provider_takes_inbound_messages() {
    let backend = Backend::sqlite();
    let server = backend.start(CONFIG, &PROVIDER_ENV);
    let params = [
        ("MessageSid", "SMreload0000000000000000000000000"),
        ("From", "+18045550102"),
        ("To", "+12016661234"),
        ("Body", "hi"),
    ];
    let signature = twilio_signature(TWILIO_TOKEN, &format!("{PUBLIC_URL}/v1/inbound/twilio/tw"), &params);
    assert_eq!(post_twilio(&server, "tw", &params, Some(&signature)).0, 404, "not configured yet");
    std::fs::write(server.dir().join("routes.toml"), with_providers(CONFIG))
        .unwrap_or_else(|e| panic!("{e}"));
    let (status, admin) = post(&server, "/admin/reload", &json!({}), None);
    assert_eq!(status, 200, "{admin}");
    let (status, _, body) = post_twilio(&server, "tw", &params, Some(&signature));
    assert_eq!(status, 200, "{body}");
    assert_eq!(conversation_count(&server), 1);
}

fn multipart(boundary: &str, fields: &[(&str, &str)]) -> String {
    let mut body = String::new();
    for (name, value) in fields {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        ));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    body
}

fn post_sendgrid(server: &Server, password: Option<&str>) -> (u16, String) {
    let boundary = "xYzZY";
    let fields = [
        ("headers", "Message-ID: <abc123@mail.gmail.com>\r\nSubject: Hello"),
        ("from", "Contact Person <Contact@Gmail.com>"),
        ("to", "user@usehatchapp.com"),
        ("subject", "Hello"),
        ("text", "Plain text reply"),
        ("html", "<p>Plain text reply</p>"),
        ("envelope", r#"{"to":["user@usehatchapp.com"],"from":"contact@gmail.com"}"#),
    ];
    let mut request = client()
        .post(server.url("/v1/inbound/sendgrid/sg"))
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(multipart(boundary, &fields));
    if let Some(password) = password {
        request = request
            .header("authorization", format!("Basic {}", base64(format!("sendgrid:{password}").as_bytes())));
    }
    let response = request.send().unwrap_or_else(|e| panic!("{e}"));
    (response.status().as_u16(), response.text().unwrap_or_default())
}

/// SendGrid signs nothing: the basic-auth password must be the provider's `inbound_secret`.
fn sendgrid_inbound(backend: &Backend) {
    let server = backend.start(&with_providers(CONFIG), &PROVIDER_ENV);
    for password in [None, Some("wrong-secret")] {
        let (status, body) = post_sendgrid(&server, password);
        assert_eq!((status, body.contains("invalid_signature")), (403, true), "{password:?}: {body}");
    }
    assert_eq!(conversation_count(&server), 0);
    let (status, body) = post_sendgrid(&server, Some(SENDGRID_SECRET));
    assert_eq!(status, 200, "{body}");
    assert_eq!(post_sendgrid(&server, Some(SENDGRID_SECRET)).0, 200, "a redelivery");
    let (_, list) = get(&server, "/api/conversations", None);
    let conversation = &list["conversations"][0];
    assert_eq!(conversation["channel"], "email", "{list}");
    assert_eq!(conversation["participants"], json!(["contact@gmail.com", "user@usehatchapp.com"]));
    assert_eq!(conversation["message_count"], 1, "the redelivery stored nothing: {list}");
    assert!(!server.logs().contains(SENDGRID_SECRET), "the secret never shows in logs");
}

#[test]
fn sendgrid_inbound_on_sqlite() {
    sendgrid_inbound(&Backend::sqlite());
}

#[test]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
fn sendgrid_inbound_on_postgres() {
    sendgrid_inbound(&Backend::postgres("sendgrid"));
}

fn inbound_keyword(from: &str, to: &str, id: &str, body: &str) -> Value {
    json!({"from": from, "to": to, "type": "sms", "messaging_provider_id": id, "body": body, "timestamp": "2024-11-01T14:00:00Z"})
}

fn metric(server: &Server, line_start: &str) -> Option<u64> {
    let text = client().get(server.url("/metrics")).send().and_then(|r| r.text()).unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
}

/// STOP → the next send to that pair is refused 422 and nothing is queued; other pairs are not
/// affected; START → sends go again; an operator can lift an opt-out; it survives a restart.
fn stop_and_start(backend: &Backend) {
    let mut server = backend.start(CONFIG, &[]);
    let (ours, theirs, other) = ("+12016661234", "+18045551234", "+18045559999");
    let send = |server: &Server, to: &str| {
        post(
            server,
            "/api/messages/sms",
            &json!({"from": ours, "to": to, "type": "sms", "body": "hello"}),
            None,
        )
    };
    assert_eq!(send(&server, theirs).0, 202);
    let (status, _) =
        post(&server, "/api/webhooks/sms", &inbound_keyword(theirs, ours, "in-1", "  Stop \n"), None);
    assert_eq!(status, 200);
    let (status, refusal) = send(&server, theirs);
    assert_eq!(status, 422, "{refusal}");
    assert_eq!(
        (refusal["error"]["code"].as_str(), refusal["error"]["field"].as_str()),
        (Some("recipient_opted_out"), Some("to"))
    );
    assert!(!refusal.to_string().contains(theirs), "the number is not echoed: {refusal}");
    // MMS is the same family; the native endpoint is refused alike.
    let mms = json!({"from": ours, "to": theirs, "type": "mms", "body": "pic", "attachments": ["https://example.com/a.png"]});
    assert_eq!(post(&server, "/api/messages/sms", &mms, None).0, 422);
    let native = json!({"channel": "sms", "from": ours, "to": theirs, "body": "hello"});
    assert_eq!(post(&server, "/v1/messages", &native, None).0, 422);
    assert_eq!(send(&server, other).0, 202, "another recipient is not opted out");
    let from_other_number = json!({"from": "+12016660000", "to": theirs, "type": "sms", "body": "hello"});
    assert_eq!(
        post(&server, "/api/messages/sms", &from_other_number, None).0,
        202,
        "the opt-out is per sender"
    );
    assert_eq!(metric(&server, "switchboard_opt_outs_total{channel=\"sms\"}"), Some(1));

    let (status, listed) = get(&server, "/v1/opt-outs", None);
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["opt_outs"][0]["sender"], ours, "{listed}");
    assert_eq!(listed["opt_outs"][0]["recipient"], theirs, "{listed}");

    // The opt-out survives a restart (durable stores).
    if !matches!(backend, Backend::Memory) {
        server.terminate();
        server = backend.start(CONFIG, &[]);
        assert_eq!(send(&server, theirs).0, 422, "still opted out after a restart");
    }
    let (status, _) =
        post(&server, "/api/webhooks/sms", &inbound_keyword(theirs, ours, "in-2", "START"), None);
    assert_eq!(status, 200);
    assert_eq!(send(&server, theirs).0, 202, "START lifts it");
    assert_eq!(get(&server, "/v1/opt-outs", None).1["opt_outs"], json!([]));

    // An operator lifts one: 204, then 404 for one that is not there.
    post(&server, "/api/webhooks/sms", &inbound_keyword(theirs, ours, "in-3", "unsubscribe"), None);
    assert_eq!(send(&server, theirs).0, 422);
    let path = format!("/v1/opt-outs/sms/{}/{}", ours.replace('+', "%2B"), theirs.replace('+', "%2B"));
    let delete =
        |server: &Server| client().delete(server.url(&path)).send().map(|r| r.status().as_u16()).unwrap_or(0);
    let odd = format!("/v1/opt-outs/sms/{}/{}%00", ours.replace('+', "%2B"), theirs.replace('+', "%2B"));
    let odd_status = client().delete(server.url(&odd)).send().map(|r| r.status().as_u16()).unwrap_or(0);
    assert_eq!(odd_status, 404, "a NUL is not a formatting character");
    assert_eq!(delete(&server), 204);
    assert_eq!(delete(&server), 404);
    assert_eq!(send(&server, theirs).0, 202);
    // Every keyword message is still stored in its conversation.
    let (_, list) = get(&server, "/api/conversations", None);
    let pair = list["conversations"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["participants"] == json!([ours, theirs]));
    let inbound_count = pair.map(|c| c["id"].as_i64().unwrap_or(0)).map(|id| {
        get(&server, &format!("/api/conversations/{id}/messages?limit=200"), None).1["messages"]
            .as_array()
            .map_or(0, |m| m.iter().filter(|m| m["direction"] == "inbound").count())
    });
    assert_eq!(inbound_count, Some(3), "{list}");
}

#[test]
fn stop_and_start_on_memory() {
    stop_and_start(&Backend::Memory);
}

#[test]
fn stop_and_start_on_sqlite() {
    stop_and_start(&Backend::sqlite());
}

#[test]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
fn stop_and_start_on_postgres() {
    stop_and_start(&Backend::postgres("stop"));
}

/// A message in flight when the STOP arrives is not sent by anyone after: its first attempt
/// (a slow failure) is under way when the opt-out is recorded, and the failover to the next
/// provider is refused — it ends `failed` with `opted_out`.
fn opt_out_while_queued(backend: &Backend) {
    let config = r#"
[providers.down]
kind = "mock"
error_pct = 100
latency_ms = 1500

[providers.up]
kind = "mock"

[routes.sms]
providers = ["down", "up"]
strategy = "failover"
"#;
    let server = backend.start(config, &[]);
    let (ours, theirs) = ("+12016661234", "+18045550303");
    let (status, accepted) = post(
        &server,
        "/api/messages/sms",
        &json!({"from": ours, "to": theirs, "type": "sms", "body": "hello"}),
        None,
    );
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap_or_default().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    while message_view(&server, &id)["status"] != "sending" {
        assert!(Instant::now() < deadline, "the first attempt never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    let (status, _) =
        post(&server, "/api/webhooks/sms", &inbound_keyword(theirs, ours, "stop-q", "STOP"), None);
    assert_eq!(status, 200);
    let view = common::wait_final(&server, &id);
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["error"]["code"], "opted_out", "{view}");
    let providers: Vec<&str> =
        view["attempts"].as_array().into_iter().flatten().filter_map(|a| a["provider"].as_str()).collect();
    assert_eq!(providers, ["down"], "failover must not route around the opt-out: {view}");
}

#[test]
fn opt_out_while_queued_on_sqlite() {
    opt_out_while_queued(&Backend::sqlite());
}

#[test]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
fn opt_out_while_queued_on_postgres() {
    opt_out_while_queued(&Backend::postgres("queued"));
}

const APP: &str = "sb_app_key_for_two_way_tests_1";
const OTHER: &str = "sb_other_key_for_two_way_tests_2";
const OPS: &str = "sb_ops_key_for_two_way_tests_3";

fn keys_env() -> String {
    let hash = |k: &str| Sha256::digest(k.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>();
    format!("app:{},other:{},ops:{}:admin", hash(APP), hash(OTHER), hash(OPS))
}

/// With keys: webhooks and reads need a key; a conversation is visible to admin keys and to keys
/// that sent a message in it (others get 404, also after posting an inbound message into it);
/// opt-outs are admin only; providers' own inbound URLs need no key.
fn access(backend: &Backend) {
    let keys = keys_env();
    let mut env = vec![("SWITCHBOARD_API_KEYS", keys.as_str())];
    env.extend(PROVIDER_ENV);
    let server = backend.start(&with_providers(CONFIG), &env);
    assert_eq!(post(&server, "/api/webhooks/sms", &inbound_sms(), None).0, 401);
    assert_eq!(get(&server, "/api/conversations", None).0, 401);
    assert_eq!(post(&server, "/api/messages/sms", &send_sms(), Some(APP)).0, 202);
    assert_eq!(post(&server, "/api/messages/email", &send_email(), Some(OTHER)).0, 202);
    let (status, answer) = post(&server, "/api/webhooks/sms", &inbound_sms(), Some(APP));
    assert_eq!((status, &answer["conversation_id"]), (200, &json!(1)), "{answer}");

    let ids = |key: &str| -> Vec<i64> {
        let (status, list) = get(&server, "/api/conversations", Some(key));
        assert_eq!(status, 200, "{list}");
        list["conversations"].as_array().into_iter().flatten().filter_map(|c| c["id"].as_i64()).collect()
    };
    assert_eq!(ids(APP), [1]);
    assert_eq!(ids(OTHER), [2]);
    assert_eq!(ids(OPS), [1, 2], "newest activity first: the inbound SMS came last");
    assert_eq!(
        get(&server, "/api/conversations/1/messages", Some(OTHER)).0,
        404,
        "another key's conversation"
    );
    // Posting an inbound message into APP's conversation does not let OTHER read it.
    let intruder = json!({"from": "+18045551234", "to": "+12016661234", "type": "sms", "messaging_provider_id": "intruder-1", "body": "let me in"});
    let (status, posted) = post(&server, "/api/webhooks/sms", &intruder, Some(OTHER));
    assert_eq!((status, &posted["conversation_id"]), (200, &json!(1)), "{posted}");
    assert_eq!(get(&server, "/api/conversations/1/messages", Some(OTHER)).0, 404, "posting grants no view");
    assert_eq!(ids(OTHER), [2]);
    assert_eq!(get(&server, "/api/conversations/1/messages", Some(APP)).0, 200);
    assert_eq!(get(&server, "/api/conversations/1/messages", Some(OPS)).0, 200);
    assert_eq!(get(&server, "/v1/opt-outs", Some(APP)).0, 403);
    assert_eq!(get(&server, "/v1/opt-outs", Some(OPS)).0, 200);
    let delete = client().delete(server.url("/v1/opt-outs/sms/%2B1/%2B2")).bearer_auth(APP).send();
    assert_eq!(delete.map(|r| r.status().as_u16()).unwrap_or(0), 403);
    // A provider's own URL: its signature, not a key.
    let params = [
        ("MessageSid", "SMaccess000000000000000000000000"),
        ("From", "+18045550104"),
        ("To", "+12016661234"),
        ("Body", "hi"),
    ];
    let signature = twilio_signature(TWILIO_TOKEN, &format!("{PUBLIC_URL}/v1/inbound/twilio/tw"), &params);
    assert_eq!(post_twilio(&server, "tw", &params, Some(&signature)).0, 200);
    assert_eq!(ids(OPS).len(), 3);
    assert_eq!(ids(APP), [1], "a provider's message belongs to no key");
}

#[test]
fn access_on_sqlite() {
    access(&Backend::sqlite());
}

#[test]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
fn access_on_postgres() {
    access(&Backend::postgres("access"));
}

/// Conversations and their messages page with `limit` and `cursor`: every item once, in order.
#[test]
fn paging_through_conversations_and_messages() {
    let backend = Backend::sqlite();
    let server = backend.start(CONFIG, &[]);
    for n in 0..5 {
        let body = json!({"from": "+12016661234", "to": format!("+1804555{n:04}"), "type": "sms", "body": format!("m{n}")});
        assert_eq!(post(&server, "/api/messages/sms", &body, None).0, 202);
    }
    for n in 0..5 {
        let id = format!("page-{n}");
        let body = inbound_keyword("+18045550000", "+12016661234", &id, &format!("reply {n}"));
        assert_eq!(post(&server, "/api/webhooks/sms", &body, None).0, 200);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/conversations?limit=2&cursor={c}"),
            None => "/api/conversations?limit=2".to_owned(),
        };
        let (status, page) = get(&server, &path, None);
        assert_eq!(status, 200, "{page}");
        seen.extend(page["conversations"].as_array().into_iter().flatten().filter_map(|c| c["id"].as_i64()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, [1, 5, 4, 3, 2], "newest activity first, each once");
    let mut bodies = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/conversations/1/messages?limit=2&cursor={c}"),
            None => "/api/conversations/1/messages?limit=2".to_owned(),
        };
        let (_, page) = get(&server, &path, None);
        bodies.extend(
            page["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["body"].as_str().map(str::to_owned)),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(bodies, ["m0", "reply 0", "reply 1", "reply 2", "reply 3", "reply 4"]);
    for (query, field) in [("limit=0", "limit"), ("limit=201", "limit"), ("cursor=nonsense", "cursor")] {
        let (status, error) = get(&server, &format!("/api/conversations?{query}"), None);
        assert_eq!((status, error["error"]["field"].as_str()), (400, Some(field)), "{query}: {error}");
    }
}

/// A bad field of a webhook is refused like a send's, naming the field, and nothing is stored.
#[test]
fn a_bad_webhook_is_refused_and_stores_nothing() {
    let server = Backend::Memory.start(CONFIG, &[]);
    for (path, body, field) in [
        (
            "/api/webhooks/sms",
            json!({"from": "nope", "to": "+12016661234", "type": "sms", "messaging_provider_id": "x", "body": "hi"}),
            "from",
        ),
        (
            "/api/webhooks/sms",
            json!({"from": "+18045551234", "to": "+12016661234", "type": "mms", "messaging_provider_id": "x", "body": "hi"}),
            "attachments",
        ),
        (
            "/api/webhooks/sms",
            json!({"from": "+18045551234", "to": "+12016661234", "type": "sms", "body": "hi"}),
            "messaging_provider_id",
        ),
        (
            "/api/webhooks/email",
            json!({"from": "a@example.com", "to": "b", "xillio_id": "x", "body": "hi"}),
            "to",
        ),
        (
            "/api/webhooks/email",
            json!({"from": "a@example.com", "to": "b@example.com", "xillio_id": "x", "body": "hi", "attachments": ["javascript:alert(1)"]}),
            "attachments",
        ),
    ] {
        let (status, error) = post(&server, path, &body, None);
        assert_eq!((status, error["error"]["field"].as_str()), (400, Some(field)), "{body}: {error}");
    }
    let response =
        client().post(server.url("/api/webhooks/sms")).body("from=x").send().map(|r| r.status().as_u16());
    assert_eq!(response.unwrap_or(0), 415);
    assert_eq!(conversation_count(&server), 0);
    // A timestamp with a UTC offset is RFC 3339 too.
    let offset = json!({"from": "+18045551234", "to": "+12016661234", "type": "sms", "messaging_provider_id": "offset-1", "body": "hi", "timestamp": "2024-11-01T15:00:00+01:00"});
    let (status, answer) = post(&server, "/api/webhooks/sms", &offset, None);
    assert_eq!(status, 200, "{answer}");
    let id = answer["conversation_id"].as_i64().unwrap_or(0);
    let (_, thread) = get(&server, &format!("/api/conversations/{id}/messages"), None);
    assert_eq!(thread["messages"][0]["timestamp"], "2024-11-01T14:00:00.000Z", "{thread}");
}

/// A provider that sends from its own number (`from` setting): a recipient who replied STOP to
/// that number is not messaged through it, whatever `from` the client gave.
#[test]
fn an_opt_out_of_the_number_a_provider_sends_from_is_honoured() {
    let config = r#"
[providers.tw]
kind = "twilio"
account_sid = "AC0123456789abcdef"
auth_token = "${TW_TOKEN}"
from = "+15005550006"
base_url = "http://127.0.0.1:9"

[routes.sms]
providers = ["tw"]
"#;
    let backend = Backend::sqlite();
    let server = backend.start(config, &PROVIDER_ENV);
    let them = "+18045550404";
    let stop = inbound_keyword(them, "+15005550006", "stop-provider-number", "STOP");
    let (status, answer) = post(&server, "/api/webhooks/sms", &stop, None);
    assert_eq!(status, 200, "{answer}\n{}", server.logs());
    let send = json!({"from": "+12016661234", "to": them, "type": "sms", "body": "hello"});
    let (status, refusal) = post(&server, "/api/messages/sms", &send, None);
    assert_eq!((status, refusal["error"]["code"].as_str()), (422, Some("recipient_opted_out")), "{refusal}");
    let other = json!({"from": "+12016661234", "to": "+18045550405", "type": "sms", "body": "hello"});
    assert_eq!(post(&server, "/api/messages/sms", &other, None).0, 202, "another recipient is not opted out");
}

/// A provider's inbound URL refuses a request its headers already condemn without reading the
/// body (no API key guards these URLs): a huge declared body with no signature is answered 403
/// at once, and a Twilio body over its 64 KiB cap is 413.
#[test]
fn a_provider_request_is_judged_by_its_headers_before_its_body_is_read() {
    use std::io::{Read, Write};
    let server = Backend::Memory.start(&with_providers(CONFIG), &PROVIDER_ENV);
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&address).unwrap_or_else(|e| panic!("{e}"));
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap_or_else(|e| panic!("{e}"));
    let head = format!(
        "POST /v1/inbound/twilio/tw HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 3000000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let mut answer = vec![0u8; 1024];
    let n = stream.read(&mut answer).unwrap_or_else(|e| panic!("no answer before the body: {e}"));
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("invalid_signature"), "{answer}");

    // A provider of a kind that takes nothing in: 404 before any body is read.
    let mut stream = std::net::TcpStream::connect(&address).unwrap_or_else(|e| panic!("{e}"));
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap_or_else(|e| panic!("{e}"));
    let head = head.replace("/v1/inbound/twilio/tw", "/v1/inbound/mock/p");
    stream.write_all(head.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let mut answer = vec![0u8; 1024];
    let n = stream.read(&mut answer).unwrap_or_else(|e| panic!("no answer before the body: {e}"));
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 404"), "a mock provider");

    let big = format!("MessageSid=SM1&From=%2B18045550101&To=%2B12016661234&Body={}", "x".repeat(70 * 1024));
    let response = client()
        .post(server.url("/v1/inbound/twilio/tw"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", "AAAAAAAAAAAAAAAAAAAAAAAAAAA=")
        .body(big)
        .send()
        .map(|r| r.status().as_u16());
    assert_eq!(response.unwrap_or(0), 413);
    assert_eq!(
        metric(&server, "switchboard_inbound_rejected_total{provider=\"tw\",reason=\"invalid_signature\"}"),
        Some(1)
    );
}

/// A message waiting for its turn is not sent through a backup provider once its recipient
/// opted out of the number the route's primary sends from: the check before each attempt asks
/// about every sender of the route, as accepting does.
#[test]
fn a_waiting_message_does_not_go_out_through_a_backup_after_an_opt_out_of_the_primary_number() {
    let config = r#"
[providers.slow]
kind = "mock"
rate_limit.per_second = 1
rate_limit.burst = 1

[providers.tw]
kind = "twilio"
account_sid = "AC0123456789abcdef"
auth_token = "${TW_TOKEN}"
from = "+15005550006"
base_url = "http://127.0.0.1:9"

[routes.sms]
providers = ["slow", "tw"]
"#;
    let backend = Backend::sqlite();
    let server = backend.start(config, &PROVIDER_ENV);
    let them = "+18045550606";
    let send = |to: &str| {
        let (status, answer) = post(
            &server,
            "/api/messages/sms",
            &json!({"from": "+12016661234", "to": to, "type": "sms", "body": "hi"}),
            None,
        );
        assert_eq!(status, 202, "{answer}");
        answer["id"].as_str().unwrap_or_default().to_owned()
    };
    let first = send("+18045550607");
    assert_eq!(common::wait_final(&server, &first)["status"], "sent", "the first takes `slow`'s only token");
    // The second waits about a second for `slow`'s next token; the STOP to `tw`'s number comes first.
    let waiting = send(them);
    let stop = inbound_keyword(them, "+15005550006", "stop-primary-number", "STOP");
    assert_eq!(post(&server, "/api/webhooks/sms", &stop, None).0, 200);
    let view = common::wait_final(&server, &waiting);
    assert_eq!(
        (view["status"].as_str(), view["error"]["code"].as_str()),
        (Some("failed"), Some("opted_out")),
        "{view}"
    );
    assert_eq!(view["attempts"], json!([]), "{view}");
}

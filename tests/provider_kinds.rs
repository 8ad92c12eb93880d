//! Each built-in kind against a local server speaking its provider's protocol: the exact
//! request (method, path, auth, fields), and every answer mapped to its error class.
//!
//! `check(kind, settings, reply, expected)` runs one send against a scripted fake and compares
//! the outcome; protocol details get their own small tests.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fake_http::{FakeHttp, Reply};
use common::smtp_sink::{SinkBehaviour, SmtpSink};
use serde_json::json;
use switchboard_providers::{
    webhook_signature, BuildContext, Channel, ErrorClass, OutboundMessage, Provider, SendError,
};

const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "marker-twilio-token";
const TIMEOUT: Duration = Duration::from_millis(500);

fn build(kind: &str, settings: serde_json::Value) -> Arc<dyn Provider> {
    let Some(registration) = switchboard_providers::find(kind) else { panic!("kind {kind} not registered") };
    match registration.build(settings, &BuildContext { name: "under-test", timeout: TIMEOUT }) {
        Ok(provider) => provider,
        Err(error) => panic!("build {kind}: {error}"),
    }
}

fn sms(attachments: &[&str]) -> OutboundMessage {
    OutboundMessage {
        id: "0190d6f2-aaaa-7bbb-8ccc-000000000001".into(),
        channel: if attachments.is_empty() { Channel::SMS } else { Channel::MMS },
        from: "+12016661234".into(),
        to: "+18045551234".into(),
        subject: None,
        body: "Your code is 1234".into(),
        attachments: attachments.iter().map(|a| (*a).to_owned()).collect(),
        tags: vec!["otp".into()],
    }
}

fn email(body: &str) -> OutboundMessage {
    OutboundMessage {
        id: "0190d6f2-aaaa-7bbb-8ccc-000000000002".into(),
        channel: Channel::EMAIL,
        from: "app@example.com".into(),
        to: "user@example.org".into(),
        subject: Some("Welcome".into()),
        body: body.into(),
        attachments: vec![],
        tags: vec![],
    }
}

fn twilio(fake: &FakeHttp) -> serde_json::Value {
    json!({"account_sid": SID, "auth_token": TOKEN, "base_url": fake.base})
}

fn sendgrid(fake: &FakeHttp) -> serde_json::Value {
    json!({"api_key": "marker-sendgrid-key", "base_url": fake.base})
}

fn webhook(fake: &FakeHttp) -> serde_json::Value {
    json!({"url": format!("{}/hooks/send", fake.base), "secret": "marker-webhook-secret"})
}

/// What a send should come to: a provider id, or an error class with the code and a piece of
/// the reason it should carry.
#[derive(Debug)]
enum Expect {
    Sent(Option<&'static str>),
    Failed(ErrorClass, Option<&'static str>, &'static str),
    LimitedFor(Option<u64>),
}

async fn check(
    kind: &str,
    settings: impl Fn(&FakeHttp) -> serde_json::Value,
    reply: Reply,
    expected: Expect,
) {
    let fake = FakeHttp::start(reply);
    let provider = build(kind, settings(&fake));
    let message = if kind == "twilio" { sms(&[]) } else { email("Hi") };
    // Cleaned as the dispatcher cleans every answer.
    let outcome =
        provider.send(&message).await.map_err(|e| provider.credentials_sent().clean_error(e, &message));
    match (&outcome, &expected) {
        (Ok(receipt), Expect::Sent(id)) => assert_eq!(receipt.provider_message_id.as_deref(), *id),
        (Err(SendError::RateLimited { retry_after }), Expect::LimitedFor(seconds)) => {
            let got = retry_after.map(|d| d.as_secs_f64().round() as u64);
            assert_eq!(got, *seconds, "{kind}: retry after");
        }
        (Err(error), Expect::Failed(class, code, reason)) => {
            assert_eq!(error.class(), *class, "{kind}: {error}");
            assert_eq!(error.code(), *code, "{kind}: {error}");
            assert!(error.to_string().contains(reason), "{kind}: {error:?} lacks {reason:?}");
        }
        _ => panic!("{kind}: expected {expected:?}, got {outcome:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_answers() {
    use ErrorClass::*;
    let ok = Reply::json(201, json!({"sid": "SM0123", "status": "queued"}));
    check("twilio", twilio, ok, Expect::Sent(Some("SM0123"))).await;
    let invalid_to =
        json!({"code": 21211, "message": "The 'To' number is not a valid phone number.", "status": 400});
    check(
        "twilio",
        twilio,
        Reply::json(400, invalid_to),
        Expect::Failed(Rejected, Some("21211"), "not a valid phone"),
    )
    .await;
    let auth = json!({"code": 20003, "message": "Authenticate", "status": 401});
    check(
        "twilio",
        twilio,
        Reply::json(401, auth),
        Expect::Failed(Misconfigured, Some("20003"), "Authenticate"),
    )
    .await;
    check("twilio", twilio, Reply::new(403, ""), Expect::Failed(Misconfigured, Some("403"), "HTTP 403"))
        .await;
    // A provider echoing our credentials does not get them into the attempt record.
    let echo = json!({"code": 20003, "message": "bad credentials AC0123456789abcdef0123456789abcdef:marker-twilio-token"});
    check(
        "twilio",
        twilio,
        Reply::json(401, echo),
        Expect::Failed(Misconfigured, Some("20003"), "bad credentials <redacted>"),
    )
    .await;
    let limited =
        Reply::json(429, json!({"code": 20429, "message": "Too Many Requests"})).header("Retry-After", "7");
    check("twilio", twilio, limited, Expect::LimitedFor(Some(7))).await;
    check("twilio", twilio, Reply::new(429, ""), Expect::LimitedFor(None)).await;
    for (status, code) in [(500, "500"), (502, "502"), (503, "503"), (504, "504")] {
        check("twilio", twilio, Reply::new(status, "down"), Expect::Failed(Ambiguous, Some(code), "down"))
            .await;
    }
    // A gateway that is slow to answer is the dispatcher's to time out (`timeout_ms`, the one
    // place attempts are bounded): tests/provider_stalls.rs.
    // An oversized answer is cut at the cap: the outcome still follows the status.
    check("twilio", twilio, Reply::sized(201, 2 << 20), Expect::Sent(None)).await;
    check(
        "twilio",
        twilio,
        Reply::sized(400, 2 << 20),
        Expect::Failed(Rejected, Some("400"), "over 65536 bytes"),
    )
    .await;
}

#[tokio::test]
async fn twilio_request_is_the_documented_one() {
    let fake = FakeHttp::start(Reply::json(201, json!({"sid": "SM1"})));
    let mut settings = twilio(&fake);
    settings["status_callback"] = json!("https://hooks.example.com/twilio");
    let provider = build("twilio", settings);
    let sent = provider.send(&sms(&["https://x.org/a.png", "https://x.org/b.png"])).await;
    assert!(sent.is_ok(), "{sent:?}");
    let request = fake.last();
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, format!("/2010-04-01/Accounts/{SID}/Messages.json"));
    // base64("AC0123456789abcdef0123456789abcdef:marker-twilio-token")
    assert_eq!(
        request.header("authorization"),
        Some("Basic QUMwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZjptYXJrZXItdHdpbGlvLXRva2Vu")
    );
    assert_eq!(request.header("content-type"), Some("application/x-www-form-urlencoded"));
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    };
    assert_eq!(
        request.form(),
        pairs(&[
            ("To", "+18045551234"),
            ("From", "+12016661234"),
            ("Body", "Your code is 1234"),
            ("MediaUrl", "https://x.org/a.png"),
            ("MediaUrl", "https://x.org/b.png"),
            ("StatusCallback", "https://hooks.example.com/twilio"),
        ])
    );

    // A messaging service replaces From; a configured sender replaces the message's.
    let mut settings = twilio(&fake);
    settings["messaging_service_sid"] = json!("MG0123");
    settings["from"] = json!("+15005550006");
    let _ = build("twilio", settings).send(&sms(&[])).await;
    assert_eq!(fake.last().form_values("MessagingServiceSid"), ["MG0123"]);
    assert!(fake.last().form_values("From").is_empty());
    let mut settings = twilio(&fake);
    settings["from"] = json!("+15005550006");
    let _ = build("twilio", settings).send(&sms(&[])).await;
    assert_eq!(fake.last().form_values("From"), ["+15005550006"]);
}

#[tokio::test]
async fn unreachable_provider_is_not_sent() {
    // A port bound (and kept) but not listening: connections are refused.
    let (_reserved, address) = common::refusing_address();
    let base = format!("http://{address}");
    let provider = build("twilio", json!({"account_sid": SID, "auth_token": TOKEN, "base_url": base}));
    let error = provider.send(&sms(&[])).await.err();
    assert_eq!(error.as_ref().map(SendError::class), Some(ErrorClass::NotSent), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendgrid_answers() {
    use ErrorClass::*;
    check(
        "sendgrid",
        sendgrid,
        Reply::new(202, "").header("X-Message-Id", "sg-abc"),
        Expect::Sent(Some("sg-abc")),
    )
    .await;
    let bad = json!({"errors": [{"message": "The from address does not match a verified Sender Identity.", "field": "from", "help": null}]});
    check(
        "sendgrid",
        sendgrid,
        Reply::json(403, bad.clone()),
        Expect::Failed(Misconfigured, Some("403"), "verified Sender"),
    )
    .await;
    check(
        "sendgrid",
        sendgrid,
        Reply::json(400, bad),
        Expect::Failed(Rejected, Some("400"), "from: The from address"),
    )
    .await;
    let unauthorized =
        json!({"errors": [{"message": "The provided authorization grant is invalid, expired, or revoked"}]});
    check(
        "sendgrid",
        sendgrid,
        Reply::json(401, unauthorized),
        Expect::Failed(Misconfigured, Some("401"), "grant is invalid"),
    )
    .await;
    check("sendgrid", sendgrid, Reply::new(429, "").header("Retry-After", "3"), Expect::LimitedFor(Some(3)))
        .await;
    let reset =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
            + 60;
    let limited = Reply::new(429, "").header("X-RateLimit-Reset", &reset.to_string());
    let fake = FakeHttp::start(limited);
    let error = build("sendgrid", sendgrid(&fake)).send(&email("Hi")).await.err();
    let wait = error.as_ref().and_then(SendError::retry_after).map(|d| d.as_secs()).unwrap_or(0);
    assert!((55..=60).contains(&wait), "X-RateLimit-Reset not honoured: {error:?}");
    check("sendgrid", sendgrid, Reply::new(503, ""), Expect::Failed(Ambiguous, Some("503"), "HTTP 503"))
        .await;
    check(
        "sendgrid",
        sendgrid,
        Reply::sized(413, 1 << 20),
        Expect::Failed(Rejected, Some("413"), "over 65536"),
    )
    .await;
}

#[tokio::test]
async fn sendgrid_request_is_the_documented_one() {
    let fake = FakeHttp::start(Reply::new(202, "").header("X-Message-Id", "sg-1"));
    let provider = build("sendgrid", sendgrid(&fake));
    let sent = provider.send(&email("<p>Hello <b>you</b></p>")).await;
    assert!(sent.is_ok(), "{sent:?}");
    let request = fake.last();
    assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", "/v3/mail/send"));
    assert_eq!(request.header("authorization"), Some("Bearer marker-sendgrid-key"));
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(
        request.json(),
        json!({
            "personalizations": [{"to": [{"email": "user@example.org"}]}],
            "from": {"email": "app@example.com"},
            "subject": "Welcome",
            "content": [{"type": "text/html", "value": "<p>Hello <b>you</b></p>"}],
            "custom_args": {"switchboard_message_id": "0190d6f2-aaaa-7bbb-8ccc-000000000002"},
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_answers() {
    use ErrorClass::*;
    check("webhook", webhook, Reply::json(200, json!({"id": "gw-7"})), Expect::Sent(Some("gw-7"))).await;
    check("webhook", webhook, Reply::new(204, ""), Expect::Sent(None)).await;
    check(
        "webhook",
        webhook,
        Reply::new(422, "no such number"),
        Expect::Failed(Rejected, Some("422"), "no such number"),
    )
    .await;
    check("webhook", webhook, Reply::new(401, ""), Expect::Failed(Misconfigured, Some("401"), "HTTP 401"))
        .await;
    check("webhook", webhook, Reply::new(429, "").header("Retry-After", "2"), Expect::LimitedFor(Some(2)))
        .await;
    check("webhook", webhook, Reply::new(502, ""), Expect::Failed(Ambiguous, Some("502"), "HTTP 502")).await;
}

#[tokio::test]
async fn webhook_request_is_signed() {
    let fake = FakeHttp::start(Reply::new(200, ""));
    let provider = build("webhook", webhook(&fake));
    let sent = provider.send(&sms(&[])).await;
    assert!(sent.is_ok(), "{sent:?}");
    let request = fake.last();
    assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", "/hooks/send"));
    let timestamp: u64 = request.header("x-switchboard-timestamp").and_then(|t| t.parse().ok()).unwrap_or(0);
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    assert!(now.abs_diff(timestamp) < 60, "timestamp {timestamp} vs now {now}");
    let expected = webhook_signature(b"marker-webhook-secret", timestamp, &request.body);
    assert_eq!(request.header("x-switchboard-signature"), Some(expected.as_str()));
    assert_eq!(request.header("x-switchboard-message-id"), Some("0190d6f2-aaaa-7bbb-8ccc-000000000001"));
    assert_eq!(
        request.json(),
        json!({
            "id": "0190d6f2-aaaa-7bbb-8ccc-000000000001", "channel": "sms", "from": "+12016661234",
            "to": "+18045551234", "subject": null, "body": "Your code is 1234", "attachments": [], "tags": ["otp"],
        })
    );
}

fn smtp(sink: &SmtpSink, password: Option<&str>) -> serde_json::Value {
    let mut settings = json!({"host": "127.0.0.1", "port": sink.port, "tls": "none"});
    if let Some(password) = password {
        settings["username"] = json!("mailer");
        settings["password"] = json!(password);
    }
    settings
}

#[tokio::test]
async fn smtp_delivers_to_a_real_server() {
    let sink = SmtpSink::start(SinkBehaviour {
        credentials: Some(("mailer".into(), "marker-smtp-password".into())),
        ..SinkBehaviour::default()
    });
    let provider = build("smtp", smtp(&sink, Some("marker-smtp-password")));
    let receipt = provider.send(&email("<p>Hello</p><p>there</p>")).await;
    let id = "<0190d6f2-aaaa-7bbb-8ccc-000000000002@example.com>";
    assert_eq!(receipt.map(|r| r.provider_message_id), Ok(Some(id.to_owned())));
    let got = sink.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].mail_from, "<app@example.com>");
    assert_eq!(got[0].rcpt_to, ["<user@example.org>"]);
    let data = &got[0].data;
    for part in [
        &format!("Message-ID: {id}"),
        "Subject: Welcome",
        "multipart/alternative",
        "text/html",
        "Hello\r\nthere",
    ] {
        assert!(data.contains(part), "{part:?} not in:\n{data}");
    }
    // Plain text stays a single part; the pooled connection is reused.
    let sent = provider.send(&email("Just text")).await;
    assert!(sent.is_ok(), "{sent:?}");
    let data = sink.received().pop().map(|r| r.data).unwrap_or_default();
    assert!(data.contains("Content-Type: text/plain") && !data.contains("multipart"), "{data}");
}

#[tokio::test]
async fn smtp_refusals_map_to_classes() {
    let cases: [(SinkBehaviour, Option<&str>, ErrorClass, Option<&str>); 4] = [
        (
            SinkBehaviour {
                credentials: Some(("mailer".into(), "right".into())),
                ..SinkBehaviour::default()
            },
            Some("wrong"),
            ErrorClass::Misconfigured,
            Some("535"),
        ),
        (
            SinkBehaviour { rcpt_reply: Some("550 5.1.1 No such user".into()), ..SinkBehaviour::default() },
            None,
            ErrorClass::Rejected,
            Some("550"),
        ),
        (
            SinkBehaviour {
                data_reply: Some("451 4.3.0 Try again later".into()),
                ..SinkBehaviour::default()
            },
            None,
            ErrorClass::NotSent,
            None,
        ),
        (
            SinkBehaviour { data_reply: Some("554 5.7.1 Spam".into()), ..SinkBehaviour::default() },
            None,
            ErrorClass::Rejected,
            Some("554"),
        ),
    ];
    for (behaviour, password, class, code) in cases {
        let sink = SmtpSink::start(behaviour.clone());
        let error = build("smtp", smtp(&sink, password)).send(&email("Hi")).await.err();
        assert_eq!(error.as_ref().map(SendError::class), Some(class), "{behaviour:?}: {error:?}");
        assert_eq!(error.as_ref().and_then(SendError::code), code, "{behaviour:?}: {error:?}");
        assert!(sink.received().is_empty());
    }
    let (_reserved, address) = common::refusing_address();
    let settings = json!({"host": "127.0.0.1", "port": address.port(), "tls": "none"});
    let error = build("smtp", settings).send(&email("Hi")).await.err();
    assert_eq!(error.as_ref().map(SendError::class), Some(ErrorClass::NotSent), "{error:?}");
}

#[tokio::test]
async fn smtp_header_injection_sends_nothing() {
    let sink = SmtpSink::start(SinkBehaviour::default());
    let provider = build("smtp", smtp(&sink, None));
    let mut message = email("Hi");
    message.subject = Some("Hello\r\nBcc: victim@example.net".into());
    let error = provider.send(&message).await.err();
    assert_eq!(error.as_ref().map(SendError::class), Some(ErrorClass::Rejected), "{error:?}");
    let mut message = email("Hi");
    message.to = "user@example.org\r\nBcc: victim@example.net".into();
    let error = provider.send(&message).await.err();
    assert_eq!(error.as_ref().map(SendError::class), Some(ErrorClass::Rejected), "{error:?}");
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn connection_dropped_after_the_request_is_ambiguous() {
    use tokio::io::AsyncReadExt;
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(listener) => listener,
        Err(error) => panic!("bind: {error}"),
    };
    let base = format!("http://{}", listener.local_addr().map(|a| a.to_string()).unwrap_or_default());
    tokio::spawn(async move {
        // Read the whole request, then hang up without a word.
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buffer = vec![0u8; 64 * 1024];
            let _ = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buffer)).await;
            drop(stream);
        }
    });
    let provider = build("twilio", json!({"account_sid": SID, "auth_token": TOKEN, "base_url": base}));
    let error = provider.send(&sms(&[])).await.err();
    assert_eq!(error.as_ref().map(SendError::class), Some(ErrorClass::Ambiguous), "{error:?}");
    assert_eq!(error.as_ref().and_then(SendError::code), Some("transport"), "{error:?}");
}

/// A gateway that answers with the whole request it got: cleaned as the dispatcher cleans it,
/// the answer keeps no credential of any kind in any form it was sent in, nor the recipient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_declares_the_credentials_it_sends() {
    let echo = || Reply::echo(400, |request| format!("you sent: {}", request.as_text()));
    let url_token = "marker-url-token-77";
    let webhook_with_token = move |fake: &FakeHttp| json!({"url": format!("{}/hooks/send?token={url_token}", fake.base), "secret": "marker-webhook-secret"});
    type Settings<'a> = &'a dyn Fn(&FakeHttp) -> serde_json::Value;
    let kinds: [(&str, Settings, &[&str]); 4] = [
        ("twilio", &twilio, &[TOKEN]),
        ("sendgrid", &sendgrid, &["marker-sendgrid-key"]),
        ("webhook", &webhook, &["marker-webhook-secret"]),
        ("webhook", &webhook_with_token, &["marker-webhook-secret", url_token]),
    ];
    for (kind, settings, secrets) in kinds {
        let fake = FakeHttp::start(echo());
        let provider = build(kind, settings(&fake));
        let message = if kind == "sendgrid" { email("Your code is 5678") } else { sms(&[]) };
        let Err(error) = provider.send(&message).await else { panic!("{kind}: sent") };
        let raw = error.to_string();
        assert!(
            raw.contains(&message.body) || raw.contains("Your+code"),
            "{kind}: the echo lacks the body: {raw}"
        );
        let request = fake.last();
        let authorization = request.header("authorization").and_then(|v| v.split_once(' ')).map(|(_, v)| v);
        let sent: Vec<&str> = secrets.iter().copied().chain(authorization).collect();
        // The raw answer quotes what was sent (the webhook's secret itself never is): the test
        // would show nothing otherwise.
        let quoted = sent.iter().filter(|s| raw.contains(**s)).count();
        assert!(quoted > 0 || secrets == ["marker-webhook-secret"], "{kind}: {raw}");
        let clean = provider.credentials_sent().clean_error(error, &message).to_string();
        for secret in &sent {
            assert!(!clean.contains(secret), "{kind}: {secret} in {clean}");
        }
        assert!(!clean.contains(&request.uri) || !request.uri.contains("token"), "{kind}: {clean}");
        assert!(!clean.contains(&message.to) && !clean.contains(&message.to[1..]), "{kind}: {clean}");
        // Bodies are never logged: the echoed body (in whatever encoding the kind sent it) is gone.
        assert!(!clean.contains(&message.body), "{kind}: {clean}");
        assert!(clean.len() <= 640, "{kind}: {} bytes", clean.len());
    }
}

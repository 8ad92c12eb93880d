//! Delivery receipts in and signed status callbacks out (issue 16), through the real binary:
//! providers' receipts with real signatures (Twilio's HMAC, SendGrid's ECDSA P-256 with a key
//! made here, the `webhook` kind's HMAC), out of order and duplicated; bad and stale signatures;
//! suppression after a bounce; callbacks to a receiver that is down at first, after a SIGKILL,
//! and from two instances sharing one PostgreSQL database; the `status_callback` URL policy.

mod common;
#[path = "common/e2e.rs"]
mod e2e;
#[path = "common/stores.rs"]
mod stores;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::fake_http::{FakeHttp, Recorded, Reply};
use common::{base64, client, message_view, send_native, wait_final, Server};
use e2e::{form, twilio_signature, Backend};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

/// The Twilio provider's auth token (from the environment, as the kind requires).
const TWILIO_TOKEN: &str = "twilio-token-for-delivery-tests-7b2e";
/// What Twilio is told to call: signed receipt URLs start with it.
const PUBLIC_URL: &str = "https://sb.example.com";
/// The `webhook` provider's signing secret.
const GATEWAY_SECRET: &str = "gateway-secret-for-delivery-tests-51c9";

/// The callback signing key's bytes, and the `SWITCHBOARD_CALLBACK_SECRET` that serializes them.
fn callback_key() -> Vec<u8> {
    (0u8..32).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect()
}

fn callback_secret() -> String {
    format!("whsec_{}", base64(&callback_key()))
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Polls `check` until it gives a value; panics with `what` and the server's log after `limit`
/// (the deadline only guards against a hang: no assertion is about time).
fn wait_for<T>(
    what: &str,
    limit: Duration,
    logs: impl Fn() -> String,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}\n{}", logs());
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A counter's value: the line of `name` with exactly these labels (in any order); 0 when absent.
fn metric(server: &Server, name: &str, labels: &[(&str, &str)]) -> u64 {
    let text = client().get(server.url("/metrics")).send().and_then(|r| r.text()).unwrap_or_default();
    text.lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|rest| rest.split_once('}'))
        .find(|(head, _)| {
            head.split(',').count() == labels.len()
                && labels.iter().all(|(k, v)| head.split(',').any(|pair| pair == format!("{k}=\"{v}\"")))
        })
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0)
}

/// POSTs `body` to `path` with `content_type` and `headers`; the status and the body as text.
fn post_raw(
    server: &Server,
    path: &str,
    content_type: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> (u16, String) {
    let mut request = client().post(server.url(path)).header("content-type", content_type).body(body);
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let response = request.send().unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().unwrap_or_default())
}

fn post_json(server: &Server, path: &str, body: &Value) -> (u16, Value) {
    let response =
        client().post(server.url(path)).json(body).send().unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = response.status().as_u16();
    (status, response.json().unwrap_or_default())
}

/// `(source, type)` of each event of a message view, in order.
fn event_kinds(view: &Value) -> Vec<(String, String)> {
    view["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (e["source"].as_str().unwrap_or("?").to_owned(), e["type"].as_str().unwrap_or("?").to_owned())
        })
        .collect()
}

/// The types of a view's provider events, in order.
fn provider_events(view: &Value) -> Vec<String> {
    event_kinds(view).into_iter().filter(|(source, _)| source == "provider").map(|(_, kind)| kind).collect()
}

/// Every event has the documented fields, and they are oldest first.
fn assert_timeline_shape(view: &Value) {
    let events = view["events"].as_array().cloned().unwrap_or_default();
    assert!(!events.is_empty(), "no events: {view}");
    for event in &events {
        for field in ["time", "source", "type", "provider", "detail"] {
            assert!(event.get(field).is_some(), "`{field}` missing in {event}");
        }
        assert!(matches!(event["source"].as_str(), Some("provider" | "switchboard")), "{event}");
    }
    let times: Vec<&str> = events.iter().map(|e| e["time"].as_str().unwrap_or("")).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "events are not oldest first: {times:?}");
}

/// The time of a view's first event of `source` and `kind`.
fn event_time(view: &Value, source: &str, kind: &str) -> Option<String> {
    view["events"]
        .as_array()?
        .iter()
        .find(|e| e["source"] == source && e["type"] == kind)
        .and_then(|e| e["time"].as_str().map(str::to_owned))
}

// ---------------------------------------------------------------------------------------------
// Twilio

fn twilio_config(base_url: &str) -> String {
    format!(
        r#"
[providers.tw]
kind = "twilio"
account_sid = "AC0123456789abcdef"
auth_token = "${{TW_TOKEN}}"
public_url = "{PUBLIC_URL}"
base_url = "{base_url}"

[routes.sms]
providers = ["tw"]
"#
    )
}

/// Posts a Twilio status callback for provider `tw`, signed with `token`.
fn twilio_receipt(server: &Server, params: &[(&str, &str)], token: &str) -> (u16, String) {
    let path = "/v1/receipts/twilio/tw";
    let signature = twilio_signature(token, &format!("{PUBLIC_URL}{path}"), params);
    post_raw(
        server,
        path,
        "application/x-www-form-urlencoded",
        &[("x-twilio-signature", signature)],
        form(params).into_bytes(),
    )
}

fn twilio_status(sid: &str, status: &str) -> Vec<(&'static str, String)> {
    vec![
        ("MessageSid", sid.to_owned()),
        ("MessageStatus", status.to_owned()),
        ("AccountSid", "AC0123456789abcdef".to_owned()),
        ("From", "+12016661234".to_owned()),
        ("To", "+18045550111".to_owned()),
    ]
}

fn as_params<'a>(params: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    params.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// An SMS sent through a fake Twilio (so it is `sent` with a `MessageSid`), then signed status
/// callbacks delivered, sent (late), delivered (again), undelivered (late): it ends `delivered`
/// with every receipt in its timeline, in order, after Switchboard's own events. A bad signature
/// is 403 and changes nothing, before and after; a receipt for an unknown sid is acknowledged.
fn twilio_receipts_out_of_order_and_duplicated(backend: &Backend) {
    const SID: &str = "SM0123456789abcdef0123456789abcd01";
    let twilio = FakeHttp::start(Reply::json(201, json!({"sid": SID, "status": "queued"})));
    let server = backend.start(&twilio_config(&twilio.base), &[("TW_TOKEN", TWILIO_TOKEN)]);
    let message = json!({"channel": "sms", "from": "+12016661234", "to": "+18045550111", "body": "hi"});
    let id = send_native(&server, &message).unwrap_or_else(|| panic!("not accepted\n{}", server.logs()));
    let sent = wait_final(&server, &id);
    assert_eq!(
        (sent["status"].as_str(), sent["provider_message_id"].as_str()),
        (Some("sent"), Some(SID)),
        "{sent}"
    );
    assert!(sent["delivery_status"].is_null(), "no receipt yet: {sent}");
    assert_eq!(
        twilio.last().form_values("StatusCallback"),
        [format!("{PUBLIC_URL}/v1/receipts/twilio/tw?message_id={id}")],
        "with public_url set, sends ask for status callbacks, naming the message"
    );
    let sent_at = event_time(&sent, "switchboard", "sent").unwrap_or_else(|| panic!("no sent event: {sent}"));

    // A wrong signature: refused, nothing recorded.
    let delivered = twilio_status(SID, "delivered");
    let (status, body) = twilio_receipt(&server, &as_params(&delivered), "not-the-token");
    assert_eq!((status, body.contains("invalid_signature")), (403, true), "{body}");
    let unchanged = message_view(&server, &id);
    assert!(unchanged["delivery_status"].is_null(), "{unchanged}");
    assert_eq!(provider_events(&unchanged), Vec::<String>::new(), "{unchanged}");

    // Out of order and duplicated.
    let mut undelivered = twilio_status(SID, "undelivered");
    undelivered.push(("ErrorCode", "30003".to_owned()));
    for params in [delivered.clone(), twilio_status(SID, "sent"), delivered.clone(), undelivered] {
        let (status, body) = twilio_receipt(&server, &as_params(&params), TWILIO_TOKEN);
        assert_eq!(status, 200, "{params:?}: {body}\n{}", server.logs());
        assert_eq!(message_view(&server, &id)["delivery_status"], "delivered", "after {params:?}");
    }
    let view = message_view(&server, &id);
    assert_eq!(view["status"], "sent", "{view}");
    assert_eq!(view["delivery_status"], "delivered", "{view}");
    assert_timeline_shape(&view);
    assert_eq!(
        event_time(&view, "switchboard", "sent").as_deref(),
        Some(sent_at.as_str()),
        "receipts must not move the time Switchboard's `sent` event happened: {view}"
    );
    let kinds = event_kinds(&view);
    let kind = |source: &str, kind: &str| (source.to_owned(), kind.to_owned());
    assert_eq!(
        kinds,
        [
            kind("switchboard", "queued"),
            kind("switchboard", "sending"),
            kind("switchboard", "sent"),
            kind("provider", "delivered"),
            kind("provider", "sent"),
            kind("provider", "delivered"),
            kind("provider", "undelivered"),
        ],
        "{view}"
    );
    let events = view["events"].as_array().cloned().unwrap_or_default();
    for event in events.iter().filter(|e| e["source"] == "provider") {
        assert_eq!(event["provider"], "tw", "{event}");
    }
    assert_eq!(events[6]["detail"]["MessageStatus"], "undelivered", "{view}");
    assert_eq!(events[6]["detail"]["ErrorCode"], "30003", "{view}");
    assert_eq!(events[4]["detail"]["MessageStatus"], "sent", "{view}");

    // After all that, a wrongly signed `read` (which would move it on) changes nothing either.
    let read = twilio_status(SID, "read");
    let mut tampered = as_params(&read);
    let signature = twilio_signature(TWILIO_TOKEN, &format!("{PUBLIC_URL}/v1/receipts/twilio/tw"), &tampered);
    tampered[4] = ("To", "+18045550999");
    let (status, body) = post_raw(
        &server,
        "/v1/receipts/twilio/tw",
        "application/x-www-form-urlencoded",
        &[("x-twilio-signature", signature)],
        form(&tampered).into_bytes(),
    );
    assert_eq!((status, body.contains("invalid_signature")), (403, true), "{body}");
    let (status, _) = post_raw(
        &server,
        "/v1/receipts/twilio/tw",
        "application/x-www-form-urlencoded",
        &[],
        form(&as_params(&read)).into_bytes(),
    );
    assert_eq!(status, 403, "no signature at all");
    let after = message_view(&server, &id);
    assert_eq!(after["delivery_status"], "delivered", "{after}");
    assert_eq!(after["events"], view["events"], "a refused receipt records nothing");

    // A receipt for a message Switchboard does not know: acknowledged, counted.
    let unknown = twilio_status("SMffffffffffffffffffffffffffffffff", "delivered");
    assert_eq!(twilio_receipt(&server, &as_params(&unknown), TWILIO_TOKEN).0, 200);

    let receipts = |status: &str| {
        metric(&server, "switchboard_receipts_total", &[("provider", "tw"), ("delivery_status", status)])
    };
    assert_eq!(
        (receipts("delivered"), receipts("sent"), receipts("undelivered"), receipts("unknown")),
        (2, 1, 1, 1),
        "switchboard_receipts_total"
    );
    assert_eq!(
        metric(
            &server,
            "switchboard_receipts_rejected_total",
            &[("provider", "tw"), ("reason", "invalid_signature")]
        ),
        3
    );
}

#[test]
fn twilio_receipts_out_of_order_and_duplicated_on_sqlite() {
    twilio_receipts_out_of_order_and_duplicated(&Backend::sqlite());
}

#[test]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
fn twilio_receipts_out_of_order_and_duplicated_on_postgres() {
    twilio_receipts_out_of_order_and_duplicated(&Backend::postgres("rcpt_tw"));
}

// ---------------------------------------------------------------------------------------------
// SendGrid

mod ecdsa {
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::{Signature, SigningKey};
    use sha2::{Digest, Sha256};

    /// The DER SubjectPublicKeyInfo of a P-256 key up to the point (base64
    /// `MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE`).
    const SPKI_PREFIX: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
        0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];

    /// A key made for this run (from the time, the process and `salt`).
    pub fn new_key(salt: &str) -> SigningKey {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let seed = Sha256::digest(format!("{nanos}.{}.{salt}", std::process::id()).as_bytes());
        SigningKey::from_slice(&seed).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The public half as SendGrid's dashboard shows it: base64 of the DER SubjectPublicKeyInfo.
    pub fn public_key(key: &SigningKey) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(key.verifying_key().to_sec1_point(false).as_bytes());
        crate::common::base64(&der)
    }

    /// `X-Twilio-Email-Event-Webhook-Signature` for `timestamp` and `body`.
    pub fn sign(key: &SigningKey, timestamp: &str, body: &[u8]) -> String {
        let mut signed = timestamp.as_bytes().to_vec();
        signed.extend_from_slice(body);
        let signature: Signature = key.sign(&signed);
        crate::common::base64(signature.to_der().as_bytes())
    }
}

fn sendgrid_config(base_url: &str, public_key: &str) -> String {
    format!(
        r#"
[providers.sg]
kind = "sendgrid"
api_key = "${{SG_KEY}}"
base_url = "{base_url}"
event_webhook_public_key = "{public_key}"

[routes.email]
providers = ["sg"]
"#
    )
}

/// Posts an Event Webhook batch signed by `key` at `timestamp`.
fn sendgrid_events(
    server: &Server,
    key: &p256::ecdsa::SigningKey,
    timestamp: u64,
    body: &str,
) -> (u16, String) {
    let timestamp = timestamp.to_string();
    let signature = ecdsa::sign(key, &timestamp, body.as_bytes());
    post_raw(
        server,
        "/v1/receipts/sendgrid/sg",
        "application/json",
        &[
            ("x-twilio-email-event-webhook-signature", signature),
            ("x-twilio-email-event-webhook-timestamp", timestamp),
        ],
        body.as_bytes().to_vec(),
    )
}

fn email(to: &str) -> Value {
    json!({"channel": "email", "from": "noreply@example.com", "to": to, "subject": "Hi", "body": "hello"})
}

/// Three emails sent through a fake SendGrid (each with its `X-Message-Id`), then one signed
/// batch with events for all three and for an unknown message: each gets its right delivery
/// status and timeline. A stale timestamp or another key: 403, nothing recorded. The bounced
/// address (and the unknown message's dropped one) are suppressed: sends to them are 422.
fn sendgrid_batch(backend: &Backend) {
    let key = ecdsa::new_key("sendgrid");
    let ids_at_sendgrid = ["AlphaMsgId000000000001", "BravoMsgId000000000002", "CharlieMsgId0000000003"];
    let fake = FakeHttp::start(Reply::new(202, "").header("X-Message-Id", "LaterMsgId000000000009"));
    fake.script(ids_at_sendgrid.iter().map(|id| Reply::new(202, "").header("X-Message-Id", id)));
    let server =
        backend.start(&sendgrid_config(&fake.base, &ecdsa::public_key(&key)), &[("SG_KEY", "SG.test-key")]);
    let recipients = ["alice@example.org", "bob@example.org", "carol@example.org"];
    let mut ids = Vec::new();
    let mut sent_at = BTreeMap::new();
    for (recipient, at_sendgrid) in recipients.iter().zip(ids_at_sendgrid) {
        let id = send_native(&server, &email(recipient))
            .unwrap_or_else(|| panic!("not accepted\n{}", server.logs()));
        let view = wait_final(&server, &id);
        assert_eq!(
            (view["status"].as_str(), view["provider_message_id"].as_str()),
            (Some("sent"), Some(at_sendgrid)),
            "{view}"
        );
        assert_eq!(
            fake.last().json()["custom_args"]["switchboard_message_id"],
            id.as_str(),
            "the send names our id"
        );
        let at = event_time(&view, "switchboard", "sent").unwrap_or_else(|| panic!("no sent event: {view}"));
        sent_at.insert(id.clone(), at);
        ids.push(id);
    }
    let (alice, bob, carol) = (&ids[0], &ids[1], &ids[2]);
    let t = now_secs() + 1;
    let batch = json!([
        {"email": recipients[0], "event": "processed", "sg_message_id": format!("{}.filterdrecv-1", ids_at_sendgrid[0]), "timestamp": t},
        {"email": recipients[1], "event": "processed", "sg_message_id": format!("{}.filterdrecv-2", ids_at_sendgrid[1]), "timestamp": t},
        {"email": recipients[0], "event": "delivered", "sg_message_id": format!("{}.filterdrecv-1", ids_at_sendgrid[0]), "timestamp": t + 1, "response": "250 OK"},
        {"email": recipients[1], "event": "bounce", "sg_message_id": format!("{}.filterdrecv-2", ids_at_sendgrid[1]), "timestamp": t + 1,
         "type": "bounce", "status": "5.1.1", "reason": format!("550 5.1.1 <{}>: user unknown", recipients[1])},
        // Carol's by our id only (custom_args are copied into events), the deferral arriving late.
        {"email": recipients[2], "event": "delivered", "switchboard_message_id": carol, "timestamp": t + 2},
        {"email": recipients[2], "event": "deferred", "switchboard_message_id": carol, "timestamp": t + 1, "attempt": "1"},
        {"email": recipients[0], "event": "open", "sg_message_id": format!("{}.filterdrecv-1", ids_at_sendgrid[0]), "timestamp": t + 3},
        {"email": "dave@example.org", "event": "dropped", "reason": "Bounced Address", "sg_message_id": "UnknownMsgId0000000000.filterdrecv-9", "timestamp": t},
    ])
    .to_string();

    // Signed by another key, or too long ago: refused, nothing recorded.
    let (status, body) = sendgrid_events(&server, &ecdsa::new_key("other"), now_secs(), &batch);
    assert_eq!((status, body.contains("invalid_signature")), (403, true), "another key: {body}");
    let (status, body) = sendgrid_events(&server, &key, now_secs() - 6 * 60, &batch);
    assert_eq!((status, body.contains("invalid_signature")), (403, true), "a stale timestamp: {body}");
    // The signature of the batch, over another body or with another timestamp.
    let signed_at = now_secs().to_string();
    let signature = ecdsa::sign(&key, &signed_at, batch.as_bytes());
    let tampered = |timestamp: String, body: String| {
        post_raw(
            &server,
            "/v1/receipts/sendgrid/sg",
            "application/json",
            &[
                ("x-twilio-email-event-webhook-signature", signature.clone()),
                ("x-twilio-email-event-webhook-timestamp", timestamp),
            ],
            body.into_bytes(),
        )
    };
    let (status, body) = tampered(signed_at.clone(), batch.replace("bounce", "delivered"));
    assert_eq!(status, 403, "a body other than the signed one: {body}");
    let (status, _) = tampered((now_secs() + 1).to_string(), batch.clone());
    assert_eq!(status, 403, "a timestamp other than the signed one");
    for id in &ids {
        let view = message_view(&server, id);
        assert!(view["delivery_status"].is_null(), "{view}");
        assert_eq!(provider_events(&view), Vec::<String>::new(), "{view}");
    }
    assert_eq!(post_json(&server, "/v1/messages", &email(recipients[1])).0, 202, "nothing suppressed yet");

    let (status, body) = sendgrid_events(&server, &key, now_secs(), &batch);
    assert_eq!(status, 200, "{body}\n{}", server.logs());
    for (id, expected, events) in [
        (alice, "opened", vec!["sent", "delivered", "opened"]),
        (bob, "bounced", vec!["sent", "bounced"]),
        (carol, "delivered", vec!["deferred", "delivered"]),
    ] {
        let view = message_view(&server, id);
        assert_eq!(view["delivery_status"], expected, "{view}");
        assert_timeline_shape(&view);
        assert_eq!(provider_events(&view), events, "{view}");
        assert_eq!(
            event_time(&view, "switchboard", "sent").as_ref(),
            sent_at.get(id),
            "receipts must not move the time Switchboard's `sent` event happened: {view}"
        );
        let kinds = event_kinds(&view);
        assert_eq!(
            kinds[..3].iter().map(|(s, k)| (s.as_str(), k.as_str())).collect::<Vec<_>>(),
            [("switchboard", "queued"), ("switchboard", "sending"), ("switchboard", "sent")]
        );
    }
    let bounced = message_view(&server, bob);
    let bounce = bounced["events"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["type"] == "bounced")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (bounce["detail"]["event"].as_str(), bounce["detail"]["status"].as_str()),
        (Some("bounce"), Some("5.1.1")),
        "{bounce}"
    );
    assert!(
        !bounced["events"].to_string().contains(recipients[1]),
        "the address is not in the events: {bounced}"
    );

    let receipts = |status: &str| {
        metric(&server, "switchboard_receipts_total", &[("provider", "sg"), ("delivery_status", status)])
    };
    assert_eq!(
        [
            receipts("sent"),
            receipts("delivered"),
            receipts("bounced"),
            receipts("deferred"),
            receipts("opened"),
            receipts("unknown")
        ],
        [2, 2, 1, 1, 1, 1],
        "switchboard_receipts_total"
    );
    assert_eq!(
        metric(
            &server,
            "switchboard_receipts_rejected_total",
            &[("provider", "sg"), ("reason", "invalid_signature")]
        ),
        4
    );

    // The bounce suppressed Bob's address (whatever its case or +tag); not Alice's, nor Dave's:
    // a drop about no message of that provider suppresses nothing.
    for to in ["bob@example.org", "Bob@Example.ORG", "bob+news@example.org"] {
        let (status, refusal) = post_json(&server, "/v1/messages", &email(to));
        assert_eq!(
            (status, refusal["error"]["code"].as_str(), refusal["error"]["field"].as_str()),
            (422, Some("recipient_suppressed"), Some("to")),
            "{to}: {refusal}"
        );
    }
    assert_eq!(
        post_json(&server, "/v1/messages", &email(recipients[0])).0,
        202,
        "an opened email's address is fine"
    );
    assert_eq!(
        post_json(&server, "/v1/messages", &email("dave@example.org")).0,
        202,
        "an unknown message's drop"
    );
    let listed: Value =
        client().get(server.url("/v1/opt-outs")).send().and_then(|r| r.json()).unwrap_or_default();
    let suppressed: BTreeSet<(String, String, String)> = listed["opt_outs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            let text = |f: &str| o[f].as_str().unwrap_or("?").to_owned();
            (text("channel"), text("sender"), text("recipient"))
        })
        .collect();
    let expected: BTreeSet<(String, String, String)> =
        ["bob@example.org"].into_iter().map(|r| ("email".to_owned(), "*".to_owned(), r.to_owned())).collect();
    assert_eq!(suppressed, expected, "{listed}");
}

#[test]
fn sendgrid_batch_on_sqlite() {
    sendgrid_batch(&Backend::sqlite());
}

#[test]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
fn sendgrid_batch_on_postgres() {
    sendgrid_batch(&Backend::postgres("rcpt_sg"));
}

// ---------------------------------------------------------------------------------------------
// The webhook kind

fn gateway_signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

fn gateway_receipt(server: &Server, secret: &str, timestamp: u64, body: &Value) -> (u16, String) {
    let body = body.to_string().into_bytes();
    let timestamp = timestamp.to_string();
    let signature = gateway_signature(secret, &timestamp, &body);
    post_raw(
        server,
        "/v1/receipts/webhook/gw",
        "application/json",
        &[("x-switchboard-timestamp", timestamp), ("x-switchboard-signature", signature)],
        body,
    )
}

/// A `webhook` provider's receipts, signed like its sends with its secret: the status moves
/// forward (deferred, delivered; a late deferral is recorded and changes nothing); another
/// secret or a stale timestamp is 403 and records nothing; an unknown id is acknowledged.
#[test]
fn webhook_kind_receipts() {
    let gateway = FakeHttp::start(Reply::json(200, json!({"id": "gw-0001"})));
    let config = format!(
        r#"
[providers.gw]
kind = "webhook"
url = "{}/send"
secret = "${{GW_SECRET}}"

[routes.sms]
providers = ["gw"]
"#,
        gateway.base
    );
    let backend = Backend::sqlite();
    let server = backend.start(&config, &[("GW_SECRET", GATEWAY_SECRET)]);
    let message = json!({"channel": "sms", "from": "+12016661234", "to": "+18045550222", "body": "hi"});
    let id = send_native(&server, &message).unwrap_or_else(|| panic!("not accepted\n{}", server.logs()));
    assert_eq!(wait_final(&server, &id)["status"], "sent");

    let t = now_secs();
    let receipt = |status: &str, time: u64| json!({"id": id, "status": status, "time": time});
    let (status, body) =
        gateway_receipt(&server, "another-secret-of-enough-length", t, &receipt("delivered", t));
    assert_eq!((status, body.contains("invalid_signature")), (403, true), "{body}");
    let (status, body) = gateway_receipt(&server, GATEWAY_SECRET, t - 6 * 60, &receipt("delivered", t));
    assert_eq!((status, body.contains("invalid_signature")), (403, true), "stale: {body}");
    let view = message_view(&server, &id);
    assert!(view["delivery_status"].is_null(), "{view}");
    assert_eq!(provider_events(&view), Vec::<String>::new());

    for (status_name, time, expected) in
        [("deferred", t + 1, "deferred"), ("delivered", t + 3, "delivered"), ("deferred", t + 2, "delivered")]
    {
        let (status, body) =
            gateway_receipt(&server, GATEWAY_SECRET, now_secs(), &receipt(status_name, time));
        assert_eq!(status, 200, "{status_name}: {body}\n{}", server.logs());
        assert_eq!(message_view(&server, &id)["delivery_status"], expected, "after {status_name}");
    }
    let view = message_view(&server, &id);
    assert_timeline_shape(&view);
    assert_eq!(provider_events(&view), ["deferred", "deferred", "delivered"], "by time: {view}");
    let unknown = json!({"id": "0190a0b0-0000-7000-8000-000000000000", "status": "delivered"});
    assert_eq!(gateway_receipt(&server, GATEWAY_SECRET, now_secs(), &unknown).0, 200);

    let receipts = |status: &str| {
        metric(&server, "switchboard_receipts_total", &[("provider", "gw"), ("delivery_status", status)])
    };
    assert_eq!((receipts("deferred"), receipts("delivered"), receipts("unknown")), (2, 1, 1));
    assert_eq!(
        metric(
            &server,
            "switchboard_receipts_rejected_total",
            &[("provider", "gw"), ("reason", "invalid_signature")]
        ),
        2
    );
}

// ---------------------------------------------------------------------------------------------
// Callbacks

/// Whether a callback request carries a valid Standard Webhooks signature of its body.
fn signature_valid(request: &Recorded) -> bool {
    let (Some(id), Some(timestamp), Some(signatures)) = (
        request.header("webhook-id"),
        request.header("webhook-timestamp"),
        request.header("webhook-signature"),
    ) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(&callback_key()).unwrap_or_else(|e| panic!("{e}"));
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&request.body);
    let expected = format!("v1,{}", base64(&mac.finalize().into_bytes()));
    timestamp.parse::<i64>().is_ok() && signatures.split(' ').any(|s| s == expected)
}

fn webhook_id(request: &Recorded) -> String {
    request.header("webhook-id").unwrap_or_default().to_owned()
}

/// `(status, delivery_status)` a callback tells of.
fn told(request: &Recorded) -> (String, Option<String>) {
    let body = request.json();
    (
        body["message"]["status"].as_str().unwrap_or("?").to_owned(),
        body["message"]["delivery_status"].as_str().map(str::to_owned),
    )
}

fn change(status: &str, delivery: Option<&str>) -> (String, Option<String>) {
    (status.to_owned(), delivery.map(str::to_owned))
}

/// A receiver answering 503 to its first two requests: the first callback is retried (with the
/// same `webhook-id`) until it is taken, then every change — sending, sent, a delivered receipt —
/// arrives once, in order, validly signed.
#[test]
fn callbacks_retried_in_order_and_signed() {
    const SID: &str = "SM0123456789abcdef0123456789abcd02";
    let receiver = FakeHttp::start(Reply::new(200, ""));
    receiver.script([Reply::new(503, "down"), Reply::new(503, "down")]);
    let twilio = FakeHttp::start(Reply::json(201, json!({"sid": SID, "status": "queued"})));
    let secret = callback_secret();
    let backend = Backend::sqlite();
    let server = backend.start_with_args(
        &twilio_config(&twilio.base),
        &["--allow-loopback-callbacks"],
        &[("TW_TOKEN", TWILIO_TOKEN), ("SWITCHBOARD_CALLBACK_SECRET", &secret)],
    );
    let callback_url = format!("{}/hooks/status?token=abc123", receiver.base);
    let message = json!({"channel": "sms", "from": "+12016661234", "to": "+18045550333", "body": "hi", "status_callback": callback_url});
    let id = send_native(&server, &message).unwrap_or_else(|| panic!("not accepted\n{}", server.logs()));
    let view = wait_final(&server, &id);
    assert_eq!(view["status"], "sent", "{view}");
    assert_eq!(view["status_callback"], callback_url.as_str(), "{view}");
    let delivered = twilio_status(SID, "delivered");
    assert_eq!(twilio_receipt(&server, &as_params(&delivered), TWILIO_TOKEN).0, 200);

    wait_for(
        "three callbacks delivered",
        Duration::from_secs(75),
        || server.logs(),
        || (metric(&server, "switchboard_callbacks_total", &[("result", "delivered")]) >= 3).then_some(()),
    );
    let requests = receiver.requests();
    assert_eq!(
        requests.len(),
        5,
        "two refused tries, then three deliveries: {:#?}",
        requests.iter().map(told).collect::<Vec<_>>()
    );
    for request in &requests {
        assert_eq!(request.method, "POST");
        assert_eq!(request.uri, "/hooks/status?token=abc123");
        assert!(
            request.header("content-type").is_some_and(|c| c.starts_with("application/json")),
            "{request:?}"
        );
        assert!(signature_valid(request), "bad signature: {}", request.as_text());
        let body = request.json();
        assert_eq!(body["type"], "message.status", "{body}");
        assert_eq!(body["message"]["id"], id.as_str(), "{body}");
        assert_eq!(body["message"]["status_callback"], callback_url.as_str(), "{body}");
    }
    let ids: Vec<String> = requests.iter().map(webhook_id).collect();
    assert!(ids.iter().all(|id| !id.is_empty()), "{ids:?}");
    assert_eq!((&ids[0], &ids[1]), (&ids[2], &ids[2]), "retries reuse the webhook-id");
    assert_eq!(ids[2..].iter().collect::<BTreeSet<_>>().len(), 3, "one id per event: {ids:?}");
    let changes: Vec<_> = requests.iter().map(told).collect();
    assert_eq!(
        changes,
        [
            change("sending", None),
            change("sending", None),
            change("sending", None),
            change("sent", None),
            change("sent", Some("delivered")),
        ]
    );
    let last = requests[4].json();
    assert!(
        last["message"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["source"] == "provider" && e["type"] == "delivered"),
        "the message as GET shows it: {last}"
    );
    assert_eq!(metric(&server, "switchboard_callbacks_total", &[("result", "failed")]), 2);
    assert_eq!(metric(&server, "switchboard_callbacks_total", &[("result", "delivered")]), 3);
}

/// Callbacks pending when the server is SIGKILLed (the receiver answering 500) are delivered
/// after a restart on the same SQLite file, the first with the `webhook-id` it was tried with.
/// The URL is the route's default `status_callback`.
#[test]
fn callbacks_survive_sigkill() {
    let receiver = FakeHttp::start(Reply::new(500, "down"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let callback_url = format!("{}/route-default", receiver.base);
    let config = format!(
        "[providers.p]\nkind = \"mock\"\n\n[routes.sms]\nproviders = [\"p\"]\nstatus_callback = \"{callback_url}\"\n"
    );
    std::fs::write(dir.path().join("routes.toml"), config).unwrap_or_else(|e| panic!("{e}"));
    let store = format!("sqlite://{}", dir.path().join("sb.db").display());
    let args = ["--store", store.as_str(), "--allow-loopback-callbacks"];
    let secret = callback_secret();
    let env = [("SWITCHBOARD_CALLBACK_SECRET", secret.as_str())];
    let mut server = Server::start_in(dir.path(), &args, &env);
    let message = json!({"channel": "sms", "from": "+12016661234", "to": "+18045550444", "body": "hi"});
    let id = send_native(&server, &message).unwrap_or_else(|| panic!("not accepted\n{}", server.logs()));
    let view = wait_final(&server, &id);
    assert_eq!(view["status"], "sent", "{view}");
    assert_eq!(view["status_callback"], callback_url.as_str(), "the route's default: {view}");

    // Both callbacks queued, the first tried and its retry recorded (not leased): pending.
    let mut db = stores::Db::open(&store);
    wait_for(
        "a failed callback recorded",
        Duration::from_secs(30),
        || server.logs(),
        || {
            let total = db.count("SELECT COUNT(*) FROM callbacks");
            let retried =
                db.count("SELECT COUNT(*) FROM callbacks WHERE attempts >= 1 AND leased_until IS NULL");
            (total == 2 && retried == 1).then_some(())
        },
    );
    server.kill();
    let failed = receiver.requests();
    assert!(!failed.is_empty());
    assert!(
        failed.iter().all(|r| told(r) == change("sending", None)),
        "only the first is tried while it fails"
    );

    receiver.set_default(Reply::new(204, ""));
    let server = Server::start_in(dir.path(), &args, &env);
    wait_for(
        "the pending callbacks delivered after the restart",
        Duration::from_secs(60),
        || server.logs(),
        || (metric(&server, "switchboard_callbacks_total", &[("result", "delivered")]) >= 2).then_some(()),
    );
    let requests = receiver.requests();
    let after: Vec<&Recorded> = requests[failed.len()..].iter().collect();
    assert_eq!(after.len(), 2, "{:#?}", after.iter().map(|r| told(r)).collect::<Vec<_>>());
    assert!(requests.iter().all(signature_valid), "every callback validly signed");
    assert_eq!(
        webhook_id(after[0]),
        webhook_id(&failed[0]),
        "the retry after the restart keeps its webhook-id"
    );
    assert_ne!(webhook_id(after[1]), webhook_id(after[0]));
    assert_eq!(
        after.iter().map(|r| told(r)).collect::<Vec<_>>(),
        [change("sending", None), change("sent", None)]
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM callbacks"), 0, "the outbox is empty");
}

/// Two instances sharing one PostgreSQL database: every callback of every message is delivered
/// exactly once (counted by `webhook-id` at the receiver), each message's in order.
#[test]
#[cfg_attr(no_postgres, ignore = "set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests")]
fn callbacks_once_from_two_instances_on_postgres() {
    const MESSAGES: usize = 12;
    let receiver = FakeHttp::start(Reply::new(200, ""));
    let backend = Backend::postgres("callbacks");
    let config = "[providers.p]\nkind = \"mock\"\n\n[routes.sms]\nproviders = [\"p\"]\n";
    let secret = callback_secret();
    let env = [("SWITCHBOARD_CALLBACK_SECRET", secret.as_str())];
    let servers = [
        backend.start_with_args(config, &["--allow-loopback-callbacks"], &env),
        backend.start_with_args(config, &["--allow-loopback-callbacks"], &env),
    ];
    let logs = || servers.iter().map(Server::logs).collect::<Vec<_>>().join("\n----\n");
    let callback_url = format!("{}/cb", receiver.base);
    let mut ids = Vec::new();
    for n in 0..MESSAGES {
        let server = &servers[n % 2];
        let message = json!({"channel": "sms", "from": "+12016661234", "to": format!("+1804555{n:04}"), "body": "hi", "status_callback": callback_url});
        ids.push(send_native(server, &message).unwrap_or_else(|| panic!("not accepted\n{}", server.logs())));
    }
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(wait_final(&servers[n % 2], id)["status"], "sent");
    }
    let delivered = || -> u64 {
        servers.iter().map(|s| metric(s, "switchboard_callbacks_total", &[("result", "delivered")])).sum()
    };
    wait_for("every callback delivered", Duration::from_secs(60), logs, || {
        (delivered() >= 2 * MESSAGES as u64).then_some(())
    });
    // Anything sent twice would have been sent by now (the outbox is polled every 200 ms).
    std::thread::sleep(Duration::from_secs(2));
    let requests = receiver.requests();
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    for request in &requests {
        assert!(signature_valid(request), "{}", request.as_text());
        *by_id.entry(webhook_id(request)).or_default() += 1;
    }
    let repeated: Vec<_> = by_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "callbacks sent more than once: {repeated:?}");
    assert_eq!(by_id.len(), 2 * MESSAGES, "sending and sent for each message");
    assert_eq!(delivered(), 2 * MESSAGES as u64);
    for id in &ids {
        let told: Vec<_> =
            requests.iter().filter(|r| r.json()["message"]["id"] == id.as_str()).map(told).collect();
        assert_eq!(told, [change("sending", None), change("sent", None)], "{id}");
    }
}

/// `status_callback` URLs that must be refused when the message is accepted (400, field
/// `status_callback`, the URL not echoed), with and without `--allow-loopback-callbacks`, and any
/// `status_callback` on a server without `SWITCHBOARD_CALLBACK_SECRET`.
#[test]
fn status_callback_urls_refused() {
    let config = "[providers.p]\nkind = \"mock\"\n\n[routes.sms]\nproviders = [\"p\"]\n";
    let secret = callback_secret();
    let env = [("SWITCHBOARD_CALLBACK_SECRET", secret.as_str())];
    let strict = Server::start(config, &["--store", "memory://"], &env);
    let loopback = Server::start(config, &["--store", "memory://", "--allow-loopback-callbacks"], &env);
    let unsigned = Server::start(config, &["--store", "memory://"], &[]);
    let send = |server: &Server, url: Option<&str>| {
        let mut message =
            json!({"channel": "sms", "from": "+12016661234", "to": "+18045550555", "body": "hi"});
        if let Some(url) = url {
            message["status_callback"] = json!(url);
        }
        let response =
            client().post(server.url("/v1/messages")).json(&message).send().unwrap_or_else(|e| panic!("{e}"));
        let status = response.status().as_u16();
        (status, response.text().unwrap_or_default())
    };
    let refused = |server: &Server, url: &str| {
        let (status, body) = send(server, Some(url));
        let error: Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(
            (status, error["error"]["field"].as_str()),
            (400, Some("status_callback")),
            "{url}: {body}"
        );
        assert!(!body.contains("tok3n-s3cret"), "the URL is not echoed: {body}");
    };
    for url in [
        "https://10.0.0.1/x?token=tok3n-s3cret",
        "https://192.168.1.20/x",
        "https://172.16.0.5/x",
        "https://100.64.0.1/x",
        "https://169.254.169.254/latest/meta-data/",
        "https://[fe80::1]/x",
        "https://[fd00::1]/x",
        "https://[::ffff:10.0.0.1]/x",
        "https://0.0.0.0/x",
        "https://127.0.0.1/x",
        "https://localhost/x",
        "http://127.0.0.1:9/x",
        "http://hooks.example.com/x",
        "ftp://hooks.example.com/x",
        "not a url",
        // Would be dropped silently by the URL parser: the URL called would not be the one given.
        " https://hooks.example.invalid/x",
        "https://hooks.example.invalid/x\n",
        "https://hooks.example.invalid/\u{0}",
        "https://hooks.exam\u{ad}ple.invalid/x",
    ] {
        refused(&strict, url);
    }
    for url in [
        "https://10.0.0.1/x?token=tok3n-s3cret",
        "http://10.0.0.1/x",
        "https://169.254.169.254/x",
        "http://hooks.example.com/x",
    ] {
        refused(&loopback, url);
    }
    refused(&unsigned, "https://hooks.example.invalid/x");

    // What may be given: https to a public host everywhere with a secret; http to loopback with
    // the flag; nothing at all without a secret.
    assert_eq!(send(&strict, Some("https://hooks.example.invalid/x")).0, 202);
    assert_eq!(send(&loopback, Some("http://127.0.0.1:9/x")).0, 202);
    assert_eq!(send(&loopback, Some("https://hooks.example.invalid/x")).0, 202);
    assert_eq!(send(&unsigned, None).0, 202);
}

//! A table of bad requests, each answered with its specific 4xx and error code, none stored.

mod common;

use common::Server;
use serde_json::Value;

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

const SMS: &str = r#"{"from":"+12016661234","to":"+18045551234","type":"sms","body":"Hello","attachments":null,"timestamp":"2024-11-01T14:00:00Z"}"#;
const MMS: &str = r#"{"from":"+12016661234","to":"+18045551234","type":"mms","body":"Look","attachments":["https://example.com/a.png"],"timestamp":"2024-11-01T14:00:00Z"}"#;
const EMAIL: &str = r#"{"from":"user@usehatchapp.com","to":"contact@gmail.com","body":"<b>hi</b>","attachments":[],"timestamp":"2024-11-01T14:00:00Z"}"#;
const NATIVE: &str = r#"{"channel":"email","from":"a@example.com","to":"b@example.com","subject":"Hi","body":"x","tags":["otp"]}"#;

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: String,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
}

fn case(
    name: &'static str,
    path: &'static str,
    body: String,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
) -> Case {
    Case { name, method: "POST", path, content_type: Some("application/json"), body, status, code, field }
}

fn cases() -> Vec<Case> {
    let sms = "/api/messages/sms";
    let email = "/api/messages/email";
    let native = "/v1/messages";
    let field = |name: &'static str, path: &'static str, body: String, field: &'static str| {
        case(name, path, body, 400, "invalid_field", Some(field))
    };
    vec![
        case("not JSON", sms, "hello".into(), 400, "invalid_json", None),
        case("truncated JSON", sms, SMS[..40].into(), 400, "invalid_json", None),
        case("JSON array", sms, "[]".into(), 400, "invalid_json", None),
        case("trailing garbage", sms, format!("{SMS}}}"), 400, "invalid_json", None),
        case("empty body", sms, String::new(), 400, "invalid_json", None),
        field("missing to", sms, SMS.replace(r#""to":"+18045551234","#, ""), "to"),
        field("null body", sms, SMS.replace(r#""Hello""#, "null"), "body"),
        field("number as body", sms, SMS.replace(r#""Hello""#, "42"), "body"),
        field("empty body text", sms, SMS.replace(r#""Hello""#, r#""   ""#), "body"),
        field("sms over 1600 chars", sms, SMS.replace("Hello", &"x".repeat(1601)), "body"),
        field("to not E.164", sms, SMS.replace("+18045551234", "8045551234x"), "to"),
        field("from too long", sms, SMS.replace("+12016661234", "+1234567890123456"), "from"),
        field("unknown type", sms, SMS.replace(r#""sms""#, r#""fax""#), "type"),
        field(
            "mms without attachments",
            sms,
            MMS.replace(r#"["https://example.com/a.png"]"#, "[]"),
            "attachments",
        ),
        field(
            "attachment not a URL",
            sms,
            MMS.replace("https://example.com/a.png", "file:///etc/passwd"),
            "attachments",
        ),
        field(
            "attachments not an array",
            sms,
            MMS.replace(r#"["https://example.com/a.png"]"#, r#""https://example.com/a.png""#),
            "attachments",
        ),
        field(
            "sms with attachments",
            sms,
            SMS.replace("null", r#"["https://example.com/a.png"]"#),
            "attachments",
        ),
        field("bad timestamp", sms, SMS.replace("2024-11-01T14:00:00Z", "yesterday"), "timestamp"),
        field(
            "email to not an address",
            email,
            EMAIL.replace("contact@gmail.com", "contact.gmail.com"),
            "to",
        ),
        field(
            "email from with CRLF",
            email,
            EMAIL.replace("user@usehatchapp.com", "user@usehatchapp.com\\r\\nBcc: x@evil.com"),
            "from",
        ),
        field(
            "native subject with LF",
            native,
            NATIVE.replace(r#""Hi""#, r#""Hi\nBcc: x@evil.com""#),
            "subject",
        ),
        field("native unknown channel", native, NATIVE.replace(r#""email""#, r#""pager""#), "channel"),
        field("native missing channel", native, NATIVE.replace(r#""channel":"email","#, ""), "channel"),
        field("native tags not strings", native, NATIVE.replace(r#"["otp"]"#, "[1]"), "tags"),
        field("native empty tag", native, NATIVE.replace(r#"["otp"]"#, r#"[""]"#), "tags"),
        Case {
            name: "text/plain",
            content_type: Some("text/plain"),
            body: SMS.into(),
            status: 415,
            code: "unsupported_media_type",
            field: None,
            method: "POST",
            path: sms,
        },
        Case {
            name: "no content type",
            content_type: None,
            body: SMS.into(),
            status: 415,
            code: "unsupported_media_type",
            field: None,
            method: "POST",
            path: sms,
        },
        case(
            "body over the limit",
            sms,
            format!(r#"{{"pad":"{}"}}"#, "x".repeat(300 * 1024)),
            413,
            "payload_too_large",
            None,
        ),
        Case {
            name: "unknown path",
            method: "POST",
            path: "/api/messages/fax",
            content_type: Some("application/json"),
            body: SMS.into(),
            status: 404,
            code: "not_found",
            field: None,
        },
        Case {
            name: "GET on a send endpoint",
            method: "GET",
            path: sms,
            content_type: None,
            body: String::new(),
            status: 405,
            code: "method_not_allowed",
            field: None,
        },
        Case {
            name: "DELETE a message",
            method: "DELETE",
            path: "/v1/messages/abc",
            content_type: None,
            body: String::new(),
            status: 405,
            code: "method_not_allowed",
            field: None,
        },
        Case {
            name: "unknown message id",
            method: "GET",
            path: "/v1/messages/abc",
            content_type: None,
            body: String::new(),
            status: 404,
            code: "not_found",
            field: None,
        },
    ]
}

#[test]
fn every_bad_request_gets_its_specific_4xx_and_stores_nothing() {
    let server = Server::start(CONFIG, &[], &[]);
    let client = common::client();
    let cases = cases();
    assert!(cases.iter().filter(|c| c.status < 500).count() >= 25);
    let mut failures = Vec::new();
    for c in &cases {
        let method = reqwest::Method::from_bytes(c.method.as_bytes()).unwrap_or(reqwest::Method::POST);
        let mut request = client.request(method, server.url(c.path)).body(c.body.clone());
        if let Some(content_type) = c.content_type {
            request = request.header("content-type", content_type);
        }
        let Ok(response) = request.send() else {
            failures.push(format!("{}: no response", c.name));
            continue;
        };
        let status = response.status().as_u16();
        let body: Value = response.json().unwrap_or(Value::Null);
        let got = (
            status,
            body["error"]["code"].as_str().map(str::to_owned),
            body["error"]["field"].as_str().map(str::to_owned),
        );
        let expected = (c.status, Some(c.code.to_owned()), c.field.map(str::to_owned));
        if got != expected {
            failures.push(format!("{}: expected {expected:?}, got {got:?} {body}", c.name));
        }
        if body["error"]["message"].as_str().is_none_or(str::is_empty) {
            failures.push(format!("{}: no message", c.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let metrics = client.get(server.url("/metrics")).send().and_then(|r| r.text()).unwrap_or_default();
    assert!(!metrics.contains("switchboard_messages_accepted_total{"), "something was accepted:\n{metrics}");

    // The valid forms of the same requests are accepted.
    for (path, body) in [
        ("/api/messages/sms", SMS),
        ("/api/messages/sms", MMS),
        ("/api/messages/email", EMAIL),
        ("/v1/messages", NATIVE),
    ] {
        let status = client
            .post(server.url(path))
            .header("content-type", "application/json; charset=utf-8")
            .body(body)
            .send()
            .map(|r| r.status().as_u16());
        assert_eq!(status.ok(), Some(202), "{path} {body}");
    }
}

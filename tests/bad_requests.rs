//! A table of bad requests, each answered with its specific 4xx and error code, none stored.

mod common;

use common::Server;
use serde_json::{json, Value};

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
        // Control characters: none in any field, but line breaks and tabs in a body.
        field("body with NUL", sms, SMS.replace("Hello", r"Hel\u0000lo"), "body"),
        field("body with NEL (U+0085)", native, NATIVE.replace(r#""x""#, r#""x\u0085""#), "body"),
        field("body with ESC", email, EMAIL.replace("<b>hi</b>", r"\u001b[31mhi"), "body"),
        field("body with DEL", native, NATIVE.replace(r#""x""#, r#""x\u007f""#), "body"),
        field("subject with NUL", native, NATIVE.replace(r#""Hi""#, r#""H\u0000i""#), "subject"),
        field("subject with a tab", native, NATIVE.replace(r#""Hi""#, r#""H\ti""#), "subject"),
        field("subject with NEL (U+0085)", native, NATIVE.replace(r#""Hi""#, r#""H\u0085i""#), "subject"),
        field(
            "from with NUL",
            email,
            EMAIL.replace("user@usehatchapp.com", r"user@usehatchapp.com\u0000"),
            "from",
        ),
        field("to with a tab", native, NATIVE.replace("b@example.com", r"b@example.com\t"), "to"),
        field("tag with NUL", native, NATIVE.replace(r#"["otp"]"#, r#"["o\u0000tp"]"#), "tags"),
        field("attachment with NUL", sms, MMS.replace("a.png", r"a\u0000.png"), "attachments"),
        case(
            "repeated key",
            native,
            NATIVE.replace(r#""to":"b@example.com","#, r#""to":"b@example.com","to":"c@example.com","#),
            400,
            "duplicate_field",
            Some("to"),
        ),
        case(
            "repeated unknown key",
            sms,
            SMS.replace(r#""type""#, r#""x":1,"x":2,"type""#),
            400,
            "duplicate_field",
            Some("x"),
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
    assert_eq!(common::stored_messages(&server.dir().join("switchboard.db")), 0, "something was stored");

    // The valid forms of the same requests are accepted.
    for (path, body) in [
        ("/api/messages/sms", SMS),
        ("/api/messages/sms", MMS),
        ("/api/messages/email", EMAIL),
        ("/v1/messages", NATIVE),
        ("/v1/messages", &NATIVE.replace(r#""x""#, r#""line\r\nbreak\tand tab""#)),
    ] {
        let status = client
            .post(server.url(path))
            .header("content-type", "application/json; charset=utf-8")
            .body(body.to_owned())
            .send()
            .map(|r| r.status().as_u16());
        assert_eq!(status.ok(), Some(202), "{path} {body}");
    }
}

/// Each size limit of `specs/http-api.md`: a message at the limit is accepted, one a unit over
/// it is refused with 400 `invalid_field` naming the field, and only the accepted are stored.
/// Lengths are counted in characters (two-byte ones here) except a URL's, in bytes.
#[test]
fn limits_accept_the_limit_and_refuse_one_more() {
    let server = Server::start(CONFIG, &[], &[]);
    let email = |subject: String, tags: Vec<String>| json!({"channel": "email", "from": "a@example.com", "to": "b@example.com", "subject": subject, "body": "x", "tags": tags});
    let mms = |attachments: Vec<String>| json!({"channel": "mms", "from": "+12016661234", "to": "+18045551234", "body": "x", "attachments": attachments});
    let url = |n: usize| format!("https://example.com/{n}.png");
    let long_url = |bytes: usize| {
        let base = "https://example.com/";
        format!("{base}{}", "a".repeat(bytes - base.len()))
    };
    let tags = |count: usize| (0..count).map(|n| format!("t{n}")).collect::<Vec<_>>();
    let sms = |chars: usize| json!({"channel": "sms", "from": "+12016661234", "to": "+18045551234", "body": "é".repeat(chars)});
    // (what, at the limit, one over, the field named)
    let limits: Vec<(&str, Value, Value, &str)> = vec![
        (
            "subject of 998 characters",
            email("é".repeat(998), vec![]),
            email("é".repeat(999), vec![]),
            "subject",
        ),
        ("20 tags", email("s".into(), tags(20)), email("s".into(), tags(21)), "tags"),
        (
            "a tag of 64 characters",
            email("s".into(), vec!["é".repeat(64)]),
            email("s".into(), vec!["é".repeat(65)]),
            "tags",
        ),
        ("10 attachments", mms((0..10).map(url).collect()), mms((0..11).map(url).collect()), "attachments"),
        (
            "an attachment URL of 2048 bytes",
            mms(vec![long_url(2048)]),
            mms(vec![long_url(2049)]),
            "attachments",
        ),
        ("an SMS of 1600 characters", sms(1600), sms(1601), "body"),
    ];
    let post = |body: &Value| {
        let response = common::client().post(server.url("/v1/messages")).json(body).send();
        let Ok(response) = response else { panic!("no answer") };
        (response.status().as_u16(), response.json::<Value>().unwrap_or(Value::Null))
    };
    for (what, at_limit, over, field) in &limits {
        let (status, answer) = post(at_limit);
        assert_eq!(status, 202, "{what}: {answer}");
        let (status, answer) = post(over);
        let got = (status, answer["error"]["code"].as_str(), answer["error"]["field"].as_str());
        assert_eq!(got, (400, Some("invalid_field"), Some(*field)), "one over {what}: {answer}");
    }
    let stored = common::stored_messages(&server.dir().join("switchboard.db"));
    assert_eq!(
        stored,
        i64::try_from(limits.len()).unwrap_or(0),
        "only the messages at the limits are stored"
    );
}

/// The status and the JSON body of the answer to raw `request` bytes (written whole first, as
/// a client that does not read while sending would).
fn raw(server: &Server, request: &[u8]) -> (u16, Value) {
    use std::io::{Read, Write};
    let address = server.base.trim_start_matches("http://");
    let Ok(mut stream) = std::net::TcpStream::connect(address) else { return (0, Value::Null) };
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(20)));
    if let Err(error) = stream.write_all(request) {
        return (0, Value::String(format!("write: {error}")));
    }
    let mut answer = Vec::new();
    if let Err(error) = stream.read_to_end(&mut answer) {
        return (0, Value::String(format!("read: {error}, after {:?}", String::from_utf8_lossy(&answer))));
    }
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, body)| body).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::String(answer.into_owned())))
}

/// Heads the server refuses before any handler, some of them inside hyper: each gets its
/// status and the JSON error body, and a client that writes everything before reading gets
/// to read it.
#[test]
fn bad_heads_get_their_status_with_the_json_error_body() {
    let server = Server::start(CONFIG, &["--store", "memory://"], &[]);
    let get = |target: &str, headers: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n").into_bytes()
    };
    let post = |headers: &str, body: &[u8]| {
        let mut request = format!(
            "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}Connection: close\r\n\r\n"
        )
        .into_bytes();
        request.extend_from_slice(body);
        request
    };
    let many: String = (0..101).map(|i| format!("X-H{i}: y\r\n")).collect();
    let huge = format!("X-Big: {}\r\n", "a".repeat(1_000_000));
    let native = NATIVE.as_bytes();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("101 headers", get("/healthz", &many), 431, "headers_too_large"),
        ("a 1 MB header", get("/healthz", &huge), 431, "headers_too_large"),
        (
            "a 17 KiB header",
            get("/healthz", &format!("X-Big: {}\r\n", "a".repeat(17 * 1024))),
            431,
            "headers_too_large",
        ),
        ("a 9 KiB URI", get(&format!("/{}", "a".repeat(9 * 1024)), ""), 414, "uri_too_long"),
        ("a 70 KiB URI", get(&format!("/{}", "a".repeat(70 * 1024)), ""), 414, "uri_too_long"),
        ("a 1 MiB URI", get(&format!("/{}", "a".repeat(1024 * 1024)), ""), 414, "uri_too_long"),
        ("a header without a colon", get("/healthz", "Bad Header\r\n"), 400, "malformed_request"),
        (
            "a malformed chunked body",
            post("Transfer-Encoding: chunked\r\n", b"zz\r\n{}\r\n0\r\n\r\n"),
            400,
            "invalid_body",
        ),
        (
            "a gzip body",
            post(&format!("Content-Encoding: gzip\r\nContent-Length: {}\r\n", native.len()), native),
            415,
            "unsupported_content_encoding",
        ),
        (
            "two Authorization headers",
            get("/healthz", "Authorization: Bearer a\r\nAuthorization: Bearer b\r\n"),
            400,
            "invalid_field",
        ),
        (
            "a 6 MiB body written whole",
            post("Content-Length: 6291456\r\n", &vec![b' '; 6 * 1024 * 1024]),
            413,
            "payload_too_large",
        ),
    ];
    let mut failures = Vec::new();
    for (name, request, status, code) in &cases {
        let (got, body) = raw(&server, request);
        if (got, body["error"]["code"].as_str()) != (*status, Some(*code))
            || body["error"]["message"].as_str().is_none_or(str::is_empty)
        {
            let shown: String = body.to_string().chars().take(300).collect();
            failures.push(format!("{name}: expected {status} {code}, got {got} {shown}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let identity =
        post(&format!("Content-Encoding: identity\r\nContent-Length: {}\r\n", native.len()), native);
    assert_eq!(raw(&server, &identity).0, 202);
    assert_eq!(raw(&server, &get("/healthz", "")).0, 200);
}

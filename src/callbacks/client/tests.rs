use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const ID: &str = "msg_01J9Z8Q3W4";
const TIMESTAMP: i64 = 1_760_000_000;
const BODY: &[u8] = br#"{"type":"message.status","message":{"id":"m1","status":"sent"}}"#;

#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A receiver on 127.0.0.1 that records every request. The path picks the answer.
struct Receiver {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Receiver {
    async fn start() -> Self {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = Arc::clone(&seen);
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let record = Arc::clone(&record);
            async move {
                let path = uri.path().to_owned();
                if let Ok(mut seen) = record.lock() {
                    seen.push(Seen { path: path.clone(), headers, body });
                }
                answer(&path).await
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let port = listener.local_addr().unwrap_or_else(|e| panic!("{e}")).port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { port, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|seen| seen.clone()).unwrap_or_default()
    }
}

async fn answer(path: &str) -> Response {
    match path {
        "/ok" => StatusCode::OK.into_response(),
        "/accepted" => (StatusCode::ACCEPTED, "queued").into_response(),
        "/no-content" => StatusCode::NO_CONTENT.into_response(),
        "/big" => (StatusCode::OK, vec![b'x'; 1024 * 1024]).into_response(),
        "/redirect" => (StatusCode::FOUND, [("location", "/ok")]).into_response(),
        "/moved" => (StatusCode::PERMANENT_REDIRECT, [("location", "/ok")]).into_response(),
        "/busy" => (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "7")], "try later").into_response(),
        "/gone" => StatusCode::GONE.into_response(),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::OK.into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

fn callbacks(allow_loopback: bool) -> Callbacks {
    callbacks_with(allow_loopback, DEFAULT_TIMEOUT)
}

fn callbacks_with(allow_loopback: bool, timeout: Duration) -> Callbacks {
    let secret = CallbackSecret::parse(SECRET).unwrap_or_else(|e| panic!("{e}"));
    Callbacks::with_timeout(secret, allow_loopback, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// The outcome in short: `"ok"`, `"status 503"`, or the error's [`DeliveryError::kind`].
fn outcome(result: &Result<(), DeliveryError>) -> String {
    match result {
        Ok(()) => "ok".into(),
        Err(DeliveryError::Status { status, .. }) => format!("status {status}"),
        Err(error) => error.kind().into(),
    }
}

/// Delivers to the receiver's `path` with loopback allowed and compares the outcome.
async fn check(receiver: &Receiver, path: &str, expected: &str) {
    let result = callbacks(true).deliver(&receiver.url(path), ID, TIMESTAMP, BODY).await;
    assert_eq!(outcome(&result), expected, "{path}: {result:?}");
}

/// The receiver's side of Standard Webhooks verification, written apart from [`sign`].
fn verifies(headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let Some(key) = SECRET.strip_prefix("whsec_") else { return false };
    let Ok(key) = base64::engine::general_purpose::STANDARD.decode(key) else { return false };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else { return false };
    mac.update(format!("{}.{}.", header("webhook-id"), header("webhook-timestamp")).as_bytes());
    mac.update(body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    header("webhook-signature").split(' ').any(|entry| entry == format!("v1,{expected}"))
}

#[tokio::test]
async fn delivers_signed_with_the_standard_headers() {
    let receiver = Receiver::start().await;
    check(&receiver, "/ok", "ok").await;
    let seen = receiver.seen();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    let header = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert_eq!(header("webhook-id"), ID);
    assert_eq!(header("webhook-timestamp"), TIMESTAMP.to_string());
    assert!(header("webhook-signature").starts_with("v1,"), "{}", header("webhook-signature"));
    assert_eq!(header("content-type"), "application/json");
    assert_eq!(header("user-agent"), concat!("switchboard/", env!("CARGO_PKG_VERSION")));
    assert_eq!(&request.body[..], BODY);
    assert!(verifies(&request.headers, &request.body));
    // The check itself rejects a tampered body.
    assert!(!verifies(&request.headers, b"{}"));
}

#[tokio::test]
async fn outcomes() {
    let receiver = Receiver::start().await;
    check(&receiver, "/ok", "ok").await;
    check(&receiver, "/accepted", "ok").await;
    check(&receiver, "/no-content", "ok").await;
    check(&receiver, "/big", "ok").await;
    check(&receiver, "/busy", "status 503").await;
    check(&receiver, "/gone", "status 410").await;
    check(&receiver, "/missing", "status 404").await;
    // Redirects are failures, not followed: the receiver saw only the redirecting request.
    let before = receiver.seen().len();
    check(&receiver, "/redirect", "status 302").await;
    check(&receiver, "/moved", "status 308").await;
    let paths: Vec<String> = receiver.seen()[before..].iter().map(|s| s.path.clone()).collect();
    assert_eq!(paths, ["/redirect", "/moved"]);
}

#[tokio::test]
async fn status_errors_keep_code_and_retry_after() {
    let receiver = Receiver::start().await;
    let result = callbacks(true).deliver(&receiver.url("/busy"), ID, TIMESTAMP, BODY).await;
    let error = result.err().unwrap_or(DeliveryError::InvalidId);
    assert_eq!(error.status(), Some(503));
    assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
    assert_eq!(error.to_string(), "the receiver answered HTTP 503");
    let result = callbacks(true).deliver(&receiver.url("/gone"), ID, TIMESTAMP, BODY).await;
    assert_eq!(result.err().and_then(|e| e.retry_after()), None);
}

#[tokio::test]
async fn timeout_is_a_failure() {
    let receiver = Receiver::start().await;
    let result = callbacks_with(true, Duration::from_millis(200))
        .deliver(&receiver.url("/slow"), ID, TIMESTAMP, BODY)
        .await;
    assert_eq!(outcome(&result), "timeout", "{result:?}");
}

#[tokio::test]
async fn connection_refused_is_a_failure_without_the_url() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        listener.local_addr().unwrap_or_else(|e| panic!("{e}")).port()
    };
    let url = format!("http://127.0.0.1:{port}/cb?token=tok_SECRET");
    let result = callbacks(true).deliver(&url, ID, TIMESTAMP, BODY).await;
    assert_eq!(outcome(&result), "connect", "{result:?}");
    let message = result.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(!message.contains("tok_SECRET") && !message.contains("/cb"), "{message}");
}

#[tokio::test]
async fn loopback_is_refused_without_the_flag() {
    let receiver = Receiver::start().await;
    let plain = receiver.url("/ok");
    let tls = plain.replace("http://", "https://");
    let named = format!("https://localhost:{}/ok", receiver.port);
    let refused_url = |result: Result<(), DeliveryError>| match result {
        Err(DeliveryError::Refused(error)) => Some(error),
        _ => None,
    };
    let callbacks = callbacks(false);
    // The URL check, before any request.
    assert_eq!(refused_url(callbacks.deliver(&plain, ID, TIMESTAMP, BODY).await), Some(UrlError::PlainHttp));
    assert_eq!(refused_url(callbacks.deliver(&tls, ID, TIMESTAMP, BODY).await), Some(UrlError::Loopback));
    assert_eq!(refused_url(callbacks.deliver(&named, ID, TIMESTAMP, BODY).await), Some(UrlError::Loopback));
    // At connect time, past the URL check: the IP host judged before the request, the name by
    // the resolver.
    let parse = |url: &str| Url::parse(url).unwrap_or_else(|e| panic!("{e}"));
    for url in [&tls, &named] {
        let result = callbacks.post(parse(url), ID, TIMESTAMP, BODY).await;
        assert!(
            matches!(result, Err(DeliveryError::RefusedAddress(AddressClass::Loopback))),
            "{url}: {result:?}"
        );
    }
    let mapped = format!("https://[::ffff:127.0.0.1]:{}/ok", receiver.port);
    let result = callbacks.post(parse(&mapped), ID, TIMESTAMP, BODY).await;
    assert!(matches!(result, Err(DeliveryError::RefusedAddress(AddressClass::Loopback))), "{result:?}");
    assert!(receiver.seen().is_empty(), "nothing may reach the receiver");

    // With the flag, the same receiver by address and by name.
    check(&receiver, "/ok", "ok").await;
    let named_plain = format!("http://localhost:{}/ok", receiver.port);
    let result = self::callbacks(true).deliver(&named_plain, ID, TIMESTAMP, BODY).await;
    assert_eq!(outcome(&result), "ok", "{result:?}");
}

#[tokio::test]
async fn webhook_ids_are_checked() {
    let receiver = Receiver::start().await;
    for id in ["", "a.b", "msg 1", "msg\n1", "é", &"x".repeat(257)] {
        let result = callbacks(true).deliver(&receiver.url("/ok"), id, TIMESTAMP, BODY).await;
        assert_eq!(outcome(&result), "invalid_id", "{id:?}");
    }
    for id in ["m", "msg_01J9Z8Q3W4", "0190a6c3-7b1e-7c3a-9d2e-3f4a5b6c7d8e:3", &"x".repeat(256)] {
        let result = callbacks(true).deliver(&receiver.url("/ok"), id, TIMESTAMP, BODY).await;
        assert_eq!(outcome(&result), "ok", "{id:?}");
    }
}

async fn check_lookup(host: &str, allow_loopback: bool, expected: Result<(), AddressClass>) {
    let got = GuardedResolver { allow_loopback }.lookup(host.to_owned()).await;
    match (&got, expected) {
        (Ok(addresses), Ok(())) => {
            assert!(!addresses.is_empty(), "{host}");
            for address in addresses {
                assert_eq!(refused(address.ip(), allow_loopback), None, "{host}: {address}");
            }
        }
        (Err(error), Err(class)) => {
            let refusal = error.downcast_ref::<RefusedAddress>().map(|r| r.0);
            assert_eq!(refusal, Some(class), "{host}: {error}");
        }
        _ => panic!("{host} (loopback {allow_loopback}): got {got:?}, expected {expected:?}"),
    }
}

#[tokio::test]
async fn resolver_keeps_only_allowed_addresses() {
    check_lookup("localhost", false, Err(AddressClass::Loopback)).await;
    check_lookup("localhost", true, Ok(())).await;
    check_lookup("127.0.0.1", false, Err(AddressClass::Loopback)).await;
    check_lookup("127.0.0.1", true, Ok(())).await;
    check_lookup("::1", false, Err(AddressClass::Loopback)).await;
    for flag in [false, true] {
        check_lookup("10.0.0.1", flag, Err(AddressClass::Private)).await;
        check_lookup("169.254.169.254", flag, Err(AddressClass::LinkLocal)).await;
        check_lookup("::ffff:192.168.1.1", flag, Err(AddressClass::Private)).await;
        check_lookup("fd00::1", flag, Err(AddressClass::UniqueLocal)).await;
        check_lookup("0.0.0.0", flag, Err(AddressClass::Unspecified)).await;
        check_lookup("93.184.216.34", flag, Ok(())).await;
    }
}

#[test]
fn debug_does_not_show_the_secret() {
    let shown = format!("{:?}", callbacks(false));
    assert!(!shown.contains("MfKQ9r8G"), "{shown}");
}

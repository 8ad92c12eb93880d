//! What the HTTP kinds (`twilio`, `sendgrid`, `webhook`) share: a pooled client per provider
//! instance, the endpoint URL check, capped response reading, and the mapping from a transport
//! failure or an HTTP status to a [`SendError`].

use std::sync::Once;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{RequestBuilder, StatusCode, Url};

use crate::{SendError, SettingIssue, SettingsError};

/// Response bodies are read up to this many bytes; the rest is dropped unread.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// One client per provider instance: its own keep-alive pool, no redirects (a provider API
/// never needs one, and following one would re-send credentials elsewhere), a bounded connect.
/// The attempt as a whole is bounded by the dispatcher (`timeout_ms`), the one place it is.
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, SettingsError> {
    install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(64)
        .tcp_keepalive(Duration::from_secs(30))
        .tcp_nodelay(true)
        .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|error| SettingsError::other(format!("cannot set up the HTTP client: {error}")))
}

/// reqwest is built without a bundled crypto provider (aws-lc would need a long C build): TLS
/// uses ring, installed process-wide on first use. Anything else in the process building a
/// reqwest client (tests) calls this first.
pub fn install_crypto_provider() {
    static CRYPTO: Once = Once::new();
    CRYPTO.call_once(|| {
        let _already_installed = rustls::crypto::ring::default_provider().install_default();
    });
}

/// An endpoint URL setting: absolute http(s), https unless the host is a loopback address
/// (local test servers), no credentials or fragment in it.
pub(crate) fn check_url(field: &str, value: &str) -> Option<SettingIssue> {
    let url = match Url::parse(value) {
        Ok(url) => url,
        Err(error) => {
            return Some(
                SettingIssue::new(field, format!("`{field}` is not a valid URL ({error})"))
                    .with_help("write an absolute URL such as https://api.example.com"),
            )
        }
    };
    if !matches!(url.scheme(), "https" | "http") {
        return Some(SettingIssue::new(
            field,
            format!("`{field}` must be an https URL, got scheme `{}`", url.scheme()),
        ));
    }
    if url.scheme() == "http" && !is_loopback(&url) {
        return Some(
            SettingIssue::new(
                field,
                format!("`{field}` must use https (plain http only for loopback hosts)"),
            )
            .with_help("credentials and message content must not cross the network unencrypted"),
        );
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Some(
            SettingIssue::new(field, format!("`{field}` must not carry credentials"))
                .with_help("use the kind's credential settings, which are read from the environment"),
        );
    }
    if url.fragment().is_some() || (url.query().is_some() && field == "base_url") {
        return Some(SettingIssue::new(field, format!("`{field}` must not have a query or fragment")));
    }
    None
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// `base` + `path`, where `base` may or may not end in `/` and `path` starts with one.
pub(crate) fn join(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

/// A provider's answer, with the body read up to [`MAX_RESPONSE_BYTES`].
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// The body was longer than the cap (or broke off): `body` holds only its start.
    pub truncated: bool,
}

/// Sends the request and reads the answer. Transport failures are classified by how far the
/// request got: refused before anything was written → not sent; anything later → ambiguous.
pub(crate) async fn execute(request: RequestBuilder) -> Result<Answer, SendError> {
    let mut response = request.send().await.map_err(transport_error)?;
    let status = response.status();
    let headers = std::mem::take(response.headers_mut());
    let mut body = Vec::new();
    let mut truncated = false;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_RESPONSE_BYTES - body.len();
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    truncated = true;
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            // The status is known: the body breaking off changes nothing about the outcome.
            Err(_) => {
                truncated = true;
                break;
            }
        }
    }
    Ok(Answer { status, headers, body, truncated })
}

/// A failure before any answer. reqwest's message names the URL, which may carry a secret
/// (a webhook URL from the environment): it is left out.
fn transport_error(error: reqwest::Error) -> SendError {
    let error = error.without_url();
    if error.is_timeout() {
        SendError::Timeout
    } else if error.is_connect() {
        SendError::NotSent { reason: format!("cannot connect: {}", source_chain(&error)) }
    } else {
        SendError::Ambiguous { code: "transport".into(), reason: source_chain(&error) }
    }
}

fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The error for a non-2xx answer. `detail` is the provider's own error code and message,
/// parsed from its documented error body when there is one.
pub(crate) fn status_error(answer: &Answer, detail: Option<(String, String)>) -> SendError {
    let status = answer.status;
    let (code, reason) = detail.unwrap_or_else(|| (status.as_u16().to_string(), fallback_reason(answer)));
    let reason = format!("HTTP {}: {reason}", status.as_u16());
    match status.as_u16() {
        429 => SendError::RateLimited { retry_after: retry_after(&answer.headers, SystemTime::now()) },
        401 | 403 => SendError::Misconfigured { code, reason },
        400..=499 => SendError::Rejected { code, reason },
        // 5xx, and anything else a provider API does not document (1xx, 3xx): the request was
        // delivered and we cannot tell what became of it.
        _ => SendError::Ambiguous { code, reason },
    }
}

/// A body that is not in the provider's error format, as text. The dispatcher cleans and
/// shortens it (see [`crate::scrub`]); a body cut at [`MAX_RESPONSE_BYTES`] loses its last,
/// possibly partial, word first: half a credential would not be recognised.
fn fallback_reason(answer: &Answer) -> String {
    let text = String::from_utf8_lossy(&answer.body);
    let text = if answer.truncated {
        text.trim_end_matches(|c: char| !c.is_whitespace() && !c.is_control())
    } else {
        &text
    };
    let text = text.trim();
    let status = answer.status.canonical_reason().unwrap_or("no reason given");
    match (text.is_empty(), answer.truncated) {
        (true, false) => status.to_owned(),
        (true, true) => format!("{status} (body over {MAX_RESPONSE_BYTES} bytes)"),
        (false, true) => format!("(body over {MAX_RESPONSE_BYTES} bytes) {text}"),
        (false, false) => text.to_owned(),
    }
}

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3); nonsense is ignored.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    parse_retry_after(headers.get(RETRY_AFTER)?.to_str().ok()?, now)
}

/// Delay-seconds (digits only; more than fit in a `u64` saturate to `u64::MAX`) or an HTTP-date
/// (a past one is zero); anything else is `None`. Never panics: the caller caps the result
/// with the provider's `max_retry_after_ms`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A header as text, if present and valid.
pub(crate) fn header<'a>(answer: &'a Answer, name: &str) -> Option<&'a str> {
    answer.headers.get(name)?.to_str().ok().map(str::trim).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_retry(value: &str, expected: Option<u64>) {
        let now =
            httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap_or(SystemTime::UNIX_EPOCH);
        assert_eq!(parse_retry_after(value, now), expected.map(Duration::from_secs), "{value:?}");
    }

    #[test]
    fn retry_after_forms() {
        let max = Some(u64::MAX);
        check_retry("120", Some(120));
        check_retry(" 0 ", Some(0));
        check_retry("007", Some(7));
        check_retry("Sun, 06 Nov 1994 08:50:07 GMT", Some(30));
        check_retry("Sun, 06 Nov 1994 08:40:00 GMT", Some(0));
        check_retry("Fri, 31 Dec 9999 23:59:59 GMT", Some(253_402_300_799 - 784_111_777));
        // Too large to hold: saturated (the dispatcher caps it).
        check_retry("18446744073709551615", max);
        check_retry("18446744073709551616", max);
        check_retry("99999999999999999999999", max);
        check_retry("100000000000000000", Some(100_000_000_000_000_000));
        check_retry("-5", None);
        check_retry("+5", None);
        check_retry("1.5", None);
        check_retry("1e13", None);
        check_retry("1e17", None);
        check_retry("5 s", None);
        check_retry("soon", None);
        check_retry("", None);
        check_retry("   ", None);
        check_retry("\u{660}", None);
        check_retry("Sun, 06 Nov 1994 25:61:61 GMT", None);
    }

    #[test]
    fn retry_after_never_panics() {
        let now = SystemTime::now();
        let mut inputs: Vec<String> = (0..=u8::MAX).map(|b| char::from(b).to_string().repeat(3)).collect();
        inputs.extend(["9".repeat(10_000), "Sun, 06 Nov 1994 08:49:37 GMT".repeat(3), "\u{FFFF}".into()]);
        for input in inputs {
            let _ = parse_retry_after(&input, now);
            let _ = parse_retry_after(&input, SystemTime::UNIX_EPOCH);
        }
    }

    fn check_url_issue(value: &str, expected: Option<&str>) {
        let got = check_url("base_url", value).map(|issue| issue.message);
        match (got, expected) {
            (None, None) => {}
            (Some(message), Some(part)) => assert!(message.contains(part), "{value}: {message}"),
            (got, _) => panic!("{value}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn endpoint_urls() {
        check_url_issue("https://api.twilio.com", None);
        check_url_issue("https://api.twilio.com/", None);
        check_url_issue("http://127.0.0.1:9090", None);
        check_url_issue("http://localhost:9090/x", None);
        check_url_issue("http://[::1]:9090", None);
        check_url_issue("http://api.twilio.com", Some("must use https"));
        check_url_issue("http://10.0.0.1", Some("must use https"));
        check_url_issue("ftp://x.org", Some("scheme `ftp`"));
        check_url_issue("api.twilio.com", Some("not a valid URL"));
        check_url_issue("", Some("not a valid URL"));
        check_url_issue("https://user:pw@api.twilio.com", Some("credentials"));
        check_url_issue("https://api.twilio.com/#x", Some("query or fragment"));
    }

    #[test]
    fn joins() {
        assert_eq!(join("https://a.b", "/v3/mail/send"), "https://a.b/v3/mail/send");
        assert_eq!(join("https://a.b/", "/v3/mail/send"), "https://a.b/v3/mail/send");
        assert_eq!(join("http://127.0.0.1:1/prefix/", "/x"), "http://127.0.0.1:1/prefix/x");
    }

    fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Answer {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            if let (Ok(name), Ok(value)) = (
                reqwest::header::HeaderName::from_bytes(name.as_bytes()),
                reqwest::header::HeaderValue::from_str(value),
            ) {
                map.insert(name, value);
            }
        }
        Answer {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::IM_A_TEAPOT),
            headers: map,
            body: body.as_bytes().to_vec(),
            truncated: false,
        }
    }

    #[test]
    fn statuses_map_to_classes() {
        use crate::ErrorClass::*;
        let cases = [
            (429, NotSent),
            (400, Rejected),
            (404, Rejected),
            (413, Rejected),
            (401, Misconfigured),
            (403, Misconfigured),
            (500, Ambiguous),
            (502, Ambiguous),
            (503, Ambiguous),
            (504, Ambiguous),
            (302, Ambiguous),
        ];
        for (status, class) in cases {
            assert_eq!(status_error(&answer(status, &[], ""), None).class(), class, "{status}");
        }
        let limited = status_error(&answer(429, &[("retry-after", "7")], ""), None);
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(7)));
        let rejected = status_error(&answer(400, &[], " bad\nthing "), None);
        assert_eq!(rejected.to_string(), "rejected by the provider (400): HTTP 400: bad\nthing");
        let mut cut = answer(500, &[], "start of a body AC1:tok-partial");
        cut.truncated = true;
        assert_eq!(
            status_error(&cut, None).to_string(),
            "provider error 500: HTTP 500: (body over 65536 bytes) start of a body"
        );
        let detailed = status_error(&answer(400, &[], ""), Some(("21211".into(), "Invalid 'To'".into())));
        assert_eq!(detailed.code(), Some("21211"));
    }
}

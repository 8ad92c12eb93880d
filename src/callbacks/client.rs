//! One signed POST of a status callback, through a client that refuses internal addresses when
//! it connects.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use url::{Host, Url};

use super::policy::{check_url, is_loopback_name, refused, AddressClass, UrlError};
use super::secret::{sign, CallbackSecret};

/// How long one delivery may take, from connecting to the end of the answer's headers. The
/// Standard Webhooks spec recommends 15–30 s; a slower receiver is a failed delivery.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// How many callbacks are being sent at once, at most (the outbox's limit: a receiver that hangs
/// holds one slot for the timeout, never the others' callbacks). As many idle connections per
/// receiver host are kept, so a busy receiver's connections are reused, not opened per callback.
pub const CONCURRENCY: usize = 128;

/// Of the receiver's answer only the status matters: at most this many body bytes are read
/// (so the connection can be reused), the rest is dropped unread.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024;

/// Why one delivery failed. Any failure is retried later (see [`super::backoff`]) until
/// [`super::MAX_AGE`]. Messages name neither the URL nor the body.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The URL no longer passes [`check_url`] (e.g. the server now runs without
    /// `--allow-loopback-callbacks`). Checked before every request, which also covers IP
    /// address hosts (they are not resolved, so the resolver's check does not see them).
    #[error("callback URL refused: {0}")]
    Refused(UrlError),
    /// The host name resolved only to addresses callbacks may not go to (DNS rebinding guard).
    #[error("the callback host resolves to {0}, where callbacks may not go")]
    RefusedAddress(AddressClass),
    /// The receiver answered, but not with 2xx (a redirect included: it is not followed).
    #[error("the receiver answered HTTP {status}")]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The receiver's `Retry-After`, if it sent a valid one.
        retry_after: Option<Duration>,
    },
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// No connection: name not found, connection refused or reset, TLS handshake failed.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The request broke off after connecting, without a status.
    #[error("the request failed: {0}")]
    Transport(String),
    /// The webhook id is empty, too long, or has a character not allowed in it.
    #[error("the webhook id is not 1–256 visible ASCII characters without `.`")]
    InvalidId,
}

impl DeliveryError {
    /// The receiver's HTTP status, for a [`DeliveryError::Status`].
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The receiver's `Retry-After`, for a [`DeliveryError::Status`] that had one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A short label for metrics and logs: `refused`, `status`, `timeout`, `connect`,
    /// `transport`, `invalid_id`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Refused(_) | Self::RefusedAddress(_) => "refused",
            Self::Status { .. } => "status",
            Self::Timeout(_) => "timeout",
            Self::Connect(_) => "connect",
            Self::Transport(_) => "transport",
            Self::InvalidId => "invalid_id",
        }
    }
}

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the callback HTTP client: {0}")]
pub struct ClientError(String);

/// What delivers status callbacks: an HTTP client that resolves names itself and refuses
/// internal addresses, never follows redirects, uses no proxy, and bounds each request; the
/// signing secret; and whether loopback receivers are allowed (`--allow-loopback-callbacks`).
/// Cheap to clone (the connection pool is shared).
#[derive(Debug, Clone)]
pub struct Callbacks {
    client: reqwest::Client,
    secret: CallbackSecret,
    allow_loopback: bool,
    timeout: Duration,
}

impl Callbacks {
    /// A client with [`DEFAULT_TIMEOUT`].
    pub fn new(secret: CallbackSecret, allow_loopback: bool) -> Result<Self, ClientError> {
        Self::with_timeout(secret, allow_loopback, DEFAULT_TIMEOUT)
    }

    /// A client whose deliveries each take at most `timeout`.
    pub fn with_timeout(
        secret: CallbackSecret,
        allow_loopback: bool,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        switchboard_providers::http::install_crypto_provider();
        let client = reqwest::Client::builder()
            .dns_resolver(GuardedResolver { allow_loopback })
            // A proxy would resolve the receiver's name itself, past the guard.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .https_only(!allow_loopback)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(CONCURRENCY)
            .tcp_nodelay(true)
            .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| ClientError(error.without_url().to_string()))?;
        Ok(Self { client, secret, allow_loopback, timeout })
    }

    /// Whether callbacks may go to loopback receivers (and then over plain http).
    pub fn allow_loopback(&self) -> bool {
        self.allow_loopback
    }

    /// The signing secret.
    pub fn secret(&self) -> &CallbackSecret {
        &self.secret
    }

    /// Checks `url` as at accept time, with this instance's loopback setting.
    pub fn check_url(&self, url: &str) -> Result<Url, UrlError> {
        check_url(url, self.allow_loopback)
    }

    /// POSTs one callback: `body` (JSON, sent byte for byte as signed) with the headers
    /// `content-type: application/json`, `webhook-id: {webhook_id}`,
    /// `webhook-timestamp: {timestamp_secs}`, `webhook-signature: v1,…` (see [`sign`]) and
    /// `user-agent: switchboard/{version}`. `webhook_id` stays the same for every try of one
    /// event; `timestamp_secs` is the time of this try (Unix seconds). Ok only for a 2xx
    /// answer; everything else is a [`DeliveryError`] saying what happened.
    pub async fn deliver(
        &self,
        url: &str,
        webhook_id: &str,
        timestamp_secs: i64,
        body: &[u8],
    ) -> Result<(), DeliveryError> {
        let url = self.check_url(url).map_err(DeliveryError::Refused)?;
        self.post(url, webhook_id, timestamp_secs, body).await
    }

    /// [`Self::deliver`] past the URL check (the resolver still guards host names).
    async fn post(
        &self,
        url: Url,
        webhook_id: &str,
        timestamp_secs: i64,
        body: &[u8],
    ) -> Result<(), DeliveryError> {
        if !is_webhook_id(webhook_id) {
            return Err(DeliveryError::InvalidId);
        }
        // An IP address host is connected to as is, without the resolver: judge it here too.
        let literal = match url.host() {
            Some(Host::Ipv4(ip)) => Some(ip.into()),
            Some(Host::Ipv6(ip)) => Some(ip.into()),
            _ => None,
        };
        if let Some(class) = literal.and_then(|ip| refused(ip, self.allow_loopback)) {
            return Err(DeliveryError::RefusedAddress(class));
        }
        let id = HeaderValue::from_str(webhook_id).map_err(|_| DeliveryError::InvalidId)?;
        let signature = sign(&self.secret, webhook_id, timestamp_secs, body);
        let request = self
            .client
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp_secs)
            .header("webhook-signature", signature)
            .body(body.to_vec());
        let mut response = request.send().await.map_err(|error| self.transport_error(error))?;
        let status = response.status();
        let retry_after =
            response.headers().get(RETRY_AFTER).and_then(|value| value.to_str().ok()).and_then(|value| {
                switchboard_providers::http::parse_retry_after(value, std::time::SystemTime::now())
            });
        // Read a little of the body so a small answer frees the connection for reuse; an
        // error or a long body changes nothing about the outcome.
        let mut read = 0usize;
        while read <= MAX_ANSWER_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                Ok(None) | Err(_) => break,
            }
        }
        if status.is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Status { status: status.as_u16(), retry_after })
        }
    }

    /// A failure before any answer, without the URL (its query may hold a token).
    fn transport_error(&self, error: reqwest::Error) -> DeliveryError {
        let error = error.without_url();
        if let Some(refused) = find_cause::<RefusedAddress>(&error) {
            return DeliveryError::RefusedAddress(refused.0);
        }
        if error.is_timeout() {
            DeliveryError::Timeout(self.timeout)
        } else if error.is_connect() {
            DeliveryError::Connect(source_chain(&error))
        } else {
            DeliveryError::Transport(source_chain(&error))
        }
    }
}

/// 1–256 visible ASCII characters, no `.` (the signed content is `id.timestamp.body`).
fn is_webhook_id(id: &str) -> bool {
    (1..=256).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic() && b != b'.')
}

fn find_cause<'a, E: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<E>() {
            return Some(found);
        }
        current = error.source();
    }
    None
}

fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The resolver's refusal: every address of the name is of a refused class (the first one's).
#[derive(Debug, thiserror::Error)]
#[error("the host resolves only to refused addresses ({0})")]
struct RefusedAddress(AddressClass);

/// Resolves with the system resolver (via tokio) and keeps only addresses callbacks may go to.
/// `localhost` names keep only loopback addresses, whatever the resolver says.
#[derive(Debug, Clone, Copy)]
struct GuardedResolver {
    allow_loopback: bool,
}

impl GuardedResolver {
    async fn lookup(self, host: String) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
        let loopback_name = is_loopback_name(&host);
        let mut first_refused = None;
        let mut allowed = Vec::new();
        for address in tokio::net::lookup_host((host.as_str(), 0)).await? {
            let class = match refused(address.ip(), self.allow_loopback) {
                None if loopback_name && !address.ip().is_loopback() => {
                    // `localhost` resolving elsewhere: as refused as a loopback address would be.
                    Some(AddressClass::Loopback)
                }
                class => class,
            };
            match class {
                Some(class) => {
                    first_refused.get_or_insert(class);
                }
                None => allowed.push(address),
            }
        }
        match (allowed.is_empty(), first_refused) {
            (true, Some(class)) => Err(Box::new(RefusedAddress(class))),
            (true, None) => Err("the name resolves to no address".into()),
            (false, _) => Ok(allowed),
        }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let resolver = *self;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addresses = resolver.lookup(host).await?;
            Ok(Box::new(addresses.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests;

//! The HTTP/1.1 server under the router: the accept loop, one hyper connection per client, and
//! what axum's own `serve` cannot do: a timeout on the request head and on idle kept-alive
//! connections (slowloris), JSON answers for the heads hyper refuses itself, and a bounded
//! drain of unread request bytes before closing, so a client still writing its body can read
//! the answer (413, 401, …) instead of a reset.
//!
//! Hyper refuses some heads before any handler runs, with an empty body: a head larger than
//! its buffer or with more than [`MAX_HEADERS`] headers (431), a request target `http::Uri`
//! cannot hold (414), a malformed request line or header (400). [`EdgeIo`] recognises those
//! answers as hyper writes them and sends the matching [`ApiError`] instead. Heads within the
//! buffer reach the guard (`http/guard.rs`), which applies the configured limits.
//!
//! Out of file descriptors, the accept loop sheds: every connection that has been waiting for
//! a request head for a while (slow or idle clients) is closed, so that new clients, health
//! checks first of all, get in.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::guard::{RequestLimits, MAX_HEADERS, MAX_URI_BYTES};
use super::ApiError;

/// After a connection ends: the most request bytes read and discarded so the client can read
/// the answer, and the longest that may take.
const DRAIN_BYTES: usize = 8 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(2);
/// Pause after a failed accept (out of file descriptors, …) before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one log line per this long about failing accepts.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);
/// Out of file descriptors, connections waiting this long for a request head are closed.
const SHED_AFTER: Duration = Duration::from_millis(250);

/// Serves `router` on `listener` until `shutdown` completes; then stops accepting, lets every
/// connection finish the request it is answering (idle ones are closed), and returns once all
/// are closed. Failing accepts are logged and retried: the loop never gives up.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &RequestLimits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    raise_open_files_limit();
    widen_accept_queue(&listener);
    let edge = Arc::new(Edge {
        max_header_bytes: limits.max_header_bytes,
        header_timeout: limits.header_timeout,
        started: Instant::now(),
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_headers(MAX_HEADERS)
        .max_buf_size(buffer_size(limits.max_header_bytes))
        // One buffer per write: hyper's own refusals then arrive whole at `EdgeIo::poll_write`.
        .writev(false);
    let service = TowerToHyperService::new(router);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (shed_tx, shed_rx) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    let mut failures = AcceptFailures::default();
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    failures.failed(&error);
                    if matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                        shed_tx.send_replace(());
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(EdgeIo::new(stream, Arc::clone(&edge)));
        let activity = Arc::new(Activity::new(&edge));
        let tracked = Tracked { inner: service.clone(), activity: Arc::clone(&activity) };
        let connection = builder.serve_connection(io, tracked);
        let signals = Signals { stop: stop_rx.clone(), shed: shed_rx.clone() };
        tokio::spawn(serve_connection(connection, activity, signals));
    }
    drop(listener);
    drop((stop_rx, shed_rx));
    let _ = stop_tx.send(true);
    // Every connection holds a receiver: this returns once the last one is closed.
    stop_tx.closed().await;
    drop(shed_tx);
    Ok(())
}

type Connection = http1::Connection<TokioIo<EdgeIo>, Tracked>;

/// What the accept loop tells every connection: shutdown began; file descriptors ran out.
struct Signals {
    stop: watch::Receiver<bool>,
    shed: watch::Receiver<()>,
}

/// How a connection's serving ended.
enum Ending {
    /// Hyper is done with it (the client left, an error, a timeout, shutdown).
    Served(Result<(), hyper::Error>),
    /// Closed while waiting for a request head: to free its descriptor (`overloaded`), or
    /// because shutdown began (`shutting_down`); a head begun gets that answer.
    Shed(ApiError),
}

async fn serve_connection(mut connection: Connection, activity: Arc<Activity>, mut signals: Signals) {
    let ending = loop {
        tokio::select! {
            result = &mut connection => break Ending::Served(result),
            () = stopping(&mut signals.stop) => {
                // Not answering a request: nothing to finish (a head only half sent would
                // otherwise hold the exit until its header timeout).
                if activity.waiting_for_head().is_some() {
                    break Ending::Shed(ApiError::ShuttingDown);
                }
                Pin::new(&mut connection).graceful_shutdown();
                break Ending::Served((&mut connection).await);
            }
            Ok(()) = signals.shed.changed() => {
                if activity.waiting_for_head() >= Some(SHED_AFTER) {
                    break Ending::Shed(ApiError::Overloaded);
                }
            }
        }
    };
    let parts = connection.into_parts();
    let head_started = !parts.read_buf.is_empty();
    let io = parts.io.into_inner();
    match ending {
        Ending::Served(result) => io.finish(result, head_started).await,
        Ending::Shed(answer) => io.shed(head_started, &answer),
    }
}

/// Whether a connection is answering a request, and since when it is not.
struct Activity {
    answering: AtomicUsize,
    /// Since the server started, when the connection last became idle (opened or answered).
    idle_since_ms: AtomicU64,
    started: Instant,
}

impl Activity {
    fn new(edge: &Edge) -> Self {
        let activity = Activity {
            answering: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            started: edge.started,
        };
        activity.idle_now();
        activity
    }

    fn idle_now(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.idle_since_ms.store(ms, Ordering::Relaxed);
    }

    /// How long the connection has been waiting for a request head; `None` while answering.
    fn waiting_for_head(&self) -> Option<Duration> {
        if self.answering.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed));
        Some(self.started.elapsed().saturating_sub(since))
    }
}

/// The router, counting the requests a connection is answering.
#[derive(Clone)]
struct Tracked {
    inner: TowerToHyperService<Router>,
    activity: Arc<Activity>,
}

/// One request being answered; on drop the connection is idle again (if it was the last).
struct Answering(Arc<Activity>);

impl Drop for Answering {
    fn drop(&mut self) {
        if self.0.answering.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle_now();
        }
    }
}

impl hyper::service::Service<hyper::Request<Incoming>> for Tracked {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        self.activity.answering.fetch_add(1, Ordering::Relaxed);
        let answering = Answering(Arc::clone(&self.activity));
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await;
            drop(answering);
            response
        })
    }
}

/// Resolves once shutdown begins.
async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// The head buffer: room for the configured headers and a request target hyper can parse
/// (`http::Uri` holds up to 64 KiB), so that every head within the limits reaches the guard.
fn buffer_size(max_header_bytes: usize) -> usize {
    const URI_ROOM: usize = 64 * 1024;
    max_header_bytes.saturating_add(URI_ROOM + 1024)
}

/// What a connection needs to answer for hyper.
struct Edge {
    max_header_bytes: usize,
    header_timeout: Duration,
    /// When the server started: connections' idle times are kept relative to it.
    started: Instant,
}

/// The client's TCP stream, as hyper reads and writes it.
struct EdgeIo {
    stream: TcpStream,
    edge: Arc<Edge>,
    /// The JSON answer sent in place of one hyper wrote itself, and how much of it is sent.
    replacement: Option<(Vec<u8>, usize)>,
    /// Whether a line end was read since the last answer: the request line is complete (so a
    /// head too large for the buffer has too many headers, not too long a target).
    line_read: bool,
}

impl EdgeIo {
    fn new(stream: TcpStream, edge: Arc<Edge>) -> Self {
        EdgeIo { stream, edge, replacement: None, line_read: false }
    }

    /// Writes what is left of the replacement answer. = buf.strip_prefix(b"HTTP/1.1 ")?.get(..4)?;
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((answer, written)) = &mut self.replacement {
            if *written == answer.len() {
                self.replacement = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &answer[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// After hyper is done: a 408 for a head that did not arrive in time (an idle connection
    /// is just closed); the rest of any replacement answer; the end of our side; then what the
    /// client still sends, read and discarded (bounded) so that it gets to read the answer.
    async fn finish(mut self, result: Result<(), hyper::Error>, head_started: bool) {
        match result {
            Err(error) if error.is_timeout() => {
                if !head_started {
                    return;
                }
                let timeout = self.edge.header_timeout;
                self.replacement = Some((ApiError::HeaderTimeout { timeout }.to_http1(), 0));
            }
            Err(error) => tracing::debug!(error = %error, "HTTP connection ended with an error"),
            Ok(()) => {}
        }
        let _ = tokio::time::timeout(DRAIN_TIME, self.drain()).await;
    }

    /// Closes a connection waiting for a request head at once: a head begun gets `answer` (a
    /// 503) if the socket takes it without waiting.
    fn shed(self, head_started: bool, answer: &ApiError) {
        if head_started {
            let _ = self.stream.try_write(&answer.to_http1());
        }
    }

    async fn drain(&mut self) {
        if std::future::poll_fn(|cx| self.poll_replacement(cx)).await.is_err() {
            return;
        }
        let _ = self.stream.shutdown().await;
        let mut sink = [0u8; 8192];
        let mut drained = 0;
        while drained < DRAIN_BYTES {
            match self.stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    }
}

impl AsyncRead for EdgeIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.stream).poll_read(cx, buf))?;
        if buf.filled()[before..].contains(&b'\n') {
            self.line_read = true;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for EdgeIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_replacement(cx))?;
        if let Some(error) = hyper_refusal(buf, self.line_read, self.edge.max_header_bytes) {
            self.replacement = Some((error.to_http1(), 0));
            // Sent from here, from `poll_flush` or once hyper is done, whichever comes first.
            if let Poll::Ready(Err(error)) = self.poll_replacement(cx) {
                return Poll::Ready(Err(error));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        self.line_read = false;
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The error to answer instead of `buf`, when `buf` is an answer hyper made up itself: a whole
/// head with a 400, 414 or 431 status and no body (the router's answers with these statuses
/// always have a JSON body). `line_read`: whether the request line was complete.
fn hyper_refusal(buf: &[u8], line_read: bool, max_header_bytes: usize) -> Option<ApiError> {
    let refusal = match buf.strip_prefix(b"HTTP/1.1 ")?.get(..4)? {
        b"400 " => ApiError::MalformedRequest,
        b"414 " => ApiError::UriTooLong { limit: MAX_URI_BYTES },
        // The buffer filled up before the request line ended.
        b"431 " if !line_read => ApiError::UriTooLong { limit: MAX_URI_BYTES },
        b"431 " => ApiError::HeadersTooLarge { limit: max_header_bytes },
        _ => return None,
    };
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let empty = buf[..head_end]
        .split(|&b| b == b'\n')
        .any(|line| line.trim_ascii().eq_ignore_ascii_case(b"content-length: 0"));
    (head_end + 4 == buf.len() && empty).then_some(refusal)
}

/// Failed accepts, logged at most once per [`ACCEPT_LOG_EVERY`] with how many there were.
#[derive(Default)]
struct AcceptFailures {
    logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptFailures {
    fn failed(&mut self, error: &io::Error) {
        self.unlogged += 1;
        let now = Instant::now();
        if self.logged.is_none_or(|at| now.duration_since(at) >= ACCEPT_LOG_EVERY) {
            tracing::warn!(error = %error, failures = self.unlogged, "cannot accept connections; retrying");
            self.logged = Some(now);
            self.unlogged = 0;
        }
    }
}

/// Lets the kernel queue as many connections as it allows (`somaxconn`) for accepting, instead
/// of the 128 the listener was bound with: in a burst of connections (slow clients among them)
/// the rest are not dropped and retried a second later.
fn widen_accept_queue(listener: &TcpListener) {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: listen on a descriptor the listener owns (and keeps open for the call); on a
        // socket already listening it only changes the queue's length.
        let _ = unsafe { libc::listen(listener.as_raw_fd(), libc::SOMAXCONN) };
    }
}

/// Raises the soft limit on open files to the hard limit: each connection is a descriptor, and
/// the common default soft limit (1024) is what a few hundred slow clients exhaust first.
fn raise_open_files_limit() {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit only writes the struct it is given, which lives for the call.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0
            || limit.rlim_cur >= limit.rlim_max
        {
            return;
        }
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit only reads the struct it is given, which lives for the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::debug!(from = limit.rlim_cur, to = limit.rlim_max, "raised the open files limit");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(answer: &str, line_read: bool, expected: Option<&str>) {
        let got = hyper_refusal(answer.as_bytes(), line_read, 100).map(|e| e.code());
        assert_eq!(got, expected, "{answer:?}");
    }

    #[test]
    fn hyper_refusals_are_recognised() {
        let own = |status: &str| {
            format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\ndate: Sun, 29 Nov 2026 06:43:44 GMT\r\n\r\n")
        };
        check(&own("400 Bad Request"), true, Some("malformed_request"));
        check(&own("414 URI Too Long"), true, Some("uri_too_long"));
        check(&own("431 Request Header Fields Too Large"), true, Some("headers_too_large"));
        check(&own("431 Request Header Fields Too Large"), false, Some("uri_too_long"));
        check(
            "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n",
            true,
            Some("headers_too_large"),
        );
        // The router's own answers, and anything with a body, pass through.
        check(&own("404 Not Found"), true, None);
        check(&format!("{}{{}}", own("400 Bad Request")), true, None);
        check(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
            true,
            None,
        );
        check("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n", true, None);
        check("{\"error\":1}", true, None);
        check("", true, None);
    }

    #[test]
    fn the_buffer_holds_any_head_within_the_limits() {
        assert!(buffer_size(16 * 1024) > 16 * 1024 + MAX_URI_BYTES);
        assert!(buffer_size(0) >= 8192, "hyper's minimum");
        assert_eq!(buffer_size(usize::MAX), usize::MAX);
    }
}

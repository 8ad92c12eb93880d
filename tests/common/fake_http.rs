//! A local HTTP server standing in for a provider's API: it records every request and answers
//! from a script (then a default reply). Runs on its own thread and runtime, so blocking and
//! async tests can both use it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// The path with the query, as requested.
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }

    /// The whole request as text: request line, headers, blank line, body (what a gateway that
    /// echoes the request would answer).
    pub fn as_text(&self) -> String {
        let mut text = format!("{} {}\n", self.method, self.uri);
        for (name, value) in &self.headers {
            text.push_str(&format!("{name}: {value}\n"));
        }
        text.push('\n');
        text.push_str(&String::from_utf8_lossy(&self.body));
        text
    }

    /// The form-encoded body as (name, value) pairs, in order.
    pub fn form(&self) -> Vec<(String, String)> {
        let text = String::from_utf8_lossy(&self.body);
        match reqwest::Url::parse(&format!("http://x/?{text}")) {
            Ok(url) => url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect(),
            Err(_) => Vec::new(),
        }
    }

    pub fn form_values(&self, name: &str) -> Vec<String> {
        self.form().into_iter().filter(|(k, _)| k == name).map(|(_, v)| v).collect()
    }
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub delay: Duration,
    /// Makes the body from the request instead (a gateway echoing what it got).
    pub echo: Option<Echo>,
}

/// A reply body made from the request.
#[derive(Clone)]
pub struct Echo(Arc<dyn Fn(&Recorded) -> String + Send + Sync>);

impl std::fmt::Debug for Echo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Echo(..)")
    }
}

impl Reply {
    pub fn new(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
            delay: Duration::ZERO,
            echo: None,
        }
    }

    /// Answers `status` with a body `echo` makes from the request.
    pub fn echo(status: u16, echo: impl Fn(&Recorded) -> String + Send + Sync + 'static) -> Reply {
        Reply { echo: Some(Echo(Arc::new(echo))), ..Reply::new(status, "") }
    }

    pub fn json(status: u16, body: serde_json::Value) -> Reply {
        Reply::new(status, &body.to_string()).header("content-type", "application/json")
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn delayed(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    pub fn sized(status: u16, bytes: usize) -> Reply {
        Reply { body: vec![b'x'; bytes], ..Reply::new(status, "") }
    }
}

#[derive(Clone)]
struct Shared {
    requests: Arc<Mutex<Vec<Recorded>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
    default: Arc<Mutex<Reply>>,
}

pub struct FakeHttp {
    pub base: String,
    shared: Shared,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl FakeHttp {
    /// Starts a server answering `default` to whatever is not scripted.
    pub fn start(default: Reply) -> FakeHttp {
        let shared = Shared {
            requests: Arc::default(),
            script: Arc::default(),
            default: Arc::new(Mutex::new(default)),
        };
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let state = shared.clone();
        std::thread::spawn(move || {
            let Ok(runtime) =
                tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else { return };
                let _ = address_tx.send(listener.local_addr().map(|a| a.to_string()).unwrap_or_default());
                let app = axum::Router::new().fallback(handle).with_state(state);
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = shutdown_rx.await;
                    })
                    .await;
            });
        });
        let address = address_rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
        assert!(!address.is_empty(), "fake provider did not start");
        FakeHttp { base: format!("http://{address}"), shared, _shutdown: shutdown_tx }
    }

    /// Queues replies for the next requests, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        if let Ok(mut script) = self.shared.script.lock() {
            script.extend(replies);
        }
    }

    pub fn set_default(&self, reply: Reply) {
        if let Ok(mut default) = self.shared.default.lock() {
            *default = reply;
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub fn last(&self) -> Recorded {
        match self.requests().pop() {
            Some(request) => request,
            None => panic!("the fake provider received no request"),
        }
    }
}

async fn handle(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let recorded = Recorded {
        method: method.to_string(),
        path: uri.path().to_owned(),
        uri: uri.path_and_query().map_or_else(|| uri.path().to_owned(), ToString::to_string),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        body: body.to_vec(),
    };
    if let Ok(mut requests) = shared.requests.lock() {
        requests.push(recorded.clone());
    }
    let scripted = shared.script.lock().ok().and_then(|mut s| s.pop_front());
    let mut reply = match scripted {
        Some(reply) => reply,
        None => shared.default.lock().map(|d| d.clone()).unwrap_or_else(|_| Reply::new(500, "")),
    };
    if let Some(Echo(echo)) = &reply.echo {
        reply.body = echo(&recorded).into_bytes();
    }
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response =
        (StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK), reply.body).into_response();
    for (name, value) in reply.headers {
        if let (Ok(name), Ok(value)) =
            (axum::http::HeaderName::from_bytes(name.as_bytes()), axum::http::HeaderValue::from_str(&value))
        {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

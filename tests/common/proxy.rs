//! A counting, fault-injecting HTTP proxy in front of Azurite, for the fault tests and the
//! benchmark suite (which includes this file).
//!
//! Every request is classified (receive, peek, delete, update, send, properties, create) and
//! counted, then either forwarded to the upstream or hit by a fault:
//! - `busy_every`: every n-th request gets `503 ServerBusy` without reaching the service;
//! - `drop_every`: every n-th request is forwarded, then its connection is cut before the
//!   answer's body arrives (the service did the work; the client never learns it);
//! - `latency`: added before forwarding each request;
//! - `lose_deletes`: the next n Delete Message calls get `404 MessageNotFound` without
//!   reaching the service (as if the message had been re-delivered to someone else);
//! - `deny_all`: every request gets `403 AuthenticationFailed` (a revoked key or SAS).
//!
//! Faults are deterministic (every n-th, not random) so a test run is reproducible.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use tokio_util::sync::CancellationToken;

/// Request counts by kind, plus the faults injected.
#[derive(Debug, Default)]
pub struct Counts {
    pub receive: AtomicU64,
    pub peek: AtomicU64,
    pub delete: AtomicU64,
    pub update: AtomicU64,
    pub send: AtomicU64,
    pub properties: AtomicU64,
    pub create: AtomicU64,
    pub other: AtomicU64,
    pub busy_injected: AtomicU64,
    pub dropped: AtomicU64,
    pub deletes_lost: AtomicU64,
    pub upstream_errors: AtomicU64,
}

/// A snapshot of [`Counts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountSnapshot {
    pub receive: u64,
    pub peek: u64,
    pub delete: u64,
    pub update: u64,
    pub send: u64,
    pub properties: u64,
    pub create: u64,
    pub other: u64,
    pub busy_injected: u64,
    pub dropped: u64,
    pub deletes_lost: u64,
    pub upstream_errors: u64,
}

impl CountSnapshot {
    /// Calls a consumer makes (sends and queue creation excluded).
    pub fn consumer_calls(&self) -> u64 {
        self.receive + self.peek + self.delete + self.update + self.properties
    }

    /// `self - earlier`, counter by counter.
    pub fn since(&self, earlier: &CountSnapshot) -> CountSnapshot {
        CountSnapshot {
            receive: self.receive - earlier.receive,
            peek: self.peek - earlier.peek,
            delete: self.delete - earlier.delete,
            update: self.update - earlier.update,
            send: self.send - earlier.send,
            properties: self.properties - earlier.properties,
            create: self.create - earlier.create,
            other: self.other - earlier.other,
            busy_injected: self.busy_injected - earlier.busy_injected,
            dropped: self.dropped - earlier.dropped,
            deletes_lost: self.deletes_lost - earlier.deletes_lost,
            upstream_errors: self.upstream_errors - earlier.upstream_errors,
        }
    }
}

/// The faults to inject; change them at any time through [`Proxy::set_faults`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    pub busy_every: Option<u64>,
    pub drop_every: Option<u64>,
    pub latency: Duration,
    pub lose_deletes: u64,
    pub deny_all: bool,
}

struct Inner {
    upstream: String,
    client: reqwest::Client,
    counts: Counts,
    per_queue: Mutex<std::collections::BTreeMap<String, Arc<Counts>>>,
    faults: Mutex<Faults>,
    seen: AtomicU64,
}

/// A running proxy; stops when dropped.
pub struct Proxy {
    addr: SocketAddr,
    account_path: String,
    inner: Arc<Inner>,
    stop: CancellationToken,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Proxy {
    /// A proxy on a free loopback port in front of `upstream_url` (e.g.
    /// `http://127.0.0.1:10001/devstoreaccount1`).
    pub async fn start(upstream_url: &str) -> Proxy {
        let parsed = upstream_url.trim_end_matches('/');
        let (origin, account_path) = match parsed.find("://").map(|i| i + 3) {
            Some(start) => match parsed[start..].find('/') {
                Some(slash) => parsed.split_at(start + slash),
                None => (parsed, ""),
            },
            None => panic!("not a URL: {upstream_url}"),
        };
        let inner = Arc::new(Inner {
            upstream: origin.to_string(),
            client: reqwest::Client::new(),
            counts: Counts::default(),
            per_queue: Mutex::default(),
            faults: Mutex::new(Faults::default()),
            seen: AtomicU64::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(inner.clone());
        let stop = CancellationToken::new();
        let until = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { until.cancelled().await })
                .await
                .ok();
        });
        Proxy {
            addr,
            account_path: account_path.to_string(),
            inner,
            stop,
        }
    }

    /// The proxy's queue endpoint (same account path as the upstream).
    pub fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.account_path)
    }

    /// Refuses every request from now on (403, as a revoked key) and waits up to 30 s for
    /// `worker` to stop on its own; returns its drain report.
    pub async fn revoke_and_wait(
        &self,
        worker: ebbflow::worker::RunningWorker,
    ) -> ebbflow::worker::DrainReport {
        self.set_faults(Faults {
            deny_all: true,
            ..Faults::default()
        });
        tokio::time::timeout(
            Duration::from_secs(30),
            worker.run_until(std::future::pending()),
        )
        .await
        .expect("the worker stops on its own when its credentials are refused")
    }

    /// Replaces the faults.
    pub fn set_faults(&self, faults: Faults) {
        *self.inner.faults.lock().unwrap() = faults;
    }

    /// The counts so far.
    pub fn counts(&self) -> CountSnapshot {
        snapshot(&self.inner.counts)
    }

    /// The counts so far of requests to one queue.
    pub fn counts_for(&self, queue: &str) -> CountSnapshot {
        match self.inner.per_queue.lock().unwrap().get(queue) {
            Some(c) => snapshot(c),
            None => CountSnapshot::default(),
        }
    }
}

fn snapshot(c: &Counts) -> CountSnapshot {
    {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CountSnapshot {
            receive: g(&c.receive),
            peek: g(&c.peek),
            delete: g(&c.delete),
            update: g(&c.update),
            send: g(&c.send),
            properties: g(&c.properties),
            create: g(&c.create),
            other: g(&c.other),
            busy_injected: g(&c.busy_injected),
            dropped: g(&c.dropped),
            deletes_lost: g(&c.deletes_lost),
            upstream_errors: g(&c.upstream_errors),
        }
    }
}

/// The queue a request is for, if any.
fn queue_of(path: &str) -> Option<&str> {
    path.split('/').filter(|s| !s.is_empty()).nth(1)
}

/// Which queue operation a request is.
fn classify<'a>(counts: &'a Counts, method: &str, path: &str, query: &str) -> &'a AtomicU64 {
    // /<account>/<queue>[/messages[/<id>]]
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let on_messages = segments.get(2) == Some(&"messages");
    let one_message = segments.len() >= 4;
    match (method, on_messages, one_message) {
        ("GET", true, false) if query.contains("peekonly=true") => &counts.peek,
        ("GET", true, false) => &counts.receive,
        ("POST", true, false) => &counts.send,
        ("DELETE", true, true) => &counts.delete,
        ("PUT", true, true) => &counts.update,
        ("GET" | "HEAD", false, _) if query.contains("comp=metadata") => &counts.properties,
        ("PUT", false, _) if segments.len() == 2 && !query.contains("comp=") => &counts.create,
        _ => &counts.other,
    }
}

fn every(n: Option<u64>, seen: u64) -> bool {
    n.is_some_and(|n| n > 0 && seen.is_multiple_of(n))
}

fn error_response(status: StatusCode, code: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>"
    );
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert("x-ms-error-code", HeaderValue::from_str(code).unwrap());
    h.insert("content-type", HeaderValue::from_static("application/xml"));
    r
}

async fn forward(State(inner): State<Arc<Inner>>, request: Request) -> Response {
    let method = request.method().as_str().to_string();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
    let counter = classify(&inner.counts, &method, &path, &query);
    counter.fetch_add(1, Ordering::Relaxed);
    if let Some(queue) = queue_of(&path) {
        let per = inner
            .per_queue
            .lock()
            .unwrap()
            .entry(queue.to_string())
            .or_default()
            .clone();
        classify(&per, &method, &path, &query).fetch_add(1, Ordering::Relaxed);
    }
    let is_delete = std::ptr::eq(counter, &inner.counts.delete);
    let seen = inner.seen.fetch_add(1, Ordering::Relaxed) + 1;
    let faults = *inner.faults.lock().unwrap();
    if faults.deny_all {
        return error_response(StatusCode::FORBIDDEN, "AuthenticationFailed");
    }
    if is_delete && faults.lose_deletes > 0 {
        let mut f = inner.faults.lock().unwrap();
        if f.lose_deletes > 0 {
            f.lose_deletes -= 1;
            inner.counts.deletes_lost.fetch_add(1, Ordering::Relaxed);
            return error_response(StatusCode::NOT_FOUND, "MessageNotFound");
        }
    }
    if every(faults.busy_every, seen) {
        inner.counts.busy_injected.fetch_add(1, Ordering::Relaxed);
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "ServerBusy");
    }
    if !faults.latency.is_zero() {
        tokio::time::sleep(faults.latency).await;
    }
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let url = format!(
        "{}{}",
        inner.upstream,
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let mut headers = HeaderMap::new();
    for (k, v) in &parts.headers {
        if k != "host" && k != "content-length" {
            headers.append(k.clone(), v.clone());
        }
    }
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let sent = inner
        .client
        .request(method, url)
        .headers(headers)
        .body(body)
        .send()
        .await;
    let upstream = match sent {
        Ok(r) => r,
        Err(_) => {
            // The service is down: cut the connection, as a dead service would.
            inner.counts.upstream_errors.fetch_add(1, Ordering::Relaxed);
            return cut_connection();
        }
    };
    let status = upstream.status();
    let headers = upstream.headers().clone();
    let bytes: Bytes = upstream.bytes().await.unwrap_or_default();
    if every(faults.drop_every, seen) {
        inner.counts.dropped.fetch_add(1, Ordering::Relaxed);
        return cut_connection();
    }
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    for (k, v) in &headers {
        if k != "transfer-encoding" && k != "connection" && k != "content-length" {
            response.headers_mut().append(k.clone(), v.clone());
        }
    }
    response
}

/// A response whose body fails at once: the server closes the connection without a complete
/// answer, which the client sees as a connection reset.
fn cut_connection() -> Response {
    let failing = futures_stream();
    let mut r = Response::new(Body::from_stream(failing));
    r.headers_mut()
        .insert("content-length", HeaderValue::from_static("1000"));
    r
}

fn futures_stream() -> impl futures_core::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    struct Fail(bool);
    impl futures_core::Stream for Fail {
        type Item = Result<Bytes, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            if self.0 {
                return std::task::Poll::Ready(None);
            }
            self.0 = true;
            std::task::Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "injected connection drop",
            ))))
        }
    }
    Fail(false)
}

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
//! - `deny_all`: every request gets `403 AuthenticationFailed` (a revoked key or SAS);
//! - `deny_next`: the next n requests get `403 AuthenticationFailed` (a clock-skewed answer);
//! - `lose_answers`: the next n requests of one kind are forwarded (the service does the work),
//!   then their answer is held for a while or cut (the client never learns the outcome);
//! - `slow_service`: the service takes this long to process each request and honours the
//!   request's `timeout` parameter as Azure does: when the work would take longer, it answers
//!   `500 OperationTimedOut` after `timeout` seconds without doing it (no parameter: 30 s).
//!
//! It records the `timeout` parameter of every request ([`Proxy::service_timeouts`]). With
//! [`Proxy::start_token_gateway`] it also plays the Entra ID side of the service: it accepts
//! `Authorization: Bearer <token>` for the tokens it is told are valid (401 otherwise) and
//! forwards with a SAS instead, since Azurite takes no bearer tokens over http.
//!
//! Faults are deterministic (every n-th, next n; not random) so a test run is reproducible.
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
    pub deny_next: u64,
    pub lose_answers: Option<LoseAnswers>,
    pub slow_service: Duration,
}

/// Which operation a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Receive,
    Peek,
    Delete,
    Update,
    Send,
    Properties,
    Create,
    Other,
}

/// The answers of the next `count` requests of kind `op` are lost after the service did the
/// work: held for `hold` (then cut), or cut at once when `hold` is zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoseAnswers {
    pub op: Op,
    pub count: u64,
    pub hold: Duration,
}

struct Inner {
    upstream: String,
    client: reqwest::Client,
    counts: Counts,
    per_queue: Mutex<std::collections::BTreeMap<String, Arc<Counts>>>,
    faults: Mutex<Faults>,
    seen: AtomicU64,
    /// The `timeout` parameter of each request (None: absent).
    timeouts: Mutex<Vec<Option<u32>>>,
    answers_lost: AtomicU64,
    service_timeouts: AtomicU64,
    denied: AtomicU64,
    gateway: Option<Gateway>,
}

/// The bearer tokens the gateway takes, and the SAS it forwards with.
struct Gateway {
    valid: Mutex<std::collections::BTreeSet<String>>,
    sas: String,
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
        Self::start_with(upstream_url, None).await
    }

    /// A proxy that takes bearer tokens (those in `valid`, 401 for others) instead of a SAS
    /// and forwards with `sas` (a SAS query for the upstream account).
    pub async fn start_token_gateway(upstream_url: &str, sas: &str) -> Proxy {
        let gateway = Gateway {
            valid: Mutex::default(),
            sas: sas.to_string(),
        };
        Self::start_with(upstream_url, Some(gateway)).await
    }

    /// Makes the gateway accept `token`.
    pub fn accept_token(&self, token: &str) {
        let gateway = self.inner.gateway.as_ref().expect("a token gateway");
        gateway.valid.lock().unwrap().insert(token.to_string());
    }

    /// Makes the gateway refuse `token` (401), as for a revoked one.
    pub fn revoke_token(&self, token: &str) {
        let gateway = self.inner.gateway.as_ref().expect("a token gateway");
        gateway.valid.lock().unwrap().remove(token);
    }

    /// The `timeout` parameter of every request so far, in order (None where absent).
    pub fn service_timeouts(&self) -> Vec<Option<u32>> {
        self.inner.timeouts.lock().unwrap().clone()
    }

    /// Answers lost after the service did the work (`lose_answers`).
    pub fn answers_lost(&self) -> u64 {
        self.inner.answers_lost.load(Ordering::Relaxed)
    }

    /// `500 OperationTimedOut` answers given by `slow_service`.
    pub fn operation_timeouts(&self) -> u64 {
        self.inner.service_timeouts.load(Ordering::Relaxed)
    }

    /// Requests refused with 403 by `deny_next`, or with 401 by the gateway.
    pub fn denied(&self) -> u64 {
        self.inner.denied.load(Ordering::Relaxed)
    }

    async fn start_with(upstream_url: &str, gateway: Option<Gateway>) -> Proxy {
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
            timeouts: Mutex::default(),
            answers_lost: AtomicU64::new(0),
            service_timeouts: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            gateway,
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
fn op_of(method: &str, path: &str, query: &str) -> Op {
    // /<account>/<queue>[/messages[/<id>]]
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let on_messages = segments.get(2) == Some(&"messages");
    let one_message = segments.len() >= 4;
    match (method, on_messages, one_message) {
        ("GET", true, false) if query.contains("peekonly=true") => Op::Peek,
        ("GET", true, false) => Op::Receive,
        ("POST", true, false) => Op::Send,
        ("DELETE", true, true) => Op::Delete,
        ("PUT", true, true) => Op::Update,
        ("GET" | "HEAD", false, _) if query.contains("comp=metadata") => Op::Properties,
        ("PUT", false, _) if segments.len() == 2 && !query.contains("comp=") => Op::Create,
        _ => Op::Other,
    }
}

fn counter(counts: &Counts, op: Op) -> &AtomicU64 {
    match op {
        Op::Receive => &counts.receive,
        Op::Peek => &counts.peek,
        Op::Delete => &counts.delete,
        Op::Update => &counts.update,
        Op::Send => &counts.send,
        Op::Properties => &counts.properties,
        Op::Create => &counts.create,
        Op::Other => &counts.other,
    }
}

/// The `timeout` query parameter, if present and a number.
fn timeout_param(query: &str) -> Option<u32> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("timeout="))
        .and_then(|v| v.parse().ok())
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
    let mut query = request.uri().query().unwrap_or_default().to_string();
    let op = op_of(&method, &path, &query);
    counter(&inner.counts, op).fetch_add(1, Ordering::Relaxed);
    if let Some(queue) = queue_of(&path) {
        let per = inner
            .per_queue
            .lock()
            .unwrap()
            .entry(queue.to_string())
            .or_default()
            .clone();
        counter(&per, op).fetch_add(1, Ordering::Relaxed);
    }
    let service_timeout = timeout_param(&query);
    inner.timeouts.lock().unwrap().push(service_timeout);
    let seen = inner.seen.fetch_add(1, Ordering::Relaxed) + 1;
    let faults = *inner.faults.lock().unwrap();
    if faults.deny_all {
        return error_response(StatusCode::FORBIDDEN, "AuthenticationFailed");
    }
    if faults.deny_next > 0 && take_one(&inner, |f| &mut f.deny_next) {
        inner.denied.fetch_add(1, Ordering::Relaxed);
        return error_response(StatusCode::FORBIDDEN, "AuthenticationFailed");
    }
    let mut headers = HeaderMap::new();
    for (k, v) in request.headers() {
        if k != "host" && k != "content-length" {
            headers.append(k.clone(), v.clone());
        }
    }
    if let Some(gateway) = &inner.gateway {
        let token = headers
            .remove("authorization")
            .and_then(|v| v.to_str().ok().map(str::to_string))
            .and_then(|v| v.strip_prefix("Bearer ").map(str::to_string));
        let valid = token.is_some_and(|t| gateway.valid.lock().unwrap().contains(&t));
        if !valid {
            inner.denied.fetch_add(1, Ordering::Relaxed);
            return error_response(StatusCode::UNAUTHORIZED, "InvalidAuthenticationInfo");
        }
        query = if query.is_empty() {
            gateway.sas.clone()
        } else {
            format!("{query}&{}", gateway.sas)
        };
    }
    if op == Op::Delete && faults.lose_deletes > 0 && take_one(&inner, |f| &mut f.lose_deletes) {
        inner.counts.deletes_lost.fetch_add(1, Ordering::Relaxed);
        return error_response(StatusCode::NOT_FOUND, "MessageNotFound");
    }
    if every(faults.busy_every, seen) {
        inner.counts.busy_injected.fetch_add(1, Ordering::Relaxed);
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "ServerBusy");
    }
    if !faults.latency.is_zero() {
        tokio::time::sleep(faults.latency).await;
    }
    // The service's share of the work runs in a task of its own: like the real service, it
    // carries on when the client gives up on the call.
    let slow = faults.slow_service;
    if slow > Duration::from_secs(service_timeout.unwrap_or(30).into()) {
        // As the service: when the work would outlast the caller's timeout it gives up
        // (undone) and says so, at that timeout.
        tokio::time::sleep(Duration::from_secs(service_timeout.unwrap_or(30).into())).await;
        inner.service_timeouts.fetch_add(1, Ordering::Relaxed);
        return error_response(StatusCode::INTERNAL_SERVER_ERROR, "OperationTimedOut");
    }
    let lose_answer = {
        let mut f = inner.faults.lock().unwrap();
        match &mut f.lose_answers {
            Some(lose) if lose.op == op && lose.count > 0 => {
                lose.count -= 1;
                Some(lose.hold)
            }
            _ => None,
        }
    };
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let url = match query.as_str() {
        "" => format!("{}{}", inner.upstream, parts.uri.path()),
        q => format!("{}{}?{q}", inner.upstream, parts.uri.path()),
    };
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let client = inner.client.clone();
    let service = tokio::spawn(async move {
        tokio::time::sleep(slow).await;
        let upstream = client
            .request(method, url)
            .headers(headers)
            .body(body)
            .send()
            .await?;
        let status = upstream.status();
        let headers = upstream.headers().clone();
        let bytes: Bytes = upstream.bytes().await.unwrap_or_default();
        Ok::<_, reqwest::Error>((status, headers, bytes))
    });
    let (status, headers, bytes) = match service.await {
        Ok(Ok(answer)) => answer,
        _ => {
            // The service is down: cut the connection, as a dead service would.
            inner.counts.upstream_errors.fetch_add(1, Ordering::Relaxed);
            return cut_connection();
        }
    };
    if let Some(hold) = lose_answer {
        inner.answers_lost.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(hold).await;
        return cut_connection();
    }
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

/// Takes one from the counter `pick` selects in the current faults; false when it is zero.
fn take_one(inner: &Inner, pick: impl FnOnce(&mut Faults) -> &mut u64) -> bool {
    let mut faults = inner.faults.lock().unwrap();
    let left = pick(&mut faults);
    if *left == 0 {
        return false;
    }
    *left -= 1;
    true
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

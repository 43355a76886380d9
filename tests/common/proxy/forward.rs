//! The proxy's request path: each request classified and counted, then forwarded to the
//! upstream or hit by the fault its [`Faults`] call for (a 503, a cut connection, a lost delete,
//! a refusal, a held or lost answer, a slow service's timeout), and the bearer-token gateway.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;

use super::{Counts, Faults, Inner, Op};

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

pub(super) async fn forward(State(inner): State<Arc<Inner>>, request: Request) -> Response {
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

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
//!
//! This file has the proxy's types and its handle; `proxy/forward.rs` the request path.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

mod forward;
use forward::forward;

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

//! The accept loop both HTTP servers run instead of `axum::serve`, which has no header-read
//! timeout and no cap on open connections (an unauthenticated client holding thousands of idle
//! sockets would take the process's file descriptors, probes and store calls included).
//!
//! Each accepted connection needs a slot of `max_connections` (a semaphore per endpoint, so a
//! flood of the trigger port leaves the ops port's probes their own budget); beyond it the
//! connection is closed at once, unread. Each connection is served by hyper's HTTP/1 server with
//! a timer: a request's head must arrive whole within `header_read_timeout`, counted from the
//! moment the connection opens or, on a kept-alive connection, from the end of the previous
//! response; so the same timeout closes idle kept-alive connections. Refusals are counted in
//! [`Refusals`] and logged at most twice a second with how many were refused meanwhile.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

/// How one endpoint sheds connections it cannot serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A request's head (request line and headers) must arrive whole within this long, from
    /// the connection's opening or the end of the previous response; else the connection is
    /// closed. Bounds idle kept-alive connections too.
    pub header_read_timeout: Duration,
    /// Connections open at once; one more is closed at once, unread.
    pub max_connections: usize,
}

/// Why an endpoint refused a connection or a request: the `reason` label of
/// `ebbflow_http_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every connection slot was taken; the connection was closed at once.
    MaxConnections,
    /// A request's head did not arrive within the header-read timeout (or a kept-alive
    /// connection sat idle that long); the connection was closed.
    HeaderTimeout,
    /// A missing or wrong token (401).
    Unauthorized,
    /// Every request slot was taken (503).
    Busy,
    /// A request not answered within its timeout (408).
    Timeout,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::HeaderTimeout => "header_timeout",
            Refusal::Unauthorized => "unauthorized",
            Refusal::Busy => "busy",
            Refusal::Timeout => "timeout",
        }
    }
}

type RefusedLabels = Vec<(&'static str, &'static str)>;

/// Refused connections and requests of the HTTP endpoints, by `endpoint` (`trigger`, `ops`)
/// and `reason` ([`Refusal`]), exported as `ebbflow_http_refused_total`. Clones share counts.
/// Each endpoint logs its refusals at most twice a second, with the count since its last line.
#[derive(Debug, Clone, Default)]
pub struct Refusals {
    counts: Family<RefusedLabels, Counter>,
    throttle: Arc<Mutex<Throttles>>,
}

#[derive(Debug, Default)]
struct Throttles(Vec<(&'static str, Throttle)>);

/// At most one line per [`LOG_EVERY`], counting what it held back.
#[derive(Debug)]
struct Throttle {
    last: Option<Instant>,
    held: u64,
}

/// The least time between two refusal log lines of one endpoint.
pub(super) const LOG_EVERY: Duration = Duration::from_millis(500);

impl Refusals {
    /// Counts one refusal by `endpoint` and logs it (throttled).
    pub(crate) fn refuse(&self, endpoint: &'static str, why: Refusal) {
        self.counts
            .get_or_create(&vec![("endpoint", endpoint), ("reason", why.label())])
            .inc();
        let due = {
            let mut all = self.throttle.lock().unwrap_or_else(|e| e.into_inner());
            let at = match all.0.iter().position(|(e, _)| *e == endpoint) {
                Some(i) => i,
                None => {
                    all.0.push((
                        endpoint,
                        Throttle {
                            last: None,
                            held: 0,
                        },
                    ));
                    all.0.len() - 1
                }
            };
            let t = &mut all.0[at].1;
            t.held += 1;
            let now = Instant::now();
            if t.last
                .is_none_or(|last| now.duration_since(last) >= LOG_EVERY)
            {
                t.last = Some(now);
                Some(std::mem::take(&mut t.held))
            } else {
                None
            }
        };
        if let Some(refused) = due {
            tracing::info!(
                endpoint,
                reason = why.label(),
                refused,
                "{endpoint} endpoint refused {refused} connection(s) or request(s) since its last such line"
            );
        }
    }

    /// How many refusals of `endpoint` for `why` were counted.
    pub fn count(&self, endpoint: &'static str, why: Refusal) -> u64 {
        self.counts
            .get_or_create(&vec![("endpoint", endpoint), ("reason", why.label())])
            .get()
    }

    /// The counter family, for a metrics registry.
    pub(crate) fn family(&self) -> Family<RefusedLabels, Counter> {
        self.counts.clone()
    }
}

/// Serves `app` on `listener` under `limits` until `stop` fires (or the returned future is
/// dropped); then kept-alive connections are closed and in-flight requests finish.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    endpoint: &'static str,
    refusals: Refusals,
    stop: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let tracker = TaskTracker::new();
    // Dropping this future (the ops endpoint is dropped with the worker) cancels `closing`,
    // so no connection task outlives its server.
    let closing = CancellationToken::new();
    let _cancel_on_drop = closing.clone().drop_guard();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let builder = Arc::new(builder);
    let mut stop = std::pin::pin!(stop);
    loop {
        let stream = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Out of file descriptors (EMFILE) and the like: wait a little instead of
                    // spinning on an accept that fails again at once.
                    tracing::warn!(endpoint, error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            refusals.refuse(endpoint, Refusal::MaxConnections);
            continue;
        };
        let app = app.clone();
        let builder = builder.clone();
        let closing = closing.clone();
        let refusals = refusals.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let mut app = app.clone();
                async move {
                    Ok::<_, Infallible>(match app.call(req.map(Body::new)).await {
                        Ok(r) => r,
                        Err(never) => match never {},
                    })
                }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                () = closing.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                if e.is_timeout() {
                    refusals.refuse(endpoint, Refusal::HeaderTimeout);
                }
            }
        });
    }
    closing.cancel();
    tracker.close();
    tracker.wait().await;
}

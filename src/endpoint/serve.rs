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
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

use super::refusals::{Refusal, Refusals};

/// How one endpoint sheds connections it cannot serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnectionLimits {
    /// A request's head (request line and headers) must arrive whole within this long, from
    /// the connection's opening or the end of the previous response; else the connection is
    /// closed. Bounds idle kept-alive connections too.
    pub header_read_timeout: Duration,
    /// Connections open at once; one more is closed at once, unread.
    pub max_connections: usize,
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

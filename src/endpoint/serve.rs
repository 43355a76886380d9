//! The accept loop both HTTP servers run instead of `axum::serve`, which has no header-read
//! timeout and no cap on open connections (an unauthenticated client holding thousands of idle
//! sockets would take the process's file descriptors, probes and store calls included).
//!
//! Each accepted connection needs a slot of `max_connections` (a semaphore per endpoint, so a
//! flood of the trigger port leaves the ops port's probes their own budget) and one of its
//! peer's `max_connections_per_peer` (counted by source IP address, an IPv6 one by its /64,
//! so one client cannot take the whole budget); beyond either the connection is closed at
//! once, unread. Many source addresses can still take the whole budget: the docs say to keep
//! the ports off untrusted networks. Each connection is served by hyper's HTTP/1 server with
//! a timer: a request's head must arrive whole within `header_read_timeout`, counted from the
//! moment the connection opens or, on a kept-alive connection, from the end of the previous
//! response; so the same timeout closes idle kept-alive connections. Refusals are counted in
//! [`Refusals`] and logged at most twice a second with how many were refused meanwhile; a
//! failing `accept` (out of file descriptors) is logged at most once a second with its count.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
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
    /// Connections open at once from one peer (one source IP address; an IPv6 address counts
    /// by its /64 prefix); one more from that peer is closed at once, unread. At most
    /// `max_connections` applies.
    pub max_connections_per_peer: usize,
}

/// Open connections by peer, each released when its [`PeerSlot`] drops.
#[derive(Debug, Default)]
struct Peers(Mutex<HashMap<IpAddr, usize>>);

/// One connection's place in its peer's count.
#[derive(Debug)]
struct PeerSlot {
    peers: Arc<Peers>,
    peer: IpAddr,
}

impl Peers {
    /// A slot for `peer` when it holds fewer than `max` connections.
    fn take(self: &Arc<Self>, peer: IpAddr, max: usize) -> Option<PeerSlot> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(peer).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peers: self.clone(),
            peer,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.peers.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

/// The key a peer's connections are counted under: its IPv4 address (an IPv4-mapped IPv6 one
/// too), or the /64 of an IPv6 address (one host usually holds a whole /64).
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// The least time between two `cannot accept a connection` lines of one endpoint.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(1);

/// Logs failing accepts at most once per [`ACCEPT_LOG_EVERY`], with how many failed since.
#[derive(Debug, Default)]
struct AcceptErrors {
    last: Option<tokio::time::Instant>,
    held: u64,
}

impl AcceptErrors {
    fn failed(&mut self, endpoint: &'static str, error: &std::io::Error) {
        self.held += 1;
        let now = tokio::time::Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < ACCEPT_LOG_EVERY)
        {
            return;
        }
        let failed = std::mem::take(&mut self.held);
        self.last = Some(now);
        tracing::warn!(
            endpoint,
            failed,
            error = %error,
            "{endpoint} endpoint cannot accept a connection ({failed} failed since its last such \
             line); out of file descriptors? see max_connections and `ulimit -n`"
        );
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
    let peers = Arc::new(Peers::default());
    let per_peer = limits.max_connections_per_peer.min(limits.max_connections);
    let mut accept_errors = AcceptErrors::default();
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
        let (stream, peer) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors (EMFILE) and the like: wait a little instead of
                    // spinning on an accept that fails again at once.
                    accept_errors.failed(endpoint, &e);
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
        let Some(peer_slot) = peers.take(peer_key(peer.ip()), per_peer) else {
            drop(stream);
            refusals.refuse(endpoint, Refusal::MaxConnectionsPerPeer);
            continue;
        };
        let app = app.clone();
        let builder = builder.clone();
        let closing = closing.clone();
        let refusals = refusals.clone();
        tracker.spawn(async move {
            let _permit = (permit, peer_slot);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_holds_at_most_its_share_and_gets_it_back() {
        let peers = Arc::new(Peers::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| peers.take(a, 3).unwrap()).collect();
        assert!(peers.take(a, 3).is_none(), "a fourth from the same peer");
        let other = peers.take(b, 3).expect("another peer has its own share");
        drop(held);
        drop(other);
        assert!(peers.0.lock().unwrap().is_empty(), "counts released");
        assert!(peers.take(a, 3).is_some());
    }

    /// Out of file descriptors, `accept` fails at once every time: a line a second, counting.
    #[tokio::test(start_paused = true)]
    async fn failing_accepts_log_a_line_a_second_with_their_count() {
        let logs = crate::throttle::captured::Captured::start();
        let mut errors = AcceptErrors::default();
        let emfile = std::io::Error::other("Too many open files");
        // 843 failures, one every 50 ms (the accept loop's pause): about 42 s.
        for _ in 0..843 {
            errors.failed("trigger", &emfile);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let text = logs.text();
        let counts = logs.counts("failed");
        assert!((40..=45).contains(&counts.len()), "{text}");
        assert_eq!(counts[0], 1, "{text}");
        assert!(counts[1..].iter().all(|n| *n == 20), "{counts:?}");
        assert!(text.contains("Too many open files"), "{text}");
    }

    #[test]
    fn peers_are_keyed_by_ipv4_address_or_ipv6_slash_64() {
        let key = |s: &str| peer_key(s.parse().unwrap());
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
        assert_eq!(key("2001:db8::1"), key("2001:db8::ffff:2"));
        assert_ne!(key("2001:db8:0:1::1"), key("2001:db8::1"));
    }
}

//! The ops endpoint: `GET /healthz` (liveness), `GET /readyz` (readiness, with a short JSON
//! reason), `GET /metrics` (the OpenMetrics text, optionally behind `metrics_token`). It is
//! apart from the trigger endpoint and its token, so probes and scrapes need no triggers.
//!
//! Built like the trigger endpoint: `/metrics` sits behind tower's timeout and concurrency
//! limit with load shedding (a flood of scrapes gets 503 at once instead of queueing); the
//! probes stay outside those layers, so a busy scraper never fails a liveness probe. The
//! server runs until the worker exits, so `/readyz` answers 503 through the whole drain.
//!
//! Its connections have their own cap (`observability.max_connections`) and header-read
//! timeout (`observability.header_read_timeout`), apart from the trigger endpoint's, so a flood
//! of the trigger port never takes the probes' connections (the shared `endpoint` leaf).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{BoxError, Json, Router};
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::ServiceBuilder;

use super::dashboard;
use super::metrics::Metrics;
use super::readiness::Readiness;
use crate::config::MetricsToken;
use crate::endpoint::{
    bearer, guard_response, reject, tokens_match, ConnectionLimits, Refusal, Refusals, CONTENT_TYPE,
};

/// A `/metrics` request not answered within this long gets 408.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// `/metrics` requests served at once; more get 503 at once.
pub(crate) const MAX_CONCURRENT_SCRAPES: usize = 8;

#[derive(Clone)]
struct OpsState {
    readiness: Readiness,
    metrics: Arc<Metrics>,
    token: Option<MetricsToken>,
    refusals: Refusals,
    /// The endpoint is bound to a loopback address: without a token, poison messages are
    /// shown (a local demo); else never without one.
    loopback: bool,
}

/// The `endpoint` label of this endpoint's refusals.
const ENDPOINT: &str = "ops";

/// The ops router of an endpoint bound to a loopback address (`loopback`) or not.
fn router_at(
    readiness: Readiness,
    metrics: Arc<Metrics>,
    token: Option<MetricsToken>,
    loopback: bool,
) -> Router {
    let refusals = metrics.refusals().clone();
    let state = OpsState {
        readiness,
        metrics,
        token,
        refusals: refusals.clone(),
        loopback,
    };
    let guard = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(move |e: BoxError| {
            let refusals = refusals.clone();
            async move { guard_response("ops endpoint", "scrapes", e, &refusals, ENDPOINT) }
        }))
        .load_shed()
        .layer(GlobalConcurrencyLimitLayer::new(MAX_CONCURRENT_SCRAPES))
        .timeout(REQUEST_TIMEOUT);
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/dashboard.json", get(dashboard_state))
        .route("/dashboard/poison/{queue}", get(dashboard_poison))
        .route(
            "/dashboard/poison/{queue}/requeue",
            axum::routing::post(dashboard_requeue),
        )
        .layer(guard)
        .route("/", get(dashboard::page))
        .route("/dashboard", get(dashboard::page))
        // Browsers ask for it by themselves: nothing to show, and no 404 in their console.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Binds the ops endpoint at `addr` under `limits`; returns the bound address (useful with
/// port 0) and the server future, which runs until dropped (the worker drops it when it
/// exits). Refusals are counted in `metrics` (`ebbflow_http_refused_total`).
///
/// # Errors
///
/// The [`std::io::Error`] of binding `addr` (in use, not permitted).
pub(crate) async fn bind(
    addr: SocketAddr,
    limits: ConnectionLimits,
    readiness: Readiness,
    metrics: Arc<Metrics>,
    token: Option<MetricsToken>,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let refusals = metrics.refusals().clone();
    let app = router_at(readiness, metrics, token, bound.ip().is_loopback());
    let serve = crate::endpoint::serve(
        listener,
        app,
        limits,
        ENDPOINT,
        refusals,
        std::future::pending(),
    );
    Ok((bound, serve))
}

async fn readyz(State(state): State<OpsState>) -> Response {
    let report = state.readiness.report();
    let status = if report.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}

async fn metrics_text(State(state): State<OpsState>, headers: HeaderMap) -> Response {
    if let Some(expected) = &state.token {
        let why = match bearer(&headers) {
            None => Some("missing token: send Authorization: Bearer <metrics_token>"),
            Some(given) if !tokens_match(given, expected.expose()) => Some("wrong token"),
            Some(_) => None,
        };
        if let Some(why) = why {
            state.refusals.refuse(ENDPOINT, Refusal::Unauthorized);
            // RFC 9110: a 401 names the scheme the client should use.
            let mut r = reject(StatusCode::UNAUTHORIZED, why);
            r.headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    ([("content-type", CONTENT_TYPE)], state.metrics.render()).into_response()
}

async fn dashboard_state(State(state): State<OpsState>, headers: HeaderMap) -> Response {
    if let Err((status, why)) = dashboard::authorize(state.token.as_ref(), &headers) {
        return reject(status, why);
    }
    dashboard::state(state.metrics.dashboard()).await
}

async fn dashboard_poison(
    State(state): State<OpsState>,
    Path(queue): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err((status, why)) =
        dashboard::authorize_poison(state.token.as_ref(), state.loopback, &headers)
    {
        return reject(status, why);
    }
    match state.metrics.dashboard() {
        Some(d) => dashboard::list(d, &queue).await,
        None => reject(StatusCode::NOT_FOUND, "no dashboard on this endpoint"),
    }
}

async fn dashboard_requeue(
    State(state): State<OpsState>,
    Path(queue): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match state.metrics.dashboard() {
        Some(d) => dashboard::requeue(d, &queue, state.token.as_ref(), &headers, &body).await,
        None => reject(StatusCode::NOT_FOUND, "no dashboard on this endpoint"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use axum::body::Body;
    use axum::extract::Request;
    use tower::Service;

    use super::*;
    use crate::store::metered::Metering;
    use crate::store::MemoryStore;

    const TOKEN: &str = "poison-token-0123456789";

    async fn get_poison(mut app: Router, token: Option<&str>) -> (StatusCode, String) {
        let mut req = Request::get("/dashboard/poison/orders");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        std::future::poll_fn(|cx| <Router as Service<Request>>::poll_ready(&mut app, cx))
            .await
            .unwrap();
        let r = Service::<Request>::call(&mut app, req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn metrics() -> Arc<Metrics> {
        Arc::new(Metrics::new(
            Arc::new(OnceLock::new()),
            Arc::new(MemoryStore::new()),
            Metering::default(),
        ))
    }

    /// Poison bodies and errors are message contents: without a metrics token they are served
    /// only on a loopback bind (the local demo), never on one reachable from elsewhere.
    #[tokio::test]
    async fn poison_routes_refuse_without_a_token_unless_bound_to_loopback() {
        let token = || Some(MetricsToken::try_from(TOKEN.to_string()).unwrap());
        // Bound elsewhere (or embedded, the bind unknown), no token: 403 naming the key.
        let (status, body) = get_poison(
            router_at(Readiness::default(), metrics(), None, false),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(body.contains("observability.metrics_token"), "{body}");
        // On loopback without a token, and anywhere with the token given, the request passes
        // the check (this router has no dashboard set, hence 404, not 401/403).
        let loopback = router_at(Readiness::default(), metrics(), None, true);
        assert_eq!(get_poison(loopback, None).await.0, StatusCode::NOT_FOUND);
        let with_token = router_at(Readiness::default(), metrics(), token(), false);
        assert_eq!(
            get_poison(with_token.clone(), Some(TOKEN)).await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get_poison(with_token, None).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
}

//! The dashboard on the ops endpoint: `GET /dashboard` (also `GET /`) serves one page from the
//! binary (inline CSS, JS and SVG charts, nothing from the network) that polls
//! `GET /dashboard.json` every second, and manages poison queues through
//! `GET /dashboard/poison/{queue}` and `POST /dashboard/poison/{queue}/requeue`.
//!
//! `GET /dashboard.json` (documented in the book's Dashboard chapter) answers:
//!
//! ```json
//! {"version": 1, "now": "2026-12-07T05:30:00Z", "queues": [
//!   {"queue": "orders", "depth": 120, "active_tasks": 4, "peak_tasks": 6, "in_flight": 12,
//!    "held": 14, "received": 5012, "handled": 4980, "retried": 3, "poisoned": 2,
//!    "released": 0, "receive_calls": 900, "empty_receives": 40,
//!    "pickup_seconds_sum": 310.5, "pickup_seconds_count": 4990,
//!    "handler_seconds_sum": 99.1, "handler_seconds_count": 4980,
//!    "last_decision": "scale up 3 -> 4: full batch", "poison_queue": "orders-poison"}],
//!  "fleet": {"instances": [
//!    {"instance": "worker-7f9c", "role": "worker", "queues": ["orders"], "active_tasks": 4,
//!     "in_flight": 12, "handled": 4980, "receive_calls": 900,
//!     "started_at_ms": 1796620000000, "pulse_at_ms": 1796620199000, "pulse_age_ms": 800,
//!     "this": true}],
//!   "jobs": [
//!    {"id": "orders/7c1e", "source": "orders", "text": "order 7", "instance": "worker-7f9c",
//!     "role": "worker", "state": "running", "count": 300, "timed_pulses": 4,
//!     "count_pulses": 3, "last_pulse": "count", "interval_ms": 10000, "every": 100,
//!     "started_at_ms": 1796620150000, "updated_at_ms": 1796620199000, "elapsed_ms": 49000,
//!     "note": ""}],
//!   "error": null}}
//! ```
//!
//! Counters and sums are cumulative since the worker started: a reader takes differences
//! between polls for rates and mean latencies (the page does). `depth` is the last probed
//! approximate depth (`null` before a probe).
//!
//! `fleet` is `null` unless the bus is on (`bus.kind` other than `none`); then it lists every
//! live instance from the bus presence (their pulses, `bus.pulse_interval` apart), this one
//! marked `"this": true`, sorted by role then id, and `jobs`, the heartbeat progress records
//! (`ebbflow jobs`' data, as it shows them: a running job whose pulses stopped is `stale`;
//! running first, then the most recently changed, at most 50). `pulse_age_ms` is how long ago the last
//! pulse was sent (by this worker's clock). When the bus cannot be read, `instances` is empty
//! and `error` says why (one line, no secret).
//!
//! Access: with `observability.metrics_token` set, every dashboard route but the page itself
//! needs `Authorization: Bearer <token>` (the page asks for it and keeps it in the tab's
//! session storage; no cookie is ever set, so another site cannot make a browser send it).
//! A requeue is refused outright without a token configured, and when the request carries an
//! `Origin` other than the endpoint's own `Host`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use prometheus_client::metrics::histogram::Histogram;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::{MetricsToken, QueueSettings};
use crate::listener::poison::{PoisonQueue, Selection};
use crate::listener::QueueListener;
use crate::store::QueueStore;

/// The page, served as it is.
const PAGE: &str = include_str!("dashboard.html");
/// Poison messages listed at most per request.
pub(crate) const LIST_LIMIT: usize = 100;

/// What the dashboard reads: the running listeners, the store (for poison queues) and each
/// queue's settings.
pub(crate) struct Dashboard {
    listeners: Arc<OnceLock<Vec<QueueListener>>>,
    store: Arc<dyn QueueStore>,
    queues: BTreeMap<String, QueueSettings>,
    /// The bus whose presence is the fleet, once the worker opened it (a shared bus only).
    fleet: OnceLock<crate::bus::BusHandle>,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field("queues", &self.queues.keys())
            .finish_non_exhaustive()
    }
}

impl Dashboard {
    /// A dashboard of the listeners `listeners` will hold once they run, their poison queues on
    /// `store`, with the queues' settings.
    pub(crate) fn new(
        listeners: Arc<OnceLock<Vec<QueueListener>>>,
        store: Arc<dyn QueueStore>,
        queues: BTreeMap<String, QueueSettings>,
    ) -> Self {
        Self {
            listeners,
            store,
            queues,
            fleet: OnceLock::new(),
        }
    }

    /// Shows the fleet of `bus` (its live instances' presence) in the document; later calls
    /// are ignored.
    pub(crate) fn set_fleet(&self, bus: crate::bus::BusHandle) {
        let _ = self.fleet.set(bus);
    }

    /// The `/dashboard.json` document (the fleet read from the bus, at most 2 s).
    pub(crate) async fn state(&self) -> Value {
        let mut state = self.queues_state();
        if let Some(bus) = self.fleet.get() {
            state["fleet"] = fleet(bus).await;
        }
        state
    }

    /// The document without the fleet (`"fleet": null`).
    fn queues_state(&self) -> Value {
        let listeners: &[QueueListener] = self.listeners.get().map_or(&[], Vec::as_slice);
        let queues: Vec<Value> = listeners
            .iter()
            .map(|l| {
                let s = l.snapshot();
                let h = l.histograms();
                let (pickup, handler) =
                    (sum_count(&h.pickup_seconds), sum_count(&h.handler_seconds));
                let poison = self
                    .queues
                    .get(&s.queue)
                    .map(|q| q.poison_queue_name(&s.queue));
                json!({
                    "queue": s.queue,
                    "depth": s.depth,
                    "active_tasks": s.active_tasks,
                    "peak_tasks": s.peak_tasks,
                    "in_flight": s.in_flight,
                    "held": s.held,
                    "received": s.received,
                    "handled": s.handled,
                    "retried": s.retried,
                    "poisoned": s.poisoned,
                    "released": s.released,
                    "receive_calls": s.receive_calls,
                    "empty_receives": s.empty_receives,
                    "pickup_seconds_sum": pickup.0,
                    "pickup_seconds_count": pickup.1,
                    "handler_seconds_sum": handler.0,
                    "handler_seconds_count": handler.1,
                    "last_decision": s.last_decision,
                    "poison_queue": poison,
                })
            })
            .collect();
        let now = crate::store::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        json!({ "version": 1, "now": now, "queues": queues, "fleet": null })
    }

    fn poison(&self, queue: &str) -> Result<PoisonQueue, Refusal> {
        let settings = self.queues.get(queue).ok_or_else(|| {
            (
                StatusCode::NOT_FOUND,
                format!("no queue {queue:?} on this worker"),
            )
        })?;
        PoisonQueue::new(self.store.clone(), queue, settings)
            .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))
    }
}

/// The `fleet` part of the document: the bus presence of every live instance.
async fn fleet(bus: &crate::bus::BusHandle) -> Value {
    let me = bus.member().instance.to_string();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        bus.transport().instances(),
    )
    .await;
    let (mut instances, mut error) = match read {
        Ok(Ok(list)) => (list, None),
        Ok(Err(e)) => (Vec::new(), Some(e.to_string())),
        Err(_) => (
            Vec::new(),
            Some("the bus did not answer within 2 s".to_string()),
        ),
    };
    let jobs = match tokio::time::timeout(std::time::Duration::from_secs(2), bus.transport().jobs())
        .await
    {
        Ok(Ok(jobs)) => jobs,
        Ok(Err(e)) => {
            error.get_or_insert_with(|| e.to_string());
            Vec::new()
        }
        Err(_) => {
            error.get_or_insert_with(|| "the bus did not answer within 2 s".to_string());
            Vec::new()
        }
    };
    instances.sort_by(|a, b| (&a.role, &a.instance).cmp(&(&b.role, &b.instance)));
    let now = crate::bus::now_ms();
    let instances: Vec<Value> = instances
        .into_iter()
        .map(|p| {
            json!({
                "instance": p.instance,
                "role": p.role,
                "queues": p.queues,
                "active_tasks": p.active_tasks,
                "in_flight": p.in_flight,
                "handled": p.handled,
                "receive_calls": p.receive_calls,
                "started_at_ms": p.started_at_ms,
                "pulse_at_ms": p.pulse_at_ms,
                "pulse_age_ms": now.saturating_sub(p.pulse_at_ms),
                "this": p.instance == me,
            })
        })
        .collect();
    json!({ "instances": instances, "jobs": job_rows(jobs, now), "error": error })
}

/// Jobs shown at most: the running ones first, then the most recently changed.
const JOBS_LIMIT: usize = 50;

/// The `jobs` part of the fleet: the heartbeat monitor's records (running and recently ended,
/// kept `bus.job_retention`) as seen at `now_ms` (a running job whose pulses stopped is
/// `stale`, see `JobRecord::seen_at`), running first, then newest change first, at most
/// [`JOBS_LIMIT`].
fn job_rows(jobs: Vec<crate::bus::jobs::JobRecord>, now_ms: u64) -> Value {
    use crate::bus::jobs::JobState;
    let mut jobs: Vec<_> = jobs.into_iter().map(|j| j.seen_at(now_ms)).collect();
    jobs.sort_by(|a, b| {
        let running = |j: &crate::bus::jobs::JobRecord| j.state != JobState::Running;
        (running(a), std::cmp::Reverse(a.updated_at_ms), &a.id).cmp(&(
            running(b),
            std::cmp::Reverse(b.updated_at_ms),
            &b.id,
        ))
    });
    jobs.truncate(JOBS_LIMIT);
    serde_json::to_value(jobs).unwrap_or(Value::Null)
}

/// A histogram's sum and count. prometheus-client reads them out only through its encoder, so
/// this encodes the one histogram (a poll a second per page: cheap) and reads the two lines.
fn sum_count(h: &Histogram) -> (f64, u64) {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register("h", "h", h.clone());
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
        return (0.0, 0);
    }
    let read = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .map(str::trim)
            .unwrap_or("0")
            .to_string()
    };
    (
        read("h_sum").parse().unwrap_or(0.0),
        read("h_count").parse().unwrap_or(0),
    )
}

/// The page.
pub(super) async fn page() -> Response {
    (
        [
            ("content-security-policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'"),
            ("x-content-type-options", "nosniff"),
            ("cache-control", "no-store"),
        ],
        Html(PAGE),
    )
        .into_response()
}

/// Checks the bearer token when one is configured.
pub(super) fn authorize(token: Option<&MetricsToken>, headers: &HeaderMap) -> Result<(), Refusal> {
    let Some(expected) = token else {
        return Ok(());
    };
    match crate::endpoint::bearer(headers) {
        Some(given) if crate::endpoint::tokens_match(given, expected.expose()) => Ok(()),
        Some(_) => Err((StatusCode::UNAUTHORIZED, "wrong token".into())),
        None => Err((
            StatusCode::UNAUTHORIZED,
            "missing token: send Authorization: Bearer <metrics_token>".into(),
        )),
    }
}

/// A request for poison messages (their bodies and errors): with a token configured, it must be
/// given; without one, only an endpoint bound to a loopback address (a local demo) serves
/// them: anywhere else it is 403, saying to set the token.
pub(super) fn authorize_poison(
    token: Option<&MetricsToken>,
    loopback: bool,
    headers: &HeaderMap,
) -> Result<(), Refusal> {
    if token.is_none() && !loopback {
        return Err((
            StatusCode::FORBIDDEN,
            "poison messages are shown only with observability.metrics_token set (or with the \
             ops endpoint bound to a loopback address)"
                .into(),
        ));
    }
    authorize(token, headers)
}

/// A state-changing request: a token must be configured and given, and a browser's `Origin`
/// must be this endpoint's own.
fn authorize_change(token: Option<&MetricsToken>, headers: &HeaderMap) -> Result<(), Refusal> {
    if token.is_none() {
        return Err((
            StatusCode::FORBIDDEN,
            "requeue from the dashboard needs observability.metrics_token set".into(),
        ));
    }
    authorize(token, headers)?;
    if let Some(origin) = headers.get("origin") {
        let host = headers.get("host").and_then(|h| h.to_str().ok());
        let origin = origin.to_str().unwrap_or_default();
        let same = host.is_some_and(|h| {
            origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                == Some(h)
        });
        if !same {
            return Err((
                StatusCode::FORBIDDEN,
                "cross-site request refused (Origin is not this endpoint)".into(),
            ));
        }
    }
    Ok(())
}

/// Why a request is refused: its status and the reason shown.
pub(super) type Refusal = (StatusCode, String);

fn reject(status: StatusCode, reason: &str) -> Response {
    crate::endpoint::reject(status, reason)
}

/// `GET /dashboard.json`.
pub(super) async fn state(dashboard: Option<&Dashboard>) -> Response {
    match dashboard {
        Some(d) => Json(d.state().await).into_response(),
        None => reject(StatusCode::NOT_FOUND, "no dashboard on this endpoint"),
    }
}

/// `GET /dashboard/poison/{queue}`: up to [`LIST_LIMIT`] poison messages, each with its reason,
/// error and decoded body (UTF-8, lossy).
pub(super) async fn list(dashboard: &Dashboard, queue: &str) -> Response {
    let poison = match dashboard.poison(queue) {
        Ok(p) => p,
        Err((status, why)) => return reject(status, &why),
    };
    let records = match poison.list(LIST_LIMIT).await {
        Ok(r) => r,
        Err(e) => return reject(StatusCode::BAD_GATEWAY, &e.to_string()),
    };
    let encoding = dashboard
        .queues
        .get(queue)
        .map(|q| q.encoding)
        .unwrap_or_default();
    let messages: Vec<Value> = records
        .into_iter()
        .map(|r| match r.envelope {
            Ok(env) => {
                let body = encoding
                    .decode(&env.body)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .ok();
                json!({
                    "id": r.id,
                    "message_id": env.message_id,
                    "reason": env.reason.as_str(),
                    "error": env.error,
                    "dequeue_count": env.dequeue_count,
                    "body": body,
                })
            }
            Err(why) => {
                json!({ "id": r.id, "reason": "not an envelope", "error": why.to_string() })
            }
        })
        .collect();
    Json(json!({ "queue": queue, "poison_queue": poison.name(), "messages": messages }))
        .into_response()
}

/// The body of a requeue: `{"all": true}` or `{"ids": ["<poison-queue id>", ...]}`.
#[derive(Debug, Deserialize)]
pub(super) struct RequeueBody {
    #[serde(default)]
    all: bool,
    #[serde(default)]
    ids: Vec<String>,
}

/// `POST /dashboard/poison/{queue}/requeue`.
pub(super) async fn requeue(
    dashboard: &Dashboard,
    queue: &str,
    token: Option<&MetricsToken>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    // The token first, then the body: every error in the same JSON shape.
    if let Err((status, why)) = authorize_change(token, headers) {
        return reject(status, &why);
    }
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return reject(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send Content-Type: application/json",
        );
    }
    let body: RequeueBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => {
            return reject(
                StatusCode::BAD_REQUEST,
                &format!("the body is not {{\"all\": true}} or {{\"ids\": [...]}}: {e}"),
            )
        }
    };
    let selection = if body.all {
        Selection::All
    } else if body.ids.is_empty() {
        return reject(
            StatusCode::BAD_REQUEST,
            "give \"all\": true or \"ids\": [...]",
        );
    } else {
        Selection::Ids(body.ids.into_iter().collect::<BTreeSet<_>>())
    };
    let poison = match dashboard.poison(queue) {
        Ok(p) => p,
        Err((status, why)) => return reject(status, &why),
    };
    match poison.requeue(&selection).await {
        Ok(report) => {
            tracing::info!(
                queue,
                requeued = report.requeued.len(),
                skipped = report.skipped.len(),
                "poison messages requeued from the dashboard"
            );
            Json(json!({
                "requeued": report.requeued.iter().map(|(id, _, new)| json!({"id": id, "new_id": new})).collect::<Vec<_>>(),
                "skipped": report.skipped.iter().map(|(id, why)| json!({"id": id, "why": why})).collect::<Vec<_>>(),
                "missing": report.missing,
            }))
            .into_response()
        }
        Err(e) => reject(StatusCode::BAD_GATEWAY, &e.to_string()),
    }
}

//! The HTTP work-detected endpoint: other processes (producers on other machines, Event Grid
//! subscriptions, CloudEvents emitters) tell this worker that a queue has work.
//!
//! `POST /trigger` accepts, as JSON:
//! - a plain event `{"account": "acct", "queue": "orders", "payload_size": 1}` (or an array);
//! - Event Grid deliveries (an array of events whose `data` is the plain event), including the
//!   subscription-validation handshake, answered with `{"validationResponse": code}`;
//! - CloudEvents in structured mode (`specversion`, `data`), single or batch.
//!
//! `OPTIONS /trigger` answers the CloudEvents webhook validation handshake. `GET /healthz`
//! answers `ok`. Metrics are not served here: `GET /metrics` lives on the ops endpoint only,
//! behind its own `metrics_token`, so a trigger token never unlocks them.
//!
//! Safe to expose behind a token: with one configured, callers send
//! `Authorization: Bearer <token>` (the scheme in any case), compared in constant time
//! (`subtle`); `?token=` is accepted only with `allow_query_token` (for webhook systems that
//! cannot set headers), since URLs end up in proxies' and access logs. Bad bodies get 400 with
//! the reason, an event naming a queue this worker has no listener for 404 (naming it and the
//! queues it has; the request's other events are delivered), bodies over the limit 413, a
//! missing or wrong token 401, a request not answered
//! within `request_timeout` (reading its body included) 408, and requests beyond
//! `max_concurrent_requests` at once 503 at once (tower's timeout, concurrency-limit and
//! load-shed layers). Events naming another storage account than the worker's are ignored.
//!
//! Connections are capped (`max_connections`; one more is closed at once) and a request's
//! head must arrive within `header_read_timeout` (which also closes idle kept-alive
//! connections); see [`crate::endpoint`]. Refusals are counted in
//! `ebbflow_http_refused_total{endpoint="trigger"}` and logged at most twice a second.

use std::net::SocketAddr;

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{BoxError, Json, Router};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::ServiceBuilder;

use super::settings::HttpTriggerSettings;
use super::{Hub, WorkDetected};
use crate::endpoint::{
    bearer, guard_response, reject, tokens_match, ConnectionLimits, Refusal, Refusals,
};
use crate::store::validate_queue_name;

const VALIDATION_EVENT: &str = "Microsoft.EventGrid.SubscriptionValidationEvent";

#[derive(Clone)]
struct AppState {
    hub: Hub,
    token: Option<SecretString>,
    allow_query_token: bool,
    max_body_bytes: usize,
    refusals: Refusals,
}

/// The `endpoint` label of this endpoint's refusals.
const ENDPOINT: &str = "trigger";

fn counted_router(hub: Hub, settings: &HttpTriggerSettings, refusals: Refusals) -> Router {
    let state = AppState {
        hub,
        token: settings.token.clone(),
        allow_query_token: settings.allow_query_token,
        max_body_bytes: settings.max_body_bytes.as_usize(),
        refusals: refusals.clone(),
    };
    // Outermost first: errors of the layers below become responses; a request that finds
    // every slot taken is shed (503) instead of queueing; the timeout covers the handler,
    // which reads the body.
    let guard = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(move |e: BoxError| {
            let refusals = refusals.clone();
            async move { guard_response("trigger endpoint", "requests", e, &refusals, ENDPOINT) }
        }))
        .load_shed()
        .layer(GlobalConcurrencyLimitLayer::new(
            settings.max_concurrent_requests.as_usize(),
        ))
        .timeout(settings.request_timeout);
    // `/healthz` stays outside the guard: a liveness probe must not be shed with triggers.
    Router::new()
        .route("/trigger", post(trigger).options(handshake))
        .layer(guard)
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

/// Binds the endpoint; returns the bound address (useful with port 0) and the server future,
/// which ends when `stop` fires. Refused connections and requests are counted in `refusals`.
pub(crate) async fn bind(
    hub: Hub,
    settings: &HttpTriggerSettings,
    refusals: Refusals,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
    let listener = tokio::net::TcpListener::bind(settings.bind).await?;
    let addr = listener.local_addr()?;
    let app = counted_router(hub, settings, refusals.clone());
    let limits = ConnectionLimits {
        header_read_timeout: settings.header_read_timeout,
        max_connections: settings.max_connections as usize,
        max_connections_per_peer: settings.max_connections_per_peer as usize,
    };
    let serve = crate::endpoint::serve(listener, app, limits, ENDPOINT, refusals, async move {
        stop.cancelled().await
    });
    Ok((addr, serve))
}

/// Why a request is refused (401), when it is.
fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    query: &Query<Vec<(String, String)>>,
) -> Result<(), &'static str> {
    let Some(expected) = &state.token else {
        return Ok(());
    };
    let in_query = query
        .0
        .iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.as_str());
    let given = match (bearer(headers), in_query) {
        (Some(token), _) => token,
        (None, Some(token)) if state.allow_query_token => token,
        (None, Some(_)) => {
            return Err("send the token as Authorization: Bearer; ?token= is off \
                        (triggers.http.allow_query_token)")
        }
        (None, None) => return Err("missing token"),
    };
    if tokens_match(given, expected.expose_secret()) {
        Ok(())
    } else {
        Err("wrong token")
    }
}

async fn handshake(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Query<Vec<(String, String)>>,
) -> Response {
    if let Err(why) = authorize(&state, &headers, &query) {
        state.refusals.refuse(ENDPOINT, Refusal::Unauthorized);
        return reject(StatusCode::UNAUTHORIZED, why);
    }
    let Some(origin) = headers.get("webhook-request-origin").cloned() else {
        return reject(
            StatusCode::BAD_REQUEST,
            "WebHook-Request-Origin header missing",
        );
    };
    let mut response = StatusCode::OK.into_response();
    response
        .headers_mut()
        .insert("webhook-allowed-origin", origin);
    response
        .headers_mut()
        .insert("webhook-allowed-rate", HeaderValue::from_static("*"));
    response
}

async fn trigger(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    query: Query<Vec<(String, String)>>,
    body: Body,
) -> Response {
    // Refused before the body is read: a caller without the token holds no slot of
    // `max_concurrent_requests` while it sends (or stalls) a body.
    if let Err(why) = authorize(&state, &headers, &query) {
        // Counted and logged throttled: a flood of bad tokens must not flood the logs.
        state.refusals.refuse(ENDPOINT, Refusal::Unauthorized);
        return reject(StatusCode::UNAUTHORIZED, why);
    }
    let too_large = || {
        reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body over {} bytes", state.max_body_bytes),
        )
    };
    // A declared length over the limit is refused without reading a byte of it.
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.max_body_bytes as u64) {
        return too_large();
    }
    let body = match axum::body::to_bytes(body, state.max_body_bytes).await {
        Ok(body) => body,
        // The limit is the one failure a complete body can meet (chunked, over the limit);
        // anything else is a connection that broke off mid-body.
        Err(e) if format!("{e:?}").contains("LengthLimit") => return too_large(),
        Err(e) => {
            return reject(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            )
        }
    };
    tracing::debug!(path = uri.path(), bytes = body.len(), "trigger request");
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return reject(StatusCode::BAD_REQUEST, format!("body is not JSON: {e}")),
    };
    let items = match value {
        Value::Array(items) if !items.is_empty() => items,
        Value::Array(_) => return reject(StatusCode::BAD_REQUEST, "empty event array"),
        other => vec![other],
    };
    let mut events = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        match parse_item(item) {
            Ok(Parsed::Validation(code)) => {
                tracing::info!("Event Grid subscription validation answered");
                return Json(json!({ "validationResponse": code })).into_response();
            }
            Ok(Parsed::Event(e)) => events.push(e),
            Err(reason) => return reject(StatusCode::BAD_REQUEST, format!("event {i}: {reason}")),
        }
    }
    let woken: usize = events
        .iter()
        .map(|e| state.hub.deliver(e, super::TriggerSource::Http))
        .sum();
    tracing::debug!(events = events.len(), woken, "trigger delivery");
    // An event for a queue this worker does not listen on is a mistake to say, not a silent
    // zero: a misspelt name, or the trigger sent to the wrong workers. The others were
    // delivered all the same.
    let mut unknown: Vec<&str> = events
        .iter()
        .filter(|e| state.hub.is_unknown_queue(e))
        .map(|e| e.queue.as_str())
        .collect();
    unknown.sort_unstable();
    unknown.dedup();
    if !unknown.is_empty() {
        let queues = state.hub.queues();
        let error = format!(
            "this worker does not listen on queue {}; it listens on {}: check the queue name, \
             and that the trigger goes to the workers of that queue",
            unknown.join(", "),
            if queues.is_empty() {
                "none".to_string()
            } else {
                queues.join(", ")
            }
        );
        let body = json!({
            "error": error,
            "unknown_queues": unknown,
            "queues": queues,
            "events": events.len(),
            "woken": woken,
        });
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    }
    (
        StatusCode::ACCEPTED,
        Json(json!({ "events": events.len(), "woken": woken })),
    )
        .into_response()
}

enum Parsed {
    Event(WorkDetected),
    Validation(String),
}

fn parse_item(item: Value) -> Result<Parsed, String> {
    let Value::Object(mut map) = item else {
        return Err("not a JSON object".into());
    };
    let data = if map.contains_key("specversion") {
        map.remove("data").ok_or("CloudEvent without data")?
    } else if let Some(kind) = map.get("eventType").and_then(Value::as_str) {
        if kind == VALIDATION_EVENT {
            let code = map
                .get("data")
                .and_then(|d| d.get("validationCode"))
                .and_then(Value::as_str)
                .ok_or("validation event without data.validationCode")?;
            return Ok(Parsed::Validation(code.to_string()));
        }
        map.remove("data").ok_or("Event Grid event without data")?
    } else {
        Value::Object(map)
    };
    let event: WorkDetected =
        serde_json::from_value(data).map_err(|e| format!("not a work-detected event: {e}"))?;
    validate_queue_name(&event.queue)
        .map_err(|e| format!("queue {:?}: {}", event.queue, e.rule))?;
    Ok(Parsed::Event(event))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<Parsed, String> {
        parse_item(v)
    }

    #[test]
    fn plain_event_grid_and_cloudevents_shapes() {
        let plain = json!({"account": "a", "queue": "orders", "payload_size": 3});
        let grid = json!({"id": "1", "eventType": "Ebbflow.WorkDetected", "subject": "x",
                          "eventTime": "2026-11-23T08:00:00Z", "dataVersion": "1",
                          "data": {"queue": "orders"}});
        let cloud = json!({"specversion": "1.0", "type": "ebbflow.work-detected", "source": "/p",
                           "id": "1", "data": {"queue": "orders", "payload_size": 1}});
        for v in [plain, grid, cloud] {
            match parse(v.clone()) {
                Ok(Parsed::Event(e)) => assert_eq!(e.queue, "orders", "{v}"),
                _ => panic!("{v}"),
            }
        }
        let validation = json!({"eventType": VALIDATION_EVENT, "data": {"validationCode": "abc"}});
        assert!(matches!(parse(validation), Ok(Parsed::Validation(c)) if c == "abc"));
    }

    #[test]
    fn bad_shapes_say_why() {
        let cases = [
            (json!(7), "not a JSON object"),
            (json!({"specversion": "1.0"}), "CloudEvent without data"),
            (json!({"queue": 5}), "not a work-detected event"),
            (json!({"queue": "Bad_Name"}), "queue \"Bad_Name\""),
            (
                json!({"eventType": VALIDATION_EVENT, "data": {}}),
                "validationCode",
            ),
        ];
        for (v, why) in cases {
            let err = parse(v.clone())
                .err()
                .unwrap_or_else(|| panic!("{v} accepted"));
            assert!(err.contains(why), "{v}: {err}");
        }
    }
}

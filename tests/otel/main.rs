//! OpenTelemetry traces across processes: this test process (the producer, a `Publisher` with
//! `trace_context`) and the demo worker (the consumer, spawned) export to a tiny OTLP/HTTP
//! receiver in this test (JSON encoding), through Azurite's `orders` queue. One trace runs from
//! the producer's `send orders` span to the handler's own `charge order` span in the worker.
//!
//! A binary of its own: the producer installs the process-wide subscriber with the exporter,
//! which would export every other test's spans too. `cross_process` has the trace across the
//! producer, the worker and the command line; `in_process` the claim check, bus events and batch
//! calls. This file holds the receiver and the span helpers both use.

// A binary has no public surface: its modules' `pub` items are for each other.
#![allow(unreachable_pub)]

#[path = "../common/mod.rs"]
mod common;

mod cross_process;
mod in_process;

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::routing::post;
use axum::Router;
use serde_json::Value;

/// The spans received so far, flattened: (service.name, span object).
pub(crate) type Received = Arc<Mutex<Vec<(String, Value)>>>;

pub(crate) async fn receiver() -> (String, Received) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let export: Value = serde_json::from_slice(&body).expect("an OTLP/JSON export");
                for rs in export["resourceSpans"].as_array().into_iter().flatten() {
                    let service = rs["resource"]["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|a| a["key"] == "service.name")
                        .and_then(|a| a["value"]["stringValue"].as_str())
                        .unwrap_or_default()
                        .to_string();
                    for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                        for span in ss["spans"].as_array().into_iter().flatten() {
                            sink.lock().unwrap().push((service.clone(), span.clone()));
                        }
                    }
                }
                ([("content-type", "application/json")], "{}")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), received)
}

pub(crate) fn find<'a>(
    spans: &'a [(String, Value)],
    service: &str,
    name: &str,
) -> Option<&'a Value> {
    spans
        .iter()
        .find(|(s, span)| s == service && span["name"] == name)
        .map(|(_, span)| span)
}

pub(crate) fn attribute<'a>(span: &'a Value, key: &str) -> &'a Value {
    span["attributes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
        .unwrap_or(&Value::Null)
}

/// The OTLP/JSON status code of a span (2: error) and its description.
pub(crate) fn status(span: &Value) -> (i64, String) {
    (
        span["status"]["code"].as_i64().unwrap_or(0),
        span["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

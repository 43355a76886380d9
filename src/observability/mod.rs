//! What the worker shows operators, apart from the trigger endpoint:
//!
//! - [`readiness`]: readiness as named checks (ready, degraded, unready) plus the drain latch.
//! - [`metrics`]: the metrics on `prometheus-client`, read from the listeners at scrape time.
//! - [`server`]: the ops endpoint, `GET /healthz`, `GET /readyz`, `GET /metrics`, the dashboard.
//! - [`dashboard`]: the dashboard page, its JSON and its poison-queue actions.
//! - [`logging`]: the one log setup every binary uses (text or JSON lines, `RUST_LOG`).
//! - [`traces`]: OpenTelemetry spans after the messaging conventions, exported over OTLP.

pub mod dashboard;
mod log_fields;
pub mod logging;
pub mod metrics;
pub mod readiness;
pub mod server;
pub mod traces;
mod unrepeated;

pub use crate::config::{
    LogFormat, LogSettings, MetricsToken, ObservabilitySettings, TracesSettings,
};
/// Connection limits and refusal counters of the trigger and ops endpoints.
pub use crate::endpoint::{ConnectionLimits, Refusal, Refusals};
pub use logging::setup;
pub use metrics::Metrics;
pub use readiness::{CheckState, Readiness, ReadinessCheck, ReadinessReport, ReadinessStatus};

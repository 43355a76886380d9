//! What the worker shows operators, apart from the trigger endpoint:
//!
//! - [`Readiness`]: readiness as named checks (ready, degraded, unready) plus the drain latch.
//! - [`Metrics`]: the metrics on `prometheus-client`, read from the listeners at scrape time.
//! - The ops endpoint the worker serves (`observability.bind`): `GET /healthz`, `GET /readyz`,
//!   `GET /metrics`, and the dashboard (its page, its JSON and its poison-queue actions).
//! - [`logging`]: the one log setup every binary uses (text or JSON lines, `RUST_LOG`).
//! - [`traces`]: OpenTelemetry spans after the messaging conventions, exported over OTLP.

pub(crate) mod dashboard;
mod log_fields;
pub mod logging;
pub(crate) mod metrics;
pub(crate) mod readiness;
pub(crate) mod server;
pub mod traces;
mod unrepeated;

pub use crate::config::{
    LogFormat, LogSettings, MetricsToken, ObservabilitySettings, TracesSettings,
};
/// Connection limits and refusal counters of the trigger and ops endpoints.
pub use crate::endpoint::{Refusal, Refusals, CONTENT_TYPE};
pub use logging::setup;
pub use metrics::Metrics;
pub use readiness::{CheckState, Readiness, ReadinessCheck, ReadinessReport, ReadinessStatus};

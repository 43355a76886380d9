//! What the worker shows operators, apart from the trigger endpoint:
//!
//! - `settings.rs`: the `[observability]` (ops endpoint) and `[log]` settings.
//! - [`readiness`]: readiness as named checks (ready, degraded, unready) plus the drain latch.
//! - [`metrics`]: the metrics on `prometheus-client`, read from the listeners at scrape time.
//! - [`server`]: the ops endpoint, `GET /healthz`, `GET /readyz`, `GET /metrics`.
//! - [`logging`]: the one log setup every binary uses (text or JSON lines, `RUST_LOG`).

pub mod logging;
pub mod metrics;
pub mod readiness;
pub mod server;

pub use crate::config::{LogFormat, LogSettings, MetricsToken, ObservabilitySettings};
pub use logging::setup;
pub use metrics::Metrics;
pub use readiness::{CheckState, Readiness, ReadinessCheck, ReadinessReport, ReadinessStatus};

//! OpenTelemetry traces: with the `otel` cargo feature (on by default)
//! the crate's spans (`send`, `receive`, `process`, `settle` and the store's client
//! spans, after the messaging conventions) and every other `tracing` span (handlers' own) are
//! exported over OTLP: HTTP with protobuf or JSON bodies, or gRPC with the `otel-grpc` feature.
//!
//! Off unless configured: `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//! in the environment, or `[observability.traces] endpoint`, turns it on in any worker (the
//! log setup, [`super::logging::init_with_traces`], installs it). While it is off no exporter,
//! layer or thread exists and each span site costs one atomic load.
//!
//! The standard variables win over `[observability.traces]`:
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_SERVICE_NAME`;
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT` and
//! `OTEL_BSP_*` are read as the OpenTelemetry SDK reads them.

pub use crate::codec::spans::{
    exporting, inject, process_span, receive_span, received, send_span, settle_span,
};
pub use crate::config::{TracesProtocol as Protocol, TracesSettings};

#[cfg(feature = "otel")]
#[path = "traces_export.rs"]
mod export;

#[cfg(feature = "otel")]
pub use export::{announce, flush, install, InstallError};

/// Says that traces are exported and where; without the `otel` feature they never are.
#[cfg(not(feature = "otel"))]
pub fn announce() {}

/// Sends the spans still buffered; without the `otel` feature there are none.
#[cfg(not(feature = "otel"))]
pub fn flush() {}

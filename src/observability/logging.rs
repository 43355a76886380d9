//! One log setup for every binary (the demo, load-test and classic workers, the `ebbflow`
//! CLI, your own worker): lines go to stderr, `RUST_LOG` filters them, and the format is text
//! or JSON lines (`[log] format`, overridden by `EBBFLOW_LOG_FORMAT`).
//!
//! In JSON each line is one object: `timestamp` (RFC 3339, UTC), `level`, `target`, `fields`
//! (the event's fields, its text under `message`), and `span`/`spans` when the event happened
//! inside spans (a listener's `queue`, a message's `message_id`). In text, control characters
//! in messages and fields are escaped ([`EscapedFields`]), so a field from the network (a bus
//! envelope's `from`) cannot forge a line. Secrets never reach either format: errors and
//! settings redact them before they are logged.

use tracing_subscriber::EnvFilter;

pub use super::log_fields::EscapedFields;

use crate::config::{ConfigError, LogFormat, Settings, TracesSettings};

/// The environment variable that overrides `[log] format`: `text` or `json`.
pub const FORMAT_VAR: &str = "EBBFLOW_LOG_FORMAT";

/// The format to use: `EBBFLOW_LOG_FORMAT` when set, else `configured`; an error naming the
/// variable when it holds something else than `text` or `json`.
pub fn format_from_env(configured: LogFormat) -> Result<LogFormat, ConfigError> {
    match std::env::var(FORMAT_VAR) {
        Ok(v) if !v.trim().is_empty() => v
            .parse()
            .map_err(|e: crate::checks::InvalidValue| ConfigError::invalid(FORMAT_VAR, &v, e.rule)),
        _ => Ok(configured),
    }
}

/// Installs the process's log subscriber: `format` lines on stderr, filtered by `RUST_LOG`
/// (default `default_filter`, e.g. `"info"`). Returns `false` when a subscriber was already
/// installed (that one stays). A `RUST_LOG` that does not parse is reported in a warning and
/// `default_filter` used instead. Traces are exported when the standard `OTEL_EXPORTER_OTLP_*`
/// variables say where (see [`init_with_traces`]).
pub fn init(format: LogFormat, default_filter: &str) -> bool {
    init_with_traces(format, default_filter, &TracesSettings::default()).unwrap_or(false)
}

/// [`init`], plus the OpenTelemetry export of traces when `traces` or the environment names an
/// endpoint (see [`super::traces`]); an error when the trace settings are wrong (nothing is
/// installed then). Without an endpoint the subscriber is exactly [`init`]'s, costing nothing.
pub fn init_with_traces(
    format: LogFormat,
    default_filter: &str,
    traces: &TracesSettings,
) -> Result<bool, ConfigError> {
    let (filter, bad_filter) = match EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, None),
        Err(e) => {
            let given = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
            (
                EnvFilter::new(default_filter),
                given.map(|v| (v, e.to_string())),
            )
        }
    };
    let installed = match exporting_layer(traces)? {
        None => {
            let builder = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr);
            match format {
                LogFormat::Text => builder
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .fmt_fields(EscapedFields)
                    .try_init()
                    .is_ok(),
                LogFormat::Json => builder
                    .json()
                    .with_current_span(true)
                    .with_span_list(true)
                    .try_init()
                    .is_ok(),
            }
        }
        Some(otel) => {
            use tracing_subscriber::layer::SubscriberExt as _;
            use tracing_subscriber::util::SubscriberInitExt as _;
            use tracing_subscriber::Layer as _;
            // The log filter applies to the log lines only: the exporter has its own.
            let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
            let lines = match format {
                LogFormat::Text => lines
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .fmt_fields(EscapedFields)
                    .with_filter(filter)
                    .boxed(),
                LogFormat::Json => lines
                    .json()
                    .with_current_span(true)
                    .with_span_list(true)
                    .with_filter(filter)
                    .boxed(),
            };
            tracing_subscriber::registry()
                .with(otel)
                .with(lines)
                .try_init()
                .is_ok()
        }
    };
    if let Some((given, error)) = bad_filter {
        tracing::warn!(rust_log = %given, %error, default = default_filter, "RUST_LOG does not parse; using the default filter");
    }
    Ok(installed)
}

type OtelLayer = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

#[cfg(feature = "otel")]
fn exporting_layer(traces: &TracesSettings) -> Result<Option<OtelLayer>, ConfigError> {
    super::traces::install(traces).map_err(|e| ConfigError::Load(e.to_string()))
}

#[cfg(not(feature = "otel"))]
fn exporting_layer(traces: &TracesSettings) -> Result<Option<OtelLayer>, ConfigError> {
    let asked = traces.endpoint.is_some()
        || [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|v| !v.trim().is_empty()));
    if asked {
        eprintln!("traces are configured but this build has no `otel` feature: none are exported");
    }
    Ok(None)
}

/// What a worker's `main` does first: loads the settings ([`Settings::load`]), sets up logs
/// from them ([`init`] with `[log] format` or `EBBFLOW_LOG_FORMAT`), and logs why when the
/// settings are wrong (the caller then exits 2). Logs are set up either way, in text when the
/// settings could not say.
pub fn setup(default_filter: &str) -> Result<Settings, ConfigError> {
    let loaded = Settings::load();
    let configured = loaded.as_ref().map(|s| s.log.format).unwrap_or_default();
    let format = format_from_env(configured);
    let traces = loaded
        .as_ref()
        .map(|s| s.observability.traces.clone())
        .unwrap_or_default();
    let chosen = format.as_ref().copied().unwrap_or(configured);
    let traced = init_with_traces(chosen, default_filter, &traces).map(|_| ());
    if traced.is_err() {
        init(chosen, default_filter);
    }
    let result = format.and(traced).and(loaded);
    if let Err(e) = &result {
        tracing::error!(error = %e, "cannot start: the settings are wrong");
    }
    result
}

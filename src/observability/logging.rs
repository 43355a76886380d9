//! One log setup for every binary (the demo, load-test and classic workers, the `ebbflow`
//! CLI, your own worker): lines go to stderr, `RUST_LOG` filters them, and the format is text
//! or JSON lines (`[log] format`, overridden by `EBBFLOW_LOG_FORMAT`).
//!
//! In JSON each line is one object: `timestamp` (RFC 3339, UTC), `level`, `target`, `fields`
//! (the event's fields, its text under `message`), and `spans` (outermost first) when the
//! event happened inside spans (a listener's `queue`, a message's `message_id`). Either
//! format writes a field once per line: one a span carries is left out of the event's own.
//! In text, control characters in messages and fields are escaped, so a
//! field from the network (a bus envelope's `from`) cannot forge a line. Secrets never reach
//! either format: errors and settings redact them before they are logged.

use tracing_subscriber::EnvFilter;

pub(crate) use super::log_fields::EscapedFields;

use super::unrepeated;
use crate::config::{ConfigError, LogFormat, Settings, TracesSettings};

/// The Azure SDK's own log targets, off unless `RUST_LOG` is set: its lines repeat what
/// ebbflow already says once, in its own words (a retried call, a refused request). When
/// they are on, their lines pass through [`crate::config::redact`] whole (the SDK logs request
/// URLs with the query parameters it deems safe, such as a SAS's `sv`, which a malformed SAS
/// can hide a signature in).
pub(super) const SDK_TARGETS: [&str; 7] = [
    "azure_core",
    "azure_identity",
    "azure_storage_common",
    "azure_storage_queue",
    "azure_storage_blob",
    "typespec",
    "typespec_client_core",
];

/// The filter used when `RUST_LOG` is not set (or does not parse): `default_filter` with the
/// Azure SDK's targets turned off.
fn quiet_filter(default_filter: &str) -> EnvFilter {
    let sdk_off = SDK_TARGETS.map(|t| format!("{t}=off")).join(",");
    EnvFilter::try_new(format!("{default_filter},{sdk_off}"))
        .unwrap_or_else(|_| EnvFilter::new(default_filter))
}

/// `RUST_LOG` when it is set and parses, else [`quiet_filter`]; with the given text and its
/// parse error when it did not parse (for a warning once the subscriber is installed).
fn choose_filter(
    rust_log: Option<String>,
    default_filter: &str,
) -> (EnvFilter, Option<(String, String)>) {
    match rust_log.filter(|v| !v.trim().is_empty()) {
        None => (quiet_filter(default_filter), None),
        Some(given) => match EnvFilter::try_new(&given) {
            Ok(filter) => (filter, None),
            Err(e) => (quiet_filter(default_filter), Some((given, e.to_string()))),
        },
    }
}

/// The environment variable that overrides `[log] format`: `text` or `json`.
pub const FORMAT_VAR: &str = "EBBFLOW_LOG_FORMAT";

/// The format to use: `EBBFLOW_LOG_FORMAT` when set, else `configured`; an error naming the
/// variable when it holds something else than `text` or `json`.
///
/// # Errors
///
/// [`ConfigError`] naming `EBBFLOW_LOG_FORMAT` when it holds something else than `text` or
/// `json`.
pub fn format_from_env(configured: LogFormat) -> Result<LogFormat, ConfigError> {
    match std::env::var(FORMAT_VAR) {
        Ok(v) if !v.trim().is_empty() => v
            .parse()
            .map_err(|e: crate::checks::InvalidValue| ConfigError::invalid(FORMAT_VAR, &v, e.rule)),
        _ => Ok(configured),
    }
}

/// Installs the process's log subscriber: `format` lines on stderr, filtered by `RUST_LOG`
/// (default `default_filter`, e.g. `"info"`, with the Azure SDK's own logs off: set
/// `RUST_LOG`, e.g. `RUST_LOG=info,azure_core=debug`, to see them). Returns `false` when a
/// subscriber was already installed (that one stays). A `RUST_LOG` that does not parse is reported in a warning and
/// `default_filter` used instead. Traces are exported when the standard `OTEL_EXPORTER_OTLP_*`
/// variables say where (see [`init_with_traces`]).
pub fn init(format: LogFormat, default_filter: &str) -> bool {
    init_with_traces(format, default_filter, &TracesSettings::default()).unwrap_or(false)
}

/// [`init`], plus the OpenTelemetry export of traces when `traces` or the environment names an
/// endpoint (see [`super::traces`]); an error when the trace settings are wrong (nothing is
/// installed then). Without an endpoint the subscriber is exactly [`init`]'s, costing nothing.
///
/// # Errors
///
/// [`ConfigError`] when the trace settings are wrong (a protocol, filter or endpoint); nothing
/// is installed then.
pub fn init_with_traces(
    format: LogFormat,
    default_filter: &str,
    traces: &TracesSettings,
) -> Result<bool, ConfigError> {
    let (filter, bad_filter) = choose_filter(std::env::var("RUST_LOG").ok(), default_filter);
    let installed = match exporting_layer(traces)? {
        None => install_lines(format, filter),
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
                    .event_format(unrepeated::text())
                    .with_filter(filter)
                    .boxed(),
                LogFormat::Json => lines
                    .json()
                    .event_format(unrepeated::json())
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
    if installed {
        super::traces::announce();
    }
    if let Some((given, error)) = bad_filter {
        tracing::warn!(rust_log = %given, %error, default = default_filter, "RUST_LOG does not parse; using the default filter");
    }
    Ok(installed)
}

/// The log subscriber without the trace export: `format` lines on stderr under `filter`.
fn install_lines(format: LogFormat, filter: EnvFilter) -> bool {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .fmt_fields(EscapedFields)
            .event_format(unrepeated::text())
            .try_init()
            .is_ok(),
        LogFormat::Json => builder
            .json()
            .event_format(unrepeated::json())
            .try_init()
            .is_ok(),
    }
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
///
/// # Errors
///
/// [`ConfigError`] when the settings do not load or validate (already logged, so `main` only
/// exits with code 2), or the log settings are wrong.
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
        // The trace settings are wrong, so nothing was installed: log without the export, so
        // the error below (naming the variable or key) is seen.
        let (filter, _) = choose_filter(std::env::var("RUST_LOG").ok(), default_filter);
        install_lines(chosen, filter);
    }
    let result = format.and(traced).and(loaded);
    if let Err(e) = &result {
        tracing::error!(error = %e, "cannot start: the settings are wrong");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::choose_filter;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    /// What a process logs under the filter chosen for this `RUST_LOG`: one line from the
    /// SDK's HTTP policy, one from its core, one of ebbflow's.
    fn logged(rust_log: Option<&str>) -> String {
        let (filter, bad) = choose_filter(rust_log.map(String::from), "info");
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(buffer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "typespec_client_core::http::policies::logging", "sdk response");
            tracing::warn!(target: "azure_core::http::policies", "sdk retry");
            tracing::info!(target: "ebbflow::worker", "worker started");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        match bad {
            Some((given, error)) => format!("{text}bad: {given}: {error}"),
            None => text,
        }
    }

    #[test]
    fn the_sdk_logs_are_off_by_default_and_on_with_rust_log() {
        for quiet in [None, Some(""), Some("info=[")] {
            let text = logged(quiet);
            assert!(text.contains("worker started"), "{quiet:?}: {text}");
            assert!(!text.contains("sdk"), "{quiet:?}: {text}");
        }
        assert!(logged(Some("info=[")).contains("bad: info=["));
        let text = logged(Some("info"));
        assert!(
            text.contains("sdk response") && text.contains("sdk retry"),
            "{text}"
        );
        assert!(text.contains("worker started"), "{text}");
        let text = logged(Some("warn,azure_core=debug"));
        assert!(
            text.contains("sdk retry") && !text.contains("sdk response"),
            "{text}"
        );
    }
}

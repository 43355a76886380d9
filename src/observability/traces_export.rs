//! The OTLP export of traces (the `otel` feature): the tracer provider, the
//! `tracing-opentelemetry` layer, reading and writing span contexts, and the flush on drain.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceState, TracerProvider};
use opentelemetry::{SpanId, TraceId};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use super::{Protocol, TracesSettings};
use crate::codec::spans::{Attr, Exporter};
use crate::codec::TraceContext;

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];
const PROTOCOL_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
];

/// Why traces could not be set up (the worker then exits 2, naming the setting).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    /// A protocol variable or setting holds something else than the three protocols.
    #[error("{key}: {rule}")]
    Protocol {
        /// The variable or key.
        key: String,
        /// What it must be.
        rule: String,
    },
    /// `[observability.traces] filter` does not parse.
    #[error("observability.traces.filter: {0}")]
    Filter(String),
    /// The exporter could not be built (a bad endpoint URL).
    #[error("{key}: the traces exporter cannot use it ({error}); give a URL such as http://127.0.0.1:4318")]
    Exporter {
        /// The variable or key that named the endpoint.
        key: String,
        /// What the exporter said.
        error: String,
    },
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Sets up the export when an endpoint is configured (environment or `settings`): returns the
/// layer to add to the log subscriber, `None` when traces stay off. Once per process.
///
/// # Errors
///
/// [`InstallError`] when a protocol variable or setting, the filter, or the exporter (a bad
/// endpoint URL) is wrong.
pub fn install<S>(
    settings: &TracesSettings,
) -> Result<Option<Box<dyn Layer<S> + Send + Sync>>, InstallError>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    let endpoint_var = ENDPOINT_VARS.iter().find(|v| env(v).is_some());
    let from_env = endpoint_var.is_some();
    if !from_env && settings.endpoint.is_none() {
        return Ok(None);
    }
    let (protocol, protocol_key) = match PROTOCOL_VARS.iter().find_map(|v| env(v).map(|p| (v, p))) {
        Some((var, value)) => (
            value
                .parse()
                .map_err(|e: crate::checks::InvalidValue| InstallError::Protocol {
                    key: var.to_string(),
                    rule: e.to_string(),
                })?,
            *var,
        ),
        None => (
            settings.protocol.unwrap_or(Protocol::HttpProtobuf),
            "observability.traces.protocol",
        ),
    };
    let filter = settings.filter.as_deref().unwrap_or("info");
    let filter = EnvFilter::builder()
        .parse(filter)
        .map_err(|e| InstallError::Filter(e.to_string()))?;
    let exporter = match protocol {
        Protocol::HttpProtobuf | Protocol::HttpJson => {
            let wire = if protocol == Protocol::HttpJson {
                opentelemetry_otlp::Protocol::HttpJson
            } else {
                opentelemetry_otlp::Protocol::HttpBinary
            };
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(wire);
            if let (false, Some(base)) = (from_env, &settings.endpoint) {
                builder =
                    builder.with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')));
            }
            builder.build()
        }
        Protocol::Grpc => grpc(from_env, settings, protocol_key)?,
    }
    .map_err(|e| InstallError::Exporter {
        key: endpoint_var
            .map_or("observability.traces.endpoint", |v| v)
            .to_string(),
        error: e.to_string(),
    })?;
    let mut resource = Resource::builder();
    if env("OTEL_SERVICE_NAME").is_none() {
        let name = settings.service_name.clone().unwrap_or_else(binary_name);
        resource = resource.with_service_name(name);
    }
    let protocol_name = match protocol {
        Protocol::HttpJson => "http/json",
        Protocol::Grpc => "grpc",
        _ => "http/protobuf",
    };
    let destination = match endpoint_var {
        Some(var) => format!("{} ({var})", without_secrets(&env(var).unwrap_or_default())),
        None => without_secrets(settings.endpoint.as_deref().unwrap_or_default()),
    };
    let _ = DESTINATION.set(format!("{destination} over {protocol_name}"));
    let exporter = Watched {
        inner: exporter,
        destination,
        warned: Mutex::new(Warned::default()),
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("ebbflow");
    if PROVIDER.set(provider).is_err() {
        return Ok(None);
    }
    crate::codec::spans::install(Exporter {
        context_of,
        set_parent,
        set_attribute,
        add_link,
        set_error,
    });
    // The listener's long-lived spans (one per listener and per dequeue task) would make every
    // message's trace days long: the exporter never sees them, so `receive` and `process`
    // are roots unless a message brings its producer's context. The handler stack's own
    // `process` log span sits inside the exported `process <queue>` span (which also covers the
    // wait for a slot and the settle): exporting both would show the run twice.
    let long_lived = filter_fn(|meta| {
        let target = meta.target();
        !(meta.is_span()
            && ((target.starts_with("ebbflow::listener")
                && matches!(meta.name(), "listener" | "dequeue"))
                || (target == "ebbflow::handler::layer" && meta.name() == "process")))
    });
    // Where a span was made (always src/codec/spans.rs), the thread and busy/idle times are
    // noise on every span: left out.
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(long_lived)
        .with_filter(filter);
    Ok(Some(Box::new(layer)))
}

/// Where spans go and how, for the start-up line (set by [`install`]).
static DESTINATION: OnceLock<String> = OnceLock::new();

/// Says once, after the log subscriber is installed, that traces are on and where they go (the
/// endpoint without user, password or query, and the protocol). Nothing when traces are off.
pub fn announce() {
    if let Some(to) = DESTINATION.get() {
        tracing::info!(to = %to, "traces are exported");
    }
}

/// `endpoint` without what may be a secret: the user and password, the query and fragment.
fn without_secrets(endpoint: &str) -> String {
    match url::Url::parse(endpoint) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.set_fragment(None);
            url.to_string()
        }
        Err(_) => "<not a URL>".into(),
    }
}

/// At most one export-failure warning per this long.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The failures since the last warning, and when that was.
#[derive(Debug, Default)]
struct Warned {
    failures: u64,
    last: Option<Instant>,
}

impl Warned {
    /// Counts one failure at `now`; the number to report when a warning is due (the first
    /// failure, then at most one per [`WARN_EVERY`] with the failures since the last one).
    fn failed(&mut self, now: Instant) -> Option<u64> {
        self.failures += 1;
        let due = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= WARN_EVERY);
        if !due {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.failures))
    }
}

/// The OTLP exporter, telling about failed exports while the worker runs (the SDK says nothing
/// until the stop): a WARN on the first, then at most one a minute with a count.
#[derive(Debug)]
struct Watched<E> {
    inner: E,
    destination: String,
    warned: Mutex<Warned>,
}

impl<E: SpanExporter> Watched<E> {
    fn failed(&self, error: &OTelSdkError) {
        let due = self
            .warned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .failed(Instant::now());
        if let Some(failed) = due {
            tracing::warn!(
                to = %self.destination,
                failed,
                error = %error,
                "could not export spans; their spans are lost (`failed`: exports failed since \
                 the last warning, given at most once a minute)"
            );
        }
    }
}

impl<E: SpanExporter> SpanExporter for Watched<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        if let Err(e) = &result {
            self.failed(e);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(feature = "otel-grpc")]
fn grpc(
    from_env: bool,
    settings: &TracesSettings,
    _: &str,
) -> Result<
    Result<opentelemetry_otlp::SpanExporter, opentelemetry_otlp::ExporterBuildError>,
    InstallError,
> {
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let (false, Some(base)) = (from_env, &settings.endpoint) {
        builder = builder.with_endpoint(base.clone());
    }
    Ok(builder.build())
}

#[cfg(not(feature = "otel-grpc"))]
fn grpc(
    _: bool,
    _: &TracesSettings,
    key: &str,
) -> Result<
    Result<opentelemetry_otlp::SpanExporter, opentelemetry_otlp::ExporterBuildError>,
    InstallError,
> {
    Err(InstallError::Protocol {
        key: key.into(),
        rule: "\"grpc\" needs ebbflow built with the `otel-grpc` feature; use \"http/protobuf\" \
               (port 4318) or rebuild with --features otel-grpc"
            .into(),
    })
}

fn binary_name() -> String {
    std::env::args_os()
        .next()
        .as_deref()
        .map(std::path::Path::new)
        .and_then(|p| p.file_stem())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ebbflow".into())
}

/// Sends every finished span still buffered, waiting at most the exporter's timeout. The worker
/// calls it at the end of its drain, so a stopping worker's last spans are not lost; a
/// producer that exits on its own should call it before it does. Nothing when traces are off.
pub fn flush() {
    if let Some(provider) = PROVIDER.get() {
        let flush = || {
            if let Err(e) = provider.force_flush() {
                tracing::warn!(error = %e, "could not flush the last spans");
            }
        };
        // The exporter's own thread does the sending; waiting for it blocks this thread, which
        // a multi-thread runtime is told about so its other tasks move on.
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(flush),
            _ => flush(),
        }
    }
}

fn context_of(span: &Span) -> Option<TraceContext> {
    let cx = span.context();
    let span_cx = cx.span().span_context().clone();
    if !span_cx.is_valid() {
        return None;
    }
    Some(TraceContext::new(
        span_cx.trace_id().to_bytes(),
        span_cx.span_id().to_bytes(),
        span_cx.is_sampled(),
        &span_cx.trace_state().header(),
    ))
}

fn set_parent(span: &Span, cx: &TraceContext) {
    let parent = opentelemetry::Context::new().with_remote_span_context(remote(cx));
    let _ = span.set_parent(parent);
}

fn add_link(span: &Span, cx: &TraceContext) {
    span.add_link(remote(cx));
}

/// The OpenTelemetry form of a context that came from elsewhere.
fn remote(cx: &TraceContext) -> SpanContext {
    let state = TraceState::from_key_value(
        cx.tracestate()
            .split(',')
            .filter_map(|m| m.trim().split_once('=')),
    )
    .unwrap_or_default();
    SpanContext::new(
        TraceId::from_bytes(cx.trace_id()),
        SpanId::from_bytes(cx.span_id()),
        if cx.sampled() {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        },
        true,
        state,
    )
}

fn set_error(span: &Span, description: String) {
    span.set_status(opentelemetry::trace::Status::error(description));
}

fn set_attribute(span: &Span, key: &'static str, value: Attr) {
    match value {
        Attr::Text(s) => span.set_attribute(key, s),
        Attr::Int(n) => span.set_attribute(key, n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_failures_warn_at_once_then_at_most_once_a_minute_with_a_count() {
        let t0 = Instant::now();
        let mut warned = Warned::default();
        assert_eq!(warned.failed(t0), Some(1));
        assert_eq!(warned.failed(t0 + Duration::from_secs(1)), None);
        assert_eq!(warned.failed(t0 + Duration::from_secs(59)), None);
        assert_eq!(warned.failed(t0 + Duration::from_secs(60)), Some(3));
        assert_eq!(warned.failed(t0 + Duration::from_secs(61)), None);
        assert_eq!(warned.failed(t0 + Duration::from_secs(125)), Some(2));
    }

    #[derive(Debug)]
    struct Refusing;
    impl SpanExporter for Refusing {
        async fn export(&self, _: Vec<SpanData>) -> OTelSdkResult {
            Err(OTelSdkError::InternalFailure("connection refused".into()))
        }
    }

    #[test]
    fn a_failed_export_is_counted_and_passed_on() {
        let watched = Watched {
            inner: Refusing,
            destination: "http://127.0.0.1:4318/".into(),
            warned: Mutex::new(Warned::default()),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(rt.block_on(watched.export(Vec::new())).is_err());
        assert!(rt.block_on(watched.export(Vec::new())).is_err());
        let warned = watched.warned.lock().unwrap();
        // The first warned at once; the second waits for the next warning.
        assert_eq!(warned.failures, 1);
        assert!(warned.last.is_some());
    }

    #[test]
    fn the_start_up_line_shows_no_secrets() {
        assert_eq!(
            without_secrets("https://user:hunter2@otel.example:4318/v1/traces?key=s3cret#x"),
            "https://otel.example:4318/v1/traces"
        );
        assert_eq!(without_secrets("not a url"), "<not a URL>");
    }
}

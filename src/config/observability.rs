//! The `[observability]` and `[log]` settings, typed where they are parsed: a wrong value fails
//! the load with the key's name (`observability.metrics_token`, `log.format`).

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

use crate::checks::InvalidValue;
use crate::secret::REDACTED;

/// The ops endpoint (`/healthz`, `/readyz`, `/metrics`), apart from the trigger endpoint.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ObservabilitySettings {
    /// Where the ops endpoint listens, e.g. `"0.0.0.0:9464"`; off when unset. Port 0 picks a
    /// free port (logged, and shown by `RunningWorker::ops_addr`).
    pub bind: Option<SocketAddr>,
    /// When set, `GET /metrics` needs `Authorization: Bearer <token>` (the probes never do):
    /// 16+ printable ASCII characters, compared in constant time.
    pub metrics_token: Option<MetricsToken>,
    /// A request's head must arrive whole within this long, from the connection's opening or
    /// the end of the previous response (so it also closes idle kept-alive connections),
    /// 100ms..=5m; default 5 s.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Connections open at once on the ops endpoint, 1..=10000 (default 64); one more is
    /// closed at once. Its own budget: a flood of the trigger port leaves probes this one.
    pub max_connections: u32,
    /// Connections open at once on the ops endpoint from one peer (one source IP address; an
    /// IPv6 one by its /64), 1..=10000 (default 16; at most `max_connections` applies): one
    /// more from that peer is closed at once, so one client flooding the ops port leaves the
    /// probes (from the kubelet's address) their slots.
    pub max_connections_per_peer: u32,
    /// OpenTelemetry traces (`[observability.traces]`): off unless an endpoint is set here or
    /// in `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`.
    pub traces: TracesSettings,
}

impl Default for ObservabilitySettings {
    fn default() -> Self {
        Self {
            bind: None,
            metrics_token: None,
            header_read_timeout: Duration::from_secs(5),
            max_connections: 64,
            max_connections_per_peer: 16,
            traces: TracesSettings::default(),
        }
    }
}

impl ObservabilitySettings {
    pub(crate) fn validate(&self) -> Result<(), crate::checks::ConfigError> {
        crate::checks::check_duration(
            "observability.header_read_timeout",
            self.header_read_timeout,
            Duration::from_millis(100),
            Duration::from_secs(300),
        )?;
        crate::checks::check_range(
            "observability.max_connections",
            self.max_connections,
            1,
            10_000,
        )?;
        crate::checks::check_range(
            "observability.max_connections_per_peer",
            self.max_connections_per_peer,
            1,
            10_000,
        )
    }
}

/// The `[observability.traces]` settings. The standard environment variables win over them:
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`,
/// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_SERVICE_NAME`
/// and `OTEL_RESOURCE_ATTRIBUTES` (read by the SDK), plus `OTEL_EXPORTER_OTLP_HEADERS`,
/// `OTEL_EXPORTER_OTLP_TIMEOUT` as the exporter reads them.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct TracesSettings {
    /// The collector's base URL, e.g. `"http://otel-collector:4318"` (HTTP; `/v1/traces` is
    /// added) or `"http://otel-collector:4317"` (gRPC). Setting it turns traces on.
    pub endpoint: Option<String>,
    /// `"http/protobuf"` (default), `"http/json"` or `"grpc"` (needs the `otel-grpc` feature).
    pub protocol: Option<TracesProtocol>,
    /// `service.name` of the spans; default `OTEL_SERVICE_NAME`, else the binary's name.
    pub service_name: Option<String>,
    /// Which spans are exported, in `RUST_LOG` syntax; default `"info"` (ebbflow's spans and
    /// handlers' info spans). Apart from the log filter, so quiet logs still give full traces.
    pub filter: Option<String>,
}

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[non_exhaustive]
pub enum TracesProtocol {
    /// OTLP over HTTP, protobuf bodies (the OpenTelemetry default).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// OTLP over HTTP, JSON bodies.
    #[serde(rename = "http/json")]
    HttpJson,
    /// OTLP over gRPC (the `otel-grpc` cargo feature).
    #[serde(rename = "grpc")]
    Grpc,
}

impl std::str::FromStr for TracesProtocol {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        match s.trim().to_ascii_lowercase().as_str() {
            "http/protobuf" => Ok(Self::HttpProtobuf),
            "http/json" => Ok(Self::HttpJson),
            "grpc" => Ok(Self::Grpc),
            _ => Err(InvalidValue::new(
                format!("{s:?}"),
                "must be \"http/protobuf\", \"http/json\" or \"grpc\"",
            )),
        }
    }
}

/// A bearer token for `/metrics`: at least 16 characters, printable ASCII without spaces (what
/// an `Authorization` header can carry). Kept as a [`SecretString`]: its `Debug` never shows it.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct MetricsToken(SecretString);

impl MetricsToken {
    /// The shortest token accepted, in characters.
    pub const MIN_LEN: usize = 16;

    /// The token's text (for comparing with what a scraper sends).
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl TryFrom<String> for MetricsToken {
    type Error = InvalidValue;

    fn try_from(token: String) -> Result<Self, Self::Error> {
        if token.len() < Self::MIN_LEN {
            return Err(InvalidValue::new(
                REDACTED,
                format!("must be at least {} characters", Self::MIN_LEN),
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            // A secret file's trailing newline would make a token no header can match.
            return Err(InvalidValue::new(
                REDACTED,
                "must be printable ASCII without spaces or line breaks",
            ));
        }
        Ok(Self(token.into()))
    }
}

/// Written as `<redacted>` (`ebbflow config check` shows that one is set, never what it is).
impl Serialize for MetricsToken {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

/// How the worker writes its log lines (to stderr; `RUST_LOG` filters them).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct LogSettings {
    /// `"text"` (default) or `"json"`. The environment variable `EBBFLOW_LOG_FORMAT` overrides it.
    pub format: LogFormat,
}

/// The shape of log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum LogFormat {
    /// One human-readable line per event (colours when stderr is a terminal).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (with `message`),
    /// and the spans it happened in.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(InvalidValue::new(
                format!("{s:?}"),
                "must be \"text\" or \"json\"",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;
    use crate::config::Settings;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, String> {
        let env: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load_from(Path::new("/nonexistent-ebbflow-config"), &env)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_turn_the_ops_endpoint_off_and_log_text() {
        let s = load(&[]).unwrap();
        assert_eq!(s.observability.bind, None);
        assert!(s.observability.metrics_token.is_none());
        assert_eq!(s.log.format, LogFormat::Text);
    }

    #[test]
    fn the_ops_endpoint_and_log_format_load_from_the_environment() {
        let s = load(&[
            ("EBBFLOW__OBSERVABILITY__BIND", "0.0.0.0:9464"),
            (
                "EBBFLOW__OBSERVABILITY__METRICS_TOKEN",
                "scrape-token-0123456789",
            ),
            ("EBBFLOW__LOG__FORMAT", "json"),
        ])
        .unwrap();
        assert_eq!(s.observability.bind, Some("0.0.0.0:9464".parse().unwrap()));
        let token = s.observability.metrics_token.clone().unwrap();
        assert_eq!(token.expose(), "scrape-token-0123456789");
        assert_eq!(s.log.format, LogFormat::Json);
        let shown = format!("{:?}", s.observability);
        assert!(!shown.contains("scrape-token"), "{shown}");
        assert!(shown.contains("[REDACTED]"), "{shown}");
        let written = serde_json::to_string(&s.observability).unwrap();
        assert!(!written.contains("scrape-token"), "{written}");
        assert!(
            written.contains("\"metrics_token\":\"<redacted>\""),
            "{written}"
        );
        assert_eq!(
            serde_json::to_string(&s.log).unwrap(),
            r#"{"format":"json"}"#
        );
    }

    #[test]
    fn wrong_values_fail_the_load_naming_the_key() {
        let cases = [
            (
                "EBBFLOW__OBSERVABILITY__BIND",
                "localhost",
                "observability.bind",
            ),
            (
                "EBBFLOW__OBSERVABILITY__BIND",
                "1.2.3.4:99999",
                "observability.bind",
            ),
            (
                "EBBFLOW__OBSERVABILITY__METRICS_TOKEN",
                "short",
                "observability.metrics_token",
            ),
            ("EBBFLOW__OBSERVABILITY__PORT", "9464", "port"),
            ("EBBFLOW__LOG__FORMAT", "xml", "log.format"),
            ("EBBFLOW__LOG__LEVEL", "debug", "level"),
        ];
        for (key, value, named) in cases {
            let err = load(&[(key, value)]).expect_err(key);
            assert!(err.contains(named), "{key}={value}: {err}");
        }
        let err = load(&[(
            "EBBFLOW__OBSERVABILITY__METRICS_TOKEN",
            "a-token-with a-space-in-it",
        )])
        .unwrap_err();
        assert!(err.contains("observability.metrics_token"), "{err}");
        assert!(err.contains("printable ASCII"), "{err}");
        assert!(!err.contains("a-space-in-it"), "the token leaked: {err}");
    }

    #[test]
    fn log_formats_parse_in_any_case() {
        assert_eq!("JSON".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!(" text ".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert!("yaml"
            .parse::<LogFormat>()
            .unwrap_err()
            .rule
            .contains("\"text\" or \"json\""));
    }
}

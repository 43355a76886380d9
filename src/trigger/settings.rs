//! Push triggers from other processes: the HTTP work-detected endpoint.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::checks::{check_duration, check_range, BoundedU32, ConfigError};

/// Largest trigger body accepted, in bytes (`max_body_bytes`), 256..=1048576.
pub type MaxBodyBytes = BoundedU32<256, { 1 << 20 }>;
/// Trigger requests handled at once (`max_concurrent_requests`), 1..=10000.
pub type MaxConcurrentRequests = BoundedU32<1, 10_000>;

/// Push triggers from other processes.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct TriggerSettings {
    /// The HTTP work-detected endpoint.
    pub http: HttpTriggerSettings,
}

/// The HTTP endpoint that accepts work-detected events (plain JSON, Event Grid, CloudEvents).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct HttpTriggerSettings {
    /// Serve the endpoint.
    pub enabled: bool,
    /// Address to listen on; loopback by default. Any other address requires `token`.
    pub bind: std::net::SocketAddr,
    /// Token callers must send as `Authorization: Bearer <token>` (the scheme in any case),
    /// 16+ characters; compared in constant time. A [`SecretString`]: `Debug` never shows it,
    /// and it is read only through [`ExposeSecret::expose_secret`].
    #[serde(serialize_with = "crate::secret::serialize_hidden")]
    pub token: Option<SecretString>,
    /// Also accept the token as `?token=` in the URL, for webhook systems that cannot send
    /// headers. Off by default: proxies and access logs keep URLs (ebbflow's own logs redact
    /// `token=`). Needs `token`.
    pub allow_query_token: bool,
    /// Largest accepted body in bytes (larger: 413).
    pub max_body_bytes: MaxBodyBytes,
    /// A request not answered within this long, from its headers on (reading the body
    /// included), gets 408, 100ms..=5m.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Requests handled at once, 1..=10000; more get 503 at once (the sender retries; a
    /// trigger is a hint, the queue still holds the work).
    pub max_concurrent_requests: MaxConcurrentRequests,
    /// A request's head (request line and headers) must arrive whole within this long, counted
    /// from the connection's opening or, on a kept-alive connection, from the end of the
    /// previous response (so it also closes idle kept-alive connections), 100ms..=5m. Guards
    /// against slow-header (slowloris) and idle connections.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Connections open at once, 1..=100000; one more is closed at once, unread. Keep it well
    /// under the process's file-descriptor limit (`ulimit -n`), which the store and the ops
    /// endpoint share.
    pub max_connections: u32,
    /// Connections open at once from one peer (one source IP address; an IPv6 one by its
    /// /64), 1..=100000, at most `max_connections` applying; one more from that peer is closed
    /// at once, so one client cannot take every slot. Behind a proxy or ingress every caller
    /// shares the proxy's address: raise it to `max_connections` there.
    pub max_connections_per_peer: u32,
}

impl Default for HttpTriggerSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            bind: std::net::SocketAddr::from(([127, 0, 0, 1], 7075)),
            token: None,
            allow_query_token: false,
            max_body_bytes: BoundedU32(64 * 1024),
            request_timeout: default_trigger_request_timeout(),
            max_concurrent_requests: default_trigger_max_concurrent_requests(),
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER,
        }
    }
}

/// The default of `triggers.http.header_read_timeout`: 5 s.
pub(super) const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The default of `triggers.http.max_connections`: 256.
pub(super) const DEFAULT_MAX_CONNECTIONS: u32 = 256;
/// The default of `triggers.http.max_connections_per_peer`: 64.
pub(super) const DEFAULT_MAX_CONNECTIONS_PER_PEER: u32 = 64;

fn default_trigger_request_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_trigger_max_concurrent_requests() -> MaxConcurrentRequests {
    BoundedU32(64)
}

impl TriggerSettings {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let http = &self.http;
        if http.enabled && !http.bind.ip().is_loopback() && http.token.is_none() {
            return Err(ConfigError::invalid(
                "triggers.http.bind",
                http.bind,
                "a non-loopback address needs triggers.http.token",
            ));
        }
        let token = http.token.as_ref().map(ExposeSecret::expose_secret);
        if token.is_some_and(|t| t.len() < 16) {
            return Err(ConfigError::invalid(
                "triggers.http.token",
                "<redacted>",
                "must be at least 16 characters",
            ));
        }
        // What an `Authorization: Bearer` header can carry: a token with spaces (a secret file's
        // trailing newline) or non-ASCII could never match one.
        if token.is_some_and(|t| !t.bytes().all(|b| b.is_ascii_graphic())) {
            return Err(ConfigError::invalid(
                "triggers.http.token",
                "<redacted>",
                "must be printable ASCII without spaces or line breaks",
            ));
        }
        if http.allow_query_token && http.token.is_none() {
            return Err(ConfigError::invalid(
                "triggers.http.allow_query_token",
                true,
                "needs triggers.http.token",
            ));
        }
        check_duration(
            "triggers.http.request_timeout",
            http.request_timeout,
            Duration::from_millis(100),
            Duration::from_secs(300),
        )?;
        check_duration(
            "triggers.http.header_read_timeout",
            http.header_read_timeout,
            Duration::from_millis(100),
            Duration::from_secs(300),
        )?;
        check_range(
            "triggers.http.max_connections",
            http.max_connections,
            1,
            100_000,
        )?;
        check_range(
            "triggers.http.max_connections_per_peer",
            http.max_connections_per_peer,
            1,
            100_000,
        )?;
        Ok(())
    }
}

//! Typed settings, loaded once at start-up and validated with errors that name the key.
//!
//! Layers, lowest first: the defaults written in this file, `config/default.toml`, the optional
//! `config/{EBBFLOW_ENV}.toml`, then environment variables `EBBFLOW__<SECTION>__<KEY>` (double
//! underscores separate path segments, so `EBBFLOW__QUEUES__ORDERS__BATCH_SIZE=8` sets
//! `queues.orders.batch_size`). `AZURE_STORAGE_CONNECTION_STRING` is honoured when no storage
//! is configured otherwise. Unknown keys are rejected, so a misspelt key fails loudly instead of
//! silently falling back to a default.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::codec::Encoding;
use crate::store::{redact, validate_queue_name};

/// The environment variable that names the optional per-environment file.
pub const ENV_VAR: &str = "EBBFLOW_ENV";
/// The environment variable that points at the config folder (default `config`).
pub const DIR_VAR: &str = "EBBFLOW_CONFIG_DIR";
/// The conventional Azure connection string variable.
pub const CONNECTION_STRING_VAR: &str = "AZURE_STORAGE_CONNECTION_STRING";

/// The largest batch the service hands out in one receive.
pub const MAX_BATCH: u32 = 32;
const MAX_VISIBILITY: Duration = Duration::from_secs(7 * 24 * 3600);
const MAX_IDLE_BACKOFF: Duration = Duration::from_secs(600);

/// Everything a worker process needs to know.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Where the queues live. Empty means the embedded in-process backend.
    pub storage: StorageSettings,
    /// Process-wide settings.
    pub worker: WorkerSettings,
    /// Push triggers from other processes.
    pub triggers: TriggerSettings,
    /// One section per queue, keyed by queue name.
    pub queues: BTreeMap<String, QueueSettings>,
}

/// Where the queues live.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    /// An Azure Storage connection string (`AccountName=..;AccountKey=..`, or
    /// `UseDevelopmentStorage=true`). Falls back to `AZURE_STORAGE_CONNECTION_STRING`.
    pub connection_string: Option<String>,
    /// The queue service URL (`https://<account>.queue.core.windows.net`), optionally with a SAS
    /// token as its query. Without a SAS token, Entra ID (`credential`) is used.
    pub queue_endpoint: Option<String>,
    /// A SAS token for `queue_endpoint`, with or without the leading `?`.
    pub sas_token: Option<String>,
    /// Entra ID credential when `queue_endpoint` has no SAS: `developer_tools` (Azure CLI / azd)
    /// or `managed_identity`.
    pub credential: Option<CredentialKind>,
    /// Client id of a user-assigned managed identity (with `credential = "managed_identity"`).
    pub managed_identity_client_id: Option<String>,
    /// Create each configured queue (and its poison queue) at start-up if it is missing.
    pub create_queues: bool,
    /// How transient service errors are retried.
    pub retry: RetrySettings,
}

/// Retries of transient service errors (5xx, 503 ServerBusy, timeouts, connection errors):
/// exponential back-off with jitter, bounded. The SDK's own retry policy is off, so these are
/// the only retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// Tries per call, the first included, 1..=100.
    pub max_attempts: u32,
    /// The first back-off step.
    #[serde(with = "humantime_serde")]
    pub min_delay: Duration,
    /// The longest back-off step.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Our cut-off for one try, 2s..=10m: a try with no answer after this long is abandoned
    /// and retried, its outcome unknown. Every try also carries the service's own `timeout`
    /// ([`RetrySettings::service_timeout_secs`]: a fifth less, at least 1 s less, in whole
    /// seconds, at most 30), so a slow service answers (done, or 500 OperationTimedOut) before
    /// we give up; this cut-off then only fires when the connection itself is gone.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Refusals of our credentials (401/403) in a row, over all calls, before they count as
    /// final and stop the worker (exit 3), 1..=20. Fewer are retried with back-off, so one
    /// clock-skewed or mis-routed answer does not stop a fleet.
    pub refusals_before_fatal: u32,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            request_timeout: default_request_timeout(),
            refusals_before_fatal: default_refusals_before_fatal(),
        }
    }
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_refusals_before_fatal() -> u32 {
    3
}

/// The longest `timeout` the queue service honours; it lowers longer ones to this.
const MAX_SERVICE_TIMEOUT_SECS: u32 = 30;

impl RetrySettings {
    /// The service's own `timeout` (whole seconds) for a try we cut off after `cutoff`: a fifth
    /// less, and at least one second less, so its answer beats our cut-off; 1..=30.
    pub fn service_timeout_secs(cutoff: Duration) -> u32 {
        let margin = (cutoff / 5).max(Duration::from_secs(1));
        let secs = cutoff.saturating_sub(margin).as_secs();
        u32::try_from(secs)
            .unwrap_or(u32::MAX)
            .clamp(1, MAX_SERVICE_TIMEOUT_SECS)
    }
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            connection_string: None,
            queue_endpoint: None,
            sas_token: None,
            credential: None,
            managed_identity_client_id: None,
            create_queues: true,
            retry: RetrySettings::default(),
        }
    }
}

impl fmt::Debug for StorageSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Connection strings and SAS tokens carry secrets: show only their redacted forms.
        f.debug_struct("StorageSettings")
            .field(
                "connection_string",
                &self.connection_string.as_deref().map(redact),
            )
            .field(
                "queue_endpoint",
                &self.queue_endpoint.as_deref().map(redact),
            )
            .field("sas_token", &self.sas_token.as_ref().map(|_| "<redacted>"))
            .field("credential", &self.credential)
            .field("create_queues", &self.create_queues)
            .field("retry", &self.retry)
            .finish()
    }
}

/// The Entra ID credential to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// Azure CLI, then Azure Developer CLI (a developer's machine).
    DeveloperTools,
    /// The managed identity of the VM, container app or AKS pod.
    ManagedIdentity,
}

/// Process-wide settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// After a stop signal, how long in-flight handlers may run before they are cancelled.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            drain_timeout: default_drain_timeout(),
        }
    }
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Settings of one queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSettings {
    /// Messages asked for per receive, 1..=32.
    pub batch_size: u32,
    /// Handlers of this queue running at once, over all its tasks, 1..=10000. A task takes
    /// free slots before it receives and asks for no more messages than it holds, so no
    /// received message ever waits for a slot.
    pub concurrency: u32,
    /// After a full batch, a task receives again once this many slots are free (fewer, larger
    /// receives), or at once with any free slot when a trigger arrives. 1..=min(batch_size,
    /// concurrency); default half of that, at least 1.
    pub refill_threshold: Option<u32>,
    /// After a trigger wakes an idle task, wait up to this long for more arrivals before
    /// receiving: fewer receive calls under a trickle, at the price of up to this much pickup
    /// latency. Off when unset; at most 10s.
    #[serde(with = "humantime_serde")]
    pub batch_window: Option<Duration>,
    /// How long a received message stays invisible to other consumers, 1s..=7d.
    #[serde(with = "humantime_serde")]
    pub visibility_timeout: Duration,
    /// A message received more often than this goes to the poison queue, 1..=1000.
    pub max_dequeue_count: u32,
    /// How long a failed message stays invisible before it is retried (0s: at once), ..=7d.
    #[serde(with = "humantime_serde")]
    pub retry_delay: Duration,
    /// How message text is encoded on the queue: `base64` (what Azure Functions writes) or `none`.
    pub encoding: Encoding,
    /// Name of the poison queue; default `<queue>-poison`.
    pub poison_queue: Option<String>,
    /// The idle back-off curve.
    pub idle_backoff: IdleBackoffSettings,
    /// How many dequeue tasks run, and when that changes.
    pub scaling: ScalingSettings,
    /// A handler still running after this long has its cancellation token fired; it counts as
    /// a failure (retried). None: no limit.
    #[serde(with = "humantime_serde")]
    pub handler_timeout: Option<Duration>,
    /// After the timeout fired, how long the handler may take to wind down before it is
    /// aborted.
    #[serde(with = "humantime_serde")]
    pub handler_timeout_grace: Duration,
    /// Progress pulses of long jobs.
    pub heartbeat: HeartbeatSettings,
}

/// Heartbeat pulses of a running job (one message's handler): timed pulses every `interval`,
/// and count pulses each time the handler's progress count passes a multiple of `every`.
/// Each pulse is logged as a structured event and renews the message's visibility.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatSettings {
    /// A timed pulse this often while a handler runs (None: no timed pulses).
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// A count pulse every this many progress units (None: no count pulses).
    pub every: Option<u64>,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            batch_size: MAX_BATCH,
            concurrency: 16,
            refill_threshold: None,
            batch_window: None,
            visibility_timeout: Duration::from_secs(30),
            max_dequeue_count: 5,
            retry_delay: Duration::ZERO,
            encoding: Encoding::Base64,
            poison_queue: None,
            idle_backoff: IdleBackoffSettings::default(),
            scaling: ScalingSettings::default(),
            handler_timeout: None,
            handler_timeout_grace: Duration::from_secs(5),
            heartbeat: HeartbeatSettings::default(),
        }
    }
}

/// How many dequeue tasks a queue runs. Tasks are added at once when work shows up after
/// idleness, when batches come back full, when the (sparingly probed) depth calls for more, or
/// when the oldest message gets too old; a task whose idle back-off reached its maximum retires
/// unless it is the last one (or, with `min_tasks = 0`, also the last one).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScalingSettings {
    /// Tasks kept when idle: 1 (one task polls at the back-off maximum) or 0 (none poll; a push
    /// trigger or an idle depth probe brings the queue back).
    pub min_tasks: u32,
    /// Most tasks at once, 1..=256.
    pub max_tasks: u32,
    /// Target `ceil(depth / messages_per_task)` tasks (used when `depth_rules` is empty).
    pub messages_per_task: u32,
    /// Depth thresholds to task counts, e.g. `[{ from = 0, tasks = 1 }, { from = 100, tasks = 4 }]`:
    /// the rule with the highest `from` not above the depth applies. Overrides `messages_per_task`.
    pub depth_rules: Vec<DepthRule>,
    /// Least time between two scale-ups.
    #[serde(with = "humantime_serde")]
    pub scale_up_cooldown: Duration,
    /// Least time between two task retirements.
    #[serde(with = "humantime_serde")]
    pub scale_down_cooldown: Duration,
    /// While the queue is busy, probe its depth (one billable call) this often; also the least
    /// time between two probes prompted by events.
    #[serde(with = "humantime_serde")]
    pub depth_probe_interval: Duration,
    /// With no tasks running, probe the depth this often to notice work (off when unset).
    #[serde(with = "humantime_serde")]
    pub idle_probe_interval: Option<Duration>,
    /// Add a task when the oldest visible message is older than this (off when unset).
    #[serde(with = "humantime_serde")]
    pub scale_up_when_older_than: Option<Duration>,
    /// Declares that every producer of this queue publishes through this process's
    /// `Publisher`, so its in-process trigger can wake the queue from zero tasks.
    pub wake_on_publish: bool,
}

impl Default for ScalingSettings {
    fn default() -> Self {
        Self {
            min_tasks: 1,
            max_tasks: 4,
            messages_per_task: 64,
            depth_rules: Vec::new(),
            scale_up_cooldown: Duration::from_secs(1),
            scale_down_cooldown: Duration::ZERO,
            depth_probe_interval: Duration::from_secs(5),
            idle_probe_interval: None,
            scale_up_when_older_than: None,
            wake_on_publish: false,
        }
    }
}

/// From `from` messages deep, run `tasks` tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DepthRule {
    /// The depth this rule starts at.
    pub from: u64,
    /// Tasks to run from there.
    pub tasks: u32,
}

/// Push triggers from other processes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TriggerSettings {
    /// The HTTP work-detected endpoint.
    pub http: HttpTriggerSettings,
}

/// The HTTP endpoint that accepts work-detected events (plain JSON, Event Grid, CloudEvents).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpTriggerSettings {
    /// Serve the endpoint.
    pub enabled: bool,
    /// Address to listen on; loopback by default. Any other address requires `token`.
    pub bind: std::net::SocketAddr,
    /// Token callers must send as `Authorization: Bearer <token>` (the scheme in any case),
    /// 16+ characters; compared in constant time.
    pub token: Option<String>,
    /// Also accept the token as `?token=` in the URL, for webhook systems that cannot send
    /// headers. Off by default: proxies and access logs keep URLs (ebbflow's own logs redact
    /// `token=`). Needs `token`.
    pub allow_query_token: bool,
    /// Largest accepted body in bytes (larger: 413).
    pub max_body_bytes: usize,
    /// A request not answered within this long, from its headers on (reading the body
    /// included), gets 408, 100ms..=5m.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Requests handled at once, 1..=10000; more get 503 at once (the sender retries; a
    /// trigger is a hint, the queue still holds the work).
    pub max_concurrent_requests: u32,
}

impl Default for HttpTriggerSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            bind: std::net::SocketAddr::from(([127, 0, 0, 1], 7075)),
            token: None,
            allow_query_token: false,
            max_body_bytes: 64 * 1024,
            request_timeout: default_trigger_request_timeout(),
            max_concurrent_requests: default_trigger_max_concurrent_requests(),
        }
    }
}

fn default_trigger_request_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_trigger_max_concurrent_requests() -> u32 {
    64
}

impl fmt::Debug for HttpTriggerSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpTriggerSettings")
            .field("enabled", &self.enabled)
            .field("bind", &self.bind)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("allow_query_token", &self.allow_query_token)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("request_timeout", &self.request_timeout)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .finish()
    }
}

/// The randomized exponential idle back-off: after the n-th empty receive a task sleeps
/// `min + (2^n - 1) * random(0.8 * delta, 1.2 * delta)`, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdleBackoffSettings {
    /// The shortest sleep after an empty receive.
    #[serde(with = "humantime_serde")]
    pub min: Duration,
    /// The longest sleep, at most 10 minutes.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// The step that doubles with each further empty receive.
    #[serde(with = "humantime_serde")]
    pub delta: Duration,
}

impl Default for IdleBackoffSettings {
    fn default() -> Self {
        Self {
            min: Duration::from_millis(100),
            max: Duration::from_secs(30),
            delta: Duration::from_millis(100),
        }
    }
}

/// A settings problem, naming the key (or file) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file or environment value could not be read into the typed settings.
    #[error("config: {0}")]
    Load(String),
    /// A value is out of its allowed range.
    #[error("config: {key} = {value}: {rule}")]
    Invalid {
        /// The full key, e.g. `queues.orders.batch_size`.
        key: String,
        /// The value found (secrets redacted).
        value: String,
        /// What is allowed.
        rule: String,
    },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, value: impl fmt::Display, rule: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            value: value.to_string(),
            rule: rule.into(),
        }
    }
}

impl Settings {
    /// Loads from the folder named by `EBBFLOW_CONFIG_DIR` (default `config`), the process
    /// environment, and validates.
    pub fn load() -> Result<Self, ConfigError> {
        let dir = std::env::var_os(DIR_VAR)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("config"));
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Self::load_from(&dir, &env)
    }

    /// Loads from `dir` and the given environment (a map, so tests need not touch the
    /// process environment), and validates.
    pub fn load_from(dir: &Path, env: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from(dir.join("default.toml")).required(false));
        if let Some(name) = env.get(ENV_VAR).filter(|n| !n.is_empty()) {
            builder = builder
                .add_source(config::File::from(dir.join(format!("{name}.toml"))).required(false));
        }
        let overrides: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("EBBFLOW__"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("EBBFLOW")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(overrides)),
        );
        let loaded = builder
            .build()
            .map_err(|e| ConfigError::Load(redact(&e.to_string())))?;
        let mut settings: Settings = loaded
            .try_deserialize()
            .map_err(|e| ConfigError::Load(redact(&e.to_string())))?;
        if settings.storage.connection_string.is_none() && settings.storage.queue_endpoint.is_none()
        {
            settings.storage.connection_string = env
                .get(CONNECTION_STRING_VAR)
                .filter(|s| !s.trim().is_empty())
                .cloned();
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every value against its allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.storage;
        if s.connection_string.is_some() && s.queue_endpoint.is_some() {
            return Err(ConfigError::invalid(
                "storage.queue_endpoint",
                redact(s.queue_endpoint.as_deref().unwrap_or_default()),
                "set either storage.connection_string or storage.queue_endpoint, not both",
            ));
        }
        if s.sas_token.is_some() && s.queue_endpoint.is_none() {
            return Err(ConfigError::invalid(
                "storage.sas_token",
                "<redacted>",
                "needs storage.queue_endpoint",
            ));
        }
        if self.worker.drain_timeout > Duration::from_secs(3600) {
            return Err(ConfigError::invalid(
                "worker.drain_timeout",
                humantime::format_duration(self.worker.drain_timeout),
                "must be at most 1h",
            ));
        }
        let r = &s.retry;
        check_range("storage.retry.max_attempts", r.max_attempts, 1, 100)?;
        check_duration(
            "storage.retry.max_delay",
            r.max_delay,
            Duration::from_millis(1),
            Duration::from_secs(300),
        )?;
        check_duration(
            "storage.retry.min_delay",
            r.min_delay,
            Duration::from_millis(1),
            r.max_delay,
        )?;
        // At least 2 s, so the service's own timeout (at least 1 s) stays below it.
        check_duration(
            "storage.retry.request_timeout",
            r.request_timeout,
            Duration::from_secs(2),
            Duration::from_secs(600),
        )?;
        check_range(
            "storage.retry.refusals_before_fatal",
            r.refusals_before_fatal,
            1,
            20,
        )?;
        for (name, q) in &self.queues {
            let key = |field: &str| format!("queues.{name}.{field}");
            validate_queue_name(name)
                .map_err(|rule| ConfigError::invalid(format!("queues.{name}"), name, rule))?;
            check_range(&key("batch_size"), q.batch_size, 1, MAX_BATCH)?;
            check_range(&key("concurrency"), q.concurrency, 1, 10_000)?;
            if let Some(refill) = q.refill_threshold {
                check_range(
                    &key("refill_threshold"),
                    refill,
                    1,
                    q.batch_size.min(q.concurrency).max(1),
                )?;
            }
            if let Some(window) = q.batch_window {
                check_duration(
                    &key("batch_window"),
                    window,
                    Duration::from_millis(1),
                    Duration::from_secs(10),
                )?;
            }
            check_range(&key("max_dequeue_count"), q.max_dequeue_count, 1, 1000)?;
            check_duration(
                &key("visibility_timeout"),
                q.visibility_timeout,
                Duration::from_secs(1),
                MAX_VISIBILITY,
            )?;
            check_duration(
                &key("retry_delay"),
                q.retry_delay,
                Duration::ZERO,
                MAX_VISIBILITY,
            )?;
            let poison = q.poison_queue_name(name);
            validate_queue_name(&poison)
                .map_err(|rule| ConfigError::invalid(key("poison_queue"), &poison, rule))?;
            if poison == *name {
                return Err(ConfigError::invalid(
                    key("poison_queue"),
                    &poison,
                    "must differ from the queue itself",
                ));
            }
            let b = &q.idle_backoff;
            check_duration(
                &key("idle_backoff.max"),
                b.max,
                Duration::from_millis(1),
                MAX_IDLE_BACKOFF,
            )?;
            check_duration(&key("idle_backoff.min"), b.min, Duration::ZERO, b.max)?;
            check_duration(&key("idle_backoff.delta"), b.delta, Duration::ZERO, b.max)?;
            self.validate_scaling(name, &q.scaling)?;
            if let Some(t) = q.handler_timeout {
                check_duration(
                    &key("handler_timeout"),
                    t,
                    Duration::from_millis(1),
                    MAX_VISIBILITY,
                )?;
            }
            check_duration(
                &key("handler_timeout_grace"),
                q.handler_timeout_grace,
                Duration::ZERO,
                Duration::from_secs(3600),
            )?;
            if let Some(t) = q.heartbeat.interval {
                check_duration(
                    &key("heartbeat.interval"),
                    t,
                    Duration::from_millis(10),
                    MAX_VISIBILITY,
                )?;
            }
            if q.heartbeat.every == Some(0) {
                return Err(ConfigError::invalid(
                    key("heartbeat.every"),
                    0,
                    "must be at least 1",
                ));
            }
        }
        let http = &self.triggers.http;
        if http.enabled && !http.bind.ip().is_loopback() && http.token.is_none() {
            return Err(ConfigError::invalid(
                "triggers.http.bind",
                http.bind,
                "a non-loopback address needs triggers.http.token",
            ));
        }
        if http.token.as_deref().is_some_and(|t| t.len() < 16) {
            return Err(ConfigError::invalid(
                "triggers.http.token",
                "<redacted>",
                "must be at least 16 characters",
            ));
        }
        check_range(
            "triggers.http.max_body_bytes",
            u32::try_from(http.max_body_bytes).unwrap_or(u32::MAX),
            256,
            1 << 20,
        )?;
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
        check_range(
            "triggers.http.max_concurrent_requests",
            http.max_concurrent_requests,
            1,
            10_000,
        )?;
        Ok(())
    }

    fn validate_scaling(&self, name: &str, s: &ScalingSettings) -> Result<(), ConfigError> {
        let key = |field: &str| format!("queues.{name}.scaling.{field}");
        check_range(&key("max_tasks"), s.max_tasks, 1, 256)?;
        check_range(&key("min_tasks"), s.min_tasks, 0, 1)?;
        check_range(&key("messages_per_task"), s.messages_per_task, 1, 1_000_000)?;
        check_duration(
            &key("depth_probe_interval"),
            s.depth_probe_interval,
            Duration::from_millis(100),
            Duration::from_secs(3600),
        )?;
        if let Some(idle) = s.idle_probe_interval {
            check_duration(
                &key("idle_probe_interval"),
                idle,
                Duration::from_secs(1),
                Duration::from_secs(24 * 3600),
            )?;
        }
        for (i, rule) in s.depth_rules.iter().enumerate() {
            check_range(
                &format!("{}[{i}].tasks", key("depth_rules")),
                rule.tasks,
                1,
                s.max_tasks,
            )?;
            if i > 0 && rule.from <= s.depth_rules[i - 1].from {
                return Err(ConfigError::invalid(
                    format!("{}[{i}].from", key("depth_rules")),
                    rule.from,
                    "rules must be in increasing order of `from`",
                ));
            }
        }
        let wakes =
            self.triggers.http.enabled || s.idle_probe_interval.is_some() || s.wake_on_publish;
        if s.min_tasks == 0 && !wakes {
            return Err(ConfigError::invalid(
                key("min_tasks"),
                0,
                format!(
                    "nothing could wake queue {name} from zero tasks: enable [triggers.http], set \
                     queues.{name}.scaling.idle_probe_interval, or set \
                     queues.{name}.scaling.wake_on_publish = true if every producer publishes \
                     through this process"
                ),
            ));
        }
        Ok(())
    }
}

impl QueueSettings {
    /// Free slots a task waits for after a full batch: `refill_threshold`, or half of
    /// `min(batch_size, concurrency)`, at least 1.
    pub fn refill_slots(&self) -> usize {
        let most = self.batch_size.min(self.concurrency).max(1);
        self.refill_threshold.unwrap_or(most / 2).clamp(1, most) as usize
    }

    /// The poison queue's name: the configured one, else `<queue>-poison`.
    pub fn poison_queue_name(&self, queue: &str) -> String {
        self.poison_queue
            .clone()
            .unwrap_or_else(|| format!("{queue}-poison"))
    }
}

fn check_range(key: &str, value: u32, min: u32, max: u32) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            value,
            format!("must be {min}..={max}"),
        ))
    }
}

fn check_duration(
    key: &str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            humantime::format_duration(value),
            format!(
                "must be {}..={}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config folder in the temp dir, removed when dropped.
    struct TempConfig(PathBuf);

    impl std::ops::Deref for TempConfig {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempConfig {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir_with(toml: &str) -> TempConfig {
        let dir = std::env::temp_dir().join(format!("ebbflow-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("default.toml"), toml).unwrap();
        TempConfig(dir)
    }

    #[test]
    fn temp_config_folders_are_removed() {
        let dir = dir_with("");
        let path = dir.to_path_buf();
        assert!(path.join("default.toml").exists());
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn trigger_hardening_settings_load_and_are_checked() {
        let dir = dir_with(
            "[triggers.http]\nenabled = true\ntoken = \"0123456789abcdef-secret\"\n\
             allow_query_token = true\nrequest_timeout = \"2s\"\nmax_concurrent_requests = 4\n",
        );
        let s = Settings::load_from(&dir, &env(&[])).unwrap();
        let http = &s.triggers.http;
        assert!(http.allow_query_token);
        assert_eq!(http.request_timeout, Duration::from_secs(2));
        assert_eq!(http.max_concurrent_requests, 4);
        let defaults = HttpTriggerSettings::default();
        assert!(!defaults.allow_query_token, "query tokens are opt-in");
        assert_eq!(defaults.request_timeout, Duration::from_secs(10));
        assert_eq!(defaults.max_concurrent_requests, 64);
        for (toml, expected) in [
            (
                "[triggers.http]\nallow_query_token = true\n",
                "config: triggers.http.allow_query_token = true: needs triggers.http.token",
            ),
            (
                "[triggers.http]\nrequest_timeout = \"10m\"\n",
                "config: triggers.http.request_timeout = 10m: must be 100ms..=5m",
            ),
            (
                "[triggers.http]\nmax_concurrent_requests = 0\n",
                "config: triggers.http.max_concurrent_requests = 0: must be 1..=10000",
            ),
        ] {
            let dir = dir_with(toml);
            let err = Settings::load_from(&dir, &env(&[]))
                .unwrap_err()
                .to_string();
            assert_eq!(err, expected);
        }
    }

    #[test]
    fn retry_settings_keep_the_service_timeout_below_the_cut_off() {
        let secs = |s: u64| RetrySettings::service_timeout_secs(Duration::from_secs(s));
        assert_eq!(secs(2), 1);
        assert_eq!(secs(3), 2);
        assert_eq!(secs(10), 8);
        assert_eq!(secs(30), 24);
        assert_eq!(secs(600), 30, "the service's maximum");
        assert_eq!(
            RetrySettings::service_timeout_secs(Duration::from_millis(2900)),
            1
        );
        for ms in (2000..=600_000).step_by(100) {
            let cutoff = Duration::from_millis(ms);
            let service = Duration::from_secs(RetrySettings::service_timeout_secs(cutoff).into());
            assert!(service + Duration::from_millis(900) <= cutoff, "{cutoff:?}");
        }
        let dir = dir_with("[storage.retry]\nrequest_timeout = \"1s\"\n");
        let err = Settings::load_from(&dir, &env(&[]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "config: storage.retry.request_timeout = 1s: must be 2s..=10m"
        );
        let dir = dir_with("[storage.retry]\nrefusals_before_fatal = 0\n");
        let err = Settings::load_from(&dir, &env(&[]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "config: storage.retry.refusals_before_fatal = 0: must be 1..=20"
        );
        assert_eq!(RetrySettings::default().refusals_before_fatal, 3);
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_apply_to_a_bare_queue_section() {
        let dir = dir_with("[queues.orders]\n");
        let s = Settings::load_from(&dir, &env(&[])).unwrap();
        let q = &s.queues["orders"];
        assert_eq!(q.batch_size, 32);
        assert_eq!(q.max_dequeue_count, 5);
        assert_eq!(q.encoding, Encoding::Base64);
        assert_eq!(q.idle_backoff.max, Duration::from_secs(30));
        assert_eq!(q.poison_queue_name("orders"), "orders-poison");
        assert!(s.storage.connection_string.is_none());
    }

    #[test]
    fn batch_size_33_is_rejected_naming_the_key() {
        let dir = dir_with("[queues.orders]\nbatch_size = 33\n");
        let err = Settings::load_from(&dir, &env(&[]))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "config: queues.orders.batch_size = 33: must be 1..=32");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let dir = dir_with("[queues.orders]\nbatchsize = 8\n");
        let err = Settings::load_from(&dir, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("batchsize"), "{err}");
    }

    #[test]
    fn layers_file_then_env_file_then_environment() {
        let dir = dir_with(
            "[queues.orders]\nbatch_size = 8\nconcurrency = 3\n[queues.orders.scaling]\nmax_tasks = 2\n",
        );
        std::fs::write(
            dir.join("prod.toml"),
            "[queues.orders]\nconcurrency = 5\n[queues.orders.scaling]\nmax_tasks = 4\n",
        )
        .unwrap();
        let s = Settings::load_from(
            &dir,
            &env(&[
                ("EBBFLOW_ENV", "prod"),
                ("EBBFLOW__QUEUES__ORDERS__CONCURRENCY", "6"),
                ("EBBFLOW__QUEUES__ORDERS__VISIBILITY_TIMEOUT", "2m"),
            ]),
        )
        .unwrap();
        let q = &s.queues["orders"];
        assert_eq!(
            (q.batch_size, q.scaling.max_tasks, q.concurrency),
            (8, 4, 6),
            "file < env file < environment"
        );
        assert_eq!(q.visibility_timeout, Duration::from_secs(120));
    }

    #[test]
    fn human_durations_and_backoff_limits() {
        let dir = dir_with("[queues.orders.idle_backoff]\nmax = \"11m\"\n");
        let err = Settings::load_from(&dir, &env(&[]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "config: queues.orders.idle_backoff.max = 11m: must be 1ms..=10m"
        );
        let dir = dir_with("[queues.orders]\nvisibility_timeout = \"soon\"\n");
        let err = Settings::load_from(&dir, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("visibility_timeout"), "{err}");
    }

    #[test]
    fn bad_queue_names_and_encodings_are_named() {
        let dir = dir_with("[queues.Orders]\n");
        let err = Settings::load_from(&dir, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("config: queues.Orders = Orders:"), "{err}");
        let dir = dir_with("[queues.orders]\nencoding = \"rot13\"\n");
        let err = Settings::load_from(&dir, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("rot13"), "{err}");
    }

    #[test]
    fn zero_tasks_needs_a_way_to_wake_up() {
        let dir = dir_with("[queues.orders.scaling]\nmin_tasks = 0\n");
        let err = Settings::load_from(&dir, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "config: queues.orders.scaling.min_tasks = 0: nothing could wake queue orders"
            ),
            "{err}"
        );
        for way in [
            "[triggers.http]\nenabled = true\n",
            "[queues.orders.scaling]\nidle_probe_interval = \"1m\"\n",
            "[queues.orders.scaling]\nwake_on_publish = true\n",
        ] {
            let toml = if way.contains("queues.orders") {
                way.replace("]\n", "]\nmin_tasks = 0\n")
            } else {
                format!("{way}[queues.orders.scaling]\nmin_tasks = 0\n")
            };
            let dir = dir_with(&toml);
            Settings::load_from(&dir, &env(&[])).unwrap_or_else(|e| panic!("{toml}: {e}"));
        }
    }

    #[test]
    fn depth_rules_load_and_must_increase() {
        let dir = dir_with(
            "[queues.orders.scaling]\nmax_tasks = 10\ndepth_rules = [{ from = 0, tasks = 1 }, { from = 100, tasks = 10 }]\n",
        );
        let s = Settings::load_from(&dir, &env(&[])).unwrap();
        assert_eq!(
            s.queues["orders"].scaling.depth_rules[1],
            DepthRule {
                from: 100,
                tasks: 10
            }
        );
        let dir = dir_with(
            "[queues.orders.scaling]\nmax_tasks = 10\ndepth_rules = [{ from = 100, tasks = 1 }, { from = 100, tasks = 2 }]\n",
        );
        let err = Settings::load_from(&dir, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("queues.orders.scaling.depth_rules[1].from = 100"),
            "{err}"
        );
        let dir = dir_with(
            "[queues.orders.scaling]\nmax_tasks = 2\ndepth_rules = [{ from = 0, tasks = 3 }]\n",
        );
        let err = Settings::load_from(&dir, &env(&[]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "config: queues.orders.scaling.depth_rules[0].tasks = 3: must be 1..=2"
        );
    }

    #[test]
    fn http_trigger_off_loopback_needs_a_token() {
        let dir = dir_with("[triggers.http]\nenabled = true\nbind = \"0.0.0.0:7075\"\n");
        let err = Settings::load_from(&dir, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("triggers.http.bind = 0.0.0.0:7075"), "{err}");
        let dir = dir_with(
            "[triggers.http]\nenabled = true\nbind = \"0.0.0.0:7075\"\ntoken = \"0123456789abcdef-secret\"\n",
        );
        let s = Settings::load_from(&dir, &env(&[])).unwrap();
        assert!(!format!("{s:?}").contains("0123456789abcdef-secret"));
    }

    #[test]
    fn connection_string_falls_back_to_the_conventional_variable() {
        let dir = dir_with("");
        let s = Settings::load_from(
            &dir,
            &env(&[(CONNECTION_STRING_VAR, "UseDevelopmentStorage=true")]),
        )
        .unwrap();
        assert_eq!(
            s.storage.connection_string.as_deref(),
            Some("UseDevelopmentStorage=true")
        );
    }

    #[test]
    fn debug_output_hides_keys_and_sas() {
        let s = StorageSettings {
            connection_string: Some("AccountName=a;AccountKey=c2VjcmV0a2V5".into()),
            queue_endpoint: Some("https://a.queue.core.windows.net?sv=1&sig=abcd%2Bsecret".into()),
            sas_token: Some("sig=zzzsecret".into()),
            ..Default::default()
        };
        let text = format!("{s:?}");
        assert!(!text.contains("c2VjcmV0a2V5"), "{text}");
        assert!(!text.contains("abcd"), "{text}");
        assert!(!text.contains("zzzsecret"), "{text}");
    }
}

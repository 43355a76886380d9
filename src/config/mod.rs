//! Typed settings, loaded once at start-up and validated with errors that name the key.
//!
//! Layers, lowest first: the defaults written in these files, `config/default.toml`, the optional
//! `config/{EBBFLOW_ENV}.toml`, then environment variables `EBBFLOW__<SECTION>__<KEY>` (double
//! underscores separate path segments, so `EBBFLOW__QUEUES__ORDERS__BATCH_SIZE=8` sets
//! `queues.orders.batch_size`). `AZURE_STORAGE_CONNECTION_STRING` is honoured when no storage
//! is configured otherwise. Unknown keys are rejected, so a misspelt key fails loudly instead of
//! silently falling back to a default. The one exception is the `[deploy]` section
//! ([`DEPLOY_SECTION`]): the `ebbflow` command line reads it from the same files and variables
//! to write manifests, and a worker ignores it without checking it.
//!
//! Each section's types live in their own file with their checks: [`storage`](StorageSettings),
//! queues ([`QueueSettings`]: flow control, back-off, scaling), and [`triggers`](TriggerSettings).
//! The ops endpoint's and the logs' sections ([`ObservabilitySettings`], [`LogSettings`]) live
//! here too: the observability room sits above `config` and reads them.

#[cfg(test)]
mod access_tests;
mod bus;
#[cfg(test)]
mod heartbeat_tests;
mod load;
mod observability;
mod output;
mod queue;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::backoff::IdleBackoffSettings;
pub use crate::checks::ConfigError;
pub use load::Origin;

pub use crate::scaling::{DepthRule, MaxTasks, MessagesPerTask, MinTasks, ScalingSettings};
pub use crate::secret::{redact, SECRET_KEYS};
pub use crate::service::QueueName;
pub use crate::store::settings::{CredentialKind, RetrySettings, StorageSettings};
pub use crate::trigger::{
    HttpTriggerSettings, MaxBodyBytes, MaxConcurrentRequests, TriggerSettings,
};
pub use observability::{
    LogFormat, LogSettings, MetricsToken, ObservabilitySettings, TracesProtocol, TracesSettings,
};
pub use output::OutputSettings;
pub use queue::{
    BatchSize, Concurrency, HeartbeatSettings, MaxDequeueCount, PulseEvery, QueueSettings,
    RefillThreshold, Shards,
};

/// The environment variable that names the optional per-environment file.
pub const ENV_VAR: &str = "EBBFLOW_ENV";
/// The environment variable that points at the config folder (default `config`).
pub const DIR_VAR: &str = "EBBFLOW_CONFIG_DIR";
/// The section a worker ignores: `[deploy]` is read by the `ebbflow` command line (the
/// ebbflow-cli crate's manifest generation) from the same files and `EBBFLOW__DEPLOY__...`
/// variables.
pub const DEPLOY_SECTION: &str = "deploy";
/// The conventional Azure connection string variable.
pub const CONNECTION_STRING_VAR: &str = "AZURE_STORAGE_CONNECTION_STRING";

/// How long, after the drain deadline aborted the handlers still running, the worker waits
/// for their messages to be released before it reports anyway (store calls may hang): a whole
/// drain takes at most `worker.drain_timeout + RELEASE_GRACE`.
pub const RELEASE_GRACE: Duration = Duration::from_secs(5);

/// Everything a worker process needs to know.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct Settings {
    /// Where the queues live. Empty means the embedded in-process backend.
    pub storage: StorageSettings,
    /// Process-wide settings.
    pub worker: WorkerSettings,
    /// Push triggers from other processes.
    pub triggers: TriggerSettings,
    /// One section per queue, keyed by queue name. A key that is not a queue name the service
    /// accepts is refused while parsing (`queues.Orders = Orders: must be 3-63 ...`); one
    /// inserted in code is refused by [`Settings::validate`], which the worker runs at start.
    #[serde(deserialize_with = "queue_names")]
    pub queues: BTreeMap<String, QueueSettings>,
    /// Queues this worker only writes to (another worker consumes them), keyed by queue name:
    /// checked at start-up like the consumed ones (created, or proven to exist) and handed to
    /// handlers by `Context::output` / `Context::publisher`; no handler needed.
    #[serde(deserialize_with = "queue_names")]
    pub outputs: BTreeMap<String, OutputSettings>,
    /// The ops endpoint (`/healthz`, `/readyz`, `/metrics`).
    pub observability: ObservabilitySettings,
    /// Log line format.
    pub log: LogSettings,
    /// Events between instances (see [`crate::bus`]).
    pub bus: crate::bus::BusSettings,
    /// Heartbeat defaults for every queue: each field applies to a queue whose own
    /// `[queues.<name>.heartbeat]` leaves it unset (see [`Settings::apply_heartbeat_defaults`]).
    pub heartbeat: HeartbeatSettings,
    /// Where these settings came from (not a key: filled in by [`Settings::load_from`]).
    #[serde(skip)]
    origin: Origin,
}

/// A map keyed by queue names, each checked as a [`QueueName`] while parsing.
fn queue_names<'de, D, V>(d: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: Deserialize<'de>,
{
    let map = BTreeMap::<String, V>::deserialize(d)?;
    for name in map.keys() {
        QueueName::new(name.as_str()).map_err(serde::de::Error::custom)?;
    }
    Ok(map)
}

/// Process-wide settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
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

impl WorkerSettings {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.drain_timeout > Duration::from_secs(3600) {
            return Err(ConfigError::invalid(
                "worker.drain_timeout",
                humantime::format_duration(self.drain_timeout),
                "must be at most 1h",
            ));
        }
        Ok(())
    }
}

impl Settings {
    /// Loads from the folder named by `EBBFLOW_CONFIG_DIR` (default `config`), the process
    /// environment, and validates.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when a file or variable cannot be read or parsed, a key is unknown, a value
    /// is out of range or the sections contradict each other; the error names the key.
    pub fn load() -> Result<Self, ConfigError> {
        let dir = std::env::var_os(DIR_VAR)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("config"));
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Self::load_from(&dir, &env)
    }

    /// Loads from `dir` and the given environment (a map, so tests need not touch the
    /// process environment), and validates.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key (or the file) and the fix: a value of the wrong form
    /// (with an example of the right one, or the allowed values), an unknown key, a value out
    /// of range, or `AZURE_STORAGE_CONNECTION_STRING` set but empty.
    pub fn load_from(dir: &Path, env: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        load::load_from(dir, env)
    }

    /// Gives each queue the root `[heartbeat]` values it leaves unset (a queue's own value
    /// wins), so the listener sees the effective ones. [`Settings::load_from`] and
    /// [`crate::Worker::new`] call it; calling it again changes nothing.
    pub fn apply_heartbeat_defaults(&mut self) {
        let defaults = self.heartbeat;
        for q in self.queues.values_mut() {
            q.heartbeat = q.heartbeat.or(defaults);
        }
    }

    /// Where these settings were read from: the folder and files (and whether each existed)
    /// and how many `EBBFLOW__...` variables applied. Empty for settings built in code.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Each configured queue's and output's shard count (name to count), for
    /// [`crate::store::sharding::ShardingStore::wrap`].
    pub fn shard_counts(&self) -> Vec<(String, usize)> {
        let queues = self.queues.iter().map(|(n, q)| (n, q.shards.get()));
        let outputs = self.outputs.iter().map(|(n, o)| (n, o.shards.get()));
        queues
            .chain(outputs)
            .map(|(name, shards)| (name.clone(), shards))
            .collect()
    }

    /// Checks every value against its allowed range.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first key whose value is out of range or contradicts another
    /// section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.storage.validate()?;
        if self.bus.kind == crate::bus::BusKind::None && self.bus.url.is_some() {
            return Err(ConfigError::invalid(
                "bus.kind",
                "\"none\"",
                "bus.url is set but the bus is off: set bus.kind = \"redis\" \
                 (EBBFLOW__BUS__KIND=redis) to use it, or remove bus.url",
            ));
        }
        self.worker.validate()?;
        // Before the queues: a bad default is named at its own key, not at a queue's.
        self.heartbeat.validate("heartbeat")?;
        self.observability.validate()?;
        self.bus.validate()?;
        for (name, q) in &self.queues {
            // A shared bus can wake a queue from zero tasks (when it covers its own outages).
            q.validate(name, self.triggers.http.enabled || self.bus.is_shared())?;
            bus::check_queue_cover(name, q, &self.bus, self.triggers.http.enabled)?;
            let poison = q.poison_queue_name(name);
            if self.queues.contains_key(&poison) {
                return Err(ConfigError::invalid(
                    format!("queues.{name}.poison_queue"),
                    &poison,
                    "must not be a configured queue (its listener would take the poison copies)",
                ));
            }
            // A shard is a physical queue: no other configured queue (or its poison queue) may
            // be one of them.
            for (other, o) in self.queues.iter().filter(|(other, _)| *other != name) {
                for physical in [other.clone(), o.poison_queue_name(other)] {
                    if q.shards.get() > 1 && q.shard_names(name).contains(&physical) {
                        return Err(ConfigError::invalid(
                            format!("queues.{name}.shards"),
                            q.shards.get(),
                            format!("shard {physical} is also used by queues.{other}"),
                        ));
                    }
                }
            }
        }
        for (name, output) in &self.outputs {
            output.validate(name)?;
            let consumed = self.queues.contains_key(name)
                || self
                    .queues
                    .iter()
                    .any(|(q, s)| s.poison_queue_name(q) == *name);
            if consumed {
                return Err(ConfigError::invalid(
                    format!("outputs.{name}"),
                    name,
                    "is consumed here (a [queues] section or its poison queue): handlers write \
                     to it without declaring it; remove the [outputs] section",
                ));
            }
        }
        self.triggers.validate()
    }
}

//! [`WorkerError`]: why a worker could not start, each variant naming the culprit (key, queue,
//! address) and the fix.

use std::time::Duration;

use crate::config::ConfigError;
use crate::store::StoreError;

/// The worker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The settings are invalid (the same checks as
    /// [`Settings::load`](crate::config::Settings::load)).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A queue in config has no handler: the queue, then the queues handlers are registered for
    /// (comma-separated, `none` when empty).
    #[error(
        "queue {0} is configured under [queues.{0}] but no handler is registered for it \
         (handlers are registered for: {1}); a typo in either name?"
    )]
    NoHandler(String, String),
    /// A handler was registered for a queue missing from config: the queue, then the configured
    /// queues (comma-separated).
    #[error(
        "a handler is registered for queue {0}, but config has no [queues.{0}] section \
         (configured: {1}); a typo in either name?"
    )]
    NotConfigured(String, String),
    /// A layer was added for a queue missing from config: the queue, then the configured queues
    /// (comma-separated).
    #[error(
        "a layer is added for queue {0} (Worker::layer_for), but config has no [queues.{0}] \
         section (configured: {1})"
    )]
    LayerNotConfigured(String, String),
    /// A scaling policy was set for a queue missing from config: the queue, then the configured
    /// queues (comma-separated).
    #[error(
        "a scaling policy is set for queue {0} (Worker::scaling_policy), but config has no \
         [queues.{0}] section (configured: {1})"
    )]
    PolicyNotConfigured(String, String),
    /// A pulse hook was set for a queue missing from config: the queue, then the configured
    /// queues (comma-separated).
    #[error(
        "a pulse hook is set for queue {0} (Worker::pulse_hook), but config has no \
         [queues.{0}] section (configured: {1})"
    )]
    PulseHookNotConfigured(String, String),
    /// Two handlers for one queue.
    #[error("two handlers are registered for queue {0}")]
    DuplicateHandler(String),
    /// No queues at all; says where the settings were read from.
    #[error("no queues configured ({0}): add a [queues.<name>] section, or point EBBFLOW_CONFIG_DIR at the folder that has one")]
    NoQueues(String),
    /// The store could not be opened or a queue could not be reached.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// A [`Producer`](super::Producer) was connected with no storage configured: its sends
    /// would land in an embedded store only this process can read.
    #[error(
        "no storage configured: a Producer would send to queues that live in this process only; \
         set AZURE_STORAGE_CONNECTION_STRING, or storage.connection_string or \
         storage.queue_endpoint (EBBFLOW__STORAGE__CONNECTION_STRING, \
         EBBFLOW__STORAGE__QUEUE_ENDPOINT), or share an embedded store with Producer::connect_to"
    )]
    NoStorage,
    /// A declared output queue (`[outputs.<queue>]` or
    /// [`Worker::output`](super::Worker::output)) does not exist and `storage.create_queues` is
    /// off.
    #[error("output queue {0} ([outputs.{0}] or Worker::output) does not exist; check its name, create it, or set storage.create_queues = true")]
    MissingOutput(String),
    /// An output declared in code ([`Worker::output`](super::Worker::output)) is neither an
    /// `[outputs.<queue>]` nor a `[queues.<queue>]` section while config declares outputs:
    /// config and code disagree on a name (a typo on one side). With the list of the
    /// configured outputs.
    #[error("Worker::output({0:?}) names no [outputs.{0}] section, but config declares outputs ({1}); fix the name on one side, or add [outputs.{0}]")]
    OutputNotConfigured(String, String),
    /// A configured queue does not exist and `storage.create_queues` is off.
    #[error("queue {0} does not exist; create it, or set storage.create_queues = true")]
    MissingQueue(String),
    /// Storage did not answer while start-up created and checked the queues.
    #[error(
        "storage did not answer within {waited:?} at start-up (checking queue {queue}): the \
         endpoint accepts connections but does not answer, or answers too slowly; check the \
         endpoint (storage.queue_endpoint, or QueueEndpoint/AccountName in the connection \
         string), or raise storage.startup_timeout"
    )]
    StartupTimeout {
        /// `storage.startup_timeout`.
        waited: Duration,
        /// The queue being checked when the time ran out.
        queue: String,
    },
    /// The bus could not be reached or refused the credentials (`bus.url`; no secret shown).
    #[error("{0}")]
    Bus(#[from] crate::bus::BusError),
    /// The ops endpoint could not listen.
    #[error("observability.bind = {addr}: cannot listen: {error}")]
    OpsBind {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// Why.
        error: std::io::Error,
    },
    /// The HTTP trigger endpoint could not listen.
    #[error("triggers.http.bind = {addr}: cannot listen: {error}")]
    TriggerBind {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// Why.
        error: std::io::Error,
    },
}

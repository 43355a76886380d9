//! The host: wires settings, store, handlers and listeners into one process, and drains it
//! in two steps on a stop signal (stop receiving, then wait for in-flight work until the
//! drain deadline).
//!
//! - `report.rs`: how a run ended ([`DrainReport`], [`RunReport`] and their exit codes).
//! - `signal.rs`: the stop signals ([`shutdown_signal`]: SIGTERM, ctrl-c).
//! - `ready.rs`: the readiness checks the worker registers (`listeners`, `store`).
//! - `bus.rs`: the worker's side of the bus (work notices, pass-on, outage probes, presence).

mod bus;
mod hooks;
mod ready;
mod reload;
mod report;
pub use crate::bus::events::{Change, Reloaded};
pub use crate::scaling::{Decision, DefaultPolicy, Prompt, Reason, ScalingPolicy, Signals};
pub use bus::BusCounters;
mod producer;
mod signal;
mod start;
mod startup;
mod tasks;
pub use producer::Producer;

pub use ready::STORE_UNREADY_AFTER;
pub use report::{DrainReport, RunReport};
pub use signal::shutdown_signal;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::config::{ConfigError, Settings};
use crate::handler::{
    BatchHandler, BatchStats, Batcher, Context, Erased, ErasedHandler, Handler, HandlerError,
    Layer, Payload, Publisher, SharedLayer,
};
use crate::listener::{Lifecycle, QueueListener, QueueSnapshot};
use crate::observability::Readiness;
use crate::store::{QueueStore, StoreError, UnknownOutcomes};
use report::explain;

/// The worker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The settings are invalid (the same checks as [`Settings::load`]).
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
    /// A [`Producer`] was connected with no storage configured: its sends would land in an
    /// embedded store only this process can read.
    #[error(
        "no storage configured: a Producer would send to queues that live in this process only; \
         set AZURE_STORAGE_CONNECTION_STRING, or storage.connection_string or \
         storage.queue_endpoint (EBBFLOW__STORAGE__CONNECTION_STRING, \
         EBBFLOW__STORAGE__QUEUE_ENDPOINT), or share an embedded store with Producer::connect_to"
    )]
    NoStorage,
    /// A declared output queue (`[outputs.<queue>]` or [`Worker::output`]) does not exist and
    /// `storage.create_queues` is off.
    #[error("output queue {0} ([outputs.{0}] or Worker::output) does not exist; check its name, create it, or set storage.create_queues = true")]
    MissingOutput(String),
    /// An output declared in code ([`Worker::output`]) is neither an `[outputs.<queue>]` nor a
    /// `[queues.<queue>]` section while config declares outputs: config and code disagree
    /// on a name (a typo on one side). With the list of the configured outputs.
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

pub use crate::config::RELEASE_GRACE;
pub use crate::trigger::{Hub, TriggerSource, WorkDetected};

/// The reason a drain was cut short when `drain_timeout` passed with handlers still running.
const DEADLINE_PASSED: &str = "drain deadline passed";
/// The reason a drain was cut short by a second SIGTERM or ctrl-c.
const SECOND_SIGNAL: &str = "second stop signal";

/// Subscribes one bus observer when the worker starts.
type Observer = Box<dyn FnOnce(&crate::bus::BusHandle) + Send>;

/// Builds a worker: settings plus one handler per configured queue.
pub struct Worker {
    settings: Settings,
    store: Option<Arc<dyn QueueStore>>,
    blobs: Option<crate::store::blob::Blobs>,
    handlers: BTreeMap<String, Arc<dyn ErasedHandler>>,
    duplicate: Option<String>,
    /// Bus observers, subscribed before delivery starts.
    observers: Vec<Observer>,
    /// Layers around every queue's handler, outermost first.
    layers: Vec<SharedLayer>,
    /// Layers around one queue's handler, inside the worker-wide ones, outermost first.
    queue_layers: BTreeMap<String, Vec<SharedLayer>>,
    /// Batch queues' counters, shared by their batchers and listeners.
    batch_stats: BTreeMap<String, BatchStats>,
    /// Output-only queues declared in code ([`Worker::output`]).
    outputs: std::collections::BTreeSet<String>,
    /// Scaling policies of queues that do not run the built-in one.
    policies: BTreeMap<String, Arc<dyn crate::scaling::ScalingPolicy>>,
    /// Callbacks for every listener's events.
    event_hooks: Vec<crate::listener::EventHook>,
    /// Hooks shaping or suppressing a queue's job pulses ([`Worker::pulse_hook`]).
    pulse_hooks: BTreeMap<String, crate::bus::jobs::PulseHook>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("handlers", &self.handlers.keys().collect::<Vec<_>>())
            .field("outputs", &self.outputs)
            .field("layers", &self.layers.len())
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker for these settings; the store is opened from `settings.storage` at start.
    pub fn new(mut settings: Settings) -> Self {
        settings.apply_heartbeat_defaults();
        Self {
            settings,
            store: None,
            blobs: None,
            handlers: BTreeMap::new(),
            duplicate: None,
            observers: Vec::new(),
            layers: Vec::new(),
            queue_layers: BTreeMap::new(),
            batch_stats: BTreeMap::new(),
            outputs: Default::default(),
            policies: BTreeMap::new(),
            event_hooks: Vec::new(),
            pulse_hooks: BTreeMap::new(),
        }
    }

    /// Adds a middleware layer around every queue's handler (see [`crate::handler::Layer`]).
    /// Layers added first are outermost; worker-wide layers wrap the queues' own.
    pub fn layer<L: Layer>(mut self, layer: L) -> Self {
        self.layers.push(SharedLayer::new(layer));
        self
    }

    /// Adds a middleware layer around the handler of queue `queue` only, inside the
    /// worker-wide layers. To share one layer's state between queues (one concurrency limit
    /// for several), add clones of a layer whose state is behind an `Arc`, as the shipped
    /// [`crate::handler::layers`] are. A queue missing from config is a start-up error.
    pub fn layer_for<L: Layer>(mut self, queue: &str, layer: L) -> Self {
        self.queue_layers
            .entry(queue.to_string())
            .or_default()
            .push(SharedLayer::new(layer));
        self
    }

    /// Uses this store instead of the one the settings name (e.g. a shared embedded store).
    pub fn with_store(mut self, store: Arc<dyn QueueStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Uses this blob container for the claim check instead of the one the settings name (e.g.
    /// an in-memory one a test inspects); ignored with `storage.claim_check.enabled = false`.
    pub fn with_blobs(mut self, blobs: crate::store::blob::Blobs) -> Self {
        self.blobs = Some(blobs);
        self
    }

    /// Registers `handler` for the queue `queue`.
    pub fn handler<H: Handler>(self, queue: &str, handler: H) -> Self {
        self.register(queue, Arc::new(Erased(handler)))
    }

    /// Registers an async function or closure for the queue `queue`: `f(payload, ctx)`
    /// handles one message, its payload decoded into `P` (`Json<T>`, `String`, `Vec<u8>`).
    /// Share state by capturing an `Arc` (see [`crate::handler::from_fn`]).
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use ebbflow::{Context, HandlerError, Json, Worker};
    /// # struct Db;
    /// # impl Db { async fn insert(&self, _: u64) -> Result<(), std::io::Error> { Ok(()) } }
    /// #[derive(serde::Deserialize)]
    /// struct Order { id: u64 }
    ///
    /// # async fn run(settings: ebbflow::Settings) {
    /// let db = Arc::new(Db);
    /// Worker::new(settings)
    ///     .handler_fn("orders", move |Json(order): Json<Order>, _ctx: Context| {
    ///         let db = db.clone();
    ///         async move {
    ///             db.insert(order.id).await?; // any error: retry
    ///             Ok::<(), HandlerError>(())
    ///         }
    ///     })
    ///     .run()
    ///     .await;
    /// # }
    /// ```
    pub fn handler_fn<F, P, Fut>(self, queue: &str, f: F) -> Self
    where
        F: Fn(P, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
        P: Payload,
    {
        self.handler(queue, crate::handler::from_fn(f))
    }

    /// Registers a batch handler for the queue `queue`: one call for up to
    /// [`crate::handler::Batching::max_messages`] messages (see [`BatchHandler`]). Each
    /// message keeps its own lease, dequeue count, retry, release and poison.
    pub fn batch_handler<H: BatchHandler>(mut self, queue: &str, handler: H) -> Self {
        let stats = BatchStats::default();
        self.batch_stats.insert(queue.to_string(), stats.clone());
        self.register(queue, Arc::new(Batcher::new(handler, stats)))
    }

    /// Declares `queue` an output of this worker: a queue it only writes to, with no handler
    /// here (another worker consumes it). At start-up it is created when
    /// `storage.create_queues` is on, and must exist otherwise: a misspelt output stops the
    /// start naming it. Handlers get it typed through [`crate::Context::output`] (or as a
    /// [`Publisher`] through `ctx.publisher`). It is written as its `[outputs.<queue>]`
    /// section says (encoding, compression, shards, trace context), else with the defaults.
    /// Outputs can be declared in config alone (no call needed); once config declares any,
    /// a name given here that config lacks stops the start
    /// ([`WorkerError::OutputNotConfigured`]), so a typo on either side is caught there.
    pub fn output(mut self, queue: &str) -> Self {
        self.outputs.insert(queue.to_string());
        self
    }

    fn register(mut self, queue: &str, handler: Arc<dyn ErasedHandler>) -> Self {
        if self.handlers.insert(queue.to_string(), handler).is_some() {
            self.duplicate.get_or_insert_with(|| queue.to_string());
        }
        self
    }

    /// Runs `handler` for each bus event of type `E` that passes `filter` (see
    /// [`crate::bus::BusHandle::observe`]), from the moment the worker starts: subscribed
    /// before the bus delivers anything, so no event received at start-up is missed. A
    /// competing-consumer event is acknowledged when the handler returns `Ok`.
    pub fn observe<E, F, Fut>(mut self, filter: crate::bus::Filter, handler: F) -> Self
    where
        E: crate::bus::Event,
        F: Fn(crate::bus::Received<E>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), crate::bus::BoxError>> + Send + 'static,
    {
        self.observers
            .push(Box::new(move |bus: &crate::bus::BusHandle| {
                bus.observe(filter, handler);
            }));
        self
    }

    /// Starts, runs until SIGTERM, ctrl-c or an error no retry can fix, drains, and reports:
    /// what a worker's `main` does. A start that fails is logged and reported as
    /// [`RunReport::NotStarted`] (exit code 2).
    ///
    /// ```no_run
    /// # use ebbflow::{Context, Handler, HandlerError, Worker};
    /// # struct Orders;
    /// # impl Handler for Orders {
    /// #     type Message = String;
    /// #     async fn handle(&self, _: String, _: Context) -> Result<(), HandlerError> { Ok(()) }
    /// # }
    /// #[tokio::main]
    /// async fn main() -> std::process::ExitCode {
    ///     let Ok(settings) = ebbflow::setup("info") else { return std::process::ExitCode::from(2) };
    ///     Worker::new(settings).handler("orders", Orders).run().await.exit_code()
    /// }
    /// ```
    pub async fn run(self) -> RunReport {
        match self.start().await {
            Ok(worker) => RunReport::Stopped(worker.run().await),
            Err(e) => {
                tracing::error!(error = %e, "worker could not start");
                RunReport::NotStarted(e)
            }
        }
    }

    /// Validates the settings (as [`Settings::load`] does), checks handlers against them,
    /// opens the store, makes sure every queue and poison queue is there (creating them when
    /// `storage.create_queues` is on), binds the trigger endpoint, and only then starts
    /// listening: a start that fails leaves nothing running.
    ///
    /// # Errors
    ///
    /// [`WorkerError`] when the settings are invalid, a handler is missing or extra, the store
    /// cannot be opened or a queue checked or created, or an endpoint cannot be bound; nothing is
    /// left running then.
    pub async fn start(self) -> Result<RunningWorker, WorkerError> {
        start::start(self).await
    }
}

/// The worker's HTTP endpoints, where they listen, and their servers.
struct Endpoints {
    ops_addr: Option<std::net::SocketAddr>,
    /// The ops endpoint's server: it answers until the worker is gone (so `/readyz` says 503
    /// through the drain).
    _ops_server: Option<tokio_util::task::AbortOnDropHandle<()>>,
    trigger_addr: Option<std::net::SocketAddr>,
    /// The trigger endpoint's server, aborted when the worker is done.
    _trigger_server: Option<tokio_util::task::AbortOnDropHandle<()>>,
}

/// A started worker. Dropping it stops it at once (no drain: handlers are dropped and their
/// messages released); call [`RunningWorker::run`] or [`RunningWorker::shutdown`] to drain.
pub struct RunningWorker {
    bus: crate::bus::BusHandle,
    bus_counters: Arc<BusCounters>,
    store: Arc<dyn QueueStore>,
    readiness: Readiness,
    endpoints: Endpoints,
    listeners: Vec<QueueListener>,
    publishers: BTreeMap<String, Publisher>,
    hub: Hub,
    life: Lifecycle,
    /// Fire `stop` and `abort` when the worker is dropped.
    _stop_on_drop: [tokio_util::sync::DropGuard; 2],
    /// Fired by a drain command on the bus (`ebbflow drain --role R`).
    drain_requested: tokio_util::sync::CancellationToken,
    /// Live reload of the scaling rules.
    reloader: Arc<reload::Reloader>,
    drain_timeout: Duration,
}

impl std::fmt::Debug for RunningWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningWorker")
            .field("listeners", &self.listeners)
            .field("drain_timeout", &self.drain_timeout)
            .finish_non_exhaustive()
    }
}

impl RunningWorker {
    /// Applies the scaling rules of `settings` without a restart, as a reload on SIGHUP or
    /// `ebbflow reload` does from the config files: `[queues.<q>.scaling]` (all but
    /// `wake_on_publish`) and `[queues.<q>.idle_backoff]` of each running queue. Each applied
    /// value is logged with its old and new value; every other changed key is named in a
    /// warning as needing a restart and not applied. The next scaling decision follows the new
    /// rules; running tasks above a lowered `max_tasks` retire at once.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the key when `settings` is invalid, or when its scaling rules
    /// contradict the running config (e.g. `min_tasks = 0` on a queue nothing could wake):
    /// then nothing changes, the old rules stay.
    pub fn reload(&self, settings: Settings) -> Result<Reloaded, ConfigError> {
        self.reloader.apply(settings)
    }

    /// Reads the config folder the worker's settings came from again (with the process's
    /// environment) and applies it as [`RunningWorker::reload`] does: what SIGHUP does.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when a file cannot be read or is invalid (naming the key), or when the
    /// settings were built in code (no folder to read); nothing changes then.
    pub fn reload_from_config(&self) -> Result<Reloaded, ConfigError> {
        self.reloader.reread()
    }

    /// Every queue's counters now.
    pub fn snapshot(&self) -> Vec<QueueSnapshot> {
        self.listeners.iter().map(QueueListener::snapshot).collect()
    }

    /// The store the worker uses.
    pub fn store(&self) -> Arc<dyn QueueStore> {
        self.store.clone()
    }

    /// This instance's bus: publish and subscribe to events between instances.
    pub fn bus(&self) -> crate::bus::BusHandle {
        self.bus.clone()
    }

    /// Work notices received and passed on, outage probes, wake-ups after a reconnect.
    pub fn bus_counters(&self) -> Arc<BusCounters> {
        self.bus_counters.clone()
    }

    /// The in-process trigger hub: `hub.notify("orders")` wakes the `orders` listener.
    pub fn hub(&self) -> Hub {
        self.hub.clone()
    }

    /// The worker's readiness: add checks of your own with [`Readiness::register`].
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Where the ops endpoint listens, when `observability.bind` is set.
    pub fn ops_addr(&self) -> Option<std::net::SocketAddr> {
        self.endpoints.ops_addr
    }

    /// The running listeners (cloneable handles: their snapshots, for a report of your own).
    pub fn listeners(&self) -> Vec<QueueListener> {
        self.listeners.clone()
    }

    /// Where the HTTP trigger endpoint listens, when enabled.
    pub fn trigger_addr(&self) -> Option<std::net::SocketAddr> {
        self.endpoints.trigger_addr
    }

    /// A publisher for a configured queue, in that queue's encoding; its sends also wake
    /// this worker's listener of the queue.
    pub fn publisher(&self, queue: &str) -> Option<Publisher> {
        self.publishers.get(queue).cloned()
    }

    /// Runs until SIGTERM or ctrl-c ([`shutdown_signal`]), a drain command on the bus
    /// (`ebbflow drain`), or an error no retry can fix stops it, then drains.
    /// A second stop signal during the drain ends it at once: handlers still running are
    /// aborted and their messages released, as at the drain deadline (exit code 1).
    pub async fn run(self) -> DrainReport {
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = self.drain_requested.cancelled() => {}
            _ = self.life.fatal.raised() => {}
        }
        self.drain(shutdown_signal()).await
    }

    /// Runs until `signal` completes, a drain command on the bus (`ebbflow drain`) reaches it,
    /// or an error no retry can fix stops it (see [`DrainReport::fatal`]), then drains. The one
    /// way a worker learns of a fatal error.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> DrainReport {
        tokio::select! {
            _ = signal => {}
            _ = self.drain_requested.cancelled() => {}
            _ = self.life.fatal.raised() => {}
        }
        self.shutdown().await
    }

    /// Per queue, the calls whose outcome is unknown so far (see "Unknown
    /// outcomes" in docs/src/message-life.md): zero on the embedded backend.
    pub fn unknown_outcomes(&self) -> Vec<(String, UnknownOutcomes)> {
        self.listeners
            .iter()
            .map(|l| {
                let queue = l.snapshot().queue;
                let counts = self.store.unknown_outcomes(&queue);
                (queue, counts)
            })
            .collect()
    }

    /// The error that stopped (or is stopping) the worker, if any.
    pub fn fatal_error(&self) -> Option<StoreError> {
        self.life.fatal.error()
    }

    /// Stops receiving, waits up to the drain timeout for in-flight handlers, then aborts
    /// the rest (their messages are released, not deleted) and waits at most
    /// [`RELEASE_GRACE`] more for those releases: the whole drain is bounded by
    /// `drain_timeout + RELEASE_GRACE` even if store calls hang.
    pub async fn shutdown(self) -> DrainReport {
        self.drain(std::future::pending()).await
    }

    /// [`RunningWorker::shutdown`], cut short when `now` completes before the drain deadline
    /// (an operator's second ctrl-c): handlers are aborted then, as at the deadline.
    async fn drain(self, now: impl Future<Output = ()>) -> DrainReport {
        let life = &self.life;
        // Unready first: a load balancer or the bus stops counting on this replica before it
        // stops receiving.
        self.readiness.begin_drain();
        info!(drain_timeout = ?self.drain_timeout, "stopping: no new receives, draining in-flight messages");
        life.stop.cancel();
        // Why the drain was cut short, if it was: the reason every released message and the
        // last line carry.
        let cut = tokio::select! {
            done = tokio::time::timeout(self.drain_timeout, life.tracker.wait()) => {
                if done.is_err() {
                    warn!(drain_timeout = ?self.drain_timeout, "drain deadline passed; aborting handlers still running");
                }
                done.is_err().then_some(DEADLINE_PASSED)
            }
            _ = now => {
                warn!("second stop signal received; aborting handlers still running");
                Some(SECOND_SIGNAL)
            }
        };
        let clean = cut.is_none();
        if let Some(reason) = cut {
            life.abort_for(reason);
            if tokio::time::timeout(RELEASE_GRACE, life.tracker.wait())
                .await
                .is_err()
            {
                warn!(grace = ?RELEASE_GRACE, "store calls still running after the release grace; reporting anyway");
            }
        }
        self.bus.close().await;
        let unreleased = self.listeners.iter().map(QueueListener::held).sum();
        let queues = self.snapshot();
        let fatal = life.fatal.error();
        match &fatal {
            Some(e) => tracing::error!(error = %e, "worker stopped: {}", explain(e)),
            None if unreleased > 0 => {
                warn!(clean, reason = cut, unreleased, "worker stopped; some messages were not released (they reappear after their visibility timeout)")
            }
            None => match cut {
                Some(reason) => warn!(clean, reason, "worker stopped; handlers still running were aborted and their messages released"),
                None => info!(clean, "worker stopped"),
            },
        }
        // The exporter sends in batches: the last ones go now, before the process exits.
        crate::observability::traces::flush();
        DrainReport {
            clean,
            queues,
            fatal,
            unreleased,
        }
    }
}

//! The host: wires settings, store, handlers and listeners into one process, and drains it
//! in two steps on a stop signal (stop receiving, then wait for in-flight work until the
//! drain deadline).
//!
//! - `error.rs`: why a worker could not start ([`WorkerError`]).
//! - `running.rs`: a started worker ([`RunningWorker`]) and its drain.
//! - `report.rs`: how a run ended ([`DrainReport`], [`RunReport`] and their exit codes).
//! - `signal.rs`: the stop signals ([`shutdown_signal`]: SIGTERM, ctrl-c).
//! - `ready.rs`: the readiness checks the worker registers (`listeners`, `store`).
//! - `bus.rs`: the worker's side of the bus (work notices, pass-on, outage probes, presence).

mod bus;
mod error;
mod hooks;
mod ready;
mod reload;
mod report;
mod running;
pub use crate::bus::events::{Change, Reloaded};
pub use crate::scaling::{Decision, DefaultPolicy, Prompt, Reason, ScalingPolicy, Signals};
pub use bus::BusCounters;
pub use error::WorkerError;
use running::Endpoints;
pub use running::RunningWorker;
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

use crate::config::Settings;
use crate::handler::{
    BatchHandler, BatchStats, Batcher, Context, Erased, ErasedHandler, Handler, HandlerError,
    Layer, Payload, SharedLayer,
};
use crate::store::QueueStore;

pub use crate::config::RELEASE_GRACE;
pub use crate::trigger::{Hub, TriggerSource, WorkDetected};

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
    /// [`Publisher`](crate::handler::Publisher) through `ctx.publisher`). It is written as its
    /// `[outputs.<queue>]` section says (encoding, compression, shards, trace context), else
    /// with the defaults.
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

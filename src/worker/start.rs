//! A worker's start, in steps: check what was registered against the settings, layer the
//! store, serve the ops endpoint, open the bus, make sure every queue is there and build its
//! listener's parts, bind the trigger endpoint, and only then start listening. A step that
//! fails returns before anything runs (what was bound is dropped with it).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::task::AbortOnDropHandle;
use tracing::info;

use super::ready::{listeners_state, store_state};
use super::{bus, tasks, Endpoints, RunningWorker, Worker, WorkerError};
use crate::checks::ConfigError;
use crate::handler::{ErasedHandler, Publisher, SharedLayer, Span, Stack};
use crate::listener::{Lifecycle, ListenerSpec, QueueListener};
use crate::observability::{Metrics, Readiness};
use crate::store::metered::Metering;
use crate::store::retrying::RetryingStore;
use crate::store::sharding::ShardingStore;
use crate::store::{self, LayeredStore, QueueStore, StoreError};
use crate::trigger::Hub;

pub(super) async fn start(worker: Worker) -> Result<RunningWorker, WorkerError> {
    worker.check()?;
    fd_room(&worker.settings)?;
    // Taken apart: the bus observers are `Send` but not `Sync`, so no `&Worker` may be held
    // across an await of this `Send` future.
    let Worker {
        settings,
        store,
        handlers,
        observers,
        layers,
        queue_layers,
        batch_stats,
        blobs,
        outputs,
        policies,
        event_hooks,
        pulse_hooks,
        duplicate: _,
    } = worker;
    let store_given = store.is_some();
    let (store, metering) = layered_store(store, blobs, &settings).await?;
    // The ops endpoint first: while the queues are checked, /healthz answers and /readyz
    // says "starting". A start that fails drops it with everything else.
    let readiness = Readiness::default();
    let startup = readiness.register("startup");
    let shown: Arc<std::sync::OnceLock<Vec<QueueListener>>> = Arc::default();
    let metrics = Arc::new(Metrics::new(shown.clone(), store.clone(), metering.clone()));
    metrics.set_dashboard(crate::observability::dashboard::Dashboard::new(
        shown.clone(),
        store.clone(),
        settings.queues.clone(),
    ));
    readiness.register_probe("store", move || store_state(&metering));
    let ops = serve_ops(&settings, &readiness, &metrics).await?;
    let embedded = store.kind() == store::BackendKind::Embedded;
    let create = settings.storage.create_queues || embedded;
    let life = Lifecycle::default();
    // Events naming another storage account are ignored (the embedded store has none).
    let hub = Hub::new(store.account());
    // The bus before the queues' publishers (they announce on it) and before any listener:
    // a worker does not start on a bus it cannot use.
    let bus = crate::bus::open(&settings.bus).await?;
    // The dashboard's fleet view reads the bus presence (a shared bus only).
    if settings.bus.is_shared() {
        if let Some(dashboard) = metrics.dashboard() {
            dashboard.set_fleet(bus.clone());
        }
    }
    let mut wiring = bus::Wiring::new(
        bus.clone(),
        hub.clone(),
        &settings,
        tasks::Tasks::new(&life),
    );
    // Every queue and poison queue there, within storage.startup_timeout.
    let mut checked = super::startup::check_queues(&store, &settings, create).await?;
    let mut probed = BTreeMap::new();
    // Queues and publishers first, so every handler's Context can publish to any queue.
    let mut specs = Vec::new();
    let mut publishers = BTreeMap::new();
    for (name, queue_settings) in &settings.queues {
        let handler = handlers
            .get(name)
            .ok_or_else(|| WorkerError::NoHandler(name.clone(), listed(handlers.keys())))?
            .clone();
        let (queue, poison_queue) = checked
            .remove(name)
            .ok_or_else(|| WorkerError::NoHandler(name.clone(), listed(handlers.keys())))?;
        let link = wiring.link(name, queue_settings);
        let mut publisher = Publisher::new(queue.clone(), queue_settings.encoding)
            .with_hub(hub.clone())
            .with_trace_context(queue_settings.trace_context)
            .with_background(life.tracker.clone(), life.stop.clone());
        if let Some(announcer) = wiring.announcer(name) {
            publisher = publisher.with_announcer(announcer);
        }
        publishers.insert(name.clone(), publisher);
        probed.insert(name.clone(), queue.clone());
        specs.push(ListenerSpec {
            hooks: Some(link),
            bus: Some(bus.clone()),
            queue,
            poison_queue,
            settings: queue_settings.clone(),
            stack: stack_of(&layers, queue_layers.get(name), handler),
            batch_stats: batch_stats.get(name).cloned(),
            create_queues: create,
            // In-process publishes trigger after each send lands; HTTP events are hints (one
            // may stand for a burst still being sent), so they do not cover a queue.
            trigger_covered: queue_settings.scaling.wake_on_publish,
            policy: policies
                .get(name)
                .cloned()
                .unwrap_or_else(|| Arc::new(crate::scaling::DefaultPolicy)),
            event_hooks: event_hooks.clone(),
            pulse_hook: pulse_hooks.get(name).cloned(),
        });
    }
    // Output-only queues: `[outputs.<queue>]` sections, and `Worker::output` names that no
    // section configures (written with the defaults).
    let declared = outputs
        .iter()
        .filter(|o| !settings.queues.contains_key(*o) && !settings.outputs.contains_key(*o))
        .map(|o| (o.clone(), crate::config::OutputSettings::default()));
    let wanted: BTreeMap<_, _> = settings
        .outputs
        .clone()
        .into_iter()
        .chain(declared)
        .collect();
    for (name, (queue, output)) in
        super::startup::check_outputs(&store, &settings, wanted, create).await?
    {
        let mut publisher = Publisher::new(queue, output.encoding)
            .with_hub(hub.clone())
            .with_trace_context(output.trace_context)
            .with_background(life.tracker.clone(), life.stop.clone());
        if settings.bus.is_shared() {
            let defaults = crate::bus::QueueBusSettings::default();
            let announcer = crate::bus::Announcer::new(bus.transport(), &name, defaults);
            publisher = publisher.with_announcer(announcer);
        }
        publishers.insert(name, publisher);
    }
    wiring.listen().await?;
    let trigger = bind_trigger(&settings, &hub, &metrics, &life).await?;
    // Nothing below can fail: from here on, tasks run.
    let shared_publishers = Arc::new(publishers.clone());
    let listeners: Vec<QueueListener> = specs
        .into_iter()
        .map(|spec| QueueListener::start(spec, shared_publishers.clone(), &life, &hub))
        .collect();
    let _ = shown.set(listeners.clone());
    let (running, fatal, stop) = (shown.clone(), life.fatal.clone(), life.stop.clone());
    readiness.register_probe("listeners", move || {
        listeners_state(&running, &fatal, stop.is_cancelled())
    });
    startup.ready();
    // The endpoint is not part of the drain: a client that never finishes its request must
    // not hold the worker's shutdown up. It stops on `stop`, and is cut off when the drain
    // ends (or the worker is dropped).
    let trigger = trigger.map(|(addr, serve)| {
        info!(%addr, "trigger endpoint listening");
        (addr, serve_beside("trigger endpoint", serve))
    });
    for observe in observers {
        observe(&bus);
    }
    // Live reload of the scaling rules (SIGHUP, `ebbflow reload`): specs, and so listeners,
    // are in the order of `settings.queues`.
    let by_name = settings
        .queues
        .keys()
        .cloned()
        .zip(listeners.iter().cloned());
    let reloader = Arc::new(super::reload::Reloader::new(
        settings.clone(),
        by_name.collect(),
    ));
    reloader.serve(&bus, &tasks::Tasks::new(&life));
    bus.start();
    let bus_counters = wiring.counters();
    let drain_requested = wiring.drain_requested();
    metrics.set_bus(wiring.metrics());
    wiring.run(listeners.clone(), probed, &readiness, life.stop.clone());
    life.tracker.close();
    info!(backend = %store.kind(), queues = listeners.len(), "worker started");
    if embedded && !store_given {
        info!(
            "no storage configured: queues live in this process only (the embedded store); \
             set AZURE_STORAGE_CONNECTION_STRING, storage.connection_string or \
             storage.queue_endpoint to use Azure Storage"
        );
    }
    let (ops_addr, ops_server) = ops.unzip();
    let (trigger_addr, trigger_server) = trigger.unzip();
    Ok(RunningWorker {
        bus,
        bus_counters,
        store,
        readiness,
        endpoints: Endpoints {
            ops_addr,
            _ops_server: ops_server,
            trigger_addr,
            _trigger_server: trigger_server,
        },
        listeners,
        publishers,
        hub,
        _stop_on_drop: [
            life.stop.clone().drop_guard(),
            life.abort.clone().drop_guard(),
        ],
        life,
        drain_requested,
        reloader,
        drain_timeout: settings.worker.drain_timeout,
    })
}

impl Worker {
    /// The settings are valid (as [`crate::Settings::load`] checks them), and every handler
    /// and layer names a configured queue, once.
    fn check(&self) -> Result<(), WorkerError> {
        self.settings.validate()?;
        if let Some(queue) = &self.duplicate {
            return Err(WorkerError::DuplicateHandler(queue.clone()));
        }
        if self.settings.queues.is_empty() {
            return Err(WorkerError::NoQueues(self.settings.origin().to_string()));
        }
        if let Some(name) = self
            .handlers
            .keys()
            .find(|n| !self.settings.queues.contains_key(*n))
        {
            return Err(WorkerError::NotConfigured(
                name.clone(),
                listed(self.settings.queues.keys()),
            ));
        }
        if let Some(name) = self
            .queue_layers
            .keys()
            .find(|n| !self.settings.queues.contains_key(*n))
        {
            return Err(WorkerError::LayerNotConfigured(
                name.clone(),
                listed(self.settings.queues.keys()),
            ));
        }
        if let Some(name) = self
            .policies
            .keys()
            .find(|n| !self.settings.queues.contains_key(*n))
        {
            return Err(WorkerError::PolicyNotConfigured(
                name.clone(),
                listed(self.settings.queues.keys()),
            ));
        }
        if let Some(name) = self
            .pulse_hooks
            .keys()
            .find(|n| !self.settings.queues.contains_key(*n))
        {
            return Err(WorkerError::PulseHookNotConfigured(
                name.clone(),
                listed(self.settings.queues.keys()),
            ));
        }
        // Config that declares outputs is their list: a code name it lacks is a typo on one
        // side (`[outputs.emails]` beside `.output("emials")`).
        let configured = |n: &String| {
            self.settings.outputs.contains_key(n) || self.settings.queues.contains_key(n)
        };
        if !self.settings.outputs.is_empty() {
            if let Some(name) = self.outputs.iter().find(|n| !configured(n)) {
                return Err(WorkerError::OutputNotConfigured(
                    name.clone(),
                    listed(self.settings.outputs.keys()),
                ));
            }
        }
        Ok(())
    }
}

/// Names for an error message: comma-separated, `none` when there are none.
fn listed<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// The store the settings name (or the one given), with its layers: retries, then shards
/// (each shard's calls retried on their own), then the claim check (above the shards, so one
/// payload is one blob whichever shard its reference lands on), then metering outermost (each
/// call timed as the listener sees it, its outcome feeding the readiness check "store").
pub(super) async fn layered_store(
    given: Option<Arc<dyn QueueStore>>,
    blobs: Option<crate::store::blob::Blobs>,
    settings: &crate::Settings,
) -> Result<(Arc<dyn QueueStore>, Metering), StoreError> {
    let store = match given {
        Some(store) => store,
        None => store::open(&settings.storage)?,
    };
    let store = RetryingStore::wrap(store, settings.storage.retry);
    let store = ShardingStore::wrap_sharded(store, settings.shard_counts());
    let blobs = claim_blobs(settings, store.kind(), blobs).await?;
    let mut claim = crate::store::claim::ClaimCheck::new(blobs, &settings.storage.claim_check);
    for (name, q) in &settings.queues {
        let format = crate::store::claim::QueueFormat {
            encoding: q.encoding,
            compression: q.compression,
        };
        claim = claim.queue(name, format);
    }
    for (name, o) in &settings.outputs {
        let format = crate::store::claim::QueueFormat {
            encoding: o.encoding,
            compression: o.compression,
        };
        claim = claim.queue(name, format);
    }
    let store = LayeredStore::wrap(store, claim);
    let metering = Metering::default();
    let store = LayeredStore::wrap(store, metering.clone());
    Ok((store, metering))
}

/// The claim check's container, opened (and created when missing) within
/// `storage.startup_timeout`: a blob endpoint that never answers (Azurite's queue service
/// started without its blob service, say, with `UseDevelopmentStorage=true`) fails start-up in
/// seconds with what to set, instead of silently after the SDK's own retries (over a minute).
async fn claim_blobs(
    settings: &crate::Settings,
    kind: store::BackendKind,
    given: Option<crate::store::blob::Blobs>,
) -> Result<Option<crate::store::blob::Blobs>, StoreError> {
    let storage = &settings.storage;
    let opening = crate::store::claim::open_blobs(storage, kind, given);
    match tokio::time::timeout(storage.startup_timeout, opening).await {
        Ok(opened) => opened,
        Err(_) => Err(StoreError::Setup(format!(
            "storage.claim_check: the blob service did not answer within {} while creating \
             container {} for the claim check (large payloads); start the blob service too \
             (Azurite: `azurite` runs both, or `azurite-blob` beside `azurite-queue`), point \
             at the right one (BlobEndpoint in the connection string, or \
             storage.claim_check.blob_endpoint), or turn the claim check off \
             (storage.claim_check.enabled = false); storage.startup_timeout bounds the wait",
            humantime::format_duration(storage.startup_timeout),
            storage.claim_check.container
        ))),
    }
}

/// Makes sure the endpoints' connection caps fit the file-descriptor limit (raising the soft
/// limit to the hard one when they need it); else a config error naming the larger cap, the
/// descriptors needed and the limit.
fn fd_room(settings: &crate::Settings) -> Result<(), ConfigError> {
    let http = &settings.triggers.http;
    let trigger = http
        .enabled
        .then_some(("triggers.http.max_connections", http.max_connections));
    let ops = settings.observability.bind.map(|_| {
        (
            "observability.max_connections",
            settings.observability.max_connections,
        )
    });
    let caps: Vec<(&str, u32)> = trigger.into_iter().chain(ops).collect();
    let Some(&(key, value)) = caps.iter().max_by_key(|(_, v)| *v) else {
        return Ok(());
    };
    let headroom = crate::endpoint::HEADROOM;
    let needed = caps.iter().map(|(_, v)| u64::from(*v)).sum::<u64>() + headroom;
    match crate::endpoint::make_room(needed) {
        Ok(None) => Ok(()),
        Ok(Some((from, to))) => {
            info!(
                from,
                to,
                needed,
                "raised the file-descriptor limit (RLIMIT_NOFILE) from {from} to {to} for the \
                 endpoints' connection caps"
            );
            Ok(())
        }
        Err((soft, hard)) => {
            let all = caps
                .iter()
                .map(|(k, v)| format!("{k} = {v}"))
                .collect::<Vec<_>>()
                .join(" and ");
            Err(ConfigError::invalid(
                key,
                value,
                format!(
                    "{all} with {headroom} descriptors for the store, the bus and the logs \
                     need {needed} file descriptors, above this process's limit \
                     (RLIMIT_NOFILE: soft {soft}, hard {hard}; only the hard limit's holder can \
                     raise it): lower the cap, or raise the limit (`ulimit -n`, the container \
                     runtime's nofile limit)"
                ),
            ))
        }
    }
}

/// Binds and serves the ops endpoint when `observability.bind` is set.
async fn serve_ops(
    settings: &crate::Settings,
    readiness: &Readiness,
    metrics: &Arc<Metrics>,
) -> Result<Option<(SocketAddr, AbortOnDropHandle<()>)>, WorkerError> {
    let Some(addr) = settings.observability.bind else {
        return Ok(None);
    };
    let token = settings.observability.metrics_token.clone();
    let limits = crate::endpoint::ConnectionLimits {
        header_read_timeout: settings.observability.header_read_timeout,
        max_connections: settings.observability.max_connections as usize,
        max_connections_per_peer: settings.observability.max_connections_per_peer as usize,
    };
    let (bound, serve) =
        crate::observability::server::bind(addr, limits, readiness.clone(), metrics.clone(), token)
            .await
            .map_err(|error| WorkerError::OpsBind { addr, error })?;
    info!(
        addr = %bound,
        "ops endpoint listening (/healthz, /readyz, /metrics; dashboard: /, /dashboard.json, \
         /dashboard/poison/<queue>)"
    );
    Ok(Some((bound, serve_beside("ops endpoint", serve))))
}

/// Runs a server beside the tracker (never holding the drain up), aborted when the handle is
/// dropped, its end logged by `name`.
fn serve_beside(
    name: &'static str,
    serve: impl std::future::Future<Output = ()> + Send + 'static,
) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(tasks::logged(name, serve)))
}

/// Binds the HTTP trigger endpoint when enabled; it serves once the listeners run. It serves
/// no metrics; its refusals are counted in the ops endpoint's.
async fn bind_trigger(
    settings: &crate::Settings,
    hub: &Hub,
    metrics: &Arc<Metrics>,
    life: &Lifecycle,
) -> Result<Option<(SocketAddr, BoxServe)>, WorkerError> {
    let http = &settings.triggers.http;
    if !http.enabled {
        return Ok(None);
    }
    let refusals = metrics.refusals().clone();
    crate::trigger::http::bind(hub.clone(), http, refusals, life.stop.clone())
        .await
        .map(|(addr, serve)| Some((addr, Box::pin(serve) as BoxServe)))
        .map_err(|error| WorkerError::TriggerBind {
            addr: http.bind,
            error,
        })
}

/// A server's future, bound and not yet serving.
type BoxServe = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A queue's stack: the runtime's span outermost, then the worker-wide layers, then the
/// queue's own, around its handler.
fn stack_of(
    worker: &[SharedLayer],
    queue: Option<&Vec<SharedLayer>>,
    handler: Arc<dyn ErasedHandler>,
) -> Stack {
    let mut layers = vec![SharedLayer::new(Span)];
    layers.extend(worker.iter().cloned());
    layers.extend(queue.into_iter().flatten().cloned());
    Stack::new(layers, handler)
}

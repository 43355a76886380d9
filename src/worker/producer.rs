//! A producer without a worker: for programs that only enqueue (a web API).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::start::layered_store;
use super::startup::check_outputs;
use super::WorkerError;
use crate::handler::{Output, Publisher};
use crate::store::{self, QueueStore};
use crate::Settings;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Sends to the configured queues from a program that runs no worker, with what a worker's
/// publishers use: the same store layers (retries, shards, the claim check for large
/// payloads), each queue's encoding and trace context, and bus announcements of the sends
/// (so the workers' listeners wake at once) when the bus is shared.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// #[derive(serde::Serialize)]
/// struct Order { id: u64 }
///
/// let settings = ebbflow::Settings::load()?;
/// let producer = ebbflow::worker::Producer::connect(settings).await?;
/// let orders = producer.output::<Order>("orders").expect("configured");
/// orders.send(&Order { id: 7 }).await?;
/// producer.close().await;
/// # Ok(()) }
/// ```
pub struct Producer {
    publishers: BTreeMap<String, Publisher>,
    store: Arc<dyn QueueStore>,
    bus: crate::bus::BusHandle,
    /// The publishers' delayed wake-ups (messages sent with an initial delay): ended and
    /// waited for at [`Producer::close`], before the bus closes.
    background: (TaskTracker, CancellationToken),
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("queues", &self.publishers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Producer {
    /// Opens the store and bus `settings` name and every configured queue and output
    /// (`[queues.<queue>]` and `[outputs.<queue>]`; created when `storage.create_queues` is
    /// on, else checked to exist, within `storage.startup_timeout`).
    ///
    /// # Errors
    /// Invalid settings, a store or bus that cannot be reached, a missing queue (named);
    /// [`WorkerError::NoStorage`] when no storage is configured (its sends would stay in this
    /// process: use [`Producer::connect_to`] with a worker's embedded store for that).
    pub async fn connect(settings: Settings) -> Result<Self, WorkerError> {
        Self::open(settings, None).await
    }

    /// [`Producer::connect`] on `store` instead of the one the settings name (an embedded
    /// store shared with a worker in the same process, in tests).
    ///
    /// # Errors
    /// As [`Producer::connect`].
    pub async fn connect_to(
        settings: Settings,
        store: Arc<dyn QueueStore>,
    ) -> Result<Self, WorkerError> {
        Self::open(settings, Some(store)).await
    }

    async fn open(
        settings: Settings,
        given: Option<Arc<dyn QueueStore>>,
    ) -> Result<Self, WorkerError> {
        settings.validate()?;
        // What `store::open` would turn into the embedded store: fine for a worker (its
        // listeners read it), a silent sink for a producer of its own.
        let storage = &settings.storage;
        if given.is_none()
            && storage.connection_string.is_none()
            && storage.queue_endpoint.is_none()
        {
            return Err(WorkerError::NoStorage);
        }
        let (store, _metering) = layered_store(given, None, &settings).await?;
        let create = settings.storage.create_queues || store.kind() == store::BackendKind::Embedded;
        let bus = crate::bus::open(&settings.bus).await?;
        let mut publishers = BTreeMap::new();
        let background = (TaskTracker::new(), CancellationToken::new());
        // Every consumed queue is written as its section says, and the outputs as theirs.
        let queues = settings.queues.iter().map(|(name, q)| {
            let output = crate::config::OutputSettings {
                encoding: q.encoding,
                compression: q.compression,
                shards: q.shards,
                trace_context: q.trace_context,
            };
            (name.clone(), (output, q.bus))
        });
        let outputs = settings.outputs.iter().map(|(name, o)| {
            (
                name.clone(),
                (o.clone(), crate::bus::QueueBusSettings::default()),
            )
        });
        let all: BTreeMap<_, _> = queues.chain(outputs).collect();
        let wanted = all
            .iter()
            .map(|(n, (o, _))| (n.clone(), o.clone()))
            .collect();
        for (name, (queue, output)) in check_outputs(&store, &settings, wanted, create).await? {
            let mut publisher = Publisher::new(queue, output.encoding)
                .with_trace_context(output.trace_context)
                .with_background(background.0.clone(), background.1.clone());
            if settings.bus.is_shared() {
                let bus_settings = all[&name].1;
                publisher = publisher.with_announcer(crate::bus::Announcer::new(
                    bus.transport(),
                    &name,
                    bus_settings,
                ));
            }
            publishers.insert(name, publisher);
        }
        Ok(Self {
            publishers,
            store,
            bus,
            background,
        })
    }

    /// The publisher of a configured queue or output.
    pub fn publisher(&self, queue: &str) -> Option<&Publisher> {
        self.publishers.get(queue)
    }

    /// A typed output to a configured queue or output (`T`s as JSON); `None` for a name the
    /// settings lack.
    pub fn output<T: serde::Serialize>(&self, queue: &str) -> Option<Output<T>> {
        self.publishers.get(queue).cloned().map(Output::new)
    }

    /// The store the producer sends through.
    pub fn store(&self) -> Arc<dyn QueueStore> {
        self.store.clone()
    }

    /// Closes the bus connection (announcements in flight are sent first). Wake-ups still
    /// waiting for a delayed message to show are dropped: the message is not lost, its
    /// listeners find it on their next receive.
    pub async fn close(self) {
        let (tracker, stop) = self.background;
        stop.cancel();
        tracker.close();
        tracker.wait().await;
        self.bus.close().await;
    }
}

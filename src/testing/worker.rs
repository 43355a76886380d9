//! A whole worker on the embedded store, run until it is idle.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::listener::poison::PoisonEnvelope;
use crate::listener::QueueSnapshot;
use crate::store::memory::MemoryStore;
use crate::store::{
    BlobStore, Blobs, ClaimCheck, LayeredStore, MemoryBlobs, QueueFormat, QueueStore, SendOptions,
};
use crate::worker::WorkerError;
use crate::{Publisher, Settings, Worker};

/// A worker on its own embedded store, for tests: fill its queues, run it until it is idle,
/// and read what became of each message. Run it under tokio's paused clock
/// (`#[tokio::test(start_paused = true)]`, which needs tokio's `test-util` feature in your
/// dev-dependencies): retries, releases and idle back-off then take no real time.
///
/// ```
/// use ebbflow::config::{QueueSettings, Settings};
/// use ebbflow::testing::TestWorker;
/// use ebbflow::{Context, HandlerError};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mut settings = Settings::default();
/// settings.queues.insert("orders".into(), QueueSettings::default());
/// let kit = TestWorker::new(settings);
/// kit.send_bytes("orders", b"ok").await;
/// kit.send_bytes("orders", b"poison").await;
/// let report = kit
///     .run_until_idle(|worker| {
///         worker.handler_fn("orders", |text: String, _: Context| async move {
///             if text == "poison" {
///                 return Err(HandlerError::poison("never"));
///             }
///             Ok(())
///         })
///     })
///     .await
///     .unwrap();
/// assert_eq!(report.deleted("orders"), 1);
/// assert_eq!(report.poisoned("orders").len(), 1);
/// # }
/// ```
#[derive(Debug)]
pub struct TestWorker {
    settings: Settings,
    store: Arc<MemoryStore>,
    /// The in-memory blob container the claim check uses for both the kit's sends and the
    /// worker (`None` with `storage.claim_check.enabled = false`).
    blobs: Option<Arc<MemoryBlobs>>,
    idle_after: Duration,
}

/// What a [`TestWorker`] run came to, per queue.
#[derive(Debug, Clone)]
pub struct TestReport {
    /// Each queue's counters at the end.
    pub queues: Vec<QueueSnapshot>,
    /// Each queue's poison queue contents (up to 32 messages), by source queue.
    pub poison: BTreeMap<String, Vec<PoisonEnvelope>>,
}

impl TestReport {
    fn queue(&self, queue: &str) -> Option<&QueueSnapshot> {
        self.queues.iter().find(|q| q.queue == queue)
    }

    /// Messages of `queue` handled and deleted.
    pub fn deleted(&self, queue: &str) -> u64 {
        self.queue(queue).map_or(0, |q| q.handled)
    }

    /// Failed runs of `queue` left for a retry.
    pub fn retried(&self, queue: &str) -> u64 {
        self.queue(queue).map_or(0, |q| q.retried)
    }

    /// Releases ("not now") of `queue`'s messages.
    pub fn released(&self, queue: &str) -> u64 {
        self.queue(queue).map_or(0, |q| q.released)
    }

    /// What `queue` sent to its poison queue, with reasons and errors.
    pub fn poisoned(&self, queue: &str) -> &[PoisonEnvelope] {
        self.poison.get(queue).map_or(&[], Vec::as_slice)
    }
}

impl TestWorker {
    /// A test worker for `settings`, on a fresh embedded store.
    pub fn new(settings: Settings) -> Self {
        let claim = &settings.storage.claim_check;
        let blobs =
            (claim.enabled != Some(false)).then(|| Arc::new(MemoryBlobs::new(&claim.container)));
        Self {
            settings,
            store: Arc::new(MemoryStore::new()),
            blobs,
            idle_after: Duration::from_secs(60),
        }
    }

    /// How long without a receive bringing anything counts as idle when messages remain
    /// (released or delayed ones): default one minute of the (paused) clock.
    pub fn idle_after(mut self, quiet: Duration) -> Self {
        self.idle_after = quiet;
        self
    }

    /// The embedded store, to look at queues directly.
    pub fn store(&self) -> Arc<dyn QueueStore> {
        self.store.clone()
    }

    /// A publisher for `queue` in its configured encoding (the queue is created), through the
    /// claim check as a worker's publishers are: a payload over the queue's 64 KiB goes to the
    /// kit's in-memory blob container, which the worker run by [`TestWorker::run_until_idle`]
    /// reads.
    ///
    /// # Panics
    /// When `queue` is not configured or cannot be created (a test's mistake).
    pub async fn publisher(&self, queue: &str) -> Publisher {
        let settings = self
            .settings
            .queues
            .get(queue)
            .unwrap_or_else(|| panic!("queue {queue} is not configured in the test settings"));
        let base: Arc<dyn QueueStore> = self.store.clone();
        let store = match &self.blobs {
            Some(blobs) => {
                blobs
                    .create_if_missing()
                    .await
                    .expect("the in-memory blob container is created");
                let mut claim = ClaimCheck::new(
                    Some(blobs.clone() as Blobs),
                    &self.settings.storage.claim_check,
                );
                for (name, q) in &self.settings.queues {
                    let format = QueueFormat {
                        encoding: q.encoding,
                        compression: q.compression,
                    };
                    claim = claim.queue(name, format);
                }
                LayeredStore::wrap(base, claim)
            }
            None => base,
        };
        let q = store.queue(queue).expect("a valid queue name");
        q.create_if_missing()
            .await
            .expect("the embedded store creates queues");
        Publisher::new(q, settings.encoding)
    }

    /// Sends payload bytes to `queue` (see [`TestWorker::publisher`]).
    pub async fn send_bytes(&self, queue: &str, payload: &[u8]) {
        self.publisher(queue)
            .await
            .send_bytes(payload, SendOptions::default())
            .await
            .expect("the embedded store takes the message");
    }

    /// Sends `value` as JSON to `queue`.
    pub async fn send_json<T: serde::Serialize + ?Sized>(&self, queue: &str, value: &T) {
        self.publisher(queue)
            .await
            .send_json(value)
            .await
            .expect("the embedded store takes the message");
    }

    /// Starts the worker `build` makes of `Worker::new(settings)` on the store (register
    /// handlers and layers there), runs it until it is idle (nothing held, and every queue
    /// empty or nothing received for [`TestWorker::idle_after`]), drains it and reports.
    ///
    /// # Errors
    /// The worker's start-up error, if it cannot start.
    pub async fn run_until_idle(
        &self,
        build: impl FnOnce(Worker) -> Worker,
    ) -> Result<TestReport, WorkerError> {
        let mut worker = Worker::new(self.settings.clone()).with_store(self.store.clone());
        if let Some(blobs) = &self.blobs {
            worker = worker.with_blobs(blobs.clone() as Blobs);
        }
        let worker = build(worker).start().await?;
        let mut last_received = u64::MAX;
        let mut quiet_since = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let snapshots = worker.snapshot();
            let held: u64 = snapshots.iter().map(|q| q.held).sum();
            let received: u64 = snapshots.iter().map(|q| q.received).sum();
            if received != last_received {
                last_received = received;
                quiet_since = tokio::time::Instant::now();
            }
            if held > 0 {
                continue;
            }
            let mut empty = true;
            for q in &snapshots {
                let depth = self
                    .store
                    .queue(&q.queue)
                    .ok()
                    .map(|q| async move { q.approximate_depth().await.unwrap_or(0) });
                if let Some(depth) = depth {
                    empty &= depth.await == 0;
                }
            }
            if empty || quiet_since.elapsed() >= self.idle_after {
                break;
            }
        }
        let drained = worker.shutdown().await;
        let mut poison = BTreeMap::new();
        for (name, q) in &self.settings.queues {
            let envelopes = match self.store.queue(&q.poison_queue_name(name)) {
                Ok(pq) => pq
                    .peek(crate::store::MAX_BATCH)
                    .await
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|m| PoisonEnvelope::from_text(&m.text, q.encoding).ok())
                    .collect(),
                Err(_) => Vec::new(),
            };
            poison.insert(name.clone(), envelopes);
        }
        Ok(TestReport {
            queues: drained.queues,
            poison,
        })
    }
}

//! A store layer that times every call by queue and operation (the histogram
//! `ebbflow_storage_call_duration_seconds`) and keeps how the store has been answering, for
//! the worker's readiness.
//!
//! "The store answered recently" is judged from the calls the worker makes anyway, never from
//! probes of its own: an idle worker (one task polling at the back-off maximum, or none at
//! `min_tasks = 0`) pays nothing for its readiness. The store counts as failing from the first
//! call that got no usable answer (a transient fault after every retry, no answer, no access
//! token, credentials refused) until the next call that got one (a success, or an answer such
//! as "message not found" or "queue not found", which the service gave). Failing for less
//! than the grace is *degraded*; for longer, *unready*. With no calls at all it stays as it
//! was, ready after a start-up whose calls all succeeded.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tokio::time::Instant;

use super::{Layered, Operation, Queue, QueueLayer, StoreError, StoreLayer};

/// Bucket bounds of store call times, in seconds: 1 ms to 60 s (retries included).
pub(crate) const CALL_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The labels of one call's time: `queue` and `op`.
pub(crate) type CallLabels = Vec<(&'static str, String)>;

type Histograms = Family<CallLabels, Histogram, fn() -> Histogram>;

fn call_histogram() -> Histogram {
    Histogram::new(CALL_BUCKETS)
}

/// How the store has been answering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoreHealth {
    /// The last call got an answer (or none was made yet).
    Answering,
    /// Every call since `since` got no usable answer; the last one failed with `error`.
    Failing {
        /// When the first of the failing calls ended.
        since: Instant,
        /// The last error (secrets already redacted by the store).
        error: String,
    },
}

/// The metering layer; clones share its histograms and health.
#[derive(Clone)]
pub(crate) struct Metering {
    calls: Histograms,
    health: Arc<Mutex<StoreHealth>>,
}

impl Default for Metering {
    fn default() -> Self {
        Self {
            calls: Family::new_with_constructor(call_histogram as fn() -> Histogram),
            health: Arc::new(Mutex::new(StoreHealth::Answering)),
        }
    }
}

impl std::fmt::Debug for Metering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metering")
            .field("health", &self.health())
            .finish_non_exhaustive()
    }
}

impl Metering {
    /// Call times by `queue` and `op`, in seconds.
    pub(crate) fn call_seconds(&self) -> &Family<CallLabels, Histogram, fn() -> Histogram> {
        &self.calls
    }

    /// How the store has been answering.
    pub(crate) fn health(&self) -> StoreHealth {
        self.health
            .lock()
            .map(|h| h.clone())
            .unwrap_or(StoreHealth::Answering)
    }

    /// How long the store has been failing now (zero while it answers).
    pub(crate) fn failing_for(&self) -> Duration {
        match self.health() {
            StoreHealth::Answering => Duration::ZERO,
            StoreHealth::Failing { since, .. } => since.elapsed(),
        }
    }

    fn record(&self, result: Result<(), &StoreError>) {
        let answered = match result {
            Ok(()) => true,
            // The service answered; the answer is about the message or the queue.
            Err(
                StoreError::QueueNotFound { .. }
                | StoreError::MessageNotFound { .. }
                | StoreError::Invalid { .. }
                | StoreError::InDoubt { .. },
            ) => true,
            Err(_) => false,
        };
        let Ok(mut health) = self.health.lock() else {
            return;
        };
        match (answered, &*health, result) {
            (true, _, _) => *health = StoreHealth::Answering,
            (false, StoreHealth::Failing { since, .. }, Err(e)) => {
                *health = StoreHealth::Failing {
                    since: *since,
                    error: e.to_string(),
                }
            }
            (false, StoreHealth::Answering, Err(e)) => {
                *health = StoreHealth::Failing {
                    since: Instant::now(),
                    error: e.to_string(),
                }
            }
            (false, _, Ok(())) => {}
        }
    }
}

impl QueueLayer for Metering {
    async fn around<T: Send>(
        &self,
        queue: &str,
        operation: Operation,
        call: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        // A client span per store call, under the span that made it (send, receive, process,
        // settle); none at all while traces are off.
        let span = crate::codec::spans::store_span(queue, operation.as_str());
        let call = tracing::Instrument::instrument(call, span);
        // The caller's context stays readable below the store span (the claim check's
        // reference carries it).
        let result = crate::codec::spans::calling(call).await;
        let labels = vec![
            ("queue", queue.to_string()),
            ("op", operation.as_str().to_string()),
        ];
        self.calls
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        self.record(result.as_ref().map(|_| ()));
        result
    }
}

impl StoreLayer for Metering {
    fn wrap(&self, queue: Arc<dyn Queue>) -> Arc<dyn Queue> {
        Layered::wrap(queue, self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::LayeredStore;

    fn transient() -> StoreError {
        StoreError::Transient {
            queue: "orders".into(),
            detail: "503 ServerBusy".into(),
            source: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn calls_are_timed_by_queue_and_operation() {
        let metering = Metering::default();
        let store = LayeredStore::wrap(Arc::new(MemoryStore::new()), metering.clone());
        let q = store.queue("orders").unwrap();
        q.create_if_missing().await.unwrap();
        q.send("a", Default::default()).await.unwrap();
        q.receive(32, Duration::from_secs(30)).await.unwrap();
        q.receive(32, Duration::from_secs(30)).await.unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("calls", "", metering.call_seconds().clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let count = |op: &str| {
            let line = format!("calls_count{{queue=\"orders\",op=\"{op}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&line))
                .map_or(0, |v| v.trim().parse::<u64>().unwrap())
        };
        assert_eq!(
            (count("create"), count("send"), count("receive")),
            (1, 1, 2)
        );
        assert_eq!(count("delete"), 0);
        assert_eq!(metering.health(), StoreHealth::Answering);
    }

    #[tokio::test(start_paused = true)]
    async fn failing_runs_from_the_first_unanswered_call_to_the_next_answer() {
        let m = Metering::default();
        m.record(Err(&transient()));
        let StoreHealth::Failing { since, error } = m.health() else {
            panic!("{:?}", m.health())
        };
        assert!(error.contains("503 ServerBusy"), "{error}");
        tokio::time::advance(Duration::from_secs(30)).await;
        m.record(Err(&StoreError::TokenUnavailable {
            queue: "orders".into(),
            detail: "identity endpoint down".into(),
            source: None,
        }));
        // Still failing since the first one, with the latest reason.
        assert!(
            matches!(m.health(), StoreHealth::Failing { since: s, ref error } if s == since && error.contains("identity"))
        );
        assert_eq!(m.failing_for(), Duration::from_secs(30));
        // "Message not found" is an answer: the service is there.
        m.record(Err(&StoreError::MessageNotFound {
            queue: "orders".into(),
            id: "1".into(),
        }));
        assert_eq!(m.health(), StoreHealth::Answering);
        assert_eq!(m.failing_for(), Duration::ZERO);
    }
}

//! A store layer that counts every call by kind: the billable transactions a worker makes.
//! Used by the simulator and by tests that assert on cost.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{
    Layered, LayeredStore, Operation, Queue, QueueLayer, QueueStore, StoreError, StoreLayer,
};

/// Calls made so far, by kind.
#[derive(Debug, Default)]
pub struct CallCounts {
    /// Receive (Get Messages) calls.
    pub receive: AtomicU64,
    /// Delete Message calls.
    pub delete: AtomicU64,
    /// Update Message calls.
    pub update: AtomicU64,
    /// Put Message calls.
    pub send: AtomicU64,
    /// Peek Messages calls.
    pub peek: AtomicU64,
    /// Get Queue Properties (depth) calls.
    pub properties: AtomicU64,
    /// Create Queue calls.
    pub create: AtomicU64,
}

impl CallCounts {
    /// Every call the worker makes to consume and manage messages (sends excluded: those are
    /// the producer's).
    pub fn worker_calls(&self) -> u64 {
        [
            &self.receive,
            &self.delete,
            &self.update,
            &self.peek,
            &self.properties,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }

    /// One counter's value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

impl CallCounts {
    /// The counter of `operation`.
    pub fn of(&self, operation: Operation) -> &AtomicU64 {
        match operation {
            Operation::Create => &self.create,
            Operation::Send => &self.send,
            Operation::Receive => &self.receive,
            Operation::Delete => &self.delete,
            Operation::Update => &self.update,
            Operation::Peek => &self.peek,
            Operation::Properties => &self.properties,
        }
    }
}

/// The layer that counts every call by [`Operation`]; its clones share the counters.
#[derive(Debug, Clone, Default)]
pub struct Counting {
    counts: Arc<CallCounts>,
}

impl Counting {
    /// The shared counters.
    pub fn counts(&self) -> Arc<CallCounts> {
        self.counts.clone()
    }
}

impl QueueLayer for Counting {
    async fn around<T: Send>(
        &self,
        _queue: &str,
        operation: Operation,
        call: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> Result<T, StoreError> {
        self.counts.of(operation).fetch_add(1, Ordering::Relaxed);
        call.await
    }
}

impl StoreLayer for Counting {
    fn wrap(&self, queue: Arc<dyn Queue>) -> Arc<dyn Queue> {
        Layered::wrap(queue, self.clone())
    }
}

/// A store that counts the calls made through it.
pub type CountingStore = LayeredStore<Counting>;

impl LayeredStore<Counting> {
    /// Counts the calls made through it to `inner`.
    pub fn new(inner: Arc<dyn QueueStore>) -> Self {
        Self::with_layer(inner, Counting::default())
    }

    /// The shared counters.
    pub fn counts(&self) -> Arc<CallCounts> {
        self.layer().counts()
    }
}

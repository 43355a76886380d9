//! A store wrapper that counts every call by kind: the billable transactions a worker makes.
//! Used by the simulator and by tests that assert on cost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{
    PeekedMessage, Queue, QueueStore, ReceivedMessage, SendOptions, SentMessage, StoreError,
    UpdatedMessage,
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

/// Wraps a store and counts its calls.
#[derive(Clone)]
pub struct CountingStore {
    inner: Arc<dyn QueueStore>,
    counts: Arc<CallCounts>,
}

impl CountingStore {
    /// Counts the calls made through it to `inner`.
    pub fn new(inner: Arc<dyn QueueStore>) -> Self {
        Self {
            inner,
            counts: Arc::default(),
        }
    }

    /// The shared counters.
    pub fn counts(&self) -> Arc<CallCounts> {
        self.counts.clone()
    }
}

impl QueueStore for CountingStore {
    fn queue(&self, name: &str) -> Result<Arc<dyn Queue>, StoreError> {
        Ok(Arc::new(CountingQueue {
            inner: self.inner.queue(name)?,
            counts: self.counts.clone(),
        }))
    }

    fn kind(&self) -> super::BackendKind {
        self.inner.kind()
    }

    fn account(&self) -> Option<String> {
        self.inner.account()
    }

    fn unknown_outcomes(&self, queue: &str) -> super::UnknownOutcomes {
        self.inner.unknown_outcomes(queue)
    }
}

struct CountingQueue {
    inner: Arc<dyn Queue>,
    counts: Arc<CallCounts>,
}

fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

#[async_trait]
impl Queue for CountingQueue {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn create_if_missing(&self) -> Result<(), StoreError> {
        count(&self.counts.create);
        self.inner.create_if_missing().await
    }
    async fn send(&self, text: &str, options: SendOptions) -> Result<SentMessage, StoreError> {
        count(&self.counts.send);
        self.inner.send(text, options).await
    }
    async fn receive(
        &self,
        max: u8,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, StoreError> {
        count(&self.counts.receive);
        self.inner.receive(max, visibility).await
    }
    async fn delete(&self, id: &str, pop_receipt: &str) -> Result<(), StoreError> {
        count(&self.counts.delete);
        self.inner.delete(id, pop_receipt).await
    }
    async fn update(
        &self,
        id: &str,
        pop_receipt: &str,
        visibility: Duration,
        text: Option<&str>,
    ) -> Result<UpdatedMessage, StoreError> {
        count(&self.counts.update);
        self.inner.update(id, pop_receipt, visibility, text).await
    }
    async fn peek(&self, max: u8) -> Result<Vec<PeekedMessage>, StoreError> {
        count(&self.counts.peek);
        self.inner.peek(max).await
    }
    async fn approximate_depth(&self) -> Result<u64, StoreError> {
        count(&self.counts.properties);
        self.inner.approximate_depth().await
    }
}

//! A store wrapper that retries every call on transient errors
//! ([`crate::backoff::retry_transient`]): the one place where service faults are retried, so
//! the listener, publishers and poison tools all get the same bounded, jittered policy.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{
    PeekedMessage, Queue, QueueStore, ReceivedMessage, SendOptions, SentMessage, StoreError,
    UpdatedMessage,
};
use crate::backoff::retry_transient;
use crate::config::RetrySettings;

/// Wraps a store; its queues retry transient errors.
pub struct RetryingStore {
    inner: Arc<dyn QueueStore>,
    settings: RetrySettings,
}

impl RetryingStore {
    /// Wraps `inner` with the retry policy `settings`. The embedded store is returned as it
    /// is: it has no transient faults to retry.
    pub fn wrap(inner: Arc<dyn QueueStore>, settings: RetrySettings) -> Arc<dyn QueueStore> {
        if inner.kind() == super::BackendKind::Embedded {
            return inner;
        }
        Arc::new(Self { inner, settings })
    }
}

impl QueueStore for RetryingStore {
    fn queue(&self, name: &str) -> Result<Arc<dyn Queue>, StoreError> {
        Ok(Arc::new(RetryingQueue {
            inner: self.inner.queue(name)?,
            settings: self.settings,
        }))
    }

    fn kind(&self) -> super::BackendKind {
        self.inner.kind()
    }
}

struct RetryingQueue {
    inner: Arc<dyn Queue>,
    settings: RetrySettings,
}

impl RetryingQueue {
    async fn run<T, F, Fut>(&self, what: &str, op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        retry_transient(&self.settings, self.inner.name(), what, op).await
    }
}

#[async_trait]
impl Queue for RetryingQueue {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn create_if_missing(&self) -> Result<(), StoreError> {
        self.run("create", || self.inner.create_if_missing()).await
    }

    async fn send(&self, text: &str, options: SendOptions) -> Result<SentMessage, StoreError> {
        self.run("send", || self.inner.send(text, options)).await
    }

    async fn receive(
        &self,
        max: u8,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, StoreError> {
        self.run("receive", || self.inner.receive(max, visibility))
            .await
    }

    async fn delete(&self, id: &str, pop_receipt: &str) -> Result<(), StoreError> {
        self.run("delete", || self.inner.delete(id, pop_receipt))
            .await
    }

    async fn update(
        &self,
        id: &str,
        pop_receipt: &str,
        visibility: Duration,
        text: Option<&str>,
    ) -> Result<UpdatedMessage, StoreError> {
        self.run("update", || {
            self.inner.update(id, pop_receipt, visibility, text)
        })
        .await
    }

    async fn peek(&self, max: u8) -> Result<Vec<PeekedMessage>, StoreError> {
        self.run("peek", || self.inner.peek(max)).await
    }

    async fn approximate_depth(&self) -> Result<u64, StoreError> {
        self.run("properties", || self.inner.approximate_depth())
            .await
    }
}

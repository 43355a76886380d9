//! A bound on the first answer: a command's first store call must be answered within
//! `storage.startup_timeout` (the worker's start-up bound, 10 s by default), else the command
//! stops with an error naming the endpoint and the key that raises the bound. Without it, an
//! endpoint that accepts connections and never answers (a wrong port, a proxy, a stopped VM)
//! held a command silent for minutes: six tries of `storage.retry.request_timeout` each. Once
//! the service has answered anything (an error too), calls run unbounded: a long send of many
//! messages is not cut.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ebbflow::store::{Layered, Operation, Queue, QueueLayer, StoreError, StoreLayer};

/// The layer: shared by every queue of one store.
#[derive(Debug, Clone)]
pub struct FirstAnswer {
    answered: Arc<AtomicBool>,
    bound: Duration,
    endpoint: String,
}

impl FirstAnswer {
    /// A bound of `bound` until `endpoint` (shown in the error; no secret) first answers.
    pub fn new(bound: Duration, endpoint: impl Into<String>) -> Self {
        Self {
            answered: Arc::new(AtomicBool::new(false)),
            bound,
            endpoint: endpoint.into(),
        }
    }
}

impl QueueLayer for FirstAnswer {
    async fn around<T: Send>(
        &self,
        queue: &str,
        _operation: Operation,
        call: impl std::future::Future<Output = Result<T, StoreError>> + Send,
    ) -> Result<T, StoreError> {
        if self.answered.load(Ordering::Relaxed) {
            return call.await;
        }
        match tokio::time::timeout(self.bound, call).await {
            Ok(result) => {
                self.answered.store(true, Ordering::Relaxed);
                result
            }
            Err(_) => Err(StoreError::Setup(format!(
                "storage at {} did not answer within {} (queue {queue}): check the endpoint \
                 (storage.connection_string, AZURE_STORAGE_CONNECTION_STRING or \
                 storage.queue_endpoint); for a slow network raise storage.startup_timeout \
                 (EBBFLOW__STORAGE__STARTUP_TIMEOUT=30s)",
                self.endpoint,
                humantime::format_duration(self.bound)
            ))),
        }
    }
}

impl StoreLayer for FirstAnswer {
    fn wrap(&self, queue: Arc<dyn Queue>) -> Arc<dyn Queue> {
        Layered::wrap(queue, self.clone())
    }
}

//! A store layer that gives every call its client span (`store.<op> <queue>`) under the span
//! that made it, and nothing else: for tools that make store calls outside a worker (the
//! `ebbflow` command line), whose calls the worker's metering layer does not see. Costs one
//! atomic load per call while traces are off.

use std::future::Future;
use std::sync::Arc;

use super::{Layered, Operation, Queue, QueueLayer, StoreError, StoreLayer};

/// Wrap a store in it ([`LayeredStore::wrap`](super::LayeredStore::wrap)) above the claim
/// check, so a producer's `send <queue>` span has its `store.send <queue>` child (the claim
/// check's blob upload runs inside it). A worker's store has this span from its metering layer
/// already.
#[derive(Debug, Clone, Copy, Default)]
pub struct Traced;

impl QueueLayer for Traced {
    async fn around<T: Send>(
        &self,
        queue: &str,
        operation: Operation,
        call: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> Result<T, StoreError> {
        let span = crate::codec::spans::store_span(queue, operation.as_str());
        crate::codec::spans::calling(tracing::Instrument::instrument(call, span)).await
    }
}

impl StoreLayer for Traced {
    fn wrap(&self, queue: Arc<dyn Queue>) -> Arc<dyn Queue> {
        Layered::wrap(queue, *self)
    }
}

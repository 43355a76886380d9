//! The forwarding base for store wrappers (documented, with an example, in the store's module
//! docs: `# Layers`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::time::Instant;

use super::{
    BackendKind, PayloadError, PeekedMessage, Queue, QueueStore, ReceivedMessage, SendOptions,
    SentMessage, StoreError, UnknownOutcomes, UpdatedMessage,
};

/// One kind of store call: what layers count, meter and log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// Create Queue.
    Create,
    /// Put Message.
    Send,
    /// Get Messages.
    Receive,
    /// Delete Message.
    Delete,
    /// Update Message.
    Update,
    /// Peek Messages.
    Peek,
    /// Get Queue Properties (the approximate depth).
    Properties,
}

impl Operation {
    /// Every operation, in declaration order.
    pub const ALL: [Operation; 7] = [
        Self::Create,
        Self::Send,
        Self::Receive,
        Self::Delete,
        Self::Update,
        Self::Peek,
        Self::Properties,
    ];

    /// `create`, `send`, `receive`, `delete`, `update`, `peek` or `properties`, as logged.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Send => "send",
            Self::Receive => "receive",
            Self::Delete => "delete",
            Self::Update => "update",
            Self::Peek => "peek",
            Self::Properties => "properties",
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A wrapper around one queue that overrides only the operations it changes. Every method
/// gets the queue underneath as `inner`; the defaults pass each call to it through
/// [`QueueLayer::around`]. Put it on a queue with [`Layered`].
pub trait QueueLayer: Send + Sync + 'static {
    /// Runs one call (`operation` on queue `queue`; `call` is the call to the queue
    /// underneath). Every default method goes through here, so a layer that treats all calls
    /// alike (counting, metering) overrides this alone. Default: runs `call`.
    fn around<T: Send>(
        &self,
        queue: &str,
        operation: Operation,
        call: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> impl Future<Output = Result<T, StoreError>> + Send {
        let _ = (queue, operation);
        call
    }

    /// [`Queue::create_if_missing`].
    fn create_if_missing(
        &self,
        inner: &dyn Queue,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.around(inner.name(), Operation::Create, inner.create_if_missing())
    }

    /// [`Queue::send`].
    fn send<'a>(
        &'a self,
        inner: &'a dyn Queue,
        text: &'a str,
        options: SendOptions,
    ) -> impl Future<Output = Result<SentMessage, StoreError>> + Send + 'a {
        self.around(inner.name(), Operation::Send, inner.send(text, options))
    }

    /// [`Queue::receive`].
    fn receive(
        &self,
        inner: &dyn Queue,
        max: u8,
        visibility: Duration,
    ) -> impl Future<Output = Result<Vec<ReceivedMessage>, StoreError>> + Send {
        self.around(
            inner.name(),
            Operation::Receive,
            inner.receive(max, visibility),
        )
    }

    /// [`Queue::delete`].
    fn delete<'a>(
        &'a self,
        inner: &'a dyn Queue,
        id: &'a str,
        pop_receipt: &'a str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'a {
        self.around(
            inner.name(),
            Operation::Delete,
            inner.delete(id, pop_receipt),
        )
    }

    /// [`Queue::delete_within`].
    fn delete_within<'a>(
        &'a self,
        inner: &'a dyn Queue,
        id: &'a str,
        pop_receipt: &'a str,
        lease_ends: Instant,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'a {
        self.around(
            inner.name(),
            Operation::Delete,
            inner.delete_within(id, pop_receipt, lease_ends),
        )
    }

    /// [`Queue::update`].
    fn update<'a>(
        &'a self,
        inner: &'a dyn Queue,
        id: &'a str,
        pop_receipt: &'a str,
        visibility: Duration,
        text: Option<&'a str>,
    ) -> impl Future<Output = Result<UpdatedMessage, StoreError>> + Send + 'a {
        self.around(
            inner.name(),
            Operation::Update,
            inner.update(id, pop_receipt, visibility, text),
        )
    }

    /// [`Queue::open_payload`]. Default: the inner queue's.
    fn open_payload<'a>(
        &'a self,
        inner: &'a dyn Queue,
        text: &'a str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, PayloadError>> + Send + 'a {
        inner.open_payload(text)
    }

    /// [`Queue::payload_done`]. Default: the inner queue's.
    fn payload_done<'a>(
        &'a self,
        inner: &'a dyn Queue,
        text: &'a str,
    ) -> impl Future<Output = ()> + Send + 'a {
        inner.payload_done(text)
    }

    /// [`Queue::payload_kept`]. Default: the inner queue's.
    fn payload_kept<'a>(
        &'a self,
        inner: &'a dyn Queue,
        text: &'a str,
        expires_at: Option<OffsetDateTime>,
    ) -> impl Future<Output = ()> + Send + 'a {
        inner.payload_kept(text, expires_at)
    }

    /// [`Queue::peek`].
    fn peek(
        &self,
        inner: &dyn Queue,
        max: u8,
    ) -> impl Future<Output = Result<Vec<PeekedMessage>, StoreError>> + Send {
        self.around(inner.name(), Operation::Peek, inner.peek(max))
    }

    /// [`Queue::approximate_depth`].
    fn approximate_depth(
        &self,
        inner: &dyn Queue,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        self.around(
            inner.name(),
            Operation::Properties,
            inner.approximate_depth(),
        )
    }
}

/// A queue with a [`QueueLayer`] on it.
pub struct Layered<L> {
    inner: Arc<dyn Queue>,
    layer: L,
}

impl<L> std::fmt::Debug for Layered<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layered")
            .field("queue", &self.inner.name())
            .field("layer", &std::any::type_name::<L>())
            .finish_non_exhaustive()
    }
}

impl<L: QueueLayer> Layered<L> {
    /// `layer` on `inner`.
    pub fn new(inner: Arc<dyn Queue>, layer: L) -> Self {
        Self { inner, layer }
    }

    /// `layer` on `inner`, as a queue handle.
    pub fn wrap(inner: Arc<dyn Queue>, layer: L) -> Arc<dyn Queue> {
        Arc::new(Self::new(inner, layer))
    }

    /// The queue underneath.
    pub fn inner(&self) -> &Arc<dyn Queue> {
        &self.inner
    }

    /// The layer.
    pub fn layer(&self) -> &L {
        &self.layer
    }
}

#[async_trait]
impl<L: QueueLayer> Queue for Layered<L> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn create_if_missing(&self) -> Result<(), StoreError> {
        self.layer.create_if_missing(&*self.inner).await
    }

    async fn send(&self, text: &str, options: SendOptions) -> Result<SentMessage, StoreError> {
        self.layer.send(&*self.inner, text, options).await
    }

    async fn receive(
        &self,
        max: u8,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, StoreError> {
        self.layer.receive(&*self.inner, max, visibility).await
    }

    async fn delete(&self, id: &str, pop_receipt: &str) -> Result<(), StoreError> {
        self.layer.delete(&*self.inner, id, pop_receipt).await
    }

    async fn delete_within(
        &self,
        id: &str,
        pop_receipt: &str,
        lease_ends: Instant,
    ) -> Result<(), StoreError> {
        self.layer
            .delete_within(&*self.inner, id, pop_receipt, lease_ends)
            .await
    }

    async fn update(
        &self,
        id: &str,
        pop_receipt: &str,
        visibility: Duration,
        text: Option<&str>,
    ) -> Result<UpdatedMessage, StoreError> {
        self.layer
            .update(&*self.inner, id, pop_receipt, visibility, text)
            .await
    }

    async fn open_payload(&self, text: &str) -> Result<Option<Vec<u8>>, PayloadError> {
        self.layer.open_payload(&*self.inner, text).await
    }

    async fn payload_done(&self, text: &str) {
        self.layer.payload_done(&*self.inner, text).await
    }

    async fn payload_kept(&self, text: &str, expires_at: Option<OffsetDateTime>) {
        self.layer
            .payload_kept(&*self.inner, text, expires_at)
            .await
    }

    async fn peek(&self, max: u8) -> Result<Vec<PeekedMessage>, StoreError> {
        self.layer.peek(&*self.inner, max).await
    }

    async fn approximate_depth(&self) -> Result<u64, StoreError> {
        self.layer.approximate_depth(&*self.inner).await
    }

    async fn clear(&self) -> Result<(), StoreError> {
        self.inner.clear().await
    }

    async fn delete_queue(&self) -> Result<(), StoreError> {
        self.inner.delete_queue().await
    }
}

/// A wrapper around a whole store that overrides only what it changes. Every method gets the
/// store underneath as `inner`. Put it on a store with [`LayeredStore`].
pub trait StoreLayer: Send + Sync + 'static {
    /// The handle for queue `name`. Default: the inner store's handle, through
    /// [`StoreLayer::wrap`]. A layer that maps one name onto other queues (sharding)
    /// overrides this.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the name is not a valid queue name (or the layer refuses it).
    fn queue(&self, inner: &dyn QueueStore, name: &str) -> Result<Arc<dyn Queue>, StoreError> {
        Ok(self.wrap(inner.queue(name)?))
    }

    /// Wraps one queue handle of the inner store, usually with [`Layered::wrap`] and this
    /// layer's [`QueueLayer`]. Default: the handle unchanged.
    fn wrap(&self, queue: Arc<dyn Queue>) -> Arc<dyn Queue> {
        queue
    }

    /// [`QueueStore::kind`]. Default: the inner store's.
    fn kind(&self, inner: &dyn QueueStore) -> BackendKind {
        inner.kind()
    }

    /// [`QueueStore::account`]. Default: the inner store's.
    fn account(&self, inner: &dyn QueueStore) -> Option<String> {
        inner.account()
    }

    /// [`QueueStore::unknown_outcomes`]. Default: the inner store's.
    fn unknown_outcomes(&self, inner: &dyn QueueStore, queue: &str) -> UnknownOutcomes {
        inner.unknown_outcomes(queue)
    }
}

/// A store with a [`StoreLayer`] on it.
pub struct LayeredStore<L> {
    inner: Arc<dyn QueueStore>,
    layer: L,
}

impl<L> std::fmt::Debug for LayeredStore<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayeredStore")
            .field("backend", &self.inner.kind())
            .field("layer", &std::any::type_name::<L>())
            .finish_non_exhaustive()
    }
}

impl<L: StoreLayer> LayeredStore<L> {
    /// `layer` on `inner`. (Not `new`: a layer's own store type, such as
    /// [`CountingStore`](super::counting::CountingStore), keeps `new` for itself.)
    pub fn with_layer(inner: Arc<dyn QueueStore>, layer: L) -> Self {
        Self { inner, layer }
    }

    /// `layer` on `inner`, as a store handle.
    pub fn wrap(inner: Arc<dyn QueueStore>, layer: L) -> Arc<dyn QueueStore> {
        Arc::new(Self::with_layer(inner, layer))
    }

    /// The store underneath.
    pub fn inner(&self) -> &Arc<dyn QueueStore> {
        &self.inner
    }

    /// The layer.
    pub fn layer(&self) -> &L {
        &self.layer
    }
}

impl<L: StoreLayer> QueueStore for LayeredStore<L> {
    fn queue(&self, name: &str) -> Result<Arc<dyn Queue>, StoreError> {
        self.layer.queue(&*self.inner, name)
    }

    fn kind(&self) -> BackendKind {
        self.layer.kind(&*self.inner)
    }

    fn account(&self) -> Option<String> {
        self.layer.account(&*self.inner)
    }

    fn unknown_outcomes(&self, queue: &str) -> UnknownOutcomes {
        self.layer.unknown_outcomes(&*self.inner, queue)
    }
}

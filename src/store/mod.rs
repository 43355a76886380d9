//! The queue operations the runtime needs, behind one trait, with two backends:
//!
//! - [`MemoryStore`], in-process, with the service's semantics (visibility timeout, pop
//!   receipts that change on every receive and update, dequeue counts, TTL expiry, and every
//!   input rule of Put, Update and Get Messages: it refuses exactly what the service refuses).
//!   It is the embedded default and the test double for logic.
//! - [`AzureStore`], on `azure_storage_queue` 1.x, for Azure and Azurite.
//!
//! Wrappers are layers on one forwarding base ([`LayeredStore`] with a [`StoreLayer`]), each
//! overriding only what it changes: [`RetryingStore`] (transient faults, unknown outcomes,
//! deletes that outlast outages within the lease), [`CountingStore`] (calls by kind),
//! [`ShardingStore`] (one logical queue over `N`) and [`ClaimCheck`] (payloads too large for
//! a message go to a blob store, [`BlobStore`]). The `[storage]` settings live beside them
//! ([`StorageSettings`]); the service's limits ([`MAX_BATCH`], [`MAX_MESSAGE_BYTES`],
//! [`MAX_VISIBILITY`], [`MAX_TIME_TO_LIVE`]) come from the crate's service leaf.
//!
//! One conformance suite (`tests/azurite/conformance.rs`, with `tests/azurite/extremes.rs` for every input at
//! its extremes) runs the same checks against both backends.
//!
//! # Layers
//!
//! The forwarding base for store wrappers, after tower's `Layer`: a wrapper says only what it
//! changes, and every operation it leaves alone goes to the store underneath unchanged.
//!
//! - A [`QueueLayer`] wraps one queue. Each of its methods gets the queue underneath as
//!   `inner` and, unless overridden, calls it through [`QueueLayer::around`], the one hook that
//!   sees every call (its [`Operation`], its future): a counting or metering layer overrides
//!   `around` only; a layer that changes one operation (a fault double that hangs deletes)
//!   overrides that method only. [`Layered`] puts a layer on a queue and is the [`Queue`].
//! - A [`StoreLayer`] wraps a whole store: by default it hands out the inner store's queues
//!   through [`StoreLayer::wrap`] (where it puts its `QueueLayer` on each) and forwards the
//!   rest; a sharding layer overrides [`StoreLayer::queue`] instead. [`LayeredStore`] puts a
//!   layer on a store and is the [`QueueStore`].
//!
//! The layer traits are not `Queue`/`QueueStore` themselves (their methods take `inner`), so a
//! layer's `send` never competes with a queue's `send` for a method call.
//!
//! ```
//! # use std::sync::Arc;
//! # use std::sync::atomic::{AtomicU64, Ordering};
//! use ebbflow::store::{MemoryStore, LayeredStore, Operation, QueueLayer, QueueStore};
//! use ebbflow::store::{Layered, Queue, StoreError, StoreLayer};
//!
//! /// Counts receives; every other call passes unchanged.
//! #[derive(Clone, Default)]
//! struct Receives(Arc<AtomicU64>);
//!
//! impl QueueLayer for Receives {
//!     async fn around<T: Send>(
//!         &self,
//!         _queue: &str,
//!         operation: Operation,
//!         call: impl std::future::Future<Output = Result<T, StoreError>> + Send,
//!     ) -> Result<T, StoreError> {
//!         if operation == Operation::Receive {
//!             self.0.fetch_add(1, Ordering::Relaxed);
//!         }
//!         call.await
//!     }
//! }
//!
//! impl StoreLayer for Receives {
//!     fn wrap(&self, queue: Arc<dyn Queue>) -> Arc<dyn Queue> {
//!         Layered::wrap(queue, self.clone())
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let layer = Receives::default();
//! let store = LayeredStore::wrap(Arc::new(MemoryStore::new()), layer.clone());
//! let q = store.queue("orders").unwrap();
//! q.create_if_missing().await.unwrap();
//! q.receive(32, std::time::Duration::from_secs(30)).await.unwrap();
//! assert_eq!(layer.0.load(Ordering::Relaxed), 1);
//! # });
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;

pub(crate) mod azure;
pub(crate) mod blob;
mod cause;
pub(crate) mod claim;
pub(crate) mod counting;
pub(crate) mod layer;
pub(crate) mod memory;
pub(crate) mod metered;
pub(crate) mod retrying;
pub(crate) mod rules;
pub(crate) mod settings;
pub(crate) mod sharding;
mod traced;

pub(crate) use crate::service::validate_queue_name;
pub use crate::service::{
    DEFAULT_TIME_TO_LIVE, MAX_BATCH, MAX_MESSAGE_BYTES, MAX_TIME_TO_LIVE, MAX_VISIBILITY,
};
pub use azure::{account_sas, AzureBlobs, AzureStore, DEV_ACCOUNT, DEV_KEY};
pub use blob::memory::MemoryBlobs;
pub use blob::{BlobError, BlobErrorKind, BlobInfo, BlobStore, Blobs, META_EXPIRES, META_QUEUE};
pub use cause::Cause;
pub use claim::{
    blobs_from_settings, sweep, ClaimCheck, ClaimCheckSettings, PayloadError, QueueFormat, Sweep,
    EXPIRY_GRACE,
};
pub use counting::{CallCounts, Counting, CountingStore};
pub use layer::{Layered, LayeredStore, Operation, QueueLayer, StoreLayer};
pub use memory::MemoryStore;
pub use retrying::{Retrying, RetryingStore};
pub use rules::{SendOptions, TimeToLive};
pub use settings::{CredentialKind, RetrySettings, StorageSettings};
pub use sharding::{shard_name, Sharding, ShardingStore};
pub use traced::Traced;

/// A queue backend: hands out a [`Queue`] handle per queue name.
pub trait QueueStore: Send + Sync + 'static {
    /// The handle for one queue (which need not exist yet).
    ///
    /// # Errors
    ///
    /// [`StoreError`] when `name` is not a valid queue name.
    fn queue(&self, name: &str) -> Result<Arc<dyn Queue>, StoreError>;
    /// Which backend this is.
    fn kind(&self) -> BackendKind;
    /// The storage account, when the backend knows it: push triggers naming another account
    /// are ignored.
    fn account(&self) -> Option<String> {
        None
    }
    /// Calls on `queue` whose outcome is unknown, so far (zero unless the store retries).
    fn unknown_outcomes(&self, queue: &str) -> UnknownOutcomes {
        let _ = queue;
        UnknownOutcomes::default()
    }
}

/// Which backend a store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// The embedded in-process store: no network, no faults to retry, queues created on use.
    Embedded,
    /// Azure Storage or Azurite.
    Azure,
}

impl BackendKind {
    /// `memory` or `azure`, as logged.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Embedded => "memory",
            Self::Azure => "azure",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The operations on one queue.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// The queue's name.
    fn name(&self) -> &str;
    /// Creates the queue if it does not exist yet.
    async fn create_if_missing(&self) -> Result<(), StoreError>;
    /// Adds a message (text already encoded).
    async fn send(&self, text: &str, options: SendOptions) -> Result<SentMessage, StoreError>;
    /// Receives up to `max` (1..=32) messages, hiding them for `visibility`.
    async fn receive(
        &self,
        max: u8,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, StoreError>;
    /// Deletes a received message; needs its current pop receipt.
    async fn delete(&self, id: &str, pop_receipt: &str) -> Result<(), StoreError>;
    /// Deletes a received message whose lease (its visibility timeout) ends at `lease_ends`:
    /// a layer that retries failures keeps retrying this delete until then, since until then
    /// nobody else can receive the message and a late delete still spares a duplicate run.
    /// Default: [`Queue::delete`].
    async fn delete_within(
        &self,
        id: &str,
        pop_receipt: &str,
        lease_ends: tokio::time::Instant,
    ) -> Result<(), StoreError> {
        let _ = lease_ends;
        self.delete(id, pop_receipt).await
    }
    /// Changes a received message's visibility (0 makes it visible at once) and optionally its
    /// text; returns the new pop receipt.
    async fn update(
        &self,
        id: &str,
        pop_receipt: &str,
        visibility: Duration,
        text: Option<&str>,
    ) -> Result<UpdatedMessage, StoreError>;
    /// The payload a received message's `text` refers to, when it is a claim-check reference
    /// (see [`ClaimRef`](crate::codec::ClaimRef)): downloaded, decompressed and checked. `Ok(None)`: the text is the
    /// payload's encoding as usual (not a reference, or no claim-check layer on this queue).
    async fn open_payload(&self, text: &str) -> Result<Option<Vec<u8>>, PayloadError> {
        let _ = text;
        Ok(None)
    }
    /// Called after the message whose text is `text` was deleted as handled: a claim-check
    /// layer deletes its payload's blob (never before: a crash in between leaves a blob, not a
    /// message without its payload). Failures are logged, not returned. Default: nothing.
    async fn payload_done(&self, text: &str) {
        let _ = text;
    }
    /// Called after the message whose text is `text` was copied to the poison queue, where its
    /// copy lives until `expires_at` (`None`: never): a claim-check layer keeps the blob that
    /// long. Default: nothing.
    async fn payload_kept(&self, text: &str, expires_at: Option<OffsetDateTime>) {
        let _ = (text, expires_at);
    }
    /// Reads up to `max` (1..=32) visible messages without receiving them.
    async fn peek(&self, max: u8) -> Result<Vec<PeekedMessage>, StoreError>;
    /// The approximate number of messages, invisible ones included.
    async fn approximate_depth(&self) -> Result<u64, StoreError>;
    /// Deletes every message on the queue, visible or not (Clear Messages); the queue stays.
    /// An administrative call (the `ebbflow queue purge` command): layers pass it through
    /// without retrying, counting or metering it.
    ///
    /// # Errors
    /// [`StoreError::QueueNotFound`] when the queue does not exist; what the service says.
    async fn clear(&self) -> Result<(), StoreError>;
    /// Deletes the queue and its messages (Delete Queue). The service keeps the name taken
    /// for about 30 seconds: creating it again sooner fails. An administrative call, as
    /// [`Queue::clear`].
    ///
    /// # Errors
    /// [`StoreError::QueueNotFound`] when the queue does not exist; what the service says.
    async fn delete_queue(&self) -> Result<(), StoreError>;
}

/// The receipt of a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    /// The new message's id.
    pub id: String,
    /// Its first pop receipt.
    pub pop_receipt: String,
}

/// A message handed out by a receive; invisible to others until `next_visible`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The message id.
    pub id: String,
    /// The pop receipt of this delivery, needed to delete or update.
    pub pop_receipt: String,
    /// Deliveries so far, this one included.
    pub dequeue_count: u32,
    /// When it was sent.
    pub inserted_at: Option<OffsetDateTime>,
    /// When it expires; `None`: never (sent with [`TimeToLive::Never`]).
    pub expires_at: Option<OffsetDateTime>,
    /// The message text exactly as stored (still encoded).
    pub text: String,
}

/// A message seen by a peek.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeekedMessage {
    /// The message id.
    pub id: String,
    /// Deliveries so far.
    pub dequeue_count: u32,
    /// When it was sent.
    pub inserted_at: Option<OffsetDateTime>,
    /// The message text exactly as stored.
    pub text: String,
}

/// The result of an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdatedMessage {
    /// The new pop receipt; the old one no longer works.
    pub pop_receipt: String,
}

/// A store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The queue does not exist.
    #[error("queue {queue} does not exist")]
    QueueNotFound {
        /// The queue.
        queue: String,
    },
    /// The message is gone or was received again by someone else (pop receipt mismatch).
    #[error("message {id} on queue {queue} is gone or owned by another receive")]
    MessageNotFound {
        /// The queue.
        queue: String,
        /// The message id.
        id: String,
    },
    /// The request itself is wrong (too many messages, too large, bad name, out of range).
    #[error("invalid request on queue {queue}: {detail}")]
    Invalid {
        /// The queue.
        queue: String,
        /// What is wrong.
        detail: String,
        /// The error underneath, when one was raised (see [`Cause`]).
        source: Option<Cause>,
    },
    /// The service refused our credentials.
    #[error(
        "not authorized on queue {queue}: {detail}; check the credentials: the AccountKey (or \
         SAS) in storage.connection_string or AZURE_STORAGE_CONNECTION_STRING, or the identity \
         storage.credential names and its role on the account (Storage Queue Data Contributor)"
    )]
    Unauthorized {
        /// The queue.
        queue: String,
        /// The service's explanation (secrets redacted).
        detail: String,
        /// The error underneath, when one was raised (see [`Cause`]).
        source: Option<Cause>,
    },
    /// A fault that may pass and that the service did not act on: throttling (503 ServerBusy,
    /// 429), its own timeout (500 OperationTimedOut), a connection that could not be opened.
    #[error("transient failure on queue {queue}: {detail}")]
    Transient {
        /// The queue.
        queue: String,
        /// What happened (secrets redacted).
        detail: String,
        /// The error underneath, when one was raised (see [`Cause`]).
        source: Option<Cause>,
    },
    /// A fault that may pass, after which nobody knows whether the service did the work: the
    /// request was sent but no answer came (our cut-off, a connection lost mid-answer), or the
    /// answer does not say (500 InternalError, 502, 504). Retried like [`StoreError::Transient`];
    /// what a retry after one means is per operation, see `store::retrying`.
    #[error(
        "no answer from the service on queue {queue} (the call may have taken effect): {detail}"
    )]
    Unanswered {
        /// The queue.
        queue: String,
        /// What happened (secrets redacted).
        detail: String,
        /// The error underneath, when one was raised (see [`Cause`]).
        source: Option<Cause>,
    },
    /// No access token could be obtained (identity endpoint unreachable, failing or slow): the
    /// request never reached the service. Retried like [`StoreError::Transient`].
    #[error("no access token for queue {queue}: {detail}")]
    TokenUnavailable {
        /// The queue.
        queue: String,
        /// The credential's explanation.
        detail: String,
        /// The error underneath, when one was raised (see [`Cause`]).
        source: Option<Cause>,
    },
    /// An update (renewal, retry, release) went unanswered, and its retry found the pop receipt
    /// stale: the first try may have been applied under a receipt we never saw, or the message
    /// was received again by someone else. Either way the receipt held is dead: the lease is in
    /// doubt and the message may run again.
    #[error(
        "update of message {id} on queue {queue} is in doubt: a try went unanswered and the \
         retry found the pop receipt stale (applied under an unseen receipt, or re-delivered)"
    )]
    InDoubt {
        /// The queue.
        queue: String,
        /// The message id.
        id: String,
    },
    /// The queue cannot be consumed: its dequeue tasks keep ending (a panic in a store call,
    /// say) right after they start, past the restart budget. Fatal: the worker stops.
    #[error("queue {queue} cannot be consumed: {detail}")]
    Unconsumable {
        /// The queue.
        queue: String,
        /// What kept happening.
        detail: String,
    },
    /// The storage account or endpoint does not exist: the service answered 404 to a call
    /// that cannot miss for a queue of its own (creating a queue), or with a code other than
    /// `QueueNotFound` (`ResourceNotFound`: a wrong account name in a path-style URL, such as
    /// Azurite's). Never retried: the storage settings are wrong.
    #[error(
        "storage account or endpoint not found while opening queue {queue}: {detail}; check the \
         account name and endpoint in the storage settings (storage.connection_string or \
         AZURE_STORAGE_CONNECTION_STRING, storage.queue_endpoint)"
    )]
    AccountNotFound {
        /// The queue the call was for.
        queue: String,
        /// The service's answer (secrets redacted).
        detail: String,
        /// The error underneath, when one was raised (see [`Cause`]).
        source: Option<Cause>,
    },
    /// The backend could not be set up (bad connection string, bad URL).
    #[error("storage setup: {0}")]
    Setup(String),
    /// A payload larger than the claim check's limit: refused at the send, before any upload,
    /// since every worker reading the queue would poison it (`payload_unavailable`). Never
    /// retried: raise the limit (`key`) on producers and workers alike, or send less.
    #[error(
        "payload of {size} bytes for queue {queue} is above {key} ({limit} bytes), so a worker \
         would poison it; raise {key} (on the producers and the workers reading the queue) or \
         send a smaller payload"
    )]
    PayloadTooLarge {
        /// The queue.
        queue: String,
        /// The payload's length in bytes (before compression and encoding).
        size: u64,
        /// The limit in bytes.
        limit: u64,
        /// The setting that sets the limit: `storage.claim_check.max_payload_bytes`.
        key: &'static str,
    },
}

impl StoreError {
    /// The lower-level error this one was made from (the SDK's, an I/O error), when kept: the
    /// same as [`std::error::Error::source`], typed.
    pub fn cause(&self) -> Option<&Cause> {
        match self {
            StoreError::Invalid { source, .. }
            | StoreError::Unauthorized { source, .. }
            | StoreError::Transient { source, .. }
            | StoreError::Unanswered { source, .. }
            | StoreError::TokenUnavailable { source, .. }
            | StoreError::AccountNotFound { source, .. } => source.as_ref(),
            _ => None,
        }
    }

    /// This error with `cause` kept as its source, where the variant keeps one (the others
    /// say all there is: a missing queue or message, a doubt, a setup error).
    pub(crate) fn with_source(mut self, cause: Cause) -> Self {
        match &mut self {
            StoreError::Invalid { source, .. }
            | StoreError::Unauthorized { source, .. }
            | StoreError::Transient { source, .. }
            | StoreError::Unanswered { source, .. }
            | StoreError::TokenUnavailable { source, .. }
            | StoreError::AccountNotFound { source, .. } => *source = Some(cause),
            _ => {}
        }
        self
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Transient { .. }
                | StoreError::Unanswered { .. }
                | StoreError::TokenUnavailable { .. }
        )
    }
}

/// Calls on one queue whose outcome nobody knows, by what they may have done. Only the
/// retrying layer ([`retrying::RetryingStore`]) sees tries go unanswered, so only it counts;
/// "Unknown outcomes" in docs/src/message-life.md says what each means for a message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnknownOutcomes {
    /// Receive tries that went unanswered. Messages such a try took stay hidden for one
    /// visibility timeout, then come back with a dequeue count one higher that no handler saw.
    pub receives: u64,
    /// Send tries that went unanswered. Each may have stored its message, so a send retried
    /// after one may be on the queue twice (or once although the send reported failure).
    pub sends: u64,
    /// Deletes whose retry, after an unanswered try, found the message gone: counted as done.
    pub deletes_confirmed: u64,
    /// Updates whose retry, after an unanswered try, found the pop receipt stale
    /// ([`StoreError::InDoubt`]).
    pub updates_in_doubt: u64,
}

/// Wall-clock "now" as seen through tokio's clock: the real time at first use, advanced by
/// tokio's (pausable) clock since. The embedded store stamps messages with it and the listener
/// ages them with it, so paused-time tests see messages age; in real time it tracks the system
/// clock.
pub fn now_utc() -> OffsetDateTime {
    static ANCHOR: std::sync::OnceLock<(OffsetDateTime, std::time::Instant)> =
        std::sync::OnceLock::new();
    let (wall, mono) =
        ANCHOR.get_or_init(|| (OffsetDateTime::now_utc(), std::time::Instant::now()));
    let elapsed = tokio::time::Instant::now()
        .into_std()
        .saturating_duration_since(*mono);
    *wall + elapsed
}

/// Opens the store the settings name: Azure when a connection string or endpoint is set,
/// otherwise a fresh embedded in-process store.
///
/// # Errors
///
/// [`StoreError`] when the storage settings are malformed (connection string, endpoint,
/// credential).
pub fn open(settings: &settings::StorageSettings) -> Result<Arc<dyn QueueStore>, StoreError> {
    if settings.connection_string.is_some() || settings.queue_endpoint.is_some() {
        Ok(Arc::new(azure::AzureStore::from_settings(settings)?))
    } else {
        Ok(Arc::new(memory::MemoryStore::new()))
    }
}

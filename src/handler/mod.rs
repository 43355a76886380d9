//! The handler trait, the payload types it receives, its [`Context`] and the outcomes its
//! errors drive.
//!
//! ```
//! use ebbflow::handler::{Context, Handler, HandlerError, Json};
//! #[derive(serde::Deserialize)]
//! struct Order { id: u64 }
//! struct Orders;
//! impl Handler for Orders {
//!     type Message = Json<Order>;
//!     async fn handle(&self, Json(order): Json<Order>, ctx: Context) -> Result<(), HandlerError> {
//!         if order.id == 0 {
//!             return Err(HandlerError::poison("order id 0 can never succeed"));
//!         }
//!         tracing::info!(order = order.id, message_id = %ctx.message_id(), "order handled");
//!         Ok(())
//!     }
//! }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

mod batch;
mod func;
mod heartbeat;
mod layer;
pub mod layers;
mod output;
mod publisher;
pub use batch::{Batch, BatchHandler, Batching};
pub(crate) use batch::{BatchStats, Batcher, BATCH_SIZE_BUCKETS};
pub use func::{from_fn, FnHandler};
pub use heartbeat::{Heartbeat, JobStatus};
pub use layer::{Job, Layer, Next};
pub(crate) use layer::{SharedLayer, Span, Stack};
pub use output::Output;
pub use publisher::{PublishError, Publisher};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// A boxed error from a handler or a payload decoder.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a handler receives, decoded from the message's payload bytes.
pub trait Payload: Sized + Send + 'static {
    /// Decodes the payload bytes (already stripped of the queue's encoding).
    ///
    /// # Errors
    ///
    /// A [`BoxError`] when the bytes are not a valid `Self` (the message is poisoned as
    /// undecodable).
    fn from_bytes(bytes: Vec<u8>) -> Result<Self, BoxError>;
}

/// A JSON payload decoded with serde into `T`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned + Send + 'static> Payload for Json<T> {
    fn from_bytes(bytes: Vec<u8>) -> Result<Self, BoxError> {
        Ok(Json(serde_json::from_slice(&bytes)?))
    }
}

/// A raw text payload (must be UTF-8).
impl Payload for String {
    fn from_bytes(bytes: Vec<u8>) -> Result<Self, BoxError> {
        Ok(String::from_utf8(bytes)?)
    }
}

/// The raw payload bytes, for handlers that decode themselves.
impl Payload for Vec<u8> {
    fn from_bytes(bytes: Vec<u8>) -> Result<Self, BoxError> {
        Ok(bytes)
    }
}

/// A job handler for one queue's messages.
///
/// The future must be `Send`: it runs on the multi-threaded runtime, one task per message.
pub trait Handler: Send + Sync + 'static {
    /// The payload type; decoding failures send the message to the poison queue.
    type Message: Payload;

    /// Handles one message. `Ok` deletes it; an error says whether to retry or poison it.
    fn handle(
        &self,
        message: Self::Message,
        ctx: Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// What the handler's caller learns about the message, plus the signals it should watch.
#[derive(Debug, Clone)]
pub struct Context {
    pub(crate) queue: Arc<str>,
    pub(crate) message_id: String,
    pub(crate) dequeue_count: u32,
    pub(crate) inserted_at: Option<OffsetDateTime>,
    pub(crate) shutdown: Signal,
    pub(crate) timeout: Signal,
    pub(crate) cancellation: Signal,
    pub(crate) publishers: Publishers,
    pub(crate) heartbeat: Heartbeat,
    pub(crate) bus: Option<crate::bus::BusHandle>,
    /// The message's exported `process <queue>` span (none while traces are off): what a batch
    /// call's span links to.
    pub(crate) span: tracing::Span,
}

/// The worker's publishers by queue name, shared by every handler's [`Context`].
pub(crate) type Publishers = Arc<std::collections::BTreeMap<String, Publisher>>;

/// A handler asked for a queue the worker has no publisher for: said once per name at WARN (a
/// typo in `ctx.publisher("emials")` would otherwise only skip its sends in silence).
fn warn_unknown_queue(queue: &str, publishers: &Publishers) {
    static WARNED: std::sync::OnceLock<std::sync::Mutex<std::collections::BTreeSet<String>>> =
        std::sync::OnceLock::new();
    let first = WARNED
        .get_or_init(Default::default)
        .lock()
        .map(|mut warned| warned.insert(queue.to_string()))
        .unwrap_or(false);
    if first {
        let known: Vec<&str> = publishers.keys().map(String::as_str).collect();
        tracing::warn!(
            queue,
            known = %known.join(", "),
            "a handler asked for queue {queue}, which this worker has no publisher for (a typo? \
             add [queues.{queue}] or [outputs.{queue}], or declare it with Worker::output); \
             ctx.publisher and ctx.output return None for it"
        );
    }
}

/// A signal a handler can watch but not fire: the worker's shutdown, or its own timeout.
#[derive(Debug, Clone)]
pub struct Signal(CancellationToken);

impl Signal {
    pub(crate) fn new(token: CancellationToken) -> Self {
        Self(token)
    }

    /// Whether it has fired.
    pub fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Completes once it has fired.
    pub async fn cancelled(&self) {
        self.0.cancelled().await
    }

    /// A token cancelled when this signal fires, to hand to code that takes a
    /// `CancellationToken` (cancelling the child does not fire the signal).
    pub fn child_token(&self) -> CancellationToken {
        self.0.child_token()
    }
}

impl Context {
    /// A context outside a worker: signals that never fire, no publishers, no bus.
    #[cfg(test)]
    pub(crate) fn detached(queue: &str, message_id: &str, dequeue_count: u32) -> Self {
        let never = Signal::new(CancellationToken::new());
        Self {
            queue: Arc::from(queue),
            message_id: message_id.to_string(),
            dequeue_count,
            inserted_at: None,
            shutdown: never.clone(),
            timeout: never.clone(),
            cancellation: never,
            publishers: Arc::default(),
            heartbeat: Heartbeat::new(None),
            bus: None,
            span: tracing::Span::none(),
        }
    }

    /// The queue the message came from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The service's message id.
    pub fn message_id(&self) -> &str {
        &self.message_id
    }

    /// How many times the message has been received, this time included (1 on first delivery).
    pub fn dequeue_count(&self) -> u32 {
        self.dequeue_count
    }

    /// When the message was sent.
    pub fn inserted_at(&self) -> Option<OffsetDateTime> {
        self.inserted_at
    }

    /// Fires when the worker is asked to stop (SIGTERM). A handler that can end early should
    /// return an error: a failure after shutdown fired is taken for the interruption it is, so
    /// the message is released (visible again at once), never retried as a failure or
    /// poisoned, even on its last allowed try. Handlers still running at the drain deadline
    /// are dropped and their messages released the same way.
    pub fn shutdown(&self) -> &Signal {
        &self.shutdown
    }

    /// Fires when the queue's `handler_timeout` passes (never without one). The run then counts
    /// as a failure unless the handler still returns `Ok` within `handler_timeout_grace` (its
    /// work is done: the message is deleted); after the grace it is dropped.
    pub fn timeout(&self) -> &Signal {
        &self.timeout
    }

    /// Fires on [`Context::shutdown`] or [`Context::timeout`], whichever comes first: for
    /// handlers that stop early for either reason.
    pub fn cancellation(&self) -> &Signal {
        &self.cancellation
    }

    /// A publisher for one of the worker's configured queues, to hand work on. Its sends wake
    /// this worker's listener of that queue at once (the in-process push trigger).
    /// `None` for a queue the worker does not have (a typo, say), logged once per name at WARN.
    pub fn publisher(&self, queue: &str) -> Option<&Publisher> {
        let found = self.publishers.get(queue);
        if found.is_none() {
            warn_unknown_queue(queue, &self.publishers);
        }
        found
    }

    /// A typed output to one of the worker's queues (a `[queues.<queue>]` or
    /// `[outputs.<queue>]` section, or declared with [`crate::Worker::output`]): sends `T`s as
    /// JSON. `None` for a queue the worker does not know; declared outputs are checked at
    /// start-up, so a typo in a declaration stops the start.
    pub fn output<T: serde::Serialize>(&self, queue: &str) -> Option<Output<T>> {
        self.publisher(queue).cloned().map(Output::new)
    }

    /// The worker's bus: publish events to other instances (unicast, multicast, a role, or
    /// one instance of a role), e.g. `ctx.bus()?.publish(&event, Address::role("controller"))`.
    /// `None` only for contexts made outside a worker.
    pub fn bus(&self) -> Option<&crate::bus::BusHandle> {
        self.bus.as_ref()
    }

    /// The job's heartbeat: report progress and the job's final status. Pulses are logged
    /// and renew the message's visibility (which the runtime also renews on its own at half
    /// the `visibility_timeout`).
    pub fn heartbeat(&self) -> &Heartbeat {
        &self.heartbeat
    }
}

/// How a handler failed, and so what happens to the message.
#[derive(Debug)]
#[non_exhaustive]
pub enum HandlerError {
    /// Try again: the message becomes visible after `after` (`None`: the queue's `retry_delay`).
    /// Once its dequeue count reaches `max_dequeue_count` it goes to the poison queue instead.
    Retry {
        /// Delay before the message is visible again, overriding the queue's `retry_delay`.
        after: Option<Duration>,
        /// What went wrong.
        source: BoxError,
    },
    /// Never retry: copy the message to the poison queue now.
    Poison {
        /// What went wrong.
        source: BoxError,
    },
    /// Not now: make the message visible again after `after`, without counting a failure or
    /// logging one (a rate limit, a dependency in maintenance). It still uses up a delivery;
    /// on the last allowed one it is re-sent as a fresh copy rather than poisoned.
    Release {
        /// Delay before the message is visible again.
        after: Duration,
        /// Why, for the log.
        source: BoxError,
    },
    /// The payload cannot be read (it does not parse, a field is missing): no retry can fix
    /// it, so the message goes to the poison queue at once with the reason `undecodable`, as
    /// when the runtime's own decoding fails. Even while the worker stops.
    Undecodable {
        /// What could not be read.
        source: BoxError,
    },
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Retry {
                after: None,
                source,
            } => write!(f, "retryable failure: {source}"),
            Self::Retry {
                after: Some(after),
                source,
            } => write!(
                f,
                "retryable failure (retry in {}): {source}",
                humantime::format_duration(*after)
            ),
            Self::Poison { source } => write!(f, "failure no retry can fix: {source}"),
            Self::Release { after, source } => write!(
                f,
                "released for {}: {source}",
                humantime::format_duration(*after)
            ),
            Self::Undecodable { source } => write!(f, "undecodable payload: {source}"),
        }
    }
}

/// A [`HandlerError`] as an `std::error::Error`.
#[derive(Debug)]
struct Composed(HandlerError);

impl std::fmt::Display for Composed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Composed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.source_error().as_ref())
    }
}

impl HandlerError {
    /// A retryable failure, retried after the queue's `retry_delay`.
    pub fn retry(source: impl Into<BoxError>) -> Self {
        Self::Retry {
            after: None,
            source: source.into(),
        }
    }

    /// A retryable failure, retried after `delay`.
    pub fn retry_after(source: impl Into<BoxError>, delay: Duration) -> Self {
        Self::Retry {
            after: Some(delay),
            source: source.into(),
        }
    }

    /// A failure no retry can fix: the message goes to the poison queue at once.
    pub fn poison(source: impl Into<BoxError>) -> Self {
        Self::Poison {
            source: source.into(),
        }
    }

    /// Not a failure: "not now". The message is visible again after `after`.
    pub fn release(after: Duration) -> Self {
        Self::Release {
            after,
            source: "the handler said not now".into(),
        }
    }

    /// A payload the handler's own code cannot read (a parse failure): poisoned at once as
    /// `undecodable`, never retried. `serde_json::from_slice(&bytes).map_err(HandlerError::undecodable)?`
    pub fn undecodable(source: impl Into<BoxError>) -> Self {
        Self::Undecodable {
            source: source.into(),
        }
    }

    /// This error as a boxed [`std::error::Error`]: its display, with the underlying error as
    /// its `source()` (the chain goes on from there), for code that collects errors of any
    /// kind (`Box<dyn Error>`, `anyhow`, a layer's log line).
    ///
    /// `HandlerError` itself does not implement `std::error::Error`, nor convert into
    /// `Box<dyn Error>` implicitly: `?` on *any* error in a handler means "retry" through a
    /// blanket `From`, and Rust's coherence rules forbid that `From` next to either (the
    /// standard library's `From<T> for T` would overlap). One explicit call keeps both.
    pub fn into_error(self) -> BoxError {
        Box::new(Composed(self))
    }

    /// The underlying error.
    pub fn source_error(&self) -> &BoxError {
        match self {
            Self::Retry { source, .. }
            | Self::Poison { source }
            | Self::Release { source, .. }
            | Self::Undecodable { source } => source,
        }
    }
}

/// `?` on any error in a handler means "retry".
impl<E: Into<BoxError>> From<E> for HandlerError {
    fn from(e: E) -> Self {
        Self::retry(e)
    }
}

pub(crate) type BoxFuture = layer::RunFuture;
use layer::RunFuture;

/// A handler with its payload type erased, so handlers of different types can be stored
/// side by side.
pub(crate) trait ErasedHandler: Send + Sync + 'static {
    fn call(self: Arc<Self>, bytes: Vec<u8>, ctx: Context) -> BoxFuture;
}

pub(crate) struct Erased<H>(pub H);

impl<H: Handler> ErasedHandler for Erased<H> {
    fn call(self: Arc<Self>, bytes: Vec<u8>, ctx: Context) -> BoxFuture {
        Box::pin(async move {
            let message = H::Message::from_bytes(bytes).map_err(HandlerError::undecodable)?;
            self.0.handle(message, ctx).await
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn asking_for_a_queue_the_worker_lacks_warns_once_per_name() {
        #[derive(Clone, Default)]
        struct Warnings(Arc<std::sync::Mutex<Vec<String>>>);
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
            fn on_event(
                &self,
                event: &tracing::Event<'_>,
                _: tracing_subscriber::layer::Context<'_, S>,
            ) {
                if *event.metadata().level() == tracing::Level::WARN {
                    let mut text = String::new();
                    event.record(&mut |f: &tracing::field::Field, v: &dyn std::fmt::Debug| {
                        text.push_str(&format!("{}={v:?} ", f.name()));
                    });
                    self.0.lock().unwrap().push(text);
                }
            }
        }
        use tracing_subscriber::layer::SubscriberExt;
        let warnings = Warnings::default();
        let _guard =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(warnings.clone()));
        let ctx = Context::detached("orders", "m1", 1);
        let typo = format!("emials-{}", uuid::Uuid::new_v4().simple());
        assert!(ctx.publisher(&typo).is_none());
        assert!(ctx.publisher(&typo).is_none());
        assert!(ctx.output::<u32>(&typo).is_none());
        let seen = warnings.0.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(seen[0].contains(&typo), "{seen:?}");
    }

    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Order {
        id: u64,
    }

    #[test]
    fn payloads_decode_or_explain() {
        let Json(o) = Json::<Order>::from_bytes(br#"{"id":7}"#.to_vec()).unwrap();
        assert_eq!(o, Order { id: 7 });
        let err = Json::<Order>::from_bytes(br#"{"id":"x"}"#.to_vec()).unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
        assert!(String::from_bytes(vec![0xff]).is_err());
        assert_eq!(String::from_bytes(b"hi".to_vec()).unwrap(), "hi");
    }

    #[test]
    fn question_mark_means_retry() {
        fn fails() -> Result<(), HandlerError> {
            let n: u32 = "x".parse()?;
            let _ = n;
            Ok(())
        }
        assert!(matches!(
            fails(),
            Err(HandlerError::Retry { after: None, .. })
        ));
        assert!(matches!(
            HandlerError::poison("bad"),
            HandlerError::Poison { .. }
        ));
    }
}

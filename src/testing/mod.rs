//! A test kit for handlers: build a [`Context`], run a handler (single, batch or function, with
//! its layers) on a payload and get the outcome the runtime would apply, without a worker; or
//! run a whole worker on the embedded store until it is idle ([`TestWorker`]).
//!
//! ```
//! use ebbflow::testing::{HandlerTest, Outcome};
//! use ebbflow::{Context, Handler, HandlerError, Json};
//!
//! #[derive(serde::Deserialize)]
//! struct Order { id: u64 }
//! struct Orders;
//! impl Handler for Orders {
//!     type Message = Json<Order>;
//!     async fn handle(&self, Json(order): Json<Order>, _: Context) -> Result<(), HandlerError> {
//!         if order.id == 0 {
//!             return Err(HandlerError::poison("order 0"));
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let orders = HandlerTest::new(Orders);
//! assert_eq!(orders.run(r#"{"id":7}"#).await, Outcome::Deleted);
//! assert!(matches!(orders.run(r#"{"id":0}"#).await, Outcome::Poisoned { .. }));
//! assert!(matches!(orders.run("not json").await, Outcome::Poisoned { .. }));
//! # }
//! ```

mod worker;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use crate::listener::poison::PoisonReason;
pub use worker::{TestReport, TestWorker};

use crate::config::QueueSettings;
use crate::handler::{
    BatchHandler, BatchStats, Batcher, Context, Erased, ErasedHandler, Handler, Heartbeat, Job,
    Layer, Publisher, SharedLayer, Signal, Span, Stack,
};
use crate::listener::{CatchPanic, RunOutcome, Settle};

/// What the runtime would do with a message after its run.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Deleted: handled.
    Deleted,
    /// Visible again after `after`, a failure counted against its dequeue limit.
    Retried {
        /// The delay.
        after: Duration,
        /// What failed.
        error: String,
    },
    /// Visible again after `after`, no failure counted.
    Released {
        /// The delay.
        after: Duration,
        /// Why, as the handler or layer said it: `over the rate limit` (`RateLimit`), `circuit
        /// breaker open` (`CircuitBreaker`), `the handler said not now`
        /// (`HandlerError::release`), the text of a `HandlerError::Release`'s source.
        reason: String,
    },
    /// Copied to the poison queue, then deleted.
    Poisoned {
        /// Why.
        reason: PoisonReason,
        /// The error's text.
        error: String,
    },
}

impl From<Settle> for Outcome {
    fn from(s: Settle) -> Self {
        match s {
            Settle::Delete => Self::Deleted,
            Settle::Retry(after, error) => Self::Retried { after, error },
            Settle::Release(after, reason) => Self::Released { after, reason },
            Settle::Poison(reason, error) => Self::Poisoned { reason, error },
        }
    }
}

/// Builds a [`Context`] for a handler under test: queue name, message id, dequeue count,
/// publishers, and a shutdown signal the test can fire.
#[derive(Debug)]
pub struct ContextBuilder {
    queue: String,
    message_id: String,
    dequeue_count: u32,
    publishers: std::collections::BTreeMap<String, Publisher>,
    shutdown: CancellationToken,
    bus: Option<crate::bus::BusHandle>,
}

/// A context builder for a message of `queue` (id `test-message`, first delivery).
pub fn context(queue: &str) -> ContextBuilder {
    ContextBuilder {
        queue: queue.to_string(),
        message_id: "test-message".to_string(),
        dequeue_count: 1,
        publishers: Default::default(),
        shutdown: CancellationToken::new(),
        bus: None,
    }
}

impl ContextBuilder {
    /// The message id.
    pub fn message_id(mut self, id: &str) -> Self {
        self.message_id = id.to_string();
        self
    }

    /// The dequeue count (1 on first delivery).
    pub fn dequeue_count(mut self, n: u32) -> Self {
        self.dequeue_count = n;
        self
    }

    /// A publisher `ctx.publisher(queue)` hands out (over an embedded store, say).
    pub fn publisher(mut self, publisher: Publisher) -> Self {
        self.publishers
            .insert(publisher.queue().to_string(), publisher);
        self
    }

    /// The token behind `ctx.shutdown()` (and `ctx.cancellation()`): cancel it to test a
    /// handler's reaction to a stop.
    pub fn shutdown(mut self, token: CancellationToken) -> Self {
        self.shutdown = token;
        self
    }

    /// The bus `ctx.bus()` hands out, e.g. a [`crate::bus::memory::MemoryBroker`]'s
    /// instance: two contexts on two instances of one broker stand for two replicas (for
    /// `Dedup::across_replicas`, or a handler that publishes events). None by default.
    pub fn bus(mut self, bus: crate::bus::BusHandle) -> Self {
        self.bus = Some(bus);
        self
    }

    /// The context.
    pub fn build(self) -> Context {
        let shutdown = Signal::new(self.shutdown);
        Context {
            queue: Arc::from(self.queue.as_str()),
            message_id: self.message_id,
            dequeue_count: self.dequeue_count,
            inserted_at: None,
            shutdown: shutdown.clone(),
            timeout: Signal::new(CancellationToken::new()),
            cancellation: shutdown,
            publishers: Arc::new(self.publishers),
            heartbeat: Heartbeat::new(None),
            bus: self.bus,
            span: tracing::Span::none(),
        }
    }
}

/// A handler with its layers, run on payloads outside a worker; the outcome is what the
/// runtime would apply (with the queue settings given, default ones otherwise: dequeue limit
/// 5, retry delay 30 s, no handler timeout).
///
/// Each run is a new message: [`HandlerTest::run`] and [`HandlerTest::run_batch`] give each
/// one a fresh id (`test-message-1`, `test-message-2`, ...), so a `Dedup` layer by message id
/// sees different messages. To run a given id (a redelivery, say), build the context:
/// `test.run_with(payload, testing::context("q").message_id("m-7").dequeue_count(2).build())`.
pub struct HandlerTest {
    handler: Arc<dyn ErasedHandler>,
    layers: Vec<SharedLayer>,
    settings: QueueSettings,
    queue: String,
    /// Messages run so far: the next fresh id.
    runs: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for HandlerTest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerTest")
            .field("layers", &self.layers.len())
            .field("queue", &self.queue)
            .finish()
    }
}

impl HandlerTest {
    /// A single handler (a function handler too: [`crate::handler::from_fn`]).
    pub fn new<H: Handler>(handler: H) -> Self {
        Self::erased(Arc::new(Erased(handler)))
    }

    /// A batch handler: [`HandlerTest::run`] runs a batch of one, [`HandlerTest::run_batch`]
    /// one of many.
    pub fn batch<H: BatchHandler>(handler: H) -> Self {
        Self::erased(Arc::new(Batcher::new(handler, BatchStats::default())))
    }

    fn erased(handler: Arc<dyn ErasedHandler>) -> Self {
        Self {
            handler,
            layers: Vec::new(),
            settings: QueueSettings::default(),
            queue: "test-queue".to_string(),
            runs: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// A context for the next run: a fresh message id, first delivery.
    fn fresh(&self) -> Context {
        let n = self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        context(&self.queue)
            .message_id(&format!("test-message-{n}"))
            .build()
    }

    /// Adds a layer around the handler (the first added is outermost).
    pub fn layer<L: Layer>(mut self, layer: L) -> Self {
        self.layers.push(SharedLayer::new(layer));
        self
    }

    /// The queue settings whose rules apply: `max_dequeue_count`, `retry_delay`, and
    /// `handler_timeout` with `handler_timeout_grace` (as the runtime does: at the timeout
    /// `ctx.timeout()` and `ctx.cancellation()` fire; a handler still running after the grace
    /// is dropped, and one that ends with a retry after the timeout is the timeout's
    /// failure). Use tokio's paused clock for those, or the test waits them out.
    pub fn settings(mut self, settings: QueueSettings) -> Self {
        self.settings = settings;
        self
    }

    fn stack(&self) -> Stack {
        let mut layers = vec![SharedLayer::new(Span)];
        layers.extend(self.layers.iter().cloned());
        Stack::new(layers, self.handler.clone())
    }

    /// Runs `payload` (the message's payload, before the handler decodes it) as a new
    /// message (a fresh id), first delivery.
    pub async fn run(&self, payload: impl Into<Vec<u8>>) -> Outcome {
        self.run_with(payload, self.fresh()).await
    }

    /// Runs `payload` with `ctx` (its dequeue count decides between a retry and a poison on
    /// the last allowed try).
    pub async fn run_with(&self, payload: impl Into<Vec<u8>>, mut ctx: Context) -> Outcome {
        let count = ctx.dequeue_count();
        let limit = self.settings.handler_timeout;
        // The runtime's timeout signals: fired together at the timeout.
        let fire = limit.map(|_| {
            let (timeout, cancellation) = (CancellationToken::new(), ctx.shutdown.child_token());
            ctx.timeout = Signal::new(timeout.clone());
            ctx.cancellation = Signal::new(cancellation.clone());
            (timeout, cancellation)
        });
        let shutdown = ctx.shutdown.clone();
        let run = CatchPanic(self.stack().run(Job::new(ctx, payload.into())));
        let outcome = watch(run, limit.zip(fire), self.settings.handler_timeout_grace).await;
        let interrupted = shutdown.is_cancelled();
        Settle::decide(
            outcome,
            interrupted,
            count,
            self.settings.max_dequeue_count.get(),
            self.settings.retry_delay,
        )
        .into()
    }

    /// Runs `payloads` at once, as first deliveries (a batch handler gets them in one batch,
    /// up to its `max_messages`); the outcomes in the same order.
    pub async fn run_batch<P: Into<Vec<u8>>>(
        &self,
        payloads: impl IntoIterator<Item = P>,
    ) -> Vec<Outcome> {
        let runs = payloads.into_iter().map(|p| self.run_with(p, self.fresh()));
        let mut outcomes = Vec::new();
        // Polled together, so they join one batch.
        let all: Vec<_> = runs.map(Box::pin).collect();
        for out in join_all(all).await {
            outcomes.push(out);
        }
        outcomes
    }
}

/// What the runtime's watch makes of a run: with a timeout, the signals fire at it, and a run
/// still going after the grace is dropped (timed out); a retry after the timeout is the
/// timeout's failure, a release or poison the handler's own decision.
async fn watch(
    mut run: CatchPanic,
    timeout: Option<(Duration, (CancellationToken, CancellationToken))>,
    grace: Duration,
) -> RunOutcome {
    let done = |ran: Result<Result<(), crate::HandlerError>, String>| match ran {
        Ok(result) => RunOutcome::Done(result),
        Err(text) => RunOutcome::Panicked(text),
    };
    let Some((limit, (timeout, cancellation))) = timeout else {
        return done(run.await);
    };
    tokio::select! {
        biased;
        ran = &mut run => return done(ran),
        () = tokio::time::sleep(limit) => {}
    }
    timeout.cancel();
    cancellation.cancel();
    match tokio::time::timeout(grace, &mut run).await {
        Ok(Ok(Err(crate::HandlerError::Retry { .. }))) | Err(_) => RunOutcome::TimedOut(limit),
        Ok(ran) => done(ran),
    }
}

/// Polls every future together until all are done (a small `join_all`).
async fn join_all<F: std::future::Future + Unpin>(mut futures: Vec<F>) -> Vec<F::Output> {
    let mut out: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futures.iter_mut().enumerate() {
            if out[i].is_none() {
                match std::pin::Pin::new(f).poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

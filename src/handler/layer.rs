//! Middleware: layers around a queue's handler.
//!
//! A message's run goes through a stack: the runtime's [`Span`] layer first (outermost), then
//! the worker-wide layers ([`crate::Worker::layer`]), then the queue's own
//! ([`crate::Worker::layer_for`]), each in the order added, and finally the handler (which
//! decodes the payload, then handles it). Each layer sees the [`Job`] (the message's
//! [`Context`] and its payload bytes) and decides whether and how to call the rest of the stack
//! ([`Next::run`]); what it returns is the outcome the runtime applies: `Ok` deletes the
//! message, a [`HandlerError`] retries, releases or poisons it.
//!
//! What stays outside the stack, and why: the lease (the message's visibility renewal) and
//! heartbeat pulses run *beside* the whole stack, so no layer can pause them; the handler
//! timeout, the drain abort and the panic catch wrap the whole stack, so a layer that waits,
//! hangs or panics is timed out, aborted at the drain deadline and contained exactly like a
//! handler. A layer can therefore never weaken the lease or drain guarantees.
//!
//! Writing one: implement [`Layer`]. This one releases every message while a flag is set
//! (a maintenance switch); released messages come back later and are not failures.
//!
//! ```
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::time::Duration;
//! use ebbflow::handler::{HandlerError, Job, Layer, Next};
//!
//! struct Maintenance(AtomicBool);
//!
//! impl Layer for Maintenance {
//!     async fn call(&self, job: Job, next: Next) -> Result<(), HandlerError> {
//!         if self.0.load(Ordering::Relaxed) {
//!             return Err(HandlerError::release(Duration::from_secs(60)));
//!         }
//!         next.run(job).await
//!     }
//! }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tracing::Instrument;

use super::{Context, ErasedHandler, HandlerError};

/// A boxed future of a layer or handler run.
pub(crate) type RunFuture = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>;

/// One message on its way through the layers: its [`Context`] and its payload bytes (the
/// message text with the queue's encoding removed, not yet decoded into the handler's type).
#[derive(Debug)]
pub struct Job {
    ctx: Context,
    bytes: Vec<u8>,
}

impl Job {
    /// A job for `bytes` with `ctx` (the test kit and the runtime build these).
    pub(crate) fn new(ctx: Context, bytes: Vec<u8>) -> Self {
        Self { ctx, bytes }
    }

    /// The message's context: queue, id, dequeue count, signals.
    pub fn ctx(&self) -> &Context {
        &self.ctx
    }

    /// The payload bytes, before the handler decodes them (to read a de-duplication key, for
    /// example).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Replaces the payload bytes the rest of the stack sees.
    pub fn set_bytes(&mut self, bytes: Vec<u8>) {
        self.bytes = bytes;
    }
}

/// A middleware layer around handlers: sees each [`Job`], calls the rest of the stack through
/// [`Next::run`] (or not), and returns the outcome the runtime applies.
///
/// Return `Err(HandlerError::release(delay))` to say "not now" without a failure (rate limits,
/// open breakers), `Ok(())` without calling `next` to delete a message that needs no run (a
/// duplicate), or the error `next` returned to pass the handler's decision on. The future
/// must be `Send`; `async fn` in the impl works.
pub trait Layer: Send + Sync + 'static {
    /// Runs one job through this layer.
    fn call(&self, job: Job, next: Next) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// A layer with its future boxed, so layers of different types stack.
pub(crate) trait ErasedLayer: Send + Sync + 'static {
    fn call(self: Arc<Self>, job: Job, next: Next) -> RunFuture;
}

struct Erased<L>(L);

impl<L: Layer> ErasedLayer for Erased<L> {
    fn call(self: Arc<Self>, job: Job, next: Next) -> RunFuture {
        Box::pin(async move { self.0.call(job, next).await })
    }
}

/// A layer ready to stack; clones share the layer (and its state: one rate limit or
/// concurrency limit used by several queues is one `Arc`).
#[derive(Clone)]
pub(crate) struct SharedLayer(Arc<dyn ErasedLayer>);

impl SharedLayer {
    pub(crate) fn new<L: Layer>(layer: L) -> Self {
        Self(Arc::new(Erased(layer)))
    }
}

impl std::fmt::Debug for SharedLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Layer")
    }
}

/// A queue's whole stack: its layers, outermost first, then its handler.
pub(crate) struct Stack {
    layers: Arc<[SharedLayer]>,
    handler: Arc<dyn ErasedHandler>,
}

impl Stack {
    /// `layers` outermost first, around `handler`.
    pub(crate) fn new(layers: Vec<SharedLayer>, handler: Arc<dyn ErasedHandler>) -> Self {
        Self {
            layers: layers.into(),
            handler,
        }
    }

    /// Runs `job` through every layer and the handler.
    pub(crate) fn run(&self, job: Job) -> RunFuture {
        let next = Next {
            layers: self.layers.clone(),
            index: 0,
            handler: self.handler.clone(),
        };
        Box::pin(next.run(job))
    }
}

/// The rest of the stack below a layer: the inner layers and the handler.
pub struct Next {
    layers: Arc<[SharedLayer]>,
    index: usize,
    handler: Arc<dyn ErasedHandler>,
}

impl std::fmt::Debug for Next {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Next")
            .field("layers_left", &(self.layers.len() - self.index))
            .finish()
    }
}

impl Next {
    /// Runs the rest of the stack on `job` and returns its outcome.
    ///
    /// # Errors
    ///
    /// The [`HandlerError`] of the inner layers or the handler: the message's outcome.
    pub async fn run(self, job: Job) -> Result<(), HandlerError> {
        match self.layers.get(self.index) {
            Some(layer) => {
                let layer = layer.0.clone();
                let next = Next {
                    index: self.index + 1,
                    ..self
                };
                layer.call(job, next).await
            }
            None => self.handler.clone().call(job.bytes, job.ctx).await,
        }
    }
}

/// The runtime's tracing span around every handler run, the outermost layer of each queue's
/// stack (worker-wide and queue layers, the decode and the handler run inside it).
///
/// The span is `process` at info level, with OpenTelemetry's name `process <queue>` (field
/// `otel.name`) and the fields `queue`, `message_id` and `dequeue_count`. It is the one place
/// for per-message span attributes (messaging semantic conventions, trace-context links):
/// add them here, and every queue's runs carry them. The span is entered only while the
/// stack is polled (never held across an await), and its outcome is recorded on it as
/// `outcome` (`ok`, `retry`, `release`, `poison`, `undecodable`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Span;

impl Layer for Span {
    async fn call(&self, job: Job, next: Next) -> Result<(), HandlerError> {
        // Under a worker the listener's `message` span (queue, message_id, dequeue_count) is
        // already around the run: a second span with the same fields would repeat them on
        // every log line (and the exporter leaves this one out anyway).
        let inside_message = tracing::Span::current()
            .metadata()
            .is_some_and(|m| m.name() == "message" && m.target() == "ebbflow::codec::spans");
        if inside_message {
            return next.run(job).await;
        }
        let ctx = job.ctx();
        let span = tracing::info_span!(
            "process",
            otel.name = %format!("process {}", ctx.queue()),
            queue = %ctx.queue(),
            message_id = %ctx.message_id(),
            dequeue_count = ctx.dequeue_count(),
            outcome = tracing::field::Empty,
        );
        let result = next.run(job).instrument(span.clone()).await;
        span.record("outcome", outcome_name(&result));
        result
    }
}

/// The outcome's name in spans and logs.
pub(crate) fn outcome_name(result: &Result<(), HandlerError>) -> &'static str {
    match result {
        Ok(()) => "ok",
        Err(HandlerError::Retry { .. }) => "retry",
        Err(HandlerError::Release { .. }) => "release",
        Err(HandlerError::Poison { .. }) => "poison",
        Err(HandlerError::Undecodable { .. }) => "undecodable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Tag(&'static str, Arc<Mutex<Vec<&'static str>>>);

    impl Layer for Tag {
        async fn call(&self, job: Job, next: Next) -> Result<(), HandlerError> {
            self.1.lock().unwrap().push(self.0);
            let result = next.run(job).await;
            self.1.lock().unwrap().push(self.0);
            result
        }
    }

    struct Record(Arc<Mutex<Vec<&'static str>>>);

    impl super::super::Handler for Record {
        type Message = String;
        async fn handle(&self, text: String, _: Context) -> Result<(), HandlerError> {
            self.0.lock().unwrap().push("handler");
            if text == "bad" {
                return Err(HandlerError::poison("bad"));
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn layers_run_outermost_first_around_the_handler() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stack = Stack::new(
            vec![
                SharedLayer::new(Tag("outer", seen.clone())),
                SharedLayer::new(Tag("inner", seen.clone())),
            ],
            Arc::new(super::super::Erased(Record(seen.clone()))),
        );
        let ctx = Context::detached("q", "m1", 1);
        assert!(stack
            .run(Job::new(ctx.clone(), b"ok".to_vec()))
            .await
            .is_ok());
        assert_eq!(
            *seen.lock().unwrap(),
            ["outer", "inner", "handler", "inner", "outer"]
        );
        let bad = stack.run(Job::new(ctx, b"bad".to_vec())).await;
        assert_eq!(outcome_name(&bad), "poison");
    }
}

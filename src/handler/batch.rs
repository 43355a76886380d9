//! Batch handlers: one call for many messages.
//!
//! A batch queue's messages are received, leased, decoded and settled one by one, exactly as a
//! single handler's: each keeps its own concurrency slot, lease renewal, dequeue count,
//! timeout, retry, release and poison. Only the call is shared: the first decoded message
//! waits up to [`Batching::max_wait`] for others (at most [`Batching::max_messages`], and never
//! more than the queue's `concurrency`, since each holds a slot), then the handler gets them
//! all in one [`Batch`]. What it returns applies to every message it did not mark on its own.
//!
//! Undecodable messages never join a batch: they are poisoned first. A panic in the batch
//! handler fails every message of the batch (each counted as a panic). A message whose own
//! `handler_timeout` passes, or that is aborted at the drain deadline, settles on its own; if
//! it was the one that collected the batch, the batch is abandoned and its other messages are
//! retried.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{oneshot, Notify};

use super::{Context, ErasedHandler, HandlerError, Payload, RunFuture};

/// How a batch is collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// The most messages in one batch (also bounded by the queue's `concurrency`). Default 32.
    pub max_messages: usize,
    /// How long the first message of a batch waits for others. Default 100 ms.
    pub max_wait: Duration,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            max_messages: 32,
            max_wait: Duration::from_millis(100),
        }
    }
}

/// A batch handler for one queue's messages: one call for up to [`Batching::max_messages`].
///
/// `Ok(())` deletes every message the handler did not mark; an error applies to every
/// unmarked message (a retry retries each, on its own dequeue count). Mark single messages
/// with [`Batch::retry`], [`Batch::poison`], [`Batch::release`] or [`Batch::set`].
///
/// ```
/// use ebbflow::handler::{Batch, BatchHandler};
/// use ebbflow::{HandlerError, Json};
///
/// #[derive(serde::Deserialize)]
/// struct Row { id: u64, amount_cents: i64 }
///
/// struct Rows;
///
/// impl BatchHandler for Rows {
///     type Message = Json<Row>;
///
///     async fn handle_batch(&self, batch: &mut Batch<Json<Row>>) -> Result<(), HandlerError> {
///         // One insert for the whole batch; a row that can never go in is poisoned alone.
///         let mut bad = Vec::new();
///         for (i, (Json(row), _ctx)) in batch.iter().enumerate() {
///             if row.amount_cents < 0 {
///                 bad.push((i, row.id));
///             }
///         }
///         for (i, id) in bad {
///             batch.poison(i, format!("row {id} has a negative amount"));
///         }
///         // insert_rows(batch.iter().map(|(Json(row), _)| row)).await?;  // `?`: retry all
///         Ok(())
///     }
/// }
/// ```
pub trait BatchHandler: Send + Sync + 'static {
    /// The payload type of each message; decoding failures poison that message alone.
    type Message: Payload;

    /// Handles one batch.
    fn handle_batch(
        &self,
        batch: &mut Batch<Self::Message>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// How batches are collected (default: up to 32 messages, waiting up to 100 ms).
    fn batching(&self) -> Batching {
        Batching::default()
    }
}

/// The messages of one batch, in the order they were received, each with its [`Context`].
#[derive(Debug)]
pub struct Batch<M> {
    items: Vec<(M, Context)>,
    marks: Vec<Option<HandlerError>>,
}

impl<M> Batch<M> {
    /// A batch of `items` (the test kit and the runtime build these).
    pub(crate) fn new(items: Vec<(M, Context)>) -> Self {
        let marks = items.iter().map(|_| None).collect();
        Self { items, marks }
    }

    /// How many messages.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are none (never, for a batch the runtime hands over).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Each message with its context.
    pub fn iter(&self) -> impl Iterator<Item = (&M, &Context)> {
        self.items.iter().map(|(m, c)| (m, c))
    }

    /// Message `index` with its context.
    pub fn get(&self, index: usize) -> Option<(&M, &Context)> {
        self.items.get(index).map(|(m, c)| (m, c))
    }

    /// Gives message `index` its own outcome, whatever the batch's result. An index past the
    /// end is ignored.
    pub fn set(&mut self, index: usize, outcome: HandlerError) {
        if let Some(mark) = self.marks.get_mut(index) {
            *mark = Some(outcome);
        }
    }

    /// Message `index` failed: retried on its own (see [`HandlerError::retry`]).
    pub fn retry(&mut self, index: usize, error: impl Into<super::BoxError>) {
        self.set(index, HandlerError::retry(error));
    }

    /// Message `index` can never succeed: poisoned (see [`HandlerError::poison`]).
    pub fn poison(&mut self, index: usize, error: impl Into<super::BoxError>) {
        self.set(index, HandlerError::poison(error));
    }

    /// Message `index` is not for now: released (see [`HandlerError::release`]).
    pub fn release(&mut self, index: usize, after: Duration) {
        self.set(index, HandlerError::release(after));
    }

    /// Each message's outcome: its mark, or the batch's result.
    pub(crate) fn outcomes(
        self,
        whole: &Result<(), HandlerError>,
    ) -> Vec<Result<(), HandlerError>> {
        self.marks
            .into_iter()
            .map(|mark| match mark {
                Some(own) => Err(own),
                None => match whole {
                    Ok(()) => Ok(()),
                    Err(e) => Err(copy_of(e)),
                },
            })
            .collect()
    }
}

/// The batch's error for one of its messages: same kind and delay, the cause as text.
fn copy_of(e: &HandlerError) -> HandlerError {
    let source = || -> super::BoxError { e.source_error().to_string().into() };
    match e {
        HandlerError::Retry { after, .. } => HandlerError::Retry {
            after: *after,
            source: source(),
        },
        HandlerError::Poison { .. } => HandlerError::Poison { source: source() },
        HandlerError::Release { after, .. } => HandlerError::Release {
            after: *after,
            source: source(),
        },
        HandlerError::Undecodable { .. } => HandlerError::Undecodable { source: source() },
    }
}

/// A batch queue's counters: batches run and their sizes (`ebbflow_batches_total`,
/// `ebbflow_batch_size`). Clones share them.
#[derive(Debug, Clone)]
pub(crate) struct BatchStats {
    pub(crate) batches: Arc<AtomicU64>,
    pub(crate) sizes: Histogram,
}

/// Bucket bounds of batch sizes: 1, 2, 4 .. 32, then up to 256.
pub(crate) const BATCH_SIZE_BUCKETS: [f64; 9] =
    [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

impl Default for BatchStats {
    fn default() -> Self {
        Self {
            batches: Arc::default(),
            sizes: Histogram::new(BATCH_SIZE_BUCKETS),
        }
    }
}

/// What one message of a batch learns.
enum Verdict {
    Done(Result<(), HandlerError>),
    Panicked(String),
}

type Waiting<M> = (M, Context, oneshot::Sender<Verdict>);

/// A batch being collected: its messages and the signal that it is full.
struct Group<M> {
    items: Mutex<Vec<Waiting<M>>>,
    full: Notify,
}

/// A batch handler behind the per-message handler interface: each message joins the open
/// batch (or opens one and collects it), then waits for its own verdict.
pub(crate) struct Batcher<H: BatchHandler> {
    handler: Arc<H>,
    batching: Batching,
    open: Mutex<Option<Arc<Group<H::Message>>>>,
    stats: BatchStats,
}

impl<H: BatchHandler> Batcher<H> {
    pub(crate) fn new(handler: H, stats: BatchStats) -> Self {
        let mut batching = handler.batching();
        batching.max_messages = batching.max_messages.max(1);
        Self {
            handler: Arc::new(handler),
            batching,
            open: Mutex::new(None),
            stats,
        }
    }

    /// Adds a message to the open batch; `Some(group)` when it opened one and so collects it.
    fn join(&self, waiting: Waiting<H::Message>) -> Option<Arc<Group<H::Message>>> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(group) = open.as_ref() {
            let mut items = group.items.lock().unwrap_or_else(|e| e.into_inner());
            items.push(waiting);
            if items.len() >= self.batching.max_messages {
                group.full.notify_one();
                drop(items);
                *open = None;
            }
            return None;
        }
        let group = Arc::new(Group {
            items: Mutex::new(vec![waiting]),
            full: Notify::new(),
        });
        if self.batching.max_messages > 1 {
            *open = Some(group.clone());
        }
        Some(group)
    }

    /// Collects `group` (waiting until it is full or `max_wait` passed), runs the batch and
    /// hands each message its verdict.
    async fn collect_and_run(&self, group: Arc<Group<H::Message>>) {
        if self.batching.max_messages > 1 {
            tokio::select! {
                _ = group.full.notified() => {}
                _ = tokio::time::sleep(self.batching.max_wait) => {}
            }
        }
        {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            if open.as_ref().is_some_and(|g| Arc::ptr_eq(g, &group)) {
                *open = None;
            }
        }
        let waiting = std::mem::take(&mut *group.items.lock().unwrap_or_else(|e| e.into_inner()));
        let mut replies = Vec::with_capacity(waiting.len());
        let mut items = Vec::with_capacity(waiting.len());
        for (message, ctx, reply) in waiting {
            items.push((message, ctx));
            replies.push(reply);
        }
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.sizes.observe(items.len() as f64);
        // The call's own span, linked to each message's (conventions: links, not parents).
        let span = match items.first() {
            Some((_, ctx)) => {
                let spans: Vec<tracing::Span> = items.iter().map(|(_, c)| c.span.clone()).collect();
                crate::codec::spans::batch_span(&ctx.queue, &spans)
            }
            None => tracing::Span::none(),
        };
        let mut batch = Batch::new(items);
        let run = AssertUnwindSafe(tracing::Instrument::instrument(
            self.handler.handle_batch(&mut batch),
            span,
        ));
        match catch_unwind(run).await {
            Ok(whole) => {
                for (reply, outcome) in replies.into_iter().zip(batch.outcomes(&whole)) {
                    let _ = reply.send(Verdict::Done(outcome));
                }
            }
            Err(text) => {
                for reply in replies {
                    let _ = reply.send(Verdict::Panicked(text.clone()));
                }
            }
        }
    }
}

/// Awaits `future`, a panic inside it turned into `Err(panic text)`.
pub(super) async fn catch_unwind<F: Future>(
    future: AssertUnwindSafe<F>,
) -> Result<F::Output, String> {
    let mut future = std::pin::pin!(future.0);
    std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(std::task::Poll::Ready(out)) => std::task::Poll::Ready(Ok(out)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(payload) => std::task::Poll::Ready(Err(panic_text(payload))),
        }
    })
    .await
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".to_string())
}

impl<H: BatchHandler> ErasedHandler for Batcher<H> {
    fn call(self: Arc<Self>, bytes: Vec<u8>, ctx: Context) -> RunFuture {
        Box::pin(async move {
            // Undecodable: poisoned alone, before any batch.
            let message = H::Message::from_bytes(bytes).map_err(HandlerError::undecodable)?;
            let (reply, verdict) = oneshot::channel();
            if let Some(group) = self.join((message, ctx, reply)) {
                self.collect_and_run(group).await;
            }
            match verdict.await {
                Ok(Verdict::Done(outcome)) => outcome,
                // Each message of a panicked batch fails as a panic of its own (caught and
                // counted where the runtime polls it). No panic hook runs twice.
                Ok(Verdict::Panicked(text)) => std::panic::resume_unwind(Box::new(text)),
                Err(_) => Err(HandlerError::retry(
                    "the batch this message was in was abandoned: the message that collected it \
                     timed out or was aborted",
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sum(Arc<Mutex<Vec<usize>>>);

    impl BatchHandler for Sum {
        type Message = String;
        async fn handle_batch(&self, batch: &mut Batch<String>) -> Result<(), HandlerError> {
            self.0.lock().unwrap().push(batch.len());
            let bad: Vec<usize> = batch
                .iter()
                .enumerate()
                .filter(|(_, (m, _))| m.as_str() == "bad")
                .map(|(i, _)| i)
                .collect();
            for i in bad {
                batch.poison(i, "bad row");
            }
            if batch.iter().any(|(m, _)| m == "panic") {
                panic!("batch panicked");
            }
            if batch.iter().any(|(m, _)| m == "down") {
                return Err(HandlerError::retry("database down"));
            }
            Ok(())
        }
    }

    async fn run_all(texts: &[&str]) -> (Vec<Result<(), String>>, Vec<usize>) {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let batcher = Arc::new(Batcher::new(Sum(sizes.clone()), BatchStats::default()));
        let runs: Vec<_> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let ctx = Context::detached("q", &i.to_string(), 1);
                tokio::spawn(batcher.clone().call(t.as_bytes().to_vec(), ctx))
            })
            .collect();
        let mut outcomes = Vec::new();
        for run in runs {
            outcomes.push(match run.await {
                Ok(result) => {
                    result.map_err(|e| crate::handler::layer::outcome_name(&Err(e)).to_string())
                }
                Err(e) if e.is_panic() => Err("panic".to_string()),
                Err(e) => Err(e.to_string()),
            });
        }
        let sizes = sizes.lock().unwrap().clone();
        (outcomes, sizes)
    }

    #[tokio::test(start_paused = true)]
    async fn one_call_for_many_with_per_message_outcomes() {
        let (outcomes, sizes) = run_all(&["a", "bad", "c"]).await;
        assert_eq!(sizes, [3]);
        assert_eq!(outcomes, [Ok(()), Err("poison".into()), Ok(())]);
        let (outcomes, _) = run_all(&["a", "down", "bad"]).await;
        assert_eq!(
            outcomes,
            [
                Err("retry".into()),
                Err("retry".into()),
                Err("poison".into())
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_panic_fails_each_message_and_undecodable_ones_never_join() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let batcher = Arc::new(Batcher::new(Sum(sizes.clone()), BatchStats::default()));
        let bad_utf8 = batcher
            .clone()
            .call(vec![0xff], Context::detached("q", "x", 1))
            .await;
        assert!(matches!(bad_utf8, Err(HandlerError::Undecodable { .. })));
        assert!(sizes.lock().unwrap().is_empty());
        let (outcomes, _) = run_all(&["a", "panic"]).await;
        assert_eq!(outcomes, [Err("panic".into()), Err("panic".into())]);
    }
}

//! One listener per queue: its dequeue tasks receive batches, run each message's handler within
//! the queue's concurrency limit, and settle the message (delete, retry, or poison).
//!
//! Two tokens drive shutdown. `stop` ends receiving: a task finishes its receive in flight,
//! releases (visibility 0) the messages of its batch that have not started, and waits for the
//! ones that have. `abort` fires at the drain deadline: handlers still running are aborted and
//! their messages released, never deleted.

pub mod poison;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn, Instrument};

use crate::backoff::IdleBackoff;
use crate::config::QueueSettings;
use crate::handler::{Context, DispatchError, ErasedHandler, HandlerError};
use crate::store::{Queue, ReceivedMessage, StoreError};
use poison::{PoisonEnvelope, PoisonReason};

/// Counters of one queue's listener. All counts are since start.
#[derive(Debug, Default)]
pub struct ListenerStats {
    active_tasks: AtomicU64,
    in_flight: AtomicU64,
    receive_calls: AtomicU64,
    empty_receives: AtomicU64,
    received: AtomicU64,
    handled: AtomicU64,
    retried: AtomicU64,
    poisoned: AtomicU64,
    released: AtomicU64,
    lost_ownership: AtomicU64,
    store_errors: AtomicU64,
}

/// A point-in-time copy of a listener's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueSnapshot {
    /// The queue.
    pub queue: String,
    /// Dequeue tasks running now.
    pub active_tasks: u64,
    /// Handlers running now.
    pub in_flight: u64,
    /// Receive calls made (each one billable).
    pub receive_calls: u64,
    /// Receive calls that returned nothing.
    pub empty_receives: u64,
    /// Messages received.
    pub received: u64,
    /// Messages handled successfully and deleted.
    pub handled: u64,
    /// Failures left for a retry.
    pub retried: u64,
    /// Messages copied to the poison queue and deleted.
    pub poisoned: u64,
    /// Messages made visible again without handling (shutdown).
    pub released: u64,
    /// Deletes or updates refused because the message was re-delivered meanwhile.
    pub lost_ownership: u64,
    /// Failed store calls.
    pub store_errors: u64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl ListenerStats {
    fn snapshot(&self, queue: &str) -> QueueSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        QueueSnapshot {
            queue: queue.to_string(),
            active_tasks: get(&self.active_tasks),
            in_flight: get(&self.in_flight),
            receive_calls: get(&self.receive_calls),
            empty_receives: get(&self.empty_receives),
            received: get(&self.received),
            handled: get(&self.handled),
            retried: get(&self.retried),
            poisoned: get(&self.poisoned),
            released: get(&self.released),
            lost_ownership: get(&self.lost_ownership),
            store_errors: get(&self.store_errors),
        }
    }
}

/// Everything a queue's dequeue tasks share.
pub(crate) struct Shared {
    queue: Arc<dyn Queue>,
    poison_queue: Arc<dyn Queue>,
    settings: QueueSettings,
    handler: Arc<dyn ErasedHandler>,
    permits: Arc<Semaphore>,
    stats: ListenerStats,
    stop: CancellationToken,
    abort: CancellationToken,
    name: Arc<str>,
}

/// A running listener for one queue.
pub struct QueueListener {
    shared: Arc<Shared>,
}

impl QueueListener {
    /// Starts `settings.tasks` dequeue tasks on `tracker`.
    pub(crate) fn start(
        queue: Arc<dyn Queue>,
        poison_queue: Arc<dyn Queue>,
        settings: QueueSettings,
        handler: Arc<dyn ErasedHandler>,
        tracker: &TaskTracker,
        stop: CancellationToken,
        abort: CancellationToken,
    ) -> Self {
        let shared = Arc::new(Shared {
            name: Arc::from(queue.name()),
            permits: Arc::new(Semaphore::new(settings.concurrency as usize)),
            queue,
            poison_queue,
            handler,
            stats: ListenerStats::default(),
            settings,
            stop,
            abort,
        });
        for task in 0..shared.settings.tasks {
            let shared = shared.clone();
            let span = tracing::info_span!("dequeue", queue = %shared.name, task);
            tracker.spawn(dequeue_loop(shared).instrument(span));
        }
        info!(queue = %shared.name, tasks = shared.settings.tasks,
              batch_size = shared.settings.batch_size,
              concurrency = shared.settings.concurrency, "listener started");
        Self { shared }
    }

    /// The queue's counters now.
    pub fn snapshot(&self) -> QueueSnapshot {
        self.shared.stats.snapshot(&self.shared.name)
    }
}

/// Decrements the active-task count however the task ends.
struct ActiveTask<'a>(&'a AtomicU64);

impl Drop for ActiveTask<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn dequeue_loop(shared: Arc<Shared>) {
    shared.stats.active_tasks.fetch_add(1, Ordering::Relaxed);
    let _active = ActiveTask(&shared.stats.active_tasks);
    let mut backoff = IdleBackoff::new(shared.settings.idle_backoff);
    let batch_size = shared.settings.batch_size as u8;
    while !shared.stop.is_cancelled() {
        // The receive is not raced against `stop`: a receive that completed on the service
        // but was dropped here would leave its messages invisible for the whole timeout.
        bump(&shared.stats.receive_calls);
        let batch = match shared
            .queue
            .receive(batch_size, shared.settings.visibility_timeout)
            .await
        {
            Ok(batch) => batch,
            Err(e) => {
                bump(&shared.stats.store_errors);
                let delay = backoff.next_delay();
                error!(queue = %shared.name, error = %e, retry_in = ?delay, "receive failed");
                sleep_unless_stopped(&shared.stop, delay).await;
                continue;
            }
        };
        if batch.is_empty() {
            bump(&shared.stats.empty_receives);
            let delay = backoff.next_delay();
            debug!(queue = %shared.name, streak = backoff.streak(), sleep = ?delay, "queue empty");
            sleep_unless_stopped(&shared.stop, delay).await;
            continue;
        }
        backoff.reset();
        shared
            .stats
            .received
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        run_batch(&shared, batch).await;
    }
    debug!(queue = %shared.name, "dequeue task stopped");
}

async fn sleep_unless_stopped(stop: &CancellationToken, delay: Duration) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}

/// Runs one batch: each message starts when a concurrency permit is free; on `stop` the
/// messages not yet started are released at once.
async fn run_batch(shared: &Arc<Shared>, batch: Vec<ReceivedMessage>) {
    let mut running = JoinSet::new();
    let mut pending = batch.into_iter();
    for message in pending.by_ref() {
        let permit = tokio::select! {
            biased;
            _ = shared.stop.cancelled() => None,
            permit = shared.permits.clone().acquire_owned() => permit.ok(),
        };
        let Some(permit) = permit else {
            release(shared, &message, "worker stopping").await;
            break;
        };
        let span = tracing::info_span!("message", queue = %shared.name, message_id = %message.id,
                                       dequeue_count = message.dequeue_count);
        running.spawn(settle(shared.clone(), message, permit).instrument(span));
    }
    for message in pending {
        release(shared, &message, "worker stopping").await;
    }
    while let Some(done) = running.join_next().await {
        if let Err(e) = done {
            // `settle` itself does not panic (handler panics are caught inside it); a join
            // error here means the runtime is shutting down.
            warn!(queue = %shared.name, error = %e, "message task ended abnormally");
        }
    }
}

/// What became of a handler run.
enum Outcome {
    Done(Result<(), DispatchError>),
    Panicked(String),
    Aborted,
}

/// Handles one message and settles it on the queue.
async fn settle(shared: Arc<Shared>, message: ReceivedMessage, _permit: OwnedSemaphorePermit) {
    let max = shared.settings.max_dequeue_count;
    if message.dequeue_count > max {
        let why = format!("received {} times, limit {max}", message.dequeue_count);
        return poison(
            &shared,
            &message,
            PoisonReason::MaxDequeueCountExceeded,
            why,
        )
        .await;
    }
    let bytes = match shared.settings.encoding.decode(&message.text) {
        Ok(bytes) => bytes,
        Err(e) => return poison(&shared, &message, PoisonReason::Undecodable, e.to_string()).await,
    };
    let ctx = Context {
        queue: shared.name.clone(),
        message_id: message.id.clone(),
        dequeue_count: message.dequeue_count,
        inserted_at: message.inserted_at,
        cancellation: shared.stop.child_token(),
    };
    shared.stats.in_flight.fetch_add(1, Ordering::Relaxed);
    // The handler runs as its own task so that a panic is contained to this message.
    let mut handle = tokio::spawn(shared.handler.clone().call(bytes, ctx).in_current_span());
    let outcome = tokio::select! {
        joined = &mut handle => match joined {
            Ok(result) => Outcome::Done(result),
            Err(e) if e.is_panic() => Outcome::Panicked(panic_text(e.into_panic())),
            Err(_) => Outcome::Aborted,
        },
        _ = shared.abort.cancelled() => {
            handle.abort();
            Outcome::Aborted
        }
    };
    shared.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    match outcome {
        Outcome::Done(Ok(())) => match shared.queue.delete(&message.id, &message.pop_receipt).await
        {
            Ok(()) => {
                bump(&shared.stats.handled);
                debug!("message handled");
            }
            Err(e) => store_failure(&shared, &message, "delete after success", e),
        },
        Outcome::Done(Err(DispatchError::Decode(e))) => {
            poison(&shared, &message, PoisonReason::Undecodable, e.to_string()).await
        }
        Outcome::Done(Err(DispatchError::Handler(HandlerError::Poison { source }))) => {
            poison(
                &shared,
                &message,
                PoisonReason::Rejected,
                source.to_string(),
            )
            .await
        }
        Outcome::Done(Err(DispatchError::Handler(HandlerError::Retry { after, source }))) => {
            retry(&shared, &message, after, source.to_string()).await
        }
        Outcome::Panicked(text) => {
            retry(&shared, &message, None, format!("handler panicked: {text}")).await
        }
        Outcome::Aborted => release(&shared, &message, "drain deadline passed").await,
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".to_string())
}

/// A failed try: poison on the last allowed try, else make the message visible after the delay.
async fn retry(shared: &Shared, message: &ReceivedMessage, after: Option<Duration>, error: String) {
    let max = shared.settings.max_dequeue_count;
    if message.dequeue_count >= max {
        let why = format!("failed on try {} of {max}: {error}", message.dequeue_count);
        return poison(shared, message, PoisonReason::MaxDequeueCountExceeded, why).await;
    }
    let delay = after.unwrap_or(shared.settings.retry_delay);
    warn!(queue = %shared.name, message_id = %message.id, dequeue_count = message.dequeue_count,
          retry_in = ?delay, error = %error, "handler failed; will retry");
    match shared
        .queue
        .update(&message.id, &message.pop_receipt, delay, None)
        .await
    {
        Ok(_) => bump(&shared.stats.retried),
        Err(e) => store_failure(shared, message, "retry", e),
    }
}

/// Makes a message visible again at once, without counting it as handled.
async fn release(shared: &Shared, message: &ReceivedMessage, why: &str) {
    match shared
        .queue
        .update(&message.id, &message.pop_receipt, Duration::ZERO, None)
        .await
    {
        Ok(_) => {
            bump(&shared.stats.released);
            info!(queue = %shared.name, message_id = %message.id, reason = why, "message released");
        }
        Err(e) => store_failure(shared, message, "release", e),
    }
}

/// Copies the message to the poison queue, then deletes it. If the copy fails the message
/// stays on its queue (it comes back after its visibility timeout): nothing is lost.
async fn poison(shared: &Shared, message: &ReceivedMessage, reason: PoisonReason, error: String) {
    let envelope = PoisonEnvelope::new(&shared.name, message, reason, Some(error.clone()));
    let Some(text) = envelope.to_text(shared.settings.encoding) else {
        error!(queue = %shared.name, message_id = %message.id, reason = reason.as_str(),
               "message too large to wrap for the poison queue; left on its queue");
        bump(&shared.stats.store_errors);
        return;
    };
    if let Err(e) = shared.poison_queue.send(&text, Default::default()).await {
        error!(queue = %shared.name, message_id = %message.id, poison_queue = shared.poison_queue.name(),
               error = %e, "copy to poison queue failed; message left on its queue");
        bump(&shared.stats.store_errors);
        return;
    }
    match shared.queue.delete(&message.id, &message.pop_receipt).await {
        Ok(()) => {
            bump(&shared.stats.poisoned);
            warn!(queue = %shared.name, message_id = %message.id, reason = reason.as_str(),
                  dequeue_count = message.dequeue_count, poison_queue = shared.poison_queue.name(),
                  error = %error, "message moved to poison queue");
        }
        Err(e) => store_failure(shared, message, "delete after poison copy", e),
    }
}

fn store_failure(shared: &Shared, message: &ReceivedMessage, step: &str, e: StoreError) {
    if let StoreError::MessageNotFound { .. } = e {
        bump(&shared.stats.lost_ownership);
        warn!(queue = %shared.name, message_id = %message.id, step,
              "message was re-delivered before we settled it; it may be handled twice");
    } else {
        bump(&shared.stats.store_errors);
        error!(queue = %shared.name, message_id = %message.id, step, error = %e,
               "store call failed; the message reappears after its visibility timeout");
    }
}

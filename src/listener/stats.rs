//! A listener's counters and the snapshot it shows the outside (tests, `/metrics`, the
//! simulator).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;

use crate::trigger::TriggerSource;

/// Counters of one queue's listener. All counts are since start.
#[derive(Debug, Default)]
pub(crate) struct ListenerStats {
    pub(crate) active_tasks: AtomicU64,
    pub(crate) peak_tasks: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    /// Messages received and not settled yet (running, or being deleted, retried, released).
    pub(crate) held: AtomicU64,
    pub(crate) receive_calls: AtomicU64,
    pub(crate) empty_receives: AtomicU64,
    pub(crate) probe_calls: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) handled: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) poisoned: AtomicU64,
    pub(crate) released: AtomicU64,
    pub(crate) lost_ownership: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) triggers: AtomicU64,
    pub(crate) panics: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) renewals: AtomicU64,
    pub(crate) pulses: AtomicU64,
    pub(crate) task_restarts: AtomicU64,
    /// Push triggers by source, indexed by [`TriggerSource::index`].
    pub(crate) triggers_by_source: [AtomicU64; TriggerSource::ALL.len()],
    pub(crate) histograms: Histograms,
    /// Batch handler calls (batch queues only); shared with the queue's batcher.
    pub(crate) batches: std::sync::Arc<AtomicU64>,
    /// What the supervisor and the tasks know beyond counters.
    view: Mutex<ScaleView>,
}

/// What the supervisor knows beyond counters, shown in snapshots.
#[derive(Debug, Default)]
struct ScaleView {
    depth: Option<u64>,
    /// Per task: its idle streak and its current back-off sleep.
    tasks: BTreeMap<u64, (u32, Duration)>,
    last_decision: Option<String>,
}

/// A listener's distributions, observed where their events happen and read at scrape time.
/// Clones share the same histograms.
#[derive(Debug, Clone)]
pub struct Histograms {
    /// How long handlers ran, in seconds (from the handler's start to its result).
    pub handler_seconds: Histogram,
    /// Receive time minus the message's insertion time, in seconds, for first deliveries
    /// only (a retried message's age says nothing about pickup). The service stamps insertion
    /// times to the second, so below a second this is coarse on Azure.
    pub pickup_seconds: Histogram,
    /// Messages per receive call, empty receives (0) included.
    pub messages_per_receive: Histogram,
    /// Messages per batch handler call (batch queues only).
    pub batch_size: Histogram,
}

/// Bucket bounds of handler times, in seconds: 1 ms to 10 min.
pub(super) const HANDLER_BUCKETS: [f64; 18] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];
/// Bucket bounds of pickup latencies, in seconds: 10 ms to 1 h.
pub(super) const PICKUP_BUCKETS: [f64; 14] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
/// Bucket bounds of messages per receive: 0, 1, 2, 4 .. 32 (the service's most).
pub(super) const BATCH_BUCKETS: [f64; 7] = [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0];

impl Default for Histograms {
    fn default() -> Self {
        Self {
            handler_seconds: Histogram::new(HANDLER_BUCKETS),
            pickup_seconds: Histogram::new(PICKUP_BUCKETS),
            messages_per_receive: Histogram::new(BATCH_BUCKETS),
            batch_size: Histogram::new(crate::handler::BATCH_SIZE_BUCKETS),
        }
    }
}

/// A point-in-time view of a listener: its counters and its scaling state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueSnapshot {
    /// The queue.
    pub queue: String,
    /// Dequeue tasks running now.
    pub active_tasks: u64,
    /// Most tasks that ran at once.
    pub peak_tasks: u64,
    /// Handlers running now.
    pub in_flight: u64,
    /// Messages received and not yet settled (handlers running, or settles in progress).
    pub held: u64,
    /// Receive calls made (each one billable).
    pub receive_calls: u64,
    /// Receive calls that returned nothing.
    pub empty_receives: u64,
    /// Depth probes made (properties and peek calls, each billable).
    pub probe_calls: u64,
    /// Messages received.
    pub received: u64,
    /// Messages handled successfully and deleted.
    pub handled: u64,
    /// Failures left for a retry.
    pub retried: u64,
    /// Messages copied to the poison queue and deleted.
    pub poisoned: u64,
    /// Messages made visible again without a failure: shutdown, the drain deadline, or the
    /// handler's own "not now" ([`crate::HandlerError::release`]).
    pub released: u64,
    /// Deletes or updates refused because the message was re-delivered meanwhile.
    pub lost_ownership: u64,
    /// Failed store calls.
    pub store_errors: u64,
    /// Push triggers received, all sources.
    pub triggers: u64,
    /// Push triggers received by source, in [`TriggerSource::ALL`]'s order.
    pub triggers_by_source: [u64; TriggerSource::ALL.len()],
    /// Handlers that panicked (each counted as a failure and retried).
    pub panics: u64,
    /// Handlers stopped by `handler_timeout` (each counted as a failure and retried).
    pub timeouts: u64,
    /// Visibility renewals of messages whose handlers ran long.
    pub renewals: u64,
    /// Heartbeat pulses (timed and count).
    pub pulses: u64,
    /// Dequeue tasks that ended unexpectedly (a panic outside a handler) and were replaced.
    pub task_restarts: u64,
    /// Batch handler calls (batch queues only; their sizes are in [`Histograms::batch_size`]).
    pub batches: u64,
    /// The last probed depth, if any: messages waiting, this replica's in-flight messages not
    /// counted (see docs/src/scaling.md for what it can know of other replicas').
    pub depth: Option<u64>,
    /// Each running task's empty receives in a row.
    pub idle_streaks: Vec<u32>,
    /// The longest back-off sleep a task is in now.
    pub current_backoff: Duration,
    /// The last scaling decision that changed something, with its reason.
    pub last_decision: Option<String>,
}

impl ListenerStats {
    /// Counters whose batch figures are `batch`'s (a batch queue's batcher counts there).
    pub(crate) fn with_batches(batch: Option<crate::handler::BatchStats>) -> Self {
        let mut stats = Self::default();
        if let Some(batch) = batch {
            stats.batches = batch.batches;
            stats.histograms.batch_size = batch.sizes;
        }
        stats
    }

    /// The counters and the scaling state into a snapshot.
    pub(crate) fn snapshot(&self, queue: &str) -> QueueSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut snapshot = self.counters(queue, get);
        let view = self.view();
        snapshot.depth = view.depth;
        snapshot.idle_streaks = view.tasks.values().map(|(streak, _)| *streak).collect();
        snapshot.current_backoff = view
            .tasks
            .values()
            .map(|(_, d)| *d)
            .max()
            .unwrap_or_default();
        snapshot.last_decision = view.last_decision.clone();
        snapshot
    }

    fn view(&self) -> std::sync::MutexGuard<'_, ScaleView> {
        // The view holds plain values, each written whole: one left by a panicking writer is
        // still consistent.
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records task `id`'s idle streak and the back-off sleep it is in.
    pub(crate) fn set_task(&self, id: u64, streak: u32, sleep: Duration) {
        self.view().tasks.insert(id, (streak, sleep));
    }

    /// Forgets task `id` (it ended).
    pub(crate) fn forget_task(&self, id: u64) {
        self.view().tasks.remove(&id);
    }

    /// Of `ids`, the task with the longest idle streak.
    pub(crate) fn most_idle<'a>(&self, ids: impl Iterator<Item = &'a u64>) -> Option<u64> {
        let view = self.view();
        ids.max_by_key(|id| view.tasks.get(id).map_or(0, |(streak, _)| *streak))
            .copied()
    }

    /// Records the last probed depth.
    pub(crate) fn set_depth(&self, depth: Option<u64>) {
        self.view().depth = depth;
    }

    /// Records the last scaling decision that changed something.
    pub(crate) fn set_decision(&self, text: String) {
        self.view().last_decision = Some(text);
    }

    fn counters(&self, queue: &str, get: impl Fn(&AtomicU64) -> u64) -> QueueSnapshot {
        QueueSnapshot {
            queue: queue.to_string(),
            active_tasks: get(&self.active_tasks),
            peak_tasks: get(&self.peak_tasks),
            in_flight: get(&self.in_flight),
            held: get(&self.held),
            receive_calls: get(&self.receive_calls),
            empty_receives: get(&self.empty_receives),
            probe_calls: get(&self.probe_calls),
            received: get(&self.received),
            handled: get(&self.handled),
            retried: get(&self.retried),
            poisoned: get(&self.poisoned),
            released: get(&self.released),
            lost_ownership: get(&self.lost_ownership),
            store_errors: get(&self.store_errors),
            triggers: get(&self.triggers),
            panics: get(&self.panics),
            timeouts: get(&self.timeouts),
            renewals: get(&self.renewals),
            pulses: get(&self.pulses),
            task_restarts: get(&self.task_restarts),
            batches: get(&self.batches),
            triggers_by_source: self.triggers_by_source.each_ref().map(&get),
            ..QueueSnapshot::default()
        }
    }
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Adds one to a gauge for as long as the guard lives.
pub(crate) struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    pub(crate) fn up(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

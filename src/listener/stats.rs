//! A listener's counters and the snapshot it shows the outside (tests, `/metrics`, the
//! simulator).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
    /// Push triggers received.
    pub triggers: u64,
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
    /// The last probed depth, if any: messages waiting, this replica's in-flight messages not
    /// counted (see the README's Scaling section for what it can know of other replicas').
    pub depth: Option<u64>,
    /// Each running task's empty receives in a row.
    pub idle_streaks: Vec<u32>,
    /// The longest back-off sleep a task is in now.
    pub current_backoff: Duration,
    /// The last scaling decision that changed something, with its reason.
    pub last_decision: Option<String>,
}

impl ListenerStats {
    /// The counters into a snapshot (scaling state left empty for the caller to fill).
    pub(crate) fn snapshot(&self, queue: &str) -> QueueSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
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

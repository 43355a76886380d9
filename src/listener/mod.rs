//! One listener per queue: a supervisor that keeps as many dequeue tasks running as the
//! scaling policy wants, the tasks that receive, and the message runs they spawn.
//!
//! The files, one job each:
//! - `supervisor.rs`: spawns, retires and replaces tasks; probes depth. It hears from tasks
//!   through `task::Event`.
//! - `task.rs`: the receive loop and its flow control: take concurrency slots first, receive
//!   no more than it holds plus what may safely wait ahead, spawn each message with its slot
//!   or ticket, never wait for a batch to end.
//! - `slots.rs`: the queue's concurrency slots, shared by its tasks, and the line of messages
//!   received ahead of a slot.
//! - `dispatch.rs`: one message's run: its layers and handler ([`crate::handler::Layer`]),
//!   timeout, drain abort, panic catch, heartbeat.
//! - `lease.rs`: the message's pop receipt and visibility, renewed beside the handler from the
//!   moment of the receive.
//! - `settle.rs`: a run's `Outcome`, and the one pure rule that turns it into a delete, retry,
//!   release or poison.
//! - `stats.rs`: counters and the snapshot.
//! - [`poison`]: the poison message format and the poison queue operations.
//!
//! Two tokens drive shutdown. `stop` ends receiving (a task finishes its receive in flight and
//! releases what it brought) and tells handlers through [`crate::Context::shutdown`]; a
//! handler that fails after it fired is released, not counted as a failure. `abort` fires at
//! the drain deadline: handlers still running are dropped and their messages released.

mod dispatch;
mod events;
mod lease;
pub mod poison;
mod settle;
mod slots;
mod stats;
mod supervisor;
mod task;
mod tuning;

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, Instrument};

use crate::bus::events::PulseKind;
use crate::config::QueueSettings;
use crate::handler::{Publishers, Stack};
use crate::store::{Queue, StoreError};
use crate::trigger::{Hub, TriggerSource, Wake};
pub(crate) use dispatch::{panic_text, CatchPanic};
pub(crate) use events::EventHook;
pub use events::ListenerEvent;
pub(crate) use settle::{Outcome as RunOutcome, Settle};
use stats::ListenerStats;
pub use stats::{Histograms, QueueSnapshot};
use supervisor::Supervisor;
use task::Event;

/// A failure no retry can fix (credentials refused, queue gone): the first one is kept and
/// the worker stops, saying why.
#[derive(Clone, Default)]
pub(crate) struct Fatal {
    raised: CancellationToken,
    error: Arc<Mutex<Option<StoreError>>>,
}

impl Fatal {
    pub(crate) fn raise(&self, error: StoreError) {
        if let Ok(mut slot) = self.error.lock() {
            slot.get_or_insert(error);
        }
        self.raised.cancel();
    }

    /// Completes once a fatal error was raised.
    pub(crate) async fn raised(&self) {
        self.raised.cancelled().await;
    }

    pub(crate) fn is_raised(&self) -> bool {
        self.raised.is_cancelled()
    }

    pub(crate) fn error(&self) -> Option<StoreError> {
        self.error.lock().ok().and_then(|e| e.clone())
    }
}

/// The worker's lifecycle, shared by all its listeners: stop receiving, abort at the drain
/// deadline, the fatal-error latch, and the tracker every task runs on (the drain waits for it).
#[derive(Clone, Default)]
pub(crate) struct Lifecycle {
    pub(crate) stop: CancellationToken,
    pub(crate) abort: CancellationToken,
    /// Why `abort` fired, set just before it (see [`Lifecycle::abort_for`]).
    cut: Arc<std::sync::OnceLock<&'static str>>,
    pub(crate) fatal: Fatal,
    pub(crate) tracker: TaskTracker,
}

impl Lifecycle {
    /// Aborts running handlers, saying why (the reason their messages are released with):
    /// `"drain deadline passed"` or `"second stop signal"`.
    pub(crate) fn abort_for(&self, reason: &'static str) {
        let _ = self.cut.set(reason);
        self.abort.cancel();
    }

    /// Why handlers were aborted: the reason given to [`Lifecycle::abort_for`], else (the
    /// worker was dropped without a drain) `"worker stopped"`.
    pub(crate) fn abort_reason(&self) -> &'static str {
        self.cut.get().copied().unwrap_or("worker stopped")
    }
}

/// What a listener tells the world outside its process (the worker wires these to the bus):
/// the queue looked drained, it held work, it held more than this listener can take now, and
/// long jobs' heartbeat pulses. Each call is cheap and never blocks the caller.
pub(crate) trait ListenerHooks: Send + Sync + 'static {
    /// A receive came back empty.
    fn drained(&self) {}
    /// A receive brought messages.
    fn found(&self) {}
    /// A receive came back filled with no free concurrency slot left: the queue holds more
    /// than this listener can take now.
    fn overflow(&self) {}
    /// A long job's heartbeat pulse (`kind`: `timed` or `count`).
    fn job_pulse(&self, _message_id: &str, _kind: PulseKind, _count: u64, _elapsed_ms: u64) {}
}

/// What a listener is made of.
pub(crate) struct ListenerSpec {
    /// Outward signals (the bus); `None`: nobody listens.
    pub(crate) hooks: Option<Arc<dyn ListenerHooks>>,
    /// The worker's bus, for every handler's `Context`.
    pub(crate) bus: Option<crate::bus::BusHandle>,
    pub(crate) queue: Arc<dyn Queue>,
    pub(crate) poison_queue: Arc<dyn Queue>,
    pub(crate) settings: QueueSettings,
    /// The queue's layers around its handler (see [`crate::handler::Layer`]).
    pub(crate) stack: Stack,
    /// A batch queue's counters, shared with its batcher.
    pub(crate) batch_stats: Option<crate::handler::BatchStats>,
    /// `storage.create_queues`: recreate the queue if it disappears while running.
    pub(crate) create_queues: bool,
    /// Every message of this queue comes with its own trigger, sent after it landed
    /// (`wake_on_publish`): after draining it, tasks wait for a trigger instead of polling.
    pub(crate) trigger_covered: bool,
    /// How many tasks to run ([`crate::scaling::DefaultPolicy`] unless the user set one).
    pub(crate) policy: Arc<dyn crate::scaling::ScalingPolicy>,
    /// The host's callbacks for this queue's [`ListenerEvent`]s.
    pub(crate) event_hooks: Vec<EventHook>,
    /// Shapes or suppresses the pulses of this queue's jobs (`Worker::pulse_hook`).
    pub(crate) pulse_hook: Option<crate::bus::jobs::PulseHook>,
}

/// The flow control a queue's tasks share.
pub(crate) struct Flow {
    slots: Arc<slots::Slots>,
    /// Push triggers wake the most recently waiting task through this; a trigger with no task
    /// waiting is kept as a permit, so none is lost between a check and a wait.
    wake: Notify,
    /// `batch_size`.
    batch: u8,
    /// Free slots a task waits for after a full batch (`refill_threshold`, or half the slots).
    refill: usize,
    /// `refill_threshold` was set: it stands even when messages are received ahead.
    refill_set: bool,
    covered: bool,
    /// Wake-ups so far (push triggers and the listener's own): a task asking to retire
    /// compares this with the count it saw before its last receive.
    wakes: std::sync::atomic::AtomicU64,
    /// How long handlers run, in milliseconds: a moving average (each run weighs 1/8).
    handler_ms: std::sync::atomic::AtomicU64,
}

#[cfg(test)]
mod flow_tests;

impl Flow {
    /// Records how long one handler ran.
    fn observe_run(&self, took: std::time::Duration) {
        let sample = u64::try_from(took.as_millis()).unwrap_or(u64::MAX).max(1);
        let _ = self.handler_ms.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |avg| {
                Some(if avg == 0 {
                    sample
                } else {
                    avg - avg / 8 + sample / 8
                })
            },
        );
    }

    /// How many messages may wait ahead of a slot (received, lease running): as many as can
    /// start well within the visibility timeout (a quarter of it) at the measured handler
    /// time, with every slot busy, at most a batch. None before a handler has run, and none
    /// when one run takes a quarter of the timeout or more: slow handlers never hold waiting
    /// messages, fast ones receive full batches at any concurrency.
    fn ahead_limit(&self, visibility: std::time::Duration) -> usize {
        let avg = self.handler_ms.load(std::sync::atomic::Ordering::Relaxed);
        if avg == 0 {
            return 0;
        }
        let budget = u64::try_from(visibility.as_millis() / 4).unwrap_or(u64::MAX);
        if avg >= budget {
            return 0;
        }
        let rounds = usize::try_from(budget / avg).unwrap_or(usize::MAX);
        rounds
            .saturating_mul(self.slots.capacity())
            .min(usize::from(self.batch))
    }

    /// How many messages a task waits to be able to take after a full batch: `refill_threshold`
    /// (or half the slots); while messages may wait ahead, two thirds of what slots and
    /// ahead room hold together, up to a batch, so receives stay large at low concurrency.
    fn refill_size(&self, ahead: usize) -> usize {
        if ahead == 0 || self.refill_set {
            return self.refill;
        }
        let whole = (self.slots.capacity() + ahead).min(usize::from(self.batch));
        self.refill.max(whole * 2 / 3)
    }

    /// How long a refill waits for slots to keep coming back before it takes what is free:
    /// half a typical handler run, between 100 ms and 2 s. Short handlers free slots often, so
    /// a short pause already says the rest run long; slow handlers free them seldom, and a
    /// longer pause keeps receives batched instead of shrinking them to one message each.
    fn refill_patience(&self) -> std::time::Duration {
        let avg = self.handler_ms.load(std::sync::atomic::Ordering::Relaxed);
        std::time::Duration::from_millis(avg / 2).clamp(MIN_REFILL_PATIENCE, MAX_REFILL_PATIENCE)
    }
}

/// The shortest and longest a refill waits for slots to keep coming back.
const MIN_REFILL_PATIENCE: std::time::Duration = std::time::Duration::from_millis(100);
const MAX_REFILL_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// The queue's store side: the queue and its poison queue, by name. Receives, renewals,
/// settles and depth probes go through it.
pub(crate) struct QueueIo {
    name: Arc<str>,
    queue: Arc<dyn Queue>,
    poison_queue: Arc<dyn Queue>,
    /// `storage.create_queues`: recreate the queue if it disappears while running.
    create_queues: bool,
}

/// What runs a message's handler and fills its [`crate::Context`].
pub(crate) struct Runner {
    stack: Stack,
    publishers: Publishers,
    bus: Option<crate::bus::BusHandle>,
    /// A token never cancelled: the timeout signal of handlers without a timeout.
    never: CancellationToken,
    /// Shapes or suppresses the pulses of this queue's jobs (`Worker::pulse_hook`).
    pulse_hook: Option<crate::bus::jobs::PulseHook>,
}

/// The listener's part of the worker's lifecycle: the worker's tokens and tracker, the
/// supervisor's inbox, and the supervisor's end.
pub(crate) struct Control {
    life: Lifecycle,
    events: mpsc::UnboundedSender<Event>,
    /// Fires when the supervisor ends (stop, or a panic): the listener no longer runs.
    supervisor_ended: CancellationToken,
}

impl Control {
    /// Tells the supervisor; fails only once it is gone (shutdown), when nobody listens.
    fn tell(&self, event: Event) {
        let _ = self.events.send(event);
    }
}

/// A queue's listener, in parts: each task and message run takes the parts it needs.
pub(crate) struct Shared {
    io: QueueIo,
    settings: QueueSettings,
    flow: Flow,
    stats: ListenerStats,
    control: Control,
    runner: Runner,
    /// Outward signals (the bus); `None`: nobody listens.
    hooks: Option<Arc<dyn ListenerHooks>>,
    /// The scaling policy the supervisor asks.
    policy: Arc<dyn crate::scaling::ScalingPolicy>,
    /// The host's callbacks.
    events: events::Events,
    /// The scaling rules and idle back-off now (a reload may change them; `settings` keeps
    /// the ones the listener started with).
    tuning: tuning::Tuning,
}

impl Wake for Shared {
    fn wake(&self, source: TriggerSource) {
        self.stats
            .triggers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.stats.triggers_by_source[source.index()]
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.flow.wake_tasks();
        self.control.tell(Event::Trigger);
    }
}

impl Flow {
    /// Wakes the most recent waiting task, not the oldest: one task stays hot while the others
    /// back off and retire. It may be sleeping, waiting for a trigger, or waiting for a refill
    /// (then it receives with any free slot). With no task waiting, the wake-up is kept for the
    /// next one that waits.
    fn wake_tasks(&self) {
        // Counted first: see `Flow::wakes`.
        self.wakes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_last();
    }
}

impl Shared {
    /// The settler of this queue's messages.
    fn settler(&self) -> settle::Settler<'_> {
        settle::Settler {
            io: &self.io,
            stats: &self.stats,
            fatal: &self.control.life.fatal,
            settings: &self.settings,
        }
    }

    /// Settles `message` as `action` says, and wakes the queue when it shows again.
    async fn settle(
        self: &Arc<Self>,
        message: &crate::store::ReceivedMessage,
        action: settle::Settle,
        lease_ends: tokio::time::Instant,
    ) {
        if let Some(after) = self.settler().apply(message, action, lease_ends).await {
            self.wake_after(after);
        }
    }

    /// Releases `message` (visible again after `after`, not a failure), and wakes the queue
    /// when it shows again.
    async fn release(
        self: &Arc<Self>,
        message: &crate::store::ReceivedMessage,
        after: std::time::Duration,
        why: &str,
    ) {
        if let Some(after) = self.settler().release(message, after, why).await {
            self.wake_after(after);
        }
    }

    /// A message this listener made visible again (retry, release) shows up after `after`:
    /// wake the queue then, as a trigger would. Nothing else may: a trigger-covered queue's
    /// tasks wait for triggers, and with `min_tasks = 0` none may be left.
    ///
    /// Never sooner than the back-off minimum: a handler answering "not now" with no delay
    /// must not spin its message through receive and release as fast as the store answers.
    /// The wait runs on the worker's tracker and ends at `stop`.
    fn wake_after(self: &Arc<Self>, after: std::time::Duration) {
        let after = after.max(self.tuning.now().idle_backoff.min);
        let shared = self.clone();
        self.control.life.tracker.spawn(async move {
            let stop = shared.control.life.stop.clone();
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(after) => {
                    shared.flow.wake_tasks();
                    shared.control.tell(Event::Visible);
                }
            }
        });
    }
}

/// A running listener for one queue.
#[derive(Clone)]
pub struct QueueListener {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for QueueListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueListener")
            .field("queue", &self.queue())
            .finish_non_exhaustive()
    }
}

impl QueueListener {
    /// Starts the queue's supervisor (which starts the first task) on the lifecycle's
    /// tracker, and registers the listener with `hub` for push triggers. `publishers` are the
    /// worker's, for every handler's `Context`.
    pub(crate) fn start(
        spec: ListenerSpec,
        publishers: Publishers,
        life: &Lifecycle,
        hub: &Hub,
    ) -> Self {
        let (events, inbox) = mpsc::unbounded_channel();
        let settings = spec.settings;
        let flow = Flow {
            slots: slots::Slots::new(settings.concurrency.as_usize()),
            wake: Notify::new(),
            batch: u8::try_from(settings.batch_size.get()).unwrap_or(crate::store::MAX_BATCH),
            refill: settings.refill_slots(),
            refill_set: settings.refill_threshold.is_some(),
            covered: spec.trigger_covered,
            wakes: std::sync::atomic::AtomicU64::new(0),
            handler_ms: std::sync::atomic::AtomicU64::new(0),
        };
        let name: Arc<str> = Arc::from(spec.queue.name());
        let shared = Arc::new(Shared {
            tuning: tuning::Tuning::new(tuning::Tuned {
                scaling: settings.scaling.clone(),
                idle_backoff: settings.idle_backoff,
            }),
            hooks: spec.hooks,
            policy: spec.policy,
            events: events::Events::new(name.clone(), spec.event_hooks),
            io: QueueIo {
                name,
                queue: spec.queue,
                poison_queue: spec.poison_queue,
                create_queues: spec.create_queues,
            },
            runner: Runner {
                stack: spec.stack,
                publishers,
                bus: spec.bus,
                never: CancellationToken::new(),
                pulse_hook: spec.pulse_hook,
            },
            flow,
            stats: ListenerStats::with_batches(spec.batch_stats),
            control: Control {
                life: life.clone(),
                events,
                supervisor_ended: CancellationToken::new(),
            },
            settings,
        });
        hub.register(&shared.io.name, shared.clone());
        let mut supervisor = Supervisor::new(shared.clone());
        // One task to start with, even with min_tasks = 0: its first receive finds out whether
        // work is waiting, and it retires on the back-off curve if not. Spawned here, not in
        // the supervisor, so the listener never looks idle before it has looked at the queue.
        let span = tracing::info_span!("listener", queue = %shared.io.name);
        // Inside the listener's span, as every later task: the span names the queue once for
        // all of them (a task's and a message's spans do not repeat it).
        span.in_scope(|| supervisor.spawn_task());
        // A guard, not a line after the await: a supervisor that panics also ends the listener.
        let ended = shared.control.supervisor_ended.clone().drop_guard();
        life.tracker.spawn(
            async move {
                let _ended = ended;
                supervisor.run(inbox).await;
            }
            .instrument(span),
        );
        let s = &shared.settings;
        info!(queue = %shared.io.name, min_tasks = s.scaling.min_tasks.get(), max_tasks = s.scaling.max_tasks.get(),
              batch_size = s.batch_size.get(), concurrency = s.concurrency.get(), refill = shared.flow.refill,
              trigger_covered = shared.flow.covered, "listener started");
        Self { shared }
    }

    /// The queue's counters and scaling state now.
    pub fn snapshot(&self) -> QueueSnapshot {
        self.shared.stats.snapshot(&self.shared.io.name)
    }

    /// The queue's name.
    pub fn queue(&self) -> &str {
        &self.shared.io.name
    }

    /// The listener's histograms (handler time, pickup latency, messages per receive).
    pub fn histograms(&self) -> Histograms {
        self.shared.stats.histograms.clone()
    }

    /// Whether the listener's supervisor still runs (it ends on stop, or by a panic).
    pub fn is_running(&self) -> bool {
        !self.shared.control.supervisor_ended.is_cancelled()
    }

    /// Applies reloaded rules: the scaling settings (`wake_on_publish` aside, which stays as
    /// started) and the idle back-off. The supervisor re-reads its probe intervals and caps
    /// the running tasks at the new `max_tasks`; the next decision and every task's next empty
    /// receive follow the new rules. The caller has validated them.
    pub(crate) fn retune(
        &self,
        scaling: crate::scaling::ScalingSettings,
        idle_backoff: crate::backoff::IdleBackoffSettings,
    ) {
        let scaling = crate::scaling::ScalingSettings {
            wake_on_publish: self.shared.settings.scaling.wake_on_publish,
            ..scaling
        };
        self.shared.tuning.set(tuning::Tuned {
            scaling,
            idle_backoff,
        });
        self.shared.control.tell(Event::Retuned);
    }

    /// Messages received and not yet settled.
    pub(crate) fn held(&self) -> u64 {
        self.shared
            .stats
            .held
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

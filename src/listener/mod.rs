//! One listener per queue: a supervisor that keeps as many dequeue tasks running as the
//! [`crate::scaling`] policy wants, and the tasks themselves, which receive batches, run each
//! message's handler within the queue's concurrency limit, and settle the message (delete,
//! retry, or poison).
//!
//! Tasks report to the supervisor over a channel (work found after idleness, full batches,
//! "my back-off reached its maximum: may I retire?"); the supervisor probes the depth sparingly
//! (only while busy, or when prompted, at most once per `depth_probe_interval`), decides, and
//! spawns tasks or grants retirements. A push trigger wakes the most recently sleeping task through a
//! `Notify` (which keeps the wake-up as a permit when no task is asleep yet, so none is lost
//! between a check and a sleep); waking one per trigger rather than all keeps a stream of
//! triggers from turning every sleeping task into an empty receive.
//!
//! Two tokens drive shutdown. `stop` ends receiving: a task finishes its receive in flight,
//! releases (visibility 0) the messages of its batch that have not started, and waits for the
//! ones that have. `abort` fires at the drain deadline: handlers still running are aborted and
//! their messages released, never deleted.

pub mod poison;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn, Instrument};

use crate::backoff::IdleBackoff;
use crate::config::QueueSettings;
use crate::handler::{
    Context, DispatchError, ErasedHandler, HandlerError, Heartbeat, JobStatus, Publishers,
};
use crate::scaling::{decide, Decision, Prompt, Signals};
use crate::store::{Queue, ReceivedMessage, StoreError, MAX_RECEIVE};
use crate::trigger::{Hub, Wake};
use poison::{PoisonEnvelope, PoisonReason};

/// Counters of one queue's listener. All counts are since start.
#[derive(Debug, Default)]
struct ListenerStats {
    active_tasks: AtomicU64,
    peak_tasks: AtomicU64,
    in_flight: AtomicU64,
    receive_calls: AtomicU64,
    empty_receives: AtomicU64,
    probe_calls: AtomicU64,
    received: AtomicU64,
    handled: AtomicU64,
    retried: AtomicU64,
    poisoned: AtomicU64,
    released: AtomicU64,
    lost_ownership: AtomicU64,
    store_errors: AtomicU64,
    triggers: AtomicU64,
    panics: AtomicU64,
    timeouts: AtomicU64,
    renewals: AtomicU64,
    pulses: AtomicU64,
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
    /// Messages made visible again without handling (shutdown).
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
    /// The last probed depth (visible messages), if any.
    pub depth: Option<u64>,
    /// Each running task's empty receives in a row.
    pub idle_streaks: Vec<u32>,
    /// The longest back-off sleep a task is in now.
    pub current_backoff: Duration,
    /// The last scaling decision that changed something, with its reason.
    pub last_decision: Option<String>,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What the supervisor knows beyond counters.
#[derive(Debug, Default)]
struct ScaleView {
    depth: Option<u64>,
    tasks: BTreeMap<u64, (u32, Duration)>,
    last_decision: Option<String>,
}

/// What tasks and triggers tell the supervisor.
enum Event {
    Batch {
        size: usize,
        after_idle: bool,
    },
    IdleAtMax {
        task: u64,
        reply: oneshot::Sender<bool>,
    },
    Trigger,
}

/// Everything a queue's dequeue tasks share.
pub(crate) struct Shared {
    queue: Arc<dyn Queue>,
    poison_queue: Arc<dyn Queue>,
    settings: QueueSettings,
    handler: Arc<dyn ErasedHandler>,
    publishers: Publishers,
    permits: Arc<Semaphore>,
    stats: ListenerStats,
    view: Mutex<ScaleView>,
    events: mpsc::UnboundedSender<Event>,
    wake: Notify,
    /// Tasks inside `run_batch`: each receives again as soon as its batch is done.
    batching: AtomicU64,
    stop: CancellationToken,
    abort: CancellationToken,
    fatal: Fatal,
    /// `storage.create_queues`: recreate the queue if it disappears while running.
    create_queues: bool,
    name: Arc<str>,
}

impl Wake for Shared {
    fn wake(&self) {
        bump(&self.stats.triggers);
        // A task in the middle of a batch receives again right after it, so it will see the
        // new work: waking a sleeper too would only add an empty receive, and would keep every
        // task young under a trickle. With none mid-batch, wake the most recent sleeper, not
        // the oldest, so one task stays hot while the others back off and retire.
        if self.batching.load(Ordering::SeqCst) == 0 {
            self.wake.notify_last();
        }
        // Fails only once the supervisor is gone (shutdown); nothing to wake then.
        let _ = self.events.send(Event::Trigger);
    }
}

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

    pub(crate) fn error(&self) -> Option<StoreError> {
        self.error.lock().ok().and_then(|e| e.clone())
    }
}

/// A running listener for one queue.
#[derive(Clone)]
pub struct QueueListener {
    shared: Arc<Shared>,
}

impl QueueListener {
    /// Starts the queue's supervisor (which starts the first task) on `tracker`, and registers
    /// the listener with `hub` for push triggers.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        queue: Arc<dyn Queue>,
        poison_queue: Arc<dyn Queue>,
        settings: QueueSettings,
        handler: Arc<dyn ErasedHandler>,
        publishers: Publishers,
        tracker: &TaskTracker,
        hub: &Hub,
        stop: CancellationToken,
        abort: CancellationToken,
        fatal: Fatal,
        create_queues: bool,
    ) -> Self {
        let (events, inbox) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            name: Arc::from(queue.name()),
            permits: Arc::new(Semaphore::new(settings.concurrency as usize)),
            queue,
            poison_queue,
            handler,
            publishers,
            stats: ListenerStats::default(),
            view: Mutex::default(),
            events,
            wake: Notify::new(),
            batching: AtomicU64::new(0),
            settings,
            stop,
            abort,
            fatal,
            create_queues,
        });
        hub.register(&shared.name, shared.clone());
        let mut supervisor = Supervisor {
            shared: shared.clone(),
            tracker: tracker.clone(),
            tasks: BTreeMap::new(),
            next_task: 0,
            last_up: None,
            last_down: None,
            last_probe: None,
            busy: false,
            full_since_probe: false,
        };
        // One task to start with, even with min_tasks = 0: its first receive finds out whether
        // work is waiting, and it retires on the back-off curve if not. Spawned here, not in
        // the supervisor, so the listener never looks idle before it has looked at the queue.
        supervisor.spawn_task();
        let span = tracing::info_span!("listener", queue = %shared.name);
        tracker.spawn(supervisor.run(inbox).instrument(span));
        let s = &shared.settings;
        info!(queue = %shared.name, min_tasks = s.scaling.min_tasks, max_tasks = s.scaling.max_tasks,
              batch_size = s.batch_size, concurrency = s.concurrency, "listener started");
        Self { shared }
    }

    /// The queue's counters and scaling state now.
    pub fn snapshot(&self) -> QueueSnapshot {
        let stats = &self.shared.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let view = self.shared.view.lock().expect("view mutex poisoned");
        QueueSnapshot {
            queue: self.shared.name.to_string(),
            active_tasks: get(&stats.active_tasks),
            peak_tasks: get(&stats.peak_tasks),
            in_flight: get(&stats.in_flight),
            receive_calls: get(&stats.receive_calls),
            empty_receives: get(&stats.empty_receives),
            probe_calls: get(&stats.probe_calls),
            received: get(&stats.received),
            handled: get(&stats.handled),
            retried: get(&stats.retried),
            poisoned: get(&stats.poisoned),
            released: get(&stats.released),
            lost_ownership: get(&stats.lost_ownership),
            store_errors: get(&stats.store_errors),
            triggers: get(&stats.triggers),
            panics: get(&stats.panics),
            timeouts: get(&stats.timeouts),
            renewals: get(&stats.renewals),
            pulses: get(&stats.pulses),
            depth: view.depth,
            idle_streaks: view.tasks.values().map(|(streak, _)| *streak).collect(),
            current_backoff: view
                .tasks
                .values()
                .map(|(_, d)| *d)
                .max()
                .unwrap_or_default(),
            last_decision: view.last_decision.clone(),
        }
    }
}

/// Spawns and retires one queue's dequeue tasks.
struct Supervisor {
    shared: Arc<Shared>,
    tracker: TaskTracker,
    tasks: BTreeMap<u64, CancellationToken>,
    next_task: u64,
    last_up: Option<Instant>,
    last_down: Option<Instant>,
    last_probe: Option<Instant>,
    /// A batch came back since the last probe: the queue is worth probing (as it is while
    /// handlers run).
    busy: bool,
    /// A full batch came back since the last probe.
    full_since_probe: bool,
}

impl Supervisor {
    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<Event>) {
        let scaling = self.shared.settings.scaling.clone();
        let mut probe = tokio::time::interval(scaling.depth_probe_interval);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut idle_probe = tokio::time::interval(
            scaling
                .idle_probe_interval
                .unwrap_or(Duration::from_secs(3600)),
        );
        idle_probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shared.stop.cancelled() => break,
                event = inbox.recv() => match event {
                    Some(event) => self.on_event(event).await,
                    None => break,
                },
                // The guard is checked inside: a `select!` precondition that is false when the
                // loop enters would keep the branch off until some other branch fires.
                _ = probe.tick() => {
                    if self.is_busy() {
                        self.busy = false;
                        let found = self.probe_depth().await;
                        self.scale(Prompt::Probe, found);
                        self.full_since_probe = false;
                    }
                }
                _ = idle_probe.tick(), if scaling.idle_probe_interval.is_some() => {
                    if self.tasks.is_empty() {
                        let found = self.probe_depth().await;
                        if found.depth.is_some_and(|d| d > 0) {
                            self.scale(Prompt::Probe, found);
                        }
                    }
                }
            }
        }
        // Tasks hold child tokens of `stop`: they are already stopping.
        debug!(queue = %self.shared.name, "supervisor stopped");
    }

    async fn on_event(&mut self, event: Event) {
        match event {
            Event::Batch { size, after_idle } => {
                self.busy = true;
                let prompt = if size >= usize::from(self.batch_size()) {
                    self.full_since_probe = true;
                    Prompt::FullBatch
                } else if after_idle {
                    Prompt::WorkAfterIdle
                } else {
                    return;
                };
                let found = self.probe_if_due().await;
                self.scale(prompt, found);
            }
            Event::Trigger => {
                // Start a task before any probe: pickup must not wait for a billable call.
                if self.tasks.is_empty() {
                    self.scale(Prompt::Trigger, Probe::default());
                }
                let found = self.probe_if_due().await;
                self.scale(Prompt::Trigger, found);
            }
            Event::IdleAtMax { task, reply } => {
                let d = decide(
                    &self.shared.settings.scaling,
                    &self.signals(Prompt::IdleAtMax, Probe::default()),
                );
                let retire = d.target < self.active() && self.tasks.contains_key(&task);
                if retire {
                    self.tasks.remove(&task);
                    self.last_down = Some(Instant::now());
                    self.record(d, Prompt::IdleAtMax);
                }
                // The task may have stopped meanwhile; then nobody listens.
                let _ = reply.send(retire);
            }
        }
    }

    fn is_busy(&self) -> bool {
        !self.tasks.is_empty()
            && (self.busy || self.shared.stats.in_flight.load(Ordering::Relaxed) > 0)
    }

    fn batch_size(&self) -> u8 {
        u8::try_from(self.shared.settings.batch_size).unwrap_or(MAX_RECEIVE)
    }

    fn active(&self) -> u32 {
        u32::try_from(self.tasks.len()).unwrap_or(u32::MAX)
    }

    fn signals(&self, prompt: Prompt, found: Probe) -> Signals {
        let now = Instant::now();
        Signals {
            prompt,
            active: self.active(),
            depth: found.depth,
            oldest_age: found.oldest_age,
            since_scale_up: self.last_up.map(|t| now - t),
            since_scale_down: self.last_down.map(|t| now - t),
            full_batch_since_probe: self.full_since_probe,
        }
    }

    /// Decides, then spawns what is missing or retires the most idle task (a shallow probe).
    /// Idle tasks at the back-off maximum retire through `Event::IdleAtMax` instead.
    fn scale(&mut self, prompt: Prompt, found: Probe) {
        // At least a batch's worth waiting: work for every task, sleeping ones included.
        if found
            .depth
            .is_some_and(|d| d >= u64::from(self.batch_size()))
        {
            self.shared.wake.notify_waiters();
        }
        let d = decide(&self.shared.settings.scaling, &self.signals(prompt, found));
        if d.target > self.active() {
            while self.active() < d.target {
                self.spawn_task();
            }
            self.last_up = Some(Instant::now());
            self.record(d, prompt);
        } else if d.target < self.active() {
            self.retire_most_idle();
            self.last_down = Some(Instant::now());
            self.record(d, prompt);
        }
    }

    /// Cancels the token of the task with the longest idle streak. It finishes any batch it
    /// is running (batches answer to `stop`, not to the task's own token) and then ends.
    fn retire_most_idle(&mut self) {
        let most_idle = {
            let view = self.shared.view.lock().expect("view mutex poisoned");
            self.tasks
                .keys()
                .max_by_key(|id| view.tasks.get(id).map_or(0, |(streak, _)| *streak))
                .copied()
        };
        if let Some(token) = most_idle.and_then(|id| self.tasks.remove(&id)) {
            token.cancel();
        }
    }

    fn record(&self, d: Decision, prompt: Prompt) {
        let text = format!("{} tasks: {}", d.target, d.reason);
        info!(queue = %self.shared.name, target = d.target, reason = %d.reason, prompt = ?prompt, "scaling decision");
        self.shared
            .view
            .lock()
            .expect("view mutex poisoned")
            .last_decision = Some(text);
    }

    fn spawn_task(&mut self) {
        let id = self.next_task;
        self.next_task += 1;
        let token = self.shared.stop.child_token();
        self.tasks.insert(id, token.clone());
        let stats = &self.shared.stats;
        let active = stats.active_tasks.fetch_add(1, Ordering::Relaxed) + 1;
        stats.peak_tasks.fetch_max(active, Ordering::Relaxed);
        let span = tracing::info_span!("dequeue", queue = %self.shared.name, task = id);
        self.tracker
            .spawn(dequeue_loop(self.shared.clone(), id, token).instrument(span));
    }

    async fn probe_if_due(&mut self) -> Probe {
        let interval = self.shared.settings.scaling.depth_probe_interval;
        let due = self.last_probe.is_none_or(|t| t.elapsed() >= interval);
        if due {
            self.probe_depth().await
        } else {
            Probe::default()
        }
    }

    /// The approximate depth, corrected by a peek when small: the approximate count includes
    /// messages in flight (invisible), which would otherwise read as waiting work. With an age
    /// rule, the oldest visible message's age too (from that peek, or a peek of one).
    async fn probe_depth(&mut self) -> Probe {
        self.last_probe = Some(Instant::now());
        let queue = &self.shared.queue;
        let stats = &self.shared.stats;
        let want_age = self
            .shared
            .settings
            .scaling
            .scale_up_when_older_than
            .is_some();
        bump(&stats.probe_calls);
        let result = async {
            let approximate = queue.approximate_depth().await?;
            let small = approximate <= u64::from(MAX_RECEIVE);
            if !small && !want_age {
                return Ok(Probe {
                    depth: Some(approximate),
                    oldest_age: None,
                });
            }
            bump(&stats.probe_calls);
            let peeked = queue.peek(if small { MAX_RECEIVE } else { 1 }).await?;
            let oldest_age = peeked
                .first()
                .and_then(|m| m.inserted_at)
                .map(|t| (crate::store::now_utc() - t).unsigned_abs());
            let depth = if small {
                peeked.len() as u64
            } else {
                approximate
            };
            Ok::<_, StoreError>(Probe {
                depth: Some(depth),
                oldest_age,
            })
        }
        .await;
        match result {
            Ok(probe) => {
                self.shared.view.lock().expect("view mutex poisoned").depth = probe.depth;
                probe
            }
            Err(e) => {
                bump(&stats.store_errors);
                warn!(queue = %self.shared.name, error = %e, "depth probe failed");
                Probe::default()
            }
        }
    }
}

/// What a depth probe found.
#[derive(Debug, Clone, Copy, Default)]
struct Probe {
    depth: Option<u64>,
    oldest_age: Option<Duration>,
}

/// Forgets a task's view entry and active count however it ends.
struct TaskGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for TaskGuard<'_> {
    fn drop(&mut self) {
        self.shared
            .stats
            .active_tasks
            .fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut view) = self.shared.view.lock() {
            view.tasks.remove(&self.id);
        }
    }
}

async fn dequeue_loop(shared: Arc<Shared>, id: u64, token: CancellationToken) {
    let _guard = TaskGuard {
        shared: &shared,
        id,
    };
    let mut backoff = IdleBackoff::new(shared.settings.idle_backoff);
    let max_sleep = shared.settings.idle_backoff.max;
    let batch_size = u8::try_from(shared.settings.batch_size).unwrap_or(MAX_RECEIVE);
    let mut first = true;
    while !token.is_cancelled() {
        // The receive is not raced against `stop`: a receive that completed on the service
        // but was dropped here would leave its messages invisible for the whole timeout.
        bump(&shared.stats.receive_calls);
        let received = shared
            .queue
            .receive(batch_size, shared.settings.visibility_timeout)
            .await;
        let batch = match received {
            Ok(batch) if !batch.is_empty() => batch,
            Ok(_) => {
                bump(&shared.stats.empty_receives);
                let delay = backoff.next_delay();
                set_view(&shared, id, backoff.streak(), delay);
                if delay >= max_sleep && may_retire(&shared, id).await {
                    debug!(queue = %shared.name, task = id, "idle task retired");
                    return;
                }
                sleep_until_woken(&token, &shared.wake, delay).await;
                first = false;
                continue;
            }
            Err(StoreError::QueueNotFound { .. }) if shared.create_queues => {
                // Deleted while we ran (or a service that lost its state): recreate it, with
                // its poison queue, as at start-up.
                bump(&shared.stats.store_errors);
                warn!(queue = %shared.name, "queue disappeared; recreating it");
                for q in [&shared.queue, &shared.poison_queue] {
                    if let Err(e) = q.create_if_missing().await {
                        warn!(queue = q.name(), error = %e, "cannot recreate the queue yet");
                    }
                }
                let delay = backoff.next_delay();
                sleep_until_woken(&token, &shared.wake, delay).await;
                continue;
            }
            Err(e @ (StoreError::Unauthorized { .. } | StoreError::QueueNotFound { .. })) => {
                bump(&shared.stats.store_errors);
                error!(queue = %shared.name, error = %e, "receive failed and no retry can fix it; stopping the worker");
                shared.fatal.raise(e);
                return;
            }
            Err(e) => {
                // Transient faults were already retried (bounded) by the store; keep the task
                // alive and try again on the idle curve.
                bump(&shared.stats.store_errors);
                let delay = backoff.next_delay();
                error!(queue = %shared.name, error = %e, retry_in = ?delay, "receive failed");
                sleep_until_woken(&token, &shared.wake, delay).await;
                continue;
            }
        };
        let after_idle = first || backoff.streak() > 0;
        first = false;
        backoff.reset();
        set_view(&shared, id, 0, Duration::ZERO);
        shared
            .stats
            .received
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let _ = shared.events.send(Event::Batch {
            size: batch.len(),
            after_idle,
        });
        shared.batching.fetch_add(1, Ordering::SeqCst);
        run_batch(&shared, batch).await;
        shared.batching.fetch_sub(1, Ordering::SeqCst);
    }
    debug!(queue = %shared.name, task = id, "dequeue task stopped");
}

fn set_view(shared: &Shared, id: u64, streak: u32, sleep: Duration) {
    if let Ok(mut view) = shared.view.lock() {
        view.tasks.insert(id, (streak, sleep));
    }
}

async fn may_retire(shared: &Shared, task: u64) -> bool {
    let (reply, answer) = oneshot::channel();
    if shared
        .events
        .send(Event::IdleAtMax { task, reply })
        .is_err()
    {
        return false;
    }
    answer.await.unwrap_or(false)
}

/// Sleeps out an idle back-off step unless stopped or woken by a trigger. A wake-up cuts the
/// sleep short but does not reset the curve: only finding work does. A task woken for a
/// message another task took keeps climbing towards the maximum (and retirement), instead of
/// being kept young by a trickle of triggers meant for someone else.
async fn sleep_until_woken(token: &CancellationToken, wake: &Notify, delay: Duration) {
    tokio::select! {
        _ = token.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
        _ = wake.notified() => {}
    }
}

/// Runs one batch: each message starts when a concurrency permit is free; on `stop` the
/// messages not yet started are released at once.
async fn run_batch(shared: &Arc<Shared>, batch: Vec<ReceivedMessage>) {
    let mut running = JoinSet::new();
    let mut pending = batch.into_iter();
    for message in pending.by_ref() {
        // A free slot is taken without waiting (the common case under light load); else wait
        // for one, unless the worker stops first.
        let permit = match shared.permits.clone().try_acquire_owned() {
            Ok(permit) if !shared.stop.is_cancelled() => Some(permit),
            _ => tokio::select! {
                biased;
                _ = shared.stop.cancelled() => None,
                permit = shared.permits.clone().acquire_owned() => permit.ok(),
            },
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

/// A handler's future, with a panic inside it turned into `Err(panic text)`.
struct CatchPanic(crate::handler::BoxFuture);

impl std::future::Future for CatchPanic {
    type Output = Result<Result<(), DispatchError>, String>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let future = &mut self.0;
        // After a panic the future is never polled again: `settle` stops at the first Ready.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(std::task::Poll::Ready(result)) => std::task::Poll::Ready(Ok(result)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(payload) => std::task::Poll::Ready(Err(panic_text(payload))),
        }
    }
}

/// What became of a handler run.
enum Outcome {
    Done(Result<(), DispatchError>),
    Panicked(String),
    TimedOut(Duration),
    Aborted,
}

/// The message's current pop receipt, renewed while its handler runs.
struct Lease {
    receipt: String,
    renewed_at: Instant,
    /// When the next renewal is due: half the timeout after the last one, or a second after a
    /// failed one.
    renew_at: Instant,
    /// A renewal found the message re-delivered: our receipt is dead.
    lost: bool,
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
    // Its own token only when a timeout may cancel this one handler; else the worker's.
    let cancellation = if shared.settings.handler_timeout.is_some() {
        shared.stop.child_token()
    } else {
        shared.stop.clone()
    };
    let heartbeat = Heartbeat::new(shared.settings.heartbeat.every);
    let ctx = Context {
        queue: shared.name.clone(),
        message_id: message.id.clone(),
        dequeue_count: message.dequeue_count,
        inserted_at: message.inserted_at,
        cancellation: cancellation.clone(),
        publishers: shared.publishers.clone(),
        heartbeat: heartbeat.clone(),
    };
    shared.stats.in_flight.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    // A panic in the handler is caught where it is polled and contained to this message.
    let handle = CatchPanic(shared.handler.clone().call(bytes, ctx));
    let mut lease = Lease {
        receipt: message.pop_receipt.clone(),
        renewed_at: started,
        renew_at: started + shared.settings.visibility_timeout / 2,
        lost: false,
    };
    let outcome = watch_handler(
        &shared,
        &message,
        handle,
        &cancellation,
        &heartbeat,
        &mut lease,
        started,
    )
    .await;
    shared.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    log_job_end(&shared, &message, &heartbeat, started, &outcome);
    // Settle with the newest pop receipt: the one the last renewal returned.
    let message = ReceivedMessage {
        pop_receipt: lease.receipt,
        ..message
    };
    if lease.lost {
        bump(&shared.stats.lost_ownership);
        warn!(queue = %shared.name, message_id = %message.id,
              "message was re-delivered while its handler ran; it may be handled twice");
        return;
    }
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
            bump(&shared.stats.panics);
            error!(queue = %shared.name, message_id = %message.id, panic = %text, "handler panicked");
            retry(&shared, &message, None, format!("handler panicked: {text}")).await
        }
        Outcome::TimedOut(limit) => {
            bump(&shared.stats.timeouts);
            let why = format!(
                "handler timed out after {}",
                humantime::format_duration(limit)
            );
            retry(&shared, &message, None, why).await
        }
        Outcome::Aborted => release(&shared, &message, "drain deadline passed").await,
    }
}

/// Waits for the handler while keeping its message invisible: renews the visibility at half
/// the timeout and on every heartbeat pulse, logs the pulses, and enforces the handler timeout
/// (cancel, then abort after the grace) and the drain deadline (abort).
async fn watch_handler(
    shared: &Shared,
    message: &ReceivedMessage,
    mut handle: CatchPanic,
    cancellation: &CancellationToken,
    heartbeat: &Heartbeat,
    lease: &mut Lease,
    started: Instant,
) -> Outcome {
    let settings = &shared.settings;
    let far = started + Duration::from_secs(100 * 365 * 24 * 3600);
    let mut timeout_at = settings.handler_timeout.map_or(far, |t| started + t);
    let mut timed_out = false;
    let pulse_every = settings.heartbeat.interval;
    let mut next_pulse = pulse_every.map_or(far, |p| started + p);
    loop {
        tokio::select! {
            // The handler first: one that finishes at once never arms a timer.
            biased;
            joined = &mut handle => {
                return match joined {
                    _ if timed_out => Outcome::TimedOut(settings.handler_timeout.unwrap_or_default()),
                    Ok(result) => Outcome::Done(result),
                    Err(text) => Outcome::Panicked(text),
                };
            }
            // Dropping the handler's future cancels it at its current await point.
            _ = shared.abort.cancelled() => return Outcome::Aborted,
            _ = tokio::time::sleep_until(timeout_at), if settings.handler_timeout.is_some() => {
                let limit = settings.handler_timeout.unwrap_or_default();
                if timed_out {
                    warn!(queue = %shared.name, message_id = %message.id,
                          grace = ?settings.handler_timeout_grace, "handler ignored its cancellation; aborted");
                    return Outcome::TimedOut(limit);
                }
                timed_out = true;
                warn!(queue = %shared.name, message_id = %message.id, timeout = ?limit,
                      "handler timed out; cancelling it");
                cancellation.cancel();
                timeout_at = Instant::now() + settings.handler_timeout_grace;
            }
            _ = tokio::time::sleep_until(lease.renew_at), if !lease.lost => {
                renew(shared, message, lease, "half the visibility timeout").await;
            }
            _ = tokio::time::sleep_until(next_pulse), if pulse_every.is_some() => {
                next_pulse += pulse_every.unwrap_or_default();
                pulse(shared, message, lease, heartbeat, "time", started).await;
            }
            _ = heartbeat.count_pulse() => {
                pulse(shared, message, lease, heartbeat, "count", started).await;
            }
        }
    }
}

/// Logs a heartbeat pulse and renews the visibility (at most once a second).
async fn pulse(
    shared: &Shared,
    message: &ReceivedMessage,
    lease: &mut Lease,
    heartbeat: &Heartbeat,
    kind: &str,
    started: Instant,
) {
    bump(&shared.stats.pulses);
    info!(queue = %shared.name, message_id = %message.id, kind, count = heartbeat.count(),
          elapsed_ms = started.elapsed().as_millis() as u64, "job pulse");
    if !lease.lost && lease.renewed_at.elapsed() >= Duration::from_secs(1) {
        renew(shared, message, lease, kind).await;
    }
}

/// Extends the message's visibility by `visibility_timeout` and keeps the new pop receipt.
/// Transient errors were already retried by the store; if they persist, the next attempt
/// comes a second later (the lease is not given up while the handler runs). A message
/// re-delivered meanwhile is ownership lost: no more renewals.
async fn renew(shared: &Shared, message: &ReceivedMessage, lease: &mut Lease, why: &str) {
    let visibility = shared.settings.visibility_timeout;
    match shared
        .queue
        .update(&message.id, &lease.receipt, visibility, None)
        .await
    {
        Ok(updated) => {
            bump(&shared.stats.renewals);
            lease.receipt = updated.pop_receipt;
            lease.renewed_at = Instant::now();
            lease.renew_at = lease.renewed_at + visibility / 2;
            debug!(queue = %shared.name, message_id = %message.id, why, ?visibility, "visibility renewed");
        }
        Err(StoreError::MessageNotFound { .. }) => lease.lost = true,
        Err(e) => {
            bump(&shared.stats.store_errors);
            warn!(queue = %shared.name, message_id = %message.id, error = %e,
                  "visibility renewal failed; trying again in 1s");
            lease.renew_at = Instant::now() + Duration::from_secs(1);
        }
    }
}

/// Logs the end of a job with the status its handler reported: at info when it was a long
/// job (it pulsed) or said how it went, at debug otherwise.
fn log_job_end(
    shared: &Shared,
    message: &ReceivedMessage,
    heartbeat: &Heartbeat,
    started: Instant,
    outcome: &Outcome,
) {
    let (status, note) = heartbeat.status();
    let result = match outcome {
        Outcome::Done(Ok(())) => "ok",
        Outcome::Done(Err(_)) => "error",
        Outcome::Panicked(_) => "panic",
        Outcome::TimedOut(_) => "timeout",
        Outcome::Aborted => "aborted",
    };
    let elapsed_ms = started.elapsed().as_millis() as u64;
    if status != JobStatus::Unknown
        || heartbeat.count() > 0
        || shared.settings.heartbeat.interval.is_some()
    {
        info!(queue = %shared.name, message_id = %message.id, status = status.as_str(), note,
              result, count = heartbeat.count(), elapsed_ms, "job ended");
    } else {
        debug!(queue = %shared.name, message_id = %message.id, status = status.as_str(), result,
               elapsed_ms, "job ended");
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

//! The supervisor of one queue's dequeue tasks: asks the [`crate::scaling`] policy how many to
//! run, spawns and retires them, and replaces a task that ended unexpectedly.
//!
//! Tasks report over a channel (work found after idleness, full batches, "my back-off reached
//! its maximum: may I retire?"), and so do triggers. The supervisor probes the depth sparingly
//! (only while busy, or when prompted, at most once per `depth_probe_interval`) and decides.
//! Every task runs in the supervisor's `JoinSet` (and the worker's tracker, for the drain), so
//! its end is seen: retired and stopping tasks end as expected; any other end (a panic outside
//! a handler, a return nobody asked for) is logged with the task's name and how it ended, and
//! the task is replaced, so a queue never silently stops being consumed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

use super::stats::bump;
use super::task::{self, Event};
use super::{dispatch, Shared};
use crate::scaling::{Decision, Prompt, Signals};
use crate::store::{StoreError, MAX_BATCH};

/// What a depth probe found.
#[derive(Debug, Clone, Copy, Default)]
struct Probe {
    depth: Option<u64>,
    oldest_age: Option<Duration>,
}

/// A task ending unexpectedly this soon after it started counts towards the restart budget.
const QUICK_FAILURE: Duration = Duration::from_secs(10);
/// Tasks in a row that may end unexpectedly within [`QUICK_FAILURE`] of starting before the
/// worker stops with a fatal error (exit code 3): with the back-off below, about 50 s of a
/// queue that cannot be consumed.
const RESTART_BUDGET: u32 = 10;
/// The first replacement's delay; it doubles with each quick failure in a row, up to
/// [`MAX_RESTART_DELAY`].
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(100);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);

/// The restart policy: a replacement waits longer after each task in a row that failed right
/// after it started, and past [`RESTART_BUDGET`] of them there is no replacement (a restart
/// loop would burn a core and report nothing).
#[derive(Debug, Default)]
struct Restarts {
    quick_in_a_row: u32,
}

impl Restarts {
    /// A task ended unexpectedly; it had started at `started`. How long before its replacement
    /// starts, or `None` when the budget is spent.
    fn failed(&mut self, started: Option<Instant>) -> Option<Duration> {
        let quick = started.is_none_or(|t| t.elapsed() < QUICK_FAILURE);
        self.quick_in_a_row = if quick { self.quick_in_a_row + 1 } else { 1 };
        if self.quick_in_a_row >= RESTART_BUDGET {
            return None;
        }
        let doublings = self.quick_in_a_row.saturating_sub(1).min(20);
        Some((FIRST_RESTART_DELAY * 2u32.pow(doublings)).min(MAX_RESTART_DELAY))
    }
}

/// The queue's dequeue tasks: who runs, since when, and how to find a task by its tokio id.
#[derive(Debug, Default)]
struct Roster {
    /// Live tasks by id, with the token that retires each.
    tasks: BTreeMap<u64, CancellationToken>,
    /// Every task that has not ended yet, retired ones included.
    running: JoinSet<u64>,
    /// When each live task started (or will, after its back-off).
    started: HashMap<u64, Instant>,
    /// Tasks that ended unexpectedly right after they started, in a row.
    restarts: Restarts,
    ids: HashMap<tokio::task::Id, u64>,
    next_task: u64,
}

impl Roster {
    fn active(&self) -> u32 {
        u32::try_from(self.tasks.len()).unwrap_or(u32::MAX)
    }
}

/// What the scaling policy hears beyond the task count: when the supervisor last scaled and
/// probed, and what the tasks said since.
#[derive(Debug, Default)]
struct Pace {
    last_up: Option<Instant>,
    last_down: Option<Instant>,
    last_probe: Option<Instant>,
    /// A batch came back since the last probe: the queue is worth probing.
    busy: bool,
    /// A full batch came back since the last probe.
    full_since_probe: bool,
    /// Triggers since the last batch came back.
    triggers_since_batch: u32,
}

impl Pace {
    /// The policy's signals with `active` tasks after `prompt` and the probe `found`.
    fn signals(&self, prompt: Prompt, active: u32, found: Probe) -> Signals {
        let now = Instant::now();
        Signals {
            prompt,
            active,
            depth: found.depth,
            oldest_age: found.oldest_age,
            since_scale_up: self.last_up.map(|t| now - t),
            since_scale_down: self.last_down.map(|t| now - t),
            full_batch_since_probe: self.full_since_probe,
        }
    }
}

/// Spawns, retires and replaces one queue's dequeue tasks.
pub(super) struct Supervisor {
    shared: Arc<Shared>,
    roster: Roster,
    pace: Pace,
}

impl Supervisor {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            roster: Roster::default(),
            pace: Pace::default(),
        }
    }

    pub(super) async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<Event>) {
        let mut scaling = self.shared.tuning.now();
        let (mut probe, mut idle_probe) = probe_timers(&scaling.scaling, false);
        let stop = self.shared.control.life.stop.clone();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                event = inbox.recv() => match event {
                    Some(Event::Retuned) => {
                        // The probe intervals start over from now, at the new periods (no
                        // probe at once: a reload is no reason to pay a call).
                        scaling = self.shared.tuning.now();
                        (probe, idle_probe) = probe_timers(&scaling.scaling, true);
                        self.retuned();
                    }
                    Some(event) => self.on_event(event).await,
                    None => break,
                },
                Some(ended) = self.roster.running.join_next_with_id() => self.on_task_end(ended),
                // The guard is checked inside: a `select!` precondition that is false when the
                // loop enters would keep the branch off until some other branch fires.
                _ = probe.tick() => {
                    if self.is_busy() {
                        self.pace.busy = false;
                        let found = self.probe_depth().await;
                        self.scale(Prompt::Probe, found);
                        self.pace.full_since_probe = false;
                    }
                }
                _ = idle_probe.tick(), if scaling.scaling.idle_probe_interval.is_some() => {
                    if self.roster.tasks.is_empty() {
                        let found = self.probe_depth().await;
                        if found.depth.is_some_and(|d| d > 0) {
                            self.scale(Prompt::Probe, found);
                        }
                    }
                }
            }
        }
        // Tasks hold child tokens of `stop`: they are already stopping. Dropping the JoinSet
        // would abort them mid-receive; the worker's tracker waits for them instead.
        self.roster.running.detach_all();
        debug!(queue = %self.shared.io.name, "supervisor stopped");
    }

    async fn on_event(&mut self, event: Event) {
        match event {
            Event::Batch {
                full,
                filled,
                after_idle,
            } => {
                // Worth probing: the queue may be deeper than the receive could take, or
                // messages may age (several tasks are probed anyway: see `is_busy`). A single
                // task draining a trickle is neither; probing it would bill each message.
                let age_rule = self
                    .shared
                    .tuning
                    .now()
                    .scaling
                    .scale_up_when_older_than
                    .is_some();
                if full || filled || age_rule {
                    self.pace.busy = true;
                }
                self.pace.triggers_since_batch = 0;
                let prompt = if full {
                    self.pace.full_since_probe = true;
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
                self.pace.triggers_since_batch += 1;
                if self.roster.tasks.is_empty() {
                    // From zero: start a task before any probe (pickup must not wait for a
                    // billable call), then probe, so a burst that woke the queue scales it.
                    self.scale(Prompt::Trigger, Probe::default());
                } else if self.pace.triggers_since_batch < 2 {
                    // One trigger is one message, and the task it woke is about to receive it:
                    // probing for it would bill a sparse trickle twice more per message.
                    return;
                }
                // Triggers piling up faster than batches come back: see how deep it is.
                let found = self.probe_if_due().await;
                self.scale(Prompt::Trigger, found);
            }
            // Handled in `run`, which owns the probe timers.
            Event::Retuned => self.retuned(),
            Event::Visible => {
                // No probe: the message is known; a task must be there to receive it.
                if self.roster.tasks.is_empty() {
                    self.scale(Prompt::Trigger, Probe::default());
                }
            }
            Event::IdleAtMax {
                task,
                seen_wakes,
                reply,
            } => {
                // A wake-up since the task's last receive may be for work it has not seen:
                // keep it, so that wake-up is never lost with the task that would answer it.
                let triggered = self.shared.flow.wakes.load(Ordering::SeqCst) > seen_wakes;
                let d = self.decide(Prompt::IdleAtMax, Probe::default());
                let from = self.active();
                let retire = !triggered && d.target < from && self.roster.tasks.contains_key(&task);
                if retire {
                    self.roster.tasks.remove(&task);
                    self.pace.last_down = Some(Instant::now());
                    self.record(d, Prompt::IdleAtMax, from);
                }
                // The task may have stopped meanwhile; then nobody listens.
                let _ = reply.send(retire);
            }
        }
    }

    /// A task ended. Retired tasks, and all tasks once the worker stops or fails, end as
    /// expected; any other end is a fault: log it by name and start a replacement.
    fn on_task_end(&mut self, ended: Result<(tokio::task::Id, u64), JoinError>) {
        let (tokio_id, failure) = match ended {
            Ok((tokio_id, _)) => (tokio_id, None),
            Err(e) => (e.id(), Some(e)),
        };
        let Some(id) = self.roster.ids.remove(&tokio_id) else {
            return;
        };
        let started = self.roster.started.remove(&id);
        let life = &self.shared.control.life;
        if !self.roster.tasks.contains_key(&id)
            || life.stop.is_cancelled()
            || life.fatal.is_raised()
        {
            return;
        }
        self.roster.tasks.remove(&id);
        let how = match failure {
            None => "returned without being retired".to_string(),
            Some(e) if e.is_panic() => {
                format!("panicked: {}", dispatch::panic_text(e.into_panic()))
            }
            Some(e) => format!("was cancelled: {e}"),
        };
        let task = format!("{}#{id}", self.shared.io.name);
        let Some(delay) = self.roster.restarts.failed(started) else {
            error!(queue = %self.shared.io.name, task, how, restarts = RESTART_BUDGET,
                   "dequeue tasks keep failing right after they start; stopping the worker");
            life.fatal.raise(StoreError::Unconsumable {
                queue: self.shared.io.name.to_string(),
                detail: format!(
                    "{RESTART_BUDGET} dequeue tasks in a row ended within {QUICK_FAILURE:?} of                      starting; the last {how}"
                ),
            });
            return;
        };
        bump(&self.shared.stats.task_restarts);
        error!(queue = %self.shared.io.name, task, how, restart_in = ?delay,
               "dequeue task ended unexpectedly; starting a replacement");
        self.spawn_task_after(delay);
    }

    /// A batch came back since the last probe, or several tasks run (the probe says whether
    /// they are all still needed: their own empty receives cost more than it does). Handlers
    /// merely running under one task are no reason: a long job would be probed every interval
    /// for nothing.
    fn is_busy(&self) -> bool {
        !self.roster.tasks.is_empty() && (self.pace.busy || self.roster.tasks.len() > 1)
    }

    fn batch_size(&self) -> u8 {
        self.shared.flow.batch
    }

    fn active(&self) -> u32 {
        self.roster.active()
    }

    fn signals(&self, prompt: Prompt, found: Probe) -> Signals {
        self.pace.signals(prompt, self.active(), found)
    }

    /// Decides, then spawns what is missing or retires the most idle task (a shallow probe).
    /// Idle tasks at the back-off maximum retire through `Event::IdleAtMax` instead.
    fn scale(&mut self, prompt: Prompt, found: Probe) {
        // At least a batch's worth waiting: work for every task, sleeping ones included.
        if found
            .depth
            .is_some_and(|d| d >= u64::from(self.batch_size()))
        {
            self.shared.flow.wake.notify_waiters();
        }
        let d = self.decide(prompt, found);
        let from = self.active();
        if d.target > from {
            while self.active() < d.target {
                self.spawn_task();
            }
            self.pace.last_up = Some(Instant::now());
            self.record(d, prompt, from);
        } else if d.target < from {
            // One at a time, whatever the policy asked: the most idle task retires.
            self.retire_most_idle();
            self.pace.last_down = Some(Instant::now());
            self.record(d, prompt, from);
        }
    }

    /// The queue's policy's decision on the signals now, within the listener's bounds
    /// (`max_tasks`, the `min_tasks` floor).
    fn decide(&self, prompt: Prompt, found: Probe) -> Decision {
        let tuned = self.shared.tuning.now();
        let settings = &tuned.scaling;
        let said = self
            .shared
            .policy
            .decide(settings, &self.signals(prompt, found));
        crate::scaling::bounded(settings, said)
    }

    /// The rules were reloaded: bring the running tasks within the new `max_tasks` (all the
    /// excess retires at once, the most idle first) and `min_tasks` (a task starts). Anything
    /// else waits for the next decision, which reads the new rules.
    fn retuned(&mut self) {
        let tuned = self.shared.tuning.now();
        info!(queue = %self.shared.io.name, max_tasks = tuned.scaling.max_tasks.get(),
              min_tasks = tuned.scaling.min_tasks.get(), "scaling rules reloaded");
        let from = self.active();
        let d = self.decide(Prompt::Reload, Probe::default());
        if d.target < from {
            while self.active() > d.target {
                self.retire_most_idle();
            }
            self.pace.last_down = Some(Instant::now());
            let d = Decision {
                reason: crate::scaling::Reason::AtMax,
                ..d
            };
            self.record(d, Prompt::Reload, from);
        } else if d.target > from {
            while self.active() < d.target {
                self.spawn_task();
            }
            self.pace.last_up = Some(Instant::now());
            let d = Decision {
                reason: crate::scaling::Reason::KeepLast,
                ..d
            };
            self.record(d, Prompt::Reload, from);
        }
    }

    /// Cancels the token of the task with the longest idle streak. Its messages run on (they
    /// answer to `stop` and `abort`, not to the task's token); the task ends at its next wait.
    fn retire_most_idle(&mut self) {
        let most_idle = self.shared.stats.most_idle(self.roster.tasks.keys());
        if let Some(token) = most_idle.and_then(|id| self.roster.tasks.remove(&id)) {
            token.cancel();
        }
    }

    /// Logs and shows a change of the task count from `from`, and tells the host.
    fn record(&self, d: Decision, prompt: Prompt, from: u32) {
        let to = self.active();
        self.shared.events.scaled(from, to, d.reason, prompt);
        let text = format!("{} tasks: {}", d.target, d.reason);
        info!(queue = %self.shared.io.name, target = d.target, reason = %d.reason, prompt = ?prompt, "scaling decision");
        self.shared.stats.set_decision(text);
    }

    pub(super) fn spawn_task(&mut self) {
        self.spawn_task_after(Duration::ZERO);
    }

    /// Starts a dequeue task after `delay` (a replacement's back-off; a stop ends the wait).
    fn spawn_task_after(&mut self, delay: Duration) {
        let id = self.roster.next_task;
        self.roster.next_task += 1;
        let token = self.shared.control.life.stop.child_token();
        self.roster.tasks.insert(id, token.clone());
        let stats = &self.shared.stats;
        let active = stats.active_tasks.fetch_add(1, Ordering::Relaxed) + 1;
        stats.peak_tasks.fetch_max(active, Ordering::Relaxed);
        // A child of the listener's span, which names the queue.
        let span = tracing::info_span!("dequeue", task = id);
        self.roster.started.insert(id, Instant::now() + delay);
        let shared = self.shared.clone();
        let run = self.shared.control.life.tracker.track_future(
            async move {
                if !delay.is_zero() {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                task::dequeue_loop(shared, id, token).await;
            }
            .instrument(span),
        );
        let handle = self.roster.running.spawn(async move {
            run.await;
            id
        });
        self.roster.ids.insert(handle.id(), id);
    }

    async fn probe_if_due(&mut self) -> Probe {
        let interval = self.shared.tuning.now().scaling.depth_probe_interval;
        let due = self.pace.last_probe.is_none_or(|t| t.elapsed() >= interval);
        if due {
            self.probe_depth().await
        } else {
            Probe::default()
        }
    }

    /// The waiting work: the approximate count less the messages this replica holds (received,
    /// not settled), corrected by a peek when that leaves 32 or less. The approximate count
    /// includes every message in flight (invisible), which would otherwise read as waiting
    /// work: this replica's own are subtracted exactly; other replicas' only a peek can see
    /// past, and a peek shows at most 32. With an age rule, the oldest visible message's age
    /// too (from that peek, or a peek of one).
    async fn probe_depth(&mut self) -> Probe {
        self.pace.last_probe = Some(Instant::now());
        let queue = &self.shared.io.queue;
        let stats = &self.shared.stats;
        let want_age = self
            .shared
            .tuning
            .now()
            .scaling
            .scale_up_when_older_than
            .is_some();
        bump(&stats.probe_calls);
        let result = async {
            let approximate = queue.approximate_depth().await?;
            // Read after the count: a message settled meanwhile then errs towards more work,
            // never towards less.
            let held = stats.held.load(Ordering::Relaxed);
            let waiting = approximate.saturating_sub(held);
            let small = waiting <= u64::from(MAX_BATCH);
            if !small && !want_age {
                return Ok(Probe {
                    depth: Some(waiting),
                    oldest_age: None,
                });
            }
            bump(&stats.probe_calls);
            let peeked = queue.peek(if small { MAX_BATCH } else { 1 }).await?;
            let oldest_age = peeked
                .first()
                .and_then(|m| m.inserted_at)
                .map(|t| (crate::store::now_utc() - t).unsigned_abs());
            let depth = if small { peeked.len() as u64 } else { waiting };
            Ok::<_, StoreError>(Probe {
                depth: Some(depth),
                oldest_age,
            })
        }
        .await;
        match result {
            Ok(probe) => {
                self.shared.stats.set_depth(probe.depth);
                probe
            }
            Err(e) => {
                bump(&stats.store_errors);
                warn!(queue = %self.shared.io.name, error = %e, "depth probe failed");
                Probe::default()
            }
        }
    }
}

/// The busy-probe and idle-probe timers for `scaling` (the idle one never fires without an
/// `idle_probe_interval`: its branch is off). The first ticks are at once, or one period from
/// now when `later`.
fn probe_timers(
    scaling: &crate::scaling::ScalingSettings,
    later: bool,
) -> (tokio::time::Interval, tokio::time::Interval) {
    let timer = |period: Duration| {
        let first = if later {
            Instant::now() + period
        } else {
            Instant::now()
        };
        let mut timer = tokio::time::interval_at(first, period);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer
    };
    let idle = scaling
        .idle_probe_interval
        .unwrap_or(Duration::from_secs(3600));
    (timer(scaling.depth_probe_interval), timer(idle))
}

#[cfg(test)]
#[path = "supervisor_tests.rs"]
mod tests;

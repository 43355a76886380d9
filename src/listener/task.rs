//! A dequeue task: the receive loop and its flow control.
//!
//! Each turn: wait (as the last receive said), take concurrency slots (and, once handler runs
//! are measured, room to receive ahead of them: see `Flow::ahead_limit`), receive that many
//! messages, and spawn each one with its slot or its ahead ticket. The task never waits for
//! the messages it spawned; it is ready to receive again as soon as it can take a refill.
//!
//! What the last receive said decides the wait:
//! - a full batch (as many as asked): the queue has more. Receive again once a refill can be
//!   taken (`refill_threshold`, or more while receiving ahead: fewer, larger receives), or
//!   with what is free once no slot has come back for a while (half a typical handler run,
//!   100 ms to 2 s: the rest run long), or at once with any free slot when a trigger arrives
//!   meanwhile;
//! - a short batch: the queue was just drained. A queue covered by push triggers waits for the
//!   next trigger (for at most the back-off maximum, as a safety net; at `min_tasks = 0` it
//!   retires then instead); others sleep the back-off minimum first;
//! - nothing: sleep on the idle back-off curve; at its maximum, ask the supervisor to retire.
//!
//! Every sleep ends early on a trigger. With `batch_window`, a task woken by a trigger waits
//! up to that long for more arrivals before it receives.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn, Instrument};

use super::dispatch::Start;
use super::slots::{Ahead, Held};
use super::stats::bump;
use super::stats::ListenerStats;
use super::{dispatch, Fatal, Flow, QueueIo, Shared};
use crate::backoff::IdleBackoff;
use crate::config::IdleBackoffSettings;
use crate::store::StoreError;

/// What tasks (and triggers, and messages made visible again) tell the supervisor. It lives
/// here, beside its main sender, so the supervisor depends on the task and not back.
pub(super) enum Event {
    /// A receive brought messages.
    Batch {
        /// A whole `batch_size` came back: the queue may hold more than the tasks take.
        full: bool,
        /// As many came back as the task asked for (its free slots may have limited the ask).
        filled: bool,
        /// The task's receives before this one were empty (or this was its first).
        after_idle: bool,
    },
    /// A task's back-off reached its maximum; it asks to retire.
    IdleAtMax {
        task: u64,
        /// The wake-up count before the task's last receive.
        seen_wakes: u64,
        reply: oneshot::Sender<bool>,
    },
    /// A push trigger arrived.
    Trigger,
    /// A message this listener retried or released is visible again.
    Visible,
    /// A reload changed the scaling rules or the idle back-off.
    Retuned,
}

/// How the task waits before its next receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Receive as soon as one slot is free.
    Now,
    /// The last batch was full: receive once `refill_threshold` slots are free.
    Refill,
    /// Sleep this long (idle back-off), unless a trigger comes first.
    Sleep(Duration),
    /// The last batch drained a trigger-covered queue: wait for a trigger (at most the
    /// back-off maximum).
    AwaitTrigger,
}

/// How a sleep ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Woke {
    Trigger,
    Timer,
    Stopped,
}

/// Forgets a task's view entry and active count however it ends (a panic included).
struct TaskGuard<'a> {
    stats: &'a ListenerStats,
    id: u64,
}

impl Drop for TaskGuard<'_> {
    fn drop(&mut self) {
        self.stats.active_tasks.fetch_sub(1, Ordering::Relaxed);
        self.stats.forget_task(self.id);
    }
}

/// What a receive came to, as far as the next wait is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Received {
    /// Nothing: the queue looked empty.
    Nothing,
    /// The call failed (and the task goes on).
    Failed,
    /// Messages; `filled`: as many as the task asked for.
    Messages { filled: bool },
}

/// What a task does after a receive, before the idle curve turns it into a sleep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Receive again once a refill can be taken: the queue may hold more.
    Refill,
    /// Wait for a trigger (at most the back-off maximum): every message comes with one.
    AwaitTrigger,
    /// Sleep the back-off minimum: the queue was just drained.
    Pause,
    /// Sleep the idle curve's next step; at its maximum, ask to retire when `retire`.
    Climb { retire: bool },
    /// Sleep the curve's maximum and ask to retire: a wait for a trigger ran out and the
    /// receive after it found nothing, or a trigger-covered queue was found empty.
    Rest,
}

/// The rule that picks a task's next wait. `quiet`: the task's last wait for a trigger ran
/// out; `covered`: every message of the queue comes with its own trigger.
fn then(received: Received, quiet: bool, covered: bool) -> Then {
    match received {
        // Nothing there, and every message of a covered queue brings its own trigger: climbing
        // the idle curve would only repeat this receive (a start-up or a bus reconnect wakes
        // every replica once; one receive each is what finds what was missed).
        Received::Nothing if quiet || covered => Then::Rest,
        Received::Nothing => Then::Climb { retire: true },
        // A failing store is no reason to retire: the task is needed once it answers again.
        Received::Failed => Then::Climb { retire: false },
        Received::Messages { filled: true } => Then::Refill,
        Received::Messages { filled: false } if covered => Then::AwaitTrigger,
        Received::Messages { filled: false } => Then::Pause,
    }
}

/// The receive loop of task `id`, until `token` (stop, or this task's retirement) fires or the
/// supervisor lets it retire.
pub(super) async fn dequeue_loop(shared: Arc<Shared>, id: u64, token: CancellationToken) {
    let (io, flow, stats) = (&shared.io, &shared.flow, &shared.stats);
    let _guard = TaskGuard { stats, id };
    let settings = &shared.settings;
    let mut backoff = IdleBackoff::new(shared.tuning.now().idle_backoff);
    let mut next = Next::Now;
    // The first receive counts as "after idleness": work found then is news to the scaler.
    let mut after_idle = true;
    // A wait for a trigger ran out: the queue is quiet, so an empty receive now goes straight
    // to the back-off maximum.
    let mut quiet = false;
    // The wake-up count before the last receive: wake-ups counted by then were answered by it.
    let mut seen_wakes = flow.wakes.load(Ordering::SeqCst);
    // When the last receive, made for a trigger, came back empty: the next triggers are paced
    // from there.
    let mut empty_at: Option<Instant> = None;
    loop {
        let turn = Turn {
            id,
            next,
            seen_wakes,
            empty_at,
        };
        let Some(Taken {
            mut held,
            mut ahead,
            for_trigger,
        }) = wait(&shared, &token, turn, &mut quiet).await
        else {
            break;
        };
        let asked = u8::try_from(held.len() + ahead.len()).unwrap_or(crate::store::MAX_BATCH);
        // A wake-up counted after this point may be for a message this receive misses.
        seen_wakes = flow.wakes.load(Ordering::SeqCst);
        let received_at = Instant::now();
        // The receive is not raced against `stop`: a receive that completed on the service
        // but was dropped here would leave its messages invisible for the whole timeout.
        bump(&stats.receive_calls);
        let receive_span = crate::codec::spans::receive_span(&io.name);
        let received = io
            .queue
            .receive(asked, settings.visibility_timeout)
            .instrument(receive_span.clone())
            .await;
        if let Ok(batch) = &received {
            crate::codec::spans::received(&receive_span, batch.len());
        }
        drop(receive_span);
        let batch = match received {
            Ok(batch) if batch.is_empty() => {
                drop((held, ahead));
                empty_at = for_trigger.then(Instant::now);
                bump(&stats.empty_receives);
                observe_batch(stats, &batch);
                shared.events.received(0);
                if let Some(hooks) = &shared.hooks {
                    hooks.drained();
                }
                after_idle = true;
                // The curve now: a reload may have changed it since the last empty receive.
                let curve = shared.tuning.now().idle_backoff;
                backoff.retune(curve);
                let max_sleep = curve.max;
                let (delay, retire) = match then(Received::Nothing, quiet, flow.covered) {
                    Then::Rest => (max_sleep, true),
                    Then::Climb { retire } => (backoff.next_delay(), retire),
                    other => unreachable!("an empty receive never leads to {other:?}"),
                };
                stats.set_task(id, backoff.streak(), delay);
                if retire
                    && delay >= max_sleep
                    && may_retire(&shared.control.events, id, seen_wakes).await
                {
                    debug!(queue = %io.name, task = id, "idle task retired");
                    return;
                }
                next = Next::Sleep(delay);
                continue;
            }
            Ok(batch) => {
                empty_at = None;
                batch
            }
            Err(e) => {
                drop((held, ahead));
                bump(&stats.store_errors);
                if !on_receive_error(io, &shared.control.life.fatal, e).await {
                    return;
                }
                debug_assert_eq!(
                    then(Received::Failed, quiet, flow.covered),
                    Then::Climb { retire: false }
                );
                next = Next::Sleep(backoff.next_delay());
                continue;
            }
        };
        let got = batch.len();
        stats.received.fetch_add(got as u64, Ordering::Relaxed);
        shared.events.received(got);
        observe_batch(stats, &batch);
        if shared.control.life.stop.is_cancelled() {
            // Received while stopping: none has started; give them all back.
            for message in &batch {
                shared
                    .release(message, Duration::ZERO, "worker stopping")
                    .await;
            }
            break;
        }
        // As many as asked: the queue may hold more, so refill rather than rest.
        let filled = got >= usize::from(asked);
        if let Some(hooks) = &shared.hooks {
            hooks.found();
            // Every slot taken and the queue may hold more: others should help.
            if filled && flow.slots.free() == 0 {
                hooks.overflow();
            }
        }
        backoff.reset();
        quiet = false;
        stats.set_task(id, 0, Duration::ZERO);
        // The scaler hears of a full *batch* only: a receive cut short by free slots says
        // nothing more tasks could use, and neither does a full one that needed messages
        // received ahead (every slot is busy: another task would only add receives).
        shared.control.tell(Event::Batch {
            full: got >= usize::from(flow.batch) && got <= held.len(),
            filled,
            after_idle,
        });
        after_idle = false;
        for message in batch {
            // A slot each while they last; the rest wait for one, ahead.
            let start = match held.split_one() {
                Some(slot) => Start::Slot(slot),
                None => Start::Ahead(ahead.split_one().expect("a slot or a ticket per message")),
            };
            let mut message = message;
            let span = crate::codec::spans::process_span(
                &io.name,
                &message.id,
                message.dequeue_count,
                &mut message.text,
            );
            shared
                .control
                .life
                .tracker
                .spawn(dispatch::run(shared.clone(), message, start, received_at).instrument(span));
        }
        // Slots and ahead room the receive did not fill go back now.
        drop((held, ahead));
        next = match then(Received::Messages { filled }, quiet, flow.covered) {
            Then::Refill => Next::Refill,
            Then::AwaitTrigger => Next::AwaitTrigger,
            Then::Pause => Next::Sleep(shared.tuning.now().idle_backoff.min),
            other => unreachable!("a receive with messages never leads to {other:?}"),
        };
    }
    debug!(queue = %io.name, task = id, "dequeue task stopped");
}

/// What a task's next wait depends on.
#[derive(Debug, Clone, Copy)]
struct Turn {
    id: u64,
    next: Next,
    /// The wake-up count before the last receive started.
    seen_wakes: u64,
    /// When the last receive came back empty, if it was made for a trigger.
    empty_at: Option<Instant>,
}

/// What a wait took: slots, room to receive ahead of them, and whether a trigger ended it.
struct Taken {
    held: Held,
    ahead: Ahead,
    for_trigger: bool,
}

/// Waits as `next` says, then takes slots: at least one, or the refill size after a full batch
/// (one is enough once a trigger arrives meanwhile), and every free one up to `batch_size`,
/// plus room to receive ahead of them as far as [`Flow::ahead_limit`] allows. `None` when the task is to stop (or
/// retired: a trigger-covered queue at `min_tasks = 0` whose wait for a trigger ran out asks to
/// retire without receiving again).
///
/// Triggers are paced: after a trigger led to a receive that found nothing, the next one waits
/// until [`trigger_pace`] has passed since, so a storm of triggers on an empty queue costs a
/// receive per pace at most; triggers meanwhile (and during a receive) add nothing, as they are
/// counted before the next receive starts.
async fn wait(
    shared: &Shared,
    token: &CancellationToken,
    turn: Turn,
    quiet: &mut bool,
) -> Option<Taken> {
    let flow = &shared.flow;
    let batch = usize::from(flow.batch);
    let ahead = flow.ahead_limit(shared.settings.visibility_timeout);
    let seen = turn.seen_wakes;
    let mut min = 1;
    let woke = match turn.next {
        Next::Now => None,
        Next::Refill => {
            min = flow.refill_size(ahead);
            None
        }
        Next::Sleep(delay) => Some(sleep_until_woken(token, flow, delay, seen).await),
        Next::AwaitTrigger => {
            let tuned = shared.tuning.now();
            let woke = sleep_until_woken(token, flow, tuned.idle_backoff.max, seen).await;
            if woke == Woke::Timer {
                *quiet = true;
                // Covered at min_tasks = 0: every message comes with a trigger, and none came.
                // Retire now rather than pay a receive to learn what the triggers said.
                if tuned.scaling.min_tasks == 0
                    && may_retire(&shared.control.events, turn.id, seen).await
                {
                    debug!(queue = %shared.io.name, task = turn.id, "task retired: no trigger came");
                    return None;
                }
            }
            Some(woke)
        }
    };
    let for_trigger = woke == Some(Woke::Trigger);
    match woke {
        Some(Woke::Stopped) => return None,
        Some(Woke::Trigger) => {
            if let Some(empty_at) = turn.empty_at {
                let paced = empty_at + trigger_pace(&shared.tuning.now().idle_backoff);
                tokio::select! {
                    _ = token.cancelled() => return None,
                    _ = tokio::time::sleep_until(paced) => {}
                }
            }
            batch_window(flow, shared.settings.batch_window, token).await;
        }
        Some(Woke::Timer) | None => {}
    }
    if token.is_cancelled() {
        return None;
    }
    if let Some((held, ahead)) = flow.slots.try_take(min, batch, ahead) {
        return Some(Taken {
            held,
            ahead,
            for_trigger,
        });
    }
    // A refill waits for `refill_threshold` free slots only while slots keep coming back: once
    // none has for a while, the slots still taken belong to long jobs, and the task receives
    // with what is free rather than leave slots idle behind them.
    let patience = flow.refill_patience();
    let mut triggered = false;
    loop {
        let want = if triggered { 1 } else { min };
        tokio::select! {
            _ = token.cancelled() => return None,
            (held, ahead) = flow.slots.take_while_freeing(want, batch, ahead, patience) => {
                return Some(Taken { held, ahead, for_trigger: for_trigger || triggered });
            }
            // Busy, but a trigger says new work is waiting: any free slot will do.
            _ = flow.wake.notified(), if !triggered && min > 1 => {
                triggered = flow.wakes.load(Ordering::SeqCst) > seen;
            }
        }
    }
}

/// How long after a trigger found nothing the next trigger waits: the back-off minimum, at most
/// a second (a trigger is a promise of prompt pickup, whatever the idle curve).
fn trigger_pace(backoff: &IdleBackoffSettings) -> Duration {
    backoff.min.min(MAX_TRIGGER_PACE)
}

/// The longest [`trigger_pace`].
const MAX_TRIGGER_PACE: Duration = Duration::from_secs(1);

/// Sleeps out an idle back-off step unless stopped or woken by a trigger. A wake-up cuts the
/// sleep short but does not reset the curve: only finding work does. A task woken for a
/// message another task took keeps climbing towards the maximum (and retirement), instead of
/// being kept young by a trickle of triggers meant for someone else.
///
/// A wake-up counted no later than `seen` (the count before the task's last receive) was
/// answered by that receive: the trigger that started the task, or one that landed while it
/// received. It is not a reason to receive again, so the sleep goes on.
async fn sleep_until_woken(
    token: &CancellationToken,
    flow: &Flow,
    delay: Duration,
    seen: u64,
) -> Woke {
    let deadline = Instant::now() + delay;
    loop {
        tokio::select! {
            _ = token.cancelled() => return Woke::Stopped,
            _ = tokio::time::sleep_until(deadline) => return Woke::Timer,
            _ = flow.wake.notified() => {
                if flow.wakes.load(Ordering::SeqCst) > seen {
                    return Woke::Trigger;
                }
            }
        }
    }
}

/// With `batch_window`, after a trigger woke the task: wait up to the window for more
/// arrivals (each trigger counts one), ending early once a batch's worth has arrived.
async fn batch_window(flow: &Flow, window: Option<Duration>, token: &CancellationToken) {
    let Some(window) = window else {
        return;
    };
    let deadline = Instant::now() + window;
    let mut arrivals = 1;
    while arrivals < usize::from(flow.batch) {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            _ = token.cancelled() => break,
            _ = flow.wake.notified() => arrivals += 1,
        }
    }
}

/// Records a receive's size and, for first deliveries, how long each message waited.
fn observe_batch(stats: &ListenerStats, batch: &[crate::store::ReceivedMessage]) {
    let h = &stats.histograms;
    h.messages_per_receive.observe(batch.len() as f64);
    let now = crate::store::now_utc();
    for m in batch.iter().filter(|m| m.dequeue_count <= 1) {
        if let Some(inserted) = m.inserted_at {
            h.pickup_seconds
                .observe((now - inserted).as_seconds_f64().max(0.0));
        }
    }
}

/// Handles a failed receive; `false` when the task must end (an error no retry can fix).
async fn on_receive_error(io: &QueueIo, fatal: &Fatal, e: StoreError) -> bool {
    match e {
        StoreError::QueueNotFound { .. } if io.create_queues => {
            // Deleted while we ran (or a service that lost its state): recreate it, with its
            // poison queue, as at start-up.
            warn!(queue = %io.name, "queue disappeared; recreating it");
            for q in [&io.queue, &io.poison_queue] {
                if let Err(e) = q.create_if_missing().await {
                    warn!(queue = q.name(), error = %e, "cannot recreate the queue yet");
                }
            }
            true
        }
        e @ (StoreError::Unauthorized { .. }
        | StoreError::QueueNotFound { .. }
        | StoreError::AccountNotFound { .. }) => {
            error!(queue = %io.name, error = %e, "receive failed and no retry can fix it; stopping the worker");
            fatal.raise(e);
            false
        }
        e => {
            // Transient faults were already retried (bounded) by the store; keep the task
            // alive and try again on the idle curve.
            error!(queue = %io.name, error = %e, "receive failed");
            true
        }
    }
}

/// Asks the supervisor whether this idle task may retire. `seen_wakes` is the wake-up count
/// before its last receive: a wake-up since then keeps it (the work may be unseen).
async fn may_retire(events: &UnboundedSender<Event>, task: u64, seen_wakes: u64) -> bool {
    let (reply, answer) = oneshot::channel();
    let asked = events.send(Event::IdleAtMax {
        task,
        seen_wakes,
        reply,
    });
    if asked.is_err() {
        return false;
    }
    answer.await.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_wait_rule_table() {
        let filled = Received::Messages { filled: true };
        let short = Received::Messages { filled: false };
        // (what came back, quiet, covered, what the task does next)
        let cases = [
            (
                Received::Nothing,
                false,
                false,
                Then::Climb { retire: true },
            ),
            // A covered queue found empty: no climb, the trigger brings the next message.
            (Received::Nothing, false, true, Then::Rest),
            // A wait for a trigger ran out, then nothing: straight to the maximum.
            (Received::Nothing, true, true, Then::Rest),
            (Received::Nothing, true, false, Then::Rest),
            (
                Received::Failed,
                false,
                false,
                Then::Climb { retire: false },
            ),
            (Received::Failed, true, true, Then::Climb { retire: false }),
            (filled, false, false, Then::Refill),
            (filled, true, true, Then::Refill),
            (short, false, true, Then::AwaitTrigger),
            (short, true, true, Then::AwaitTrigger),
            (short, false, false, Then::Pause),
            (short, true, false, Then::Pause),
        ];
        for (i, (received, quiet, covered, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                then(received, quiet, covered),
                want,
                "case {i}: {received:?}"
            );
        }
    }
}

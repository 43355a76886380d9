//! A dequeue task: the receive loop and its flow control.
//!
//! Each turn: wait (as the last receive said), take concurrency slots, receive at most as
//! many messages as slots are held, and spawn each message with its slot. The task never
//! waits for the messages it spawned; it is ready to receive again as soon as slots are free.
//!
//! What the last receive said decides the wait:
//! - a full batch (as many as asked): the queue has more. Receive again once
//!   `refill_threshold` slots are free (fewer, larger receives), or with what is free once no
//!   slot has come back for a while (half a typical handler run, 100 ms to 2 s: the rest run
//!   long), or at once with any free slot when a trigger arrives meanwhile;
//! - a short batch: the queue was just drained. A queue covered by push triggers waits for the
//!   next trigger (for at most the back-off maximum, as a safety net); others sleep the
//!   back-off minimum first;
//! - nothing: sleep on the idle back-off curve; at its maximum, ask the supervisor to retire.
//!
//! Every sleep ends early on a trigger. With `batch_window`, a task woken by a trigger waits
//! up to that long for more arrivals before it receives.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn, Instrument};

use super::slots::Held;
use super::stats::bump;
use super::supervisor::Event;
use super::{dispatch, settle, Shared};
use crate::backoff::IdleBackoff;
use crate::store::StoreError;

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

/// The receive loop of task `id`, until `token` (stop, or this task's retirement) fires or the
/// supervisor lets it retire.
pub(super) async fn dequeue_loop(shared: Arc<Shared>, id: u64, token: CancellationToken) {
    let _guard = TaskGuard {
        shared: &shared,
        id,
    };
    let settings = &shared.settings;
    let mut backoff = IdleBackoff::new(settings.idle_backoff);
    let max_sleep = settings.idle_backoff.max;
    let mut next = Next::Now;
    // The first receive counts as "after idleness": work found then is news to the scaler.
    let mut after_idle = true;
    // A wait for a trigger ran out: the queue is quiet, so an empty receive now goes straight
    // to the back-off maximum.
    let mut quiet = false;
    loop {
        let Some(mut held) = wait(&shared, &token, next, &mut quiet).await else {
            break;
        };
        let asked = u8::try_from(held.len()).unwrap_or(crate::store::MAX_BATCH);
        // A wake-up counted after this point may be for a message this receive misses.
        let seen_wakes = shared.flow.wakes.load(Ordering::SeqCst);
        let received_at = Instant::now();
        // The receive is not raced against `stop`: a receive that completed on the service
        // but was dropped here would leave its messages invisible for the whole timeout.
        bump(&shared.stats.receive_calls);
        let received = shared
            .queue
            .receive(asked, settings.visibility_timeout)
            .await;
        let batch = match received {
            Ok(batch) if batch.is_empty() => {
                drop(held);
                bump(&shared.stats.empty_receives);
                let delay = if quiet {
                    max_sleep
                } else {
                    backoff.next_delay()
                };
                set_view(&shared, id, backoff.streak(), delay);
                if delay >= max_sleep && may_retire(&shared, id, seen_wakes).await {
                    debug!(queue = %shared.name, task = id, "idle task retired");
                    return;
                }
                after_idle = true;
                next = Next::Sleep(delay);
                continue;
            }
            Ok(batch) => batch,
            Err(e) => {
                drop(held);
                bump(&shared.stats.store_errors);
                if !on_receive_error(&shared, e).await {
                    return;
                }
                next = Next::Sleep(backoff.next_delay());
                continue;
            }
        };
        let got = batch.len();
        shared
            .stats
            .received
            .fetch_add(got as u64, Ordering::Relaxed);
        if shared.life.stop.is_cancelled() {
            // Received while stopping: none has started; give them all back.
            for message in &batch {
                settle::release(&shared, message, Duration::ZERO, "worker stopping").await;
            }
            break;
        }
        // As many as asked: the queue may hold more, so refill rather than rest.
        let filled = got >= usize::from(asked);
        backoff.reset();
        quiet = false;
        set_view(&shared, id, 0, Duration::ZERO);
        // The scaler hears of a full *batch* only: a receive cut short by free slots says
        // nothing more tasks could use.
        let _ = shared.events.send(Event::Batch {
            full: got >= usize::from(shared.flow.batch),
            filled,
            after_idle,
        });
        after_idle = false;
        for message in batch {
            let slot = held.split_one().expect("one slot per received message");
            let span = tracing::info_span!("message", queue = %shared.name, message_id = %message.id,
                                           dequeue_count = message.dequeue_count);
            shared
                .life
                .tracker
                .spawn(dispatch::run(shared.clone(), message, slot, received_at).instrument(span));
        }
        // Slots the receive did not fill go back now.
        drop(held);
        next = if filled {
            Next::Refill
        } else if shared.flow.covered {
            Next::AwaitTrigger
        } else {
            Next::Sleep(settings.idle_backoff.min)
        };
    }
    debug!(queue = %shared.name, task = id, "dequeue task stopped");
}

/// Waits as `next` says, then takes slots: at least one, or `refill_threshold` after a full
/// batch (one is enough once a trigger arrives meanwhile), and every free one up to
/// `batch_size`. `None` when the task is to stop.
async fn wait(
    shared: &Shared,
    token: &CancellationToken,
    next: Next,
    quiet: &mut bool,
) -> Option<Held> {
    let flow = &shared.flow;
    let batch = usize::from(flow.batch);
    let mut min = 1;
    match next {
        Next::Now => {}
        Next::Refill => min = flow.refill,
        Next::Sleep(delay) => match sleep_until_woken(token, shared, delay).await {
            Woke::Trigger => batch_window(shared, token).await,
            Woke::Timer => {}
            Woke::Stopped => return None,
        },
        Next::AwaitTrigger => {
            match sleep_until_woken(token, shared, shared.settings.idle_backoff.max).await {
                Woke::Trigger => batch_window(shared, token).await,
                Woke::Timer => *quiet = true,
                Woke::Stopped => return None,
            }
        }
    }
    if token.is_cancelled() {
        return None;
    }
    if let Some(held) = flow.slots.try_take(min, batch) {
        return Some(held);
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
            held = flow.slots.take_while_freeing(want, batch, patience) => return Some(held),
            // Busy, but a trigger says new work is waiting: any free slot will do.
            _ = flow.wake.notified(), if !triggered && min > 1 => triggered = true,
        }
    }
}

/// Sleeps out an idle back-off step unless stopped or woken by a trigger. A wake-up cuts the
/// sleep short but does not reset the curve: only finding work does. A task woken for a
/// message another task took keeps climbing towards the maximum (and retirement), instead of
/// being kept young by a trickle of triggers meant for someone else.
async fn sleep_until_woken(token: &CancellationToken, shared: &Shared, delay: Duration) -> Woke {
    tokio::select! {
        _ = token.cancelled() => Woke::Stopped,
        _ = tokio::time::sleep(delay) => Woke::Timer,
        _ = shared.flow.wake.notified() => Woke::Trigger,
    }
}

/// With `batch_window`, after a trigger woke the task: wait up to the window for more
/// arrivals (each trigger counts one), ending early once a batch's worth has arrived.
async fn batch_window(shared: &Shared, token: &CancellationToken) {
    let Some(window) = shared.settings.batch_window else {
        return;
    };
    let deadline = Instant::now() + window;
    let mut arrivals = 1;
    while arrivals < usize::from(shared.flow.batch) {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            _ = token.cancelled() => break,
            _ = shared.flow.wake.notified() => arrivals += 1,
        }
    }
}

/// Handles a failed receive; `false` when the task must end (an error no retry can fix).
async fn on_receive_error(shared: &Shared, e: StoreError) -> bool {
    match e {
        StoreError::QueueNotFound { .. } if shared.create_queues => {
            // Deleted while we ran (or a service that lost its state): recreate it, with its
            // poison queue, as at start-up.
            warn!(queue = %shared.name, "queue disappeared; recreating it");
            for q in [&shared.queue, &shared.poison_queue] {
                if let Err(e) = q.create_if_missing().await {
                    warn!(queue = q.name(), error = %e, "cannot recreate the queue yet");
                }
            }
            true
        }
        e @ (StoreError::Unauthorized { .. } | StoreError::QueueNotFound { .. }) => {
            error!(queue = %shared.name, error = %e, "receive failed and no retry can fix it; stopping the worker");
            shared.life.fatal.raise(e);
            false
        }
        e => {
            // Transient faults were already retried (bounded) by the store; keep the task
            // alive and try again on the idle curve.
            error!(queue = %shared.name, error = %e, "receive failed");
            true
        }
    }
}

fn set_view(shared: &Shared, id: u64, streak: u32, sleep: Duration) {
    if let Ok(mut view) = shared.view.lock() {
        view.tasks.insert(id, (streak, sleep));
    }
}

/// Asks the supervisor whether this idle task may retire. `seen_wakes` is the wake-up count
/// before its last receive: a wake-up since then keeps it (the work may be unseen).
async fn may_retire(shared: &Shared, task: u64, seen_wakes: u64) -> bool {
    let (reply, answer) = oneshot::channel();
    let asked = shared.events.send(Event::IdleAtMax {
        task,
        seen_wakes,
        reply,
    });
    if asked.is_err() {
        return false;
    }
    answer.await.unwrap_or(false)
}

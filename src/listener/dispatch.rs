//! One message's run: check its dequeue count, decode it, run the handler with its lease
//! renewed beside it, enforce the handler timeout and the drain deadline, then hand the
//! outcome to [`super::settle`].
//!
//! Each message runs as its own tokio task, spawned by the dequeue task that received it, with
//! one concurrency slot that goes back when the message is settled. The handler's future is
//! polled in place (no second task) with panics caught, next to its lease, its heartbeat pulses
//! and its timers, so none of them ever waits for another.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::lease::{Lease, LeaseEvent};
use super::poison::PoisonReason;
use super::settle::{Outcome, Settle};
use super::slots::{Ahead, Held};
use super::stats::{bump, Gauge, ListenerStats};
use super::{ListenerHooks, Shared};
use crate::bus::events::PulseKind;
use crate::bus::jobs::JobMonitor;
use crate::handler::{BoxFuture, Context, HandlerError, Heartbeat, Job, JobStatus, Signal};
use crate::store::{PayloadError, ReceivedMessage};

/// How a received message gets its concurrency slot.
pub(super) enum Start {
    /// It came with one: it runs at once.
    Slot(Held),
    /// It was received ahead of one and waits for the next to come back (oldest first), its
    /// lease renewed meanwhile.
    Ahead(Ahead),
}

/// Runs one received message to its settle. `received_at` is when its receive was sent: the
/// lease counts from there, whether the message runs at once or waits for a slot first.
pub(super) async fn run(
    shared: Arc<Shared>,
    message: ReceivedMessage,
    start: Start,
    received_at: Instant,
) {
    let _held = Gauge::up(&shared.stats.held);
    let mut lease = Lease::new(
        shared.io.queue.clone(),
        message.id.clone(),
        message.pop_receipt.clone(),
        shared.settings.visibility_timeout,
        received_at,
    );
    let _slot = match start {
        Start::Slot(slot) => slot,
        Start::Ahead(ticket) => match wait_for_slot(&shared, &message, ticket, &mut lease).await {
            Some(slot) => slot,
            None => return,
        },
    };
    // Renewals while it waited changed the receipt: settle with the newest.
    let mut message = message;
    if lease.receipt() != message.pop_receipt {
        message.pop_receipt = lease.receipt().to_string();
    }
    let max = shared.settings.max_dequeue_count;
    if message.dequeue_count > max.get() {
        let why = format!("received {} times, limit {max}", message.dequeue_count);
        let action = Settle::Poison(PoisonReason::MaxDequeueCountExceeded, why);
        return shared.settle(&message, action, lease.valid_until()).await;
    }
    // A claim-check reference is resolved first (its payload downloaded once and checked);
    // any other text is decoded in the queue's encoding.
    let bytes = match shared.io.queue.open_payload(&message.text).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => match shared.settings.encoding.decode(&message.text) {
            Ok(bytes) => bytes,
            Err(e) => {
                let action = Settle::Poison(PoisonReason::Undecodable, e.to_string());
                return shared.settle(&message, action, lease.valid_until()).await;
            }
        },
        // What cannot heal is poisoned at once, with its reason.
        Err(PayloadError::Unusable(why)) => {
            let action = Settle::Poison(PoisonReason::PayloadUnavailable, why);
            return shared.settle(&message, action, lease.valid_until()).await;
        }
        // A blob fault that may pass counts as a failed try, like a handler's retry.
        Err(PayloadError::Transient(why)) => {
            let why = format!("payload blob unavailable: {why}");
            let action = if message.dequeue_count >= max.get() {
                let why = format!("failed on try {} of {max}: {why}", message.dequeue_count);
                Settle::Poison(PoisonReason::MaxDequeueCountExceeded, why)
            } else {
                Settle::Retry(shared.settings.retry_delay, why)
            };
            return shared.settle(&message, action, lease.valid_until()).await;
        }
    };
    let signals = HandlerSignals::new(
        &shared.control.life.stop,
        shared.settings.handler_timeout.is_some(),
        &shared.runner.never,
    );
    let heartbeat = Heartbeat::new(shared.settings.heartbeat.every.map(|e| e.get()));
    if let Some(monitor) = job_monitor(&shared, &message) {
        heartbeat.monitor(monitor);
    }
    let ctx = Context {
        queue: shared.io.name.clone(),
        message_id: message.id.clone(),
        dequeue_count: message.dequeue_count,
        inserted_at: message.inserted_at,
        shutdown: signals.shutdown.clone(),
        timeout: signals.timeout.clone(),
        cancellation: signals.cancellation.clone(),
        publishers: shared.runner.publishers.clone(),
        bus: shared.runner.bus.clone(),
        heartbeat: heartbeat.clone(),
        // This task runs in the message's `process` span (see `task`); kept only while traces
        // are exported (a batch call links to it), so nothing is cloned while they are off.
        span: if crate::codec::spans::exporting() {
            tracing::Span::current()
        } else {
            tracing::Span::none()
        },
    };
    let started = Instant::now();
    let outcome = {
        let _running = Gauge::up(&shared.stats.in_flight);
        // A panic in the handler is caught where it is polled and contained to this message.
        let handle = CatchPanic(shared.runner.stack.run(Job::new(ctx, bytes)));
        watch(
            &shared, &message, handle, &signals, &heartbeat, &mut lease, started,
        )
        .await
    };
    let took = started.elapsed();
    shared.flow.observe_run(took);
    shared
        .stats
        .histograms
        .handler_seconds
        .observe(took.as_secs_f64());
    // Whether the worker was stopping when the handler ended: then a failure is taken for the
    // interruption it probably is.
    let interrupted = shared.control.life.stop.is_cancelled();
    if let Some(event) = lease.finish().await {
        report(&shared.io.name, &shared.stats, &message, event);
    }
    let timed_pulses = shared.settings.heartbeat.interval.is_some();
    log_job_end(
        &shared.io.name,
        timed_pulses,
        &message,
        &heartbeat,
        started,
        &outcome,
    );
    match &outcome {
        Outcome::Panicked(text) => {
            bump(&shared.stats.panics);
            error!(queue = %shared.io.name, message_id = %message.id, panic = %text, "handler panicked");
        }
        Outcome::TimedOut(_) => bump(&shared.stats.timeouts),
        _ => {}
    }
    if lease.is_lost() {
        bump(&shared.stats.lost_ownership);
        warn!(queue = %shared.io.name, message_id = %message.id,
              "message was re-delivered while its handler ran; it may be handled twice");
        return;
    }
    // Settle with the newest pop receipt: the one the last renewal returned.
    if lease.receipt() != message.pop_receipt {
        message.pop_receipt = lease.receipt().to_string();
    }
    let action = Settle::decide(
        outcome,
        interrupted,
        message.dequeue_count,
        max.get(),
        shared.settings.retry_delay,
    );
    shared.settle(&message, action, lease.valid_until()).await;
}

/// Waits for a slot with the lease renewed beside. `None` when the message is not to run: the
/// worker stops (it never started, so it is released at once) or its lease was lost (someone
/// else received it).
async fn wait_for_slot(
    shared: &Arc<Shared>,
    message: &ReceivedMessage,
    ticket: Ahead,
    lease: &mut Lease,
) -> Option<Held> {
    let slot = ticket.slot();
    tokio::pin!(slot);
    loop {
        tokio::select! {
            biased; // The stop first: a slot given back during the stop starts no message.
            _ = shared.control.life.stop.cancelled() => break,
            held = &mut slot => return Some(held),
            event = lease.next_event() => {
                report(&shared.io.name, &shared.stats, message, event);
                if lease.is_lost() {
                    bump(&shared.stats.lost_ownership);
                    warn!(queue = %shared.io.name, message_id = %message.id,
                          "message was re-delivered while it waited for a slot; it was not run here");
                    return None;
                }
            }
        }
    }
    if let Some(event) = lease.finish().await {
        report(&shared.io.name, &shared.stats, message, event);
    }
    if !lease.is_lost() {
        let message = ReceivedMessage {
            pop_receipt: lease.receipt().to_string(),
            ..message.clone()
        };
        shared
            .release(&message, std::time::Duration::ZERO, "worker stopping")
            .await;
    }
    None
}

/// The three signals a handler sees through its [`Context`].
struct HandlerSignals {
    shutdown: Signal,
    timeout: Signal,
    cancellation: Signal,
    /// Fired by the timeout: the timeout and cancellation tokens (none without a timeout).
    fire_on_timeout: Option<(CancellationToken, CancellationToken)>,
}

impl HandlerSignals {
    /// The signals of one run: `stop` is the worker's; `never` stands in for the timeout
    /// signal of handlers without a timeout.
    fn new(stop: &CancellationToken, has_timeout: bool, never: &CancellationToken) -> Self {
        let shutdown = Signal::new(stop.clone());
        if !has_timeout {
            // No timeout: share the worker's tokens; nothing per message to allocate.
            return Self {
                cancellation: shutdown.clone(),
                timeout: Signal::new(never.clone()),
                shutdown,
                fire_on_timeout: None,
            };
        }
        let timeout = CancellationToken::new();
        let cancellation = stop.child_token();
        Self {
            shutdown,
            timeout: Signal::new(timeout.clone()),
            cancellation: Signal::new(cancellation.clone()),
            fire_on_timeout: Some((timeout, cancellation)),
        }
    }

    fn fire_timeout(&self) {
        if let Some((timeout, cancellation)) = &self.fire_on_timeout {
            timeout.cancel();
            cancellation.cancel();
        }
    }
}

/// Waits for the handler while its lease renews beside it; logs heartbeat pulses (each asks
/// the lease for a renewal); enforces the handler timeout (fire the signals, then abort after
/// the grace) and the drain deadline (abort).
async fn watch(
    shared: &Shared,
    message: &ReceivedMessage,
    mut handle: CatchPanic,
    signals: &HandlerSignals,
    heartbeat: &Heartbeat,
    lease: &mut Lease,
    started: Instant,
) -> Outcome {
    let settings = &shared.settings;
    let limit = settings.handler_timeout.unwrap_or_default();
    let mut timeout_at = settings.handler_timeout.map(|t| started + t);
    let mut timed_out = false;
    let pulse_every = settings.heartbeat.interval;
    let pulses = Pulses {
        queue: &shared.io.name,
        stats: &shared.stats,
        hooks: shared.hooks.as_ref(),
    };
    let mut next_pulse = pulse_every.map(|p| started + p);
    loop {
        tokio::select! {
            // The handler first: one that finishes at once never arms a timer.
            biased;
            joined = &mut handle => {
                return match joined {
                    // Done within the grace after its timeout: the work is done; delete it.
                    Ok(Ok(())) => Outcome::Done(Ok(())),
                    // A retry (or any `?` error) after the timeout is the timeout's failure; a
                    // release or a poison is the handler's own decision and stands.
                    Ok(Err(HandlerError::Retry { .. })) if timed_out => {
                        Outcome::TimedOut(limit)
                    }
                    Ok(result) => Outcome::Done(result),
                    Err(text) => Outcome::Panicked(text),
                };
            }
            // Dropping the handler's future cancels it at its current await point.
            _ = shared.control.life.abort.cancelled() => {
                return Outcome::Aborted(shared.control.life.abort_reason())
            }
            _ = at(timeout_at) => {
                if timed_out {
                    warn!(queue = %shared.io.name, message_id = %message.id,
                          grace = ?settings.handler_timeout_grace, "handler ignored its timeout; aborted");
                    return Outcome::TimedOut(limit);
                }
                timed_out = true;
                warn!(queue = %shared.io.name, message_id = %message.id, timeout = ?limit,
                      "handler timed out; signalling it");
                signals.fire_timeout();
                timeout_at = Some(Instant::now() + settings.handler_timeout_grace);
            }
            event = lease.next_event() => report(&shared.io.name, &shared.stats, message, event),
            _ = at(next_pulse) => {
                next_pulse = next_pulse.map(|t| t + pulse_every.unwrap_or_default());
                pulses.pulse(message, lease, heartbeat, PulseKind::Timed, started);
            }
            _ = heartbeat.count_pulse() => {
                pulses.pulse(message, lease, heartbeat, PulseKind::Count, started);
            }
        }
    }
}

/// Sleeps until `t`, or forever when there is no `t`.
async fn at(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Logs what a renewal came to and counts it.
fn report(queue: &str, stats: &ListenerStats, message: &ReceivedMessage, event: LeaseEvent) {
    match event {
        LeaseEvent::Renewed => {
            bump(&stats.renewals);
            debug!(queue, message_id = %message.id, "visibility renewed");
        }
        LeaseEvent::Failed(e) => {
            bump(&stats.store_errors);
            warn!(queue, message_id = %message.id, error = %e,
                  "visibility renewal failed; trying again in 1s");
        }
        LeaseEvent::Lost => {
            warn!(queue, message_id = %message.id,
                  "visibility renewal refused: the message was received again elsewhere");
        }
        // The store counted it (updates_in_doubt); the lease is given up like a lost one.
        LeaseEvent::InDoubt => {
            warn!(queue, message_id = %message.id,
                  "lease in doubt: a renewal's answer was lost and its retry found the receipt stale; the message may run again");
        }
    }
}

/// What a heartbeat pulse is reported to: the queue's log field, its counters and hooks.
struct Pulses<'a> {
    queue: &'a str,
    stats: &'a ListenerStats,
    hooks: Option<&'a Arc<dyn ListenerHooks>>,
}

impl Pulses<'_> {
    /// Logs a heartbeat pulse and asks the lease for a renewal (at most one a second).
    fn pulse(
        &self,
        message: &ReceivedMessage,
        lease: &mut Lease,
        heartbeat: &Heartbeat,
        kind: PulseKind,
        started: Instant,
    ) {
        bump(&self.stats.pulses);
        let elapsed_ms = started.elapsed().as_millis() as u64;
        info!(queue = self.queue, message_id = %message.id, kind = kind.as_str(), count = heartbeat.count(),
              elapsed_ms, "job pulse");
        if let Some(hooks) = self.hooks {
            hooks.job_pulse(&message.id, kind, heartbeat.count(), elapsed_ms);
        }
        heartbeat.record_pulse(kind);
        lease.renew_soon();
    }
}

/// Logs the end of a job with the status its handler reported: at info when it was a long
/// job (it pulsed) or said how it went, at debug otherwise.
fn log_job_end(
    queue: &str,
    timed_pulses: bool,
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
        Outcome::Aborted(_) => "aborted",
    };
    let elapsed_ms = started.elapsed().as_millis() as u64;
    heartbeat.record_end(result);
    if status != JobStatus::Unknown || heartbeat.count() > 0 || timed_pulses {
        info!(queue, message_id = %message.id, status = status.as_str(), note,
              result, count = heartbeat.count(), elapsed_ms, "job ended");
    } else {
        debug!(queue, message_id = %message.id, status = status.as_str(), result,
               elapsed_ms, "job ended");
    }
}

/// A queue with heartbeat settings records each job's progress on the bus (its START record
/// now; `ebbflow jobs` lists it): the job id is `<queue>/<message id>`. The listener drives the
/// pulses (the monitor runs no timer of its own).
fn job_monitor(shared: &Shared, message: &ReceivedMessage) -> Option<JobMonitor> {
    let hb = &shared.settings.heartbeat;
    if hb.every.is_none() && hb.interval.is_none() {
        return None;
    }
    let bus = shared.runner.bus.as_ref()?;
    let queue = &shared.io.name;
    let monitor = JobMonitor::driven(
        bus,
        &format!("{queue}/{}", message.id),
        queue,
        &format!("message {} (dequeue {})", message.id, message.dequeue_count),
        hb.every.map(|e| e.get()),
        hb.interval,
    );
    if let Some(hook) = &shared.runner.pulse_hook {
        monitor.shape(hook.clone());
    }
    Some(monitor)
}

/// A handler's future, with a panic inside it turned into `Err(panic text)`.
pub(crate) struct CatchPanic(pub(crate) BoxFuture);

impl Future for CatchPanic {
    type Output = Result<Result<(), HandlerError>, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let future = &mut self.0;
        // After a panic the future is never polled again: `watch` stops at the first Ready.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Ready(result)) => Poll::Ready(Ok(result)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(panic_text(payload))),
        }
    }
}

pub(crate) fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".to_string())
}

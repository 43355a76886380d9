//! What happens to a message once its handler is done: delete it, make it visible again for a
//! retry, release it (visible again, not a failure), or copy it to the poison queue and then
//! delete it. [`Settle::decide`] is the pure rule; [`apply`] makes the store calls.

use std::time::Duration;

use tokio::time::Instant;

use tracing::{debug, error, info, warn, Instrument};

use super::poison::{PoisonEnvelope, PoisonReason, PoisonText};
use super::stats::{bump, ListenerStats};
use super::{Fatal, QueueIo};
use crate::config::QueueSettings;
use crate::handler::HandlerError;
use crate::store::{now_utc, ReceivedMessage, SendOptions, StoreError, TimeToLive, MAX_VISIBILITY};

/// What became of a handler run.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The handler returned (after its timeout fired, only `Ok` lands here).
    Done(Result<(), HandlerError>),
    /// It panicked, with the panic's text.
    Panicked(String),
    /// It passed `handler_timeout` and then failed or was aborted after the grace.
    TimedOut(Duration),
    /// The drain was cut short while it ran, for this reason (the drain deadline passed, a
    /// second stop signal).
    Aborted(&'static str),
}

/// How a message is settled.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Settle {
    /// Handled: delete it.
    Delete,
    /// Failed, with tries left: visible again after the delay.
    Retry(Duration, String),
    /// Not a failure (shutdown, the drain deadline, the handler's "not now"): visible again
    /// after the delay.
    Release(Duration, String),
    /// Copy to the poison queue, then delete.
    Poison(PoisonReason, String),
}

impl Settle {
    /// The action's name, for the `settle` span's `messaging.operation.name`.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Settle::Delete => "delete",
            Settle::Retry(..) => "retry",
            Settle::Release(..) => "release",
            Settle::Poison(..) => "poison",
        }
    }

    /// The rule. `interrupted`: the worker was stopping when the handler ended, so a failure
    /// is taken for the interruption it probably is (released, never poisoned or counted).
    pub(crate) fn decide(
        outcome: Outcome,
        interrupted: bool,
        dequeue_count: u32,
        max_dequeue_count: u32,
        retry_delay: Duration,
    ) -> Self {
        // A failure counts against the message: retried, or poisoned on its last allowed try.
        let failure = |after: Option<Duration>, why: String| {
            if dequeue_count >= max_dequeue_count {
                let why = format!("failed on try {dequeue_count} of {max_dequeue_count}: {why}");
                Settle::Poison(PoisonReason::MaxDequeueCountExceeded, why)
            } else {
                Settle::Retry(cap(after.unwrap_or(retry_delay)), why)
            }
        };
        // A handler's failure while the worker stops is taken for the interruption.
        let failed = |after: Option<Duration>, why: String| {
            if interrupted {
                Settle::Release(Duration::ZERO, format!("worker stopping ({why})"))
            } else {
                failure(after, why)
            }
        };
        match outcome {
            Outcome::Done(Ok(())) => Settle::Delete,
            Outcome::Done(Err(e)) => match e {
                HandlerError::Undecodable { source } => {
                    Settle::Poison(PoisonReason::Undecodable, source.to_string())
                }
                // Why, as the handler or layer gave it ("over the rate limit", ...).
                HandlerError::Release { after, source } => {
                    Settle::Release(cap(after), source.to_string())
                }
                HandlerError::Poison { source } if !interrupted => {
                    Settle::Poison(PoisonReason::Rejected, source.to_string())
                }
                HandlerError::Poison { source } => failed(None, source.to_string()),
                HandlerError::Retry { after, source } => failed(after, source.to_string()),
            },
            // A panic is a bug, not an interruption: a failure even while stopping.
            Outcome::Panicked(text) => failure(None, format!("handler panicked: {text}")),
            Outcome::TimedOut(limit) => failed(
                None,
                format!(
                    "handler timed out after {}",
                    humantime::format_duration(limit)
                ),
            ),
            Outcome::Aborted(why) => Settle::Release(Duration::ZERO, why.into()),
        }
    }
}

/// The service hides a message for at most 7 days; a longer delay is that.
fn cap(delay: Duration) -> Duration {
    delay.min(MAX_VISIBILITY)
}

/// What settling a queue's messages takes: its store side, its counters, the fatal-error
/// latch (a refused settle stops the worker), and its settings. Each method makes the store
/// calls of one [`Settle`] and says when the message shows again (`Some(delay)` after a retry
/// or a release), so the caller can wake the queue then.
pub(super) struct Settler<'a> {
    pub(super) io: &'a QueueIo,
    pub(super) stats: &'a ListenerStats,
    pub(super) fatal: &'a Fatal,
    pub(super) settings: &'a QueueSettings,
}

impl Settler<'_> {
    /// Carries out `action` on the store. `lease_ends`: when the message's visibility timeout
    /// ends (as far as its lease knows); a failed delete is retried until then, since until
    /// then nobody else can receive it and a late delete still spares a duplicate run.
    pub(super) async fn apply(
        &self,
        message: &ReceivedMessage,
        action: Settle,
        lease_ends: Instant,
    ) -> Option<Duration> {
        let span = crate::codec::spans::settle_span(&self.io.name, &message.id, action.name());
        // A retry or a poison is the message's failure: both its `process` span (the current
        // one) and the settle show it (the conventions' error status and `error.type`).
        let failure = match &action {
            Settle::Retry(_, why) => Some(("retry", why.as_str())),
            Settle::Poison(reason, why) => Some((reason.as_str(), why.as_str())),
            Settle::Delete | Settle::Release(..) => None,
        };
        if let Some((kind, why)) = failure {
            crate::codec::spans::failed(&tracing::Span::current(), kind, why);
            crate::codec::spans::failed(&span, kind, why);
        }
        self.carry_out(message, action, lease_ends)
            .instrument(span)
            .await
    }

    async fn carry_out(
        &self,
        message: &ReceivedMessage,
        action: Settle,
        lease_ends: Instant,
    ) -> Option<Duration> {
        let (io, stats) = (self.io, self.stats);
        let (id, receipt) = (&message.id, &message.pop_receipt);
        match action {
            Settle::Delete => match io.queue.delete_within(id, receipt, lease_ends).await {
                Ok(()) => {
                    bump(&stats.handled);
                    debug!(queue = %io.name, message_id = %message.id, "message handled");
                    // Only now its payload's blob (if it has one): after the queue delete.
                    io.queue.payload_done(&message.text).await;
                }
                Err(e) => self.failed(message, "delete after success", e),
            },
            Settle::Retry(delay, why) => {
                let delay = within_life(message, delay);
                warn!(queue = %io.name, message_id = %message.id, dequeue_count = message.dequeue_count,
                      retry_in = ?delay, error = %why, "handler failed; will retry");
                match io
                    .queue
                    .update(&message.id, &message.pop_receipt, delay, None)
                    .await
                {
                    Ok(_) => {
                        bump(&stats.retried);
                        return Some(delay);
                    }
                    Err(e) => self.failed(message, "retry", e),
                }
            }
            Settle::Release(after, why) => return self.release(message, after, &why).await,
            Settle::Poison(reason, why) => self.poison(message, reason, why, lease_ends).await,
        }
        None
    }
    /// Makes a message visible again (after `after`) without counting a failure.
    ///
    /// The service cannot lower a dequeue count, and a message released on its last allowed try
    /// would come back over the limit and be poisoned unrun. So such a message is sent again as
    /// a fresh copy (same text, a fresh dequeue count, and the original's expiry: its remaining
    /// time to live, never-expiring staying never-expiring) and the received one deleted; its
    /// id changes. Earlier tries release in place.
    pub(super) async fn release(
        &self,
        message: &ReceivedMessage,
        after: Duration,
        why: &str,
    ) -> Option<Duration> {
        let (io, stats) = (self.io, self.stats);
        if message.dequeue_count >= self.settings.max_dequeue_count.get() {
            if let Some(options) = fresh_copy_options(message, after) {
                match io.queue.send(&message.text, options).await {
                    Ok(copy) => {
                        match io.queue.delete(&message.id, &message.pop_receipt).await {
                            Ok(()) => {
                                bump(&stats.released);
                                info!(queue = %io.name, message_id = %message.id, new_id = %copy.id,
                                      reason = why, "message released on its last try as a fresh copy");
                                return Some(after);
                            }
                            // The copy is there; the original comes back too: a duplicate, not a
                            // loss.
                            Err(e) => self.failed(message, "delete after release copy", e),
                        }
                        return None;
                    }
                    Err(e) => {
                        warn!(queue = %io.name, message_id = %message.id, error = %e,
                              "cannot send a fresh copy of a message on its last try; releasing it in place");
                    }
                }
            }
        }
        let after = within_life(message, after);
        match io
            .queue
            .update(&message.id, &message.pop_receipt, after, None)
            .await
        {
            Ok(_) => {
                bump(&stats.released);
                info!(queue = %io.name, message_id = %message.id, reason = why, "message released");
                Some(after)
            }
            Err(e) => {
                self.failed(message, "release", e);
                None
            }
        }
    }

    /// Copies the message to the poison queue, then deletes it. The copy is the envelope with
    /// the failure details when it fits the service's size limit, else the original text
    /// unchanged (the details are then in this log line only). If the copy fails the message
    /// stays on its queue (it comes back after its visibility timeout): nothing is lost.
    pub(super) async fn poison(
        &self,
        message: &ReceivedMessage,
        reason: PoisonReason,
        error: String,
        lease_ends: Instant,
    ) {
        let (io, stats) = (self.io, self.stats);
        let envelope = PoisonEnvelope::new(&io.name, message, reason, Some(error.clone()));
        let text = envelope.to_text(self.settings.encoding);
        let (body, form) = match &text {
            PoisonText::Envelope(t) => (t.as_str(), "envelope"),
            PoisonText::Original(t) => (t.as_str(), "original"),
        };
        let options = poison_copy_options(message, self.settings.poison_ttl);
        if let Err(e) = io.poison_queue.send(body, options).await {
            error!(queue = %io.name, message_id = %message.id, poison_queue = io.poison_queue.name(),
                   error = %e, "copy to poison queue failed; message left on its queue");
            bump(&stats.store_errors);
            return;
        }
        // The copy carries the same reference: its blob stays as long as the copy does.
        let copy_expires = options.time_to_live.duration().map(|d| now_utc() + d);
        io.queue.payload_kept(&message.text, copy_expires).await;
        let deleted = io
            .queue
            .delete_within(&message.id, &message.pop_receipt, lease_ends)
            .await;
        match deleted {
            Ok(()) => {
                bump(&stats.poisoned);
                warn!(queue = %io.name, message_id = %message.id, reason = reason.as_str(),
                      dequeue_count = message.dequeue_count, poison_queue = io.poison_queue.name(),
                      form, error = %error, "message moved to poison queue");
            }
            Err(e) => self.failed(message, "delete after poison copy", e),
        }
    }

    /// Counts and logs a settle the store refused, and raises a refusal as fatal.
    pub(super) fn failed(&self, message: &ReceivedMessage, step: &str, e: StoreError) {
        let (queue, stats) = (&*self.io.name, self.stats);
        if let StoreError::MessageNotFound { .. } = e {
            bump(&stats.lost_ownership);
            warn!(queue, message_id = %message.id, step,
                  "message was re-delivered before we settled it; it may be handled twice");
        } else if let StoreError::InDoubt { .. } = e {
            // Counted by the store (updates_in_doubt): a retry or release whose answer was lost.
            info!(queue, message_id = %message.id, step,
                  "settle in doubt: the update's answer was lost; the message comes back either way");
        } else {
            bump(&stats.store_errors);
            error!(queue, message_id = %message.id, step, error = %e,
                   "store call failed; the message reappears after its visibility timeout");
            // A refusal reaches us only once it persisted over several calls: it is final.
            if let StoreError::Unauthorized { .. } = e {
                self.fatal.raise(e);
            }
        }
    }
}

/// A delay that ends while the message still lives: the service refuses to hide a message past
/// its expiry, and one hidden until it expires would vanish unseen. So a delay is cut to end a
/// second before the expiry (a message that never expires keeps any delay).
fn within_life(message: &ReceivedMessage, delay: Duration) -> Duration {
    match TimeToLive::remaining(message.expires_at, now_utc()).and_then(TimeToLive::duration) {
        Some(left) => delay.min(left.saturating_sub(Duration::from_secs(1))),
        None => delay,
    }
}

/// Send options that give a copy the original's expiry: its remaining time to live (whole
/// seconds, rounded up; never-expiring stays never). `None` when the original expires before
/// the copy would become visible.
fn fresh_copy_options(message: &ReceivedMessage, after: Duration) -> Option<SendOptions> {
    let time_to_live = TimeToLive::remaining(message.expires_at, now_utc())?;
    if let Some(left) = time_to_live.duration() {
        if left <= after + Duration::from_secs(1) {
            return None;
        }
    }
    Some(SendOptions {
        initial_delay: after,
        time_to_live,
    })
}

/// The poison copy's time to live: the queue's `poison_ttl` (default never), and at least what
/// the original had left, so a poison copy never vanishes before its original would have.
fn poison_copy_options(message: &ReceivedMessage, poison_ttl: TimeToLive) -> SendOptions {
    let left = TimeToLive::remaining(message.expires_at, now_utc());
    SendOptions {
        initial_delay: Duration::ZERO,
        time_to_live: left.map_or(poison_ttl, |left| poison_ttl.at_least(left)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn handler_err(e: HandlerError) -> Outcome {
        Outcome::Done(Err(e))
    }

    fn kind(s: &Settle) -> &'static str {
        match s {
            Settle::Delete => "delete",
            Settle::Retry(..) => "retry",
            Settle::Release(..) => "release",
            Settle::Poison(PoisonReason::Rejected, _) => "poison:rejected",
            Settle::Poison(PoisonReason::Undecodable, _) => "poison:undecodable",
            Settle::Poison(PoisonReason::MaxDequeueCountExceeded, _) => "poison:max",
            Settle::Poison(PoisonReason::PayloadUnavailable, _) => "poison:payload",
        }
    }

    #[test]
    fn the_rule_table() {
        type Case = (fn() -> Outcome, bool, u32, &'static str);
        let cases: [Case; 16] = [
            (|| Outcome::Done(Ok(())), false, 1, "delete"),
            (|| Outcome::Done(Ok(())), true, 5, "delete"),
            (|| handler_err(HandlerError::retry("x")), false, 1, "retry"),
            (
                || handler_err(HandlerError::retry("x")),
                false,
                5,
                "poison:max",
            ),
            // Shutdown is not a failure, even on the last allowed try.
            (|| handler_err(HandlerError::retry("x")), true, 5, "release"),
            (
                || handler_err(HandlerError::poison("x")),
                false,
                1,
                "poison:rejected",
            ),
            (
                || handler_err(HandlerError::poison("x")),
                true,
                1,
                "release",
            ),
            (
                || handler_err(HandlerError::release(S)),
                false,
                5,
                "release",
            ),
            (|| handler_err(HandlerError::release(S)), true, 1, "release"),
            (
                || handler_err(HandlerError::undecodable("bad")),
                true,
                1,
                "poison:undecodable",
            ),
            (|| Outcome::TimedOut(S), false, 1, "retry"),
            (|| Outcome::TimedOut(S), false, 5, "poison:max"),
            (|| Outcome::TimedOut(S), true, 5, "release"),
            (
                || Outcome::Aborted("second stop signal"),
                false,
                5,
                "release",
            ),
            (|| Outcome::Panicked("boom".into()), true, 1, "retry"),
            (|| Outcome::Panicked("boom".into()), false, 5, "poison:max"),
        ];
        for (i, (outcome, interrupted, count, want)) in cases.into_iter().enumerate() {
            let got = Settle::decide(outcome(), interrupted, count, 5, Duration::ZERO);
            assert_eq!(kind(&got), want, "case {i}: {got:?}");
        }
    }

    #[test]
    fn delays_come_from_the_error_the_queue_or_the_release() {
        let retry = Settle::decide(
            handler_err(HandlerError::retry_after("x", 7 * S)),
            false,
            1,
            5,
            S,
        );
        assert!(matches!(retry, Settle::Retry(d, _) if d == 7 * S));
        let retry = Settle::decide(handler_err(HandlerError::retry("x")), false, 1, 5, 3 * S);
        assert!(matches!(retry, Settle::Retry(d, _) if d == 3 * S));
        let later = Settle::decide(handler_err(HandlerError::release(9 * S)), false, 1, 5, S);
        assert!(matches!(later, Settle::Release(d, _) if d == 9 * S));
        // Beyond the service's 7 days: 7 days.
        let week = Duration::from_secs(7 * 24 * 3600);
        let long = Settle::decide(handler_err(HandlerError::release(2 * week)), false, 1, 5, S);
        assert!(matches!(long, Settle::Release(d, _) if d == week));
        let long = Settle::decide(
            handler_err(HandlerError::retry_after("x", 2 * week)),
            false,
            1,
            5,
            S,
        );
        assert!(matches!(long, Settle::Retry(d, _) if d == week));
    }
}

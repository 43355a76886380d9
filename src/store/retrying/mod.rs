//! A store layer that retries every call on transient errors ([`retry_call`]): the one place where service faults are retried, so the
//! listener, publishers and poison tools all get the same bounded, jittered policy.
//!
//! It is also where unknown outcomes are decided. A try can go unanswered
//! ([`StoreError::Unanswered`]: our cut-off fired, the connection broke after the request was
//! sent, or a 5xx that does not say) while the service did the work. What a retry after one
//! means depends on the operation, so each is handled on purpose, counted per queue
//! ([`UnknownOutcomes`]) and logged:
//!
//! - **receive**: messages the lost try took stay hidden for one visibility timeout and come
//!   back with a dequeue count one higher that no handler saw. Nothing to undo; counted.
//! - **send**: the lost try may have stored the message, so a retry may store it twice (or the
//!   call fails although one copy is there). Counted, logged at warn.
//! - **delete**: a retry that finds the message gone (404) after a lost try means the lost try
//!   deleted it: the call succeeds (the handled message is done), instead of reporting lost
//!   ownership. Rarely the message had been re-delivered before; then it runs again.
//! - **update** (renewal, retry, release): a retry that finds the pop receipt stale after a
//!   lost try cannot tell an applied update (whose new receipt we never saw) from a
//!   re-delivery: it returns [`StoreError::InDoubt`]. The receipt held is dead either way.
//! - create, peek, properties: reads or idempotent; nothing to decide.

mod call;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

pub(crate) use call::{retry_call, retry_call_until, CallReport, RefusalStreak};

use super::settings::RetrySettings;
use super::{
    Layered, LayeredStore, PeekedMessage, Queue, QueueLayer, QueueStore, ReceivedMessage,
    SendOptions, SentMessage, StoreError, StoreLayer, UnknownOutcomes, UpdatedMessage,
};

/// Per-queue counters behind [`UnknownOutcomes`].
#[derive(Debug, Default)]
struct OutcomeCounters {
    receives: AtomicU64,
    sends: AtomicU64,
    deletes_confirmed: AtomicU64,
    updates_in_doubt: AtomicU64,
}

impl OutcomeCounters {
    fn snapshot(&self) -> UnknownOutcomes {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        UnknownOutcomes {
            receives: get(&self.receives),
            sends: get(&self.sends),
            deletes_confirmed: get(&self.deletes_confirmed),
            updates_in_doubt: get(&self.updates_in_doubt),
        }
    }
}

/// The store layer that retries transient errors: every queue it hands out is [`Retrying`].
pub struct RetryingStore {
    settings: RetrySettings,
    // One streak for the whole store: the credentials are the store's, not a queue's.
    refusals: Arc<RefusalStreak>,
    outcomes: Mutex<BTreeMap<String, Arc<OutcomeCounters>>>,
}

impl std::fmt::Debug for RetryingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryingStore")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl RetryingStore {
    /// Wraps `inner` with the retry policy `settings`. The embedded store is returned as it
    /// is: it has no transient faults to retry.
    pub fn wrap(inner: Arc<dyn QueueStore>, settings: RetrySettings) -> Arc<dyn QueueStore> {
        if inner.kind() == super::BackendKind::Embedded {
            return inner;
        }
        LayeredStore::wrap(
            inner,
            Self {
                settings,
                refusals: Arc::default(),
                outcomes: Mutex::default(),
            },
        )
    }

    fn counters(&self, queue: &str) -> Arc<OutcomeCounters> {
        // Counters stay valid whatever a panicking holder left: take the map back.
        self.outcomes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(queue.to_string())
            .or_default()
            .clone()
    }
}

impl StoreLayer for RetryingStore {
    fn wrap(&self, queue: Arc<dyn Queue>) -> Arc<dyn Queue> {
        let outcomes = self.counters(queue.name());
        Layered::wrap(
            queue,
            Retrying {
                settings: self.settings,
                refusals: self.refusals.clone(),
                outcomes,
            },
        )
    }

    fn unknown_outcomes(&self, _inner: &dyn QueueStore, queue: &str) -> UnknownOutcomes {
        self.counters(queue).snapshot()
    }
}

/// The queue layer that retries each call (with back-off, `storage.retry`) and decides what a retry after an
/// unanswered try means for its operation. It changes every operation, so it overrides each.
pub struct Retrying {
    settings: RetrySettings,
    refusals: Arc<RefusalStreak>,
    outcomes: Arc<OutcomeCounters>,
}

impl std::fmt::Debug for Retrying {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retrying")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Retrying {
    async fn run<T, F, Fut>(&self, queue: &str, what: &str, op: F) -> CallReport<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        retry_call(&self.settings, &self.refusals, queue, what, op).await
    }

    /// What a delete's tries mean: a retry that found the message gone after an unanswered
    /// try means the lost try deleted it.
    fn deleted(&self, inner: &dyn Queue, id: &str, call: CallReport<()>) -> Result<(), StoreError> {
        match call.result {
            Err(StoreError::MessageNotFound { .. }) if call.unanswered > 0 => {
                add(&self.outcomes.deletes_confirmed, 1);
                info!(
                    queue = inner.name(),
                    message_id = id,
                    "a delete went unanswered and its retry found the message gone: it was deleted"
                );
                Ok(())
            }
            other => other,
        }
    }
}

fn add(counter: &AtomicU64, n: u32) {
    counter.fetch_add(u64::from(n), Ordering::Relaxed);
}

impl QueueLayer for Retrying {
    async fn create_if_missing(&self, inner: &dyn Queue) -> Result<(), StoreError> {
        self.run(inner.name(), "create", || inner.create_if_missing())
            .await
            .result
    }

    async fn send(
        &self,
        inner: &dyn Queue,
        text: &str,
        options: SendOptions,
    ) -> Result<SentMessage, StoreError> {
        let call = self
            .run(inner.name(), "send", || inner.send(text, options))
            .await;
        if call.unanswered > 0 {
            add(&self.outcomes.sends, call.unanswered);
            warn!(queue = inner.name(), unanswered = call.unanswered, tries = call.tries, sent = call.result.is_ok(),
                  "a send went unanswered and may have stored its message: it may be on the queue once more than reported");
        }
        call.result
    }

    async fn receive(
        &self,
        inner: &dyn Queue,
        max: u8,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, StoreError> {
        let call = self
            .run(inner.name(), "receive", || inner.receive(max, visibility))
            .await;
        if call.unanswered > 0 {
            add(&self.outcomes.receives, call.unanswered);
            warn!(queue = inner.name(), unanswered = call.unanswered, tries = call.tries, ?visibility,
                  "a receive went unanswered: messages it took stay hidden for the visibility timeout and come back with one more dequeue");
        }
        call.result
    }

    async fn delete(
        &self,
        inner: &dyn Queue,
        id: &str,
        pop_receipt: &str,
    ) -> Result<(), StoreError> {
        let call = self
            .run(inner.name(), "delete", || inner.delete(id, pop_receipt))
            .await;
        self.deleted(inner, id, call)
    }

    async fn delete_within(
        &self,
        inner: &dyn Queue,
        id: &str,
        pop_receipt: &str,
        lease_ends: Instant,
    ) -> Result<(), StoreError> {
        let call = retry_call_until(
            &self.settings,
            &self.refusals,
            inner.name(),
            "delete",
            Some(lease_ends),
            || inner.delete(id, pop_receipt),
        )
        .await;
        if call.result.is_ok() && call.tries > self.settings.max_attempts {
            info!(
                queue = inner.name(),
                message_id = id,
                tries = call.tries,
                "a delete outlasted the retry budget within its message's lease and succeeded"
            );
        }
        self.deleted(inner, id, call)
    }

    async fn update(
        &self,
        inner: &dyn Queue,
        id: &str,
        pop_receipt: &str,
        visibility: Duration,
        text: Option<&str>,
    ) -> Result<UpdatedMessage, StoreError> {
        let call = self
            .run(inner.name(), "update", || {
                inner.update(id, pop_receipt, visibility, text)
            })
            .await;
        match call.result {
            Err(StoreError::MessageNotFound { queue, id }) if call.unanswered > 0 => {
                add(&self.outcomes.updates_in_doubt, 1);
                warn!(queue = %queue, message_id = %id,
                      "an update went unanswered and its retry found the pop receipt stale: in doubt, the message may run again");
                Err(StoreError::InDoubt { queue, id })
            }
            other => other,
        }
    }

    async fn peek(&self, inner: &dyn Queue, max: u8) -> Result<Vec<PeekedMessage>, StoreError> {
        self.run(inner.name(), "peek", || inner.peek(max))
            .await
            .result
    }

    async fn approximate_depth(&self, inner: &dyn Queue) -> Result<u64, StoreError> {
        self.run(inner.name(), "properties", || inner.approximate_depth())
            .await
            .result
    }
}

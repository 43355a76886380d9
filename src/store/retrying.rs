//! A store wrapper that retries every call on transient errors
//! ([`crate::backoff::retry_call`]): the one place where service faults are retried, so the
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

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tracing::{info, warn};

use super::{
    PeekedMessage, Queue, QueueStore, ReceivedMessage, SendOptions, SentMessage, StoreError,
    UnknownOutcomes, UpdatedMessage,
};
use crate::backoff::{retry_call, CallReport, RefusalStreak};
use crate::config::RetrySettings;

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

/// Wraps a store; its queues retry transient errors.
pub struct RetryingStore {
    inner: Arc<dyn QueueStore>,
    settings: RetrySettings,
    // One streak for the whole store: the credentials are the store's, not a queue's.
    refusals: Arc<RefusalStreak>,
    outcomes: Mutex<BTreeMap<String, Arc<OutcomeCounters>>>,
}

impl RetryingStore {
    /// Wraps `inner` with the retry policy `settings`. The embedded store is returned as it
    /// is: it has no transient faults to retry.
    pub fn wrap(inner: Arc<dyn QueueStore>, settings: RetrySettings) -> Arc<dyn QueueStore> {
        if inner.kind() == super::BackendKind::Embedded {
            return inner;
        }
        Arc::new(Self {
            inner,
            settings,
            refusals: Arc::default(),
            outcomes: Mutex::default(),
        })
    }

    fn counters(&self, queue: &str) -> Arc<OutcomeCounters> {
        self.outcomes
            .lock()
            .expect("outcomes mutex poisoned")
            .entry(queue.to_string())
            .or_default()
            .clone()
    }
}

impl QueueStore for RetryingStore {
    fn queue(&self, name: &str) -> Result<Arc<dyn Queue>, StoreError> {
        Ok(Arc::new(RetryingQueue {
            inner: self.inner.queue(name)?,
            settings: self.settings,
            refusals: self.refusals.clone(),
            outcomes: self.counters(name),
        }))
    }

    fn kind(&self) -> super::BackendKind {
        self.inner.kind()
    }

    fn account(&self) -> Option<String> {
        self.inner.account()
    }

    fn unknown_outcomes(&self, queue: &str) -> UnknownOutcomes {
        self.counters(queue).snapshot()
    }
}

struct RetryingQueue {
    inner: Arc<dyn Queue>,
    settings: RetrySettings,
    refusals: Arc<RefusalStreak>,
    outcomes: Arc<OutcomeCounters>,
}

impl RetryingQueue {
    async fn run<T, F, Fut>(&self, what: &str, op: F) -> CallReport<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        retry_call(&self.settings, &self.refusals, self.inner.name(), what, op).await
    }
}

fn add(counter: &AtomicU64, n: u32) {
    counter.fetch_add(u64::from(n), Ordering::Relaxed);
}

#[async_trait]
impl Queue for RetryingQueue {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn create_if_missing(&self) -> Result<(), StoreError> {
        self.run("create", || self.inner.create_if_missing())
            .await
            .result
    }

    async fn send(&self, text: &str, options: SendOptions) -> Result<SentMessage, StoreError> {
        let call = self.run("send", || self.inner.send(text, options)).await;
        if call.unanswered > 0 {
            add(&self.outcomes.sends, call.unanswered);
            warn!(queue = self.inner.name(), unanswered = call.unanswered, sent = call.result.is_ok(),
                  "a send went unanswered and may have stored its message: it may be on the queue once more than reported");
        }
        call.result
    }

    async fn receive(
        &self,
        max: u8,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, StoreError> {
        let call = self
            .run("receive", || self.inner.receive(max, visibility))
            .await;
        if call.unanswered > 0 {
            add(&self.outcomes.receives, call.unanswered);
            warn!(queue = self.inner.name(), unanswered = call.unanswered, ?visibility,
                  "a receive went unanswered: messages it took stay hidden for the visibility timeout and come back with one more dequeue");
        }
        call.result
    }

    async fn delete(&self, id: &str, pop_receipt: &str) -> Result<(), StoreError> {
        let call = self
            .run("delete", || self.inner.delete(id, pop_receipt))
            .await;
        match call.result {
            Err(StoreError::MessageNotFound { .. }) if call.unanswered > 0 => {
                add(&self.outcomes.deletes_confirmed, 1);
                info!(
                    queue = self.inner.name(),
                    message_id = id,
                    "a delete went unanswered and its retry found the message gone: it was deleted"
                );
                Ok(())
            }
            other => other,
        }
    }

    async fn update(
        &self,
        id: &str,
        pop_receipt: &str,
        visibility: Duration,
        text: Option<&str>,
    ) -> Result<UpdatedMessage, StoreError> {
        let call = self
            .run("update", || {
                self.inner.update(id, pop_receipt, visibility, text)
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

    async fn peek(&self, max: u8) -> Result<Vec<PeekedMessage>, StoreError> {
        self.run("peek", || self.inner.peek(max)).await.result
    }

    async fn approximate_depth(&self) -> Result<u64, StoreError> {
        self.run("properties", || self.inner.approximate_depth())
            .await
            .result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use std::sync::atomic::AtomicU32;

    /// A store whose queues do the work of an embedded queue, then lose the answers of the
    /// first `lose` calls of one kind (as a cut connection would).
    struct Lossy {
        inner: Arc<dyn QueueStore>,
        kind: &'static str,
        lose: Arc<AtomicU32>,
    }

    struct LossyQueue {
        inner: Arc<dyn Queue>,
        kind: &'static str,
        lose: Arc<AtomicU32>,
    }

    impl QueueStore for Lossy {
        fn queue(&self, name: &str) -> Result<Arc<dyn Queue>, StoreError> {
            Ok(Arc::new(LossyQueue {
                inner: self.inner.queue(name)?,
                kind: self.kind,
                lose: self.lose.clone(),
            }))
        }
        fn kind(&self) -> crate::store::BackendKind {
            crate::store::BackendKind::Azure
        }
    }

    impl LossyQueue {
        fn answer<T>(&self, kind: &str, result: Result<T, StoreError>) -> Result<T, StoreError> {
            let lost = kind == self.kind
                && self
                    .lose
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
            if lost {
                return Err(StoreError::Unanswered {
                    queue: self.inner.name().into(),
                    detail: "connection reset".into(),
                });
            }
            result
        }
    }

    #[async_trait]
    impl Queue for LossyQueue {
        fn name(&self) -> &str {
            self.inner.name()
        }
        async fn create_if_missing(&self) -> Result<(), StoreError> {
            self.inner.create_if_missing().await
        }
        async fn send(&self, text: &str, o: SendOptions) -> Result<SentMessage, StoreError> {
            let r = self.inner.send(text, o).await;
            self.answer("send", r)
        }
        async fn receive(&self, max: u8, v: Duration) -> Result<Vec<ReceivedMessage>, StoreError> {
            let r = self.inner.receive(max, v).await;
            self.answer("receive", r)
        }
        async fn delete(&self, id: &str, receipt: &str) -> Result<(), StoreError> {
            let r = self.inner.delete(id, receipt).await;
            self.answer("delete", r)
        }
        async fn update(
            &self,
            id: &str,
            receipt: &str,
            v: Duration,
            text: Option<&str>,
        ) -> Result<UpdatedMessage, StoreError> {
            let r = self.inner.update(id, receipt, v, text).await;
            self.answer("update", r)
        }
        async fn peek(&self, max: u8) -> Result<Vec<PeekedMessage>, StoreError> {
            self.inner.peek(max).await
        }
        async fn approximate_depth(&self) -> Result<u64, StoreError> {
            self.inner.approximate_depth().await
        }
    }

    /// A retrying store over a lossy embedded queue `q` holding `messages` messages, and a
    /// handle on the embedded queue itself.
    async fn setup(
        kind: &'static str,
        lose: u32,
        messages: usize,
    ) -> (Arc<dyn QueueStore>, Arc<dyn Queue>) {
        let memory: Arc<dyn QueueStore> = Arc::new(MemoryStore::new());
        let direct = memory.queue("qqq").unwrap();
        direct.create_if_missing().await.unwrap();
        for i in 0..messages {
            direct
                .send(&format!("m{i}"), SendOptions::default())
                .await
                .unwrap();
        }
        let lossy = Arc::new(Lossy {
            inner: memory,
            kind,
            lose: Arc::new(AtomicU32::new(lose)),
        });
        let settings = RetrySettings {
            min_delay: Duration::from_millis(10),
            ..RetrySettings::default()
        };
        let store: Arc<dyn QueueStore> = Arc::new(RetryingStore {
            inner: lossy,
            settings,
            refusals: Arc::default(),
            outcomes: Mutex::default(),
        });
        (store, direct)
    }

    #[tokio::test(start_paused = true)]
    async fn a_delete_whose_answer_was_lost_is_done() {
        let (store, direct) = setup("delete", 1, 1).await;
        let q = store.queue("qqq").unwrap();
        let m = q
            .receive(1, Duration::from_secs(30))
            .await
            .unwrap()
            .remove(0);
        q.delete(&m.id, &m.pop_receipt).await.unwrap();
        assert_eq!(direct.approximate_depth().await.unwrap(), 0);
        let counted = store.unknown_outcomes("qqq");
        assert_eq!(
            counted,
            UnknownOutcomes {
                deletes_confirmed: 1,
                ..Default::default()
            }
        );
        // Without a lost try, a 404 is still lost ownership.
        let err = q.delete(&m.id, &m.pop_receipt).await.unwrap_err();
        assert!(matches!(err, StoreError::MessageNotFound { .. }), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_update_whose_answer_was_lost_is_in_doubt() {
        let (store, _direct) = setup("update", 1, 1).await;
        let q = store.queue("qqq").unwrap();
        let m = q
            .receive(1, Duration::from_secs(30))
            .await
            .unwrap()
            .remove(0);
        let err = q
            .update(&m.id, &m.pop_receipt, Duration::from_secs(30), None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::InDoubt { ref id, .. } if *id == m.id),
            "{err}"
        );
        assert!(!err.is_transient());
        assert_eq!(store.unknown_outcomes("qqq").updates_in_doubt, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_send_whose_answer_was_lost_is_stored_twice_and_counted() {
        let (store, direct) = setup("send", 1, 0).await;
        store
            .queue("qqq")
            .unwrap()
            .send("once", SendOptions::default())
            .await
            .unwrap();
        assert_eq!(direct.peek(32).await.unwrap().len(), 2, "stored twice");
        assert_eq!(store.unknown_outcomes("qqq").sends, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_receive_whose_answer_was_lost_hides_its_messages_for_one_timeout() {
        let (store, _direct) = setup("receive", 1, 3).await;
        let q = store.queue("qqq").unwrap();
        let got = q.receive(32, Duration::from_secs(5)).await.unwrap();
        assert!(got.is_empty(), "the lost try took all three");
        assert_eq!(store.unknown_outcomes("qqq").receives, 1);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let back = q.receive(32, Duration::from_secs(5)).await.unwrap();
        assert_eq!(back.len(), 3);
        assert!(
            back.iter().all(|m| m.dequeue_count == 2),
            "a dequeue nobody saw"
        );
    }
}

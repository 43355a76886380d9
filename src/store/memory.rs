//! The embedded in-process backend: the service's queue semantics in memory.
//!
//! Visibility and expiry are kept on tokio's clock, so tests with a paused clock see messages
//! reappear exactly when their timeout lapses. Wall-clock timestamps are only metadata.
//!
//! It refuses what the service refuses ([`super::rules`]) and counts durations in whole
//! seconds as the service does. Every time it computes is checked: a time beyond what the
//! clock can hold (a time to live of 68 years on a clock near its end) counts as never, so no
//! input can make it panic. Its lock never stays poisoned: a panic elsewhere while holding it
//! (none is known) would leave the queues as they were, and the next call takes them back.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::time::Instant;

use super::rules::{check_count, check_receive, check_send, check_update, whole_seconds};
use super::{
    validate_queue_name, PeekedMessage, Queue, QueueStore, ReceivedMessage, SendOptions,
    SentMessage, StoreError, UpdatedMessage,
};

#[derive(Debug)]
struct Stored {
    id: String,
    pop_receipt: String,
    dequeue_count: u32,
    inserted_at: OffsetDateTime,
    /// `None`: never expires.
    expires_at: Option<OffsetDateTime>,
    /// `None`: never expires.
    expires: Option<Instant>,
    visible_at: Instant,
    text: String,
}

impl Stored {
    fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|t| t <= now)
    }
}

/// `now` plus `d` counted in whole seconds, as the service counts; `None` past the clock's end.
fn later(now: Instant, d: Duration) -> Option<Instant> {
    now.checked_add(Duration::from_secs(whole_seconds(d)))
}

/// Takes the queues even if a panic poisoned the lock: every change under it is a single
/// step that leaves them consistent.
fn lock(queues: &Mutex<Queues>) -> MutexGuard<'_, Queues> {
    queues.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One queue's messages, oldest first, and the earliest time one of them may expire (so the
/// expiry sweep runs only when due, not on every call).
#[derive(Debug, Default)]
struct QueueState {
    messages: VecDeque<Stored>,
    next_expiry: Option<Instant>,
}

type Queues = HashMap<String, QueueState>;

/// An in-process queue service; clones share the same queues.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    // A std mutex: every critical section is short and never held across an await.
    queues: Arc<Mutex<Queues>>,
}

impl MemoryStore {
    /// An empty store with no queues.
    pub fn new() -> Self {
        Self::default()
    }
}

impl QueueStore for MemoryStore {
    fn queue(&self, name: &str) -> Result<Arc<dyn Queue>, StoreError> {
        validate_queue_name(name).map_err(|e| StoreError::Invalid {
            queue: name.to_string(),
            detail: e.rule,
            source: None,
        })?;
        Ok(Arc::new(MemoryQueue {
            name: name.to_string(),
            queues: self.queues.clone(),
        }))
    }

    fn kind(&self) -> super::BackendKind {
        super::BackendKind::Embedded
    }
}

struct MemoryQueue {
    name: String,
    queues: Arc<Mutex<Queues>>,
}

impl MemoryQueue {
    /// Runs `f` on this queue's messages, after dropping the expired ones.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut VecDeque<Stored>, Instant) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let now = Instant::now();
        let mut queues = lock(&self.queues);
        let state = queues
            .get_mut(&self.name)
            .ok_or_else(|| StoreError::QueueNotFound {
                queue: self.name.clone(),
            })?;
        if state.next_expiry.is_some_and(|t| t <= now) {
            state.messages.retain(|m| !m.expired(now));
            state.next_expiry = state.messages.iter().filter_map(|m| m.expires).min();
        }
        let result = f(&mut state.messages, now);
        // A send appends: keep the earliest expiry up to date. (A deleted message's expiry
        // may linger; that only makes one sweep come early.)
        if let Some(expires) = state.messages.back().and_then(|m| m.expires) {
            if state.next_expiry.is_none_or(|t| expires < t) {
                state.next_expiry = Some(expires);
            }
        }
        result
    }

    fn not_found(&self, id: &str) -> StoreError {
        StoreError::MessageNotFound {
            queue: self.name.clone(),
            id: id.to_string(),
        }
    }
}

/// A fresh pop receipt: 128 random bits from the thread's generator. `Uuid::new_v4` asks the
/// OS for entropy on every call (a `getrandom` system call), which a profile of the embedded
/// dispatch loop showed as a tenth of its time; receipts only need to differ.
fn new_receipt() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A fresh message id: a version-4 UUID built from the thread's generator (see
/// [`new_receipt`]).
fn new_id() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

#[async_trait]
impl Queue for MemoryQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn create_if_missing(&self) -> Result<(), StoreError> {
        let mut queues = lock(&self.queues);
        queues.entry(self.name.clone()).or_default();
        Ok(())
    }

    async fn send(&self, text: &str, options: SendOptions) -> Result<SentMessage, StoreError> {
        check_send(&self.name, text, &options)?;
        self.with(|messages, now| {
            let inserted_at = super::now_utc();
            let life = options.time_to_live.duration();
            let message = Stored {
                id: new_id(),
                pop_receipt: new_receipt(),
                dequeue_count: 0,
                inserted_at,
                expires_at: life.and_then(|d| {
                    let d = time::Duration::try_from(Duration::from_secs(whole_seconds(d))).ok()?;
                    inserted_at.checked_add(d)
                }),
                expires: life.and_then(|d| later(now, d)),
                // The delay is at most 7 days (checked): always on the clock.
                visible_at: later(now, options.initial_delay).unwrap_or(now),
                text: text.to_string(),
            };
            let sent = SentMessage {
                id: message.id.clone(),
                pop_receipt: message.pop_receipt.clone(),
            };
            messages.push_back(message);
            Ok(sent)
        })
    }

    async fn receive(
        &self,
        max: u8,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, StoreError> {
        check_receive(&self.name, max, visibility)?;
        self.with(|messages, now| {
            let hidden_until = later(now, visibility).unwrap_or(now);
            let batch = messages
                .iter_mut()
                .filter(|m| m.visible_at <= now)
                .take(usize::from(max))
                .map(|m| {
                    m.dequeue_count = m.dequeue_count.saturating_add(1);
                    m.pop_receipt = new_receipt();
                    m.visible_at = hidden_until;
                    ReceivedMessage {
                        id: m.id.clone(),
                        pop_receipt: m.pop_receipt.clone(),
                        dequeue_count: m.dequeue_count,
                        inserted_at: Some(m.inserted_at),
                        expires_at: m.expires_at,
                        text: m.text.clone(),
                    }
                })
                .collect();
            Ok(batch)
        })
    }

    async fn delete(&self, id: &str, pop_receipt: &str) -> Result<(), StoreError> {
        self.with(|messages, _| {
            let at = messages
                .iter()
                .position(|m| m.id == id && m.pop_receipt == pop_receipt)
                .ok_or_else(|| self.not_found(id))?;
            messages.remove(at);
            Ok(())
        })
    }

    async fn update(
        &self,
        id: &str,
        pop_receipt: &str,
        visibility: Duration,
        text: Option<&str>,
    ) -> Result<UpdatedMessage, StoreError> {
        check_update(&self.name, visibility, text)?;
        self.with(|messages, now| {
            let m = messages
                .iter_mut()
                .find(|m| m.id == id && m.pop_receipt == pop_receipt)
                .ok_or_else(|| self.not_found(id))?;
            let visible_at = later(now, visibility).unwrap_or(now);
            // The service: "cannot be set to a value later than the expiry time".
            if m.expires.is_some_and(|expires| visible_at > expires) {
                return Err(StoreError::Invalid {
                    queue: self.name.clone(),
                    detail: format!(
                        "visibility timeout of {}: message {id} expires sooner",
                        humantime::format_duration(visibility)
                    ),
                    source: None,
                });
            }
            m.visible_at = visible_at;
            m.pop_receipt = new_receipt();
            if let Some(text) = text {
                m.text = text.to_string();
            }
            Ok(UpdatedMessage {
                pop_receipt: m.pop_receipt.clone(),
            })
        })
    }

    async fn peek(&self, max: u8) -> Result<Vec<PeekedMessage>, StoreError> {
        check_count(&self.name, max)?;
        self.with(|messages, now| {
            Ok(messages
                .iter()
                .filter(|m| m.visible_at <= now)
                .take(usize::from(max))
                .map(|m| PeekedMessage {
                    id: m.id.clone(),
                    dequeue_count: m.dequeue_count,
                    inserted_at: Some(m.inserted_at),
                    text: m.text.clone(),
                })
                .collect())
        })
    }

    async fn approximate_depth(&self) -> Result<u64, StoreError> {
        self.with(|messages, _| Ok(messages.len() as u64))
    }

    async fn clear(&self) -> Result<(), StoreError> {
        self.with(|messages, _| {
            messages.clear();
            Ok(())
        })
    }

    async fn delete_queue(&self) -> Result<(), StoreError> {
        lock(&self.queues)
            .remove(&self.name)
            .map(drop)
            .ok_or_else(|| StoreError::QueueNotFound {
                queue: self.name.clone(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TimeToLive;

    /// Update Message "cannot be set to a value later than the expiry time" (Azurite does not
    /// check this, so the conformance table cannot; the embedded store follows the service).
    #[tokio::test(start_paused = true)]
    async fn an_update_may_not_hide_a_message_past_its_expiry() {
        let store = MemoryStore::new();
        let q = store.queue("expiry").unwrap();
        q.create_if_missing().await.unwrap();
        let minute = SendOptions {
            time_to_live: TimeToLive::After(Duration::from_secs(60)),
            ..SendOptions::default()
        };
        q.send("m", minute).await.unwrap();
        let m = q
            .receive(1, Duration::from_secs(10))
            .await
            .unwrap()
            .remove(0);
        let err = q
            .update(&m.id, &m.pop_receipt, Duration::from_secs(61), None)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("expires sooner"), "{err}");
        q.update(&m.id, &m.pop_receipt, Duration::from_secs(59), None)
            .await
            .unwrap();
        // A message that never expires can be hidden the full 7 days.
        let never = SendOptions {
            time_to_live: TimeToLive::Never,
            ..SendOptions::default()
        };
        q.send("n", never).await.unwrap();
        let n = q
            .receive(1, Duration::from_secs(10))
            .await
            .unwrap()
            .remove(0);
        q.update(&n.id, &n.pop_receipt, crate::service::MAX_VISIBILITY, None)
            .await
            .unwrap();
    }
}

//! The embedded in-process backend: the service's queue semantics in memory.
//!
//! Visibility and expiry are kept on tokio's clock, so tests with a paused clock see messages
//! reappear exactly when their timeout lapses. Wall-clock timestamps are only metadata.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::time::Instant;

use super::{
    check_receive_count, check_visibility, validate_queue_name, PeekedMessage, Queue, QueueStore,
    ReceivedMessage, SendOptions, SentMessage, StoreError, UpdatedMessage, MAX_MESSAGE_BYTES,
};

const DEFAULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug)]
struct Stored {
    id: String,
    pop_receipt: String,
    dequeue_count: u32,
    inserted_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    expires: Instant,
    visible_at: Instant,
    text: String,
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
        validate_queue_name(name).map_err(|detail| StoreError::Invalid {
            queue: name.to_string(),
            detail,
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
        let mut queues = self.queues.lock().expect("memory store mutex poisoned");
        let state = queues
            .get_mut(&self.name)
            .ok_or_else(|| StoreError::QueueNotFound {
                queue: self.name.clone(),
            })?;
        if state.next_expiry.is_some_and(|t| t <= now) {
            state.messages.retain(|m| m.expires > now);
            state.next_expiry = state.messages.iter().map(|m| m.expires).min();
        }
        let result = f(&mut state.messages, now);
        // A send appends: keep the earliest expiry up to date. (A deleted message's expiry
        // may linger; that only makes one sweep come early.)
        if let Some(last) = state.messages.back() {
            if state.next_expiry.is_none_or(|t| last.expires < t) {
                state.next_expiry = Some(last.expires);
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

    fn check_size(&self, text: &str) -> Result<(), StoreError> {
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(StoreError::Invalid {
                queue: self.name.clone(),
                detail: format!(
                    "message text of {} bytes: must be at most {MAX_MESSAGE_BYTES}",
                    text.len()
                ),
            });
        }
        Ok(())
    }
}

fn new_receipt() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[async_trait]
impl Queue for MemoryQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn create_if_missing(&self) -> Result<(), StoreError> {
        let mut queues = self.queues.lock().expect("memory store mutex poisoned");
        queues.entry(self.name.clone()).or_default();
        Ok(())
    }

    async fn send(&self, text: &str, options: SendOptions) -> Result<SentMessage, StoreError> {
        self.check_size(text)?;
        check_visibility(&self.name, "initial delay", options.initial_delay)?;
        let ttl = options.time_to_live.unwrap_or(DEFAULT_TTL);
        if ttl.is_zero() || options.initial_delay >= ttl {
            return Err(StoreError::Invalid {
                queue: self.name.clone(),
                detail: "time to live must be positive and longer than the initial delay".into(),
            });
        }
        self.with(|messages, now| {
            let inserted_at = super::now_utc();
            let message = Stored {
                id: uuid::Uuid::new_v4().to_string(),
                pop_receipt: new_receipt(),
                dequeue_count: 0,
                inserted_at,
                expires_at: inserted_at + ttl,
                expires: now + ttl,
                visible_at: now + options.initial_delay,
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
        check_receive_count(&self.name, max)?;
        check_visibility(&self.name, "visibility timeout", visibility)?;
        self.with(|messages, now| {
            let batch = messages
                .iter_mut()
                .filter(|m| m.visible_at <= now)
                .take(max as usize)
                .map(|m| {
                    m.dequeue_count += 1;
                    m.pop_receipt = new_receipt();
                    m.visible_at = now + visibility;
                    ReceivedMessage {
                        id: m.id.clone(),
                        pop_receipt: m.pop_receipt.clone(),
                        dequeue_count: m.dequeue_count,
                        inserted_at: Some(m.inserted_at),
                        expires_at: Some(m.expires_at),
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
        check_visibility(&self.name, "visibility timeout", visibility)?;
        if let Some(text) = text {
            self.check_size(text)?;
        }
        self.with(|messages, now| {
            let m = messages
                .iter_mut()
                .find(|m| m.id == id && m.pop_receipt == pop_receipt)
                .ok_or_else(|| self.not_found(id))?;
            m.visible_at = now + visibility;
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
        check_receive_count(&self.name, max)?;
        self.with(|messages, now| {
            Ok(messages
                .iter()
                .filter(|m| m.visible_at <= now)
                .take(max as usize)
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
}

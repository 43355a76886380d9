//! The simulated service's scalability targets: a store layer over the embedded store that
//! answers 503 ServerBusy (a [`StoreError::Transient`]) beyond them, on tokio's clock.
//!
//! - **Per queue**, about 2,000 messages per second: one budget for messages put (each send
//!   counts one) and one for messages taken (a receive counts the messages it returns, an
//!   empty one counts one). Deletes and updates act on messages already counted.
//! - **Per account**, 20,000 requests per second: every call counts one.
//!
//! Each budget is a token bucket refilled at its rate and holding at most one second's worth.
//! A call is refused, before it reaches the queue, when a budget it needs is empty; a refused
//! call costs nothing. The layer calls itself an Azure backend, so the worker wraps it in its
//! retrying layer and backs off from a 503 as it would against the service.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::time::Instant;

use crate::store::{
    BackendKind, PeekedMessage, Queue, QueueStore, ReceivedMessage, SendOptions, SentMessage,
    StoreError, UpdatedMessage,
};

/// The `[service]` section of a profile: the targets the simulated service enforces.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceSettings {
    /// Messages per second one queue takes in, and gives out.
    pub queue_messages_per_second: f64,
    /// Requests per second one storage account answers.
    pub account_requests_per_second: f64,
    /// Storage accounts the queues are spread over (queue `i` on account `i % accounts`).
    pub accounts: u32,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            queue_messages_per_second: 2_000.0,
            account_requests_per_second: 20_000.0,
            accounts: 1,
        }
    }
}

impl ServiceSettings {
    /// Checks the values; errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        for (key, v) in [
            ("queue_messages_per_second", self.queue_messages_per_second),
            (
                "account_requests_per_second",
                self.account_requests_per_second,
            ),
        ] {
            if !(v.is_finite() && v >= 1.0) {
                return Err(format!("profile service.{key} = {v}: must be at least 1"));
            }
        }
        if !(1..=100).contains(&self.accounts) {
            return Err(format!(
                "profile service.accounts = {}: must be 1..=100",
                self.accounts
            ));
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: f64, now: Instant) -> Self {
        Self {
            rate,
            tokens: rate,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.at = now;
    }
}

/// The budgets of one queue.
#[derive(Debug)]
struct QueueBudget {
    account: usize,
    put: Bucket,
    take: Bucket,
}

#[derive(Debug)]
struct Budgets {
    settings: ServiceSettings,
    accounts: Vec<Bucket>,
    queues: HashMap<String, QueueBudget>,
    /// Physical queue name to account index; unlisted queues are on account 0.
    placement: HashMap<String, usize>,
}

/// Which per-queue budget a call needs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Needs {
    Put,
    Take,
    Nothing,
}

/// Refused calls, by budget.
#[derive(Debug, Default)]
pub struct Throttled {
    /// Calls refused because their queue's budget was spent.
    pub queue: AtomicU64,
    /// Calls refused because their account's budget was spent.
    pub account: AtomicU64,
}

impl Throttled {
    /// All refused calls.
    pub fn total(&self) -> u64 {
        self.queue.load(Ordering::Relaxed) + self.account.load(Ordering::Relaxed)
    }
}

/// The layer: wraps a store (the embedded one) with the service's targets.
#[derive(Clone)]
pub struct ServiceLimits {
    inner: Arc<dyn QueueStore>,
    budgets: Arc<Mutex<Budgets>>,
    throttled: Arc<Throttled>,
}

impl ServiceLimits {
    /// Wraps `inner`; `placement` puts physical queues on accounts (others go on account 0).
    pub fn new(
        inner: Arc<dyn QueueStore>,
        settings: ServiceSettings,
        placement: HashMap<String, usize>,
    ) -> Self {
        let now = Instant::now();
        let accounts = (0..settings.accounts)
            .map(|_| Bucket::new(settings.account_requests_per_second, now))
            .collect();
        Self {
            inner,
            budgets: Arc::new(Mutex::new(Budgets {
                settings,
                accounts,
                queues: HashMap::new(),
                placement,
            })),
            throttled: Arc::default(),
        }
    }

    /// The refused calls so far.
    pub fn throttled(&self) -> Arc<Throttled> {
        self.throttled.clone()
    }
}

impl QueueStore for ServiceLimits {
    fn queue(&self, name: &str) -> Result<Arc<dyn Queue>, StoreError> {
        Ok(Arc::new(LimitedQueue {
            inner: self.inner.queue(name)?,
            budgets: self.budgets.clone(),
            throttled: self.throttled.clone(),
        }))
    }

    /// Azure: the service's faults are the worker's to retry.
    fn kind(&self) -> BackendKind {
        BackendKind::Azure
    }
}

struct LimitedQueue {
    inner: Arc<dyn Queue>,
    budgets: Arc<Mutex<Budgets>>,
    throttled: Arc<Throttled>,
}

impl LimitedQueue {
    /// Takes one request from the account and checks the queue's budget; refuses with 503.
    fn admit(&self, needs: Needs) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut b = self.budgets.lock().expect("service budgets mutex");
        let b = &mut *b;
        let name = self.inner.name();
        if !b.queues.contains_key(name) {
            let account = b.placement.get(name).copied().unwrap_or(0) % b.accounts.len();
            let rate = b.settings.queue_messages_per_second;
            b.queues.insert(
                name.to_string(),
                QueueBudget {
                    account,
                    put: Bucket::new(rate, now),
                    take: Bucket::new(rate, now),
                },
            );
        }
        let q = b.queues.get_mut(name).expect("inserted above");
        let account = &mut b.accounts[q.account];
        account.refill(now);
        if account.tokens < 1.0 {
            self.throttled.account.fetch_add(1, Ordering::Relaxed);
            return Err(busy(name, "account request rate"));
        }
        let bucket = match needs {
            Needs::Put => Some(&mut q.put),
            Needs::Take => Some(&mut q.take),
            Needs::Nothing => None,
        };
        if let Some(bucket) = bucket {
            bucket.refill(now);
            if bucket.tokens < 1.0 {
                self.throttled.queue.fetch_add(1, Ordering::Relaxed);
                return Err(busy(name, "queue message rate"));
            }
            // A put costs one; a take is charged what it returned, after it ran.
            if needs == Needs::Put {
                bucket.tokens -= 1.0;
            }
        }
        account.tokens -= 1.0;
        Ok(())
    }

    fn charge_take(&self, messages: usize) {
        let mut b = self.budgets.lock().expect("service budgets mutex");
        if let Some(q) = b.queues.get_mut(self.inner.name()) {
            q.take.tokens -= messages.max(1) as f64;
        }
    }
}

fn busy(queue: &str, what: &str) -> StoreError {
    StoreError::Transient {
        queue: queue.to_string(),
        detail: format!("503 ServerBusy: over the {what} target"),
    }
}

#[async_trait]
impl Queue for LimitedQueue {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn create_if_missing(&self) -> Result<(), StoreError> {
        self.admit(Needs::Nothing)?;
        self.inner.create_if_missing().await
    }
    async fn send(&self, text: &str, options: SendOptions) -> Result<SentMessage, StoreError> {
        self.admit(Needs::Put)?;
        self.inner.send(text, options).await
    }
    async fn receive(
        &self,
        max: u8,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, StoreError> {
        self.admit(Needs::Take)?;
        let got = self.inner.receive(max, visibility).await?;
        self.charge_take(got.len());
        Ok(got)
    }
    async fn delete(&self, id: &str, pop_receipt: &str) -> Result<(), StoreError> {
        self.admit(Needs::Nothing)?;
        self.inner.delete(id, pop_receipt).await
    }
    async fn update(
        &self,
        id: &str,
        pop_receipt: &str,
        visibility: Duration,
        text: Option<&str>,
    ) -> Result<UpdatedMessage, StoreError> {
        self.admit(Needs::Nothing)?;
        self.inner.update(id, pop_receipt, visibility, text).await
    }
    async fn peek(&self, max: u8) -> Result<Vec<PeekedMessage>, StoreError> {
        self.admit(Needs::Nothing)?;
        self.inner.peek(max).await
    }
    async fn approximate_depth(&self) -> Result<u64, StoreError> {
        self.admit(Needs::Nothing)?;
        self.inner.approximate_depth().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[tokio::test(start_paused = true)]
    async fn over_the_queue_target_sends_get_503_and_the_budget_refills() {
        let limits = ServiceLimits::new(
            Arc::new(MemoryStore::new()),
            ServiceSettings {
                queue_messages_per_second: 100.0,
                ..ServiceSettings::default()
            },
            HashMap::new(),
        );
        let q = limits.queue("orders").unwrap();
        q.create_if_missing().await.unwrap();
        for _ in 0..100 {
            q.send("x", SendOptions::default()).await.unwrap();
        }
        let err = q.send("x", SendOptions::default()).await.unwrap_err();
        assert!(
            err.is_transient() && err.to_string().contains("503 ServerBusy"),
            "{err}"
        );
        assert_eq!(limits.throttled().queue.load(Ordering::Relaxed), 1);
        // Takes have their own budget: 100 messages out in this second.
        let mut taken = 0;
        for _ in 0..4 {
            taken += q.receive(32, Duration::from_secs(30)).await.unwrap().len();
        }
        assert_eq!(taken, 100);
        assert!(q.receive(32, Duration::from_secs(30)).await.is_err());
        // A refused call did nothing: the queue still holds exactly the 100 sent.
        assert_eq!(q.approximate_depth().await.unwrap(), 100);
        tokio::time::advance(Duration::from_millis(100)).await;
        for _ in 0..10 {
            q.send("x", SendOptions::default()).await.unwrap();
        }
        assert!(q.send("x", SendOptions::default()).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_account_target_spans_its_queues_and_accounts_are_separate() {
        let placement = HashMap::from([("b-queue".to_string(), 1)]);
        let limits = ServiceLimits::new(
            Arc::new(MemoryStore::new()),
            ServiceSettings {
                account_requests_per_second: 10.0,
                accounts: 2,
                ..ServiceSettings::default()
            },
            placement,
        );
        let (a1, a2, b) = (
            limits.queue("a-queue").unwrap(),
            limits.queue("a-other").unwrap(),
            limits.queue("b-queue").unwrap(),
        );
        for q in [&a1, &a2, &b] {
            q.create_if_missing().await.unwrap();
        }
        // Account 0 has spent 2 of 10 on creates; 8 more calls over both of its queues.
        for i in 0..8 {
            let q = if i % 2 == 0 { &a1 } else { &a2 };
            q.approximate_depth().await.unwrap();
        }
        assert!(a2.approximate_depth().await.is_err());
        assert_eq!(limits.throttled().account.load(Ordering::Relaxed), 1);
        // Account 1 is not touched by account 0's load.
        for _ in 0..9 {
            b.approximate_depth().await.unwrap();
        }
    }
}

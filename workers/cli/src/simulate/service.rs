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

use serde::Deserialize;
use tokio::time::Instant;

use ebbflow::store::{
    BackendKind, Layered, LayeredStore, Operation, Queue, QueueLayer, QueueStore, ReceivedMessage,
    StoreError, StoreLayer,
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

/// The layer: the service's targets on a store (the embedded one). A [`QueueLayer`] whose
/// one hook, [`QueueLayer::around`], admits or refuses every call, and whose `receive` also
/// charges the messages it returned; a [`StoreLayer`] that puts it on every queue and calls
/// the store an Azure backend (so the worker retries its 503s).
#[derive(Clone)]
pub struct ServiceLimits {
    budgets: Arc<Mutex<Budgets>>,
    throttled: Arc<Throttled>,
}

impl ServiceLimits {
    /// The targets of `settings`; `placement` puts physical queues on accounts (others go on
    /// account 0).
    pub fn new(settings: ServiceSettings, placement: HashMap<String, usize>) -> Self {
        let now = Instant::now();
        let accounts = (0..settings.accounts)
            .map(|_| Bucket::new(settings.account_requests_per_second, now))
            .collect();
        Self {
            budgets: Arc::new(Mutex::new(Budgets {
                settings,
                accounts,
                queues: HashMap::new(),
                placement,
            })),
            throttled: Arc::default(),
        }
    }

    /// `inner` behind these targets.
    pub fn on(&self, inner: Arc<dyn QueueStore>) -> Arc<dyn QueueStore> {
        LayeredStore::wrap(inner, self.clone())
    }

    /// The refused calls so far.
    pub fn throttled(&self) -> Arc<Throttled> {
        self.throttled.clone()
    }

    /// Takes one request from the account and checks the queue's budget; refuses with 503.
    fn admit(&self, name: &str, needs: Needs) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut b = self.budgets.lock().expect("service budgets mutex");
        let b = &mut *b;
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

    fn charge_take(&self, name: &str, messages: usize) {
        let mut b = self.budgets.lock().expect("service budgets mutex");
        if let Some(q) = b.queues.get_mut(name) {
            q.take.tokens -= messages.max(1) as f64;
        }
    }
}

fn busy(queue: &str, what: &str) -> StoreError {
    StoreError::Transient {
        queue: queue.to_string(),
        detail: format!("503 ServerBusy: over the {what} target"),
        source: None,
    }
}

impl QueueLayer for ServiceLimits {
    async fn around<T: Send>(
        &self,
        queue: &str,
        operation: Operation,
        call: impl std::future::Future<Output = Result<T, StoreError>> + Send,
    ) -> Result<T, StoreError> {
        let needs = match operation {
            Operation::Send => Needs::Put,
            Operation::Receive => Needs::Take,
            _ => Needs::Nothing,
        };
        self.admit(queue, needs)?;
        call.await
    }

    async fn receive(
        &self,
        inner: &dyn Queue,
        max: u8,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, StoreError> {
        let got = self
            .around(
                inner.name(),
                Operation::Receive,
                inner.receive(max, visibility),
            )
            .await?;
        self.charge_take(inner.name(), got.len());
        Ok(got)
    }
}

impl StoreLayer for ServiceLimits {
    fn wrap(&self, queue: Arc<dyn Queue>) -> Arc<dyn Queue> {
        Layered::wrap(queue, self.clone())
    }

    /// Azure: the service's faults are the worker's to retry.
    fn kind(&self, _inner: &dyn QueueStore) -> BackendKind {
        BackendKind::Azure
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ebbflow::store::MemoryStore;
    use ebbflow::store::SendOptions;

    #[tokio::test(start_paused = true)]
    async fn over_the_queue_target_sends_get_503_and_the_budget_refills() {
        let limits = ServiceLimits::new(
            ServiceSettings {
                queue_messages_per_second: 100.0,
                ..ServiceSettings::default()
            },
            HashMap::new(),
        );
        let store = limits.on(Arc::new(MemoryStore::new()));
        assert_eq!(store.kind(), BackendKind::Azure);
        let q = store.queue("orders").unwrap();
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
            ServiceSettings {
                account_requests_per_second: 10.0,
                accounts: 2,
                ..ServiceSettings::default()
            },
            placement,
        );
        let store = limits.on(Arc::new(MemoryStore::new()));
        let (a1, a2, b) = (
            store.queue("a-queue").unwrap(),
            store.queue("a-other").unwrap(),
            store.queue("b-queue").unwrap(),
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

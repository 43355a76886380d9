//! De-duplication by message id or a key from the payload: in this process (bounded memory),
//! and across replicas through the bus when it is shared (marks with an expiry).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::task::AbortOnDropHandle;

use super::lock;
use crate::bus::{Bus, BusError, DedupClaim};
use crate::handler::{HandlerError, Job, Layer, Next};

/// Reads a de-duplication key from a job.
type KeyOf = dyn Fn(&Job) -> Option<String> + Send + Sync;

/// De-duplication: a message whose key was handled successfully before (in this process, among
/// the last `capacity` keys) is deleted without running. The key is the message id (a message
/// delivered twice: a lost delete, an expired lease) or one read from the payload (the same
/// order sent twice). While a message with the same key runs, a duplicate is released for a
/// few seconds rather than run beside it.
///
/// Memory is bounded: the oldest keys are forgotten past `capacity`. By default only this
/// process's runs are known; with [`Dedup::across_replicas`] and a shared bus (`bus.kind =
/// "redis"`) the replicas share what they run and handled, for a window.
///
/// Clones share one memory.
#[derive(Clone)]
pub struct Dedup {
    key: Arc<KeyOf>,
    memory: Arc<Mutex<Memory>>,
    /// How long a key handled is remembered on the bus (`across_replicas`).
    window: Option<Duration>,
}

impl std::fmt::Debug for Dedup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = lock(&self.memory);
        f.debug_struct("Dedup")
            .field("capacity", &m.capacity)
            .field("remembered", &m.order.len())
            .field("window", &self.window)
            .finish()
    }
}

#[derive(Debug)]
struct Memory {
    capacity: usize,
    done: HashSet<String>,
    order: VecDeque<String>,
    running: HashSet<String>,
}

impl Memory {
    fn remember(&mut self, key: String) {
        if self.done.insert(key.clone()) {
            self.order.push_back(key);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.done.remove(&old);
                }
            }
        }
    }
}

/// How long a duplicate of a running message waits before it is looked at again.
const DUPLICATE_RUNNING_DELAY: Duration = Duration::from_secs(5);
/// How long a replica's running mark on the bus lives without renewal: a replica that dies
/// mid-run holds the key at most this long.
pub const SHARED_LEASE: Duration = Duration::from_secs(30);
/// The longest window [`Dedup::across_replicas`] takes: 7 days, the longest a queue message
/// lives by default.
pub const MAX_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

impl Dedup {
    /// By message id, remembering the last `capacity` ids handled (at least 1).
    pub fn by_message_id(capacity: usize) -> Self {
        Self::by_key(capacity, |job| Some(job.ctx().message_id().to_string()))
    }

    /// By a key read from the job (its payload bytes, usually), remembering the last
    /// `capacity` keys handled (at least 1). A job without a key (`None`) always runs.
    pub fn by_key(
        capacity: usize,
        key: impl Fn(&Job) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            key: Arc::new(key),
            memory: Arc::new(Mutex::new(Memory {
                capacity: capacity.max(1),
                done: HashSet::new(),
                order: VecDeque::new(),
                running: HashSet::new(),
            })),
            window: None,
        }
    }

    /// Shares the de-duplication with every replica on the worker's bus: a key (per queue)
    /// handled successfully by any replica is skipped by all for `window` (at most
    /// [`MAX_WINDOW`]), and while one replica runs it the others release their duplicates.
    /// On Redis these are two expiring keys per key (`<prefix>:dedup:done:<queue>:<key>` for
    /// `window`, `<prefix>:dedup:run:<queue>:<key>` for [`SHARED_LEASE`], renewed while the
    /// run lasts), so Redis holds one small key per message handled within the window; the
    /// in-process memory stays in front of them (bounded by `capacity`).
    ///
    /// When the bus is not shared (`bus.kind = "none"`) or the context has no bus (a test
    /// context), the marks stay in this process. When a bus call fails (Redis down), the
    /// message runs with this process's check only, logged as a warning: an outage weakens
    /// the de-duplication, it never stops the queue.
    pub fn across_replicas(mut self, window: Duration) -> Self {
        self.window = Some(window.min(MAX_WINDOW));
        self
    }
}

/// Forgets a running key however the run ends (a drop at the drain deadline included).
struct Running<'a> {
    memory: &'a Mutex<Memory>,
    key: String,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        lock(self.memory).running.remove(&self.key);
    }
}

/// This replica's running mark on the bus: renewed while held, and ended with
/// [`Bus::dedup_finish`], in the background when the run's future is dropped (a handler
/// timeout, the drain deadline), else left to expire.
struct Claim {
    bus: Arc<dyn Bus>,
    key: String,
    token: String,
    _renewing: AbortOnDropHandle<()>,
    finished: bool,
}

impl Claim {
    fn new(bus: Arc<dyn Bus>, key: String, token: String) -> Self {
        let renewing = {
            let (bus, key, token) = (bus.clone(), key.clone(), token.clone());
            AbortOnDropHandle::new(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(SHARED_LEASE / 3).await;
                    match bus.dedup_renew(&key, &token, SHARED_LEASE).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(key, "de-duplication mark expired while running");
                            return;
                        }
                        Err(error) => {
                            tracing::warn!(key, %error, "de-duplication mark not renewed");
                        }
                    }
                }
            }))
        };
        Self {
            bus,
            key,
            token,
            _renewing: renewing,
            finished: false,
        }
    }

    async fn finish(mut self, done_for: Option<Duration>) {
        self.finished = true;
        if let Err(error) = self
            .bus
            .dedup_finish(&self.key, &self.token, done_for)
            .await
        {
            tracing::warn!(key = self.key, %error, "de-duplication mark not recorded");
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let (bus, key, token) = (self.bus.clone(), self.key.clone(), self.token.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = bus.dedup_finish(&key, &token, None).await;
            });
        }
    }
}

impl Layer for Dedup {
    async fn call(&self, job: Job, next: Next) -> Result<(), HandlerError> {
        let Some(key) = (self.key)(&job) else {
            return next.run(job).await;
        };
        {
            let mut m = lock(&self.memory);
            if m.done.contains(&key) {
                tracing::info!(
                    queue = job.ctx().queue(),
                    message_id = job.ctx().message_id(),
                    key,
                    "duplicate of a message handled before; deleted without running"
                );
                return Ok(());
            }
            if !m.running.insert(key.clone()) {
                return Err(HandlerError::Release {
                    after: DUPLICATE_RUNNING_DELAY,
                    source: "a message with the same key is running".into(),
                });
            }
        }
        let running = Running {
            memory: &self.memory,
            key,
        };
        let bus = match (self.window, job.ctx().bus()) {
            (Some(_), Some(bus)) => Some(bus.transport()),
            _ => None,
        };
        let mut claim = None;
        if let Some(bus) = bus {
            let shared = format!("{}:{}", job.ctx().queue(), running.key);
            let token = uuid::Uuid::new_v4().simple().to_string();
            match bus.dedup_claim(&shared, &token, SHARED_LEASE).await {
                Ok(DedupClaim::Claimed) => claim = Some(Claim::new(bus, shared, token)),
                Ok(DedupClaim::Done) => {
                    tracing::info!(
                        queue = job.ctx().queue(),
                        message_id = job.ctx().message_id(),
                        key = running.key,
                        "duplicate of a message another replica handled; deleted without running"
                    );
                    lock(&self.memory).remember(running.key.clone());
                    return Ok(());
                }
                Ok(DedupClaim::Running) => {
                    return Err(HandlerError::Release {
                        after: DUPLICATE_RUNNING_DELAY,
                        source: "a message with the same key is running on another replica".into(),
                    });
                }
                Err(BusError::Unsupported(_)) => {}
                Err(error) => tracing::warn!(
                    queue = job.ctx().queue(),
                    key = running.key,
                    %error,
                    "de-duplication across replicas unavailable; checked in this process only"
                ),
            }
        }
        let result = next.run(job).await;
        if let Some(claim) = claim {
            claim
                .finish(result.is_ok().then_some(self.window).flatten())
                .await;
        }
        if result.is_ok() {
            lock(&self.memory).remember(running.key.clone());
        }
        drop(running);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::memory::MemoryBroker;
    use crate::bus::{BusHandle, Member};
    use crate::handler::{Context, Erased, Handler, SharedLayer, Stack};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Counts runs; waits for `gate` when one is set; fails while `fail` is set.
    #[derive(Clone, Default)]
    struct Counted {
        runs: Arc<AtomicU32>,
        fail: Arc<std::sync::atomic::AtomicBool>,
        gate: Option<Arc<tokio::sync::Notify>>,
    }

    impl Handler for Counted {
        type Message = String;
        async fn handle(&self, _: String, _: Context) -> Result<(), HandlerError> {
            self.runs.fetch_add(1, Ordering::SeqCst);
            if let Some(gate) = &self.gate {
                gate.notified().await;
            }
            if self.fail.load(Ordering::SeqCst) {
                return Err(HandlerError::retry("downstream down"));
            }
            Ok(())
        }
    }

    /// A replica: its own layer (its own memory) and its own instance of the shared broker.
    struct Replica {
        stack: Stack,
        bus: BusHandle,
    }

    impl Replica {
        fn new(broker: &MemoryBroker, name: &str, handler: Counted) -> Self {
            let member = Member::new(name, "worker").unwrap();
            let bus = BusHandle::new(Arc::new(broker.connect(member, Duration::from_secs(30))));
            let layer = Dedup::by_message_id(100).across_replicas(Duration::from_secs(600));
            let stack = Stack::new(vec![SharedLayer::new(layer)], Arc::new(Erased(handler)));
            Self { stack, bus }
        }

        fn run(&self, id: &str) -> impl std::future::Future<Output = &'static str> + use<'_> {
            let ctx = crate::testing::context("orders")
                .message_id(id)
                .bus(self.bus.clone())
                .build();
            let run = self.stack.run(Job::new(ctx, b"x".to_vec()));
            async move { crate::handler::layer::outcome_name(&run.await) }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn replicas_sharing_a_bus_run_a_message_id_once_within_the_window() {
        let broker = MemoryBroker::new();
        let handler = Counted::default();
        let (a, b) = (
            Replica::new(&broker, "a", handler.clone()),
            Replica::new(&broker, "b", handler.clone()),
        );
        assert_eq!(a.run("m1").await, "ok");
        assert_eq!(b.run("m1").await, "ok", "b deletes a's duplicate");
        assert_eq!(handler.runs.load(Ordering::SeqCst), 1);
        // A failure is not remembered: the other replica's retry runs.
        handler.fail.store(true, Ordering::SeqCst);
        assert_eq!(a.run("m2").await, "retry");
        handler.fail.store(false, Ordering::SeqCst);
        assert_eq!(b.run("m2").await, "ok");
        assert_eq!(handler.runs.load(Ordering::SeqCst), 3);
        // Past the window the mark is gone (b's own memory still knows m2, a's does not).
        tokio::time::sleep(Duration::from_secs(601)).await;
        assert_eq!(a.run("m2").await, "ok");
        assert_eq!(handler.runs.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_duplicate_is_released_while_another_replica_runs_it_and_a_dead_run_expires() {
        let broker = MemoryBroker::new();
        let gate = Arc::new(tokio::sync::Notify::new());
        let slow = Counted {
            gate: Some(gate.clone()),
            ..Counted::default()
        };
        let fast = Counted::default();
        let a = Replica::new(&broker, "a", slow.clone());
        let b = Replica::new(&broker, "b", fast.clone());
        let running = tokio::spawn({
            let ctx = crate::testing::context("orders")
                .message_id("m1")
                .bus(a.bus.clone())
                .build();
            a.stack.run(Job::new(ctx, b"x".to_vec()))
        });
        tokio::task::yield_now().await;
        // Held past several leases: the running mark is renewed meanwhile.
        tokio::time::sleep(SHARED_LEASE * 3).await;
        assert_eq!(b.run("m1").await, "release", "a still runs it");
        gate.notify_one();
        assert!(running.await.unwrap().is_ok());
        assert_eq!(b.run("m1").await, "ok");
        assert_eq!(fast.runs.load(Ordering::SeqCst), 0, "b never ran m1");
        // A run whose future is dropped (a replica dying mid-run) holds the key at most one
        // lease: the mark is removed in the background here, and would expire otherwise.
        let dropped = {
            let ctx = crate::testing::context("orders")
                .message_id("m2")
                .bus(a.bus.clone())
                .build();
            tokio::time::timeout(Duration::from_secs(1), a.stack.run(Job::new(ctx, vec![])))
        };
        assert!(dropped.await.is_err());
        tokio::task::yield_now().await;
        assert_eq!(b.run("m2").await, "ok", "the dropped run's mark is gone");
        assert_eq!(fast.runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_bus_across_replicas_stays_in_this_process() {
        let handler = Counted::default();
        let layer = Dedup::by_message_id(10).across_replicas(Duration::from_secs(60));
        let stack = Stack::new(
            vec![SharedLayer::new(layer)],
            Arc::new(Erased(handler.clone())),
        );
        for _ in 0..2 {
            let job = Job::new(Context::detached("q", "m", 1), vec![]);
            assert!(stack.run(job).await.is_ok());
        }
        assert_eq!(handler.runs.load(Ordering::SeqCst), 1);
    }
}

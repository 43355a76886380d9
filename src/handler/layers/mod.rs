//! Layers that ship with ebbflow: a rate limit towards a downstream, a concurrency limit shared
//! by several queues, a circuit breaker and de-duplication. Add them with
//! [`crate::Worker::layer`] (every queue) or [`crate::Worker::layer_for`] (one queue). Clones
//! share their state: add clones of one limit to several queues to limit them together.
//!
//! ```
//! use std::time::Duration;
//! use ebbflow::handler::layers::{CircuitBreaker, ConcurrencyLimit, Dedup, RateLimit};
//! # fn settings() -> ebbflow::Settings { ebbflow::Settings::default() }
//!
//! // At most 50 calls a second to the billing API, from two queues together.
//! let billing_api = RateLimit::new(50, Duration::from_secs(1));
//! // At most 8 database writers at once across both queues.
//! let database = ConcurrencyLimit::new(8);
//! let worker = ebbflow::Worker::new(settings())
//!     .layer(CircuitBreaker::new(5, Duration::from_secs(30)))
//!     .layer_for("invoices", billing_api.clone())
//!     .layer_for("refunds", billing_api)
//!     .layer_for("invoices", database.clone())
//!     .layer_for("refunds", database)
//!     .layer_for("invoices", Dedup::by_message_id(10_000));
//! # let _ = worker;
//! ```

mod dedup;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{HandlerError, Job, Layer, Next};
pub use crate::checks::InvalidSetting;
pub use dedup::{Dedup, MAX_WINDOW, SHARED_LEASE};

/// The shortest delay a release asks for: the service counts visibility in whole seconds.
const MIN_RELEASE: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each state below is updated in one step under the lock: one left by a panic is whole.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A rate limit towards a downstream: at most `calls` runs per `every`, as a token bucket (up
/// to `calls` at once after a quiet spell). A message over the limit is **released**, not
/// failed: it becomes visible again once a token is due (at least a second later, as the
/// service counts whole seconds), without using up a retry or being counted as a failure.
///
/// Clones share one bucket.
#[derive(Debug, Clone)]
pub struct RateLimit {
    bucket: Arc<Mutex<Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    capacity: f64,
    tokens: f64,
    /// Tokens added per second.
    rate: f64,
    last: Instant,
}

impl RateLimit {
    /// At most `calls` runs per `every`.
    ///
    /// # Panics
    /// When `calls` is 0 or `every` is zero (such a limit would release every message
    /// forever), with the message of [`RateLimit::try_new`]'s error naming the argument. Use
    /// `try_new` for values read at run time.
    pub fn new(calls: u32, every: Duration) -> Self {
        Self::try_new(calls, every).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`RateLimit::new`], checked.
    ///
    /// # Errors
    /// [`InvalidSetting`] naming the argument (`RateLimit::new(calls)` = 0, or
    /// `RateLimit::new(every)` = 0s) and the rule.
    pub fn try_new(calls: u32, every: Duration) -> Result<Self, InvalidSetting> {
        if calls == 0 {
            return Err(InvalidSetting::new(
                "RateLimit::new(calls)",
                calls,
                "must be at least 1 (a limit of 0 would release every message forever)",
            ));
        }
        if every.is_zero() {
            return Err(InvalidSetting::new(
                "RateLimit::new(every)",
                "0s",
                "must be above zero (calls per what period?)",
            ));
        }
        Ok(Self {
            bucket: Arc::new(Mutex::new(Bucket {
                capacity: f64::from(calls),
                tokens: f64::from(calls),
                rate: f64::from(calls) / every.as_secs_f64(),
                last: Instant::now(),
            })),
        })
    }

    /// Takes a token, or says how long until one is due.
    fn take(&self) -> Result<(), Duration> {
        let mut b = lock(&self.bucket);
        let now = Instant::now();
        let refill = now.duration_since(b.last).as_secs_f64() * b.rate;
        b.tokens = (b.tokens + refill).min(b.capacity);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let due = Duration::from_secs_f64((1.0 - b.tokens) / b.rate);
        Err(due.max(MIN_RELEASE))
    }
}

impl Layer for RateLimit {
    async fn call(&self, job: Job, next: Next) -> Result<(), HandlerError> {
        match self.take() {
            Ok(()) => next.run(job).await,
            Err(after) => Err(HandlerError::Release {
                after,
                source: "over the rate limit".into(),
            }),
        }
    }
}

/// At most `n` runs at once through this layer, however many queues share it (each queue's
/// `concurrency` still applies). A message over the limit waits for a place, holding its
/// concurrency slot; its lease renews meanwhile, and a stop or the drain deadline ends the wait
/// like a handler's.
///
/// Clones share the places.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit {
    places: Arc<Semaphore>,
}

impl ConcurrencyLimit {
    /// At most `n` runs at once.
    ///
    /// # Panics
    /// When `n` is 0 (nothing would ever run), with the message of
    /// [`ConcurrencyLimit::try_new`]'s error naming the argument.
    pub fn new(n: usize) -> Self {
        Self::try_new(n).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`ConcurrencyLimit::new`], checked.
    ///
    /// # Errors
    /// [`InvalidSetting`] naming the argument (`ConcurrencyLimit::new(n)` = 0) and the rule.
    pub fn try_new(n: usize) -> Result<Self, InvalidSetting> {
        if n == 0 {
            return Err(InvalidSetting::new(
                "ConcurrencyLimit::new(n)",
                n,
                "must be at least 1 (with no places nothing would ever run)",
            ));
        }
        Ok(Self {
            places: Arc::new(Semaphore::new(n)),
        })
    }

    /// Runs now: places free at this moment.
    pub fn available(&self) -> usize {
        self.places.available_permits()
    }
}

impl Layer for ConcurrencyLimit {
    async fn call(&self, job: Job, next: Next) -> Result<(), HandlerError> {
        // Never closed, so acquiring only waits.
        let _place = self.places.acquire().await.map_err(HandlerError::retry)?;
        next.run(job).await
    }
}

/// A circuit breaker: after `failures` failed runs in a row (retryable errors: the downstream
/// is likely down), it opens for `open_for` and **releases** every message meanwhile (visible
/// again when it closes, no failure counted, no retry used up). Then one message is let
/// through as a trial: its success closes the breaker, its failure opens it again. Messages
/// arriving while the trial runs are released for a second.
///
/// What counts as a failure: a [`HandlerError::Retry`], and a run that never finished (the
/// handler timed out, panicked, or was aborted by the drain deadline: the runtime drops the
/// stack's future, and the breaker counts that as a failure, so a trial that hangs cannot keep
/// it waiting for good). A poison or an undecodable payload is the message's fault, not the
/// downstream's, and a release is no failure.
///
/// Clones share one breaker.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    state: Arc<Mutex<Breaker>>,
    failures: u32,
    open_for: Duration,
}

#[derive(Debug, Default)]
struct Breaker {
    in_a_row: u32,
    open_until: Option<Instant>,
    trial: bool,
}

/// What the breaker lets a run do.
#[derive(Debug, PartialEq, Eq)]
enum Pass {
    Run,
    Trial,
    Release(Duration),
}

impl CircuitBreaker {
    /// Opens after `failures` failures in a row, for `open_for`.
    ///
    /// # Panics
    /// When `failures` is 0, with the message of [`CircuitBreaker::try_new`]'s error naming
    /// the argument.
    pub fn new(failures: u32, open_for: Duration) -> Self {
        Self::try_new(failures, open_for).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`CircuitBreaker::new`], checked.
    ///
    /// # Errors
    /// [`InvalidSetting`] naming the argument (`CircuitBreaker::new(failures)` = 0) and the
    /// rule.
    pub fn try_new(failures: u32, open_for: Duration) -> Result<Self, InvalidSetting> {
        if failures == 0 {
            return Err(InvalidSetting::new(
                "CircuitBreaker::new(failures)",
                failures,
                "must be at least 1 (failures in a row before it opens)",
            ));
        }
        Ok(Self {
            state: Arc::default(),
            failures,
            open_for,
        })
    }

    /// Whether it is open (releasing) now.
    pub fn is_open(&self) -> bool {
        lock(&self.state)
            .open_until
            .is_some_and(|t| Instant::now() < t)
    }

    fn pass(&self) -> Pass {
        let mut s = lock(&self.state);
        match s.open_until {
            None => Pass::Run,
            Some(until) if Instant::now() < until => {
                Pass::Release((until - Instant::now()).max(MIN_RELEASE))
            }
            Some(_) if s.trial => Pass::Release(MIN_RELEASE),
            Some(_) => {
                s.trial = true;
                Pass::Trial
            }
        }
    }

    fn record(&self, trial: bool, failed: bool) {
        let mut s = lock(&self.state);
        if trial {
            s.trial = false;
        }
        if !failed {
            if trial || s.open_until.is_none() {
                *s = Breaker::default();
            }
            return;
        }
        s.in_a_row = s.in_a_row.saturating_add(1);
        if trial || (s.open_until.is_none() && s.in_a_row >= self.failures) {
            s.open_until = Some(Instant::now() + self.open_for);
            tracing::warn!(failures = s.in_a_row, open_for = ?self.open_for,
                           "circuit breaker open: releasing messages until it closes");
        }
    }
}

/// One run through the breaker, recorded as a failure if its future is dropped before it ends.
struct Attempt<'a> {
    breaker: &'a CircuitBreaker,
    trial: bool,
    recorded: bool,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker.record(self.trial, true);
        }
    }
}

impl Layer for CircuitBreaker {
    async fn call(&self, job: Job, next: Next) -> Result<(), HandlerError> {
        let trial = match self.pass() {
            Pass::Run => false,
            Pass::Trial => true,
            Pass::Release(after) => {
                return Err(HandlerError::Release {
                    after,
                    source: "circuit breaker open".into(),
                })
            }
        };
        let mut attempt = Attempt {
            breaker: self,
            trial,
            recorded: false,
        };
        let result = next.run(job).await;
        attempt.recorded = true;
        self.record(trial, matches!(result, Err(HandlerError::Retry { .. })));
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::{Context, Erased, Handler, SharedLayer, Stack};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Counts runs; fails while `fail` is set.
    #[derive(Clone, Default)]
    struct Downstream {
        runs: Arc<AtomicU32>,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Handler for Downstream {
        type Message = String;
        async fn handle(&self, _: String, _: Context) -> Result<(), HandlerError> {
            self.runs.fetch_add(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) {
                return Err(HandlerError::retry("downstream down"));
            }
            Ok(())
        }
    }

    fn stack<L: Layer>(layer: L, handler: Downstream) -> Stack {
        Stack::new(vec![SharedLayer::new(layer)], Arc::new(Erased(handler)))
    }

    async fn run(stack: &Stack, id: &str, text: &str) -> &'static str {
        let job = Job::new(Context::detached("q", id, 1), text.as_bytes().to_vec());
        crate::handler::layer::outcome_name(&stack.run(job).await)
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limit_releases_over_the_limit_and_refills() {
        let down = Downstream::default();
        let s = stack(RateLimit::new(2, Duration::from_secs(1)), down.clone());
        assert_eq!(run(&s, "1", "x").await, "ok");
        assert_eq!(run(&s, "2", "x").await, "ok");
        assert_eq!(run(&s, "3", "x").await, "release");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(run(&s, "4", "x").await, "ok");
        assert_eq!(run(&s, "5", "x").await, "release");
        assert_eq!(down.runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_concurrency_limit_is_shared_by_its_clones() {
        let limit = ConcurrencyLimit::new(1);
        let gate = Arc::new(tokio::sync::Notify::new());
        struct Wait(Arc<tokio::sync::Notify>);
        impl Handler for Wait {
            type Message = String;
            async fn handle(&self, _: String, _: Context) -> Result<(), HandlerError> {
                self.0.notified().await;
                Ok(())
            }
        }
        let a = Stack::new(
            vec![SharedLayer::new(limit.clone())],
            Arc::new(Erased(Wait(gate.clone()))),
        );
        let b = Stack::new(
            vec![SharedLayer::new(limit.clone())],
            Arc::new(Erased(Downstream::default())),
        );
        let first = tokio::spawn(a.run(Job::new(Context::detached("a", "1", 1), vec![])));
        tokio::task::yield_now().await;
        assert_eq!(limit.available(), 0);
        let second = tokio::spawn(b.run(Job::new(Context::detached("b", "2", 1), vec![])));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !second.is_finished(),
            "the other queue waits for the shared place"
        );
        gate.notify_one();
        assert!(first.await.unwrap().is_ok());
        assert!(second.await.unwrap().is_ok());
        assert_eq!(limit.available(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_breaker_opens_releases_then_tries_one_and_closes() {
        let down = Downstream::default();
        let breaker = CircuitBreaker::new(2, Duration::from_secs(30));
        let s = stack(breaker.clone(), down.clone());
        down.fail.store(true, Ordering::SeqCst);
        assert_eq!(run(&s, "1", "x").await, "retry");
        assert!(!breaker.is_open());
        assert_eq!(run(&s, "2", "x").await, "retry");
        assert!(breaker.is_open());
        assert_eq!(run(&s, "3", "x").await, "release");
        assert_eq!(down.runs.load(Ordering::SeqCst), 2);
        // The trial fails: open again.
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(run(&s, "4", "x").await, "retry");
        assert!(breaker.is_open());
        // The next trial succeeds: closed.
        tokio::time::sleep(Duration::from_secs(31)).await;
        down.fail.store(false, Ordering::SeqCst);
        assert_eq!(run(&s, "5", "x").await, "ok");
        assert!(!breaker.is_open());
        assert_eq!(run(&s, "6", "x").await, "ok");
    }

    /// A run whose future is dropped (the runtime's handler timeout, panic catch and drain abort
    /// sit outside the stack) counts as a failure, and a dropped trial opens the breaker again
    /// instead of leaving it waiting for a result that never comes.
    #[tokio::test(start_paused = true)]
    async fn a_run_that_never_ends_counts_as_a_failure_and_never_wedges_the_trial() {
        struct Hang;
        impl Handler for Hang {
            type Message = String;
            async fn handle(&self, _: String, _: Context) -> Result<(), HandlerError> {
                std::future::pending().await
            }
        }
        let breaker = CircuitBreaker::new(1, Duration::from_secs(30));
        let hang = Stack::new(
            vec![SharedLayer::new(breaker.clone())],
            Arc::new(Erased(Hang)),
        );
        let timed_out = |id: &'static str| {
            let job = Job::new(Context::detached("q", id, 1), b"x".to_vec());
            tokio::time::timeout(Duration::from_secs(1), hang.run(job))
        };
        assert!(timed_out("1").await.is_err());
        assert!(breaker.is_open(), "a timed-out run is a failure");
        // The trial hangs too and is dropped: open again, not stuck "trial running".
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert!(timed_out("2").await.is_err());
        assert!(breaker.is_open());
        tokio::time::sleep(Duration::from_secs(31)).await;
        let down = Downstream::default();
        let ok = stack(breaker.clone(), down.clone());
        assert_eq!(run(&ok, "3", "x").await, "ok", "the next trial runs");
        assert!(!breaker.is_open());
        assert_eq!(down.runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn dedup_skips_what_was_handled_and_forgets_the_oldest() {
        let down = Downstream::default();
        let by_text = Dedup::by_key(2, |job| String::from_utf8(job.bytes().to_vec()).ok());
        let s = stack(by_text, down.clone());
        assert_eq!(run(&s, "1", "a").await, "ok");
        assert_eq!(run(&s, "2", "a").await, "ok");
        assert_eq!(
            down.runs.load(Ordering::SeqCst),
            1,
            "the duplicate did not run"
        );
        assert_eq!(run(&s, "3", "b").await, "ok");
        assert_eq!(run(&s, "4", "c").await, "ok");
        // "a" was the oldest of three with room for two: forgotten, so it runs again.
        assert_eq!(run(&s, "5", "a").await, "ok");
        assert_eq!(down.runs.load(Ordering::SeqCst), 4);
        // A failure is not remembered: the retry runs.
        down.fail.store(true, Ordering::SeqCst);
        assert_eq!(run(&s, "6", "d").await, "retry");
        down.fail.store(false, Ordering::SeqCst);
        assert_eq!(run(&s, "6", "d").await, "ok");
        assert_eq!(down.runs.load(Ordering::SeqCst), 6);
    }
}

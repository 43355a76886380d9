//! Idle back-off and retries of transient service errors.
//!
//! Idle back-off is the randomized exponential curve from the queue-listener whitepaper.
//!
//! After the n-th empty receive in a row a dequeue task sleeps
//! `min + (2^n - 1) * random(0.8 * delta, 1.2 * delta)`, capped at `max`. The maths is pure and
//! takes its randomness from the caller, so tests can seed it; the listener sleeps with tokio's
//! clock, so paused-time tests see exactly the curve.
//!
//! [`retry_transient`] retries one store call on transient errors (5xx, throttling, timeouts,
//! connection errors) with `backon`'s exponential back-off and jitter, a bounded number of
//! times; every other error is returned at once.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use rand::{Rng, SeedableRng};
use tracing::warn;

use crate::config::{IdleBackoffSettings, RetrySettings};
use crate::store::StoreError;

/// Runs `op` (one store call named `what`, on `queue`) and retries it on transient errors:
/// exponential back-off with jitter between `min_delay` and `max_delay`, at most
/// `max_attempts` tries in all. A try that takes longer than `request_timeout` counts as a
/// transient failure. Each retry is logged at warn.
pub async fn retry_transient<T, F, Fut>(
    settings: &RetrySettings,
    queue: &str,
    what: &str,
    mut op: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let timeout = settings.request_timeout;
    let attempt = || {
        let call = op();
        async move {
            tokio::time::timeout(timeout, call)
                .await
                .unwrap_or_else(|_| {
                    Err(StoreError::Transient {
                        queue: queue.to_string(),
                        detail: format!("no answer within {timeout:?}"),
                    })
                })
        }
    };
    let policy = ExponentialBuilder::default()
        .with_min_delay(settings.min_delay)
        .with_max_delay(settings.max_delay)
        .with_max_times(settings.max_attempts.saturating_sub(1) as usize)
        .with_jitter();
    attempt
        .retry(policy)
        .sleep(tokio::time::sleep)
        .when(StoreError::is_transient)
        .notify(|e, delay| warn!(queue, call = what, retry_in = ?delay, error = %e, "transient error; retrying"))
        .await
}

/// The sleep after the `streak`-th empty receive in a row (`streak` >= 1), given a uniform
/// random factor `jitter` in `[0.8, 1.2]`.
pub fn idle_delay(settings: &IdleBackoffSettings, streak: u32, jitter: f64) -> Duration {
    let exponent = streak.min(62);
    // 2^n - 1 as f64 keeps working where the Duration maths would overflow; the cap below
    // brings it back into range.
    let factor = (2f64.powi(exponent as i32) - 1.0) * jitter.clamp(0.8, 1.2);
    let grow = settings.delta.as_secs_f64() * factor;
    let total = settings.min.as_secs_f64() + grow;
    if total >= settings.max.as_secs_f64() {
        settings.max
    } else {
        Duration::from_secs_f64(total)
    }
}

/// One dequeue task's idle back-off state: the streak of empty receives and its own RNG.
#[derive(Debug)]
pub struct IdleBackoff {
    settings: IdleBackoffSettings,
    streak: u32,
    rng: rand::rngs::SmallRng,
}

impl IdleBackoff {
    /// A back-off seeded from the OS: replicas must not back off in lockstep.
    pub fn new(settings: IdleBackoffSettings) -> Self {
        Self::with_rng(settings, rand::rngs::SmallRng::from_os_rng())
    }

    /// A back-off with a fixed seed, for tests and simulations.
    pub fn seeded(settings: IdleBackoffSettings, seed: u64) -> Self {
        Self::with_rng(settings, rand::rngs::SmallRng::seed_from_u64(seed))
    }

    fn with_rng(settings: IdleBackoffSettings, rng: rand::rngs::SmallRng) -> Self {
        Self {
            settings,
            streak: 0,
            rng,
        }
    }

    /// Records an empty receive and returns how long to sleep before the next one.
    pub fn next_delay(&mut self) -> Duration {
        self.streak = self.streak.saturating_add(1);
        let jitter = self.rng.random_range(0.8..=1.2);
        idle_delay(&self.settings, self.streak, jitter)
    }

    /// Work was found: start the curve again from `min`.
    pub fn reset(&mut self) {
        self.streak = 0;
    }

    /// Empty receives in a row so far.
    pub fn streak(&self) -> u32 {
        self.streak
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn transient() -> StoreError {
        StoreError::Transient {
            queue: "q".into(),
            detail: "503 ServerBusy".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_with_growing_bounded_delays() {
        let settings = RetrySettings {
            max_attempts: 4,
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(300),
            request_timeout: Duration::from_secs(1),
        };
        let tries = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let result: Result<(), _> = retry_transient(&settings, "q", "receive", || {
            tries.fetch_add(1, Ordering::SeqCst);
            async { Err(transient()) }
        })
        .await;
        assert!(result.unwrap_err().is_transient());
        assert_eq!(
            tries.load(Ordering::SeqCst),
            4,
            "max_attempts tries, no more"
        );
        // Three sleeps: 100, 200, 300 (capped) ms, each plus up to its own size in jitter.
        let slept = start.elapsed();
        assert!(
            slept >= Duration::from_millis(600) && slept <= Duration::from_millis(1200),
            "{slept:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_after_faults_is_returned_and_other_errors_are_not_retried() {
        let settings = RetrySettings::default();
        let tries = AtomicU32::new(0);
        let result = retry_transient(&settings, "q", "delete", || {
            let n = tries.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err(transient())
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(result.unwrap(), 2);
        let tries = AtomicU32::new(0);
        let result: Result<(), _> = retry_transient(&settings, "q", "delete", || {
            tries.fetch_add(1, Ordering::SeqCst);
            async {
                Err(StoreError::Unauthorized {
                    queue: "q".into(),
                    detail: "403".into(),
                })
            }
        })
        .await;
        assert!(matches!(result, Err(StoreError::Unauthorized { .. })));
        assert_eq!(tries.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_call_times_out_as_transient() {
        let settings = RetrySettings {
            max_attempts: 2,
            request_timeout: Duration::from_secs(2),
            ..RetrySettings::default()
        };
        let result: Result<(), _> = retry_transient(&settings, "q", "receive", || {
            std::future::pending::<Result<(), StoreError>>()
        })
        .await;
        let e = result.unwrap_err();
        assert!(e.is_transient());
        assert!(e.to_string().contains("no answer within 2s"), "{e}");
    }

    fn curve() -> IdleBackoffSettings {
        IdleBackoffSettings {
            min: Duration::from_millis(100),
            max: Duration::from_secs(30),
            delta: Duration::from_millis(100),
        }
    }

    #[test]
    fn follows_the_whitepaper_formula_at_the_jitter_bounds() {
        let s = curve();
        // n = 1: min + 1 * delta * j
        assert_eq!(idle_delay(&s, 1, 1.0), Duration::from_millis(200));
        assert_eq!(idle_delay(&s, 1, 0.8), Duration::from_millis(180));
        // n = 3: min + 7 * delta * j
        assert_eq!(idle_delay(&s, 3, 1.2), Duration::from_millis(940));
        // n = 9: 100ms + 511 * 100ms = 51.2s, capped at 30s
        assert_eq!(idle_delay(&s, 9, 0.8), Duration::from_secs(30));
        assert_eq!(idle_delay(&s, u32::MAX, 1.2), Duration::from_secs(30));
    }

    #[test]
    fn seeded_delays_grow_stay_in_band_and_reset() {
        let s = curve();
        let mut b = IdleBackoff::seeded(s, 7);
        let mut last = Duration::ZERO;
        for n in 1..=12u32 {
            let d = b.next_delay();
            let low = idle_delay(&s, n, 0.8);
            let high = idle_delay(&s, n, 1.2);
            assert!(
                d >= low && d <= high,
                "n={n}: {d:?} not in {low:?}..={high:?}"
            );
            assert!(d >= last, "the curve never shrinks while idle");
            last = d;
        }
        assert_eq!(last, s.max);
        b.reset();
        assert_eq!(b.streak(), 0);
        assert!(b.next_delay() <= idle_delay(&s, 1, 1.2));
    }

    #[test]
    fn two_seeds_give_different_jitter() {
        let mut a = IdleBackoff::seeded(curve(), 1);
        let mut b = IdleBackoff::seeded(curve(), 2);
        let da: Vec<_> = (0..5).map(|_| a.next_delay()).collect();
        let db: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert_ne!(da, db);
    }

    #[tokio::test(start_paused = true)]
    async fn sleeping_the_curve_under_paused_time_takes_its_sum() {
        let s = curve();
        let mut b = IdleBackoff::seeded(s, 42);
        let start = tokio::time::Instant::now();
        let mut expected = Duration::ZERO;
        for _ in 0..10 {
            let d = b.next_delay();
            expected += d;
            tokio::time::sleep(d).await;
        }
        let elapsed = start.elapsed();
        // Paused time advances exactly by the sleeps (to the millisecond granularity of tokio).
        assert!(elapsed >= expected && elapsed <= expected + Duration::from_millis(10));
    }
}

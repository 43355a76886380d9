//! Idle back-off: the randomized exponential curve from the queue-listener whitepaper.
//!
//! After the n-th empty receive in a row a dequeue task sleeps
//! `min + (2^n - 1) * random(0.8 * delta, 1.2 * delta)`, capped at `max`. The maths is pure and
//! takes its randomness from the caller, so tests can seed it; the listener sleeps with tokio's
//! clock, so paused-time tests see exactly the curve.
//!
//! Retries of transient service errors follow the same idea with `backon`'s curve; they live
//! beside the store they retry (`store::retrying`).

use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::checks::{check_duration, ConfigError};

/// The longest idle back-off allowed (`idle_backoff.max`).
const MAX_IDLE_BACKOFF: Duration = Duration::from_secs(600);

/// The randomized exponential idle back-off: after the n-th empty receive a task sleeps
/// `min + (2^n - 1) * random(0.8 * delta, 1.2 * delta)`, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct IdleBackoffSettings {
    /// The shortest sleep after an empty receive.
    #[serde(with = "humantime_serde")]
    pub min: Duration,
    /// The longest sleep, at most 10 minutes.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// The step that doubles with each further empty receive.
    #[serde(with = "humantime_serde")]
    pub delta: Duration,
}

impl Default for IdleBackoffSettings {
    fn default() -> Self {
        Self {
            min: Duration::from_millis(100),
            max: Duration::from_secs(30),
            delta: Duration::from_millis(100),
        }
    }
}

impl IdleBackoffSettings {
    /// Checks the curve of queue `queue`: `max` 1ms..=10m, `min` and `delta` at most `max`.
    pub(crate) fn validate(&self, queue: &str) -> Result<(), ConfigError> {
        let key = |field: &str| format!("queues.{queue}.idle_backoff.{field}");
        check_duration(
            &key("max"),
            self.max,
            Duration::from_millis(1),
            MAX_IDLE_BACKOFF,
        )?;
        check_duration(&key("min"), self.min, Duration::ZERO, self.max)?;
        check_duration(&key("delta"), self.delta, Duration::ZERO, self.max)?;
        Ok(())
    }
}

/// The sleep after the `streak`-th empty receive in a row (`streak` >= 1), given a uniform
/// random factor `jitter` in `[0.8, 1.2]`.
pub(crate) fn idle_delay(settings: &IdleBackoffSettings, streak: u32, jitter: f64) -> Duration {
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
pub(crate) struct IdleBackoff {
    settings: IdleBackoffSettings,
    streak: u32,
    rng: rand::rngs::SmallRng,
}

impl IdleBackoff {
    /// A back-off seeded from the OS: replicas must not back off in lockstep.
    pub(crate) fn new(settings: IdleBackoffSettings) -> Self {
        Self::with_rng(settings, rand::rngs::SmallRng::from_os_rng())
    }

    /// A back-off with a fixed seed, for tests.
    #[cfg(test)]
    pub(crate) fn seeded(settings: IdleBackoffSettings, seed: u64) -> Self {
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
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.streak = self.streak.saturating_add(1);
        let jitter = self.rng.random_range(0.8..=1.2);
        idle_delay(&self.settings, self.streak, jitter)
    }

    /// Work was found: start the curve again from `min`.
    pub(crate) fn reset(&mut self) {
        self.streak = 0;
    }

    /// Follows `settings` from the next delay on (a reload), keeping the streak.
    pub(crate) fn retune(&mut self, settings: IdleBackoffSettings) {
        self.settings = settings;
    }

    /// Empty receives in a row so far.
    pub(crate) fn streak(&self) -> u32 {
        self.streak
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

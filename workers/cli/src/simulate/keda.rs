//! A KEDA-like replica controller (KEDA's `azure-queue` scaler feeding the Kubernetes HPA), as
//! a pure state machine the simulator drives on its clock.
//!
//! What it models, with KEDA's and the HPA's defaults:
//! - **Activation** (KEDA, every `polling_interval`): at zero replicas, any queue deeper than
//!   `activation_queue_length` scales to `max(min, 1)`. Above zero, once no queue has been
//!   deeper than that for `cooldown_period`, it scales to `min` (0 when `min = 0`).
//! - **Replica count** (the HPA, every `hpa_sync_period`, 15 s): per queue (one trigger each)
//!   `ceil(depth / queue_length)`, the largest over the queues (the HPA takes the largest of its
//!   metrics), kept between `max(min, 1)` and `max`. The depth is the approximate message count,
//!   messages being handled included (KEDA's default `queueLengthStrategy = all`).
//! - **Tolerance**: no change while the ratio of wanted to current is within 10%.
//! - **Scale-up rate** (the HPA's default policy): at most `max(2 x current, current + 4)` per
//!   sync.
//! - **Scale-down stabilization** (the HPA's `scaleDown.stabilizationWindowSeconds`, 300 s): the
//!   count goes down only to the highest recommendation of the window.

use std::time::Duration;

use serde::Deserialize;

/// The `[replicas]` section of a profile: how the replica controller is set up.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicaSettings {
    /// `minReplicaCount`: replicas kept when idle (0 lets KEDA scale to zero).
    pub min: u32,
    /// `maxReplicaCount`, 1..=1000.
    pub max: u32,
    /// `queueLength`: target messages per replica, at least 1.
    pub queue_length: u64,
    /// `activationQueueLength`: a queue must be deeper than this to wake from zero.
    pub activation_queue_length: u64,
    /// `pollingInterval`: how often KEDA checks activation, 1 s..=1 h.
    #[serde(with = "humantime_serde")]
    pub polling_interval: Duration,
    /// `cooldownPeriod`: how long every queue must be inactive before scaling to `min`.
    #[serde(with = "humantime_serde")]
    pub cooldown_period: Duration,
    /// How long a new replica takes to start (scheduling, image pull, process start) before it
    /// receives; it counts towards replica-minutes from the moment it is created.
    #[serde(with = "humantime_serde")]
    pub startup_delay: Duration,
    /// The HPA's scale-down stabilization window.
    #[serde(with = "humantime_serde")]
    pub scale_down_stabilization: Duration,
    /// The HPA's sync period, 1 s..=1 h.
    #[serde(with = "humantime_serde")]
    pub hpa_sync_period: Duration,
}

impl Default for ReplicaSettings {
    fn default() -> Self {
        Self {
            min: 0,
            max: 10,
            queue_length: 5,
            activation_queue_length: 0,
            polling_interval: Duration::from_secs(30),
            cooldown_period: Duration::from_secs(300),
            startup_delay: Duration::from_secs(10),
            scale_down_stabilization: Duration::from_secs(300),
            hpa_sync_period: Duration::from_secs(15),
        }
    }
}

impl ReplicaSettings {
    /// Checks the values; errors name the key (`replicas.max`).
    pub fn validate(&self) -> Result<(), String> {
        let bad = |key: &str, rule: &str| Err(format!("profile replicas.{key}: {rule}"));
        if !(1..=1000).contains(&self.max) {
            return bad("max", "must be 1..=1000");
        }
        if self.min > self.max {
            return bad("min", "must be at most replicas.max");
        }
        if self.queue_length == 0 {
            return bad("queue_length", "must be at least 1");
        }
        let hour = Duration::from_secs(3600);
        for (key, d) in [
            ("polling_interval", self.polling_interval),
            ("hpa_sync_period", self.hpa_sync_period),
        ] {
            if !(Duration::from_secs(1)..=hour).contains(&d) {
                return bad(key, "must be 1s..=1h");
            }
        }
        for (key, d) in [
            ("cooldown_period", self.cooldown_period),
            ("startup_delay", self.startup_delay),
            ("scale_down_stabilization", self.scale_down_stabilization),
        ] {
            if d > hour {
                return bad(key, "must be at most 1h");
            }
        }
        Ok(())
    }
}

/// The controller's state between evaluations. Times are offsets from the simulation's start.
#[derive(Debug, Clone)]
pub struct Keda {
    settings: ReplicaSettings,
    replicas: u32,
    last_active: Option<Duration>,
    /// When it last woke from zero: the HPA takes over from its next sync.
    activated_at: Option<Duration>,
    /// (when, recommended count) of the HPA syncs within the stabilization window.
    recommendations: Vec<(Duration, u32)>,
}

impl Keda {
    /// A controller starting at `settings.min` replicas.
    pub fn new(settings: ReplicaSettings) -> Self {
        Self {
            replicas: settings.min,
            settings,
            last_active: None,
            activated_at: None,
            recommendations: Vec::new(),
        }
    }

    /// The replica count it wants now.
    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// KEDA's activation check at `now` with each queue's depth: wakes from zero, or scales to
    /// `min` after the cooldown. Returns the new count.
    pub fn poll(&mut self, now: Duration, depths: &[u64]) -> u32 {
        let s = &self.settings;
        let active = depths.iter().any(|d| *d > s.activation_queue_length);
        if active {
            self.last_active = Some(now);
            if self.replicas == 0 {
                self.replicas = s.min.max(1);
                self.activated_at = Some(now);
                self.recommendations.clear();
            }
        } else if self.replicas > s.min {
            let quiet_since = self.last_active.unwrap_or_default();
            if now.saturating_sub(quiet_since) >= s.cooldown_period {
                self.replicas = s.min;
                self.recommendations.clear();
            }
        }
        self.replicas
    }

    /// The HPA's sync at `now` with each queue's depth. Returns the new count. Does nothing at
    /// zero replicas (the HPA is paused there; activation is KEDA's), nor at the moment of
    /// waking from zero (the HPA starts with its next sync).
    pub fn sync(&mut self, now: Duration, depths: &[u64]) -> u32 {
        if self.replicas == 0 || self.activated_at == Some(now) {
            return self.replicas;
        }
        let s = &self.settings;
        let floor = s.min.max(1);
        let deepest = depths.iter().copied().max().unwrap_or(0);
        let wanted = u32::try_from(deepest.div_ceil(s.queue_length)).unwrap_or(u32::MAX);
        let current = self.replicas;
        // The HPA's usage ratio: the metric per replica over its target.
        let ratio = deepest as f64 / (s.queue_length as f64 * f64::from(current));
        let recommended = if (ratio - 1.0).abs() <= 0.1 {
            current
        } else {
            wanted.clamp(floor, s.max)
        };
        self.recommendations.push((now, recommended));
        let window = s.scale_down_stabilization;
        self.recommendations
            .retain(|(at, _)| now.saturating_sub(*at) <= window);
        let next = if recommended > current {
            recommended.min((current * 2).max(current + 4))
        } else {
            // Down only to the highest recommendation of the window.
            self.recommendations
                .iter()
                .map(|(_, r)| *r)
                .max()
                .unwrap_or(recommended)
                .min(current)
        };
        self.replicas = next.clamp(floor, s.max);
        self.replicas
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn keda(min: u32, max: u32, queue_length: u64) -> Keda {
        Keda::new(ReplicaSettings {
            min,
            max,
            queue_length,
            ..ReplicaSettings::default()
        })
    }

    #[test]
    fn wakes_from_zero_only_above_activation_and_sleeps_after_the_cooldown() {
        let mut k = Keda::new(ReplicaSettings {
            activation_queue_length: 10,
            ..ReplicaSettings::default()
        });
        assert_eq!(
            k.sync(secs(0), &[500]),
            0,
            "the HPA does not wake from zero"
        );
        assert_eq!(k.poll(secs(0), &[10]), 0, "not above activation");
        assert_eq!(k.poll(secs(30), &[0, 11]), 1);
        assert_eq!(
            k.sync(secs(30), &[0, 500]),
            1,
            "the HPA starts at its next sync"
        );
        assert_eq!(k.poll(secs(60), &[0, 0]), 1, "cooldown not over");
        assert_eq!(k.poll(secs(329), &[0, 0]), 1);
        assert_eq!(k.poll(secs(330), &[0, 0]), 0);
    }

    #[test]
    fn the_hpa_takes_the_deepest_queue_limits_scale_up_and_stabilizes_scale_down() {
        let mut k = keda(1, 100, 100);
        // ceil(1001 / 100) = 11 wanted; from 1, at most max(2, 1 + 4) = 5 per sync.
        assert_eq!(k.sync(secs(0), &[10, 1001]), 5);
        assert_eq!(k.sync(secs(15), &[10, 1001]), 10);
        // 1001 / (100 x 10) is within 10% of the current count: no change.
        assert_eq!(k.sync(secs(30), &[10, 1001]), 10);
        assert_eq!(k.sync(secs(45), &[1250]), 13);
        assert_eq!(k.sync(secs(50), &[1100]), 13, "down waits for the window");
        // Empty: the window still holds 13 until it ages out, then 11, then the floor.
        assert_eq!(k.sync(secs(60), &[0]), 13);
        assert_eq!(k.sync(secs(345), &[0]), 13);
        assert_eq!(k.sync(secs(346), &[0]), 11, "the 13 of 45 s aged out");
        assert_eq!(k.sync(secs(351), &[0]), 1, "window of 300 s passed");
        // Never above max.
        let mut k = keda(0, 3, 1);
        assert_eq!(k.poll(secs(0), &[50]), 1);
        assert_eq!(k.sync(secs(15), &[50]), 3);
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = ReplicaSettings {
            max: 0,
            ..ReplicaSettings::default()
        };
        assert!(bad.validate().unwrap_err().contains("replicas.max"));
        let bad = ReplicaSettings {
            min: 5,
            max: 4,
            ..ReplicaSettings::default()
        };
        assert!(bad.validate().unwrap_err().contains("replicas.min"));
        let bad = ReplicaSettings {
            queue_length: 0,
            ..ReplicaSettings::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .contains("replicas.queue_length"));
        let bad = ReplicaSettings {
            polling_interval: Duration::ZERO,
            ..ReplicaSettings::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .contains("replicas.polling_interval"));
    }
}

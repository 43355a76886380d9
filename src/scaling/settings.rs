//! The `[queues.<name>.scaling]` settings: how many dequeue tasks a queue runs, and when that
//! changes. Checked by [`ScalingSettings::validate`], naming the key.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::checks::{check_duration, check_range, ConfigError};

/// How many dequeue tasks a queue runs. Tasks are added at once when work shows up after
/// idleness, when batches come back full, when the (sparingly probed) depth calls for more, or
/// when the oldest message gets too old; a task whose idle back-off reached its maximum retires
/// unless it is the last one (or, with `min_tasks = 0`, also the last one).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScalingSettings {
    /// Tasks kept when idle: 1 (one task polls at the back-off maximum) or 0 (none poll; a push
    /// trigger or an idle depth probe brings the queue back).
    pub min_tasks: u32,
    /// Most tasks at once, 1..=256.
    pub max_tasks: u32,
    /// Target `ceil(depth / messages_per_task)` tasks (used when `depth_rules` is empty).
    pub messages_per_task: u32,
    /// Depth thresholds to task counts, e.g. `[{ from = 0, tasks = 1 }, { from = 100, tasks = 4 }]`:
    /// the rule with the highest `from` not above the depth applies. Overrides `messages_per_task`.
    pub depth_rules: Vec<DepthRule>,
    /// Least time between two scale-ups.
    #[serde(with = "humantime_serde")]
    pub scale_up_cooldown: Duration,
    /// Least time between two task retirements.
    #[serde(with = "humantime_serde")]
    pub scale_down_cooldown: Duration,
    /// While the queue is busy, probe its depth (one billable call) this often; also the least
    /// time between two probes prompted by events.
    #[serde(with = "humantime_serde")]
    pub depth_probe_interval: Duration,
    /// With no tasks running, probe the depth this often to notice work (off when unset).
    #[serde(with = "humantime_serde")]
    pub idle_probe_interval: Option<Duration>,
    /// Add a task when the oldest visible message is older than this (off when unset).
    #[serde(with = "humantime_serde")]
    pub scale_up_when_older_than: Option<Duration>,
    /// Declares that every producer of this queue publishes through this process's
    /// `Publisher`, so every message comes with its own trigger: the queue can wake from zero
    /// tasks, and after draining it a task waits for the next trigger instead of polling.
    pub wake_on_publish: bool,
}

impl Default for ScalingSettings {
    fn default() -> Self {
        Self {
            min_tasks: 1,
            max_tasks: 4,
            messages_per_task: 64,
            depth_rules: Vec::new(),
            scale_up_cooldown: Duration::from_secs(1),
            scale_down_cooldown: Duration::ZERO,
            depth_probe_interval: Duration::from_secs(5),
            idle_probe_interval: None,
            scale_up_when_older_than: None,
            wake_on_publish: false,
        }
    }
}

/// From `from` messages deep, run `tasks` tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DepthRule {
    /// The depth this rule starts at.
    pub from: u64,
    /// Tasks to run from there.
    pub tasks: u32,
}

impl ScalingSettings {
    pub(crate) fn validate(&self, name: &str, http_trigger: bool) -> Result<(), ConfigError> {
        let s = self;
        let key = |field: &str| format!("queues.{name}.scaling.{field}");
        check_range(&key("max_tasks"), s.max_tasks, 1, 256)?;
        check_range(&key("min_tasks"), s.min_tasks, 0, 1)?;
        check_range(&key("messages_per_task"), s.messages_per_task, 1, 1_000_000)?;
        check_duration(
            &key("depth_probe_interval"),
            s.depth_probe_interval,
            Duration::from_millis(100),
            Duration::from_secs(3600),
        )?;
        if let Some(idle) = s.idle_probe_interval {
            check_duration(
                &key("idle_probe_interval"),
                idle,
                Duration::from_secs(1),
                Duration::from_secs(24 * 3600),
            )?;
        }
        for (i, rule) in s.depth_rules.iter().enumerate() {
            check_range(
                &format!("{}[{i}].tasks", key("depth_rules")),
                rule.tasks,
                1,
                s.max_tasks,
            )?;
            if i > 0 && rule.from <= s.depth_rules[i - 1].from {
                return Err(ConfigError::invalid(
                    format!("{}[{i}].from", key("depth_rules")),
                    rule.from,
                    "rules must be in increasing order of `from`",
                ));
            }
        }
        let wakes = http_trigger || s.idle_probe_interval.is_some() || s.wake_on_publish;
        if s.min_tasks == 0 && !wakes {
            return Err(ConfigError::invalid(
                key("min_tasks"),
                0,
                format!(
                    "nothing could wake queue {name} from zero tasks: enable [triggers.http], set \
                     queues.{name}.scaling.idle_probe_interval, or set \
                     queues.{name}.scaling.wake_on_publish = true if every producer publishes \
                     through this process"
                ),
            ));
        }
        Ok(())
    }
}

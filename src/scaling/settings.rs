//! The `[queues.<name>.scaling]` settings: how many dequeue tasks a queue runs, and when that
//! changes. Checked by [`ScalingSettings::validate`], naming the key.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::checks::{check_duration, check_range, BoundedU32, ConfigError, InvalidValue};

/// How many dequeue tasks a queue runs. Tasks are added at once when work shows up after
/// idleness, when batches come back full, when the (sparingly probed) depth calls for more, or
/// when the oldest message gets too old; a task whose idle back-off reached its maximum retires
/// unless it is the last one (or, with `min_tasks = 0`, also the last one).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ScalingSettings {
    /// Tasks kept when idle: 1 (one task polls at the back-off maximum) or 0 (none poll; a push
    /// trigger or an idle depth probe brings the queue back).
    pub min_tasks: MinTasks,
    /// Most tasks at once, 1..=256.
    pub max_tasks: MaxTasks,
    /// Target `ceil(depth / messages_per_task)` tasks (used when `depth_rules` is empty).
    pub messages_per_task: MessagesPerTask,
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
            min_tasks: MinTasks::One,
            max_tasks: BoundedU32(4),
            messages_per_task: BoundedU32(64),
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

/// Most dequeue tasks of one queue at once (`max_tasks`), 1..=256.
pub type MaxTasks = BoundedU32<1, 256>;
/// Messages one task is expected to keep up with (`messages_per_task`), 1..=1000000.
pub type MessagesPerTask = BoundedU32<1, 1_000_000>;

/// Tasks a queue keeps when idle (`min_tasks`), written `0` or `1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(try_from = "u64", into = "u64")]
#[non_exhaustive]
pub enum MinTasks {
    /// None: no task polls an idle queue; a push trigger, a publish or an idle depth probe
    /// brings it back.
    Zero,
    /// One task keeps polling at the idle back-off maximum.
    One,
}

impl MinTasks {
    /// The count: 0 or 1.
    pub const fn get(self) -> u32 {
        match self {
            Self::Zero => 0,
            Self::One => 1,
        }
    }

    /// The count as a `usize`.
    pub const fn as_usize(self) -> usize {
        self.get() as usize
    }
}

impl TryFrom<u64> for MinTasks {
    type Error = InvalidValue;
    fn try_from(n: u64) -> Result<Self, InvalidValue> {
        match n {
            0 => Ok(Self::Zero),
            1 => Ok(Self::One),
            _ => Err(InvalidValue::new(n, "must be 0..=1")),
        }
    }
}

impl From<MinTasks> for u64 {
    fn from(m: MinTasks) -> u64 {
        u64::from(m.get())
    }
}

impl PartialEq<u32> for MinTasks {
    fn eq(&self, other: &u32) -> bool {
        self.get() == *other
    }
}

impl std::fmt::Display for MinTasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.get())
    }
}

/// From `from` messages deep, run `tasks` tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DepthRule {
    /// The depth this rule starts at.
    pub from: u64,
    /// Tasks to run from there.
    pub tasks: u32,
}

impl DepthRule {
    /// From `from` messages deep, run `tasks` tasks (checked with the queue's settings:
    /// `tasks` is 0..=`max_tasks`, and the rules' `from` must rise).
    pub const fn new(from: u64, tasks: u32) -> Self {
        Self { from, tasks }
    }
}

impl ScalingSettings {
    pub(crate) fn validate(&self, name: &str, http_trigger: bool) -> Result<(), ConfigError> {
        let s = self;
        let key = |field: &str| format!("queues.{name}.scaling.{field}");
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
                s.max_tasks.get(),
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
        if s.min_tasks == MinTasks::Zero && !wakes {
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

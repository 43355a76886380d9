//! Settings of one queue: batches, concurrency and flow control, visibility, retries and
//! poison, handler timeouts, heartbeats, the idle back-off and scaling.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backoff::IdleBackoffSettings;
use crate::checks::{
    check_duration, check_range, BoundedU32, BoundedU64, ConfigError, InvalidValue,
};
use crate::codec::Encoding;
use crate::scaling::ScalingSettings;
use crate::service::{validate_queue_name, QueueName, MAX_BATCH, MAX_VISIBILITY};
use crate::store::TimeToLive;

/// Settings of one queue.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct QueueSettings {
    /// Messages asked for per receive, 1..=32.
    pub batch_size: BatchSize,
    /// Handlers of this queue running at once, over all its tasks, 1..=10000. A task takes
    /// free slots before it receives; once handler runs are measured it may receive ahead of
    /// them as many as can start within a quarter of `visibility_timeout` (they wait in line,
    /// their lease renewed), at most a batch.
    pub concurrency: Concurrency,
    /// After a full batch, a task receives again once it can take this many (free slots plus
    /// room ahead; fewer, larger receives), or at once with any free slot when a trigger
    /// arrives. 1..=min(batch_size, concurrency) (1..=32 checked while parsing, the rest with
    /// the other two keys); default half of that, at least 1, or two thirds of
    /// `min(batch_size, concurrency + ahead)` while receiving ahead.
    pub refill_threshold: Option<RefillThreshold>,
    /// After a trigger wakes an idle task, wait up to this long for more arrivals before
    /// receiving: fewer receive calls under a trickle, at the price of up to this much pickup
    /// latency. Off when unset; at most 10s.
    #[serde(with = "humantime_serde")]
    pub batch_window: Option<Duration>,
    /// How long a received message stays invisible to other consumers, 1s..=7d.
    #[serde(with = "humantime_serde")]
    pub visibility_timeout: Duration,
    /// A message received more often than this goes to the poison queue, 1..=1000.
    pub max_dequeue_count: MaxDequeueCount,
    /// How long a failed message stays invisible before it is retried (0s: at once), ..=7d.
    #[serde(with = "humantime_serde")]
    pub retry_delay: Duration,
    /// How message text is encoded on the queue: `base64` (what Azure Functions writes) or `none`.
    pub encoding: Encoding,
    /// Compression of payloads before the claim check's size decision: `identity` (none, the
    /// default), `gzip` or `zstd`. A compressed payload that fits stays on the queue (as an
    /// inline reference); one that does not goes to a blob compressed.
    pub compression: crate::codec::claim::Compression,
    /// Name of the poison queue; default `<queue>-poison`.
    pub poison_queue: Option<QueueName>,
    /// How long a poison copy lives on the poison queue: `"never"` (the default: poison
    /// messages wait for a person) or a duration of 1s..=68years (`"30days"`). A copy always
    /// lives at least as long as its original had left.
    pub poison_ttl: TimeToLive,
    /// The idle back-off curve.
    pub idle_backoff: IdleBackoffSettings,
    /// How many dequeue tasks run, and when that changes.
    pub scaling: ScalingSettings,
    /// A handler still running after this long has its cancellation token fired; it counts as
    /// a failure (retried). None: no limit.
    #[serde(with = "humantime_serde")]
    pub handler_timeout: Option<Duration>,
    /// After the timeout fired, how long the handler may take to wind down before it is
    /// aborted.
    #[serde(with = "humantime_serde")]
    pub handler_timeout_grace: Duration,
    /// Progress pulses of long jobs.
    pub heartbeat: HeartbeatSettings,
    /// Physical queues this logical queue spans, 1..=100: with `shards = N > 1`, messages live
    /// on `<queue>-0 .. <queue>-{N-1}`, publishers spread sends over them and one listener (one
    /// scaling policy, one concurrency cap) consumes them all (see `store::sharding`).
    pub shards: Shards,
    /// How work-detected events of this queue travel on the bus (`[queues.<name>.bus]`).
    pub bus: crate::bus::QueueBusSettings,
    /// Whether this queue's producers put the sending span's W3C trace context in front of
    /// each message (the envelope of `codec::trace`), so a consumer's `process` span continues
    /// the producer's trace. Consumers always accept messages with or without it. Default off:
    /// other consumers of the queue would see the envelope as part of the text.
    pub trace_context: bool,
}

/// Messages asked for per receive (`batch_size`), 1..=32 (the service's most).
pub type BatchSize = BoundedU32<1, { MAX_BATCH as u32 }>;
/// Handlers of one queue running at once (`concurrency`), 1..=10000.
pub type Concurrency = BoundedU32<1, 10_000>;
/// Free slots a task waits for after a full batch (`refill_threshold`), 1..=32 while parsing;
/// at most `min(batch_size, concurrency)` when the queue's settings are checked.
pub type RefillThreshold = BoundedU32<1, { MAX_BATCH as u32 }>;
/// Progress units between two count pulses (`heartbeat.every`), at least 1.
pub type PulseEvery = BoundedU64<1, { u64::MAX }>;
/// Receives after which a message goes to the poison queue (`max_dequeue_count`), 1..=1000.
pub type MaxDequeueCount = BoundedU32<1, 1000>;

/// How many physical queues a logical queue spans (`shards`), 1..=100, checked while parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Shards(std::num::NonZeroU8);

impl Shards {
    /// The most shards a queue may span: ten shards already carry an account's whole target
    /// (20,000 requests/s), so more than 100 can only mean a typo.
    pub const MAX: u8 = 100;

    /// The shard count.
    pub fn get(self) -> usize {
        usize::from(self.0.get())
    }
}

impl Default for Shards {
    fn default() -> Self {
        Self(std::num::NonZeroU8::MIN)
    }
}

impl From<Shards> for u64 {
    fn from(shards: Shards) -> u64 {
        u64::from(shards.0.get())
    }
}

impl TryFrom<u64> for Shards {
    type Error = InvalidValue;
    fn try_from(n: u64) -> Result<Self, InvalidValue> {
        u8::try_from(n)
            .ok()
            .filter(|n| *n <= Self::MAX)
            .and_then(std::num::NonZeroU8::new)
            .map(Self)
            .ok_or_else(|| InvalidValue::new(n, format!("must be 1..={}", Self::MAX)))
    }
}

/// Heartbeat pulses of a running job (one message's handler): timed pulses every `interval`,
/// and count pulses each time the handler's progress count passes a multiple of `every`.
/// Each pulse is logged as a structured event and renews the message's visibility.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct HeartbeatSettings {
    /// A timed pulse this often while a handler runs (None: no timed pulses).
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// A count pulse every this many progress units, at least 1 (None: no count pulses).
    pub every: Option<PulseEvery>,
}

impl HeartbeatSettings {
    /// Checks the values found under `section` (`heartbeat` or `queues.<name>.heartbeat`;
    /// `every` is checked as it is read).
    pub(crate) fn validate(&self, section: &str) -> Result<(), ConfigError> {
        if let Some(t) = self.interval {
            check_duration(
                &format!("{section}.interval"),
                t,
                Duration::from_millis(10),
                MAX_VISIBILITY,
            )?;
        }
        Ok(())
    }

    /// These values, each unset one taken from `defaults`.
    #[must_use]
    pub fn or(self, defaults: Self) -> Self {
        Self {
            interval: self.interval.or(defaults.interval),
            every: self.every.or(defaults.every),
        }
    }
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            batch_size: BoundedU32(u32::from(MAX_BATCH)),
            concurrency: BoundedU32(16),
            refill_threshold: None,
            batch_window: None,
            visibility_timeout: Duration::from_secs(30),
            max_dequeue_count: BoundedU32(5),
            retry_delay: Duration::ZERO,
            encoding: Encoding::Base64,
            compression: Default::default(),
            poison_queue: None,
            poison_ttl: TimeToLive::Never,
            idle_backoff: IdleBackoffSettings::default(),
            scaling: ScalingSettings::default(),
            handler_timeout: None,
            handler_timeout_grace: Duration::from_secs(5),
            heartbeat: HeartbeatSettings::default(),
            shards: Shards::default(),
            bus: crate::bus::QueueBusSettings::default(),
            trace_context: false,
        }
    }
}

impl QueueSettings {
    /// Checks this queue's values; `wakes`: something outside the queue can wake it from zero
    /// tasks (the HTTP trigger endpoint is on).
    pub(crate) fn validate(&self, name: &str, wakes: bool) -> Result<(), ConfigError> {
        let q = self;
        let key = |field: &str| format!("queues.{name}.{field}");
        validate_queue_name(name).map_err(|e| ConfigError::from(e.at(format!("queues.{name}"))))?;
        if let Some(refill) = q.refill_threshold {
            check_range(
                &key("refill_threshold"),
                refill.get(),
                1,
                q.batch_size.get().min(q.concurrency.get()).max(1),
            )?;
        }
        if let Some(window) = q.batch_window {
            check_duration(
                &key("batch_window"),
                window,
                Duration::from_millis(1),
                Duration::from_secs(10),
            )?;
        }
        check_duration(
            &key("visibility_timeout"),
            q.visibility_timeout,
            Duration::from_secs(1),
            MAX_VISIBILITY,
        )?;
        check_duration(
            &key("retry_delay"),
            q.retry_delay,
            Duration::ZERO,
            MAX_VISIBILITY,
        )?;
        let poison = q.poison_queue_name(name);
        validate_queue_name(&poison)
            .map_err(|e| ConfigError::invalid(key("poison_queue"), &poison, e.rule))?;
        if poison == *name || q.shard_names(name).contains(&poison) {
            return Err(ConfigError::invalid(
                key("poison_queue"),
                &poison,
                "must differ from the queue itself and its shards",
            ));
        }
        if let Some(last) = q.shard_names(name).pop().filter(|_| q.shards.get() > 1) {
            validate_queue_name(&last).map_err(|InvalidValue { rule, .. }| {
                ConfigError::invalid(
                    key("shards"),
                    q.shards.get(),
                    format!("the last shard's name {last} is not a queue name: {rule}"),
                )
            })?;
        }
        q.idle_backoff.validate(name)?;
        q.scaling.validate(name, wakes)?;
        if let Some(t) = q.handler_timeout {
            check_duration(
                &key("handler_timeout"),
                t,
                Duration::from_millis(1),
                MAX_VISIBILITY,
            )?;
        }
        check_duration(
            &key("handler_timeout_grace"),
            q.handler_timeout_grace,
            Duration::ZERO,
            Duration::from_secs(3600),
        )?;
        q.heartbeat.validate(&key("heartbeat"))?;
        Ok(())
    }
    /// Free slots a task waits for after a full batch: `refill_threshold`, or half of
    /// `min(batch_size, concurrency)`, at least 1.
    pub fn refill_slots(&self) -> usize {
        let most = self.batch_size.get().min(self.concurrency.get()).max(1);
        self.refill_threshold
            .map_or(most / 2, BoundedU32::get)
            .clamp(1, most) as usize
    }

    /// The physical queues this queue spans: `<queue>-0 .. <queue>-{N-1}` when sharded, else
    /// the queue itself.
    pub fn shard_names(&self, queue: &str) -> Vec<String> {
        match self.shards.get() {
            1 => vec![queue.to_string()],
            n => (0..n)
                .map(|i| crate::store::sharding::shard_name(queue, i))
                .collect(),
        }
    }

    /// The poison queue's name: the configured one, else `<queue>-poison`.
    pub fn poison_queue_name(&self, queue: &str) -> String {
        self.poison_queue
            .as_ref()
            .map_or_else(|| format!("{queue}-poison"), |n| n.to_string())
    }
}

//! The numbers behind the manifests, derived from the settings by pure functions: each queue's
//! `queueLength`, the replica bounds, the termination grace and the scale-down pace, and how KEDA
//! and the worker authenticate. Both generators (KEDA, Container Apps) render the same [`Plan`].

use std::time::Duration;

pub use super::auth::{AuthPlan, Cloud};
#[cfg(test)]
use super::capacity::saturation_backlog;
use super::DeployError;
use ebbflow::config::{MinTasks, QueueSettings, RELEASE_GRACE};

use super::load::{invalid, Config};

/// Time the process needs after the drain and release grace to flush logs and exit.
pub const EXIT_MARGIN: Duration = Duration::from_secs(5);

/// The HPA's own default scale-down stabilization window; ours is never shorter.
const HPA_DEFAULT_STABILIZATION_SECS: u64 = 300;
/// The HPA refuses longer stabilization windows (kedacore/keda#4976).
const HPA_MAX_STABILIZATION_SECS: u64 = 3600;
/// The HPA refuses longer policy periods.
const HPA_MAX_PERIOD_SECS: u64 = 1800;
/// Share of the replicas the HPA may remove per period while scaling in.
pub const SCALE_DOWN_PERCENT: u64 = 50;

/// Everything the generators render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Fewest replicas (0 only when every queue can wake from zero tasks).
    pub min_replicas: u32,
    /// Most replicas.
    pub max_replicas: u32,
    /// KEDA's polling interval, seconds.
    pub polling_secs: u64,
    /// KEDA's cooldown before scaling to zero, seconds.
    pub cooldown_secs: u64,
    /// `terminationGracePeriodSeconds`: drain timeout + release grace + exit margin, rounded up.
    pub grace_secs: u64,
    /// HPA scale-down stabilization window, seconds (at least the grace, 300..=3600).
    pub scale_down_window_secs: u64,
    /// HPA scale-down policy period, seconds: at most [`SCALE_DOWN_PERCENT`] of the replicas go
    /// per period, and a period is as long as one replica's drain (capped at 1800).
    pub scale_down_period_secs: u64,
    /// How KEDA and the worker reach the storage account.
    pub auth: AuthPlan,
    /// The Azure cloud of the storage account.
    pub cloud: Cloud,
    /// One trigger per physical queue, in config order.
    pub triggers: Vec<QueueTrigger>,
}

/// One `azure-queue` trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueTrigger {
    /// The queue as the service names it.
    pub queue: String,
    /// Its `[queues.<name>]` section.
    pub config_queue: String,
    /// Messages one replica holds in flight at most: the queue's `concurrency`.
    pub in_flight: u64,
    /// Visible backlog at which one replica's own task scaling is at its top.
    pub backlog: u64,
    /// KEDA's `queueLength`: `in_flight + backlog`, at least 1.
    pub queue_length: u64,
}

/// The triggers for one queue, one per physical queue: `queueLength = concurrency + saturation
/// backlog`. KEDA's default `queueLengthStrategy: all` counts in-flight (invisible) messages as
/// queue length (kedacore/keda#4432), and a busy replica holds up to `concurrency` of them, so
/// they are part of its share: N replicas, each full and each with its saturation backlog
/// waiting, read as exactly N replicas' worth.
///
/// A sharded queue (`shards = N`) gets one trigger per shard, each with a 1/N share (rounded
/// up): publishers spread sends evenly and one listener consumes every shard, so each shard
/// holds about 1/N of the depth, and the engine, which scales on the busiest trigger, sees
/// the whole queue's need.
pub fn queue_triggers(name: &str, q: &QueueSettings) -> Vec<QueueTrigger> {
    let shards = q.shards.get().max(1) as u64;
    let in_flight = u64::from(q.concurrency).div_ceil(shards);
    let backlog = super::capacity::saturation_backlog(q).div_ceil(shards);
    q.shard_names(name)
        .into_iter()
        .map(|queue| QueueTrigger {
            queue,
            config_queue: name.to_string(),
            in_flight,
            backlog,
            queue_length: in_flight.saturating_add(backlog).max(1),
        })
        .collect()
}

fn secs_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Derives the plan, or names the setting that makes one impossible.
pub fn plan(config: &Config) -> Result<Plan, DeployError> {
    let d = &config.deploy;
    if config.settings.queues.is_empty() {
        return Err(DeployError::NoQueues);
    }
    let polling = config
        .settings
        .queues
        .iter()
        .find(|(_, q)| q.scaling.min_tasks == MinTasks::One);
    let min_replicas = match (d.min_replicas, polling) {
        (Some(0), Some((name, _))) => {
            return Err(invalid(
                "deploy.min_replicas",
                0,
                format!(
                    "queue {name} keeps a task polling (queues.{name}.scaling.min_tasks = 1); zero \
                     replicas would leave it unwatched until KEDA's next poll. Set min_tasks = 0 on \
                     every queue, or min_replicas = 1"
                ),
            )
            .into())
        }
        (Some(n), _) => n,
        (None, Some(_)) => 1,
        (None, None) => 0,
    };
    for (name, q) in &config.settings.queues {
        check_wakes_across_processes(config, name, q)?;
    }
    let grace_secs = secs_up(config.settings.worker.drain_timeout + RELEASE_GRACE + EXIT_MARGIN);
    let (auth, cloud) = super::auth::auth_plan(config)?;
    let triggers = config
        .settings
        .queues
        .iter()
        .flat_map(|(name, q)| queue_triggers(name, q))
        .collect();
    Ok(Plan {
        min_replicas,
        max_replicas: d.max_replicas.get(),
        polling_secs: d.polling_interval.as_secs(),
        cooldown_secs: d.cooldown_period.as_secs(),
        grace_secs,
        scale_down_window_secs: grace_secs
            .clamp(HPA_DEFAULT_STABILIZATION_SECS, HPA_MAX_STABILIZATION_SECS),
        scale_down_period_secs: grace_secs.clamp(1, HPA_MAX_PERIOD_SECS),
        auth,
        cloud,
        triggers,
    })
}

/// A queue at `min_tasks = 0` in a deployment must be woken by something another process can
/// send: the worker alone accepts `wake_on_publish` without a bus (every producer in the same
/// process) and an HTTP trigger on loopback, but a replica's producers are other pods and
/// services, so such a queue would sit deaf at zero tasks until the replica restarts.
fn check_wakes_across_processes(
    config: &Config,
    name: &str,
    q: &QueueSettings,
) -> Result<(), DeployError> {
    if q.scaling.min_tasks != MinTasks::Zero
        || config.settings.bus.is_shared()
        || q.scaling.idle_probe_interval.is_some()
    {
        return Ok(());
    }
    let http = &config.settings.triggers.http;
    if http.enabled && !http.bind.ip().is_loopback() {
        return Ok(());
    }
    let why = if http.enabled {
        format!(
            "[triggers.http] listens on {}, the pod's own loopback, which no other process reaches",
            http.bind
        )
    } else if q.scaling.wake_on_publish {
        "wake_on_publish without a bus wakes it only for messages sent inside the same process"
            .to_string()
    } else {
        "nothing is configured to wake it".to_string()
    };
    Err(invalid(
        format!("queues.{name}.scaling.min_tasks"),
        0,
        format!(
            "a replica's queue {name} at zero tasks would not see messages other processes send \
             ({why}) until the replica restarts. Set [bus] kind = \"redis\" (work notices reach \
             every replica), or enable [triggers.http] on a bind outside the pod's loopback (e.g. \
             \"0.0.0.0:7075\") and send triggers to it, or set \
             queues.{name}.scaling.idle_probe_interval, or min_tasks = 1"
        ),
    )
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ebbflow::config::DepthRule;

    fn queue(concurrency: u32, max_tasks: u32, per_task: u32) -> QueueSettings {
        let mut q = QueueSettings::default();
        q.concurrency = concurrency.try_into().unwrap();
        q.scaling.max_tasks = max_tasks.try_into().unwrap();
        q.scaling.messages_per_task = per_task.try_into().unwrap();
        q
    }

    #[test]
    fn queue_length_is_in_flight_plus_saturation_backlog() {
        // (concurrency, max_tasks, messages_per_task) -> (backlog, queueLength)
        for (c, t, m, backlog, length) in [
            (16, 8, 64, 512, 528), // config/default.toml's orders
            (16, 4, 64, 256, 272), // all defaults
            (2, 8, 64, 128, 130),  // only 2 tasks can hold a slot
            (1, 1, 1, 1, 2),
            (10_000, 256, 1_000_000, 256_000_000, 256_010_000),
        ] {
            let tr = &queue_triggers("q", &queue(c, t, m))[0];
            assert_eq!(
                (tr.backlog, tr.queue_length),
                (backlog, length),
                "{c} {t} {m}"
            );
            assert_eq!(tr.in_flight, u64::from(c));
        }
    }

    #[test]
    fn depth_rules_saturate_at_the_first_rule_with_all_useful_tasks() {
        let mut q = queue(100, 100, 64);
        let rule = DepthRule::new;
        // The whitepaper's rules: 10 tasks from 0, 50 from 100, 100 from 1,000.
        q.scaling.depth_rules = vec![rule(0, 10), rule(100, 50), rule(1000, 100)];
        assert_eq!(saturation_backlog(&q), 1000);
        // With concurrency 50, the 50-task rule is already the top.
        q.concurrency = ebbflow::config::Concurrency::of::<50>();
        assert_eq!(saturation_backlog(&q), 100);
        // No rule reaches the top: the last rule's depth is where tasks stop growing.
        q.concurrency = ebbflow::config::Concurrency::of::<200>();
        q.scaling.max_tasks = ebbflow::config::MaxTasks::of::<200>();
        assert_eq!(saturation_backlog(&q), 1000);
        // One rule from 0: saturated at once; only the in-flight messages count.
        q.scaling.depth_rules = vec![rule(0, 4)];
        assert_eq!(queue_triggers("q", &q)[0].queue_length, 200);
    }

    #[test]
    fn a_sharded_queue_scales_on_every_shard_with_a_share_each() {
        let mut q = queue(16, 8, 64);
        q.shards = ebbflow::config::Shards::try_from(4u64).unwrap();
        let triggers = queue_triggers("orders", &q);
        let names: Vec<_> = triggers.iter().map(|t| t.queue.as_str()).collect();
        assert_eq!(names, q.shard_names("orders"));
        assert_eq!(names.len(), 4);
        for t in &triggers {
            // 528 / 4 = 132: a depth spread evenly reads as the same replica count.
            assert_eq!((t.in_flight, t.backlog, t.queue_length), (4, 128, 132));
            assert_eq!(t.config_queue, "orders");
        }
        q.shards = ebbflow::config::Shards::try_from(3u64).unwrap();
        assert_eq!(queue_triggers("orders", &q)[0].queue_length, 6 + 171);
    }

    fn settings() -> Config {
        let mut s = Config::default();
        s.settings
            .queues
            .insert("orders".into(), QueueSettings::default());
        s
    }

    #[test]
    fn zero_replicas_only_when_every_queue_can_wake_from_zero() {
        let mut s = settings();
        assert_eq!(plan(&s).unwrap().min_replicas, 1);
        s.settings.triggers.http.enabled = true;
        s.settings.triggers.http.bind = "0.0.0.0:7075".parse().unwrap();
        s.settings
            .queues
            .get_mut("orders")
            .unwrap()
            .scaling
            .min_tasks = MinTasks::Zero;
        assert_eq!(plan(&s).unwrap().min_replicas, 0);
        s.settings
            .queues
            .insert("emails".into(), QueueSettings::default());
        assert_eq!(plan(&s).unwrap().min_replicas, 1);
        s.deploy.min_replicas = Some(0);
        let err = plan(&s).unwrap_err().to_string();
        assert!(
            err.contains("deploy.min_replicas") && err.contains("emails"),
            "{err}"
        );
        s.deploy.min_replicas = Some(3);
        assert_eq!(plan(&s).unwrap().min_replicas, 3);
    }

    #[test]
    fn grace_covers_the_drain_and_the_release_grace() {
        let mut s = settings();
        for (drain, grace, window, period) in [
            (Duration::from_secs(30), 40, 300, 40),
            (Duration::ZERO, 10, 300, 10),
            (Duration::from_millis(1500), 12, 300, 12),
            (Duration::from_secs(600), 610, 610, 610),
            (Duration::from_secs(3600), 3610, 3600, 1800),
        ] {
            s.settings.worker.drain_timeout = drain;
            let p = plan(&s).unwrap();
            assert!(Duration::from_secs(p.grace_secs) > drain + RELEASE_GRACE);
            assert_eq!(
                (
                    p.grace_secs,
                    p.scale_down_window_secs,
                    p.scale_down_period_secs
                ),
                (grace, window, period),
                "{drain:?}"
            );
        }
    }

    #[test]
    fn zero_tasks_needs_a_wake_another_process_can_send() {
        let mut s = settings();
        let set = |s: &mut Config, f: &dyn Fn(&mut ebbflow::config::ScalingSettings)| {
            f(&mut s.settings.queues.get_mut("orders").unwrap().scaling)
        };
        set(&mut s, &|sc| {
            sc.min_tasks = MinTasks::Zero;
            sc.wake_on_publish = true;
        });
        let err = plan(&s).unwrap_err().to_string();
        assert!(
            err.contains("queues.orders.scaling.min_tasks")
                && err.contains("wake_on_publish without a bus")
                && err.contains("kind = \"redis\"")
                && !err.contains("  "),
            "{err}"
        );
        // An HTTP trigger on the pod's loopback is no way in either.
        s.settings.triggers.http.enabled = true;
        let err = plan(&s).unwrap_err().to_string();
        assert!(
            err.contains("127.0.0.1:7075") && err.contains("loopback"),
            "{err}"
        );
        // Any of these reaches a replica from outside.
        s.settings.triggers.http.bind = "0.0.0.0:7075".parse().unwrap();
        assert_eq!(plan(&s).unwrap().min_replicas, 0);
        s.settings.triggers.http.enabled = false;
        set(&mut s, &|sc| {
            sc.idle_probe_interval = Some(Duration::from_secs(60))
        });
        assert_eq!(plan(&s).unwrap().min_replicas, 0);
        set(&mut s, &|sc| sc.idle_probe_interval = None);
        s.settings.bus.kind = ebbflow::bus::BusKind::Redis;
        assert_eq!(plan(&s).unwrap().min_replicas, 0);
    }
}

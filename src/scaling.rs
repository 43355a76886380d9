//! The scaling policy: a pure function from what a queue's listener observed to how many
//! dequeue tasks it should run, with the reason. No I/O and no clock: the supervisor in
//! the listener gathers the signals, calls [`decide`], and spawns or retires tasks. The rule
//! below is the built-in [`DefaultPolicy`]; a queue may run a [`ScalingPolicy`] of its own.
//!
//! Scale-up is immediate (bounded by `max_tasks` and the scale-up cool-down): work found after
//! idleness, a full batch, a depth that calls for more tasks, an old message, or a push trigger.
//! Scale-down is the whitepaper's: a task whose idle back-off reached its maximum asks to retire,
//! and may unless it is the last one (`min_tasks = 1`) or the scale-down cool-down forbids it.
//! And, since a steady trickle keeps every task finding a message now and then (so none ever
//! idles to the maximum), a probe that finds the queue shallower than the running tasks warrant
//! retires one task (again within the cool-down, and never the last one).

use std::fmt;
use std::time::Duration;

mod policy;
mod settings;

pub(crate) use policy::bounded;
pub use policy::{DefaultPolicy, ScalingPolicy};
pub use settings::{DepthRule, MaxTasks, MessagesPerTask, MinTasks, ScalingSettings};

/// What prompted a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Prompt {
    /// A task found messages after one or more empty receives.
    WorkAfterIdle,
    /// A task's batch came back full (at least `batch_size` messages were waiting).
    FullBatch,
    /// A periodic or idle depth probe finished.
    Probe,
    /// A push trigger said work arrived.
    Trigger,
    /// A task's idle back-off reached its maximum; it asks to retire.
    IdleAtMax,
    /// The scaling rules were reloaded (`ebbflow reload`, SIGHUP): the running tasks are
    /// brought within the new `max_tasks` and `min_tasks`.
    Reload,
}

/// What the listener knows when it asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signals {
    /// Why we are deciding now.
    pub prompt: Prompt,
    /// Tasks running now.
    pub active: u32,
    /// Messages waiting, if just probed: the approximate count less the messages this replica
    /// holds, corrected by a peek when that is 32 or less (so in-flight messages, this
    /// replica's always and other replicas' where a peek can tell, do not read as work).
    pub depth: Option<u64>,
    /// Age of the oldest visible message, if known.
    pub oldest_age: Option<Duration>,
    /// Time since the last scale-up (`None`: never).
    pub since_scale_up: Option<Duration>,
    /// Time since the last retirement (`None`: never).
    pub since_scale_down: Option<Duration>,
    /// A batch came back full since the last probe: the tasks are saturated even if the
    /// probe found the queue empty (they hold its messages in flight).
    pub full_batch_since_probe: bool,
}

/// Why the target is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// Nothing calls for a change.
    Steady,
    /// Work found after idleness.
    WorkDetected,
    /// A full batch: more is waiting.
    FullBatch,
    /// The depth calls for this many tasks.
    Depth(u64),
    /// The oldest message is older than the configured age.
    Age(Duration),
    /// A push trigger.
    Trigger,
    /// The task is idle at its back-off maximum and may retire.
    Idle,
    /// The probed depth needs fewer tasks than run.
    Shallow(u64),
    /// The task is idle but is the last one allowed to poll.
    KeepLast,
    /// More tasks are wanted, but the scale-up cool-down has not passed.
    UpCooldown,
    /// A retirement is wanted, but the scale-down cool-down has not passed.
    DownCooldown,
    /// Already at `max_tasks`.
    AtMax,
    /// A custom [`ScalingPolicy`]'s own reason, as it should read in the log line.
    Policy(&'static str),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Steady => f.write_str("steady"),
            Reason::WorkDetected => f.write_str("work detected after idleness"),
            Reason::FullBatch => f.write_str("a batch came back full"),
            Reason::Depth(d) => write!(f, "depth {d}"),
            Reason::Age(a) => write!(f, "oldest message {}s old", a.as_secs()),
            Reason::Trigger => f.write_str("push trigger"),
            Reason::Idle => f.write_str("idle at the back-off maximum"),
            Reason::Shallow(d) => write!(f, "depth {d} needs fewer tasks"),
            Reason::KeepLast => f.write_str("last task keeps polling"),
            Reason::UpCooldown => f.write_str("scale-up cool-down"),
            Reason::DownCooldown => f.write_str("scale-down cool-down"),
            Reason::AtMax => f.write_str("at max_tasks"),
            Reason::Policy(why) => f.write_str(why),
        }
    }
}

/// A target task count and its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Tasks that should run.
    pub target: u32,
    /// Why.
    pub reason: Reason,
}

/// Tasks the depth alone calls for: by `depth_rules` when set, else
/// `ceil(depth / messages_per_task)`; at least 1 for any work, at most `max_tasks`.
pub(crate) fn depth_target(s: &ScalingSettings, depth: u64) -> u32 {
    if depth == 0 {
        return 0;
    }
    let tasks = if s.depth_rules.is_empty() {
        let per = u64::from(s.messages_per_task.get());
        u32::try_from(depth.div_ceil(per)).unwrap_or(u32::MAX)
    } else {
        s.depth_rules
            .iter()
            .rev()
            .find(|r| r.from <= depth)
            .map_or(1, |r| r.tasks)
    };
    tasks.clamp(1, s.max_tasks.get())
}

fn cooled(since: Option<Duration>, cooldown: Duration) -> bool {
    since.is_none_or(|d| d >= cooldown)
}

/// The policy.
pub(crate) fn decide(s: &ScalingSettings, sig: &Signals) -> Decision {
    let active = sig.active;
    if sig.prompt == Prompt::IdleAtMax {
        let floor = s.min_tasks.get().min(active);
        return if active <= floor || active == 0 {
            Decision {
                target: active,
                reason: Reason::KeepLast,
            }
        } else if !cooled(sig.since_scale_down, s.scale_down_cooldown) {
            Decision {
                target: active,
                reason: Reason::DownCooldown,
            }
        } else {
            Decision {
                target: active - 1,
                reason: Reason::Idle,
            }
        };
    }
    let (mut want, mut reason) = match sig.prompt {
        Prompt::WorkAfterIdle => (active.max(1), Reason::WorkDetected),
        Prompt::Trigger => (active.max(1), Reason::Trigger),
        Prompt::FullBatch => (active + 1, Reason::FullBatch),
        Prompt::Probe | Prompt::IdleAtMax | Prompt::Reload => (active, Reason::Steady),
    };
    if let Some(depth) = sig.depth {
        let by_depth = depth_target(s, depth);
        if by_depth > want {
            (want, reason) = (by_depth, Reason::Depth(depth));
        }
    }
    if let (Some(age), Some(limit)) = (sig.oldest_age, s.scale_up_when_older_than) {
        if age > limit && active + 1 > want {
            (want, reason) = (active + 1, Reason::Age(age));
        }
    }
    if sig.prompt == Prompt::Probe && reason == Reason::Steady {
        if let Some(depth) = sig.depth {
            let floor = s.min_tasks.get().max(1);
            if depth_target(s, depth).max(floor) < active
                && !sig.full_batch_since_probe
                && cooled(sig.since_scale_down, s.scale_down_cooldown)
            {
                return Decision {
                    target: active - 1,
                    reason: Reason::Shallow(depth),
                };
            }
        }
    }
    if want > s.max_tasks.get() {
        want = s.max_tasks.get();
        if want <= active {
            reason = Reason::AtMax;
        }
    }
    // Waking from zero is never held back: one task at least starts at once.
    if want > active && active > 0 && !cooled(sig.since_scale_up, s.scale_up_cooldown) {
        return Decision {
            target: active,
            reason: Reason::UpCooldown,
        };
    }
    Decision {
        target: want.max(active),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ScalingSettings {
        ScalingSettings {
            min_tasks: MinTasks::One,
            max_tasks: MaxTasks::of::<8>(),
            messages_per_task: MessagesPerTask::of::<100>(),
            scale_up_cooldown: Duration::from_secs(1),
            scale_down_cooldown: Duration::from_secs(10),
            ..ScalingSettings::default()
        }
    }

    fn sig(prompt: Prompt, active: u32) -> Signals {
        Signals {
            prompt,
            active,
            depth: None,
            oldest_age: None,
            since_scale_up: None,
            since_scale_down: None,
            full_batch_since_probe: false,
        }
    }

    #[test]
    fn depth_targets_follow_messages_per_task_or_the_rules() {
        let s = settings();
        let cases = [(0, 0), (1, 1), (100, 1), (101, 2), (750, 8), (1_000_000, 8)];
        for (depth, tasks) in cases {
            assert_eq!(depth_target(&s, depth), tasks, "depth {depth}");
        }
        // The whitepaper's example: under 100: 10, under 1,000: 50, else 100.
        let rules = ScalingSettings {
            max_tasks: MaxTasks::of::<100>(),
            depth_rules: vec![
                DepthRule { from: 0, tasks: 10 },
                DepthRule {
                    from: 100,
                    tasks: 50,
                },
                DepthRule {
                    from: 1000,
                    tasks: 100,
                },
            ],
            ..settings()
        };
        let cases = [
            (0, 0),
            (1, 10),
            (99, 10),
            (100, 50),
            (999, 50),
            (1000, 100),
            (10_000, 100),
        ];
        for (depth, tasks) in cases {
            assert_eq!(depth_target(&rules, depth), tasks, "depth {depth}");
        }
    }

    #[test]
    fn decision_table() {
        let s = settings();
        let secs = |n| Some(Duration::from_secs(n));
        #[rustfmt::skip]
        let cases: Vec<(&str, Signals, u32, Reason)> = vec![
            ("trigger at zero starts one", sig(Prompt::Trigger, 0), 1, Reason::Trigger),
            ("trigger at zero with depth starts many",
             Signals { depth: Some(450), ..sig(Prompt::Trigger, 0) }, 5, Reason::Depth(450)),
            ("trigger at zero ignores the up cool-down",
             Signals { since_scale_up: secs(0), ..sig(Prompt::Trigger, 0) }, 1, Reason::Trigger),
            ("work after idle, no depth: keep one", sig(Prompt::WorkAfterIdle, 1), 1, Reason::WorkDetected),
            ("work after idle with a deep queue goes to max",
             Signals { depth: Some(2000), ..sig(Prompt::WorkAfterIdle, 1) }, 8, Reason::Depth(2000)),
            ("full batch adds one", sig(Prompt::FullBatch, 3), 4, Reason::FullBatch),
            ("full batch at max stays", sig(Prompt::FullBatch, 8), 8, Reason::AtMax),
            ("full batch inside the up cool-down waits",
             Signals { since_scale_up: Some(Duration::from_millis(500)), ..sig(Prompt::FullBatch, 3) }, 3, Reason::UpCooldown),
            ("a probe that wants no more tasks is steady inside the up cool-down too",
             Signals { since_scale_up: Some(Duration::from_millis(500)), ..sig(Prompt::Probe, 3) }, 3, Reason::Steady),
            ("full batch after the cool-down", Signals { since_scale_up: secs(1), ..sig(Prompt::FullBatch, 3) }, 4, Reason::FullBatch),
            ("probe with a shallow queue retires one", Signals { depth: Some(10), ..sig(Prompt::Probe, 6) }, 5, Reason::Shallow(10)),
            ("shallow, but inside the down cool-down",
             Signals { depth: Some(10), since_scale_down: secs(3), ..sig(Prompt::Probe, 6) }, 6, Reason::Steady),
            ("shallow, but batches came back full: saturated, keep",
             Signals { depth: Some(0), full_batch_since_probe: true, ..sig(Prompt::Probe, 6) }, 6, Reason::Steady),
            ("an empty queue never retires the last task", Signals { depth: Some(0), ..sig(Prompt::Probe, 1) }, 1, Reason::Steady),
            ("depth that fits the tasks changes nothing", Signals { depth: Some(550), ..sig(Prompt::Probe, 6) }, 6, Reason::Steady),
            ("probe with a deeper queue grows", Signals { depth: Some(350), ..sig(Prompt::Probe, 2) }, 4, Reason::Depth(350)),
            ("a probe at max with nothing new is steady, not held at max", sig(Prompt::Probe, 8), 8, Reason::Steady),
            ("an old message without an age rule changes nothing",
             Signals { oldest_age: secs(90), ..sig(Prompt::Probe, 2) }, 2, Reason::Steady),
            ("idle at max retires a spare task", sig(Prompt::IdleAtMax, 3), 2, Reason::Idle),
            ("the last task keeps polling with min_tasks = 1", sig(Prompt::IdleAtMax, 1), 1, Reason::KeepLast),
            ("retiring inside the down cool-down waits",
             Signals { since_scale_down: secs(3), ..sig(Prompt::IdleAtMax, 3) }, 3, Reason::DownCooldown),
        ];
        for (name, signals, target, reason) in cases {
            let d = decide(&s, &signals);
            assert_eq!((d.target, d.reason), (target, reason), "{name}");
        }
    }

    /// The reasons as the scaling log lines print them.
    #[test]
    fn reasons_read_as_logged() {
        assert_eq!(Reason::Depth(450).to_string(), "depth 450");
        assert_eq!(
            Reason::Age(Duration::from_secs(90)).to_string(),
            "oldest message 90s old"
        );
        assert_eq!(Reason::AtMax.to_string(), "at max_tasks");
        assert_eq!(Reason::Shallow(3).to_string(), "depth 3 needs fewer tasks");
    }

    #[test]
    fn age_rule_and_zero_floor() {
        let s = ScalingSettings {
            scale_up_when_older_than: Some(Duration::from_secs(60)),
            min_tasks: MinTasks::Zero,
            wake_on_publish: true,
            ..settings()
        };
        let old = Signals {
            oldest_age: Some(Duration::from_secs(90)),
            ..sig(Prompt::Probe, 2)
        };
        assert_eq!(decide(&s, &old).target, 3);
        assert_eq!(
            decide(&s, &old).reason,
            Reason::Age(Duration::from_secs(90))
        );
        let young = Signals {
            oldest_age: Some(Duration::from_secs(30)),
            ..old
        };
        assert_eq!(decide(&s, &young).target, 2);
        // "Older than": a message exactly at the limit is not old yet.
        let at_limit = Signals {
            oldest_age: Some(Duration::from_secs(60)),
            ..old
        };
        assert_eq!(
            (decide(&s, &at_limit).target, decide(&s, &at_limit).reason),
            (2, Reason::Steady)
        );
        // The age rule adds a task only beyond what the other signals ask: a full batch already
        // adds the one, and its reason stands.
        let full = Signals {
            oldest_age: Some(Duration::from_secs(90)),
            ..sig(Prompt::FullBatch, 3)
        };
        assert_eq!(
            (decide(&s, &full).target, decide(&s, &full).reason),
            (4, Reason::FullBatch)
        );
        // A shallow queue whose oldest message is too old grows; it does not shrink.
        let shallow_but_old = Signals {
            depth: Some(10),
            oldest_age: Some(Duration::from_secs(90)),
            ..sig(Prompt::Probe, 6)
        };
        assert_eq!(
            (
                decide(&s, &shallow_but_old).target,
                decide(&s, &shallow_but_old).reason
            ),
            (7, Reason::Age(Duration::from_secs(90)))
        );
        // min_tasks = 0: the last task retires too.
        assert_eq!(decide(&s, &sig(Prompt::IdleAtMax, 1)).target, 0);
        assert_eq!(decide(&s, &sig(Prompt::IdleAtMax, 0)).target, 0);
    }
}

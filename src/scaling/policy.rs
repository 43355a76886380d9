//! The seam for a policy of one's own: [`ScalingPolicy`], with the built-in rule as
//! [`DefaultPolicy`], and the bounds the listener keeps whatever a policy says.

use super::{Decision, ScalingSettings, Signals};

/// Decides how many dequeue tasks a queue's listener runs, from the signals the listener
/// gathers ([`Signals`]: why it asks now, tasks running, a probed depth, the oldest message's
/// age, the time since the last scale-up and retirement) and the queue's
/// `[queues.<queue>.scaling]` settings. Called on the listener's supervisor, never
/// concurrently for one queue; it must not block (no I/O: keep state in atomics or a mutex,
/// and gather outside data elsewhere).
///
/// The listener keeps its guarantees whatever a policy answers: the target is capped at
/// `max_tasks`; it never falls below one task with `min_tasks = 1`; a retirement retires one
/// task at a time (the most idle); and a task whose back-off reached its maximum
/// ([`Prompt::IdleAtMax`](super::Prompt::IdleAtMax)) is kept when a trigger came in since its
/// last receive. The built-in rule is [`DefaultPolicy`]; a policy may call it and adjust its
/// answer. Register one per queue with `Worker::scaling_policy`.
///
/// ```
/// use ebbflow::config::ScalingSettings;
/// use ebbflow::worker::{Decision, DefaultPolicy, Reason, ScalingPolicy, Signals};
///
/// /// The built-in rule, but never more than two tasks during office hours.
/// #[derive(Debug)]
/// struct OfficeHours { busy: std::sync::atomic::AtomicBool }
///
/// impl ScalingPolicy for OfficeHours {
///     fn decide(&self, settings: &ScalingSettings, signals: &Signals) -> Decision {
///         let d = DefaultPolicy.decide(settings, signals);
///         if self.busy.load(std::sync::atomic::Ordering::Relaxed) && d.target > 2 {
///             return Decision { target: 2, reason: Reason::Policy("office hours") };
///         }
///         d
///     }
/// }
/// ```
pub trait ScalingPolicy: Send + Sync + std::fmt::Debug + 'static {
    /// The target task count and its reason for `signals` under `settings`.
    fn decide(&self, settings: &ScalingSettings, signals: &Signals) -> Decision;
}

/// The built-in policy: the whitepaper's rule (work after idleness, full batches, depth and
/// age scale up; idle tasks at the back-off maximum retire), as `docs/src/scaling.md` says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DefaultPolicy;

impl ScalingPolicy for DefaultPolicy {
    fn decide(&self, settings: &ScalingSettings, signals: &Signals) -> Decision {
        super::decide(settings, signals)
    }
}

/// `d` within the bounds the listener keeps: at most `max_tasks`, at least one task with
/// `min_tasks = 1`.
pub(crate) fn bounded(settings: &ScalingSettings, d: Decision) -> Decision {
    Decision {
        target: d
            .target
            .min(settings.max_tasks.get())
            .max(settings.min_tasks.get()),
        reason: d.reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::{MaxTasks, MinTasks, Prompt, Reason};

    #[test]
    fn a_policy_s_answer_is_kept_within_max_tasks_and_the_floor() {
        let s = ScalingSettings {
            max_tasks: MaxTasks::of::<4>(),
            min_tasks: MinTasks::One,
            ..ScalingSettings::default()
        };
        let said = |target| Decision {
            target,
            reason: Reason::Policy("test"),
        };
        assert_eq!(bounded(&s, said(100)).target, 4);
        assert_eq!(bounded(&s, said(0)).target, 1);
        assert_eq!(bounded(&s, said(3)), said(3));
        let zero = ScalingSettings {
            min_tasks: MinTasks::Zero,
            ..s.clone()
        };
        assert_eq!(bounded(&zero, said(0)).target, 0);
        let sig = Signals {
            prompt: Prompt::FullBatch,
            active: 1,
            depth: None,
            oldest_age: None,
            since_scale_up: None,
            since_scale_down: None,
            full_batch_since_probe: false,
        };
        assert_eq!(
            DefaultPolicy.decide(&s, &sig),
            crate::scaling::decide(&s, &sig)
        );
    }
}

//! One replica's capacity for a queue under that queue's rules: what a KEDA `queueLength` should
//! be. Pure and always compiled, so the generator (`ebbflow deploy`) and the simulator's replica
//! controller use the same number.

use ebbflow::config::QueueSettings;

/// The visible backlog at which one replica runs all the tasks it usefully can for this queue:
/// `max_tasks` (at most `concurrency`: a task needs a slot) times `messages_per_task`, or with
/// `depth_rules`, the first depth whose rule reaches that many tasks (the last rule's depth when
/// none does). Past it, only another replica adds capacity.
pub fn saturation_backlog(q: &QueueSettings) -> u64 {
    let s = &q.scaling;
    let top = s.max_tasks.get().min(q.concurrency.get()).max(1);
    if s.depth_rules.is_empty() {
        u64::from(top).saturating_mul(u64::from(s.messages_per_task.get()))
    } else {
        s.depth_rules
            .iter()
            .find(|r| r.tasks >= top)
            .or(s.depth_rules.last())
            .map_or(0, |r| r.from)
    }
}

/// KEDA's `queueLength` for the whole queue (before any split over shards): the messages one
/// replica holds in flight (`concurrency`; KEDA's default `queueLengthStrategy: all` counts them)
/// plus its [`saturation_backlog`], at least 1.
pub fn queue_length(q: &QueueSettings) -> u64 {
    u64::from(q.concurrency)
        .saturating_add(saturation_backlog(q))
        .max(1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_queue_is_sized_for_its_tasks_and_its_slots() {
        // 16 in flight + 4 tasks x 64 messages.
        assert_eq!(super::queue_length(&Default::default()), 272);
    }
}

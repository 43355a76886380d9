//! What a queue's listener tells its host as it runs (the whitepaper's listener events): work
//! detected after idleness, the queue found empty, and each change of its task count with the
//! scaling policy's reason.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use crate::scaling::{Prompt, Reason};

/// One event of a queue's listener, handed to the callbacks registered with
/// `Worker::on_listener_event`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenerEvent {
    /// A receive brought messages, and the last receive before it (by any of the queue's
    /// tasks) came back empty, or this is the listener's first receive: work after idleness.
    WorkDetected {
        /// The queue.
        queue: String,
        /// Messages that receive brought (1..=32).
        messages: usize,
    },
    /// A receive came back empty, and the last receive before it (by any of the queue's
    /// tasks) brought messages, or this is the listener's first receive: the queue looks
    /// drained (messages in flight aside). Sent once per drain, not per empty receive.
    QueueEmpty {
        /// The queue.
        queue: String,
    },
    /// The scaling policy changed how many dequeue tasks run.
    Scaled {
        /// The queue.
        queue: String,
        /// Tasks before.
        from: u32,
        /// Tasks now.
        to: u32,
        /// Why, as the policy said (also the `reason` of the "scaling decision" log line).
        reason: Reason,
        /// What prompted the decision.
        prompt: Prompt,
    },
}

/// A callback that hears a listener's events.
pub(crate) type EventHook = Arc<dyn Fn(&ListenerEvent) + Send + Sync>;

/// Not looked at yet / found empty last / found work last.
const UNKNOWN: u8 = 0;
const EMPTY: u8 = 1;
const WORKING: u8 = 2;

/// Hands a queue's events to its host's callbacks, each transition once.
pub(crate) struct Events {
    queue: Arc<str>,
    hooks: Vec<EventHook>,
    last_seen: AtomicU8,
}

impl Events {
    pub(crate) fn new(queue: Arc<str>, hooks: Vec<EventHook>) -> Self {
        Self {
            queue,
            hooks,
            last_seen: AtomicU8::new(UNKNOWN),
        }
    }

    fn emit(&self, event: impl FnOnce() -> ListenerEvent) {
        if self.hooks.is_empty() {
            return;
        }
        let event = event();
        for hook in &self.hooks {
            hook(&event);
        }
    }

    /// A receive came back with `messages` (0: empty).
    pub(crate) fn received(&self, messages: usize) {
        let now = if messages == 0 { EMPTY } else { WORKING };
        if self.last_seen.swap(now, Ordering::SeqCst) == now {
            return;
        }
        let queue = self.queue.to_string();
        self.emit(|| match now {
            EMPTY => ListenerEvent::QueueEmpty { queue },
            _ => ListenerEvent::WorkDetected { queue, messages },
        });
    }

    /// The task count went `from` -> `to`.
    pub(crate) fn scaled(&self, from: u32, to: u32, reason: Reason, prompt: Prompt) {
        self.emit(|| ListenerEvent::Scaled {
            queue: self.queue.to_string(),
            from,
            to,
            reason,
            prompt,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn each_transition_is_told_once() {
        let heard: Arc<Mutex<Vec<ListenerEvent>>> = Arc::default();
        let into = heard.clone();
        let hook: EventHook =
            Arc::new(move |e: &ListenerEvent| into.lock().unwrap().push(e.clone()));
        let events = Events::new(Arc::from("q"), vec![hook]);
        for n in [3, 2, 0, 0, 0, 1, 0] {
            events.received(n);
        }
        let q = || "q".to_string();
        assert_eq!(
            *heard.lock().unwrap(),
            [
                ListenerEvent::WorkDetected {
                    queue: q(),
                    messages: 3
                },
                ListenerEvent::QueueEmpty { queue: q() },
                ListenerEvent::WorkDetected {
                    queue: q(),
                    messages: 1
                },
                ListenerEvent::QueueEmpty { queue: q() },
            ]
        );
    }
}

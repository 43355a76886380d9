//! The whitepaper's host hooks on the builder: hearing each listener's events, and running a
//! scaling policy of one's own in place of the built-in one.

use std::sync::Arc;

use super::Worker;
use crate::bus::jobs::PulseHook;
use crate::listener::ListenerEvent;
use crate::scaling::ScalingPolicy;

impl Worker {
    /// Calls `hook` with every event of every queue's listener ([`ListenerEvent`]: work
    /// detected after idleness, the queue found empty, each change of its task count with the
    /// reason). The hook runs on the listener's own task, in the order the events happen for
    /// one queue: keep it short and never block in it (count, or hand the event to a channel
    /// as below). Several hooks may be added; each hears every event.
    ///
    /// ```no_run
    /// use ebbflow::listener::ListenerEvent;
    /// # async fn run(settings: ebbflow::Settings) {
    /// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    /// let worker = ebbflow::Worker::new(settings)
    ///     .on_listener_event(move |e: &ListenerEvent| { let _ = tx.send(e.clone()); })
    /// #   .handler_fn("orders", |_: String, _: ebbflow::Context| async { Ok::<(), ebbflow::HandlerError>(()) })
    ///     ;
    /// tokio::spawn(async move {
    ///     while let Some(event) = rx.recv().await {
    ///         if let ListenerEvent::QueueEmpty { queue } = event {
    ///             tracing::info!(queue, "drained");
    ///         }
    ///     }
    /// });
    /// worker.run().await;
    /// # }
    /// ```
    pub fn on_listener_event(
        mut self,
        hook: impl Fn(&ListenerEvent) + Send + Sync + 'static,
    ) -> Self {
        self.event_hooks.push(Arc::new(hook));
        self
    }

    /// Runs `policy` in place of the built-in [`crate::scaling::DefaultPolicy`] for `queue`
    /// (see [`ScalingPolicy`] for what it hears and the bounds kept whatever it says). A queue
    /// missing from config is a start-up error ([`super::WorkerError::PolicyNotConfigured`]);
    /// a second policy for one queue replaces the first.
    pub fn scaling_policy(mut self, queue: &str, policy: impl ScalingPolicy) -> Self {
        self.policies.insert(queue.to_string(), Arc::new(policy));
        self
    }

    /// Shapes or suppresses the heartbeat pulses of `queue`'s jobs as stored and sent on the
    /// bus (the records `ebbflow jobs` lists): `hook` gets each pulse's [`JobRecord`] and may
    /// change it (its `text`, say); `false` suppresses the pulse (nothing stored or sent; the
    /// log line, the counters and the lease renewal still happen). The START record and the
    /// end are never suppressed. Only queues with heartbeat settings and a bus record jobs. A
    /// queue missing from config is a start-up error
    /// ([`super::WorkerError::PulseHookNotConfigured`]); a second hook for one queue replaces
    /// the first.
    ///
    /// [`JobRecord`]: crate::bus::jobs::JobRecord
    pub fn pulse_hook(mut self, queue: &str, hook: PulseHook) -> Self {
        self.pulse_hooks.insert(queue.to_string(), hook);
        self
    }
}

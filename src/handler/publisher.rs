//! Sending messages to a configured queue, in its encoding, waking its local listener.

use std::sync::Arc;

/// Sends messages to one queue in that queue's encoding: for producers, and for handlers
/// that hand work on. With a trigger hub, every send also wakes this process's listeners of
/// the queue at once (the in-process push trigger). With a bus announcer (a shared bus), the
/// send is announced to the listeners of every replica instead, as the queue's publish mode
/// says; while the bus is down, the local listeners are woken as without one.
#[derive(Clone)]
pub struct Publisher {
    queue: Arc<dyn crate::store::Queue>,
    encoding: crate::codec::Encoding,
    hub: Option<crate::trigger::Hub>,
    announcer: Option<crate::bus::Announcer>,
    trace_context: bool,
    background: Background,
}

/// Where a publisher's delayed wake-ups run: a tracker to wait on and a token that ends them.
/// A bare publisher has its own (its wake-ups run to their end); a worker's and a producer's
/// publishers share the worker's (or producer's), so a drain or close ends them.
#[derive(Clone, Default)]
struct Background {
    tracker: tokio_util::task::TaskTracker,
    stop: tokio_util::sync::CancellationToken,
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The payload could not be encoded.
    #[error("cannot encode message for queue {queue}: {detail}")]
    Encode {
        /// The queue.
        queue: String,
        /// What went wrong.
        detail: String,
    },
    /// The store refused the send.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("queue", &self.queue.name())
            .field("encoding", &self.encoding)
            .finish()
    }
}

impl Publisher {
    /// A publisher for `queue` writing `encoding`.
    pub fn new(queue: Arc<dyn crate::store::Queue>, encoding: crate::codec::Encoding) -> Self {
        Self {
            queue,
            encoding,
            hub: None,
            announcer: None,
            trace_context: false,
            background: Background::default(),
        }
    }

    /// Runs the delayed wake-ups (of messages sent with an initial delay) on `tracker`, each
    /// ending at `stop`: a worker's drain or a producer's close then neither waits for them
    /// nor leaves them behind.
    pub(crate) fn with_background(
        mut self,
        tracker: tokio_util::task::TaskTracker,
        stop: tokio_util::sync::CancellationToken,
    ) -> Self {
        self.background = Background { tracker, stop };
        self
    }

    /// Put the `send` span's W3C trace context in front of each message (the envelope of
    /// [`TraceContext`](crate::codec::TraceContext); a queue's `trace_context` setting), so the consumer's `process`
    /// span continues this trace. Only while traces are exported; otherwise messages go as
    /// they are.
    pub fn with_trace_context(mut self, on: bool) -> Self {
        self.trace_context = on;
        self
    }

    /// Announce each send on the bus (see [`crate::bus::Announcer`]).
    pub fn with_announcer(mut self, announcer: crate::bus::Announcer) -> Self {
        self.announcer = Some(announcer);
        self
    }

    /// Also notify `hub` after each send.
    pub fn with_hub(mut self, hub: crate::trigger::Hub) -> Self {
        self.hub = Some(hub);
        self
    }

    /// The target queue's name.
    pub fn queue(&self) -> &str {
        self.queue.name()
    }

    /// Sends raw payload bytes; returns the new message's id. A message sent with an initial
    /// delay wakes the listeners when the delay has passed (the message is visible then), not
    /// at the send; that wake-up is lost if this process stops before (or, for a worker's or a
    /// producer's publisher (`ebbflow::worker::Producer`), when it drains or closes).
    ///
    /// # Errors
    /// [`PublishError::Encode`] when the queue's encoding refuses the payload,
    /// [`PublishError::Store`] when the store refuses the send.
    pub async fn send_bytes(
        &self,
        payload: &[u8],
        options: crate::store::SendOptions,
    ) -> Result<String, PublishError> {
        let id = self.send_quiet(payload, options).await?;
        if options.initial_delay.is_zero() {
            self.wake().await;
        } else {
            self.wake_later(options.initial_delay);
        }
        Ok(id)
    }

    /// Sends many payloads, each with its own delay and time to live, in order; the listeners
    /// are woken once for all those visible at once (one bus announcement), and once per
    /// distinct delay for the others. Returns the new messages' ids in order.
    ///
    /// # Errors
    /// The first failed send's error; the payloads before it were sent (and are woken for).
    pub async fn send_many(
        &self,
        payloads: impl IntoIterator<Item = (Vec<u8>, crate::store::SendOptions)>,
    ) -> Result<Vec<String>, PublishError> {
        let mut ids = Vec::new();
        let mut now = 0u64;
        let mut delays = std::collections::BTreeSet::new();
        let mut failed = None;
        for (payload, options) in payloads {
            match self.send_quiet(&payload, options).await {
                Ok(id) => ids.push(id),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
            if options.initial_delay.is_zero() {
                now += 1;
            } else {
                delays.insert(crate::store::rules::whole_seconds(options.initial_delay));
            }
        }
        if now > 0 {
            self.wake_for(now).await;
        }
        for delay in delays {
            self.wake_later(std::time::Duration::from_secs(delay));
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(ids),
        }
    }

    /// Encodes and sends one payload without waking anyone: the one send path of
    /// [`Publisher::send_bytes`] and [`Publisher::send_many`] (encoding, `send` span, trace
    /// context).
    async fn send_quiet(
        &self,
        payload: &[u8],
        options: crate::store::SendOptions,
    ) -> Result<String, PublishError> {
        let text = self
            .encoding
            .encode(payload)
            .map_err(|e| PublishError::Encode {
                queue: self.queue().to_string(),
                detail: e.to_string(),
            })?;
        let span = crate::codec::spans::send_span(self.queue());
        let text = if self.trace_context {
            crate::codec::spans::inject(&span, text)
        } else {
            text
        };
        let sent = self.queue.send(&text, options);
        let id = tracing::Instrument::instrument(sent, span.clone())
            .await?
            .id;
        span.record("messaging.message.id", id.as_str());
        Ok(id)
    }

    /// Wakes the listeners once `delay` has passed (rounded up to whole seconds, as the
    /// service counts them). A message sent with a delay is invisible until then: a trigger
    /// now would find nothing, and a covered queue at zero tasks would then wait for one that
    /// never comes. The wake-up runs on the background set of [`Publisher::with_background`]
    /// (a worker's tracker): it ends at that set's stop, and a panic in it is logged.
    fn wake_later(&self, delay: std::time::Duration) {
        let this = self.clone();
        let delay = std::time::Duration::from_secs(crate::store::rules::whole_seconds(delay));
        let stop = self.background.stop.clone();
        self.background.tracker.spawn(async move {
            let queue = this.queue().to_string();
            let wake = async {
                tokio::time::sleep(delay).await;
                this.wake().await;
            };
            tokio::select! {
                _ = stop.cancelled() => {
                    tracing::debug!(task = "delayed wake-up", queue, ?delay,
                                    "delayed wake-up dropped at the stop");
                }
                ended = super::batch::catch_unwind(std::panic::AssertUnwindSafe(wake)) => {
                    if let Err(panic) = ended {
                        tracing::error!(task = "delayed wake-up", queue, panic,
                                        "delayed wake-up panicked");
                    }
                }
            }
        });
    }

    /// Announces one send on the bus, or wakes the local listeners when there is none or it
    /// is down.
    async fn wake(&self) {
        self.wake_for(1).await;
    }

    /// Announces `sent` sends on the bus, or wakes the local listeners when there is none or
    /// it is down.
    async fn wake_for(&self, sent: u64) {
        let announced = match &self.announcer {
            Some(a) => a.after_send(sent).await,
            None => crate::bus::Announced::Failed,
        };
        // Announced on the bus, the notice reaches this process's listeners too (or the one
        // replica chosen for it); not needed: the listeners are at work already.
        if announced == crate::bus::Announced::Failed {
            if let Some(hub) = &self.hub {
                hub.notify(self.queue.name());
            }
        }
    }

    /// Sends `value` as JSON; returns the new message's id.
    ///
    /// # Errors
    ///
    /// [`PublishError::Encode`] when `value` cannot be serialised; [`PublishError::Store`] when the
    /// store refuses or fails the send.
    pub async fn send_json<T: serde::Serialize + ?Sized>(
        &self,
        value: &T,
    ) -> Result<String, PublishError> {
        let json = serde_json::to_vec(value).map_err(|e| PublishError::Encode {
            queue: self.queue().to_string(),
            detail: e.to_string(),
        })?;
        self.send_bytes(&json, Default::default()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{QueueStore, SendOptions};
    use crate::trigger::{Hub, TriggerSource, Wake};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    #[derive(Default)]
    struct Woken(AtomicUsize);
    impl Wake for Woken {
        fn wake(&self, _: TriggerSource) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    async fn publisher() -> (Publisher, Arc<Woken>, TaskTracker, CancellationToken) {
        let store = crate::store::memory::MemoryStore::new();
        let queue = store.queue("orders").unwrap();
        queue.create_if_missing().await.unwrap();
        let hub = Hub::new(None);
        let woken = Arc::new(Woken::default());
        hub.register("orders", woken.clone());
        let (tracker, stop) = (TaskTracker::new(), CancellationToken::new());
        let publisher = Publisher::new(queue, crate::codec::Encoding::None)
            .with_hub(hub)
            .with_background(tracker.clone(), stop.clone());
        (publisher, woken, tracker, stop)
    }

    fn delayed(secs: u64) -> SendOptions {
        SendOptions {
            initial_delay: Duration::from_secs(secs),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_delayed_send_wakes_when_the_message_shows_from_the_given_tracker() {
        let (publisher, woken, tracker, _stop) = publisher().await;
        publisher
            .send_bytes(b"now", SendOptions::default())
            .await
            .unwrap();
        assert_eq!(
            woken.0.load(Ordering::SeqCst),
            1,
            "a send without delay wakes at once"
        );
        publisher.send_bytes(b"later", delayed(5)).await.unwrap();
        assert_eq!(
            tracker.len(),
            1,
            "the delayed wake-up runs on the given tracker"
        );
        tokio::time::sleep(Duration::from_millis(4_900)).await;
        assert_eq!(
            woken.0.load(Ordering::SeqCst),
            1,
            "not before the message shows"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(woken.0.load(Ordering::SeqCst), 2, "woken when it shows");
        assert!(tracker.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_waiting_wake_ups_so_a_drain_never_waits_for_them() {
        let (publisher, woken, tracker, stop) = publisher().await;
        publisher
            .send_bytes(b"later", delayed(3_600))
            .await
            .unwrap();
        let many = [(b"a".to_vec(), delayed(60)), (b"b".to_vec(), delayed(120))];
        publisher.send_many(many).await.unwrap();
        assert_eq!(tracker.len(), 3, "one wake-up per distinct delay");
        stop.cancel();
        tracker.close();
        let started = tokio::time::Instant::now();
        tracker.wait().await;
        assert_eq!(started.elapsed(), Duration::ZERO, "ended at the stop");
        tokio::time::sleep(Duration::from_secs(7_200)).await;
        assert_eq!(
            woken.0.load(Ordering::SeqCst),
            0,
            "no wake-up after the stop"
        );
    }
}

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
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
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
        }
    }

    /// Put the `send` span's W3C trace context in front of each message (the envelope of
    /// [`crate::codec::trace`]; a queue's `trace_context` setting), so the consumer's `process`
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
    /// at the send; that wake-up is lost if this process stops before.
    pub async fn send_bytes(
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
        if options.initial_delay.is_zero() {
            self.wake().await;
        } else {
            // Invisible until its delay passes: a trigger now finds nothing, and a covered
            // queue at zero tasks would then wait for one that never comes. So the trigger
            // goes when the message shows (the service counts whole seconds).
            let this = self.clone();
            let delay = crate::store::rules::whole_seconds(options.initial_delay);
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_secs(delay)).await;
                this.wake().await;
            });
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
            let this = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_secs(delay)).await;
                this.wake().await;
            });
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(ids),
        }
    }

    /// Encodes and sends one payload without waking anyone.
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

//! Sending messages to a configured queue, in its encoding, waking its local listener.

use std::sync::Arc;

/// Sends messages to one queue in that queue's encoding: for producers, and for handlers
/// that hand work on. With a trigger hub, every send also wakes this process's listeners of
/// the queue at once (the in-process push trigger).
#[derive(Clone)]
pub struct Publisher {
    queue: Arc<dyn crate::store::Queue>,
    encoding: crate::codec::Encoding,
    hub: Option<crate::trigger::Hub>,
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
        }
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

    /// Sends raw payload bytes; returns the new message's id.
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
        let id = self.queue.send(&text, options).await?.id;
        if let Some(hub) = &self.hub {
            hub.notify(self.queue.name());
        }
        Ok(id)
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

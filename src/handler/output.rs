//! Typed outputs: a queue a handler (or a producer) writes `T`s to, as JSON.

use std::marker::PhantomData;

use super::{PublishError, Publisher};
use crate::store::SendOptions;

/// A queue written to with values of type `T` (JSON in the queue's encoding): from a handler
/// through [`crate::Context::output`], or from a producer (`ebbflow::worker::Producer`). Its sends wake
/// the queue's listeners like a [`Publisher`]'s.
pub struct Output<T> {
    publisher: Publisher,
    kind: PhantomData<fn(&T)>,
}

impl<T> Clone for Output<T> {
    fn clone(&self) -> Self {
        Self {
            publisher: self.publisher.clone(),
            kind: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Output<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field("queue", &self.publisher.queue())
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}

impl<T: serde::Serialize> Output<T> {
    /// An output over `publisher`.
    pub fn new(publisher: Publisher) -> Self {
        Self {
            publisher,
            kind: PhantomData,
        }
    }

    /// The queue's name.
    pub fn queue(&self) -> &str {
        self.publisher.queue()
    }

    /// Sends `value`; returns the new message's id.
    ///
    /// # Errors
    /// [`PublishError::Encode`] when `value` does not serialize or its text is too large;
    /// [`PublishError::Store`] when the store refuses the send.
    pub async fn send(&self, value: &T) -> Result<String, PublishError> {
        self.send_with(value, SendOptions::default()).await
    }

    /// Sends `value` with a delay and time to live.
    ///
    /// # Errors
    /// As [`Output::send`].
    pub async fn send_with(&self, value: &T, options: SendOptions) -> Result<String, PublishError> {
        let json = self.encode(value)?;
        self.publisher.send_bytes(&json, options).await
    }

    /// Sends many values, each with its own options, with one wake-up (one bus announcement)
    /// for the lot; returns their ids in order.
    ///
    /// # Errors
    /// The first failed send's error; the values before it were sent.
    pub async fn send_many<'a>(
        &self,
        values: impl IntoIterator<Item = (&'a T, SendOptions)>,
    ) -> Result<Vec<String>, PublishError>
    where
        T: 'a,
    {
        let mut payloads = Vec::new();
        for (value, options) in values {
            payloads.push((self.encode(value)?, options));
        }
        self.publisher.send_many(payloads).await
    }

    fn encode(&self, value: &T) -> Result<Vec<u8>, PublishError> {
        serde_json::to_vec(value).map_err(|e| PublishError::Encode {
            queue: self.queue().to_string(),
            detail: e.to_string(),
        })
    }
}

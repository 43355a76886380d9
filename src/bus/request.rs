//! Request and reply between instances, after the seeds' duplex callback: a [`Request`] is an
//! event with a typed answer. The requester sends it to any [`super::Address`] with a timeout
//! ([`super::BusHandle::request`]); a responder registers like an observer
//! ([`super::BusHandle::respond`]) and its handler's `Ok` (or its error text) travels back to
//! the requesting instance as an `ebbflow.reply` event carrying the request's id
//! (`reply_to`, the correlation id). The request's time to live is its timeout: a responder
//! never handles a request its requester gave up on, and a reply to a requester that went away
//! expires unread. Sent to several instances (a role, everyone), the first reply wins.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::debug;

use super::{Envelope, Event};

/// An event with a typed reply.
///
/// ```no_run
/// # async fn demo(bus: ebbflow::bus::BusHandle) -> Result<(), ebbflow::bus::BusError> {
/// use std::time::Duration;
/// use ebbflow::bus::{Address, Event, Filter, Request};
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Totals { batch: u64 }
/// impl Event for Totals { const KIND: &'static str = "billing.totals"; }
/// impl Request for Totals { type Reply = u64; }
///
/// // In the controller: answer every Totals request.
/// let _responder = bus.respond(Filter::new(), |req: ebbflow::bus::Received<Totals>| async move {
///     Ok(req.body.batch * 100)
/// });
/// // Anywhere else: ask one controller, wait at most 5 s.
/// let total = bus.request(&Totals { batch: 7 }, Address::one_of("controller"), Duration::from_secs(5)).await?;
/// # let _ = total; Ok(()) }
/// ```
pub trait Request: Event {
    /// The answer's type.
    type Reply: Serialize + serde::de::DeserializeOwned + Send + 'static;
}

/// The answer on the wire: the responder's value, or its error text.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Reply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ok: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

impl Event for Reply {
    const KIND: &'static str = "ebbflow.reply";
}

/// A reply as it arrived: the responder and its answer.
pub(crate) type Answer = (String, Reply);

/// Requests waiting for their reply, by request id.
#[derive(Debug, Default)]
pub(crate) struct Waiting {
    by_id: Mutex<HashMap<String, oneshot::Sender<Answer>>>,
}

impl Waiting {
    /// Waits for the reply to request `id`.
    pub(crate) fn expect(&self, id: &str) -> oneshot::Receiver<Answer> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.by_id.lock() {
            w.insert(id.to_string(), tx);
        }
        rx
    }

    /// Stops waiting for request `id` (timed out).
    pub(crate) fn forget(&self, id: &str) {
        if let Ok(mut w) = self.by_id.lock() {
            w.remove(id);
        }
    }

    /// Hands a reply envelope to its request; `false` when it is not a reply.
    pub(crate) fn deliver(&self, envelope: &Envelope) -> bool {
        if envelope.kind != Reply::KIND {
            return false;
        }
        let Some(id) = &envelope.reply_to else {
            return false;
        };
        let waiting = self.by_id.lock().ok().and_then(|mut w| w.remove(id));
        let reply = serde_json::from_value::<Reply>(envelope.body.clone()).unwrap_or(Reply {
            ok: None,
            error: Some("the reply does not decode".into()),
        });
        match waiting {
            Some(tx) => {
                let _ = tx.send((envelope.from.clone(), reply));
            }
            None => {
                debug!(request = %id, from = %envelope.from, "reply to a request no longer waited for (timed out, answered already, or asked before a restart); dropped")
            }
        }
        true
    }
}

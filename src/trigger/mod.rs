//! Push triggers: "work detected on queue Q" events that wake a queue's listener at once,
//! after the inter-role communication model of the whitepaper (a publisher multicasts a
//! work-detected event; every listener of that queue reacts).
//!
//! - In-process: [`Hub::notify`], called by a [`crate::Publisher`] after each send.
//! - Across instances: the HTTP endpoint in [`http`] (plain JSON, Event Grid, CloudEvents),
//!   which feeds the same hub.
//!
//! A woken listener interrupts the back-off sleep of its most recently sleeping task (whose
//! curve starts again from `min` once it finds the work); a listener at zero tasks starts one
//! at once.

pub(crate) mod http;
mod settings;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::Deserialize;

pub use settings::{HttpTriggerSettings, MaxBodyBytes, MaxConcurrentRequests, TriggerSettings};

/// A work-detected event: new work was put on `queue`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WorkDetected {
    /// The storage account, if the sender names one; events for other accounts are ignored.
    #[serde(default)]
    pub account: Option<String>,
    /// The queue that received work.
    pub queue: String,
    /// Size of the payload (bytes, or messages in a batch), informational.
    #[serde(default)]
    pub payload_size: Option<u64>,
}

/// Where a push trigger came from (the `source` label of `ebbflow_triggers_by_source_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TriggerSource {
    /// A publish in this process ([`Hub::notify`], called by a [`crate::Publisher`]).
    Publish,
    /// The HTTP endpoint (plain, Event Grid, CloudEvents).
    Http,
    /// The bus between instances.
    Bus,
}

impl TriggerSource {
    /// Every source, in the order of [`TriggerSource::index`].
    pub const ALL: [TriggerSource; 3] = [Self::Publish, Self::Http, Self::Bus];

    /// `publish`, `http` or `bus`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Http => "http",
            Self::Bus => "bus",
        }
    }

    /// The position in [`TriggerSource::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Something that can be woken: a queue's listener.
pub(crate) trait Wake: Send + Sync + 'static {
    fn wake(&self, source: TriggerSource);
}

/// Listeners by queue name.
type Registry = HashMap<String, Vec<Arc<dyn Wake>>>;

/// The in-process registry of listeners by queue name. Clones share it.
#[derive(Clone, Default)]
pub struct Hub {
    listeners: Arc<RwLock<Registry>>,
    account: Option<String>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let queues: Vec<String> = self
            .listeners
            .read()
            .expect("hub lock poisoned")
            .keys()
            .cloned()
            .collect();
        f.debug_struct("Hub").field("queues", &queues).finish()
    }
}

impl Hub {
    /// A hub that accepts events for `account` (or any account when `None`).
    pub fn new(account: Option<String>) -> Self {
        Self {
            listeners: Arc::default(),
            account,
        }
    }

    pub(crate) fn register(&self, queue: &str, listener: Arc<dyn Wake>) {
        self.listeners
            .write()
            .expect("hub lock poisoned")
            .entry(queue.to_string())
            .or_default()
            .push(listener);
    }

    /// Wakes every local listener of `queue` (a publish in this process); returns how many
    /// were woken.
    pub fn notify(&self, queue: &str) -> usize {
        self.notify_from(queue, TriggerSource::Publish)
    }

    /// Wakes every local listener of `queue`, counting the trigger under `source`; returns
    /// how many were woken.
    pub fn notify_from(&self, queue: &str, source: TriggerSource) -> usize {
        let listeners = self.listeners.read().expect("hub lock poisoned");
        let woken = listeners.get(queue).map_or(0, |ls| {
            ls.iter().for_each(|l| l.wake(source));
            ls.len()
        });
        tracing::debug!(
            queue,
            woken,
            source = source.as_str(),
            "work-detected trigger"
        );
        woken
    }

    /// The queues with a listener here, sorted.
    pub fn queues(&self) -> Vec<String> {
        let listeners = self.listeners.read().expect("hub lock poisoned");
        let mut queues: Vec<String> = listeners.keys().cloned().collect();
        queues.sort();
        queues
    }

    /// Whether `event` is for this worker's storage account (or names none), and so for this
    /// hub to deliver.
    pub fn is_for_this_account(&self, event: &WorkDetected) -> bool {
        match (&self.account, &event.account) {
            (Some(ours), Some(theirs)) => ours.eq_ignore_ascii_case(theirs),
            _ => true,
        }
    }

    /// Whether `event` is for this account and names a queue without a listener here.
    pub fn is_unknown_queue(&self, event: &WorkDetected) -> bool {
        self.is_for_this_account(event)
            && !self
                .listeners
                .read()
                .expect("hub lock poisoned")
                .contains_key(&event.queue)
    }

    /// Handles an event that came from `source`: ignored when it names another account; else
    /// [`Hub::notify_from`].
    pub fn deliver(&self, event: &WorkDetected, source: TriggerSource) -> usize {
        if !self.is_for_this_account(event) {
            tracing::debug!(queue = %event.queue, "trigger for another account ignored");
            return 0;
        }
        self.notify_from(&event.queue, source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct Counter(AtomicUsize, std::sync::Mutex<Vec<TriggerSource>>);
    impl Wake for Counter {
        fn wake(&self, source: TriggerSource) {
            self.0.fetch_add(1, Ordering::SeqCst);
            self.1.lock().unwrap().push(source);
        }
    }

    #[test]
    fn notifies_only_the_named_queue_and_account() {
        let hub = Hub::new(Some("acct".into()));
        let orders = Arc::new(Counter::default());
        hub.register("orders", orders.clone());
        assert_eq!(hub.notify("emails"), 0);
        assert_eq!(hub.notify("orders"), 1);
        let event = |account: Option<&str>| WorkDetected {
            account: account.map(str::to_string),
            queue: "orders".into(),
            payload_size: None,
        };
        assert_eq!(hub.deliver(&event(Some("ACCT")), TriggerSource::Http), 1);
        assert_eq!(hub.deliver(&event(None), TriggerSource::Bus), 1);
        assert_eq!(hub.deliver(&event(Some("other")), TriggerSource::Http), 0);
        assert_eq!(orders.0.load(Ordering::SeqCst), 3);
        assert_eq!(
            *orders.1.lock().unwrap(),
            [
                TriggerSource::Publish,
                TriggerSource::Http,
                TriggerSource::Bus
            ]
        );
    }
}

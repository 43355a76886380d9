//! The rules of a running listener that a reload may change: `[queues.<q>.scaling]` (but
//! `wake_on_publish`, wired into the bus at start-up) and `[queues.<q>.idle_backoff]`.
//!
//! Readers take the current rules with [`Tuning::now`] each time they decide (the supervisor
//! per decision and per probe tick, a task per empty receive), so a change reaches the next
//! decision without a restart. The worker's reload checks the whole new config before it calls
//! [`Tuning::set`]: nothing here validates.

use std::sync::{Arc, RwLock};

use crate::backoff::IdleBackoffSettings;
use crate::scaling::ScalingSettings;

/// One queue's live-tunable rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tuned {
    pub(crate) scaling: ScalingSettings,
    pub(crate) idle_backoff: IdleBackoffSettings,
}

/// The current rules, swapped whole by a reload.
#[derive(Debug)]
pub(crate) struct Tuning {
    now: RwLock<Arc<Tuned>>,
}

impl Tuning {
    pub(crate) fn new(tuned: Tuned) -> Self {
        Self {
            now: RwLock::new(Arc::new(tuned)),
        }
    }

    /// The rules now. A poisoned lock is taken over: a swap cannot leave it half-written.
    pub(crate) fn now(&self) -> Arc<Tuned> {
        self.now.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the rules; the next reader sees the new ones.
    pub(crate) fn set(&self, tuned: Tuned) {
        *self.now.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(tuned);
    }
}

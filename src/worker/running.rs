//! [`RunningWorker`]: the handle of a started worker (its counters, store, bus, readiness,
//! endpoints, live reload) and its drain in two steps on a stop signal.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::report::explain;
use super::{reload, shutdown_signal, BusCounters, DrainReport, Hub, Reloaded, RELEASE_GRACE};
use crate::config::{ConfigError, Settings};
use crate::handler::Publisher;
use crate::listener::{Lifecycle, QueueListener, QueueSnapshot};
use crate::observability::Readiness;
use crate::store::{QueueStore, StoreError, UnknownOutcomes};

/// The reason a drain was cut short when `drain_timeout` passed with handlers still running.
const DEADLINE_PASSED: &str = "drain deadline passed";
/// The reason a drain was cut short by a second SIGTERM or ctrl-c.
const SECOND_SIGNAL: &str = "second stop signal";

/// The worker's HTTP endpoints, where they listen, and their servers.
pub(super) struct Endpoints {
    pub(super) ops_addr: Option<std::net::SocketAddr>,
    /// The ops endpoint's server: it answers until the worker is gone (so `/readyz` says 503
    /// through the drain).
    pub(super) _ops_server: Option<tokio_util::task::AbortOnDropHandle<()>>,
    pub(super) trigger_addr: Option<std::net::SocketAddr>,
    /// The trigger endpoint's server, aborted when the worker is done.
    pub(super) _trigger_server: Option<tokio_util::task::AbortOnDropHandle<()>>,
}

/// A started worker. Dropping it stops it at once (no drain: handlers are dropped and their
/// messages released); call [`RunningWorker::run`] or [`RunningWorker::shutdown`] to drain.
pub struct RunningWorker {
    pub(super) bus: crate::bus::BusHandle,
    pub(super) bus_counters: Arc<BusCounters>,
    pub(super) store: Arc<dyn QueueStore>,
    pub(super) readiness: Readiness,
    pub(super) endpoints: Endpoints,
    pub(super) listeners: Vec<QueueListener>,
    pub(super) publishers: BTreeMap<String, Publisher>,
    pub(super) hub: Hub,
    pub(super) life: Lifecycle,
    /// Fire `stop` and `abort` when the worker is dropped.
    pub(super) _stop_on_drop: [tokio_util::sync::DropGuard; 2],
    /// Fired by a drain command on the bus (`ebbflow drain --role R`).
    pub(super) drain_requested: tokio_util::sync::CancellationToken,
    /// Live reload of the scaling rules.
    pub(super) reloader: Arc<reload::Reloader>,
    pub(super) drain_timeout: Duration,
}

impl std::fmt::Debug for RunningWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningWorker")
            .field("listeners", &self.listeners)
            .field("drain_timeout", &self.drain_timeout)
            .finish_non_exhaustive()
    }
}

impl RunningWorker {
    /// Applies the scaling rules of `settings` without a restart, as a reload on SIGHUP or
    /// `ebbflow reload` does from the config files: `[queues.<q>.scaling]` (all but
    /// `wake_on_publish`) and `[queues.<q>.idle_backoff]` of each running queue. Each applied
    /// value is logged with its old and new value; every other changed key is named in a
    /// warning as needing a restart and not applied. The next scaling decision follows the new
    /// rules; running tasks above a lowered `max_tasks` retire at once.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the key when `settings` is invalid, or when its scaling rules
    /// contradict the running config (e.g. `min_tasks = 0` on a queue nothing could wake):
    /// then nothing changes, the old rules stay.
    pub fn reload(&self, settings: Settings) -> Result<Reloaded, ConfigError> {
        self.reloader.apply(settings)
    }

    /// Reads the config folder the worker's settings came from again (with the process's
    /// environment) and applies it as [`RunningWorker::reload`] does: what SIGHUP does.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when a file cannot be read or is invalid (naming the key), or when the
    /// settings were built in code (no folder to read); nothing changes then.
    pub fn reload_from_config(&self) -> Result<Reloaded, ConfigError> {
        self.reloader.reread()
    }

    /// Every queue's counters now.
    pub fn snapshot(&self) -> Vec<QueueSnapshot> {
        self.listeners.iter().map(QueueListener::snapshot).collect()
    }

    /// The store the worker uses.
    pub fn store(&self) -> Arc<dyn QueueStore> {
        self.store.clone()
    }

    /// This instance's bus: publish and subscribe to events between instances.
    pub fn bus(&self) -> crate::bus::BusHandle {
        self.bus.clone()
    }

    /// Work notices received and passed on, outage probes, wake-ups after a reconnect.
    pub fn bus_counters(&self) -> Arc<BusCounters> {
        self.bus_counters.clone()
    }

    /// The in-process trigger hub: `hub.notify("orders")` wakes the `orders` listener.
    pub fn hub(&self) -> Hub {
        self.hub.clone()
    }

    /// The worker's readiness: add checks of your own with [`Readiness::register`].
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Where the ops endpoint listens, when `observability.bind` is set.
    pub fn ops_addr(&self) -> Option<std::net::SocketAddr> {
        self.endpoints.ops_addr
    }

    /// The running listeners (cloneable handles: their snapshots, for a report of your own).
    pub fn listeners(&self) -> Vec<QueueListener> {
        self.listeners.clone()
    }

    /// Where the HTTP trigger endpoint listens, when enabled.
    pub fn trigger_addr(&self) -> Option<std::net::SocketAddr> {
        self.endpoints.trigger_addr
    }

    /// A publisher for a configured queue, in that queue's encoding; its sends also wake
    /// this worker's listener of the queue.
    pub fn publisher(&self, queue: &str) -> Option<Publisher> {
        self.publishers.get(queue).cloned()
    }

    /// Runs until SIGTERM or ctrl-c ([`shutdown_signal`]), a drain command on the bus
    /// (`ebbflow drain`), or an error no retry can fix stops it, then drains.
    /// A second stop signal during the drain ends it at once: handlers still running are
    /// aborted and their messages released, as at the drain deadline (exit code 1).
    pub async fn run(self) -> DrainReport {
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = self.drain_requested.cancelled() => {}
            _ = self.life.fatal.raised() => {}
        }
        self.drain(shutdown_signal()).await
    }

    /// Runs until `signal` completes, a drain command on the bus (`ebbflow drain`) reaches it,
    /// or an error no retry can fix stops it (see [`DrainReport::fatal`]), then drains. The one
    /// way a worker learns of a fatal error.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> DrainReport {
        tokio::select! {
            _ = signal => {}
            _ = self.drain_requested.cancelled() => {}
            _ = self.life.fatal.raised() => {}
        }
        self.shutdown().await
    }

    /// Per queue, the calls whose outcome is unknown so far (see "Unknown
    /// outcomes" in docs/src/message-life.md): zero on the embedded backend.
    pub fn unknown_outcomes(&self) -> Vec<(String, UnknownOutcomes)> {
        self.listeners
            .iter()
            .map(|l| {
                let queue = l.snapshot().queue;
                let counts = self.store.unknown_outcomes(&queue);
                (queue, counts)
            })
            .collect()
    }

    /// The error that stopped (or is stopping) the worker, if any.
    pub fn fatal_error(&self) -> Option<StoreError> {
        self.life.fatal.error()
    }

    /// Stops receiving, waits up to the drain timeout for in-flight handlers, then aborts
    /// the rest (their messages are released, not deleted) and waits at most
    /// [`RELEASE_GRACE`] more for those releases: the whole drain is bounded by
    /// `drain_timeout + RELEASE_GRACE` even if store calls hang.
    pub async fn shutdown(self) -> DrainReport {
        self.drain(std::future::pending()).await
    }

    /// [`RunningWorker::shutdown`], cut short when `now` completes before the drain deadline
    /// (an operator's second ctrl-c): handlers are aborted then, as at the deadline.
    async fn drain(self, now: impl Future<Output = ()>) -> DrainReport {
        let life = &self.life;
        // Unready first: a load balancer or the bus stops counting on this replica before it
        // stops receiving.
        self.readiness.begin_drain();
        info!(drain_timeout = ?self.drain_timeout, "stopping: no new receives, draining in-flight messages");
        life.stop.cancel();
        // Why the drain was cut short, if it was: the reason every released message and the
        // last line carry.
        let cut = tokio::select! {
            done = tokio::time::timeout(self.drain_timeout, life.tracker.wait()) => {
                if done.is_err() {
                    warn!(drain_timeout = ?self.drain_timeout, "drain deadline passed; aborting handlers still running");
                }
                done.is_err().then_some(DEADLINE_PASSED)
            }
            _ = now => {
                warn!("second stop signal received; aborting handlers still running");
                Some(SECOND_SIGNAL)
            }
        };
        let clean = cut.is_none();
        if let Some(reason) = cut {
            life.abort_for(reason);
            if tokio::time::timeout(RELEASE_GRACE, life.tracker.wait())
                .await
                .is_err()
            {
                warn!(grace = ?RELEASE_GRACE, "store calls still running after the release grace; reporting anyway");
            }
        }
        self.bus.close().await;
        let unreleased = self.listeners.iter().map(QueueListener::held).sum();
        let queues = self.snapshot();
        let fatal = life.fatal.error();
        match &fatal {
            Some(e) => tracing::error!(error = %e, "worker stopped: {}", explain(e)),
            None if unreleased > 0 => {
                warn!(clean, reason = cut, unreleased, "worker stopped; some messages were not released (they reappear after their visibility timeout)")
            }
            None => match cut {
                Some(reason) => warn!(clean, reason, "worker stopped; handlers still running were aborted and their messages released"),
                None => info!(clean, "worker stopped"),
            },
        }
        // The exporter sends in batches: the last ones go now, before the process exits.
        crate::observability::traces::flush();
        DrainReport {
            clean,
            queues,
            fatal,
            unreleased,
        }
    }
}

//! The simulated replicas: each one a real [`Worker`] (listeners, scaling policy, retries) on
//! the shared store, started after a start-up delay and drained like a replica that got
//! SIGTERM.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use ebbflow::config::Settings;
use ebbflow::handler::Handler;
use ebbflow::listener::QueueSnapshot;
use ebbflow::store::QueueStore;
use ebbflow::worker::{RunningWorker, Worker};

/// One replica: alive from its creation until its drain ended.
struct Replica {
    stop: CancellationToken,
    join: JoinHandle<()>,
}

/// The replicas, newest last.
pub(super) struct Fleet<H> {
    settings: Settings,
    store: Arc<dyn QueueStore>,
    handler: H,
    startup_delay: Duration,
    replicas: Vec<Replica>,
    /// Replicas stopped and still draining.
    draining: Vec<JoinHandle<()>>,
    /// Started workers by replica id (a replica starting up or drained is not here).
    running: Arc<Mutex<BTreeMap<u64, RunningWorker>>>,
    /// Replicas that exist: starting, running or draining.
    existing: Arc<AtomicU64>,
    /// Messages handled (deleted after success) by replicas that have drained.
    handled: Arc<AtomicU64>,
    next_id: u64,
    /// The first start-up failure, if any.
    failed: Arc<Mutex<Option<String>>>,
    /// Replicas whose start ended (started or failed), so far.
    starts: tokio::sync::watch::Sender<u64>,
}

/// Counts a replica out when its task ends, however it ends.
struct Exists(Arc<AtomicU64>);

impl Drop for Exists {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<H: Handler + Clone> Fleet<H> {
    pub(super) fn new(
        settings: Settings,
        store: Arc<dyn QueueStore>,
        handler: H,
        startup_delay: Duration,
    ) -> Self {
        Self {
            settings,
            store,
            handler,
            startup_delay,
            replicas: Vec::new(),
            draining: Vec::new(),
            running: Arc::default(),
            existing: Arc::default(),
            handled: Arc::default(),
            next_id: 0,
            failed: Arc::default(),
            starts: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Creates or stops replicas until `n` are alive (not stopping). New replicas start after
    /// the start-up delay (none when `immediately`); the newest stop first.
    pub(super) fn scale_to(&mut self, n: u32, immediately: bool) {
        let n = n as usize;
        while self.replicas.len() > n {
            let replica = self.replicas.pop().expect("more than n");
            replica.stop.cancel();
            self.draining.push(replica.join);
        }
        self.draining.retain(|j| !j.is_finished());
        while self.replicas.len() < n {
            let delay = if immediately {
                Duration::ZERO
            } else {
                self.startup_delay
            };
            let replica = self.spawn(delay);
            self.replicas.push(replica);
        }
    }

    fn spawn(&mut self, delay: Duration) -> Replica {
        let id = self.next_id;
        self.next_id += 1;
        let stop = CancellationToken::new();
        self.existing.fetch_add(1, Ordering::Relaxed);
        let exists = Exists(self.existing.clone());
        let mut worker = Worker::new(self.settings.clone()).with_store(self.store.clone());
        for name in self.settings.queues.keys() {
            worker = worker.handler(name, self.handler.clone());
        }
        let (running, handled, failed, token, starts) = (
            self.running.clone(),
            self.handled.clone(),
            self.failed.clone(),
            stop.clone(),
            self.starts.clone(),
        );
        let join = tokio::spawn(async move {
            let _exists = exists;
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            let started = match worker.start().await {
                Ok(w) => w,
                Err(e) => {
                    failed
                        .lock()
                        .expect("fleet mutex")
                        .get_or_insert(e.to_string());
                    starts.send_modify(|n| *n += 1);
                    return;
                }
            };
            running.lock().expect("fleet mutex").insert(id, started);
            starts.send_modify(|n| *n += 1);
            token.cancelled().await;
            let Some(worker) = running.lock().expect("fleet mutex").remove(&id) else {
                return;
            };
            let report = worker.shutdown().await;
            let done: u64 = report.queues.iter().map(|q| q.handled).sum();
            handled.fetch_add(done, Ordering::Relaxed);
        });
        Replica { stop, join }
    }

    /// Replicas that exist now: starting, running or draining.
    pub(super) fn existing(&self) -> u64 {
        self.existing.load(Ordering::Relaxed)
    }

    /// Every running replica's queue snapshots.
    pub(super) fn snapshots(&self) -> Vec<Vec<QueueSnapshot>> {
        self.running
            .lock()
            .expect("fleet mutex")
            .values()
            .map(RunningWorker::snapshot)
            .collect()
    }

    /// Waits until `n` replicas ended their start (started, or failed: see
    /// [`Fleet::failure`]).
    pub(super) async fn started(&self, n: u64) {
        let mut starts = self.starts.subscribe();
        let _ = starts.wait_for(|s| *s >= n).await;
    }

    /// Runs `f` on the first running replica, if one runs.
    pub(super) fn with_first<T>(&self, f: impl FnOnce(&RunningWorker) -> T) -> Option<T> {
        self.running
            .lock()
            .expect("fleet mutex")
            .values()
            .next()
            .map(f)
    }

    /// Why a replica could not start, if one could not.
    pub(super) fn failure(&self) -> Option<String> {
        self.failed.lock().expect("fleet mutex").clone()
    }

    /// Stops every replica, waits for the drains, and returns the messages handled in all.
    pub(super) async fn shutdown(mut self) -> u64 {
        self.scale_to(0, true);
        for join in self.draining.drain(..) {
            let _ = join.await;
        }
        self.handled.load(Ordering::Relaxed)
    }
}

//! One message's run (`src/listener/dispatch.rs`), where a plain run shows nothing: a message
//! that waited ahead of a slot long enough to be renewed, then was released on stop or settled
//! before its handler; a claim-check payload whose blob fails for a while; a handler past its
//! `handler_timeout`. Each asserts on the store (what is visible, hidden, in the poison queue)
//! or on what the handler saw, on the embedded store under tokio's paused clock at the default
//! settings (one task, so that which messages wait is known).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebbflow::codec::Encoding;
use ebbflow::config::{MaxTasks, QueueSettings, Settings};
use ebbflow::listener::poison::{PoisonEnvelope, PoisonReason};
use ebbflow::store::{BlobError, BlobErrorKind, BlobInfo, BlobStore, MemoryBlobs, SendOptions};
use ebbflow::{Context, Handler, HandlerError, Worker};
use tokio::time::Instant;

use crate::common;

/// The queue's settings at the defaults, with one task and `edit` applied.
fn settings(queue: &str, edit: impl FnOnce(&mut QueueSettings)) -> Settings {
    let mut q = QueueSettings::default();
    q.scaling.max_tasks = MaxTasks::of::<1>();
    edit(&mut q);
    let mut s = Settings::default();
    s.queues.insert(queue.to_string(), q);
    s.validate().unwrap();
    s
}

/// `quick-*` takes 10 ms (so the handler time is known and messages are received ahead of
/// the slots); `long-*` takes `long`, cut short by `ctx.shutdown()` only when
/// `ends_on_shutdown`. Counts runs per text, and records the texts started after the stop.
#[derive(Clone)]
struct QuickThenLong {
    long: Duration,
    ends_on_shutdown: bool,
    runs: Arc<Mutex<BTreeMap<String, u32>>>,
    started_stopping: Arc<Mutex<BTreeSet<String>>>,
}

impl QuickThenLong {
    fn new(long: Duration) -> Self {
        Self {
            long,
            ends_on_shutdown: false,
            runs: Arc::default(),
            started_stopping: Arc::default(),
        }
    }

    fn started(&self) -> BTreeSet<String> {
        self.runs.lock().unwrap().keys().cloned().collect()
    }
}

impl Handler for QuickThenLong {
    type Message = String;
    async fn handle(&self, text: String, ctx: Context) -> Result<(), HandlerError> {
        *self.runs.lock().unwrap().entry(text.clone()).or_default() += 1;
        if ctx.shutdown().is_cancelled() {
            self.started_stopping.lock().unwrap().insert(text.clone());
        }
        let work = if text.starts_with("quick") {
            Duration::from_millis(10)
        } else {
            self.long
        };
        let stop = async {
            if self.ends_on_shutdown {
                ctx.shutdown().cancelled().await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(work) => {}
            _ = stop => {}
        }
        Ok(())
    }
}

/// A stop after the messages waiting ahead of a slot were renewed (16 fast jobs make the
/// handler time known, then 48 jobs of 30 s: 16 run, the rest wait ahead, and the stop comes
/// 20 s later, past the renewal at half the default 30 s visibility): each waiting message is
/// released with the pop receipt its lease renewed to, so it is visible again right after the
/// drain, not hidden until its renewed visibility ends (45 s). The started ones finish and are
/// deleted; nothing is lost.
#[tokio::test(start_paused = true)]
async fn a_stop_releases_waiting_messages_renewed_while_they_waited_at_once() {
    let store = common::memory();
    let q = common::fresh_queue(&store, "renewedwait").await;
    let quick: Vec<String> = (0..16).map(|i| format!("quick-{i:02}")).collect();
    let long: BTreeSet<String> = (0..48).map(|i| format!("long-{i:02}")).collect();
    for text in quick.iter().chain(&long) {
        q.send(text, SendOptions::default()).await.unwrap();
    }
    let name = q.name().to_string();
    let handler = QuickThenLong::new(Duration::from_secs(30));
    let s = settings(&name, |q| q.encoding = Encoding::None);
    let worker = common::start(&store, s, &name, handler.clone()).await;
    common::wait_for("messages waiting ahead", Duration::from_secs(10), || {
        let snap = &worker.snapshot()[0];
        snap.handled == 16 && snap.held > snap.in_flight
    })
    .await;
    // Past the first renewal of every message held (15 s after its receive).
    tokio::time::sleep(Duration::from_secs(20)).await;
    let at_stop = worker.snapshot().remove(0);
    let waiting = at_stop.held - at_stop.in_flight;
    assert!(waiting > 0, "{at_stop:?}");
    assert!(
        at_stop.renewals >= at_stop.held,
        "every held message was renewed before the stop: {at_stop:?}"
    );
    let report = worker.shutdown().await;
    let snap = &report.queues[0];
    let started: BTreeSet<String> = handler
        .started()
        .into_iter()
        .filter(|t| t.starts_with("long"))
        .collect();
    let visible = crate::guarantees::take_visible(&q).await;
    let expected: BTreeSet<String> = long.difference(&started).cloned().collect();
    assert_eq!(expected.len() as u64, waiting, "{snap:?}");
    let hidden: Vec<_> = expected.difference(&visible).collect();
    assert!(
        hidden.is_empty(),
        "waited past a renewal, yet still hidden after the stop (released with a stale \
         receipt?): {hidden:?}"
    );
    assert_eq!(visible, expected, "and nothing started shows again");
    assert_eq!(snap.handled as usize, 16 + started.len(), "{snap:?}");
    assert_eq!((report.unreleased, snap.lost_ownership), (0, 0), "{snap:?}");
    assert!(snap.released >= waiting, "{snap:?}");
}

/// A stop while messages wait ahead of a slot and the running handlers answer `ctx.shutdown()`
/// at once (as a handler should): their slots come back during the stop, yet no waiting
/// message starts then; each is released unstarted, visible again right after the drain.
#[tokio::test(start_paused = true)]
async fn a_stop_starts_no_waiting_message_in_slots_freed_by_the_stop() {
    let store = common::memory();
    let q = common::fresh_queue(&store, "stopfrees").await;
    let long: BTreeSet<String> = (0..48).map(|i| format!("long-{i:02}")).collect();
    for text in (0..16).map(|i| format!("quick-{i:02}")).chain(long.clone()) {
        q.send(&text, SendOptions::default()).await.unwrap();
    }
    let name = q.name().to_string();
    let handler = QuickThenLong {
        ends_on_shutdown: true,
        ..QuickThenLong::new(Duration::from_secs(3600))
    };
    let s = settings(&name, |q| q.encoding = Encoding::None);
    let worker = common::start(&store, s, &name, handler.clone()).await;
    common::wait_for("messages waiting ahead", Duration::from_secs(10), || {
        let snap = &worker.snapshot()[0];
        snap.handled == 16 && snap.held > snap.in_flight
    })
    .await;
    let at_stop = worker.snapshot().remove(0);
    let report = worker.shutdown().await;
    let snap = &report.queues[0];
    let late = handler.started_stopping.lock().unwrap().clone();
    assert!(
        late.is_empty(),
        "started after the stop: {late:?}; {snap:?}"
    );
    let started: BTreeSet<String> = handler
        .started()
        .into_iter()
        .filter(|t| t.starts_with("long"))
        .collect();
    assert_eq!(started.len() as u64, at_stop.in_flight, "{at_stop:?}");
    let visible = crate::guarantees::take_visible(&q).await;
    assert_eq!(visible, long.difference(&started).cloned().collect());
    assert_eq!(snap.handled as usize, 16 + started.len(), "{snap:?}");
    assert_eq!(report.unreleased, 0);
}

/// Messages settled before their handler after waiting past a renewal: 16 fast jobs, then 16
/// jobs of 20 s hold every slot while 8 undecodable messages (not base64, the default
/// encoding) wait ahead, renewed at 15 s. When slots free they are poisoned with the pop
/// receipt their lease renewed to: each leaves the queue, and the poison queue holds exactly
/// one copy of each, with its text and reason, also a minute later (a delete with the first
/// receipt fails, and the message would come back and be copied again).
#[tokio::test(start_paused = true)]
async fn a_message_renewed_while_waiting_then_poisoned_unrun_leaves_its_queue_once() {
    let store = common::memory();
    let q = common::fresh_queue(&store, "renewedpoison").await;
    let base64 = |t: &str| Encoding::Base64.encode(t.as_bytes()).unwrap();
    let bad: BTreeSet<String> = (0..8).map(|i| format!("not base64 {i}!")).collect();
    let quick = (0..16).map(|i| base64(&format!("quick-{i:02}")));
    let long = (0..16).map(|i| base64(&format!("long-{i:02}")));
    for text in quick.chain(long).chain(bad.iter().cloned()) {
        q.send(&text, SendOptions::default()).await.unwrap();
    }
    let name = q.name().to_string();
    let handler = QuickThenLong::new(Duration::from_secs(20));
    let worker = common::start(&store, settings(&name, |_| {}), &name, handler.clone()).await;
    common::wait_for("all settled", Duration::from_secs(60), || {
        let snap = &worker.snapshot()[0];
        snap.handled + snap.poisoned >= 40
    })
    .await;
    let settled = worker.snapshot().remove(0);
    assert_eq!((settled.handled, settled.poisoned), (32, 8), "{settled:?}");
    // The 16 running and the 8 waiting were renewed at 15 s.
    assert!(settled.renewals >= 24, "{settled:?}");
    assert_eq!(q.approximate_depth().await.unwrap(), 0, "{settled:?}");
    // Past the end of the renewed visibility: nothing comes back to be poisoned again.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let snap = worker.shutdown().await.queues.remove(0);
    assert_eq!((snap.poisoned, snap.lost_ownership), (8, 0), "{snap:?}");
    let runs = handler.runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 32);
    assert!(runs.values().all(|n| *n == 1), "{runs:?}");
    let poison = store.queue(&format!("{name}-poison")).unwrap();
    let copies = poison.peek(32).await.unwrap();
    let mut bodies = BTreeSet::new();
    for copy in &copies {
        let envelope = PoisonEnvelope::from_text(&copy.text, Encoding::Base64).unwrap();
        assert_eq!(envelope.reason, PoisonReason::Undecodable, "{envelope:?}");
        bodies.insert(envelope.body.clone());
    }
    assert_eq!(copies.len(), 8, "one poison copy each: {bodies:?}");
    assert_eq!(bodies, bad);
}

/// A blob container whose downloads fail with a fault that may pass (throttling, say) while
/// `failing` is set; counts them.
struct FlakyBlobs {
    inner: MemoryBlobs,
    failing: AtomicBool,
    gets: AtomicU32,
}

#[async_trait::async_trait]
impl BlobStore for FlakyBlobs {
    fn container(&self) -> &str {
        self.inner.container()
    }
    async fn create_if_missing(&self) -> Result<(), BlobError> {
        self.inner.create_if_missing().await
    }
    async fn put(
        &self,
        name: &str,
        bytes: Vec<u8>,
        metadata: BTreeMap<String, String>,
    ) -> Result<(), BlobError> {
        self.inner.put(name, bytes, metadata).await
    }
    async fn get(&self, name: &str, max_len: u64) -> Result<Vec<u8>, BlobError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return Err(BlobError::new(
                BlobErrorKind::Transient,
                name,
                "injected: 503 ServerBusy",
            ));
        }
        self.inner.get(name, max_len).await
    }
    async fn set_expiry(&self, name: &str, value: &str) -> Result<(), BlobError> {
        self.inner.set_expiry(name, value).await
    }
    async fn delete(&self, name: &str) -> Result<bool, BlobError> {
        self.inner.delete(name).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<BlobInfo>, BlobError> {
        self.inner.list(prefix).await
    }
}

/// Counts its runs.
#[derive(Clone, Default)]
struct Counts(Arc<AtomicU32>);

impl Handler for Counts {
    type Message = Vec<u8>;
    async fn handle(&self, _: Vec<u8>, _: Context) -> Result<(), HandlerError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A claim-check payload whose blob download keeps failing with a fault that may pass counts
/// a failed try each time, like a handler's retry: tries 1 to 4 are retried, the fifth (the
/// default `max_dequeue_count`'s last allowed try) goes to the poison queue, reason
/// `MaxDequeueCountExceeded`, its handler never run. A payload whose fault passed is handled.
#[tokio::test(start_paused = true)]
async fn a_payload_blob_fault_is_retried_and_poisoned_on_the_last_allowed_try() {
    let store = common::memory();
    let name = common::unique("blobfault");
    let blobs = Arc::new(FlakyBlobs {
        inner: MemoryBlobs::new("ebbflow-payloads"),
        failing: AtomicBool::new(true),
        gets: AtomicU32::new(0),
    });
    let handler = Counts::default();
    let worker = Worker::new(settings(&name, |_| {}))
        .with_store(store.clone())
        .with_blobs(blobs.clone())
        .handler(&name, handler.clone())
        .start()
        .await
        .unwrap();
    let publisher = worker.publisher(&name).unwrap();
    // Over the default 64 KiB threshold: the payload goes to a blob.
    let payload = vec![7u8; 100_000];
    publisher
        .send_bytes(&payload, Default::default())
        .await
        .unwrap();
    assert_eq!(blobs.inner.len(), 1, "the payload went to a blob");
    common::wait_for("poisoned", Duration::from_secs(60), || {
        worker.snapshot()[0].poisoned == 1
    })
    .await;
    let snap = worker.snapshot().remove(0);
    assert_eq!(
        (
            blobs.gets.load(Ordering::SeqCst),
            snap.retried,
            snap.handled
        ),
        (5, 4, 0),
        "one download a try, four retries: {snap:?}"
    );
    assert_eq!(handler.0.load(Ordering::SeqCst), 0);
    let poison = store.queue(&format!("{name}-poison")).unwrap();
    let copy = poison.peek(1).await.unwrap().remove(0);
    let envelope = PoisonEnvelope::from_text(&copy.text, Encoding::Base64).unwrap();
    assert_eq!(envelope.reason, PoisonReason::MaxDequeueCountExceeded);
    assert_eq!(envelope.dequeue_count, 5);
    let error = envelope.error.unwrap_or_default();
    assert!(
        error.contains("failed on try 5 of 5") && error.contains("injected: 503"),
        "{error}"
    );
    // Once the fault passes, a payload is handled.
    blobs.failing.store(false, Ordering::SeqCst);
    publisher
        .send_bytes(&payload, Default::default())
        .await
        .unwrap();
    common::wait_for("handled", Duration::from_secs(60), || {
        worker.snapshot()[0].handled == 1
    })
    .await;
    let snap = worker.shutdown().await.queues.remove(0);
    assert_eq!((snap.poisoned, snap.retried), (1, 4), "{snap:?}");
    assert_eq!(handler.0.load(Ordering::SeqCst), 1);
}

/// What a handler saw of its signals: when its timeout fired (from its start), and whether
/// cancellation had fired with it and shutdown had not.
#[derive(Clone, Default)]
struct WatchesTimeout {
    seen: Arc<Mutex<Vec<(Duration, bool, bool)>>>,
}

impl Handler for WatchesTimeout {
    type Message = String;
    async fn handle(&self, _: String, ctx: Context) -> Result<(), HandlerError> {
        let start = Instant::now();
        tokio::select! {
            _ = ctx.timeout().cancelled() => {}
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
        self.seen.lock().unwrap().push((
            start.elapsed(),
            ctx.cancellation().is_cancelled(),
            ctx.shutdown().is_cancelled(),
        ));
        Ok(())
    }
}

/// A handler past its `handler_timeout` (10 s; default grace 5 s) sees `ctx.timeout()` fire at
/// that moment, `ctx.cancellation()` with it, `ctx.shutdown()` not; returning `Ok` within the
/// grace has done its work: the message is deleted, not run again, no timeout counted.
#[tokio::test(start_paused = true)]
async fn a_handler_past_its_timeout_sees_timeout_and_cancellation_fire() {
    let store = common::memory();
    let q = common::fresh_queue(&store, "timeoutsignal").await;
    q.send("slow", SendOptions::default()).await.unwrap();
    let name = q.name().to_string();
    let s = settings(&name, |q| {
        q.encoding = Encoding::None;
        q.handler_timeout = Some(Duration::from_secs(10));
    });
    let handler = WatchesTimeout::default();
    let worker = common::start(&store, s, &name, handler.clone()).await;
    // Past the timeout and its grace, and a retry's run had it been aborted.
    tokio::time::sleep(Duration::from_secs(40)).await;
    let snap = worker.shutdown().await.queues.remove(0);
    let seen = handler.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![(Duration::from_secs(10), true, false)],
        "one run, signalled at its timeout: {snap:?}"
    );
    assert_eq!(
        (snap.handled, snap.timeouts, snap.retried),
        (1, 0, 0),
        "{snap:?}"
    );
    assert_eq!(q.approximate_depth().await.unwrap(), 0);
}

//! Promises of the Guarantees table that need a fault or a moment a plain run never shows: a
//! poison copy the store refuses, a delete refused as received elsewhere, a stop while messages wait ahead of free slots and while a
//! receive is on its way back, and a heartbeat pulse's renewal. Each asserts on the store
//! (what is visible, hidden, or still there), on the embedded store under tokio's paused clock
//! at the default settings, so that breaking the promise in the runtime fails it.

// The stop test reports what it saw on stdout, shown with --nocapture.
#![allow(clippy::print_stdout)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebbflow::codec::Encoding;
use ebbflow::config::{QueueSettings, Settings};
use ebbflow::store::{
    Layered, LayeredStore, Queue, QueueLayer, SendOptions, SentMessage, StoreError, StoreLayer,
};
use ebbflow::{Context, Handler, HandlerError};

use crate::common;
use crate::common::hooked::Hooked;

fn settings(queue: &str, edit: impl FnOnce(&mut QueueSettings)) -> Settings {
    let mut q = QueueSettings::default();
    q.encoding = Encoding::None;
    edit(&mut q);
    let mut s = Settings::default();
    s.queues.insert(queue.to_string(), q);
    s
}

/// Every message visible on `q` now, taken out of sight for an hour (the test's last look).
pub(crate) async fn take_visible(q: &Arc<dyn Queue>) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    loop {
        let got = q.receive(32, Duration::from_secs(3600)).await.unwrap();
        if got.is_empty() {
            return seen;
        }
        seen.extend(got.into_iter().map(|m| m.text));
    }
}

/// Refuses every send to a poison queue (`<queue>-poison`), as a store in trouble would.
#[derive(Clone, Default)]
struct PoisonRefused(Arc<AtomicU32>);

impl QueueLayer for PoisonRefused {
    async fn send(
        &self,
        inner: &dyn Queue,
        text: &str,
        options: SendOptions,
    ) -> Result<SentMessage, StoreError> {
        if inner.name().ends_with("-poison") {
            self.0.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Invalid {
                queue: inner.name().to_string(),
                detail: "injected: the poison copy is refused".into(),
                source: None,
            });
        }
        inner.send(text, options).await
    }
}

impl StoreLayer for PoisonRefused {
    fn wrap(&self, queue: Arc<dyn Queue>) -> Arc<dyn Queue> {
        Layered::wrap(queue, self.clone())
    }
}

/// Poisons whatever it gets.
struct Rejects;

impl Handler for Rejects {
    type Message = String;
    async fn handle(&self, _: String, _: Context) -> Result<(), HandlerError> {
        Err(HandlerError::poison("rejected"))
    }
}

/// "Never deleted unless handled or safely copied": when the copy to the poison queue fails,
/// the message stays on its queue (it comes back after its visibility timeout and is tried
/// again) and the failure counts as a store error; nothing is counted as poisoned.
#[tokio::test(start_paused = true)]
async fn a_failed_poison_copy_leaves_the_message_on_its_queue_and_counts_an_error() {
    let inner = common::memory();
    let refused = PoisonRefused::default();
    let store = LayeredStore::wrap(inner.clone(), refused.clone());
    let q = common::fresh_queue(&inner, "poisoncopy").await;
    q.send("doomed", SendOptions::default()).await.unwrap();
    let name = q.name().to_string();
    let worker = common::start(&store, settings(&name, |_| {}), &name, Rejects).await;
    common::wait_for("the poison copy refused", Duration::from_secs(10), || {
        worker.snapshot()[0].store_errors >= 1
    })
    .await;
    // Let whatever the listener does after the refusal happen.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let snap = worker.shutdown().await.queues.remove(0);
    assert!(refused.0.load(Ordering::SeqCst) >= 1, "the copy was tried");
    assert_eq!(snap.poisoned, 0, "{snap:?}");
    assert!(snap.store_errors >= 1, "{snap:?}");
    assert_eq!(
        q.approximate_depth().await.unwrap(),
        1,
        "the message is still on its queue"
    );
    let poison = inner.queue(&format!("{name}-poison")).unwrap();
    assert!(poison.peek(1).await.unwrap().is_empty(), "no copy arrived");
    // It comes back once its visibility timeout ends: still there, with its text.
    tokio::time::sleep(Duration::from_secs(31)).await;
    let back = take_visible(&q).await;
    assert_eq!(back, BTreeSet::from(["doomed".to_string()]));
}

/// Answers every delete on the work queue as a service does when the message was received
/// again elsewhere (its pop receipt no longer matches), and leaves the message where it is.
#[derive(Clone, Default)]
struct DeletesLost(Arc<AtomicU32>);

impl QueueLayer for DeletesLost {
    async fn delete_within(
        &self,
        inner: &dyn Queue,
        id: &str,
        pop_receipt: &str,
        lease_ends: tokio::time::Instant,
    ) -> Result<(), StoreError> {
        if inner.name().ends_with("-poison") {
            return inner.delete_within(id, pop_receipt, lease_ends).await;
        }
        self.0.fetch_add(1, Ordering::SeqCst);
        Err(StoreError::MessageNotFound {
            queue: inner.name().to_string(),
            id: id.to_string(),
        })
    }
}

impl StoreLayer for DeletesLost {
    fn wrap(&self, queue: Arc<dyn Queue>) -> Arc<dyn Queue> {
        Layered::wrap(queue, self.clone())
    }
}

/// Succeeds, or poisons a message whose text starts with "bad".
struct OkOrPoison;

impl Handler for OkOrPoison {
    type Message = String;
    async fn handle(&self, text: String, _: Context) -> Result<(), HandlerError> {
        if text.starts_with("bad") {
            return Err(HandlerError::poison("bad"));
        }
        Ok(())
    }
}

/// A settle the store refuses because the message was received again elsewhere is counted as
/// lost ownership, never as handled or poisoned, and the message stays on its queue: the delete
/// after success and the delete after a poison copy, both refused.
#[tokio::test(start_paused = true)]
async fn a_delete_refused_as_received_elsewhere_counts_lost_ownership_not_done() {
    let inner = common::memory();
    let lost = DeletesLost::default();
    let store = LayeredStore::wrap(inner.clone(), lost.clone());
    let q = common::fresh_queue(&inner, "deletelost").await;
    q.send("good", SendOptions::default()).await.unwrap();
    q.send("bad", SendOptions::default()).await.unwrap();
    let name = q.name().to_string();
    let worker = common::start(&store, settings(&name, |_| {}), &name, OkOrPoison).await;
    common::wait_for("both deletes refused", Duration::from_secs(10), || {
        lost.0.load(Ordering::SeqCst) >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let snap = worker.shutdown().await.queues.remove(0);
    assert_eq!(
        (snap.handled, snap.poisoned, snap.lost_ownership),
        (0, 0, 2),
        "{snap:?}"
    );
    // The poison copy was made before its delete was refused: one copy, the original kept.
    let poison = inner.queue(&format!("{name}-poison")).unwrap();
    assert_eq!(poison.peek(32).await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_secs(31)).await;
    let back = take_visible(&q).await;
    assert_eq!(
        back,
        BTreeSet::from(["good".to_string(), "bad".to_string()])
    );
}

/// A service whose depth figures lag behind: the approximate count says 0 and a peek shows
/// nothing, whatever is there (Azure's count is approximate, and a peek can miss a message
/// made visible a moment ago).
#[derive(Clone, Default)]
struct LaggingCount;

impl QueueLayer for LaggingCount {
    async fn approximate_depth(&self, _inner: &dyn Queue) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn peek(
        &self,
        _inner: &dyn Queue,
        _max: u8,
    ) -> Result<Vec<ebbflow::store::PeekedMessage>, StoreError> {
        Ok(Vec::new())
    }
}

impl StoreLayer for LaggingCount {
    fn wrap(&self, queue: Arc<dyn Queue>) -> Arc<dyn Queue> {
        Layered::wrap(queue, self.clone())
    }
}

/// Sleeps 10 ms.
struct Quick;

impl Handler for Quick {
    type Message = String;
    async fn handle(&self, _: String, _: Context) -> Result<(), HandlerError> {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(())
    }
}

/// A trigger at zero tasks starts a task at once, before and whatever the depth probe finds
/// ("waking from zero is never held back"): here the probe's count lags and sees nothing, and
/// the published message is still handled at once.
#[tokio::test(start_paused = true)]
async fn a_trigger_at_zero_tasks_starts_a_task_even_when_the_probe_sees_nothing() {
    let inner = common::memory();
    let store = LayeredStore::wrap(inner.clone(), LaggingCount);
    let q = common::fresh_queue(&inner, "zerolag").await;
    let name = q.name().to_string();
    let s = settings(&name, |q| {
        q.scaling.min_tasks = ebbflow::config::MinTasks::Zero;
        q.scaling.wake_on_publish = true;
    });
    let worker = common::start(&store, s, &name, Quick).await;
    common::wait_for("at zero tasks", Duration::from_secs(300), || {
        worker.snapshot()[0].active_tasks == 0
    })
    .await;
    let publisher = worker.publisher(&name).unwrap();
    publisher
        .send_bytes(b"wake", Default::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let snap = worker.shutdown().await.queues.remove(0);
    assert_eq!(snap.handled, 1, "{snap:?}");
}

/// With `min_tasks = 0`, a trigger that lands while the last task asks to retire (after the
/// receive that missed its message) keeps that task, which then receives the message. The
/// interleaving is forced: the trigger fires inside the empty receive.
#[tokio::test(start_paused = true)]
async fn a_trigger_while_the_last_task_retires_is_not_lost() {
    let (store, hooks) = Hooked::wrap(common::memory());
    let q = common::fresh_queue(&store, "retire").await;
    let name = q.name().to_string();
    let s = settings(&name, |q| {
        q.scaling.min_tasks = ebbflow::config::MinTasks::Zero;
        q.scaling.wake_on_publish = true;
        // The first empty receive puts the task at the back-off maximum: it asks to retire.
        q.idle_backoff.min = Duration::from_secs(1);
        q.idle_backoff.max = Duration::from_secs(1);
    });
    let worker = common::start(&store, s, &name, Quick).await;
    let hub = worker.hub();
    let fired = Arc::new(AtomicBool::new(false));
    {
        let (q, name, fired) = (q.clone(), name.clone(), fired.clone());
        *hooks.after_receive.lock().unwrap() = Some(Box::new(move |_, got| {
            if got == 0 && !fired.swap(true, Ordering::SeqCst) {
                // After the receive looked, before the task hears it found nothing.
                let q = q.clone();
                tokio::spawn(async move { q.send("late", Default::default()).await.unwrap() });
                hub.notify(&name);
            }
        }));
    }
    common::wait_for("the late message handled", Duration::from_secs(30), || {
        worker.snapshot()[0].handled == 1
    })
    .await;
    assert!(fired.load(Ordering::SeqCst));
    worker.shutdown().await;
}

/// Sleeps 2 s a message and records which it started.
#[derive(Clone, Default)]
struct TwoSeconds {
    started: Arc<Mutex<BTreeSet<String>>>,
}

impl Handler for TwoSeconds {
    type Message = String;
    async fn handle(&self, text: String, _: Context) -> Result<(), HandlerError> {
        self.started.lock().unwrap().insert(text);
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(())
    }
}

/// A stop once handler times are known (2 s jobs at the default 30 s visibility and
/// concurrency 16, so messages are received ahead of free slots): every message that waited
/// ahead of a slot, and every message of a receive that lands while the worker stops, is
/// released at once: visible again on the store right after the drain, 28 s before their
/// visibility timeouts would have ended; the started ones finish and are deleted.
#[tokio::test(start_paused = true)]
async fn a_stop_releases_waiting_messages_and_a_receive_landing_during_it_at_once() {
    const COUNT: usize = 300;
    let inner = common::memory();
    let (store, hooks) = Hooked::wrap(inner.clone());
    let q = common::fresh_queue(&inner, "stopahead").await;
    let bodies: BTreeSet<String> = (0..COUNT).map(|i| format!("m{i:03}")).collect();
    for body in &bodies {
        q.send(body, SendOptions::default()).await.unwrap();
    }
    let name = q.name().to_string();
    let handler = TwoSeconds::default();
    let s = settings(&name, |q| {
        q.scaling.max_tasks = ebbflow::config::MaxTasks::of::<1>()
    });
    let worker = common::start(&store, s, &name, handler.clone()).await;
    // Handler times are known and messages wait ahead of the slots.
    common::wait_for("messages waiting ahead", Duration::from_secs(60), || {
        let snap = &worker.snapshot()[0];
        snap.handled >= 16 && snap.held > snap.in_flight
    })
    .await;
    // The next receive comes back from the store and then waits for the gate.
    let landed = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let before = hooks.receives.load(Ordering::SeqCst);
    {
        let landed = landed.clone();
        *hooks.after_receive.lock().unwrap() = Some(Box::new(move |n, got| {
            if n > before {
                landed.fetch_add(got, Ordering::SeqCst);
            }
        }));
    }
    *hooks.receive_gate.lock().unwrap() = Some(gate.clone());
    common::wait_for(
        "a receive held at the gate",
        Duration::from_secs(30),
        || landed.load(Ordering::SeqCst) > 0,
    )
    .await;
    let at_stop = worker.snapshot().remove(0);
    let waiting = at_stop.held - at_stop.in_flight;
    assert!(waiting > 0, "messages wait ahead at the stop: {at_stop:?}");
    // Stop; the held receive lands while the worker stops.
    let stopping = tokio::spawn(worker.shutdown());
    tokio::time::sleep(Duration::from_millis(10)).await;
    *hooks.receive_gate.lock().unwrap() = None;
    gate.add_permits(1);
    let report = stopping.await.unwrap();
    let snap = &report.queues[0];
    // The drain took one handler run at most: every hidden message left would be hidden 28 s
    // more.
    let started = handler.started.lock().unwrap().clone();
    let visible = take_visible(&q).await;
    let expected: BTreeSet<String> = bodies.difference(&started).cloned().collect();
    println!(
        "stopped with {waiting} waiting and {} landing: {} started, {} visible at once; {snap:?}",
        landed.load(Ordering::SeqCst),
        started.len(),
        visible.len()
    );
    assert_eq!(
        snap.handled as usize,
        started.len(),
        "started ones finished"
    );
    let hidden: Vec<_> = expected.difference(&visible).collect();
    assert!(
        hidden.is_empty(),
        "not started, yet still hidden after the stop: {hidden:?}"
    );
    assert_eq!(visible, expected, "and nothing started shows again");
    assert_eq!(report.unreleased, 0);
    assert!(snap.released as usize >= waiting as usize + landed.load(Ordering::SeqCst));
}

/// Sends a count pulse every second for 20 s, then runs on for a minute.
#[derive(Clone, Default)]
struct Pulsing {
    runs: Arc<Mutex<BTreeMap<String, u32>>>,
}

impl Handler for Pulsing {
    type Message = String;
    async fn handle(&self, text: String, ctx: Context) -> Result<(), HandlerError> {
        *self.runs.lock().unwrap().entry(text).or_default() += 1;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            ctx.heartbeat().add(1);
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(())
    }
}

/// A heartbeat pulse renews the lease, seen on the store: a job pulses every second for 20 s
/// (`heartbeat.every = 1`, default 30 s visibility), then the store stops answering renewals
/// and the worker's receives.
/// Its last renewal is then the 20 s pulse's, so the message stays hidden until 50 s; had
/// pulses renewed nothing, the last renewal would be the periodic one at 15 s and another
/// receiver would get the message at 45 s. Checked with a receive of our own at 47 s.
#[tokio::test(start_paused = true)]
async fn a_heartbeat_pulse_renews_the_lease_on_the_store() {
    let inner = common::memory();
    let (store, hooks) = Hooked::wrap(inner.clone());
    let q = common::fresh_queue(&inner, "pulse").await;
    q.send("long", SendOptions::default()).await.unwrap();
    let name = q.name().to_string();
    let handler = Pulsing::default();
    let s = settings(&name, |q| {
        q.heartbeat.every = Some(ebbflow::config::PulseEvery::of::<1>())
    });
    let start = tokio::time::Instant::now();
    let worker = common::start(&store, s, &name, handler.clone()).await;
    common::wait_for("the job running", Duration::from_secs(5), || {
        worker.snapshot()[0].in_flight == 1
    })
    .await;
    let received = tokio::time::Instant::now();
    tokio::time::sleep_until(received + Duration::from_millis(20_500)).await;
    let snap = worker.snapshot().remove(0);
    assert!(snap.pulses >= 20, "{snap:?}");
    hooks
        .hang_updates
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // The worker receives no more: once visible, the message is the test's own receive's, not
    // taken back by the worker's task at a jittered moment (which made this test fail about
    // one run in eight, and could hide a broken renewal at 47 s).
    hooks
        .hang_receives
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // After 45 s (the periodic renewal's end), before 50 s (the last pulse's).
    tokio::time::sleep_until(received + Duration::from_secs(47)).await;
    let early = q.receive(1, Duration::from_secs(3600)).await.unwrap();
    assert!(
        early.is_empty(),
        "the message showed at 47 s: its lease ended with the periodic renewal at 15 s, \
         so the pulses after it renewed nothing"
    );
    // And it does end: 50 s after the last renewal that reached the store.
    tokio::time::sleep_until(received + Duration::from_secs(51)).await;
    let late = q.receive(1, Duration::from_secs(3600)).await.unwrap();
    assert_eq!(late.len(), 1, "visible once the last pulse's lease ended");
    assert!(start.elapsed() < Duration::from_secs(60));
    // The worker cannot settle it now (its receipt is stale and updates hang): end it.
    drop(worker);
}

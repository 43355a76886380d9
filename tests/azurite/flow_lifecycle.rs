//! The worker's lifecycle and its deadlines, on the embedded store under tokio's paused clock:
//! settings built in code are validated at start, a failed start leaves nothing running, a
//! dropped worker stops, shutdown on the last allowed try
//! releases, a hanging renewal or store call never holds up the handler or the drain deadline,
//! and a handler answering its timeout is heard. Flow control under load is in `flow`, whose
//! `Worky` handler and helpers these tests share.

use crate::common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::flow::{send_all, settings, Worky};
use common::hooked::Hooked;
use ebbflow::codec::Encoding;
use ebbflow::config::QueueSettings;
use ebbflow::worker::WorkerError;
use ebbflow::{Context, Handler, HandlerError, Worker};
use tokio::time::Instant;

/// `Worker::start` runs the same checks as `Settings::load` on settings built in code.
#[tokio::test(start_paused = true)]
async fn settings_built_in_code_are_validated_at_start() {
    for (edit, key) in [
        (
            // 1..=32 is the type's range; 20 is over min(batch_size 32, concurrency 16).
            (|q: &mut QueueSettings| {
                q.refill_threshold = Some(ebbflow::config::RefillThreshold::of::<20>())
            }) as fn(&mut QueueSettings),
            "queues.orders.refill_threshold = 20",
        ),
        (
            |q| q.batch_window = Some(Duration::from_secs(60)),
            "queues.orders.batch_window = 1m",
        ),
    ] {
        let err = Worker::new(settings("orders", edit))
            .handler("orders", Worky::default())
            .start()
            .await
            .expect_err("invalid settings must not start");
        assert!(matches!(err, WorkerError::Config(_)), "{err}");
        assert!(err.to_string().contains(key), "{err}");
    }
}

/// A start that fails (here: the trigger port is taken) leaves nothing running: the queue's
/// messages stay where they are.
#[tokio::test(start_paused = true)]
async fn a_failed_start_leaves_nothing_running() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let store = common::memory();
    let q = common::fresh_queue(&store, "failstart").await;
    send_all(&q, ["a".to_string()]).await;
    let name = q.name().to_string();
    let mut s = settings(&name, |_| {});
    s.triggers.http.enabled = true;
    s.triggers.http.bind = taken.local_addr().unwrap();
    let handler = Worky::default();
    let err = Worker::new(s)
        .with_store(store.clone())
        .handler(&name, handler.clone())
        .start()
        .await
        .expect_err("the port is taken");
    assert!(matches!(err, WorkerError::TriggerBind { .. }), "{err}");
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(handler.runs.lock().unwrap().is_empty());
    assert_eq!(
        q.peek(32).await.unwrap().len(),
        1,
        "still visible, never received"
    );
}

/// Dropping a running worker stops it: nothing is consumed afterwards.
#[tokio::test(start_paused = true)]
async fn dropping_a_running_worker_stops_it() {
    let store = common::memory();
    let q = common::fresh_queue(&store, "drop").await;
    let name = q.name().to_string();
    let handler = Worky::default();
    let worker = common::start(&store, settings(&name, |_| {}), &name, handler.clone()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(worker);
    tokio::time::sleep(Duration::from_secs(1)).await;
    send_all(&q, ["after-drop".to_string()]).await;
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert!(handler.runs.lock().unwrap().is_empty());
    assert_eq!(q.peek(32).await.unwrap().len(), 1);
}

/// Waits for shutdown and then fails ("polite"), or never returns ("stubborn").
#[derive(Clone, Default)]
struct Interrupted {
    runs: Arc<AtomicU32>,
}

impl Handler for Interrupted {
    type Message = String;
    async fn handle(&self, body: String, ctx: Context) -> Result<(), HandlerError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        if body == "polite" {
            ctx.shutdown().cancelled().await;
            return Err(HandlerError::retry("interrupted"));
        }
        std::future::pending().await
    }
}

/// Messages on their last allowed try, interrupted by shutdown (one fails after the signal,
/// one is aborted at the drain deadline), are released, not poisoned or counted as failures,
/// and run again in full on the next worker.
#[tokio::test(start_paused = true)]
async fn shutdown_on_the_last_allowed_try_releases_and_never_poisons() {
    let store = common::memory();
    let q = common::fresh_queue(&store, "lasttry").await;
    send_all(&q, ["polite".to_string(), "stubborn".to_string()]).await;
    // Four deliveries nobody handled: the worker's receive is the fifth and last allowed.
    for _ in 0..4 {
        for m in q.receive(32, Duration::from_secs(1)).await.unwrap() {
            q.update(&m.id, &m.pop_receipt, Duration::ZERO, None)
                .await
                .unwrap();
        }
    }
    let name = q.name().to_string();
    let mut s = settings(&name, |_| {});
    s.worker.drain_timeout = Duration::from_secs(2);
    let handler = Interrupted::default();
    let worker = common::start(&store, s.clone(), &name, handler.clone()).await;
    common::wait_for("both running", Duration::from_secs(5), || {
        worker.snapshot()[0].in_flight == 2
    })
    .await;
    let report = worker.shutdown().await;
    let snap = &report.queues[0];
    assert!(!report.clean, "the stubborn one was aborted");
    assert_eq!(
        (snap.released, snap.poisoned, snap.retried),
        (2, 0, 0),
        "{snap:?}"
    );
    assert_eq!(report.unreleased, 0);
    let poison = store.queue(&format!("{name}-poison")).unwrap();
    assert!(poison.peek(32).await.unwrap().is_empty());
    let back = q.peek(32).await.unwrap();
    assert_eq!(back.len(), 2, "both visible again at once");
    assert!(
        back.iter().all(|m| m.dequeue_count == 0),
        "fresh copies: {back:?}"
    );
    // The next worker runs both (the polite one is accepted this time).
    let again = Worky::default();
    let worker = common::start(&store, s, &name, again.clone()).await;
    common::wait_for("both handled", Duration::from_secs(10), || {
        worker.snapshot()[0].handled == 2
    })
    .await;
    assert_eq!(worker.shutdown().await.queues[0].poisoned, 0);
}

/// A renewal that never answers does not hold the handler up: it finishes on time, and the
/// message is deleted with the receipt the lease still has once the lease would lapse.
#[tokio::test(start_paused = true)]
async fn a_hanging_renewal_does_not_hold_up_the_handler() {
    let (store, hooks) = Hooked::wrap(common::memory());
    let q = common::fresh_queue(&store, "hang").await;
    send_all(&q, ["w20000-job".to_string()]).await;
    hooks.hang_updates.store(true, Ordering::SeqCst);
    let name = q.name().to_string();
    let handler = Worky::default();
    let started = Instant::now();
    let worker = common::start(&store, settings(&name, |_| {}), &name, handler.clone()).await;
    common::wait_for("handled", Duration::from_secs(60), || {
        worker.snapshot()[0].handled == 1
    })
    .await;
    let snap = worker.snapshot().remove(0);
    let ran = handler.starts.lock().unwrap()["w20000-job"] - started;
    assert!(ran < Duration::from_millis(50), "started at once: {ran:?}");
    // The renewal at 15 s hung; the handler ended at 20 s regardless, and the delete waited
    // only until the lease would lapse (30 s after the receive).
    let settled = started.elapsed();
    assert!(
        settled >= Duration::from_secs(30) && settled < Duration::from_secs(31),
        "{settled:?}"
    );
    assert_eq!((snap.renewals, snap.lost_ownership), (0, 0), "{snap:?}");
    worker.shutdown().await;
}

/// The drain deadline holds even when the store hangs: after `drain_timeout` the handler is
/// aborted, its release hangs, and the report comes `RELEASE_GRACE` later saying one message
/// was not released (it reappears when its visibility timeout ends: nothing is lost).
#[tokio::test(start_paused = true)]
async fn the_drain_deadline_holds_when_store_calls_hang() {
    let (store, hooks) = Hooked::wrap(common::memory());
    let q = common::fresh_queue(&store, "drain").await;
    send_all(&q, ["w3600000-forever".to_string()]).await;
    let name = q.name().to_string();
    let mut s = settings(&name, |_| {});
    s.worker.drain_timeout = Duration::from_secs(2);
    let worker = common::start(&store, s, &name, Worky::default()).await;
    common::wait_for("running", Duration::from_secs(5), || {
        worker.snapshot()[0].in_flight == 1
    })
    .await;
    hooks.hang_updates.store(true, Ordering::SeqCst);
    let asked = Instant::now();
    let report = worker.shutdown().await;
    let took = asked.elapsed();
    assert_eq!(
        took,
        Duration::from_secs(2) + ebbflow::worker::RELEASE_GRACE
    );
    assert!(!report.clean);
    assert_eq!(report.unreleased, 1);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        q.peek(32).await.unwrap().len(),
        1,
        "back after its visibility timeout"
    );
}

/// Answers its timeout signal within the grace with its own decision: release, or poison.
#[derive(Clone, Default)]
struct Decides {
    runs: Arc<AtomicU32>,
}

impl Handler for Decides {
    type Message = String;
    async fn handle(&self, body: String, ctx: Context) -> Result<(), HandlerError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        if ctx.dequeue_count() > 1 {
            return Ok(());
        }
        ctx.timeout().cancelled().await;
        match body.as_str() {
            "release" => Err(HandlerError::release(Duration::ZERO)),
            _ => Err(HandlerError::poison("cannot be done in time")),
        }
    }
}

/// A handler that answers `ctx.timeout()` with a release or a poison within the grace is
/// heard: the release is not a failure, the poison is a rejection, not a timeout.
#[tokio::test(start_paused = true)]
async fn a_handler_answering_its_timeout_with_its_own_decision_is_heard() {
    let store = common::memory();
    let q = common::fresh_queue(&store, "decides").await;
    send_all(&q, ["release".to_string(), "reject".to_string()]).await;
    let name = q.name().to_string();
    let s = settings(&name, |q| q.handler_timeout = Some(Duration::from_secs(10)));
    let handler = Decides::default();
    let worker = common::start(&store, s, &name, handler.clone()).await;
    common::wait_for("settled", Duration::from_secs(60), || {
        let s = &worker.snapshot()[0];
        s.handled == 1 && s.poisoned == 1
    })
    .await;
    let snap = worker.shutdown().await.queues.remove(0);
    assert_eq!(
        (snap.released, snap.timeouts, snap.retried),
        (1, 0, 0),
        "{snap:?}"
    );
    let poison = store.queue(&format!("{name}-poison")).unwrap();
    let copy = poison.peek(1).await.unwrap().remove(0);
    let envelope =
        ebbflow::listener::poison::PoisonEnvelope::from_text(&copy.text, Encoding::Base64).unwrap();
    assert_eq!(
        envelope.reason,
        ebbflow::listener::poison::PoisonReason::Rejected
    );
    assert_eq!(handler.runs.load(Ordering::SeqCst), 3);
}

//! No input makes a worker panic, a dequeue task that dies is logged and replaced, and a worker
//! whose dequeue tasks keep dying does not spin:
//! replacements back off, and past the restart budget the worker stops with a fatal error and
//! a non-zero exit code instead of restarting thousands of times a second and reporting 0.
//! Paused clock, default settings.

use crate::common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::hooked::Hooked;
use ebbflow::config::{QueueSettings, Settings};
use ebbflow::store::{BackendKind, LayeredStore, QueueStore, StoreLayer};
use ebbflow::store::{SendOptions, StoreError, TimeToLive};
use ebbflow::{Context, Handler, HandlerError};

#[derive(Clone, Default)]
struct Count(Arc<AtomicU32>);

impl Handler for Count {
    type Message = Vec<u8>;
    async fn handle(&self, _: Vec<u8>, _: Context) -> Result<(), HandlerError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn settings(queue: &str) -> Settings {
    let mut s = Settings::default();
    s.queues.insert(queue.to_string(), QueueSettings::default());
    s.validate().unwrap();
    s
}

#[tokio::test(start_paused = true)]
async fn a_restart_loop_backs_off_then_stops_the_worker_with_exit_code_3() {
    let (store, hooks) = Hooked::wrap(common::memory());
    let q = common::fresh_queue(&store, "loop").await;
    hooks.panic_every_receive.store(true, Ordering::SeqCst);
    let name = q.name().to_string();
    let start = tokio::time::Instant::now();
    let worker = ebbflow::Worker::new(settings(&name))
        .with_store(store.clone())
        .handler(&name, Count::default())
        .start()
        .await
        .unwrap();
    // Runs until the worker stops itself (no signal ever comes).
    let report = tokio::time::timeout(
        Duration::from_secs(600),
        worker.run_until(std::future::pending()),
    )
    .await
    .expect("the worker stops by itself");
    let took = start.elapsed();
    let receives = hooks.receives.load(Ordering::SeqCst);
    assert_eq!(report.exit_code(), 3, "{report:?}");
    assert!(
        matches!(report.fatal, Some(StoreError::Unconsumable { ref queue, .. }) if *queue == name),
        "{:?}",
        report.fatal
    );
    assert_eq!(receives, 10, "one per task: the budget, not thousands");
    // 0.1 + 0.2 + ... + 25.6 s of back-off between them.
    assert!(
        took >= Duration::from_secs(50) && took <= Duration::from_secs(60),
        "{took:?}"
    );
    assert_eq!(report.queues[0].task_restarts, 9);
}

#[tokio::test(start_paused = true)]
async fn extreme_times_to_live_are_refused_or_kept_and_the_worker_runs_on() {
    let store = common::memory();
    let q = common::fresh_queue(&store, "ttl").await;
    let name = q.name().to_string();
    let handled = Count::default();
    let worker = common::start(&store, settings(&name), &name, handled.clone()).await;
    let publisher = worker.publisher(&name).unwrap();
    let year = Duration::from_secs(365 * 24 * 3600);
    for (ttl, ok) in [
        (TimeToLive::After(10_000 * year), false),
        (TimeToLive::After(Duration::from_secs(u64::MAX)), false),
        (TimeToLive::After(Duration::MAX), false),
        (TimeToLive::Never, true),
        (TimeToLive::After(68 * year), true),
    ] {
        let mut options = SendOptions::default();
        options.time_to_live = ttl;
        let sent = publisher.send_bytes(b"payload", options).await;
        assert_eq!(sent.is_ok(), ok, "{ttl:?}: {sent:?}");
    }
    common::wait_for("both handled", Duration::from_secs(10), || {
        handled.0.load(Ordering::SeqCst) == 2
    })
    .await;
    let report = worker.shutdown().await;
    assert_eq!(report.exit_code(), 0);
    assert_eq!(report.queues[0].task_restarts, 0);
}

/// A queue deleted while the worker runs is recreated with its poison queue (message-life.md;
/// the embedded store always creates its queues, as with `storage.create_queues` on), and what
/// is sent to it afterwards is handled; the worker does not stop.
#[tokio::test(start_paused = true)]
async fn a_queue_deleted_while_running_is_recreated_and_work_goes_on() {
    let store = common::memory();
    let q = common::fresh_queue(&store, "deleted").await;
    let name = q.name().to_string();
    let count = Count::default();
    let worker = ebbflow::Worker::new(settings(&name))
        .with_store(store.clone())
        .handler(&name, count.clone())
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    q.delete_queue().await.unwrap();
    store
        .queue(&format!("{name}-poison"))
        .unwrap()
        .delete_queue()
        .await
        .unwrap();
    let run = tokio::spawn(worker.run_until(tokio::time::sleep(Duration::from_secs(120))));
    // The task's next receive (within the 30 s back-off maximum) finds the queue gone.
    tokio::time::sleep(Duration::from_secs(40)).await;
    let poison = store.queue(&format!("{name}-poison")).unwrap();
    assert!(
        poison.peek(1).await.is_ok(),
        "the poison queue was made again"
    );
    let text = ebbflow::codec::Encoding::Base64.encode(b"after").unwrap();
    q.send(&text, SendOptions::default()).await.unwrap();
    let report = run.await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report:?}");
    assert!(
        report.queues[0].store_errors >= 1,
        "the missing queue was seen: {report:?}"
    );
    assert_eq!(
        count.0.load(Ordering::SeqCst),
        1,
        "handled after the recreation"
    );
}

/// Reports the Azure backend, so the worker creates nothing for us (the embedded store would
/// be taken as always creating its queues, as `tests/embedded/outputs.rs` explains).
struct LikeAzure;
impl StoreLayer for LikeAzure {
    fn kind(&self, _inner: &dyn QueueStore) -> BackendKind {
        BackendKind::Azure
    }
}

/// The twin of the test above with `storage.create_queues = false`: a queue deleted while the
/// worker runs is an error no retry can fix, so the worker stops by itself with exit code 3
/// naming the queue (operating.md, exit codes) and leaves the queue deleted. The task that met
/// it ends after the fatal error but before the stop: it is not replaced (no restart counted).
#[tokio::test(start_paused = true)]
async fn a_queue_deleted_while_create_queues_is_off_stops_the_worker_and_stays_deleted() {
    let memory = common::memory();
    let q = common::fresh_queue(&memory, "gone").await;
    let name = q.name().to_string();
    let poison = memory.queue(&format!("{name}-poison")).unwrap();
    poison.create_if_missing().await.unwrap();
    let mut s = settings(&name);
    s.storage.create_queues = false;
    let worker = ebbflow::Worker::new(s)
        .with_store(LayeredStore::wrap(memory.clone(), LikeAzure))
        .handler(&name, Count::default())
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    q.delete_queue().await.unwrap();
    // The task's next receive (within the 30 s back-off maximum) finds the queue gone.
    let report = tokio::time::timeout(
        Duration::from_secs(120),
        worker.run_until(std::future::pending()),
    )
    .await
    .expect("the worker stops by itself");
    assert_eq!(report.exit_code(), 3, "{report:?}");
    assert!(
        matches!(report.fatal, Some(StoreError::QueueNotFound { ref queue }) if *queue == name),
        "{:?}",
        report.fatal
    );
    assert!(
        matches!(q.peek(1).await, Err(StoreError::QueueNotFound { .. })),
        "the queue was not made again"
    );
    assert_eq!(report.queues[0].task_restarts, 0, "{report:?}");
}

/// A dequeue task that dies outside a handler (a panic in the store call) is noticed, logged
/// by name with how it ended (the panic's text), and replaced: the queue keeps being consumed.
#[tokio::test(start_paused = true)]
async fn a_dead_dequeue_task_is_logged_and_replaced() {
    common::captured_logs();
    let (store, hooks) = Hooked::wrap(common::memory());
    let q = common::fresh_queue(&store, "dead").await;
    let text = ebbflow::codec::Encoding::Base64
        .encode(b"survivor")
        .unwrap();
    q.send(&text, SendOptions::default()).await.unwrap();
    hooks.panic_on_receive.store(1, Ordering::SeqCst);
    let name = q.name().to_string();
    let handled = Count::default();
    let worker = common::start(&store, settings(&name), &name, handled.clone()).await;
    common::wait_for(
        "handled by the replacement",
        Duration::from_secs(10),
        || worker.snapshot()[0].handled == 1,
    )
    .await;
    let snap = worker.shutdown().await.queues.remove(0);
    assert_eq!(snap.task_restarts, 1, "{snap:?}");
    assert_eq!(handled.0.load(Ordering::SeqCst), 1);
    let logs = common::captured_logs();
    let line = logs
        .lines()
        .find(|l| l.contains("dequeue task ended unexpectedly") && l.contains(&name))
        .unwrap_or_else(|| panic!("no log line: {logs}"));
    assert!(line.contains(&format!("{name}#0")), "{line}");
    assert!(
        line.contains("panicked: injected panic in receive 1"),
        "{line}"
    );
}

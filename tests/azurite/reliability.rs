//! Long jobs, heartbeats, handler timeouts and panics, each on both backends (the embedded
//! store under tokio's paused clock, and Azurite in real time).

use crate::common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ebbflow::codec::Encoding;
use ebbflow::config::{QueueSettings, Settings};
use ebbflow::store::{BackendKind, QueueStore};
use ebbflow::{Context, Handler, HandlerError};

on_both_backends!(
    a_long_handler_keeps_its_message_by_renewing_visibility,
    heartbeat_pulses_are_logged_and_jobs_end_with_a_status,
    a_handler_timeout_cancels_then_counts_a_failure,
    a_panicking_handler_is_contained_counted_and_retried,
);

fn settings(queue: &str, tweak: impl FnOnce(&mut QueueSettings)) -> Settings {
    let mut q = QueueSettings::default();
    q.encoding = Encoding::None;
    q.idle_backoff.max = Duration::from_millis(500);
    tweak(&mut q);
    let mut s = Settings::default();
    s.queues.insert(queue.to_string(), q);
    s.validate().unwrap();
    s
}

async fn queue_with(store: &Arc<dyn QueueStore>, prefix: &str, bodies: &[&str]) -> String {
    let q = common::fresh_queue(store, prefix).await;
    for b in bodies {
        q.send(b, Default::default()).await.unwrap();
    }
    q.name().to_string()
}

/// Sleeps `work`, counting its runs.
#[derive(Clone, Default)]
struct Slow {
    runs: Arc<AtomicU32>,
    work: Duration,
}

impl Handler for Slow {
    type Message = String;
    async fn handle(&self, _: String, _: Context) -> Result<(), HandlerError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.work).await;
        Ok(())
    }
}

async fn a_long_handler_keeps_its_message_by_renewing_visibility(store: Arc<dyn QueueStore>) {
    let name = queue_with(&store, "renew", &["long job"]).await;
    let handler = Slow {
        work: Duration::from_millis(5500),
        ..Slow::default()
    };
    // Visibility 2 s, handler 5.5 s: without renewal the message would be re-delivered twice.
    let s = settings(&name, |q| q.visibility_timeout = Duration::from_secs(2));
    let worker = common::start(&store, s, &name, handler.clone()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let q = store.queue(&name).unwrap();
    assert!(
        q.receive(32, Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty(),
        "still invisible 3 s in (past its first 2 s timeout)"
    );
    common::wait_for("handled", Duration::from_secs(20), || {
        worker.snapshot()[0].handled == 1
    })
    .await;
    let snap = worker.shutdown().await.queues.remove(0);
    assert_eq!(handler.runs.load(Ordering::SeqCst), 1, "never re-delivered");
    // Renewed every 1 s (half the timeout) from the receive: at 1, 2, 3, 4 and 5 s. Exactly so
    // under the paused clock; real time may shift one across the end.
    if store.kind() == BackendKind::Embedded {
        assert_eq!(snap.renewals, 5, "{snap:?}");
    } else {
        assert!((4..=6).contains(&snap.renewals), "{snap:?}");
    }
    assert_eq!(snap.lost_ownership, 0);
    // The final delete used the newest pop receipt: the queue is empty.
    assert_eq!(q.approximate_depth().await.unwrap(), 0);
}

/// Counts to 25 in 100 ms steps, and says how it went when the body asks.
struct Counting;

impl Handler for Counting {
    type Message = String;
    async fn handle(&self, body: String, ctx: Context) -> Result<(), HandlerError> {
        for _ in 0..25 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            ctx.heartbeat().increment();
        }
        if body == "say" {
            ctx.heartbeat().succeeded("25 items");
        }
        Ok(())
    }
}

async fn heartbeat_pulses_are_logged_and_jobs_end_with_a_status(store: Arc<dyn QueueStore>) {
    common::captured_logs();
    let name = queue_with(&store, "beat", &["say", "silent"]).await;
    let s = settings(&name, |q| {
        q.heartbeat.every = Some(ebbflow::config::PulseEvery::of::<10>());
        q.heartbeat.interval = Some(Duration::from_secs(1));
        q.visibility_timeout = Duration::from_secs(30);
    });
    let worker = common::start(&store, s, &name, Counting).await;
    common::wait_for("both handled", Duration::from_secs(20), || {
        worker.snapshot()[0].handled == 2
    })
    .await;
    let snap = worker.shutdown().await.queues.remove(0);
    // Per job: count pulses at 10 and 20, timed pulses at 1 s and 2 s (a 2.5 s job; under
    // real time on a loaded machine it may run past 3 s and pulse once more).
    let logs: Vec<String> = common::captured_logs()
        .lines()
        .filter(|l| l.contains(&name))
        .map(str::to_string)
        .collect();
    let count = |needle: &[&str]| {
        logs.iter()
            .filter(|l| needle.iter().all(|n| l.contains(n)))
            .count()
    };
    assert_eq!(count(&["job pulse", "kind=\"count\""]), 4, "{logs:#?}");
    let timed = count(&["job pulse", "kind=\"timed\""]);
    if store.kind() == BackendKind::Embedded {
        assert_eq!(timed, 4, "{logs:#?}");
    } else {
        assert!((4..=6).contains(&timed), "{timed} timed pulses: {logs:#?}");
    }
    assert_eq!(snap.pulses as usize, 4 + timed, "{snap:?}");
    assert_eq!(
        count(&["job pulse", "kind=\"count\"", "count=20"]),
        2,
        "{logs:#?}"
    );
    assert_eq!(
        count(&["job ended", "status=\"succeeded\"", "25 items", "count=25"]),
        1,
        "{logs:#?}"
    );
    assert_eq!(
        count(&["job ended", "status=\"unknown\"", "result=\"ok\""]),
        1,
        "{logs:#?}"
    );
}

/// First delivery: "polite" waits for its timeout signal and returns Ok within the grace (its
/// work is done), "stubborn" ignores it. Later deliveries succeed at once.
#[derive(Clone, Default)]
struct Stalls {
    runs: Arc<AtomicU32>,
}

impl Handler for Stalls {
    type Message = String;
    async fn handle(&self, body: String, ctx: Context) -> Result<(), HandlerError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        if ctx.dequeue_count() > 1 {
            return Ok(());
        }
        if body == "polite" {
            ctx.timeout().cancelled().await;
            assert!(ctx.cancellation().is_cancelled());
            assert!(!ctx.shutdown().is_cancelled());
        } else {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Ok(())
    }
}

/// The timeout fires the handler's signals; one that returns Ok within the grace is deleted
/// (not run again), one that ignores it is dropped after the grace and retried.
async fn a_handler_timeout_cancels_then_counts_a_failure(store: Arc<dyn QueueStore>) {
    let name = queue_with(&store, "timeout", &["polite", "stubborn"]).await;
    let s = settings(&name, |q| {
        q.handler_timeout = Some(Duration::from_secs(1));
        q.handler_timeout_grace = Duration::from_secs(1);
    });
    let handler = Stalls::default();
    let worker = common::start(&store, s, &name, handler.clone()).await;
    common::wait_for("both handled", Duration::from_secs(30), || {
        worker.snapshot()[0].handled == 2
    })
    .await;
    let snap = worker.shutdown().await.queues.remove(0);
    assert_eq!(snap.timeouts, 1, "only the stubborn one failed: {snap:?}");
    assert_eq!(snap.retried, 1, "{snap:?}");
    assert_eq!(
        handler.runs.load(Ordering::SeqCst),
        3,
        "polite once, stubborn twice"
    );
    assert_eq!(snap.poisoned, 0);
}

/// Panics on a message's first delivery.
#[derive(Clone, Default)]
struct Panics {
    runs: Arc<AtomicU32>,
}

impl Handler for Panics {
    type Message = String;
    async fn handle(&self, body: String, ctx: Context) -> Result<(), HandlerError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        if body == "boom" && ctx.dequeue_count() == 1 {
            panic!("boom on {}", ctx.message_id());
        }
        Ok(())
    }
}

async fn a_panicking_handler_is_contained_counted_and_retried(store: Arc<dyn QueueStore>) {
    common::captured_logs();
    let name = queue_with(&store, "panic", &["boom", "fine"]).await;
    let handler = Panics::default();
    let worker = common::start(&store, settings(&name, |_| {}), &name, handler.clone()).await;
    common::wait_for("both handled", Duration::from_secs(20), || {
        worker.snapshot()[0].handled == 2
    })
    .await;
    // The task lived on: it still receives (a third message is handled too).
    store
        .queue(&name)
        .unwrap()
        .send("after", Default::default())
        .await
        .unwrap();
    common::wait_for("third handled", Duration::from_secs(20), || {
        worker.snapshot()[0].handled == 3
    })
    .await;
    let snap = worker.shutdown().await.queues.remove(0);
    assert_eq!((snap.panics, snap.retried), (1, 1), "{snap:?}");
    let logs = common::captured_logs();
    let line = logs
        .lines()
        .find(|l| l.contains("handler panicked") && l.contains(&name))
        .expect("the panic is logged");
    assert!(
        line.contains("message_id=") && line.contains("boom on"),
        "{line}"
    );
}

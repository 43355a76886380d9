//! Worker scenarios, each run on both backends: the embedded store under tokio's paused clock,
//! and Azurite in real time.

use crate::common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebbflow::codec::Encoding;
use ebbflow::config::{QueueSettings, Settings};
use ebbflow::listener::poison::{PoisonEnvelope, PoisonReason};
use ebbflow::store::{QueueStore, SendOptions};
use ebbflow::{Context, Handler, HandlerError, Json, Publisher, Worker};
use serde::{Deserialize, Serialize};

on_both_backends!(
    five_hundred_messages_each_handled_exactly_once,
    failing_messages_retry_then_go_to_poison,
    undecodable_and_rejected_messages_go_to_poison,
    stop_mid_batch_finishes_started_and_holds_nothing_else,
    drain_deadline_aborts_and_releases_without_deleting,
);

#[derive(Debug, Serialize, Deserialize)]
struct Job {
    n: u32,
    fail: bool,
}

/// Records how often each job was handled; fails the ones marked `fail`; can sleep.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<HashMap<u32, u32>>>,
    work: Duration,
}

impl Recorder {
    fn total(&self) -> u32 {
        self.seen.lock().unwrap().values().sum()
    }
    fn count(&self, n: u32) -> u32 {
        self.seen.lock().unwrap().get(&n).copied().unwrap_or(0)
    }
}

impl Handler for Recorder {
    type Message = Json<Job>;

    async fn handle(&self, Json(job): Json<Job>, _ctx: Context) -> Result<(), HandlerError> {
        *self.seen.lock().unwrap().entry(job.n).or_default() += 1;
        tokio::time::sleep(self.work).await;
        if job.fail {
            return Err(HandlerError::retry(format!("job {} failed", job.n)));
        }
        Ok(())
    }
}

/// The defaults users run (30 s visibility, concurrency 16, batch 32), tweaked per test.
fn settings(queue: &str, tweak: impl FnOnce(&mut QueueSettings)) -> Settings {
    let mut q = QueueSettings::default();
    tweak(&mut q);
    let mut s = Settings::default();
    s.queues.insert(queue.to_string(), q);
    s.validate().unwrap();
    s
}

async fn publisher(store: &Arc<dyn QueueStore>, queue: &str) -> Publisher {
    let q = store.queue(queue).unwrap();
    q.create_if_missing().await.unwrap();
    Publisher::new(q, Encoding::Base64)
}

async fn poison_envelopes(store: &Arc<dyn QueueStore>, queue: &str) -> Vec<PoisonEnvelope> {
    let pq = store.queue(&format!("{queue}-poison")).unwrap();
    pq.peek(32)
        .await
        .unwrap()
        .iter()
        .map(|m| PoisonEnvelope::from_text(&m.text, Encoding::Base64).unwrap())
        .collect()
}

async fn five_hundred_messages_each_handled_exactly_once(store: Arc<dyn QueueStore>) {
    let queue = common::unique("e2e");
    let p = publisher(&store, &queue).await;
    for n in 0..500 {
        p.send_json(&Job { n, fail: false }).await.unwrap();
    }
    let recorder = Recorder::default();
    let worker = common::start(
        &store,
        settings(&queue, |q| {
            q.scaling.max_tasks = ebbflow::config::MaxTasks::of::<4>();
            q.concurrency = ebbflow::config::Concurrency::of::<16>();
        }),
        &queue,
        recorder.clone(),
    )
    .await;
    common::wait_for("500 handled and deleted", Duration::from_secs(120), || {
        worker.snapshot()[0].handled == 500
    })
    .await;
    let report = worker.shutdown().await;
    assert!(report.clean);
    for n in 0..500 {
        assert_eq!(
            recorder.count(n),
            1,
            "job {n} handled {} times",
            recorder.count(n)
        );
    }
    assert_eq!(recorder.total(), 500);
    let q = &report.queues[0];
    assert_eq!(
        (q.handled, q.poisoned, q.retried, q.lost_ownership),
        (500, 0, 0, 0)
    );
    assert_eq!(
        store
            .queue(&queue)
            .unwrap()
            .approximate_depth()
            .await
            .unwrap(),
        0
    );
}

async fn failing_messages_retry_then_go_to_poison(store: Arc<dyn QueueStore>) {
    let queue = common::unique("retry");
    let p = publisher(&store, &queue).await;
    let bad_id = p.send_json(&Job { n: 1, fail: true }).await.unwrap();
    p.send_json(&Job { n: 2, fail: false }).await.unwrap();
    let original = store.queue(&queue).unwrap().peek(1).await.unwrap()[0]
        .text
        .clone();
    let recorder = Recorder::default();
    let worker = common::start(
        &store,
        settings(&queue, |q| {
            q.max_dequeue_count = ebbflow::config::MaxDequeueCount::of::<3>()
        }),
        &queue,
        recorder.clone(),
    )
    .await;
    common::wait_for("the failing job poisoned", Duration::from_secs(60), || {
        worker.snapshot()[0].poisoned == 1
    })
    .await;
    let report = worker.shutdown().await;
    assert_eq!(
        recorder.count(1),
        3,
        "tried exactly max_dequeue_count times"
    );
    assert_eq!(recorder.count(2), 1);
    let q = &report.queues[0];
    assert_eq!((q.handled, q.retried, q.poisoned), (1, 2, 1));
    let envelopes = poison_envelopes(&store, &queue).await;
    assert_eq!(envelopes.len(), 1);
    let e = &envelopes[0];
    assert_eq!(e.reason, PoisonReason::MaxDequeueCountExceeded);
    assert_eq!(e.message_id, bad_id);
    assert_eq!(e.queue, queue);
    assert_eq!(e.dequeue_count, 3);
    assert_eq!(e.body, original, "the original text, byte for byte");
    assert!(
        e.error.as_deref().unwrap().contains("job 1 failed"),
        "{e:?}"
    );
    assert!(e.inserted_at.is_some());
    assert_eq!(
        store
            .queue(&queue)
            .unwrap()
            .approximate_depth()
            .await
            .unwrap(),
        0
    );
}

/// Rejects order 13 outright.
struct Picky;

impl Handler for Picky {
    type Message = Json<Job>;

    async fn handle(&self, Json(job): Json<Job>, _ctx: Context) -> Result<(), HandlerError> {
        if job.n == 13 {
            return Err(HandlerError::poison("13 is never valid"));
        }
        Ok(())
    }
}

async fn undecodable_and_rejected_messages_go_to_poison(store: Arc<dyn QueueStore>) {
    let queue = common::unique("decode");
    let p = publisher(&store, &queue).await;
    let raw = store.queue(&queue).unwrap();
    raw.send("this is not base64!", SendOptions::default())
        .await
        .unwrap();
    p.send_bytes(b"{not json", SendOptions::default())
        .await
        .unwrap();
    p.send_json(&Job { n: 13, fail: false }).await.unwrap();
    p.send_json(&Job { n: 14, fail: false }).await.unwrap();
    let worker = common::start(&store, settings(&queue, |_| {}), &queue, Picky).await;
    common::wait_for(
        "three poisoned, one handled",
        Duration::from_secs(60),
        || {
            let s = &worker.snapshot()[0];
            s.poisoned == 3 && s.handled == 1
        },
    )
    .await;
    worker.shutdown().await;
    let mut reasons: Vec<_> = poison_envelopes(&store, &queue)
        .await
        .into_iter()
        .map(|e| (e.reason, e.body, e.dequeue_count))
        .collect();
    reasons.sort_by_key(|(r, b, _)| (r.as_str(), b.clone()));
    assert_eq!(reasons.len(), 3);
    assert_eq!(reasons[0].0, PoisonReason::Rejected);
    assert_eq!(reasons[1].0, PoisonReason::Undecodable);
    assert_eq!(reasons[2].0, PoisonReason::Undecodable);
    let bodies: Vec<_> = reasons.iter().map(|r| r.1.as_str()).collect();
    assert!(bodies.contains(&"this is not base64!"), "{bodies:?}");
    assert!(
        reasons.iter().all(|r| r.2 == 1),
        "poisoned on first delivery"
    );
    assert_eq!(raw.approximate_depth().await.unwrap(), 0);
}

/// With 2 slots and 10 messages waiting, the worker holds only the 2 it runs; on stop they
/// finish and the other 8, never received, are visible at once.
async fn stop_mid_batch_finishes_started_and_holds_nothing_else(store: Arc<dyn QueueStore>) {
    let queue = common::unique("stop");
    let p = publisher(&store, &queue).await;
    for n in 0..10 {
        p.send_json(&Job { n, fail: false }).await.unwrap();
    }
    let recorder = Recorder {
        work: Duration::from_secs(2),
        ..Default::default()
    };
    let worker = common::start(
        &store,
        settings(&queue, |q| {
            q.concurrency = ebbflow::config::Concurrency::of::<2>();
            q.batch_size = ebbflow::config::BatchSize::of::<10>();
        }),
        &queue,
        recorder.clone(),
    )
    .await;
    common::wait_for("two handlers running", Duration::from_secs(30), || {
        worker.snapshot()[0].in_flight == 2
    })
    .await;
    let report = worker.shutdown().await;
    assert!(report.clean);
    let q = &report.queues[0];
    assert_eq!((q.received, q.handled, q.released), (2, 2, 0), "{q:?}");
    assert_eq!(recorder.total(), 2, "no message started after the stop");
    // Visible now: none of the 8 was hidden by a receive (their timeout would be 30 s).
    let back = store
        .queue(&queue)
        .unwrap()
        .receive(32, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(back.len(), 8);
}

async fn drain_deadline_aborts_and_releases_without_deleting(store: Arc<dyn QueueStore>) {
    common::captured_logs();
    let queue = common::unique("deadline");
    let p = publisher(&store, &queue).await;
    p.send_json(&Job { n: 1, fail: false }).await.unwrap();
    let recorder = Recorder {
        work: Duration::from_secs(600),
        ..Default::default()
    };
    let mut s = settings(&queue, |_| {});
    s.worker.drain_timeout = Duration::from_secs(1);
    let worker = common::start(&store, s, &queue, recorder.clone()).await;
    common::wait_for("the handler running", Duration::from_secs(30), || {
        worker.snapshot()[0].in_flight == 1
    })
    .await;
    let report = worker.shutdown().await;
    assert!(!report.clean);
    assert_eq!(report.exit_code(), 1);
    assert_eq!(
        (report.queues[0].handled, report.queues[0].released),
        (0, 1)
    );
    let back = store
        .queue(&queue)
        .unwrap()
        .receive(32, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        back.len(),
        1,
        "the unfinished message is back on the queue at once"
    );
    // The release says why: the deadline (a second stop signal says so instead).
    let logs = common::captured_logs();
    let released = logs
        .lines()
        .find(|l| l.contains("message released") && l.contains(&queue))
        .unwrap_or_else(|| panic!("no release logged for {queue}"));
    assert!(
        released.contains("reason=\"drain deadline passed\""),
        "{released}"
    );
}

#[tokio::test]
async fn start_up_errors_name_the_queue() {
    let store = common::memory();
    let s = settings("orders", |_| {});
    let err = Worker::new(s.clone())
        .with_store(store.clone())
        .start()
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("queue orders") && err.contains("no handler"),
        "{err}"
    );
    let err = Worker::new(s)
        .with_store(store)
        .handler("orders", Picky)
        .handler("payments", Picky)
        .start()
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("payments") && err.contains("[queues.payments]"),
        "{err}"
    );
}

//! Elastic scaling end to end: the embedded backend under tokio's paused clock for the curves,
//! Azurite in real time for wake-ups (outcomes only; their latency is the benchmark suite's).

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebbflow::codec::Encoding;
use ebbflow::config::{QueueSettings, Settings};
use ebbflow::store::QueueStore;
use ebbflow::{Context, Handler, HandlerError, Publisher, Worker};
use tokio::time::Instant;

/// Records when each message's handler started; sleeps `work`.
#[derive(Clone, Default)]
struct Clock {
    started: Arc<Mutex<Vec<Instant>>>,
    work: Duration,
}

impl Handler for Clock {
    type Message = String;

    async fn handle(&self, _text: String, _ctx: Context) -> Result<(), HandlerError> {
        self.started.lock().unwrap().push(Instant::now());
        tokio::time::sleep(self.work).await;
        Ok(())
    }
}

impl Clock {
    fn first_start(&self) -> Option<Instant> {
        self.started.lock().unwrap().first().copied()
    }
}

/// Publishes one message to `queue` through the worker's publisher (an in-process trigger)
/// and returns how long until `clock`'s handler first started.
async fn pickup_after_publish(
    worker: &ebbflow::worker::RunningWorker,
    queue: &str,
    clock: &Clock,
) -> Duration {
    let sent = Instant::now();
    worker
        .publisher(queue)
        .unwrap()
        .send_bytes(b"job", Default::default())
        .await
        .unwrap();
    common::wait_for("pickup", Duration::from_secs(5), || {
        clock.first_start().is_some()
    })
    .await;
    clock.first_start().unwrap() - sent
}

fn settings(queue: &str, tweak: impl FnOnce(&mut Settings, &mut QueueSettings)) -> Settings {
    let mut s = Settings::default();
    let mut q = QueueSettings::default();
    q.encoding = Encoding::None;
    tweak(&mut s, &mut q);
    s.queues.insert(queue.to_string(), q);
    s.validate().unwrap();
    s
}

async fn fill(store: &Arc<dyn QueueStore>, queue: &str, n: usize) {
    let q = store.queue(queue).unwrap();
    q.create_if_missing().await.unwrap();
    let p = Publisher::new(q, Encoding::None);
    for i in 0..n {
        p.send_bytes(format!("m{i}").as_bytes(), Default::default())
            .await
            .unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_burst_scales_to_max_within_one_probe_interval_and_back_to_min_when_idle() {
    let store = common::memory();
    let queue = common::unique("burst");
    fill(&store, &queue, 2000).await;
    let s = settings(&queue, |_, q| {
        q.concurrency = ebbflow::config::Concurrency::of::<256>();
        q.scaling.max_tasks = ebbflow::config::MaxTasks::of::<8>();
        q.scaling.messages_per_task = ebbflow::config::MessagesPerTask::of::<100>();
        q.scaling.depth_probe_interval = Duration::from_secs(5);
    });
    let clock = Clock {
        work: Duration::from_millis(50),
        ..Default::default()
    };
    let start = Instant::now();
    let worker = common::start(&store, s, &queue, clock.clone()).await;
    common::wait_for("8 tasks", Duration::from_secs(5), || {
        worker.snapshot()[0].active_tasks == 8
    })
    .await;
    let ramp = start.elapsed();
    assert!(
        ramp <= Duration::from_secs(5),
        "took {ramp:?} to reach max_tasks"
    );
    let snap = worker.snapshot()[0].clone();
    assert!(
        snap.last_decision
            .as_deref()
            .unwrap_or_default()
            .starts_with("8 tasks: depth"),
        "{snap:?}"
    );
    common::wait_for("all 2000 handled", Duration::from_secs(600), || {
        worker.snapshot()[0].handled == 2000
    })
    .await;
    // Idle: every task climbs its back-off curve to the 30 s maximum, then all but one retire;
    // or, sooner, probes that find nothing waiting retire the spare tasks one by one.
    common::wait_for("back to min_tasks", Duration::from_secs(300), || {
        worker.snapshot()[0].active_tasks == 1
    })
    .await;
    let settled = worker.snapshot()[0].clone();
    assert_eq!(settled.peak_tasks, 8);
    assert!(
        settled
            .last_decision
            .as_deref()
            .unwrap_or_default()
            .contains("idle")
            || settled
                .last_decision
                .as_deref()
                .unwrap_or_default()
                .contains("needs fewer tasks"),
        "{settled:?}"
    );
    // The last one stays and polls at the maximum: about 120 receives an hour.
    let before = settled.receive_calls;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let after = worker.snapshot()[0].clone();
    assert_eq!(after.active_tasks, 1);
    let per_hour = after.receive_calls - before;
    assert!(
        (118..=122).contains(&per_hour),
        "{per_hour} receives in an idle hour"
    );
    assert_eq!(
        after.probe_calls, settled.probe_calls,
        "no depth probes while idle"
    );
    worker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn zero_tasks_make_no_calls_and_a_publish_wakes_the_queue_within_50ms() {
    let store = common::memory();
    let queue = common::unique("zero");
    let s = settings(&queue, |_, q| {
        q.scaling.min_tasks = ebbflow::config::MinTasks::Zero;
        q.scaling.wake_on_publish = true;
    });
    let clock = Clock::default();
    let worker = common::start(&store, s, &queue, clock.clone()).await;
    common::wait_for("zero tasks", Duration::from_secs(300), || {
        worker.snapshot()[0].active_tasks == 0
    })
    .await;
    let idle = worker.snapshot()[0].clone();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let later = worker.snapshot()[0].clone();
    assert_eq!(
        (later.receive_calls, later.probe_calls),
        (idle.receive_calls, idle.probe_calls),
        "an idle hour at zero tasks costs nothing"
    );
    let pickup = pickup_after_publish(&worker, &queue, &clock).await;
    assert!(
        pickup <= Duration::from_millis(50),
        "pickup took {pickup:?}"
    );
    assert!(worker.snapshot()[0].triggers >= 1);
    worker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_idle_probe_brings_a_queue_back_from_zero_tasks() {
    let store = common::memory();
    let queue = common::unique("idleprobe");
    let s = settings(&queue, |_, q| {
        q.scaling.min_tasks = ebbflow::config::MinTasks::Zero;
        q.scaling.idle_probe_interval = Some(Duration::from_secs(60));
    });
    let clock = Clock::default();
    let worker = common::start(&store, s, &queue, clock.clone()).await;
    common::wait_for("zero tasks", Duration::from_secs(300), || {
        worker.snapshot()[0].active_tasks == 0
    })
    .await;
    let idle = worker.snapshot()[0].clone();
    tokio::time::sleep(Duration::from_secs(600)).await;
    let later = worker.snapshot()[0].clone();
    assert_eq!(
        later.receive_calls, idle.receive_calls,
        "no receives at zero tasks"
    );
    // One properties call plus one correcting peek a minute.
    let probes = later.probe_calls - idle.probe_calls;
    assert!(
        (19..=21).contains(&probes),
        "{probes} probe calls in 10 idle minutes"
    );
    // Work sent by another process (no trigger): picked up at the next probe.
    let sent = Instant::now();
    fill(&store, &queue, 1).await;
    common::wait_for("pickup", Duration::from_secs(61), || {
        clock.first_start().is_some()
    })
    .await;
    assert!(clock.first_start().unwrap() - sent <= Duration::from_secs(60));
    worker.shutdown().await;
}

/// Forwards every message to `to` through the Context's publisher.
struct Forward {
    to: String,
}

impl Handler for Forward {
    type Message = String;

    async fn handle(&self, text: String, ctx: Context) -> Result<(), HandlerError> {
        let publisher = ctx.publisher(&self.to).ok_or("no publisher")?;
        publisher
            .send_bytes(text.as_bytes(), Default::default())
            .await?;
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_handler_hands_work_on_and_wakes_the_next_queue_from_zero() {
    let store = common::memory();
    let (first, second) = (common::unique("first"), common::unique("second"));
    let s = settings(&first, |s, _| {
        let mut q = QueueSettings::default();
        q.encoding = Encoding::None;
        q.scaling.min_tasks = ebbflow::config::MinTasks::Zero;
        q.scaling.wake_on_publish = true;
        s.queues.insert(second.clone(), q);
    });
    let clock = Clock::default();
    let worker = Worker::new(s)
        .with_store(store.clone())
        .handler(&first, Forward { to: second.clone() })
        .handler(&second, clock.clone())
        .start()
        .await
        .unwrap();
    common::wait_for("the second queue at zero", Duration::from_secs(300), || {
        // Snapshots come in queue-name order: t-first-… then t-second-….
        worker.snapshot()[1].active_tasks == 0
    })
    .await;
    let pickup = pickup_after_publish(&worker, &first, &clock).await;
    assert!(
        pickup <= Duration::from_millis(50),
        "two hops took {pickup:?}"
    );
    worker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn tasks_retire_one_by_one_and_never_below_one() {
    let store = common::memory();
    let queue = common::unique("retire");
    fill(&store, &queue, 500).await;
    let s = settings(&queue, |_, q| {
        q.scaling.max_tasks = ebbflow::config::MaxTasks::of::<4>();
        q.scaling.messages_per_task = ebbflow::config::MessagesPerTask::of::<10>();
        q.scaling.scale_down_cooldown = Duration::from_secs(10);
    });
    let worker = common::start(&store, s, &queue, Clock::default()).await;
    common::wait_for("4 tasks", Duration::from_secs(5), || {
        worker.snapshot()[0].active_tasks == 4
    })
    .await;
    common::wait_for("all handled", Duration::from_secs(60), || {
        worker.snapshot()[0].handled == 500
    })
    .await;
    // With a 10 s scale-down cool-down, going from 4 to 1 takes at least 20 s after the first
    // retirement; sample the count every second and check it only ever steps down by one.
    let mut counts = vec![];
    for _ in 0..200 {
        counts.push(worker.snapshot()[0].active_tasks);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(*counts.last().unwrap(), 1, "{counts:?}");
    assert!(counts.iter().all(|&c| c >= 1), "{counts:?}");
    assert!(
        counts.windows(2).all(|w| w[1] <= w[0] && w[0] - w[1] <= 1),
        "{counts:?}"
    );
    let first_drop = counts.iter().position(|&c| c < 4).unwrap();
    let at_one = counts.iter().position(|&c| c == 1).unwrap();
    assert!(
        at_one - first_drop >= 19,
        "retired faster than the cool-down: {counts:?}"
    );
    worker.shutdown().await;
}

/// Messages trickle in while one slow handler at a time works through them: no batch is full
/// and the depth alone asks for one task, but the waiting messages age, and the age rule adds
/// tasks.
#[tokio::test(start_paused = true)]
async fn old_messages_add_tasks_even_when_depth_does_not_call_for_them() {
    let store = common::memory();
    let queue = common::unique("age");
    fill(&store, &queue, 0).await;
    let s = settings(&queue, |_, q| {
        q.concurrency = ebbflow::config::Concurrency::of::<1>();
        q.scaling.max_tasks = ebbflow::config::MaxTasks::of::<4>();
        q.scaling.messages_per_task = ebbflow::config::MessagesPerTask::of::<1_000_000>(); // depth alone never asks for a second task
        q.scaling.depth_probe_interval = Duration::from_secs(1);
        q.scaling.scale_up_when_older_than = Some(Duration::from_secs(5));
    });
    let clock = Clock {
        work: Duration::from_secs(2),
        ..Default::default()
    };
    let worker = common::start(&store, s, &queue, clock).await;
    let producer = {
        let q = store.queue(&queue).unwrap();
        tokio::spawn(async move {
            for i in 0..60 {
                q.send(&format!("m{i}"), Default::default()).await.unwrap();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        worker.snapshot()[0].active_tasks,
        1,
        "young messages: one task"
    );
    common::wait_for("a second task", Duration::from_secs(30), || {
        worker.snapshot()[0].active_tasks >= 2
    })
    .await;
    let snap = worker.snapshot()[0].clone();
    assert!(
        snap.last_decision
            .as_deref()
            .unwrap_or_default()
            .contains("old"),
        "{snap:?}"
    );
    producer.abort();
    worker.shutdown().await;
}

/// Real time on Azurite: a worker idle at zero tasks finds no work on its own; the HTTP
/// trigger wakes it and the message is handled. (How fast: the benchmark suite's wake
/// scenario measures pickup after a trigger.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite_http_trigger_wakes_a_worker_at_zero_tasks() {
    let store = common::azurite();
    let queue = common::unique("httpwake");
    fill(&store, &queue, 0).await;
    let s = settings(&queue, |s, q| {
        s.triggers.http.enabled = true;
        s.triggers.http.bind = "127.0.0.1:0".parse().unwrap();
        q.scaling.min_tasks = ebbflow::config::MinTasks::Zero;
        q.idle_backoff.min = Duration::from_millis(100);
        q.idle_backoff.max = Duration::from_millis(400);
        q.idle_backoff.delta = Duration::from_millis(100);
    });
    let clock = Clock::default();
    let worker = common::start(&store, s, &queue, clock.clone()).await;
    common::wait_for("zero tasks", Duration::from_secs(20), || {
        worker.snapshot()[0].active_tasks == 0
    })
    .await;
    let idle = worker.snapshot()[0].clone();
    // Work arrives from another process (sent straight to the store, no in-process trigger):
    // at zero tasks nothing looks for it.
    fill(&store, &queue, 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let untriggered = worker.snapshot()[0].clone();
    assert_eq!(
        (untriggered.receive_calls, untriggered.handled),
        (idle.receive_calls, 0),
        "idle at zero: no receives, so no pickup without a trigger"
    );
    let url = format!("http://{}/trigger", worker.trigger_addr().unwrap());
    let body = format!(r#"{{"account":"devstoreaccount1","queue":"{queue}","payload_size":1}}"#);
    let response = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    assert!(response.text().await.unwrap().contains("\"woken\":1"));
    common::wait_for("the message handled", Duration::from_secs(10), || {
        worker.snapshot()[0].handled == 1
    })
    .await;
    let after = worker.snapshot()[0].clone();
    assert_eq!(after.triggers, 1);
    assert_eq!(clock.started.lock().unwrap().len(), 1, "handled once");
    worker.shutdown().await;
}

/// Real time on Azurite: a worker at one task, sleeping in a 10-minute back-off, handles an
/// in-process publish at once instead of waiting the back-off out. (How fast: the benchmark
/// suite measures pickup after a trigger.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite_in_process_publish_wakes_a_task_sleeping_in_its_backoff() {
    let store = common::azurite();
    let queue = common::unique("pubwake");
    fill(&store, &queue, 0).await;
    let s = settings(&queue, |_, q| {
        // The first empty receive already sleeps the longest back-off allowed.
        q.idle_backoff.min = Duration::from_secs(600);
        q.idle_backoff.max = Duration::from_secs(600);
        q.idle_backoff.delta = Duration::from_secs(1);
    });
    let clock = Clock::default();
    let worker = common::start(&store, s, &queue, clock.clone()).await;
    common::wait_for("a 10-minute back-off", Duration::from_secs(10), || {
        worker.snapshot()[0].current_backoff == Duration::from_secs(600)
    })
    .await;
    let asleep = worker.snapshot()[0].clone();
    worker
        .publisher(&queue)
        .unwrap()
        .send_bytes(b"job", Default::default())
        .await
        .unwrap();
    // Well inside the back-off: only the wake can explain a pickup.
    common::wait_for("the message handled", Duration::from_secs(20), || {
        worker.snapshot()[0].handled == 1
    })
    .await;
    let woken = worker.snapshot()[0].clone();
    assert_eq!(woken.triggers, asleep.triggers + 1);
    assert_eq!(woken.active_tasks, 1);
    worker.shutdown().await;
}

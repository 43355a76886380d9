//! What the listener pays and what it counts as work, under tokio's paused clock at the default
//! settings (30 s visibility, concurrency 16, batch 32) unless a test says otherwise: calls
//! counted by `CountingStore` where the README promises a cost, the depth it scales on, and
//! batched receives ahead of free slots without a message run twice.

// Tests report what they measured.
#![allow(clippy::print_stdout)]

use crate::common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebbflow::codec::Encoding;
use ebbflow::config::{QueueSettings, Settings};
use ebbflow::store::{CallCounts, CountingStore};
use ebbflow::store::{Queue, QueueStore};
use ebbflow::{Context, Handler, HandlerError};

fn settings(queue: &str, edit: impl FnOnce(&mut QueueSettings)) -> Settings {
    let mut s = Settings::default();
    let mut q = QueueSettings::default();
    edit(&mut q);
    s.queues.insert(queue.to_string(), q);
    s
}

async fn send_all(q: &Arc<dyn Queue>, bodies: impl IntoIterator<Item = String>) {
    for body in bodies {
        let text = Encoding::Base64.encode(body.as_bytes()).unwrap();
        q.send(&text, Default::default()).await.unwrap();
    }
}

/// Counts runs by body and sleeps as the body says (`w<ms>-...`).
#[derive(Clone, Default)]
struct Sleepy {
    runs: Arc<Mutex<BTreeMap<String, u32>>>,
}

impl Handler for Sleepy {
    type Message = String;
    async fn handle(&self, body: String, _: Context) -> Result<(), HandlerError> {
        *self.runs.lock().unwrap().entry(body.clone()).or_default() += 1;
        let ms: u64 = body
            .strip_prefix('w')
            .and_then(|r| r.split('-').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(())
    }
}

/// A counting embedded store and its counters.
fn counted() -> (Arc<dyn QueueStore>, Arc<CallCounts>) {
    let counting = CountingStore::new(common::memory());
    let counts = counting.counts();
    (Arc::new(counting), counts)
}

fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// The example: 100 messages of 14 s, concurrency 100, `max_tasks = 8`. Once every
/// message is held by a handler and none is visible, the depth the listener scales on (and
/// shows) is 0, not the approximate count of 100 that includes its own in-flight messages, and
/// the tasks step down while the handlers still run.
#[tokio::test(start_paused = true)]
async fn messages_this_replica_holds_are_not_waiting_work() {
    let store = common::memory();
    let q = common::fresh_queue(&store, "held").await;
    send_all(&q, (0..100).map(|i| format!("w14000-{i}"))).await;
    let name = q.name().to_string();
    let s = settings(&name, |q| {
        q.concurrency = ebbflow::config::Concurrency::of::<100>();
        q.scaling.max_tasks = ebbflow::config::MaxTasks::of::<8>();
    });
    let handler = Sleepy::default();
    let start = tokio::time::Instant::now();
    let worker = common::start(&store, s, &name, handler.clone()).await;
    common::wait_for("all 100 running", Duration::from_secs(5), || {
        worker.snapshot()[0].in_flight == 100
    })
    .await;
    let peak = worker.snapshot()[0].active_tasks;
    // Nothing is visible now; the handlers run until 14 s.
    common::wait_for("tasks stepping down", Duration::from_secs(12), || {
        worker.snapshot()[0].active_tasks < peak
    })
    .await;
    let snap = worker.snapshot().remove(0);
    println!(
        "peak {peak} tasks, {} at {:?}: {snap:?}",
        snap.active_tasks,
        start.elapsed()
    );
    assert!(start.elapsed() < Duration::from_secs(14), "{snap:?}");
    assert_eq!(snap.in_flight, 100, "the handlers still run: {snap:?}");
    assert_eq!(snap.depth, Some(0), "{snap:?}");
    assert!(
        snap.last_decision
            .as_deref()
            .is_some_and(|d| d.contains("depth 0 needs fewer tasks")),
        "{snap:?}"
    );
    common::wait_for("all handled", Duration::from_secs(60), || {
        worker.snapshot()[0].handled == 100
    })
    .await;
    worker.shutdown().await;
}

/// Messages received ahead of a slot are held too: the depth the listener scales on leaves
/// them out as it leaves out the running ones. Concurrency 2 after fast warm-up runs (so a
/// receive may take a whole batch: 2 start, the rest wait ahead), then 60 jobs of 20 s: while
/// they run, the probed depth is what is still visible, not the count less the two running.
#[tokio::test(start_paused = true)]
async fn messages_waiting_ahead_of_a_slot_are_not_waiting_work_either() {
    let store = common::memory();
    let q = common::fresh_queue(&store, "ahead").await;
    let name = q.name().to_string();
    let s = settings(&name, |q| {
        q.concurrency = ebbflow::config::Concurrency::of::<2>();
        q.scaling.max_tasks = ebbflow::config::MaxTasks::of::<1>();
    });
    let worker = common::start(&store, s, &name, Sleepy::default()).await;
    send_all(&q, (0..4).map(|i| format!("w10-warm{i}"))).await;
    common::wait_for("warmed up", Duration::from_secs(10), || {
        worker.snapshot()[0].handled == 4
    })
    .await;
    send_all(&q, (0..60).map(|i| format!("w20000-slow{i}"))).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let snap = worker.snapshot().remove(0);
    let visible = q.peek(32).await.unwrap().len() as u64;
    worker.shutdown().await;
    println!(
        "held {} ({} running), {visible} visible: {snap:?}",
        snap.held, snap.in_flight
    );
    assert!(
        snap.held > snap.in_flight + 20,
        "messages wait ahead: {snap:?}"
    );
    assert_eq!(snap.depth, Some(visible), "{snap:?}");
    assert_eq!(visible, 60 - snap.held, "{snap:?}");
}

/// A trigger-covered queue at `min_tasks = 0` (every message published through the worker,
/// each with its trigger): each wake-up from zero costs one receive and one delete for its
/// message, plus the one depth probe (approximate count and peek) that a wake-up from zero
/// makes, then the task waits for the next trigger and retires when none comes.
#[tokio::test(start_paused = true)]
async fn a_wake_up_from_zero_costs_one_receive() {
    let (store, counts) = counted();
    let q = common::fresh_queue(&store, "fromzero").await;
    let name = q.name().to_string();
    let s = settings(&name, |q| {
        q.scaling.min_tasks = ebbflow::config::MinTasks::Zero;
        q.scaling.wake_on_publish = true;
    });
    let worker = common::start(&store, s, &name, Sleepy::default()).await;
    common::wait_for("at zero tasks", Duration::from_secs(200), || {
        worker.snapshot()[0].active_tasks == 0
    })
    .await;
    let publisher = worker.publisher(&name).unwrap();
    for i in 0..5 {
        let (receives, deletes) = (get(&counts.receive), get(&counts.delete));
        let probes = get(&counts.peek) + get(&counts.properties);
        publisher
            .send_bytes(format!("w20-{i}").as_bytes(), Default::default())
            .await
            .unwrap();
        common::wait_for("handled", Duration::from_secs(5), || {
            worker.snapshot()[0].handled == i + 1
        })
        .await;
        common::wait_for("back at zero tasks", Duration::from_secs(200), || {
            worker.snapshot()[0].active_tasks == 0
        })
        .await;
        let receives = get(&counts.receive) - receives;
        let deletes = get(&counts.delete) - deletes;
        let probes = get(&counts.peek) + get(&counts.properties) - probes;
        println!("wake-up {i}: {receives} receives, {deletes} deletes, {probes} probe calls");
        assert_eq!((receives, deletes), (1, 1), "wake-up {i}");
        assert!(probes <= 2, "wake-up {i}: {probes} probe calls");
    }
    worker.shutdown().await;
}

/// 2,000 triggers on an empty queue, one every millisecond (a storm of HTTP triggers, at the
/// default settings, so not trigger-covered): triggers within the back-off minimum (100 ms) of
/// an empty receive, or while one is in flight, lead to one more receive at most, so the storm
/// costs about one receive per 100 ms, not one per trigger. Then all at once: one receive.
#[tokio::test(start_paused = true)]
async fn a_storm_of_triggers_on_an_empty_queue_costs_a_few_dozen_receives() {
    let (store, counts) = counted();
    let q = common::fresh_queue(&store, "storm").await;
    let name = q.name().to_string();
    let worker = common::start(&store, settings(&name, |_| {}), &name, Sleepy::default()).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let hub = worker.hub();
    let before = get(&counts.receive);
    let probes = get(&counts.peek) + get(&counts.properties);
    for _ in 0..2_000 {
        hub.notify(&name);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let spread = get(&counts.receive) - before;
    let probes = get(&counts.peek) + get(&counts.properties) - probes;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let before = get(&counts.receive);
    for _ in 0..2_000 {
        hub.notify(&name);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_once = get(&counts.receive) - before;
    let snap = worker.shutdown().await.queues.remove(0);
    println!("storm: {spread} receives over 2 s, {probes} probe calls; {at_once} for 2,000 at once; {snap:?}");
    assert_eq!(snap.triggers, 4_000);
    assert!(
        spread <= 25,
        "{spread} receives for 2,000 triggers over 2 s"
    );
    assert!(probes <= 4, "{probes} probe calls");
    assert!(
        at_once <= 2,
        "{at_once} receives for 2,000 triggers at once"
    );
}

/// The burst of the benchmark, under the paused clock: 600 jobs of 20 ms at concurrency 8. Once
/// the handler time is known, a task receives full batches of 32 (8 to run, the rest waiting
/// ahead of a slot with their lease running), so the burst costs at most 1.07 calls per
/// message, where receiving only into free slots cost 1 + 1/8 at best; each message runs once.
#[tokio::test(start_paused = true)]
async fn fast_jobs_at_low_concurrency_are_received_in_full_batches() {
    let (store, counts) = counted();
    let q = common::fresh_queue(&store, "ahead").await;
    send_all(&q, (0..600).map(|i| format!("w20-{i}"))).await;
    let name = q.name().to_string();
    let handler = Sleepy::default();
    let s = settings(&name, |q| {
        q.concurrency = ebbflow::config::Concurrency::of::<8>()
    });
    let worker = common::start(&store, s, &name, handler.clone()).await;
    common::wait_for("the burst handled", Duration::from_secs(60), || {
        worker.snapshot()[0].handled == 600
    })
    .await;
    let snap = worker.shutdown().await.queues.remove(0);
    let calls = get(&counts.receive)
        + get(&counts.delete)
        + get(&counts.update)
        + get(&counts.peek)
        + get(&counts.properties);
    let per_message = calls as f64 / 600.0;
    println!("burst at concurrency 8: {per_message:.3} calls per message, {snap:?}");
    let runs = handler.runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 600);
    assert!(runs.values().all(|n| *n == 1), "a message ran twice");
    assert_eq!((snap.received, snap.lost_ownership), (600, 0), "{snap:?}");
    assert!(per_message <= 1.07, "{per_message:.3} calls per message");
}

/// Messages waiting ahead keep their lease: at concurrency 1, fast jobs let a full batch be
/// received, then a 100 s job holds the only slot while 30 messages wait behind it, more than
/// three visibility timeouts. They are renewed while they wait; none is received twice or run
/// twice. Handlers of a quarter of the visibility timeout or more never hold waiting messages.
#[tokio::test(start_paused = true)]
async fn messages_waiting_ahead_keep_their_lease_and_slow_handlers_hold_none() {
    let store = common::memory();
    let q = common::fresh_queue(&store, "waiting").await;
    let bodies = (0..10)
        .map(|i| format!("w10-a{i}"))
        .chain(["w100000-long".to_string()])
        .chain((0..40).map(|i| format!("w10-b{i}")));
    send_all(&q, bodies).await;
    let name = q.name().to_string();
    let handler = Sleepy::default();
    let s = settings(&name, |q| {
        q.concurrency = ebbflow::config::Concurrency::of::<1>();
        q.scaling.max_tasks = ebbflow::config::MaxTasks::of::<1>();
    });
    let worker = common::start(&store, s, &name, handler.clone()).await;
    common::wait_for("the long job running", Duration::from_secs(5), || {
        handler.runs.lock().unwrap().contains_key("w100000-long")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let waiting = worker.snapshot()[0].held;
    assert!(waiting > 10, "{waiting} held behind the long job");
    common::wait_for("all handled", Duration::from_secs(300), || {
        worker.snapshot()[0].handled == 51
    })
    .await;
    let snap = worker.shutdown().await.queues.remove(0);
    println!("{waiting} waited behind the long job: {snap:?}");
    let runs = handler.runs.lock().unwrap().clone();
    assert!(runs.values().all(|n| *n == 1), "a message ran twice");
    assert_eq!((snap.received, snap.lost_ownership), (51, 0), "{snap:?}");
    assert!(snap.renewals >= waiting * 3, "{snap:?}");

    // 8 s handlers at the default 30 s visibility: each receive asks for free slots only.
    let (store, hooks) = common::hooked::Hooked::wrap(common::memory());
    let q = common::fresh_queue(&store, "slowjobs").await;
    send_all(&q, (0..40).map(|i| format!("w8000-{i}"))).await;
    let name = q.name().to_string();
    let s = settings(&name, |q| {
        q.concurrency = ebbflow::config::Concurrency::of::<4>();
        q.scaling.max_tasks = ebbflow::config::MaxTasks::of::<1>();
    });
    let worker = common::start(&store, s, &name, Sleepy::default()).await;
    let mut most_held = 0;
    while worker.snapshot()[0].handled < 40 {
        most_held = most_held.max(worker.snapshot()[0].held);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.shutdown().await;
    let asked = hooks.asked.lock().unwrap().clone();
    println!("slow jobs: receives asked for {asked:?}, at most {most_held} held");
    assert!(most_held <= 4, "{most_held} held at concurrency 4");
    assert!(asked.iter().all(|n| *n <= 4), "{asked:?}");
}

/// A covered queue at `min_tasks = 0` waits for triggers only; a message published through the
/// worker with an initial delay is invisible when its trigger comes, so that trigger finds
/// nothing. The message must still be handled once it shows up (a trigger when it becomes
/// visible, as for the listener's own retries), not left until someone publishes again.
#[tokio::test(start_paused = true)]
async fn a_delayed_publish_on_a_covered_queue_at_zero_tasks_is_handled_when_it_shows() {
    let (store, counts) = counted();
    let q = common::fresh_queue(&store, "delayed").await;
    let name = q.name().to_string();
    let s = settings(&name, |q| {
        q.scaling.min_tasks = ebbflow::config::MinTasks::Zero;
        q.scaling.wake_on_publish = true;
    });
    let worker = common::start(&store, s, &name, Sleepy::default()).await;
    common::wait_for("at zero tasks", Duration::from_secs(200), || {
        worker.snapshot()[0].active_tasks == 0
    })
    .await;
    let publisher = worker.publisher(&name).unwrap();
    let before = get(&counts.receive);
    let mut delay = ebbflow::store::SendOptions::default();
    delay.initial_delay = Duration::from_secs(120);
    publisher.send_bytes(b"w20-late", delay).await.unwrap();
    common::wait_for(
        "the delayed message handled",
        Duration::from_secs(600),
        || worker.snapshot()[0].handled == 1,
    )
    .await;
    let receives = get(&counts.receive) - before;
    println!("delayed publish: {receives} receives");
    assert!(receives <= 3, "{receives} receives for one delayed message");
    worker.shutdown().await;
}

/// `batch_window`: after a trigger wakes an idle task, it waits up to the window for more
/// arrivals before it receives, and stops waiting once a batch's worth (`batch_size`) has
/// arrived. Three messages a millisecond apart are received together when the 2 s window ends;
/// eight (the batch size) are received as soon as the eighth arrives.
#[tokio::test(start_paused = true)]
async fn a_batch_window_waits_for_more_and_ends_once_a_batch_s_worth_arrived() {
    let (store, counts) = counted();
    let q = common::fresh_queue(&store, "window").await;
    let name = q.name().to_string();
    let s = settings(&name, |q| {
        q.scaling.wake_on_publish = true;
        q.batch_window = Some(Duration::from_secs(2));
        q.batch_size = ebbflow::config::BatchSize::of::<8>();
        // A task receives only when a trigger wakes it: no jittered back-off step ends inside
        // a window (a receive it makes then has no window).
        q.idle_backoff.min = Duration::from_secs(600);
        q.idle_backoff.max = Duration::from_secs(600);
    });
    let worker = common::start(&store, s, &name, Sleepy::default()).await;
    // Idle, in a long back-off sleep.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let publisher = worker.publisher(&name).unwrap();
    let burst = |n: usize, tag: &'static str| {
        let publisher = publisher.clone();
        async move {
            for i in 0..n {
                publisher
                    .send_bytes(format!("w0-{tag}{i}").as_bytes(), Default::default())
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    let before = get(&counts.receive);
    burst(3, "few").await;
    tokio::time::sleep(Duration::from_millis(1_900)).await;
    assert_eq!(worker.snapshot()[0].handled, 0, "still inside the window");
    assert_eq!(get(&counts.receive), before, "no receive inside the window");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        worker.snapshot()[0].handled,
        3,
        "received when the window ended"
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    burst(8, "full").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        worker.snapshot()[0].handled,
        11,
        "a batch's worth arrived: received at once, not at the window's end"
    );
    worker.shutdown().await;
}

/// Depth probes while one task's receives come back filled (scaling.md): concurrency 4 under a
/// batch size of 32, so each receive asks for 4 and gets 4, never a full batch; the queue may
/// be deeper than the task takes, so it is probed every `depth_probe_interval` (5 s), not only
/// when the work showed up.
#[tokio::test(start_paused = true)]
async fn one_task_whose_receives_come_back_filled_is_probed_every_interval() {
    let (store, counts) = counted();
    let q = common::fresh_queue(&store, "filled").await;
    let name = q.name().to_string();
    let s = settings(&name, |q| {
        q.concurrency = ebbflow::config::Concurrency::of::<4>();
        q.scaling.max_tasks = ebbflow::config::MaxTasks::of::<1>();
    });
    let worker = common::start(&store, s, &name, Sleepy::default()).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = get(&counts.peek) + get(&counts.properties);
    send_all(&q, (0..200).map(|i| format!("w1000-{i}"))).await;
    tokio::time::sleep(Duration::from_secs(24)).await;
    let probes = get(&counts.peek) + get(&counts.properties) - before;
    let snap = worker.shutdown().await.queues.remove(0);
    println!("filled receives for 24 s: {probes} probe calls, {snap:?}");
    assert!(snap.handled >= 80, "{snap:?}");
    assert!(
        probes >= 4,
        "{probes} probe calls in 24 s of filled receives"
    );
}

/// Triggers piling up faster than batches come back call for a probe (scaling.md): with the one
/// slot busy with a long job, no batch comes back; the first trigger after it is taken for the
/// message the waiting task is about to receive (no probe), the second asks how deep the queue
/// is (one probe at once).
#[tokio::test(start_paused = true)]
async fn the_second_trigger_without_a_batch_probes_the_depth_the_first_does_not() {
    let (store, counts) = counted();
    let q = common::fresh_queue(&store, "piling").await;
    let name = q.name().to_string();
    let s = settings(&name, |q| {
        q.concurrency = ebbflow::config::Concurrency::of::<1>();
        q.scaling.wake_on_publish = true;
    });
    let worker = common::start(&store, s, &name, Sleepy::default()).await;
    let publisher = worker.publisher(&name).unwrap();
    publisher
        .send_bytes(b"w60000-long", Default::default())
        .await
        .unwrap();
    // The long job runs; the probes its start prompted are past and due again.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(worker.snapshot()[0].in_flight, 1);
    let probes = || get(&counts.peek) + get(&counts.properties);
    let before = probes();
    publisher
        .send_bytes(b"w0-a", Default::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(probes(), before, "one trigger: no probe");
    publisher
        .send_bytes(b"w0-b", Default::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(probes() > before, "two triggers without a batch: a probe");
    worker.shutdown().await;
}

//! Flow control and message safety at the settings users run (30 s visibility, concurrency 16,
//! batch 32), with handlers long enough and backlogs deep enough for timing to matter. The
//! worker's lifecycle (validation, failed start, drop, the drain deadline) is in
//! `flow_lifecycle`, which shares this module's `Worky` handler and helpers; a dead task
//! replaced and the trigger/retire race are in the `embedded` binary (`restarts`,
//! `guarantees`), where the supervisor's mutation group runs them.
//!
//! Embedded tests run under tokio's paused clock, so their timings are exact; the Azurite run
//! of the backlog test is real time and asserts outcomes only.

// Tests report what they measured.
#![allow(clippy::print_stdout)]

use crate::common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebbflow::codec::Encoding;
use ebbflow::config::{QueueSettings, Settings};
use ebbflow::store::{BackendKind, Queue, QueueStore};
use ebbflow::{Context, Handler, HandlerError};
use tokio::time::Instant;

on_both_backends!(a_backlog_at_default_settings_is_handled_exactly_once);

pub(crate) fn settings(queue: &str, edit: impl FnOnce(&mut QueueSettings)) -> Settings {
    let mut s = Settings::default();
    let mut q = QueueSettings::default();
    edit(&mut q);
    s.queues.insert(queue.to_string(), q);
    s
}

pub(crate) async fn send_all(q: &Arc<dyn Queue>, bodies: impl IntoIterator<Item = String>) {
    for body in bodies {
        let text = Encoding::Base64.encode(body.as_bytes()).unwrap();
        q.send(&text, Default::default()).await.unwrap();
    }
}

/// Records each run by body, how many run at once, and sleeps as the body says ("w<ms>-...").
#[derive(Clone, Default)]
pub(crate) struct Worky {
    pub(crate) runs: Arc<Mutex<BTreeMap<String, u32>>>,
    pub(crate) starts: Arc<Mutex<BTreeMap<String, Instant>>>,
    /// When each message id's first run started.
    started_ids: Arc<Mutex<BTreeMap<String, Instant>>>,
    running: Arc<AtomicU32>,
    peak: Arc<AtomicU32>,
}

impl Handler for Worky {
    type Message = String;
    async fn handle(&self, body: String, ctx: Context) -> Result<(), HandlerError> {
        *self.runs.lock().unwrap().entry(body.clone()).or_default() += 1;
        self.started_ids
            .lock()
            .unwrap()
            .entry(ctx.message_id().to_string())
            .or_insert_with(Instant::now);
        self.starts
            .lock()
            .unwrap()
            .entry(body.clone())
            .or_insert_with(Instant::now);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let ms: u64 = body
            .strip_prefix('w')
            .and_then(|r| r.split('-').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A backlog far deeper than the concurrency, with handlers of several seconds, at the default
/// settings: every message runs exactly once (none waits for a slot until its visibility runs
/// out), and no more than `concurrency` run at once. Embedded: 300 messages of 3-10 s at the
/// default 30 s visibility, then 100 of 18-25 s. Azurite (real time): 40 messages of 1-3 s at
/// 5 s visibility.
///
/// Messages wait for a slot only within the ahead allowance (as many as start within a quarter
/// of the visibility timeout at the measured handler time): on the embedded store, under the
/// paused clock, jobs of 18-25 s (more than a quarter of 30 s) get no message received ahead,
/// so none waits a quarter of the visibility timeout from its receive to its start. With the
/// allowance broken (messages received ahead of slots whatever the handler time) they wait one
/// or two 18-25 s rounds and this fails; without their renewal while they wait, they would run
/// twice.
async fn a_backlog_at_default_settings_is_handled_exactly_once(store: Arc<dyn QueueStore>) {
    if store.kind() == BackendKind::Embedded {
        backlog(&store, 300, Duration::from_secs(30), 3_000, 8).await;
        let longest = backlog(&store, 100, Duration::from_secs(30), 18_000, 8).await;
        assert!(
            longest < Duration::from_secs(30) / 4,
            "a message waited {longest:?} for a slot: beyond the ahead allowance"
        );
    } else {
        backlog(&store, 40, Duration::from_secs(5), 1_000, 3).await;
    }
}

/// Runs `count` messages of `base_ms` to `base_ms + (spread - 1) s` through a worker at
/// `visibility`; asserts exactly once, the concurrency cap, nothing left. Returns the longest
/// any message waited from its receive to its start.
async fn backlog(
    store: &Arc<dyn QueueStore>,
    count: u32,
    visibility: Duration,
    base_ms: u32,
    spread: u32,
) -> Duration {
    let (store, hooks) = common::hooked::Hooked::wrap(store.clone());
    let embedded = store.kind() == BackendKind::Embedded;
    let q = common::fresh_queue(&store, "backlog").await;
    let bodies: Vec<String> = (0..count)
        .map(|i| format!("w{}-{i}", base_ms + (i % spread) * 1_000))
        .collect();
    send_all(&q, bodies.clone()).await;
    let name = q.name().to_string();
    let s = settings(&name, |q| q.visibility_timeout = visibility);
    let handler = Worky::default();
    let worker = common::start(&store, s, &name, handler.clone()).await;
    let limit = if embedded { 3_600 } else { 120 };
    common::wait_for("the backlog handled", Duration::from_secs(limit), || {
        worker.snapshot()[0].handled >= count as u64
    })
    .await;
    let report = worker.shutdown().await;
    let snap = &report.queues[0];
    let runs = handler.runs.lock().unwrap().clone();
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    println!(
        "backlog of {count}: handled {}, duplicates {}, lost {}, renewals {}, receives {}",
        snap.handled,
        twice.len(),
        count as usize - runs.len(),
        snap.renewals,
        snap.receive_calls
    );
    assert!(twice.is_empty(), "handled twice: {twice:?}");
    assert_eq!(runs.len(), count as usize, "every message ran");
    assert_eq!(
        snap.received, count as u64,
        "nothing was received twice: {snap:?}"
    );
    assert_eq!(snap.handled, count as u64);
    assert_eq!(snap.lost_ownership, 0, "{snap:?}");
    assert!(
        handler.peak.load(Ordering::SeqCst) <= 16,
        "concurrency is the cap"
    );
    assert_eq!(report.unreleased, 0);
    assert_eq!(q.approximate_depth().await.unwrap(), 0);
    let received = hooks.received_at.lock().unwrap().clone();
    let started = handler.started_ids.lock().unwrap().clone();
    let longest = started
        .iter()
        .map(|(id, at)| *at - received[id])
        .max()
        .unwrap();
    println!("backlog of {count}: longest wait from receive to start {longest:?}");
    longest
}

/// One 60 s job runs; a new message published with a trigger starts at once (no waiting for
/// the long job's batch), on a queue whose only task is the one that received the long job.
#[tokio::test(start_paused = true)]
async fn a_long_job_does_not_hold_back_triggered_work() {
    let store = common::memory();
    let q = common::fresh_queue(&store, "longjob").await;
    let name = q.name().to_string();
    let s = settings(&name, |q| {
        q.scaling.max_tasks = ebbflow::config::MaxTasks::of::<1>()
    });
    let handler = Worky::default();
    let worker = common::start(&store, s, &name, handler.clone()).await;
    let publisher = worker.publisher(&name).unwrap();
    publisher
        .send_bytes(b"w60000-long", Default::default())
        .await
        .unwrap();
    common::wait_for("the long job running", Duration::from_secs(5), || {
        worker.snapshot()[0].in_flight == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let sent = Instant::now();
    publisher
        .send_bytes(b"quick", Default::default())
        .await
        .unwrap();
    common::wait_for("the quick one started", Duration::from_secs(60), || {
        handler.starts.lock().unwrap().contains_key("quick")
    })
    .await;
    let pickup = handler.starts.lock().unwrap()["quick"] - sent;
    assert!(pickup < Duration::from_millis(50), "pickup took {pickup:?}");
    assert_eq!(worker.snapshot()[0].in_flight, 1, "the long job still runs");
    worker.shutdown().await;
}

/// A steady trickle with a trigger per send: one receive per message (the task waits for the
/// next trigger after draining the queue, instead of receiving again and finding nothing); with
/// a 250 ms window, about one receive per window.
#[tokio::test(start_paused = true)]
async fn a_triggered_trickle_costs_one_receive_per_message_or_less_with_a_window() {
    for window in [None, Some(Duration::from_millis(250))] {
        let store = common::memory();
        let q = common::fresh_queue(&store, "trickle").await;
        let name = q.name().to_string();
        let s = settings(&name, |q| {
            q.scaling.wake_on_publish = true;
            q.batch_window = window;
        });
        let handler = Worky::default();
        let worker = common::start(&store, s, &name, handler.clone()).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Receives of the idle curve at start-up are not the trickle's.
        let before = worker.snapshot()[0].receive_calls;
        let probes_before = worker.snapshot()[0].probe_calls;
        let publisher = worker.publisher(&name).unwrap();
        let mut sent = BTreeMap::new();
        for i in 0..100 {
            let body = format!("t{i}");
            sent.insert(body.clone(), Instant::now());
            publisher
                .send_bytes(body.as_bytes(), Default::default())
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        common::wait_for("the trickle handled", Duration::from_secs(10), || {
            worker.snapshot()[0].handled == 100
        })
        .await;
        let snap = worker.shutdown().await.queues.remove(0);
        let starts = handler.starts.lock().unwrap().clone();
        let worst = sent.iter().map(|(b, t)| starts[b] - *t).max().unwrap();
        let receives = snap.receive_calls - before;
        let calls = (receives + snap.handled + snap.probe_calls - probes_before) as f64 / 100.0;
        println!("trickle, window {window:?}: {calls:.2} calls/message, worst pickup {worst:?}, {snap:?}");
        match window {
            None => {
                assert_eq!(receives, 100, "one receive per message: {snap:?}");
                assert!(calls <= 2.1, "{calls:.2} calls/message: {snap:?}");
                assert!(worst < Duration::from_millis(10), "{worst:?}");
            }
            Some(w) => {
                assert!(calls <= 1.3, "{calls:.2} calls/message: {snap:?}");
                assert!(worst <= w + Duration::from_millis(10), "{worst:?}");
            }
        }
    }
}

/// Long jobs at the head of a backlog take 9 of the 16 slots for 10 minutes: the short jobs
/// behind them still run at once on the other 7 (a refill does not wait for 8 free slots that
/// cannot come).
#[tokio::test(start_paused = true)]
async fn long_jobs_at_the_head_of_a_backlog_do_not_strand_the_rest() {
    let store = common::memory();
    let q = common::fresh_queue(&store, "head").await;
    let long = (0..9).map(|i| format!("w600000-long{i}"));
    let short = (0..20).map(|i| format!("w1000-short{i}"));
    send_all(&q, long.chain(short)).await;
    let name = q.name().to_string();
    let handler = Worky::default();
    let start = Instant::now();
    let worker = common::start(&store, settings(&name, |_| {}), &name, handler.clone()).await;
    common::wait_for("the short jobs done", Duration::from_secs(60), || {
        worker.snapshot()[0].handled == 20
    })
    .await;
    // 20 one-second jobs on 7 free slots: 3 rounds, plus the pauses that tell a refill the
    // remaining slots are held by long jobs.
    let took = start.elapsed();
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert_eq!(worker.snapshot()[0].in_flight, 9, "the long jobs still run");
    drop(worker);
}

/// Fails until its third run, or says "not now" (5 minutes) on its first.
#[derive(Clone, Default)]
struct Comeback {
    runs: Arc<Mutex<BTreeMap<String, u32>>>,
}

impl Handler for Comeback {
    type Message = String;
    async fn handle(&self, body: String, _: Context) -> Result<(), HandlerError> {
        let run = {
            let mut runs = self.runs.lock().unwrap();
            let n = runs.entry(body.clone()).or_default();
            *n += 1;
            *n
        };
        match body.as_str() {
            "flaky" if run < 3 => Err(HandlerError::retry("not yet")),
            "later" if run == 1 => Err(HandlerError::release(Duration::from_secs(300))),
            _ => Ok(()),
        }
    }
}

/// A message the listener itself made visible again (retry, release) wakes the queue when it
/// shows up, as a trigger would: a trigger-covered queue retries at once instead of waiting for
/// a trigger, and a queue at zero tasks comes back for a released message.
#[tokio::test(start_paused = true)]
async fn retried_and_released_messages_wake_their_queue() {
    let store = common::memory();
    let q = common::fresh_queue(&store, "comeback").await;
    send_all(&q, ["flaky".to_string()]).await;
    let name = q.name().to_string();
    let s = settings(&name, |q| q.scaling.wake_on_publish = true);
    let handler = Comeback::default();
    let start = Instant::now();
    let worker = common::start(&store, s, &name, handler.clone()).await;
    common::wait_for("flaky handled", Duration::from_secs(60), || {
        worker.snapshot()[0].handled == 1
    })
    .await;
    // Two retries, each woken at the back-off minimum (100 ms) after it became visible.
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(300),
        "{took:?}"
    );
    assert_eq!(handler.runs.lock().unwrap()["flaky"], 3);
    worker.shutdown().await;

    let q = common::fresh_queue(&store, "comeback0").await;
    send_all(&q, ["later".to_string()]).await;
    let name = q.name().to_string();
    let s = settings(&name, |q| {
        q.scaling.min_tasks = ebbflow::config::MinTasks::Zero;
        q.scaling.wake_on_publish = true;
    });
    let start = Instant::now();
    let worker = common::start(&store, s, &name, handler.clone()).await;
    common::wait_for("at zero tasks", Duration::from_secs(200), || {
        worker.snapshot()[0].active_tasks == 0
    })
    .await;
    common::wait_for("later handled", Duration::from_secs(600), || {
        worker.snapshot()[0].handled == 1
    })
    .await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(300) && took < Duration::from_millis(300_100),
        "{took:?}"
    );
    let snap = worker.shutdown().await.queues.remove(0);
    assert_eq!(
        (snap.released, snap.retried, snap.triggers),
        (1, 0, 0),
        "{snap:?}"
    );
}

/// A sparse trickle (one message every 7 s, each with a trigger) on a queue whose one task
/// handles each in 3 s: a receive and a delete per message, no depth probe per message.
#[tokio::test(start_paused = true)]
async fn a_sparse_triggered_trickle_costs_a_receive_and_a_delete_per_message() {
    let store = common::memory();
    let q = common::fresh_queue(&store, "sparse").await;
    let name = q.name().to_string();
    let s = settings(&name, |q| q.scaling.wake_on_publish = true);
    let worker = common::start(&store, s, &name, Worky::default()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = worker.snapshot().remove(0);
    let publisher = worker.publisher(&name).unwrap();
    for i in 0..20 {
        publisher
            .send_bytes(format!("w3000-{i}").as_bytes(), Default::default())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(7)).await;
    }
    let snap = worker.shutdown().await.queues.remove(0);
    assert_eq!(snap.handled, 20);
    let calls = (snap.receive_calls - before.receive_calls)
        + (snap.probe_calls - before.probe_calls)
        + snap.handled;
    // 20 receives and 20 deletes, plus one probe (2 calls) when work first showed up after
    // idleness; none after that.
    assert_eq!(calls, 42, "{snap:?}");
}

/// A backlog of 1-5 s jobs at the default settings: receives stay batched (a refill waits for
/// half the slots while they keep coming back), instead of one receive per message.
#[tokio::test(start_paused = true)]
async fn a_backlog_of_slow_jobs_keeps_its_receives_batched() {
    let store = common::memory();
    let q = common::fresh_queue(&store, "slowbatch").await;
    send_all(
        &q,
        (0..200).map(|i| format!("w{}-{i}", 1_000 + (i * 7919 % 4_000))),
    )
    .await;
    let name = q.name().to_string();
    let worker = common::start(&store, settings(&name, |_| {}), &name, Worky::default()).await;
    common::wait_for("the backlog handled", Duration::from_secs(3_600), || {
        worker.snapshot()[0].handled == 200
    })
    .await;
    let snap = worker.shutdown().await.queues.remove(0);
    let per_message = snap.receive_calls as f64 / 200.0;
    println!("slow backlog: {per_message:.3} receives per message, {snap:?}");
    assert!(per_message <= 0.3, "{per_message:.3} receives per message");
}

/// Always "not now, no delay".
#[derive(Clone, Default)]
struct NotNow {
    runs: Arc<AtomicU32>,
}

impl Handler for NotNow {
    type Message = String;
    async fn handle(&self, _: String, _: Context) -> Result<(), HandlerError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Err(HandlerError::release(Duration::ZERO))
    }
}

/// A handler that always answers `release(0)` does not spin its message as fast as the store
/// answers: the queue wakes for it no sooner than the back-off minimum (100 ms).
#[tokio::test(start_paused = true)]
async fn a_message_always_released_at_once_is_paced() {
    let store = common::memory();
    let q = common::fresh_queue(&store, "spin").await;
    send_all(&q, ["again".to_string()]).await;
    let name = q.name().to_string();
    let s = settings(&name, |q| q.scaling.wake_on_publish = true);
    let handler = NotNow::default();
    let worker = common::start(&store, s, &name, handler.clone()).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let runs = handler.runs.load(Ordering::SeqCst);
    assert!((50..=101).contains(&runs), "{runs} runs in 10 s");
    drop(worker);
}

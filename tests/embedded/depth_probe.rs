//! The depth probe with messages another replica holds, under tokio's paused clock: the
//! approximate count includes every message in flight, this replica's and other replicas';
//! the probe subtracts its own exactly and, when 32 or less remain, lets a peek (which sees only
//! visible messages) decide. Above 32 the count decides at one call, unless an age rule wants
//! the oldest message's age (a peek of one). See `docs/src/scaling.md`, "Depth is waiting work".
//!
//! The test plays the other replica: it receives messages with an hour's visibility timeout
//! before the worker starts. The worker runs at `min_tasks = 0` with an idle probe and a
//! policy that hears the signals and wants no task, so nothing of the worker's own takes a
//! message and each probe sees the same queue.
//!
//! The mixed case (this replica holds some, another replica some, some visible) has its own
//! setup: a worker whose handlers hold its messages until the test releases them.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebbflow::config::{MinTasks, QueueSettings, Settings};
use ebbflow::listener::QueueSnapshot;
use ebbflow::store::{CallCounts, CountingStore, QueueStore};
use ebbflow::worker::{Decision, Reason, ScalingPolicy, Signals};
use ebbflow::{Context, HandlerError, Worker};

/// Hears every decision's signals and wants no task.
#[derive(Debug, Default, Clone)]
struct Listening(Arc<Mutex<Vec<Signals>>>);

impl ScalingPolicy for Listening {
    fn decide(&self, _: &ebbflow::config::ScalingSettings, signals: &Signals) -> Decision {
        self.0.lock().unwrap().push(*signals);
        Decision {
            target: 0,
            reason: Reason::Policy("listening"),
        }
    }
}

async fn never(_: String, _: Context) -> Result<(), HandlerError> {
    unreachable!("no task runs")
}

/// What the first probe found.
struct Found {
    /// The signals the policy heard after the first probe.
    signals: Signals,
    /// The worker's snapshot right after it.
    snapshot: QueueSnapshot,
    /// The probe's calls, as the snapshot counts them.
    probe_calls: u64,
    /// The store's count of them: (queue properties, peeks).
    store_calls: (u64, u64),
}

/// Starts a worker on an empty queue and lets its first task retire (the listener starts one
/// whatever `min_tasks` says); right after an idle probe, sends `sent` messages and lets
/// another receiver hold `held_elsewhere` of them for an hour; then waits for the next idle
/// probe (10 minutes later, so the oldest message is as old).
async fn first_probe(sent: usize, held_elsewhere: usize, age_rule: bool) -> Found {
    let counting = CountingStore::new(common::memory());
    let counts = counting.counts();
    let store: Arc<dyn QueueStore> = Arc::new(counting);
    let q = common::fresh_queue(&store, "depth").await;
    let name = q.name().to_string();
    let mut s = Settings::default();
    let mut qs = QueueSettings::default();
    qs.scaling.min_tasks = MinTasks::Zero;
    qs.scaling.idle_probe_interval = Some(Duration::from_secs(600));
    if age_rule {
        qs.scaling.scale_up_when_older_than = Some(Duration::from_secs(10));
    }
    s.queues.insert(name.clone(), qs);
    let heard = Listening::default();
    let worker = Worker::new(s)
        .with_store(store.clone())
        .scaling_policy(&name, heard.clone())
        .handler_fn(&name, never)
        .start()
        .await
        .unwrap();
    common::idle_then_probed(&worker).await;
    heard.0.lock().unwrap().clear();
    for i in 0..sent {
        let text = ebbflow::codec::Encoding::Base64
            .encode(format!("m{i}").as_bytes())
            .unwrap();
        q.send(&text, Default::default()).await.unwrap();
    }
    let mut taken = 0;
    while taken < held_elsewhere {
        let n = u8::try_from((held_elsewhere - taken).min(32)).unwrap();
        taken += q.receive(n, Duration::from_secs(3600)).await.unwrap().len();
    }
    let before = worker.snapshot().remove(0);
    let calls_before = calls(&counts);
    common::wait_for("the next idle probe", Duration::from_secs(700), || {
        !heard.0.lock().unwrap().is_empty()
    })
    .await;
    let snapshot = worker.snapshot().remove(0);
    worker.shutdown().await;
    let signals = heard.0.lock().unwrap()[0];
    assert_eq!(
        snapshot.active_tasks, 0,
        "no task took a message: {snapshot:?}"
    );
    let now = calls(&counts);
    Found {
        signals,
        probe_calls: snapshot.probe_calls - before.probe_calls,
        store_calls: (now.0 - calls_before.0, now.1 - calls_before.1),
        snapshot,
    }
}

fn calls(c: &CallCounts) -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    (c.properties.load(Relaxed), c.peek.load(Relaxed))
}

/// 20 messages, 12 of them in flight at another replica: the count less what this replica
/// holds (nothing) leaves 20, at most 32, so a peek decides, and the depth is the 8 visible,
/// with and without an age rule (which then hears the oldest visible message's age too).
#[tokio::test(start_paused = true)]
async fn a_shallow_queue_s_depth_leaves_out_what_other_replicas_hold() {
    for age_rule in [false, true] {
        let found = first_probe(20, 12, age_rule).await;
        let Found {
            signals, snapshot, ..
        } = &found;
        assert_eq!(signals.depth, Some(8), "age rule {age_rule}: {signals:?}");
        assert_eq!(snapshot.depth, Some(8), "age rule {age_rule}: {snapshot:?}");
        assert_eq!(snapshot.held, 0, "{snapshot:?}");
        assert_eq!(
            found.store_calls,
            (1, 1),
            "a count and a peek, age rule {age_rule}"
        );
        assert_eq!(found.probe_calls, 2, "{snapshot:?}");
        assert!(
            signals
                .oldest_age
                .is_some_and(|a| a >= Duration::from_secs(590)),
            "the peek shows the oldest visible message's age: {signals:?}"
        );
    }
}

/// 100 messages, 30 in flight at another replica: more than 32 remain, so the count decides
/// (other replicas' in-flight messages included: no call tells how many) at one call, no peek,
/// when no age rule needs the oldest message's age.
#[tokio::test(start_paused = true)]
async fn a_deep_queue_s_depth_is_the_count_at_one_call_without_an_age_rule() {
    let found = first_probe(100, 30, false).await;
    let Found {
        signals, snapshot, ..
    } = &found;
    assert_eq!(signals.depth, Some(100), "{signals:?}");
    assert_eq!(snapshot.depth, Some(100), "{snapshot:?}");
    assert_eq!(signals.oldest_age, None, "{signals:?}");
    assert_eq!(found.store_calls, (1, 0), "the count alone");
    assert_eq!(found.probe_calls, 1, "{snapshot:?}");
}

/// The same deep queue with `scale_up_when_older_than`: the count still gives the depth, and a
/// peek of one gives the oldest visible message's age, which the age rule reads.
#[tokio::test(start_paused = true)]
async fn with_an_age_rule_a_deep_queue_is_peeked_for_its_oldest_message() {
    let found = first_probe(100, 30, true).await;
    let Found {
        signals, snapshot, ..
    } = &found;
    assert_eq!(signals.depth, Some(100), "{signals:?}");
    assert_eq!(snapshot.depth, Some(100), "{snapshot:?}");
    assert!(
        signals
            .oldest_age
            .is_some_and(|a| a >= Duration::from_secs(590)),
        "{signals:?}"
    );
    assert_eq!(found.store_calls, (1, 1), "a count and a peek of one");
    assert_eq!(found.probe_calls, 2, "{snapshot:?}");
}

/// Holds every message until released.
#[derive(Clone)]
struct Holding(Arc<tokio::sync::Semaphore>);

impl ebbflow::Handler for Holding {
    type Message = String;
    async fn handle(&self, _: String, _: Context) -> Result<(), HandlerError> {
        drop(self.0.acquire().await.unwrap());
        Ok(())
    }
}

/// Wants one task and hears every decision's signals.
#[derive(Debug, Default, Clone)]
struct OneTask(Arc<Mutex<Vec<Signals>>>);

impl ScalingPolicy for OneTask {
    fn decide(&self, _: &ebbflow::config::ScalingSettings, signals: &Signals) -> Decision {
        self.0.lock().unwrap().push(*signals);
        Decision {
            target: 1,
            reason: Reason::Policy("one task"),
        }
    }
}

/// The mixed case: this replica holds 40 messages in running handlers (its concurrency, so it
/// receives no more), another receiver holds 10 for an hour and 10 are visible. The count is
/// 60, more than 32, but less this replica's 40 it is 20, so a peek decides: the depth is the
/// 10 visible, not the 20 the count alone would give.
#[tokio::test(start_paused = true)]
async fn the_peek_decides_when_the_count_less_this_replica_s_messages_is_small() {
    let store = common::memory();
    let q = common::fresh_queue(&store, "mixed").await;
    let name = q.name().to_string();
    let send = |n: usize, tag: &'static str| {
        let q = q.clone();
        async move {
            for i in 0..n {
                let text = ebbflow::codec::Encoding::Base64
                    .encode(format!("{tag}{i}").as_bytes())
                    .unwrap();
                q.send(&text, Default::default()).await.unwrap();
            }
        }
    };
    send(40, "here").await;
    let mut s = Settings::default();
    let mut qs = QueueSettings::default();
    qs.concurrency = ebbflow::config::Concurrency::of::<40>();
    s.queues.insert(name.clone(), qs);
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let heard = OneTask::default();
    let worker = Worker::new(s)
        .with_store(store.clone())
        .scaling_policy(&name, heard.clone())
        .handler(&name, Holding(release.clone()))
        .start()
        .await
        .unwrap();
    common::wait_for("40 held here", Duration::from_secs(60), || {
        worker.snapshot()[0].held == 40
    })
    .await;
    heard.0.lock().unwrap().clear();
    send(20, "there").await;
    let mut taken = 0;
    while taken < 10 {
        taken += q
            .receive(10 - u8::try_from(taken).unwrap(), Duration::from_secs(3600))
            .await
            .unwrap()
            .len();
    }
    assert_eq!(q.approximate_depth().await.unwrap(), 60);
    common::wait_for("a probe", Duration::from_secs(60), || {
        heard.0.lock().unwrap().iter().any(|s| s.depth.is_some())
    })
    .await;
    let signals = *heard
        .0
        .lock()
        .unwrap()
        .iter()
        .find(|s| s.depth.is_some())
        .unwrap();
    let snapshot = worker.snapshot().remove(0);
    release.add_permits(1000);
    worker.shutdown().await;
    assert_eq!(snapshot.held, 40, "{snapshot:?}");
    assert_eq!(signals.depth, Some(10), "the 10 visible: {signals:?}");
    assert_eq!(snapshot.depth, Some(10), "{snapshot:?}");
}

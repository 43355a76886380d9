//! The whitepaper's host hooks: a host hears each listener's events (work detected, queue
//! empty, scaling with its reason) and may plug in its own scaling policy, on the embedded
//! store under tokio's paused clock.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebbflow::config::{BatchSize, Concurrency, MaxTasks, QueueSettings, ScalingSettings, Settings};
use ebbflow::listener::ListenerEvent;
use ebbflow::worker::{Decision, Prompt, Reason, ScalingPolicy, Signals, WorkerError};
use ebbflow::{Context, HandlerError, Publisher, Worker};

fn settings(queue: &str) -> Settings {
    let mut s = Settings::default();
    let mut q = QueueSettings::default();
    q.batch_size = BatchSize::of::<8>();
    q.concurrency = Concurrency::of::<32>();
    q.scaling.max_tasks = MaxTasks::of::<4>();
    s.queues.insert(queue.to_string(), q);
    s
}

async fn fill(store: &Arc<dyn ebbflow::store::QueueStore>, queue: &str, n: usize) {
    let q = store.queue(queue).unwrap();
    q.create_if_missing().await.unwrap();
    let publisher = Publisher::new(q, ebbflow::codec::Encoding::Base64);
    for i in 0..n {
        publisher
            .send_bytes(format!("m{i}").as_bytes(), Default::default())
            .await
            .unwrap();
    }
}

async fn slow(_: String, _: Context) -> Result<(), HandlerError> {
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

type Heard = Arc<Mutex<Vec<ListenerEvent>>>;

fn hear(heard: &Heard) -> impl Fn(&ListenerEvent) + Send + Sync + 'static {
    let heard = heard.clone();
    move |e: &ListenerEvent| heard.lock().unwrap().push(e.clone())
}

#[tokio::test(start_paused = true)]
async fn a_host_hears_work_detected_queue_empty_and_each_scaling_with_its_reason() {
    let store = common::memory();
    let queue = common::unique("hooks");
    fill(&store, &queue, 100).await;
    let heard = Heard::default();
    let worker = Worker::new(settings(&queue))
        .with_store(store.clone())
        .on_listener_event(hear(&heard))
        .handler_fn(&queue, slow)
        .start()
        .await
        .unwrap();
    common::wait_for("all handled", Duration::from_secs(120), || {
        worker.snapshot()[0].handled == 100
    })
    .await;
    // Idle long enough for the spare tasks to reach the back-off maximum and retire.
    tokio::time::sleep(Duration::from_secs(300)).await;
    worker.shutdown().await;
    let heard = heard.lock().unwrap().clone();
    let first_work = heard
        .iter()
        .position(|e| matches!(e, ListenerEvent::WorkDetected { queue: q, messages } if *q == queue && *messages > 0))
        .expect("work detected");
    let empty = heard
        .iter()
        .position(|e| matches!(e, ListenerEvent::QueueEmpty { queue: q } if *q == queue))
        .expect("queue empty");
    assert!(first_work < empty, "{heard:?}");
    let scaled: Vec<(u32, u32, Reason, Prompt)> = heard
        .iter()
        .filter_map(|e| match e {
            ListenerEvent::Scaled {
                from,
                to,
                reason,
                prompt,
                ..
            } => Some((*from, *to, *reason, *prompt)),
            _ => None,
        })
        .collect();
    assert!(
        scaled
            .iter()
            .any(|(from, to, reason, _)| to > from && *reason == Reason::FullBatch),
        "a full batch scaled up: {scaled:?}"
    );
    // Retired one at a time, by a shallow probe or at the idle back-off maximum.
    assert!(
        scaled
            .iter()
            .any(|(from, to, reason, prompt)| *to + 1 == *from
                && matches!(reason, Reason::Shallow(_) | Reason::Idle)
                && matches!(prompt, Prompt::Probe | Prompt::IdleAtMax)),
        "a task retired, with its reason: {scaled:?}"
    );
    assert_eq!(
        scaled.last().map(|s| s.1),
        Some(1),
        "down to the last task (min_tasks = 1): {scaled:?}"
    );
}

/// Always wants `self.0` tasks.
#[derive(Debug)]
struct Fixed(u32);

impl ScalingPolicy for Fixed {
    fn decide(&self, _: &ScalingSettings, _: &Signals) -> Decision {
        Decision {
            target: self.0,
            reason: Reason::Policy("fixed"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_custom_policy_decides_within_max_tasks() {
    let store = common::memory();
    let queue = common::unique("policy");
    fill(&store, &queue, 40).await;
    let heard = Heard::default();
    let worker = Worker::new(settings(&queue))
        .with_store(store.clone())
        .scaling_policy(&queue, Fixed(100))
        .on_listener_event(hear(&heard))
        .handler_fn(&queue, slow)
        .start()
        .await
        .unwrap();
    common::wait_for("all handled", Duration::from_secs(120), || {
        worker.snapshot()[0].handled == 40
    })
    .await;
    let snapshot = worker.snapshot().remove(0);
    worker.shutdown().await;
    assert_eq!(snapshot.peak_tasks, 4, "100 asked, max_tasks = 4 kept");
    let heard = heard.lock().unwrap().clone();
    assert!(
        heard.iter().any(|e| matches!(
            e,
            ListenerEvent::Scaled {
                from: 1,
                to: 4,
                reason: Reason::Policy("fixed"),
                ..
            }
        )),
        "the policy's own reason: {heard:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_policy_for_an_unknown_queue_is_a_start_up_error_naming_it() {
    let queue = common::unique("known");
    let err = Worker::new(settings(&queue))
        .with_store(common::memory())
        .scaling_policy("typo", Fixed(1))
        .handler_fn(&queue, slow)
        .start()
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, WorkerError::PolicyNotConfigured(q, _) if q == "typo"),
        "{err}"
    );
    assert!(err.to_string().contains("[queues.typo]"), "{err}");
}

/// A spare task retires at the idle back-off maximum, not before: after the queue drained, each
/// idle retirement comes once that task's sleeps have climbed the curve to `max` (30 s at the
/// defaults: the 8th or 9th empty receive in a row, more than 20 s after the first even with
/// the jitter at its lowest), and the count steps down to the last task. The depth probe is kept out of it (`depth_probe_interval` of an hour), so no
/// retirement is a shallow probe's.
#[tokio::test(start_paused = true)]
async fn an_idle_task_retires_only_once_its_back_off_reaches_the_maximum() {
    let store = common::memory();
    let queue = common::unique("idlemax");
    fill(&store, &queue, 100).await;
    let heard: Arc<Mutex<Vec<(tokio::time::Instant, ListenerEvent)>>> = Arc::default();
    let mut s = settings(&queue);
    s.queues
        .get_mut(&queue)
        .unwrap()
        .scaling
        .depth_probe_interval = Duration::from_secs(3600);
    let worker = Worker::new(s)
        .with_store(store.clone())
        .on_listener_event({
            let heard = heard.clone();
            move |e: &ListenerEvent| {
                heard
                    .lock()
                    .unwrap()
                    .push((tokio::time::Instant::now(), e.clone()))
            }
        })
        .handler_fn(&queue, slow)
        .start()
        .await
        .unwrap();
    common::wait_for("all handled", Duration::from_secs(120), || {
        worker.snapshot()[0].handled == 100
    })
    .await;
    tokio::time::sleep(Duration::from_secs(300)).await;
    worker.shutdown().await;
    let heard = heard.lock().unwrap().clone();
    let drained = heard
        .iter()
        .find(|(_, e)| matches!(e, ListenerEvent::QueueEmpty { .. }))
        .map(|(at, _)| *at)
        .expect("queue empty");
    let mut peak = 0;
    let mut retired = Vec::new();
    for (at, e) in &heard {
        if let ListenerEvent::Scaled {
            from, to, reason, ..
        } = e
        {
            peak = peak.max(*to);
            if to < from {
                assert_eq!(*reason, Reason::Idle, "{heard:?}");
                retired.push((*at - drained, *to));
            }
        }
    }
    assert!(peak > 1, "the backlog scaled up: {heard:?}");
    assert_eq!(retired.last().map(|r| r.1), Some(1), "{retired:?}");
    assert!(
        retired
            .iter()
            .all(|(after, _)| *after >= Duration::from_secs(20)),
        "a task retired before its back-off reached the maximum: {retired:?}"
    );
}

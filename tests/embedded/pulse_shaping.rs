//! Heartbeat defaults and pulse hooks on a running worker (embedded store and bus, paused
//! clock): a queue without its own `[queues.X.heartbeat]` pulses at the root `[heartbeat]`
//! interval while a queue's own value wins, and `Worker::pulse_hook` hears (to shape or
//! suppress) each of a queue handler's pulses.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebbflow::bus::jobs::JobRecord;
use ebbflow::codec::Encoding;
use ebbflow::config::{PulseEvery, QueueSettings, Settings};
use ebbflow::store::SendOptions;
use ebbflow::{Context, HandlerError, Worker};

use crate::common;

fn queue(edit: impl FnOnce(&mut QueueSettings)) -> QueueSettings {
    let mut q = QueueSettings::default();
    q.encoding = Encoding::None;
    edit(&mut q);
    q
}

/// A job of 25 s: pulses at a 10 s root interval are 2 (10 s, 20 s); at the queue's own 4 s
/// they are 6. Had the default not applied, `plain` would pulse 0 times; had it overridden the
/// queue's own value, `own` would pulse 2 times.
#[tokio::test(start_paused = true)]
async fn a_queue_without_its_own_heartbeat_pulses_at_the_root_interval() {
    let store = common::memory();
    let plain = common::fresh_queue(&store, "plain").await;
    let own = common::fresh_queue(&store, "own").await;
    plain.send("job", SendOptions::default()).await.unwrap();
    own.send("job", SendOptions::default()).await.unwrap();
    let mut s = Settings::default();
    s.heartbeat.interval = Some(Duration::from_secs(10));
    s.queues.insert(plain.name().to_string(), queue(|_| {}));
    s.queues.insert(
        own.name().to_string(),
        queue(|q| q.heartbeat.interval = Some(Duration::from_secs(4))),
    );
    let long = |_: String, _: Context| async {
        tokio::time::sleep(Duration::from_secs(25)).await;
        Ok::<(), HandlerError>(())
    };
    let worker = Worker::new(s)
        .with_store(store.clone())
        .handler_fn(plain.name(), long)
        .handler_fn(own.name(), long)
        .start()
        .await
        .unwrap();
    common::wait_for("both jobs done", Duration::from_secs(60), || {
        worker.snapshot().iter().all(|q| q.handled == 1)
    })
    .await;
    let pulses = |name: &str| {
        let snap = worker.snapshot();
        snap.iter().find(|q| q.queue == name).unwrap().pulses
    };
    assert_eq!(pulses(plain.name()), 2, "the root interval (10 s) applies");
    assert_eq!(pulses(own.name()), 6, "the queue's own interval (4 s) wins");
    worker.shutdown().await;
}

/// Four count pulses (`every = 1`): the queue's hook hears each one, with the job's record
/// (id `<queue>/<message id>`, the handler's count); what it returns decides whether the pulse
/// is stored and sent (the monitor's side of that is tested in tests/redis/bus_jobs.rs). A
/// suppressed pulse still counts as a pulse of the queue.
#[tokio::test(start_paused = true)]
async fn a_pulse_hook_hears_a_queue_handlers_pulses() {
    let store = common::memory();
    let q = common::fresh_queue(&store, "hooked").await;
    q.send("job", SendOptions::default()).await.unwrap();
    let mut s = Settings::default();
    s.queues.insert(
        q.name().to_string(),
        queue(|q| q.heartbeat.every = Some(PulseEvery::new(1).unwrap())),
    );
    let heard: Arc<Mutex<Vec<(String, u64, String)>>> = Arc::default();
    let seen = heard.clone();
    let worker = Worker::new(s)
        .with_store(store.clone())
        .handler_fn(q.name(), |_: String, ctx: Context| async move {
            for _ in 0..4 {
                ctx.heartbeat().add(1);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok::<(), HandlerError>(())
        })
        .pulse_hook(
            q.name(),
            Arc::new(move |r: &mut JobRecord| {
                r.text = format!("{} rows", r.count);
                seen.lock()
                    .unwrap()
                    .push((r.id.clone(), r.count, r.text.clone()));
                r.count_pulses.is_multiple_of(2)
            }),
        )
        .start()
        .await
        .unwrap();
    common::wait_for("the job done", Duration::from_secs(60), || {
        worker.snapshot()[0].handled == 1
    })
    .await;
    let heard = heard.lock().unwrap().clone();
    let prefix = format!("{}/", q.name());
    assert_eq!(heard.len(), 4, "one call per pulse: {heard:?}");
    for (i, (id, count, text)) in heard.iter().enumerate() {
        assert!(id.starts_with(&prefix), "{id}");
        assert_eq!(*count, i as u64 + 1);
        assert_eq!(*text, format!("{count} rows"));
    }
    assert_eq!(
        worker.snapshot()[0].pulses,
        4,
        "suppressed pulses still count"
    );
    worker.shutdown().await;
}

/// A hook for a queue config does not have stops the start, naming the queue.
#[tokio::test(start_paused = true)]
async fn a_pulse_hook_for_an_unknown_queue_is_a_start_up_error() {
    let mut s = Settings::default();
    s.queues.insert("orders".into(), queue(|_| {}));
    let err = Worker::new(s)
        .with_store(common::memory())
        .handler_fn("orders", |_: String, _: Context| async {
            Ok::<(), HandlerError>(())
        })
        .pulse_hook("ordres", Arc::new(|_: &mut JobRecord| true))
        .start()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ordres") && err.contains("pulse hook"),
        "{err}"
    );
}

//! A queue handler's pulses through `Worker::pulse_hook` on a real Redis: a pulse the queue's
//! hook refuses is kept out of the job records the worker stores and sends on the bus (the
//! monitor's side alone is tested in bus_jobs.rs; the hook's calls in the embedded binary's
//! pulse_shaping.rs, where the embedded bus cannot show the records to another member).

use crate::common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::redis::{member, redis_url, settings};
use ebbflow::bus::events::PulseKind;
use ebbflow::bus::jobs::{JobRecord, JobState};
use ebbflow::bus::{BusHandle, Filter, Name, RedisBus};
use ebbflow::codec::Encoding;
use ebbflow::config::{PulseEvery, QueueSettings};
use ebbflow::store::SendOptions;
use ebbflow::{Context, HandlerError, Worker};

/// A job of six count pulses (`every = 1`) on a queue whose hook keeps every third one and
/// rewrites its text. The records sent on the bus (`ebbflow.job`, seen by another connection)
/// are the START record, pulses 3 and 6 with the hook's text, and the end: the refused pulses
/// 1, 2, 4 and 5 never appear, though the counters of the records after them include them.
/// While the handler waits after pulse 5, the stored record is still pulse 3's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulse_the_queue_s_hook_refuses_is_kept_out_of_the_stored_and_sent_job_records() {
    let prefix = common::unique("hooked");
    let store = common::memory();
    let q = common::fresh_queue(&store, "hk").await;
    let mut s = ebbflow::Settings::default();
    s.bus = settings(&redis_url(), &prefix, "processor", Duration::from_secs(30));
    s.bus.instance_id = Some(Name::new("hooked-1").unwrap());
    let mut qs = QueueSettings::default();
    qs.encoding = Encoding::None;
    qs.heartbeat.every = Some(PulseEvery::new(1).unwrap());
    s.queues.insert(q.name().to_string(), qs);

    // Another connection on the same prefix: what a second process sees.
    let watcher = BusHandle::new(Arc::new(
        RedisBus::connect(
            &settings(&redis_url(), &prefix, "watch", Duration::from_secs(30)),
            member("watch-1", "watch"),
        )
        .await
        .unwrap(),
    ));
    let mut events = watcher.subscribe::<JobRecord>(Filter::new());
    watcher.start();

    let heard = Arc::new(AtomicU64::new(0));
    let go_on = Arc::new(tokio::sync::Notify::new());
    let (hook_heard, wait, pulsed) = (heard.clone(), go_on.clone(), heard.clone());
    let worker = Worker::new(s)
        .with_store(store.clone())
        .handler_fn(q.name(), move |_: String, ctx: Context| {
            let (wait, pulsed) = (wait.clone(), pulsed.clone());
            async move {
                // One unit at a time, each after the hook heard the previous pulse (count
                // pulses that come faster than the listener takes them are one pulse).
                let one = |n: u64| {
                    ctx.heartbeat().add(1);
                    let pulsed = pulsed.clone();
                    async move {
                        for _ in 0..2_000 {
                            if pulsed.load(Ordering::SeqCst) >= n {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        panic!("pulse {n} never reached the hook");
                    }
                };
                for n in 1..=5 {
                    one(n).await;
                }
                wait.notified().await;
                one(6).await;
                ctx.heartbeat().succeeded("6 rows");
                Ok::<(), HandlerError>(())
            }
        })
        .pulse_hook(
            q.name(),
            Arc::new(move |r: &mut JobRecord| {
                hook_heard.fetch_add(1, Ordering::SeqCst);
                r.text = format!("{} rows so far", r.count);
                r.count_pulses.is_multiple_of(3)
            }),
        )
        .start()
        .await
        .unwrap();
    q.send("job", SendOptions::default()).await.unwrap();

    // Pulses 1..=5 heard by the hook; the store holds pulse 3's record, the last one kept.
    common::wait_for("five pulses heard", Duration::from_secs(30), || {
        heard.load(Ordering::SeqCst) == 5
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let stored = loop {
        let list = watcher.transport().jobs().await.unwrap();
        if let Some(r) = list.into_iter().find(|r| r.count_pulses > 0) {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "no pulse stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (stored.count, stored.count_pulses, stored.text.as_str()),
        (3, 3, "3 rows so far"),
        "{stored:?}"
    );
    go_on.notify_one();

    // Every record sent, in order, until the end.
    let mut sent: Vec<JobRecord> = Vec::new();
    while sent.last().is_none_or(|r| r.state == JobState::Running) {
        let e = tokio::time::timeout(Duration::from_secs(30), events.next())
            .await
            .unwrap_or_else(|_| panic!("no end sent: {sent:?}"))
            .expect("the watcher's bus closed");
        sent.push(e.body);
    }
    let id = &sent[0].id;
    assert!(id.starts_with(&format!("{}/", q.name())), "{sent:?}");
    assert!(sent.iter().all(|r| &r.id == id), "one job: {sent:?}");
    let start = sent[0].text.clone();
    assert!(
        start.starts_with("message "),
        "the START record is not shaped: {start}"
    );
    // (state, last pulse, count, count pulses, text) of each record sent.
    let seen: Vec<_> = sent
        .iter()
        .map(|r| {
            (
                r.state,
                r.last_pulse,
                r.count,
                r.count_pulses,
                r.text.as_str(),
            )
        })
        .collect();
    let count = Some(PulseKind::Count);
    assert_eq!(
        seen,
        [
            (JobState::Running, None, 0, 0, start.as_str()),
            (JobState::Running, count, 3, 3, "3 rows so far"),
            (JobState::Running, count, 6, 6, "6 rows so far"),
            (JobState::Succeeded, count, 6, 6, start.as_str()),
        ],
        "{sent:?}"
    );
    assert_eq!(sent[3].note, "6 rows (result ok)", "{sent:?}");
    assert_eq!(heard.load(Ordering::SeqCst), 6);
    assert_eq!(worker.snapshot()[0].pulses, 6, "refused pulses still count");
    worker.shutdown().await;
    watcher.close().await;
}

//! Every message lives as long as its producer asked, in its queue or the poison queue, on
//! both backends: a copy made by a release on the last allowed try keeps the original's expiry
//! (never-expiring stays never-expiring), a poison copy lives `poison_ttl` (default never) and
//! at least what the original had left, and a requeue sends it back with what the poison copy
//! had left (at least 7 days).

use crate::common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebbflow::config::{QueueSettings, Settings};
use ebbflow::listener::poison::{PoisonEnvelope, PoisonQueue, Selection};
use ebbflow::store::{now_utc, QueueStore, SendOptions, TimeToLive};
use ebbflow::{Context, Handler, HandlerError};
use time::OffsetDateTime;

const DAY: Duration = Duration::from_secs(24 * 3600);

on_both_backends!(
    a_last_try_release_copy_and_its_poison_copy_keep_every_expiry,
    a_poison_copy_lives_at_least_what_its_original_had_left,
);

/// Releases each body on its first run, rejects it on its second.
#[derive(Clone, Default)]
struct ReleaseThenReject(Arc<Mutex<BTreeMap<String, u32>>>);

impl Handler for ReleaseThenReject {
    type Message = String;
    async fn handle(&self, body: String, _: Context) -> Result<(), HandlerError> {
        let runs = {
            let mut seen = self.0.lock().unwrap();
            let n = seen.entry(body).or_default();
            *n += 1;
            *n
        };
        if runs == 1 {
            Err(HandlerError::release(Duration::ZERO))
        } else {
            Err(HandlerError::poison("rejected on its second run"))
        }
    }
}

fn settings(queue: &str, poison_ttl: TimeToLive) -> Settings {
    let mut s = Settings::default();
    let mut q = QueueSettings::default();
    // Every first run is the last allowed try: a release makes a fresh copy.
    q.max_dequeue_count = ebbflow::config::MaxDequeueCount::of::<1>();
    q.encoding = ebbflow::codec::Encoding::None;
    q.poison_ttl = poison_ttl;
    s.queues.insert(queue.to_string(), q);
    s.validate().unwrap();
    s
}

fn close(a: Option<OffsetDateTime>, b: OffsetDateTime) -> bool {
    a.is_some_and(|a| (a - b).abs() <= time::Duration::seconds(5))
}

fn ttl(time_to_live: TimeToLive) -> SendOptions {
    SendOptions::default().with_time_to_live(time_to_live)
}

async fn a_last_try_release_copy_and_its_poison_copy_keep_every_expiry(store: Arc<dyn QueueStore>) {
    let q = common::fresh_queue(&store, "life").await;
    let name = q.name().to_string();
    let sent_at = now_utc();
    q.send("two-years", ttl(TimeToLive::After(730 * DAY)))
        .await
        .unwrap();
    q.send("forever", ttl(TimeToLive::Never)).await.unwrap();
    let s = settings(&name, TimeToLive::Never);
    let worker = common::start(&store, s.clone(), &name, ReleaseThenReject::default()).await;
    common::wait_for("both poisoned", Duration::from_secs(30), || {
        worker.snapshot()[0].poisoned == 2
    })
    .await;
    let snap = worker.shutdown().await.queues.remove(0);
    assert_eq!(snap.released, 2, "each released once, as a fresh copy");

    // The envelope holds the expiry of what was poisoned: the fresh copy, which kept the
    // original's.
    let poison = PoisonQueue::new(store.clone(), &name, &s.queues[&name]).unwrap();
    let records = poison.list(10).await.unwrap();
    let envelopes: BTreeMap<String, PoisonEnvelope> = records
        .into_iter()
        .map(|r| r.envelope.unwrap())
        .map(|e| (e.body.clone(), e))
        .collect();
    let two_years = &envelopes["two-years"];
    let want = sent_at + time::Duration::try_from(730 * DAY).unwrap();
    assert!(
        close(two_years.expires_at, want),
        "copy expires {:?}, the original {want}",
        two_years.expires_at
    );
    assert_eq!(envelopes["forever"].expires_at, None, "never stays never");
    // The poison copies never expire (poison_ttl's default).
    let raw = store.queue(poison.name()).unwrap();
    let held = raw.receive(32, Duration::from_secs(1)).await.unwrap();
    assert_eq!(held.len(), 2);
    assert!(held.iter().all(|m| m.expires_at.is_none()), "{held:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // A requeue sends them back never expiring (what their poison copies had left).
    let report = poison.requeue(&Selection::All).await.unwrap();
    assert_eq!(report.requeued.len(), 2);
    let back = q.receive(32, Duration::from_secs(30)).await.unwrap();
    assert_eq!(back.len(), 2);
    assert!(back.iter().all(|m| m.expires_at.is_none()), "{back:?}");
}

/// Rejects everything.
#[derive(Clone)]
struct Rejects;

impl Handler for Rejects {
    type Message = String;
    async fn handle(&self, _: String, _: Context) -> Result<(), HandlerError> {
        Err(HandlerError::poison("never acceptable"))
    }
}

async fn a_poison_copy_lives_at_least_what_its_original_had_left(store: Arc<dyn QueueStore>) {
    let q = common::fresh_queue(&store, "left").await;
    let name = q.name().to_string();
    let sent_at = now_utc();
    q.send("month", ttl(TimeToLive::After(30 * DAY)))
        .await
        .unwrap();
    q.send(
        "hour",
        ttl(TimeToLive::After(3600 * Duration::from_secs(1))),
    )
    .await
    .unwrap();
    // Poison copies are kept a week: the month-long one keeps its month.
    let s = settings(&name, TimeToLive::After(7 * DAY));
    let worker = common::start(&store, s.clone(), &name, Rejects).await;
    common::wait_for("both poisoned", Duration::from_secs(30), || {
        worker.snapshot()[0].poisoned == 2
    })
    .await;
    worker.shutdown().await;
    let poison = store
        .queue(&s.queues[&name].poison_queue_name(&name))
        .unwrap();
    let held = poison.receive(32, Duration::from_secs(30)).await.unwrap();
    assert_eq!(held.len(), 2);
    for m in held {
        let body = PoisonEnvelope::from_text(&m.text, ebbflow::codec::Encoding::None)
            .unwrap()
            .body;
        let lives = if body == "month" { 30 * DAY } else { 7 * DAY };
        let want = sent_at + time::Duration::try_from(lives).unwrap();
        assert!(
            close(m.expires_at, want),
            "{body}: poison copy expires {:?}, want {want}",
            m.expires_at
        );
    }
}

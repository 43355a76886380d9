//! The claim check end to end: a 5 MiB payload published from a producer is handled byte-exact
//! and its blob deleted after success; a poisoned one keeps its blob and comes back with a
//! requeue; a missing or tampered blob poisons with its reason; a lookalike reference from
//! another producer is not fetched; the orphan sweep removes a planted orphan and nothing else.
//! On the embedded store with in-memory blobs (paused clock) and on Azurite's queue and blob
//! services (real time, outcomes only).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebbflow::codec::Encoding;
use ebbflow::config::{QueueSettings, Settings};
use ebbflow::listener::poison::{PoisonQueue, PoisonReason, Selection};
use ebbflow::store::MemoryBlobs;
use ebbflow::store::{sweep, ClaimCheck, ClaimCheckSettings};
use ebbflow::store::{AzureBlobs, BlobStore, Blobs, META_EXPIRES, META_QUEUE};
use ebbflow::store::{LayeredStore, QueueStore};
use ebbflow::{Context, Handler, HandlerError, Worker};

use crate::common;

macro_rules! on_both_backends_with_blobs {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(start_paused = true)]
                async fn $name() {
                    super::$name(crate::common::memory(), super::memory_blobs()).await;
                }
            )*
        }
        mod azurite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::common::azurite(), super::azurite_blobs().await).await;
                }
            )*
        }
    };
}

on_both_backends_with_blobs!(
    a_5_mib_payload_is_handled_byte_exact_and_its_blob_deleted,
    a_poisoned_payload_keeps_its_blob_and_a_requeue_brings_it_back,
    a_poison_copy_with_a_time_to_live_keeps_its_blob_that_long,
    a_missing_or_tampered_blob_poisons_with_its_reason,
    a_missing_blob_is_poisoned_with_one_clear_log_line,
    a_lookalike_reference_from_another_producer_is_not_fetched,
    the_orphan_sweep_removes_a_planted_orphan_and_nothing_else,
);

fn memory_blobs() -> Blobs {
    Arc::new(MemoryBlobs::new(&common::unique("claim")))
}

/// A fresh container on the Azurite blob service `scripts/test` started.
async fn azurite_blobs() -> Blobs {
    let url = std::env::var("EBBFLOW_AZURITE_BLOB_URL").unwrap_or_else(|_| {
        panic!("EBBFLOW_AZURITE_BLOB_URL is not set: run the tests through scripts/test")
    });
    let cs = format!(
        "DefaultEndpointsProtocol=http;AccountName={};AccountKey={};BlobEndpoint={url}",
        ebbflow::store::DEV_ACCOUNT,
        ebbflow::store::DEV_KEY
    );
    let blobs = AzureBlobs::from_connection_string(&cs, &common::unique("claim")).unwrap();
    blobs.create_if_missing().await.unwrap();
    Arc::new(blobs)
}

fn settings(queue: &str) -> Settings {
    let mut s = Settings::default();
    let mut q = QueueSettings::default();
    q.idle_backoff.max = Duration::from_millis(500);
    q.max_dequeue_count = ebbflow::config::MaxDequeueCount::of::<3>();
    s.queues.insert(queue.to_string(), q);
    s.validate().unwrap();
    s
}

/// A payload of `len` bytes no compressor shortens much and no slice of which repeats.
fn payload(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Keeps every payload it gets; rejects (poisons) while `reject` is set.
#[derive(Clone, Default)]
struct Keeper {
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    reject: Arc<AtomicBool>,
}

impl Handler for Keeper {
    type Message = Vec<u8>;
    async fn handle(&self, body: Vec<u8>, _: Context) -> Result<(), HandlerError> {
        if self.reject.load(Ordering::SeqCst) {
            return Err(HandlerError::poison("not today"));
        }
        self.got.lock().unwrap().push(body);
        Ok(())
    }
}

async fn start(
    store: &Arc<dyn QueueStore>,
    blobs: &Blobs,
    queue: &str,
    handler: Keeper,
) -> ebbflow::worker::RunningWorker {
    Worker::new(settings(queue))
        .with_store(store.clone())
        .with_blobs(blobs.clone())
        .handler(queue, handler)
        .start()
        .await
        .unwrap()
}

/// A producer's store: the claim check on `store`, writing to `blobs`.
fn producer(store: &Arc<dyn QueueStore>, blobs: &Blobs) -> Arc<dyn QueueStore> {
    let claim = ClaimCheck::new(Some(blobs.clone()), &ClaimCheckSettings::default());
    LayeredStore::wrap(store.clone(), claim)
}

async fn a_5_mib_payload_is_handled_byte_exact_and_its_blob_deleted(
    store: Arc<dyn QueueStore>,
    blobs: Blobs,
) {
    let q = common::fresh_queue(&store, "claim").await;
    let name = q.name().to_string();
    let keeper = Keeper::default();
    let worker = start(&store, &blobs, &name, keeper.clone()).await;
    let body = payload(5 * 1024 * 1024);
    let publisher = worker.publisher(&name).unwrap();
    publisher
        .send_bytes(&body, Default::default())
        .await
        .unwrap();
    common::wait_for("handled", Duration::from_secs(60), || {
        worker.snapshot()[0].handled == 1
    })
    .await;
    let got = keeper.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert!(got[0] == body, "the handler got the payload byte-exact");
    assert!(
        blobs.list(&name).await.unwrap().is_empty(),
        "the blob is gone after success"
    );
    worker.shutdown().await;
}

async fn a_poisoned_payload_keeps_its_blob_and_a_requeue_brings_it_back(
    store: Arc<dyn QueueStore>,
    blobs: Blobs,
) {
    let q = common::fresh_queue(&store, "claim").await;
    let name = q.name().to_string();
    let keeper = Keeper::default();
    keeper.reject.store(true, Ordering::SeqCst);
    let worker = start(&store, &blobs, &name, keeper.clone()).await;
    let body = payload(300_000);
    let producer = producer(&store, &blobs);
    let publisher = ebbflow::Publisher::new(producer.queue(&name).unwrap(), Encoding::Base64);
    publisher
        .send_bytes(&body, Default::default())
        .await
        .unwrap();
    common::wait_for("poisoned", Duration::from_secs(60), || {
        worker.snapshot()[0].poisoned == 1
    })
    .await;
    let kept = blobs.list(&name).await.unwrap();
    assert_eq!(kept.len(), 1, "the blob stays with its poisoned message");
    assert_eq!(
        kept[0].metadata.get(META_EXPIRES).map(String::as_str),
        Some("never"),
        "it lives as long as the poison copy (poison_ttl never)"
    );
    let s = settings(&name);
    let poison = PoisonQueue::new(store.clone(), &name, &s.queues[&name]).unwrap();
    let records = poison.list(10).await.unwrap();
    let envelope = records[0].envelope.as_ref().unwrap();
    assert_eq!(envelope.reason, PoisonReason::Rejected);
    assert!(
        envelope.body.starts_with("{\"ebbflow_claim\":1"),
        "{}",
        envelope.body
    );
    keeper.reject.store(false, Ordering::SeqCst);
    let report = poison.requeue(&Selection::All).await.unwrap();
    assert_eq!(report.requeued.len(), 1);
    common::wait_for("handled after requeue", Duration::from_secs(60), || {
        worker.snapshot()[0].handled == 1
    })
    .await;
    assert!(keeper.got.lock().unwrap()[0] == body);
    assert!(blobs.list(&name).await.unwrap().is_empty());
    worker.shutdown().await;
}

/// With a finite `poison_ttl` (10 days here, longer than the 7 days the original had left), the
/// poisoned message's blob is kept until its poison copy expires, not a moment less: its expiry
/// is moved to now + 10 days, and the orphan sweep leaves it.
async fn a_poison_copy_with_a_time_to_live_keeps_its_blob_that_long(
    store: Arc<dyn QueueStore>,
    blobs: Blobs,
) {
    let q = common::fresh_queue(&store, "claimttl").await;
    let name = q.name().to_string();
    let keeper = Keeper::default();
    keeper.reject.store(true, Ordering::SeqCst);
    let ttl = Duration::from_secs(10 * 24 * 3600);
    let mut s = settings(&name);
    s.queues.get_mut(&name).unwrap().poison_ttl = ebbflow::store::TimeToLive::After(ttl);
    let worker = Worker::new(s)
        .with_store(store.clone())
        .with_blobs(blobs.clone())
        .handler(&name, keeper.clone())
        .start()
        .await
        .unwrap();
    let producer = producer(&store, &blobs);
    let publisher = ebbflow::Publisher::new(producer.queue(&name).unwrap(), Encoding::Base64);
    publisher
        .send_bytes(&payload(300_000), Default::default())
        .await
        .unwrap();
    common::wait_for("poisoned", Duration::from_secs(60), || {
        worker.snapshot()[0].poisoned == 1
    })
    .await;
    let kept = blobs.list(&name).await.unwrap();
    assert_eq!(kept.len(), 1, "the blob stays with its poisoned message");
    let expires = kept[0]
        .expires_at()
        .flatten()
        .expect("an expiry, as the poison copy has one");
    let left = expires - time::OffsetDateTime::now_utc();
    assert!(
        left > time::Duration::days(10) - time::Duration::minutes(5)
            && left <= time::Duration::days(10) + time::Duration::minutes(5),
        "kept {left} more, the poison copy lives 10 days"
    );
    let swept = sweep(&blobs, Duration::from_secs(3600), false)
        .await
        .unwrap();
    assert!(swept.orphans.is_empty(), "{swept:?}");
    assert_eq!(blobs.list(&name).await.unwrap().len(), 1);
    worker.shutdown().await;
}

async fn a_missing_or_tampered_blob_poisons_with_its_reason(
    store: Arc<dyn QueueStore>,
    blobs: Blobs,
) {
    let q = common::fresh_queue(&store, "claim").await;
    let name = q.name().to_string();
    let producer = producer(&store, &blobs);
    let pq = producer.queue(&name).unwrap();
    let text = |b: &[u8]| Encoding::Base64.encode(b).unwrap();
    pq.send(&text(&payload(100_000)), Default::default())
        .await
        .unwrap();
    pq.send(&text(&payload(120_000)), Default::default())
        .await
        .unwrap();
    let planted = blobs.list(&name).await.unwrap();
    assert_eq!(planted.len(), 2);
    // One deleted, the other overwritten with other bytes of the same length.
    blobs.delete(&planted[0].name).await.unwrap();
    let mut metadata = planted[1].metadata.clone();
    metadata.insert(META_QUEUE.into(), name.clone());
    let len = planted[1].size as usize;
    blobs
        .put(&planted[1].name, payload(len + 1)[1..].to_vec(), metadata)
        .await
        .unwrap();
    let keeper = Keeper::default();
    let worker = start(&store, &blobs, &name, keeper.clone()).await;
    common::wait_for("both poisoned", Duration::from_secs(60), || {
        worker.snapshot()[0].poisoned == 2
    })
    .await;
    assert!(keeper.got.lock().unwrap().is_empty());
    let s = settings(&name);
    let poison = PoisonQueue::new(store.clone(), &name, &s.queues[&name]).unwrap();
    let mut errors: Vec<String> = Vec::new();
    for r in poison.list(10).await.unwrap() {
        let e = r.envelope.unwrap();
        assert_eq!(e.reason, PoisonReason::PayloadUnavailable);
        assert_eq!(e.dequeue_count, 1, "poisoned at once, never retried");
        errors.push(e.error.unwrap_or_default());
    }
    errors.sort();
    assert!(
        errors.iter().any(|e| e.contains("is missing")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("SHA-256")), "{errors:?}");
    worker.shutdown().await;
}

/// A missing blob leads straight to the poison: one WARN line naming the queue, the message id,
/// the reason and the container/blob, and no warning before it (such as a failed attempt to
/// move the missing blob's expiry to the poison copy's).
async fn a_missing_blob_is_poisoned_with_one_clear_log_line(
    store: Arc<dyn QueueStore>,
    blobs: Blobs,
) {
    common::captured_logs();
    let q = common::fresh_queue(&store, "claim").await;
    let name = q.name().to_string();
    let producer = producer(&store, &blobs);
    let sent = producer
        .queue(&name)
        .unwrap()
        .send(
            &Encoding::Base64.encode(&payload(100_000)).unwrap(),
            Default::default(),
        )
        .await
        .unwrap();
    let blob = blobs.list(&name).await.unwrap()[0].name.clone();
    blobs.delete(&blob).await.unwrap();
    let worker = start(&store, &blobs, &name, Keeper::default()).await;
    common::wait_for("poisoned", Duration::from_secs(60), || {
        worker.snapshot()[0].poisoned == 1
    })
    .await;
    worker.shutdown().await;
    let logs = common::captured_logs();
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(&name) && (l.contains(" WARN ") || l.contains(" ERROR ")))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning for the message: {warnings:#?}"
    );
    let line = warnings[0];
    for part in [
        "message moved to poison queue",
        "payload_unavailable",
        &sent.id,
        &format!("{}/{blob}", blobs.container()),
        "is missing",
    ] {
        assert!(line.contains(part), "{part:?} missing from: {line}");
    }
}

async fn a_lookalike_reference_from_another_producer_is_not_fetched(
    store: Arc<dyn QueueStore>,
    blobs: Blobs,
) {
    let q = common::fresh_queue(&store, "claim").await;
    let name = q.name().to_string();
    // A real payload in our container, referenced as if from another container: a reader
    // that followed references anywhere would find and hand it over.
    let producer = producer(&store, &blobs);
    producer
        .queue(&name)
        .unwrap()
        .send(
            &Encoding::Base64.encode(&payload(80_000)).unwrap(),
            Default::default(),
        )
        .await
        .unwrap();
    let received = q.receive(1, Duration::from_secs(1)).await.unwrap();
    let reference = received[0].text.clone();
    q.delete(&received[0].id, &received[0].pop_receipt)
        .await
        .unwrap();
    let lookalike = reference.replace(
        &format!("\"container\":\"{}\"", blobs.container()),
        "\"container\":\"https://evil.example.com/x\"",
    );
    assert_ne!(lookalike, reference);
    q.send(&lookalike, Default::default()).await.unwrap();
    // Plain texts from other producers keep working beside it.
    q.send(
        &Encoding::Base64.encode(b"plain").unwrap(),
        Default::default(),
    )
    .await
    .unwrap();
    let keeper = Keeper::default();
    let worker = start(&store, &blobs, &name, keeper.clone()).await;
    common::wait_for("one handled, one poisoned", Duration::from_secs(60), || {
        let s = &worker.snapshot()[0];
        s.handled == 1 && s.poisoned == 1
    })
    .await;
    assert_eq!(keeper.got.lock().unwrap().clone(), vec![b"plain".to_vec()]);
    let s = settings(&name);
    let poison = PoisonQueue::new(store.clone(), &name, &s.queues[&name]).unwrap();
    let e = poison.list(10).await.unwrap()[0].envelope.clone().unwrap();
    assert_eq!(e.reason, PoisonReason::PayloadUnavailable);
    assert!(e.error.unwrap().contains("read only from"));
    worker.shutdown().await;
}

async fn the_orphan_sweep_removes_a_planted_orphan_and_nothing_else(
    store: Arc<dyn QueueStore>,
    blobs: Blobs,
) {
    let q = common::fresh_queue(&store, "claim").await;
    let name = q.name().to_string();
    let producer = producer(&store, &blobs);
    producer
        .queue(&name)
        .unwrap()
        .send(
            &Encoding::Base64.encode(&payload(90_000)).unwrap(),
            Default::default(),
        )
        .await
        .unwrap();
    let live = blobs.list(&name).await.unwrap()[0].name.clone();
    let mut metadata = BTreeMap::new();
    metadata.insert(META_QUEUE.to_string(), name.clone());
    metadata.insert(META_EXPIRES.to_string(), "2020-01-01T00:00:00Z".to_string());
    let orphan = format!("{name}/2020-01-01/orphan.bin");
    blobs.put(&orphan, vec![1, 2, 3], metadata).await.unwrap();
    let foreign = format!("{name}/not-ours.bin");
    blobs.put(&foreign, vec![4], BTreeMap::new()).await.unwrap();
    let week = Duration::from_secs(7 * 86_400);
    let dry = sweep(&blobs, week, true).await.unwrap();
    assert_eq!(dry.orphans.len(), 1);
    assert_eq!(blobs.list(&name).await.unwrap().len(), 3);
    let done = sweep(&blobs, week, false).await.unwrap();
    assert_eq!(done.orphans[0].name, orphan);
    let mut left: Vec<String> = blobs
        .list(&name)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.name)
        .collect();
    left.sort();
    let mut expected = vec![live, foreign];
    expected.sort();
    assert_eq!(left, expected);
}

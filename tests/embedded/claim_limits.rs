//! The claim check's payload limit at the send: a payload over
//! `storage.claim_check.max_payload_bytes` is refused by `Publisher::send*` and the `Producer`
//! with a typed error naming the queue, the size, the limit and the key, and nothing reaches
//! the queue or the blob container (a worker would only poison it).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ebbflow::config::{QueueSettings, Settings};
use ebbflow::handler::PublishError;
use ebbflow::store::{BlobStore, MemoryBlobs, StoreError};
use ebbflow::{Context, HandlerError, Worker};

use crate::common;

const LIMIT: u64 = 100_000;

fn settings(queue: &str) -> Settings {
    let mut s = Settings::default();
    s.storage.claim_check.max_payload_bytes = LIMIT;
    s.queues.insert(queue.to_string(), QueueSettings::default());
    s.validate().unwrap();
    s
}

/// The typed refusal, its fields and its words.
fn assert_refused(e: PublishError, queue: &str, size: u64) {
    let text = e.to_string();
    match e {
        PublishError::Store(StoreError::PayloadTooLarge {
            queue: q,
            size: s,
            limit,
            key,
        }) => {
            assert_eq!((q.as_str(), s, limit), (queue, size, LIMIT));
            assert_eq!(key, "storage.claim_check.max_payload_bytes");
        }
        other => panic!("not PayloadTooLarge: {other:?}"),
    }
    for part in [
        queue,
        &size.to_string(),
        &LIMIT.to_string(),
        "storage.claim_check.max_payload_bytes",
    ] {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_publisher_refuses_a_payload_over_max_payload_bytes_and_nothing_is_sent() {
    let store = common::memory();
    let queue = common::unique("limit");
    let blobs = MemoryBlobs::new("ebbflow-payloads");
    let handled = Arc::new(AtomicUsize::new(0));
    let counted = handled.clone();
    let worker = Worker::new(settings(&queue))
        .with_store(store.clone())
        .with_blobs(Arc::new(blobs.clone()))
        .handler_fn(&queue, move |_: Vec<u8>, _: Context| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await
        .unwrap();
    let publisher = worker.publisher(&queue).unwrap();
    let over = vec![7u8; LIMIT as usize + 1];
    let e = publisher
        .send_bytes(&over, Default::default())
        .await
        .unwrap_err();
    assert_refused(e, &queue, LIMIT + 1);
    let e = publisher
        .send_many([(over.clone(), Default::default())])
        .await
        .unwrap_err();
    assert_refused(e, &queue, LIMIT + 1);
    assert!(blobs.list("").await.unwrap().is_empty(), "nothing uploaded");
    assert_eq!(
        store
            .queue(&queue)
            .unwrap()
            .approximate_depth()
            .await
            .unwrap(),
        0,
        "nothing enqueued"
    );
    // At the limit it goes, through a blob, and is handled.
    publisher
        .send_bytes(&vec![7u8; LIMIT as usize], Default::default())
        .await
        .unwrap();
    common::wait_for("handled", Duration::from_secs(30), || {
        handled.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(worker.snapshot()[0].poisoned, 0);
    worker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_producer_refuses_a_payload_over_max_payload_bytes() {
    let store = common::memory();
    let queue = common::unique("limit");
    let producer = ebbflow::worker::Producer::connect_to(settings(&queue), store.clone())
        .await
        .unwrap();
    let over = vec![1u8; LIMIT as usize + 10];
    let e = producer
        .publisher(&queue)
        .unwrap()
        .send_bytes(&over, Default::default())
        .await
        .unwrap_err();
    assert_refused(e, &queue, LIMIT + 10);
    assert_eq!(
        store
            .queue(&queue)
            .unwrap()
            .approximate_depth()
            .await
            .unwrap(),
        0
    );
    producer.close().await;
}

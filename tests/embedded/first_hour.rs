//! A new user's first hour (issue 24): the traps that used to go wrong silently now stop at
//! once with an error naming what to set.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ebbflow::config::{QueueSettings, Settings};
use ebbflow::store::{BlobError, BlobInfo, BlobStore};
use ebbflow::worker::{Producer, WorkerError};
use ebbflow::{HandlerError, Worker};

fn with_orders() -> Settings {
    let mut s = Settings::default();
    s.queues.insert("orders".into(), QueueSettings::default());
    s.validate().unwrap();
    s
}

/// A producer on default settings used to open a private embedded store (its sends lost to
/// every worker) or fail with `QueueNotFound`; now it says no storage is configured and how
/// to configure it.
#[tokio::test]
async fn a_producer_without_storage_says_no_storage_configured() {
    let e = Producer::connect(with_orders()).await.unwrap_err();
    assert!(matches!(e, WorkerError::NoStorage), "{e:?}");
    let text = e.to_string();
    for needed in [
        "no storage configured",
        "AZURE_STORAGE_CONNECTION_STRING",
        "storage.connection_string",
        "storage.queue_endpoint",
        "Producer::connect_to",
    ] {
        assert!(text.contains(needed), "{needed}: {text}");
    }
    // Sharing a worker's embedded store on purpose still works.
    let producer = Producer::connect_to(with_orders(), crate::common::memory())
        .await
        .unwrap();
    assert!(producer.publisher("orders").is_some());
    producer.close().await;
}

/// A blob service that accepts the call and never answers (Azurite's queue service started
/// alone, with `UseDevelopmentStorage=true` pointing the claim check at a blob port).
struct SilentBlobs;

#[async_trait::async_trait]
impl BlobStore for SilentBlobs {
    fn container(&self) -> &str {
        "ebbflow-payloads"
    }
    async fn create_if_missing(&self) -> Result<(), BlobError> {
        std::future::pending().await
    }
    async fn put(&self, _: &str, _: Vec<u8>, _: BTreeMap<String, String>) -> Result<(), BlobError> {
        std::future::pending().await
    }
    async fn get(&self, _: &str, _: u64) -> Result<Vec<u8>, BlobError> {
        std::future::pending().await
    }
    async fn set_expiry(&self, _: &str, _: &str) -> Result<(), BlobError> {
        std::future::pending().await
    }
    async fn delete(&self, _: &str) -> Result<bool, BlobError> {
        std::future::pending().await
    }
    async fn list(&self, _: &str) -> Result<Vec<BlobInfo>, BlobError> {
        std::future::pending().await
    }
}

/// Start-up used to wait silently for the SDK's retries (82 s measured) when the claim check's
/// blob endpoint did not answer; now it stops within `storage.startup_timeout`, saying what to
/// start or set.
#[tokio::test(start_paused = true)]
async fn a_silent_blob_service_stops_start_up_within_the_startup_timeout() {
    let started = tokio::time::Instant::now();
    let e = Worker::new(with_orders())
        .with_store(crate::common::memory())
        .with_blobs(Arc::new(SilentBlobs))
        .handler_fn("orders", |_: String, _| async {
            Ok::<(), HandlerError>(())
        })
        .start()
        .await
        .expect_err("start-up fails");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
        "{waited:?}"
    );
    let text = e.to_string();
    for needed in [
        "storage.claim_check",
        "did not answer within 10s",
        "ebbflow-payloads",
        "azurite-blob",
        "storage.claim_check.blob_endpoint",
        "storage.claim_check.enabled = false",
    ] {
        assert!(text.contains(needed), "{needed}: {text}");
    }
}

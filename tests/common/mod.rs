//! Helpers shared by the integration tests: the Azurite the test script started, unique
//! queue names, and waiting on a condition.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use ebbflow::store::azure::{AzureStore, DEV_ACCOUNT, DEV_KEY};
use ebbflow::store::memory::MemoryStore;
use ebbflow::store::{Queue, QueueStore};

/// The queue endpoint of the Azurite started by `scripts/test`.
pub fn azurite_url() -> String {
    std::env::var("EBBFLOW_AZURITE_URL").unwrap_or_else(|_| {
        panic!(
            "EBBFLOW_AZURITE_URL is not set: the Azurite tests need the Azurite that \
             scripts/test installs and starts; run scripts/test (the README's test command)"
        )
    })
}

/// An account-key connection string for the test Azurite.
pub fn azurite_connection_string() -> String {
    format!(
        "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};QueueEndpoint={}",
        azurite_url()
    )
}

/// The test Azurite through an account-key connection string (our SAS signing policy).
pub fn azurite() -> Arc<dyn QueueStore> {
    Arc::new(AzureStore::from_connection_string(&azurite_connection_string()).unwrap())
}

/// A fresh embedded store.
pub fn memory() -> Arc<dyn QueueStore> {
    Arc::new(MemoryStore::new())
}

/// A queue name no other test uses.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("t-{prefix}-{}", &id[..12])
}

/// A new, created queue on `store`.
pub async fn fresh_queue(store: &Arc<dyn QueueStore>, prefix: &str) -> Arc<dyn Queue> {
    let q = store.queue(&unique(prefix)).unwrap();
    q.create_if_missing().await.unwrap();
    q
}

/// Starts a worker with one handler on `store`.
pub async fn start(
    store: &Arc<dyn QueueStore>,
    settings: ebbflow::Settings,
    queue: &str,
    handler: impl ebbflow::Handler,
) -> ebbflow::worker::RunningWorker {
    ebbflow::Worker::new(settings)
        .with_store(store.clone())
        .handler(queue, handler)
        .start()
        .await
        .unwrap()
}

/// Polls `check` every 20 ms (tokio time) until it holds; panics after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Generates, for each named `async fn(Arc<dyn QueueStore>)` in the calling file, one test on
/// the embedded store under tokio's paused clock (module `embedded`) and one on the test
/// Azurite in real time (module `azurite`).
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(start_paused = true)]
                async fn $name() {
                    super::$name($crate::common::memory()).await;
                }
            )*
        }
        mod azurite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::azurite()).await;
                }
            )*
        }
    };
}

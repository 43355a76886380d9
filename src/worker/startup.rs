//! Start-up's storage check: every configured queue and its poison queue created (when asked)
//! and read once, all within `storage.startup_timeout`, so a wrong endpoint stops start-up in
//! seconds with an error that says what to check.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::info;

use super::WorkerError;
use crate::config::{OutputSettings, Settings};
use crate::store::{Queue, QueueStore, StoreError};

/// Each configured queue with its poison queue, checked.
pub(super) type Checked = BTreeMap<String, (Arc<dyn Queue>, Arc<dyn Queue>)>;

/// Opens every configured queue and its poison queue, creates them when `create` is set, and
/// reads each one's properties once (proving it exists and the credentials work), within
/// `storage.startup_timeout`.
pub(super) async fn check_queues(
    store: &Arc<dyn QueueStore>,
    settings: &Settings,
    create: bool,
) -> Result<Checked, WorkerError> {
    let waited = settings.storage.startup_timeout;
    info!(
        queues = settings.queues.len(),
        create_queues = create,
        "checking the queues"
    );
    let mut checking = String::new();
    let checked = tokio::time::timeout(waited, async {
        let mut checked = Checked::new();
        for (name, queue_settings) in &settings.queues {
            let queue = store.queue(name)?;
            let poison_queue = store.queue(&queue_settings.poison_queue_name(name))?;
            for q in [&queue, &poison_queue] {
                checking = q.name().to_string();
                if create {
                    q.create_if_missing().await?;
                }
                // One properties call per queue: proves the queue exists and the credentials
                // work before any task starts.
                q.approximate_depth().await.map_err(|e| match e {
                    StoreError::QueueNotFound { queue } => WorkerError::MissingQueue(queue),
                    e => WorkerError::Store(e),
                })?;
            }
            checked.insert(name.clone(), (queue, poison_queue));
        }
        Ok::<_, WorkerError>(checked)
    })
    .await;
    checked.unwrap_or_else(|_| {
        Err(WorkerError::StartupTimeout {
            waited,
            queue: checking,
        })
    })
}

/// Each output-only queue with its settings, checked.
pub(super) type Outputs = BTreeMap<String, (Arc<dyn Queue>, OutputSettings)>;

/// Opens every output-only queue of `wanted` (`[outputs.<queue>]` sections and
/// `Worker::output` names), creates it when `create` is set, and reads its properties once,
/// all within `storage.startup_timeout`: a misspelt output that does not exist stops the
/// start naming it.
pub(super) async fn check_outputs(
    store: &Arc<dyn QueueStore>,
    settings: &Settings,
    wanted: BTreeMap<String, OutputSettings>,
    create: bool,
) -> Result<Outputs, WorkerError> {
    let waited = settings.storage.startup_timeout;
    let mut checking = String::new();
    let checked = tokio::time::timeout(waited, async {
        let mut checked = Outputs::new();
        for (name, output) in wanted {
            checking.clone_from(&name);
            let queue = open_output(store, &name, create).await?;
            checked.insert(name, (queue, output));
        }
        Ok::<_, WorkerError>(checked)
    })
    .await;
    checked.unwrap_or_else(|_| {
        Err(WorkerError::StartupTimeout {
            waited,
            queue: checking,
        })
    })
}

/// An output-only queue, created when `create`, proven to exist by one properties call.
async fn open_output(
    store: &Arc<dyn QueueStore>,
    name: &str,
    create: bool,
) -> Result<Arc<dyn Queue>, WorkerError> {
    let queue = store.queue(name)?;
    if create {
        queue.create_if_missing().await?;
    }
    queue.approximate_depth().await.map_err(|e| match e {
        StoreError::QueueNotFound { .. } => WorkerError::MissingOutput(name.to_string()),
        e => WorkerError::Store(e),
    })?;
    Ok(queue)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::QueueSettings;
    use crate::store::memory::MemoryStore;
    use crate::store::{Layered, LayeredStore, Operation, QueueLayer, StoreLayer};
    use std::future::Future;
    use std::time::Duration;

    /// Calls that never answer: an endpoint that accepts connections and stays silent.
    #[derive(Clone)]
    struct Silent;

    impl QueueLayer for Silent {
        fn around<T: Send>(
            &self,
            _queue: &str,
            _operation: Operation,
            _call: impl Future<Output = Result<T, StoreError>> + Send,
        ) -> impl Future<Output = Result<T, StoreError>> + Send {
            std::future::pending()
        }
    }

    impl StoreLayer for Silent {
        fn wrap(&self, queue: Arc<dyn Queue>) -> Arc<dyn Queue> {
            Layered::wrap(queue, self.clone())
        }
    }

    fn settings() -> Settings {
        let mut settings = Settings::default();
        settings
            .queues
            .insert("orders".into(), QueueSettings::default());
        settings
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_endpoint_stops_start_up_after_the_startup_timeout() {
        let store = LayeredStore::wrap(Arc::new(MemoryStore::new()), Silent);
        let start = tokio::time::Instant::now();
        let Err(e) = check_queues(&store, &settings(), true).await else {
            panic!("a silent store passed the check")
        };
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(10),
            "the default bound"
        );
        assert!(
            matches!(&e, WorkerError::StartupTimeout { queue, .. } if queue == "orders"),
            "{e:?}"
        );
        assert!(e.to_string().contains("storage.startup_timeout"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn every_queue_and_poison_queue_is_created_and_checked() {
        let store: Arc<dyn QueueStore> = Arc::new(MemoryStore::new());
        let checked = check_queues(&store, &settings(), true).await.unwrap();
        let (q, p) = &checked["orders"];
        assert_eq!((q.name(), p.name()), ("orders", "orders-poison"));
        // Without create_queues, a missing queue is named.
        let empty: Arc<dyn QueueStore> = Arc::new(MemoryStore::new());
        let Err(e) = check_queues(&empty, &settings(), false).await else {
            panic!("a missing queue passed the check")
        };
        assert!(matches!(e, WorkerError::MissingQueue(q) if q == "orders"));
    }
}

//! The retrying layer over `Lossy`, a double that does the work of an embedded queue and then
//! loses the answer, as a cut connection would.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::store::memory::MemoryStore;
use crate::store::{BackendKind, Operation};

/// Loses the answers of the first `lose` calls of one operation; every other call passes.
#[derive(Clone)]
struct Lossy {
    operation: Operation,
    lose: Arc<AtomicU32>,
}

impl QueueLayer for Lossy {
    async fn around<T: Send>(
        &self,
        queue: &str,
        operation: Operation,
        call: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> Result<T, StoreError> {
        let result = call.await;
        let lost = operation == self.operation
            && self
                .lose
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if lost {
            return Err(StoreError::Unanswered {
                queue: queue.into(),
                detail: "connection reset".into(),
                source: None,
            });
        }
        result
    }
}

impl StoreLayer for Lossy {
    fn wrap(&self, queue: Arc<dyn Queue>) -> Arc<dyn Queue> {
        Layered::wrap(queue, self.clone())
    }

    /// Taken for a remote store, so the retrying layer goes on it.
    fn kind(&self, _inner: &dyn QueueStore) -> BackendKind {
        BackendKind::Azure
    }
}

/// A retrying store over a lossy embedded queue `q` holding `messages` messages, and a
/// handle on the embedded queue itself.
async fn setup(
    operation: Operation,
    lose: u32,
    messages: usize,
) -> (Arc<dyn QueueStore>, Arc<dyn Queue>) {
    let memory: Arc<dyn QueueStore> = Arc::new(MemoryStore::new());
    let direct = memory.queue("qqq").unwrap();
    direct.create_if_missing().await.unwrap();
    for i in 0..messages {
        direct
            .send(&format!("m{i}"), SendOptions::default())
            .await
            .unwrap();
    }
    let lossy = LayeredStore::wrap(
        memory,
        Lossy {
            operation,
            lose: Arc::new(AtomicU32::new(lose)),
        },
    );
    let settings = RetrySettings {
        min_delay: Duration::from_millis(10),
        ..RetrySettings::default()
    };
    let store = RetryingStore::wrap(lossy, settings);
    (store, direct)
}

#[tokio::test(start_paused = true)]
async fn a_delete_whose_answer_was_lost_is_done() {
    let (store, direct) = setup(Operation::Delete, 1, 1).await;
    let q = store.queue("qqq").unwrap();
    let m = q
        .receive(1, Duration::from_secs(30))
        .await
        .unwrap()
        .remove(0);
    q.delete(&m.id, &m.pop_receipt).await.unwrap();
    assert_eq!(direct.approximate_depth().await.unwrap(), 0);
    let counted = store.unknown_outcomes("qqq");
    assert_eq!(
        counted,
        UnknownOutcomes {
            deletes_confirmed: 1,
            ..Default::default()
        }
    );
    // Without a lost try, a 404 is still lost ownership.
    let err = q.delete(&m.id, &m.pop_receipt).await.unwrap_err();
    assert!(matches!(err, StoreError::MessageNotFound { .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn an_update_whose_answer_was_lost_is_in_doubt() {
    let (store, _direct) = setup(Operation::Update, 1, 1).await;
    let q = store.queue("qqq").unwrap();
    let m = q
        .receive(1, Duration::from_secs(30))
        .await
        .unwrap()
        .remove(0);
    let err = q
        .update(&m.id, &m.pop_receipt, Duration::from_secs(30), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::InDoubt { ref id, .. } if *id == m.id),
        "{err}"
    );
    assert!(!err.is_transient());
    assert_eq!(store.unknown_outcomes("qqq").updates_in_doubt, 1);
}

#[tokio::test(start_paused = true)]
async fn a_send_whose_answer_was_lost_is_stored_twice_and_counted() {
    let (store, direct) = setup(Operation::Send, 1, 0).await;
    store
        .queue("qqq")
        .unwrap()
        .send("once", SendOptions::default())
        .await
        .unwrap();
    assert_eq!(direct.peek(32).await.unwrap().len(), 2, "stored twice");
    assert_eq!(store.unknown_outcomes("qqq").sends, 1);
}

#[tokio::test(start_paused = true)]
async fn a_receive_whose_answer_was_lost_hides_its_messages_for_one_timeout() {
    let (store, _direct) = setup(Operation::Receive, 1, 3).await;
    let q = store.queue("qqq").unwrap();
    let got = q.receive(32, Duration::from_secs(5)).await.unwrap();
    assert!(got.is_empty(), "the lost try took all three");
    assert_eq!(store.unknown_outcomes("qqq").receives, 1);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let back = q.receive(32, Duration::from_secs(5)).await.unwrap();
    assert_eq!(back.len(), 3);
    assert!(
        back.iter().all(|m| m.dequeue_count == 2),
        "a dequeue nobody saw"
    );
}

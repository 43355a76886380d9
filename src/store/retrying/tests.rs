//! The retrying layer over `Lossy`, a double that does the work of an embedded queue and then
//! loses the answer, as a cut connection would, or refuses it before doing it, as a busy
//! service does.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::store::memory::MemoryStore;
use crate::store::{BackendKind, Operation};

/// Loses the answers of the first `lose` calls of one operation (or refuses them, per
/// `fault`); every other call passes.
#[derive(Clone)]
struct Lossy {
    operation: Operation,
    lose: Arc<AtomicU32>,
    fault: Fault,
}

/// What [`Lossy`] does to a call it hits.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    /// The call is done and its answer lost (a cut connection): unanswered.
    LostAnswer,
    /// The call is refused before it is done (503 Server Busy): transient.
    Busy,
}

impl QueueLayer for Lossy {
    async fn around<T: Send>(
        &self,
        queue: &str,
        operation: Operation,
        call: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> Result<T, StoreError> {
        let lost = operation == self.operation
            && self
                .lose
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if lost && self.fault == Fault::Busy {
            return Err(StoreError::Transient {
                queue: queue.into(),
                detail: "503 ServerBusy".into(),
                source: None,
            });
        }
        let result = call.await;
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

/// Counts the events logged at each level while it is the thread's subscriber.
#[derive(Clone, Default)]
pub(super) struct Levels(std::sync::Arc<std::sync::Mutex<Vec<tracing::Level>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Levels {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        self.0.lock().unwrap().push(*event.metadata().level());
    }
}

impl Levels {
    /// Counts this thread's events until the guard is dropped.
    fn watch(&self) -> tracing::subscriber::DefaultGuard {
        use tracing_subscriber::layer::SubscriberExt;
        tracing::subscriber::set_default(tracing_subscriber::registry().with(self.clone()))
    }

    pub(super) fn count(&self, level: tracing::Level) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| **l == level)
            .count()
    }
}

/// A retrying store over a lossy embedded queue `q` holding `messages` messages, and a
/// handle on the embedded queue itself.
async fn setup(
    operation: Operation,
    lose: u32,
    messages: usize,
) -> (Arc<dyn QueueStore>, Arc<dyn Queue>) {
    setup_with(Fault::LostAnswer, operation, lose, messages).await
}

/// [`setup`] with the fault chosen.
async fn setup_with(
    fault: Fault,
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
            fault,
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
    let levels = Levels::default();
    let watching = levels.watch();
    store
        .queue("qqq")
        .unwrap()
        .send("once", SendOptions::default())
        .await
        .unwrap();
    assert_eq!(direct.peek(32).await.unwrap().len(), 2, "stored twice");
    assert_eq!(store.unknown_outcomes("qqq").sends, 1);
    drop(watching);
    // One fault, one WARN line (the unanswered send's, with the tries), not two.
    assert_eq!(levels.count(tracing::Level::WARN), 1);
}

#[tokio::test(start_paused = true)]
async fn a_receive_whose_answer_was_lost_hides_its_messages_for_one_timeout() {
    let (store, _direct) = setup(Operation::Receive, 1, 3).await;
    let q = store.queue("qqq").unwrap();
    let levels = Levels::default();
    let watching = levels.watch();
    let got = q.receive(32, Duration::from_secs(5)).await.unwrap();
    drop(watching);
    assert_eq!(levels.count(tracing::Level::WARN), 1, "one fault, one line");
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

/// Without a fault every call passes through once: each answers what the store did (the
/// queue created, the depth, the peeked texts, the deletes done), nothing is counted as an
/// unknown outcome and nothing is logged at warn or info.
#[tokio::test(start_paused = true)]
async fn calls_without_a_fault_pass_through_uncounted_and_quiet() {
    let levels = Levels::default();
    let _watching = levels.watch();
    let (store, _direct) = setup(Operation::Delete, 0, 0).await;
    let q = store.queue("fresh").unwrap();
    q.create_if_missing().await.unwrap();
    q.send("a", SendOptions::default()).await.unwrap();
    q.send("b", SendOptions::default()).await.unwrap();
    assert_eq!(q.approximate_depth().await.unwrap(), 2);
    let peeked: Vec<String> = q
        .peek(32)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(peeked, ["a", "b"]);
    let got = q.receive(32, Duration::from_secs(30)).await.unwrap();
    assert_eq!(got.len(), 2);
    let updated = q
        .update(
            &got[0].id,
            &got[0].pop_receipt,
            Duration::from_secs(30),
            None,
        )
        .await
        .unwrap();
    q.delete(&got[0].id, &updated.pop_receipt).await.unwrap();
    let lease_ends = Instant::now() + Duration::from_secs(30);
    q.delete_within(&got[1].id, &got[1].pop_receipt, lease_ends)
        .await
        .unwrap();
    assert_eq!(q.approximate_depth().await.unwrap(), 0);
    assert_eq!(store.unknown_outcomes("fresh"), UnknownOutcomes::default());
    let logged = levels.count(tracing::Level::WARN) + levels.count(tracing::Level::INFO);
    assert_eq!(logged, 0);
}

/// A create whose answer was lost is retried, and the queue is there.
#[tokio::test(start_paused = true)]
async fn a_create_whose_answer_was_lost_is_retried() {
    let (store, direct) = setup(Operation::Create, 1, 0).await;
    let q = store.queue("made").unwrap();
    q.create_if_missing().await.unwrap();
    q.send("x", SendOptions::default()).await.unwrap();
    assert_eq!(
        direct.approximate_depth().await.unwrap(),
        0,
        "another queue"
    );
    assert_eq!(q.approximate_depth().await.unwrap(), 1);
}

/// A stale pop receipt without a lost try is lost ownership, as the service said: only a
/// retry after an unanswered try is in doubt.
#[tokio::test(start_paused = true)]
async fn a_stale_receipt_without_a_lost_try_is_lost_ownership() {
    let (store, _direct) = setup(Operation::Update, 0, 1).await;
    let q = store.queue("qqq").unwrap();
    let m = q
        .receive(1, Duration::from_secs(30))
        .await
        .unwrap()
        .remove(0);
    let visibility = Duration::from_secs(30);
    q.update(&m.id, &m.pop_receipt, visibility, None)
        .await
        .unwrap();
    let err = q
        .update(&m.id, &m.pop_receipt, visibility, None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::MessageNotFound { .. }), "{err}");
    assert_eq!(store.unknown_outcomes("qqq"), UnknownOutcomes::default());
}

/// A delete within its message's lease whose answer was lost is done (the retry's 404 means
/// the lost try deleted it); a busy service is retried past the retry budget while the lease
/// lasts, and only a delete that needed more tries than the budget is logged (at info).
#[tokio::test(start_paused = true)]
async fn a_delete_within_the_lease_outlasts_the_budget_and_knows_a_lost_answer() {
    let lease = Duration::from_secs(60);
    let (store, direct) = setup(Operation::Delete, 1, 1).await;
    let q = store.queue("qqq").unwrap();
    let m = q.receive(1, lease).await.unwrap().remove(0);
    q.delete_within(&m.id, &m.pop_receipt, Instant::now() + lease)
        .await
        .unwrap();
    assert_eq!(direct.approximate_depth().await.unwrap(), 0);
    assert_eq!(store.unknown_outcomes("qqq").deletes_confirmed, 1);
    let err = q
        .delete_within(&m.id, &m.pop_receipt, Instant::now() + lease)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::MessageNotFound { .. }), "{err}");

    let budget = RetrySettings::default().max_attempts;
    for (busy, logged) in [(0, 0), (budget - 1, 0), (budget, 1)] {
        let levels = Levels::default();
        let _watching = levels.watch();
        let (store, direct) = setup_with(Fault::Busy, Operation::Delete, busy, 1).await;
        let q = store.queue("qqq").unwrap();
        let m = q.receive(1, lease).await.unwrap().remove(0);
        q.delete_within(&m.id, &m.pop_receipt, Instant::now() + lease)
            .await
            .unwrap();
        assert_eq!(direct.approximate_depth().await.unwrap(), 0);
        let info = levels.count(tracing::Level::INFO);
        assert_eq!(info, logged, "{busy} busy answers before the delete");
    }
}

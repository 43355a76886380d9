//! Unknown outcomes, against Azurite behind the fault proxy: a slow service answers before our
//! cut-off (so nothing is left in doubt), and each call whose answer is lost after the service
//! did the work (the answer held past the cut-off, or cut) is handled as the README's
//! "Unknown outcomes" section says: a delete is done, a renewal is in doubt and the message
//! runs again, a send may be stored twice, a receive hides its messages for one visibility
//! timeout and counts a dequeue nobody saw. No crash, no silent loss, exact counts.

// Each test reports its counts on stdout, shown with --nocapture.
#![allow(clippy::print_stdout)]

use crate::common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::proxy::{Faults, LoseAnswers, Op, Proxy};
use ebbflow::config::{QueueSettings, RetrySettings};
use ebbflow::store::RetryingStore;
use ebbflow::store::{AzureStore, DEV_ACCOUNT, DEV_KEY};
use ebbflow::store::{Queue, QueueStore, UnknownOutcomes};
use ebbflow::{Context, Handler, HandlerError, Settings};

/// Our cut-off in these tests; the service's own timeout is then 1 s.
const CUTOFF: Duration = Duration::from_secs(2);
/// How long a lost answer is held: past the cut-off.
const HOLD: Duration = Duration::from_secs(3);

/// Records each run's body and dequeue count; sleeps `work`.
#[derive(Clone, Default)]
struct Runs {
    seen: Arc<Mutex<Vec<(String, u32)>>>,
    work: Duration,
}

impl Handler for Runs {
    type Message = String;
    async fn handle(&self, body: String, ctx: Context) -> Result<(), HandlerError> {
        tokio::time::sleep(self.work).await;
        self.seen.lock().unwrap().push((body, ctx.dequeue_count()));
        Ok(())
    }
}

impl Runs {
    /// Runs per body.
    fn per_body(&self) -> BTreeMap<String, usize> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .fold(BTreeMap::new(), |mut m, (b, _)| {
                *m.entry(b.clone()).or_default() += 1;
                m
            })
    }
}

fn retry() -> RetrySettings {
    let mut retry = RetrySettings::default();
    retry.max_attempts = 8;
    retry.min_delay = Duration::from_millis(20);
    retry.max_delay = Duration::from_millis(500);
    retry.request_timeout = CUTOFF;
    retry
}

fn settings(queue: &str, visibility: Duration) -> Settings {
    let mut s = Settings::default();
    s.storage.retry = retry();
    let mut q = QueueSettings::default();
    q.visibility_timeout = visibility;
    q.encoding = ebbflow::codec::Encoding::None;
    q.idle_backoff.max = Duration::from_millis(300);
    q.scaling.max_tasks = ebbflow::config::MaxTasks::of::<1>();
    s.queues.insert(queue.to_string(), q);
    s.validate().unwrap();
    s
}

fn store_at(url: &str) -> Arc<dyn QueueStore> {
    let cs = format!(
        "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};QueueEndpoint={url}"
    );
    // The same cut-off as the retry settings, so the service's own timeout stays below it.
    Arc::new(
        AzureStore::from_connection_string(&cs)
            .unwrap()
            .with_try_cutoff(CUTOFF),
    )
}

/// A fresh queue holding `n` messages `prefix-i`, sent straight to Azurite.
async fn queue_with(prefix: &str, n: usize) -> (String, Arc<dyn Queue>) {
    let name = common::unique(prefix);
    let queue = common::azurite().queue(&name).unwrap();
    queue.create_if_missing().await.unwrap();
    for i in 0..n {
        queue
            .send(&format!("{prefix}-{i}"), Default::default())
            .await
            .unwrap();
    }
    (name, queue)
}

fn lose(op: Op, count: u64) -> Faults {
    Faults {
        lose_answers: Some(LoseAnswers {
            op,
            count,
            hold: HOLD,
        }),
        ..Faults::default()
    }
}

async fn wait_empty(queue: &Arc<dyn Queue>) {
    common::wait_for_async("queue empty", Duration::from_secs(30), || async {
        queue.approximate_depth().await.unwrap() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_service_answers_before_our_cut_off_and_nothing_is_left_in_doubt() {
    let proxy = Proxy::start(&common::azurite_url()).await;
    let (name, queue) = queue_with("slow", 10).await;
    let runs = Runs {
        work: Duration::from_secs(1),
        ..Runs::default()
    };
    let worker = common::start(
        &store_at(&proxy.url()),
        settings(&name, Duration::from_secs(30)),
        &name,
        runs.clone(),
    )
    .await;
    common::wait_for("handlers running", Duration::from_secs(10), || {
        worker.snapshot()[0].in_flight > 0
    })
    .await;
    // While the handlers run the service turns slow: 3 s a call, past our 2 s cut-off. The
    // deletes and receives meet it.
    proxy.set_faults(Faults {
        slow_service: HOLD,
        ..Faults::default()
    });
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.set_faults(Faults::default());
    let (snap, unknown) = finish(worker, &queue, 10).await;
    let timeouts = proxy.service_timeouts();
    let per_body = runs.per_body();
    println!(
        "slow service: {} OperationTimedOut answers, {} requests, timeouts sent {:?}; \
         unknown outcomes {unknown:?}, store errors {}",
        proxy.operation_timeouts(),
        timeouts.len(),
        timeouts.iter().collect::<std::collections::BTreeSet<_>>(),
        snap.store_errors
    );
    // Every call told the service to answer within 1 s, below our 2 s cut-off...
    assert!(timeouts.iter().all(|t| *t == Some(1)), "{timeouts:?}");
    // ...so no call was abandoned and then completed (without the parameter: 10 deletes
    // abandoned, done by the service meanwhile, confirmed by their retries)...
    assert_eq!(unknown, UnknownOutcomes::default());
    // ...while the service did turn slow, and said so in time.
    assert!(proxy.operation_timeouts() > 0, "the slowness was met");
    assert_eq!(per_body.len(), 10);
    assert!(per_body.values().all(|&n| n == 1), "{per_body:?}");
    assert_eq!(snap.lost_ownership, 0);
}

/// Runs `n` messages through a worker whose store is behind the proxy, losing the answers of
/// the first `lost` calls of `op` after the service did them; waits until all are handled and
/// the queue is empty, and returns the proxy, the queue's counters and its unknown outcomes.
async fn run_losing(
    prefix: &str,
    n: u64,
    op: Op,
    lost: u64,
    runs: &Runs,
    visibility: Duration,
) -> (Proxy, ebbflow::listener::QueueSnapshot, UnknownOutcomes) {
    let proxy = Proxy::start(&common::azurite_url()).await;
    let (name, queue) = queue_with(prefix, n as usize).await;
    proxy.set_faults(lose(op, lost));
    let worker = common::start(
        &store_at(&proxy.url()),
        settings(&name, visibility),
        &name,
        runs.clone(),
    )
    .await;
    let (snap, unknown) = finish(worker, &queue, n).await;
    (proxy, snap, unknown)
}

/// Waits until `n` messages are handled and the queue is empty, then stops the worker (which
/// must not have met a fatal error); returns the queue's counters and its unknown outcomes.
async fn finish(
    worker: ebbflow::worker::RunningWorker,
    queue: &Arc<dyn Queue>,
    n: u64,
) -> (ebbflow::listener::QueueSnapshot, UnknownOutcomes) {
    common::wait_for("all handled", Duration::from_secs(60), || {
        worker.snapshot()[0].handled == n
    })
    .await;
    wait_empty(queue).await;
    let snap = worker.snapshot().remove(0);
    let unknown = worker.unknown_outcomes().remove(0).1;
    assert!(worker.fatal_error().is_none());
    worker.shutdown().await;
    (snap, unknown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_whose_answer_is_lost_is_done_not_lost_ownership() {
    let runs = Runs::default();
    let (proxy, snap, unknown) = run_losing(
        "lostanswer",
        5,
        Op::Delete,
        5,
        &runs,
        Duration::from_secs(10),
    )
    .await;
    let per_body = runs.per_body();
    println!(
        "lost delete answers: {}; handled {}, lost ownership {}, runs {per_body:?}, {unknown:?}",
        proxy.answers_lost(),
        snap.handled,
        snap.lost_ownership
    );
    assert_eq!(proxy.answers_lost(), 5);
    assert_eq!(
        unknown,
        UnknownOutcomes {
            deletes_confirmed: 5,
            ..Default::default()
        }
    );
    assert_eq!(
        snap.lost_ownership, 0,
        "a lost answer is not lost ownership"
    );
    assert!(
        per_body.len() == 5 && per_body.values().all(|&n| n == 1),
        "{per_body:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_whose_answer_is_lost_leaves_the_lease_in_doubt_and_the_message_runs_again() {
    // Renewal at 2 s (half the 4 s visibility); its answer is lost while the service applied
    // it under a new pop receipt, so the receipt held is dead.
    let runs = Runs {
        work: Duration::from_secs(6),
        ..Runs::default()
    };
    let (proxy, snap, unknown) =
        run_losing("renewal", 1, Op::Update, 1, &runs, Duration::from_secs(4)).await;
    let seen = runs.seen.lock().unwrap().clone();
    println!(
        "lost renewal answer: runs {seen:?}, lost ownership {}, {unknown:?}",
        snap.lost_ownership
    );
    assert_eq!(proxy.answers_lost(), 1);
    assert_eq!(
        unknown,
        UnknownOutcomes {
            updates_in_doubt: 1,
            ..Default::default()
        }
    );
    // The first run could not settle with its dead receipt: the message ran again.
    let dequeues: Vec<u32> = seen.iter().map(|(_, d)| *d).collect();
    assert_eq!(dequeues, [1, 2]);
    assert_eq!(snap.lost_ownership, 1);
    assert_eq!(snap.handled, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_whose_answer_is_lost_may_be_stored_twice_and_is_counted() {
    let proxy = Proxy::start(&common::azurite_url()).await;
    let (name, direct) = queue_with("lostsend", 0).await;
    let store = RetryingStore::wrap(store_at(&proxy.url()), retry());
    let queue = store.queue(&name).unwrap();
    proxy.set_faults(lose(Op::Send, 1));
    for i in 0..3 {
        queue
            .send(&format!("s-{i}"), Default::default())
            .await
            .unwrap();
    }
    let stored: Vec<String> = direct
        .peek(32)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    let unknown = store.unknown_outcomes(&name);
    println!("lost send answer: stored {stored:?}, {unknown:?}");
    assert_eq!(
        unknown,
        UnknownOutcomes {
            sends: 1,
            ..Default::default()
        }
    );
    assert_eq!(stored, ["s-0", "s-0", "s-1", "s-2"], "the first one twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receive_whose_answer_is_lost_hides_its_messages_once_and_counts_a_dequeue() {
    let runs = Runs::default();
    let (proxy, _, unknown) =
        run_losing("lostrecv", 3, Op::Receive, 1, &runs, Duration::from_secs(3)).await;
    let seen = runs.seen.lock().unwrap().clone();
    println!("lost receive answer: runs {seen:?}, {unknown:?}");
    assert_eq!(proxy.answers_lost(), 1);
    assert_eq!(
        unknown,
        UnknownOutcomes {
            receives: 1,
            ..Default::default()
        }
    );
    // Each message ran once, after coming back from the lost receive with a dequeue nobody saw.
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.iter().all(|(_, dequeues)| *dequeues == 2), "{seen:?}");
}

//! `Dedup::across_replicas` on a real Redis: two workers (two replicas, one queue, each with its
//! own in-process memory) share what they ran, so a payload key handled by one is skipped by
//! the other, copies arriving at once run once, and Redis holds only expiring marks.

use crate::common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::redis::{redis_url, settings};
use ebbflow::bus::Name;
use ebbflow::handler::layers::Dedup;
use ebbflow::store::QueueStore;
use ebbflow::worker::RunningWorker;
use ebbflow::{Context, HandlerError, Worker};

/// How long a handled key is remembered across the replicas.
const WINDOW: Duration = Duration::from_secs(600);

type Runs = Arc<Mutex<BTreeMap<String, u32>>>;

fn worker_settings(prefix: &str, queue: &str, id: &str) -> ebbflow::Settings {
    let mut s = ebbflow::Settings::default();
    s.bus = settings(&redis_url(), prefix, "orders", Duration::from_secs(2));
    s.bus.instance_id = Some(Name::new(id).unwrap());
    let mut q = ebbflow::config::QueueSettings::default();
    q.idle_backoff.max = Duration::from_millis(300);
    s.queues.insert(queue.to_string(), q);
    s
}

/// A replica: de-duplicates by the payload's text across the replicas, counts each run.
async fn replica(
    prefix: &str,
    queue: &str,
    id: &str,
    store: &Arc<dyn QueueStore>,
    runs: &Runs,
) -> RunningWorker {
    let by_text = Dedup::by_key(1_000, |job| String::from_utf8(job.bytes().to_vec()).ok())
        .across_replicas(WINDOW);
    let runs = runs.clone();
    Worker::new(worker_settings(prefix, queue, id))
        .with_store(store.clone())
        .layer_for(queue, by_text)
        .handler_fn(queue, move |order: String, _: Context| {
            let runs = runs.clone();
            async move {
                *runs.lock().unwrap().entry(order).or_default() += 1;
                // Long enough for a copy to reach the other replica meanwhile.
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await
        .unwrap()
}

async fn send(worker: &RunningWorker, queue: &str, orders: &[String]) {
    let publisher = worker.publisher(queue).unwrap();
    for order in orders {
        publisher
            .send_bytes(order.as_bytes(), Default::default())
            .await
            .unwrap();
    }
}

/// Waits until the replicas deleted `total` messages between them and the queue is empty.
async fn drained(workers: &[&RunningWorker], store: &Arc<dyn QueueStore>, queue: &str, total: u64) {
    let q = store.queue(queue).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let handled: u64 = workers.iter().map(|w| w.snapshot()[0].handled).sum();
        let depth = q.approximate_depth().await.unwrap();
        if handled >= total && depth == 0 {
            return;
        }
        let seen: Vec<_> = workers.iter().map(|w| w.snapshot()).collect();
        assert!(
            tokio::time::Instant::now() < deadline,
            "waiting for {total} handled, depth {depth}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn orders(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-order-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_redis_run_each_key_once_within_the_window() {
    let prefix = common::unique("dedup");
    let queue = common::unique("dq");
    let store = common::memory();
    let runs: Runs = Arc::default();

    // Replica a handles the first copies, then stops (its memory goes with it).
    let a = replica(&prefix, &queue, "dedup-a", &store, &runs).await;
    let first = orders("first", 20);
    send(&a, &queue, &first).await;
    drained(&[&a], &store, &queue, 20).await;
    a.shutdown().await;

    // Replica b gets the second copies: it never ran them, but the bus says they were handled.
    let b = replica(&prefix, &queue, "dedup-b", &store, &runs).await;
    send(&b, &queue, &first).await;
    drained(&[&b], &store, &queue, 20).await;
    assert!(
        runs.lock().unwrap().values().all(|n| *n == 1),
        "a copy ran twice: {:?}",
        runs.lock().unwrap()
    );
    assert_eq!(runs.lock().unwrap().len(), 20);

    // Both replicas running, two copies of each new order sent at once: one run each (the
    // copy that meets a running mark is released and then found done).
    let a = replica(&prefix, &queue, "dedup-a2", &store, &runs).await;
    let second = orders("second", 10);
    let doubled: Vec<String> = second.iter().chain(second.iter()).cloned().collect();
    let before: u64 = [&a, &b].iter().map(|w| w.snapshot()[0].handled).sum();
    send(&b, &queue, &doubled).await;
    drained(&[&a, &b], &store, &queue, before + 20).await;
    let counted = runs.lock().unwrap().clone();
    for order in &second {
        assert_eq!(counted.get(order), Some(&1), "{order}: {counted:?}");
    }

    // Redis holds expiring marks only: a done mark per key, none left running.
    let mut con = crate::redis_admin::admin(&redis_url()).await;
    let done: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{prefix}:dedup:done:*"))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(done.len(), 30, "{done:?}");
    let running: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{prefix}:dedup:run:*"))
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(running.is_empty(), "{running:?}");
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg(&done[0])
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= WINDOW.as_millis() as i64, "{ttl}");
    a.shutdown().await;
    b.shutdown().await;
}

//! A hot queue sharded over `<queue>-0 .. <queue>-{N-1}` (`shards = N`): publishers spread
//! sends, one listener pool handles every message exactly once under one concurrency cap,
//! depth adds up, poison copies of every shard land in the one `<queue>-poison`, and start-up
//! creates every shard. On the embedded store (paused clock) and on Azurite (real time,
//! outcomes only).

use crate::common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebbflow::codec::Encoding;
use ebbflow::config::{QueueSettings, Settings, Shards};
use ebbflow::listener::poison::{PoisonQueue, Selection};
use ebbflow::store::QueueStore;
use ebbflow::store::{shard_name, ShardingStore};
use ebbflow::{Context, Handler, HandlerError, Worker};

on_both_backends!(
    a_sharded_queue_spreads_sends_and_handles_each_once_under_one_cap,
    poison_copies_of_every_shard_go_to_the_one_poison_queue,
);

const SHARDS: usize = 3;
const MESSAGES: usize = 90;
const CONCURRENCY: u32 = 4;

fn settings(queue: &str) -> Settings {
    let mut s = Settings::default();
    s.storage.create_queues = true;
    let mut q = QueueSettings::default();
    q.shards = Shards::try_from(SHARDS as u64).unwrap();
    q.concurrency = ebbflow::config::Concurrency::of::<CONCURRENCY>();
    q.scaling.max_tasks = ebbflow::config::MaxTasks::of::<4>();
    q.scaling.messages_per_task = ebbflow::config::MessagesPerTask::of::<10>();
    s.queues.insert(queue.to_string(), q);
    s
}

/// Counts runs by body and the most handlers running at once.
#[derive(Clone, Default)]
struct Counting {
    runs: Arc<Mutex<BTreeMap<String, u32>>>,
    running: Arc<AtomicU32>,
    peak: Arc<AtomicU32>,
}

impl Handler for Counting {
    type Message = String;
    async fn handle(&self, body: String, _: Context) -> Result<(), HandlerError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        *self.runs.lock().unwrap().entry(body.clone()).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        if body.starts_with("bad") {
            return Err(HandlerError::poison(format!("{body} is refused")));
        }
        Ok(())
    }
}

async fn shard_depths(raw: &Arc<dyn QueueStore>, queue: &str) -> Vec<u64> {
    let mut depths = Vec::new();
    for i in 0..SHARDS {
        let shard = raw.queue(&shard_name(queue, i)).unwrap();
        depths.push(shard.approximate_depth().await.unwrap());
    }
    depths
}

async fn a_sharded_queue_spreads_sends_and_handles_each_once_under_one_cap(
    raw: Arc<dyn QueueStore>,
) {
    let name = common::unique("shard");
    let settings = settings(&name);
    let handler = Counting::default();
    // Start-up creates every shard (and the one poison queue).
    let worker = Worker::new(settings.clone())
        .with_store(raw.clone())
        .handler(&name, handler.clone())
        .start()
        .await
        .unwrap();
    assert_eq!(shard_depths(&raw, &name).await, [0, 0, 0]);
    // A producer in another process spreads its sends through the same layer; the receipts
    // it gets back name the shard each send went to.
    let sharded = ShardingStore::wrap_sharded(raw.clone(), settings.shard_counts());
    let q = sharded.queue(&name).unwrap();
    let mut per_shard = [0usize; SHARDS];
    for i in 0..MESSAGES {
        let text = Encoding::Base64.encode(format!("m{i}").as_bytes()).unwrap();
        let sent = q.send(&text, Default::default()).await.unwrap();
        let shard: usize = sent.pop_receipt.split_once(':').unwrap().0.parse().unwrap();
        per_shard[shard] += 1;
    }
    assert_eq!(per_shard, [MESSAGES / SHARDS; SHARDS], "round-robin spread");
    // The worker's own publisher spreads too.
    let publisher = worker.publisher(&name).unwrap();
    for i in 0..SHARDS * 2 {
        publisher
            .send_bytes(format!("p{i}").as_bytes(), Default::default())
            .await
            .unwrap();
    }
    let total = MESSAGES + SHARDS * 2;
    common::wait_for("every message handled", Duration::from_secs(120), || {
        handler.runs.lock().unwrap().len() == total
    })
    .await;
    common::wait_for_async("every shard empty", Duration::from_secs(60), || {
        let raw = raw.clone();
        let name = name.clone();
        async move { shard_depths(&raw, &name).await == [0, 0, 0] }
    })
    .await;
    let report = worker.shutdown().await;
    let runs = handler.runs.lock().unwrap().clone();
    assert_eq!(runs.len(), total);
    assert!(
        runs.values().all(|n| *n == 1),
        "each message once: {runs:?}"
    );
    assert!(
        handler.peak.load(Ordering::SeqCst) <= CONCURRENCY,
        "one concurrency cap over all shards: peak {}",
        handler.peak.load(Ordering::SeqCst)
    );
    // One listener, one snapshot for the logical queue.
    assert_eq!(report.queues.len(), 1);
    assert_eq!(report.queues[0].queue, name);
    assert_eq!(report.queues[0].handled, total as u64);
}

async fn poison_copies_of_every_shard_go_to_the_one_poison_queue(raw: Arc<dyn QueueStore>) {
    let name = common::unique("shardp");
    let settings = settings(&name);
    let handler = Counting::default();
    let worker = Worker::new(settings.clone())
        .with_store(raw.clone())
        .handler(&name, handler.clone())
        .start()
        .await
        .unwrap();
    let publisher = worker.publisher(&name).unwrap();
    for i in 0..SHARDS * 2 {
        publisher
            .send_bytes(format!("bad{i}").as_bytes(), Default::default())
            .await
            .unwrap();
    }
    let poison = PoisonQueue::new(raw.clone(), &name, &settings.queues[&name]).unwrap();
    assert_eq!(poison.name(), format!("{name}-poison"));
    common::wait_for_async("six poison copies", Duration::from_secs(60), || {
        let poison = &poison;
        async move { poison.list(32).await.unwrap().len() == SHARDS * 2 }
    })
    .await;
    let report = worker.shutdown().await;
    assert_eq!(report.queues[0].poisoned, (SHARDS * 2) as u64);
    assert_eq!(shard_depths(&raw, &name).await, [0, 0, 0]);
    let records = poison.list(32).await.unwrap();
    for r in &records {
        let envelope = r.envelope.as_ref().unwrap();
        // The envelope names the logical queue, whichever shard the message was on.
        assert_eq!(envelope.queue, name);
    }
    // A requeue through the sharding layer (as `ebbflow poison requeue` does) spreads the
    // messages over the shards again.
    let sharded = ShardingStore::wrap_sharded(raw.clone(), settings.shard_counts());
    let poison = PoisonQueue::new(sharded, &name, &settings.queues[&name]).unwrap();
    let report = poison.requeue(&Selection::All).await.unwrap();
    assert_eq!(report.requeued.len(), SHARDS * 2);
    assert_eq!(shard_depths(&raw, &name).await, [2, 2, 2]);
}

/// `/metrics` speaks of the logical queue: its counters add up over the shards, and no shard
/// appears as a queue of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_add_up_over_the_shards_under_the_logical_name() {
    let raw = common::memory();
    let name = common::unique("shardm");
    let mut settings = settings(&name);
    settings.observability.bind = Some("127.0.0.1:0".parse().unwrap());
    let worker = Worker::new(settings)
        .with_store(raw.clone())
        .handler(&name, Counting::default())
        .start()
        .await
        .unwrap();
    let publisher = worker.publisher(&name).unwrap();
    for i in 0..SHARDS * 4 {
        publisher
            .send_bytes(format!("m{i}").as_bytes(), Default::default())
            .await
            .unwrap();
    }
    common::wait_for("all handled", Duration::from_secs(30), || {
        worker.snapshot()[0].handled == (SHARDS * 4) as u64
    })
    .await;
    let url = format!("http://{}/metrics", worker.ops_addr().unwrap());
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    let line = format!("ebbflow_handled_total{{queue=\"{name}\"}} ");
    let handled = text
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or_else(|| panic!("no {line} in {text}"));
    assert_eq!(handled.trim().parse::<f64>().unwrap(), (SHARDS * 4) as f64);
    assert!(!text.contains(&format!("{name}-0")), "{text}");
    worker.shutdown().await;
}

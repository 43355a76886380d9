//! Embedded dispatch: ebbflow's runtime against a bare receive / decode / delete loop on the
//! in-process backend, to show what the runtime adds per message.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ebbflow::codec::Encoding;
use ebbflow::config::{QueueSettings, Settings};
use ebbflow::store::MemoryStore;
use ebbflow::store::{Queue, QueueStore};
use ebbflow::{Context, Handler, HandlerError, Json, Worker};
use serde_json::json;

#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)]
struct Item {
    id: u64,
    pad: String,
}

struct Noop;
impl Handler for Noop {
    type Message = Json<Item>;
    async fn handle(&self, _: Json<Item>, _: Context) -> Result<(), HandlerError> {
        Ok(())
    }
}

async fn preload(store: &Arc<dyn QueueStore>, name: &str, n: usize) -> Arc<dyn Queue> {
    let q = store.queue(name).unwrap();
    q.create_if_missing().await.unwrap();
    let pad = "x".repeat(1000);
    for id in 0..n {
        let json = serde_json::to_vec(&json!({ "id": id, "pad": pad })).unwrap();
        q.send(&Encoding::Base64.encode(&json).unwrap(), Default::default())
            .await
            .unwrap();
    }
    q
}

/// A minimal receive / decode / handle / delete loop: the floor any runtime adds to.
pub async fn raw_loop(n: usize) -> f64 {
    let store: Arc<dyn QueueStore> = Arc::new(MemoryStore::new());
    let q = preload(&store, "raw", n).await;
    let start = Instant::now();
    let mut done = 0;
    loop {
        let batch = q.receive(32, Duration::from_secs(30)).await.unwrap();
        if batch.is_empty() {
            break;
        }
        for m in batch {
            let bytes = Encoding::Base64.decode(&m.text).unwrap();
            let _item: Item = serde_json::from_slice(&bytes).unwrap();
            q.delete(&m.id, &m.pop_receipt).await.unwrap();
            done += 1;
        }
    }
    assert_eq!(done, n);
    n as f64 / start.elapsed().as_secs_f64()
}

pub async fn ebbflow_embedded(n: usize) -> f64 {
    let store: Arc<dyn QueueStore> = Arc::new(MemoryStore::new());
    preload(&store, "emb", n).await;
    let mut s = Settings::default();
    s.queues.insert("emb".into(), QueueSettings::default());
    let start = Instant::now();
    let worker = Worker::new(s)
        .with_store(store)
        .handler("emb", Noop)
        .start()
        .await
        .unwrap();
    while worker.snapshot()[0].handled < n as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    worker.shutdown().await;
    rate
}

/// The span sites one message passes, timed alone while nothing exports traces, in ns of this
/// thread's CPU time per message (the mean of `n`): the producer's `send`, a share of a `receive` (one per 32
/// messages), the `process` span, the `settle`, and the store's client spans of the send,
/// receive and delete. With traces off each is one atomic load, except `process`, which is the
/// plain `message` log span either way. The store's client spans are crate-internal; they take
/// the same path while off as a `receive` span (one check of the exporter, then
/// `Span::none()`), so `receive_span` stands in for them.
pub fn span_sites_off_ns(n: u32) -> f64 {
    use ebbflow::observability::traces as spans;
    assert!(
        !spans::exporting(),
        "measure before an exporter is installed"
    );
    let mut text = String::from("eyJpZCI6MX0=");
    let start = Clock::start();
    for i in 0..n {
        let send = spans::send_span("emb");
        let store_send = spans::receive_span("emb");
        let receive = (i % 32 == 0).then(|| spans::receive_span("emb"));
        let store_receive = (i % 32 == 0).then(|| spans::receive_span("emb"));
        let process = spans::process_span("emb", "id", 1, &mut text);
        let settle = spans::settle_span("emb", "id", "delete");
        let store_delete = spans::receive_span("emb");
        std::hint::black_box((
            send,
            store_send,
            receive,
            store_receive,
            process,
            settle,
            store_delete,
        ));
    }
    start.elapsed_ns() / f64::from(n)
}

/// The baseline of [`span_sites_off_ns`]: the same loop making only the plain `message` log
/// span a message's run had before traces existed (and still has with them off), in ns per
/// message. The difference is what the span sites add while traces are off.
pub fn message_span_ns(n: u32) -> f64 {
    let start = Clock::start();
    for _ in 0..n {
        let span = tracing::info_span!("message", queue = %"emb", message_id = %"id",
                                       dequeue_count = 1u32);
        std::hint::black_box(span);
    }
    start.elapsed_ns() / f64::from(n)
}

/// This thread's CPU time (Linux: `/proc/thread-self/schedstat`, the time it ran, brought up
/// to date at each scheduler tick), so a loop timed on a loaded machine does not count the time
/// other processes had the core; elsewhere, wall time. No `unsafe` (the crate forbids it), so
/// no `clock_gettime`.
enum Clock {
    Cpu(u64),
    Wall(Instant),
}

impl Clock {
    fn cpu_ns() -> Option<u64> {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    fn start() -> Self {
        match Self::cpu_ns() {
            Some(ns) => Clock::Cpu(ns),
            None => Clock::Wall(Instant::now()),
        }
    }

    fn elapsed_ns(&self) -> f64 {
        match self {
            Clock::Cpu(start) => Self::cpu_ns().unwrap_or(*start).saturating_sub(*start) as f64,
            Clock::Wall(start) => start.elapsed().as_nanos() as f64,
        }
    }
}

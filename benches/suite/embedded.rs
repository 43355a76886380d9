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

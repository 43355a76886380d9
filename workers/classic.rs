//! The classic fixed listener: the benchmark suite's baseline, written on the same SDK and
//! store code as ebbflow (`AzureStore`), without ebbflow's runtime. `LOOPS` loops (default 8)
//! each receive up to 32 messages, handle them one after another (an async sleep of
//! `HANDLER_MS`, default 20, after decoding base64) and delete each; when a receive comes back
//! empty the loop sleeps `POLL_MS` (default 1000). No scaling, no back-off, no triggers. So at
//! most `LOOPS` handlers run at once: equal maximum concurrency with ebbflow at
//! `concurrency = LOOPS`.
//!
//! Environment: `AZURE_STORAGE_CONNECTION_STRING` (required), `QUEUE_NAME` (default
//! `loadtest`), `HANDLER_MS`, `LOOPS`, `POLL_MS`, `LOADTEST_RECORD` (the load-test worker's
//! record format: payload, tab, handler start in Unix microseconds).

// A binary has no public surface: its modules' `pub` items are for each other.
#![allow(unreachable_pub)]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebbflow::codec::Encoding;
use ebbflow::store::AzureStore;
use ebbflow::store::Queue;
use ebbflow::store::QueueStore;

#[tokio::main]
async fn main() {
    let format = ebbflow::observability::logging::format_from_env(Default::default());
    ebbflow::observability::logging::init(format.as_ref().copied().unwrap_or_default(), "warn");
    if let Err(e) = format {
        tracing::error!("{e}");
        std::process::exit(2);
    }
    if let Err(e) = run().await {
        tracing::error!("{e}");
        std::process::exit(2);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let cs = std::env::var("AZURE_STORAGE_CONNECTION_STRING")
        .map_err(|_| "AZURE_STORAGE_CONNECTION_STRING is required")?;
    let name = std::env::var("QUEUE_NAME").unwrap_or_else(|_| "loadtest".into());
    let work = Duration::from_millis(support::env_u64("HANDLER_MS", 20)?);
    let poll = Duration::from_millis(support::env_u64("POLL_MS", 1000)?);
    let loops = support::env_u64("LOOPS", 8)?;
    let record = match std::env::var_os("LOADTEST_RECORD") {
        Some(path) => Some(Arc::new(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ))),
        None => None,
    };
    let store = AzureStore::from_connection_string(&cs)?;
    let queue = store.queue(&name)?;
    queue.create_if_missing().await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..loops {
        let (queue, record, stop) = (queue.clone(), record.clone(), stop.clone());
        tasks.spawn(poll_loop(queue, record, stop, work, poll));
    }
    ebbflow::shutdown_signal().await;
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn poll_loop(
    queue: Arc<dyn Queue>,
    record: Option<Arc<Mutex<std::fs::File>>>,
    stop: tokio_util::sync::CancellationToken,
    work: Duration,
    poll: Duration,
) {
    while !stop.is_cancelled() {
        let batch = match queue.receive(32, Duration::from_secs(30)).await {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "receive failed");
                Vec::new()
            }
        };
        if batch.is_empty() {
            tokio::select! { _ = stop.cancelled() => {}, _ = tokio::time::sleep(poll) => {} }
            continue;
        }
        for m in batch {
            let started = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros();
            let body = Encoding::Base64.decode(&m.text).unwrap_or_default();
            tokio::time::sleep(work).await;
            if let Some(file) = &record {
                let mut line = body;
                line.extend_from_slice(format!("\t{started}\n").as_bytes());
                if let Ok(mut f) = file.lock() {
                    let _ = f.write_all(&line);
                }
            }
            if let Err(e) = queue.delete(&m.id, &m.pop_receipt).await {
                tracing::warn!(error = %e, "delete failed");
            }
        }
    }
}

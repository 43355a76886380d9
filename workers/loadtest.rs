//! The load-test worker: one queue, a handler that simulates work, nothing else. Outside
//! harnesses (the benchmark suite, fault tests, your own) drive it against any Azurite or
//! storage account.
//!
//! Environment:
//! - `AZURE_STORAGE_CONNECTION_STRING`: the storage to use (unset: the embedded backend, which
//!   is only useful for a smoke run).
//! - `QUEUE_NAME`: the queue to listen on (default `loadtest`). Its settings come from a
//!   `[queues.<name>]` section if the config has one, else the defaults, plus the usual
//!   `EBBFLOW__QUEUES__<NAME>__...` overrides (any other queues in config are ignored).
//! - `HANDLER_MS`: simulated work per message, an async sleep (default 20). A payload that
//!   starts with `work_ms=<n>;` sleeps `n` ms instead (a long job among short ones).
//! - `HANDLER_CPU_MS`: busy CPU work per message on top (default 0).
//! - `LOADTEST_RECORD`: a file to append a line to for each handled message: its payload, a
//!   tab, and the Unix time in microseconds when its handler started. Written before the
//!   message is deleted, so a harness can count lost and duplicate messages and measure pickup.
//!
//! It logs the queue's counters at exit (its ops endpoint, `EBBFLOW__OBSERVABILITY__BIND`,
//! serves them live), and exits 0 after
//! a clean drain (SIGTERM/ctrl-c), 1 when the drain deadline passed, 2 on a start-up error,
//! 3 when an error no retry can fix stopped it.

// A binary has no public surface: its modules' `pub` items are for each other.
#![allow(unreachable_pub)]

mod support;

use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ebbflow::config::QueueSettings;
use ebbflow::{Context, Handler, HandlerError, Settings, Worker};
use tracing::info;

struct Simulated {
    work: Duration,
    cpu: Duration,
    record: Option<Arc<Mutex<std::fs::File>>>,
}

impl Handler for Simulated {
    type Message = Vec<u8>;

    async fn handle(&self, body: Vec<u8>, _ctx: Context) -> Result<(), HandlerError> {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        let work = work_ms(&body).map_or(self.work, Duration::from_millis);
        if !work.is_zero() {
            tokio::time::sleep(work).await;
        }
        if !self.cpu.is_zero() {
            let start = Instant::now();
            let mut x = 0u64;
            while start.elapsed() < self.cpu {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        if let Some(file) = &self.record {
            let mut line = body;
            line.extend_from_slice(format!("\t{started}\n").as_bytes());
            let mut f = file.lock().map_err(|_| "record file lock poisoned")?;
            f.write_all(&line)?;
        }
        Ok(())
    }
}

/// The `n` of a payload that starts with `work_ms=<n>;`.
fn work_ms(body: &[u8]) -> Option<u64> {
    let rest = body.strip_prefix(b"work_ms=")?;
    let end = rest.iter().position(|b| *b == b';')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

#[tokio::main]
async fn main() -> ExitCode {
    let Ok(mut settings) = ebbflow::setup("info") else {
        return ExitCode::from(2);
    };
    let (queue, handler) = match prepare(&mut settings) {
        Ok(prepared) => prepared,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    let report = Worker::new(settings).handler(&queue, handler).run().await;
    for q in report.drain().map_or(&[][..], |d| &d.queues) {
        info!(queue = %q.queue, handled = q.handled, retried = q.retried, poisoned = q.poisoned,
              released = q.released, lost_ownership = q.lost_ownership, receive_calls = q.receive_calls,
              peak_tasks = q.peak_tasks, "final counts");
    }
    report.exit_code()
}

/// Keeps only the load-test queue in `settings` and builds its handler from the environment.
fn prepare(settings: &mut Settings) -> Result<(String, Simulated), Box<dyn std::error::Error>> {
    let queue = std::env::var("QUEUE_NAME").unwrap_or_else(|_| "loadtest".into());
    let queue_settings: QueueSettings = settings.queues.remove(&queue).unwrap_or_default();
    settings.queues.clear();
    settings.queues.insert(queue.clone(), queue_settings);
    settings.validate()?;
    let record = match std::env::var_os("LOADTEST_RECORD") {
        Some(path) => Some(Arc::new(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| format!("LOADTEST_RECORD = {}: {e}", path.to_string_lossy()))?,
        ))),
        None => None,
    };
    let handler = Simulated {
        work: Duration::from_millis(support::env_u64("HANDLER_MS", 20)?),
        cpu: Duration::from_millis(support::env_u64("HANDLER_CPU_MS", 0)?),
        record,
    };
    Ok((queue, handler))
}

//! The demo worker: two queues, a built-in producer, and a line per second showing messages
//! flowing. Runs on the embedded backend unless storage is configured.
//!
//! Run with: `cargo run --bin demo`
//!
//! Environment: `DEMO_RATE` messages per second per queue from the built-in producer (default
//! 20, 0 turns the producer off), `DEMO_BURST` extra orders sent at once 10 s in and every
//! 90 s after (default 2000, so the orders queue scales up and back down), `DEMO_HANDLER_MS` simulated work per
//! message (default 20), plus every `EBBFLOW__...` override and
//! `AZURE_STORAGE_CONNECTION_STRING`.

// A binary has no public surface: its modules' `pub` items are for each other.
#![allow(unreachable_pub)]

mod support;

use std::process::ExitCode;
use std::time::Duration;

use ebbflow::{Context, Handler, HandlerError, Json, Worker};
use serde::{Deserialize, Serialize};
use tracing::{info, Instrument};

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u64,
    amount_cents: u64,
}

struct Orders {
    work: Duration,
}

impl Handler for Orders {
    type Message = Json<Order>;

    async fn handle(&self, Json(order): Json<Order>, ctx: Context) -> Result<(), HandlerError> {
        // The handler's own span: with traces exported it nests under `process orders`, and
        // with `trace_context` on the queue, under the producer's `send orders` too.
        let charge = tracing::info_span!("charge order", order = order.id);
        tokio::time::sleep(self.work).instrument(charge).await;
        if order.amount_cents == 0 {
            return Err(HandlerError::poison(format!(
                "order {} has no amount",
                order.id
            )));
        }
        tracing::debug!(
            order = order.id,
            message_id = ctx.message_id(),
            "order handled"
        );
        Ok(())
    }
}

struct Emails {
    work: Duration,
}

impl Handler for Emails {
    type Message = String;

    async fn handle(&self, text: String, _ctx: Context) -> Result<(), HandlerError> {
        tokio::time::sleep(self.work).await;
        tracing::debug!(len = text.len(), "email sent");
        Ok(())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let Ok(settings) = ebbflow::setup("info") else {
        return ExitCode::from(2);
    };
    let (rate, burst, work) = match demo_env() {
        Ok(env) => env,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    let worker = match Worker::new(settings)
        .handler("orders", Orders { work })
        .handler("emails", Emails { work })
        .start()
        .await
    {
        Ok(worker) => worker,
        Err(e) => {
            tracing::error!(error = %e, "worker could not start");
            return ExitCode::from(2);
        }
    };
    if rate > 0 {
        for queue in ["orders", "emails"] {
            let publisher = worker.publisher(queue).expect("configured queue");
            tokio::spawn(produce(queue, publisher, rate, burst));
        }
    }
    tokio::spawn(throughput(worker.listeners()));
    // Until SIGTERM, ctrl-c or a fatal error; then the drain. The producers run on into the
    // drain (their messages wait in the queue) and stop with the process.
    let report = worker.run().await;
    for q in &report.queues {
        info!(queue = %q.queue, received = q.received, handled = q.handled, retried = q.retried,
              poisoned = q.poisoned, released = q.released, receive_calls = q.receive_calls,
              unreleased = report.unreleased, "final counts");
    }
    ExitCode::from(u8::try_from(report.exit_code()).unwrap_or(1))
}

/// `DEMO_RATE`, `DEMO_BURST` and `DEMO_HANDLER_MS`.
fn demo_env() -> Result<(u64, u64, Duration), String> {
    let rate = support::env_u64("DEMO_RATE", 20)?;
    let burst = support::env_u64("DEMO_BURST", 2000)?;
    let work = Duration::from_millis(support::env_u64("DEMO_HANDLER_MS", 20)?);
    Ok((rate, burst, work))
}

/// The built-in producer of one queue: `rate` messages a second, plus the orders burst.
async fn produce(queue: &'static str, publisher: ebbflow::Publisher, rate: u64, burst: u64) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    // A burst 10 s in, then every 90 s: long enough for the extra tasks to back off to the
    // 30 s maximum and retire between bursts.
    let (first_burst, burst_every) = (10 * rate, 90 * rate);
    for id in 1u64.. {
        tick.tick().await;
        if queue == "orders" && id % burst_every == first_burst {
            info!(queue, messages = burst, "producer burst");
            for n in 0..burst {
                let order = Order {
                    id: id * 100_000 + n,
                    amount_cents: 100,
                };
                if let Err(e) = publisher.send_json(&order).await {
                    tracing::warn!(error = %e, "producer send failed");
                }
            }
        }
        let sent = if queue == "orders" {
            // Every 500th order has no amount and ends up in the poison queue.
            let amount_cents = if id % 500 == 0 { 0 } else { id * 100 };
            publisher.send_json(&Order { id, amount_cents }).await
        } else {
            publisher
                .send_bytes(format!("hello #{id}").as_bytes(), Default::default())
                .await
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "producer send failed");
        }
    }
}

/// A line per queue each second: messages handled in that second, and the counters.
async fn throughput(listeners: Vec<ebbflow::listener::QueueListener>) {
    let mut last: Vec<_> = listeners.iter().map(|l| l.snapshot()).collect();
    let mut report = tokio::time::interval(Duration::from_secs(1));
    report.tick().await;
    loop {
        report.tick().await;
        let now: Vec<_> = listeners.iter().map(|l| l.snapshot()).collect();
        for (q, before) in now.iter().zip(&last) {
            info!(queue = %q.queue, per_sec = q.handled - before.handled, handled = q.handled,
                  poisoned = q.poisoned, tasks = q.active_tasks, in_flight = q.in_flight,
                  receive_calls = q.receive_calls, "throughput");
        }
        last = now;
    }
}

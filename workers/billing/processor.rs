//! The billing scenario's processing role: bills each work item of `billing-work` (a range of
//! queues: one logical queue over its shards) and sends the result to `billing-results`. Run
//! as many replicas as you like; at `min_tasks = 0` an idle replica makes no storage calls
//! and wakes when the bus says work arrived.
//!
//! Run with: `scripts/billing` (the whole scenario), or on its own:
//! `EBBFLOW_CONFIG_DIR=config/billing cargo run --bin billing-processor`
//!
//! Environment: the usual settings (`EBBFLOW_CONFIG_DIR`, `EBBFLOW__...`,
//! `AZURE_STORAGE_CONNECTION_STRING`), and `BILLING_ITEM_MS`, simulated work per item (default 20).

// A binary has no public surface: its modules' `pub` items are for each other.
#![allow(unreachable_pub)]

#[path = "model.rs"]
mod model;
#[path = "../support.rs"]
mod support;

use std::process::ExitCode;
use std::time::Duration;

use ebbflow::bus::{Announcer, QueueBusSettings};

use ebbflow::{Context, Handler, HandlerError, Json, Publisher, Worker};
use model::{ItemResult, WorkItem};
use tracing::{debug, info};

struct Processor {
    /// This instance's id, written into each result.
    instance: String,
    /// The results queue, which this process only sends to.
    results: Publisher,
    /// Its bus settings (publish mode), to announce results to the controller.
    results_bus: QueueBusSettings,
    work: Duration,
}

impl Handler for Processor {
    type Message = Json<WorkItem>;

    async fn handle(&self, Json(item): Json<WorkItem>, ctx: Context) -> Result<(), HandlerError> {
        if item.of == 0 || item.item >= item.of {
            return Err(HandlerError::poison(format!(
                "batch {} item {} of {}: not a valid item number",
                item.batch, item.item, item.of
            )));
        }
        tokio::time::sleep(self.work).await;
        let result: ItemResult = model::bill(&item, &self.instance);
        // The result is sent before this message is deleted: a crash in between bills the
        // item again, and the controller counts that as a duplicate instead of losing it.
        self.results
            .send_json(&result)
            .await
            .map_err(HandlerError::retry)?;
        // Wake the controller on the bus, as its publish mode says. A hint only: while the
        // bus is down the controller's outage probe finds the results.
        if let Some(bus) = ctx.bus() {
            Announcer::new(bus.transport(), self.results.queue(), self.results_bus)
                .after_send(1)
                .await;
        }
        debug!(batch = %item.batch, item = item.item, message_id = ctx.message_id(), "item billed");
        Ok(())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let Ok(mut settings) = ebbflow::setup("info") else {
        return ExitCode::from(2);
    };
    // The bus's instance id, fixed here so each result can name who billed it.
    let instance = model::instance_id(&mut settings);
    let started = async {
        let work = Duration::from_millis(support::env_u64("BILLING_ITEM_MS", 20)?);
        let store = model::store(&settings)?;
        let results = model::publisher(&settings, &store, &model::results_queue()).await?;
        let results_bus = settings
            .queues
            .get(&model::results_queue())
            .map(|q| q.bus)
            .unwrap_or_default();
        let mine = model::only_queue(&settings, &model::work_queue());
        let worker = Worker::new(mine);
        Ok::<_, Box<dyn std::error::Error>>((worker, results, results_bus, work))
    };
    let (worker, results, results_bus, work) = match started.await {
        Ok(parts) => parts,
        Err(e) => {
            tracing::error!(error = %e, "billing processor could not start");
            return ExitCode::from(2);
        }
    };
    let worker = match worker
        .handler(
            &model::work_queue(),
            Processor {
                instance,
                results,
                results_bus,
                work,
            },
        )
        .start()
        .await
    {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "billing processor could not start");
            return ExitCode::from(2);
        }
    };
    tokio::spawn(status(worker.listeners()));
    let report = worker.run().await;
    for q in &report.queues {
        info!(queue = %q.queue, handled = q.handled, receive_calls = q.receive_calls,
              poisoned = q.poisoned, "final counts");
    }
    ExitCode::from(u8::try_from(report.exit_code()).unwrap_or(1))
}

/// A line every 2 s while anything changed: items billed, tasks, and the storage calls made.
async fn status(listeners: Vec<ebbflow::listener::QueueListener>) {
    let mut last = None;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        for l in &listeners {
            let s = l.snapshot();
            let now = (s.handled, s.receive_calls, s.probe_calls, s.active_tasks);
            if last == Some(now) {
                continue;
            }
            last = Some(now);
            info!(queue = %s.queue, handled = s.handled, tasks = s.active_tasks,
                  receive_calls = s.receive_calls, probe_calls = s.probe_calls, "processor status");
        }
    }
}

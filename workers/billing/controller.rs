//! The billing scenario's controller role: aggregates the results of `billing-results` per
//! submission (each item once: a result for an item already counted is a duplicate, counted
//! and not billed again) and tells every instance on the bus about progress (every tenth of
//! a submission) and completion. Its ledger is kept in blob storage (`ledger.rs`), so a
//! controller killed mid-run and started again reports the same totals.
//!
//! Run with: `scripts/billing` (the whole scenario), or on its own:
//! `EBBFLOW_CONFIG_DIR=config/billing EBBFLOW__BUS__ROLE=controller cargo run --bin billing-controller`

// A binary has no public surface: its modules' `pub` items are for each other.
#![allow(unreachable_pub)]

#[path = "ledger.rs"]
mod ledger;
#[path = "model.rs"]
mod model;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use ebbflow::bus::{Address, BusHandle, Filter};
use ebbflow::store::{AzureBlobs, BlobStore};
use ebbflow::{Context, Handler, HandlerError, Json, Worker};
use ledger::{Ledger, Note};
use model::{ItemResult, Submitted};
use tokio::sync::{mpsc, Mutex};
use tracing::{error, info, warn};

struct Aggregator {
    /// Held across the record's write: results are counted one at a time, each stored before
    /// its message is deleted.
    ledger: Arc<Mutex<Ledger>>,
    notes: mpsc::UnboundedSender<Note>,
}

impl Handler for Aggregator {
    type Message = Json<ItemResult>;

    async fn handle(&self, Json(r): Json<ItemResult>, ctx: Context) -> Result<(), HandlerError> {
        if r.of == 0 || r.item >= r.of {
            return Err(HandlerError::poison(format!(
                "batch {} item {} of {}: not a valid item number",
                r.batch, r.item, r.of
            )));
        }
        let mut ledger = self.ledger.lock().await;
        let record = ledger
            .record(&r.batch, r.of)
            .await
            .map_err(HandlerError::retry)?;
        let (record, notes) = ledger::add(&record, r, ctx.message_id());
        ledger.keep(record).await.map_err(HandlerError::retry)?;
        drop(ledger);
        for note in notes {
            // The announcer lives as long as the worker.
            let _ = self.notes.send(note);
        }
        Ok(())
    }
}

/// The ledger's blob container: `billing-ledger` in the account's blob service, or none (the
/// totals then live in memory only).
async fn ledger_blobs(settings: &ebbflow::Settings) -> Option<Arc<dyn BlobStore>> {
    let mut storage = settings.storage.clone();
    storage.claim_check.container = ledger::CONTAINER.to_string();
    let blobs = match AzureBlobs::from_settings(&storage) {
        Ok(Some(b)) => Arc::new(b) as Arc<dyn BlobStore>,
        Ok(None) => {
            warn!("no blob endpoint known (BlobEndpoint in the connection string, or storage.claim_check.blob_endpoint): the ledger lives in memory only, a restarted controller forgets its totals");
            return None;
        }
        Err(e) => {
            warn!(error = %e, "the ledger's blob container cannot be opened: the ledger lives in memory only");
            return None;
        }
    };
    // Retried: storage may still be starting.
    let mut delay = Duration::from_millis(200);
    for _ in 0..10 {
        match blobs.create_if_missing().await {
            Ok(()) => {
                info!(container = ledger::CONTAINER, "ledger kept in blob storage");
                return Some(blobs);
            }
            Err(e) => {
                warn!(error = %e, retry_in = ?delay, "ledger container not ready");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    warn!("the ledger's blob container could not be created: the ledger lives in memory only");
    None
}

#[tokio::main]
async fn main() -> ExitCode {
    let Ok(settings) = ebbflow::setup("info") else {
        return ExitCode::from(2);
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let blobs = ledger_blobs(&settings).await;
    let ledger = Arc::new(Mutex::new(Ledger::new(blobs, &model::results_queue())));
    // Completions stored but not announced before a previous controller stopped: again.
    match ledger.lock().await.unannounced().await {
        Ok(pending) => {
            for record in pending {
                info!(batch = %record.batch, "completion not announced by the previous run; announcing it");
                let _ = tx.send(Note::Completed(record.completion()));
            }
        }
        Err(e) => error!(error = %e, "stored ledger records not read"),
    }
    let aggregator = Aggregator {
        ledger: ledger.clone(),
        notes: tx,
    };
    let mine = model::only_queue(&settings, &model::results_queue());
    let worker = match Worker::new(mine)
        .handler(&model::results_queue(), aggregator)
        .start()
        .await
    {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "billing controller could not start");
            return ExitCode::from(2);
        }
    };
    let bus = worker.bus();
    let submitted = bus.observe(
        Filter::new(),
        |s: ebbflow::bus::Received<Submitted>| async move {
            info!(batch = %s.body.batch, items = s.body.items, transactions = s.body.transactions,
              from = %s.from, "submission announced");
            Ok(())
        },
    );
    tokio::spawn(announce(bus, ledger, rx));
    let report = worker.run().await;
    submitted.abort();
    for q in &report.queues {
        info!(queue = %q.queue, handled = q.handled, receive_calls = q.receive_calls,
              poisoned = q.poisoned, "final counts");
    }
    ExitCode::from(u8::try_from(report.exit_code()).unwrap_or(1))
}

/// Tells every instance what the ledger asks; a completion is retried until the bus takes it
/// (Redis may be down for a while), progress is not (the next one says more).
async fn announce(
    bus: BusHandle,
    ledger: Arc<Mutex<Ledger>>,
    mut notes: mpsc::UnboundedReceiver<Note>,
) {
    while let Some(note) = notes.recv().await {
        match note {
            Note::Progress(p) => {
                info!(batch = %p.batch, done = p.done, of = p.of, "progress");
                if let Err(e) = bus.publish(&p, Address::All).await {
                    warn!(error = %e, "progress not announced");
                }
            }
            Note::Completed(c) => {
                info!(batch = %c.batch, items = c.items, transactions = c.transactions,
                      amount_cents = c.amount_cents, tax_cents = c.tax_cents,
                      duplicates = c.duplicates, by_processor = ?c.by_processor,
                      elapsed_ms = c.elapsed_ms, "submission billed");
                let mut delay = Duration::from_millis(200);
                while let Err(e) = bus.publish(&c, Address::All).await {
                    warn!(error = %e, retry_in = ?delay, "completion not announced yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                // A controller stopped before this line announces it again when it starts.
                if let Err(e) = ledger.lock().await.announced(&c.batch).await {
                    warn!(error = %e, "completion announced, but not marked so in the ledger");
                }
            }
        }
    }
}

//! The billing scenario's controller role: aggregates the results of `billing-results` per
//! submission (each item once: a result for an item already counted is a duplicate, counted
//! and not billed again) and tells every instance on the bus about progress (every tenth of
//! a submission) and completion.
//!
//! Run with: `scripts/billing` (the whole scenario), or on its own:
//! `EBBFLOW_CONFIG_DIR=config/billing EBBFLOW__BUS__ROLE=controller cargo run --bin billing-controller`

// A binary has no public surface: its modules' `pub` items are for each other.
#![allow(unreachable_pub)]

#[path = "model.rs"]
mod model;

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ebbflow::bus::{Address, BusHandle, Filter};
use ebbflow::{Context, Handler, HandlerError, Json, Worker};
use model::{Completed, ItemResult, Progress, Submitted};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// One submission's aggregate.
struct Batch {
    of: u32,
    items: BTreeSet<u32>,
    transactions: u64,
    amount_cents: u64,
    tax_cents: u64,
    duplicates: u32,
    by_processor: BTreeMap<String, u32>,
    first: Instant,
    completed: bool,
}

/// What the aggregate asks to be told on the bus.
enum Note {
    Progress(Progress),
    Completed(Completed),
}

#[derive(Default)]
struct Ledger {
    batches: BTreeMap<String, Batch>,
}

impl Ledger {
    /// Adds one result; returns what to announce.
    fn add(&mut self, r: ItemResult) -> Vec<Note> {
        let batch = self
            .batches
            .entry(r.batch.clone())
            .or_insert_with(|| Batch {
                of: r.of,
                items: BTreeSet::new(),
                transactions: 0,
                amount_cents: 0,
                tax_cents: 0,
                duplicates: 0,
                by_processor: BTreeMap::new(),
                first: Instant::now(),
                completed: false,
            });
        if !batch.items.insert(r.item) {
            batch.duplicates += 1;
            warn!(batch = %r.batch, item = r.item, processor = %r.processor,
                  "a second result for an item already billed; not counted again");
            return Vec::new();
        }
        batch.transactions += r.transactions;
        batch.amount_cents += r.amount_cents;
        batch.tax_cents += r.tax_cents;
        *batch.by_processor.entry(r.processor).or_default() += 1;
        let done = batch.items.len() as u32;
        let mut notes = Vec::new();
        let tenth = (batch.of / 10).max(1);
        if done.is_multiple_of(tenth) && done < batch.of {
            notes.push(Note::Progress(Progress {
                batch: r.batch.clone(),
                done,
                of: batch.of,
            }));
        }
        if done == batch.of && !batch.completed {
            batch.completed = true;
            notes.push(Note::Completed(Completed {
                batch: r.batch,
                items: done,
                transactions: batch.transactions,
                amount_cents: batch.amount_cents,
                tax_cents: batch.tax_cents,
                duplicates: batch.duplicates,
                by_processor: batch.by_processor.clone(),
                elapsed_ms: batch.first.elapsed().as_millis() as u64,
            }));
        }
        notes
    }
}

struct Aggregator {
    ledger: Arc<Mutex<Ledger>>,
    notes: mpsc::UnboundedSender<Note>,
}

impl Handler for Aggregator {
    type Message = Json<ItemResult>;

    async fn handle(&self, Json(r): Json<ItemResult>, _ctx: Context) -> Result<(), HandlerError> {
        if r.of == 0 || r.item >= r.of {
            return Err(HandlerError::poison(format!(
                "batch {} item {} of {}: not a valid item number",
                r.batch, r.item, r.of
            )));
        }
        let notes = self
            .ledger
            .lock()
            .map_err(|_| HandlerError::retry("ledger lock poisoned"))?
            .add(r);
        for note in notes {
            // The announcer lives as long as the worker.
            let _ = self.notes.send(note);
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let Ok(settings) = ebbflow::setup("info") else {
        return ExitCode::from(2);
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let aggregator = Aggregator {
        ledger: Arc::default(),
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
    tokio::spawn(announce(bus, rx));
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
async fn announce(bus: BusHandle, mut notes: mpsc::UnboundedReceiver<Note>) {
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
            }
        }
    }
}

//! The billing scenario's initiator role: takes one submission of transactions, de-batches it
//! into work items spread over the range of queues behind `billing-work` (its shards),
//! announces the work once on the bus (after the last item, as the whitepaper's initiator
//! does), then follows the controller's progress and completion events and checks the bill.
//!
//! Run with: `scripts/billing` (the whole scenario), or on its own:
//! `EBBFLOW_CONFIG_DIR=config/billing EBBFLOW__BUS__ROLE=initiator cargo run --bin billing-initiator`
//!
//! Environment: `BILLING_TRANSACTIONS` (default 5000), `BILLING_ITEM_SIZE` transactions per work
//! item (default 50), `BILLING_CUSTOMERS` (default 300), `BILLING_SEED` (default 1),
//! `BILLING_WAIT_S` how long to wait for completion (default 120), `BILLING_ANNOUNCE=0` to send
//! no work-detected event (another producer announces the work), plus the usual settings.
//! Exits 0 when the controller reports every item billed exactly once with the expected sum
//! (results delivered twice are reported as `duplicates`, not billed again),
//! 1 when it reports anything else or nothing in time, 2 on a start-up error.

// A binary has no public surface: its modules' `pub` items are for each other.
#![allow(unreachable_pub)]

#[path = "model.rs"]
mod model;
#[path = "../support.rs"]
mod support;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ebbflow::bus::{Address, Announced, Announcer, Filter};
use model::{Completed, Progress, Submitted, WorkItem};
use tracing::{error, info, warn};

/// Sends in flight at once.
const SENDS: usize = 16;

struct Plan {
    transactions: u64,
    item_size: u64,
    customers: u64,
    seed: u64,
    wait: Duration,
    announce: bool,
}

fn plan() -> Result<Plan, String> {
    let item_size = support::env_u64("BILLING_ITEM_SIZE", 50)?;
    if item_size == 0 || item_size > 1_000 {
        return Err(format!(
            "BILLING_ITEM_SIZE = {item_size}: must be 1..=1000 (a work item must fit in 64 KiB)"
        ));
    }
    Ok(Plan {
        transactions: support::env_u64("BILLING_TRANSACTIONS", 5_000)?,
        item_size,
        customers: support::env_u64("BILLING_CUSTOMERS", 300)?,
        seed: support::env_u64("BILLING_SEED", 1)?,
        wait: Duration::from_secs(support::env_u64("BILLING_WAIT_S", 120)?),
        announce: support::env_u64("BILLING_ANNOUNCE", 1)? != 0,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let Ok(mut settings) = ebbflow::setup("info") else {
        return ExitCode::from(2);
    };
    model::instance_id(&mut settings);
    match run(settings).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            error!(error = %e, "billing initiator failed");
            ExitCode::from(2)
        }
    }
}

async fn run(settings: ebbflow::Settings) -> Result<bool, Box<dyn std::error::Error>> {
    let plan = plan()?;
    let store = model::store(&settings)?;
    let work = model::publisher(&settings, &store, &model::work_queue()).await?;
    let bus = ebbflow::bus::open(&settings.bus).await?;
    // Subscribe before delivery starts, so no event is missed.
    let mut progress = bus.subscribe::<Progress>(Filter::new());
    let mut completed = bus.subscribe::<Completed>(Filter::new());
    bus.start();

    // De-batch: the submission into items of `item_size` transactions.
    let transactions = model::submission(plan.transactions, plan.customers, plan.seed);
    let expected: u64 = transactions.iter().map(|t| t.amount_cents).sum();
    let batch = format!("b{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let chunks: Vec<_> = transactions.chunks(plan.item_size as usize).collect();
    let of = u32::try_from(chunks.len()).map_err(|_| "too many work items")?;
    let items: Vec<WorkItem> = chunks
        .into_iter()
        .enumerate()
        .map(|(n, chunk)| WorkItem {
            batch: batch.clone(),
            item: n as u32,
            of,
            transactions: chunk.to_vec(),
        })
        .collect();
    let sending = Instant::now();
    let items = Arc::new(items);
    let mut senders = tokio::task::JoinSet::new();
    for lane in 0..SENDS {
        let (work, items) = (work.clone(), items.clone());
        senders.spawn(async move {
            for item in items.iter().skip(lane).step_by(SENDS) {
                work.send_json(item).await?;
            }
            Ok::<_, ebbflow::handler::PublishError>(())
        });
    }
    while let Some(sent) = senders.join_next().await {
        sent??;
    }
    info!(%batch, items = of, transactions = plan.transactions, queue = %model::work_queue(),
          shards = settings.queues.get(&model::work_queue()).map_or(1, |q| q.shards.get()),
          send_ms = sending.elapsed().as_millis() as u64, "submission de-batched");

    // One work-detected event for the whole submission: one processor wakes, finds full
    // batches and passes the word on, so the work spreads over the replicas. The bus is a hint:
    // while it is down the replicas' outage probe finds the work, so a failure is not fatal.
    if plan.announce {
        let queue_bus = settings
            .queues
            .get(&model::work_queue())
            .map(|q| q.bus)
            .unwrap_or_default();
        let announcer = Announcer::new(bus.transport(), &model::work_queue(), queue_bus);
        if announcer.announce(u64::from(of), 0).await != Announced::Sent {
            warn!("work-detected not announced (bus down?); the replicas' outage probe will find the work");
        }
    }
    let submitted = Submitted {
        batch: batch.clone(),
        items: of,
        transactions: plan.transactions,
        amount_cents: expected,
    };
    if let Err(e) = bus.publish(&submitted, Address::role("controller")).await {
        warn!(error = %e, "submission not announced to the controller");
    }

    let deadline = tokio::time::Instant::now() + plan.wait;
    let outcome = loop {
        tokio::select! {
            Some(p) = progress.next() => {
                if p.body.batch == batch {
                    info!(%batch, done = p.body.done, of = p.body.of, "progress");
                }
            }
            Some(c) = completed.next() => {
                if c.body.batch == batch {
                    break Some(c.body);
                }
            }
            _ = tokio::time::sleep_until(deadline) => break None,
        }
    };
    bus.transport().close().await;
    let Some(c) = outcome else {
        error!(%batch, waited = ?plan.wait, "no completion reported in time");
        return Ok(false);
    };
    // Each item counted once with the sum sent. A result delivered twice (a send retried after
    // its first try landed unseen) is a duplicate the controller did not bill again.
    let right = c.items == of && c.transactions == plan.transactions && c.amount_cents == expected;
    info!(%batch, items = c.items, transactions = c.transactions, amount_cents = c.amount_cents,
          expected_cents = expected, tax_cents = c.tax_cents, duplicates = c.duplicates,
          by_processor = ?c.by_processor, elapsed_ms = c.elapsed_ms,
          total_ms = sending.elapsed().as_millis() as u64,
          verdict = if right { "billed exactly once" } else { "WRONG" }, "submission completed");
    Ok(right)
}

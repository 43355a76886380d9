//! The billing scenario's controller role: aggregates the results of `billing-results` per
//! submission (each item once: a result for an item already counted is a duplicate, counted
//! and not billed again) and tells every instance on the bus about progress (every tenth of
//! a submission) and completion. The totals are kept in the bus's Redis, so a controller
//! killed mid-run and started again reports the same totals.
//!
//! Run with: `scripts/billing` (the whole scenario), or on its own:
//! `EBBFLOW_CONFIG_DIR=config/billing EBBFLOW__BUS__ROLE=controller cargo run --bin billing-controller`

#[path = "model.rs"]
mod model;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use ebbflow::bus::{Address, BusHandle, Filter};
use ebbflow::{Context, Handler, HandlerError, Json, Worker};
use model::{Completed, ItemResult, Progress, Submitted};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// What the aggregate asks to be told on the bus.
enum Note {
    Progress(Progress),
    /// A completion, and the ledger key to mark once it was announced.
    Completed(Completed, String),
}

/// One result added to a submission's ledger in Redis, atomically. KEYS: the batch's hash, its
/// set of items seen, its per-processor counts. ARGV: item, of, transactions, amount, tax,
/// processor, now (ms), expiry (s). Returns whether the item was new, the items seen, the hash
/// and the per-processor counts (flat field/value lists).
const ADD: &str = r"
local fresh = redis.call('SADD', KEYS[2], ARGV[1])
redis.call('HSETNX', KEYS[1], 'of', ARGV[2])
redis.call('HSETNX', KEYS[1], 'first_ms', ARGV[7])
if fresh == 1 then
  redis.call('HINCRBY', KEYS[1], 'transactions', ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'amount_cents', ARGV[4])
  redis.call('HINCRBY', KEYS[1], 'tax_cents', ARGV[5])
  redis.call('HINCRBY', KEYS[3], ARGV[6], 1)
else
  redis.call('HINCRBY', KEYS[1], 'duplicates', 1)
end
for _, k in ipairs(KEYS) do redis.call('EXPIRE', k, ARGV[8]) end
return {fresh, redis.call('SCARD', KEYS[2]), redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[3])}
";

/// A ledger entry kept this long after its last result (seconds): a day.
const KEEP_S: u64 = 86_400;

/// The submissions' totals, kept in the bus's Redis (`<bus.channel_prefix>:billing:<batch>`),
/// so a controller killed mid-run and started again goes on from the same totals: each item is
/// counted once however often its result arrives, and a completion not yet announced when the
/// controller died is announced by the next result (a redelivery counts as a duplicate).
#[derive(Clone)]
struct Ledger {
    redis: redis::aio::ConnectionManager,
    prefix: String,
}

impl Ledger {
    async fn connect(url: &str, prefix: &str) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        Ok(Self {
            redis: redis::aio::ConnectionManager::new(client).await?,
            prefix: format!("{prefix}:billing"),
        })
    }

    fn key(&self, batch: &str, part: &str) -> String {
        format!("{}:{batch}{part}", self.prefix)
    }

    /// Adds one result; returns what to announce.
    async fn add(&self, r: ItemResult) -> Result<Vec<Note>, redis::RedisError> {
        let batch_key = self.key(&r.batch, "");
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(ADD)
            .arg(3)
            .arg(&batch_key)
            .arg(self.key(&r.batch, ":items"))
            .arg(self.key(&r.batch, ":by"))
            .arg(r.item)
            .arg(r.of)
            .arg(r.transactions)
            .arg(r.amount_cents)
            .arg(r.tax_cents)
            .arg(&r.processor)
            .arg(ebbflow::bus::now_ms())
            .arg(KEEP_S);
        let mut con = self.redis.clone();
        let (fresh, done, hash, by): (i64, u32, Vec<(String, String)>, Vec<(String, u32)>) =
            cmd.query_async(&mut con).await?;
        let hash: BTreeMap<String, String> = hash.into_iter().collect();
        let num = |f: &str| hash.get(f).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let of = num("of") as u32;
        let mut notes = Vec::new();
        if fresh == 0 {
            warn!(batch = %r.batch, item = r.item, processor = %r.processor,
                  "a second result for an item already billed; not counted again");
        }
        let tenth = (of / 10).max(1);
        if fresh == 1 && done.is_multiple_of(tenth) && done < of {
            notes.push(Note::Progress(Progress {
                batch: r.batch.clone(),
                done,
                of,
            }));
        }
        if done == of && !hash.contains_key("announced") {
            notes.push(Note::Completed(
                Completed {
                    batch: r.batch,
                    items: done,
                    transactions: num("transactions"),
                    amount_cents: num("amount_cents"),
                    tax_cents: num("tax_cents"),
                    duplicates: num("duplicates") as u32,
                    by_processor: by.into_iter().collect(),
                    elapsed_ms: ebbflow::bus::now_ms().saturating_sub(num("first_ms")),
                },
                batch_key,
            ));
        }
        Ok(notes)
    }

    /// Marks a submission's completion as announced.
    async fn announced(&self, batch_key: &str) -> Result<(), redis::RedisError> {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(batch_key).arg("announced").arg(1);
        let mut con = self.redis.clone();
        cmd.query_async::<i64>(&mut con).await.map(|_| ())
    }
}

struct Aggregator {
    ledger: Ledger,
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
        // Redis unreachable: the result is retried later, never counted from memory only.
        let notes = self
            .ledger
            .add(r)
            .await
            .map_err(|e| HandlerError::retry(format!("ledger not updated in Redis: {e}")))?;
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
    // The ledger lives in the bus's Redis (its URL from EBBFLOW__BUS__URL, as the scenario's
    // config says), under the bus's prefix.
    let Ok(url) = std::env::var("EBBFLOW__BUS__URL") else {
        tracing::error!(
            "EBBFLOW__BUS__URL is not set: the controller keeps its ledger in the bus's Redis"
        );
        return ExitCode::from(2);
    };
    let ledger = match Ledger::connect(&url, settings.bus.channel_prefix.as_str()).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e.to_string().replace(&url, "EBBFLOW__BUS__URL"), "cannot reach the ledger in Redis");
            return ExitCode::from(2);
        }
    };
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
async fn announce(bus: BusHandle, ledger: Ledger, mut notes: mpsc::UnboundedReceiver<Note>) {
    while let Some(note) = notes.recv().await {
        match note {
            Note::Progress(p) => {
                info!(batch = %p.batch, done = p.done, of = p.of, "progress");
                if let Err(e) = bus.publish(&p, Address::All).await {
                    warn!(error = %e, "progress not announced");
                }
            }
            Note::Completed(c, key) => {
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
                if let Err(e) = ledger.announced(&key).await {
                    // Announced again with the next result for it (at least once).
                    warn!(error = %e, "completion not marked announced in the ledger");
                }
            }
        }
    }
}

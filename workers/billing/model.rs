//! What the billing scenario's three roles share: the queues' names, the messages on them, the
//! events on the bus, and the few lines each role needs to reach the store.
//!
//! The scenario is the whitepaper's billing system: an initiator de-batches a submission of
//! transactions into work items spread over a range of queues (one logical queue,
//! `billing-work`, over `shards` physical queues), processing replicas bill each item and send
//! the result to `billing-results`, and a controller aggregates the results and tells every
//! instance about progress and completion over the bus.

// Each binary uses its own part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use ebbflow::bus::Event;
use ebbflow::store::QueueStore;
use ebbflow::store::RetryingStore;
use ebbflow::store::ShardingStore;
use ebbflow::{Publisher, Settings};
use serde::{Deserialize, Serialize};

/// The logical queue of work items (spread over its shards): `billing-work`, or
/// `<BILLING_QUEUE_PREFIX>-work`.
pub fn work_queue() -> String {
    format!("{}-work", queue_prefix())
}

/// The queue processors send results to and the controller aggregates from:
/// `billing-results`, or `<BILLING_QUEUE_PREFIX>-results`.
pub fn results_queue() -> String {
    format!("{}-results", queue_prefix())
}

/// `BILLING_QUEUE_PREFIX` (default `billing`): lets several runs share one storage account.
fn queue_prefix() -> String {
    std::env::var("BILLING_QUEUE_PREFIX")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "billing".to_string())
}

/// One billable transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// The customer billed.
    pub customer: String,
    /// The amount, in cents.
    pub amount_cents: u64,
}

/// A work item: a slice of one submission, sized for one handler call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkItem {
    /// The submission it belongs to.
    pub batch: String,
    /// Its number in the submission, `0..of`.
    pub item: u32,
    /// How many items the submission was split into.
    pub of: u32,
    /// Its transactions.
    pub transactions: Vec<Transaction>,
}

/// What a processor sends to the results queue for one item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemResult {
    /// The submission.
    pub batch: String,
    /// The item's number.
    pub item: u32,
    /// Items in the submission.
    pub of: u32,
    /// Transactions billed.
    pub transactions: u64,
    /// Their sum, in cents.
    pub amount_cents: u64,
    /// Tax on it, in cents.
    pub tax_cents: u64,
    /// Customers invoiced in this item.
    pub customers: u64,
    /// The processor instance that billed it.
    pub processor: String,
}

/// Tax in basis points (20 %).
pub const TAX_BP: u64 = 2_000;

/// Bills one work item: the sum, the tax on each customer's subtotal, the customers.
pub fn bill(item: &WorkItem, processor: &str) -> ItemResult {
    let mut by_customer: BTreeMap<&str, u64> = BTreeMap::new();
    for t in &item.transactions {
        *by_customer.entry(&t.customer).or_default() += t.amount_cents;
    }
    let amount_cents = by_customer.values().sum();
    let tax_cents = by_customer.values().map(|a| a * TAX_BP / 10_000).sum();
    ItemResult {
        batch: item.batch.clone(),
        item: item.item,
        of: item.of,
        transactions: item.transactions.len() as u64,
        amount_cents,
        tax_cents,
        customers: by_customer.len() as u64,
        processor: processor.to_string(),
    }
}

/// A submission of `count` transactions over `customers` customers, the same for the same
/// `seed` (so a run can be checked against its expected sum).
pub fn submission(count: u64, customers: u64, seed: u64) -> Vec<Transaction> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..count)
        .map(|n| {
            // xorshift: enough spread for amounts, no dependency.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Transaction {
                customer: format!("c{:05}", n % customers.max(1)),
                amount_cents: 100 + x % 9_900,
            }
        })
        .collect()
}

/// The initiator announced a submission (to every controller).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    /// The submission.
    pub batch: String,
    /// Work items it was split into.
    pub items: u32,
    /// Transactions in it.
    pub transactions: u64,
    /// Their sum, in cents.
    pub amount_cents: u64,
}

impl Event for Submitted {
    const KIND: &'static str = "billing.submitted";
}

/// The controller's progress on a submission (to every instance).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The submission.
    pub batch: String,
    /// Items aggregated so far.
    pub done: u32,
    /// Items in the submission.
    pub of: u32,
}

impl Event for Progress {
    const KIND: &'static str = "billing.progress";
}

/// A submission is billed: every item aggregated (to every instance).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completed {
    /// The submission.
    pub batch: String,
    /// Items aggregated (each once).
    pub items: u32,
    /// Transactions billed.
    pub transactions: u64,
    /// Their sum, in cents.
    pub amount_cents: u64,
    /// Tax, in cents.
    pub tax_cents: u64,
    /// Results that arrived for an item already aggregated (0 when nothing failed).
    pub duplicates: u32,
    /// Items billed by each processor instance.
    pub by_processor: BTreeMap<String, u32>,
    /// From the first result to the last, milliseconds.
    pub elapsed_ms: u64,
}

impl Event for Completed {
    const KIND: &'static str = "billing.completed";
}

/// The store a role sends through, as the worker builds it: retries, then the sharding layer
/// that spreads a logical queue over its shards.
pub fn store(settings: &Settings) -> Result<Arc<dyn QueueStore>, ebbflow::store::StoreError> {
    let store = ebbflow::store::open(&settings.storage)?;
    let store = RetryingStore::wrap(store, settings.storage.retry);
    Ok(ShardingStore::wrap_sharded(store, settings.shard_counts()))
}

/// A publisher for `queue` (configured in `settings`), in its encoding.
pub async fn publisher(
    settings: &Settings,
    store: &Arc<dyn QueueStore>,
    queue: &str,
) -> Result<Publisher, Box<dyn std::error::Error>> {
    let queue_settings = settings
        .queues
        .get(queue)
        .ok_or_else(|| format!("config has no [queues.{queue}] section"))?;
    let q = store.queue(queue)?;
    q.create_if_missing().await?;
    Ok(Publisher::new(q, queue_settings.encoding))
}

/// This instance's bus id: the configured `bus.instance_id`, or a generated one written into
/// `settings` (so the worker uses the same).
pub fn instance_id(settings: &mut Settings) -> String {
    let role = settings.bus.role.clone();
    settings
        .bus
        .instance_id
        .get_or_insert_with(|| ebbflow::bus::Member::generated_id(&role))
        .to_string()
}

/// Keeps only `keep` of the configured queues: each role listens to its own.
pub fn only_queue(settings: &Settings, keep: &str) -> Settings {
    let mut mine = settings.clone();
    mine.queues.retain(|name, _| name == keep);
    mine
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn billing_sums_and_taxes_per_customer() {
        let item = WorkItem {
            batch: "b".into(),
            item: 0,
            of: 1,
            transactions: submission(100, 7, 3),
        };
        let r = bill(&item, "p");
        let sum: u64 = item.transactions.iter().map(|t| t.amount_cents).sum();
        assert_eq!((r.amount_cents, r.transactions, r.customers), (sum, 100, 7));
        assert!(r.tax_cents <= sum / 5 && r.tax_cents + 7 >= sum / 5);
        assert_eq!(submission(10, 3, 1), submission(10, 3, 1));
        assert_ne!(submission(10, 3, 1), submission(10, 3, 2));
    }
}

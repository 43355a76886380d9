//! The billing controller's ledger: one record per submission (the items counted, with the
//! message each came in, the totals, duplicates, per-processor counts, whether the completion
//! was announced), kept in blob storage, so a controller killed mid-run and started again
//! carries on with the same totals.
//!
//! Each record is the blob `<results queue>/<batch>.json` in the container `billing-ledger` of
//! the storage account (the blob service the connection string names, or
//! `storage.claim_check.blob_endpoint`). A result is counted in memory only once its record is
//! written; the result message is deleted after that, so a controller killed in between gets
//! the same message again and recognises it by its message id (not a duplicate). Without a
//! blob endpoint (the embedded store) the ledger lives in memory only, and says so.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ebbflow::store::{BlobErrorKind, BlobStore};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::model::{Completed, ItemResult, Progress};

/// The container the records are kept in.
pub const CONTAINER: &str = "billing-ledger";
/// The largest record read back (a submission of 100,000 items is about 5 MB).
const MAX_RECORD: u64 = 64 << 20;

/// One submission's aggregate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub batch: String,
    pub of: u32,
    /// Each item counted, with the id of the result message that brought it.
    pub items: BTreeMap<u32, String>,
    pub transactions: u64,
    pub amount_cents: u64,
    pub tax_cents: u64,
    pub duplicates: u32,
    pub by_processor: BTreeMap<String, u32>,
    /// When its first result was counted, milliseconds since the Unix epoch.
    pub started_ms: u64,
    pub completed: bool,
    /// The completion event was taken by the bus.
    pub announced: bool,
}

impl Record {
    fn new(batch: &str, of: u32) -> Self {
        Self {
            batch: batch.to_string(),
            of,
            items: BTreeMap::new(),
            transactions: 0,
            amount_cents: 0,
            tax_cents: 0,
            duplicates: 0,
            by_processor: BTreeMap::new(),
            started_ms: now_ms(),
            completed: false,
            announced: false,
        }
    }

    /// The completion event this record stands for.
    pub fn completion(&self) -> Completed {
        Completed {
            batch: self.batch.clone(),
            items: self.items.len() as u32,
            transactions: self.transactions,
            amount_cents: self.amount_cents,
            tax_cents: self.tax_cents,
            duplicates: self.duplicates,
            by_processor: self.by_processor.clone(),
            elapsed_ms: now_ms().saturating_sub(self.started_ms),
        }
    }
}

/// What a result asks to be told on the bus.
pub enum Note {
    Progress(Progress),
    Completed(Completed),
}

/// `r` added to `record` (a copy: the caller keeps it once it is stored), and what to announce.
/// A result for an item already counted from another message is a duplicate, counted and not
/// billed again; the same message again (its delete was lost with a killed controller) changes
/// nothing, but a completion not yet announced is announced again.
pub fn add(record: &Record, r: ItemResult, message_id: &str) -> (Record, Vec<Note>) {
    let mut next = record.clone();
    let mut notes = Vec::new();
    match next.items.get(&r.item) {
        Some(id) if id == message_id => {
            if next.completed && !next.announced {
                notes.push(Note::Completed(next.completion()));
            }
            return (next, notes);
        }
        Some(_) => {
            next.duplicates += 1;
            warn!(batch = %r.batch, item = r.item, processor = %r.processor,
                  "a second result for an item already billed; not counted again");
            return (next, notes);
        }
        None => {}
    }
    next.items.insert(r.item, message_id.to_string());
    next.transactions += r.transactions;
    next.amount_cents += r.amount_cents;
    next.tax_cents += r.tax_cents;
    *next.by_processor.entry(r.processor).or_default() += 1;
    let done = next.items.len() as u32;
    let tenth = (next.of / 10).max(1);
    if done.is_multiple_of(tenth) && done < next.of {
        notes.push(Note::Progress(Progress {
            batch: next.batch.clone(),
            done,
            of: next.of,
        }));
    }
    if done == next.of && !next.completed {
        next.completed = true;
        notes.push(Note::Completed(next.completion()));
    }
    (next, notes)
}

/// The records, in memory and (when a blob endpoint is known) in storage.
pub struct Ledger {
    records: BTreeMap<String, Record>,
    blobs: Option<Arc<dyn BlobStore>>,
    /// Blob names start with this (the results queue's name and a slash).
    prefix: String,
}

impl Ledger {
    /// A ledger kept in `blobs` under `<results_queue>/`, or in memory only.
    pub fn new(blobs: Option<Arc<dyn BlobStore>>, results_queue: &str) -> Self {
        Self {
            records: BTreeMap::new(),
            blobs,
            prefix: format!("{results_queue}/"),
        }
    }

    fn name(&self, batch: &str) -> String {
        format!("{}{batch}.json", self.prefix)
    }

    /// The record of `batch`, read from storage the first time (a new one if none is there).
    ///
    /// # Errors
    ///
    /// The blob could not be read or does not parse (the result is retried later).
    pub async fn record(&mut self, batch: &str, of: u32) -> Result<Record, String> {
        if let Some(r) = self.records.get(batch) {
            return Ok(r.clone());
        }
        let record = match &self.blobs {
            None => Record::new(batch, of),
            Some(blobs) => match blobs.get(&self.name(batch), MAX_RECORD).await {
                Ok(bytes) => {
                    let r: Record = serde_json::from_slice(&bytes)
                        .map_err(|e| format!("ledger record {batch} does not parse: {e}"))?;
                    info!(%batch, items = r.items.len(), of = r.of, "ledger record read back");
                    r
                }
                Err(e) if e.kind == BlobErrorKind::NotFound => Record::new(batch, of),
                Err(e) => return Err(format!("ledger record {batch} not read: {e}")),
            },
        };
        self.records.insert(batch.to_string(), record.clone());
        Ok(record)
    }

    /// Stores `record` (in storage first; in memory once it is there).
    ///
    /// # Errors
    ///
    /// The blob could not be written: nothing changed, the result is retried later.
    pub async fn keep(&mut self, record: Record) -> Result<(), String> {
        if let Some(blobs) = &self.blobs {
            let bytes = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
            blobs
                .put(&self.name(&record.batch), bytes, BTreeMap::new())
                .await
                .map_err(|e| format!("ledger record {} not written: {e}", record.batch))?;
        }
        self.records.insert(record.batch.clone(), record);
        Ok(())
    }

    /// Marks `batch`'s completion as announced.
    pub async fn announced(&mut self, batch: &str) -> Result<(), String> {
        let Some(mut record) = self.records.get(batch).cloned() else {
            return Ok(());
        };
        record.announced = true;
        self.keep(record).await
    }

    /// Every stored record completed but not announced (a controller killed in between): read
    /// at start-up, so their completions go out again.
    pub async fn unannounced(&mut self) -> Result<Vec<Record>, String> {
        let Some(blobs) = self.blobs.clone() else {
            return Ok(Vec::new());
        };
        let listed = blobs
            .list(&self.prefix)
            .await
            .map_err(|e| format!("ledger records not listed: {e}"))?;
        let mut pending = Vec::new();
        for info in listed {
            let Some(batch) = info
                .name
                .strip_prefix(&self.prefix)
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            let record = self.record(batch, 0).await?;
            if record.completed && !record.announced {
                pending.push(record);
            }
        }
        Ok(pending)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(item: u32) -> ItemResult {
        ItemResult {
            batch: "b1".into(),
            item,
            of: 2,
            transactions: 10,
            amount_cents: 1_000,
            tax_cents: 200,
            customers: 3,
            processor: "p1".into(),
        }
    }

    #[test]
    fn the_same_message_again_is_not_a_duplicate_and_another_one_is() {
        let empty = Record::new("b1", 2);
        let (one, _) = add(&empty, result(0), "m0");
        let (again, notes) = add(&one, result(0), "m0");
        assert_eq!(again, one, "a redelivery changes nothing");
        assert!(notes.is_empty());
        let (dup, _) = add(&one, result(0), "m9");
        assert_eq!(dup.duplicates, 1);
        assert_eq!(dup.amount_cents, 1_000, "not billed again");
        let (done, notes) = add(&one, result(1), "m1");
        assert!(done.completed);
        assert!(
            matches!(notes.last(), Some(Note::Completed(c)) if c.items == 2 && c.amount_cents == 2_000)
        );
        // Killed before the completion was announced: the redelivered message announces it.
        let (_, notes) = add(&done, result(1), "m1");
        assert!(matches!(notes.as_slice(), [Note::Completed(_)]));
    }

    #[tokio::test]
    async fn a_second_ledger_on_the_same_blobs_reads_the_totals_back() {
        let blobs: Arc<dyn BlobStore> = Arc::new(ebbflow::store::MemoryBlobs::new(CONTAINER));
        let mut first = Ledger::new(Some(blobs.clone()), "q");
        let r = first.record("b1", 2).await.unwrap();
        let (r, _) = add(&r, result(0), "m0");
        first.keep(r.clone()).await.unwrap();
        let mut second = Ledger::new(Some(blobs), "q");
        assert_eq!(second.record("b1", 2).await.unwrap(), r);
        let (done, _) = add(&r, result(1), "m1");
        second.keep(done).await.unwrap();
        let pending = second.unannounced().await.unwrap();
        assert_eq!(pending.len(), 1);
        second.announced("b1").await.unwrap();
        assert!(second.unannounced().await.unwrap().is_empty());
    }
}

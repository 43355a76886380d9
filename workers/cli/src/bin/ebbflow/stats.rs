//! `ebbflow stats`: approximate depth of each configured queue and its poison queue.

use std::sync::Arc;

use ebbflow::store::shard_name;
use ebbflow::store::{QueueStore, StoreError};
use serde::Serialize;

use crate::context::block_on;
use crate::{CliError, Context};

/// Prints, for each configured queue and its poison queue, whether it exists and its
/// approximate depth (the service's `x-ms-approximate-messages-count`: invisible messages
/// included; a sharded queue's shards summed, and its missing shards named). One Get
/// Properties call per queue (per shard); nothing is created.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

/// One configured queue's row.
#[derive(Debug, Serialize)]
struct Row {
    queue: String,
    exists: bool,
    /// Approximate depth; null when the queue does not exist (for a sharded queue: the sum
    /// over the shards that exist, null when none does).
    depth: Option<u64>,
    /// A sharded queue's shards that do not exist (then `exists` is false): a worker creates
    /// them at start-up. Left out for an unsharded queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    missing_shards: Option<Vec<String>>,
    poison_queue: String,
    poison_exists: bool,
    poison_depth: Option<u64>,
}

impl Args {
    /// Probes every configured queue and prints the rows.
    pub fn run(self, ctx: &Context) -> Result<(), CliError> {
        let settings = ctx.settings()?;
        let store = ctx.store(&settings)?;
        let rows = block_on(async {
            let mut rows = Vec::new();
            for (name, q) in &settings.queues {
                let poison = q.poison_queue_name(name);
                let (depth, missing_shards) = match q.shards.get() {
                    1 => (depth_of(&store, name).await?, None),
                    n => {
                        let (depth, missing) = shard_depths(&store, name, n).await?;
                        (depth, Some(missing))
                    }
                };
                let poison_depth = depth_of(&store, &poison).await?;
                rows.push(Row {
                    queue: name.clone(),
                    exists: depth.is_some() && missing_shards.as_ref().is_none_or(Vec::is_empty),
                    depth,
                    missing_shards,
                    poison_exists: poison_depth.is_some(),
                    poison_queue: poison,
                    poison_depth,
                });
            }
            Ok::<_, CliError>(rows)
        })??;
        if self.json {
            let text = serde_json::to_string_pretty(&rows).map_err(CliError::runtime)?;
            say!("{text}");
            return Ok(());
        }
        if rows.is_empty() {
            say!("no queues configured (add a [queues.<name>] section)");
            return Ok(());
        }
        let width = rows
            .iter()
            .map(|r| r.poison_queue.len())
            .max()
            .unwrap_or(0)
            .max(12);
        say!(
            "{:width$}  {:>8}  {:width$}  {:>8}",
            "QUEUE",
            "DEPTH",
            "POISON QUEUE",
            "DEPTH"
        );
        for r in &rows {
            say!(
                "{:width$}  {:>8}  {:width$}  {:>8}",
                r.queue,
                shown(r.depth),
                r.poison_queue,
                shown(r.poison_depth)
            );
        }
        for r in &rows {
            if let Some(missing) = r.missing_shards.as_ref().filter(|m| !m.is_empty()) {
                say!(
                    "{}: {} (its depth counts the other shards; a worker creates missing \
                     shards at start-up while storage.create_queues is true)",
                    r.queue,
                    missing
                        .iter()
                        .map(|m| format!("{m} missing"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        Ok(())
    }
}

/// `missing` for a queue that does not exist.
fn shown(depth: Option<u64>) -> String {
    depth.map_or_else(|| "missing".into(), |d| d.to_string())
}

/// A sharded queue's depth over the shards that exist (None when none does), and the names
/// of those that do not. Each shard is probed by its own name, which the sharding layer
/// passes through.
async fn shard_depths(
    store: &Arc<dyn QueueStore>,
    queue: &str,
    shards: usize,
) -> Result<(Option<u64>, Vec<String>), CliError> {
    let (mut depth, mut missing) = (None, Vec::new());
    for i in 0..shards {
        let shard = shard_name(queue, i);
        match depth_of(store, &shard).await? {
            Some(d) => depth = Some(depth.unwrap_or(0u64).saturating_add(d)),
            None => missing.push(shard),
        }
    }
    Ok((depth, missing))
}

/// The approximate depth, or None when the queue does not exist.
async fn depth_of(store: &Arc<dyn QueueStore>, name: &str) -> Result<Option<u64>, CliError> {
    match store.queue(name)?.approximate_depth().await {
        Ok(depth) => Ok(Some(depth)),
        Err(StoreError::QueueNotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

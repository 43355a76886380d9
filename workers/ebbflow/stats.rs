//! `ebbflow stats`: approximate depth of each configured queue and its poison queue.

use std::sync::Arc;

use ebbflow::store::{QueueStore, StoreError};
use serde::Serialize;

use crate::context::block_on;
use crate::{CliError, Context};

/// Prints, for each configured queue and its poison queue, whether it exists and its
/// approximate depth (the service's `x-ms-approximate-messages-count`: invisible messages
/// included). One Get Properties call per queue; nothing is created.
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
    /// Approximate depth; null when the queue does not exist.
    depth: Option<u64>,
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
                let depth = depth_of(&store, name).await?;
                let poison_depth = depth_of(&store, &poison).await?;
                rows.push(Row {
                    queue: name.clone(),
                    exists: depth.is_some(),
                    depth,
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
        Ok(())
    }
}

/// `missing` for a queue that does not exist.
fn shown(depth: Option<u64>) -> String {
    depth.map_or_else(|| "missing".into(), |d| d.to_string())
}

/// The approximate depth, or None when the queue does not exist.
async fn depth_of(store: &Arc<dyn QueueStore>, name: &str) -> Result<Option<u64>, CliError> {
    match store.queue(name)?.approximate_depth().await {
        Ok(depth) => Ok(Some(depth)),
        Err(StoreError::QueueNotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

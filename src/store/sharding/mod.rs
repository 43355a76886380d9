//! A store layer that presents one logical queue over `N` physical queues (shards), named
//! `<queue>-0 .. <queue>-{N-1}`: the whitepaper's answer once one queue's scalability target
//! (about 2,000 messages/s) is not enough.
//!
//! The logical queue keeps its configured name, so one listener (one scaling policy, one
//! concurrency cap, one snapshot and one set of metrics) and one publisher serve all shards:
//!
//! - **send** goes to the next shard in turn (round-robin, starting at a random shard in each
//!   process, so short-lived producers spread too), so sends spread evenly;
//! - **receive** starts at the next shard in turn and moves on to the following shards while
//!   the batch is short, until it holds what was asked or every shard was tried once. A short
//!   or empty batch therefore means what it means on one queue (every shard was drained), at
//!   the price of up to `N` receive calls when the queues are (nearly) empty;
//! - **delete** and **update** go to the shard the message came from: the layer prefixes the
//!   pop receipt it hands out with the shard's index (`3:<receipt>`); the message id is left
//!   as the service wrote it;
//! - **approximate depth** adds the shards' depths up (`N` calls), **peek** reads every shard
//!   and returns the oldest messages first, **create** creates every shard.
//!
//! Queues that are not sharded (poison queues among them: every shard's poison copies go to
//! the one `<queue>-poison`, or `poison_queue`) pass through unchanged.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{
    LayeredStore, PeekedMessage, Queue, QueueStore, ReceivedMessage, SendOptions, SentMessage,
    StoreError, StoreLayer, UnknownOutcomes, UpdatedMessage,
};

/// The physical queue name of shard `index` of `queue`: `<queue>-<index>`.
pub fn shard_name(queue: &str, index: usize) -> String {
    format!("{queue}-{index}")
}

/// The sharding layer: the queues named in its map span that many shards. A
/// [`StoreLayer`] that overrides only what it changes: the handle a sharded queue's name gives
/// ([`StoreLayer::queue`]) and that queue's unknown outcomes (the shards' added up).
pub struct Sharding {
    /// Per sharded queue: its shard count and the turn counters every handle of it shares
    /// (a handle taken per send still spreads).
    shards: BTreeMap<String, (usize, Arc<Turns>)>,
}

impl std::fmt::Debug for Sharding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shards: BTreeMap<&str, usize> = self
            .shards
            .iter()
            .map(|(q, (n, _))| (q.as_str(), *n))
            .collect();
        f.debug_struct("Sharding").field("shards", &shards).finish()
    }
}

/// A store with the [`Sharding`] layer on it.
pub type ShardingStore = LayeredStore<Sharding>;

/// Round-robin counters of one logical queue.
struct Turns {
    send: AtomicUsize,
    receive: AtomicUsize,
}

impl Turns {
    /// Counters starting at a random shard each, so that many short-lived producers (each
    /// process has its own layer, and may send only a few messages) spread over the shards
    /// instead of all sending their first message to shard 0.
    fn random() -> Self {
        // A u32 start keeps the counter far from wrapping, where `% n` would skip shards.
        let start = || AtomicUsize::new(rand::random::<u32>() as usize);
        Self {
            send: start(),
            receive: start(),
        }
    }
}

impl Sharding {
    /// The layer for these queues (name to shard count; counts of 1 are left out).
    pub fn new(shards: impl IntoIterator<Item = (String, usize)>) -> Self {
        Self {
            shards: shards
                .into_iter()
                .filter(|(_, n)| *n > 1)
                .map(|(name, n)| (name, (n, Arc::new(Turns::random()))))
                .collect(),
        }
    }
}

impl LayeredStore<Sharding> {
    /// Wraps `inner` so that each queue in `shards` (name to shard count) spans that many
    /// shards. Returns `inner` itself when no queue has more than one shard.
    pub fn wrap_sharded(
        inner: Arc<dyn QueueStore>,
        shards: impl IntoIterator<Item = (String, usize)>,
    ) -> Arc<dyn QueueStore> {
        let layer = Sharding::new(shards);
        if layer.shards.is_empty() {
            return inner;
        }
        LayeredStore::wrap(inner, layer)
    }
}

impl StoreLayer for Sharding {
    fn queue(&self, inner: &dyn QueueStore, name: &str) -> Result<Arc<dyn Queue>, StoreError> {
        let Some((n, turns)) = self.shards.get(name) else {
            return inner.queue(name);
        };
        let shards = (0..*n)
            .map(|i| inner.queue(&shard_name(name, i)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(ShardedQueue {
            name: name.to_string(),
            shards,
            turns: turns.clone(),
        }))
    }

    /// The shards' unknown outcomes added up, for a sharded queue.
    fn unknown_outcomes(&self, inner: &dyn QueueStore, queue: &str) -> UnknownOutcomes {
        let Some(&(n, _)) = self.shards.get(queue) else {
            return inner.unknown_outcomes(queue);
        };
        (0..n)
            .map(|i| inner.unknown_outcomes(&shard_name(queue, i)))
            .fold(UnknownOutcomes::default(), |a, b| UnknownOutcomes {
                receives: a.receives + b.receives,
                sends: a.sends + b.sends,
                deletes_confirmed: a.deletes_confirmed + b.deletes_confirmed,
                updates_in_doubt: a.updates_in_doubt + b.updates_in_doubt,
            })
    }
}

/// One logical queue over its shards. Every operation changes (rotates, routes or adds up),
/// so it is a [`Queue`] of its own rather than a [`super::QueueLayer`].
struct ShardedQueue {
    name: String,
    shards: Vec<Arc<dyn Queue>>,
    turns: Arc<Turns>,
}

impl ShardedQueue {
    fn turn(&self, cursor: &AtomicUsize) -> usize {
        cursor.fetch_add(1, Ordering::Relaxed) % self.shards.len()
    }

    /// The shard and the physical pop receipt inside a receipt this layer handed out.
    fn route<'a>(&self, id: &str, receipt: &'a str) -> Result<(usize, &'a str), StoreError> {
        receipt
            .split_once(':')
            .and_then(|(index, inner)| {
                let index = index.parse::<usize>().ok()?;
                (index < self.shards.len()).then_some((index, inner))
            })
            .ok_or_else(|| StoreError::MessageNotFound {
                queue: self.name.clone(),
                id: id.to_string(),
            })
    }
}

fn tagged(index: usize, receipt: &str) -> String {
    format!("{index}:{receipt}")
}

#[async_trait]
impl Queue for ShardedQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn create_if_missing(&self) -> Result<(), StoreError> {
        for shard in &self.shards {
            shard.create_if_missing().await?;
        }
        Ok(())
    }

    async fn send(&self, text: &str, options: SendOptions) -> Result<SentMessage, StoreError> {
        let index = self.turn(&self.turns.send);
        let sent = self.shards[index].send(text, options).await?;
        Ok(SentMessage {
            pop_receipt: tagged(index, &sent.pop_receipt),
            id: sent.id,
        })
    }

    async fn receive(
        &self,
        max: u8,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, StoreError> {
        super::rules::check_count(&self.name, max)?;
        let n = self.shards.len();
        let start = self.turn(&self.turns.receive);
        let mut batch = Vec::new();
        for step in 0..n {
            let index = (start + step) % n;
            let want = max - u8::try_from(batch.len()).unwrap_or(max);
            let got = match self.shards[index].receive(want, visibility).await {
                Ok(got) => got,
                // Messages already taken must reach the listener (they are invisible now):
                // hand them over and let the next receive meet the fault.
                Err(_) if !batch.is_empty() => break,
                Err(e) => return Err(e),
            };
            batch.extend(got.into_iter().map(|mut m| {
                m.pop_receipt = tagged(index, &m.pop_receipt);
                m
            }));
            if batch.len() >= usize::from(max) {
                break;
            }
        }
        Ok(batch)
    }

    async fn delete(&self, id: &str, pop_receipt: &str) -> Result<(), StoreError> {
        let (index, receipt) = self.route(id, pop_receipt)?;
        self.shards[index].delete(id, receipt).await
    }

    async fn delete_within(
        &self,
        id: &str,
        pop_receipt: &str,
        lease_ends: tokio::time::Instant,
    ) -> Result<(), StoreError> {
        let (index, receipt) = self.route(id, pop_receipt)?;
        self.shards[index]
            .delete_within(id, receipt, lease_ends)
            .await
    }

    async fn update(
        &self,
        id: &str,
        pop_receipt: &str,
        visibility: Duration,
        text: Option<&str>,
    ) -> Result<UpdatedMessage, StoreError> {
        let (index, receipt) = self.route(id, pop_receipt)?;
        let updated = self.shards[index]
            .update(id, receipt, visibility, text)
            .await?;
        Ok(UpdatedMessage {
            pop_receipt: tagged(index, &updated.pop_receipt),
        })
    }

    async fn peek(&self, max: u8) -> Result<Vec<PeekedMessage>, StoreError> {
        super::rules::check_count(&self.name, max)?;
        let mut all = Vec::new();
        for shard in &self.shards {
            all.extend(shard.peek(max).await?);
        }
        // Oldest first, as one queue would show them.
        all.sort_by_key(|m| m.inserted_at);
        all.truncate(usize::from(max));
        Ok(all)
    }

    async fn approximate_depth(&self) -> Result<u64, StoreError> {
        let mut depth = 0u64;
        for shard in &self.shards {
            depth = depth.saturating_add(shard.approximate_depth().await?);
        }
        Ok(depth)
    }

    async fn clear(&self) -> Result<(), StoreError> {
        for shard in &self.shards {
            shard.clear().await?;
        }
        Ok(())
    }

    async fn delete_queue(&self) -> Result<(), StoreError> {
        for shard in &self.shards {
            shard.delete_queue().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

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
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn sharded(n: usize) -> (MemoryStore, Arc<dyn Queue>) {
        let memory = MemoryStore::new();
        let store =
            ShardingStore::wrap_sharded(Arc::new(memory.clone()), [("orders".to_string(), n)]);
        (memory, store.queue("orders").unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn sends_spread_receives_fill_from_every_shard_and_settle_on_theirs() {
        let (memory, q) = sharded(3);
        q.create_if_missing().await.unwrap();
        for i in 0..7 {
            q.send(&format!("m{i}"), SendOptions::default())
                .await
                .unwrap();
        }
        let mut depths: Vec<u64> = futures_depths(&memory, 3).await;
        // Round-robin from a random first shard: one shard has the seventh.
        depths.sort_unstable();
        assert_eq!(depths, [2, 2, 3]);
        assert_eq!(q.approximate_depth().await.unwrap(), 7);
        // One receive fills its batch from every shard.
        let got = q.receive(32, Duration::from_secs(30)).await.unwrap();
        assert_eq!(got.len(), 7);
        let mut texts: Vec<&str> = got.iter().map(|m| m.text.as_str()).collect();
        texts.sort();
        assert_eq!(texts, ["m0", "m1", "m2", "m3", "m4", "m5", "m6"]);
        // An update keeps the message on its shard; the new receipt still routes.
        let m = &got[0];
        let updated = q
            .update(&m.id, &m.pop_receipt, Duration::from_secs(60), None)
            .await
            .unwrap();
        q.delete(&m.id, &updated.pop_receipt).await.unwrap();
        assert!(q.delete(&m.id, &m.pop_receipt).await.is_err());
        for m in &got[1..] {
            q.delete(&m.id, &m.pop_receipt).await.unwrap();
        }
        assert_eq!(q.approximate_depth().await.unwrap(), 0);
        // A receipt this layer did not hand out names the message, not a shard.
        let err = q.delete("x", "nonsense").await.unwrap_err();
        assert!(matches!(err, StoreError::MessageNotFound { ref id, .. } if id == "x"));
        let err = q.delete("x", "9:r").await.unwrap_err();
        assert!(matches!(err, StoreError::MessageNotFound { .. }));
    }

    async fn futures_depths(memory: &MemoryStore, n: usize) -> Vec<u64> {
        let mut out = Vec::new();
        for i in 0..n {
            let shard = memory.queue(&shard_name("orders", i)).unwrap();
            out.push(shard.approximate_depth().await.unwrap());
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_receive_tries_every_shard_once_and_a_full_one_stops_early() {
        use crate::store::counting::{CallCounts, CountingStore};
        let memory = MemoryStore::new();
        let counting = CountingStore::new(Arc::new(memory.clone()));
        let counts = counting.counts();
        let store = ShardingStore::wrap_sharded(Arc::new(counting), [("orders".to_string(), 4)]);
        let q = store.queue("orders").unwrap();
        q.create_if_missing().await.unwrap();
        assert!(q
            .receive(32, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty());
        assert_eq!(CallCounts::get(&counts.receive), 4);
        for _ in 0..40 {
            q.send("x", SendOptions::default()).await.unwrap();
        }
        let got = q.receive(5, Duration::from_secs(30)).await.unwrap();
        assert_eq!(got.len(), 5);
        assert_eq!(CallCounts::get(&counts.receive), 5);
        // Peek shows the oldest first across shards.
        let peeked = q.peek(3).await.unwrap();
        assert_eq!(peeked.len(), 3);
        assert!(peeked
            .windows(2)
            .all(|w| w[0].inserted_at <= w[1].inserted_at));
    }

    /// Short-lived producers (one `ShardingStore` per process, a few sends each) must not all
    /// start at shard 0: with `shards = 4`, four `ebbflow enqueue` runs of one message each put
    /// all four on `orders-0`. Each layer starts its turns at a random shard.
    #[tokio::test(start_paused = true)]
    async fn every_new_producer_starts_at_a_random_shard() {
        let memory = MemoryStore::new();
        let mut firsts = [0usize; 4];
        for _ in 0..64 {
            // A new process: a new layer over the same service.
            let store =
                ShardingStore::wrap_sharded(Arc::new(memory.clone()), [("orders".to_string(), 4)]);
            let q = store.queue("orders").unwrap();
            q.create_if_missing().await.unwrap();
            let sent = q.send("x", SendOptions::default()).await.unwrap();
            let shard: usize = sent.pop_receipt.split_once(':').unwrap().0.parse().unwrap();
            firsts[shard] += 1;
        }
        // Uniform starts leave a shard without any of 64 first sends with odds of about 4e-8.
        assert!(
            firsts.iter().all(|&n| n > 0),
            "first sends per shard: {firsts:?}"
        );
        let depths = futures_depths(&memory, 4).await;
        assert_eq!(depths.iter().sum::<u64>(), 64);
        assert!(depths.iter().all(|&d| d > 0), "depths {depths:?}");
    }

    #[test]
    fn unsharded_queues_pass_through() {
        let memory: Arc<dyn QueueStore> = Arc::new(MemoryStore::new());
        let store = ShardingStore::wrap_sharded(memory.clone(), [("orders".to_string(), 1)]);
        assert!(Arc::ptr_eq(&store, &memory));
        let store = ShardingStore::wrap_sharded(memory, [("orders".to_string(), 2)]);
        assert_eq!(
            store.queue("orders-poison").unwrap().name(),
            "orders-poison"
        );
        assert_eq!(store.queue("orders").unwrap().name(), "orders");
    }
}

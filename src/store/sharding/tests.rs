//! The sharding layer over the embedded store.

use std::future::Future;

use tokio::time::Instant;

use super::*;
use crate::store::memory::MemoryStore;
use crate::store::{Layered, Operation, QueueLayer};

fn sharded(n: usize) -> (MemoryStore, Arc<dyn Queue>) {
    let memory = MemoryStore::new();
    let store = ShardingStore::wrap_sharded(Arc::new(memory.clone()), [("orders".to_string(), n)]);
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
    for past_the_shards in ["9:r", "3:r"] {
        let err = q.delete("x", past_the_shards).await.unwrap_err();
        assert!(matches!(err, StoreError::MessageNotFound { .. }), "{err}");
    }
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

/// Whatever shard a receive's turn starts at, it goes on to every other: with one message on
/// each of four shards, every receive of a new layer (a new random start) gets all four.
#[tokio::test(start_paused = true)]
async fn a_receive_reaches_every_shard_whatever_shard_it_starts_at() {
    let memory = MemoryStore::new();
    for i in 0..4 {
        let shard = memory.queue(&shard_name("orders", i)).unwrap();
        shard.create_if_missing().await.unwrap();
        shard.send("x", SendOptions::default()).await.unwrap();
    }
    for _ in 0..32 {
        let store =
            ShardingStore::wrap_sharded(Arc::new(memory.clone()), [("orders".to_string(), 4)]);
        let got = store
            .queue("orders")
            .unwrap()
            .receive(32, Duration::from_secs(1))
            .await
            .unwrap();
        let mut shards: Vec<&str> = got.iter().map(|m| &m.pop_receipt[..1]).collect();
        shards.sort_unstable();
        assert_eq!(shards, ["0", "1", "2", "3"]);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A store double: every receive on the physical queue `down` fails (its service is busy), and
/// each shard `<queue>-<i>` reports unknown outcomes of `i + 1` receives, twice that of sends,
/// three times that of deletes confirmed and four times that of updates in doubt.
#[derive(Clone)]
struct Shaky {
    down: String,
}

impl QueueLayer for Shaky {
    async fn around<T: Send>(
        &self,
        queue: &str,
        operation: Operation,
        call: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> Result<T, StoreError> {
        if queue == self.down && operation == Operation::Receive {
            return Err(StoreError::Transient {
                queue: queue.into(),
                detail: "503 ServerBusy".into(),
                source: None,
            });
        }
        call.await
    }
}

impl StoreLayer for Shaky {
    fn wrap(&self, queue: Arc<dyn Queue>) -> Arc<dyn Queue> {
        Layered::wrap(queue, self.clone())
    }

    fn unknown_outcomes(&self, _inner: &dyn QueueStore, queue: &str) -> UnknownOutcomes {
        let i: u64 = queue.rsplit_once('-').unwrap().1.parse().unwrap();
        UnknownOutcomes {
            receives: i + 1,
            sends: 2 * (i + 1),
            deletes_confirmed: 3 * (i + 1),
            updates_in_doubt: 4 * (i + 1),
        }
    }
}

/// Three shards over [`Shaky`] with shard 1 down.
fn shaky() -> (MemoryStore, Arc<dyn QueueStore>) {
    let memory = MemoryStore::new();
    let shaky = LayeredStore::wrap(
        Arc::new(memory.clone()),
        Shaky {
            down: shard_name("orders", 1),
        },
    );
    let store = ShardingStore::wrap_sharded(shaky, [("orders".to_string(), 3)]);
    (memory, store)
}

/// A shard that fails after others gave messages ends the batch: the messages already taken
/// (invisible now) are handed over, not lost with an error. A fault before any message is
/// the receive's error. Three receives start at the three shards in turn.
#[tokio::test(start_paused = true)]
async fn a_shard_fault_hands_over_what_was_taken_and_fails_an_empty_batch() {
    let (memory, store) = shaky();
    let q = store.queue("orders").unwrap();
    q.create_if_missing().await.unwrap();
    for i in [0, 2] {
        let shard = memory.queue(&shard_name("orders", i)).unwrap();
        for _ in 0..2 {
            shard.send("x", SendOptions::default()).await.unwrap();
        }
    }
    let (mut errors, mut batches) = (0, Vec::new());
    for _ in 0..3 {
        match q.receive(32, Duration::from_secs(1)).await {
            Ok(got) => batches.push(got.len()),
            Err(e) => {
                assert!(e.is_transient(), "{e}");
                errors += 1;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    batches.sort_unstable();
    // From shard 1: its fault. From shard 0: shard 0's two, then the fault. From shard 2:
    // shard 2's and shard 0's, then the fault.
    assert_eq!((errors, batches), (1, vec![2, 4]));
}

/// A sharded queue's unknown outcomes are its shards' added up.
#[test]
fn unknown_outcomes_add_up_over_the_shards() {
    let (_memory, store) = shaky();
    assert_eq!(
        store.unknown_outcomes("orders"),
        UnknownOutcomes {
            receives: 1 + 2 + 3,
            sends: 2 + 4 + 6,
            deletes_confirmed: 3 + 6 + 9,
            updates_in_doubt: 4 + 8 + 12,
        }
    );
}

/// A delete within the lease goes to the message's shard; clear and delete_queue reach every
/// shard.
#[tokio::test(start_paused = true)]
async fn delete_within_clear_and_delete_queue_reach_the_shards() {
    let (memory, q) = sharded(3);
    q.create_if_missing().await.unwrap();
    for i in 0..6 {
        q.send(&format!("m{i}"), SendOptions::default())
            .await
            .unwrap();
    }
    let lease = Duration::from_secs(30);
    let got = q.receive(32, lease).await.unwrap();
    assert_eq!(got.len(), 6);
    for m in &got[..3] {
        q.delete_within(&m.id, &m.pop_receipt, Instant::now() + lease)
            .await
            .unwrap();
    }
    assert_eq!(q.approximate_depth().await.unwrap(), 3);
    let err = q
        .delete_within("x", "3:r", Instant::now() + lease)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::MessageNotFound { .. }), "{err}");
    q.clear().await.unwrap();
    assert_eq!(futures_depths(&memory, 3).await, [0, 0, 0]);
    q.delete_queue().await.unwrap();
    for i in 0..3 {
        let shard = memory.queue(&shard_name("orders", i)).unwrap();
        let err = shard.approximate_depth().await.unwrap_err();
        assert!(matches!(err, StoreError::QueueNotFound { .. }), "{err}");
    }
}

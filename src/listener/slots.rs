//! A queue's concurrency slots: `concurrency` of them, shared by all its dequeue tasks, and the
//! messages received ahead of a slot.
//!
//! A task takes slots *before* it receives, so the messages it asks for run at once. It may ask
//! for more than it holds only within an *ahead* allowance the caller computes (how many can
//! start well within the visibility timeout, from the measured handler time): each extra
//! message gets an [`Ahead`] ticket and waits for a slot, in order of arrival, with its lease
//! running (and renewed) from the receive. A slot that comes back goes to the oldest waiting
//! message first, so a task never receives more while messages it brought still wait.
//!
//! Not a `tokio::sync::Semaphore`: its waiters are served in order, so a task waiting for a
//! refill of several slots would hold back a task that a trigger wants to receive with one.
//! Here every task waiting looks again whenever a slot or ahead room comes back and takes what
//! it may; only the messages waiting ahead are queued, first come first served.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{oneshot, Notify};

/// The pool of one queue's slots.
#[derive(Debug)]
pub(crate) struct Slots {
    capacity: usize,
    state: Mutex<Pool>,
    /// A slot came back, or ahead room did.
    freed: Notify,
}

#[derive(Debug, Default)]
struct Pool {
    free: usize,
    /// Messages received ahead of a slot and not started yet.
    ahead: usize,
    /// The ahead messages waiting for a slot, oldest first.
    waiting: VecDeque<oneshot::Sender<Held>>,
}

/// Slots taken from the pool; they go back when this is dropped (to the oldest message
/// waiting ahead, if any).
#[derive(Debug)]
pub(crate) struct Held {
    pool: Arc<Slots>,
    count: usize,
}

/// Room for messages received ahead of a slot; it goes back when this is dropped (once the
/// message got its slot, or was settled without running).
#[derive(Debug)]
pub(crate) struct Ahead {
    pool: Arc<Slots>,
    count: usize,
}

impl Slots {
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            state: Mutex::new(Pool {
                free: capacity,
                ..Pool::default()
            }),
            freed: Notify::new(),
        })
    }

    /// The pool's state. A panic cannot leave it half-changed (every change is a few integer
    /// updates), so a poisoned lock is taken over rather than passed on as a panic.
    fn pool(&self) -> MutexGuard<'_, Pool> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pool's size (`concurrency`).
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Free slots now.
    pub(crate) fn free(&self) -> usize {
        self.pool().free
    }

    /// Takes every free slot up to `max`, and, once every free slot is taken, room for up to
    /// `ahead_limit` messages received ahead of a slot (counting those already waiting), if
    /// together they reach `min`. `min` is capped at what `max` and an idle pool allow, so a
    /// wait can always end.
    pub(crate) fn try_take(
        self: &Arc<Self>,
        min: usize,
        max: usize,
        ahead_limit: usize,
    ) -> Option<(Held, Ahead)> {
        let min = min.clamp(1, max.min(self.capacity + ahead_limit).max(1));
        let mut pool = self.pool();
        let count = pool.free.min(max);
        let room = ahead_limit.saturating_sub(pool.ahead);
        let extra = if count == pool.free {
            (max - count).min(room)
        } else {
            0
        };
        if count + extra < min {
            return None;
        }
        pool.free -= count;
        pool.ahead += extra;
        drop(pool);
        Some((
            Held {
                pool: self.clone(),
                count,
            },
            Ahead {
                pool: self.clone(),
                count: extra,
            },
        ))
    }

    /// Waits until [`Slots::try_take`] succeeds.
    pub(crate) async fn take(
        self: &Arc<Self>,
        min: usize,
        max: usize,
        ahead_limit: usize,
    ) -> (Held, Ahead) {
        loop {
            // Registered before the check, so a slot freed in between still wakes us.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(taken) = self.try_take(min, max, ahead_limit) {
                return taken;
            }
            freed.await;
        }
    }

    /// Like [`Slots::take`], but patient only while slots keep coming back: once none has come
    /// back for `patience`, the slots still held belong to long jobs, so settle for whatever is
    /// free (at least one).
    pub(crate) async fn take_while_freeing(
        self: &Arc<Self>,
        min: usize,
        max: usize,
        ahead_limit: usize,
        patience: std::time::Duration,
    ) -> (Held, Ahead) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(taken) = self.try_take(min, max, ahead_limit) {
                return taken;
            }
            if tokio::time::timeout(patience, freed).await.is_err() {
                return self.take(1, max, ahead_limit).await;
            }
        }
    }
}

impl Held {
    /// How many slots are held.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Splits one slot off, to travel with one message.
    pub(crate) fn split_one(&mut self) -> Option<Held> {
        if self.count == 0 {
            return None;
        }
        self.count -= 1;
        Some(Held {
            pool: self.pool.clone(),
            count: 1,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.count == 0 {
            return;
        }
        let handoffs: Vec<_> = {
            let mut pool = self.pool.pool();
            let n = self.count.min(pool.waiting.len());
            pool.free += self.count - n;
            pool.waiting.drain(..n).collect()
        };
        // Outside the lock: a message that stopped waiting hands its slot back through this
        // same drop.
        for waiter in handoffs {
            let _ = waiter.send(Held {
                pool: self.pool.clone(),
                count: 1,
            });
        }
        self.pool.freed.notify_waiters();
    }
}

impl Ahead {
    /// How many messages may be received ahead of a slot.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Splits one ticket off, to travel with one message.
    pub(crate) fn split_one(&mut self) -> Option<Ahead> {
        if self.count == 0 {
            return None;
        }
        self.count -= 1;
        Some(Ahead {
            pool: self.pool.clone(),
            count: 1,
        })
    }

    /// Waits for a slot: a free one if no message waits before this one, else the next that
    /// comes back, oldest waiter first. Cancel-safe: a slot handed to a message that stopped
    /// waiting goes back to the pool.
    pub(crate) async fn slot(self) -> Held {
        loop {
            let handed = {
                let mut pool = self.pool.pool();
                if pool.free > 0 && pool.waiting.is_empty() {
                    pool.free -= 1;
                    None
                } else {
                    let (tx, rx) = oneshot::channel();
                    pool.waiting.push_back(tx);
                    Some(rx)
                }
            };
            match handed {
                None => {
                    return Held {
                        pool: self.pool.clone(),
                        count: 1,
                    }
                }
                Some(rx) => {
                    if let Ok(held) = rx.await {
                        return held;
                    }
                }
            }
        }
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        if self.count == 0 {
            return;
        }
        {
            let mut pool = self.pool.pool();
            pool.ahead = pool.ahead.saturating_sub(self.count);
        }
        self.pool.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn takes_what_is_free_up_to_max_and_gives_back_on_drop() {
        let slots = Slots::new(16);
        let mut a = slots.try_take(1, 10, 0).unwrap().0;
        assert_eq!((a.len(), slots.free()), (10, 6));
        let one = a.split_one().unwrap();
        assert_eq!((a.len(), one.len()), (9, 1));
        assert!(slots.try_take(7, 32, 0).is_none(), "only 6 free");
        let b = slots.try_take(1, 32, 0).unwrap().0;
        assert_eq!((b.len(), slots.free()), (6, 0));
        drop(a);
        assert_eq!(slots.free(), 9);
        drop((one, b));
        assert_eq!(slots.free(), 16);
    }

    #[test]
    fn a_minimum_above_the_pool_is_capped() {
        let slots = Slots::new(4);
        assert_eq!(slots.try_take(8, 32, 0).unwrap().0.len(), 4);
        assert_eq!(
            slots.try_take(3, 2, 0).unwrap().0.len(),
            2,
            "min capped at max"
        );
        assert_eq!(slots.free(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_patient_take_settles_once_slots_stop_coming_back() {
        let slots = Slots::new(16);
        let mut long = slots.try_take(1, 9, 0).unwrap().0;
        let mut short = slots.try_take(1, 16, 0).unwrap().0;
        assert_eq!((long.len(), short.len()), (9, 7));
        let start = tokio::time::Instant::now();
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move {
                slots
                    .take_while_freeing(8, 16, 0, Duration::from_millis(100))
                    .await
                    .0
                    .len()
            }
        });
        // The short jobs end one every 50 ms; the long ones never do.
        for _ in 0..7 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(short.split_one());
        }
        // Eight free never happens: 100 ms after the last came back it takes the 7.
        assert_eq!(waiter.await.unwrap(), 7);
        assert_eq!(start.elapsed(), Duration::from_millis(450));
        drop(long.split_one());
    }

    #[tokio::test(start_paused = true)]
    async fn a_single_slot_waiter_is_not_held_back_by_a_refill_waiter() {
        let slots = Slots::new(4);
        let all = slots.try_take(1, 4, 0).unwrap().0;
        let refill = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take(3, 4, 0).await.0.len() }
        });
        let single = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take(1, 4, 0).await.0.len() }
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        let mut all = all;
        let one = all.split_one().unwrap();
        drop(one);
        // One slot came back: the single waiter gets it although the refill waiter came first.
        assert_eq!(single.await.unwrap(), 1);
        assert!(!refill.is_finished());
        drop(all);
        // Three came back, plus the single waiter's (its task ended): the refill takes all 4.
        assert_eq!(refill.await.unwrap(), 4);
    }
    #[tokio::test(start_paused = true)]
    async fn messages_received_ahead_get_slots_oldest_first_before_any_task() {
        let slots = Slots::new(2);
        // Two free slots and room for 3 ahead: a receive of 5.
        let (mut held, mut ahead) = slots.try_take(1, 32, 3).unwrap();
        assert_eq!((held.len(), ahead.len()), (2, 3));
        assert!(slots.try_take(1, 32, 3).is_none(), "no slot, no room left");
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..3 {
            let ticket = ahead.split_one().unwrap();
            let order = order.clone();
            waiters.push(tokio::spawn(async move {
                let slot = ticket.slot().await;
                order.lock().unwrap().push(i);
                slot
            }));
            tokio::task::yield_now().await;
        }
        let first = held.split_one().unwrap();
        drop(first);
        let slot0 = waiters.remove(0).await.unwrap();
        // A slot that comes back goes to the next waiter, not to a task asking for one.
        drop(held);
        assert!(slots.try_take(1, 32, 0).is_none());
        let slot1 = waiters.remove(0).await.unwrap();
        assert_eq!(*order.lock().unwrap(), vec![0, 1]);
        // Ahead room came back as the waiters got their slots: 2 of 3 now.
        let (none, room) = slots.try_take(1, 32, 3).unwrap();
        assert_eq!((none.len(), room.len()), (0, 2));
        drop((none, room, slot0, slot1));
        let slot2 = waiters.remove(0).await.unwrap();
        drop(slot2);
        assert_eq!(slots.free(), 2);
    }

    #[test]
    fn ahead_room_tops_the_free_slots_up_to_max_and_no_further() {
        // 4 free, room for 8 ahead, at most 6 in all: 4 slots and 2 ahead, not 8.
        let slots = Slots::new(4);
        let (held, ahead) = slots.try_take(1, 6, 8).unwrap();
        assert_eq!((held.len(), ahead.len()), (4, 2));
        drop((held, ahead));
        // With 2 of 4 free and max 3: 2 slots and 1 ahead.
        let busy = slots.try_take(1, 2, 0).unwrap().0;
        let (held, ahead) = slots.try_take(1, 3, 8).unwrap();
        assert_eq!((held.len(), ahead.len()), (2, 1));
        drop((busy, held, ahead));
        assert_eq!(slots.free(), 4);
    }

    #[test]
    fn tickets_split_one_by_one_until_none_is_left() {
        let slots = Slots::new(1);
        let (held, mut ahead) = slots.try_take(1, 3, 2).unwrap();
        assert_eq!((held.len(), ahead.len()), (1, 2));
        let first = ahead.split_one().unwrap();
        let second = ahead.split_one().unwrap();
        assert_eq!((first.len(), second.len(), ahead.len()), (1, 1, 0));
        assert!(ahead.split_one().is_none(), "two tickets, not three");
        // The room the tickets hold comes back as they go.
        drop((ahead, first));
        let (_, room) = slots.try_take(0, 3, 2).unwrap();
        assert_eq!(room.len(), 1, "one ticket still out");
        drop((held, second, room));
    }

    #[tokio::test(start_paused = true)]
    async fn a_ticket_takes_a_free_slot_at_once_when_nobody_waits_before_it() {
        let slots = Slots::new(2);
        let (mut held, mut ahead) = slots.try_take(1, 3, 1).unwrap();
        assert_eq!((held.len(), ahead.len(), slots.free()), (2, 1, 0));
        let ticket = ahead.split_one().unwrap();
        drop(held.split_one());
        assert_eq!(slots.free(), 1);
        // Free and nobody ahead of it: no wait, and the pool counts the slot as taken.
        let slot = tokio::time::timeout(Duration::ZERO, ticket.slot())
            .await
            .expect("a free slot is taken at once");
        assert_eq!((slot.len(), slots.free()), (1, 0));
        drop((slot, held, ahead));
        assert_eq!(slots.free(), 2);
    }
}

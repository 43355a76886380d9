//! A queue's concurrency slots: `concurrency` of them, shared by all its dequeue tasks.
//!
//! A task takes slots *before* it receives and asks the service for no more messages than it
//! holds, so a received message never waits for a slot (its visibility timeout would run out
//! while it waits). Each dispatched message carries one slot and gives it back when it is
//! settled; slots a receive did not fill go back at once.
//!
//! Not a `tokio::sync::Semaphore`: its waiters are served in order, so a task waiting for a
//! refill of several slots would hold back a task that a trigger wants to receive with one.
//! Here every waiter looks again whenever a slot comes back and takes what it may.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The pool of one queue's slots.
#[derive(Debug)]
pub(crate) struct Slots {
    capacity: usize,
    free: Mutex<usize>,
    freed: Notify,
}

/// Slots taken from the pool; they go back when this is dropped.
#[derive(Debug)]
pub(crate) struct Held {
    pool: Arc<Slots>,
    count: usize,
}

impl Slots {
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            free: Mutex::new(capacity),
            freed: Notify::new(),
        })
    }

    /// Free slots now.
    pub(crate) fn free(&self) -> usize {
        *self.free.lock().expect("slots mutex poisoned")
    }

    /// Takes every free slot up to `max` if at least `min` are free (`min` is capped at what
    /// the pool and `max` allow, so a wait can always end).
    pub(crate) fn try_take(self: &Arc<Self>, min: usize, max: usize) -> Option<Held> {
        let min = min.clamp(1, max.min(self.capacity).max(1));
        let mut free = self.free.lock().expect("slots mutex poisoned");
        if *free < min {
            return None;
        }
        let count = (*free).min(max);
        *free -= count;
        Some(Held {
            pool: self.clone(),
            count,
        })
    }

    /// Waits until at least `min` slots are free, then takes every free one up to `max`.
    pub(crate) async fn take(self: &Arc<Self>, min: usize, max: usize) -> Held {
        loop {
            // Registered before the check, so a slot freed in between still wakes us.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(held) = self.try_take(min, max) {
                return held;
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
        patience: std::time::Duration,
    ) -> Held {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(held) = self.try_take(min, max) {
                return held;
            }
            if tokio::time::timeout(patience, freed).await.is_err() {
                return self.take(1, max).await;
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
        *self.pool.free.lock().expect("slots mutex poisoned") += self.count;
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
        let mut a = slots.try_take(1, 10).unwrap();
        assert_eq!((a.len(), slots.free()), (10, 6));
        let one = a.split_one().unwrap();
        assert_eq!((a.len(), one.len()), (9, 1));
        assert!(slots.try_take(7, 32).is_none(), "only 6 free");
        let b = slots.try_take(1, 32).unwrap();
        assert_eq!((b.len(), slots.free()), (6, 0));
        drop(a);
        assert_eq!(slots.free(), 9);
        drop((one, b));
        assert_eq!(slots.free(), 16);
    }

    #[test]
    fn a_minimum_above_the_pool_is_capped() {
        let slots = Slots::new(4);
        assert_eq!(slots.try_take(8, 32).unwrap().len(), 4);
        assert_eq!(slots.try_take(3, 2).unwrap().len(), 2, "min capped at max");
        assert_eq!(slots.free(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_patient_take_settles_once_slots_stop_coming_back() {
        let slots = Slots::new(16);
        let mut long = slots.try_take(1, 9).unwrap();
        let mut short = slots.try_take(1, 16).unwrap();
        assert_eq!((long.len(), short.len()), (9, 7));
        let start = tokio::time::Instant::now();
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move {
                slots
                    .take_while_freeing(8, 16, Duration::from_millis(100))
                    .await
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
        let all = slots.try_take(1, 4).unwrap();
        let refill = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take(3, 4).await.len() }
        });
        let single = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take(1, 4).await.len() }
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
}

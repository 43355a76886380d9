//! A received message's lease: its current pop receipt and how long it stays ours.
//!
//! The lease clock starts when the receive was *sent* (the service started the visibility
//! timeout somewhere during that call), not when the handler starts. The lease renews itself at
//! half the visibility timeout, and on demand (heartbeat pulses). A renewal is a future the
//! lease keeps: the dispatch loop polls it next to the handler, so a slow or retried renewal
//! never pauses the handler, the handler timeout or the drain abort. One renewal is in flight
//! at most, because each one needs the receipt the previous one returned.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::store::{Queue, StoreError, UpdatedMessage};

type Renewal = Pin<Box<dyn Future<Output = (Instant, Result<UpdatedMessage, StoreError>)> + Send>>;

/// What a renewal came to.
#[derive(Debug)]
pub(crate) enum LeaseEvent {
    /// Visibility extended by another `visibility_timeout`, with a new receipt.
    Renewed,
    /// The call failed; the next try comes a second later.
    Failed(StoreError),
    /// The message was received again by someone else: our receipt is dead.
    Lost,
    /// A renewal's answer was lost and its retry found our receipt stale: either that renewal
    /// was applied under a receipt we never saw, or the message was re-delivered. Our receipt
    /// is dead either way; the message may run again.
    InDoubt,
}

/// The lease on one received message.
pub(crate) struct Lease {
    queue: Arc<dyn Queue>,
    id: String,
    receipt: String,
    visibility: Duration,
    /// The message is ours until then, as far as we know.
    valid_until: Instant,
    /// When the next periodic renewal is due.
    renew_at: Instant,
    /// Last time a renewal was started (pulses renew at most once a second).
    last_started: Instant,
    renewing: Option<Renewal>,
    lost: bool,
}

impl Lease {
    /// The lease of a message received with `receipt` by a receive sent at `received_at`.
    pub(crate) fn new(
        queue: Arc<dyn Queue>,
        id: String,
        receipt: String,
        visibility: Duration,
        received_at: Instant,
    ) -> Self {
        Self {
            queue,
            id,
            receipt,
            visibility,
            valid_until: received_at + visibility,
            renew_at: received_at + visibility / 2,
            last_started: received_at,
            renewing: None,
            lost: false,
        }
    }

    /// The newest pop receipt: the one to settle with.
    pub(crate) fn receipt(&self) -> &str {
        &self.receipt
    }

    /// When the message's visibility timeout ends, as far as the last renewal knows.
    pub(crate) fn valid_until(&self) -> Instant {
        self.valid_until
    }

    /// A renewal found the message received by someone else.
    pub(crate) fn is_lost(&self) -> bool {
        self.lost
    }

    /// Starts a renewal now (a heartbeat pulse), unless one is in flight, ownership is lost,
    /// or one started less than a second ago. Returns whether it started one.
    pub(crate) fn renew_soon(&mut self) -> bool {
        if self.lost
            || self.renewing.is_some()
            || self.last_started.elapsed() < Duration::from_secs(1)
        {
            return false;
        }
        self.start();
        true
    }

    fn start(&mut self) {
        let queue = self.queue.clone();
        let id = self.id.clone();
        let receipt = self.receipt.clone();
        let visibility = self.visibility;
        let started = Instant::now();
        self.last_started = started;
        self.renewing = Some(Box::pin(async move {
            let result = queue.update(&id, &receipt, visibility, None).await;
            (started, result)
        }));
    }

    /// Completes when a renewal finishes: starts the periodic one when it is due. Safe to drop
    /// at any await (inside `select!`): an in-flight renewal stays in the lease and is picked up
    /// by the next call. Never completes once ownership is lost.
    pub(crate) async fn next_event(&mut self) -> LeaseEvent {
        if self.lost {
            return std::future::pending().await;
        }
        if self.renewing.is_none() {
            tokio::time::sleep_until(self.renew_at).await;
            self.start();
        }
        let renewal = self.renewing.as_mut().expect("a renewal was started");
        let (started, result) = renewal.await;
        self.renewing = None;
        self.apply(started, result)
    }

    fn apply(
        &mut self,
        started: Instant,
        result: Result<UpdatedMessage, StoreError>,
    ) -> LeaseEvent {
        match result {
            Ok(updated) => {
                self.receipt = updated.pop_receipt;
                // The service started the new timeout during the call: count from its start.
                self.valid_until = started + self.visibility;
                self.renew_at = started + self.visibility / 2;
                LeaseEvent::Renewed
            }
            Err(StoreError::MessageNotFound { .. }) => {
                self.lost = true;
                LeaseEvent::Lost
            }
            Err(StoreError::InDoubt { .. }) => {
                self.lost = true;
                LeaseEvent::InDoubt
            }
            Err(e) => {
                self.renew_at = Instant::now() + Duration::from_secs(1);
                LeaseEvent::Failed(e)
            }
        }
    }

    /// After the handler finished: lets a renewal in flight land, so the settle uses the
    /// receipt it returns, but waits no longer than the lease lasts (a renewal still hanging
    /// then is abandoned; if it did reach the service, the settle finds the message moved on
    /// and counts lost ownership). Returns the renewal's event if one landed.
    pub(crate) async fn finish(&mut self) -> Option<LeaseEvent> {
        let renewal = self.renewing.as_mut()?;
        let landed = tokio::time::timeout_at(self.valid_until, renewal).await;
        self.renewing = None;
        match landed {
            Ok((started, result)) => Some(self.apply(started, result)),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::QueueStore;

    async fn one_message(visibility: Duration) -> (Arc<dyn Queue>, Lease) {
        let store = MemoryStore::new();
        let q = store.queue("lease-test").unwrap();
        q.create_if_missing().await.unwrap();
        q.send("x", Default::default()).await.unwrap();
        let received_at = Instant::now();
        let m = q.receive(1, visibility).await.unwrap().remove(0);
        let lease = Lease::new(q.clone(), m.id, m.pop_receipt, visibility, received_at);
        (q, lease)
    }

    #[tokio::test(start_paused = true)]
    async fn renews_at_half_the_timeout_counted_from_the_receive() {
        let (q, mut lease) = one_message(Duration::from_secs(30)).await;
        let start = Instant::now();
        assert!(matches!(lease.next_event().await, LeaseEvent::Renewed));
        assert_eq!(start.elapsed(), Duration::from_secs(15));
        assert!(matches!(lease.next_event().await, LeaseEvent::Renewed));
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        // Still ours 40 s after the receive (the receive alone gave 30 s).
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(q
            .receive(1, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty());
        q.delete(&lease.id, lease.receipt()).await.unwrap();
    }

    /// A pulse starts a renewal at once, but never within a second of the last one started
    /// and never beside one in flight (each renewal needs the receipt the last one returned);
    /// the lease then counts from the pulse's renewal, and the periodic one follows half a
    /// visibility timeout after it.
    #[tokio::test(start_paused = true)]
    async fn a_pulse_renews_at_once_at_most_once_a_second_and_never_beside_another() {
        let (q, mut lease) = one_message(Duration::from_secs(30)).await;
        let start = Instant::now();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!lease.renew_soon(), "within a second of the receive");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(lease.renew_soon(), "a second after the receive");
        let asked = Instant::now();
        // Not polled yet, so still in flight two seconds later: no second renewal beside it.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!lease.renew_soon(), "a renewal is in flight");
        assert!(matches!(lease.next_event().await, LeaseEvent::Renewed));
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(3),
            "it was done already"
        );
        assert_eq!(lease.valid_until(), asked + Duration::from_secs(30));
        // The next pulse, two seconds after the last renewal started: at once.
        assert!(lease.renew_soon());
        let second = Instant::now();
        assert!(matches!(lease.next_event().await, LeaseEvent::Renewed));
        assert_eq!(lease.valid_until(), second + Duration::from_secs(30));
        // Then the periodic renewal, half the visibility timeout after the pulse's.
        assert!(matches!(lease.next_event().await, LeaseEvent::Renewed));
        assert_eq!(Instant::now(), second + Duration::from_secs(15));
        q.delete(&lease.id, lease.receipt()).await.unwrap();
    }

    /// A renewal in flight when the handler ends is let land, so the settle uses the receipt it
    /// returned (the old one no longer deletes the message).
    #[tokio::test(start_paused = true)]
    async fn a_renewal_in_flight_at_the_end_lands_before_the_settle() {
        let (q, mut lease) = one_message(Duration::from_secs(30)).await;
        let old = lease.receipt().to_string();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(lease.renew_soon());
        assert!(matches!(lease.finish().await, Some(LeaseEvent::Renewed)));
        assert_ne!(lease.receipt(), old);
        assert!(lease.renewing.is_none());
        q.delete(&lease.id, lease.receipt()).await.unwrap();
    }

    /// Fails every update while `.0` is set.
    struct RefuseUpdates(Arc<std::sync::atomic::AtomicBool>);

    impl crate::store::QueueLayer for RefuseUpdates {
        fn around<T: Send>(
            &self,
            queue: &str,
            operation: crate::store::Operation,
            call: impl Future<Output = Result<T, StoreError>> + Send,
        ) -> impl Future<Output = Result<T, StoreError>> + Send {
            let refuse = operation == crate::store::Operation::Update
                && self.0.load(std::sync::atomic::Ordering::SeqCst);
            let queue = queue.to_string();
            async move {
                if refuse {
                    return Err(StoreError::Transient {
                        queue,
                        detail: "refused by the test".into(),
                        source: None,
                    });
                }
                call.await
            }
        }
    }

    /// A refused renewal is tried again a second later: not at once (a spin), not half a
    /// timeout later (the lease would run out first).
    #[tokio::test(start_paused = true)]
    async fn a_refused_renewal_is_tried_again_a_second_later() {
        let store = MemoryStore::new();
        let plain = store.queue("lease-refused").unwrap();
        plain.create_if_missing().await.unwrap();
        plain.send("x", Default::default()).await.unwrap();
        let refuse = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let q = crate::store::Layered::wrap(plain, RefuseUpdates(refuse.clone()));
        let start = Instant::now();
        let m = q
            .receive(1, Duration::from_secs(30))
            .await
            .unwrap()
            .remove(0);
        let mut lease = Lease::new(q, m.id, m.pop_receipt, Duration::from_secs(30), start);
        assert!(matches!(lease.next_event().await, LeaseEvent::Failed(_)));
        assert_eq!(start.elapsed(), Duration::from_secs(15));
        assert!(matches!(lease.next_event().await, LeaseEvent::Failed(_)));
        assert_eq!(start.elapsed(), Duration::from_secs(16));
        refuse.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(lease.next_event().await, LeaseEvent::Renewed));
        assert_eq!(start.elapsed(), Duration::from_secs(17));
        assert_eq!(lease.valid_until(), start + Duration::from_secs(47));
        assert!(!lease.is_lost());
    }

    #[tokio::test(start_paused = true)]
    async fn a_re_delivered_message_is_lost() {
        let (q, mut lease) = one_message(Duration::from_secs(2)).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let _other = q.receive(1, Duration::from_secs(30)).await.unwrap();
        lease.renew_at = Instant::now();
        assert!(matches!(lease.next_event().await, LeaseEvent::Lost));
        assert!(lease.is_lost());
        assert!(!lease.renew_soon());
    }
}

//! A producer's work-detected announcements, after the whitepaper's trigger modes: on every
//! message, only on the first message to a queue its listeners found empty, or also each time
//! `depth` more messages were sent since then.

use std::sync::Arc;

use tracing::debug;

use super::{Bus, Health, PublishMode, QueueBusSettings, WorkNotice};

/// Announces work on one queue to the listeners of every replica. Cheap to clone.
#[derive(Clone)]
pub struct Announcer {
    bus: Arc<dyn Bus>,
    queue: Arc<str>,
    settings: QueueBusSettings,
}

impl std::fmt::Debug for Announcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announcer")
            .field("queue", &self.queue)
            .field("publish", &self.settings.publish)
            .finish()
    }
}

/// What became of an announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announced {
    /// A work notice went out.
    Sent,
    /// The publish mode said not this time (the listeners are already at work).
    NotNeeded,
    /// The bus is down or refused: wake local listeners instead.
    Failed,
}

impl Announcer {
    /// An announcer for `queue` over `bus`, with the queue's bus settings.
    pub fn new(bus: Arc<dyn Bus>, queue: &str, settings: QueueBusSettings) -> Self {
        Self {
            bus,
            queue: Arc::from(queue),
            settings,
        }
    }

    /// The queue.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// After `messages` were sent to the queue: announce them if the publish mode says so.
    /// Never fails the send it follows: the bus is a hint.
    pub async fn after_send(&self, messages: u64) -> Announced {
        if *self.bus.health().borrow() == Health::Down {
            return Announced::Failed;
        }
        let announce = match self.settings.publish {
            PublishMode::Every => true,
            mode => match self.bus.sent(&self.queue, messages).await {
                Ok(state) => {
                    let depth = u64::from(self.settings.depth.get());
                    state.was_empty
                        || (mode == PublishMode::Depth
                            && state.since_empty / depth
                                > state.since_empty.saturating_sub(messages) / depth)
                }
                Err(e) => {
                    debug!(queue = %self.queue, error = %e, "publish mode state unavailable; announcing");
                    true
                }
            },
        };
        if !announce {
            return Announced::NotNeeded;
        }
        self.announce(messages, 0).await
    }

    /// Sends a work notice for `messages` (if known) that was passed on `hops` times.
    pub async fn announce(&self, messages: u64, hops: u32) -> Announced {
        let notice = WorkNotice {
            queue: self.queue.to_string(),
            from: Some(self.bus.member().instance.to_string()),
            messages: (messages > 0).then_some(messages),
            hops,
        };
        match self.bus.announce(&notice).await {
            Ok(()) => Announced::Sent,
            Err(e) => {
                debug!(queue = %self.queue, error = %e, "work notice not sent");
                Announced::Failed
            }
        }
    }
}

/// The replica a passed-on work notice of `queue` goes to: a live instance listening to the
/// queue other than `me` and `except` (the one that passed the notice to `me`), the least busy
/// by its last pulse (dequeue tasks, then handlers running), one of the equals at random.
/// `None` when there is none.
pub(crate) fn pass_on_target(
    peers: &[super::Presence],
    me: &str,
    queue: &str,
    except: Option<&str>,
) -> Option<String> {
    let mut candidates: Vec<&super::Presence> = peers
        .iter()
        .filter(|p| p.instance != me && Some(p.instance.as_str()) != except)
        .filter(|p| p.queues.iter().any(|q| q == queue))
        .collect();
    rand::seq::SliceRandom::shuffle(candidates.as_mut_slice(), &mut rand::rng());
    candidates
        .into_iter()
        .min_by_key(|p| (p.active_tasks, p.in_flight))
        .map(|p| p.instance.clone())
}

#[cfg(test)]
mod tests {
    use super::super::memory::MemoryBroker;
    use super::super::{Inbound, Member, Reach};
    use super::*;
    use crate::bus::settings::AnnounceDepth;
    use std::time::Duration;

    async fn notices(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Inbound>) -> usize {
        let mut n = 0;
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(1), rx.recv()).await {
            n += 1;
        }
        n
    }

    #[tokio::test(start_paused = true)]
    async fn publish_modes_announce_every_first_or_by_depth() {
        let broker = MemoryBroker::new();
        let listener = broker.connect(Member::new("l", "w").unwrap(), Duration::from_secs(30));
        listener.listen_work("q", Reach::All).await.unwrap();
        let mut rx = listener.take_inbox().unwrap();
        let producer: Arc<dyn Bus> =
            Arc::new(broker.connect(Member::new("p", "w").unwrap(), Duration::from_secs(30)));
        let with = |publish, depth| {
            Announcer::new(
                producer.clone(),
                "q",
                QueueBusSettings {
                    publish,
                    depth,
                    ..Default::default()
                },
            )
        };
        let every = with(PublishMode::Every, AnnounceDepth::of::<100>());
        for _ in 0..3 {
            assert_eq!(every.after_send(1).await, Announced::Sent);
        }
        assert_eq!(notices(&mut rx).await, 3);
        // First: only the first send after the listeners found the queue empty.
        listener.drained("q").await.unwrap();
        let first = with(PublishMode::First, AnnounceDepth::of::<100>());
        let results: Vec<Announced> = [
            first.after_send(1).await,
            first.after_send(1).await,
            first.after_send(1).await,
        ]
        .to_vec();
        assert_eq!(
            results,
            [Announced::Sent, Announced::NotNeeded, Announced::NotNeeded]
        );
        listener.drained("q").await.unwrap();
        assert_eq!(first.after_send(1).await, Announced::Sent);
        assert_eq!(notices(&mut rx).await, 2);
        // Depth 10: the first, then at 10, 20, ... sends since the queue was found empty.
        listener.drained("q").await.unwrap();
        let depth = with(PublishMode::Depth, AnnounceDepth::of::<10>());
        let mut sent = 0;
        for _ in 0..25 {
            if depth.after_send(1).await == Announced::Sent {
                sent += 1;
            }
        }
        assert_eq!(sent, 3, "1st, 10th and 20th");
        // A batch of 15 crossing 30 counts once.
        assert_eq!(depth.after_send(15).await, Announced::Sent);
        assert_eq!(notices(&mut rx).await, 4);
    }

    fn peer(id: &str, queues: &[&str], active_tasks: u64) -> crate::bus::Presence {
        crate::bus::Presence {
            instance: id.into(),
            role: "w".into(),
            queues: queues.iter().map(|q| q.to_string()).collect(),
            active_tasks,
            in_flight: 0,
            handled: 0,
            receive_calls: 0,
            started_at_ms: 0,
            pulse_at_ms: 0,
        }
    }

    #[test]
    fn a_pass_on_goes_to_the_least_busy_other_replica_of_the_queue() {
        let peers = [
            peer("a", &["q"], 16),
            peer("b", &["q"], 16),
            peer("c", &["q"], 0),
            peer("d", &["other"], 0),
        ];
        // Never to itself, nor to one not listening to the queue; the idle one first.
        assert_eq!(pass_on_target(&peers, "a", "q", None).as_deref(), Some("c"));
        // Never back to the replica that passed it here, whatever the pulses said.
        let stale = [
            peer("a", &["q"], 0),
            peer("b", &["q"], 0),
            peer("c", &["q"], 0),
        ];
        for _ in 0..50 {
            assert_eq!(
                pass_on_target(&stale, "b", "q", Some("a")).as_deref(),
                Some("c")
            );
        }
        // Equals are chosen at random: both show up.
        let seen: std::collections::BTreeSet<_> = (0..200)
            .filter_map(|_| pass_on_target(&stale, "a", "q", None))
            .collect();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(pass_on_target(&peers[..1], "a", "q", None), None);
    }
}

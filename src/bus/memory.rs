//! The embedded bus: instances in one process share a [`MemoryBroker`]. It keeps most of the
//! Redis transport's semantics (competing consumers acknowledged and taken over after the claim
//! timeout, work notices to one or all listeners, presence with a time to live, request and
//! reply), on tokio's clock, so logic built on the bus is tested under a paused clock. Not
//! kept: fan-out events for a member that is not connected (nothing outlives the process),
//! the poison stream and the envelope size limit.
//!
//! With `bus.kind = "none"` each worker gets a broker of its own: events stay in the process.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{
    Address, Bus, BusError, DedupClaim, Envelope, Health, Inbound, Member, Presence, Reach,
    Receipt, SentState, WorkNotice,
};

/// Shared state of the in-process instances. Clones share it.
#[derive(Clone, Default)]
pub struct MemoryBroker {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let members: Vec<String> = self
            .state
            .lock()
            .map(|s| s.members.keys().cloned().collect())
            .unwrap_or_default();
        f.debug_struct("MemoryBroker")
            .field("members", &members)
            .finish()
    }
}

/// Entries a stream holds for competing consumers that have not taken them yet; a publish
/// beyond it fails (like `bus.max_backlog` on Redis), nothing is dropped.
const MAX_BACKLOG: usize = 1_000_000;

#[derive(Default)]
struct State {
    members: BTreeMap<String, Endpoint>,
    streams: HashMap<String, Stream>,
    next_entry: u64,
    /// Per queue: found empty since the last send, and sends since then.
    work_state: HashMap<String, (bool, u64)>,
    presence: BTreeMap<String, (Presence, Instant)>,
    /// Shared de-duplication marks: done until, and running (token, until).
    done: HashMap<String, Instant>,
    running: HashMap<String, (String, Instant)>,
}

impl State {
    /// Forgets expired de-duplication marks once there are many (memory stays bounded by
    /// the marks live within their windows).
    fn forget_expired_marks(&mut self, now: Instant) {
        if self.done.len() + self.running.len() > 1024 {
            self.done.retain(|_, until| *until > now);
            self.running.retain(|_, (_, until)| *until > now);
        }
    }
}

struct Endpoint {
    member: Member,
    tx: mpsc::UnboundedSender<Inbound>,
}

#[derive(Clone)]
enum Payload {
    Event(Envelope),
    Work(WorkNotice),
}

#[derive(Default)]
struct Stream {
    /// Not yet delivered to any consumer.
    backlog: VecDeque<(u64, Payload)>,
    /// Delivered, not acknowledged: entry -> (payload, consumer, delivered at).
    pending: BTreeMap<u64, (Payload, String, Instant)>,
    /// Members competing for entries.
    consumers: Vec<String>,
    /// Members that get every entry.
    watchers: Vec<String>,
    next_consumer: usize,
}

impl State {
    fn deliver(&self, to: &str, inbound: Inbound) -> bool {
        self.members
            .get(to)
            .is_some_and(|e| e.tx.send(inbound).is_ok())
    }

    /// Hands the stream's backlog to its live consumers, round robin.
    fn dispatch(&mut self, key: &str) {
        let Some(stream) = self.streams.get_mut(key) else {
            return;
        };
        let live: Vec<String> = stream
            .consumers
            .iter()
            .filter(|c| self.members.get(*c).is_some_and(|e| !e.tx.is_closed()))
            .cloned()
            .collect();
        if live.is_empty() {
            return;
        }
        while let Some((entry, payload)) = stream.backlog.pop_front() {
            let consumer = live[stream.next_consumer % live.len()].clone();
            stream.next_consumer = stream.next_consumer.wrapping_add(1);
            let receipt = Receipt {
                stream: key.to_string(),
                entry: entry.to_string(),
            };
            let inbound = inbound(payload.clone(), Some(receipt));
            let sent = self
                .members
                .get(&consumer)
                .is_some_and(|e| e.tx.send(inbound).is_ok());
            if sent {
                stream
                    .pending
                    .insert(entry, (payload, consumer, Instant::now()));
            } else {
                stream.backlog.push_front((entry, payload));
                return;
            }
        }
    }

    fn append(&mut self, key: &str, payload: Payload) -> Result<(), BusError> {
        let waiting = self.streams.get(key).map_or(0, |s| s.backlog.len());
        if waiting >= MAX_BACKLOG {
            let kind = match &payload {
                Payload::Event(e) => e.kind.clone(),
                Payload::Work(_) => "work notice".into(),
            };
            return Err(BusError::Full {
                kind,
                stream: key.to_string(),
                limit: MAX_BACKLOG as u64,
            });
        }
        self.next_entry += 1;
        let entry = self.next_entry;
        let stream = self.streams.entry(key.to_string()).or_default();
        for watcher in stream.watchers.clone() {
            self.deliver(&watcher, inbound(payload.clone(), None));
        }
        // Kept for a competing consumer, as a stream keeps entries for a consumer group that
        // joins later.
        let stream = self.streams.entry(key.to_string()).or_default();
        stream.backlog.push_back((entry, payload));
        self.dispatch(key);
        Ok(())
    }
}

fn inbound(payload: Payload, receipt: Option<Receipt>) -> Inbound {
    match payload {
        Payload::Event(envelope) => Inbound::Event { envelope, receipt },
        Payload::Work(notice) => Inbound::Work { notice, receipt },
    }
}

impl MemoryBroker {
    /// A broker with no members.
    pub fn new() -> Self {
        Self::default()
    }

    /// Joins `member`: it receives what is addressed to it and competes for its role's
    /// events. Entries it takes and does not acknowledge within `claim_timeout` go to another
    /// member of the role (checked every half `claim_timeout` by each member).
    pub fn connect(&self, member: Member, claim_timeout: Duration) -> MemoryBus {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = member.instance.to_string();
        let group = format!("group:{}", member.role);
        {
            let mut state = self.state.lock().expect("bus broker lock");
            state.members.insert(
                id.clone(),
                Endpoint {
                    member: member.clone(),
                    tx,
                },
            );
            state
                .streams
                .entry(group.clone())
                .or_default()
                .consumers
                .push(id.clone());
            state.dispatch(&group);
        }
        let closed = tokio_util::sync::CancellationToken::new();
        let reclaim = {
            let broker = self.clone();
            let closed = closed.clone();
            let id = id.clone();
            let every = (claim_timeout / 2).max(Duration::from_millis(10));
            super::supervise::watched("embedded bus take-over", async move {
                loop {
                    tokio::select! {
                        _ = closed.cancelled() => break,
                        _ = tokio::time::sleep(every) => broker.reclaim(&id, claim_timeout),
                    }
                }
            })
        };
        let (_, health) = watch::channel(Health::Up);
        MemoryBus {
            broker: self.clone(),
            member,
            inbox: Mutex::new(Some(rx)),
            health,
            closed,
            _reclaim: tokio_util::task::AbortOnDropHandle::new(reclaim),
        }
    }

    /// Like `XAUTOCLAIM`: entries pending longer than `timeout` with another consumer are
    /// delivered to `to` instead.
    fn reclaim(&self, to: &str, timeout: Duration) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let now = Instant::now();
        let keys: Vec<String> = state
            .streams
            .iter()
            .filter(|(_, s)| s.consumers.iter().any(|c| c == to))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            let stale: Vec<(u64, Payload)> = {
                let stream = state.streams.get_mut(&key).expect("listed above");
                let ids: Vec<u64> = stream
                    .pending
                    .iter()
                    .filter(|(_, (_, who, at))| who != to && now - *at >= timeout)
                    .map(|(id, _)| *id)
                    .collect();
                ids.into_iter()
                    .filter_map(|id| stream.pending.remove(&id).map(|(p, _, _)| (id, p)))
                    .collect()
            };
            for (entry, payload) in stale {
                let receipt = Receipt {
                    stream: key.clone(),
                    entry: entry.to_string(),
                };
                let delivered = state.deliver(to, inbound(payload.clone(), Some(receipt)));
                let stream = state.streams.get_mut(&key).expect("listed above");
                if delivered {
                    stream.pending.insert(entry, (payload, to.to_string(), now));
                } else {
                    stream.backlog.push_front((entry, payload));
                }
            }
        }
    }
}

/// One member's end of a [`MemoryBroker`].
pub struct MemoryBus {
    broker: MemoryBroker,
    member: Member,
    inbox: Mutex<Option<mpsc::UnboundedReceiver<Inbound>>>,
    health: watch::Receiver<Health>,
    closed: tokio_util::sync::CancellationToken,
    _reclaim: tokio_util::task::AbortOnDropHandle<()>,
}

impl std::fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBus")
            .field("member", &self.member)
            .finish()
    }
}

impl MemoryBus {
    /// A bus of its own for one process (`bus.kind = "none"`).
    pub fn embedded(member: Member, claim_timeout: Duration) -> Self {
        MemoryBroker::new().connect(member, claim_timeout)
    }

    fn state(&self) -> Result<std::sync::MutexGuard<'_, State>, BusError> {
        if self.closed.is_cancelled() {
            return Err(BusError::Closed);
        }
        self.broker
            .state
            .lock()
            .map_err(|_| BusError::Transport("embedded bus state poisoned".into()))
    }
}

#[async_trait]
impl Bus for MemoryBus {
    fn member(&self) -> &Member {
        &self.member
    }

    async fn dedup_claim(
        &self,
        key: &str,
        token: &str,
        lease: Duration,
    ) -> Result<DedupClaim, BusError> {
        let mut state = self.state()?;
        let now = Instant::now();
        state.forget_expired_marks(now);
        if state.done.get(key).is_some_and(|until| *until > now) {
            return Ok(DedupClaim::Done);
        }
        if state
            .running
            .get(key)
            .is_some_and(|(_, until)| *until > now)
        {
            return Ok(DedupClaim::Running);
        }
        let held = (token.to_string(), now + lease);
        state.running.insert(key.to_string(), held);
        Ok(DedupClaim::Claimed)
    }

    async fn dedup_renew(&self, key: &str, token: &str, lease: Duration) -> Result<bool, BusError> {
        let mut state = self.state()?;
        let now = Instant::now();
        match state.running.get_mut(key) {
            Some((held, until)) if held == token && *until > now => {
                *until = now + lease;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn dedup_finish(
        &self,
        key: &str,
        token: &str,
        done_for: Option<Duration>,
    ) -> Result<(), BusError> {
        let mut state = self.state()?;
        if let Some(window) = done_for {
            state.done.insert(key.to_string(), Instant::now() + window);
        }
        if state
            .running
            .get(key)
            .is_some_and(|(held, _)| held == token)
        {
            state.running.remove(key);
        }
        Ok(())
    }

    async fn send(&self, envelope: &Envelope) -> Result<(), BusError> {
        let mut state = self.state()?;
        match &envelope.to {
            Address::OneOf(role) => {
                state.append(&format!("group:{role}"), Payload::Event(envelope.clone()))?;
                if envelope.cc {
                    let me = self.member.instance.to_string();
                    let copy = Inbound::Event {
                        envelope: envelope.clone(),
                        receipt: None,
                    };
                    state.deliver(&me, copy);
                }
            }
            _ => {
                let to: Vec<String> = state
                    .members
                    .iter()
                    .filter(|(_, e)| envelope.is_for(&e.member))
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in to {
                    let copy = Inbound::Event {
                        envelope: envelope.clone(),
                        receipt: None,
                    };
                    state.deliver(&id, copy);
                }
            }
        }
        Ok(())
    }

    async fn announce(&self, notice: &WorkNotice) -> Result<(), BusError> {
        let mut state = self.state()?;
        state.append(
            &format!("work:{}", notice.queue),
            Payload::Work(notice.clone()),
        )?;
        Ok(())
    }

    async fn listen_work(&self, queue: &str, reach: Reach) -> Result<(), BusError> {
        let mut state = self.state()?;
        let key = format!("work:{queue}");
        let me = self.member.instance.to_string();
        let stream = state.streams.entry(key.clone()).or_default();
        match reach {
            Reach::One => stream.consumers.push(me),
            Reach::All => stream.watchers.push(me),
        }
        state.dispatch(&key);
        Ok(())
    }

    async fn ack(&self, receipt: &Receipt) -> Result<(), BusError> {
        let mut state = self.state()?;
        if let (Some(stream), Ok(entry)) = (
            state.streams.get_mut(&receipt.stream),
            receipt.entry.parse::<u64>(),
        ) {
            stream.pending.remove(&entry);
        }
        Ok(())
    }

    fn take_inbox(&self) -> Option<mpsc::UnboundedReceiver<Inbound>> {
        self.inbox.lock().ok().and_then(|mut i| i.take())
    }

    fn health(&self) -> watch::Receiver<Health> {
        self.health.clone()
    }

    async fn sent(&self, queue: &str, messages: u64) -> Result<SentState, BusError> {
        let mut state = self.state()?;
        let (empty, count) = state
            .work_state
            .entry(queue.to_string())
            .or_insert((true, 0));
        let was_empty = std::mem::replace(empty, false);
        *count = count.saturating_add(messages);
        Ok(SentState {
            was_empty,
            since_empty: *count,
        })
    }

    async fn drained(&self, queue: &str) -> Result<(), BusError> {
        let mut state = self.state()?;
        state.work_state.insert(queue.to_string(), (true, 0));
        Ok(())
    }

    async fn pulse(&self, presence: &Presence, ttl: Duration) -> Result<(), BusError> {
        let mut state = self.state()?;
        state.presence.insert(
            presence.instance.clone(),
            (presence.clone(), Instant::now() + ttl),
        );
        Ok(())
    }

    async fn instances(&self) -> Result<Vec<Presence>, BusError> {
        let state = self.state()?;
        let now = Instant::now();
        Ok(state
            .presence
            .values()
            .filter(|(_, until)| *until > now)
            .map(|(p, _)| p.clone())
            .collect())
    }

    async fn close(&self) {
        if let Ok(mut state) = self.broker.state.lock() {
            let me = self.member.instance.to_string();
            state.members.remove(&me);
            state.presence.remove(&me);
            for stream in state.streams.values_mut() {
                stream.consumers.retain(|c| *c != me);
                stream.watchers.retain(|c| *c != me);
            }
        }
        self.closed.cancel();
    }
}

impl Drop for MemoryBus {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

//! Events between instances, after the seeds' inter-role communication model.
//!
//! Each worker process is an instance ([`Member`]: an instance id and a role). Instances send
//! each other events (typed with serde, see [`Event`]) addressed by [`Address`]:
//!
//! | address | who gets it | guarantee |
//! |---|---|---|
//! | [`Address::Instance`] (unicast) | that instance, kept while it is away for up to `bus.retention` | at least once |
//! | [`Address::All`] (multicast) | every instance live or away for up to `bus.retention` | at least once per instance |
//! | [`Address::Role`] | every such instance of the role | at least once per instance |
//! | [`Address::OneOf`] (competing consumers) | exactly one instance of the role, which acknowledges; re-delivered to another after `bus.claim_timeout` if it dies first; after `bus.max_deliveries` moved to the bus poison stream | at least once |
//! | any address, published with [`BusHandle::publish_at_most_once`] | the addressed instances live now (Redis pub/sub, lowest latency) | at most once |
//!
//! Fan-out events carry an id; an instance drops one it already received (de-duplication
//! after a publish retried or a restart). An event may carry a time to live
//! ([`BusHandle::publish_with_ttl`]): past it, it is dropped unhandled.
//!
//! A carbon copy ([`Envelope::with_cc`]) also delivers an event to its sender.
//!
//! The room's files, one job each:
//! - `settings.rs`: `[bus]` and `[queues.<name>.bus]`, checked while parsing.
//! - `envelope.rs`: the wire format and addressing.
//! - `memory.rs`: the embedded bus (one process; the fast double in tests).
//! - `redis/`: the Redis transport (pub/sub on RESP3 push with automatic resubscription,
//!   Streams with a consumer group and `XAUTOCLAIM` for competing consumers and work notices).
//! - `handle.rs`: [`BusHandle`], the typed API: publish, subscribe with a [`Filter`] to a
//!   stream or a handler.
//! - `announce.rs`: [`Announcer`], a producer's work-detected announcements after the publish
//!   modes (every message, the first to an empty queue, every `depth` messages).
//! - [`events`]: the runtime's own events (presence pulses, instances leaving, job pulses).
//! - [`jobs`]: the heartbeat progress monitor (a long job's START record, pulses and end,
//!   stored for `ebbflow jobs` and sent as `ebbflow.job` events).
//!
//! The worker wires listeners to the bus (`worker/bus.rs`): a work notice wakes the queue's
//! listener like a local trigger; with `reach = "one"` exactly one replica gets each notice,
//! and a replica that finds more than it can take passes it on.
//!
//! ```no_run
//! # async fn demo(bus: ebbflow::bus::BusHandle) -> Result<(), ebbflow::bus::BusError> {
//! use ebbflow::bus::{Address, Event, Filter};
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct BatchDone { batch: u64, items: u64 }
//! impl Event for BatchDone { const KIND: &'static str = "billing.batch-done"; }
//!
//! // In the controller: every BatchDone from any processor, as a stream.
//! let mut done = bus.subscribe::<BatchDone>(Filter::new().from_role("processor"));
//! // In a processor (or a handler, through `ctx.bus()`): tell exactly one controller.
//! bus.publish(&BatchDone { batch: 7, items: 1000 }, Address::one_of("controller")).await?;
//! while let Some(event) = done.next().await {
//!     println!("batch {} from {}", event.body.batch, event.from);
//!     event.ack().await?; // competing-consumer events are re-delivered until acknowledged
//! }
//! # Ok(()) }
//! ```

mod announce;
mod envelope;
pub mod events;
mod handle;
pub mod jobs;
pub(crate) mod memory;
pub(crate) mod metrics;
pub(crate) mod options;
mod poison;
pub(crate) mod redis;
mod request;
pub(crate) mod settings;
pub(crate) mod signing;
mod supervise;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

pub(crate) use announce::pass_on_target;
pub use announce::{Announced, Announcer};
pub use envelope::{now_ms, Address, Envelope};
pub use handle::{BoxError, BusHandle, Filter, Received, Subscription};
pub use memory::{MemoryBroker, MemoryBus};
pub use options::{Count, EnvelopeLimit, MaxBacklog, MaxDeliveries, Retention, SigningKey};
pub use poison::PoisonEntry;
pub use redis::{RedisBus, RedisStats};
pub use request::Request;
pub use settings::{
    AnnounceDepth, Bounded, BusKind, BusSettings, ClaimTimeout, Name, OutageProbe, PublishMode,
    PulseInterval, QueueBusSettings, Reach, RedisUrl,
};

/// Connects this instance to the bus its settings name: the embedded bus of its own with
/// `kind = "none"`, Redis with `kind = "redis"` (failing when Redis cannot be reached or refuses
/// the credentials; the error names `bus.url` and never shows the password). Delivery starts
/// with [`BusHandle::start`], once subscribers are in place.
///
/// # Errors
///
/// [`BusError`] when Redis cannot be reached, refuses the credentials, or the settings are
/// inconsistent; the error names `bus.url` without its password.
pub async fn open(settings: &BusSettings) -> Result<BusHandle, BusError> {
    let id = settings
        .instance_id
        .clone()
        .unwrap_or_else(|| Member::generated_id(&settings.role));
    let member = Member {
        instance: id,
        role: settings.role.clone(),
    };
    let bus: std::sync::Arc<dyn Bus> = match settings.kind {
        BusKind::None => std::sync::Arc::new(memory::MemoryBus::embedded(
            member,
            settings.claim_timeout.get(),
        )),
        BusKind::Redis => std::sync::Arc::new(redis::RedisBus::connect(settings, member).await?),
    };
    Ok(BusHandle::new(bus))
}

/// Who an instance is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// Unique among live instances.
    pub instance: Name,
    /// What it does.
    pub role: Name,
}

impl Member {
    /// A member; both names must be 1..=64 characters of `[A-Za-z0-9._-]`.
    ///
    /// # Errors
    ///
    /// [`InvalidSetting`](crate::checks::InvalidSetting) naming `instance` or `role` when one
    /// is not such a name.
    pub fn new(instance: &str, role: &str) -> Result<Self, crate::checks::InvalidSetting> {
        Ok(Self {
            instance: Name::new(instance).map_err(|e| e.at("instance"))?,
            role: Name::new(role).map_err(|e| e.at("role"))?,
        })
    }

    /// The id of an instance that was given none (`bus.instance_id`):
    /// - on Kubernetes (`KUBERNETES_SERVICE_HOST` set) with a `HOSTNAME` ending in `-<ordinal>`
    ///   (a StatefulSet pod, `billing-controller-0`), that name: stable across restarts, so the
    ///   instance gets the fan-out events sent to it while it was away;
    /// - anywhere else `<HOSTNAME or role>-<8 random hex>`, new at every start: such an
    ///   instance does not keep its identity, events addressed to its old id are not delivered
    ///   to it, and its old groups are removed after `bus.retention`. Set `bus.instance_id`
    ///   (`EBBFLOW__BUS__INSTANCE_ID`) to keep one.
    pub fn generated_id(role: &Name) -> Name {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| Name::new(h.as_str()).is_ok() && h.len() <= 48);
        let on_kubernetes = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
        if let Some(h) = host.as_deref().filter(|_| on_kubernetes) {
            if is_stateful_pod_name(h) {
                if let Ok(name) = Name::new(h) {
                    return name;
                }
            }
        }
        let host = host.unwrap_or_else(|| role.to_string());
        let tail = &uuid::Uuid::new_v4().simple().to_string()[..8];
        Name::new(format!("{host}-{tail}")).unwrap_or_else(|_| role.clone())
    }
}

/// `<name>-<ordinal>`, as a StatefulSet names its pods.
fn is_stateful_pod_name(host: &str) -> bool {
    host.rsplit_once('-').is_some_and(|(name, ordinal)| {
        !name.is_empty() && !ordinal.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit())
    })
}

/// A typed event: a serde type with a stable type name on the wire.
pub trait Event: Serialize + serde::de::DeserializeOwned + Send + 'static {
    /// The type name on the wire (`Envelope::kind`), e.g. `billing.batch-done`. Names starting
    /// with `ebbflow.` are the runtime's own.
    const KIND: &'static str;
}

/// Identifies a competing-consumer delivery, to acknowledge it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Receipt {
    /// The stream (Redis key) it came from.
    pub stream: String,
    /// Its entry id.
    pub entry: String,
}

/// "Work detected on queue Q", as carried by a queue's work stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkNotice {
    /// The queue that received work.
    pub queue: String,
    /// The sending instance, if an ebbflow instance sent it.
    #[serde(default)]
    pub from: Option<String>,
    /// Messages this notice stands for, if known.
    #[serde(default)]
    pub messages: Option<u64>,
    /// Times it was passed on by replicas that had more than they could take.
    #[serde(default)]
    pub hops: u32,
}

/// Something the transport received for this instance.
#[derive(Debug, Clone)]
pub enum Inbound {
    /// An event addressed to this instance (already filtered by [`Envelope::is_for`]).
    Event {
        /// The event.
        envelope: Envelope,
        /// Present for competing-consumer deliveries: acknowledge once handled.
        receipt: Option<Receipt>,
    },
    /// Work was announced on a queue this instance listens to.
    Work {
        /// The notice.
        notice: WorkNotice,
        /// Present with `reach = "one"`: acknowledge once the listener was woken.
        receipt: Option<Receipt>,
    },
}

/// Whether the bus is reachable now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Connected.
    Up,
    /// Disconnected: reconnecting in the background; work-detected events may be missed, so
    /// listeners fall back to probing (`outage_probe_interval`).
    Down,
}

/// What a producer's send tells the publish modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SentState {
    /// The queue's listeners had found it empty since the last announcement.
    pub was_empty: bool,
    /// Messages sent since the queue was last found empty, this one included.
    pub since_empty: u64,
}

/// One instance's presence pulse: who it is and what it is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// The instance id.
    pub instance: String,
    /// Its role.
    pub role: String,
    /// The queues it listens to.
    pub queues: Vec<String>,
    /// Dequeue tasks running, over all its queues.
    pub active_tasks: u64,
    /// Handlers running.
    pub in_flight: u64,
    /// Messages handled successfully since it started.
    pub handled: u64,
    /// Receive calls made since it started (each one billable).
    #[serde(default)]
    pub receive_calls: u64,
    /// When it started, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// When it sent this pulse, milliseconds since the Unix epoch.
    pub pulse_at_ms: u64,
}

/// A bus failure.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The bus could not be reached or refused us (the text has no secret in it).
    #[error("bus: {0}")]
    Transport(String),
    /// An event could not be encoded or decoded.
    #[error("bus: event {kind}: {detail}")]
    Codec {
        /// The event type.
        kind: String,
        /// What went wrong.
        detail: String,
    },
    /// The bus was closed (the worker stopped).
    #[error("bus: closed")]
    Closed,
    /// The envelope is larger than `bus.max_envelope_size`: nothing was sent.
    #[error("bus: event {kind}: its envelope of {size} bytes is over bus.max_envelope_size ({limit} bytes); send a reference (a blob, a queue message) instead")]
    TooLarge {
        /// The event type.
        kind: String,
        /// The envelope's size, bytes.
        size: u64,
        /// The limit, bytes.
        limit: u64,
    },
    /// A competing-consumer stream holds `bus.max_backlog` entries: nothing was sent (start an
    /// instance of the role, or raise the limit).
    #[error("bus: {stream} holds {limit} entries (bus.max_backlog): event {kind} not sent; start an instance of the role or raise bus.max_backlog")]
    Full {
        /// The event type.
        kind: String,
        /// The stream.
        stream: String,
        /// The limit.
        limit: u64,
    },
    /// No reply to a request within its timeout.
    #[error("bus: request {kind} to {to}: no reply within {after:?}")]
    Timeout {
        /// The request's event type.
        kind: String,
        /// Where it was sent.
        to: String,
        /// The timeout.
        after: Duration,
    },
    /// The responder's handler failed; its error text.
    #[error("bus: request {kind}: the responder {from} failed: {error}")]
    Remote {
        /// The request's event type.
        kind: String,
        /// The responding instance.
        from: String,
        /// Its error.
        error: String,
    },
    /// This transport cannot do that (e.g. the embedded bus has no poison stream).
    #[error("bus: {0}")]
    Unsupported(String),
    /// No such entry (e.g. a poison entry id that is not in the poison stream).
    #[error("bus: {0} not found")]
    NotFound(String),
}

/// A transport between instances. Small on purpose: Redis today, Service Bus or NATS later,
/// without touching listeners. [`BusHandle`] builds the typed API on top.
///
/// Implementations deliver only what is addressed to this member ([`Envelope::is_for`]) and
/// keep reconnecting on their own; [`Bus::health`] says whether they are connected.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// This instance.
    fn member(&self) -> &Member;

    /// Sends an envelope to its address: fan-out addresses at most once, [`Address::OneOf`]
    /// onto the role's stream (at least once, acknowledged with [`Bus::ack`]).
    async fn send(&self, envelope: &Envelope) -> Result<(), BusError>;

    /// Appends a work notice to `notice.queue`'s work stream.
    async fn announce(&self, notice: &WorkNotice) -> Result<(), BusError>;

    /// Starts receiving work notices of `queue`: as one of its listeners (`Reach::One`,
    /// acknowledged) or all of them (`Reach::All`).
    async fn listen_work(&self, queue: &str, reach: Reach) -> Result<(), BusError>;

    /// Acknowledges a competing-consumer delivery, so it is never re-delivered.
    async fn ack(&self, receipt: &Receipt) -> Result<(), BusError>;

    /// Records that handling a competing-consumer delivery failed with `error`: once it was
    /// delivered `bus.max_deliveries` times it moves to the poison stream (`Ok(true)`),
    /// otherwise it is re-delivered after the claim timeout (`Ok(false)`). Transports without a
    /// poison stream keep the default (re-delivered without limit).
    async fn fail(&self, _receipt: &Receipt, _error: &str) -> Result<bool, BusError> {
        Ok(false)
    }

    /// The newest `limit` entries of the bus poison stream, newest first.
    async fn poison_list(&self, _limit: usize) -> Result<Vec<PoisonEntry>, BusError> {
        Err(BusError::Unsupported(
            "this bus has no poison stream (bus.kind = \"none\")".into(),
        ))
    }

    /// One poison entry by its id.
    async fn poison_show(&self, id: &str) -> Result<PoisonEntry, BusError> {
        let _ = id;
        Err(BusError::Unsupported(
            "this bus has no poison stream (bus.kind = \"none\")".into(),
        ))
    }

    /// Puts a poison entry's envelope back on the stream it came from (a fresh delivery count)
    /// and removes it from the poison stream. Fails for an entry kept without its envelope (it
    /// was too large).
    async fn poison_requeue(&self, id: &str) -> Result<(), BusError> {
        let _ = id;
        Err(BusError::Unsupported(
            "this bus has no poison stream (bus.kind = \"none\")".into(),
        ))
    }

    /// Keeps a competing-consumer delivery claimed by this instance (its idle time starts
    /// again, so no other instance takes it over for another claim timeout). `Ok(false)` when
    /// it is no longer this instance's: acknowledged already, or taken over by another instance
    /// after the claim timeout (then the caller must not handle it: the other one does).
    /// Transports without take-over keep the default, always `true`.
    async fn renew(&self, _receipt: &Receipt) -> Result<bool, BusError> {
        Ok(true)
    }

    /// How long a competing-consumer delivery stays claimed without [`Bus::renew`] (`None`:
    /// this transport never takes deliveries over).
    fn claim_timeout(&self) -> Option<std::time::Duration> {
        None
    }

    /// The inbox: everything received for this instance. `None` after the first call.
    fn take_inbox(&self) -> Option<mpsc::UnboundedReceiver<Inbound>>;

    /// Connected or not, now and as it changes.
    fn health(&self) -> watch::Receiver<Health>;

    /// Records a producer's send of `messages` to `queue` for the publish modes.
    async fn sent(&self, queue: &str, messages: u64) -> Result<SentState, BusError>;

    /// Records that `queue`'s listeners found it empty (for the publish modes).
    async fn drained(&self, queue: &str) -> Result<(), BusError>;

    /// Publishes this instance's presence, valid for `ttl`.
    async fn pulse(&self, presence: &Presence, ttl: Duration) -> Result<(), BusError>;

    /// Live instances (their last pulse within its `ttl`), by instance id.
    async fn instances(&self) -> Result<Vec<Presence>, BusError>;

    /// Stores a job's progress record (see [`jobs`]) for `bus.job_retention` after this
    /// change. Transports without a store keep the default (nothing stored).
    async fn record_job(&self, _record: &jobs::JobRecord) -> Result<(), BusError> {
        Ok(())
    }

    /// The stored job records (running, and ended within `bus.job_retention`), newest start
    /// first.
    async fn jobs(&self) -> Result<Vec<jobs::JobRecord>, BusError> {
        Err(BusError::Unsupported(
            "this bus keeps no job records (bus.kind = \"none\"): set [bus] kind = \"redis\""
                .into(),
        ))
    }

    /// Shared de-duplication (the `Dedup` layer's `across_replicas`), one atomic step: when
    /// `key` was marked done, [`DedupClaim::Done`]; else when another holder's running mark
    /// is live, [`DedupClaim::Running`]; else this caller's running mark (`token`, expiring
    /// after `lease`) is set and [`DedupClaim::Claimed`] returned. Transports without a store
    /// keep the default ([`BusError::Unsupported`]: the layer stays per process).
    async fn dedup_claim(
        &self,
        _key: &str,
        _token: &str,
        _lease: Duration,
    ) -> Result<DedupClaim, BusError> {
        Err(BusError::Unsupported(
            "this bus shares no de-duplication marks (bus.kind = \"none\")".into(),
        ))
    }

    /// Extends this caller's running mark of `key` (still `token`) by `lease`; `Ok(false)`
    /// when it is no longer this caller's (it expired).
    async fn dedup_renew(
        &self,
        _key: &str,
        _token: &str,
        _lease: Duration,
    ) -> Result<bool, BusError> {
        Ok(false)
    }

    /// Ends this caller's run of `key`: marks it done for `done_for` when given (a success),
    /// then removes the running mark when it is still `token`.
    async fn dedup_finish(
        &self,
        _key: &str,
        _token: &str,
        _done_for: Option<Duration>,
    ) -> Result<(), BusError> {
        Ok(())
    }

    /// Leaves: withdraws this instance's presence and stops receiving.
    async fn close(&self);

    /// The transport's own counters (zero where it has none).
    fn counters(&self) -> TransportCounters {
        TransportCounters::default()
    }
}

/// What a shared de-duplication claim found ([`Bus::dedup_claim`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupClaim {
    /// The key was handled successfully within its window: skip the message.
    Done,
    /// Another holder runs a message with this key now.
    Running,
    /// The caller holds the running mark: run it, then [`Bus::dedup_finish`].
    Claimed,
}

/// A transport's counters: outages and recoveries, entries taken over from another consumer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportCounters {
    /// Times the connection was lost.
    pub outages: u64,
    /// Times it came back.
    pub reconnects: u64,
    /// Competing-consumer entries taken over after the claim timeout.
    pub reclaimed: u64,
    /// Envelopes and presence records refused for their signature.
    pub refused: u64,
    /// Stream entries moved to the bus poison stream.
    pub poisoned: u64,
    /// Events dropped because their time to live had passed.
    pub expired: u64,
    /// Fan-out events received twice and dropped.
    pub duplicates: u64,
}

/// What the bus metrics show (see the book's Operating chapter, docs/src/operating.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct BusFigures {
    /// 1 while connected.
    pub up: bool,
    /// The transport's counters.
    pub transport: TransportCounters,
    /// Work notices received (each woke a listener).
    pub notices_received: u64,
    /// Work notices passed on by listeners that held more than they could take.
    pub passed_on: u64,
    /// Depth probes of idle queues while the bus was down.
    pub outage_probes: u64,
}

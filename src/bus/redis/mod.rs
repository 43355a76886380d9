//! The Redis transport: one RESP3 connection manager for commands and pub/sub (push messages,
//! automatic resubscription after a reconnect), and one for stream reads.
//!
//! Keys and channels, under `bus.channel_prefix` (`P`):
//! - streams `P:fan:all`, `P:fan:role:<role>`, `P:fan:instance:<id>`: fan-out events (field
//!   `envelope`, and `sig` when signed), each instance reading through a consumer group named by
//!   its instance id, so one away for less than `bus.retention` resumes where it stopped;
//!   trimmed to entries younger than the retention; an instance's own stream expires a
//!   retention after its last event; groups of instances gone longer are removed;
//! - stream `P:group:<role>`, consumer group `ebbflow`: competing-consumer events,
//!   re-delivered when not acknowledged within the claim timeout, moved to `P:poison` after
//!   `bus.max_deliveries`, bounded by `bus.max_backlog` (publishing fails beyond it); an
//!   acknowledged entry is deleted;
//! - stream `P:poison`: entries moved aside with their reason (`P:error:<id>` holds a failed
//!   entry's last error meanwhile);
//! - stream `P:work:<queue>`: work notices (fields `queue`, optional `from`, `messages`,
//!   `hops`), read through the group `ebbflow` (`reach = "one"`) or by every listener
//!   (`reach = "all"`), about the newest 10,000 kept (a notice is a hint);
//! - channels `P:all`, `P:role:<role>`, `P:instance:<id>`, `P:work:<queue>`: events published
//!   at most once, and the one-byte nudge (`~`) that wakes readers when an entry was appended;
//! - `P:busy:<queue>`, `P:sent:<queue>`: the publish modes' state;
//! - `P:presence:<id>` (JSON, signed when signing is on, expiring) and the sorted set
//!   `P:instances`: presence.

mod deliver;
mod poison;
mod presence;
mod readers;
mod scripts;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use backon::BackoffBuilder;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::settings::{BusSettings, RedisUrl};
use super::signing::Signer;
use super::{
    Address, Bus, BusError, Envelope, Health, Inbound, Member, PoisonEntry, Presence, Reach,
    Receipt, SentState, WorkNotice,
};

/// The consumer group every competing stream uses.
const GROUP: &str = "ebbflow";
/// Work notices a work stream keeps (approximately): they are hints.
const WORK_CAP: u64 = 10_000;
/// How long a reader waits for a nudge before it reads anyway.
const POLL: Duration = Duration::from_millis(1_000);
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// What one read of a stream may hold, bytes: entries per read are this over the envelope
/// limit (1..=64), so a reader's memory is bounded whatever is written to Redis.
const READ_BUDGET: u64 = 16 * 1024 * 1024;
/// Fan-out event ids remembered to drop a second delivery.
const SEEN: usize = 65_536;

/// Counters of the Redis transport, for metrics and tests.
#[derive(Debug, Default)]
pub struct RedisStats {
    /// Times the bus went down (connection lost, commands failing).
    pub outages: AtomicU64,
    /// Times it came back.
    pub reconnects: AtomicU64,
    /// Competing-consumer entries taken over from another consumer (or retried).
    pub reclaimed: AtomicU64,
    /// Envelopes and presence refused for their signature.
    pub refused: AtomicU64,
    /// Entries moved to the poison stream.
    pub poisoned: AtomicU64,
    /// Events dropped past their time to live.
    pub expired: AtomicU64,
    /// Fan-out events received twice and dropped.
    pub duplicates: AtomicU64,
    /// Stream reads (each one script call).
    pub reads: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The Redis transport of one instance.
pub struct RedisBus {
    shared: Arc<Shared>,
    inbox: Mutex<Option<mpsc::UnboundedReceiver<Inbound>>>,
    /// Connected to receive (not a client only).
    listening: bool,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("member", &self.shared.member)
            .field("url", &self.shared.url)
            .finish()
    }
}

/// The bounds of what is kept and read.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    claim_timeout: Duration,
    retention: Duration,
    max_envelope: u64,
    max_deliveries: u64,
    max_backlog: u64,
}

impl Limits {
    fn of(settings: &BusSettings) -> Self {
        Self {
            claim_timeout: settings.claim_timeout.get(),
            retention: settings.retention.get(),
            max_envelope: settings.max_envelope_size.get(),
            max_deliveries: settings.max_deliveries.get(),
            max_backlog: settings.max_backlog.get(),
        }
    }

    /// Entries per stream and read.
    fn read_count(&self) -> u64 {
        (READ_BUDGET / self.max_envelope).clamp(1, 64)
    }
}

/// What the streams reader reads.
#[derive(Debug, Default)]
pub(super) struct Streams {
    /// Competing streams read as a consumer of the group `ebbflow`.
    groups: Vec<String>,
    /// Fan-out streams read through this instance's own group, with where the next read
    /// starts (`0` until this instance's pending entries from before a restart are read).
    fan: BTreeMap<String, String>,
    /// Streams read by every listener, with the last entry id seen.
    watched: BTreeMap<String, String>,
}

/// Fan-out event ids already received (bounded).
#[derive(Debug, Default)]
pub(super) struct Seen {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    /// `false` when `id` was seen before.
    fn insert(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() >= SEEN {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        self.ids.insert(id.to_string());
        self.order.push_back(id.to_string());
        true
    }
}

pub(super) struct Shared {
    member: Member,
    url: RedisUrl,
    prefix: String,
    limits: Limits,
    signer: Option<Signer>,
    cmd: ConnectionManager,
    reader: ConnectionManager,
    inbox: mpsc::UnboundedSender<Inbound>,
    health: watch::Sender<Health>,
    streams: Mutex<Streams>,
    seen: Mutex<Seen>,
    /// A nudge arrived (or the streams changed): read now.
    nudge: tokio::sync::Notify,
    closed: CancellationToken,
    stats: Arc<RedisStats>,
}

impl Shared {
    fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }

    /// The fan-out stream and nudge channel of a fan-out address.
    fn fan_of(&self, to: &Address) -> (String, String) {
        match to {
            Address::Instance(id) => (
                self.key(&["fan", "instance", id]),
                self.key(&["instance", id]),
            ),
            Address::All => (self.key(&["fan", "all"]), self.key(&["all"])),
            Address::Role(r) | Address::OneOf(r) => {
                (self.key(&["fan", "role", r]), self.key(&["role", r]))
            }
        }
    }

    /// Turns a client error into ours, without the password.
    fn error(&self, what: &str, e: &redis::RedisError) -> BusError {
        BusError::Transport(self.url.scrub(&format!("{what}: {e}")))
    }

    /// Records whether the last call reached Redis; logs and counts each change.
    fn mark(&self, up: bool, why: &str) {
        let now = if up { Health::Up } else { Health::Down };
        let changed = self.health.send_if_modified(|h| {
            let changed = *h != now;
            *h = now;
            changed
        });
        if !changed {
            return;
        }
        if up {
            bump(&self.stats.reconnects);
            info!(url = %self.url, "bus connection restored; subscriptions are back");
            // Entries appended while down sent nudges nobody heard.
            self.nudge.notify_one();
        } else {
            bump(&self.stats.outages);
            warn!(url = %self.url, error = %self.url.scrub(why), "bus connection lost; reconnecting (listeners fall back to probing)");
        }
    }

    /// Runs `cmd` on the command connection; marks the bus down on a connection error.
    async fn raw<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        let mut con = self.cmd.clone();
        let r = cmd.query_async::<T>(&mut con).await;
        self.seen_result(&r);
        r
    }

    fn seen_result<T>(&self, r: &redis::RedisResult<T>) {
        match r {
            Ok(_) => self.mark(true, ""),
            Err(e) if is_connection_error(e) => self.mark(false, &e.to_string()),
            Err(_) => {}
        }
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        what: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, BusError> {
        self.raw(cmd).await.map_err(|e| self.error(what, &e))
    }

    /// Runs a script call on the command connection.
    async fn script<T: redis::FromRedisValue>(&self, call: &redis::Cmd) -> redis::RedisResult<T> {
        self.raw(call).await
    }

    /// Appends `fields` to `stream` (see [`scripts::APPEND`]), retrying connection errors with
    /// back-off (a few attempts within about 2 s).
    async fn append(
        &self,
        kind: &str,
        stream: &str,
        mode: &str,
        expiry: Duration,
        nudge: &str,
        fields: &[(&str, &str)],
    ) -> Result<String, BusError> {
        let limit = match mode {
            "backlog" => self.limits.max_backlog,
            _ => WORK_CAP,
        };
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_millis(800))
            .with_max_times(4)
            .with_jitter()
            .build();
        loop {
            // Events to different addresses go to different streams, whose ids may tie within
            // a millisecond: a counter keeps the order they were sent in.
            let seq = self.key(&["seq"]);
            let keys: &[&str] = if mode == "fan" {
                &[stream, &seq]
            } else {
                &[stream]
            };
            let mut inv = scripts::APPEND.call(keys);
            inv.arg(mode)
                .arg(millis(self.limits.retention))
                .arg(millis(expiry))
                .arg(limit)
                .arg(nudge);
            for (f, v) in fields {
                inv.arg(*f).arg(*v);
            }
            match self.script::<String>(&inv).await {
                Ok(id) => return Ok(id),
                Err(e) if e.to_string().contains("FULL") => {
                    return Err(BusError::Full {
                        kind: kind.to_string(),
                        stream: stream.to_string(),
                        limit,
                    })
                }
                Err(e) if is_connection_error(&e) => match delays.next() {
                    Some(delay) => {
                        warn!(stream, retry_in = ?delay, error = %self.url.scrub(&e.to_string()), "bus publish failed; retrying");
                        tokio::time::sleep(delay).await;
                    }
                    None => return Err(self.error("publish", &e)),
                },
                Err(e) => return Err(self.error("publish", &e)),
            }
        }
    }

    /// Creates the consumer group `group` on `stream` (and the stream) unless it exists,
    /// starting at `from` (`0`: entries already there are delivered; `$`: only new ones).
    async fn ensure_group(&self, stream: &str, group: &str, from: &str) -> Result<(), BusError> {
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(stream)
            .arg(group)
            .arg(from)
            .arg("MKSTREAM");
        match self.raw::<()>(&cmd).await {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(self.error("XGROUP CREATE", &e)),
        }
    }

    /// Makes every group this instance reads (again, after Redis lost them).
    async fn ensure_groups(&self) -> Result<(), BusError> {
        let (groups, fan) = {
            let s = self.streams.lock().map_err(|_| poisoned())?;
            (s.groups.clone(), s.fan.keys().cloned().collect::<Vec<_>>())
        };
        for g in &groups {
            self.ensure_group(g, GROUP, "0").await?;
        }
        let me = self.member.instance.to_string();
        let own = self.fan_of(&Address::Instance(me.clone())).0;
        for f in &fan {
            // An instance's own stream keeps what was sent before it joined; the shared ones
            // start now for an instance seen for the first time.
            let from = if *f == own { "0" } else { "$" };
            self.ensure_group(f, &me, from).await?;
        }
        Ok(())
    }
}

fn poisoned() -> BusError {
    BusError::Transport("bus state lock poisoned".into())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

impl RedisBus {
    /// Connects as `member` to `settings.url`, subscribes to its channels and joins its
    /// streams' groups. Fails (without the password in the error) when Redis cannot be reached
    /// or refuses the credentials: a worker does not start on a bus it cannot use.
    pub async fn connect(settings: &BusSettings, member: Member) -> Result<Self, BusError> {
        Self::open(settings, member, true).await
    }

    /// Connects as a client only (the CLI, a producer): it can send, announce, acknowledge and
    /// read presence and the poison stream, but subscribes to nothing and receives nothing.
    pub async fn connect_client(settings: &BusSettings, member: Member) -> Result<Self, BusError> {
        Self::open(settings, member, false).await
    }

    async fn open(settings: &BusSettings, member: Member, listen: bool) -> Result<Self, BusError> {
        let url = settings
            .url
            .clone()
            .ok_or_else(|| BusError::Transport("bus.url is not set".into()))?;
        let scrub =
            |e: redis::RedisError| BusError::Transport(url.scrub(&format!("bus.url = {url}: {e}")));
        let info = url.secret().into_connection_info().map_err(scrub)?;
        let redis_settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(redis_settings);
        let client = redis::Client::open(info).map_err(scrub)?;
        // One plain connection first: a wrong host or password fails here, at once and
        // clearly, instead of inside the manager's reconnect loop.
        let probe = async {
            let mut con = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut con).await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT * 2, probe).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(scrub(e)),
            Err(_) => {
                return Err(BusError::Transport(format!(
                    "bus.url = {url}: no answer within {:?}",
                    CONNECT_TIMEOUT * 2
                )))
            }
        }
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let base = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_secs(1))
            .set_response_timeout(Some(Duration::from_secs(5)));
        let cmd = client
            .get_connection_manager_with_config(
                base.clone()
                    .set_push_sender(push_tx)
                    .set_automatic_resubscription(),
            )
            .await
            .map_err(scrub)?;
        let reader = client
            .get_connection_manager_with_config(base)
            .await
            .map_err(scrub)?;
        let (inbox_tx, inbox_rx) = mpsc::unbounded_channel();
        let (health, _) = watch::channel(Health::Up);
        let shared = Arc::new(Shared {
            member: member.clone(),
            url: url.clone(),
            prefix: settings.channel_prefix.to_string(),
            limits: Limits::of(settings),
            signer: Signer::from_settings(settings),
            cmd,
            reader,
            inbox: inbox_tx,
            health,
            streams: Mutex::default(),
            seen: Mutex::default(),
            nudge: tokio::sync::Notify::new(),
            closed: CancellationToken::new(),
            stats: Arc::default(),
        });
        if listen {
            let channels = [
                shared.key(&["all"]),
                shared.key(&["role", member.role.as_str()]),
                shared.key(&["instance", member.instance.as_str()]),
            ];
            let mut con = shared.cmd.clone();
            con.subscribe(&channels).await.map_err(scrub)?;
            if let Ok(mut s) = shared.streams.lock() {
                s.groups.push(shared.key(&["group", member.role.as_str()]));
                for to in [
                    Address::All,
                    Address::Role(member.role.to_string()),
                    Address::Instance(member.instance.to_string()),
                ] {
                    s.fan.insert(shared.fan_of(&to).0, "0".into());
                }
            }
            shared.ensure_groups().await?;
            warn_if_taken(&shared).await;
            readers::spawn(&shared, push_rx);
            info!(url = %url, instance = %member.instance, role = %member.role, "bus connected (redis)");
        }
        Ok(Self {
            shared,
            inbox: Mutex::new(Some(inbox_rx)),
            listening: listen,
        })
    }

    /// The transport's counters.
    pub fn stats(&self) -> Arc<RedisStats> {
        self.shared.stats.clone()
    }
}

/// Two live instances with one id would share its streams' groups, each getting part of its
/// events: say so (a restart of the same instance within three pulses looks the same, hence a
/// warning, not a refusal).
async fn warn_if_taken(shared: &Shared) {
    let id = shared.member.instance.as_str();
    let mut cmd = redis::cmd("EXISTS");
    cmd.arg(shared.key(&["presence", id]));
    if let Ok(1) = shared.raw::<i64>(&cmd).await {
        warn!(instance = id, "another instance with this bus.instance_id pulsed recently: if it is still running, the two share (and split) this id's events; give each instance its own id");
    }
}

#[async_trait]
impl Bus for RedisBus {
    fn member(&self) -> &Member {
        &self.shared.member
    }

    async fn send(&self, envelope: &Envelope) -> Result<(), BusError> {
        let s = &self.shared;
        let json = serde_json::to_string(envelope).map_err(|e| BusError::Codec {
            kind: envelope.kind.clone(),
            detail: e.to_string(),
        })?;
        let size = json.len() as u64;
        if size > s.limits.max_envelope {
            return Err(BusError::TooLarge {
                kind: envelope.kind.clone(),
                size,
                limit: s.limits.max_envelope,
            });
        }
        let me = &s.member;
        let local_copy = match &envelope.to {
            Address::Instance(id) => id != me.instance.as_str(),
            Address::All => false,
            Address::Role(r) => r != me.role.as_str(),
            Address::OneOf(_) => true,
        };
        let sig = s.signer.as_ref().map(|k| k.sign(json.as_bytes()));
        let mut fields = vec![("envelope", json.as_str())];
        if let Some(sig) = &sig {
            fields.push(("sig", sig.as_str()));
        }
        let (stream, channel) = s.fan_of(&envelope.to);
        match &envelope.to {
            _ if envelope.at_most_once => {
                let payload = match &s.signer {
                    Some(k) => k.seal(&json),
                    None => json.clone(),
                };
                let mut cmd = redis::cmd("PUBLISH");
                cmd.arg(&channel).arg(payload);
                s.query::<i64>("PUBLISH", &cmd).await?;
            }
            Address::OneOf(role) => {
                let stream = s.key(&["group", role]);
                s.append(
                    &envelope.kind,
                    &stream,
                    "backlog",
                    Duration::ZERO,
                    &channel,
                    &fields,
                )
                .await?;
            }
            Address::Instance(_) => {
                // An instance's own stream goes when it is gone for longer than the retention.
                let expiry = s.limits.retention;
                s.append(&envelope.kind, &stream, "fan", expiry, &channel, &fields)
                    .await?;
            }
            Address::All | Address::Role(_) => {
                s.append(
                    &envelope.kind,
                    &stream,
                    "fan",
                    Duration::ZERO,
                    &channel,
                    &fields,
                )
                .await?;
            }
        }
        // A carbon copy the sender would not get through its own streams.
        if envelope.cc && local_copy {
            let _ = s.inbox.send(Inbound::Event {
                envelope: envelope.clone(),
                receipt: None,
            });
        }
        Ok(())
    }

    async fn announce(&self, notice: &WorkNotice) -> Result<(), BusError> {
        let s = &self.shared;
        let stream = s.key(&["work", &notice.queue]);
        let hops = notice.hops.to_string();
        let messages = notice.messages.map(|n| n.to_string());
        let mut fields = vec![("queue", notice.queue.as_str()), ("hops", hops.as_str())];
        if let Some(from) = &notice.from {
            fields.push(("from", from.as_str()));
        }
        if let Some(n) = &messages {
            fields.push(("messages", n.as_str()));
        }
        s.append(
            "work notice",
            &stream,
            "cap",
            Duration::ZERO,
            &stream,
            &fields,
        )
        .await
        .map(|_| ())
    }

    async fn listen_work(&self, queue: &str, reach: Reach) -> Result<(), BusError> {
        let s = &self.shared;
        let stream = s.key(&["work", queue]);
        let mut con = s.cmd.clone();
        con.subscribe(&stream)
            .await
            .map_err(|e| s.error("SUBSCRIBE", &e))?;
        match reach {
            Reach::One => {
                s.ensure_group(&stream, GROUP, "0").await?;
                if let Ok(mut st) = s.streams.lock() {
                    if !st.groups.contains(&stream) {
                        st.groups.push(stream);
                    }
                }
            }
            Reach::All => {
                // From the newest entry on: older notices were for work found since.
                let mut cmd = redis::cmd("XREVRANGE");
                cmd.arg(&stream).arg("+").arg("-").arg("COUNT").arg(1);
                let last: redis::streams::StreamRangeReply = s.query("XREVRANGE", &cmd).await?;
                let from = last
                    .ids
                    .first()
                    .map(|e| e.id.clone())
                    .unwrap_or_else(|| "0-0".into());
                if let Ok(mut st) = s.streams.lock() {
                    st.watched.entry(stream).or_insert(from);
                }
            }
        }
        s.nudge.notify_one();
        Ok(())
    }

    async fn ack(&self, receipt: &Receipt) -> Result<(), BusError> {
        let s = &self.shared;
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(&receipt.stream)
            .arg(GROUP)
            .arg(&receipt.entry)
            .ignore();
        // A handled competing event is deleted: the stream holds only what waits or is being
        // handled, which `bus.max_backlog` bounds. (Work streams are read by watchers too.)
        if receipt.stream.starts_with(&s.key(&["group", ""])) {
            pipe.cmd("XDEL")
                .arg(&receipt.stream)
                .arg(&receipt.entry)
                .ignore()
                .cmd("DEL")
                .arg(s.key(&["error", &receipt.entry]))
                .ignore();
        }
        let mut con = s.cmd.clone();
        let r = pipe.query_async::<()>(&mut con).await;
        s.seen_result(&r);
        r.map_err(|e| s.error("XACK", &e))
    }

    async fn fail(&self, receipt: &Receipt, error: &str) -> Result<bool, BusError> {
        poison::fail(&self.shared, receipt, error).await
    }

    async fn poison_list(&self, limit: usize) -> Result<Vec<PoisonEntry>, BusError> {
        poison::list(&self.shared, limit).await
    }

    async fn poison_show(&self, id: &str) -> Result<PoisonEntry, BusError> {
        poison::show(&self.shared, id).await
    }

    async fn poison_requeue(&self, id: &str) -> Result<(), BusError> {
        poison::requeue(&self.shared, id).await
    }

    async fn renew(&self, receipt: &Receipt) -> Result<bool, BusError> {
        // Atomically: still pending for this consumer? Then its idle time starts again.
        const RENEW: &str =
            "if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1, ARGV[3]) == 0 \
             then return 0 end \
             redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID') return 1";
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(RENEW)
            .arg(1)
            .arg(&receipt.stream)
            .arg(GROUP)
            .arg(&receipt.entry)
            .arg(self.shared.member.instance.as_str());
        self.shared
            .query::<i64>("renew claim", &cmd)
            .await
            .map(|mine| mine == 1)
    }

    fn claim_timeout(&self) -> Option<Duration> {
        Some(self.shared.limits.claim_timeout)
    }

    fn take_inbox(&self) -> Option<mpsc::UnboundedReceiver<Inbound>> {
        let inbox = self.inbox.lock().ok().and_then(|mut i| i.take());
        if inbox.is_some() && self.listening {
            readers::spawn_reads(&self.shared);
        }
        inbox
    }

    fn health(&self) -> watch::Receiver<Health> {
        self.shared.health.subscribe()
    }

    async fn sent(&self, queue: &str, messages: u64) -> Result<SentState, BusError> {
        presence::sent(&self.shared, queue, messages).await
    }

    async fn drained(&self, queue: &str) -> Result<(), BusError> {
        presence::drained(&self.shared, queue).await
    }

    async fn pulse(&self, presence: &Presence, ttl: Duration) -> Result<(), BusError> {
        presence::pulse(&self.shared, presence, ttl).await
    }

    async fn instances(&self) -> Result<Vec<Presence>, BusError> {
        presence::instances(&self.shared).await
    }

    fn counters(&self) -> super::TransportCounters {
        let st = &self.shared.stats;
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        super::TransportCounters {
            outages: read(&st.outages),
            reconnects: read(&st.reconnects),
            reclaimed: read(&st.reclaimed),
            refused: read(&st.refused),
            poisoned: read(&st.poisoned),
            expired: read(&st.expired),
            duplicates: read(&st.duplicates),
        }
    }

    async fn close(&self) {
        let s = &self.shared;
        if s.closed.is_cancelled() {
            return;
        }
        // Stop reading first: nothing more is taken for an instance that is leaving.
        s.closed.cancel();
        let id = s.member.instance.to_string();
        let mut pipe = redis::pipe();
        pipe.cmd("DEL")
            .arg(s.key(&["presence", &id]))
            .ignore()
            .cmd("ZREM")
            .arg(s.key(&["instances"]))
            .arg(&id)
            .ignore();
        let mut con = s.cmd.clone();
        let _ =
            tokio::time::timeout(Duration::from_secs(2), pipe.query_async::<()>(&mut con)).await;
        if self.listening {
            let _ = tokio::time::timeout(Duration::from_secs(2), readers::release(s)).await;
        }
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        self.shared.closed.cancel();
    }
}

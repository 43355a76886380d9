//! The Redis transport: one RESP3 connection manager for commands and pub/sub (push messages,
//! automatic resubscription after a reconnect), and one for blocking stream reads.
//!
//! Keys and channels, under `bus.channel_prefix` (`P`):
//! - channels `P:all`, `P:role:<role>`, `P:instance:<id>`: fan-out events (JSON envelopes);
//! - stream `P:group:<role>`, consumer group `ebbflow`: competing-consumer events (field
//!   `envelope`), re-delivered with `XAUTOCLAIM` when not acknowledged within the claim timeout;
//! - stream `P:work:<queue>`: work notices (fields `queue`, optional `from`, `messages`,
//!   `hops`), read through the group `ebbflow` (`reach = "one"`) or by every listener
//!   (`reach = "all"`, `XREAD`);
//! - `P:busy:<queue>`, `P:sent:<queue>`: the publish modes' state;
//! - `P:presence:<id>` (JSON, expiring) and the sorted set `P:instances`: presence.

mod readers;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::settings::{BusSettings, RedisUrl};
use super::{
    Address, Bus, BusError, Envelope, Health, Inbound, Member, Presence, Reach, Receipt, SentState,
    WorkNotice,
};

/// The consumer group every competing stream uses.
const GROUP: &str = "ebbflow";
/// Entries a stream keeps (approximately).
const MAX_LEN: usize = 10_000;
/// How long a stream read blocks on the server before it is sent again.
const BLOCK: Duration = Duration::from_millis(2_000);
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Counters of the Redis transport, for metrics and tests.
#[derive(Debug, Default)]
pub struct RedisStats {
    /// Times the bus went down (connection lost, commands failing).
    pub outages: std::sync::atomic::AtomicU64,
    /// Times it came back.
    pub reconnects: std::sync::atomic::AtomicU64,
    /// Competing-consumer entries taken over from another consumer (or retried).
    pub reclaimed: std::sync::atomic::AtomicU64,
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

pub(super) struct Shared {
    member: Member,
    url: RedisUrl,
    prefix: String,
    claim_timeout: Duration,
    cmd: ConnectionManager,
    reader: ConnectionManager,
    fan_reader: ConnectionManager,
    inbox: mpsc::UnboundedSender<Inbound>,
    health: watch::Sender<Health>,
    /// Streams read as a consumer of the group.
    groups: Mutex<Vec<String>>,
    /// Streams read by every listener, with the last entry id seen.
    watched: Mutex<BTreeMap<String, String>>,
    /// Fires when the set of streams changes: readers send their next read at once.
    changed: tokio::sync::Notify,
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

    /// Turns a client error into ours, without the password.
    fn error(&self, what: &str, e: redis::RedisError) -> BusError {
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
        let stats = &self.stats;
        if up {
            stats
                .reconnects
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            info!(url = %self.url, "bus connection restored; subscriptions are back");
        } else {
            stats
                .outages
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            warn!(url = %self.url, error = %self.url.scrub(why), "bus connection lost; reconnecting (listeners fall back to probing)");
        }
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        what: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, BusError> {
        let mut con = self.cmd.clone();
        match cmd.query_async::<T>(&mut con).await {
            Ok(v) => {
                self.mark(true, "");
                Ok(v)
            }
            Err(e) => {
                if is_connection_error(&e) {
                    self.mark(false, &e.to_string());
                }
                Err(self.error(what, e))
            }
        }
    }

    /// Creates the consumer group on `stream` (and the stream) unless it exists. A new group
    /// starts at the stream's beginning: entries sent before any consumer existed are not lost.
    async fn ensure_group(&self, stream: &str) -> Result<(), BusError> {
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM");
        match self.query::<()>("XGROUP CREATE", &cmd).await {
            Ok(()) => Ok(()),
            Err(BusError::Transport(t)) if t.contains("BUSYGROUP") => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

impl RedisBus {
    /// Connects as `member` to `settings.url`, subscribes to its channels and joins its role's
    /// competing group. Fails (without the password in the error) when Redis cannot be reached
    /// or refuses the credentials: a worker does not start on a bus it cannot use.
    pub async fn connect(settings: &BusSettings, member: Member) -> Result<Self, BusError> {
        Self::open(settings, member, true).await
    }

    /// Connects as a client only (the CLI, a producer): it can send, announce, acknowledge and
    /// read presence, but subscribes to nothing and receives nothing.
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
            .set_max_delay(Duration::from_secs(1));
        let cmd = client
            .get_connection_manager_with_config(
                base.clone()
                    .set_response_timeout(Some(Duration::from_secs(5)))
                    .set_push_sender(push_tx)
                    .set_automatic_resubscription(),
            )
            .await
            .map_err(scrub)?;
        let readers = base.set_response_timeout(Some(BLOCK + Duration::from_secs(5)));
        let reader = client
            .get_connection_manager_with_config(readers.clone())
            .await
            .map_err(scrub)?;
        let fan_reader = client
            .get_connection_manager_with_config(readers)
            .await
            .map_err(scrub)?;
        let (inbox_tx, inbox_rx) = mpsc::unbounded_channel();
        let (health, _) = watch::channel(Health::Up);
        let prefix = settings.channel_prefix.to_string();
        let shared = Arc::new(Shared {
            member: member.clone(),
            url: url.clone(),
            prefix,
            claim_timeout: settings.claim_timeout.get(),
            cmd,
            reader,
            fan_reader,
            inbox: inbox_tx,
            health,
            groups: Mutex::default(),
            watched: Mutex::default(),
            changed: tokio::sync::Notify::new(),
            closed: CancellationToken::new(),
            stats: Arc::default(),
        });
        let channels = [
            shared.key(&["all"]),
            shared.key(&["role", member.role.as_str()]),
            shared.key(&["instance", member.instance.as_str()]),
        ];
        if listen {
            let mut con = shared.cmd.clone();
            con.subscribe(&channels).await.map_err(scrub)?;
            let role_stream = shared.key(&["group", member.role.as_str()]);
            shared.ensure_group(&role_stream).await?;
            if let Ok(mut g) = shared.groups.lock() {
                g.push(role_stream);
            }
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
        let me = &s.member;
        let (channel, local_copy) = match &envelope.to {
            Address::Instance(id) => (Some(s.key(&["instance", id])), id != me.instance.as_str()),
            Address::All => (Some(s.key(&["all"])), false),
            Address::Role(r) => (Some(s.key(&["role", r])), r != me.role.as_str()),
            Address::OneOf(_) => (None, true),
        };
        match (&envelope.to, channel) {
            (_, Some(channel)) => {
                let mut cmd = redis::cmd("PUBLISH");
                cmd.arg(&channel).arg(&json);
                s.query::<i64>("PUBLISH", &cmd).await?;
            }
            (Address::OneOf(role), None) => {
                let mut cmd = redis::cmd("XADD");
                cmd.arg(s.key(&["group", role]))
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(MAX_LEN)
                    .arg("*")
                    .arg("envelope")
                    .arg(&json);
                s.query::<String>("XADD", &cmd).await?;
            }
            _ => {}
        }
        // A carbon copy the sender would not get through its own subscriptions.
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
        let mut cmd = redis::cmd("XADD");
        cmd.arg(s.key(&["work", &notice.queue]))
            .arg("MAXLEN")
            .arg("~")
            .arg(MAX_LEN)
            .arg("*")
            .arg("queue")
            .arg(&notice.queue)
            .arg("hops")
            .arg(notice.hops);
        if let Some(from) = &notice.from {
            cmd.arg("from").arg(from);
        }
        if let Some(n) = notice.messages {
            cmd.arg("messages").arg(n);
        }
        s.query::<String>("XADD", &cmd).await.map(|_| ())
    }

    async fn listen_work(&self, queue: &str, reach: Reach) -> Result<(), BusError> {
        let s = &self.shared;
        let stream = s.key(&["work", queue]);
        match reach {
            Reach::One => {
                s.ensure_group(&stream).await?;
                if let Ok(mut g) = s.groups.lock() {
                    if !g.contains(&stream) {
                        g.push(stream);
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
                if let Ok(mut w) = s.watched.lock() {
                    w.entry(stream).or_insert(from);
                }
            }
        }
        s.changed.notify_waiters();
        Ok(())
    }

    async fn ack(&self, receipt: &Receipt) -> Result<(), BusError> {
        let mut cmd = redis::cmd("XACK");
        cmd.arg(&receipt.stream).arg(GROUP).arg(&receipt.entry);
        self.shared.query::<i64>("XACK", &cmd).await.map(|_| ())
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
        Some(self.shared.claim_timeout)
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
        let s = &self.shared;
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(s.key(&["busy", queue]))
            .arg(1)
            .arg("GET")
            .arg("EX")
            .arg(86_400)
            .cmd("INCRBY")
            .arg(s.key(&["sent", queue]))
            .arg(messages)
            .cmd("EXPIRE")
            .arg(s.key(&["sent", queue]))
            .arg(86_400)
            .ignore();
        let mut con = s.cmd.clone();
        let (busy, since): (Option<String>, u64) = match pipe.query_async(&mut con).await {
            Ok(v) => {
                s.mark(true, "");
                v
            }
            Err(e) => {
                if is_connection_error(&e) {
                    s.mark(false, &e.to_string());
                }
                return Err(s.error("SET/INCR", e));
            }
        };
        Ok(SentState {
            was_empty: busy.is_none(),
            since_empty: since,
        })
    }

    async fn drained(&self, queue: &str) -> Result<(), BusError> {
        let s = &self.shared;
        let mut cmd = redis::cmd("DEL");
        cmd.arg(s.key(&["busy", queue]))
            .arg(s.key(&["sent", queue]));
        s.query::<i64>("DEL", &cmd).await.map(|_| ())
    }

    async fn pulse(&self, presence: &Presence, ttl: Duration) -> Result<(), BusError> {
        let s = &self.shared;
        let json = serde_json::to_string(presence).map_err(|e| BusError::Codec {
            kind: "presence".into(),
            detail: e.to_string(),
        })?;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(s.key(&["presence", &presence.instance]))
            .arg(json)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .cmd("ZADD")
            .arg(s.key(&["instances"]))
            .arg(presence.pulse_at_ms.saturating_add(ttl_ms))
            .arg(&presence.instance)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(s.key(&["instances"]))
            .arg("-inf")
            .arg(super::now_ms())
            .ignore();
        let mut con = s.cmd.clone();
        match pipe.query_async::<()>(&mut con).await {
            Ok(()) => {
                s.mark(true, "");
                Ok(())
            }
            Err(e) => {
                if is_connection_error(&e) {
                    s.mark(false, &e.to_string());
                }
                Err(s.error("presence pulse", e))
            }
        }
    }

    async fn instances(&self) -> Result<Vec<Presence>, BusError> {
        let s = &self.shared;
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(s.key(&["instances"]))
            .arg(super::now_ms())
            .arg("+inf")
            .arg("BYSCORE");
        let ids: Vec<String> = s.query("ZRANGE", &cmd).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for id in &ids {
            cmd.arg(s.key(&["presence", id]));
        }
        let found: Vec<Option<String>> = s.query("MGET", &cmd).await?;
        let mut list: Vec<Presence> = found
            .into_iter()
            .flatten()
            .filter_map(|j| serde_json::from_str(&j).ok())
            .collect();
        list.sort_by(|a, b| a.instance.cmp(&b.instance));
        Ok(list)
    }

    fn counters(&self) -> super::TransportCounters {
        let st = &self.shared.stats;
        let read = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        super::TransportCounters {
            outages: read(&st.outages),
            reconnects: read(&st.reconnects),
            reclaimed: read(&st.reclaimed),
        }
    }

    async fn close(&self) {
        let s = &self.shared;
        if s.closed.is_cancelled() {
            return;
        }
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
        s.closed.cancel();
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        self.shared.closed.cancel();
    }
}

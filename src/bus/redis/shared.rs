//! The state one Redis connection shares between its tasks: the bounds of what is kept and
//! read, the streams read, the event ids seen, and the calls every part makes (keys, health
//! marks, appends with retry, consumer groups).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::BackoffBuilder;
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{bump, scripts, RedisStats, GROUP, READ_BUDGET, SEEN, WORK_CAP};
use crate::bus::settings::{BusSettings, RedisUrl};
use crate::bus::signing::Signer;
use crate::bus::{Address, BusError, Envelope, Health, Inbound, Member};

/// The bounds of what is kept and read.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) claim_timeout: Duration,
    pub(super) retention: Duration,
    pub(super) job_retention: Duration,
    pub(super) max_envelope: u64,
    pub(super) max_deliveries: u64,
    pub(super) max_backlog: u64,
}

impl Limits {
    pub(super) fn of(settings: &BusSettings) -> Self {
        Self {
            claim_timeout: settings.claim_timeout.get(),
            retention: settings.retention.get(),
            job_retention: settings.job_retention.get(),
            max_envelope: settings.max_envelope_size.get(),
            max_deliveries: settings.max_deliveries.get(),
            max_backlog: settings.max_backlog.get(),
        }
    }

    /// Entries per stream and read.
    pub(super) fn read_count(&self) -> u64 {
        (READ_BUDGET / self.max_envelope).clamp(1, 64)
    }
}

/// What the streams reader reads.
#[derive(Debug, Default)]
pub(super) struct Streams {
    /// Competing streams read as a consumer of the group `ebbflow`.
    pub(super) groups: Vec<String>,
    /// Fan-out streams read through this instance's own group, with where the next read
    /// starts (`0` until this instance's pending entries from before a restart are read).
    pub(super) fan: BTreeMap<String, String>,
    /// Streams read by every listener, with the last entry id seen.
    pub(super) watched: BTreeMap<String, String>,
}

/// Fan-out event ids already received (bounded).
#[derive(Debug, Default)]
pub(super) struct Seen {
    pub(super) ids: HashSet<String>,
    pub(super) order: VecDeque<String>,
}

impl Seen {
    /// `false` when `id` was seen before.
    pub(super) fn insert(&mut self, id: &str) -> bool {
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
    pub(super) member: Member,
    pub(super) url: RedisUrl,
    pub(super) prefix: String,
    pub(super) limits: Limits,
    pub(super) signer: Option<Signer>,
    pub(super) cmd: ConnectionManager,
    pub(super) reader: ConnectionManager,
    pub(super) inbox: mpsc::UnboundedSender<Inbound>,
    pub(super) health: watch::Sender<Health>,
    /// Changes of `health` so far (see [`super::health`]).
    pub(super) changes: AtomicU64,
    pub(super) streams: Mutex<Streams>,
    pub(super) seen: Mutex<Seen>,
    /// The sender's own carbon copies of fan-out events to addresses it does not read, with
    /// their `seq`: the stream reader releases each among the entries it reads, in `seq` order,
    /// once it has read everything appended before it.
    pub(super) copies: Mutex<Vec<(u64, Envelope)>>,
    /// A nudge arrived (or the streams changed): read now.
    pub(super) nudge: tokio::sync::Notify,
    pub(super) closed: CancellationToken,
    pub(super) stats: Arc<RedisStats>,
    /// Pub/sub messages dropped unread, logged throttled.
    pub(super) drops: super::droplog::DropLog,
}

impl Shared {
    pub(super) fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }

    /// The fan-out stream and nudge channel of a fan-out address.
    pub(super) fn fan_of(&self, to: &Address) -> (String, String) {
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
    pub(super) fn error(&self, what: &str, e: &redis::RedisError) -> BusError {
        BusError::Transport(self.url.scrub(&format!("{what}: {e}")))
    }

    /// The count of health changes so far: taken when a call begins, given back with its
    /// result ([`Self::seen_result`]).
    pub(super) fn epoch(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Records an event of the connection itself (a disconnection, the subscriptions confirmed
    /// after a reconnect); logs and counts each change.
    pub(super) fn mark(&self, up: bool, why: &str) {
        self.mark_since(None, up, why);
    }

    /// Records whether a call that began at `since` ([`Self::epoch`]) reached Redis, unless the
    /// health changed meanwhile (see [`super::health`]); logs and counts each change.
    pub(super) fn mark_since(&self, since: Option<u64>, up: bool, why: &str) {
        let now = if up { Health::Up } else { Health::Down };
        if !super::health::apply(&self.health, &self.changes, since, now) {
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
    pub(super) async fn raw<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        let mut con = self.cmd.clone();
        self.marked(cmd.query_async::<T>(&mut con)).await
    }

    /// Runs `call`, then marks the bus up or down by its result (a connection error: down).
    pub(super) async fn marked<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> redis::RedisResult<T> {
        let since = self.epoch();
        let r = call.await;
        self.seen_result(since, &r);
        r
    }

    /// Marks the bus by the result of a call that began at `since`.
    pub(super) fn seen_result<T>(&self, since: u64, r: &redis::RedisResult<T>) {
        match r {
            Ok(_) => self.mark_since(Some(since), true, ""),
            Err(e) if is_connection_error(e) => {
                self.mark_since(Some(since), false, &e.to_string());
            }
            Err(_) => {}
        }
    }

    pub(super) async fn query<T: redis::FromRedisValue>(
        &self,
        what: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, BusError> {
        self.raw(cmd).await.map_err(|e| self.error(what, &e))
    }

    /// Runs a script call on the command connection.
    pub(super) async fn script<T: redis::FromRedisValue>(
        &self,
        call: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        self.raw(call).await
    }

    /// Appends `fields` to `stream` (see [`scripts::APPEND`]), retrying connection errors with
    /// back-off (a few attempts within about 2 s). Returns the entry id and its fan-out `seq`
    /// (0 unless `mode` is `fan`).
    pub(super) async fn append(
        &self,
        kind: &str,
        stream: &str,
        mode: &str,
        expiry: Duration,
        nudge: &str,
        fields: &[(&str, &str)],
    ) -> Result<(String, u64), BusError> {
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
            match self.script::<(String, u64)>(&inv).await {
                Ok(appended) => return Ok(appended),
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
    pub(super) async fn ensure_group(
        &self,
        stream: &str,
        group: &str,
        from: &str,
    ) -> Result<(), BusError> {
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

    /// Makes every group this instance reads: at connect (`lost` false), or again after Redis
    /// lost them (`lost`: a restart without persistence, an expired stream).
    ///
    /// At connect, an instance seen for the first time starts the shared fan-out streams at
    /// their end (`$`): it gets no history. After a loss every group starts at `0`: the stream
    /// holds only entries appended since the loss, all sent while this instance was a member,
    /// and a publisher that reconnected first may have appended some before this reader
    /// noticed (a group made at `$` then would miss them). Entries it had already received
    /// are caught by the de-duplication by event id.
    pub(super) async fn ensure_groups(&self, lost: bool) -> Result<(), BusError> {
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
            let from = if *f == own || lost { "0" } else { "$" };
            self.ensure_group(f, &me, from).await?;
        }
        Ok(())
    }
}

pub(super) fn poisoned() -> BusError {
    BusError::Transport("bus state lock poisoned".into())
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(super) fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

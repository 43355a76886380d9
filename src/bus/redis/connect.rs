//! Connecting: the first plain connection that checks the URL and credentials, the two
//! connection managers, the subscriptions and consumer groups of an instance that listens.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManagerConfig;
use redis::AsyncConnectionConfig;
use redis::{IntoConnectionInfo, ProtocolVersion};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::shared::{Limits, Shared};
use super::{readers, RedisBus, RedisStats, CONNECT_TIMEOUT, RESPONSE_TIMEOUT};
use crate::bus::settings::BusSettings;
use crate::bus::signing::Signer;
use crate::bus::{Address, BusError, Health, Member};

impl RedisBus {
    /// Connects as `member` to `settings.url`, subscribes to its channels and joins its
    /// streams' groups. Fails (without the password in the error) when Redis cannot be reached
    /// or refuses the credentials: a worker does not start on a bus it cannot use.
    ///
    /// # Errors
    ///
    /// [`BusError`] when Redis cannot be reached or refuses the credentials (the error names
    /// `bus.url`, never the password), or its streams' groups cannot be joined.
    pub async fn connect(settings: &BusSettings, member: Member) -> Result<Self, BusError> {
        Self::open(settings, member, true).await
    }

    /// Connects as a client only (the CLI, a producer): it can send, announce, acknowledge and
    /// read presence and the poison stream, but subscribes to nothing and receives nothing.
    ///
    /// # Errors
    ///
    /// [`BusError`] when Redis cannot be reached or refuses the credentials (the error names
    /// `bus.url`, never the password).
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
        // clearly, instead of inside the manager's reconnect loop. With the managers' timeouts:
        // the client's defaults (1 s to connect and say hello, 500 ms an answer) refused a
        // Redis that a loaded machine made answer in a second.
        let probe = async {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT));
            let mut con = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
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
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
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
            changes: Default::default(),
            streams: Mutex::default(),
            seen: Mutex::default(),
            copies: Mutex::default(),
            nudge: tokio::sync::Notify::new(),
            closed: CancellationToken::new(),
            stats: Arc::default(),
            drops: Default::default(),
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
            shared.ensure_groups(false).await?;
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

//! The numbers behind the manifests, derived from the settings by pure functions: each queue's
//! `queueLength`, the replica bounds, the termination grace and the scale-down pace, and how KEDA
//! and the worker authenticate. Both generators (KEDA, Container Apps) render the same [`Plan`].

use std::time::Duration;

use super::settings::DeployAuth;
use super::DeployError;
use crate::config::{ConfigError, CredentialKind, QueueSettings, Settings};
use crate::worker::RELEASE_GRACE;

/// Time the process needs after the drain and release grace to flush logs and exit.
pub const EXIT_MARGIN: Duration = Duration::from_secs(5);

/// The HPA's own default scale-down stabilization window; ours is never shorter.
const HPA_DEFAULT_STABILIZATION_SECS: u64 = 300;
/// The HPA refuses longer stabilization windows (kedacore/keda#4976).
const HPA_MAX_STABILIZATION_SECS: u64 = 3600;
/// The HPA refuses longer policy periods.
const HPA_MAX_PERIOD_SECS: u64 = 1800;
/// Share of the replicas the HPA may remove per period while scaling in.
pub const SCALE_DOWN_PERCENT: u64 = 50;

/// Everything the generators render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Fewest replicas (0 only when every queue can wake from zero tasks).
    pub min_replicas: u32,
    /// Most replicas.
    pub max_replicas: u32,
    /// KEDA's polling interval, seconds.
    pub polling_secs: u64,
    /// KEDA's cooldown before scaling to zero, seconds.
    pub cooldown_secs: u64,
    /// `terminationGracePeriodSeconds`: drain timeout + release grace + exit margin, rounded up.
    pub grace_secs: u64,
    /// HPA scale-down stabilization window, seconds (at least the grace, 300..=3600).
    pub scale_down_window_secs: u64,
    /// HPA scale-down policy period, seconds: at most [`SCALE_DOWN_PERCENT`] of the replicas go
    /// per period, and a period is as long as one replica's drain (capped at 1800).
    pub scale_down_period_secs: u64,
    /// How KEDA and the worker reach the storage account.
    pub auth: AuthPlan,
    /// The Azure cloud of the storage account.
    pub cloud: Cloud,
    /// One trigger per physical queue, in config order.
    pub triggers: Vec<QueueTrigger>,
}

/// How KEDA and the worker authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthPlan {
    /// A connection string from a secret.
    Secret,
    /// Entra ID.
    Identity {
        /// The storage account's name (KEDA's and Container Apps' `accountName`).
        account: String,
        /// The queue service URL the worker uses (no query).
        endpoint: String,
        /// The identity's client id, when known.
        client_id: Option<String>,
    },
}

/// The Azure cloud, as KEDA's `cloud` metadata names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cloud {
    /// `AzurePublicCloud` (`queue.core.windows.net`).
    Public,
    /// `AzureUSGovernmentCloud`.
    UsGovernment,
    /// `AzureChinaCloud`.
    China,
    /// `AzureGermanCloud`.
    Germany,
    /// `Private` with this `endpointSuffix` (Azure Stack Hub, air-gapped clouds).
    Private(String),
}

impl Cloud {
    /// KEDA's name for it.
    pub fn keda_name(&self) -> &'static str {
        match self {
            Cloud::Public => "AzurePublicCloud",
            Cloud::UsGovernment => "AzureUSGovernmentCloud",
            Cloud::China => "AzureChinaCloud",
            Cloud::Germany => "AzureGermanCloud",
            Cloud::Private(_) => "Private",
        }
    }

    /// From a queue endpoint suffix such as `queue.core.windows.net` (or a connection string's
    /// `EndpointSuffix`, `core.windows.net`).
    fn from_suffix(suffix: &str) -> Cloud {
        let suffix = suffix.trim_end_matches('.').to_ascii_lowercase();
        let core = suffix.strip_prefix("queue.").unwrap_or(&suffix);
        match core {
            "core.windows.net" => Cloud::Public,
            "core.usgovcloudapi.net" => Cloud::UsGovernment,
            "core.chinacloudapi.cn" => Cloud::China,
            "core.cloudapi.de" => Cloud::Germany,
            _ => Cloud::Private(format!("queue.{core}")),
        }
    }
}

/// One `azure-queue` trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueTrigger {
    /// The queue as the service names it.
    pub queue: String,
    /// Its `[queues.<name>]` section.
    pub config_queue: String,
    /// Messages one replica holds in flight at most: the queue's `concurrency`.
    pub in_flight: u64,
    /// Visible backlog at which one replica's own task scaling is at its top.
    pub backlog: u64,
    /// KEDA's `queueLength`: `in_flight + backlog`, at least 1.
    pub queue_length: u64,
}

/// The visible backlog at which one replica runs all the tasks it usefully can for this queue:
/// `max_tasks` (at most `concurrency`: a task needs a slot) times `messages_per_task`, or with
/// `depth_rules`, the first depth whose rule reaches that many tasks (the last rule's depth when
/// none does). Past it, only another replica adds capacity.
pub fn saturation_backlog(q: &QueueSettings) -> u64 {
    let s = &q.scaling;
    let top = s.max_tasks.min(q.concurrency).max(1);
    if s.depth_rules.is_empty() {
        u64::from(top).saturating_mul(u64::from(s.messages_per_task.max(1)))
    } else {
        s.depth_rules
            .iter()
            .find(|r| r.tasks >= top)
            .or(s.depth_rules.last())
            .map_or(0, |r| r.from)
    }
}

/// The triggers for one queue, one per physical queue: `queueLength = concurrency + saturation
/// backlog`. KEDA's default `queueLengthStrategy: all` counts in-flight (invisible) messages as
/// queue length (kedacore/keda#4432), and a busy replica holds up to `concurrency` of them, so
/// they are part of its share: N replicas, each full and each with its saturation backlog
/// waiting, read as exactly N replicas' worth.
///
/// A sharded queue (`shards = N`) gets one trigger per shard, each with a 1/N share (rounded
/// up): publishers spread sends evenly and one listener consumes every shard, so each shard
/// holds about 1/N of the depth, and the engine, which scales on the busiest trigger, sees
/// the whole queue's need.
pub fn queue_triggers(name: &str, q: &QueueSettings) -> Vec<QueueTrigger> {
    let shards = q.shards.get().max(1) as u64;
    let in_flight = u64::from(q.concurrency).div_ceil(shards);
    let backlog = saturation_backlog(q).div_ceil(shards);
    q.shard_names(name)
        .into_iter()
        .map(|queue| QueueTrigger {
            queue,
            config_queue: name.to_string(),
            in_flight,
            backlog,
            queue_length: in_flight.saturating_add(backlog).max(1),
        })
        .collect()
}

fn secs_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Derives the plan, or names the setting that makes one impossible.
pub fn plan(settings: &Settings) -> Result<Plan, DeployError> {
    let d = &settings.deploy;
    if settings.queues.is_empty() {
        return Err(DeployError::NoQueues);
    }
    let polling = settings
        .queues
        .iter()
        .find(|(_, q)| q.scaling.min_tasks > 0);
    let min_replicas = match (d.min_replicas, polling) {
        (Some(0), Some((name, _))) => {
            return Err(ConfigError::invalid(
                "deploy.min_replicas",
                0,
                format!(
                    "queue {name} keeps a task polling (queues.{name}.scaling.min_tasks = 1); zero \
                     replicas would leave it unwatched until KEDA's next poll. Set min_tasks = 0 on \
                     every queue, or min_replicas = 1"
                ),
            )
            .into())
        }
        (Some(n), _) => n,
        (None, Some(_)) => 1,
        (None, None) => 0,
    };
    let grace_secs = secs_up(settings.worker.drain_timeout + RELEASE_GRACE + EXIT_MARGIN);
    let (auth, cloud) = auth_plan(settings)?;
    let triggers = settings
        .queues
        .iter()
        .flat_map(|(name, q)| queue_triggers(name, q))
        .collect();
    Ok(Plan {
        min_replicas,
        max_replicas: d.max_replicas.get(),
        polling_secs: d.polling_interval.as_secs(),
        cooldown_secs: d.cooldown_period.as_secs(),
        grace_secs,
        scale_down_window_secs: grace_secs
            .clamp(HPA_DEFAULT_STABILIZATION_SECS, HPA_MAX_STABILIZATION_SECS),
        scale_down_period_secs: grace_secs.clamp(1, HPA_MAX_PERIOD_SECS),
        auth,
        cloud,
        triggers,
    })
}

fn auth_plan(settings: &Settings) -> Result<(AuthPlan, Cloud), DeployError> {
    let s = &settings.storage;
    let entra = matches!(
        s.credential,
        Some(CredentialKind::ManagedIdentity) | Some(CredentialKind::WorkloadIdentity)
    );
    let plain_endpoint = s
        .queue_endpoint
        .as_deref()
        .filter(|e| s.sas_token.is_none() && !e.contains('?'));
    let auth = settings
        .deploy
        .auth
        .unwrap_or(if entra && plain_endpoint.is_some() {
            DeployAuth::Identity
        } else {
            DeployAuth::Secret
        });
    match auth {
        DeployAuth::Secret => {
            if s.queue_endpoint.is_some() {
                return Err(ConfigError::invalid(
                    "deploy.auth",
                    "secret",
                    "storage.queue_endpoint is set, and the worker would also get a connection \
                     string: set deploy.auth = \"identity\", or configure storage.connection_string \
                     instead",
                )
                .into());
            }
            let cloud = s
                .connection_string
                .as_deref()
                .map_or(Cloud::Public, cloud_of_connection_string);
            Ok((AuthPlan::Secret, cloud))
        }
        DeployAuth::Identity => {
            let endpoint = plain_endpoint.ok_or_else(|| {
                ConfigError::invalid(
                    "deploy.auth",
                    "identity",
                    "needs storage.queue_endpoint (https://<account>.queue.core.windows.net) \
                     without a SAS token",
                )
            })?;
            let (account, suffix) = split_endpoint(endpoint).ok_or_else(|| {
                ConfigError::invalid(
                    "storage.queue_endpoint",
                    endpoint,
                    "KEDA's azure-queue scaler needs an https://<account>.queue.<suffix> URL",
                )
            })?;
            let client_id = settings
                .deploy
                .identity_client_id
                .clone()
                .or_else(|| s.managed_identity_client_id.clone());
            Ok((
                AuthPlan::Identity {
                    account,
                    endpoint: endpoint.trim_end_matches('/').to_string(),
                    client_id,
                },
                Cloud::from_suffix(&suffix),
            ))
        }
    }
}

/// `https://acct.queue.core.windows.net/` -> (`acct`, `queue.core.windows.net`).
fn split_endpoint(endpoint: &str) -> Option<(String, String)> {
    let rest = endpoint.strip_prefix("https://")?;
    let host = rest.split(['/', '?']).next()?;
    if host.contains(':') || host.contains('@') {
        return None;
    }
    let (account, suffix) = host.split_once('.')?;
    let valid_account = (3..=24).contains(&account.len())
        && account
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (valid_account && suffix.starts_with("queue.") && suffix.len() > "queue.".len())
        .then(|| (account.to_string(), suffix.to_string()))
}

/// The cloud a connection string points at: its `EndpointSuffix`, else its `QueueEndpoint`'s
/// host; public when it names neither (or is Azurite's).
fn cloud_of_connection_string(cs: &str) -> Cloud {
    let field = |name: &str| {
        cs.split(';').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    };
    if let Some(suffix) = field("EndpointSuffix") {
        return Cloud::from_suffix(suffix);
    }
    field("QueueEndpoint")
        .and_then(split_endpoint)
        .map_or(Cloud::Public, |(_, suffix)| Cloud::from_suffix(&suffix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DepthRule;

    fn queue(concurrency: u32, max_tasks: u32, per_task: u32) -> QueueSettings {
        let mut q = QueueSettings {
            concurrency,
            ..Default::default()
        };
        q.scaling.max_tasks = max_tasks;
        q.scaling.messages_per_task = per_task;
        q
    }

    #[test]
    fn queue_length_is_in_flight_plus_saturation_backlog() {
        // (concurrency, max_tasks, messages_per_task) -> (backlog, queueLength)
        for (c, t, m, backlog, length) in [
            (16, 8, 64, 512, 528), // config/default.toml's orders
            (16, 4, 64, 256, 272), // all defaults
            (2, 8, 64, 128, 130),  // only 2 tasks can hold a slot
            (1, 1, 1, 1, 2),
            (10_000, 256, 1_000_000, 256_000_000, 256_010_000),
        ] {
            let tr = &queue_triggers("q", &queue(c, t, m))[0];
            assert_eq!(
                (tr.backlog, tr.queue_length),
                (backlog, length),
                "{c} {t} {m}"
            );
            assert_eq!(tr.in_flight, u64::from(c));
        }
    }

    #[test]
    fn depth_rules_saturate_at_the_first_rule_with_all_useful_tasks() {
        let mut q = queue(100, 100, 64);
        let rule = |from, tasks| DepthRule { from, tasks };
        // The whitepaper's rules: 10 tasks from 0, 50 from 100, 100 from 1,000.
        q.scaling.depth_rules = vec![rule(0, 10), rule(100, 50), rule(1000, 100)];
        assert_eq!(saturation_backlog(&q), 1000);
        // With concurrency 50, the 50-task rule is already the top.
        q.concurrency = 50;
        assert_eq!(saturation_backlog(&q), 100);
        // No rule reaches the top: the last rule's depth is where tasks stop growing.
        q.concurrency = 200;
        q.scaling.max_tasks = 200;
        assert_eq!(saturation_backlog(&q), 1000);
        // One rule from 0: saturated at once; only the in-flight messages count.
        q.scaling.depth_rules = vec![rule(0, 4)];
        assert_eq!(queue_triggers("q", &q)[0].queue_length, 200);
    }

    #[test]
    fn a_sharded_queue_scales_on_every_shard_with_a_share_each() {
        let mut q = queue(16, 8, 64);
        q.shards = crate::config::Shards::try_from(4u64).unwrap();
        let triggers = queue_triggers("orders", &q);
        let names: Vec<_> = triggers.iter().map(|t| t.queue.as_str()).collect();
        assert_eq!(names, q.shard_names("orders"));
        assert_eq!(names.len(), 4);
        for t in &triggers {
            // 528 / 4 = 132: a depth spread evenly reads as the same replica count.
            assert_eq!((t.in_flight, t.backlog, t.queue_length), (4, 128, 132));
            assert_eq!(t.config_queue, "orders");
        }
        q.shards = crate::config::Shards::try_from(3u64).unwrap();
        assert_eq!(queue_triggers("orders", &q)[0].queue_length, 6 + 171);
    }

    fn settings() -> Settings {
        let mut s = Settings::default();
        s.queues.insert("orders".into(), QueueSettings::default());
        s
    }

    #[test]
    fn zero_replicas_only_when_every_queue_can_wake_from_zero() {
        let mut s = settings();
        assert_eq!(plan(&s).unwrap().min_replicas, 1);
        s.triggers.http.enabled = true;
        s.queues.get_mut("orders").unwrap().scaling.min_tasks = 0;
        assert_eq!(plan(&s).unwrap().min_replicas, 0);
        s.queues.insert("emails".into(), QueueSettings::default());
        assert_eq!(plan(&s).unwrap().min_replicas, 1);
        s.deploy.min_replicas = Some(0);
        let err = plan(&s).unwrap_err().to_string();
        assert!(
            err.contains("deploy.min_replicas") && err.contains("emails"),
            "{err}"
        );
        s.deploy.min_replicas = Some(3);
        assert_eq!(plan(&s).unwrap().min_replicas, 3);
    }

    #[test]
    fn grace_covers_the_drain_and_the_release_grace() {
        let mut s = settings();
        for (drain, grace, window, period) in [
            (Duration::from_secs(30), 40, 300, 40),
            (Duration::ZERO, 10, 300, 10),
            (Duration::from_millis(1500), 12, 300, 12),
            (Duration::from_secs(600), 610, 610, 610),
            (Duration::from_secs(3600), 3610, 3600, 1800),
        ] {
            s.worker.drain_timeout = drain;
            let p = plan(&s).unwrap();
            assert!(Duration::from_secs(p.grace_secs) > drain + RELEASE_GRACE);
            assert_eq!(
                (
                    p.grace_secs,
                    p.scale_down_window_secs,
                    p.scale_down_period_secs
                ),
                (grace, window, period),
                "{drain:?}"
            );
        }
    }

    #[test]
    fn identity_needs_a_plain_queue_endpoint_and_finds_its_cloud() {
        let mut s = settings();
        s.storage.queue_endpoint = Some("https://acct1.queue.core.windows.net/".into());
        s.storage.credential = Some(CredentialKind::ManagedIdentity);
        s.storage.managed_identity_client_id = Some("cid".into());
        let p = plan(&s).unwrap();
        assert_eq!(
            p.auth,
            AuthPlan::Identity {
                account: "acct1".into(),
                endpoint: "https://acct1.queue.core.windows.net".into(),
                client_id: Some("cid".into()),
            }
        );
        assert_eq!(p.cloud, Cloud::Public);
        for (endpoint, cloud) in [
            (
                "https://a12.queue.core.usgovcloudapi.net",
                Cloud::UsGovernment,
            ),
            ("https://a12.queue.core.chinacloudapi.cn", Cloud::China),
            (
                "https://a12.queue.local.azurestack.external",
                Cloud::Private("queue.local.azurestack.external".into()),
            ),
        ] {
            s.storage.queue_endpoint = Some(endpoint.into());
            assert_eq!(plan(&s).unwrap().cloud, cloud, "{endpoint}");
        }
        for bad in [
            "http://127.0.0.1:10001/devstoreaccount1",
            "https://acct.blob.core.windows.net",
            "https://UPPER.queue.core.windows.net",
        ] {
            s.storage.queue_endpoint = Some(bad.into());
            let err = plan(&s).unwrap_err().to_string();
            assert!(err.contains("storage.queue_endpoint"), "{bad}: {err}");
        }
        // A SAS endpoint is not an identity: the default falls back to a secret, which then
        // conflicts with the endpoint, and says so.
        s.storage.queue_endpoint = Some("https://acct.queue.core.windows.net/?sv=1&sig=x".into());
        let err = plan(&s).unwrap_err().to_string();
        assert!(err.contains("deploy.auth"), "{err}");
        s.deploy.auth = Some(DeployAuth::Identity);
        let err = plan(&s).unwrap_err().to_string();
        assert!(
            err.contains("without a SAS") && !err.contains("sig=x"),
            "{err}"
        );
    }

    #[test]
    fn secret_auth_takes_the_cloud_from_the_connection_string() {
        let mut s = settings();
        assert_eq!(plan(&s).unwrap().auth, AuthPlan::Secret);
        assert_eq!(plan(&s).unwrap().cloud, Cloud::Public);
        s.storage.connection_string = Some(
            "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=k==;EndpointSuffix=core.chinacloudapi.cn"
                .into(),
        );
        assert_eq!(plan(&s).unwrap().cloud, Cloud::China);
        s.storage.connection_string = Some("UseDevelopmentStorage=true".into());
        assert_eq!(plan(&s).unwrap().cloud, Cloud::Public);
    }
}

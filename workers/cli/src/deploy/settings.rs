//! The `[deploy]` settings: what `ebbflow deploy ...` needs beyond the queues' own rules (names,
//! image, replica bounds, how KEDA and the worker reach the storage account). Typed where they are
//! parsed, so a wrong value fails the load naming its key. The section sits in the worker's
//! config files (a worker ignores it); [`Config::load_from`](super::Config::load_from) reads it.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use ebbflow::config::ConfigError;

use super::load::invalid;

/// What the generated manifests are made of. Every key is optional.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeploySettings {
    /// Name of the Deployment, ScaledObject and container app; the other objects are named
    /// after it (`<name>-storage`, `<name>-queue-auth`). A DNS label (default `ebbflow-worker`).
    pub name: ResourceName,
    /// The worker image, e.g. `myregistry.azurecr.io/orders-worker:1.4.2`. When unset the
    /// manifests use `ebbflow-worker:latest` (what the repository's Dockerfile builds, the
    /// demo) and say so in their first line, and the command warns on stderr.
    pub image: Option<ImageRef>,
    /// Kubernetes namespace of the generated objects (default: none written, so `kubectl -n`
    /// decides).
    pub namespace: Option<ResourceName>,
    /// Fewest replicas. Default: 0 when every queue can wake from zero tasks
    /// (`scaling.min_tasks = 0` everywhere), else 1. Setting 0 while a queue keeps a task
    /// polling (`min_tasks = 1`) is refused.
    pub min_replicas: Option<u32>,
    /// Most replicas, 1..=1000 (default 10).
    pub max_replicas: ReplicaLimit,
    /// How often KEDA reads the queue lengths, 1s..=1h in whole seconds (default 30s).
    #[serde(with = "humantime_serde")]
    pub polling_interval: Duration,
    /// How long every queue must stay empty before KEDA scales to zero replicas (only with
    /// `min_replicas = 0`), 1s..=24h in whole seconds (default 5m).
    #[serde(with = "humantime_serde")]
    pub cooldown_period: Duration,
    /// How KEDA and the worker authenticate to the storage account: `"secret"` (a connection
    /// string in a secret) or `"identity"` (Entra ID: workload identity on Kubernetes, managed
    /// identity on Container Apps; needs `storage.queue_endpoint`). Default: `"identity"` when
    /// `storage.credential` names an Entra ID credential, else `"secret"`.
    pub auth: Option<DeployAuth>,
    /// Client id of the Entra identity (workload identity: written on the ServiceAccount and as
    /// KEDA's `identityId`). Default: `storage.managed_identity_client_id`, else none (the
    /// ServiceAccount's annotation must then be added by hand).
    pub identity_client_id: Option<String>,
    /// Container Apps' scale-rule identity: `"system"` or a user-assigned identity's resource id
    /// (default `"system"`).
    pub container_apps_identity: Option<String>,
    /// CPU requested per replica, in millicores, 100..=64000 (default 500).
    pub cpu_millicores: u32,
    /// Memory requested (and the limit) per replica, in MiB, 64..=262144 (default 1024).
    pub memory_mib: u32,
}

/// The image the manifests use when `deploy.image` is unset: the repository's Dockerfile
/// builds it (the demo worker).
pub const DEMO_IMAGE: &str = "ebbflow-worker:latest";

impl DeploySettings {
    /// The image to run: `deploy.image`, else [`DEMO_IMAGE`].
    pub fn image(&self) -> &str {
        self.image.as_ref().map_or(DEMO_IMAGE, ImageRef::as_str)
    }
}

impl Default for DeploySettings {
    fn default() -> Self {
        Self {
            name: ResourceName("ebbflow-worker".into()),
            image: None,
            namespace: None,
            min_replicas: None,
            max_replicas: ReplicaLimit(10),
            polling_interval: Duration::from_secs(30),
            cooldown_period: Duration::from_secs(300),
            auth: None,
            identity_client_id: None,
            container_apps_identity: None,
            cpu_millicores: 500,
            memory_mib: 1024,
        }
    }
}

/// How KEDA and the worker reach the storage account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployAuth {
    /// A connection string in a secret (`<name>-storage`, key `connection-string` on
    /// Kubernetes; `storage-connection` on Container Apps).
    Secret,
    /// Entra ID: Azure workload identity on Kubernetes, a managed identity on Container Apps.
    Identity,
}

/// A Kubernetes object name: a DNS label, 1..=63 lowercase letters, digits and `-`, starting
/// with a letter and ending with a letter or digit (also what Container Apps accepts, up to 32).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String")]
pub struct ResourceName(String);

impl ResourceName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ResourceName {
    type Error = String;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        let ok = (1..=63).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && !name.ends_with('-');
        if ok {
            Ok(Self(name))
        } else {
            Err(format!(
                "{name:?}: must be a DNS label: 1-63 lowercase letters, digits and '-', starting \
                 with a letter and ending with a letter or digit"
            ))
        }
    }
}

/// A container image reference (`registry/path:tag` or `@sha256:...`): non-empty, no whitespace
/// or control characters, at most 512 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String")]
pub struct ImageRef(String);

impl ImageRef {
    /// The reference.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ImageRef {
    type Error = String;

    fn try_from(image: String) -> Result<Self, Self::Error> {
        if image.is_empty() || image.len() > 512 || !image.bytes().all(|b| b.is_ascii_graphic()) {
            Err(format!(
                "{image:?}: must be an image reference such as registry.example/worker:1.0 \
                 (1-512 printable characters, no spaces)"
            ))
        } else {
            Ok(Self(image))
        }
    }
}

/// Most replicas, 1..=1000 (the largest Container Apps accepts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "u32")]
pub struct ReplicaLimit(u32);

impl ReplicaLimit {
    /// The count.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for ReplicaLimit {
    type Error = String;

    fn try_from(n: u32) -> Result<Self, Self::Error> {
        if (1..=1000).contains(&n) {
            Ok(Self(n))
        } else {
            Err(format!("{n}: must be 1..=1000"))
        }
    }
}

impl DeploySettings {
    /// Checks what the types alone cannot: whole seconds, ranges, and replica bounds.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        whole_seconds("deploy.polling_interval", self.polling_interval, 1, 3600)?;
        whole_seconds("deploy.cooldown_period", self.cooldown_period, 1, 24 * 3600)?;
        ebbflow::checks::range("deploy.cpu_millicores", self.cpu_millicores, 100, 64_000)?;
        ebbflow::checks::range("deploy.memory_mib", self.memory_mib, 64, 262_144)?;
        if let Some(min) = self.min_replicas {
            if min > self.max_replicas.get() {
                return Err(invalid(
                    "deploy.min_replicas",
                    min,
                    format!(
                        "must not exceed deploy.max_replicas ({})",
                        self.max_replicas.get()
                    ),
                ));
            }
        }
        for (key, value) in [
            ("deploy.identity_client_id", &self.identity_client_id),
            (
                "deploy.container_apps_identity",
                &self.container_apps_identity,
            ),
        ] {
            if let Some(v) = value {
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(invalid(key, v, "must be a non-empty id without spaces"));
                }
            }
        }
        Ok(())
    }
}

/// KEDA and Container Apps take these in whole seconds: refuse what they could not express.
fn whole_seconds(key: &str, value: Duration, min: u64, max: u64) -> Result<(), ConfigError> {
    if value.subsec_nanos() != 0 || !(min..=max).contains(&value.as_secs()) {
        return Err(invalid(
            key,
            humantime::format_duration(value),
            format!("must be whole seconds, {min}s..={max}s"),
        ));
    }
    Ok(())
}

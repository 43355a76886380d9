//! Where the queues live, and how transient service errors are retried: the `[storage]`
//! settings, beside the store that uses them (`config` loads them and re-exports them).

use std::fmt;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::checks::{self, InvalidSetting};
use crate::secret::redact;

/// Where the queues live.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct StorageSettings {
    /// An Azure Storage connection string (`AccountName=..;AccountKey=..`, or
    /// `UseDevelopmentStorage=true`). Falls back to `AZURE_STORAGE_CONNECTION_STRING`.
    /// A [`SecretString`]: read only through [`ExposeSecret::expose_secret`].
    #[serde(serialize_with = "crate::secret::serialize_connection_string")]
    pub connection_string: Option<SecretString>,
    /// The queue service URL (`https://<account>.queue.core.windows.net`), optionally with a SAS
    /// token as its query. Without a SAS token, Entra ID (`credential`) is used.
    #[serde(serialize_with = "crate::secret::serialize_redacted")]
    pub queue_endpoint: Option<String>,
    /// A SAS token for `queue_endpoint`, with or without the leading `?`.
    #[serde(serialize_with = "crate::secret::serialize_hidden")]
    pub sas_token: Option<SecretString>,
    /// Entra ID credential when `queue_endpoint` has no SAS: `developer_tools` (Azure CLI / azd),
    /// `managed_identity`, or `workload_identity` (AKS).
    pub credential: Option<CredentialKind>,
    /// Client id of a user-assigned managed identity (with `credential = "managed_identity"`).
    pub managed_identity_client_id: Option<String>,
    /// Create each configured queue (and its poison queue) at start-up if it is missing.
    pub create_queues: bool,
    /// How long start-up may take to create and check every queue, 1s..=10m: an endpoint
    /// that accepts connections but never answers stops start-up (exit 2) after this long,
    /// instead of after every retry of every call.
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// How transient service errors are retried.
    pub retry: RetrySettings,
    /// The claim check: where payloads too large for a queue message go.
    pub claim_check: crate::store::claim::ClaimCheckSettings,
}

/// Retries of transient service errors (5xx, 503 ServerBusy, timeouts, connection errors):
/// exponential back-off with jitter, bounded. The SDK's own retry policy is off, so these are
/// the only retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct RetrySettings {
    /// Tries per call, the first included, 1..=100.
    pub max_attempts: u32,
    /// The first back-off step.
    #[serde(with = "humantime_serde")]
    pub min_delay: Duration,
    /// The longest back-off step.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Our cut-off for one try, 2s..=10m: a try with no answer after this long is abandoned
    /// and retried, its outcome unknown. Every try also carries the service's own `timeout`
    /// ([`RetrySettings::service_timeout_secs`]: a fifth less, at least 1 s less, in whole
    /// seconds, at most 30), so a slow service answers (done, or 500 OperationTimedOut) before
    /// we give up; this cut-off then only fires when the connection itself is gone.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Refusals of our credentials (401/403) in a row, over all calls, before they count as
    /// final and stop the worker (exit 3), 1..=20. Fewer are retried with back-off, so one
    /// clock-skewed or mis-routed answer does not stop a fleet.
    pub refusals_before_fatal: u32,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            request_timeout: default_request_timeout(),
            refusals_before_fatal: default_refusals_before_fatal(),
        }
    }
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_refusals_before_fatal() -> u32 {
    3
}

/// The longest `timeout` the queue service honours; it lowers longer ones to this.
const MAX_SERVICE_TIMEOUT_SECS: u32 = 30;

impl RetrySettings {
    /// The service's own `timeout` (whole seconds) for a try we cut off after `cutoff`: a fifth
    /// less, and at least one second less, so its answer beats our cut-off; 1..=30.
    pub fn service_timeout_secs(cutoff: Duration) -> u32 {
        let margin = (cutoff / 5).max(Duration::from_secs(1));
        let secs = cutoff.saturating_sub(margin).as_secs();
        u32::try_from(secs)
            .unwrap_or(u32::MAX)
            .clamp(1, MAX_SERVICE_TIMEOUT_SECS)
    }
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            connection_string: None,
            queue_endpoint: None,
            sas_token: None,
            credential: None,
            managed_identity_client_id: None,
            create_queues: true,
            startup_timeout: Duration::from_secs(10),
            retry: RetrySettings::default(),
            claim_check: Default::default(),
        }
    }
}

impl fmt::Debug for StorageSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Written by hand for the endpoint, a URL that may carry a SAS query (shown through
        // `redact`) and the connection string (its plain parts only); the SAS token is a
        // `SecretString`, which shows none of itself.
        f.debug_struct("StorageSettings")
            .field(
                "connection_string",
                &self
                    .connection_string
                    .as_ref()
                    .map(|cs| crate::secret::connection_string_shown(cs.expose_secret())),
            )
            .field(
                "queue_endpoint",
                &self.queue_endpoint.as_deref().map(redact),
            )
            .field("sas_token", &self.sas_token)
            .field("credential", &self.credential)
            .field("create_queues", &self.create_queues)
            .field("startup_timeout", &self.startup_timeout)
            .field("retry", &self.retry)
            .field("claim_check", &self.claim_check)
            .finish()
    }
}

/// The Entra ID credential to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CredentialKind {
    /// Azure CLI, then Azure Developer CLI (a developer's machine).
    DeveloperTools,
    /// The managed identity of the VM, container app or AKS pod.
    ManagedIdentity,
    /// Azure workload identity on Kubernetes: the federated service account token the AKS
    /// webhook mounts (`AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE`).
    WorkloadIdentity,
}

impl StorageSettings {
    /// Checks every value against its allowed range, naming the key at fault.
    ///
    /// # Errors
    ///
    /// [`InvalidSetting`] naming the first key out of range or in conflict.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let s = self;
        if s.connection_string
            .as_ref()
            .is_some_and(|c| c.expose_secret().trim().is_empty())
        {
            // Said, but said nothing (an unfilled secret): never the embedded store silently.
            return Err(InvalidSetting::new(
                "storage.connection_string",
                "\"\"",
                "is empty (in config/*.toml or EBBFLOW__STORAGE__CONNECTION_STRING): set it to a \
                 connection string (UseDevelopmentStorage=true for Azurite), or remove it to run \
                 on the embedded in-process store",
            ));
        }
        if s.connection_string.is_some() && s.queue_endpoint.is_some() {
            return Err(InvalidSetting::new(
                "storage.queue_endpoint",
                redact(s.queue_endpoint.as_deref().unwrap_or_default()),
                "set either storage.connection_string or storage.queue_endpoint, not both",
            ));
        }
        if s.sas_token.is_some() && s.queue_endpoint.is_none() {
            return Err(InvalidSetting::new(
                "storage.sas_token",
                "<redacted>",
                "needs storage.queue_endpoint",
            ));
        }
        checks::duration(
            "storage.startup_timeout",
            self.startup_timeout,
            Duration::from_secs(1),
            Duration::from_secs(600),
        )?;
        self.claim_check.validate()?;
        let r = &self.retry;
        checks::range("storage.retry.max_attempts", r.max_attempts, 1, 100)?;
        checks::duration(
            "storage.retry.max_delay",
            r.max_delay,
            Duration::from_millis(1),
            Duration::from_secs(300),
        )?;
        checks::duration(
            "storage.retry.min_delay",
            r.min_delay,
            Duration::from_millis(1),
            r.max_delay,
        )?;
        // At least 2 s, so the service's own timeout (at least 1 s) stays below it.
        checks::duration(
            "storage.retry.request_timeout",
            r.request_timeout,
            Duration::from_secs(2),
            Duration::from_secs(600),
        )?;
        checks::range(
            "storage.retry.refusals_before_fatal",
            r.refusals_before_fatal,
            1,
            20,
        )?;
        Ok(())
    }
}

//! How KEDA and the worker reach the storage account: a connection string from a secret, or
//! Entra ID (workload identity on Kubernetes, a managed identity on Container Apps), and the
//! Azure cloud the account lives in.

use super::settings::DeployAuth;
use super::DeployError;
use ebbflow::config::CredentialKind;
use secrecy::ExposeSecret;

use super::load::{invalid, Config};

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

pub(super) fn auth_plan(config: &Config) -> Result<(AuthPlan, Cloud), DeployError> {
    let s = &config.settings.storage;
    let entra = matches!(
        s.credential,
        Some(CredentialKind::ManagedIdentity) | Some(CredentialKind::WorkloadIdentity)
    );
    let plain_endpoint = s
        .queue_endpoint
        .as_deref()
        .filter(|e| s.sas_token.is_none() && !e.contains('?'));
    let auth = config
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
                return Err(invalid(
                    "deploy.auth",
                    "secret",
                    "storage.queue_endpoint is set, and the worker would also get a connection \
                     string: set deploy.auth = \"identity\", or configure storage.connection_string \
                     instead",
                )
                .into());
            }
            let cloud = s.connection_string.as_ref().map_or(Cloud::Public, |cs| {
                cloud_of_connection_string(cs.expose_secret())
            });
            Ok((AuthPlan::Secret, cloud))
        }
        DeployAuth::Identity => {
            let endpoint = plain_endpoint.ok_or_else(|| {
                invalid(
                    "deploy.auth",
                    "identity",
                    "needs storage.queue_endpoint (https://<account>.queue.core.windows.net) \
                     without a SAS token",
                )
            })?;
            let (account, suffix) = split_endpoint(endpoint).ok_or_else(|| {
                invalid(
                    "storage.queue_endpoint",
                    endpoint,
                    "KEDA's azure-queue scaler needs an https://<account>.queue.<suffix> URL",
                )
            })?;
            let client_id = config
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
    use crate::deploy::plan::plan;
    use ebbflow::config::QueueSettings;

    fn settings() -> Config {
        let mut s = Config::default();
        s.settings
            .queues
            .insert("orders".into(), QueueSettings::default());
        s
    }

    #[test]
    fn identity_needs_a_plain_queue_endpoint_and_finds_its_cloud() {
        let mut s = settings();
        s.settings.storage.queue_endpoint = Some("https://acct1.queue.core.windows.net/".into());
        s.settings.storage.credential = Some(CredentialKind::ManagedIdentity);
        s.settings.storage.managed_identity_client_id = Some("cid".into());
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
            s.settings.storage.queue_endpoint = Some(endpoint.into());
            assert_eq!(plan(&s).unwrap().cloud, cloud, "{endpoint}");
        }
        for bad in [
            "http://127.0.0.1:10001/devstoreaccount1",
            "https://acct.blob.core.windows.net",
            "https://UPPER.queue.core.windows.net",
        ] {
            s.settings.storage.queue_endpoint = Some(bad.into());
            let err = plan(&s).unwrap_err().to_string();
            assert!(err.contains("storage.queue_endpoint"), "{bad}: {err}");
        }
        // A SAS endpoint is not an identity: the default falls back to a secret, which then
        // conflicts with the endpoint, and says so.
        s.settings.storage.queue_endpoint =
            Some("https://acct.queue.core.windows.net/?sv=1&sig=x".into());
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
        s.settings.storage.connection_string = Some(
            "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=k==;EndpointSuffix=core.chinacloudapi.cn"
                .into(),
        );
        assert_eq!(plan(&s).unwrap().cloud, Cloud::China);
        s.settings.storage.connection_string = Some("UseDevelopmentStorage=true".into());
        assert_eq!(plan(&s).unwrap().cloud, Cloud::Public);
    }
}

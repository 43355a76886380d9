//! The Azure backend, on the official `azure_storage_queue` 1.x SDK (Azure and Azurite).
//!
//! The SDK authenticates with Entra ID or a SAS in the URL; it has no Shared Key signing.
//! For account-key connection strings (and `UseDevelopmentStorage=true`) we sign an account
//! SAS ourselves, in a per-try pipeline policy that re-signs before the token expires, so a
//! long-running worker never holds an expired SAS. Entra ID tokens are set by a policy of ours
//! too (`policy`), so that a token outage is told apart from a refusal.
//!
//! Every call carries the service's own `timeout`, derived from the cut-off of each try (the
//! retrying layer's `request_timeout`, given to the store when it is built:
//! [`AzureStore::with_try_cutoff`]; `from_settings` does it), so a slow service answers before
//! we give up.
//! `errors` says, for each failure, whether the service may have acted.

pub(crate) mod blobs;
mod connection;
mod errors;
mod policy;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::headers::HeaderName;
use azure_core::http::{
    ClientMethodOptions, ClientOptions, Context, RequestContent, RetryOptions, Url,
};
use azure_storage_queue::models::{
    QueueClientClearOptions, QueueClientCreateOptions, QueueClientDeleteMessageOptions,
    QueueClientDeleteOptions, QueueClientGetPropertiesOptions,
    QueueClientGetPropertiesResultHeaders, QueueClientPeekMessagesOptions,
    QueueClientReceiveMessagesOptions, QueueClientSendMessageOptions,
    QueueClientUpdateMessageOptions, QueueMessage,
};
use azure_storage_queue::{QueueClient, QueueServiceClient, QueueServiceClientOptions};

use super::rules::{check_send_expressible, check_text, whole_seconds};
use super::settings::{CredentialKind, RetrySettings, StorageSettings};
use super::{
    validate_queue_name, PeekedMessage, Queue, QueueStore, ReceivedMessage, SendOptions,
    SentMessage, StoreError, UpdatedMessage,
};
use secrecy::ExposeSecret;

use crate::secret::redact;
pub use blobs::AzureBlobs;
use connection::{account_of, parse_connection_string, parse_endpoint, setup, Auth};
pub use policy::account_sas;
use policy::{AccountSasPolicy, TokenPolicy, TryCutoff};

/// Azurite's well-known development account.
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known development key (public, documented by Microsoft).
pub const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A queue service on Azure or Azurite.
#[derive(Clone)]
pub struct AzureStore {
    service: Arc<QueueServiceClient>,
    endpoint: String,
    account: Option<String>,
    try_cutoff: Duration,
}

impl fmt::Debug for AzureStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureStore")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl AzureStore {
    /// Connects with a connection string: `AccountName`/`AccountKey` with `QueueEndpoint` or
    /// `DefaultEndpointsProtocol` + `EndpointSuffix`, a `SharedAccessSignature` with
    /// `QueueEndpoint`, or `UseDevelopmentStorage=true` (Azurite on its default port).
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the connection string is malformed or names no queue endpoint (the
    /// error never shows the key).
    pub fn from_connection_string(connection_string: &str) -> Result<Self, StoreError> {
        let (endpoint, auth) = parse_connection_string(connection_string)?;
        Self::connect(endpoint, auth)
    }

    /// Connects to a queue service URL whose query is a SAS token.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when `url` is not a valid queue service URL with a SAS query.
    pub fn from_sas_url(url: &str) -> Result<Self, StoreError> {
        let endpoint = parse_endpoint(url, "storage.queue_endpoint")?;
        if endpoint.query().is_none_or(|q| !q.contains("sig=")) {
            return Err(setup(
                "storage.queue_endpoint: a SAS URL needs a query with a signature (sig=...)",
            ));
        }
        Self::connect(endpoint, Auth::Sas)
    }

    /// Connects to a queue service URL with an Entra ID credential.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when `url` is not a valid queue service URL.
    pub fn from_credential(
        url: &str,
        credential: Arc<dyn TokenCredential>,
    ) -> Result<Self, StoreError> {
        let endpoint = parse_endpoint(url, "storage.queue_endpoint")?;
        Self::connect(endpoint, Auth::Token(credential))
    }

    /// Builds the store the settings describe (they must name Azure storage), with the try
    /// cut-off of `storage.retry.request_timeout`.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the settings name no Azure storage, or its connection string, endpoint
    /// or credential is malformed.
    pub fn from_settings(s: &StorageSettings) -> Result<Self, StoreError> {
        Ok(Self::from_storage_settings(s)?.with_try_cutoff(s.retry.request_timeout))
    }

    /// Tells the store after how long the retrying layer cuts off one try (its
    /// `request_timeout`; default 30 s): each call then asks the service to answer well before
    /// it (see [`RetrySettings::service_timeout_secs`]), and an Entra ID token fetch gets half
    /// of it.
    pub fn with_try_cutoff(mut self, cutoff: Duration) -> Self {
        self.try_cutoff = cutoff;
        self
    }

    fn from_storage_settings(s: &StorageSettings) -> Result<Self, StoreError> {
        if let Some(cs) = &s.connection_string {
            return Self::from_connection_string(cs.expose_secret());
        }
        let Some(endpoint) = &s.queue_endpoint else {
            return Err(setup(
                "no storage.connection_string or storage.queue_endpoint",
            ));
        };
        if let Some(token) = &s.sas_token {
            let mut url = parse_endpoint(endpoint, "storage.queue_endpoint")?;
            url.set_query(Some(token.expose_secret().trim_start_matches('?')));
            return Self::from_sas_url(url.as_str());
        }
        if endpoint.contains("sig=") {
            return Self::from_sas_url(endpoint);
        }
        let credential = entra_credential(s)?;
        Self::from_credential(endpoint, credential)
    }

    fn connect(endpoint: Url, auth: Auth) -> Result<Self, StoreError> {
        let account = match &auth {
            Auth::Key { account, .. } => Some(account.clone()),
            _ => account_of(&endpoint),
        };
        // Transient errors are retried one level up (`store::retrying`, with the user's
        // `storage.retry` policy); SDK retries underneath would multiply the tries and hide
        // the cause of a dead service for over a minute.
        let mut client_options = ClientOptions {
            retry: RetryOptions::none(),
            ..ClientOptions::default()
        };
        match auth {
            Auth::Key { account, key } => client_options
                .per_try_policies
                .push(Arc::new(AccountSasPolicy::new(account, key))),
            Auth::Sas => {}
            Auth::Token(credential) => {
                if endpoint.scheme() != "https" && !is_loopback(&endpoint) {
                    return Err(setup(format!(
                        "storage.queue_endpoint: Entra ID tokens are sent over https only \
                         (or to a loopback address): {}",
                        redact(endpoint.as_str())
                    )));
                }
                client_options
                    .per_try_policies
                    .push(Arc::new(TokenPolicy::new(credential)));
            }
        }
        let shown = redact(endpoint.as_str());
        let service = QueueServiceClient::new(
            endpoint,
            None,
            Some(QueueServiceClientOptions {
                client_options,
                ..Default::default()
            }),
        )
        .map_err(|e| setup(redact(&e.to_string())))?;
        Ok(Self {
            service: Arc::new(service),
            endpoint: shown,
            account,
            try_cutoff: RetrySettings::default().request_timeout,
        })
    }

    /// The queue service URL, with any SAS signature redacted.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The storage account: the one the key belongs to, else the one the URL names.
    pub fn account(&self) -> Option<&str> {
        self.account.as_deref()
    }
}

/// The Entra ID credential `storage.credential` names (developer tools when unset).
pub(super) fn entra_credential(
    s: &StorageSettings,
) -> Result<Arc<dyn TokenCredential>, StoreError> {
    let credential: Arc<dyn TokenCredential> = match s.credential {
        Some(CredentialKind::ManagedIdentity) => {
            let options = azure_identity::ManagedIdentityCredentialOptions {
                user_assigned_id: s
                    .managed_identity_client_id
                    .clone()
                    .map(azure_identity::UserAssignedId::ClientId),
                ..Default::default()
            };
            azure_identity::ManagedIdentityCredential::new(Some(options))
                .map_err(|e| setup(format!("managed identity: {e}")))?
        }
        Some(CredentialKind::WorkloadIdentity) => {
            let options = azure_identity::WorkloadIdentityCredentialOptions {
                client_id: s.managed_identity_client_id.clone(),
                ..Default::default()
            };
            azure_identity::WorkloadIdentityCredential::new(Some(options))
                .map_err(|e| setup(format!("workload identity: {e}")))?
        }
        Some(CredentialKind::DeveloperTools) | None => {
            azure_identity::DeveloperToolsCredential::new(None)
                .map_err(|e| setup(format!("developer tools credential: {e}")))?
        }
    };
    Ok(credential)
}

fn is_loopback(url: &Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl QueueStore for AzureStore {
    fn queue(&self, name: &str) -> Result<Arc<dyn Queue>, StoreError> {
        validate_queue_name(name).map_err(|e| StoreError::Invalid {
            queue: name.to_string(),
            detail: e.rule,
            source: None,
        })?;
        let client = self
            .service
            .queue_client(name)
            .map_err(|e| setup(redact(&e.to_string())))?;
        Ok(Arc::new(AzureQueue {
            name: name.to_string(),
            client,
            try_cutoff: self.try_cutoff,
        }))
    }

    fn kind(&self) -> super::BackendKind {
        super::BackendKind::Azure
    }

    fn account(&self) -> Option<String> {
        self.account.clone()
    }
}

struct AzureQueue {
    name: String,
    client: QueueClient,
    try_cutoff: Duration,
}

fn secs(d: Duration) -> i32 {
    // The service counts whole seconds; round a fraction up so a timeout is never shortened.
    // Beyond 32 bits the service refuses the value anyway (its limits are far below).
    i32::try_from(whole_seconds(d)).unwrap_or(i32::MAX)
}

/// The service's expiry of a message that never expires is the last second of year 9999:
/// read as `None`.
fn expiry(t: Option<time::OffsetDateTime>) -> Option<time::OffsetDateTime> {
    t.filter(|t| t.year() < 9999)
}

impl AzureQueue {
    fn error(&self, e: azure_core::Error, message_id: Option<&str>) -> StoreError {
        errors::classify(&self.name, e, message_id)
    }

    /// The service's own `timeout` for each try: below the try's cut-off (see
    /// [`RetrySettings::service_timeout_secs`]).
    fn service_timeout(&self) -> Option<i32> {
        i32::try_from(RetrySettings::service_timeout_secs(self.try_cutoff)).ok()
    }

    /// The SDK's per-call options: the try's cut-off rides in the context for the token
    /// policy.
    fn method_options(&self) -> ClientMethodOptions<'static> {
        ClientMethodOptions {
            context: Context::new().with_value(TryCutoff(self.try_cutoff)),
        }
    }

    fn missing(&self, what: &str) -> StoreError {
        StoreError::Invalid {
            queue: self.name.clone(),
            detail: format!("the service's answer has no {what}"),
            source: None,
        }
    }

    fn message_body(
        &self,
        text: &str,
    ) -> Result<RequestContent<QueueMessage, azure_core::http::XmlFormat>, StoreError> {
        QueueMessage {
            message_text: Some(text.to_string()),
        }
        .try_into()
        .map_err(|e: azure_core::Error| self.error(e, None))
    }
}

#[async_trait]
impl Queue for AzureQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn create_if_missing(&self) -> Result<(), StoreError> {
        let options = QueueClientCreateOptions {
            timeout: self.service_timeout(),
            method_options: self.method_options(),
            ..Default::default()
        };
        match self.client.create(Some(options)).await {
            Ok(_) => Ok(()),
            // 409: it exists with other metadata; for us that is "exists".
            Err(e) if e.http_status().map(u16::from) == Some(409) => Ok(()),
            // Creating cannot miss the queue: a 404 means the account or endpoint is wrong,
            // whatever code came with it.
            Err(e) if e.http_status().map(u16::from) == Some(404) => {
                Err(match self.error(e, None) {
                    e @ StoreError::AccountNotFound { .. } => e,
                    other => StoreError::AccountNotFound {
                        queue: self.name.clone(),
                        detail: other.to_string(),
                        source: other.cause().cloned(),
                    },
                })
            }
            Err(e) => Err(self.error(e, None)),
        }
    }

    async fn send(&self, text: &str, options: SendOptions) -> Result<SentMessage, StoreError> {
        // What the request cannot carry, or what Azurite would store and then fail to hand
        // out; the service judges the rest itself.
        check_send_expressible(&self.name, text, &options)?;
        let body = self.message_body(text)?;
        let sent = self
            .client
            .send_message(
                body,
                Some(QueueClientSendMessageOptions {
                    visibility_timeout: (!options.initial_delay.is_zero())
                        .then(|| secs(options.initial_delay)),
                    message_time_to_live: options.message_ttl(),
                    timeout: self.service_timeout(),
                    method_options: self.method_options(),
                }),
            )
            .await
            .map_err(|e| self.error(e, None))?
            .into_model()
            .and_then(|list| list.into_message())
            .map_err(|e| self.error(e, None))?;
        Ok(SentMessage {
            id: sent.message_id.ok_or_else(|| self.missing("message id"))?,
            pop_receipt: sent
                .pop_receipt
                .ok_or_else(|| self.missing("pop receipt"))?,
        })
    }

    async fn receive(
        &self,
        max: u8,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, StoreError> {
        let received = self
            .client
            .receive_messages(Some(QueueClientReceiveMessagesOptions {
                number_of_messages: Some(i32::from(max)),
                visibility_timeout: Some(secs(visibility)),
                timeout: self.service_timeout(),
                method_options: self.method_options(),
            }))
            .await
            .map_err(|e| self.error(e, None))?
            .into_model()
            .map_err(|e| self.error(e, None))?;
        received
            .items
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                Ok(ReceivedMessage {
                    id: m.message_id.ok_or_else(|| self.missing("message id"))?,
                    pop_receipt: m.pop_receipt.ok_or_else(|| self.missing("pop receipt"))?,
                    dequeue_count: m
                        .dequeue_count
                        .and_then(|n| u32::try_from(n).ok())
                        .unwrap_or(1),
                    inserted_at: m.insertion_time,
                    expires_at: expiry(m.expiration_time),
                    text: m.message_text.unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn delete(&self, id: &str, pop_receipt: &str) -> Result<(), StoreError> {
        self.client
            .delete_message(
                id,
                pop_receipt,
                Some(QueueClientDeleteMessageOptions {
                    timeout: self.service_timeout(),
                    method_options: self.method_options(),
                }),
            )
            .await
            .map(|_| ())
            .map_err(|e| self.error(e, Some(id)))
    }

    async fn update(
        &self,
        id: &str,
        pop_receipt: &str,
        visibility: Duration,
        text: Option<&str>,
    ) -> Result<UpdatedMessage, StoreError> {
        if let Some(text) = text {
            // As for a send: text XML cannot carry never reaches the service.
            if text
                .chars()
                .any(|c| !crate::service::is_allowed_text_char(c))
            {
                check_text(&self.name, text)?;
            }
        }
        let queue_message = text.map(|t| self.message_body(t)).transpose()?;
        let response = self
            .client
            .update_message(
                id,
                pop_receipt,
                secs(visibility),
                Some(QueueClientUpdateMessageOptions {
                    queue_message,
                    timeout: self.service_timeout(),
                    method_options: self.method_options(),
                }),
            )
            .await
            .map_err(|e| self.error(e, Some(id)))?;
        let receipt = response
            .headers()
            .get_optional_string(&HeaderName::from_static("x-ms-popreceipt"))
            .ok_or_else(|| self.missing("x-ms-popreceipt header"))?;
        Ok(UpdatedMessage {
            pop_receipt: receipt,
        })
    }

    async fn peek(&self, max: u8) -> Result<Vec<PeekedMessage>, StoreError> {
        let peeked = self
            .client
            .peek_messages(Some(QueueClientPeekMessagesOptions {
                number_of_messages: Some(i32::from(max)),
                timeout: self.service_timeout(),
                method_options: self.method_options(),
            }))
            .await
            .map_err(|e| self.error(e, None))?
            .into_model()
            .map_err(|e| self.error(e, None))?;
        peeked
            .items
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                Ok(PeekedMessage {
                    id: m.message_id.ok_or_else(|| self.missing("message id"))?,
                    dequeue_count: m
                        .dequeue_count
                        .and_then(|n| u32::try_from(n).ok())
                        .unwrap_or(0),
                    inserted_at: m.insertion_time,
                    text: m.message_text.unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn approximate_depth(&self) -> Result<u64, StoreError> {
        let response = self
            .client
            .get_properties(Some(QueueClientGetPropertiesOptions {
                timeout: self.service_timeout(),
                method_options: self.method_options(),
            }))
            .await
            .map_err(|e| self.error(e, None))?;
        let count = response
            .approximate_messages_count()
            .map_err(|e| self.error(e, None))?
            .ok_or_else(|| self.missing("x-ms-approximate-messages-count header"))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn clear(&self) -> Result<(), StoreError> {
        self.client
            .clear(Some(QueueClientClearOptions {
                timeout: self.service_timeout(),
                method_options: self.method_options(),
            }))
            .await
            .map(|_| ())
            .map_err(|e| self.error(e, None))
    }

    async fn delete_queue(&self) -> Result<(), StoreError> {
        self.client
            .delete(Some(QueueClientDeleteOptions {
                timeout: self.service_timeout(),
                method_options: self.method_options(),
            }))
            .await
            .map(|_| ())
            .map_err(|e| self.error(e, None))
    }
}

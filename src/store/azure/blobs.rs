//! The claim check's blob container on Azure or Azurite, on the official `azure_storage_blob`
//! 1.x SDK, authorized every way the queues are: an account SAS we sign from a connection
//! string's key (for the blob service), a SAS token, or an Entra ID token (managed or workload
//! identity, developer tools) through our own token policy.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use azure_core::error::ErrorKind;
use azure_core::http::{ClientOptions, RequestContent, RetryOptions, Url};
use azure_storage_blob::models::{
    BlobClientGetPropertiesResultHeaders, BlobClientUploadOptions,
    BlobContainerClientListBlobsOptions, ListBlobsIncludeItem,
};
use azure_storage_blob::{BlobContainerClient, BlobContainerClientOptions};

use super::connection::{parse_connection_string_for, parse_endpoint, setup, Auth, Service};
use super::errors::describe;
use super::policy::{AccountSasPolicy, TokenPolicy};
use super::{entra_credential, is_loopback};
use secrecy::ExposeSecret;

use crate::secret::redact;
use crate::store::blob::{BlobError, BlobErrorKind, BlobInfo, BlobStore, META_EXPIRES};
use crate::store::settings::StorageSettings;
use crate::store::StoreError;

/// A blob container on Azure or Azurite.
#[derive(Clone)]
pub struct AzureBlobs {
    client: Arc<BlobContainerClient>,
    container: String,
    endpoint: String,
    account: Option<String>,
}

impl fmt::Debug for AzureBlobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureBlobs")
            .field("endpoint", &self.endpoint)
            .field("container", &self.container)
            .finish()
    }
}

impl AzureBlobs {
    /// The container the settings name, when they name a blob endpoint: `storage.claim_check.
    /// blob_endpoint` (with its SAS, or the Entra ID `storage.credential`), else the blob
    /// service of the account `storage.connection_string` names. `Ok(None)`: no blob endpoint
    /// is known.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the blob endpoint, its SAS or the connection string is malformed.
    pub fn from_settings(s: &StorageSettings) -> Result<Option<Self>, StoreError> {
        let claim = &s.claim_check;
        let container = &claim.container;
        if let Some(endpoint) = &claim.blob_endpoint {
            let mut url = parse_endpoint(endpoint, "storage.claim_check.blob_endpoint")?;
            if let Some(token) = &claim.sas_token {
                url.set_query(Some(token.expose_secret().trim_start_matches('?')));
            }
            if url.query().is_some_and(|q| q.contains("sig=")) {
                return Self::connect(url, Auth::Sas, container).map(Some);
            }
            // The account key of a connection string signs for the blob service too.
            if let Some(cs) = &s.connection_string {
                if let Some((_, auth @ Auth::Key { .. })) =
                    parse_connection_string_for(cs.expose_secret(), Service::Blob)?
                {
                    return Self::connect(url, auth, container).map(Some);
                }
            }
            let credential = entra_credential(s)?;
            return Self::connect(url, Auth::Token(credential), container).map(Some);
        }
        match &s.connection_string {
            Some(cs) => match parse_connection_string_for(cs.expose_secret(), Service::Blob)? {
                Some((url, auth)) => Self::connect(url, auth, container).map(Some),
                None => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// The container `container` of the blob service at `endpoint` (a URL with a SAS query),
    /// or, with `connection_string`, of the account it names.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when `endpoint` or the connection string is malformed.
    pub fn from_connection_string(
        connection_string: &str,
        container: &str,
    ) -> Result<Self, StoreError> {
        match parse_connection_string_for(connection_string, Service::Blob)? {
            Some((url, auth)) => Self::connect(url, auth, container),
            None => Err(setup(
                "storage.connection_string: names no account or BlobEndpoint",
            )),
        }
    }

    fn connect(endpoint: Url, auth: Auth, container: &str) -> Result<Self, StoreError> {
        let account = match &auth {
            Auth::Key { account, .. } => Some(account.clone()),
            _ => super::connection::account_of(&endpoint),
        };
        // The SDK retries blob calls itself (a few quick tries); what still fails counts as
        // one failure of the message, retried like a queue error.
        let mut client_options = ClientOptions {
            retry: RetryOptions::exponential(Default::default()),
            ..ClientOptions::default()
        };
        match auth {
            Auth::Key { account, key } => client_options
                .per_try_policies
                .push(Arc::new(AccountSasPolicy::for_services(account, key, "b"))),
            Auth::Sas => {}
            Auth::Token(credential) => {
                if endpoint.scheme() != "https" && !is_loopback(&endpoint) {
                    return Err(setup(format!(
                        "storage.claim_check.blob_endpoint: Entra ID tokens are sent over \
                         https only (or to a loopback address): {}",
                        redact(endpoint.as_str())
                    )));
                }
                client_options
                    .per_try_policies
                    .push(Arc::new(TokenPolicy::new(credential)));
            }
        }
        let shown = redact(endpoint.as_str());
        let mut url = endpoint;
        let query = url.query().map(str::to_string);
        url.set_query(None);
        url.path_segments_mut()
            .map_err(|_| setup("storage.claim_check.blob_endpoint: not a base URL"))?
            .pop_if_empty()
            .push(container);
        url.set_query(query.as_deref());
        let client = BlobContainerClient::new(
            url,
            None,
            Some(BlobContainerClientOptions {
                client_options,
                ..Default::default()
            }),
        )
        .map_err(|e| setup(redact(&e.to_string())))?;
        Ok(Self {
            client: Arc::new(client),
            container: container.to_string(),
            endpoint: shown,
            account,
        })
    }

    /// The blob service URL, with any SAS signature redacted.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn full(&self, name: &str) -> String {
        format!("{}/{name}", self.container)
    }

    fn error(&self, name: &str, e: &azure_core::Error) -> BlobError {
        // The service's XML error body as its code and message (`404 ContainerNotFound: The
        // specified container does not exist.`), on one line.
        let detail = super::errors::one_line(&redact(&describe(e)));
        let kind = match e.kind() {
            ErrorKind::HttpResponse { status, .. } => match u16::from(*status) {
                404 => BlobErrorKind::NotFound,
                401 | 403 => BlobErrorKind::Unauthorized,
                408 | 429 | 500..=599 => BlobErrorKind::Transient,
                _ => BlobErrorKind::Invalid,
            },
            ErrorKind::Io | ErrorKind::Credential | ErrorKind::Connection => {
                BlobErrorKind::Transient
            }
            _ => BlobErrorKind::Transient,
        };
        BlobError::new(kind, self.full(name), detail)
    }
}

#[async_trait]
impl BlobStore for AzureBlobs {
    fn container(&self) -> &str {
        &self.container
    }

    fn account(&self) -> Option<String> {
        self.account.clone()
    }

    async fn create_if_missing(&self) -> Result<(), BlobError> {
        match self.client.create(None).await {
            Ok(_) => Ok(()),
            Err(e) if e.http_status().map(u16::from) == Some(409) => Ok(()),
            Err(e) => Err(self.error("", &e)),
        }
    }

    async fn put(
        &self,
        name: &str,
        bytes: Vec<u8>,
        metadata: BTreeMap<String, String>,
    ) -> Result<(), BlobError> {
        let blob = self.client.blob_client(name);
        let options = BlobClientUploadOptions {
            metadata: Some(metadata.into_iter().collect::<HashMap<_, _>>()),
            ..Default::default()
        };
        let content: RequestContent<azure_core::Bytes, azure_core::http::NoFormat> =
            azure_core::Bytes::from(bytes).into();
        blob.upload(content, Some(options))
            .await
            .map(|_| ())
            .map_err(|e| self.error(name, &e))
    }

    async fn get(&self, name: &str, max_len: u64) -> Result<Vec<u8>, BlobError> {
        let blob = self.client.blob_client(name);
        let properties = blob
            .get_properties(None)
            .await
            .map_err(|e| self.error(name, &e))?;
        let len = properties
            .content_length()
            .map_err(|e| self.error(name, &e))?
            .unwrap_or_default();
        if len > max_len {
            return Err(BlobError::new(
                BlobErrorKind::TooLarge,
                self.full(name),
                format!("{len} bytes, more than the {max_len} allowed"),
            ));
        }
        let Ok(len) = usize::try_from(len) else {
            return Err(BlobError::new(
                BlobErrorKind::TooLarge,
                self.full(name),
                "larger than this machine's address space",
            ));
        };
        // Straight into one buffer of the blob's size: the payload is held once.
        let mut buffer = vec![0u8; len];
        if len > 0 {
            let got = blob
                .download_into(&mut buffer, None)
                .await
                .map_err(|e| self.error(name, &e))?;
            buffer.truncate(got.len);
        }
        Ok(buffer)
    }

    async fn set_expiry(&self, name: &str, value: &str) -> Result<(), BlobError> {
        let blob = self.client.blob_client(name);
        let properties = blob
            .get_properties(None)
            .await
            .map_err(|e| self.error(name, &e))?;
        let mut metadata = properties.metadata().map_err(|e| self.error(name, &e))?;
        metadata.insert(META_EXPIRES.to_string(), value.to_string());
        blob.set_metadata(&metadata, None)
            .await
            .map(|_| ())
            .map_err(|e| self.error(name, &e))
    }

    async fn delete(&self, name: &str) -> Result<bool, BlobError> {
        match self.client.blob_client(name).delete(None).await {
            Ok(_) => Ok(true),
            Err(e) if e.http_status().map(u16::from) == Some(404) => Ok(false),
            Err(e) => Err(self.error(name, &e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobInfo>, BlobError> {
        let options = BlobContainerClientListBlobsOptions {
            include: Some(vec![ListBlobsIncludeItem::Metadata]),
            prefix: (!prefix.is_empty()).then(|| prefix.to_string()),
            ..Default::default()
        };
        let mut pages = self
            .client
            .list_blobs(Some(options))
            .map_err(|e| self.error(prefix, &e))?
            .into_pages();
        let mut out = Vec::new();
        loop {
            let next = std::future::poll_fn(|cx| {
                futures_core::Stream::poll_next(std::pin::Pin::new(&mut pages), cx)
            })
            .await;
            let Some(page) = next else { break };
            let page = page
                .and_then(|p| p.into_model())
                .map_err(|e| self.error(prefix, &e))?;
            for item in page.blob_items {
                let Some(name) = item.name else { continue };
                let properties = item.properties.unwrap_or_default();
                let metadata = item
                    .metadata
                    .and_then(|m| m.values)
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                out.push(BlobInfo {
                    name,
                    size: properties.content_length.unwrap_or_default(),
                    created_at: properties.creation_time.or(properties.last_modified),
                    metadata,
                });
            }
        }
        Ok(out)
    }
}

//! The Azure backend, on the official `azure_storage_queue` 1.x SDK (Azure and Azurite).
//!
//! The SDK authenticates with Entra ID or a SAS in the URL; it has no Shared Key signing.
//! For account-key connection strings (and `UseDevelopmentStorage=true`) we sign an account
//! SAS ourselves, in a per-try pipeline policy that re-signs before the token expires, so a
//! long-running worker never holds an expired SAS.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::http::headers::HeaderName;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{ClientOptions, Context, Request, RequestContent, RetryOptions, Url};
use azure_storage_queue::models::{
    QueueClientGetPropertiesResultHeaders, QueueClientPeekMessagesOptions,
    QueueClientReceiveMessagesOptions, QueueClientSendMessageOptions,
    QueueClientUpdateMessageOptions, QueueMessage,
};
use azure_storage_queue::{QueueClient, QueueServiceClient, QueueServiceClientOptions};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use time::OffsetDateTime;

use super::{
    check_receive_count, redact, validate_queue_name, PeekedMessage, Queue, QueueStore,
    ReceivedMessage, SendOptions, SentMessage, StoreError, UpdatedMessage,
};
use crate::config::{CredentialKind, StorageSettings};

/// Azurite's well-known development account.
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known development key (public, documented by Microsoft).
pub const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const DEV_QUEUE_ENDPOINT: &str = "http://127.0.0.1:10001/devstoreaccount1";
/// The SAS version we sign (account SAS, nine-field string-to-sign).
const SAS_VERSION: &str = "2019-02-02";
const SAS_LIFETIME: time::Duration = time::Duration::hours(1);
const SAS_RENEW_BEFORE: time::Duration = time::Duration::minutes(15);

/// How requests are authorized.
enum Auth {
    /// Account name and key: we sign account SAS tokens.
    Key { account: String, key: Vec<u8> },
    /// A SAS token supplied by the user, already in the endpoint's query.
    Sas,
    /// Entra ID.
    Token(Arc<dyn TokenCredential>),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Key { account, .. } => write!(f, "AccountKey({account}, <redacted>)"),
            Auth::Sas => f.write_str("Sas(<redacted>)"),
            Auth::Token(_) => f.write_str("EntraId"),
        }
    }
}

/// A queue service on Azure or Azurite.
#[derive(Clone)]
pub struct AzureStore {
    service: Arc<QueueServiceClient>,
    endpoint: String,
}

impl fmt::Debug for AzureStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureStore")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

fn setup(detail: impl Into<String>) -> StoreError {
    StoreError::Setup(detail.into())
}

impl AzureStore {
    /// Connects with a connection string: `AccountName`/`AccountKey` with `QueueEndpoint` or
    /// `DefaultEndpointsProtocol` + `EndpointSuffix`, a `SharedAccessSignature` with
    /// `QueueEndpoint`, or `UseDevelopmentStorage=true` (Azurite on its default port).
    pub fn from_connection_string(connection_string: &str) -> Result<Self, StoreError> {
        let (endpoint, auth) = parse_connection_string(connection_string)?;
        Self::connect(endpoint, auth)
    }

    /// Connects to a queue service URL whose query is a SAS token.
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
    pub fn from_credential(
        url: &str,
        credential: Arc<dyn TokenCredential>,
    ) -> Result<Self, StoreError> {
        let endpoint = parse_endpoint(url, "storage.queue_endpoint")?;
        Self::connect(endpoint, Auth::Token(credential))
    }

    /// Builds the store the settings describe (they must name Azure storage).
    pub fn from_settings(s: &StorageSettings) -> Result<Self, StoreError> {
        if let Some(cs) = &s.connection_string {
            return Self::from_connection_string(cs);
        }
        let Some(endpoint) = &s.queue_endpoint else {
            return Err(setup(
                "no storage.connection_string or storage.queue_endpoint",
            ));
        };
        if let Some(token) = &s.sas_token {
            let mut url = parse_endpoint(endpoint, "storage.queue_endpoint")?;
            url.set_query(Some(token.trim_start_matches('?')));
            return Self::from_sas_url(url.as_str());
        }
        if endpoint.contains("sig=") {
            return Self::from_sas_url(endpoint);
        }
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
            Some(CredentialKind::DeveloperTools) | None => {
                azure_identity::DeveloperToolsCredential::new(None)
                    .map_err(|e| setup(format!("developer tools credential: {e}")))?
            }
        };
        Self::from_credential(endpoint, credential)
    }

    fn connect(endpoint: Url, auth: Auth) -> Result<Self, StoreError> {
        // Transient errors are retried one level up (`store::retrying`, with the user's
        // `storage.retry` policy); SDK retries underneath would multiply the tries and hide
        // the cause of a dead service for over a minute.
        let mut client_options = ClientOptions {
            retry: RetryOptions::none(),
            ..ClientOptions::default()
        };
        let credential = match auth {
            Auth::Key { account, key } => {
                client_options
                    .per_try_policies
                    .push(Arc::new(AccountSasPolicy::new(account, key)));
                None
            }
            Auth::Sas => None,
            Auth::Token(credential) => Some(credential),
        };
        let shown = redact(endpoint.as_str());
        let service = QueueServiceClient::new(
            endpoint,
            credential,
            Some(QueueServiceClientOptions {
                client_options,
                ..Default::default()
            }),
        )
        .map_err(|e| setup(redact(&e.to_string())))?;
        Ok(Self {
            service: Arc::new(service),
            endpoint: shown,
        })
    }

    /// The queue service URL, with any SAS signature redacted.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

/// Parses a service URL; the path must not end in `/`, or `queue_client` would append an
/// empty segment and the service would answer InvalidResourceName.
fn parse_endpoint(url: &str, key: &str) -> Result<Url, StoreError> {
    let mut parsed = Url::parse(url.trim())
        .map_err(|e| setup(format!("{key}: not a valid URL ({e}): {}", redact(url))))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.cannot_be_a_base() {
        return Err(setup(format!(
            "{key}: must be an http(s) URL: {}",
            redact(url)
        )));
    }
    let path = parsed.path().trim_end_matches('/').to_string();
    parsed.set_path(&path);
    Ok(parsed)
}

fn parse_connection_string(cs: &str) -> Result<(Url, Auth), StoreError> {
    let mut fields = BTreeMap::new();
    for part in cs.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            setup(format!(
                "storage.connection_string: `{}` is not a Key=Value pair",
                redact(part)
            ))
        })?;
        fields.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let get = |k: &str| fields.get(k).filter(|v| !v.is_empty()).cloned();
    if get("usedevelopmentstorage").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        let endpoint = match get("developmentstorageproxyuri") {
            Some(proxy) => format!("{}/{DEV_ACCOUNT}", proxy.trim_end_matches('/')),
            None => DEV_QUEUE_ENDPOINT.to_string(),
        };
        return Ok((
            parse_endpoint(&endpoint, "storage.connection_string")?,
            Auth::Key {
                account: DEV_ACCOUNT.into(),
                key: decode_key(DEV_KEY)?,
            },
        ));
    }
    let account = get("accountname");
    let endpoint = match (get("queueendpoint"), &account) {
        (Some(e), _) => e,
        (None, Some(account)) => {
            let protocol = get("defaultendpointsprotocol").unwrap_or_else(|| "https".into());
            let suffix = get("endpointsuffix").unwrap_or_else(|| "core.windows.net".into());
            format!("{protocol}://{account}.queue.{suffix}")
        }
        (None, None) => {
            return Err(setup(
                "storage.connection_string: needs AccountName or QueueEndpoint",
            ))
        }
    };
    let mut url = parse_endpoint(&endpoint, "storage.connection_string QueueEndpoint")?;
    if let Some(sas) = get("sharedaccesssignature") {
        url.set_query(Some(sas.trim_start_matches('?')));
        return Ok((url, Auth::Sas));
    }
    match (account, get("accountkey")) {
        (Some(account), Some(key)) => Ok((
            url,
            Auth::Key {
                account,
                key: decode_key(&key)?,
            },
        )),
        _ => Err(setup(
            "storage.connection_string: needs AccountName and AccountKey, or SharedAccessSignature",
        )),
    }
}

/// Mints an account SAS token (queue service; all queue permissions) from an account name and
/// base64 key, valid until `expiry`. Useful to hand a scoped, expiring credential to another
/// process; the token is a secret.
pub fn account_sas(
    account: &str,
    key_base64: &str,
    expiry: OffsetDateTime,
) -> Result<String, StoreError> {
    Ok(sign_account_sas(account, &decode_key(key_base64)?, expiry))
}

fn decode_key(key: &str) -> Result<Vec<u8>, StoreError> {
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| setup("storage.connection_string: AccountKey is not valid base64"))
}

/// Signs an account SAS for the queue service (all queue permissions, service, container and
/// object level) that expires at `expiry`. Returns the query string.
fn sign_account_sas(account: &str, key: &[u8], expiry: OffsetDateTime) -> String {
    let se = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        expiry.year(),
        u8::from(expiry.month()),
        expiry.day(),
        expiry.hour(),
        expiry.minute(),
        expiry.second()
    );
    let (sp, ss, srt) = ("rwdlacup", "q", "sco");
    // Nine fields for versions before 2020-12-06: account, permissions, services, resource
    // types, start, expiry, IP, protocol, version; each followed by a newline.
    let to_sign = format!("{account}\n{sp}\n{ss}\n{srt}\n\n{se}\n\n\n{SAS_VERSION}\n");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(to_sign.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let mut query = azure_core::http::Url::parse("http://x/").expect("static URL");
    query
        .query_pairs_mut()
        .append_pair("sv", SAS_VERSION)
        .append_pair("ss", ss)
        .append_pair("srt", srt)
        .append_pair("sp", sp)
        .append_pair("se", &se)
        .append_pair("sig", &sig);
    query.query().unwrap_or_default().to_string()
}

const SAS_KEYS: [&str; 8] = ["sv", "ss", "srt", "sp", "se", "st", "spr", "sig"];

/// A pipeline policy that authorizes each try with a fresh-enough account SAS.
struct AccountSasPolicy {
    account: String,
    key: Vec<u8>,
    cached: Mutex<Option<(OffsetDateTime, String)>>,
}

impl fmt::Debug for AccountSasPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountSasPolicy({}, <redacted>)", self.account)
    }
}

impl AccountSasPolicy {
    fn new(account: String, key: Vec<u8>) -> Self {
        Self {
            account,
            key,
            cached: Mutex::new(None),
        }
    }

    fn current(&self) -> String {
        let now = OffsetDateTime::now_utc();
        let mut cached = self.cached.lock().expect("sas cache mutex poisoned");
        match &*cached {
            Some((expiry, query)) if *expiry - now > SAS_RENEW_BEFORE => query.clone(),
            _ => {
                let expiry = now + SAS_LIFETIME;
                let query = sign_account_sas(&self.account, &self.key, expiry);
                *cached = Some((expiry, query.clone()));
                query
            }
        }
    }
}

#[async_trait]
impl Policy for AccountSasPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let sas = self.current();
        let url = request.url_mut();
        // A retried request passes here again: drop the previous try's SAS first.
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| !SAS_KEYS.contains(&k.as_ref()))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        url.set_query(None);
        {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in &kept {
                pairs.append_pair(k, v);
            }
        }
        let query = match url.query() {
            Some(q) if !q.is_empty() => format!("{q}&{sas}"),
            _ => sas,
        };
        url.set_query(Some(&query));
        next[0].send(ctx, request, &next[1..]).await
    }
}

impl QueueStore for AzureStore {
    fn queue(&self, name: &str) -> Result<Arc<dyn Queue>, StoreError> {
        validate_queue_name(name).map_err(|detail| StoreError::Invalid {
            queue: name.to_string(),
            detail,
        })?;
        let client = self
            .service
            .queue_client(name)
            .map_err(|e| setup(redact(&e.to_string())))?;
        Ok(Arc::new(AzureQueue {
            name: name.to_string(),
            client,
        }))
    }

    fn kind(&self) -> super::BackendKind {
        super::BackendKind::Azure
    }
}

struct AzureQueue {
    name: String,
    client: QueueClient,
}

/// An error with its causes ("... : tcp connect error: Connection refused"): the SDK's own
/// text often leaves out why a request failed.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

fn secs(d: Duration) -> i32 {
    // The service counts whole seconds; round a fraction up so a timeout is never shortened.
    let whole = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(whole).unwrap_or(i32::MAX)
}

impl AzureQueue {
    fn error(&self, e: azure_core::Error, message_id: Option<&str>) -> StoreError {
        let queue = self.name.clone();
        let detail = redact(&describe(&e));
        match e.kind() {
            ErrorKind::HttpResponse {
                status, error_code, ..
            } => {
                let code = error_code.as_deref().unwrap_or_default();
                let status = u16::from(*status);
                match (status, code, message_id) {
                    (404, "QueueNotFound", _) => StoreError::QueueNotFound { queue },
                    (404, _, Some(id)) | (400, "PopReceiptMismatch", Some(id)) => {
                        StoreError::MessageNotFound {
                            queue,
                            id: id.to_string(),
                        }
                    }
                    (404, _, None) => StoreError::QueueNotFound { queue },
                    (401 | 403, _, _) => StoreError::Unauthorized { queue, detail },
                    (408 | 429 | 500..=599, _, _) => StoreError::Transient { queue, detail },
                    _ => StoreError::Invalid { queue, detail },
                }
            }
            ErrorKind::Credential => StoreError::Unauthorized { queue, detail },
            ErrorKind::DataConversion => StoreError::Invalid { queue, detail },
            _ => StoreError::Transient { queue, detail },
        }
    }

    fn missing(&self, what: &str) -> StoreError {
        StoreError::Invalid {
            queue: self.name.clone(),
            detail: format!("the service's answer has no {what}"),
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
        match self.client.create(None).await {
            Ok(_) => Ok(()),
            // 409: it exists with other metadata; for us that is "exists".
            Err(e) if e.http_status().map(u16::from) == Some(409) => Ok(()),
            Err(e) => Err(self.error(e, None)),
        }
    }

    async fn send(&self, text: &str, options: SendOptions) -> Result<SentMessage, StoreError> {
        super::check_visibility(&self.name, "initial delay", options.initial_delay)?;
        let body = self.message_body(text)?;
        let sent = self
            .client
            .send_message(
                body,
                Some(QueueClientSendMessageOptions {
                    visibility_timeout: (!options.initial_delay.is_zero())
                        .then(|| secs(options.initial_delay)),
                    message_time_to_live: options.time_to_live.map(secs),
                    ..Default::default()
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
        check_receive_count(&self.name, max)?;
        super::check_visibility(&self.name, "visibility timeout", visibility)?;
        let received = self
            .client
            .receive_messages(Some(QueueClientReceiveMessagesOptions {
                number_of_messages: Some(i32::from(max)),
                visibility_timeout: Some(secs(visibility)),
                ..Default::default()
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
                    expires_at: m.expiration_time,
                    text: m.message_text.unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn delete(&self, id: &str, pop_receipt: &str) -> Result<(), StoreError> {
        self.client
            .delete_message(id, pop_receipt, None)
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
        super::check_visibility(&self.name, "visibility timeout", visibility)?;
        let queue_message = text.map(|t| self.message_body(t)).transpose()?;
        let response = self
            .client
            .update_message(
                id,
                pop_receipt,
                secs(visibility),
                Some(QueueClientUpdateMessageOptions {
                    queue_message,
                    ..Default::default()
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
        check_receive_count(&self.name, max)?;
        let peeked = self
            .client
            .peek_messages(Some(QueueClientPeekMessagesOptions {
                number_of_messages: Some(i32::from(max)),
                ..Default::default()
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
            .get_properties(None)
            .await
            .map_err(|e| self.error(e, None))?;
        let count = response
            .approximate_messages_count()
            .map_err(|e| self.error(e, None))?
            .ok_or_else(|| self.missing("x-ms-approximate-messages-count header"))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_storage_points_at_azurite_with_the_well_known_account() {
        let (url, auth) = parse_connection_string("UseDevelopmentStorage=true").unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:10001/devstoreaccount1");
        assert!(matches!(auth, Auth::Key { ref account, .. } if account == DEV_ACCOUNT));
    }

    #[test]
    fn account_key_strings_build_the_endpoint_from_protocol_and_suffix() {
        let cs = "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey=a2V5;EndpointSuffix=core.chinacloudapi.cn";
        let (url, _) = parse_connection_string(cs).unwrap();
        assert_eq!(url.as_str(), "https://acme.queue.core.chinacloudapi.cn/");
        let cs = "AccountName=devstoreaccount1;AccountKey=a2V5;QueueEndpoint=http://127.0.0.1:4000/devstoreaccount1/";
        let (url, _) = parse_connection_string(cs).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:4000/devstoreaccount1");
    }

    #[test]
    fn sas_connection_strings_keep_the_token_in_the_query() {
        let cs = "QueueEndpoint=https://acme.queue.core.windows.net;SharedAccessSignature=sv=2019-02-02&sig=abc";
        let (url, auth) = parse_connection_string(cs).unwrap();
        assert_eq!(url.query(), Some("sv=2019-02-02&sig=abc"));
        assert!(matches!(auth, Auth::Sas));
    }

    #[test]
    fn bad_connection_strings_name_the_problem_without_the_key() {
        let err = parse_connection_string("AccountName=acme;AccountKey=not*base64!")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("AccountKey is not valid base64"), "{err}");
        assert!(!err.contains("not*base64"), "{err}");
        let err = parse_connection_string("AccountName=acme")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("needs AccountName and AccountKey"), "{err}");
        let err = parse_connection_string("garbage")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not a Key=Value pair"), "{err}");
    }

    #[test]
    fn account_sas_signature_matches_a_known_vector() {
        // Expected signature computed outside Rust (Python hmac/hashlib) over the nine-field
        // string-to-sign with the Azurite development key, expiry 2030-01-01T00:00:00Z.
        let expiry = time::macros::datetime!(2030-01-01 0:00 UTC);
        let q = sign_account_sas(DEV_ACCOUNT, &decode_key(DEV_KEY).unwrap(), expiry);
        assert_eq!(
            q,
            "sv=2019-02-02&ss=q&srt=sco&sp=rwdlacup&se=2030-01-01T00%3A00%3A00Z\
             &sig=wJ%2FmOgXECWa9iso0mY7rDWUwc1nizfXGv50gGTbBZbw%3D"
        );
    }
}

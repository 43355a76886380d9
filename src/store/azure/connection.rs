//! Where the queue service is and how we authorize: connection strings, service URLs, and the
//! storage account they name.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use azure_core::http::Url;
use base64::Engine as _;

use super::{DEV_ACCOUNT, DEV_KEY};
use crate::secret::redact;
use crate::store::StoreError;

const DEV_QUEUE_ENDPOINT: &str = "http://127.0.0.1:10001/devstoreaccount1";
const DEV_BLOB_ENDPOINT: &str = "http://127.0.0.1:10000/devstoreaccount1";

/// How requests are authorized.
pub(super) enum Auth {
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

pub(super) fn setup(detail: impl Into<String>) -> StoreError {
    StoreError::Setup(detail.into())
}

/// The storage account a service URL names: the first label of `<account>.queue.<suffix>` (or
/// `.blob.`), or
/// for a path-style URL (Azurite, an IP or `localhost`) its first path segment.
pub(super) fn account_of(url: &Url) -> Option<String> {
    let host = url.host_str()?;
    for label in [".queue.", ".blob."] {
        if let Some((account, _)) = host.split_once(label) {
            return Some(account.to_string()).filter(|a| !a.is_empty());
        }
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let path_style = host == "localhost" || bare.parse::<std::net::IpAddr>().is_ok();
    if !path_style {
        return None;
    }
    url.path_segments()?
        .next()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

pub(super) fn parse_endpoint(url: &str, key: &str) -> Result<Url, StoreError> {
    let mut parsed = Url::parse(url.trim())
        .map_err(|e| setup(format!("{key}: not a valid URL ({e}): {}", redact(url))))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.cannot_be_a_base() {
        return Err(setup(format!(
            "{key}: must be an http(s) URL: {}",
            redact(url)
        )));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        // Azure Storage takes no user or password in a URL; the client would send it, and its
        // request log would show it.
        return Err(setup(format!(
            "{key}: must not hold a user or password (Azure Storage authenticates with a SAS \
             token, an account key or Entra ID): {}",
            redact(url)
        )));
    }
    let path = parsed.path().trim_end_matches('/').to_string();
    parsed.set_path(&path);
    Ok(parsed)
}

pub(super) fn parse_connection_string(cs: &str) -> Result<(Url, Auth), StoreError> {
    parse_connection_string_for(cs, Service::Queue)?
        .ok_or_else(|| setup("storage.connection_string: needs AccountName or QueueEndpoint"))
}

/// Which service of the account a connection string is read for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Service {
    /// The queue service (`QueueEndpoint`, `<account>.queue.<suffix>`, Azurite port 10001).
    Queue,
    /// The blob service (`BlobEndpoint`, `<account>.blob.<suffix>`, Azurite port 10000).
    Blob,
}

impl Service {
    fn endpoint_key(self) -> &'static str {
        match self {
            Self::Queue => "queueendpoint",
            Self::Blob => "blobendpoint",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Queue => "queue",
            Self::Blob => "blob",
        }
    }

    fn dev_endpoint(self) -> &'static str {
        match self {
            Self::Queue => DEV_QUEUE_ENDPOINT,
            Self::Blob => DEV_BLOB_ENDPOINT,
        }
    }
}

/// The endpoint and authorization a connection string gives for `service`; `Ok(None)` when it
/// names neither that service's endpoint nor an account.
pub(super) fn parse_connection_string_for(
    cs: &str,
    service: Service,
) -> Result<Option<(Url, Auth)>, StoreError> {
    let mut fields = BTreeMap::new();
    let parts: Vec<&str> = cs
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    for (i, part) in parts.iter().enumerate() {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| setup(not_a_pair(i, parts.len(), part)))?;
        if let Some(name) = misspelt(k.trim()) {
            return Err(setup(format!(
                "storage.connection_string: part {} of {} starts with `{name}` but is not \
                 `{name}=...` (the part is not shown: it may hold a secret)",
                i + 1,
                parts.len()
            )));
        }
        fields.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let get = |k: &str| fields.get(k).filter(|v| !v.is_empty()).cloned();
    if get("usedevelopmentstorage").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        let endpoint = match (get("developmentstorageproxyuri"), service) {
            (Some(proxy), Service::Queue) => {
                format!("{}/{DEV_ACCOUNT}", proxy.trim_end_matches('/'))
            }
            _ => service.dev_endpoint().to_string(),
        };
        return Ok(Some((
            parse_endpoint(&endpoint, "storage.connection_string")?,
            Auth::Key {
                account: DEV_ACCOUNT.into(),
                key: decode_key(DEV_KEY)?,
            },
        )));
    }
    let account = get("accountname");
    // A string that spells out the queue endpoint (Azurite, a custom domain) but no blob
    // endpoint names no blob service: the account's default host would be a guess.
    if service == Service::Blob && get("blobendpoint").is_none() && get("queueendpoint").is_some() {
        return Ok(None);
    }
    let endpoint = match (get(service.endpoint_key()), &account) {
        (Some(e), _) => e,
        (None, Some(account)) => {
            let protocol = get("defaultendpointsprotocol").unwrap_or_else(|| "https".into());
            let suffix = get("endpointsuffix").unwrap_or_else(|| "core.windows.net".into());
            format!("{protocol}://{account}.{}.{suffix}", service.label())
        }
        (None, None) => return Ok(None),
    };
    let mut url = parse_endpoint(
        &endpoint,
        &format!("storage.connection_string {}", service.endpoint_key()),
    )?;
    if let Some(sas) = get("sharedaccesssignature") {
        url.set_query(Some(sas.trim_start_matches('?')));
        return Ok(Some((url, Auth::Sas)));
    }
    match (account, get("accountkey")) {
        (Some(account), Some(key)) => Ok(Some((
            url,
            Auth::Key {
                account,
                key: decode_key(&key)?,
            },
        ))),
        _ => Err(setup(
            "storage.connection_string: needs AccountName and AccountKey, or SharedAccessSignature",
        )),
    }
}

/// The names a connection string's parts have, as Azure writes them.
const PART_NAMES: [&str; 9] = [
    "DefaultEndpointsProtocol",
    "AccountName",
    "AccountKey",
    "SharedAccessSignature",
    "EndpointSuffix",
    "QueueEndpoint",
    "BlobEndpoint",
    "UseDevelopmentStorage",
    "DevelopmentStorageProxyUri",
];

/// The part name `name` begins with, when it is that name and more after a character no name
/// holds (`AccountKey:S3C...` before a base64 key's `=`, `AccountKey S3C...`).
fn misspelt(name: &str) -> Option<&'static str> {
    PART_NAMES.iter().copied().find(|known| {
        name.get(..known.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(known))
            && name[known.len()..]
                .chars()
                .next()
                .is_some_and(|c| !c.is_ascii_alphanumeric())
    })
}

/// Part `index` (of `count`) has no `=`. The part is never shown: it may be a key pasted
/// without its name, or `AccountKey:...` with a typo; its position and the name it starts with
/// say which one it is.
fn not_a_pair(index: usize, count: usize, part: &str) -> String {
    let hint = match misspelt(part) {
        Some(name) => format!(" (it starts with `{name}` but no `=` follows: write `{name}=...`)"),
        None => String::new(),
    };
    format!(
        "storage.connection_string: part {} of {count} is not a Key=Value pair{hint}; parts are \
         separated by `;` (the part is not shown: it may hold a secret)",
        index + 1
    )
}

pub(super) fn decode_key(key: &str) -> Result<Vec<u8>, StoreError> {
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| setup("storage.connection_string: AccountKey is not valid base64"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_endpoint_without_a_blob_endpoint_names_no_blob_service() {
        let cs = "DefaultEndpointsProtocol=http;AccountName=acme;AccountKey=a2V5;\
                  QueueEndpoint=http://127.0.0.1:10001/acme";
        assert!(parse_connection_string_for(cs, Service::Blob)
            .unwrap()
            .is_none());
        let with_blob = format!("{cs};BlobEndpoint=http://127.0.0.1:10000/acme");
        let (url, _) = parse_connection_string_for(&with_blob, Service::Blob)
            .unwrap()
            .unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:10000/acme");
        // An account alone: the public cloud's blob host, as for the queue.
        let account = "AccountName=acme;AccountKey=a2V5";
        let (url, _) = parse_connection_string_for(account, Service::Blob)
            .unwrap()
            .unwrap();
        assert_eq!(url.host_str(), Some("acme.blob.core.windows.net"));
    }

    #[test]
    fn the_account_comes_from_the_key_the_host_or_the_path() {
        let account = |u: &str| account_of(&Url::parse(u).unwrap());
        assert_eq!(
            account("https://acme.queue.core.windows.net"),
            Some("acme".into())
        );
        assert_eq!(
            account("https://acme.queue.core.chinacloudapi.cn/?sv=1&sig=x"),
            Some("acme".into())
        );
        assert_eq!(
            account("http://127.0.0.1:10001/devstoreaccount1"),
            Some("devstoreaccount1".into())
        );
        assert_eq!(
            account("http://localhost:10001/devstoreaccount1"),
            Some("devstoreaccount1".into())
        );
        assert_eq!(account("http://[::1]:10001/dev"), Some("dev".into()));
        // A custom domain names no account we can read.
        assert_eq!(account("https://queues.example.com/x"), None);
        assert_eq!(account("http://127.0.0.1:10001"), None);
    }

    #[test]
    fn development_storage_points_at_azurite_with_the_well_known_account() {
        let (url, auth) = parse_connection_string("UseDevelopmentStorage=true").unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:10001/devstoreaccount1");
        assert!(matches!(auth, Auth::Key { ref account, .. } if account == DEV_ACCOUNT));
    }

    #[test]
    fn an_endpoint_with_a_user_or_password_is_refused_without_showing_it() {
        for url in [
            "http://u:S3CRET@127.0.0.1:1/acct",
            "https://S3CRET@acct.queue.core.windows.net",
        ] {
            let err = parse_endpoint(url, "storage.queue_endpoint")
                .unwrap_err()
                .to_string();
            assert!(err.contains("must not hold a user or password"), "{err}");
            assert!(!err.contains("S3CRET"), "{err}");
            let cs = format!("AccountName=acct;AccountKey=a2V5;QueueEndpoint={url}");
            let err = parse_connection_string(&cs).unwrap_err().to_string();
            assert!(err.contains("must not hold a user or password"), "{err}");
            assert!(!err.contains("S3CRET"), "{err}");
        }
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
    fn the_blob_endpoint_is_the_named_one_or_the_accounts_never_a_guess() {
        let blob = |cs: &str| {
            parse_connection_string_for(cs, Service::Blob)
                .unwrap()
                .map(|(url, _)| url.to_string())
        };
        assert_eq!(
            blob("AccountName=acme;AccountKey=a2V5").as_deref(),
            Some("https://acme.blob.core.windows.net/")
        );
        assert_eq!(
            blob("UseDevelopmentStorage=true").as_deref(),
            Some("http://127.0.0.1:10000/devstoreaccount1")
        );
        assert_eq!(
            blob("AccountName=a;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:9/a").as_deref(),
            Some("http://127.0.0.1:9/a")
        );
        // An explicit queue endpoint without a blob endpoint: no blob service known.
        assert_eq!(
            blob("AccountName=a;AccountKey=a2V5;QueueEndpoint=http://127.0.0.1:9/a"),
            None
        );
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
        for (typo, secret, named) in [
            (
                "AccountName=acme;AccountKey:S3CRETKEY==",
                "S3CRETKEY",
                "`AccountKey`",
            ),
            (
                "AccountName=acme; accountkey S3CRETKEY==",
                "S3CRETKEY",
                "`AccountKey`",
            ),
            ("AccountName=acme;S3CRETKEY", "S3CRETKEY", "part 2 of 2"),
            (
                "AccountName=acme;AccountKey-S3CRETKEY",
                "S3CRETKEY",
                "`AccountKey`",
            ),
            (
                "QueueEndpoint=https://q/a;SharedAccessSignature:sv=1&sig=S3CRET",
                "S3CRET",
                "`SharedAccessSignature`",
            ),
        ] {
            let err = parse_connection_string(typo).err().unwrap().to_string();
            assert!(!err.contains(secret), "{typo}: {err}");
            assert!(err.contains(named), "{typo}: {err}");
        }
    }
}

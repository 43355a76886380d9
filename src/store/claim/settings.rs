//! The `[storage.claim_check]` settings: where payloads too large for a queue message go.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::checks::InvalidSetting;
use crate::secret::redact;
use crate::service::MAX_MESSAGE_BYTES;

/// The claim check: payloads whose message text would exceed `threshold_bytes` go to a blob in
/// `container`, and the message carries a reference (see [`ClaimRef`](crate::codec::ClaimRef)).
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ClaimCheckSettings {
    /// `true`: required (start-up fails without a blob endpoint); `false`: off (an oversized
    /// send fails); unset: on wherever a blob endpoint is known (the embedded store, a
    /// connection string naming an account or a `BlobEndpoint`, or `blob_endpoint`).
    pub enabled: Option<bool>,
    /// The blob service URL (`https://<account>.blob.core.windows.net`), optionally with a SAS
    /// token as its query. Without a SAS, the connection string's key or the Entra ID
    /// `storage.credential` authorizes (the identity needs "Storage Blob Data Contributor" on
    /// the container).
    #[serde(serialize_with = "crate::secret::serialize_redacted")]
    pub blob_endpoint: Option<String>,
    /// A SAS token for `blob_endpoint`, with or without the leading `?`.
    #[serde(serialize_with = "crate::secret::serialize_hidden")]
    pub sas_token: Option<SecretString>,
    /// The container payloads go to (3..=63 lowercase letters, digits and single hyphens);
    /// references naming another container are never fetched.
    pub container: String,
    /// Message text longer than this many bytes goes to a blob, 1024..=65536 (the queue's
    /// limit, the default).
    pub threshold_bytes: usize,
    /// The largest payload a worker accepts (after decompression), in bytes; a reference to a
    /// larger one is poisoned without downloading. 1 KiB..=4 GiB; default 256 MiB.
    pub max_payload_bytes: u64,
}

impl Default for ClaimCheckSettings {
    fn default() -> Self {
        Self {
            enabled: None,
            blob_endpoint: None,
            sas_token: None,
            container: default_container(),
            threshold_bytes: MAX_MESSAGE_BYTES,
            max_payload_bytes: 256 * 1024 * 1024,
        }
    }
}

impl ClaimCheckSettings {
    /// What to do so an oversized payload goes to a blob: with `enabled = false`, to remove that
    /// line; otherwise to name a blob endpoint. One sentence, for error messages.
    pub fn how_to_enable(&self) -> &'static str {
        if self.enabled == Some(false) {
            "the claim check is off (storage.claim_check.enabled = false): remove that line or \
             set it to true so large payloads go to Blob storage"
        } else {
            "turn the claim check on: set storage.claim_check.blob_endpoint (or a \
             storage.connection_string naming the account) so large payloads go to Blob storage"
        }
    }
}

/// The default container, `ebbflow-payloads`.
pub(crate) fn default_container() -> String {
    "ebbflow-payloads".into()
}

/// Written by hand for the blob endpoint, a URL that may carry a SAS query (shown through
/// `redact`); the SAS token is a `SecretString`, which shows none of itself.
impl std::fmt::Debug for ClaimCheckSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimCheckSettings")
            .field("enabled", &self.enabled)
            .field("blob_endpoint", &self.blob_endpoint.as_deref().map(redact))
            .field("sas_token", &self.sas_token)
            .field("container", &self.container)
            .field("threshold_bytes", &self.threshold_bytes)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .finish()
    }
}

impl ClaimCheckSettings {
    /// Checks every value, naming the key at fault.
    ///
    /// # Errors
    ///
    /// [`InvalidSetting`] naming the first key out of range (container name, sizes).
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let t = self.threshold_bytes;
        if !(1024..=MAX_MESSAGE_BYTES).contains(&t) {
            return Err(InvalidSetting::new(
                "storage.claim_check.threshold_bytes",
                t,
                format!("must be 1024..={MAX_MESSAGE_BYTES} (the queue's limit)"),
            ));
        }
        let m = self.max_payload_bytes;
        if !(1024..=4 << 30).contains(&m) {
            return Err(InvalidSetting::new(
                "storage.claim_check.max_payload_bytes",
                m,
                "must be 1024..=4294967296 (4 GiB)",
            ));
        }
        if let Err(why) = validate_container_name(&self.container) {
            return Err(InvalidSetting::new(
                "storage.claim_check.container",
                &self.container,
                why,
            ));
        }
        if self.sas_token.is_some() && self.blob_endpoint.is_none() {
            return Err(InvalidSetting::new(
                "storage.claim_check.sas_token",
                "<redacted>",
                "needs storage.claim_check.blob_endpoint",
            ));
        }
        Ok(())
    }
}

/// The service's container-name rule: 3..=63 characters, lowercase letters, digits and
/// hyphens, starting with a letter or digit, no two hyphens in a row, not ending in one.
pub(crate) fn validate_container_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !(3..=63).contains(&name.len())
        || !ok_chars
        || name.starts_with('-')
        || name.ends_with('-')
        || name.contains("--")
    {
        return Err(
            "a container name is 3..=63 lowercase letters, digits and single hyphens, \
             starting and ending with a letter or digit"
                .into(),
        );
    }
    Ok(())
}

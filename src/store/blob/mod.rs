//! Blob operations the claim check needs (one container), behind one trait, with two backends:
//! [`memory::MemoryBlobs`] (in-process, the embedded default and test double) and
//! `store::azure::AzureBlobs` on `azure_storage_blob` 1.x (Azure and Azurite), authorized every way
//! the queue side is.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use time::OffsetDateTime;

pub(crate) mod memory;

/// Metadata key: the queue the payload was sent to.
pub const META_QUEUE: &str = "ebbflow_queue";
/// Metadata key: when the message carrying the reference expires (RFC 3339), or `never`.
pub const META_EXPIRES: &str = "ebbflow_expires_at";
/// Metadata key: the payload's SHA-256 (hex), as in the reference.
pub(crate) const META_SHA256: &str = "ebbflow_sha256";

/// One blob as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// Its name in the container.
    pub name: String,
    /// Its length in bytes.
    pub size: u64,
    /// When it was created (or last written), if the backend says.
    pub created_at: Option<OffsetDateTime>,
    /// Its metadata (keys as written).
    pub metadata: BTreeMap<String, String>,
}

impl BlobInfo {
    /// When the message that carries it expires, from its metadata: `Some(None)` for never,
    /// `None` when the metadata does not say (not written by ebbflow).
    pub fn expires_at(&self) -> Option<Option<OffsetDateTime>> {
        let value = self.metadata.get(META_EXPIRES)?;
        if value == "never" {
            return Some(None);
        }
        OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(Some)
    }
}

/// What went wrong with a blob call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlobErrorKind {
    /// The blob (or its container) does not exist.
    NotFound,
    /// It is larger than the caller allows.
    TooLarge,
    /// A fault that may pass (throttling, timeouts, connections).
    Transient,
    /// The service refused our credentials.
    Unauthorized,
    /// The request is wrong, or the backend could not be set up.
    Invalid,
}

/// A blob call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("blob {blob}: {detail}")]
#[non_exhaustive]
pub struct BlobError {
    /// What kind of failure.
    pub kind: BlobErrorKind,
    /// `<container>/<name>` (or the container alone).
    pub blob: String,
    /// What happened (secrets redacted).
    pub detail: String,
}

impl BlobError {
    /// An error of `kind` on `blob`.
    pub fn new(kind: BlobErrorKind, blob: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            kind,
            blob: blob.into(),
            detail: detail.into(),
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        self.kind == BlobErrorKind::Transient
    }
}

/// A blob container's operations.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// The container's name.
    fn container(&self) -> &str;
    /// The storage account, when known: a reference is fetched only from it.
    fn account(&self) -> Option<String> {
        None
    }
    /// Creates the container if it does not exist yet.
    async fn create_if_missing(&self) -> Result<(), BlobError>;
    /// Writes `bytes` as blob `name` with `metadata` (overwriting).
    async fn put(
        &self,
        name: &str,
        bytes: Vec<u8>,
        metadata: BTreeMap<String, String>,
    ) -> Result<(), BlobError>;
    /// Reads blob `name`, refusing one longer than `max_len` bytes ([`BlobErrorKind::TooLarge`])
    /// before reading it.
    async fn get(&self, name: &str, max_len: u64) -> Result<Vec<u8>, BlobError>;
    /// Sets blob `name`'s [`META_EXPIRES`] metadata to `value` (RFC 3339 or `never`), keeping
    /// the rest.
    async fn set_expiry(&self, name: &str, value: &str) -> Result<(), BlobError>;
    /// Deletes blob `name`; `Ok(false)` when it was not there.
    async fn delete(&self, name: &str) -> Result<bool, BlobError>;
    /// Lists the blobs whose names start with `prefix`, with their metadata.
    async fn list(&self, prefix: &str) -> Result<Vec<BlobInfo>, BlobError>;
}

/// A shared blob store handle.
pub type Blobs = Arc<dyn BlobStore>;

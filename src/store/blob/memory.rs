//! The in-process blob container: the embedded default and the test double, with the same
//! semantics as the service (overwrite on put, not-found on a missing blob, listing by prefix
//! in name order with metadata).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{BlobError, BlobErrorKind, BlobInfo, BlobStore};

struct Stored {
    bytes: Arc<Vec<u8>>,
    created_at: OffsetDateTime,
    metadata: BTreeMap<String, String>,
}

/// An in-process blob container. Clones share the same blobs.
#[derive(Clone)]
pub struct MemoryBlobs {
    container: String,
    blobs: Arc<Mutex<BTreeMap<String, Stored>>>,
}

impl Default for MemoryBlobs {
    fn default() -> Self {
        Self::new("ebbflow-payloads")
    }
}

impl std::fmt::Debug for MemoryBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBlobs")
            .field("container", &self.container)
            .field("blobs", &self.len())
            .finish()
    }
}

impl MemoryBlobs {
    /// An empty container named `container`.
    pub fn new(container: &str) -> Self {
        Self {
            container: container.to_string(),
            blobs: Arc::default(),
        }
    }

    /// How many blobs it holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The names it holds, in order.
    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Overwrites a blob's bytes in place, keeping its metadata (for tests that tamper).
    pub fn tamper(&self, name: &str, bytes: Vec<u8>) -> bool {
        match self.lock().get_mut(name) {
            Some(stored) => {
                stored.bytes = Arc::new(bytes);
                true
            }
            None => false,
        }
    }

    /// Backdates a blob's creation (for tests of the orphan sweep).
    pub fn backdate(&self, name: &str, created_at: OffsetDateTime) -> bool {
        match self.lock().get_mut(name) {
            Some(stored) => {
                stored.created_at = created_at;
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Stored>> {
        self.blobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn full(&self, name: &str) -> String {
        format!("{}/{name}", self.container)
    }
}

#[async_trait]
impl BlobStore for MemoryBlobs {
    fn container(&self) -> &str {
        &self.container
    }

    async fn create_if_missing(&self) -> Result<(), BlobError> {
        Ok(())
    }

    async fn put(
        &self,
        name: &str,
        bytes: Vec<u8>,
        metadata: BTreeMap<String, String>,
    ) -> Result<(), BlobError> {
        if name.is_empty() || name.len() > 1024 {
            return Err(BlobError::new(
                BlobErrorKind::Invalid,
                self.full(name),
                "a blob name is 1..=1024 characters",
            ));
        }
        let stored = Stored {
            bytes: Arc::new(bytes),
            created_at: crate::store::now_utc(),
            metadata,
        };
        self.lock().insert(name.to_string(), stored);
        Ok(())
    }

    async fn get(&self, name: &str, max_len: u64) -> Result<Vec<u8>, BlobError> {
        let bytes = match self.lock().get(name) {
            Some(stored) => stored.bytes.clone(),
            None => {
                return Err(BlobError::new(
                    BlobErrorKind::NotFound,
                    self.full(name),
                    "no such blob",
                ))
            }
        };
        if bytes.len() as u64 > max_len {
            return Err(BlobError::new(
                BlobErrorKind::TooLarge,
                self.full(name),
                format!("{} bytes, more than the {max_len} allowed", bytes.len()),
            ));
        }
        // One copy out of the shared store, as a download makes one.
        Ok(bytes.as_ref().clone())
    }

    async fn set_expiry(&self, name: &str, value: &str) -> Result<(), BlobError> {
        match self.lock().get_mut(name) {
            Some(stored) => {
                stored
                    .metadata
                    .insert(super::META_EXPIRES.to_string(), value.to_string());
                Ok(())
            }
            None => Err(BlobError::new(
                BlobErrorKind::NotFound,
                self.full(name),
                "no such blob",
            )),
        }
    }

    async fn delete(&self, name: &str) -> Result<bool, BlobError> {
        Ok(self.lock().remove(name).is_some())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobInfo>, BlobError> {
        Ok(self
            .lock()
            .range(prefix.to_string()..)
            .take_while(|(name, _)| name.starts_with(prefix))
            .map(|(name, stored)| BlobInfo {
                name: name.clone(),
                size: stored.bytes.len() as u64,
                created_at: Some(stored.created_at),
                metadata: stored.metadata.clone(),
            })
            .collect())
    }
}

//! The claim check, as a layer on the store's forwarding base ([`crate::store::layer`]): every
//! send path (publishers, producers, the CLI, a release's fresh copy) goes through it without
//! knowing.
//!
//! - **Send.** With compression configured for the queue, the payload is compressed first, and
//!   one that then fits stays on the queue as an inline reference. Text longer than the
//!   threshold (by default the queue's 64 KiB) is uploaded to a blob (the payload's bytes, not
//!   their base64) named `<queue>/<date>/<uuid>`, with the message's expiry, queue and hash as
//!   metadata, and the message carries a reference ([`crate::codec::claim`]). A send whose
//!   reference cannot be stored deletes its blob again, unless the send's outcome is unknown.
//!   Text that already is a reference passes unchanged (a requeue, a release's copy).
//! - **Receive** ([`Queue::open_payload`]). A reference is resolved before decoding: size
//!   checked against `max_payload_bytes` before any download, downloaded once into one buffer,
//!   decompressed, its size and SHA-256 checked. A reference naming another container, a
//!   missing blob or one that does not match is [`PayloadError::Unusable`] (the listener
//!   poisons it at once); a blob fault that may pass is [`PayloadError::Transient`] (retried
//!   like a handler failure).
//! - **Lifetimes.** [`Queue::payload_done`] deletes the blob once the message was deleted as
//!   handled; [`Queue::payload_kept`] moves the blob's expiry to its poison copy's.
//!
//! [`sweep`] finds orphans (blobs whose message has expired) for `ebbflow blobs gc`.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use time::OffsetDateTime;
use tracing::{debug, warn};

use super::blob::{BlobErrorKind, BlobInfo, Blobs, META_EXPIRES, META_QUEUE, META_SHA256};
use super::layer::{Layered, QueueLayer, StoreLayer};
use super::{now_utc, Queue, SendOptions, SentMessage, StoreError, TimeToLive};
use crate::codec::claim::{ClaimRef, Compression};
use crate::codec::trace::TraceContext;
use crate::codec::Encoding;

pub(crate) mod settings;

pub use settings::ClaimCheckSettings;

/// The setting that caps a claim-check payload.
const MAX_PAYLOAD_KEY: &str = "storage.claim_check.max_payload_bytes";

/// Why a message's payload cannot be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// It never will be: a malformed reference, one naming another container, a missing or
    /// mismatching blob, a payload over the limit. The message is poisoned with this reason.
    #[error("{0}")]
    Unusable(String),
    /// A fault that may pass (the blob service throttled or did not answer).
    #[error("{0}")]
    Transient(String),
}

/// How one queue's payloads are written: its encoding (to get the payload bytes back from the
/// text) and its compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueFormat {
    /// The queue's text encoding.
    pub encoding: Encoding,
    /// Compression before the size decision.
    pub compression: Compression,
}

struct Shared {
    blobs: Option<Blobs>,
    threshold: usize,
    max_payload: u64,
    formats: BTreeMap<String, QueueFormat>,
    /// Said in the error of an oversized send when there is no blob container.
    how_to_enable: String,
}

/// The claim-check layer (a [`StoreLayer`]); [`crate::Worker`] puts it on every store.
#[derive(Clone)]
pub struct ClaimCheck {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ClaimCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimCheck")
            .field("container", &self.container())
            .field("threshold", &self.shared.threshold)
            .finish()
    }
}

impl ClaimCheck {
    /// A claim check writing to `blobs` (`None`: off, oversized sends fail) with the limits of
    /// `settings`; every queue base64 without compression until [`ClaimCheck::queue`] says
    /// otherwise.
    pub fn new(blobs: Option<Blobs>, settings: &ClaimCheckSettings) -> Self {
        Self {
            shared: Arc::new(Shared {
                blobs,
                threshold: settings.threshold_bytes,
                max_payload: settings.max_payload_bytes,
                formats: BTreeMap::new(),
                how_to_enable: settings.how_to_enable().into(),
            }),
        }
    }

    /// Sets queue `name`'s format (call before the layer is shared).
    pub fn queue(mut self, name: &str, format: QueueFormat) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.formats.insert(name.to_string(), format);
        }
        self
    }

    /// The blob container, when the claim check is on.
    pub fn container(&self) -> Option<&str> {
        self.shared.blobs.as_ref().map(|b| b.container())
    }

    /// The blob store, when the claim check is on.
    pub fn blobs(&self) -> Option<&Blobs> {
        self.shared.blobs.as_ref()
    }

    fn format(&self, queue: &str) -> QueueFormat {
        self.shared.formats.get(queue).copied().unwrap_or_default()
    }

    /// The payload `text` refers to (see [`Queue::open_payload`]), with this layer's container
    /// and limits: for the CLI's `poison show`.
    ///
    /// # Errors
    ///
    /// [`PayloadError`] when `text` is a malformed reference, its blob is missing or unreadable,
    /// or the payload fails its size or hash check.
    pub async fn open(&self, text: &str) -> Result<Option<Vec<u8>>, PayloadError> {
        open(&self.shared, text).await
    }

    /// [`Queue::payload_done`]: deletes the blob `text` refers to.
    async fn done(&self, text: &str) {
        let Some(blobs) = &self.shared.blobs else {
            return;
        };
        let Ok(Some(reference)) = ClaimRef::parse(TraceContext::unwrap(text).1) else {
            return;
        };
        let (Some(container), Some(blob)) = (&reference.container, &reference.blob) else {
            return;
        };
        if container != blobs.container() {
            return;
        }
        match blobs.delete(blob).await {
            Ok(_) => debug!(blob = %blob, "payload blob deleted after its message"),
            Err(e) => warn!(blob = %blob, error = %e,
                            "could not delete a handled message's blob; `ebbflow blobs gc` will"),
        }
    }

    /// [`Queue::payload_kept`]: moves the blob's expiry to the poison copy's.
    async fn kept(&self, text: &str, expires_at: Option<OffsetDateTime>) {
        let Some(blobs) = &self.shared.blobs else {
            return;
        };
        let Ok(Some(reference)) = ClaimRef::parse(TraceContext::unwrap(text).1) else {
            return;
        };
        let (Some(container), Some(blob)) = (&reference.container, &reference.blob) else {
            return;
        };
        if container != blobs.container() {
            return;
        }
        let value = match expires_at {
            None => "never".to_string(),
            Some(at) => at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| "never".into()),
        };
        match blobs.set_expiry(blob, &value).await {
            Ok(()) => {}
            // Nothing to keep: the message is poisoned because its blob is missing, and its
            // poison line says so (`payload_unavailable`).
            Err(e) if e.kind == BlobErrorKind::NotFound => {
                debug!(blob = %blob, "a poisoned message's blob is missing; no expiry to move");
            }
            Err(e) => warn!(blob = %blob, error = %e,
                            "could not extend a poisoned message's blob expiry; `ebbflow blobs gc` may remove it"),
        }
    }

    async fn send(
        &self,
        inner: &dyn Queue,
        text: &str,
        options: SendOptions,
    ) -> Result<SentMessage, StoreError> {
        let queue = inner.name();
        let format = self.format(queue);
        let shared = &self.shared;
        if format.compression == Compression::Identity && text.len() <= shared.threshold {
            return inner.send(text, options).await;
        }
        // A trace-context envelope stays in front; the claim check works on the text behind.
        let (trace, body) = TraceContext::unwrap(text);
        let wrapped = |t: String| match &trace {
            Some(cx) => cx.wrap(&t),
            None => t,
        };
        // The reference carries the producer's trace context too (the envelope's, else the
        // caller's, the producer's `send`, while traces are exported), so the consumer's
        // `process` continues the trace on queues without the envelope.
        let carried = trace
            .clone()
            .or_else(crate::codec::spans::caller_context)
            .or_else(|| crate::codec::spans::context_of(&tracing::Span::current()));
        // A reference already (a requeue, a release's copy): as it is.
        if crate::codec::claim::is_reference(body) {
            return inner.send(text, options).await;
        }
        let invalid = |detail: String| StoreError::Invalid {
            queue: queue.to_string(),
            detail,
            source: None,
        };
        let payload = format
            .encoding
            .decode(body)
            .map_err(|e| invalid(format!("cannot read the payload to store it: {e}")))?;
        // What every reader would poison is refused here, before any upload.
        if payload.len() as u64 > shared.max_payload {
            return Err(StoreError::PayloadTooLarge {
                queue: queue.to_string(),
                size: payload.len() as u64,
                limit: shared.max_payload,
                key: MAX_PAYLOAD_KEY,
            });
        }
        let compression = format.compression;
        let stored = compression.compress(&payload);
        if compression != Compression::Identity {
            let inline =
                ClaimRef::inline(&payload, compression, &stored).with_trace(carried.clone());
            let inline = wrapped(inline.to_text());
            if inline.len() <= shared.threshold && inline.len() < text.len() {
                return inner.send(&inline, options).await;
            }
            if text.len() <= shared.threshold {
                return inner.send(text, options).await;
            }
        }
        let Some(blobs) = &shared.blobs else {
            return Err(invalid(format!(
                "message text of {} bytes is above the {}-byte limit; {}",
                text.len(),
                shared.threshold,
                shared.how_to_enable
            )));
        };
        let name = format!(
            "{queue}/{}/{}.bin",
            now_utc().date(),
            uuid::Uuid::new_v4().simple()
        );
        let reference = ClaimRef::to_blob(
            blobs.container(),
            &name,
            &payload,
            compression,
            stored.len(),
        )
        .with_trace(carried);
        drop(payload);
        let mut metadata = BTreeMap::new();
        metadata.insert(META_QUEUE.to_string(), queue.to_string());
        metadata.insert(META_EXPIRES.to_string(), expiry_text(options.time_to_live));
        metadata.insert(META_SHA256.to_string(), reference.sha256.clone());
        blobs.put(&name, stored, metadata).await.map_err(|e| {
            let detail = if e.kind == BlobErrorKind::NotFound {
                format!(
                    "claim check upload failed: {e}; the blob container {} does not exist (a \
                     worker creates it at start-up while storage.create_queues is true)",
                    blobs.container()
                )
            } else {
                format!("claim check upload failed: {e}")
            };
            let source = Some(crate::store::Cause::new(e.clone()));
            if e.is_transient() {
                StoreError::Transient {
                    queue: queue.to_string(),
                    detail,
                    source,
                }
            } else {
                StoreError::Invalid {
                    queue: queue.to_string(),
                    detail,
                    source,
                }
            }
        })?;
        match inner.send(&wrapped(reference.to_text()), options).await {
            Ok(sent) => {
                debug!(queue, blob = %name, size = reference.size, "payload stored as a blob");
                Ok(sent)
            }
            Err(e) => {
                // A send that may have stored the message keeps its blob; one surely refused
                // leaves no orphan.
                if !matches!(e, StoreError::Unanswered { .. }) {
                    if let Err(de) = blobs.delete(&name).await {
                        warn!(queue, blob = %name, error = %de,
                              "could not delete the blob of a failed send; `ebbflow blobs gc` will");
                    }
                }
                Err(e)
            }
        }
    }
}

/// The blob metadata value of a message's expiry.
fn expiry_text(ttl: TimeToLive) -> String {
    match ttl.duration() {
        None => "never".into(),
        Some(d) => {
            let at = now_utc() + d;
            at.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| "never".into())
        }
    }
}

/// The blob container the claim check uses: `explicit` when given, else the one the settings
/// name ([`super::azure::AzureBlobs::from_settings`]), else for the embedded store an in-memory
/// one; `None` when the claim check is off (`storage.claim_check.enabled = false`, or no blob
/// endpoint is known). With `enabled = true` and no endpoint, an error says what to set. The
/// container is created when missing (`storage.create_queues`, always for the embedded store).
///
/// # Errors
///
/// [`StoreError`] when the claim check is required and no blob endpoint is known, the
/// endpoint is malformed, or the container cannot be created.
pub(crate) async fn open_blobs(
    settings: &super::settings::StorageSettings,
    kind: super::BackendKind,
    explicit: Option<Blobs>,
) -> Result<Option<Blobs>, StoreError> {
    let blobs = match explicit {
        Some(b) if settings.claim_check.enabled != Some(false) => Some(b),
        _ => blobs_from_settings(settings, kind)?,
    };
    let Some(blobs) = blobs else {
        return Ok(None);
    };
    if settings.create_queues || kind == super::BackendKind::Embedded {
        blobs.create_if_missing().await.map_err(|e| {
            StoreError::Setup(format!(
                "storage.claim_check.container: cannot create it: {e}"
            ))
        })?;
    }
    Ok(Some(blobs))
}

/// The blob container the settings name, without creating it (a worker creates it at start): the one
/// [`super::azure::AzureBlobs::from_settings`] finds, else for the embedded store an in-memory
/// one; `None` when the claim check is off; an error when it is required
/// (`enabled = true`) and no blob endpoint is known.
///
/// # Errors
///
/// [`StoreError`] when the claim check is required (`enabled = true`) and no blob endpoint is
/// known, or the endpoint is malformed.
pub fn blobs_from_settings(
    settings: &super::settings::StorageSettings,
    kind: super::BackendKind,
) -> Result<Option<Blobs>, StoreError> {
    let claim = &settings.claim_check;
    if claim.enabled == Some(false) {
        return Ok(None);
    }
    let blobs: Option<Blobs> = match super::azure::AzureBlobs::from_settings(settings)? {
        Some(b) => Some(Arc::new(b)),
        None if kind == super::BackendKind::Embedded => Some(Arc::new(
            super::blob::memory::MemoryBlobs::new(&claim.container),
        )),
        None => None,
    };
    if blobs.is_none() && claim.enabled == Some(true) {
        return Err(StoreError::Setup(
            "storage.claim_check.enabled = true needs a blob endpoint: set \
             storage.claim_check.blob_endpoint, or a storage.connection_string naming the \
             account"
                .into(),
        ));
    }
    Ok(blobs)
}

/// Reads a reference and fetches its payload (see [`Queue::open_payload`]).
async fn open(shared: &Shared, text: &str) -> Result<Option<Vec<u8>>, PayloadError> {
    let (_, text) = TraceContext::unwrap(text);
    let reference = match ClaimRef::parse(text) {
        Ok(None) => return Ok(None),
        Ok(Some(r)) => r,
        Err(e) => return Err(PayloadError::Unusable(e.to_string())),
    };
    let limit = shared.max_payload;
    if reference.size > limit {
        return Err(PayloadError::Unusable(format!(
            "payload of {} bytes is above storage.claim_check.max_payload_bytes ({limit}); \
             raise it to accept this message",
            reference.size
        )));
    }
    let compression = reference.content_encoding;
    // A stored form can be a little larger than its payload (incompressible data).
    let stored_limit = limit.saturating_add(limit / 16 + 1024);
    if reference.stored_len() > stored_limit {
        return Err(PayloadError::Unusable(format!(
            "stored payload of {} bytes is above the limit ({stored_limit})",
            reference.stored_len()
        )));
    }
    let stored = match (&reference.container, &reference.blob, &reference.data) {
        (_, _, Some(data)) => base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| PayloadError::Unusable(format!("inline data is not base64: {e}")))?,
        (Some(container), Some(blob), None) => {
            let Some(blobs) = &shared.blobs else {
                return Err(PayloadError::Unusable(format!(
                    "the message refers to blob {container}/{blob}, but this worker has no \
                     claim check; {}",
                    shared.how_to_enable
                )));
            };
            if container != blobs.container() {
                return Err(PayloadError::Unusable(format!(
                    "the reference names container {container}; payloads are read only from \
                     the configured container {} (storage.claim_check.container)",
                    blobs.container()
                )));
            }
            if blob.is_empty() || blob.len() > 1024 || blob.split('/').any(|s| s == "..") {
                return Err(PayloadError::Unusable(format!(
                    "the reference names an invalid blob name `{blob}`"
                )));
            }
            let got = blobs.get(blob, reference.stored_len()).await;
            match got {
                Ok(bytes) => bytes,
                Err(e) => {
                    return Err(match e.kind {
                        BlobErrorKind::NotFound => PayloadError::Unusable(format!(
                            "payload blob {container}/{blob} is missing (deleted, removed by a \
                             lifecycle rule or `ebbflow blobs gc`, or never uploaded): it cannot \
                             come back, so the message is not retried"
                        )),
                        BlobErrorKind::TooLarge => PayloadError::Unusable(format!(
                            "payload blob does not match its reference: {e}"
                        )),
                        BlobErrorKind::Transient | BlobErrorKind::Unauthorized => {
                            PayloadError::Transient(e.to_string())
                        }
                        BlobErrorKind::Invalid => PayloadError::Unusable(e.to_string()),
                    })
                }
            }
        }
        // `ClaimRef::parse` admits no other shape.
        _ => return Err(PayloadError::Unusable("reference without a payload".into())),
    };
    if stored.len() as u64 != reference.stored_len() {
        return Err(PayloadError::Unusable(format!(
            "payload at {} does not match its reference: {} bytes stored, the reference says {}",
            reference.location(),
            stored.len(),
            reference.stored_len()
        )));
    }
    let expected = usize::try_from(reference.size).unwrap_or(usize::MAX);
    let payload = compression
        .decompress(stored, expected, reference.size)
        .map_err(|e| PayloadError::Unusable(format!("payload at {}: {e}", reference.location())))?;
    reference.verify(&payload).map_err(|e| {
        PayloadError::Unusable(format!(
            "payload at {} does not match its reference: {e}",
            reference.location()
        ))
    })?;
    Ok(Some(payload))
}

impl QueueLayer for ClaimCheck {
    fn send<'a>(
        &'a self,
        inner: &'a dyn Queue,
        text: &'a str,
        options: SendOptions,
    ) -> impl std::future::Future<Output = Result<SentMessage, StoreError>> + Send + 'a {
        ClaimCheck::send(self, inner, text, options)
    }

    fn open_payload<'a>(
        &'a self,
        _inner: &'a dyn Queue,
        text: &'a str,
    ) -> impl std::future::Future<Output = Result<Option<Vec<u8>>, PayloadError>> + Send + 'a {
        open(&self.shared, text)
    }

    fn payload_done<'a>(
        &'a self,
        _inner: &'a dyn Queue,
        text: &'a str,
    ) -> impl std::future::Future<Output = ()> + Send + 'a {
        self.done(text)
    }

    fn payload_kept<'a>(
        &'a self,
        _inner: &'a dyn Queue,
        text: &'a str,
        expires_at: Option<OffsetDateTime>,
    ) -> impl std::future::Future<Output = ()> + Send + 'a {
        self.kept(text, expires_at)
    }
}

impl StoreLayer for ClaimCheck {
    fn wrap(&self, queue: Arc<dyn Queue>) -> Arc<dyn Queue> {
        Layered::wrap(queue, self.clone())
    }
}

/// How long after its message's expiry a blob counts as an orphan: the expiry is stamped just
/// before the message is sent, so the message lives a little longer than it says.
pub const EXPIRY_GRACE: time::Duration = time::Duration::hours(1);

/// What [`sweep`] found or removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Blobs whose message has expired (or, without an expiry, older than the cut-off):
    /// removed unless it was a dry run.
    pub orphans: Vec<BlobInfo>,
    /// Blobs kept: still within their message's life, or not written by ebbflow.
    pub kept: usize,
}

/// Finds orphaned payload blobs in `blobs`: those whose message expired more than
/// [`EXPIRY_GRACE`] ago (per their metadata),
/// and those ebbflow wrote without an expiry that are older than `older_than`. Blobs without
/// ebbflow's metadata are never touched. Deletes them unless `dry_run`.
///
/// # Errors
///
/// The [`BlobError`](super::blob::BlobError) of a failed list or delete; blobs deleted before
/// it stay deleted.
pub async fn sweep(
    blobs: &Blobs,
    older_than: std::time::Duration,
    dry_run: bool,
) -> Result<Sweep, super::blob::BlobError> {
    let now = now_utc();
    let mut out = Sweep::default();
    for blob in blobs.list("").await? {
        let ours = blob.metadata.contains_key(META_QUEUE);
        let orphan = ours
            && match blob.expires_at() {
                Some(Some(at)) => at + EXPIRY_GRACE < now,
                Some(None) => false,
                None => blob.created_at.is_some_and(|c| c + older_than < now),
            };
        if orphan {
            if !dry_run {
                blobs.delete(&blob.name).await?;
            }
            out.orphans.push(blob);
        } else {
            out.kept += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;

//! The claim-check reference: the small JSON text a queue message carries instead of a payload
//! too large for the queue (the payload itself is in a blob), and the optional compression of
//! payloads.
//!
//! A reference is the message text itself, always plain JSON (never base64, whatever the
//! queue's encoding), one object whose marker key `ebbflow_claim` holds the format version:
//!
//! ```json
//! {
//!   "ebbflow_claim": 1,
//!   "container": "ebbflow-payloads",
//!   "blob": "orders/2026-12-07/6f1c0d0e-….bin",
//!   "size": 5242880,
//!   "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
//!   "content_encoding": "gzip",
//!   "stored_size": 1048576
//! }
//! ```
//!
//! - `size`: the payload's length in bytes, after decompression (what the handler gets).
//! - `sha256`: lowercase hex SHA-256 of the payload (after decompression).
//! - `content_encoding`: `identity` (the blob holds the payload bytes as they are), `gzip`
//!   (RFC 1952) or `zstd` (RFC 8878); absent means `identity`.
//! - `stored_size`: the blob's length in bytes (the compressed length; absent: `size`).
//! - `container` and `blob`: where the payload is. The container must be the one the reader is
//!   configured with: a reference is never fetched from anywhere else, and never from a URL.
//!
//! - `trace` (optional): the W3C Trace Context of the producer's `send` span,
//!   `{"traceparent": "00-…", "tracestate": "…"}` (see [`super::trace`]). A consumer that
//!   exports traces continues that trace in its `process` span, with or without the queue's
//!   `trace_context` envelope. A missing or malformed `trace` is ignored, never an error.
//!
//! Instead of `container`/`blob`, a reference may carry its (compressed) payload inline, as
//! standard base64 in `data`: a payload that compresses below the queue's limit stays on the
//! queue.
//!
//! The blob holds the payload bytes themselves (compressed or not), not the queue's encoding
//! of them: a producer in another language uploads its bytes, hashes them, and enqueues this
//! JSON as the message text. Unknown keys are ignored, so later versions may add some.

use std::io::{Read, Write};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// The key that marks a message text as a claim-check reference.
pub(crate) const MARKER: &str = "ebbflow_claim";
/// The format version this crate writes and reads.
pub(crate) const VERSION: u32 = 1;

/// How a payload is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Compression {
    /// Not compressed.
    #[default]
    Identity,
    /// gzip (RFC 1952).
    Gzip,
    /// Zstandard (RFC 8878), level 3.
    Zstd,
}

impl Compression {
    /// `identity`, `gzip` or `zstd`, as written in references and settings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
        }
    }

    /// Compresses `payload` (identity: a copy).
    pub fn compress(self, payload: &[u8]) -> Vec<u8> {
        match self {
            Self::Identity => payload.to_vec(),
            Self::Gzip => {
                let mut encoder = flate2::write::GzEncoder::new(
                    Vec::with_capacity(payload.len() / 2),
                    flate2::Compression::fast(),
                );
                // Writing to a Vec cannot fail.
                let _ = encoder.write_all(payload);
                encoder.finish().unwrap_or_default()
            }
            Self::Zstd => zstd::bulk::compress(payload, 3).unwrap_or_default(),
        }
    }

    /// Decompresses `stored` into at most `limit` bytes (`expected` is the length to
    /// preallocate). More than `limit` bytes, or a corrupt stream, is an error.
    pub(crate) fn decompress(
        self,
        stored: Vec<u8>,
        expected: usize,
        limit: u64,
    ) -> Result<Vec<u8>, String> {
        let mut out =
            Vec::with_capacity(expected.min(usize::try_from(limit).unwrap_or(usize::MAX)));
        let read = match self {
            Self::Identity => return Ok(stored),
            Self::Gzip => flate2::read::GzDecoder::new(&stored[..])
                .take(limit.saturating_add(1))
                .read_to_end(&mut out),
            Self::Zstd => zstd::stream::read::Decoder::new(&stored[..])
                .and_then(|d| d.take(limit.saturating_add(1)).read_to_end(&mut out)),
        };
        match read {
            Ok(n) if n as u64 > limit => Err(format!(
                "the {} stream inflates past {limit} bytes",
                self.as_str()
            )),
            Ok(_) => Ok(out),
            Err(e) => Err(format!("corrupt {} stream: {e}", self.as_str())),
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A claim-check reference (see the module docs for the format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRef {
    /// Format version: 1.
    pub ebbflow_claim: u32,
    /// The blob container (with `blob`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The blob's name in the container (with `container`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
    /// The payload inline, standard base64 of the stored (compressed) bytes (instead of a blob).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// The payload's length in bytes, after decompression.
    pub size: u64,
    /// Lowercase hex SHA-256 of the payload, after decompression.
    pub sha256: String,
    /// How the stored bytes are compressed.
    #[serde(default)]
    pub content_encoding: Compression,
    /// The stored (compressed) length in bytes; absent: `size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_size: Option<u64>,
    /// The producer's trace context (its `send` span), when it exported traces.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::trace::lenient"
    )]
    pub trace: Option<super::TraceContext>,
}

/// A text that carries the marker but is not a reference this crate can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid claim-check reference: {0}")]
pub struct BadReference(pub String);

impl ClaimRef {
    /// A reference to `blob` in `container` for `payload`, stored as `stored_size` bytes
    /// compressed with `compression`.
    pub fn to_blob(
        container: &str,
        blob: &str,
        payload: &[u8],
        compression: Compression,
        stored_size: usize,
    ) -> Self {
        Self {
            ebbflow_claim: VERSION,
            container: Some(container.to_string()),
            blob: Some(blob.to_string()),
            data: None,
            size: payload.len() as u64,
            sha256: sha256_hex(payload),
            content_encoding: compression,
            stored_size: (compression != Compression::Identity).then_some(stored_size as u64),
            trace: None,
        }
    }

    /// A reference carrying `stored` (the compressed `payload`) inline.
    pub fn inline(payload: &[u8], compression: Compression, stored: &[u8]) -> Self {
        Self {
            ebbflow_claim: VERSION,
            container: None,
            blob: None,
            data: Some(base64::engine::general_purpose::STANDARD.encode(stored)),
            size: payload.len() as u64,
            sha256: sha256_hex(payload),
            content_encoding: compression,
            stored_size: Some(stored.len() as u64),
            trace: None,
        }
    }

    /// The same reference carrying `trace` (the producer's trace context; `None`: none).
    pub fn with_trace(mut self, trace: Option<super::TraceContext>) -> Self {
        self.trace = trace;
        self
    }

    /// The reference as message text (compact JSON).
    pub fn to_text(&self) -> String {
        // A struct of strings and numbers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads `text` as a reference: `Ok(None)` when it is not one (no marker key at the top of
    /// a JSON object: any other text, JSON included, is a plain message); an error when it
    /// carries the marker but is malformed or of an unknown version.
    ///
    /// # Errors
    ///
    /// [`BadReference`] when `text` carries the claim-check marker but is malformed or of an
    /// unknown version.
    pub fn parse(text: &str) -> Result<Option<Self>, BadReference> {
        let trimmed = text.trim_start();
        // Cheap first: a reference is a JSON object naming the marker.
        if !trimmed.starts_with('{') || !trimmed.contains(MARKER) {
            return Ok(None);
        }
        let Ok(serde_json::Value::Object(object)) = serde_json::from_str(trimmed) else {
            return Ok(None);
        };
        if !object.contains_key(MARKER) {
            return Ok(None);
        }
        let version = object.get(MARKER).and_then(|v| v.as_u64());
        if version != Some(u64::from(VERSION)) {
            return Err(BadReference(format!(
                "version {} (this worker reads version {VERSION})",
                object
                    .get(MARKER)
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            )));
        }
        let reference: Self = serde_json::from_value(serde_json::Value::Object(object))
            .map_err(|e| BadReference(e.to_string()))?;
        match (&reference.container, &reference.blob, &reference.data) {
            (Some(_), Some(_), None) | (None, None, Some(_)) => {}
            _ => {
                return Err(BadReference(
                    "needs either `container` and `blob`, or `data`".into(),
                ))
            }
        }
        let hex = &reference.sha256;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadReference("`sha256` is not 64 hex digits".into()));
        }
        Ok(Some(reference))
    }

    /// The stored length: `stored_size`, else `size`.
    pub fn stored_len(&self) -> u64 {
        self.stored_size.unwrap_or(self.size)
    }

    /// Checks `payload` (after decompression) against `size` and `sha256`.
    pub(crate) fn verify(&self, payload: &[u8]) -> Result<(), String> {
        if payload.len() as u64 != self.size {
            return Err(format!(
                "payload is {} bytes, the reference says {}",
                payload.len(),
                self.size
            ));
        }
        if !sha256_hex(payload).eq_ignore_ascii_case(&self.sha256) {
            return Err("payload's SHA-256 does not match the reference".into());
        }
        Ok(())
    }

    /// Where the payload is, for logs and the CLI: `blob <container>/<name>` or `inline`.
    pub fn location(&self) -> String {
        match (&self.container, &self.blob) {
            (Some(c), Some(b)) => format!("blob {c}/{b}"),
            _ => "inline".into(),
        }
    }
}

/// Whether `text` is a claim-check reference (well-formed or not).
pub(crate) fn is_reference(text: &str) -> bool {
    !matches!(ClaimRef::parse(text), Ok(None))
}

/// Lowercase hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    let digest = sha2::Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_round_trips_and_plain_texts_are_not_references() {
        let payload = vec![7u8; 1000];
        let r = ClaimRef::to_blob("c", "orders/x.bin", &payload, Compression::Identity, 1000);
        let text = r.to_text();
        assert!(text.starts_with("{\"ebbflow_claim\":1,"), "{text}");
        assert_eq!(ClaimRef::parse(&text).unwrap(), Some(r.clone()));
        r.verify(&payload).unwrap();
        assert!(r.verify(&payload[1..]).is_err());
        for plain in [
            "",
            "hello",
            "eyJhIjoxfQ==",
            "{\"a\":1}",
            "{not json ebbflow_claim",
        ] {
            assert_eq!(ClaimRef::parse(plain).unwrap(), None, "{plain}");
        }
    }

    #[test]
    fn a_marked_but_malformed_reference_is_an_error_not_a_plain_message() {
        for bad in [
            r#"{"ebbflow_claim":2,"size":1,"sha256":"x"}"#,
            r#"{"ebbflow_claim":1,"size":1}"#,
            r#"{"ebbflow_claim":1,"size":1,"sha256":"ab","container":"c","blob":"b"}"#,
            r#"{"ebbflow_claim":1,"size":1,"sha256":"0000000000000000000000000000000000000000000000000000000000000000"}"#,
        ] {
            assert!(ClaimRef::parse(bad).is_err(), "{bad}");
            assert!(is_reference(bad));
        }
    }

    #[test]
    fn compression_round_trips_and_stops_at_the_limit() {
        let payload: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 97).to_le_bytes())
            .collect();
        for c in [Compression::Identity, Compression::Gzip, Compression::Zstd] {
            let stored = c.compress(&payload);
            if c != Compression::Identity {
                assert!(stored.len() < payload.len() / 4, "{c}: {}", stored.len());
            }
            let back = c
                .decompress(stored.clone(), payload.len(), 1 << 20)
                .unwrap();
            assert_eq!(back, payload, "{c}");
            if c != Compression::Identity {
                assert!(c.decompress(stored, 0, 1000).is_err(), "{c}");
                assert!(c.decompress(b"garbage".to_vec(), 0, 1000).is_err(), "{c}");
            }
        }
    }
}

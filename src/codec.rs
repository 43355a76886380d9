//! Message encodings: how a payload's bytes are written as queue message text ([`Encoding`]);
//! the claim-check reference format and payload compression ([`ClaimRef`], [`Compression`]);
//! the W3C trace-context format carried in messages, claim-check references and bus events
//! ([`TraceContext`]). The spans of a message's way, after the OpenTelemetry messaging
//! conventions, are made here too (crate-internal; the public part is re-exported by the
//! observability room's `traces` module).

pub(crate) mod claim;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

pub(crate) mod spans;
pub(crate) mod trace;

pub use claim::{BadReference, ClaimRef, Compression};
pub use trace::{TraceContext, TraceContextError};

/// How message text is encoded on the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Encoding {
    /// Standard base64 of the payload bytes: what Azure Functions and most SDK samples write,
    /// and safe for any bytes.
    #[default]
    Base64,
    /// The payload text as it is (must be valid UTF-8).
    None,
}

/// Message text that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message text is not valid {encoding}: {detail}")]
#[non_exhaustive]
pub struct DecodeError {
    /// The encoding that was expected.
    pub encoding: &'static str,
    /// What went wrong.
    pub detail: String,
}

impl Encoding {
    /// This encoding's config name.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Base64 => "base64",
            Encoding::None => "none",
        }
    }

    /// Encodes payload bytes as message text. `None` requires UTF-8; invalid sequences are an
    /// error rather than being silently replaced.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] with [`Encoding::None`] when `payload` is not valid UTF-8.
    pub fn encode(self, payload: &[u8]) -> Result<String, DecodeError> {
        match self {
            Encoding::Base64 => Ok(base64::engine::general_purpose::STANDARD.encode(payload)),
            Encoding::None => std::str::from_utf8(payload)
                .map(str::to_owned)
                .map_err(|e| DecodeError {
                    encoding: "utf-8",
                    detail: e.to_string(),
                }),
        }
    }

    /// Decodes message text into payload bytes.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] when `text` is not valid base64 ([`Encoding::Base64`]).
    pub fn decode(self, text: &str) -> Result<Vec<u8>, DecodeError> {
        match self {
            Encoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| DecodeError {
                    encoding: "base64",
                    detail: e.to_string(),
                }),
            Encoding::None => Ok(text.as_bytes().to_vec()),
        }
    }
}

impl std::fmt::Display for Encoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_any_bytes() {
        let bytes: Vec<u8> = (0..=255).collect();
        let text = Encoding::Base64.encode(&bytes).unwrap();
        assert_eq!(Encoding::Base64.decode(&text).unwrap(), bytes);
        assert_eq!(
            Encoding::Base64.encode(b"{\"a\":1}").unwrap(),
            "eyJhIjoxfQ=="
        );
    }

    #[test]
    fn base64_rejects_garbage_and_none_rejects_non_utf8() {
        let err = Encoding::Base64.decode("not base64!").unwrap_err();
        assert_eq!(err.encoding, "base64");
        assert!(Encoding::None.encode(&[0xff, 0xfe]).is_err());
        assert_eq!(
            Encoding::None.decode("plain <text>").unwrap(),
            b"plain <text>"
        );
    }
}

//! The `[bus]` keys of durable delivery, bounds and signing, each a type checked while parsing
//! (kept apart from `settings.rs`, which holds the transport and identity keys).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::settings::Bounded;
use crate::checks::InvalidValue;

/// How long a fan-out event (unicast, multicast, role) waits for an addressed instance that is
/// away, and how long a departed instance's place in the streams is kept: 1s..=7d.
pub type Retention = Bounded<1_000, 604_800_000>;

/// An integer between `MIN` and `MAX`, checked while parsing (the key is named by the loader):
/// the shared [`BoundedU64`](crate::checks::BoundedU64).
pub use crate::checks::BoundedU64 as Count;

/// The largest envelope (its JSON, in bytes) the bus sends or accepts: 1 KiB..=64 MiB.
pub type EnvelopeLimit = Count<1_024, 67_108_864>;
/// Deliveries of a competing-consumer event before it moves to the poison stream: 1..=1000.
pub type MaxDeliveries = Count<1, 1_000>;
/// Entries a competing-consumer stream holds before publishing to it fails with
/// [`super::BusError::Full`]: 1..=100,000,000.
pub type MaxBacklog = Count<1, 100_000_000>;

/// A shared key for signed envelopes (HMAC-SHA256): at least 32 characters. Never shown: kept
/// as a [`SecretString`] (`Debug` shows none of it), and `Serialize` writes `<redacted>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct SigningKey(SecretString);

impl SigningKey {
    /// `text` as a key.
    ///
    /// # Errors
    /// [`InvalidValue`] when it is shorter than 32 characters (the error shows its length,
    /// never the key).
    pub fn new(text: impl Into<String>) -> Result<Self, InvalidValue> {
        let text = text.into();
        if text.chars().count() < 32 {
            return Err(InvalidValue::new(
                format!("a key of {} characters", text.chars().count()),
                "must be at least 32 characters: use random ones (e.g. `openssl rand -base64 32`)",
            ));
        }
        Ok(Self(text.into()))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        self.0.expose_secret().as_bytes()
    }
}

/// Equal when the keys are (settings compare; signatures use `bytes`).
impl PartialEq for SigningKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for SigningKey {}

impl TryFrom<String> for SigningKey {
    type Error = InvalidValue;
    fn try_from(text: String) -> Result<Self, InvalidValue> {
        Self::new(text)
    }
}

impl Serialize for SigningKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(crate::secret::REDACTED)
    }
}

pub(super) fn default_retention() -> Retention {
    Retention::new(Duration::from_secs(600)).expect("10 minutes is in range")
}

pub(super) fn default_job_retention() -> Retention {
    Retention::new(Duration::from_secs(3_600)).expect("1 hour is in range")
}

pub(super) fn default_envelope_limit() -> EnvelopeLimit {
    EnvelopeLimit::new(1_048_576).expect("1 MiB is in range")
}

pub(super) fn default_max_deliveries() -> MaxDeliveries {
    MaxDeliveries::new(5).expect("5 is in range")
}

pub(super) fn default_max_backlog() -> MaxBacklog {
    MaxBacklog::new(1_000_000).expect("1,000,000 is in range")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_keys_are_checked_while_parsing() {
        assert_eq!(
            serde_json::from_str::<MaxDeliveries>("0")
                .unwrap_err()
                .to_string(),
            "0: must be 1..=1000"
        );
        assert_eq!(
            serde_json::from_str::<EnvelopeLimit>("2048").unwrap().get(),
            2048
        );
        let err = serde_json::from_str::<SigningKey>("\"short-secret\"").unwrap_err();
        assert!(!err.to_string().contains("short-secret"), "{err}");
        let key: SigningKey = serde_json::from_str("\"0123456789abcdef0123456789abcdef\"").unwrap();
        assert!(!format!("{key:?}").contains("0123"));
        assert_eq!(serde_json::to_string(&key).unwrap(), "\"<redacted>\"");
    }
}

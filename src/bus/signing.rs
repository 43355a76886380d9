//! Signed envelopes and presence: an HMAC-SHA256 over the exact JSON sent, with a key shared by
//! the instances (`bus.signing_key`; `bus.signing_previous_key` is still accepted while a new key
//! rolls out). Without a key nothing is signed or checked, and an envelope's `from` and `role`
//! are what its sender says.
//!
//! On the wire a signed text is `s1:<base64 HMAC>\n<json>` (pub/sub payloads and presence
//! records) or the JSON with the HMAC in the stream entry's `sig` field.

use base64::Engine as _;
use hmac::{Hmac, Mac};

use super::options::SigningKey;

type HmacSha256 = Hmac<sha2::Sha256>;

/// The prefix of a signed text.
const PREFIX: &str = "s1:";

/// Signs with the first key and accepts any of them.
#[derive(Clone)]
pub(crate) struct Signer {
    keys: Vec<SigningKey>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} keys)", self.keys.len())
    }
}

impl Signer {
    /// The signer of `settings`, `None` without a signing key.
    pub(crate) fn from_settings(settings: &super::BusSettings) -> Option<Self> {
        let key = settings.signing_key.clone()?;
        let mut keys = vec![key];
        keys.extend(settings.signing_previous_key.clone());
        Some(Self { keys })
    }

    fn mac(key: &SigningKey, data: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(key.bytes()).expect("HMAC takes any key length");
        mac.update(data);
        mac
    }

    /// The signature of `data` (base64).
    pub(crate) fn sign(&self, data: &[u8]) -> String {
        let tag = Self::mac(&self.keys[0], data).finalize().into_bytes();
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(tag)
    }

    /// Whether `sig` signs `data` under one of the keys (compared in constant time).
    pub(crate) fn verify(&self, data: &[u8], sig: &str) -> bool {
        let Ok(tag) = base64::engine::general_purpose::STANDARD_NO_PAD.decode(sig.trim()) else {
            return false;
        };
        self.keys
            .iter()
            .any(|k| Self::mac(k, data).verify_slice(&tag).is_ok())
    }

    /// `json` with its signature in front.
    pub(crate) fn seal(&self, json: &str) -> String {
        format!("{PREFIX}{}\n{json}", self.sign(json.as_bytes()))
    }
}

/// Opens a text that may be sealed: with a signer, only a correctly signed one (its JSON);
/// without, the text itself (a sealed text's JSON, if it is one).
pub(crate) fn open<'a>(signer: Option<&Signer>, text: &'a str) -> Option<&'a str> {
    let sealed = text
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once('\n'));
    match (signer, sealed) {
        (Some(s), Some((sig, json))) => s.verify(json.as_bytes(), sig).then_some(json),
        (Some(_), None) => None,
        (None, Some((_, json))) => Some(json),
        (None, None) => Some(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(keys: &[&str]) -> Signer {
        Signer {
            keys: keys.iter().map(|k| SigningKey::new(*k).unwrap()).collect(),
        }
    }

    #[test]
    fn sealed_texts_open_only_under_a_known_key() {
        let (old, new) = ("o".repeat(32), "n".repeat(32));
        let before = signer(&[&old]);
        let rolling = signer(&[&new, &old]);
        let sealed = before.seal(r#"{"a":1}"#);
        assert_eq!(open(Some(&rolling), &sealed), Some(r#"{"a":1}"#));
        assert_eq!(open(None, &sealed), Some(r#"{"a":1}"#));
        assert_eq!(open(Some(&rolling), r#"{"a":1}"#), None, "unsigned");
        let forged = sealed.replace(r#""a":1"#, r#""a":2"#);
        assert_eq!(open(Some(&rolling), &forged), None, "altered");
        let other = signer(&["x".repeat(32).as_str()]).seal("{}");
        assert_eq!(open(Some(&rolling), &other), None, "unknown key");
        assert!(rolling.verify(b"z", &before.sign(b"z")));
        assert!(
            !before.verify(b"z", &rolling.sign(b"z")),
            "new key not yet known"
        );
    }
}

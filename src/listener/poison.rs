//! The poison message format.
//!
//! A poisoned message is copied to the poison queue as one JSON document (encoded with the
//! source queue's encoding), and only then deleted from its queue:
//!
//! ```json
//! {
//!   "ebbflow_poison": 1,
//!   "queue": "orders",
//!   "message_id": "5e0c…",
//!   "reason": "max_dequeue_count_exceeded",
//!   "error": "database unavailable",
//!   "dequeue_count": 5,
//!   "inserted_at": "2026-11-23T08:00:00Z",
//!   "expires_at": "2026-11-30T08:00:00Z",
//!   "poisoned_at": "2026-11-23T08:01:10Z",
//!   "body": "eyJpZCI6N30="
//! }
//! ```
//!
//! `body` is the original message text exactly as it was on the queue (still in the queue's
//! encoding), so requeueing it restores the original byte for byte.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::codec::Encoding;
use crate::store::{ReceivedMessage, MAX_MESSAGE_BYTES};

/// Why a message was poisoned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoisonReason {
    /// It was received more often than `max_dequeue_count`, or failed on its last allowed try.
    MaxDequeueCountExceeded,
    /// Its text or payload could not be decoded.
    Undecodable,
    /// The handler said no retry can fix it.
    Rejected,
}

impl PoisonReason {
    /// The snake_case name used in the envelope and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxDequeueCountExceeded => "max_dequeue_count_exceeded",
            Self::Undecodable => "undecodable",
            Self::Rejected => "rejected",
        }
    }
}

/// One poisoned message with its failure details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoisonEnvelope {
    /// Format version, 1.
    pub ebbflow_poison: u32,
    /// The queue it came from.
    pub queue: String,
    /// Its id on that queue.
    pub message_id: String,
    /// Why it was poisoned.
    pub reason: PoisonReason,
    /// The last error's text, if any.
    pub error: Option<String>,
    /// Deliveries it had.
    pub dequeue_count: u32,
    /// When it was first sent.
    #[serde(with = "time::serde::rfc3339::option")]
    pub inserted_at: Option<OffsetDateTime>,
    /// When it would have expired.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// When it was poisoned.
    #[serde(with = "time::serde::rfc3339")]
    pub poisoned_at: OffsetDateTime,
    /// The original message text, as it was on the queue.
    pub body: String,
}

impl PoisonEnvelope {
    /// The envelope for `message` on `queue`.
    pub fn new(
        queue: &str,
        message: &ReceivedMessage,
        reason: PoisonReason,
        error: Option<String>,
    ) -> Self {
        Self {
            ebbflow_poison: 1,
            queue: queue.to_string(),
            message_id: message.id.clone(),
            reason,
            error,
            dequeue_count: message.dequeue_count,
            inserted_at: message.inserted_at,
            expires_at: message.expires_at,
            poisoned_at: OffsetDateTime::now_utc(),
            body: message.text.clone(),
        }
    }

    /// The envelope as message text in `encoding`. A long error text is cut so the envelope
    /// fits the 64 KiB limit; `None` when even the original body alone is too large to wrap.
    pub fn to_text(&self, encoding: Encoding) -> Option<String> {
        let mut envelope = self.clone();
        loop {
            let json = serde_json::to_vec(&envelope).expect("envelope serializes");
            let text = encoding.encode(&json).expect("JSON is UTF-8");
            if text.len() <= MAX_MESSAGE_BYTES {
                return Some(text);
            }
            match envelope.error.as_mut() {
                Some(e) if !e.is_empty() => {
                    let keep = e.len() / 2;
                    let cut = (0..=keep)
                        .rev()
                        .find(|i| e.is_char_boundary(*i))
                        .unwrap_or(0);
                    e.truncate(cut);
                }
                _ => return None,
            }
        }
    }

    /// Reads an envelope back from poison queue text.
    pub fn from_text(text: &str, encoding: Encoding) -> Result<Self, String> {
        let bytes = encoding.decode(text).map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &str) -> ReceivedMessage {
        ReceivedMessage {
            id: "m1".into(),
            pop_receipt: "r".into(),
            dequeue_count: 3,
            inserted_at: Some(time::macros::datetime!(2026-11-23 8:00 UTC)),
            expires_at: None,
            text: text.into(),
        }
    }

    #[test]
    fn round_trips_and_keeps_the_body_exactly() {
        let body = "eyJpZCI6N30=\u{1F600}<&>\"";
        let e = PoisonEnvelope::new(
            "orders",
            &message(body),
            PoisonReason::Rejected,
            Some("no".into()),
        );
        for enc in [Encoding::Base64, Encoding::None] {
            let back = PoisonEnvelope::from_text(&e.to_text(enc).unwrap(), enc).unwrap();
            assert_eq!(back, e);
            assert_eq!(back.body, body);
        }
        let json = String::from_utf8(
            Encoding::Base64
                .decode(&e.to_text(Encoding::Base64).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert!(json.contains("\"reason\":\"rejected\""), "{json}");
        assert!(
            json.contains("\"inserted_at\":\"2026-11-23T08:00:00Z\""),
            "{json}"
        );
    }

    #[test]
    fn long_errors_are_cut_to_fit_and_huge_bodies_refused() {
        let e = PoisonEnvelope::new(
            "orders",
            &message("small"),
            PoisonReason::Rejected,
            Some("x".repeat(200_000)),
        );
        let text = e.to_text(Encoding::Base64).unwrap();
        assert!(text.len() <= MAX_MESSAGE_BYTES);
        let back = PoisonEnvelope::from_text(&text, Encoding::Base64).unwrap();
        assert_eq!(back.body, "small");
        let big = PoisonEnvelope::new(
            "orders",
            &message(&"y".repeat(60_000)),
            PoisonReason::Rejected,
            None,
        );
        assert!(big.to_text(Encoding::Base64).is_none());
        assert!(big.to_text(Encoding::None).is_some());
    }
}

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
//!
//! A message too large for the envelope (above about 48 KiB of base64 text, since the envelope
//! is encoded again) is copied as its original text unchanged, so every message up to the
//! service's 64 KiB cap reaches the poison queue; its failure details are then only in the
//! worker's `message moved to poison queue` log line (`form = "original"`). A requeue sends
//! such a copy back to the poison queue's source queue as it is.
//!
//! [`PoisonQueue`] lists, inspects and requeues poison messages (the `ebbflow poison` CLI
//! commands use it).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tracing::info;

use crate::codec::Encoding;
use crate::config::QueueSettings;
use crate::service::is_allowed_text_char;
use crate::store::{
    now_utc, Queue, QueueStore, ReceivedMessage, SendOptions, StoreError, TimeToLive, MAX_BATCH,
    MAX_MESSAGE_BYTES,
};

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
    /// Its claim-check payload cannot be had: the blob is missing or does not match its
    /// reference, the reference is malformed or names another container, or the payload is
    /// over `storage.claim_check.max_payload_bytes`.
    PayloadUnavailable,
}

impl PoisonReason {
    /// The snake_case name used in the envelope and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxDequeueCountExceeded => "max_dequeue_count_exceeded",
            Self::Undecodable => "undecodable",
            Self::Rejected => "rejected",
            Self::PayloadUnavailable => "payload_unavailable",
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

    /// The envelope as message text in `encoding`, or, when even the envelope with its error
    /// text cut to nothing does not fit the 64 KiB limit (bodies above about 48 KiB in
    /// base64), the original message text unchanged: that always fits, since it came off a
    /// queue. The failure details of such a copy are in the worker's log line only.
    pub fn to_text(&self, encoding: Encoding) -> PoisonText {
        let mut envelope = self.clone();
        loop {
            // Fails only for a date RFC 3339 cannot write (after year 9999): the original text
            // then goes, as for a body too large for the envelope.
            let Ok(json) = serde_json::to_string(&envelope) else {
                return PoisonText::Original(self.body.clone());
            };
            let text = encoding
                .encode(xml_safe(json).as_bytes())
                .expect("JSON is UTF-8");
            if text.len() <= MAX_MESSAGE_BYTES {
                return PoisonText::Envelope(text);
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
                _ => return PoisonText::Original(self.body.clone()),
            }
        }
    }

    /// Reads an envelope back from poison queue text.
    ///
    /// # Errors
    ///
    /// [`PoisonEnvelopeError`] when the text does not decode with `encoding` or is not a poison
    /// envelope.
    pub fn from_text(text: &str, encoding: Encoding) -> Result<Self, PoisonEnvelopeError> {
        let bytes = encoding.decode(text).map_err(|e| PoisonEnvelopeError {
            detail: e.to_string(),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| PoisonEnvelopeError {
            detail: e.to_string(),
        })
    }
}

/// Poison-queue text that is not an envelope ([`PoisonEnvelope::from_text`]): the original
/// text of a message too large for the envelope, or text someone else put there. Displays
/// why (a decoding or JSON error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
#[non_exhaustive]
pub struct PoisonEnvelopeError {
    detail: String,
}

/// JSON with every character XML 1.0 refuses written as a `\\uXXXX` escape, so the text is one
/// the service takes in either encoding. serde_json escapes control characters itself, but
/// writes U+FFFE and U+FFFF (which a handler's error text may hold) as they are.
fn xml_safe(json: String) -> String {
    if json.chars().all(is_allowed_text_char) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if is_allowed_text_char(c) {
            out.push(c);
        } else {
            // Outside JSON strings there is only ASCII, and every refused character is in the
            // Basic Multilingual Plane, so one escape each is valid JSON for the same text.
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        }
    }
    out
}

/// What goes on the poison queue for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoisonText {
    /// The JSON envelope with the failure details, in the queue's encoding.
    Envelope(String),
    /// The original message text unchanged: the envelope would not fit.
    Original(String),
}

impl PoisonText {
    /// The text to send.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Envelope(t) | Self::Original(t) => t,
        }
    }

    /// Whether this is the original text, without the envelope.
    pub fn is_original(&self) -> bool {
        matches!(self, Self::Original(_))
    }
}

/// How long a scan of the poison queue hides the messages it reads before it releases them.
const SCAN_HOLD: Duration = Duration::from_secs(30);

/// One message found on a poison queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoisonRecord {
    /// Its id on the poison queue.
    pub id: String,
    /// The envelope, or why the text is not one: the original text of a message too large for
    /// the envelope (requeued to the source queue as it is), or one someone else put there.
    pub envelope: Result<PoisonEnvelope, PoisonEnvelopeError>,
    /// Its text on the poison queue, as stored (the envelope in the queue's encoding, or the
    /// original message's text when it had no envelope).
    pub text: String,
}

/// Which poison messages to requeue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every message on the poison queue.
    All,
    /// These messages: ids on the poison queue, or the ids they had on their source queue.
    Ids(BTreeSet<String>),
}

/// What a requeue did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequeueReport {
    /// (poison-queue id, source queue, new message id) for each message sent back.
    pub requeued: Vec<(String, String, String)>,
    /// (poison-queue id, why) for each selected message left on the poison queue.
    pub skipped: Vec<(String, String)>,
    /// Selected ids that were not found.
    pub missing: Vec<String>,
}

/// A requeued message's time to live: what its poison copy had left (a poison copy that never
/// expires, the default, gives one that never expires), and at least the service's default 7
/// days, so a requeue never sends a message back to expire within minutes.
fn requeue_options(poison_copy: &ReceivedMessage) -> SendOptions {
    let left = TimeToLive::remaining(poison_copy.expires_at, now_utc())
        .unwrap_or(TimeToLive::ServiceDefault);
    SendOptions {
        initial_delay: Duration::ZERO,
        time_to_live: left.at_least(TimeToLive::ServiceDefault),
    }
}

/// Operations on a queue's poison queue: list, inspect, requeue.
///
/// Reading beyond the first 32 messages needs receives, so each operation receives the poison
/// messages in batches, hidden for 30 s, and releases the ones it leaves (visible again at
/// once). Their dequeue counts on the poison queue go up by one; the envelope keeps the count
/// the message had on its source queue. A requeue sends the original text back to the source
/// queue first and deletes the poison copy only after that send succeeded, so an interrupted
/// requeue can duplicate a message but never lose one.
pub struct PoisonQueue {
    store: Arc<dyn QueueStore>,
    source: String,
    poison: Arc<dyn Queue>,
    encoding: Encoding,
}

impl std::fmt::Debug for PoisonQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoisonQueue")
            .field("source", &self.source)
            .field("encoding", &self.encoding)
            .finish_non_exhaustive()
    }
}

impl PoisonQueue {
    /// The poison queue of `queue`, with that queue's settings (encoding, poison queue name).
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store refuses the poison queue's name.
    pub fn new(
        store: Arc<dyn QueueStore>,
        queue: &str,
        settings: &QueueSettings,
    ) -> Result<Self, StoreError> {
        let poison = store.queue(&settings.poison_queue_name(queue))?;
        Ok(Self {
            store,
            source: queue.to_string(),
            poison,
            encoding: settings.encoding,
        })
    }

    /// The poison queue's name.
    pub fn name(&self) -> &str {
        self.poison.name()
    }

    /// Up to `limit` poison messages, oldest first.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store fails the peek.
    pub async fn list(&self, limit: usize) -> Result<Vec<PoisonRecord>, StoreError> {
        let held = self.scan(limit, |_| false).await?;
        let records = held.iter().map(|m| self.record(m)).collect();
        self.release(&held).await;
        Ok(records)
    }

    /// The poison message with this id, if present: its id on the poison queue, or the id the
    /// message had on its source queue (the `message_id` the worker's poison warning names).
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store fails the read.
    pub async fn inspect(&self, id: &str) -> Result<Option<PoisonRecord>, StoreError> {
        let is = |m: &ReceivedMessage| self.known_as(m, id);
        let held = self.scan(usize::MAX, is).await?;
        let found = held.iter().find(|m| is(m)).map(|m| self.record(m));
        self.release(&held).await;
        Ok(found)
    }

    /// Sends the selected poison messages' original text back to their source queues, then
    /// deletes them from the poison queue.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when a send or delete fails; messages requeued before it stay requeued
    /// (a message is deleted from the poison queue only after its send succeeded).
    pub async fn requeue(&self, selection: &Selection) -> Result<RequeueReport, StoreError> {
        let wanted = |m: &ReceivedMessage| match selection {
            Selection::All => true,
            Selection::Ids(ids) => ids.iter().any(|id| self.known_as(m, id)),
        };
        let held = self.scan(usize::MAX, |_| false).await?;
        let mut report = RequeueReport::default();
        let mut leave = Vec::new();
        for message in held {
            if !wanted(&message) {
                leave.push(message);
                continue;
            }
            // A message too large for the envelope was copied here as its original text: it
            // goes back to this poison queue's source queue unchanged.
            let (target, body) = match PoisonEnvelope::from_text(&message.text, self.encoding) {
                Ok(e) => (e.queue, e.body),
                Err(_) => (self.source.clone(), message.text.clone()),
            };
            let options = requeue_options(&message);
            let sent = match self.store.queue(&target) {
                Ok(source) => source.send(&body, options).await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(sent) => {
                    // The source has its copy: only now remove the poison one. If this delete
                    // fails the message exists twice (never zero times).
                    if let Err(e) = self.poison.delete(&message.id, &message.pop_receipt).await {
                        report.skipped.push((
                            message.id.clone(),
                            format!("requeued, but the poison copy stays: {e}"),
                        ));
                    }
                    info!(poison_queue = self.name(), message_id = %message.id, queue = %target,
                          new_id = %sent.id, "poison message requeued");
                    report.requeued.push((message.id, target, sent.id));
                }
                Err(e) => {
                    report
                        .skipped
                        .push((message.id.clone(), format!("send to {target} failed: {e}")));
                    leave.push(message);
                }
            }
        }
        self.release(&leave).await;
        if let Selection::Ids(ids) = selection {
            let seen: BTreeSet<&String> = report
                .requeued
                .iter()
                .map(|(id, _, _)| id)
                .chain(report.skipped.iter().map(|(id, _)| id))
                .collect();
            report.missing = ids
                .iter()
                .filter(|id| !seen.contains(id))
                .cloned()
                .collect();
        }
        Ok(report)
    }

    /// Whether `id` names this poison message: its own id, or its envelope's source message id.
    fn known_as(&self, message: &ReceivedMessage, id: &str) -> bool {
        message.id == id
            || PoisonEnvelope::from_text(&message.text, self.encoding)
                .is_ok_and(|e| e.message_id == id)
    }

    fn record(&self, message: &ReceivedMessage) -> PoisonRecord {
        PoisonRecord {
            id: message.id.clone(),
            envelope: PoisonEnvelope::from_text(&message.text, self.encoding),
            text: message.text.clone(),
        }
    }

    /// Receives (and holds) poison messages until `limit` are held, the queue is empty, or
    /// `stop` matches one.
    async fn scan(
        &self,
        limit: usize,
        stop: impl Fn(&ReceivedMessage) -> bool,
    ) -> Result<Vec<ReceivedMessage>, StoreError> {
        let mut held: Vec<ReceivedMessage> = Vec::new();
        while held.len() < limit {
            let want = (limit - held.len()).min(usize::from(MAX_BATCH)) as u8;
            let batch = match self.poison.receive(want, SCAN_HOLD).await {
                Ok(batch) => batch,
                Err(e) => {
                    self.release(&held).await;
                    return Err(e);
                }
            };
            let mut done = batch.is_empty() || batch.iter().any(&stop);
            for message in batch {
                // Seen before: our hold on it lapsed during a long scan, so we have gone all
                // the way round. Keep the new receipt (the old one is dead) and stop.
                match held.iter_mut().find(|h| h.id == message.id) {
                    Some(h) => {
                        *h = message;
                        done = true;
                    }
                    None => held.push(message),
                }
            }
            if done {
                break;
            }
        }
        Ok(held)
    }

    /// Makes held messages visible again at once. A failed release only delays a message
    /// (it reappears when the hold ends).
    async fn release(&self, held: &[ReceivedMessage]) {
        for m in held {
            if let Err(e) = self
                .poison
                .update(&m.id, &m.pop_receipt, Duration::ZERO, None)
                .await
            {
                tracing::warn!(poison_queue = self.name(), message_id = %m.id, error = %e,
                               "could not release a poison message; it reappears within 30s");
            }
        }
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
            let back = PoisonEnvelope::from_text(e.to_text(enc).as_str(), enc).unwrap();
            assert_eq!(back, e);
            assert_eq!(back.body, body);
        }
        let json = String::from_utf8(
            Encoding::Base64
                .decode(e.to_text(Encoding::Base64).as_str())
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
    fn an_error_with_characters_xml_refuses_still_gives_text_the_service_takes() {
        // A handler's error text is any Rust string. JSON escapes control characters but not
        // U+FFFE/U+FFFF, which XML 1.0 (so the service, and the stores' Put Message rule)
        // refuses: with the `none` encoding the copy would be refused on every try and the
        // message never reach the poison queue.
        let error = "bad \u{0}\u{1}\u{1F}\u{7F}\u{FFFE}\u{FFFF}\u{D7FF}\u{10FFFF} end".to_string();
        let e = PoisonEnvelope::new(
            "orders",
            &message("body"),
            PoisonReason::Rejected,
            Some(error.clone()),
        );
        for enc in [Encoding::Base64, Encoding::None] {
            let text = e.to_text(enc);
            assert!(!text.is_original());
            crate::store::rules::check_text("orders-poison", text.as_str())
                .unwrap_or_else(|err| panic!("{enc}: {err}"));
            let back = PoisonEnvelope::from_text(text.as_str(), enc).unwrap();
            assert_eq!(back.error.as_deref(), Some(error.as_str()), "{enc}");
        }
    }

    #[test]
    fn long_errors_are_cut_to_fit_and_huge_bodies_copied_unchanged() {
        let e = PoisonEnvelope::new(
            "orders",
            &message("small"),
            PoisonReason::Rejected,
            Some("x".repeat(200_000)),
        );
        let text = e.to_text(Encoding::Base64);
        assert!(!text.is_original());
        assert!(text.as_str().len() <= MAX_MESSAGE_BYTES);
        let back = PoisonEnvelope::from_text(text.as_str(), Encoding::Base64).unwrap();
        assert_eq!(back.body, "small");
        let big = PoisonEnvelope::new(
            "orders",
            &message(&"y".repeat(60_000)),
            PoisonReason::Rejected,
            None,
        );
        assert_eq!(
            big.to_text(Encoding::Base64),
            PoisonText::Original("y".repeat(60_000))
        );
        assert!(!big.to_text(Encoding::None).is_original());
        // At the service's cap, in either encoding, the copy is the original text unchanged.
        for enc in [Encoding::Base64, Encoding::None] {
            let body = enc
                .encode(&vec![
                    b'z';
                    if enc == Encoding::Base64 {
                        49_152
                    } else {
                        65_536
                    }
                ])
                .unwrap();
            assert_eq!(body.len(), MAX_MESSAGE_BYTES);
            let e = PoisonEnvelope::new(
                "orders",
                &message(&body),
                PoisonReason::Rejected,
                Some("no".into()),
            );
            assert_eq!(e.to_text(enc), PoisonText::Original(body));
        }
    }
}

//! The trace-context format: a W3C Trace Context (`traceparent`, optional `tracestate`) as it
//! travels inside things that have no headers of their own: queue messages (the envelope
//! below), claim-check references and bus events (embed [`TraceContext`]; it serialises as
//! `{"traceparent": "...", "tracestate": "..."}`, `tracestate` left out when empty).
//!
//! # The queue-message envelope
//!
//! Storage Queue messages have no properties, so a queue with `trace_context = true` has its
//! producers put the context in front of the message text, as header lines, then a blank line:
//!
//! ```text
//! traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01
//! tracestate: vendor=value
//!
//! <the message text as it would be without the envelope: base64 or plain>
//! ```
//!
//! `tracestate:` is left out when there is none. Lines end with `\n`. The envelope is plain
//! text outside the queue's encoding, so the body keeps its encoding byte for byte. A consumer
//! strips it before decoding; a message that does not start with `traceparent: ` is taken as it
//! is, so messages from other producers and queues without the option work unchanged.
//! (Base64 text never contains `:` or a space, so it can never be mistaken for an envelope.)

use serde::{Deserialize, Serialize};

/// The first line's key in the queue-message envelope.
const PARENT_KEY: &str = "traceparent: ";
/// The optional second line's key.
const STATE_KEY: &str = "tracestate: ";
/// The longest `tracestate` kept, in bytes (W3C allows 32 members of up to 256 characters;
/// 512 bytes is what vendors are asked to keep). A longer one is dropped, not cut.
pub(crate) const MAX_TRACESTATE: usize = 512;

/// A W3C Trace Context: which trace and span a message was sent from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Raw", into = "Raw")]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
    state: String,
}

#[derive(Serialize, Deserialize)]
struct Raw {
    traceparent: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    tracestate: String,
}

impl TryFrom<Raw> for TraceContext {
    type Error = TraceContextError;
    fn try_from(raw: Raw) -> Result<Self, Self::Error> {
        TraceContext::parse(&raw.traceparent, Some(&raw.tracestate))
    }
}

impl From<TraceContext> for Raw {
    fn from(cx: TraceContext) -> Self {
        Raw {
            traceparent: cx.traceparent(),
            tracestate: cx.state,
        }
    }
}

/// A `traceparent` that is not version `00` with a non-zero 32-hex trace id and 16-hex span id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("traceparent {given:?} is not 00-<32 hex>-<16 hex>-<2 hex> with non-zero ids")]
#[non_exhaustive]
pub struct TraceContextError {
    /// What was given (cut to 64 characters).
    pub given: String,
}

impl TraceContext {
    /// A context from its parts: a trace id and span id (both non-zero), whether it was
    /// sampled, and a `tracestate` (empty for none; dropped when over 512 bytes or
    /// not one printable line).
    pub fn new(trace_id: [u8; 16], span_id: [u8; 8], sampled: bool, tracestate: &str) -> Self {
        Self {
            trace_id,
            span_id,
            flags: u8::from(sampled),
            state: clean_state(tracestate),
        }
    }

    /// Parses a `traceparent` header value (version `00`; later versions are read by their
    /// first four fields, as the W3C spec asks) and an optional `tracestate`.
    ///
    /// # Errors
    ///
    /// [`TraceContextError`] (holding the value given) when `traceparent` is not a valid W3C
    /// `traceparent` (wrong field count or lengths, non-hex digits, all-zero ids, version `ff`).
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Result<Self, TraceContextError> {
        let bad = || TraceContextError {
            given: traceparent.chars().take(64).collect(),
        };
        let mut parts = traceparent.trim().split('-');
        let (Some(version), Some(trace), Some(span), Some(flags)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let version = hex::<1>(version).ok_or_else(bad)?[0];
        if version == 0xff || (version == 0 && parts.next().is_some()) {
            return Err(bad());
        }
        let trace_id = hex::<16>(trace).ok_or_else(bad)?;
        let span_id = hex::<8>(span).ok_or_else(bad)?;
        let flags = hex::<1>(flags).ok_or_else(bad)?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return Err(bad());
        }
        Ok(Self {
            trace_id,
            span_id,
            flags,
            state: tracestate.map(clean_state).unwrap_or_default(),
        })
    }

    /// The 16-byte trace id.
    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The 8-byte id of the span the context was taken in (the producer's `send` span).
    pub fn span_id(&self) -> [u8; 8] {
        self.span_id
    }

    /// Whether the producer sampled the trace (flag bit 0).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The `tracestate` header value; empty for none.
    pub fn tracestate(&self) -> &str {
        &self.state
    }

    /// The `traceparent` header value, always version `00`.
    pub fn traceparent(&self) -> String {
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        push_hex(&mut s, &self.trace_id);
        s.push('-');
        push_hex(&mut s, &self.span_id);
        s.push('-');
        push_hex(&mut s, &[self.flags]);
        s
    }

    /// `text` with this context's envelope in front (see the module docs).
    pub fn wrap(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len() + 120);
        out.push_str(PARENT_KEY);
        out.push_str(&self.traceparent());
        out.push('\n');
        if !self.state.is_empty() {
            out.push_str(STATE_KEY);
            out.push_str(&self.state);
            out.push('\n');
        }
        out.push('\n');
        out.push_str(text);
        out
    }

    /// Splits a message's text into its context and the text without the envelope. Text
    /// without an envelope comes back whole with `None`; so does text whose envelope does not
    /// parse (it is then the handler's to judge, as it would be from a queue without the option).
    pub fn unwrap(text: &str) -> (Option<Self>, &str) {
        let Some(rest) = text.strip_prefix(PARENT_KEY) else {
            return (None, text);
        };
        let Some((parent, mut rest)) = rest.split_once('\n') else {
            return (None, text);
        };
        let mut state = None;
        if let Some(after) = rest.strip_prefix(STATE_KEY) {
            let Some((value, after)) = after.split_once('\n') else {
                return (None, text);
            };
            state = Some(value);
            rest = after;
        }
        let Some(body) = rest.strip_prefix('\n') else {
            return (None, text);
        };
        match Self::parse(parent, state) {
            Ok(cx) => (Some(cx), body),
            Err(_) => (None, text),
        }
    }
}

/// Reads an optional embedded [`TraceContext`] leniently: absent, `null` or malformed is `None`
/// (a bad trace context never makes the claim-check reference or bus event around it
/// unreadable). For `#[serde(default, deserialize_with = "...")]`.
pub(crate) fn lenient<'de, D>(deserializer: D) -> Result<Option<TraceContext>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let value = Option::<serde_json::Value>::deserialize(deserializer)?;
    Ok(value.and_then(|v| serde_json::from_value(v).ok()))
}

/// A `tracestate` kept only when it is one line of printable ASCII within [`MAX_TRACESTATE`].
fn clean_state(state: &str) -> String {
    let state = state.trim();
    if state.len() > MAX_TRACESTATE || !state.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return String::new();
    }
    state.to_string()
}

/// Exactly `N` bytes of lowercase hex (W3C: uppercase is invalid).
fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn push_hex(s: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_round_trips() {
        let cx = TraceContext::parse(PARENT, Some("rojo=00f067aa0ba902b7")).unwrap();
        assert_eq!(cx.traceparent(), PARENT);
        assert!(cx.sampled());
        assert_eq!(
            cx.span_id(),
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(cx.tracestate(), "rojo=00f067aa0ba902b7");
        let json = serde_json::to_string(&cx).unwrap();
        assert_eq!(
            json,
            format!(r#"{{"traceparent":"{PARENT}","tracestate":"rojo=00f067aa0ba902b7"}}"#)
        );
        assert_eq!(serde_json::from_str::<TraceContext>(&json).unwrap(), cx);
        let bare = TraceContext::new(cx.trace_id(), cx.span_id(), false, "");
        assert_eq!(
            serde_json::to_string(&bare).unwrap(),
            r#"{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"}"#
        );
    }

    #[test]
    fn bad_traceparents_are_refused_naming_what_was_given() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            let err = TraceContext::parse(bad, None).unwrap_err();
            assert!(err.to_string().contains("traceparent"), "{bad}: {err}");
        }
        // A later version may add fields: the first four are read.
        assert!(TraceContext::parse(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xy",
            None
        )
        .is_ok());
        let err = serde_json::from_str::<TraceContext>(r#"{"traceparent":"nope"}"#).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn the_envelope_wraps_and_unwraps_the_text_unchanged() {
        let cx = TraceContext::parse(PARENT, Some("a=1,b=2")).unwrap();
        let wrapped = cx.wrap("eyJhIjoxfQ==");
        assert_eq!(
            wrapped,
            format!("traceparent: {PARENT}\ntracestate: a=1,b=2\n\neyJhIjoxfQ==")
        );
        assert_eq!(
            TraceContext::unwrap(&wrapped),
            (Some(cx.clone()), "eyJhIjoxfQ==")
        );
        let plain = TraceContext::new(cx.trace_id(), cx.span_id(), true, "");
        let wrapped = plain.wrap("line one\n\nline three");
        assert_eq!(
            TraceContext::unwrap(&wrapped),
            (Some(plain), "line one\n\nline three")
        );
        assert_eq!(TraceContext::unwrap(""), (None, ""));
    }

    #[test]
    fn text_without_a_valid_envelope_is_taken_whole() {
        for text in [
            "eyJhIjoxfQ==",
            "{\"traceparent\":\"x\"}",
            "traceparent: 00-bad\n\nbody",
            "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\nbody",
            "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::unwrap(text), (None, text));
        }
    }

    #[test]
    fn an_oversized_or_multiline_tracestate_is_dropped() {
        let long = "k=".to_string() + &"v".repeat(MAX_TRACESTATE);
        assert_eq!(
            TraceContext::parse(PARENT, Some(&long))
                .unwrap()
                .tracestate(),
            ""
        );
        let cx = TraceContext::new([1; 16], [2; 8], true, "a=1\nb=2");
        assert_eq!(cx.tracestate(), "");
        assert_eq!(TraceContext::unwrap(&cx.wrap("x")).0, Some(cx));
    }
}

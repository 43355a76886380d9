//! What travels on the bus: an [`Envelope`] (sender, address, event type, JSON body) and its
//! [`Address`], after the seeds' inter-role model.

use serde::{Deserialize, Serialize};

/// Where an event goes. Every address is delivered at least once to each addressed instance
/// (fan-out ones to an instance away for less than `bus.retention`), unless the envelope was
/// published at most once ([`Envelope::at_most_once`], Redis pub/sub: lowest latency, nothing
/// kept for an instance that is away).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "mode", content = "name", rename_all = "snake_case")]
pub enum Address {
    /// Unicast: the one instance with this id. At least once, kept for `bus.retention` while
    /// the instance is away (or not started yet).
    Instance(String),
    /// Multicast: every instance. At least once to each instance that is live or away for less
    /// than `bus.retention` (an instance that joins later does not get earlier events).
    All,
    /// Every instance of this role. At least once to each, like [`Address::All`].
    Role(String),
    /// Competing consumers: exactly one live instance of this role handles the event and
    /// acknowledges it; if the one that took it dies (no acknowledgement within
    /// `bus.claim_timeout`), another takes it over. At least once (Redis Streams with a
    /// consumer group).
    OneOf(String),
}

impl Address {
    /// Unicast to one instance.
    pub fn instance(id: impl Into<String>) -> Self {
        Self::Instance(id.into())
    }

    /// Every instance of `role`.
    pub fn role(role: impl Into<String>) -> Self {
        Self::Role(role.into())
    }

    /// Exactly one instance of `role` (competing consumers, acknowledged).
    pub fn one_of(role: impl Into<String>) -> Self {
        Self::OneOf(role.into())
    }

    /// Whether one instance of a role takes the event (acknowledged, re-delivered to another
    /// when not acknowledged) rather than every addressed instance.
    pub fn is_competing(&self) -> bool {
        matches!(self, Self::OneOf(_))
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Instance(id) => write!(f, "instance {id}"),
            Self::All => f.write_str("all instances"),
            Self::Role(r) => write!(f, "role {r}"),
            Self::OneOf(r) => write!(f, "one instance of role {r}"),
        }
    }
}

/// One event on the wire (JSON): the `envelope` field of a stream entry (the address's stream),
/// or a `PUBLISH` payload when sent at most once. With `bus.signing_key` set, the JSON's
/// HMAC-SHA256 travels beside it (see the signing module).
///
/// `from` and `role` are what the sender says: without signing, anyone who can write to Redis
/// can claim any of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// A unique id (UUID) given by the sender.
    pub id: String,
    /// The event type, e.g. `billing.batch-completed` (see [`super::Event::KIND`]).
    #[serde(rename = "type")]
    pub kind: String,
    /// The sender's instance id.
    pub from: String,
    /// The sender's role.
    pub role: String,
    /// Where it was sent.
    pub to: Address,
    /// Carbon copy: the sender receives its own event too (off: it is filtered out).
    #[serde(default)]
    pub cc: bool,
    /// When it was sent, milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    /// The event itself.
    #[serde(default)]
    pub body: serde_json::Value,
    /// Sent at most once (Redis pub/sub): nothing is kept for an instance that is away.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub at_most_once: bool,
    /// After this time (milliseconds since the Unix epoch) the event is dropped unhandled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// On a reply: the id of the request it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// The publisher's W3C trace context (`{"traceparent": "00-…"}`, see
    /// [`TraceContext`](crate::codec::TraceContext)), taken from the span it published in while traces are
    /// exported; an observer's `process` span continues it. Absent (older senders, traces off)
    /// or malformed: ignored.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::codec::trace::lenient"
    )]
    pub trace: Option<crate::codec::TraceContext>,
}

impl Envelope {
    /// A new envelope from `from` (`instance`, `role`) with a fresh id and the current time.
    pub fn new(
        kind: impl Into<String>,
        from: &super::Member,
        to: Address,
        body: serde_json::Value,
    ) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            kind: kind.into(),
            from: from.instance.to_string(),
            role: from.role.to_string(),
            to,
            cc: false,
            sent_at_ms: now_ms(),
            body,
            at_most_once: false,
            expires_at_ms: None,
            reply_to: None,
            // One atomic load while traces are off.
            trace: crate::codec::spans::context_of(&tracing::Span::current()),
        }
    }

    /// Sent at most once (pub/sub) instead of kept for instances that are away.
    pub fn with_at_most_once(mut self, at_most_once: bool) -> Self {
        self.at_most_once = at_most_once;
        self
    }

    /// Dropped unhandled once `ttl` has passed since now.
    pub fn with_ttl(mut self, ttl: std::time::Duration) -> Self {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.expires_at_ms = Some(self.sent_at_ms.saturating_add(ms));
        self
    }

    /// Whether its time to live has passed at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }

    /// Also deliver to the sender.
    pub fn with_cc(mut self, cc: bool) -> Self {
        self.cc = cc;
        self
    }

    /// Whether `me` should see this envelope: addressed to it, and not its own unless copied.
    /// A competing-consumer event goes to one instance of its role, which may be the sender.
    pub fn is_for(&self, me: &super::Member) -> bool {
        let mine = self.from == me.instance.as_str();
        let addressed = match &self.to {
            // One instance of the role takes it, and that may be the sender.
            Address::OneOf(r) => return r == me.role.as_str(),
            Address::Instance(id) => id == me.instance.as_str(),
            Address::All => true,
            Address::Role(r) => r == me.role.as_str(),
        };
        if mine {
            self.cc
        } else {
            addressed
        }
    }
}

/// Milliseconds since the Unix epoch now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::super::Member;
    use super::*;

    #[test]
    fn wire_format_is_stable_json() {
        let me = Member::new("proc-1", "processor").unwrap();
        let mut e = Envelope::new(
            "billing.done",
            &me,
            Address::role("controller"),
            serde_json::json!({"batch": 7}),
        );
        e.id = "x".into();
        e.sent_at_ms = 5;
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id":"x","type":"billing.done","from":"proc-1","role":"processor",
                "to":{"mode":"role","name":"controller"},"cc":false,"sent_at_ms":5,"body":{"batch":7}})
        );
        let all: Address = serde_json::from_str(r#"{"mode":"all"}"#).unwrap();
        assert_eq!(all, Address::All);
    }

    #[test]
    fn addressing_decides_who_sees_an_envelope() {
        let a = Member::new("a", "processor").unwrap();
        let b = Member::new("b", "processor").unwrap();
        let c = Member::new("c", "controller").unwrap();
        let from_a = |to| Envelope::new("t", &a, to, serde_json::Value::Null);
        let to_b = from_a(Address::instance("b"));
        assert!(to_b.is_for(&b) && !to_b.is_for(&c) && !to_b.is_for(&a));
        assert!(to_b.clone().with_cc(true).is_for(&a));
        let all = from_a(Address::All);
        assert!(all.is_for(&b) && all.is_for(&c) && !all.is_for(&a));
        assert!(all.clone().with_cc(true).is_for(&a));
        let role = from_a(Address::role("processor"));
        assert!(role.is_for(&b) && !role.is_for(&c) && !role.is_for(&a));
        let ctl = from_a(Address::role("controller")).with_cc(true);
        assert!(ctl.is_for(&c) && ctl.is_for(&a) && !ctl.is_for(&b));
        let one = from_a(Address::one_of("processor"));
        assert!(one.is_for(&a) && one.is_for(&b) && !one.is_for(&c));
    }
}

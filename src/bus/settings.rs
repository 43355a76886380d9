//! The `[bus]` section and the per-queue `[queues.<name>.bus]` section, typed and checked
//! while parsing: a bad value fails the load with the key's name, and the Redis password never
//! shows in `Debug`, errors, logs or `config check`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use percent_encoding::percent_decode_str;
use url::Url;

use secrecy::{ExposeSecret, SecretString};

use crate::checks::InvalidValue;
use crate::secret::{redact, REDACTED};

/// Which transport carries events between instances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum BusKind {
    /// No bus between instances: events stay in this process (the embedded bus).
    #[default]
    None,
    /// Redis (or Azure Cache for Redis / Azure Managed Redis): pub/sub for fan-out, Streams
    /// with a consumer group for competing consumers.
    Redis,
}

/// A Redis URL: `redis://[user][:password]@host[:port][/db]` or `rediss://...` (TLS).
/// Checked while parsing; kept as a [`SecretString`], so `Debug` shows none of it, and
/// `Display` and `Serialize` show it with its password as `<redacted>`: it never reaches logs,
/// errors or `config check` output.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct RedisUrl(SecretString);

impl RedisUrl {
    /// The URL with its password, for the client only.
    pub(crate) fn secret(&self) -> &str {
        self.0.expose_secret()
    }

    /// The URL's password as written and percent-decoded (to scrub from error texts).
    pub(crate) fn passwords(&self) -> Vec<String> {
        let Ok(url) = Url::parse(self.secret()) else {
            return Vec::new();
        };
        url.password()
            .map(|p| {
                let decoded = percent_decode_str(p).decode_utf8_lossy().into_owned();
                vec![p.to_string(), decoded]
            })
            .unwrap_or_default()
    }

    /// Whether the URL asks for TLS (`rediss://`).
    pub fn is_tls(&self) -> bool {
        self.secret().starts_with("rediss://")
    }

    /// Removes this URL's password from `text` (an error message from the client).
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for p in self.passwords() {
            if p.len() >= 2 {
                out = out.replace(&p, REDACTED);
            }
        }
        redact(&out.replace(self.secret(), &self.to_string()))
    }
}

/// A Redis URL checked (scheme, host, port, database number), its password kept out of the
/// error.
///
/// # Errors
///
/// [`InvalidValue`] saying what is wrong and the form expected (`redis://[user:password@]host`);
/// its value is the URL with the password redacted, or only its length when it is not a
/// `redis://` or `rediss://` URL at all.
impl TryFrom<String> for RedisUrl {
    type Error = InvalidValue;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        const EXPECTED: &str = "expected redis://[user:password@]host[:port][/db] or rediss://...";
        let Some(rest) = text
            .strip_prefix("redis://")
            .or_else(|| text.strip_prefix("rediss://"))
        else {
            // Not a URL of ours: it may be anything (a `host,password=...` string, a key pasted
            // in the wrong place), so none of it is echoed.
            return Err(InvalidValue::new(
                format!(
                    "a text of {} characters (not shown: it may hold a password)",
                    text.chars().count()
                ),
                format!("must be a redis:// or rediss:// URL; {EXPECTED}"),
            ));
        };
        if let Some(at) = rest.rfind('@') {
            if rest[..at].contains(['/', '?', '#']) {
                return Err(InvalidValue::new(
                    redact(&text),
                    "must percent-encode a '/', '?' or '#' in the user or password (%2F, %3F, \
                     %23)",
                ));
            }
        }
        // The URL crate's errors name what is wrong ("invalid port number"), never the text.
        let url = Url::parse(&text).map_err(|e| {
            InvalidValue::new(
                redact(&text),
                format!("must be a valid URL ({e}); {EXPECTED}"),
            )
        })?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(InvalidValue::new(
                redact(&text),
                format!("must name a host; {EXPECTED}"),
            ));
        }
        let db = url.path().trim_start_matches('/');
        if !db.is_empty() && db.parse::<u32>().is_err() {
            return Err(InvalidValue::new(
                redact(&text),
                format!("must have a database number as its path; {EXPECTED}"),
            ));
        }
        Ok(Self(text.into()))
    }
}

/// Equal when the URLs are the same text (settings compare; the password is part of it).
impl PartialEq for RedisUrl {
    fn eq(&self, other: &Self) -> bool {
        self.secret() == other.secret()
    }
}

impl Eq for RedisUrl {}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(self.secret()))
    }
}

impl Serialize for RedisUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// A role name or instance id: 1..=64 characters of `[A-Za-z0-9._-]`, so it is safe in a
/// channel or key name.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    /// Checks `text`.
    ///
    /// # Errors
    ///
    /// [`InvalidValue`] when `text` is empty, longer than 64 characters, or holds a character
    /// other than letters, digits, `.`, `_` and `-`.
    pub fn new(text: impl Into<String>) -> Result<Self, InvalidValue> {
        let text = text.into();
        if text.is_empty() || text.len() > 64 {
            return Err(InvalidValue::new(
                format!("{text:?}"),
                "must be 1..=64 characters",
            ));
        }
        if let Some(c) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(InvalidValue::new(
                format!("{text:?}"),
                format!("must be letters, digits, '.', '_', '-' ({c:?} is not allowed)"),
            ));
        }
        Ok(Self(text))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Name {
    type Error = InvalidValue;
    fn try_from(text: String) -> Result<Self, InvalidValue> {
        Self::new(text)
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A duration between `MIN` and `MAX` milliseconds, checked while parsing (the shared
/// [`BoundedDuration`](crate::checks::BoundedDuration)).
pub use crate::checks::BoundedDuration as Bounded;

/// With `publish = "depth"`, messages between two announcements (`depth`), 1..=100000.
pub type AnnounceDepth = crate::checks::BoundedU32<1, 100_000>;

/// How often an instance pulses its presence: 100ms..=5m.
pub type PulseInterval = Bounded<100, 300_000>;
/// How long a competing-consumer event stays claimed before another instance may take it
/// over: 100ms..=1h.
pub type ClaimTimeout = Bounded<100, 3_600_000>;
/// How often a listener at zero tasks probes its queue while the bus is down: 1s..=1h.
pub type OutageProbe = Bounded<1_000, 3_600_000>;

/// The `[bus]` section: events between instances.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct BusSettings {
    /// `none` (default: events stay in this process) or `redis`.
    pub kind: BusKind,
    /// The Redis URL, required with `kind = "redis"`: `redis://[user:password@]host[:port][/db]`,
    /// or `rediss://` for TLS. User and password are sent with `AUTH` (ACL users included).
    pub url: Option<RedisUrl>,
    /// This instance's role (what it does: `processor`, `controller`): events can address every
    /// instance of a role, or exactly one of them (competing consumers). Default `worker`.
    pub role: Name,
    /// This instance's id, unique among live instances; default generated at start-up
    /// (`<hostname or role>-<8 hex>`).
    pub instance_id: Option<Name>,
    /// Prefix of every Redis key and channel, so several systems share one Redis.
    /// Default `ebbflow`.
    pub channel_prefix: Name,
    /// How often this instance announces itself (presence pulse), 100ms..=5m, default 5s. An
    /// instance whose last pulse is older than three intervals is taken for gone.
    pub pulse_interval: PulseInterval,
    /// An event for competing consumers (one instance of a role, or one listener of a queue
    /// with `reach = "one"`) that was delivered but not acknowledged within this long is
    /// re-delivered to another live instance, 100ms..=1h, default 30s.
    pub claim_timeout: ClaimTimeout,
    /// How long a fan-out event (unicast, multicast, role) is kept for an addressed instance
    /// that is away (restarting, briefly disconnected), 1s..=7d, default 10m: such an instance
    /// gets it when it comes back with the same `instance_id`. Also how long a departed
    /// instance's consumer groups are kept before they are removed.
    pub retention: super::options::Retention,
    /// How long a job's progress record (see the book's heartbeats chapter) is kept after its
    /// last change: a running job pulses it fresh, an ended one is listed by `ebbflow jobs`
    /// this long, 1s..=7d, default 1h.
    pub job_retention: super::options::Retention,
    /// The largest envelope (its JSON, bytes) sent or accepted, 1024..=67108864, default
    /// 1048576 (1 MiB). Publishing a larger one fails; a larger stream entry is acknowledged and
    /// moved to the bus poison stream unread.
    pub max_envelope_size: super::options::EnvelopeLimit,
    /// Deliveries of a competing-consumer event (`Address::one_of`) whose handler fails (or whose
    /// instance dies) before it moves to the bus poison stream with its last error, 1..=1000,
    /// default 5.
    pub max_deliveries: super::options::MaxDeliveries,
    /// Entries a role's competing-consumer stream holds (waiting or unacknowledged) before a
    /// publish to it fails with an error, 1..=100000000, default 1000000. Nothing is dropped
    /// silently.
    pub max_backlog: super::options::MaxBacklog,
    /// A shared key (32+ characters) to sign every envelope and presence record with
    /// HMAC-SHA256; with a key set, unsigned or wrongly signed envelopes and presence are
    /// refused (counted in `ebbflow_bus_refused_total`). Unset (default): nothing is signed and
    /// an envelope's `from`/`role` are what the sender says. Env: `EBBFLOW__BUS__SIGNING_KEY`.
    pub signing_key: Option<super::options::SigningKey>,
    /// The previous signing key, still accepted (never used to sign) while a new one rolls out.
    pub signing_previous_key: Option<super::options::SigningKey>,
}

impl Default for BusSettings {
    fn default() -> Self {
        Self {
            kind: BusKind::None,
            url: None,
            role: Name("worker".into()),
            instance_id: None,
            channel_prefix: Name("ebbflow".into()),
            pulse_interval: Bounded(Duration::from_secs(5)),
            claim_timeout: Bounded(Duration::from_secs(30)),
            retention: super::options::default_retention(),
            job_retention: super::options::default_job_retention(),
            max_envelope_size: super::options::default_envelope_limit(),
            max_deliveries: super::options::default_max_deliveries(),
            max_backlog: super::options::default_max_backlog(),
            signing_key: None,
            signing_previous_key: None,
        }
    }
}

impl BusSettings {
    /// Cross-field checks (each field was checked while parsing).
    pub(crate) fn validate(&self) -> Result<(), crate::checks::ConfigError> {
        if self.signing_previous_key.is_some() && self.signing_key.is_none() {
            return Err(crate::checks::ConfigError::invalid(
                "bus.signing_previous_key",
                "<redacted>",
                "a previous signing key is only accepted beside bus.signing_key (the key that signs)",
            ));
        }
        match (self.kind, &self.url) {
            (BusKind::Redis, None) => Err(crate::checks::ConfigError::invalid(
                "bus.url",
                "(unset)",
                "bus.kind = \"redis\" needs bus.url (redis://host:port or rediss://...)",
            )),
            _ => Ok(()),
        }
    }

    /// Whether a bus reaches other instances.
    pub fn is_shared(&self) -> bool {
        self.kind != BusKind::None
    }
}

/// Who is woken by a work-detected event for a queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Reach {
    /// Exactly one replica's listener per event (no thundering herd); a replica that finds
    /// more than it can take passes the event on.
    #[default]
    One,
    /// Every replica's listener of the queue.
    All,
}

/// When a producer announces work on the bus, after the whitepaper's trigger modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum PublishMode {
    /// After every message sent.
    #[default]
    Every,
    /// Only for the first message sent to a queue its listeners last found empty.
    First,
    /// Like `first`, and again each time `depth` more messages were sent since the queue was
    /// last found empty (counted over all producers).
    Depth,
}

/// The `[queues.<name>.bus]` section: how the queue's work-detected events travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct QueueBusSettings {
    /// `one` (default) or `all`: who is woken per event.
    pub reach: Reach,
    /// `every` (default), `first` or `depth`: when this process's producers announce work.
    pub publish: PublishMode,
    /// With `publish = "depth"`: announce again every this many messages, 1..=100000
    /// (default 100).
    pub depth: AnnounceDepth,
    /// While the bus is down, a listener at zero tasks probes its queue this often (the bus is
    /// a hint, never the only path), 1s..=1h, default 30s. `"off"` turns it off, which
    /// `min_tasks = 0` accepts only with `scaling.idle_probe_interval` or the HTTP trigger.
    #[serde(with = "outage_probe")]
    pub outage_probe_interval: Option<OutageProbe>,
}

impl Default for QueueBusSettings {
    fn default() -> Self {
        Self {
            reach: Reach::One,
            publish: PublishMode::Every,
            depth: crate::checks::BoundedU32(100),
            outage_probe_interval: Some(Bounded(Duration::from_secs(30))),
        }
    }
}

/// `"off"` or a duration.
mod outage_probe {
    use super::OutageProbe;
    use crate::checks::HumanDuration;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Off(Off),
        On(HumanDuration),
    }

    #[derive(Deserialize)]
    enum Off {
        #[serde(rename = "off")]
        Off,
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<OutageProbe>, D::Error> {
        // The untagged enum's own error names neither the key's forms nor an example.
        let raw = Raw::deserialize(d)
            .map_err(|_: D::Error| serde::de::Error::custom("expected a duration or \"off\""))?;
        match raw {
            Raw::Off(Off::Off) => Ok(None),
            Raw::On(h) => OutageProbe::try_from(h)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }

    pub(super) fn serialize<S: Serializer>(
        v: &Option<OutageProbe>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            None => "off".serialize(s),
            Some(b) => HumanDuration::from(*b).serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_their_passwords_never_shown() {
        let url =
            RedisUrl::try_from("redis://app:s3cr%40t@cache.example:6380/2".to_string()).unwrap();
        assert_eq!(
            url.to_string(),
            "redis://app:<redacted>@cache.example:6380/2"
        );
        assert!(!format!("{url:?}").contains("s3cr"));
        assert_eq!(
            serde_json::to_string(&url).unwrap(),
            "\"redis://app:<redacted>@cache.example:6380/2\""
        );
        assert_eq!(
            url.passwords(),
            vec!["s3cr%40t".to_string(), "s3cr@t".to_string()]
        );
        assert_eq!(
            url.scrub("WRONGPASS for s3cr@t at redis://app:s3cr%40t@cache.example:6380/2"),
            "WRONGPASS for <redacted> at redis://app:<redacted>@cache.example:6380/2"
        );
        let lone = RedisUrl::try_from("rediss://hunter22@h".to_string()).unwrap();
        assert!(lone.is_tls());
        assert_eq!(lone.to_string(), "rediss://<redacted>@h");
        for bad in [
            "http://h:1",
            "redis://",
            "redis://:pw@h:notaport",
            "redis://h/x",
            "",
        ] {
            let err = RedisUrl::try_from(bad.to_string()).unwrap_err().to_string();
            assert!(!err.contains("pw@"), "{err}");
        }
        let err = RedisUrl::try_from("redis://u:topsecret@h:x".to_string())
            .unwrap_err()
            .to_string();
        assert!(!err.contains("topsecret"), "{err}");
        assert!(err.contains("port"), "{err}");
    }

    #[test]
    fn passwords_with_url_delimiters_never_show() {
        // Azure Cache for Redis access keys are base64 (`/`, `+`, `=`); pasted unencoded, a `/`
        // or `?` or `#` ends the authority for URL parsers, and the error must still hide it.
        for (text, secret) in [
            ("redis://:ab/cd+ef=@cache.example:6380", "ab/cd"),
            ("rediss://app:k3y/with/slashes@h:6380/0", "k3y/with"),
            ("redis://:pa?ss@h", "pa?ss"),
            ("redis://:pa#ss@h", "pa#ss"),
            ("redis://:p@ss:w%rd@h", "ss:w%rd"),
        ] {
            let shown = match RedisUrl::try_from(text.to_string()) {
                Ok(url) => {
                    let scrubbed = url.scrub(&format!("error at {text}"));
                    assert!(!scrubbed.contains(secret), "{scrubbed}");
                    format!("{url} {url:?} {}", serde_json::to_string(&url).unwrap())
                }
                Err(e) => e.to_string(),
            };
            assert!(!shown.contains(secret), "{text}: {shown}");
            assert!(!redact(text).contains(secret), "{}", redact(text));
        }
    }

    #[test]
    fn names_are_safe_for_channels() {
        assert!(Name::new("billing-processor.1_a").is_ok());
        for bad in ["", "a b", "a:b", "é", &"x".repeat(65), "a*"] {
            assert!(Name::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn queue_bus_settings_parse_modes_and_off() {
        let s: QueueBusSettings = serde_json::from_str(
            r#"{"reach":"all","publish":"depth","depth":50,"outage_probe_interval":"off"}"#,
        )
        .unwrap();
        assert_eq!(s.reach, Reach::All);
        assert_eq!(s.publish, PublishMode::Depth);
        assert_eq!(s.outage_probe_interval, None);
        let s: QueueBusSettings =
            serde_json::from_str(r#"{"outage_probe_interval":"5s"}"#).unwrap();
        assert_eq!(
            s.outage_probe_interval.map(|b| b.get()),
            Some(Duration::from_secs(5))
        );
        let err = serde_json::from_str::<QueueBusSettings>(r#"{"outage_probe_interval":"10ms"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("must be 1s..=1h"), "{err}");
        assert!(serde_json::from_str::<QueueBusSettings>(r#"{"reach":"some"}"#).is_err());
        assert_eq!(
            serde_json::to_value(QueueBusSettings::default()).unwrap()["outage_probe_interval"],
            "30s"
        );
    }

    #[test]
    fn bus_settings_need_a_url_for_redis() {
        let s: BusSettings = serde_json::from_str(r#"{"kind":"redis"}"#).unwrap();
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("bus.url"), "{err}");
        let err = serde_json::from_str::<BusSettings>(r#"{"pulse_interval":"1ms"}"#).unwrap_err();
        assert!(err.to_string().contains("100ms"), "{err}");
        let err = serde_json::from_str::<BusSettings>(r#"{"role":"a b"}"#).unwrap_err();
        assert!(err.to_string().contains("not allowed"), "{err}");
    }
}

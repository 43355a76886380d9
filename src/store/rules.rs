//! What the service refuses at each call, as [`StoreError::Invalid`] naming the queue, and the
//! typed time to live of a send. Both backends use these rules, so the embedded store refuses
//! exactly what the service refuses (checked against Azurite by `tests/azurite/conformance.rs`):
//!
//! | call | rule (Put Message, Update Message, Get Messages, Peek Messages) |
//! |---|---|
//! | send, update | text at most 64 KiB in UTF-8 bytes; only characters XML 1.0 allows |
//! | send | initial delay 0 s..=7 d; time to live 1 s..=2^31-1 s or never (-1); the delay shorter than the time to live |
//! | update | visibility 0 s..=7 d, and not past the message's expiry |
//! | receive | 1..=32 messages; visibility 1 s..=7 d |
//! | peek | 1..=32 messages |
//!
//! The service counts durations in whole seconds: a fraction of a second counts as a whole one
//! ([`whole_seconds`]), on both backends.
//!
//! Some of these never reach the service from the Azure backend, which refuses them itself
//! ([`check_send_expressible`], [`check_text`]): a time to live longer than the 32-bit count
//! of seconds the request can carry, and text with characters XML cannot carry (Azurite stores
//! such text, then fails every receive of its queue with a 500, so it must never be sent).

use std::time::Duration;

use time::OffsetDateTime;

use super::StoreError;
use crate::checks::InvalidValue;
use crate::service::{
    is_allowed_text_char, DEFAULT_TIME_TO_LIVE, MAX_BATCH, MAX_MESSAGE_BYTES, MAX_TIME_TO_LIVE,
    MAX_VISIBILITY,
};

/// How long a sent message lives before the service deletes it unread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum TimeToLive {
    /// The service's default: 7 days.
    #[default]
    ServiceDefault,
    /// It never expires (the service's `messagettl=-1`).
    Never,
    /// It expires this long after the send: 1 s..=2^31-1 s (about 68 years), in whole seconds
    /// (a fraction counts as a whole second). Longer is refused: use [`TimeToLive::Never`].
    After(Duration),
}

impl TimeToLive {
    /// The finite lifetime, or `None` for a message that never expires.
    pub fn duration(self) -> Option<Duration> {
        match self {
            Self::ServiceDefault => Some(DEFAULT_TIME_TO_LIVE),
            Self::Never => None,
            Self::After(d) => Some(d),
        }
    }

    /// What is left at `now` of the life of a message that expires at `expires_at` (`None`:
    /// never), as a time to live for a copy of it: never-expiring stays never-expiring; a
    /// finite remainder is kept whole (rounded up to a second, capped at the longest a send
    /// can carry, which is then about 68 years). `None` when it has already expired.
    pub fn remaining(expires_at: Option<OffsetDateTime>, now: OffsetDateTime) -> Option<Self> {
        let Some(expires) = expires_at else {
            return Some(Self::Never);
        };
        let left: Duration = (expires - now).try_into().ok()?;
        if left.is_zero() {
            return None;
        }
        Some(Self::After(left.min(MAX_TIME_TO_LIVE)))
    }

    /// At least `floor` of life (keeping never as never, and a longer life as it is).
    pub fn at_least(self, floor: TimeToLive) -> Self {
        match (self.duration(), floor.duration()) {
            (None, _) | (_, None) => Self::Never,
            (Some(mine), Some(theirs)) if theirs > mine => floor,
            _ => self,
        }
    }

    /// For messages: `never`, or the duration (`7days`, `30s`), or `the service default (7 days)`.
    pub fn describe(self) -> String {
        match self {
            Self::ServiceDefault => "the service default (7d)".into(),
            Self::Never => "never".into(),
            Self::After(d) => humantime::format_duration(d).to_string(),
        }
    }
}

impl std::str::FromStr for TimeToLive {
    type Err = InvalidValue;

    /// `never`, or a duration of 1s..=68years (`30d`, `12h`, `90days`).
    fn from_str(text: &str) -> Result<Self, InvalidValue> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("never") {
            return Ok(Self::Never);
        }
        let rule = "must be `never` or a duration of 1s..=68years (e.g. `30days`)";
        let d = humantime::parse_duration(text)
            .map_err(|e| InvalidValue::new(format!("`{text}`"), format!("{rule}; {e}")))?;
        if d.is_zero() || d > MAX_TIME_TO_LIVE {
            return Err(InvalidValue::new(format!("`{text}`"), rule));
        }
        Ok(Self::After(d))
    }
}

impl std::fmt::Display for TimeToLive {
    /// `never`, or the duration (`7days` for the service default), as settings spell it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.duration() {
            None => f.write_str("never"),
            Some(d) => write!(f, "{}", humantime::format_duration(d)),
        }
    }
}

/// Settings spell a time to live as `"never"` or a duration string, checked while parsing.
impl<'de> serde::Deserialize<'de> for TimeToLive {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for TimeToLive {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Options for [`super::Queue::send`]. Built from [`Default`] (no delay, the service's time to
/// live) with [`with_initial_delay`](Self::with_initial_delay) and
/// [`with_time_to_live`](Self::with_time_to_live), or by assigning the fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SendOptions {
    /// Invisible for this long after sending, 0 s..=7 d, shorter than the time to live.
    pub initial_delay: Duration,
    /// How long it lives; by default the service's 7 days.
    pub time_to_live: TimeToLive,
}

impl SendOptions {
    /// These options with the message invisible for `delay` after sending (0 s..=7 d, shorter
    /// than the time to live; [`SendOptions::check`] says when not).
    #[must_use]
    pub fn with_initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// These options with the message living `time_to_live` (1 s..=68 years, or never).
    #[must_use]
    pub fn with_time_to_live(mut self, time_to_live: TimeToLive) -> Self {
        self.time_to_live = time_to_live;
        self
    }

    /// Checks the options against the service's rules.
    ///
    /// # Errors
    ///
    /// [`InvalidValue`] naming the option and the rule it breaks: an initial delay over 7
    /// days or not shorter than the time to live, a time to live of zero or over 68 years.
    pub fn check(&self) -> Result<(), InvalidValue> {
        let delay = whole_seconds(self.initial_delay);
        if self.initial_delay > MAX_VISIBILITY {
            return Err(InvalidValue::new(
                format!(
                    "initial delay of {}",
                    humantime::format_duration(self.initial_delay)
                ),
                "must be at most 7 days",
            ));
        }
        if let TimeToLive::After(ttl) = self.time_to_live {
            if ttl.is_zero() {
                return Err(InvalidValue::new(
                    "time to live of 0s",
                    "must be at least 1s, or never",
                ));
            }
            if ttl > MAX_TIME_TO_LIVE {
                return Err(InvalidValue::new(
                    format!("time to live of {}", show(ttl)),
                    format!(
                        "must be at most {} (2^31-1 s, the service's count of seconds), or never",
                        humantime::format_duration(MAX_TIME_TO_LIVE)
                    ),
                ));
            }
        }
        if let Some(ttl) = self.time_to_live.duration() {
            if delay >= whole_seconds(ttl) {
                return Err(InvalidValue::new(
                    format!(
                        "initial delay of {}",
                        humantime::format_duration(self.initial_delay)
                    ),
                    format!(
                        "must be shorter than the time to live ({}): the message would expire \
                         before anyone could see it",
                        self.time_to_live.describe()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The time to live as the request's `messagettl`: `None` (omitted: 7 days), `-1`
    /// (never) or whole seconds. Call [`SendOptions::check`] first.
    pub fn message_ttl(&self) -> Option<i32> {
        match self.time_to_live {
            TimeToLive::ServiceDefault => None,
            TimeToLive::Never => Some(-1),
            TimeToLive::After(d) => Some(i32::try_from(whole_seconds(d)).unwrap_or(i32::MAX)),
        }
    }
}

/// `d` in whole seconds, a fraction counting as a whole second, as the service counts; never
/// overflows (`Duration::MAX` gives `u64::MAX`).
pub(crate) fn whole_seconds(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

/// A duration for a message, as shown in errors (`Duration::MAX` and other huge values too).
fn show(d: Duration) -> String {
    if d.as_secs() > 100 * 365 * 24 * 3600 {
        format!("{}s", d.as_secs())
    } else {
        humantime::format_duration(d).to_string()
    }
}

fn invalid(queue: &str, detail: impl Into<String>) -> StoreError {
    StoreError::Invalid {
        queue: queue.to_string(),
        detail: detail.into(),
        source: None,
    }
}

/// The text rule of Put Message and Update Message: at most 64 KiB in UTF-8 bytes, and only
/// characters XML 1.0 allows (the first one that is not is named by position).
pub(crate) fn check_text(queue: &str, text: &str) -> Result<(), StoreError> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(invalid(
            queue,
            format!(
                "message text of {} bytes: must be at most {MAX_MESSAGE_BYTES} (64 KiB)",
                text.len()
            ),
        ));
    }
    if let Some((at, c)) = text.char_indices().find(|(_, c)| !is_allowed_text_char(*c)) {
        return Err(invalid(
            queue,
            format!(
                "message text has U+{:04X} at byte {at}: the service carries text in XML, which \
                 allows no control characters but tab, line feed and carriage return (use \
                 base64 encoding for such payloads)",
                u32::from(c)
            ),
        ));
    }
    Ok(())
}

/// What the Azure backend refuses before sending: what the request cannot carry (a time to
/// live beyond 32 bits of seconds), text XML cannot carry, and a delay not shorter than the
/// default time to live (Azurite only checks the delay against an explicit one).
pub(crate) fn check_send_expressible(
    queue: &str,
    text: &str,
    options: &SendOptions,
) -> Result<(), StoreError> {
    if text.chars().any(|c| !is_allowed_text_char(c)) {
        check_text(queue, text)?;
    }
    let beyond = matches!(options.time_to_live, TimeToLive::After(d) if d > MAX_TIME_TO_LIVE);
    let default_too_short = options.time_to_live == TimeToLive::ServiceDefault
        && whole_seconds(options.initial_delay) >= whole_seconds(DEFAULT_TIME_TO_LIVE);
    if beyond || default_too_short || options.initial_delay > MAX_VISIBILITY {
        options.check().map_err(|e| invalid(queue, e.to_string()))?;
    }
    Ok(())
}

/// Every rule of Put Message.
pub(crate) fn check_send(queue: &str, text: &str, options: &SendOptions) -> Result<(), StoreError> {
    check_text(queue, text)?;
    options.check().map_err(|e| invalid(queue, e.to_string()))
}

/// The visibility rule of Update Message (0 s..=7 d) and its text rule.
pub(crate) fn check_update(
    queue: &str,
    visibility: Duration,
    text: Option<&str>,
) -> Result<(), StoreError> {
    if visibility > MAX_VISIBILITY {
        return Err(invalid(
            queue,
            format!(
                "visibility timeout of {}: must be at most 7 days",
                show(visibility)
            ),
        ));
    }
    match text {
        Some(text) => check_text(queue, text),
        None => Ok(()),
    }
}

/// The rules of Get Messages: 1..=32 messages, visibility 1 s..=7 d.
pub(crate) fn check_receive(queue: &str, max: u8, visibility: Duration) -> Result<(), StoreError> {
    check_count(queue, max)?;
    if visibility.is_zero() || visibility > MAX_VISIBILITY {
        return Err(invalid(
            queue,
            format!(
                "visibility timeout of {}: must be 1s..=7days",
                show(visibility)
            ),
        ));
    }
    Ok(())
}

/// The rule of Peek Messages (and Get Messages): 1..=32 messages.
pub(crate) fn check_count(queue: &str, max: u8) -> Result<(), StoreError> {
    if (1..=MAX_BATCH).contains(&max) {
        Ok(())
    } else {
        Err(invalid(
            queue,
            format!("asked for {max} messages: must be 1..={MAX_BATCH}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn send_options_follow_put_message() {
        let after = TimeToLive::After;
        let ok = |initial_delay, time_to_live| {
            SendOptions {
                initial_delay,
                time_to_live,
            }
            .check()
        };
        assert!(ok(Duration::ZERO, TimeToLive::ServiceDefault).is_ok());
        assert!(ok(7 * DAY, TimeToLive::Never).is_ok());
        assert!(ok(7 * DAY - Duration::from_secs(1), TimeToLive::ServiceDefault).is_ok());
        assert!(ok(7 * DAY, TimeToLive::ServiceDefault).is_err());
        assert!(ok(7 * DAY + Duration::from_secs(1), TimeToLive::Never).is_err());
        assert!(ok(Duration::ZERO, after(Duration::from_millis(1))).is_ok());
        assert!(ok(Duration::ZERO, after(Duration::ZERO)).is_err());
        assert!(ok(Duration::ZERO, after(MAX_TIME_TO_LIVE)).is_ok());
        let huge = ok(Duration::ZERO, after(Duration::MAX))
            .unwrap_err()
            .to_string();
        assert!(huge.contains("or never"), "{huge}");
        assert!(ok(Duration::from_secs(5), after(Duration::from_secs(5))).is_err());
        // Whole seconds: 4.5 s counts as 5 s.
        assert!(ok(Duration::from_millis(4500), after(Duration::from_secs(5))).is_err());
        assert!(ok(Duration::MAX, TimeToLive::Never).is_err());
        let o = |t| {
            SendOptions {
                initial_delay: Duration::ZERO,
                time_to_live: t,
            }
            .message_ttl()
        };
        assert_eq!(o(TimeToLive::ServiceDefault), None);
        assert_eq!(o(TimeToLive::Never), Some(-1));
        assert_eq!(o(after(Duration::from_millis(1500))), Some(2));
    }

    #[test]
    fn the_remaining_life_keeps_never_and_rounds_nothing_away() {
        let now = time::macros::datetime!(2026-11-30 8:00 UTC);
        assert_eq!(TimeToLive::remaining(None, now), Some(TimeToLive::Never));
        let in_30_days = now + time::Duration::days(30);
        assert_eq!(
            TimeToLive::remaining(Some(in_30_days), now),
            Some(TimeToLive::After(30 * DAY))
        );
        assert_eq!(TimeToLive::remaining(Some(now), now), None);
        let far = time::macros::datetime!(9000-01-01 0:00 UTC);
        assert_eq!(
            TimeToLive::remaining(Some(far), now),
            Some(TimeToLive::After(MAX_TIME_TO_LIVE))
        );
        let week = TimeToLive::After(7 * DAY);
        assert_eq!(week.at_least(TimeToLive::Never), TimeToLive::Never);
        assert_eq!(TimeToLive::Never.at_least(week), TimeToLive::Never);
        assert_eq!(
            week.at_least(TimeToLive::After(30 * DAY)),
            TimeToLive::After(30 * DAY)
        );
        assert_eq!(
            TimeToLive::After(30 * DAY).at_least(week),
            TimeToLive::After(30 * DAY)
        );
    }

    #[test]
    fn whole_seconds_never_overflow() {
        assert_eq!(whole_seconds(Duration::ZERO), 0);
        assert_eq!(whole_seconds(Duration::from_nanos(1)), 1);
        assert_eq!(whole_seconds(Duration::MAX), u64::MAX);
    }
}

//! Range checks for settings, shared by every room's settings types (storage beside `store`,
//! scaling beside `scaling`, triggers beside `trigger`, queues in `config`): a failure names the
//! full key, the value found and what is allowed, as a [`ConfigError`] (re-exported as
//! `config::ConfigError`). A leaf: it imports no other room.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A setting's value is outside what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InvalidSetting {
    /// The full key, e.g. `storage.retry.max_attempts`.
    pub key: String,
    /// The value found (secrets redacted by the caller).
    pub value: String,
    /// What is allowed.
    pub rule: String,
}

impl InvalidSetting {
    /// `key` holds `value`, which breaks `rule`.
    pub fn new(key: impl Into<String>, value: impl fmt::Display, rule: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.to_string(),
            rule: rule.into(),
        }
    }
}

impl fmt::Display for InvalidSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}: {}", self.key, self.value, self.rule)
    }
}

impl std::error::Error for InvalidSetting {}

/// `value` of `key` must be in `min..=max`.
///
/// # Errors
///
/// [`InvalidSetting`] naming `key`, the value and the range when `value` is outside it.
pub fn range(key: &str, value: u32, min: u32, max: u32) -> Result<(), InvalidSetting> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(InvalidSetting::new(
            key,
            value,
            format!("must be {min}..={max}"),
        ))
    }
}

/// `value` of `key` must be in `min..=max` (shown as `1s`, `7days`, ...).
///
/// # Errors
///
/// [`InvalidSetting`] naming `key`, the value and the range when `value` is outside it.
pub fn duration(
    key: &str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), InvalidSetting> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(InvalidSetting::new(
            key,
            humantime::format_duration(value),
            format!(
                "must be {}..={}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ))
    }
}

/// A settings problem, naming the key (or file) at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A file or environment value could not be read into the typed settings.
    #[error("config: {0}")]
    Load(String),
    /// A value is out of its allowed range.
    #[error("config: {key} = {value}: {rule}")]
    Invalid {
        /// The full key, e.g. `queues.orders.batch_size`.
        key: String,
        /// The value found (secrets redacted).
        value: String,
        /// What is allowed.
        rule: String,
    },
}

impl From<InvalidSetting> for ConfigError {
    fn from(e: InvalidSetting) -> Self {
        Self::Invalid {
            key: e.key,
            value: e.value,
            rule: e.rule,
        }
    }
}

impl ConfigError {
    pub(crate) fn invalid(
        key: impl Into<String>,
        value: impl fmt::Display,
        rule: impl Into<String>,
    ) -> Self {
        Self::Invalid {
            key: key.into(),
            value: value.to_string(),
            rule: rule.into(),
        }
    }
}

/// `value` of `key` must be in `min..=max`, as a [`ConfigError`].
pub(crate) fn check_range(key: &str, value: u32, min: u32, max: u32) -> Result<(), ConfigError> {
    Ok(range(key, value, min, max)?)
}

/// `value` of `key` must be in `min..=max`, as a [`ConfigError`].
pub(crate) fn check_duration(
    key: &str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), ConfigError> {
    Ok(duration(key, value, min, max)?)
}

/// A value a settings type refuses while it is parsed or built, before its key is known:
/// shown as `{value}: {rule}`. Loading adds the key (`queues.orders.batch_size = 33: must be
/// 1..=32`); [`InvalidValue::at`] does the same in code.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InvalidValue {
    /// The value found (secrets redacted).
    pub value: String,
    /// What is allowed, starting with `must`.
    pub rule: String,
}

impl InvalidValue {
    /// `value` breaks `rule` (which starts with `must`).
    pub fn new(value: impl fmt::Display, rule: impl Into<String>) -> Self {
        Self {
            value: value.to_string(),
            rule: rule.into(),
        }
    }

    /// The same problem, naming the key it was found at.
    pub fn at(self, key: impl Into<String>) -> InvalidSetting {
        InvalidSetting {
            key: key.into(),
            value: self.value,
            rule: self.rule,
        }
    }

    /// Reads back what [`InvalidValue`]'s `Display` wrote (`{value}: must ...`), as a settings
    /// loader finds it inside a deserializer's message.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let at = text.find(": must ")?;
        Some(Self::new(&text[..at], &text[at + 2..]))
    }
}

impl fmt::Display for InvalidValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.value, self.rule)
    }
}

impl std::error::Error for InvalidValue {}

/// A count in `MIN..=MAX`, checked while parsing (written as a plain integer) and when built
/// in code ([`BoundedU32::new`]), so a value out of range never reaches the worker.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct BoundedU32<const MIN: u32, const MAX: u32>(pub(crate) u32);

impl<const MIN: u32, const MAX: u32> BoundedU32<MIN, MAX> {
    /// The smallest value allowed.
    pub const MIN: u32 = MIN;
    /// The largest value allowed.
    pub const MAX: u32 = MAX;

    /// `n`, when in `MIN..=MAX`.
    ///
    /// # Errors
    ///
    /// [`InvalidValue`] (`n: must be MIN..=MAX`) when `n` is out of range.
    pub fn new(n: u32) -> Result<Self, InvalidValue> {
        if (MIN..=MAX).contains(&n) {
            Ok(Self(n))
        } else {
            Err(InvalidValue::new(n, format!("must be {MIN}..={MAX}")))
        }
    }

    /// `N`, checked when compiling (`Concurrency::of::<4>()` compiles, `of::<0>()` does not).
    pub const fn of<const N: u32>() -> Self {
        const { assert!(MIN <= N && N <= MAX, "out of range") };
        Self(N)
    }

    /// The value.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The value as a `usize` (a count of tasks, slots, bytes).
    pub const fn as_usize(self) -> usize {
        self.0 as usize
    }
}

impl<const MIN: u32, const MAX: u32> TryFrom<u64> for BoundedU32<MIN, MAX> {
    type Error = InvalidValue;
    fn try_from(n: u64) -> Result<Self, InvalidValue> {
        match u32::try_from(n) {
            Ok(n) => Self::new(n),
            Err(_) => Err(InvalidValue::new(n, format!("must be {MIN}..={MAX}"))),
        }
    }
}

impl<const MIN: u32, const MAX: u32> TryFrom<u32> for BoundedU32<MIN, MAX> {
    type Error = InvalidValue;
    fn try_from(n: u32) -> Result<Self, InvalidValue> {
        Self::new(n)
    }
}

impl<const MIN: u32, const MAX: u32> From<BoundedU32<MIN, MAX>> for u64 {
    fn from(b: BoundedU32<MIN, MAX>) -> u64 {
        u64::from(b.0)
    }
}

impl<const MIN: u32, const MAX: u32> From<BoundedU32<MIN, MAX>> for u32 {
    fn from(b: BoundedU32<MIN, MAX>) -> u32 {
        b.0
    }
}

impl<const MIN: u32, const MAX: u32> PartialEq<u32> for BoundedU32<MIN, MAX> {
    fn eq(&self, other: &u32) -> bool {
        self.0 == *other
    }
}

impl<const MIN: u32, const MAX: u32> PartialOrd<u32> for BoundedU32<MIN, MAX> {
    fn partial_cmp(&self, other: &u32) -> Option<std::cmp::Ordering> {
        self.0.partial_cmp(other)
    }
}

impl<const MIN: u32, const MAX: u32> fmt::Debug for BoundedU32<MIN, MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<const MIN: u32, const MAX: u32> fmt::Display for BoundedU32<MIN, MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A count in `MIN..=MAX` that may pass `u32` (bytes, progress units), checked while parsing
/// (written as a plain integer) and when built in code ([`BoundedU64::new`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct BoundedU64<const MIN: u64, const MAX: u64>(u64);

impl<const MIN: u64, const MAX: u64> BoundedU64<MIN, MAX> {
    /// `n`, when in `MIN..=MAX`.
    ///
    /// # Errors
    ///
    /// [`InvalidValue`] (`n: must be MIN..=MAX`) when `n` is out of range.
    pub fn new(n: u64) -> Result<Self, InvalidValue> {
        if (MIN..=MAX).contains(&n) {
            Ok(Self(n))
        } else {
            Err(InvalidValue::new(n, format!("must be {MIN}..={MAX}")))
        }
    }

    /// `N`, checked when compiling.
    pub const fn of<const N: u64>() -> Self {
        const { assert!(MIN <= N && N <= MAX, "out of range") };
        Self(N)
    }

    /// The value.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl<const MIN: u64, const MAX: u64> TryFrom<u64> for BoundedU64<MIN, MAX> {
    type Error = InvalidValue;
    fn try_from(n: u64) -> Result<Self, InvalidValue> {
        Self::new(n)
    }
}

impl<const MIN: u64, const MAX: u64> From<BoundedU64<MIN, MAX>> for u64 {
    fn from(b: BoundedU64<MIN, MAX>) -> u64 {
        b.0
    }
}

impl<const MIN: u64, const MAX: u64> fmt::Debug for BoundedU64<MIN, MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<const MIN: u64, const MAX: u64> fmt::Display for BoundedU64<MIN, MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A duration between `MIN` and `MAX` milliseconds, checked while parsing (written like
/// `"250ms"` or `"30s"`) and when built in code ([`BoundedDuration::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(try_from = "HumanDuration", into = "HumanDuration")]
pub struct BoundedDuration<const MIN: u64, const MAX: u64>(pub(crate) Duration);

impl<const MIN: u64, const MAX: u64> BoundedDuration<MIN, MAX> {
    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }

    /// `d`, when in range.
    ///
    /// # Errors
    ///
    /// [`InvalidValue`] (`d: must be MIN..=MAX`, in human units) when `d` is out of range.
    pub fn new(d: Duration) -> Result<Self, InvalidValue> {
        let (min, max) = (Duration::from_millis(MIN), Duration::from_millis(MAX));
        if (min..=max).contains(&d) {
            Ok(Self(d))
        } else {
            Err(InvalidValue::new(
                humantime::format_duration(d),
                format!(
                    "must be {}..={}",
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
            ))
        }
    }
}

/// A human-readable duration ("250ms", "30s") on the wire.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(transparent)]
pub struct HumanDuration(#[serde(with = "humantime_serde")] pub Duration);

impl<const MIN: u64, const MAX: u64> TryFrom<HumanDuration> for BoundedDuration<MIN, MAX> {
    type Error = InvalidValue;
    fn try_from(d: HumanDuration) -> Result<Self, InvalidValue> {
        Self::new(d.0)
    }
}

impl<const MIN: u64, const MAX: u64> From<BoundedDuration<MIN, MAX>> for HumanDuration {
    fn from(b: BoundedDuration<MIN, MAX>) -> Self {
        HumanDuration(b.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_checked_when_built_and_parsed() {
        type BatchSize = BoundedU32<1, 32>;
        assert_eq!(BatchSize::new(32).map(BatchSize::get), Ok(32));
        let err = BatchSize::new(33).unwrap_err();
        assert_eq!(err.to_string(), "33: must be 1..=32");
        assert_eq!(
            err.at("queues.orders.batch_size").to_string(),
            "queues.orders.batch_size = 33: must be 1..=32"
        );
        assert!(BatchSize::try_from(0u64).is_err());
        assert!(BatchSize::try_from(u64::from(u32::MAX) + 1).is_err());
        let parsed: Result<BatchSize, _> = serde_json::from_str("33");
        assert!(
            parsed
                .unwrap_err()
                .to_string()
                .contains("33: must be 1..=32"),
            "parsing runs the same check"
        );
    }

    #[test]
    fn a_refusal_is_read_back_from_a_message() {
        let e = InvalidValue::parse("1ms: must be 100ms..=5m").unwrap();
        assert_eq!(
            (e.value.as_str(), e.rule.as_str()),
            ("1ms", "must be 100ms..=5m")
        );
        assert_eq!(InvalidValue::parse("unknown field `x`, expected `y`"), None);
    }
}

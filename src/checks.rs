//! Range checks for settings, shared by every room's settings types (storage beside `store`,
//! scaling beside `scaling`, triggers beside `trigger`, queues in `config`): a failure names the
//! full key, the value found and what is allowed, as a [`ConfigError`] (re-exported as
//! `config::ConfigError`). A leaf: it imports no other room.

use std::fmt;
use std::time::Duration;

/// A setting's value is outside what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
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

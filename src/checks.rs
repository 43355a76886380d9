//! Range checks for settings, shared by every room's settings types (storage beside `store`,
//! queues and triggers in `config`): a failure names the full key, the value found and what
//! is allowed. A leaf: `config` turns an [`InvalidSetting`] into its `ConfigError`.

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

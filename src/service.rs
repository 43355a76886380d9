//! What the Azure queue service allows, in one place: its limits (batch, visibility timeout,
//! message size, time to live), its rules for queue names and message text, and how secrets
//! are kept out of what we print. A leaf: it depends on no other room, and every room that
//! needs a limit takes it from here (one definition each).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::checks::InvalidValue;

/// The most messages one receive (Get Messages) or peek may ask for.
pub const MAX_BATCH: u8 = 32;
/// The longest visibility timeout, initial delay or retry delay the service takes: 7 days.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// The largest message text the service accepts, in bytes after encoding: 64 KiB.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// The time to live a message gets when the sender names none: 7 days.
pub const DEFAULT_TIME_TO_LIVE: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest finite time to live a send can carry: the service counts it in whole seconds
/// in a 32-bit signed integer (about 68 years). Longer is refused; use "never expires".
pub const MAX_TIME_TO_LIVE: Duration = Duration::from_secs(i32::MAX as u64);

/// What the service allows as a queue name, as said in errors.
const QUEUE_NAME_RULE: &str = "must be 3-63 characters of lowercase letters, digits and single \
     hyphens, starting and ending with a letter or digit";

/// Checks a queue name against the service's rules: 3-63 characters, lowercase letters,
/// digits and single hyphens, starting and ending with a letter or digit.
///
/// # Errors
///
/// [`InvalidValue`] (the name and the rule) when `name` breaks them.
pub(crate) fn validate_queue_name(name: &str) -> Result<(), InvalidValue> {
    let ok_len = (3..=63).contains(&name.len());
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_ends = !name.starts_with('-') && !name.ends_with('-');
    if ok_len && ok_chars && ok_ends && !name.contains("--") {
        Ok(())
    } else {
        Err(InvalidValue::new(name, QUEUE_NAME_RULE))
    }
}

/// A queue name the service accepts (3..=63 lowercase letters, digits and single hyphens, starting
/// and ending with a letter or digit), checked while parsing and when built with
/// [`QueueName::new`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct QueueName(String);

impl QueueName {
    /// `name`, when the service accepts it.
    ///
    /// # Errors
    ///
    /// [`InvalidValue`] when `name` breaks the service's rules for queue names.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidValue> {
        let name = name.into();
        validate_queue_name(&name)?;
        Ok(Self(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for QueueName {
    type Error = InvalidValue;
    fn try_from(name: String) -> Result<Self, InvalidValue> {
        Self::new(name)
    }
}

impl From<QueueName> for String {
    fn from(name: QueueName) -> String {
        name.0
    }
}

impl std::ops::Deref for QueueName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for QueueName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Whether the service takes `c` in a message's text: the characters XML 1.0 allows (tab,
/// line feed, carriage return, and everything from U+0020 except U+FFFE and U+FFFF). Message
/// text travels in an XML body; the service answers 400 to any other character.
pub(crate) fn is_allowed_text_char(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_follow_the_service_rules() {
        for ok in ["orders", "a-b-c", "q12", &"a".repeat(63)] {
            assert!(validate_queue_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            "Orders",
            "-abc",
            "abc-",
            "a--b",
            "a_b",
            &"a".repeat(64),
        ] {
            assert!(validate_queue_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn text_rules_are_xml_characters() {
        for ok in [
            'a',
            '\t',
            '\n',
            '\r',
            ' ',
            '\u{D7FF}',
            '\u{E000}',
            '\u{FFFD}',
            '\u{1F600}',
        ] {
            assert!(is_allowed_text_char(ok), "{ok:?}");
        }
        for bad in [
            '\0', '\u{1}', '\u{8}', '\u{B}', '\u{C}', '\u{1F}', '\u{FFFE}', '\u{FFFF}',
        ] {
            assert!(!is_allowed_text_char(bad), "{bad:?}");
        }
    }
}

//! Settings of an output-only queue (`[outputs.<queue>]`): a queue this worker writes to and
//! does not consume (another worker does), declared so that start-up checks it (created when
//! `storage.create_queues` is on, else proven to exist) and its sends use the encoding,
//! compression, shards and trace context its consumer expects.

use serde::{Deserialize, Serialize};

use super::queue::Shards;
use crate::checks::ConfigError;
use crate::codec::claim::Compression;
use crate::codec::Encoding;
use crate::service::validate_queue_name;

/// Settings of one output-only queue: how its messages are written. Write the same values as
/// the consuming worker's `[queues.<queue>]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct OutputSettings {
    /// How message text is encoded on the queue: `base64` (what Azure Functions writes) or
    /// `none`.
    pub encoding: Encoding,
    /// Compression of payloads before the claim check's size decision: `identity` (none, the
    /// default), `gzip` or `zstd` (see `queues.<queue>.compression`).
    pub compression: Compression,
    /// Physical queues the queue spans, 1..=100 (`<queue>-0 .. <queue>-{N-1}` when over 1):
    /// sends are spread over them as its consumer's listener expects.
    pub shards: Shards,
    /// Put the sending span's W3C trace context in front of each message (see
    /// `queues.<queue>.trace_context`).
    pub trace_context: bool,
}

impl Default for OutputSettings {
    fn default() -> Self {
        Self {
            encoding: Encoding::Base64,
            compression: Compression::default(),
            shards: Shards::default(),
            trace_context: false,
        }
    }
}

impl OutputSettings {
    /// The name is a valid queue name.
    pub(crate) fn validate(&self, name: &str) -> Result<(), ConfigError> {
        validate_queue_name(name).map_err(|e| ConfigError::from(e.at(format!("outputs.{name}"))))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::Settings;

    fn load(toml: &str) -> Result<Settings, ConfigError> {
        let dir = std::env::temp_dir().join(format!("ebbflow-outputs-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("default.toml"), toml).unwrap();
        let loaded = Settings::load_from(&dir, &BTreeMap::new());
        std::fs::remove_dir_all(&dir).unwrap();
        loaded
    }

    #[test]
    fn an_outputs_section_loads_with_its_keys_and_a_misspelt_key_is_named() {
        let s = load(
            "[queues.orders]\n[outputs.emails]\nencoding = \"none\"\ncompression = \"zstd\"\n\
             shards = 2\n",
        )
        .unwrap();
        let emails = &s.outputs["emails"];
        assert_eq!(emails.encoding, Encoding::None);
        assert_eq!(emails.compression, Compression::Zstd);
        assert_eq!(emails.shards.get(), 2);
        assert!(!emails.trace_context);
        assert!(s.shard_counts().contains(&("emails".to_string(), 2)));
        let err = load("[outputs.emails]\nencodng = \"none\"\n").unwrap_err();
        assert!(err.to_string().contains("encodng"), "{err}");
        let env = BTreeMap::from([(
            "EBBFLOW__OUTPUTS__EMAILS__ENCODING".to_string(),
            "none".to_string(),
        )]);
        let dir = std::env::temp_dir().join(format!("ebbflow-outputs-{}", uuid::Uuid::new_v4()));
        let s = Settings::load_from(&dir, &env).unwrap();
        assert_eq!(
            s.outputs["emails"].encoding,
            Encoding::None,
            "set from the environment"
        );
    }
}

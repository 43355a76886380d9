//! Keeps the book's settings reference (`docs/src/configuration.md`) and the settings structs in
//! step: every key the settings serialize is listed in the reference with its built-in default,
//! and every key the reference lists exists.
//!
//! The reference's rows are the table rows between `<!-- reference:start -->` and
//! `<!-- reference:end -->` whose first cell is a key in backticks, written with `<queue>` for a
//! queue's name: `| `queues.<queue>.batch_size` | integer | `32` | ... |`. Keys are the settings
//! serialized to a value and flattened to dotted paths (a table's leaves; an array is one key).

mod formats;
mod table;

use std::collections::BTreeMap;

use serde_json::Value;

use table::{disagreements, flatten};

/// The reference as the book has it.
const REFERENCE: &str = include_str!("../docs/src/configuration.md");

/// The runtime's keys: [`crate::Settings`]'s defaults plus one queue and one output. The `[deploy]` section,
/// which only the `ebbflow` command line reads, has a region of its own, checked by the CLI
/// crate's tests (`workers/cli/tests/cli/deploy.rs`, with the helpers in `reference/table.rs`).
fn settings_keys() -> BTreeMap<String, Value> {
    let mut settings = crate::Settings::default();
    settings
        .queues
        .insert("q".to_string(), crate::config::QueueSettings::default());
    settings
        .outputs
        .insert("q".to_string(), crate::config::OutputSettings::default());
    let value = serde_json::to_value(&settings).expect("settings serialize");
    let mut keys = BTreeMap::new();
    flatten("", &value, &mut keys);
    keys
}

#[test]
fn the_reference_lists_every_settings_key_with_its_default() {
    let problems = disagreements(REFERENCE, "reference", &settings_keys());
    assert!(
        problems.is_empty(),
        "docs/src/configuration.md and the settings disagree:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn a_key_missing_from_the_reference_or_extra_in_it_is_named() {
    let keys = settings_keys();
    let row = "| `queues.<queue>.batch_size` |";
    let line = REFERENCE
        .lines()
        .find(|l| l.starts_with(row))
        .expect("the batch_size row");
    let without = REFERENCE.replace(line, "");
    assert_eq!(
        disagreements(&without, "reference", &keys),
        ["queues.<queue>.batch_size: in the settings, missing from the reference (add a row)"]
    );
    let extra = REFERENCE.replace(
        line,
        &format!("{line}\n| `queues.<queue>.batch_sise` | integer | `1` | typo |"),
    );
    assert_eq!(
        disagreements(&extra, "reference", &keys),
        ["queues.<queue>.batch_sise: in the reference, no such key in the settings (remove or rename the row)"]
    );
    let wrong = REFERENCE.replace(line, &line.replace("`32`", "`31`"));
    assert_eq!(
        disagreements(&wrong, "reference", &keys).len(),
        1,
        "a wrong default is named"
    );
}

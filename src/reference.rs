//! Keeps the book's settings reference (`docs/src/configuration.md`) and the settings structs in
//! step: every key the settings serialize is listed in the reference with its built-in default,
//! and every key the reference lists exists.
//!
//! The reference's rows are the table rows between `<!-- reference:start -->` and
//! `<!-- reference:end -->` whose first cell is a key in backticks, written with `<queue>` for a
//! queue's name: `| `queues.<queue>.batch_size` | integer | `32` | ... |`. Keys are the settings
//! serialized to a value and flattened to dotted paths (a table's leaves; an array is one key).

use std::collections::BTreeMap;

use serde_json::Value;

/// The reference as the book has it.
const REFERENCE: &str = include_str!("../docs/src/configuration.md");

/// Every key of `value`, dotted, with its default; `queues.<name>` written `queues.<queue>`.
fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                let key = if prefix == "queues" { "<queue>" } else { key };
                let path = if prefix.is_empty() {
                    key.to_string()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&path, child, out);
            }
        }
        _ => {
            out.insert(prefix.to_string(), value.clone());
        }
    }
}

/// The reference's rows between `<!-- {region}:start -->` and `<!-- {region}:end -->`: key to
/// its default cell.
fn documented(doc: &str, region: &str) -> BTreeMap<String, String> {
    let start = doc
        .find(&format!("<!-- {region}:start -->"))
        .expect("the region's start marker");
    let end = doc
        .find(&format!("<!-- {region}:end -->"))
        .expect("the region's end marker");
    doc[start..end]
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
            let key = cells.first()?.trim().strip_prefix('`')?.strip_suffix('`')?;
            let default = cells.get(2).map_or("", |c| c.trim());
            key.contains('.')
                .then(|| (key.to_string(), default.to_string()))
        })
        .collect()
}

/// How a default appears in the reference's default cell: in backticks, as TOML spells it.
fn spelled(default: &Value) -> Option<String> {
    match default {
        Value::Null => None,
        Value::String(s) => Some(format!("`{s}`")),
        Value::Array(a) if a.is_empty() => Some("`[]`".to_string()),
        other => Some(format!("`{other}`")),
    }
}

/// Every disagreement between `doc` and the settings' keys and defaults, one line each.
fn disagreements(doc: &str, region: &str, settings: &BTreeMap<String, Value>) -> Vec<String> {
    let listed = documented(doc, region);
    let mut out = Vec::new();
    for (key, default) in settings {
        match listed.get(key) {
            None => out.push(format!(
                "{key}: in the settings, missing from the reference (add a row)"
            )),
            Some(cell) => {
                if let Some(want) = spelled(default) {
                    if !cell.contains(&want) {
                        out.push(format!(
                            "{key}: the default is {want}, the reference says {cell:?}"
                        ));
                    }
                }
            }
        }
    }
    for key in listed.keys() {
        if !settings.contains_key(key) {
            out.push(format!(
                "{key}: in the reference, no such key in the settings (remove or rename the row)"
            ));
        }
    }
    out
}

/// The runtime's keys: [`crate::Settings`]'s defaults plus one queue. The `[deploy]` section,
/// which only `ebbflow deploy` reads, has a region of its own.
fn settings_keys() -> BTreeMap<String, Value> {
    let mut settings = crate::Settings::default();
    settings
        .queues
        .insert("q".to_string(), crate::config::QueueSettings::default());
    let mut value = serde_json::to_value(&settings).expect("settings serialize");
    if let Value::Object(map) = &mut value {
        map.remove("deploy");
    }
    let mut keys = BTreeMap::new();
    flatten("", &value, &mut keys);
    keys
}

/// The `[deploy]` section's keys, read by `ebbflow deploy` (it moves with the manifest code).
fn deploy_keys() -> BTreeMap<String, Value> {
    let value = serde_json::to_value(crate::deploy::DeploySettings::default())
        .expect("deploy settings serialize");
    let mut keys = BTreeMap::new();
    flatten("deploy", &value, &mut keys);
    keys
}

#[test]
fn the_deploy_reference_lists_every_deploy_key_with_its_default() {
    let problems = disagreements(REFERENCE, "deploy-reference", &deploy_keys());
    assert!(
        problems.is_empty(),
        "docs/src/configuration.md's [deploy] table and DeploySettings disagree:\n  {}",
        problems.join("\n  ")
    );
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

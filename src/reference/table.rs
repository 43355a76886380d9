//! Comparing a reference table in the book with the keys settings serialize to. Shared by the
//! runtime's reference test (`src/reference.rs`) and the command line's for `[deploy]`
//! (`workers/cli/tests/cli/deploy.rs` includes this file by path), so it uses only `std` and
//! `serde_json`.

use std::collections::BTreeMap;

use serde_json::Value;

/// Every key of `value`, dotted, with its default; `queues.<name>` written `queues.<queue>`
/// (and `outputs.<name>` written `outputs.<queue>`).
pub(crate) fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                let key = if prefix == "queues" || prefix == "outputs" {
                    "<queue>"
                } else {
                    key
                };
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
pub(crate) fn disagreements(
    doc: &str,
    region: &str,
    settings: &BTreeMap<String, Value>,
) -> Vec<String> {
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

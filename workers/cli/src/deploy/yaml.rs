//! A small ordered document tree for manifests, written out by `serde-saphyr`.
//!
//! Kubernetes reads YAML 1.1 (through sigs.k8s.io/yaml), where a plain `on`, `yes`, `y`, `0755`,
//! `1_000`, `12:30` or `2024-01-01` is not a string. `serde-saphyr`'s default (not `yaml_12`)
//! quotes every string that a YAML 1.1 or 1.2 reader would take for something else, so what we
//! write as a string is read as one; the tests here and in `tests/cli/deploy.rs` hold it to that.
//! Keys keep the order they were built in (`apiVersion`, `kind`, `metadata`, `spec`).

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// A manifest value.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// Text, always read back as text.
    Str(String),
    /// A whole number.
    Int(u64),
    /// A number with a fraction (Container Apps' `cpu: 0.5`).
    Float(f64),
    /// `true` / `false`.
    Bool(bool),
    /// A list.
    Seq(Vec<Node>),
    /// A mapping, in insertion order.
    Map(Vec<(String, Node)>),
}

/// A mapping from `(key, value)` pairs, in order.
pub fn map<K: Into<String>>(entries: impl IntoIterator<Item = (K, Node)>) -> Node {
    Node::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

/// A list.
pub fn seq(items: impl IntoIterator<Item = Node>) -> Node {
    Node::Seq(items.into_iter().collect())
}

/// Text.
pub fn s(text: impl Into<String>) -> Node {
    Node::Str(text.into())
}

impl From<u64> for Node {
    fn from(n: u64) -> Self {
        Node::Int(n)
    }
}

impl From<u32> for Node {
    fn from(n: u32) -> Self {
        Node::Int(u64::from(n))
    }
}

impl From<bool> for Node {
    fn from(b: bool) -> Self {
        Node::Bool(b)
    }
}

impl Node {
    /// Adds `key: value` to a mapping (no-op on other nodes).
    pub fn with(mut self, key: &str, value: Node) -> Self {
        if let Node::Map(entries) = &mut self {
            entries.push((key.to_string(), value));
        }
        self
    }
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Str(t) => ser.serialize_str(t),
            Node::Int(n) => ser.serialize_u64(*n),
            Node::Float(x) => ser.serialize_f64(*x),
            Node::Bool(b) => ser.serialize_bool(*b),
            Node::Seq(items) => {
                let mut out = ser.serialize_seq(Some(items.len()))?;
                for item in items {
                    out.serialize_element(item)?;
                }
                out.end()
            }
            Node::Map(entries) => {
                let mut out = ser.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    out.serialize_entry(k, v)?;
                }
                out.end()
            }
        }
    }
}

/// The documents as one YAML stream, separated by `---`.
pub fn to_yaml(docs: &[Node]) -> Result<String, String> {
    let mut options = serde_saphyr::SerializerOptions::default();
    options.indent_step = 2;
    serde_saphyr::to_string_multiple_with_options(docs, options).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strings a YAML 1.1 reader (Kubernetes) would turn into booleans, numbers, nulls or
    /// timestamps if they were written plain, and strings that are plain-safe.
    const TRICKY: &[&str] = &[
        "on",
        "off",
        "On",
        "OFF",
        "yes",
        "no",
        "Yes",
        "NO",
        "y",
        "n",
        "Y",
        "N",
        "true",
        "False",
        "null",
        "~",
        "",
        "0755",
        "0o755",
        "0x1F",
        "0b101",
        "08",
        "1e3",
        "1.0e+3",
        "1_000",
        "12:30",
        "1:20:30",
        ".inf",
        "-.inf",
        ".nan",
        "64",
        "-0",
        "+12",
        "3.5",
        "2024-01-01",
        "<<",
        "=",
    ];

    #[test]
    fn strings_that_yaml_1_1_reads_as_other_types_are_quoted() {
        for t in TRICKY {
            let out = to_yaml(&[map([("k", s(*t))])]).unwrap();
            let value = out
                .trim_end()
                .strip_prefix("k: ")
                .unwrap_or_else(|| panic!("{out}"));
            assert!(
                value.starts_with('"') || value.starts_with('\''),
                "{t:?} came out plain: {out}"
            );
        }
        // Typed values stay plain, and ordinary text is not quoted needlessly.
        let out = to_yaml(&[map([
            ("int", Node::from(64u32)),
            ("bool", Node::from(true)),
            ("float", Node::Float(0.5)),
            ("text", s("AzurePublicCloud")),
            // Keys too: a plain `y` or `on` key is a boolean in YAML 1.1.
            ("y", s("/healthz")),
        ])])
        .unwrap();
        assert_eq!(
            out,
            "int: 64\nbool: true\nfloat: 0.5\ntext: AzurePublicCloud\n\"y\": /healthz\n"
        );
    }

    #[test]
    fn documents_keep_key_order_and_are_separated() {
        let docs = [
            map([("kind", s("A")), ("apiVersion", s("v1"))]),
            map([("kind", s("B")), ("list", seq([s("x"), Node::from(1u32)]))]),
        ];
        assert_eq!(
            to_yaml(&docs).unwrap(),
            "kind: A\napiVersion: v1\n---\nkind: B\nlist:\n- x\n- 1\n"
        );
    }
}

//! YAML 1.1 (what Kubernetes reads) against YAML 1.2: the plain scalars of our output must be
//! typed alike by both.

/// How a reader types a plain (unquoted) scalar.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Null,
    Bool,
    Number,
    Timestamp,
    /// A leading-zero integer: octal in YAML 1.1, decimal in 1.2.
    Octal,
    Special,
    Str,
}

fn digits(s: &str, radix: u32, underscores: bool) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_digit(radix) || (underscores && c == '_'))
}

fn unsigned(s: &str) -> &str {
    s.strip_prefix(['-', '+']).unwrap_or(s)
}

/// Decimal float with an optional exponent: `1.5`, `.5`, `1.`, `1e3`, `1.0e+3`.
fn float_like(s: &str, underscores: bool) -> bool {
    let s = unsigned(s);
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((a, b)) => {
            (a.is_empty() || digits(a, 10, underscores))
                && (b.is_empty() || digits(b, 10, underscores))
                && !(a.is_empty() && b.is_empty())
        }
        None => digits(mantissa, 10, underscores),
    };
    let exp_ok = exp.is_none_or(|e| digits(unsigned(e), 10, false));
    mantissa_ok && exp_ok && (mantissa.contains('.') || exp.is_some())
}

/// YAML 1.1's types (the yaml.org type repository, and go-yaml's leniencies).
fn yaml_1_1(s: &str) -> Kind {
    const BOOLS: &[&str] = &[
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
        "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF",
    ];
    if matches!(s, "" | "~" | "null" | "Null" | "NULL") {
        return Kind::Null;
    }
    if BOOLS.contains(&s) {
        return Kind::Bool;
    }
    if matches!(s, "<<" | "=") {
        return Kind::Special;
    }
    let u = unsigned(s);
    if u.len() > 1 && u.starts_with('0') && digits(&u[1..], 8, true) {
        return Kind::Octal;
    }
    let sexagesimal = u.contains(':')
        && u.split(':').enumerate().all(|(i, part)| {
            let part = if i > 0 {
                part.split('.').next().unwrap_or(part)
            } else {
                part
            };
            digits(part, 10, true)
        });
    let number = digits(u, 10, true)
        || u.strip_prefix("0b").is_some_and(|d| digits(d, 2, true))
        || u.strip_prefix("0x").is_some_and(|d| digits(d, 16, true))
        || u.strip_prefix("0o").is_some_and(|d| digits(d, 8, true))
        || float_like(s, true)
        || sexagesimal
        || matches!(u, ".inf" | ".Inf" | ".INF")
        || matches!(s, ".nan" | ".NaN" | ".NAN");
    if number {
        return Kind::Number;
    }
    let b = s.as_bytes();
    if b.len() >= 10 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[7] == b'-' {
        return Kind::Timestamp;
    }
    Kind::Str
}

/// YAML 1.2's core schema.
fn yaml_1_2(s: &str) -> Kind {
    if matches!(s, "" | "~" | "null" | "Null" | "NULL") {
        return Kind::Null;
    }
    if matches!(s, "true" | "True" | "TRUE" | "false" | "False" | "FALSE") {
        return Kind::Bool;
    }
    let u = unsigned(s);
    let number = digits(u, 10, false)
        || s.strip_prefix("0o").is_some_and(|d| digits(d, 8, false))
        || s.strip_prefix("0x").is_some_and(|d| digits(d, 16, false))
        || float_like(s, false)
        || matches!(u, ".inf" | ".Inf" | ".INF")
        || matches!(s, ".nan" | ".NaN" | ".NAN");
    if number {
        Kind::Number
    } else {
        Kind::Str
    }
}

/// The plain scalars (keys and values) of block-style YAML as our writer lays it out.
fn plain_scalars(yaml: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in yaml.lines() {
        let mut rest = line.trim_start();
        if rest.starts_with('#') || rest == "---" || rest.is_empty() {
            continue;
        }
        while let Some(r) = rest.strip_prefix("- ") {
            rest = r.trim_start();
        }
        if rest == "-" {
            continue;
        }
        let (key, value) = if rest.starts_with(['"', '\'']) {
            // A quoted key (or a quoted list item): only what follows it can be plain.
            let q = rest.as_bytes()[0] as char;
            let end = rest[1..].find(q).map_or(rest.len(), |i| i + 2);
            (None, rest[end..].strip_prefix(':').map(str::trim))
        } else if let Some((k, v)) = rest.split_once(": ") {
            (Some(k), Some(v.trim()))
        } else if let Some(k) = rest.strip_suffix(':') {
            (Some(k), None)
        } else {
            (None, Some(rest))
        };
        out.extend(key.map(str::to_string));
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            if !v.starts_with(['"', '\'', '|', '>', '{', '[']) {
                out.push(v.to_string());
            }
        }
    }
    out
}

/// The plain scalars that Kubernetes (YAML 1.1) and a YAML 1.2 reader type differently.
fn read_differently(yaml: &str) -> Vec<String> {
    let scalars = plain_scalars(yaml);
    assert!(scalars.len() > 10, "{yaml}");
    scalars
        .into_iter()
        .filter(|s| yaml_1_1(s) != yaml_1_2(s))
        .collect()
}

/// Both readers agree on every plain scalar, so what the writer meant as text is text, and
/// numbers and booleans are what they look like to both.
pub fn assert_yaml_1_1_reads_the_same(yaml: &str) {
    let differ = read_differently(yaml);
    assert!(
        differ.is_empty(),
        "{differ:?} are read differently:\n{yaml}"
    );
}

#[test]
fn the_yaml_1_1_check_catches_what_it_guards_against() {
    for plain in [
        "on",
        "yes",
        "y",
        "0755",
        "1_000",
        "12:30",
        "2024-01-01",
        "<<",
        "0b1",
    ] {
        assert_ne!(yaml_1_1(plain), yaml_1_2(plain), "{plain}");
        let yaml = format!("apiVersion: v1\nkind: A\nmetadata:\n  name: a\n  labels:\n    a: b\n    c: d\n    e: f\n    g: h\n    i: j\n    value: {plain}\n");
        assert_eq!(read_differently(&yaml), [plain], "{plain} slipped through");
    }
    for same in [
        "64",
        "true",
        "0.5",
        "AzurePublicCloud",
        "/healthz",
        "0.0.0.0:9464",
        "500m",
    ] {
        assert_eq!(yaml_1_1(same), yaml_1_2(same), "{same}");
    }
}

/// The documents as PyYAML reads them: a YAML 1.1 reader, with the same resolvers as the
/// go-yaml v2 Kubernetes reads manifests with (`scripts/test` makes sure it is installed).
pub fn read_by_pyyaml(yaml: &str) -> Vec<serde_json::Value> {
    use std::io::Write;
    const SCRIPT: &str = "import json, sys, yaml\n\
        print(json.dumps(list(yaml.safe_load_all(sys.stdin.read()))))";
    let mut child = std::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (scripts/test needs it too)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "PyYAML could not read it (scripts/test installs PyYAML: python3 -m pip install pyyaml): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

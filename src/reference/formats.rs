//! Keeps the book's descriptions of the wire formats other programs read and write in step with
//! the code: the poison reasons (`docs/src/message-life.md`) and the claim-check reference
//! (`docs/src/claim-check.md`). Each is a region between `<!-- NAME:start -->` and
//! `<!-- NAME:end -->`.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::codec::claim::{ClaimRef, Compression};
use crate::listener::poison::PoisonReason;

const MESSAGE_LIFE: &str = include_str!("../../docs/src/message-life.md");
const CLAIM_CHECK: &str = include_str!("../../docs/src/claim-check.md");

/// The lines of `doc` between `<!-- name:start -->` and `<!-- name:end -->`.
fn region<'a>(doc: &'a str, name: &str) -> &'a str {
    let start = format!("<!-- {name}:start -->");
    let end = format!("<!-- {name}:end -->");
    let from = doc
        .find(&start)
        .unwrap_or_else(|| panic!("{start} is missing"))
        + start.len();
    let to = doc[from..]
        .find(&end)
        .unwrap_or_else(|| panic!("{end} is missing"))
        + from;
    &doc[from..to]
}

/// The table rows of `region` (header and rule skipped) as their cells, trimmed.
fn rows(region: &str) -> Vec<Vec<String>> {
    region
        .lines()
        .filter(|l| l.trim_start().starts_with('|'))
        .skip(2)
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// The first cell's key: `` `name` `` without the backticks.
fn key(cell: &str) -> String {
    cell.trim().trim_matches('`').to_string()
}

/// Every reason, found by an exhaustive match: a new variant does not compile here until it
/// is added to the list (and so to the check against the book).
fn all_reasons() -> Vec<PoisonReason> {
    let all = [
        PoisonReason::MaxDequeueCountExceeded,
        PoisonReason::Undecodable,
        PoisonReason::Rejected,
        PoisonReason::PayloadUnavailable,
    ];
    for reason in all {
        match reason {
            PoisonReason::MaxDequeueCountExceeded
            | PoisonReason::Undecodable
            | PoisonReason::Rejected
            | PoisonReason::PayloadUnavailable => {}
        }
    }
    all.to_vec()
}

/// The reasons the code writes against those the book lists: what is missing, what is extra.
fn reason_disagreements(doc: &str) -> Vec<String> {
    let code: BTreeSet<String> = all_reasons()
        .into_iter()
        .map(|r| {
            let written = serde_json::to_value(r).expect("a reason serializes");
            assert_eq!(written, Value::from(r.as_str()), "serde and as_str agree");
            r.as_str().to_string()
        })
        .collect();
    let documented: BTreeSet<String> = rows(region(doc, "poison-reasons"))
        .iter()
        .map(|r| key(&r[0]))
        .collect();
    let mut problems: Vec<String> = code
        .difference(&documented)
        .map(|r| format!("{r}: a reason the code writes, missing from the book"))
        .collect();
    problems.extend(
        documented
            .difference(&code)
            .map(|r| format!("{r}: in the book, no such reason in the code")),
    );
    problems
}

#[test]
fn the_book_lists_every_poison_reason_and_no_other() {
    let problems = reason_disagreements(MESSAGE_LIFE);
    assert!(
        problems.is_empty(),
        "docs/src/message-life.md and PoisonReason disagree:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn a_reason_missing_from_the_book_is_named() {
    let row = MESSAGE_LIFE
        .lines()
        .find(|l| l.starts_with("| `payload_unavailable` |"))
        .expect("the payload_unavailable row");
    let without = MESSAGE_LIFE.replace(row, "");
    assert_eq!(
        reason_disagreements(&without),
        ["payload_unavailable: a reason the code writes, missing from the book"]
    );
}

/// The documented example reference, as JSON text.
fn example() -> String {
    let block = region(CLAIM_CHECK, "claim-example");
    let from = block.find("```json").expect("a json block") + "```json".len();
    let to = block[from..].find("```").expect("its end") + from;
    block[from..to].to_string()
}

/// The documented keys with their `type` and `required` cells.
fn documented_keys() -> Vec<(String, String, String)> {
    rows(region(CLAIM_CHECK, "claim-format"))
        .into_iter()
        .map(|r| {
            assert_eq!(r.len(), 4, "key | type | required | meaning: {r:?}");
            (key(&r[0]), r[1].clone(), r[2].clone())
        })
        .collect()
}

#[test]
fn the_documented_reference_parses_and_writes_back_identical() {
    let text = example();
    let parsed = ClaimRef::parse(&text)
        .expect("the example is a valid reference")
        .expect("the example is a reference");
    assert_eq!(parsed.content_encoding, Compression::Zstd);
    assert_eq!(
        parsed.location(),
        "blob ebbflow-payloads/reports/2026-12-07/6f1c0d0e9a8b4c2d8e7f6a5b4c3d2e1f.bin"
    );
    let written: Value = serde_json::from_str(&parsed.to_text()).unwrap();
    let documented: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(written, documented, "to_text writes what the book shows");
    // And in the same key order, compact: what ebbflow puts on the queue.
    let compact = minified(&text);
    assert_eq!(parsed.to_text(), compact);
    // The writer makes the same for the same blob.
    let made = ClaimRef {
        sha256: parsed.sha256.clone(),
        size: parsed.size,
        ..ClaimRef::to_blob(
            "ebbflow-payloads",
            "reports/2026-12-07/6f1c0d0e9a8b4c2d8e7f6a5b4c3d2e1f.bin",
            b"",
            Compression::Zstd,
            1_048_576,
        )
    };
    assert_eq!(made.to_text(), compact);
}

/// `json` without the whitespace between its tokens, its key order kept.
fn minified(json: &str) -> String {
    let (mut out, mut in_string, mut escaped) = (String::new(), false, false);
    for c in json.chars() {
        if in_string {
            in_string = escaped || c != '"';
            escaped = !escaped && c == '\\';
        } else if c == '"' {
            in_string = true;
        } else if c.is_whitespace() {
            continue;
        }
        out.push(c);
    }
    out
}

#[test]
fn the_documented_keys_are_the_keys_the_code_writes_with_their_types() {
    let trace = crate::codec::TraceContext::parse(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        Some("k=v"),
    )
    .expect("a traceparent");
    // Every optional key filled (a blob and inline data at once: written, never parsed).
    let full = ClaimRef {
        data: Some("AAEC".into()),
        stored_size: Some(3),
        trace: Some(trace),
        ..ClaimRef::to_blob("c", "b", b"abc", Compression::Gzip, 3)
    };
    let Value::Object(written) = serde_json::to_value(&full).unwrap() else {
        panic!("a reference is an object");
    };
    let documented = documented_keys();
    let names: BTreeSet<&str> = documented.iter().map(|(k, _, _)| k.as_str()).collect();
    let code: BTreeSet<&str> = written.keys().map(String::as_str).collect();
    assert_eq!(names, code, "the book's keys and the keys ClaimRef writes");
    for (name, ty, _) in &documented {
        let value = &written[name];
        let actual = match value {
            Value::Number(n) if n.is_u64() => "integer",
            Value::String(_) => "string",
            Value::Object(_) => "object",
            other => panic!("{name}: unexpected {other}"),
        };
        assert_eq!(ty, actual, "the type of `{name}`");
    }
}

#[test]
fn required_keys_are_refused_when_missing_and_optional_ones_are_not() {
    let Value::Object(blob_form) = serde_json::from_str::<Value>(&example()).unwrap() else {
        panic!("the example is an object");
    };
    let mut inline_form = blob_form.clone();
    inline_form.remove("container");
    inline_form.remove("blob");
    inline_form.insert("data".into(), Value::from("AAEC"));
    let parses = |o: &serde_json::Map<String, Value>| {
        matches!(
            ClaimRef::parse(&Value::Object(o.clone()).to_string()),
            Ok(Some(_))
        )
    };
    assert!(parses(&blob_form) && parses(&inline_form));
    for (name, _, required) in documented_keys() {
        let mut without = blob_form.clone();
        let mut inline_without = inline_form.clone();
        let present = without.remove(&name).is_some() | inline_without.remove(&name).is_some();
        if !present {
            continue;
        }
        match required.as_str() {
            "yes" => assert!(
                !parses(&without) && !parses(&inline_without),
                "`{name}` is documented as required, but a reference without it parses"
            ),
            "no" => assert!(
                parses(&without) && parses(&inline_without),
                "`{name}` is documented as optional, but a reference without it is refused"
            ),
            // `container`/`blob` (unless `data`) and `data` (instead of them): the form
            // missing its part is refused, and both at once too.
            _ if name == "data" => {
                assert!(!parses(&inline_without));
                let mut both = blob_form.clone();
                both.insert("data".into(), Value::from("AAEC"));
                assert!(
                    !parses(&both),
                    "`data` beside `container`/`blob` is refused"
                );
            }
            _ => assert!(!parses(&without), "`{name}` is needed in the blob form"),
        }
    }
}

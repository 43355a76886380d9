//! The import rule, checked: rooms (the crate's top-level modules) import downward only, so
//! no circle runs between them. Leaves (`service`, `checks`, `codec`, `secret`, `throttle`,
//! `endpoint`) import no room; each room's settings types sit beside it and import only
//! leaves; `config` aggregates them; `listener`, `observability` and `worker` are on top.
//!
//! The test reads every source file under `src/`, collects the `crate::` paths it names
//! (code and doc links; test modules left out, they may reach anywhere) and fails naming the
//! circle and the files that close it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Room -> rooms it names -> a file that names it.
type Graph = BTreeMap<String, BTreeMap<String, PathBuf>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `text` without its `#[cfg(test)] mod name { ... }` blocks.
fn without_test_modules(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        if trimmed.starts_with("mod ") {
            if let Some(open) = trimmed.find(['{', ';']) {
                if trimmed.as_bytes()[open] == b';' {
                    rest = &trimmed[open + 1..];
                    continue;
                }
                let mut depth = 0usize;
                for (i, c) in trimmed[open..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                rest = &trimmed[open + i + 1..];
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                if depth == 0 {
                    continue;
                }
            }
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// The first segments of the `crate::` paths in `text`: `crate::a::X` and
/// `crate::{a::X, b::{Y, Z}}` name `a` and `b`.
fn named_roots(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `mycrate::`, not `crate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            // Split the group at its top-level commas; each part starts with a root.
            let (mut depth, mut start) = (1usize, 0usize);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' | ',' if depth == 1 => {
                        names.insert(first_ident(&group[start..i]));
                        start = i + 1;
                        if c == '}' {
                            break;
                        }
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
        } else {
            names.insert(first_ident(rest));
        }
    }
    names
}

fn first_ident(s: &str) -> String {
    s.trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// The rooms of the crate under `src` and what each one names.
fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let room_of = |path: &Path| -> Option<String> {
        let first = path.strip_prefix(src).ok()?.components().next()?;
        let name = first.as_os_str().to_str()?.trim_end_matches(".rs");
        (!matches!(name, "lib" | "main")).then(|| name.to_string())
    };
    let rooms: BTreeSet<String> = files.iter().filter_map(|f| room_of(f)).collect();
    let mut graph = Graph::new();
    for file in &files {
        let Some(room) = room_of(file) else { continue };
        if file.file_stem().is_some_and(|s| s == "tests") {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("read source");
        for named in named_roots(&without_test_modules(&text)) {
            if named != room && rooms.contains(&named) {
                graph
                    .entry(room.clone())
                    .or_default()
                    .entry(named)
                    .or_insert_with(|| {
                        let root = src.parent().unwrap_or(src);
                        file.strip_prefix(root).unwrap_or(file).to_path_buf()
                    });
            }
        }
    }
    graph
}

/// A circle in `graph` as `a -> b -> ... -> a`, with the file behind each step, if any.
fn find_circle(graph: &Graph) -> Option<String> {
    fn visit(
        graph: &Graph,
        room: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|r| r == room) {
            let mut circle = path[at..].to_vec();
            circle.push(room.to_string());
            return Some(circle);
        }
        if done.contains(room) {
            return None;
        }
        path.push(room.to_string());
        for next in graph.get(room).into_iter().flat_map(|n| n.keys()) {
            if let Some(circle) = visit(graph, next, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(room.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for room in graph.keys() {
        if let Some(circle) = visit(graph, room, &mut Vec::new(), &mut done) {
            let steps: Vec<String> = circle
                .windows(2)
                .map(|w| format!("  {} -> {} ({})", w[0], w[1], graph[&w[0]][&w[1]].display()))
                .collect();
            return Some(format!("{}\n{}", circle.join(" -> "), steps.join("\n")));
        }
    }
    None
}

#[test]
fn no_circle_between_top_level_modules() {
    let src = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
    let graph = graph(src);
    assert!(
        graph.contains_key("worker") && graph.contains_key("config"),
        "the scan found no imports: {graph:?}"
    );
    if let Some(circle) = find_circle(&graph) {
        panic!(
            "import circle between top-level modules: {circle}\nRooms import downward only: \
             leaves (service, checks, codec, secret, throttle, endpoint); backoff, store, \
             scaling, trigger, bus, handler; config; listener, observability, worker. Move the \
             named item down to where both sides can import it."
        );
    }
}

#[test]
fn a_circle_is_found_and_named() {
    let mut graph = Graph::new();
    let edge = |g: &mut Graph, a: &str, b: &str| {
        g.entry(a.into())
            .or_default()
            .insert(b.into(), PathBuf::from(format!("src/{a}.rs")));
    };
    edge(&mut graph, "config", "checks");
    edge(&mut graph, "worker", "config");
    assert_eq!(find_circle(&graph), None);
    edge(&mut graph, "checks", "worker");
    let circle = find_circle(&graph).expect("a circle");
    assert!(
        circle.starts_with("checks -> worker -> config -> checks"),
        "{circle}"
    );
    assert!(
        circle.contains("checks -> worker (src/checks.rs)"),
        "{circle}"
    );
}

#[test]
fn paths_are_read_in_every_form() {
    let text =
        "use crate::a::X;\nuse crate::{b::{Y, Z}, c};\n/// [`crate::d::W`]\nx = mycrate::e;\n\
                #[cfg(test)]\nmod tests {\n use crate::f;\n fn g() { { } }\n}\nuse crate::h;";
    let names: Vec<String> = named_roots(&without_test_modules(text))
        .into_iter()
        .collect();
    assert_eq!(names, ["a", "b", "c", "d", "h"]);
}

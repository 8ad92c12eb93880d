//! The module layering ARCHITECTURE.md draws, checked on the source: no import cycle between the
//! crate's top-level modules nor between the files of one module, and the HTTP layer sends
//! only through `accept` and receives only through `inbound` (it reads the store for `GET`s and
//! `/readyz`, never writes it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path inside `src/`: `["config", "validate"]` for `src/config/validate.rs`.
type Module = Vec<String>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { panic!("cannot read {}", dir.display()) };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn module_of(src: &Path, file: &Path) -> Module {
    let relative = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let mut parts: Module = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

/// The code of a file without its comments and without its `#[cfg(test)]` part (tests may reach
/// across layers to set things up).
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines().map(|line| line.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// The paths a `use` group names, one level deep: `{a, b::c, d::{e, f}}` → `a`, `b::c`, `d`.
fn group_items(group: &str) -> Vec<String> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                items.push(group[start..i].trim().to_owned());
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(group[start..].trim().to_owned());
    items.retain(|item| !item.is_empty());
    items
}

/// The module path a reference starts with: `a::b::Thing` → `[a, b]`, `a::{…}` → `[a]`.
fn path_of(text: &str) -> Module {
    let ident =
        |s: &str| -> String { s.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect() };
    let first = ident(text);
    if first.is_empty() {
        return Vec::new();
    }
    let mut path = vec![first.clone()];
    if let Some(after) = text[first.len()..].strip_prefix("::") {
        let second = ident(after);
        if !second.is_empty() && !after[second.len()..].starts_with(|c: char| c.is_alphanumeric()) {
            path.push(second);
        }
    }
    path
}

/// What follows `at` in `code`: a path, or a brace group's paths (`crate::{a, b::c}`).
fn targets_at(code: &str) -> Vec<Module> {
    match code.strip_prefix('{') {
        Some(rest) => {
            let mut depth = 1usize;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(rest.len(), |(i, _)| i);
            group_items(&rest[..end]).iter().map(|item| path_of(item)).filter(|p| !p.is_empty()).collect()
        }
        None => vec![path_of(code)].into_iter().filter(|p| !p.is_empty()).collect(),
    }
}

/// Every `crate::a::b` and `super::x` a file names (one-by-one or in a `{…}` group), as module
/// paths (two levels at most).
fn references(module: &Module, code: &str) -> BTreeSet<Module> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        found.extend(targets_at(&code[at + "crate::".len()..]));
    }
    for (at, _) in code.match_indices("super::") {
        // Only whole `super::` (not `foo_super::`).
        if code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        // In `a/mod.rs` and `a/b.rs` alike, `super` is the parent of the file's module.
        let parent: Module = module[..module.len().saturating_sub(1)].to_vec();
        for target in targets_at(&code[at + "super::".len()..]) {
            let mut path = parent.clone();
            path.extend(target.into_iter().take(1));
            found.insert(path);
        }
    }
    found
}

/// The strongly connected components with more than one member (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    fn visit<'g>(state: &mut State<'g>, v: &'g str) {
        state.index.insert(v, state.next);
        state.low.insert(v, state.next);
        state.next += 1;
        state.stack.push(v);
        state.on_stack.insert(v);
        let graph = state.graph;
        for w in graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !state.index.contains_key(w) {
                visit(state, w);
                let low = state.low[v].min(state.low[w]);
                state.low.insert(v, low);
            } else if state.on_stack.contains(w) {
                let low = state.low[v].min(state.index[w]);
                state.low.insert(v, low);
            }
        }
        if state.low[v] == state.index[v] {
            let mut component = Vec::new();
            while let Some(w) = state.stack.pop() {
                state.on_stack.remove(w);
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                state.found.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !state.index.contains_key(v.as_str()) {
            visit(&mut state, v);
        }
    }
    state.found
}

/// Module → the modules it names, for every file under `src`.
fn edges(src: &Path) -> Vec<(Module, Module)> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut out = Vec::new();
    for file in files {
        let module = module_of(src, &file);
        if module.last().is_some_and(|m| m == "tests") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&file) else { panic!("cannot read {}", file.display()) };
        for target in references(&module, &code_of(&text)) {
            out.push((module.clone(), target));
        }
    }
    out
}

/// The cycles among top-level modules, and among the files of each module.
fn layering_problems(src: &Path) -> Vec<String> {
    let edges = edges(src);
    let mut problems = Vec::new();
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut inner: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (from, to) in &edges {
        let (Some(a), Some(b)) = (from.first(), to.first()) else { continue };
        if a != b {
            top.entry(a.clone()).or_default().insert(b.clone());
        } else {
            // Between the files of a module; a parent and its children (`mod.rs` declaring and
            // re-exporting them, children using its items) are one unit, not a cycle.
            if let (Some(x), Some(y)) = (from.get(1), to.get(1)) {
                if x != y {
                    inner.entry(a.clone()).or_default().entry(x.clone()).or_default().insert(y.clone());
                }
            }
        }
    }
    for cycle in cycles(&top) {
        problems.push(format!("import cycle between modules: {}", cycle.join(" <-> ")));
    }
    for (module, graph) in &inner {
        for cycle in cycles(graph) {
            problems.push(format!("import cycle inside {module}/: {}", cycle.join(" <-> ")));
        }
    }
    problems
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_import_cycles() {
    let problems = layering_problems(&src());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checker_finds_cycles() {
    // The checker itself: a tree with a cycle between modules and one inside a module.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let write = |path: &str, text: &str| {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap_or(dir.path())).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(path, text).unwrap_or_else(|e| panic!("{e}"));
    };
    write("lib.rs", "pub mod a;\npub mod b;\npub mod c;\npub mod d;\n");
    write("a/mod.rs", "mod x;\nmod y;\nmod z;\nuse crate::b::Thing;\n");
    write("a/x.rs", "use super::y::Y;\n");
    write("a/y.rs", "use super::x::X; // a comment naming crate::z is not a reference\n");
    write("a/z.rs", "use super::{helper, x::X};\n");
    write("b.rs", "use crate::a::Other;\n#[cfg(test)]\nmod tests { use crate::c::T; }\n");
    // Grouped imports count: c -> d in a group, d -> c nested.
    write("c.rs", "use crate::{b::B, d::{D, E}};\n");
    write("d.rs", "use crate::{c as see};\n");
    let mut problems = layering_problems(dir.path());
    problems.sort();
    assert_eq!(
        problems,
        [
            "import cycle between modules: a <-> b",
            "import cycle between modules: c <-> d",
            "import cycle inside a/: x <-> y"
        ],
        "{problems:?}"
    );
}

/// Sending goes through `accept` and receiving through `inbound`: the HTTP layer reads the store
/// (a message's status, message searches, conversations, opt-outs, `/readyz`) and never writes it or looks up
/// idempotency keys itself.
#[test]
fn http_sends_only_through_accept() {
    let mut files = Vec::new();
    rust_files(&src().join("http"), &mut files);
    let mut found = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else { panic!("cannot read {}", file.display()) };
        let code = code_of(&text);
        for (at, _) in code.match_indices("store.") {
            let call: String = code[at + "store.".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let reads = ["get", "search", "check", "conversations", "conversation_messages", "opt_outs"];
            if !reads.contains(&call.as_str()) {
                found.push(format!("{}: store.{call}", file.display()));
            }
        }
        for name in ["dispatcher.submit", "find_key", "insert_for", "RecipientCounts"] {
            if code.contains(name) {
                found.push(format!("{}: {name}", file.display()));
            }
        }
    }
    assert!(found.is_empty(), "the HTTP layer reaches past accept:\n{}", found.join("\n"));
}

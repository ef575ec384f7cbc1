//! The shape of the code, checked: the stages of a node import each other without circles, no
//! source file grows past the size a reader can hold, and the crates keep to their roles (the
//! server never depends on the client, nor the client on the server).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The longest a source file may be (lines).
const MAX_LINES: usize = 600;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        panic!("cannot read {}", dir.display())
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module of the server a file belongs to (`http` for `src/http/kv.rs`, `members`
/// for `src/members.rs`; None for `lib.rs`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_string())
}

/// `crate::x` references of the code in `text` (comments and tests left out: a doc link is not
/// an import, and unit tests may reach anywhere).
fn references(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    let mut refs = BTreeSet::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        for (i, _) in line.match_indices("crate::") {
            let rest = &line[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                refs.insert(name);
            }
        }
    }
    refs
}

/// A cycle in `graph`, if any (as the list of modules around it).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let start = path.iter().position(|p| p == n).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, graph, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

/// The server's module graph: module → the other modules its code names.
fn server_graph() -> BTreeMap<String, BTreeSet<String>> {
    module_graph("server/src")
}

/// The module graph of the crate whose sources are in `dir`.
fn module_graph(dir: &str) -> BTreeMap<String, BTreeSet<String>> {
    let src = root().join(dir);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let Some(m) = module_of(&src, &f) else {
            continue;
        };
        let text = std::fs::read_to_string(&f).expect("read a source file");
        let entry = graph.entry(m.clone()).or_default();
        for r in references(&text) {
            if r != m {
                entry.insert(r);
            }
        }
    }
    graph
}

#[test]
fn the_stages_of_a_node_import_each_other_without_circles() {
    let graph = server_graph();
    for stage in [
        "http",
        "forward",
        "raft",
        "storage",
        "sm",
        "snapshot",
        "transport",
        "node",
    ] {
        assert!(graph.contains_key(stage), "no stage {stage}: {graph:?}");
    }
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import circle: {}", cycle.join(" → "));
    }
    // The transport only moves frames: it knows neither the state machine, nor snapshots, nor
    // the Ready loop.
    let transport = &graph["transport"];
    for other in ["sm", "snapshot", "raft", "forward", "http"] {
        assert!(!transport.contains(other), "transport uses {other}");
    }
}

#[test]
fn the_modules_of_the_command_line_import_each_other_without_circles() {
    // The command line names every subcommand; the subcommands share options from a leaf module
    // (`opts`), never from the command line itself.
    let graph = module_graph("cli/src");
    for m in ["args", "opts", "commands", "demo", "launcher"] {
        assert!(graph.contains_key(m), "no module {m}: {graph:?}");
    }
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import circle in the CLI: {}", cycle.join(" → "));
    }
    assert!(graph["opts"].is_empty(), "opts imports {:?}", graph["opts"]);
}

#[test]
fn every_stage_says_in_prose_what_it_owns_and_may_touch() {
    // A new folder of the server comes with a `mod.rs` whose doc comment a reader can start from.
    let src = root().join("server/src");
    let mut stages = 0;
    for e in std::fs::read_dir(&src).expect("read server/src").flatten() {
        if !e.path().is_dir() {
            continue;
        }
        let m = e.path().join("mod.rs");
        let text = std::fs::read_to_string(&m)
            .unwrap_or_else(|_| panic!("{} has no mod.rs", e.path().display()));
        let doc: Vec<&str> = text.lines().take_while(|l| l.starts_with("//!")).collect();
        let words = doc
            .iter()
            .map(|l| l.split_whitespace().count())
            .sum::<usize>();
        assert!(
            doc.len() >= 5 && words >= 60,
            "{}: a stage's mod.rs opens with a prose doc of what it owns and may touch ({} lines, {words} words)",
            m.display(),
            doc.len()
        );
        stages += 1;
    }
    assert!(stages >= 8, "found only {stages} stages");
}

#[test]
fn the_cycle_finder_finds_a_planted_cycle() {
    // The check above must be able to fail: the real graph plus one edge back from the storage
    // layer to the Ready loop (raft already uses storage) has a cycle.
    let mut graph = server_graph();
    graph
        .entry("storage".to_string())
        .or_default()
        .insert("raft".to_string());
    let cycle = find_cycle(&graph).expect("a planted cycle is found");
    assert!(cycle.contains(&"raft".to_string()) && cycle.contains(&"storage".to_string()));
}

#[test]
fn no_source_file_is_longer_than_a_reader_can_hold() {
    let mut files = Vec::new();
    for krate in [
        "api/src",
        "server/src",
        "client/src",
        "cli/src",
        "tests/src",
        "tests/tests",
        "bench/src",
        "bench/benches",
    ] {
        rust_files(&root().join(krate), &mut files);
    }
    assert!(files.len() > 40, "found only {} files", files.len());
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).ok()?.lines().count();
            (n > MAX_LINES).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "files over {MAX_LINES} lines: {long:?}");
}

/// The names in the `[dependencies]` table of a crate's manifest.
fn dependencies(krate: &str) -> BTreeSet<String> {
    let manifest =
        std::fs::read_to_string(root().join(krate).join("Cargo.toml")).expect("read a manifest");
    let mut deps = BTreeSet::new();
    let mut in_deps = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps {
            if let Some((name, _)) = line.split_once('=') {
                deps.insert(name.trim().trim_end_matches(".workspace").to_string());
            }
        }
    }
    deps
}

#[test]
fn crates_keep_to_their_roles() {
    let server = dependencies("server");
    assert!(server.contains("keel-api"), "{server:?}");
    assert!(
        !server.contains("keel-client"),
        "the server depends on the client"
    );
    let client = dependencies("client");
    assert!(client.contains("keel-api"), "{client:?}");
    assert!(
        !client.contains("keel-server"),
        "the client depends on the server"
    );
    let api = dependencies("api");
    assert!(
        api.iter().all(|d| !d.starts_with("keel")),
        "keel-api depends on {api:?}"
    );
    // One HTTP client stack: nothing but keel-client and the server's own hyper use an HTTP
    // library directly.
    for krate in ["cli", "bench", "tests"] {
        let deps = dependencies(krate);
        for http in ["hyper", "hyper-util", "ureq", "reqwest"] {
            assert!(!deps.contains(http), "{krate} uses {http} directly");
        }
    }
}

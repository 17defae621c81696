//! The service crate's modules import one another without circles: reading its sources, no
//! module reaches, through `crate::`, `super::` or a child's path, a module that reaches it
//! back. (`lib.rs`, where the services are assembled, is left out: every module may name the
//! crate's root types, and the root names every module.)

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// The module path of each source file (`rooms::commit` for `src/rooms/commit.rs`), with its
/// text up to its tests, comments removed.
fn sources(dir: &Path, base: &Path, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).expect("src directory") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, base, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(base).unwrap().with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
                parts.pop();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let text = text.split("#[cfg(test)]").next().unwrap_or_default();
            let text: String =
                text.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n");
            out.insert(parts.join("::"), text);
        }
    }
}

/// Identifiers and the punctuation that shapes paths; other punctuation is a separator, white
/// space is nothing.
fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
            continue;
        }
        if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push("::".into());
            i += 2;
            continue;
        }
        out.push(if matches!(c, '{' | '}' | ',' | ';') { c.to_string() } else { ".".into() });
        i += 1;
    }
    out
}

fn is_ident(t: &str) -> bool {
    t.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// Reads a path (or a use tree) starting at `i`, pushing every full path it names.
fn read_path(tok: &[String], mut i: usize, mut path: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    while i < tok.len() {
        if tok[i] == "{" {
            i += 1;
            while i < tok.len() && tok[i] != "}" {
                let before = i;
                i = read_path(tok, i, path.clone(), out);
                if i < tok.len() && tok[i] == "," {
                    i += 1;
                }
                if i == before {
                    i += 1;
                }
            }
            return i + 1;
        }
        if !is_ident(&tok[i]) {
            break;
        }
        path.push(tok[i].clone());
        i += 1;
        if i < tok.len() && tok[i] == "::" {
            i += 1;
        } else {
            break;
        }
    }
    out.push(path);
    i
}

/// The modules each module names.
fn edges(files: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<&str> = files.keys().map(String::as_str).collect();
    let resolve = |segments: &[String]| -> Option<String> {
        (1..=segments.len()).rev().map(|n| segments[..n].join("::")).find(|c| modules.contains(c.as_str()))
    };
    let mut graph = BTreeMap::new();
    for (module, text) in files {
        let tok = tokens(text);
        let own: Vec<String> = if module.is_empty() { vec![] } else { module.split("::").map(str::to_owned).collect() };
        let mut targets = BTreeSet::new();
        for i in 0..tok.len() {
            let start_of_path = i == 0 || tok[i - 1] != "::";
            let mut found = Vec::new();
            if start_of_path && (tok[i] == "crate" || tok[i] == "super") && tok.get(i + 1).is_some_and(|t| t == "::") {
                read_path(&tok, i, Vec::new(), &mut found);
            }
            for path in found {
                let absolute: Vec<String> = match path.first().map(String::as_str) {
                    Some("crate") => path[1..].to_vec(),
                    Some("super") => {
                        let ups = path.iter().take_while(|p| *p == "super").count();
                        let mut base = own[..own.len().saturating_sub(ups)].to_vec();
                        base.extend(path[ups..].iter().cloned());
                        base
                    }
                    _ => continue,
                };
                if let Some(target) = resolve(&absolute) {
                    targets.insert(target);
                }
            }
            // A child named by its bare path in the module that declares it.
            if tok[i] == "mod" && tok.get(i + 2).is_some_and(|t| t == ";") {
                let child = tok[i + 1].clone();
                let named = tok.windows(2).enumerate().any(|(j, w)| {
                    w[0] == child && w[1] == "::" && (j == 0 || (tok[j - 1] != "::" && tok[j - 1] != "mod"))
                });
                let mut path = own.clone();
                path.push(child);
                if named {
                    if let Some(target) = resolve(&path) {
                        targets.insert(target);
                    }
                }
            }
        }
        targets.remove(module);
        targets.remove("");
        graph.insert(module.clone(), targets);
    }
    graph.remove("");
    graph
}

/// The groups of modules that reach one another (Tarjan's strongly connected components).
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        for w in s.graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.graph.contains_key(w) {
                continue;
            }
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[w].min(s.low[v]);
                s.low.insert(v, low);
            } else if s.stack.contains(&w) {
                let low = s.index[w].min(s.low[v]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut group = Vec::new();
            while let Some(w) = s.stack.pop() {
                group.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if group.len() > 1 {
                group.sort();
                s.found.push(group);
            }
        }
    }
    let mut s =
        State { graph, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), next: 0, found: vec![] };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

#[test]
fn modules_import_one_another_without_circles() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    sources(&base, &base, &mut files);
    let graph = edges(&files);
    assert!(graph.len() > 30, "the sources were read: {:?}", graph.keys().collect::<Vec<_>>());
    // The graph is read as it should be: a few edges known to exist.
    assert!(graph["push"].contains("rooms::commit"), "{:?}", graph["push"]);
    assert!(graph["correspondence::text"].contains("correspondence::model"));
    let found = circles(&graph);
    assert!(found.is_empty(), "modules that import one another: {found:?}");
}

#[test]
fn a_circle_is_found() {
    let files = BTreeMap::from([
        ("a".to_owned(), "use crate::b::X;".to_owned()),
        ("b".to_owned(), "use crate::{c::{self, Y}, Z};".to_owned()),
        ("c".to_owned(), "fn f() { crate::a::g() }".to_owned()),
        ("d".to_owned(), "mod e; fn f() { e::g() }".to_owned()),
        ("d::e".to_owned(), "use super::super::a;".to_owned()),
    ]);
    let graph = edges(&files);
    assert_eq!(graph["b"], BTreeSet::from(["c".to_owned()]));
    assert_eq!(graph["d"], BTreeSet::from(["d::e".to_owned()]));
    assert_eq!(graph["d::e"], BTreeSet::from(["a".to_owned()]));
    assert_eq!(circles(&graph), vec![vec!["a".to_owned(), "b".to_owned(), "c".to_owned()]]);
}

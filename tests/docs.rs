//! The documentation cannot drift from the code: every TOML snippet that
//! README.md and `docs/` show is read by vlab's own lab or study parser (with
//! its validation), and every lab file they name exists and loads.
//!
//! A snippet is a whole lab, a whole study (it lists `[[lab]]`), or a part of
//! one: then the line before it says which lab it belongs to,
//! `<!-- docs-test: over labs/NAME.toml -->`, and the snippet is laid over
//! that lab (tables merged key by key, arrays of tables element by element)
//! before it is parsed. Boots nothing.

use std::path::{Path, PathBuf};

use toml::{Table, Value};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// README.md and every page under docs/.
fn pages() -> Vec<PathBuf> {
    let mut found = vec![repo("README.md")];
    let mut stack = vec![repo("docs")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "md") {
                found.push(p);
            }
        }
    }
    found.sort();
    found
}

/// A fenced TOML block: where it starts, the base lab its marker names, its text.
struct Snippet {
    line: usize,
    over: Option<String>,
    text: String,
}

fn toml_snippets(markdown: &str) -> Vec<Snippet> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim_end() == "```toml" {
            let over = i
                .checked_sub(1)
                .and_then(|p| lines[p].trim().strip_prefix("<!-- docs-test: over "))
                .and_then(|rest| rest.strip_suffix("-->"))
                .map(|base| base.trim().to_string());
            let end = (i + 1..lines.len()).find(|&j| lines[j].starts_with("```")).expect("an unclosed block");
            found.push(Snippet { line: i + 1, over, text: lines[i + 1..end].join("\n") });
            i = end;
        }
        i += 1;
    }
    found
}

/// `part` laid over `base`: tables merged by key, arrays of tables by index.
fn overlay(base: &mut Value, part: &Value) {
    match (base, part) {
        (Value::Table(b), Value::Table(p)) => {
            for (k, v) in p {
                match b.get_mut(k) {
                    Some(existing) => overlay(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(p)) if p.iter().all(Value::is_table) && b.iter().all(Value::is_table) => {
            for (i, v) in p.iter().enumerate() {
                match b.get_mut(i) {
                    Some(existing) => overlay(existing, v),
                    None => b.push(v.clone()),
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// Reads one snippet as vlab would; the error names the page and line.
fn check(page: &Path, s: &Snippet) -> Result<(), String> {
    let at = format!("{}:{}", page.strip_prefix(repo("")).unwrap_or(page).display(), s.line);
    let part: Table = s.text.parse().map_err(|e| format!("{at}: not TOML: {e}"))?;
    if part.get("lab").is_some_and(Value::is_array) {
        return check_study(&at, part);
    }
    let (text, path) = match &s.over {
        Some(base) => {
            let base_path = repo(base);
            let base_text = std::fs::read_to_string(&base_path).map_err(|e| format!("{at}: {base}: {e}"))?;
            let mut merged = Value::Table(base_text.parse::<Table>().map_err(|e| format!("{at}: {base}: {e}"))?);
            overlay(&mut merged, &Value::Table(part));
            (toml::to_string(&merged).unwrap(), base_path)
        }
        None => (s.text.clone(), repo("labs/docs-snippet.toml")),
    };
    vlab::variants::parse_lab(&text, &path).map(|_| ()).map_err(|e| format!("{at}: {e}\n--- as read:\n{text}"))
}

/// A study snippet, with its labs taken from `labs/` (and every lab its
/// findings name added, whole, where the snippet does not list it).
fn check_study(at: &str, mut study: Table) -> Result<(), String> {
    let mut labs: Vec<Value> = study["lab"].as_array().cloned().unwrap_or_default();
    let mut named: Vec<String> = labs
        .iter()
        .filter_map(|l| l.get("file").and_then(Value::as_str))
        .map(|f| f.trim_end_matches(".toml").to_string())
        .collect();
    let refs = study.get("finding").and_then(Value::as_array).into_iter().flatten().flat_map(|f| {
        let t = f.as_table().cloned().unwrap_or_default();
        t.into_iter().filter(|(k, _)| k != "claim").map(|(_, v)| v.to_string()).collect::<Vec<_>>()
    });
    for r in refs.collect::<Vec<_>>() {
        for piece in r.split('"') {
            if let Some((lab, _)) = piece.split_once('/') {
                if !lab.is_empty() && !named.iter().any(|n| n == lab) && repo(&format!("labs/{lab}.toml")).is_file() {
                    named.push(lab.to_string());
                    let mut entry = Table::new();
                    entry.insert("file".into(), Value::from(format!("{lab}.toml")));
                    labs.push(Value::Table(entry));
                }
            }
        }
    }
    for l in &mut labs {
        if let Some(Value::String(f)) = l.get_mut("file") {
            *f = repo("labs").join(&*f).display().to_string();
        }
    }
    study.insert("lab".into(), Value::Array(labs));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("study.toml");
    std::fs::write(&path, toml::to_string(&study).unwrap()).unwrap();
    vlab::study::load(&path).map(|_| ()).map_err(|e| format!("{at}: {e}"))
}

#[test]
fn every_toml_snippet_in_the_docs_is_read_by_vlab() {
    let mut failures = Vec::new();
    let mut count = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for s in toml_snippets(&text) {
            count += 1;
            if let Err(e) = check(&page, &s) {
                failures.push(e);
            }
        }
    }
    assert!(count >= 8, "only {count} TOML snippets found");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_lab_file_the_docs_name_exists_and_loads() {
    let mut named: Vec<String> = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for (i, _) in text.match_indices("labs/") {
            let rest = &text[i..];
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || "/-_.".contains(c))).unwrap_or(rest.len());
            let path = rest[..end].trim_end_matches('.');
            if path.ends_with(".toml") && !named.iter().any(|n| n == path) {
                named.push(path.to_string());
            }
        }
    }
    assert!(named.len() >= 10, "only {named:?}");
    let mut failures = Vec::new();
    for name in &named {
        let path = repo(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let loaded = if vlab::study::is_study(&text) {
            vlab::study::load(&path).map(|_| ())
        } else {
            vlab::variants::load_lab(&path).map(|_| ())
        };
        if let Err(e) = loaded {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_snippet_that_drifted_from_the_code_fails() {
    let page = repo("docs/lab-files.md");
    let snippet = |over: Option<&str>, text: &str| Snippet { line: 1, over: over.map(String::from), text: text.into() };
    let misspelt = check(&page, &snippet(Some("labs/baseline.toml"), "[workload]\nstreamz = 2\n")).unwrap_err();
    assert!(misspelt.contains("streamz"), "{misspelt}");
    let incomplete = check(&page, &snippet(None, "name = \"x\"\n")).unwrap_err();
    assert!(incomplete.contains("docs/lab-files.md:1"), "{incomplete}");
    assert!(check(&page, &snippet(Some("labs/baseline.toml"), "[workload]\nstreams = 2\n")).is_ok());
    let study =
        "name = \"s\"\n[[lab]]\nfile = \"baseline.toml\"\n[[finding]]\nclaim = \"c\"\ndelivers = [\"baseline/nope\"]\n";
    assert!(check(&page, &snippet(None, study)).is_err(), "a finding naming no case");
}

//! Lab file errors that point at the offending line, column and field.

use std::fmt;
use std::path::{Path, PathBuf};

use super::suggest;

/// A position in a lab file (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The lab file.
    pub file: PathBuf,
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// Why a lab file cannot be used. Every variant reads as a user error: the
/// command line maps it to exit code 128 so that `git bisect run` aborts
/// instead of blaming the kernel.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The file could not be read.
    #[error("cannot read lab file {}", path.display())]
    Read {
        /// The lab file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the lab model.
    #[error("{location}: {}{message}", field.as_ref().map(|f| format!("field `{f}`: ")).unwrap_or_default())]
    Syntax {
        /// Where.
        location: Location,
        /// Dotted path of the innermost field around the error, when there is one.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// The file parses but describes an impossible lab.
    #[error("{location}: field `{field}`: {message}")]
    Invalid {
        /// Where.
        location: Location,
        /// Dotted path of the field, e.g. `vm[1].underlay.ipv4`.
        field: String,
        /// What is wrong and what would be right.
        message: String,
    },
}

/// One step of a field path inside the lab document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(&'static str),
    /// A key known only at run time (one a variant owns).
    Name(String),
    Index(usize),
}

impl Seg {
    fn key(&self) -> Option<&str> {
        match self {
            Seg::Key(k) => Some(k),
            Seg::Name(k) => Some(k),
            Seg::Index(_) => None,
        }
    }
}

/// A validation finding before it is located in the file.
#[derive(Debug, Clone)]
pub(crate) struct Issue {
    pub path: Vec<Seg>,
    pub message: String,
    /// Located at the key itself (an unknown key), not at its value.
    pub at_key: bool,
}

impl Issue {
    pub fn new(path: Vec<Seg>, message: impl Into<String>) -> Issue {
        Issue { path, message: message.into(), at_key: false }
    }

    /// A finding about the key at `path` itself (one that is unknown), located
    /// at the key's line and column rather than its value's.
    pub fn key(path: Vec<Seg>, message: impl Into<String>) -> Issue {
        Issue { path, message: message.into(), at_key: true }
    }
}

fn dotted(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg.key() {
            Some(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            None => {
                if let Seg::Index(i) = seg {
                    s.push_str(&format!("[{i}]"));
                }
            }
        }
    }
    s
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The byte span of the deepest item of `path` that exists in the document;
/// with `at_key`, of the last key itself when it exists (a table header's
/// name, a key before its `=`).
fn span_of(text: &str, path: &[Seg], at_key: bool) -> Option<std::ops::Range<usize>> {
    let doc = toml_edit::Document::parse(text).ok()?;
    let mut item: &toml_edit::Item = doc.as_item();
    let mut best = None;
    for (i, seg) in path.iter().enumerate() {
        if at_key && i + 1 == path.len() {
            if let Some(span) = seg.key().and_then(|k| key_span(item, k)) {
                return Some(span);
            }
        }
        let next = match seg {
            Seg::Key(_) | Seg::Name(_) => {
                let k = seg.key().unwrap_or_default();
                match item {
                    toml_edit::Item::Table(t) => t.get(k),
                    toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => t.get(k).map(|_| &item[k]),
                    _ => None,
                }
            }
            Seg::Index(i) => match item {
                toml_edit::Item::ArrayOfTables(a) => a.get(*i).map(|_| &item[*i]),
                toml_edit::Item::Value(toml_edit::Value::Array(a)) => a.get(*i).map(|_| &item[*i]),
                _ => None,
            },
        };
        match next {
            Some(n) => {
                item = n;
                if let Some(span) = n.span() {
                    best = Some(span);
                }
            }
            None => break,
        }
    }
    // A table header's span covers the whole table; the key's own line is what
    // a reader wants, which is where the span starts.
    best
}

/// Where the last key of `path` stands, when the path leads to it.
fn key_offset(text: &str, path: &[Seg]) -> Option<usize> {
    let (last, parent) = path.split_last()?;
    let doc = toml_edit::Document::parse(text).ok()?;
    let mut item: &toml_edit::Item = doc.as_item();
    for seg in parent {
        item = match (seg, item) {
            (Seg::Index(i), toml_edit::Item::ArrayOfTables(a)) => a.get(*i).map(|_| &item[*i])?,
            (Seg::Index(i), toml_edit::Item::Value(toml_edit::Value::Array(a))) => a.get(*i).map(|_| &item[*i])?,
            (Seg::Index(_), _) => return None,
            (_, toml_edit::Item::Table(t)) => t.get(seg.key()?)?,
            (_, toml_edit::Item::Value(toml_edit::Value::InlineTable(t))) => {
                t.get(seg.key()?).map(|_| &item[seg.key().unwrap_or_default()])?
            }
            _ => return None,
        };
    }
    key_span(item, last.key()?).map(|s| s.start)
}

/// The span of key `k` of a table (its name in a header, or before `=`).
fn key_span(item: &toml_edit::Item, k: &str) -> Option<std::ops::Range<usize>> {
    match item {
        toml_edit::Item::Table(t) => t.key(k).and_then(|key| key.span()).or_else(|| match t.get(k) {
            // A table header: its span starts at `[`; the name is one or two further.
            Some(toml_edit::Item::Table(sub)) => sub.span().map(|s| s.start + 1..s.end),
            Some(toml_edit::Item::ArrayOfTables(a)) => a.get(0).and_then(|t| t.span()).map(|s| s.start + 2..s.end),
            _ => None,
        }),
        toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => t.key(k).and_then(|key| key.span()),
        _ => None,
    }
}

/// Whether the item at `path` is a table or an array of tables (`[vmm]`).
fn is_table(text: &str, path: &[Seg]) -> bool {
    let Ok(doc) = toml_edit::Document::parse(text) else { return false };
    let mut item: &toml_edit::Item = doc.as_item();
    for seg in path {
        let next = match (seg, item) {
            (Seg::Index(i), toml_edit::Item::ArrayOfTables(a)) => a.get(*i).map(|_| &item[*i]),
            (Seg::Index(_), _) => None,
            (_, toml_edit::Item::Table(t)) => t.get(seg.key().unwrap_or_default()),
            _ => None,
        };
        match next {
            Some(n) => item = n,
            None => return false,
        }
    }
    matches!(item, toml_edit::Item::Table(_) | toml_edit::Item::ArrayOfTables(_))
}

/// `unknown table` or `unknown field`, as the item at `path` is.
pub(crate) fn unknown(text: &str, path: &[Seg], key: &str) -> String {
    let kind = if is_table(text, path) { "table" } else { "field" };
    format!("unknown {kind} `{key}`")
}

/// The path of the innermost key whose item contains byte `offset`.
fn path_at(text: &str, offset: usize) -> Option<Vec<Seg>> {
    fn walk(item: &toml_edit::Item, offset: usize, out: &mut Vec<Seg>) {
        let inside = |span: Option<std::ops::Range<usize>>| span.is_some_and(|s| s.start <= offset && offset <= s.end);
        match item {
            toml_edit::Item::Table(t) => {
                for (k, v) in t.iter() {
                    let key_hit =
                        t.key(k).and_then(|key| key.span()).is_some_and(|s| s.start <= offset && offset <= s.end);
                    if key_hit
                        || inside(v.span())
                        || matches!(v, toml_edit::Item::Table(_) | toml_edit::Item::ArrayOfTables(_))
                            && contains(v, offset)
                    {
                        push_key(out, k);
                        walk(v, offset, out);
                        return;
                    }
                }
            }
            toml_edit::Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    if t.span().is_some_and(|s| s.start <= offset && offset <= s.end) || table_contains(t, offset) {
                        out.push(Seg::Index(i));
                        walk(&a.get(i).map(|t| toml_edit::Item::Table(t.clone())).unwrap_or_default(), offset, out);
                        return;
                    }
                }
            }
            toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => {
                for (k, v) in t.iter() {
                    if v.span().is_some_and(|s| s.start <= offset && offset <= s.end)
                        || t.key(k).and_then(|key| key.span()).is_some_and(|s| s.start <= offset && offset <= s.end)
                    {
                        push_key(out, k);
                        return;
                    }
                }
            }
            _ => {}
        }
    }
    fn push_key(out: &mut Vec<Seg>, k: &str) {
        out.push(Seg::Name(k.to_string()));
    }
    fn contains(item: &toml_edit::Item, offset: usize) -> bool {
        match item {
            toml_edit::Item::Table(t) => table_contains(t, offset),
            toml_edit::Item::ArrayOfTables(a) => a.iter().any(|t| table_contains(t, offset)),
            other => other.span().is_some_and(|s| s.start <= offset && offset <= s.end),
        }
    }
    fn table_contains(t: &toml_edit::Table, offset: usize) -> bool {
        t.span().is_some_and(|s| s.start <= offset && offset <= s.end)
            || t.iter().any(|(k, v)| {
                t.key(k).and_then(|key| key.span()).is_some_and(|s| s.start <= offset && offset <= s.end)
                    || contains(v, offset)
            })
    }
    let doc = toml_edit::Document::parse(text).ok()?;
    let mut out = Vec::new();
    walk(doc.as_item(), offset, &mut out);
    Some(out)
}

impl LabError {
    /// A TOML or serde error, located and worded for people: an unknown key
    /// at its own line with the nearest known name, a missing field with its
    /// whole path at the table that lacks it, a value in the wrong form with
    /// the form it needs.
    pub fn from_toml(path: &Path, text: &str, e: &toml::de::Error) -> LabError {
        let raw = e.message().trim();
        let mut offset = e.span().map(|s| s.start);
        let mut field = offset.and_then(|o| path_at(text, o)).unwrap_or_default();
        let message = if let Some(key) = quoted(raw, "unknown field `") {
            // serde locates an unknown key at the table around it: the key's
            // own place, when the path leads to it.
            let mut own = field.clone();
            if own.last().and_then(Seg::key) != Some(key) {
                own.push(Seg::Name(key.to_string()));
            }
            if let Some(at) = key_offset(text, &own) {
                (field, offset) = (own, Some(at));
            }
            let expected = expected_names(raw);
            match suggest::nearest(key, expected.iter().map(String::as_str)) {
                Some(n) => format!("{}; did you mean `{n}`?", unknown(text, &field, key)),
                None => format!("{}{}", unknown(text, &field, key), raw.split_once('`').map_or("", |_| after_key(raw))),
            }
        } else if let Some(value) = quoted(raw, "unknown variant `") {
            let expected = expected_names(raw);
            format!("{raw}{}", suggest::did_you_mean(value, expected.iter().map(String::as_str)))
        } else if let Some(key) = quoted(raw, "missing field `") {
            let top = field.is_empty();
            field.push(Seg::Name(key.to_string()));
            match top {
                true => "missing: every lab file needs it".to_string(),
                false => "missing: the table that starts here needs it".to_string(),
            }
        } else {
            format!("{raw}{}", value_hint(raw, field.last().and_then(Seg::key)))
        };
        let (line, column) = offset.map_or((1, 1), |o| line_col(text, o));
        let field = Some(dotted(&field)).filter(|f| !f.is_empty());
        LabError::Syntax { location: Location { file: path.to_path_buf(), line, column }, field, message }
    }

    /// A file that is not valid TOML with a table header that explains it
    /// (`issue`, at byte `at`): the header is named first, the TOML error
    /// after it.
    pub(crate) fn header_mistake(path: &Path, text: &str, at: usize, issue: Issue, e: &toml::de::Error) -> LabError {
        let (line, column) = line_col(text, at);
        let toml = match e.span() {
            Some(s) => {
                let (l, c) = line_col(text, s.start);
                format!("{l}:{c}: {}", e.message().trim())
            }
            None => e.message().trim().to_string(),
        };
        LabError::Syntax {
            location: Location { file: path.to_path_buf(), line, column },
            field: Some(dotted(&issue.path)),
            message: format!("{} (which makes the file invalid TOML: {toml})", issue.message),
        }
    }

    pub(crate) fn invalid(path: &Path, text: &str, issue: Issue) -> LabError {
        let span = span_of(text, &issue.path, issue.at_key);
        let (line, column) = span.map_or((1, 1), |s| line_col(text, s.start));
        LabError::Invalid {
            location: Location { file: path.to_path_buf(), line, column },
            field: dotted(&issue.path),
            message: issue.message,
        }
    }

    /// Where in the file the error is, when known.
    pub fn location(&self) -> Option<&Location> {
        match self {
            LabError::Read { .. } => None,
            LabError::Syntax { location, .. } | LabError::Invalid { location, .. } => Some(location),
        }
    }
}

/// The text between the backticks that follow `prefix` at the start of
/// `message` (serde's `unknown field `x`, expected ...`).
fn quoted<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    message.strip_prefix(prefix)?.split_once('`').map(|(q, _)| q)
}

/// What follows serde's `unknown field `x``: `, expected one of ...`.
fn after_key(message: &str) -> &str {
    message.splitn(3, '`').nth(2).unwrap_or("")
}

/// The names serde says it expected (`expected one of `a`, `b``, `expected
/// `a` or `b``).
fn expected_names(message: &str) -> Vec<String> {
    let Some((_, list)) = message.split_once("expected") else { return Vec::new() };
    list.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// What a value in the wrong form needs, after serde's message about it:
/// a number or boolean written as a string, a duration without its unit.
fn value_hint(message: &str, key: Option<&str>) -> String {
    let key = key.unwrap_or("key");
    let string = message.split_once("string \"").and_then(|(_, rest)| rest.split_once('"')).map(|(v, _)| v);
    let expected = message.rsplit_once("expected ").map_or("", |(_, e)| e);
    const NUMBERS: [&str; 10] = ["u8", "u16", "u32", "u64", "usize", "i32", "i64", "f32", "f64", "a boolean"];
    match (string, expected) {
        (Some(v), e) if NUMBERS.contains(&e) && (v.parse::<f64>().is_ok() || v == "true" || v == "false") => {
            format!("; write it without quotes: `{key} = {v}`")
        }
        (Some(v), "a duration") if v.trim().parse::<f64>().is_ok() => {
            format!("; a duration needs its unit: `{key} = \"{}s\"` (ms, s, m, h)", v.trim())
        }
        (None, "a duration") => match message.split_once('`').and_then(|(_, r)| r.split_once('`')) {
            Some((n, _)) if n.parse::<f64>().is_ok() => {
                format!("; a duration is a string with its unit: `{key} = \"{n}s\"`")
            }
            _ => String::new(),
        },
        _ => String::new(),
    }
}

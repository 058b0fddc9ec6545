//! Lab file errors that point at the offending line, column and field.

use std::fmt;
use std::path::{Path, PathBuf};

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
}

impl Issue {
    pub fn new(path: Vec<Seg>, message: impl Into<String>) -> Issue {
        Issue { path, message: message.into() }
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

/// The byte span of the deepest item of `path` that exists in the document.
fn span_of(text: &str, path: &[Seg]) -> Option<std::ops::Range<usize>> {
    let doc = toml_edit::Document::parse(text).ok()?;
    let mut item: &toml_edit::Item = doc.as_item();
    let mut best = None;
    for seg in path {
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

/// The dotted path of the innermost key whose item contains byte `offset`.
fn path_at(text: &str, offset: usize) -> Option<String> {
    fn walk(item: &toml_edit::Item, offset: usize, out: &mut String) {
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
                        out.push_str(&format!("[{i}]"));
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
    fn push_key(out: &mut String, k: &str) {
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(k);
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
    let mut out = String::new();
    walk(doc.as_item(), offset, &mut out);
    Some(out)
}

impl LabError {
    pub fn from_toml(path: &Path, text: &str, e: &toml::de::Error) -> LabError {
        let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
        let message = e.message().trim().to_string();
        let field = e.span().and_then(|s| path_at(text, s.start)).filter(|f| !f.is_empty());
        LabError::Syntax { location: Location { file: path.to_path_buf(), line, column }, field, message }
    }

    pub(crate) fn invalid(path: &Path, text: &str, issue: Issue) -> LabError {
        let (line, column) = span_of(text, &issue.path).map_or((1, 1), |s| line_col(text, s.start));
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

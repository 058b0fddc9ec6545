//! Studies: several labs in one run (`vlab run labs/study.toml`). A study
//! names lab files and, for each, the cases it takes (by `--case`-style
//! filters); every lab boots its own pairs, and all pairs of all labs take
//! turns in every round of `--repeat`, so that the variants of different labs
//! (different addressing, different overlays) are measured side by side.
//!
//! ```toml
//! name = "study"
//! duration = "5s"              # optional: every lab's workload duration
//! [[lab]]
//! file = "baseline.toml"       # relative to the study file
//! cases = ["path=container,family=ipv4"]   # optional: cases whose name contains one
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::lab::{Case, Issue, Lab, LabError, Seg};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StudyFile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default, with = "humantime_serde::option")]
    duration: Option<Duration>,
    lab: Vec<StudyLab>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StudyLab {
    file: PathBuf,
    #[serde(default)]
    cases: Vec<String>,
}

/// A loaded study: its labs, each with the cases it runs.
pub struct Study {
    pub name: String,
    pub description: String,
    pub labs: Vec<(Lab, Vec<Case>)>,
}

/// Whether `text` is a study (it lists `[[lab]]` tables) rather than a lab.
pub fn is_study(text: &str) -> bool {
    text.parse::<toml::Table>().is_ok_and(|t| t.get("lab").is_some_and(toml::Value::is_array))
}

/// Reads a study and the labs it names; errors name the study's file, line
/// and field, or the lab file's.
pub fn load(path: &Path) -> Result<Study, LabError> {
    let text = std::fs::read_to_string(path).map_err(|source| LabError::Read { path: path.to_path_buf(), source })?;
    let file: StudyFile = toml::from_str(&text).map_err(|e| LabError::from_toml(path, &text, &e))?;
    let invalid = |segs: Vec<Seg>, message: String| LabError::invalid(path, &text, Issue::new(segs, message));
    if file.lab.is_empty() {
        return Err(invalid(vec![Seg::Key("lab")], "a study names at least one lab".into()));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut labs = Vec::new();
    for (i, entry) in file.lab.iter().enumerate() {
        let lab_path = dir.join(&entry.file);
        if !lab_path.is_file() {
            let message = format!("no lab file {}", lab_path.display());
            return Err(invalid(vec![Seg::Key("lab"), Seg::Index(i), Seg::Key("file")], message));
        }
        let mut lab = crate::variants::load_lab(&lab_path)?;
        if let Some(d) = file.duration {
            lab.workload.duration = d;
        }
        let all = lab.cases();
        let mut cases: Vec<Case> = Vec::new();
        for (j, filter) in entry.cases.iter().enumerate() {
            let hits: Vec<&Case> = all.iter().filter(|c| c.name.contains(filter.as_str())).collect();
            if hits.is_empty() {
                let names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
                let message =
                    format!("`{filter}` matches no case of {} (its cases: {})", lab_path.display(), names.join(", "));
                return Err(invalid(vec![Seg::Key("lab"), Seg::Index(i), Seg::Key("cases"), Seg::Index(j)], message));
            }
            for c in hits {
                if !cases.contains(c) {
                    cases.push(c.clone());
                }
            }
        }
        if entry.cases.is_empty() {
            cases = all.clone();
        }
        // The lab's own order, not the filters'.
        cases.sort_by_key(|c| all.iter().position(|x| x == c));
        if labs.iter().any(|(l, _): &(Lab, Vec<Case>)| l.name == lab.name) {
            let message = format!("lab `{}` is in the study twice", lab.name);
            return Err(invalid(vec![Seg::Key("lab"), Seg::Index(i), Seg::Key("file")], message));
        }
        labs.push((lab, cases));
    }
    Ok(Study { name: file.name, description: file.description, labs })
}

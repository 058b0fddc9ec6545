//! The policy file a policy filter enforces (`l4-policy`, and `iptables` /
//! `nftables` given one): its own table's `policy` key, or the policy axis
//! (`[matrix] policy = [FILES]`: one case per file on the same booted pair,
//! named by the file's stem: `policy=deny`), read into the policy model and
//! compiled for the lab's containers.
//!
//! Every method compiles from the same model and the same identities
//! (`overlay::cilium_style::policy::compile`: selectors resolved to the
//! containers they match, ports expanded); each renders the entries its own
//! way. The evaluator ([`crate::policy`]) judges all of them and never
//! reads what they compiled.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::lab::{CaseParams, Issue, Lab, LabError, Seg};
use crate::overlay::cilium_style::policy::{self, Compiled};
use crate::overlay::endpoints;
use crate::policy::{Endpoint, Policy};

/// The axis's key in case names and under `[matrix]`.
pub const AXIS: &str = "policy";

#[derive(Debug, Default, Deserialize)]
struct Section {
    #[serde(default)]
    matrix: Option<Axis>,
}

#[derive(Debug, Default, Deserialize)]
struct Axis {
    #[serde(default)]
    policy: Vec<PathBuf>,
}

/// The policy axis's files, as the lab names them.
pub fn axis(lab: &Lab) -> Vec<PathBuf> {
    lab.section::<Section>().ok().and_then(|s| s.matrix).map(|m| m.policy).unwrap_or_default()
}

/// A policy file's name on the axis: its stem.
pub fn stem(path: &Path) -> String {
    path.file_stem().map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().to_string())
}

/// The policy axis's value of a case.
pub fn on_axis(case: &CaseParams) -> Option<&str> {
    case.variant.get(AXIS).map(String::as_str)
}

/// The axis's values (none without an axis).
pub fn axes(lab: &Lab) -> Vec<(String, Vec<String>)> {
    let files = axis(lab);
    if files.is_empty() {
        return Vec::new();
    }
    vec![(AXIS.to_string(), files.iter().map(|p| stem(p)).collect())]
}

/// Where a filter finds its policy: the key `policy` of its own table, and
/// what it enforces without one (`None`: nothing of the policy kind).
#[derive(Debug, Clone, Copy)]
pub struct Source {
    /// The filter's table (`l4_policy`, `iptables`, `nftables`).
    pub table: &'static str,
    /// The policy without a file, and its name for errors.
    pub default: Option<(&'static str, &'static str)>,
}

/// The filter's own `policy` key.
fn own(lab: &Lab, table: &str) -> Option<PathBuf> {
    let doc: toml::Table = lab.section().ok()?;
    doc.get(table)?.get("policy")?.as_str().map(PathBuf::from)
}

impl Source {
    /// Whether the lab gives this filter a policy file (its key or the axis).
    pub fn given(&self, lab: &Lab) -> bool {
        own(lab, self.table).is_some() || !axis(lab).is_empty()
    }

    /// The files the lab names for it (for the run's input hash).
    pub fn inputs(&self, lab: &Lab) -> Vec<PathBuf> {
        own(lab, self.table).into_iter().chain(axis(lab)).collect()
    }

    /// The text of the policy named `name` on the axis (else the filter's
    /// own file, else its default) and its name for errors.
    fn text(&self, lab: &Lab, name: Option<&str>) -> Result<(String, String), String> {
        let on_axis = name.and_then(|v| axis(lab).into_iter().find(|p| stem(p) == v));
        let Some(path) = on_axis.or_else(|| own(lab, self.table)) else {
            return match self.default {
                Some((text, name)) => Ok((text.to_string(), name.to_string())),
                None => Err(format!("no policy: give `{}.policy` or `matrix.policy`", self.table)),
            };
        };
        let path = lab.source.parent().map_or(path.clone(), |dir| dir.join(&path));
        let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Ok((text, path.display().to_string()))
    }

    /// The lab's policy (the one named `name` on the axis) read and compiled
    /// for its containers; errors name the policy file, line and field.
    pub fn read(&self, lab: &Lab, name: Option<&str>) -> Result<LabPolicy, String> {
        let (text, name) = self.text(lab, name)?;
        let containers = endpoints::containers(lab);
        let namespaces = endpoints::settings(lab).namespaces;
        let endpoints = policy::endpoints(&containers, &namespaces);
        let model = crate::policy::parse::parse(&text, &endpoints).map_err(|e| e.in_file(&name))?;
        let compiled = policy::compile(&model, &containers, &namespaces).map_err(|e| e.in_file(&name))?;
        Ok(LabPolicy { model, endpoints, compiled })
    }

    /// The policy of a case: the axis's value, or the filter's own.
    pub fn of_case(&self, lab: &Lab, case: &CaseParams) -> Result<LabPolicy, String> {
        self.read(lab, on_axis(case))
    }

    /// Checks that every policy the lab gives reads and compiles, naming
    /// the key that gives a broken one; and `[endpoints]`.
    pub fn validate(&self, lab: &Lab) -> Result<(), LabError> {
        endpoints::validate(lab)?;
        let files = axis(lab);
        let own = own(lab, self.table);
        // With a policy axis, the filter's default is not used.
        if (files.is_empty() && self.default.is_some()) || own.is_some() {
            self.read(lab, None)
                .map(|_| ())
                .map_err(|m| lab.invalid(Issue::new(vec![Seg::Key(self.table), Seg::Key("policy")], m)))?;
        }
        for (i, path) in files.iter().enumerate() {
            let at = || vec![Seg::Key("matrix"), Seg::Key(AXIS), Seg::Index(i)];
            if files[..i].iter().any(|p| stem(p) == stem(path)) {
                return Err(lab.invalid(Issue::new(at(), format!("two policies named `{}`", stem(path)))));
            }
            self.read(lab, Some(&stem(path))).map_err(|m| lab.invalid(Issue::new(at(), m)))?;
        }
        Ok(())
    }
}

/// A lab's policy: as the model reads it (what the evaluator judges by)
/// and compiled for the lab's containers.
pub struct LabPolicy {
    pub model: Policy,
    pub endpoints: Vec<Endpoint>,
    pub compiled: Compiled,
}

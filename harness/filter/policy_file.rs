//! The policy file a policy filter enforces (`l4-policy`, and `iptables` /
//! `nftables` given one): its own table's `policy` key, or the policy axis
//! (`[matrix] policy = [FILES]`: one case per file on the same booted pair,
//! named by the file's stem: `policy=deny`), read into the policy model and
//! compiled for the lab's containers.
//!
//! The rules axis (`[matrix] rules = [10, 100, 1000, 10000]`) scales a
//! policy for the cost of each method as it grows: a case with `rules=N`
//! enforces its policy and one rule more, written in the same language
//! ([`padding`]), that denies the workload's client N TCP ports of the
//! server (every other port from 40000, 40 to a `toPorts` entry, as
//! Cilium's schema allows) and leaves default deny as the policy has it.
//! No probe, workload or flow uses those ports, so every verdict stays the
//! policy's own, while a method that walks its rules one by one meets all
//! N deny rules on each new connection to the server. The probe matrix
//! probes the policy's own ports only; the evaluator judges the scaled
//! policy.
//!
//! Every method compiles from the same model and the same identities
//! (`overlay::cilium_style::policy::compile`: selectors resolved to the
//! containers they match, ports expanded); each renders the entries its own
//! way. The evaluator ([`crate::policy`]) judges all of them and never
//! reads what they compiled.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::lab::{CaseParams, Issue, Lab, LabError, Seg};
use crate::overlay::cilium_style::policy::{self, Compiled};
use crate::overlay::endpoints;
use crate::policy::{Endpoint, Policy};

/// The axis's key in case names and under `[matrix]`.
pub const AXIS: &str = "policy";

/// The rules axis's key.
pub const RULES_AXIS: &str = "rules";

/// The most padding rules a case may add (every other port from
/// [`PADDING_FROM`] up to 65535).
pub const MAX_RULES: u32 = 12000;

/// The first port the padding denies.
pub const PADDING_FROM: u16 = 40000;

#[derive(Debug, Default, Deserialize)]
struct Section {
    #[serde(default)]
    matrix: Option<Axis>,
}

#[derive(Debug, Default, Deserialize)]
struct Axis {
    #[serde(default)]
    policy: Vec<PathBuf>,
    #[serde(default)]
    rules: Vec<u32>,
}

fn matrix(lab: &Lab) -> Axis {
    lab.section::<Section>().ok().and_then(|s| s.matrix).unwrap_or_default()
}

/// The policy axis's files, as the lab names them.
pub fn axis(lab: &Lab) -> Vec<PathBuf> {
    matrix(lab).policy
}

/// The rules axis's values.
pub fn rules_axis(lab: &Lab) -> Vec<u32> {
    matrix(lab).rules
}

/// A policy file's name on the axis: its stem.
pub fn stem(path: &Path) -> String {
    path.file_stem().map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().to_string())
}

/// The policy axis's value of a case.
pub fn on_axis(case: &CaseParams) -> Option<&str> {
    case.variant.get(AXIS).map(String::as_str)
}

/// Whether each case puts its own policy in place (a policy or rules axis):
/// then the deploy puts none.
pub fn per_case(lab: &Lab) -> bool {
    let m = matrix(lab);
    !m.policy.is_empty() || !m.rules.is_empty()
}

/// The rules axis's value of a case.
pub fn rules_of(case: &CaseParams) -> Option<u32> {
    case.variant.get(RULES_AXIS).and_then(|v| v.parse().ok())
}

/// The axes' values (none without an axis).
pub fn axes(lab: &Lab) -> Vec<(String, Vec<String>)> {
    let files = axis(lab);
    let mut out = Vec::new();
    if !files.is_empty() {
        out.push((AXIS.to_string(), files.iter().map(|p| stem(p)).collect()));
    }
    out.extend(rules_axes(lab));
    out
}

/// The rules axis's values (none without it).
pub fn rules_axes(lab: &Lab) -> Option<(String, Vec<String>)> {
    let rules = rules_axis(lab);
    (!rules.is_empty()).then(|| (RULES_AXIS.to_string(), rules.iter().map(u32::to_string).collect()))
}

/// The rule that scales a policy by `n` deny rules (see the module's
/// documentation): the workload's client denied `n` TCP ports of its
/// server, none of `taken`; an error when the workload does not run
/// between two containers or the ports run out.
pub fn padding(lab: &Lab, n: u32, taken: &BTreeSet<u16>) -> Result<String, String> {
    let containers = endpoints::containers(lab);
    let labels = |e: &crate::lab::Endpoint| {
        let name = e.container.as_ref()?;
        let (_, l) = containers.iter().find(|(c, _)| c == name)?;
        serde_json::to_string(l).ok()
    };
    let (Some(server), Some(client)) = (labels(&lab.workload.server), labels(&lab.workload.client)) else {
        return Err(format!("`{RULES_AXIS}`: the workload's server and client must be containers"));
    };
    let ports: Vec<u16> =
        (PADDING_FROM..=u16::MAX).step_by(2).filter(|p| !taken.contains(p)).take(n as usize).collect();
    if ports.len() < n as usize {
        return Err(format!(
            "`{RULES_AXIS}`: {n} rules need {n} ports from {PADDING_FROM} that the policy does not name"
        ));
    }
    let entries: Vec<String> = ports
        .chunks(40)
        .map(|c| {
            let ports: Vec<String> = c.iter().map(|p| format!("{{port: \"{p}\", protocol: TCP}}")).collect();
            format!("    - ports: [{}]\n", ports.join(", "))
        })
        .collect();
    Ok(format!(
        "- endpointSelector: {{matchLabels: {server}}}\n  enableDefaultDeny: {{ingress: false, egress: false}}\n  \
         ingressDeny:\n  - fromEndpoints: [{{matchLabels: {client}}}]\n    toPorts:\n{}",
        entries.concat()
    ))
}

/// Where a filter finds its policy: the key `policy` of its own table, and
/// what it enforces without one (`None`: nothing of the policy kind).
#[derive(Debug, Clone, Copy)]
pub struct Source {
    /// The filter's table (`l4_policy`, `iptables`, `nftables`).
    pub table: &'static str,
    /// The policy without a file, and its name for errors.
    pub default: Option<(&'static str, &'static str)>,
    /// The most entries the method holds (a policy that needs more is
    /// refused at the rule that passes it).
    pub limit: usize,
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

    /// The text of the policy named `name` on the axis (without a name, the
    /// filter's own file, else its default) and its name for errors; a name
    /// that is not on the axis is an error.
    fn text(&self, lab: &Lab, name: Option<&str>) -> Result<(String, String), String> {
        let on_axis = name
            .map(|v| {
                let found = axis(lab).into_iter().find(|p| stem(p) == v);
                found.ok_or_else(|| format!("no policy `{v}` on the lab's `matrix.policy` axis"))
            })
            .transpose()?;
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
        self.scaled(lab, name, None)
    }

    /// [`Source::read`], the policy scaled by `rules` padding rules.
    pub fn scaled(&self, lab: &Lab, name: Option<&str>, rules: Option<u32>) -> Result<LabPolicy, String> {
        let (text, name) = self.text(lab, name)?;
        let containers = endpoints::containers(lab);
        let namespaces = endpoints::settings(lab).namespaces;
        let endpoints = policy::endpoints(&containers, &namespaces);
        let parse = |text: &str| crate::policy::parse::parse(text, &endpoints).map_err(|e| e.in_file(&name));
        let own = parse(&text)?;
        let model = match rules {
            None => own.clone(),
            Some(n) => {
                let mut taken: BTreeSet<u16> = crate::filter::probes::named_ports(&own).collect();
                taken.extend([lab.workload.port].into_iter().chain(lab.workload.probe_port));
                let extra = padding(lab, n, &taken)?;
                parse(&format!("{text}\n---\n{extra}"))?
            }
        };
        let compiled =
            policy::compile_within(&model, &containers, &namespaces, self.limit).map_err(|e| e.in_file(&name))?;
        Ok(LabPolicy { model, own, endpoints, compiled })
    }

    /// The policy of a case: the axis's value, or the filter's own, scaled
    /// by its rules axis's value.
    pub fn of_case(&self, lab: &Lab, case: &CaseParams) -> Result<LabPolicy, String> {
        self.scaled(lab, on_axis(case), rules_of(case))
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
        let rules = rules_axis(lab);
        for (i, &n) in rules.iter().enumerate() {
            let at = || vec![Seg::Key("matrix"), Seg::Key(RULES_AXIS), Seg::Index(i)];
            if !(1..=MAX_RULES).contains(&n) {
                return Err(lab.invalid(Issue::new(at(), format!("{n} rules: use 1 to {MAX_RULES}"))));
            }
            if rules[..i].contains(&n) {
                return Err(lab.invalid(Issue::new(at(), format!("{n} rules twice"))));
            }
        }
        // The largest scale, with every policy: within the method's limit.
        if let Some(&most) = rules.iter().max() {
            let names: Vec<Option<String>> =
                if files.is_empty() { vec![None] } else { files.iter().map(|p| Some(stem(p))).collect() };
            let i = rules.iter().position(|&n| n == most).unwrap_or(0);
            for name in names {
                self.scaled(lab, name.as_deref(), Some(most)).map_err(|m| {
                    lab.invalid(Issue::new(vec![Seg::Key("matrix"), Seg::Key(RULES_AXIS), Seg::Index(i)], m))
                })?;
            }
        }
        Ok(())
    }
}

/// A lab's policy: as the model reads it (what the evaluator judges by;
/// scaled by a case's rules) and compiled for the lab's containers.
pub struct LabPolicy {
    pub model: Policy,
    /// The policy as its file has it, without a scale's padding (what the
    /// probe matrix probes).
    pub own: Policy,
    pub endpoints: Vec<Endpoint>,
    pub compiled: Compiled,
}

//! A run judged again from its artifacts, without VMs.
//!
//! `vlab run --artifacts DIR` keeps, besides each case's evidence and its
//! record (`case.json`, see [`crate::run::record`]), what the run was given
//! (`DIR/inputs/`: the lab or study file and the files its labs read) and
//! what it reported (`DIR/report.json`, as `--json` writes it; `DIR/run.json`
//! says which file ran and how). [`rejudge`] loads the labs from those
//! copies, judges every case of every round from its record with the code
//! that judges a live case, assembles the reports as a run does, and lists
//! where a verdict differs from the recorded one.

use std::path::{Component, Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::lab::{Case, Lab};
use crate::report::{CaseReport, CaseTiming, Report, Versus};
use crate::run::record;
use crate::{filter, overlay, study};

/// What `DIR/run.json` says of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// The vlab version that ran it.
    pub vlab: String,
    /// The lab or study file, under `DIR/inputs/`.
    pub file: PathBuf,
    /// Where it was when it ran.
    pub source: PathBuf,
    /// Kernels compared (`--kernel` given that often; 1 otherwise).
    pub kernels: usize,
    /// The tolerance of the comparison of kernels.
    pub tolerance: f64,
}

/// Where the inputs are kept under the artifacts.
pub const INPUTS: &str = "inputs";
/// The run's description, under the artifacts.
pub const RUN_FILE: &str = "run.json";
/// The run's report as `--json` writes it, under the artifacts.
pub const REPORT_FILE: &str = "report.json";

/// The files a run of `file` (a lab or a study, whose labs are `labs`) reads,
/// each relative to `file`'s directory: the file, each lab file and the files
/// its variants read. Those outside that directory cannot be kept beside it
/// and are returned apart, as they are.
pub fn inputs(file: &Path, labs: &[&Lab]) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let base = file.parent().unwrap_or(Path::new(""));
    let mut all = vec![file.to_path_buf()];
    for lab in labs {
        all.push(lab.source.clone());
        let dir = lab.source.parent().unwrap_or(Path::new(""));
        let variants = lab.overlays().into_iter().map(|o| overlay::get(o) as &dyn overlay::Variant);
        let variants = variants.chain(lab.filters().into_iter().map(|f| filter::get(f) as &dyn overlay::Variant));
        for v in variants {
            all.extend(v.inputs(lab).into_iter().map(|p| dir.join(p)));
        }
    }
    let (mut kept, mut outside) = (Vec::new(), Vec::new());
    for path in all {
        match path.strip_prefix(base) {
            Ok(rel) if rel.components().all(|c| matches!(c, Component::Normal(_))) => {
                if !kept.contains(&rel.to_path_buf()) {
                    kept.push(rel.to_path_buf());
                }
            }
            _ => outside.push(path),
        }
    }
    (kept, outside)
}

/// Keeps a run's inputs and its description under `artifacts` (before it
/// runs); returns the inputs that could not be kept.
pub fn keep_inputs(
    artifacts: &Path,
    file: &Path,
    labs: &[&Lab],
    kernels: usize,
    tolerance: f64,
) -> anyhow::Result<Vec<PathBuf>> {
    let (kept, outside) = inputs(file, labs);
    let base = file.parent().unwrap_or(Path::new(""));
    for rel in &kept {
        let to = artifacts.join(INPUTS).join(rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::copy(base.join(rel), &to)
            .with_context(|| format!("cannot keep {} as {}", rel.display(), to.display()))?;
    }
    let run = RunRecord {
        vlab: env!("CARGO_PKG_VERSION").to_string(),
        file: kept.first().cloned().context("the run's own file is kept")?,
        source: file.to_path_buf(),
        kernels,
        tolerance,
    };
    let path = artifacts.join(RUN_FILE);
    std::fs::write(&path, serde_json::to_string_pretty(&run)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(outside)
}

/// A run judged again.
pub struct Rejudged {
    /// What ran.
    pub run: RunRecord,
    /// The study, when a study ran (its labs taken out).
    pub study: Option<study::Study>,
    /// The reports as the run would have made them with this vlab.
    pub reports: Vec<Report>,
    /// Every verdict that differs from the recorded one, a line each.
    pub differences: Vec<String>,
    /// A study's recorded run id and block (`--block`): judged again, it is
    /// still that run.
    pub identity: Option<(String, Option<study::Block>)>,
}

/// Judges the run kept under `dir` again.
pub fn rejudge(dir: &Path) -> anyhow::Result<Rejudged> {
    let read = |name: &str| -> anyhow::Result<Vec<u8>> {
        let path = dir.join(name);
        std::fs::read(&path).with_context(|| {
            format!("cannot read {} (a run keeps it under --artifacts since vlab 0.2)", path.display())
        })
    };
    let run: RunRecord = serde_json::from_slice(&read(RUN_FILE)?).with_context(|| format!("{RUN_FILE}: unreadable"))?;
    let doc: Value = serde_json::from_slice(&read(REPORT_FILE)?).with_context(|| format!("{REPORT_FILE}: not JSON"))?;
    let identity = doc["studies"].get(0).map(|s| {
        let run = s["run"].as_str().unwrap_or_default().to_string();
        (run, serde_json::from_value(s["block"].clone()).ok())
    });
    let recorded: Vec<Value> = match doc.get("reports") {
        Some(Value::Array(rs)) => rs.clone(),
        _ => vec![doc],
    };
    let file = dir.join(INPUTS).join(&run.file);
    let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let (labs, study): (Vec<Lab>, Option<study::Study>) = if study::is_study(&text) {
        let mut s = study::load(&file)?;
        let labs = std::mem::take(&mut s.labs).into_iter().map(|(l, _)| l).collect();
        (labs, Some(s))
    } else {
        (vec![crate::variants::load_lab(&file)?], None)
    };
    let mut reports: Vec<Report> = recorded
        .iter()
        .map(|r| serde_json::from_value(r.clone()).context("the recorded report"))
        .collect::<anyhow::Result<_>>()?;
    let mut differences = Vec::new();
    for i in 0..reports.len() {
        let lab = labs
            .iter()
            .find(|l| l.name == reports[i].lab)
            .with_context(|| format!("the report's lab `{}` is not in {}", reports[i].lab, file.display()))?;
        let evidence = crate::report::report_evidence(dir, &reports, i);
        let old_cases: &[Value] = recorded[i]["cases"].as_array().map_or(&[], Vec::as_slice);
        let all = lab.cases();
        let cases: Vec<&Case> = old_cases
            .iter()
            .map(|c| {
                let name = c["name"].as_str().unwrap_or_default();
                all.iter().find(|x| x.name == name).with_context(|| format!("lab `{}` has no case `{name}`", lab.name))
            })
            .collect::<anyhow::Result<_>>()?;
        let mut rounds = Vec::new();
        for round in 1..=reports[i].repeat.max(1) {
            let at = crate::report::round_evidence(&evidence, round);
            let mut judged = Vec::new();
            for case in &cases {
                let case_dir = at.join(&case.name);
                let (rec, pcaps) = record::load(&case_dir)?;
                let report = record::judge(&lab.for_case(case), case, &rec, &pcaps)
                    .with_context(|| format!("{}", case_dir.display()))?;
                judged.push(report);
            }
            crate::report::compare_with(&mut judged, Versus::Overlay, overlay::REFERENCE);
            crate::report::compare_with(&mut judged, Versus::Filter, filter::REFERENCE);
            rounds.push(judged);
        }
        let mut cases = crate::report::combine_repetitions(rounds);
        for (c, old) in cases.iter_mut().zip(old_cases) {
            c.timing = serde_json::from_value::<CaseTiming>(old["timing"].clone()).unwrap_or_default();
            differences.extend(verdict_differences(&reports[i].lab, old, c));
        }
        let r = &mut reports[i];
        r.passed = cases.iter().all(|c| c.passed);
        r.summaries = crate::run::summaries(lab, &cases);
        r.cases = cases;
    }
    Ok(Rejudged { run, study, reports, differences, identity })
}

/// Where a case's verdicts judged now differ from the recorded ones: a check
/// that passes or fails otherwise, says otherwise, is new or is gone, and a
/// repetition that fails other checks.
pub fn verdict_differences(lab: &str, old: &Value, new: &CaseReport) -> Vec<String> {
    let at = format!("{lab}/{}", new.name);
    let new_value = serde_json::to_value(new).expect("a case report serializes");
    let checks = |v: &Value| -> Vec<Value> { v["checks"].as_array().cloned().unwrap_or_default() };
    let (old_checks, new_checks) = (checks(old), checks(&new_value));
    let verdict = |c: &Value| match (c["passed"].as_bool(), c["not_judged"].as_bool()) {
        (_, Some(true)) => "not judged",
        (Some(true), _) => "pass",
        _ => "FAIL",
    };
    let mut out = Vec::new();
    for o in &old_checks {
        match new_checks.iter().find(|n| n["name"] == o["name"]) {
            None => out.push(format!("{at}: check `{}` ({}) is no longer made", str_of(&o["name"]), verdict(o))),
            Some(n) if verdict(n) != verdict(o) => out.push(format!(
                "{at}: `{}` was {}, is {}: {}",
                str_of(&o["name"]),
                verdict(o),
                verdict(n),
                str_of(&n["detail"])
            )),
            Some(n) if n["detail"] != o["detail"] => out.push(format!(
                "{at}: `{}` ({}) said \"{}\", says \"{}\"",
                str_of(&o["name"]),
                verdict(n),
                str_of(&o["detail"]),
                str_of(&n["detail"])
            )),
            Some(_) => {}
        }
    }
    for n in new_checks.iter().filter(|n| !old_checks.iter().any(|o| o["name"] == n["name"])) {
        out.push(format!("{at}: new check `{}`: {}: {}", str_of(&n["name"]), verdict(n), str_of(&n["detail"])));
    }
    let failed = |v: &Value| -> Vec<Value> {
        v["repetitions"].as_array().map_or_else(Vec::new, |rs| rs.iter().map(|r| r["failed_checks"].clone()).collect())
    };
    for (k, (o, n)) in failed(old).iter().zip(failed(&new_value).iter()).enumerate() {
        if o != n {
            out.push(format!("{at}: repetition {} failed {o}, fails {n}", k + 1));
        }
    }
    out
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

//! `vlab compare A.json B.json`: two reports of the same lab (two kernels,
//! two builds), case by case: the ratio of B's throughput to A's with its
//! 95 % interval, and whether B is slower, faster or not significantly
//! different beyond a tolerance.
//!
//! A report's samples are its repetitions (`throughput.samples` of a run
//! with `--repeat`), else its one figure. Two report files are independent
//! runs, so the interval is Welch's on the logs (see [`crate::stats`]); the
//! reports of one run that compared kernels are paired by round
//! ([`compare_paired`]). With one sample on either side there is no
//! interval, and the verdict is inconclusive.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::stats::{self, Change, Interval};

/// What vlab reads of a report.
#[derive(Debug, Deserialize)]
struct ReportFile {
    lab: String,
    #[serde(default)]
    kernel: String,
    cases: Vec<CaseFile>,
}

#[derive(Debug, Deserialize)]
struct CaseFile {
    name: String,
    throughput_bps: f64,
    #[serde(default)]
    throughput: Option<SamplesFile>,
}

#[derive(Debug, Deserialize)]
struct SamplesFile {
    samples: Vec<f64>,
}

impl CaseFile {
    fn samples(&self) -> Vec<f64> {
        self.throughput.as_ref().map_or_else(|| vec![self.throughput_bps], |t| t.samples.clone())
    }
}

/// Why two reports cannot be compared (exit 128).
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not a vlab report: {message}")]
    NotAReport { path: String, message: String },
    #[error("the reports do not describe the same lab: {0}")]
    NotTheSameLab(String),
}

/// One case of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct CaseComparison {
    pub name: String,
    /// A's and B's samples, bit/s.
    pub a: Vec<f64>,
    pub b: Vec<f64>,
    /// B's geometric mean over A's.
    pub ratio: f64,
    pub interval: Option<Interval>,
    pub change: Change,
}

/// The comparison of two reports.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub lab: String,
    pub a: String,
    pub b: String,
    /// Changes within this fraction do not count.
    pub tolerance: f64,
    pub cases: Vec<CaseComparison>,
    /// Some case is significantly slower in B beyond the tolerance.
    pub regressed: bool,
}

/// A report file as JSON.
fn read(path: &Path) -> Result<serde_json::Value, CompareError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| CompareError::Read { path: shown.clone(), source })?;
    serde_json::from_str(&text).map_err(|e| CompareError::NotAReport { path: shown, message: e.to_string() })
}

/// Compares two lab reports, `a` (read from `pa`) the reference.
fn compare_labs(
    pa: &Path,
    a: serde_json::Value,
    pb: &Path,
    b: serde_json::Value,
    tolerance: f64,
) -> Result<Comparison, CompareError> {
    let parse = |path: &Path, v: serde_json::Value| {
        ReportFile::deserialize(v)
            .map_err(|e| CompareError::NotAReport { path: path.display().to_string(), message: e.to_string() })
    };
    let (ra, rb) = (parse(pa, a)?, parse(pb, b)?);
    let label = |path: &Path, r: &ReportFile| format!("{} (kernel {})", path.display(), r.kernel);
    compare(&ra, &rb, tolerance, (label(pa, &ra), label(pb, &rb)))
}

/// What vlab reads of a study's report (`vlab run STUDY --json`).
#[derive(Debug, Deserialize)]
struct StudyFile {
    reports: Vec<ReportFile>,
    studies: Vec<crate::findings::StudyOutcome>,
}

/// A finding of two studies: its verdict in A and in B.
#[derive(Debug, Clone, Serialize)]
pub struct FindingChange {
    pub claim: String,
    pub a: Option<crate::findings::Verdict>,
    pub b: Option<crate::findings::Verdict>,
    /// B's evidence.
    pub evidence: Vec<String>,
}

impl FindingChange {
    /// Held, or was inconclusive, in A and does not hold in B.
    pub fn regressed(&self) -> bool {
        use crate::findings::Verdict::DoesNotHold;
        self.b == Some(DoesNotHold) && self.a != Some(DoesNotHold)
    }
}

/// Two runs of a study (before and after a kernel or a change): each lab
/// case by case as two labs' reports are compared, and finding by finding.
#[derive(Debug, Clone, Serialize)]
pub struct StudyComparison {
    pub study: String,
    pub a: String,
    pub b: String,
    pub labs: Vec<Comparison>,
    pub findings: Vec<FindingChange>,
    /// A case is significantly slower in B, or a finding that did not fail
    /// in A does not hold in B.
    pub regressed: bool,
}

/// Two reports compared: of a lab, or of a study.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Compared {
    Lab(Comparison),
    Study(StudyComparison),
}

impl Compared {
    pub fn regressed(&self) -> bool {
        match self {
            Compared::Lab(c) => c.regressed,
            Compared::Study(s) => s.regressed,
        }
    }

    pub fn table(&self) -> String {
        match self {
            Compared::Lab(c) => c.table(),
            Compared::Study(s) => s.table(),
        }
    }
}

/// Compares the reports at `a` and `b`, of a lab or of a study (a study's
/// report of one kernel each: the first kernel's otherwise).
pub fn compare_any(a: &Path, b: &Path, tolerance: f64) -> Result<Compared, CompareError> {
    let (va, vb) = (read(a)?, read(b)?);
    for (path, v) in [(a, &va), (b, &vb)] {
        if v.get("blocks").is_some() && v.get("model").is_some() {
            return Err(CompareError::NotAReport {
                path: path.display().to_string(),
                message: "it is a merged study (vlab merge), whose throughputs are per block: compare two runs' \
                          reports (vlab run STUDY --json), or read each merged study's pooled findings"
                    .into(),
            });
        }
    }
    let is_study =
        |v: &serde_json::Value| v.get("studies").is_some_and(|s| s.as_array().is_some_and(|s| !s.is_empty()));
    match (is_study(&va), is_study(&vb)) {
        (false, false) => compare_labs(a, va, b, vb, tolerance).map(Compared::Lab),
        (true, true) => {
            let parse = |path: &Path, v: serde_json::Value| {
                StudyFile::deserialize(v).map_err(|e| CompareError::NotAReport {
                    path: path.display().to_string(),
                    message: format!("not a study's report: {e}"),
                })
            };
            let (sa, sb) = (parse(a, va)?, parse(b, vb)?);
            compare_studies(&sa, &sb, tolerance, (a.display().to_string(), b.display().to_string()))
                .map(Compared::Study)
        }
        (true, false) => {
            Err(CompareError::NotTheSameLab(format!("{} is a study's report, {} a lab's", a.display(), b.display())))
        }
        (false, true) => {
            Err(CompareError::NotTheSameLab(format!("{} is a lab's report, {} a study's", a.display(), b.display())))
        }
    }
}

fn compare_studies(
    a: &StudyFile,
    b: &StudyFile,
    tolerance: f64,
    names: (String, String),
) -> Result<StudyComparison, CompareError> {
    let (oa, ob) = (&a.studies[0], &b.studies[0]);
    if oa.study != ob.study {
        return Err(CompareError::NotTheSameLab(format!("study `{}` against study `{}`", oa.study, ob.study)));
    }
    // A run over several kernels lists each lab's reports kernel by kernel.
    let first_kernel =
        |f: &StudyFile, k: &str| f.reports.iter().filter(|r| r.kernel == k).map(|r| r.lab.clone()).collect::<Vec<_>>();
    let (la, lb) = (first_kernel(a, &oa.kernel), first_kernel(b, &ob.kernel));
    if la != lb {
        return Err(CompareError::NotTheSameLab(format!("labs [{}] against labs [{}]", la.join(", "), lb.join(", "))));
    }
    let mut labs = Vec::new();
    for lab in &la {
        fn pick<'f>(f: &'f StudyFile, lab: &str, kernel: &str) -> &'f ReportFile {
            f.reports.iter().find(|r| r.lab == lab && r.kernel == kernel).expect("listed")
        }
        let (ra, rb) = (pick(a, lab, &oa.kernel), pick(b, lab, &ob.kernel));
        let label = |path: &str, r: &ReportFile| format!("{path} (kernel {})", r.kernel);
        labs.push(
            compare(ra, rb, tolerance, (label(&names.0, ra), label(&names.1, rb)))
                .map_err(|e| CompareError::NotTheSameLab(format!("lab `{lab}`: {e}")))?,
        );
    }
    let mut findings: Vec<FindingChange> = oa
        .findings
        .iter()
        .map(|f| {
            let other = ob.findings.iter().find(|g| g.finding.claim == f.finding.claim);
            FindingChange {
                claim: f.finding.claim.clone(),
                a: Some(f.verdict),
                b: other.map(|g| g.verdict),
                evidence: other.map(|g| g.evidence.clone()).unwrap_or_default(),
            }
        })
        .collect();
    for g in ob.findings.iter().filter(|g| !oa.findings.iter().any(|f| f.finding.claim == g.finding.claim)) {
        findings.push(FindingChange {
            claim: g.finding.claim.clone(),
            a: None,
            b: Some(g.verdict),
            evidence: g.evidence.clone(),
        });
    }
    let regressed = labs.iter().any(|c| c.regressed) || findings.iter().any(FindingChange::regressed);
    Ok(StudyComparison { study: oa.study.clone(), a: names.0, b: names.1, labs, findings, regressed })
}

impl StudyComparison {
    /// Each lab's comparison, then the findings' verdicts in A and in B.
    pub fn table(&self) -> String {
        let mut s = format!("study {}: B = {} against A = {}\n", self.study, self.b, self.a);
        for c in &self.labs {
            s.push_str(&format!("\n{}", c.table()));
        }
        if !self.findings.is_empty() {
            s.push_str("\nfindings: verdict in A -> in B\n");
            let word = |v: Option<crate::findings::Verdict>| v.map_or("not judged", |v| v.describe());
            for f in &self.findings {
                let mark = if f.regressed() { "  REGRESSED" } else { "" };
                s.push_str(&format!("{} -> {}{mark}: {}\n", word(f.a), word(f.b), f.claim));
            }
        }
        s
    }
}

fn compare(
    a: &ReportFile,
    b: &ReportFile,
    tolerance: f64,
    names: (String, String),
) -> Result<Comparison, CompareError> {
    if a.lab != b.lab {
        return Err(CompareError::NotTheSameLab(format!("lab `{}` against lab `{}`", a.lab, b.lab)));
    }
    let (na, nb): (BTreeSet<&str>, BTreeSet<&str>) =
        (a.cases.iter().map(|c| c.name.as_str()).collect(), b.cases.iter().map(|c| c.name.as_str()).collect());
    if na != nb {
        let only = |x: &BTreeSet<&str>, y: &BTreeSet<&str>| x.difference(y).copied().collect::<Vec<_>>().join(", ");
        return Err(CompareError::NotTheSameLab(format!(
            "cases only in A: [{}]; only in B: [{}]",
            only(&na, &nb),
            only(&nb, &na)
        )));
    }
    let mut cases = Vec::new();
    for ca in &a.cases {
        let cb = b.cases.iter().find(|c| c.name == ca.name).expect("same names");
        let (sa, sb) = (ca.samples(), cb.samples());
        let (ratio, interval, change) = match stats::unpaired_ratio(&sa, &sb) {
            Some((ratio, interval)) => (ratio, interval, stats::judge(ratio, interval, tolerance)),
            // A failed workload (0 bit/s) on either side: no ratio to judge.
            None => (f64::NAN, None, Change::Inconclusive),
        };
        cases.push(CaseComparison { name: ca.name.clone(), a: sa, b: sb, ratio, interval, change });
    }
    let regressed = cases.iter().any(|c| c.change == Change::Slower);
    Ok(Comparison { lab: a.lab.clone(), a: names.0, b: names.1, tolerance, cases, regressed })
}

/// The samples of a case of a report of this run.
/// Two reports of one run that compared kernels side by side (`vlab run
/// --kernel A --kernel B`): their pairs took turns round by round, so each
/// case's ratio is taken within each round (paired) and summarised.
pub fn compare_paired(a: &crate::report::Report, b: &crate::report::Report, tolerance: f64) -> Comparison {
    let cases: Vec<CaseComparison> = a
        .cases
        .iter()
        .zip(&b.cases)
        .map(|(ca, cb)| {
            let (sa, sb) = (ca.samples(), cb.samples());
            let (ratio, interval, change) = match stats::paired_ratio(&sb, &sa) {
                Some(r) => (r.mean, r.interval, stats::judge(r.mean, r.interval, tolerance)),
                None => (f64::NAN, None, Change::Inconclusive),
            };
            CaseComparison { name: ca.name.clone(), a: sa, b: sb, ratio, interval, change }
        })
        .collect();
    let regressed = cases.iter().any(|c| c.change == Change::Slower);
    Comparison {
        lab: a.lab.clone(),
        a: format!("kernel {}", a.kernel),
        b: format!("kernel {}", b.kernel),
        tolerance,
        cases,
        regressed,
    }
}

impl Comparison {
    /// The comparison for people.
    pub fn table(&self) -> String {
        let mut s = format!(
            "lab {}: B = {}\n        against A = {}\n(ratio of B to A, 95 % interval; changes within {:.0} % do not count)\n\n",
            self.lab,
            self.b,
            self.a,
            self.tolerance * 100.0
        );
        let width = self.cases.iter().map(|c| c.name.len()).max().unwrap_or(4).max(4);
        s.push_str(&format!(
            "{:<width$}  {:>3}/{:<3}  {:>6}  {:>15}  verdict\n",
            "case", "nA", "nB", "ratio", "interval"
        ));
        for c in &self.cases {
            let interval = c.interval.map_or("-".to_string(), |i| format!("[{:.2}, {:.2}]", i.low, i.high));
            let verdict = match c.change {
                Change::Slower => "SLOWER".to_string(),
                other => other.describe().to_string(),
            };
            s.push_str(&format!(
                "{:<width$}  {:>3}/{:<3}  {:>5.2}x  {:>15}  {verdict}\n",
                c.name,
                c.a.len(),
                c.b.len(),
                c.ratio,
                interval
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(lab: &str, cases: &[(&str, &[f64])]) -> ReportFile {
        let cases = cases
            .iter()
            .map(|(name, samples)| CaseFile {
                name: name.to_string(),
                throughput_bps: stats::median(samples),
                throughput: Some(SamplesFile { samples: samples.to_vec() }),
            })
            .collect();
        ReportFile { lab: lab.into(), kernel: "k".into(), cases }
    }

    #[test]
    fn other_labs_and_other_cases_are_not_compared() {
        let a = report("x", &[("c1", &[1.0])]);
        let names = || ("A".to_string(), "B".to_string());
        assert!(matches!(
            compare(&a, &report("y", &[("c1", &[1.0])]), 0.05, names()),
            Err(CompareError::NotTheSameLab(_))
        ));
        let err = compare(&a, &report("x", &[("c2", &[1.0])]), 0.05, names()).unwrap_err();
        assert_eq!(err.to_string(), "the reports do not describe the same lab: cases only in A: [c1]; only in B: [c2]");
    }
}

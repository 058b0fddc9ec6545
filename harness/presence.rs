//! Which kernels show a finding: in a run over several kernels (`--kernel`,
//! `--kernel-deb`), every check that failed on one of them, case by case,
//! with its verdict on each kernel; and per check the line a kernel
//! maintainer asks for, "finding present on: 6.1.0-57-amd64 no,
//! 6.12.95+deb12-amd64 yes". Verdicts are the reports' own: a check that
//! failed on one kernel and was not judged on another (its evidence held
//! nothing to judge) is not called absent there.

use serde::Serialize;

use crate::report::Report;

/// A check's verdict on one kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Failed,
    Passed,
    /// The evidence held nothing to judge.
    NotJudged,
    /// The kernel's report has no such check for the case.
    Absent,
}

impl Verdict {
    /// As the tables show it.
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Failed => "FAIL",
            Verdict::Passed => "pass",
            Verdict::NotJudged => "not judged",
            Verdict::Absent => "-",
        }
    }
}

/// A check of a case that failed on at least one kernel.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: String,
    pub case: String,
    /// One per kernel, in the run's order.
    pub verdicts: Vec<Verdict>,
}

/// Per check: on which kernels it failed, in how many of its cases.
#[derive(Debug, Clone, Serialize)]
pub struct Presence {
    pub check: String,
    /// One per kernel: the cases where it failed, and where it was judged.
    pub failed: Vec<usize>,
    pub judged: Vec<usize>,
}

/// A lab's findings across the kernels of one run.
#[derive(Debug, Clone, Serialize)]
pub struct KernelFindings {
    pub lab: String,
    /// Each kernel's `uname -r` (numbered when one is given twice).
    pub kernels: Vec<String>,
    pub checks: Vec<Presence>,
    pub findings: Vec<Finding>,
}

/// For each lab that ran on several kernels, its findings by kernel (labs
/// whose checks all passed everywhere included: "no finding" is an answer).
pub fn by_kernel(reports: &[Report]) -> Vec<KernelFindings> {
    let mut labs: Vec<&str> = Vec::new();
    for r in reports {
        if !labs.contains(&r.lab.as_str()) {
            labs.push(&r.lab);
        }
    }
    labs.into_iter()
        .filter_map(|lab| {
            let own: Vec<&Report> = reports.iter().filter(|r| r.lab == lab).collect();
            (own.len() > 1).then(|| of_lab(lab, &own))
        })
        .collect()
}

fn of_lab(lab: &str, reports: &[&Report]) -> KernelFindings {
    let kernels: Vec<String> = reports
        .iter()
        .enumerate()
        .map(|(i, r)| match reports.iter().filter(|o| o.kernel == r.kernel).count() {
            1 => r.kernel.clone(),
            _ => format!("{} (#{})", r.kernel, i + 1),
        })
        .collect();
    let verdict = |r: &Report, case: &str, check: &str| {
        let found = r.cases.iter().find(|c| c.name == case).and_then(|c| c.checks.iter().find(|k| k.name == check));
        match found {
            None => Verdict::Absent,
            Some(k) if k.not_judged => Verdict::NotJudged,
            Some(k) if k.passed => Verdict::Passed,
            Some(_) => Verdict::Failed,
        }
    };
    // (check, case) pairs that failed somewhere, in the first report's order
    // of cases and checks, then those only later kernels have.
    let mut findings: Vec<Finding> = Vec::new();
    for r in reports {
        for c in &r.cases {
            for k in c.checks.iter().filter(|k| !k.passed) {
                if !findings.iter().any(|f| f.check == k.name && f.case == c.name) {
                    let verdicts = reports.iter().map(|r| verdict(r, &c.name, &k.name)).collect();
                    findings.push(Finding { check: k.name.clone(), case: c.name.clone(), verdicts });
                }
            }
        }
    }
    let mut checks: Vec<Presence> = Vec::new();
    for f in &findings {
        if !checks.iter().any(|p| p.check == f.check) {
            let count = |which: &dyn Fn(&Report) -> usize| reports.iter().map(|r| which(r)).collect::<Vec<usize>>();
            let failed = count(&|r: &Report| {
                r.cases.iter().filter(|c| c.checks.iter().any(|k| k.name == f.check && !k.passed)).count()
            });
            let judged = count(&|r: &Report| {
                r.cases.iter().filter(|c| c.checks.iter().any(|k| k.name == f.check && !k.not_judged)).count()
            });
            checks.push(Presence { check: f.check.clone(), failed, judged });
        }
    }
    KernelFindings { lab: lab.to_string(), kernels, checks, findings }
}

impl Presence {
    /// "present on: A yes (6 of 24 cases), B no (0 of 24)".
    pub fn line(&self, kernels: &[String]) -> String {
        let each: Vec<String> = kernels
            .iter()
            .zip(self.failed.iter().zip(&self.judged))
            .map(|(k, (failed, judged))| match (failed, judged) {
                (0, 0) => format!("{k} not judged"),
                (0, j) => format!("{k} no (0 of {j} cases)"),
                (f, j) => format!("{k} yes ({f} of {j} cases)"),
            })
            .collect();
        format!("present on: {}", each.join(", "))
    }
}

impl Finding {
    /// Whether its verdict is not the same on every kernel.
    pub fn differs(&self) -> bool {
        self.verdicts.iter().any(|v| *v != self.verdicts[0])
    }
}

impl KernelFindings {
    /// The answer in one line: how many findings, and how many of them
    /// differ between the kernels.
    pub fn headline(&self) -> String {
        let differ = self.findings.iter().filter(|f| f.differs()).count();
        let cases: std::collections::BTreeSet<&str> = self.findings.iter().map(|f| f.case.as_str()).collect();
        let n = self.findings.len();
        let count = |k: usize, one: &str, many: &str| format!("{k} {}", if k == 1 { one } else { many });
        let what = format!(
            "{} failed, {} in {}",
            count(self.checks.len(), "check", "checks"),
            count(n, "time", "times"),
            count(cases.len(), "case", "cases")
        );
        match differ {
            0 => format!("{what}; each has the same verdict on every kernel"),
            d => format!("{what}; {d} of the {n} differ between kernels (marked *)"),
        }
    }

    /// The findings for people: per check its presence, then each case's
    /// verdict on each kernel.
    pub fn table(&self) -> String {
        let mut s = format!("lab {}: findings by kernel\n", self.lab);
        if self.findings.is_empty() {
            s.push_str(&format!("no check failed on any kernel ({})\n", self.kernels.join(", ")));
            return s;
        }
        s.push_str(&format!("{}\n", self.headline()));
        let width = self.findings.iter().map(|f| f.case.len()).max().unwrap_or(4).max(4);
        let columns: Vec<usize> = self.kernels.iter().map(|k| k.len().max(10)).collect();
        for p in &self.checks {
            s.push_str(&format!("\n{}\n  {}\n", p.check, p.line(&self.kernels)));
            s.push_str(&format!("  {:<width$}", "case"));
            for (k, w) in self.kernels.iter().zip(&columns) {
                s.push_str(&format!("  {k:<w$}"));
            }
            s.push('\n');
            for f in self.findings.iter().filter(|f| f.check == p.check) {
                s.push_str(&format!("{} {:<width$}", if f.differs() { '*' } else { ' ' }, f.case));
                for (v, w) in f.verdicts.iter().zip(&columns) {
                    s.push_str(&format!("  {:<w$}", v.word()));
                }
                s.truncate(s.trim_end().len());
                s.push('\n');
            }
        }
        s
    }

    /// The same in Markdown (a CI job summary).
    pub fn markdown(&self) -> String {
        let mut s = format!("### Findings by kernel: lab `{}`\n\n", self.lab);
        if self.findings.is_empty() {
            s.push_str(&format!("No check failed on any kernel ({}).\n", self.kernels.join(", ")));
            return s;
        }
        s.push_str(&format!("{}.\n\n", self.headline()));
        for p in &self.checks {
            s.push_str(&format!("**{}**: {}\n\n| case |", p.check, p.line(&self.kernels)));
            for k in &self.kernels {
                s.push_str(&format!(" {k} |"));
            }
            s.push_str(&format!("\n|---|{}\n", "---|".repeat(self.kernels.len())));
            for f in self.findings.iter().filter(|f| f.check == p.check) {
                s.push_str(&format!("| `{}`{} |", f.case, if f.differs() { " *" } else { "" }));
                for v in &f.verdicts {
                    s.push_str(&format!(" {} |", v.word()));
                }
                s.push('\n');
            }
            s.push('\n');
        }
        s
    }
}

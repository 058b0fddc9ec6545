//! A study's outcome: every case set against the study's baseline lab, and
//! the study's claims (its `[[finding]]`s) judged from the run.
//!
//! Ratios are paired by round: the labs' pairs took turns in every round, so
//! a case's sample of round r is divided by the baseline's sample of round r
//! and the quotients are summarised on the log scale (see [`crate::stats`]).
//! A claim holds only on evidence that supports it at 95 %; where the
//! evidence cannot tell (one repetition, an interval that straddles the
//! claim's bound, a case that did not run), the finding is inconclusive,
//! never passed.

use serde::Serialize;

use crate::report::{fmt_bps, Report};
use crate::stats::{self, Summary};
use crate::study::{CaseRef, Claim, Finding};

/// What the run says of a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Holds,
    DoesNotHold,
    /// The evidence can support neither.
    Inconclusive,
}

impl Verdict {
    pub fn describe(self) -> &'static str {
        match self {
            Verdict::Holds => "holds",
            Verdict::DoesNotHold => "DOES NOT HOLD",
            Verdict::Inconclusive => "inconclusive",
        }
    }

    /// The verdict of several steps: one that does not hold decides, then
    /// one that cannot tell.
    fn all(steps: impl IntoIterator<Item = Verdict>) -> Verdict {
        steps.into_iter().fold(Verdict::Holds, |acc, v| match (acc, v) {
            (Verdict::DoesNotHold, _) | (_, Verdict::DoesNotHold) => Verdict::DoesNotHold,
            (Verdict::Inconclusive, _) | (_, Verdict::Inconclusive) => Verdict::Inconclusive,
            _ => Verdict::Holds,
        })
    }
}

/// A judged finding: its claim, the verdict and the evidence, a line per case
/// or step.
#[derive(Debug, Clone, Serialize)]
pub struct FindingOutcome {
    #[serde(flatten)]
    pub finding: Finding,
    pub verdict: Verdict,
    pub evidence: Vec<String>,
}

/// A case against the study's baseline.
#[derive(Debug, Clone, Serialize)]
pub struct VsBaseline {
    pub case: CaseRef,
    /// The baseline lab's case with as many streams and the same underlay
    /// MTU (a case at an MTU the baseline lab did not run has no ratio).
    pub against: CaseRef,
    /// The ratio of each round, their geometric mean and its interval;
    /// `None` when a round delivered nothing.
    pub ratio: Option<Summary>,
}

/// The study's outcome for one kernel.
#[derive(Debug, Clone, Serialize)]
pub struct StudyOutcome {
    pub study: String,
    pub kernel: String,
    pub repeat: u32,
    /// The lab the others are set against.
    pub baseline: String,
    pub vs_baseline: Vec<VsBaseline>,
    pub findings: Vec<FindingOutcome>,
}

/// A run's reports (lab by lab, `kernels` per lab in kernel order) as one
/// list of reports per kernel.
pub fn per_kernel(reports: &[Report], kernels: usize) -> Vec<Vec<&Report>> {
    let k = kernels.max(1);
    (0..k).map(|i| reports.iter().skip(i).step_by(k).collect()).collect()
}

/// What the findings read of a case: its samples in round order and its
/// checks' outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub case: CaseRef,
    pub streams: u32,
    /// The underlay MTU it ran with.
    pub mtu: u32,
    /// Throughput, bit/s, one per round.
    pub samples: Vec<f64>,
    /// Median new-connection latency, µs, one per round (empty without
    /// `[workload] connects`).
    pub connects: Vec<f64>,
    /// The names of the checks that failed, in any repetition.
    pub failed_checks: Vec<String>,
}

impl Measured {
    /// A report's cases.
    pub fn of(report: &Report) -> Vec<Measured> {
        report
            .cases
            .iter()
            .map(|c| {
                let mut failed: Vec<String> = c.failed_checks().into_iter().map(String::from).collect();
                for name in c.repetitions.iter().flat_map(|r| &r.failed_checks) {
                    if !failed.contains(name) {
                        failed.push(name.clone());
                    }
                }
                Measured {
                    case: CaseRef { lab: report.lab.clone(), case: c.name.clone() },
                    streams: c.params.streams,
                    mtu: c.params.mtu.unwrap_or(report.mtu),
                    samples: c.samples(),
                    connects: c
                        .connect_summary
                        .as_ref()
                        .map(|s| s.samples.clone())
                        .or_else(|| c.connect.as_ref().map(|l| vec![l.median_us]))
                        .unwrap_or_default(),
                    failed_checks: failed,
                }
            })
            .collect()
    }
}

fn find<'a>(cases: &'a [Measured], r: &CaseRef) -> Option<&'a Measured> {
    cases.iter().find(|m| m.case == *r)
}

/// Judges the study `name` on the reports of one kernel.
pub fn evaluate(name: &str, baseline: &str, findings: &[Finding], reports: &[&Report]) -> StudyOutcome {
    let cases: Vec<Measured> = reports.iter().flat_map(|r| Measured::of(r)).collect();
    let kernel = reports.first().map(|r| r.kernel.clone()).unwrap_or_default();
    let repeat = reports.first().map_or(1, |r| r.repeat);
    judge(name, baseline, findings, &cases, &kernel, repeat)
}

/// [`evaluate`] on the cases' measurements.
pub fn judge(
    name: &str,
    baseline: &str,
    findings: &[Finding],
    cases: &[Measured],
    kernel: &str,
    repeat: u32,
) -> StudyOutcome {
    let mut vs_baseline = Vec::new();
    for c in cases.iter().filter(|c| c.case.lab != baseline) {
        let Some(b) = cases.iter().find(|b| b.case.lab == baseline && b.streams == c.streams && b.mtu == c.mtu) else {
            continue;
        };
        vs_baseline.push(VsBaseline {
            case: c.case.clone(),
            against: b.case.clone(),
            ratio: stats::paired_ratio(&c.samples, &b.samples),
        });
    }
    let findings = findings
        .iter()
        .map(|f| {
            let (verdict, evidence) = match &f.kind {
                Claim::Delivers { cases: refs } => delivers(cases, refs),
                Claim::Keeps { case, of, at_least } => {
                    let (v, line) = keeps(cases, case, of, *at_least);
                    (v, vec![line])
                }
                Claim::Order { tiers } => order(cases, tiers),
                Claim::Waits { case, of, at_most, at_least } => {
                    let (v, line) = waits(cases, case, of, (*at_most, *at_least));
                    (v, vec![line])
                }
            };
            FindingOutcome { finding: f.clone(), verdict, evidence }
        })
        .collect();
    StudyOutcome {
        study: name.to_string(),
        kernel: kernel.to_string(),
        repeat,
        baseline: baseline.to_string(),
        vs_baseline,
        findings,
    }
}

/// Every case moved data in every repetition.
fn delivers(cases: &[Measured], refs: &[CaseRef]) -> (Verdict, Vec<String>) {
    let mut steps = Vec::new();
    let mut evidence = Vec::new();
    for r in refs {
        let Some(c) = find(cases, r) else {
            steps.push(Verdict::Inconclusive);
            evidence.push(format!("{r}: not run"));
            continue;
        };
        let samples = &c.samples;
        let moved = samples.iter().filter(|x| **x > 0.0).count();
        steps.push(if moved == samples.len() { Verdict::Holds } else { Verdict::DoesNotHold });
        let checks = match &c.failed_checks[..] {
            [] => "its checks passed".to_string(),
            failed => format!("failed: {}", failed.join(", ")),
        };
        evidence.push(format!(
            "{r}: delivered in {moved} of {} repetitions, median {}; {checks}",
            samples.len(),
            fmt_bps(stats::median(samples))
        ));
    }
    (Verdict::all(steps), evidence)
}

/// The ratio of `case` to `of`, paired by round, in words: `None` with the
/// verdict when there is none to judge.
fn ratio(cases: &[Measured], case: &CaseRef, of: &CaseRef) -> Result<Summary, (Verdict, String)> {
    let (Some(c), Some(o)) = (find(cases, case), find(cases, of)) else {
        return Err((Verdict::Inconclusive, format!("{case} against {of}: not run")));
    };
    let (cs, os) = (&c.samples, &o.samples);
    if os.iter().any(|x| *x <= 0.0) {
        return Err((Verdict::Inconclusive, format!("{of} delivered nothing in a repetition")));
    }
    if cs.iter().any(|x| *x <= 0.0) {
        return Err((Verdict::DoesNotHold, format!("{case} delivered nothing in a repetition")));
    }
    stats::paired_ratio(cs, os).ok_or_else(|| (Verdict::Inconclusive, format!("{case} against {of}: no pairs")))
}

/// `0.84x [0.70, 1.01] over 3 rounds`.
fn ratio_text(s: &Summary) -> String {
    match s.interval {
        Some(i) => format!("{:.2}x [{:.2}, {:.2}] over {} rounds", s.mean, i.low, i.high, s.samples.len()),
        None => format!("{:.2}x from one round, no interval (run with --repeat 3 or more)", s.mean),
    }
}

/// `case` keeps at least `at_least` of `of`: holds when the whole interval
/// is at or above the bound, does not hold when it is wholly below.
fn keeps(cases: &[Measured], case: &CaseRef, of: &CaseRef, at_least: f64) -> (Verdict, String) {
    let s = match ratio(cases, case, of) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let verdict = match s.interval {
        Some(i) if i.low >= at_least => Verdict::Holds,
        Some(i) if i.high < at_least => Verdict::DoesNotHold,
        _ => Verdict::Inconclusive,
    };
    (verdict, format!("{case} over {of}: {} (the claim: at least {at_least:.2}x)", ratio_text(&s)))
}

/// `case`'s new connections wait at most `at_most` (at least `at_least`)
/// times as long as `of`'s: holds when the whole interval of the ratio of
/// their median latencies is within the bound, does not hold when it is
/// wholly beyond it.
fn waits(
    cases: &[Measured],
    case: &CaseRef,
    of: &CaseRef,
    (at_most, at_least): (Option<f64>, Option<f64>),
) -> (Verdict, String) {
    let (Some(c), Some(o)) = (find(cases, case), find(cases, of)) else {
        return (Verdict::Inconclusive, format!("{case} against {of}: not run"));
    };
    if c.connects.is_empty() || o.connects.is_empty() {
        return (
            Verdict::Inconclusive,
            format!("{case} against {of}: no new connections timed (`[workload] connects`)"),
        );
    }
    let Some(s) = stats::paired_ratio(&c.connects, &o.connects) else {
        return (Verdict::Inconclusive, format!("{case} against {of}: no pairs"));
    };
    let (verdict, bound) = match (s.interval, at_most, at_least) {
        (Some(i), Some(m), _) if i.high <= m => (Verdict::Holds, format!("at most {m:.2}x")),
        (Some(i), Some(m), _) if i.low > m => (Verdict::DoesNotHold, format!("at most {m:.2}x")),
        (_, Some(m), _) => (Verdict::Inconclusive, format!("at most {m:.2}x")),
        (Some(i), None, Some(l)) if i.low >= l => (Verdict::Holds, format!("at least {l:.2}x")),
        (Some(i), None, Some(l)) if i.high < l => (Verdict::DoesNotHold, format!("at least {l:.2}x")),
        (_, None, l) => (Verdict::Inconclusive, format!("at least {:.2}x", l.unwrap_or(0.0))),
    };
    (verdict, format!("{case}'s new connections over {of}'s: {} (the claim: {bound})", ratio_text(&s)))
}

/// Every case of a tier slower than every case of the tier above: each
/// step holds when its ratio's interval lies below 1, does not hold when it
/// lies above.
fn order(cases: &[Measured], tiers: &[Vec<CaseRef>]) -> (Verdict, Vec<String>) {
    let mut steps = Vec::new();
    let mut evidence = Vec::new();
    for pair in tiers.windows(2) {
        for upper in &pair[0] {
            for lower in &pair[1] {
                let (verdict, line) = match ratio(cases, lower, upper) {
                    // A datapath that moved nothing is out of any order.
                    Err((_, line)) => (Verdict::Inconclusive, line),
                    Ok(s) => {
                        let verdict = match s.interval {
                            Some(i) if i.high < 1.0 => Verdict::Holds,
                            Some(i) if i.low > 1.0 => Verdict::DoesNotHold,
                            _ => Verdict::Inconclusive,
                        };
                        (verdict, format!("{lower} over {upper}: {}", ratio_text(&s)))
                    }
                };
                steps.push(verdict);
                evidence.push(line);
            }
        }
    }
    (Verdict::all(steps), evidence)
}

/// `claim ... holds` lines and their evidence, indented.
fn findings_text(outcome: &StudyOutcome, bullet: &str, quote: fn(&str) -> String) -> String {
    let mut s = String::new();
    for f in &outcome.findings {
        s.push_str(&format!("{bullet}{}: {}\n", f.verdict.describe(), f.finding.claim));
        for line in &f.evidence {
            s.push_str(&format!("    {bullet}{}\n", quote(line)));
        }
    }
    s
}

fn plain(s: &str) -> String {
    s.to_string()
}

fn ratio_cell(s: &Option<Summary>) -> String {
    match s {
        Some(s) => match s.interval {
            Some(i) => format!("{:.2}x [{:.2}, {:.2}]", s.mean, i.low, i.high),
            None => format!("{:.2}x", s.mean),
        },
        None => "-".to_string(),
    }
}

impl StudyOutcome {
    /// Some finding does not hold.
    pub fn failed(&self) -> bool {
        self.findings.iter().any(|f| f.verdict == Verdict::DoesNotHold)
    }

    /// For the terminal: each case's ratio to the baseline, then the findings.
    pub fn table(&self) -> String {
        let mut s = format!(
            "study {} (kernel {}): each case over the baseline lab `{}` (its case with as many streams and the same MTU), paired by round\n\n",
            self.study, self.kernel, self.baseline
        );
        let width = self.vs_baseline.iter().map(|v| v.case.to_string().len()).max().unwrap_or(4).max(4);
        if self.vs_baseline.is_empty() {
            s.push_str("the study runs its baseline lab only: no case to compare with it\n");
        } else {
            s.push_str(&format!("{:<width$}  {:>22}  against\n", "case", "ratio [95 % interval]"));
        }
        for v in &self.vs_baseline {
            s.push_str(&format!("{:<width$}  {:>22}  {}\n", v.case.to_string(), ratio_cell(&v.ratio), v.against.case));
        }
        if !self.findings.is_empty() {
            s.push_str("\nfindings\n");
            s.push_str(&findings_text(self, "", plain));
        }
        s
    }

    /// For CI summaries.
    pub fn markdown(&self) -> String {
        let mut s =
            format!("## vlab study `{}` (kernel {}): each case over `{}`\n\n", self.study, self.kernel, self.baseline);
        if self.vs_baseline.is_empty() {
            s.push_str("The study runs its baseline lab only: no case to compare with it.\n");
        } else {
            s.push_str("| case | ratio [95 % interval] | against |\n| --- | --- | --- |\n");
        }
        for v in &self.vs_baseline {
            s.push_str(&format!("| `{}` | {} | `{}` |\n", v.case, ratio_cell(&v.ratio), v.against.case));
        }
        if !self.findings.is_empty() {
            s.push_str("\n### Findings\n\n");
            s.push_str(&findings_text(self, "- ", |l| format!("`{l}`")));
        }
        s
    }

    /// The ratio of `lab`'s `case` to the baseline, as a cell (`-` for the
    /// baseline's own cases).
    pub fn ratio_text(&self, lab: &str, case: &str) -> String {
        let v = self.vs_baseline.iter().find(|v| v.case.lab == lab && v.case.case == case);
        v.map_or_else(|| "-".to_string(), |v| ratio_cell(&v.ratio))
    }
}
